//! Hostile and broken clients over raw TCP, at the protocol level: garbage and
//! stalled startup packets, SSL/GSSENC requests, and malformed, oversized and
//! unknown messages after login. Each such client must get an ErrorResponse (08P01
//! and the like) or a closed socket, no other client may notice, and no task of the
//! router may panic on network input. Session-level misbehaviour (vanishing clients,
//! bursts, bogus cancels, huge queries) is in `bad_clients.rs`.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use tokio::io::AsyncWriteExt;

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
// 2. A client that stalls mid startup packet
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalling_mid_startup_packet_is_dropped_after_the_startup_timeout() {
    watch_panics();
    let env = trust_env_with(|config| config.limits.startup_timeout = Duration::from_secs(1)).await;
    wait_for_sessions(&env, 0, WAIT, "before the stalling client").await;

    // The length and half the protocol version of a StartupMessage, then nothing.
    let mut stream = connect(env.addr).await;
    send(&mut stream, &startup()[..6]).await;
    let started = Instant::now();
    wait_for_sessions(&env, 1, WAIT, "while the client stalls").await;
    let what = "a client stalled 6 bytes into its startup packet";
    match read_message(&mut stream, Duration::from_secs(3)).await {
        Incoming::Closed => {}
        // PostgreSQL closes silently; a FATAL ErrorResponse before the close is fine too.
        Incoming::Msg(b'E', body) => {
            let error = fields(&body);
            assert_eq!(
                error.get(&'S').map(String::as_str),
                Some("FATAL"),
                "{what}: severity of {error:?}"
            );
            expect_closed(&mut stream, what).await;
        }
        other => panic!("{what}: expected the router to close within 3 s, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "{what}: closed after {waited:?}, before the 1 s startup timeout"
    );
    assert!(
        waited < Duration::from_secs(3),
        "{what}: closed only after {waited:?}"
    );
    wait_for_sessions(&env, 0, WAIT, "after the stalled client was dropped").await;

    // Logins still work, and a session outliving the startup timeout is not dropped.
    let (mut stream, _) = raw_login(env.addr).await;
    assert_raw_usable(&mut stream, "a login after the stalled client").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_raw_usable(&mut stream, "a session older than the startup timeout").await;
    // Kept in a variable: dropping the client would end its session before the count.
    let client = env.client().await;
    assert_client_usable(&client, "tokio-postgres after the stalled client").await;
    wait_for_sessions(&env, 2, WAIT, "the two logged-in clients").await;
    assert_no_panics();
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 3. SSLRequest / GSSENCRequest
// ---------------------------------------------------------------------------

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
// 4. Malformed messages after login
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
