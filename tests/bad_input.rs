//! Hostile and broken clients, over raw TCP: garbage startup packets, malformed,
//! oversized and unknown messages after login, clients that vanish mid-query, and a
//! burst of random bytes. Each such client must get an ErrorResponse (08P01 and the
//! like) or a closed socket, no other client may notice, and no task of the router
//! may panic on network input.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use pgrouter::config::{AuthMethod, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

/// How long any single answer from the router may take before the test calls it a hang.
const WAIT: Duration = Duration::from_secs(5);
const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// Largest message the tests accept from the router (a sanity bound on its framing).
const MAX_BACKEND_MESSAGE: i32 = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Panic watch: the router runs in-process, its sessions on tokio worker threads.
// A panic there is caught by tokio and would go unnoticed; this hook records it.
// ---------------------------------------------------------------------------

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn watch_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                PANICS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(info.to_string());
            }
            previous(info);
        }));
    });
}

fn assert_no_panics() {
    let panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        panics.is_empty(),
        "tasks panicked on network input: {panics:#?}"
    );
}

// ---------------------------------------------------------------------------
// Environments
// ---------------------------------------------------------------------------

async fn trust_env_with(tweak: impl FnOnce(&mut Config)) -> common::TestEnv {
    common::start_with(|config| {
        config.auth = AuthMethod::Trust;
        tweak(config);
    })
    .await
}

async fn trust_env() -> common::TestEnv {
    trust_env_with(|_| {}).await
}

