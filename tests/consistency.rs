//! Read-your-writes through the router, with real lag: replay is paused on both
//! replicas for the middle third of each checker run (`consistency::verify`).
//! The lag limits are set far out of reach, so only the consistency machinery
//! (commit positions, tokens, keys, pin windows) stands between a read and a
//! stale replica; `none` proves the checker does see stale reads.

mod common;

use std::time::Duration;

use common::raw::*;
use pgrouter::config::{Config, ConsistencyMode};
use pgrouter::consistency::verify::{Pattern, VerifyOptions, VerifyReport, verify};

/// Lag limits no paused replica reaches within a test.
fn unreachable_lag_limits(config: &mut Config) {
    config.monitor.max_replica_lag = Duration::from_secs(3600);
    config.monitor.max_replica_lag_bytes = u64::MAX / 2;
}

fn url_dsn(env: &common::TestEnv) -> String {
    env.url()
}

async fn check(
    env: &common::TestEnv,
    pattern: Pattern,
    mode: Option<ConsistencyMode>,
    gap: Duration,
    lag: bool,
) -> VerifyReport {
    let pause_replicas = if lag {
        env.cluster
            .replicas()
            .iter()
            .map(|r| env.cluster.dsn(r))
            .collect()
    } else {
        Vec::new()
    };
    let options = VerifyOptions {
        dsn: url_dsn(env),
        sessions: 4,
        duration: Duration::from_secs(6),
        pattern,
        mode,
        gap,
        pause_replicas,
    };
    let report = verify(&options).await.expect("checker runs");
    println!("{pattern:?} {mode:?} gap {gap:?} lag {lag}:\n{report}");
    assert_eq!(report.errors, 0, "errors: {:?}", report.first_error);
    assert!(
        report.pairs > 100,
        "too few pairs to judge: {}",
        report.pairs
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_and_pin_never_read_stale_on_one_connection_and_none_does() {
    let env = common::start_with(unreachable_lag_limits).await;
    let none = check(
        &env,
        Pattern::SameConnection,
        Some(ConsistencyMode::None),
        Duration::ZERO,
        true,
    )
    .await;
    assert!(
        none.stale > 0,
        "the checker must see stale reads in mode none"
    );
    env.wait_replicas().await;
    let causal = check(
        &env,
        Pattern::SameConnection,
        Some(ConsistencyMode::Causal),
        Duration::ZERO,
        true,
    )
    .await;
    assert_eq!(causal.stale, 0);
    env.wait_replicas().await;
    let pin = check(
        &env,
        Pattern::SameConnection,
        Some(ConsistencyMode::Pin),
        Duration::ZERO,
        true,
    )
    .await;
    assert_eq!(pin.stale, 0);
    env.stop().await;
}

/// The same guarantee when clients keep their server connections (session pooling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_holds_in_session_pooling_too() {
    let env = common::start_with(|config| {
        unreachable_lag_limits(config);
        config.pool.mode = pgrouter::config::PoolMode::Session;
    })
    .await;
    let causal = check(&env, Pattern::SameConnection, None, Duration::ZERO, true).await;
    assert_eq!(causal.stale, 0);
    assert!(
        causal.replica_share() > 0.0,
        "some reads still reach replicas"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_keys_carry_read_your_writes_across_connections() {
    let env = common::start_with(unreachable_lag_limits).await;
    let token = check(&env, Pattern::Token, None, Duration::ZERO, true).await;
    assert_eq!(token.stale, 0);
    env.wait_replicas().await;
    let key = check(&env, Pattern::Key, None, Duration::ZERO, true).await;
    assert_eq!(key.stale, 0);
    env.wait_replicas().await;
    // Without the token or key, the other connection does read stale rows.
    let bare = check(
        &env,
        Pattern::Token,
        Some(ConsistencyMode::None),
        Duration::ZERO,
        true,
    )
    .await;
    assert!(
        bare.stale > 0,
        "a reader without the token must be able to read stale"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_keeps_reads_on_replicas_and_pin_does_not() {
    let env = common::start().await;
    env.wait_replicas().await;
    let gap = Duration::from_millis(20);
    let causal = check(
        &env,
        Pattern::SameConnection,
        Some(ConsistencyMode::Causal),
        gap,
        false,
    )
    .await;
    assert_eq!(causal.stale, 0);
    assert!(
        causal.replica_share() >= 0.9,
        "causal served {:.1}% of reads 20 ms after a write from replicas",
        causal.replica_share() * 100.0
    );
    let pin = check(
        &env,
        Pattern::SameConnection,
        Some(ConsistencyMode::Pin),
        gap,
        false,
    )
    .await;
    assert_eq!(pin.stale, 0);
    assert_eq!(
        pin.replica_share(),
        0.0,
        "pin reads within the window stay on the primary"
    );
    env.stop().await;
}

/// With `causal_wait`, a read issued right after its write waits for a replica
/// to replay it instead of going to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_wait_lets_immediate_reads_wait_for_a_replica() {
    let env = common::start_with(|config| {
        config.consistency.causal_wait = Duration::from_millis(200);
    })
    .await;
    env.wait_replicas().await;
    let report = check(&env, Pattern::SameConnection, None, Duration::ZERO, false).await;
    assert_eq!(report.stale, 0);
    assert!(
        report.replica_share() >= 0.9,
        "with causal_wait, {:.1}% of immediate reads were served by replicas",
        report.replica_share() * 100.0
    );
    env.stop().await;
}

/// The extended protocol (tokio-postgres prepares every statement): the
/// session's floor and a key in a prepared statement's text apply to each
/// execution, while both replicas are paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_keep_read_your_writes_under_lag() {
    let env = common::start_with(unreachable_lag_limits).await;
    let writer = env.client().await;
    let reader = env.client().await;
    writer
        .batch_execute("CREATE TABLE rw (id int PRIMARY KEY, v int); INSERT INTO rw VALUES (1, 0)")
        .await
        .unwrap();
    env.wait_replicas().await;
    for i in 0..env.cluster.replicas().len() {
        env.cluster.pause_replay(i).await.unwrap();
    }
    let update = writer
        .prepare("/* pgrouter: key=rw:1 */ UPDATE rw SET v = $1 WHERE id = 1")
        .await
        .unwrap();
    let read_same = writer
        .prepare("SELECT v FROM rw WHERE id = 1")
        .await
        .unwrap();
    let read_keyed = reader
        .prepare("/* pgrouter: key=rw:1 */ SELECT v, inet_server_port() FROM rw WHERE id = 1")
        .await
        .unwrap();
    for v in 1..=200 {
        writer.execute(&update, &[&v]).await.unwrap();
        let same: i32 = writer.query_one(&read_same, &[]).await.unwrap().get(0);
        assert_eq!(same, v, "same connection read a stale row");
        let row = reader.query_one(&read_keyed, &[]).await.unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            v,
            "keyed read on another connection was stale"
        );
    }
    // Unkeyed reads on a connection that never wrote still use the replicas.
    let port = common::server_port(&reader, "").await;
    assert!(
        env.replica_ports().contains(&port),
        "reads without a floor use replicas"
    );
    for i in 0..env.cluster.replicas().len() {
        env.cluster.resume_replay(i).await.unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_after_each_write_and_settings_are_checked() {
    watch_panics();
    let env = trust_env_with(unreachable_lag_limits).await;
    let (mut stream, _) = raw_login(env.addr).await;
    raw_query(&mut stream, "CREATE TABLE tok (a int)").await;
    let answer = raw_query(&mut stream, "INSERT INTO tok VALUES (1)").await;
    let token = answer
        .iter()
        .filter(|(tag, _)| *tag == b'S')
        .find_map(|(_, body)| {
            let text = String::from_utf8_lossy(body).into_owned();
            let mut parts = text.split('\0');
            (parts.next() == Some("pgrouter.last_write_lsn"))
                .then(|| parts.next().unwrap_or("").to_owned())
        })
        .expect("ParameterStatus pgrouter.last_write_lsn after a write");
    assert_eq!(
        answer.last().map(|(tag, _)| *tag),
        Some(b'Z'),
        "token comes before ReadyForQuery"
    );
    let shown = first_value(&raw_query(&mut stream, "SHOW pgrouter.last_write_lsn").await);
    assert_eq!(shown.as_deref(), Some(token.as_str()));
    assert!(
        pgrouter::monitor::parse_lsn(&token).is_some(),
        "token {token:?} is an LSN"
    );

    // A read that fell back to the primary is not a write: no new token.
    let answer = raw_query(&mut stream, "SELECT count(*) FROM tok").await;
    assert!(
        !answer.iter().any(|(tag, _)| *tag == b'S'),
        "{}",
        tags(&answer)
    );

    // Bad values and unknown names get PostgreSQL's SQLSTATEs; the session goes on.
    let bad = raw_query(&mut stream, "SET pgrouter.consistency = 'strong'").await;
    assert_eq!(error_codes(&bad), vec!["22023"]);
    let unknown = raw_query(&mut stream, "SET pgrouter.consistancy = 'pin'").await;
    assert_eq!(error_codes(&unknown), vec!["42704"]);
    let ok = raw_query(&mut stream, "SET pgrouter.consistency = 'pin'").await;
    assert!(error_codes(&ok).is_empty(), "{}", tags(&ok));
    let mode = first_value(&raw_query(&mut stream, "SHOW pgrouter.consistency").await);
    assert_eq!(mode.as_deref(), Some("pin"));

    // A staleness budget of 0 means the primary, per session or per statement.
    let client = env.client().await;
    let primary = env.primary_port();
    assert_eq!(
        common::server_port(&client, "/* pgrouter: max_staleness=0 */ ").await,
        primary
    );
    client
        .batch_execute("SET pgrouter.max_staleness = 0")
        .await
        .unwrap();
    assert_eq!(common::server_port(&client, "").await, primary);
    client
        .batch_execute("RESET pgrouter.max_staleness")
        .await
        .unwrap();
    assert_ne!(common::server_port(&client, "").await, primary);
    assert_no_panics();
    env.stop().await;
}
