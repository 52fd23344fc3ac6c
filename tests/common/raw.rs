//! Raw-protocol helpers for the hostile-client tests: frontend messages built by
//! hand, backend messages read and checked one by one, raw trust logins, and a
//! watch for panics in the router's tasks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use pgrouter::config::{AuthMethod, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::TestEnv;

/// How long any single answer from the router may take before the test calls it a hang.
pub const WAIT: Duration = Duration::from_secs(5);
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Largest message the tests accept from the router (a sanity bound on its framing).
pub const MAX_BACKEND_MESSAGE: i32 = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Panic watch: the router runs in-process, its sessions on tokio worker threads.
// A panic there is caught by tokio and would go unnoticed; this hook records it.
// ---------------------------------------------------------------------------

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

pub fn watch_panics() {
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

pub fn assert_no_panics() {
    let panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        panics.is_empty(),
        "tasks panicked on network input: {panics:#?}"
    );
}

// ---------------------------------------------------------------------------
// Environments
// ---------------------------------------------------------------------------

pub async fn trust_env_with(tweak: impl FnOnce(&mut Config)) -> TestEnv {
    super::start_with(|config| {
        config.auth = AuthMethod::Trust;
        tweak(config);
    })
    .await
}

pub async fn trust_env() -> TestEnv {
    trust_env_with(|_| {}).await
}

/// Waits until the router serves exactly `expected` client connections.
pub async fn wait_for_sessions(env: &TestEnv, expected: usize, within: Duration, what: &str) {
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
pub fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut out = ((8 + rest.len()) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(rest);
    out
}

pub fn startup_params(params: &[(&str, &str)]) -> Vec<u8> {
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

pub const LOGIN: &[(&str, &str)] = &[("user", "pgrouter"), ("database", "postgres")];

pub fn startup() -> Vec<u8> {
    packet(PROTOCOL_3_0, &startup_params(LOGIN))
}

/// A tagged message with a correct length.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Just a header declaring `len`, no body.
pub fn header(tag: u8, len: i32) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend_from_slice(&cstr(sql));
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// Bind without parameters, text results.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend_from_slice(&cstr(statement));
    body.extend_from_slice(&0i16.to_be_bytes()); // parameter formats
    body.extend_from_slice(&0i16.to_be_bytes()); // parameters
    body.extend_from_slice(&0i16.to_be_bytes()); // result formats
    message(b'B', &body)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &body)
}

pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(&cstr(name));
    message(b'D', &body)
}

pub fn describe_portal(name: &str) -> Vec<u8> {
    let mut body = vec![b'P'];
    body.extend_from_slice(&cstr(name));
    message(b'D', &body)
}

pub fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(&cstr(name));
    message(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    message(b'H', b"")
}

pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut rest = pid.to_be_bytes().to_vec();
    rest.extend_from_slice(&secret.to_be_bytes());
    packet(CANCEL_REQUEST, &rest)
}

pub fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------
// Reading backend messages
// ---------------------------------------------------------------------------

/// What the router did next.
pub enum Incoming {
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

pub fn is_closed(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Reads one backend message (tag, body), waiting at most `wait`.
pub async fn read_message(stream: &mut TcpStream, wait: Duration) -> Incoming {
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
pub fn fields(body: &[u8]) -> HashMap<char, String> {
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

pub fn code(fields: &HashMap<char, String>) -> &str {
    fields.get(&'C').map_or("", String::as_str)
}

/// The next message must be an ErrorResponse (NoticeResponses are skipped).
pub async fn expect_error(stream: &mut TcpStream, what: &str) -> HashMap<char, String> {
    loop {
        match read_message(stream, WAIT).await {
            Incoming::Msg(b'E', body) => return fields(&body),
            Incoming::Msg(b'N', _) => {}
            other => panic!("{what}: expected an ErrorResponse, got {other:?}"),
        }
    }
}

/// The router must close the connection now, without sending anything more.
pub async fn expect_closed(stream: &mut TcpStream, what: &str) {
    match read_message(stream, WAIT).await {
        Incoming::Closed => {}
        other => panic!("{what}: expected the router to close the connection, got {other:?}"),
    }
}

/// A FATAL ErrorResponse with one of `codes`, then a closed connection.
pub async fn expect_fatal(stream: &mut TcpStream, codes: &[&str], what: &str) {
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
pub async fn until_ready(stream: &mut TcpStream, wait: Duration, what: &str) -> Vec<(u8, Vec<u8>)> {
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

pub fn tags(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(t, _)| *t as char).collect()
}

pub fn error_codes(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    messages
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| code(&fields(body)).to_owned())
        .collect()
}

/// The values of a DataRow (None for NULL).
pub fn data_row(body: &[u8]) -> Vec<Option<Vec<u8>>> {
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
pub fn first_value(messages: &[(u8, Vec<u8>)]) -> Option<String> {
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
pub async fn try_finish_login(
    stream: &mut TcpStream,
    wait: Duration,
) -> Result<(i32, i32), String> {
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

pub async fn finish_login(stream: &mut TcpStream, wait: Duration) -> (i32, i32) {
    try_finish_login(stream, wait)
        .await
        .unwrap_or_else(|problem| panic!("login failed: {problem}"))
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the router");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

pub async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("send to the router");
}

/// A logged-in raw session (trust auth) and its cancel key.
pub async fn raw_login(addr: SocketAddr) -> (TcpStream, (i32, i32)) {
    let mut stream = connect(addr).await;
    send(&mut stream, &startup()).await;
    let key = finish_login(&mut stream, WAIT).await;
    (stream, key)
}

/// Runs a simple query on a raw session and returns every answer up to ReadyForQuery.
pub async fn raw_query(stream: &mut TcpStream, sql: &str) -> Vec<(u8, Vec<u8>)> {
    send(stream, &query(sql)).await;
    until_ready(stream, WAIT, sql).await
}

/// A raw session is still healthy: `SELECT 1` answers 1 with no error.
pub async fn assert_raw_usable(stream: &mut TcpStream, what: &str) {
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

pub async fn assert_client_usable(client: &Client, what: &str) {
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

/// The single-byte answer to SSLRequest/GSSENCRequest must be 'N'.
pub async fn expect_n(stream: &mut TcpStream, what: &str) {
    let answer = tokio::time::timeout(WAIT, stream.read_u8())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(answer, b'N', "{what}: single-byte answer");
}