/// Waits until the router serves exactly `expected` client connections.
async fn wait_for_sessions(env: &common::TestEnv, expected: usize, within: Duration, what: &str) {
    let started = Instant::now();
    loop {
        let now = env.handle.stats().clients.load(Ordering::Relaxed);
        if now == expected {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{what}: the router still serves {now} client connections after {within:?} (expected {expected})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Building frontend messages by hand
// ---------------------------------------------------------------------------

/// An untagged startup-phase packet: `len` (counting itself), `code`, `rest`.
fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut out = ((8 + rest.len()) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(rest);
    out
}

fn startup_params(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in params {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

const LOGIN: &[(&str, &str)] = &[("user", "pgrouter"), ("database", "postgres")];

fn startup() -> Vec<u8> {
    packet(PROTOCOL_3_0, &startup_params(LOGIN))
}

/// A tagged message with a correct length.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Just a header declaring `len`, no body.
fn header(tag: u8, len: i32) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

fn cstr(s: &str) -> Vec<u8> {
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    out
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend_from_slice(&cstr(sql));
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// Bind without parameters, text results.
fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend_from_slice(&cstr(statement));
    body.extend_from_slice(&0i16.to_be_bytes()); // parameter formats
    body.extend_from_slice(&0i16.to_be_bytes()); // parameters
    body.extend_from_slice(&0i16.to_be_bytes()); // result formats
    message(b'B', &body)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &body)
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(&cstr(name));
    message(b'D', &body)
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(&cstr(name));
    message(b'C', &body)
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

fn flush() -> Vec<u8> {
    message(b'H', b"")
}

fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut rest = pid.to_be_bytes().to_vec();
    rest.extend_from_slice(&secret.to_be_bytes());
    packet(CANCEL_REQUEST, &rest)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------
// Reading backend messages
// ---------------------------------------------------------------------------

/// What the router did next.
enum Incoming {
    Msg(u8, Vec<u8>),
    /// End of stream (or a reset) at a message boundary.
    Closed,
    TimedOut,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Msg(b'E', body) => write!(f, "ErrorResponse {:?}", fields(body)),
            Incoming::Msg(b'Z', body) => {
                write!(f, "ReadyForQuery {:?}", String::from_utf8_lossy(body))
            }
            Incoming::Msg(tag, body) => write!(
                f,
                "message {:?} ({} bytes) {:?}",
                *tag as char,
                body.len(),
                String::from_utf8_lossy(&body[..body.len().min(80)])
            ),
            Incoming::Closed => write!(f, "connection closed"),
            Incoming::TimedOut => write!(f, "nothing (timed out)"),
        }
    }
}

fn is_closed(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Reads one backend message (tag, body), waiting at most `wait`.
async fn read_message(stream: &mut TcpStream, wait: Duration) -> Incoming {
    let read = async {
        let tag = match stream.read_u8().await {
            Ok(tag) => tag,
            Err(e) if is_closed(&e) => return Incoming::Closed,
            Err(e) => panic!("reading from the router: {e}"),
        };
        let mut len = [0u8; 4];
        if let Err(e) = stream.read_exact(&mut len).await {
            panic!(
                "the router ended mid-header of a {:?} message: {e}",
                tag as char
            );
        }
        let len = i32::from_be_bytes(len);
        assert!(
            (4..=MAX_BACKEND_MESSAGE).contains(&len),
            "the router sent a {:?} message declaring length {len}",
            tag as char
        );
        let mut body = vec![0u8; len as usize - 4];
        if let Err(e) = stream.read_exact(&mut body).await {
            panic!(
                "the router ended mid-body of a {:?} message: {e}",
                tag as char
            );
        }
        Incoming::Msg(tag, body)
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or(Incoming::TimedOut)
}

/// The fields of an ErrorResponse/NoticeResponse body, by field type.
fn fields(body: &[u8]) -> HashMap<char, String> {
    let mut out = HashMap::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        out.insert(
            kind as char,
            String::from_utf8_lossy(&tail[..end]).into_owned(),
        );
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

fn code(fields: &HashMap<char, String>) -> &str {
    fields.get(&'C').map_or("", String::as_str)
}

/// The next message must be an ErrorResponse (NoticeResponses are skipped).
async fn expect_error(stream: &mut TcpStream, what: &str) -> HashMap<char, String> {
    loop {
        match read_message(stream, WAIT).await {
            Incoming::Msg(b'E', body) => return fields(&body),
            Incoming::Msg(b'N', _) => {}
            other => panic!("{what}: expected an ErrorResponse, got {other:?}"),
        }
    }
}

/// The router must close the connection now, without sending anything more.
async fn expect_closed(stream: &mut TcpStream, what: &str) {
    match read_message(stream, WAIT).await {
        Incoming::Closed => {}
        other => panic!("{what}: expected the router to close the connection, got {other:?}"),
    }
}

/// A FATAL ErrorResponse with one of `codes`, then a closed connection.
async fn expect_fatal(stream: &mut TcpStream, codes: &[&str], what: &str) {
    let error = expect_error(stream, what).await;
    assert_eq!(
        error.get(&'S').map(String::as_str),
        Some("FATAL"),
        "{what}: severity of {error:?}"
    );
    assert!(
        codes.contains(&code(&error)),
        "{what}: expected SQLSTATE {codes:?}, got {error:?}"
    );
    expect_closed(stream, what).await;
}

/// Every message up to and including ReadyForQuery.
async fn until_ready(stream: &mut TcpStream, wait: Duration, what: &str) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match read_message(stream, wait).await {
            Incoming::Msg(tag, body) => {
                let done = tag == b'Z';
                out.push((tag, body));
                if done {
                    return out;
                }
            }
            other => panic!(
                "{what}: expected messages up to ReadyForQuery, got {other:?} after {:?}",
                out.iter().map(|(t, _)| *t as char).collect::<String>()
            ),
        }
    }
}

fn tags(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(t, _)| *t as char).collect()
}

fn error_codes(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    messages
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| code(&fields(body)).to_owned())
        .collect()
}

/// The values of a DataRow (None for NULL).
fn data_row(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let count = i16::from_be_bytes([body[0], body[1]]);
    let mut rest = &body[2..];
    let mut values = Vec::new();
    for _ in 0..count {
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
        } else {
            values.push(Some(rest[..len as usize].to_vec()));
            rest = &rest[len as usize..];
        }
    }
    values
}

/// The first column of the first DataRow, as text.
fn first_value(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    messages
        .iter()
        .find(|(t, _)| *t == b'D')
        .and_then(|(_, body)| data_row(body).into_iter().next().flatten())
        .map(|v| String::from_utf8(v).expect("UTF-8 value"))
}

// ---------------------------------------------------------------------------
// Raw sessions
// ---------------------------------------------------------------------------

/// Reads the rest of a trust login (AuthenticationOk ... ReadyForQuery) and
/// returns the cancel key, or a description of what came instead.
async fn try_finish_login(stream: &mut TcpStream, wait: Duration) -> Result<(i32, i32), String> {
    let mut key = None;
    loop {
        match read_message(stream, wait).await {
            Incoming::Msg(b'R', body) if body == [0, 0, 0, 0] => {}
            Incoming::Msg(b'S' | b'N', _) => {}
            Incoming::Msg(b'K', body) if body.len() == 8 => {
                key = Some((
                    i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                ));
            }
            Incoming::Msg(b'Z', body) => {
                if body != b"I" {
                    return Err(format!("ReadyForQuery {body:?} after login"));
                }
                return key.ok_or_else(|| "no BackendKeyData before ReadyForQuery".to_owned());
            }
            other => return Err(format!("{other:?} during login")),
        }
    }
}

async fn finish_login(stream: &mut TcpStream, wait: Duration) -> (i32, i32) {
    try_finish_login(stream, wait)
        .await
        .unwrap_or_else(|problem| panic!("login failed: {problem}"))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the router");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("send to the router");
}

/// A logged-in raw session (trust auth) and its cancel key.
async fn raw_login(addr: SocketAddr) -> (TcpStream, (i32, i32)) {
    let mut stream = connect(addr).await;
    send(&mut stream, &startup()).await;
    let key = finish_login(&mut stream, WAIT).await;
    (stream, key)
}

/// Runs a simple query on a raw session and returns every answer up to ReadyForQuery.
async fn raw_query(stream: &mut TcpStream, sql: &str) -> Vec<(u8, Vec<u8>)> {
    send(stream, &query(sql)).await;
    until_ready(stream, WAIT, sql).await
}

/// A raw session is still healthy: `SELECT 1` answers 1 with no error.
async fn assert_raw_usable(stream: &mut TcpStream, what: &str) {
    let answer = raw_query(stream, "SELECT 1").await;
    assert_eq!(
        tags(&answer),
        "TDCZ",
        "{what}: SELECT 1 afterwards; errors {:?}",
        error_codes(&answer)
    );
    assert_eq!(first_value(&answer).as_deref(), Some("1"), "{what}");
    assert_eq!(answer.last().map(|(_, b)| b.as_slice()), Some(&b"I"[..]));
}

async fn assert_client_usable(client: &Client, what: &str) {
    let rows = tokio::time::timeout(WAIT, client.simple_query("SELECT 1"))
        .await
        .unwrap_or_else(|_| panic!("{what}: SELECT 1 hung"))
        .unwrap_or_else(|e| panic!("{what}: SELECT 1 failed: {e}"));
    let value = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("1"), "{what}");
}

