//! Hostile and broken clients over raw TCP, at the session level: clients that vanish
//! mid-query, mid-message or mid-batch, a burst of clients sending random bytes,
//! cancel requests with bogus keys, and huge but allowed queries. No other client may
//! notice, every such session must end, and no task of the router may panic on
//! network input. Startup and message-level garbage is in `bad_input.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::raw::*;
use tokio::io::AsyncWriteExt;
use tokio_postgres::SimpleQueryMessage;

// ---------------------------------------------------------------------------
// 1. Leaving mid-batch
// ---------------------------------------------------------------------------

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
// 2. Disconnect mid-query
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
// 3. A burst of garbage, and cancel requests
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
// 4. Huge but allowed
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