// ---------------------------------------------------------------------------
// A small deterministic PRNG (xorshift64*), so burst failures reproduce.
// ---------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Never zero, and spread small seeds apart.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn printable(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b' ' + self.below(95) as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// 1. Startup garbage
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_garbage_gets_fatal_08p01_and_a_closed_socket() {
    watch_panics();
    let env = trust_env().await;
    let params = startup_params(LOGIN);
    let protocol_violation: &[&str] = &["08P01"];
    // PostgreSQL itself answers an unsupported protocol version with 0A000.
    let bad_version: &[&str] = &["08P01", "0A000"];
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("length 0", 0i32.to_be_bytes().to_vec(), protocol_violation),
        ("length 4", 4i32.to_be_bytes().to_vec(), protocol_violation),
        (
            "length 7 with its 3 bytes",
            vec![0, 0, 0, 7, 0, 3, 0],
            protocol_violation,
        ),
        (
            "length -1",
            (-1i32).to_be_bytes().to_vec(),
            protocol_violation,
        ),
        (
            "length i32::MIN",
            i32::MIN.to_be_bytes().to_vec(),
            protocol_violation,
        ),
        // No body follows: the router must answer without waiting for 10001 bytes.
        (
            "length 10001 (no body sent)",
            10_001i32.to_be_bytes().to_vec(),
            protocol_violation,
        ),
        (
            "length i32::MAX (no body sent)",
            i32::MAX.to_be_bytes().to_vec(),
            protocol_violation,
        ),
        ("protocol 2.0", packet(2 << 16, &params), bad_version),
        ("protocol 4.0", packet(4 << 16, &params), bad_version),
        ("protocol 0.0", packet(0, &params), bad_version),
        (
            // 1234.5678-5680 are CancelRequest, SSLRequest and GSSENCRequest.
            "protocol 1234.5681",
            packet((1234 << 16) | 5681, &params),
            bad_version,
        ),
        (
            "unterminated parameter list",
            packet(PROTOCOL_3_0, b"user\0pgrouter\0database\0postgres"),
            protocol_violation,
        ),
        (
            "parameter name without value",
            packet(PROTOCOL_3_0, b"user"),
            protocol_violation,
        ),
        (
            "parameter that is not UTF-8",
            packet(PROTOCOL_3_0, b"user\0pg\xffrouter\0\0"),
            protocol_violation,
        ),
        (
            "CancelRequest without a secret",
            packet(CANCEL_REQUEST, &7i32.to_be_bytes()),
            protocol_violation,
        ),
        // Well-formed but without a user: PostgreSQL says 28000.
        (
            "startup without parameters",
            packet(PROTOCOL_3_0, b"\0"),
            &["28000", "08P01"],
        ),
    ];
    for (what, bytes, codes) in &cases {
        let mut stream = connect(env.addr).await;
        let started = Instant::now();
        send(&mut stream, bytes).await;
        expect_fatal(&mut stream, codes, what).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: refusal took {:?}",
            started.elapsed()
        );
    }

    // A startup packet cut short by the client: an error or a close, never a hang.
    let mut stream = connect(env.addr).await;
    let mut truncated = startup();
    truncated.truncate(12);
    send(&mut stream, &truncated).await;
    stream.shutdown().await.expect("half-close");
    match read_message(&mut stream, WAIT).await {
        Incoming::Closed => {}
        Incoming::Msg(b'E', body) => {
            assert_eq!(code(&fields(&body)), "08P01", "truncated startup");
            expect_closed(&mut stream, "truncated startup").await;
        }
        other => panic!("truncated startup: got {other:?}"),
    }

    // A client that connects and leaves without a byte gets nothing and a close.
    let mut stream = connect(env.addr).await;
    stream.shutdown().await.expect("half-close");
    expect_closed(&mut stream, "silent client").await;

    wait_for_sessions(&env, 0, WAIT, "after the refused startups").await;
    let (mut stream, _) = raw_login(env.addr).await;
    assert_raw_usable(&mut stream, "a login after the garbage").await;
    assert_client_usable(&env.client().await, "tokio-postgres after the garbage").await;
    assert_no_panics();
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 2. SSLRequest / GSSENCRequest
// ---------------------------------------------------------------------------

async fn expect_n(stream: &mut TcpStream, what: &str) {
    let answer = tokio::time::timeout(WAIT, stream.read_u8())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(answer, b'N', "{what}: single-byte answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_and_startup_continues() {
    watch_panics();
    let env = trust_env().await;

    // SSLRequest, 'N', then the StartupMessage on the same socket.
    let mut stream = connect(env.addr).await;
    send(&mut stream, &packet(SSL_REQUEST, b"")).await;
    expect_n(&mut stream, "SSLRequest").await;
    send(&mut stream, &startup()).await;
    finish_login(&mut stream, WAIT).await;
    assert_raw_usable(&mut stream, "after SSLRequest").await;

    // GSSENCRequest then SSLRequest (libpq's gssencmode=prefer, sslmode=prefer).
    let mut stream = connect(env.addr).await;
    send(&mut stream, &packet(GSSENC_REQUEST, b"")).await;
    expect_n(&mut stream, "GSSENCRequest").await;
    send(&mut stream, &packet(SSL_REQUEST, b"")).await;
    expect_n(&mut stream, "SSLRequest after GSSENCRequest").await;
    send(&mut stream, &startup()).await;
    finish_login(&mut stream, WAIT).await;
    assert_raw_usable(&mut stream, "after GSSENCRequest and SSLRequest").await;

    // SSLRequest and StartupMessage in one write (the client does not wait for 'N').
    let mut stream = connect(env.addr).await;
    send(&mut stream, &concat(&[packet(SSL_REQUEST, b""), startup()])).await;
    expect_n(&mut stream, "pipelined SSLRequest").await;
    finish_login(&mut stream, WAIT).await;
    assert_raw_usable(&mut stream, "after a pipelined SSLRequest").await;

    // Protocol 3.2 with an unknown protocol option: NegotiateProtocolVersion, then login.
    let mut stream = connect(env.addr).await;
    let mut params = LOGIN.to_vec();
    params.push(("_pq_.no_such_option", "on"));
    send(
        &mut stream,
        &packet((3 << 16) | 2, &startup_params(&params)),
    )
    .await;
    match read_message(&mut stream, WAIT).await {
        Incoming::Msg(b'v', body) => {
            let newest_minor = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let count = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            assert_eq!((newest_minor, count), (0, 1), "NegotiateProtocolVersion");
            assert_eq!(&body[8..], b"_pq_.no_such_option\0");
        }
        other => panic!("protocol 3.2: expected NegotiateProtocolVersion, got {other:?}"),
    }
    finish_login(&mut stream, WAIT).await;
    assert_raw_usable(&mut stream, "after protocol negotiation").await;

    assert_no_panics();
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Malformed messages after login
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_after_login_get_fatal_08p01() {
    watch_panics();
    let env = trust_env().await;
    let bystander = env.client().await;
    let (mut observer, _) = raw_login(env.addr).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Query declaring length 2", header(b'Q', 2)),
        ("Query declaring length 0", header(b'Q', 0)),
        ("Sync declaring length 3", header(b'S', 3)),
        ("Query declaring length -1", header(b'Q', -1)),
        ("Query declaring length i32::MIN", header(b'Q', i32::MIN)),
        ("unknown message type 'y'", message(b'y', b"")),
        ("unknown message type 0x00", message(0, b"abc")),
        ("PasswordMessage after login", message(b'p', b"secret\0")),
        (
            "Query without its NUL terminator",
            message(b'Q', b"SELECT 1"),
        ),
        (
            "Parse without NUL terminators",
            message(b'P', b"s1SELECT 1"),
        ),
        (
            "Parse without the parameter count",
            message(b'P', b"s1\0SELECT 1\0"),
        ),
        (
            "Parse with more parameter types than sent",
            message(b'P', b"s1\0SELECT $1\0\0\x02\0\0\0\x17"),
        ),
        ("Bind without NUL terminators", message(b'B', b"portal")),
        ("Describe of kind 'X'", message(b'D', b"Xname\0")),
        ("Close without a name", message(b'C', b"S")),
        ("Execute without its row limit", message(b'E', b"\0")),
        (
            "malformed Bind after a valid Parse (mid-batch)",
            concat(&[parse("", "SELECT 1"), message(b'B', b"x")]),
        ),
    ];
    for (what, bytes) in &cases {
        let (mut stream, _) = raw_login(env.addr).await;
        send(&mut stream, bytes).await;
        expect_fatal(&mut stream, &["08P01"], what).await;
    }
    // Everyone else saw nothing, and every refused session is gone.
    assert_raw_usable(&mut observer, "a raw session open throughout").await;
    assert_client_usable(&bystander, "a tokio-postgres client open throughout").await;
    wait_for_sessions(&env, 2, WAIT, "after the malformed messages").await;
    assert_no_panics();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_without_waiting_for_its_body() {
    watch_panics();
    const LIMIT: usize = 4096;
    let env = trust_env_with(|config| config.limits.max_message_size = LIMIT).await;
    let bystander = env.client().await;

    for (what, len) in [
        ("Query declaring 1 MiB", 1024 * 1024 + 4),
        ("Query declaring i32::MAX", i32::MAX),
        ("Query declaring one byte over the limit", LIMIT as i32),
    ] {
        let (mut stream, _) = raw_login(env.addr).await;
        let started = Instant::now();
        send(&mut stream, &header(b'Q', len)).await;
        expect_fatal(&mut stream, &["08P01"], what).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: refusal took {:?}; it must not wait for the body",
            started.elapsed()
        );
    }

    // The limit counts the whole message (tag included): exactly LIMIT bytes pass...
    let (mut stream, _) = raw_login(env.addr).await;
    let filler = LIMIT - "SELECT length('')".len() - 6;
    let sql = format!("SELECT length('{}')", "x".repeat(filler));
    assert_eq!(query(&sql).len(), LIMIT);
    let answer = raw_query(&mut stream, &sql).await;
    assert_eq!(
        first_value(&answer),
        Some(filler.to_string()),
        "{answer:?}",
        answer = tags(&answer)
    );
    // ...and one byte more does not.
    let sql = format!("SELECT length('{}')", "x".repeat(filler + 1));
    send(&mut stream, &query(&sql)).await;
    expect_fatal(&mut stream, &["08P01"], "a Query one byte over the limit").await;

    assert_client_usable(&bystander, "a client open throughout").await;
    wait_for_sessions(&env, 1, WAIT, "after the oversized messages").await;
    assert_no_panics();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statements_and_portals_get_the_servers_error_and_the_session_survives() {
    watch_panics();
    let env = trust_env().await;
    let (mut stream, _) = raw_login(env.addr).await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "Bind of an unknown named statement",
            concat(&[bind("", "nope"), execute(""), sync()]),
            "26000",
        ),
        (
            "Bind of the unnamed statement before any Parse",
            concat(&[bind("", ""), execute(""), sync()]),
            "26000",
        ),
        (
            "Describe of an unknown statement",
            concat(&[describe_statement("nope"), sync()]),
            "26000",
        ),
        (
            "Execute of an unknown portal",
            concat(&[execute("ghost"), sync()]),
            "34000",
        ),
        (
            "Parse with a syntax error",
            concat(&[parse("broken", "SELEC 1"), sync()]),
            "42601",
        ),
        // The failed Parse did not create "broken"; the server says so.
        (
            "Bind of a statement whose Parse failed",
            concat(&[bind("", "broken"), execute(""), sync()]),
            "26000",
        ),
    ];
    for (what, bytes, expected_code) in &cases {
        send(&mut stream, bytes).await;
        let answer = until_ready(&mut stream, WAIT, what).await;
        assert_eq!(tags(&answer), "EZ", "{what}: {:?}", error_codes(&answer));
        assert_eq!(
            error_codes(&answer),
            vec![expected_code.to_string()],
            "{what}"
        );
        assert_eq!(answer.last().map(|(_, b)| b.as_slice()), Some(&b"I"[..]));
        assert_raw_usable(&mut stream, what).await;
    }

    // After Flush the error arrives at once, without ReadyForQuery; Sync ends the batch.
    let what = "Bind of an unknown statement, then Flush";
    send(&mut stream, &concat(&[bind("", "nope"), flush()])).await;
    let error = expect_error(&mut stream, what).await;
    assert_eq!(code(&error), "26000", "{what}: {error:?}");
    send(&mut stream, &sync()).await;
    let rest = until_ready(&mut stream, WAIT, what).await;
    assert_eq!(tags(&rest), "Z", "{what}: after Sync");
    assert_raw_usable(&mut stream, what).await;

    // Closing a statement that does not exist is not an error in PostgreSQL.
    send(&mut stream, &concat(&[close_statement("nope"), sync()])).await;
    let answer = until_ready(&mut stream, WAIT, "Close of an unknown statement").await;
    assert_eq!(tags(&answer), "3Z");

    // The extended protocol still works end to end.
    send(
        &mut stream,
        &concat(&[
            parse("ok", "SELECT 42"),
            bind("", "ok"),
            execute(""),
            sync(),
        ]),
    )
    .await;
    let answer = until_ready(&mut stream, WAIT, "a valid extended query").await;
    assert_eq!(tags(&answer), "12DCZ");
    assert_eq!(first_value(&answer).as_deref(), Some("42"));
    assert_no_panics();
    env.stop().await;
}

/// A client that leaves while its server connection skips messages until Sync
/// (an error after Flush) must not take that connection's pool place with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_after_an_error_in_an_unsynced_batch_frees_its_server_connection() {
    watch_panics();
    let env = trust_env_with(|config| {
        config.pool.pool_size = 2;
        config.pool.checkout_timeout = Duration::from_secs(2);
    })
    .await;
    for round in 0..3 {
        let mut stream = connect(env.addr).await;
        send(&mut stream, &startup()).await;
        if let Err(problem) = try_finish_login(&mut stream, WAIT).await {
            panic!(
                "round {round}: login failed: {problem}; earlier clients that left after \
                 Bind(unknown)+Flush still hold their server connections"
            );
        }
        send(&mut stream, &concat(&[bind("", "nope"), flush()])).await;
        let error = expect_error(&mut stream, "Bind of an unknown statement + Flush").await;
        assert_eq!(code(&error), "26000");
        drop(stream);
    }
    wait_for_sessions(&env, 0, WAIT, "after the clients left mid-batch").await;
    assert_no_panics();
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Disconnect mid-query
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_mid_query_disturbs_no_one() {
    watch_panics();
    let env = trust_env().await;
    let bystander = env.client().await;
    bystander
        .simple_query("CREATE TABLE held (id int)")
        .await
        .expect("create table");
    let primary = env.primary_direct().await;
    wait_for_sessions(&env, 1, WAIT, "bystander only").await;

    // A query in flight, then the client is gone.
    let (mut stream, _) = raw_login(env.addr).await;
    send(&mut stream, &query("SELECT pg_sleep(5)")).await;
    drop(stream);
    let started = Instant::now();
    for i in 0..20 {
        let row = bystander
            .query_one("SELECT $1::int4 + 1", &[&i])
            .await
            .expect("bystander query while the other client vanished");
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    wait_for_sessions(
        &env,
        1,
        Duration::from_secs(4),
        "after a client left mid pg_sleep(5)",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4) + Duration::from_millis(500),
        "the session waited for the abandoned query"
    );

    // A client that leaves inside a transaction holding a lock: the lock goes with it.
    let (mut stream, _) = raw_login(env.addr).await;
    let answer = raw_query(&mut stream, "BEGIN").await;
    assert_eq!(answer.last().map(|(_, b)| b.as_slice()), Some(&b"T"[..]));
    let answer = raw_query(&mut stream, "LOCK TABLE held IN ACCESS EXCLUSIVE MODE").await;
    assert_eq!(tags(&answer), "CZ", "LOCK: {:?}", error_codes(&answer));
    let locks = "SELECT count(*)::int4 FROM pg_locks WHERE relation = 'held'::regclass AND mode = 'AccessExclusiveLock'";
    let held: i32 = primary.query_one(locks, &[]).await.unwrap().get(0);
    assert_eq!(held, 1, "the raw client holds the lock");
    drop(stream);
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        bystander.simple_query("INSERT INTO held VALUES (1)"),
    )
    .await
    .expect("the lock of the vanished client was released")
    .expect("insert");
    assert!(started.elapsed() < Duration::from_secs(5));
    let held: i32 = primary.query_one(locks, &[]).await.unwrap().get(0);
    assert_eq!(held, 0);

    // A client that leaves halfway through sending a message.
    let (mut stream, _) = raw_login(env.addr).await;
    send(&mut stream, &query("SELECT 'half a message'")[..10]).await;
    drop(stream);

    // A client that leaves mid-batch (Parse and Bind, no Sync).
    let (mut stream, _) = raw_login(env.addr).await;
    send(&mut stream, &concat(&[parse("", "SELECT 1"), bind("", "")])).await;
    drop(stream);

    // A client that leaves while a large result streams to it.
    let (mut stream, _) = raw_login(env.addr).await;
    send(
        &mut stream,
        &query("SELECT repeat('x', 1000) FROM generate_series(1, 50000)"),
    )
    .await;
    match read_message(&mut stream, WAIT).await {
        Incoming::Msg(b'T', _) => {}
        other => panic!("large result: expected RowDescription, got {other:?}"),
    }
    drop(stream);

    wait_for_sessions(&env, 1, WAIT, "after the vanished clients").await;
    assert_client_usable(&bystander, "the bystander afterwards").await;
    let fresh = env.client().await;
    let row = fresh
        .query_one("SELECT count(*)::int4 FROM held", &[])
        .await;
    // The count may be read on a replica that has not caught up; only success matters.
    row.expect("a fresh client queries afterwards");
    let (mut stream, _) = raw_login(env.addr).await;
    assert_raw_usable(&mut stream, "a fresh raw client afterwards").await;
    assert_no_panics();
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 5. A burst of garbage, and cancel requests
// ---------------------------------------------------------------------------

const FRAME_TAGS: &[u8] = b"QPBDECSHFdcf";

/// Frames with plausible tags and small lengths but random bodies, then trailing noise.
fn framed_garbage(rng: &mut XorShift) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(12) {
        let tag = match rng.below(10) {
            0 => rng.next() as u8,
            _ => FRAME_TAGS[rng.below(FRAME_TAGS.len())],
        };
        let len = rng.below(64);
        let mut body = match rng.below(3) {
            0 => rng.bytes(len),
            _ => rng.printable(len),
        };
        if rng.below(2) == 0 {
            body.push(0);
        }
        out.extend_from_slice(&message(tag, &body));
    }
    if rng.below(2) == 0 {
        out.extend_from_slice(&sync());
    }
    let noise = rng.below(16);
    out.extend_from_slice(&rng.bytes(noise));
    out
}

/// What one garbage client saw.
#[derive(Debug, Default)]
struct GarbageOutcome {
    codes: Vec<String>,
    closed: bool,
}

async fn garbage_client(addr: SocketAddr, seed: u64, max_message: usize) -> GarbageOutcome {
    let mut rng = XorShift::new(seed);
    let mut stream = connect(addr).await;
    send(&mut stream, &startup()).await;
    if let Err(problem) = try_finish_login(&mut stream, Duration::from_secs(30)).await {
        panic!("garbage client {seed}: login failed: {problem}");
    }
    let pure_noise = seed % 2 == 0;
    let payload = if pure_noise {
        let n = 5 + rng.below(4096);
        rng.bytes(n)
    } else {
        framed_garbage(&mut rng)
    };
    // The router may already have closed on the first bad header; that is fine.
    let _ = stream.write_all(&payload).await;

    let mut outcome = GarbageOutcome::default();
    loop {
        match read_message(&mut stream, Duration::from_secs(3)).await {
            Incoming::Msg(b'E', body) => outcome.codes.push(code(&fields(&body)).to_owned()),
            Incoming::Msg(..) => {}
            Incoming::Closed => {
                outcome.closed = true;
                break;
            }
            Incoming::TimedOut => break,
        }
    }
    // A first header whose length is impossible must be refused as a protocol violation.
    let declared = i32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    if pure_noise && (declared < 4 || declared as usize + 1 > max_message) {
        assert_eq!(
            outcome.codes,
            vec!["08P01".to_owned()],
            "garbage client {seed}: first header declares {declared}"
        );
        assert!(outcome.closed, "garbage client {seed}: not closed");
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_garbage_clients_disturbs_no_one() {
    watch_panics();
    const CLIENTS: u64 = 50;
    const QUERIES: usize = 200;
    let env = trust_env_with(|config| config.pool.pool_size = 64).await;
    let max_message = env.handle.config().limits.max_message_size;
    let good = env.client().await;
    assert_client_usable(&good, "the well-behaved client").await;

    let finished = Arc::new(AtomicUsize::new(0));
    let mut garbage = tokio::task::JoinSet::new();
    for seed in 1..=CLIENTS {
        let finished = finished.clone();
        let addr = env.addr;
        garbage.spawn(async move {
            let outcome = garbage_client(addr, seed, max_message).await;
            finished.fetch_add(1, Ordering::Relaxed);
            (seed, outcome)
        });
    }

    // The well-behaved client keeps querying until the burst is over (at least 200 times).
    let started = Instant::now();
    let mut done = 0usize;
    while done < QUERIES || finished.load(Ordering::Relaxed) < CLIENTS as usize {
        let value = if done % 2 == 0 {
            good.query_one("SELECT 1", &[])
                .await
                .unwrap_or_else(|e| panic!("query {done} of the well-behaved client: {e}"))
                .get::<_, i32>(0)
        } else {
            let rows = good
                .simple_query("SELECT 1")
                .await
                .unwrap_or_else(|e| panic!("query {done} of the well-behaved client: {e}"));
            rows.iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
                    _ => None,
                })
                .expect("a row")
        };
        assert_eq!(value, 1);
        done += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the burst did not end"
        );
        if done >= QUERIES {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let (mut refused, mut closed) = (0, 0);
    while let Some(joined) = garbage.join_next().await {
        let (_seed, outcome) = joined.expect("a garbage client task");
        refused += usize::from(outcome.codes.iter().any(|c| c == "08P01"));
        closed += usize::from(outcome.closed);
    }
    eprintln!(
        "burst: {done} good queries; {refused} of {CLIENTS} garbage clients got 08P01, {closed} were closed"
    );
    assert!(refused > 0, "no garbage client was refused at all");

    // Every garbage session ended, and the router still accepts and serves clients.
    wait_for_sessions(&env, 1, Duration::from_secs(20), "after the burst").await;
    assert_client_usable(&good, "the well-behaved client after the burst").await;
    assert_client_usable(&env.client().await, "a new client after the burst").await;
    let (mut stream, _) = raw_login(env.addr).await;
    assert_raw_usable(&mut stream, "a new raw client after the burst").await;
    assert_no_panics();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_with_a_bogus_key_does_nothing_and_closes() {
    watch_panics();
    let env = trust_env().await;

    // A key nobody was given: no answer, a closed socket.
    let mut stream = connect(env.addr).await;
    send(&mut stream, &cancel_request(0x1234_5678, -42)).await;
    expect_closed(&mut stream, "CancelRequest with an unknown key").await;

    // The right pid with a wrong secret must not cancel that session's query.
    let (mut victim, (pid, secret)) = raw_login(env.addr).await;
    send(&mut victim, &query("SELECT pg_sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, bogus) in [
        ("wrong secret", cancel_request(pid, secret.wrapping_add(1))),
        ("wrong pid", cancel_request(pid.wrapping_add(1000), secret)),
    ] {
        let mut canceller = connect(env.addr).await;
        send(&mut canceller, &bogus).await;
        expect_closed(&mut canceller, what).await;
    }
    let answer = until_ready(&mut victim, WAIT, "pg_sleep after bogus cancels").await;
    assert_eq!(
        tags(&answer),
        "TDCZ",
        "the query ran to completion: {:?}",
        error_codes(&answer)
    );

    // Control: the right key does cancel (so the above could have failed).
    send(&mut victim, &query("SELECT pg_sleep(10)")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut canceller = connect(env.addr).await;
    send(&mut canceller, &cancel_request(pid, secret)).await;
    expect_closed(&mut canceller, "CancelRequest with the right key").await;
    let answer = until_ready(&mut victim, WAIT, "pg_sleep(10) after a real cancel").await;
    assert_eq!(error_codes(&answer), vec!["57014".to_owned()]);
    assert_raw_usable(&mut victim, "after the cancel").await;

    assert_no_panics();
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Huge but allowed
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_but_allowed_query_gets_the_right_answer() {
    watch_panics();
    let env = trust_env().await;
    const PATTERN: &str = "0123456789abcdef";
    let repeats = 2 * 1024 * 1024 / PATTERN.len();
    let literal = PATTERN.repeat(repeats);
    let sql = format!("SELECT '{literal}'");
    assert!(sql.len() > 2 * 1024 * 1024);

    // Simple protocol, raw.
    let (mut stream, _) = raw_login(env.addr).await;
    send(&mut stream, &query(&sql)).await;
    let answer = until_ready(&mut stream, Duration::from_secs(30), "2 MiB query").await;
    assert_eq!(tags(&answer), "TDCZ", "{:?}", error_codes(&answer));
    assert!(
        first_value(&answer) == Some(literal.clone()),
        "the 2 MiB value came back intact"
    );
    assert_raw_usable(&mut stream, "after the 2 MiB query").await;

    // Extended protocol: a 2 MiB Parse, and a 2 MiB parameter in Bind.
    let client = env.client().await;
    let row = client.query_one(&sql, &[]).await.expect("2 MiB Parse");
    assert!(
        row.get::<_, String>(0) == literal,
        "the 2 MiB value came back intact"
    );
    let row = client
        .query_one(
            "SELECT $1::text = repeat($2::text, $3::int4), length($1::text)",
            &[&literal, &PATTERN, &(repeats as i32)],
        )
        .await
        .expect("2 MiB Bind");
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1) as usize, literal.len());
    assert_no_panics();
    env.stop().await;
}
