//! Replica selection by measured lag, with real lag induced by pausing WAL replay.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

const THRESHOLD: Duration = Duration::from_millis(500);

/// Inserts a row on the primary every 10 ms until stopped, so WAL keeps moving.
fn keep_writing(env: &common::TestEnv) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let dsn = env.cluster.dsn(env.cluster.primary());
    let task = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
            .await
            .unwrap();
        while !flag.load(Ordering::Relaxed) {
            client
                .batch_execute("INSERT INTO ticks VALUES (now())")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (stop, task)
}

async fn read_port(client: &tokio_postgres::Client) -> u16 {
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap();
    row.get::<_, i32>(0) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_until_it_catches_up() {
    let env = common::start_with(|c| c.monitor.max_replica_lag = THRESHOLD).await;
    let (stop, writer) = keep_writing(&env);
    let lagging = env.replica_ports()[0];
    let client = env.client().await;

    env.cluster.pause_replay(0).await.unwrap();
    let paused_at = Instant::now();
    // Reads keep flowing; record the last one replica 0 served.
    let mut last_on_lagging = None;
    while paused_at.elapsed() < THRESHOLD + Duration::from_secs(3) {
        // A fresh session each time, so round-robin would reach replica 0 if allowed.
        let fresh = env.client().await;
        for c in [&client, &fresh] {
            if read_port(c).await == lagging {
                last_on_lagging = Some(paused_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = last_on_lagging.unwrap_or_default();
    eprintln!("replica 0: last read {last:?} after pause (threshold {THRESHOLD:?})");
    assert!(
        last <= THRESHOLD + Duration::from_secs(1),
        "replica 0 still served reads {last:?} after its replay paused"
    );
    let topology = env.handle.topology();
    assert!(!topology.nodes[1].admitted, "{:?}", topology.nodes[1]);

    env.cluster.resume_replay(0).await.unwrap();
    env.cluster
        .wait_caught_up(0, Duration::from_secs(30))
        .await
        .unwrap();
    let caught_up_at = Instant::now();
    let back_after = loop {
        let fresh = env.client().await;
        if read_port(&fresh).await == lagging {
            break caught_up_at.elapsed();
        }
        assert!(
            caught_up_at.elapsed() < Duration::from_secs(5),
            "replica 0 never got reads back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("replica 0: reads again {back_after:?} after catching up");
    assert!(back_after <= Duration::from_secs(1), "{back_after:?}");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_lagging_reads_go_to_the_primary_or_fail_clearly() {
    let env = common::start_with(|c| c.monitor.max_replica_lag = THRESHOLD).await;
    let (stop, writer) = keep_writing(&env);
    let client = env.client().await;
    assert_ne!(read_port(&client).await, env.primary_port());
    env.cluster.pause_replay(0).await.unwrap();
    env.cluster.pause_replay(1).await.unwrap();
    tokio::time::sleep(THRESHOLD + Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert_eq!(
            read_port(&client).await,
            env.primary_port(),
            "no_replica = primary"
        );
    }
    // The same router with no_replica = "error" now refuses reads with a clear reason.
    let mut config = (*env.handle.config()).clone();
    config.monitor.no_replica = pgrouter::config::NoReplica::Error;
    env.handle.reload(config).unwrap();
    let err = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW));
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("replica0: lag") && message.contains("replica1: lag"),
        "{message}"
    );
    // Writes are unaffected, and the session is still usable.
    client
        .batch_execute("INSERT INTO ticks VALUES (now())")
        .await
        .unwrap();
    env.cluster.resume_replay(0).await.unwrap();
    env.cluster.resume_replay(1).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_lowers_the_threshold_without_dropping_clients() {
    let env = common::start_with(|c| c.monitor.max_replica_lag = Duration::from_secs(30)).await;
    let (stop, writer) = keep_writing(&env);
    let client = env.client().await;
    env.cluster.pause_replay(0).await.unwrap();
    env.cluster.pause_replay(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(
        read_port(&client).await,
        env.primary_port(),
        "1.5 s of lag is under 30 s"
    );

    let mut config = (*env.handle.config()).clone();
    config.monitor.max_replica_lag = THRESHOLD;
    env.handle.reload(config).unwrap();
    // A bad config is refused and the old one stays.
    let mut bad = (*env.handle.config()).clone();
    bad.monitor.readmit_fraction = 7.0;
    assert!(env.handle.reload(bad).is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_port(&client).await,
        env.primary_port(),
        "the same client, the new threshold"
    );
    env.cluster.resume_replay(0).await.unwrap();
    env.cluster.resume_replay(1).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    env.stop().await;
}

/// Another session's DDL that the replicas have not replayed yet: a session
/// that never wrote (so reads replicas) still finds the new table. The
/// replica's "does not exist" is not the final answer; the primary's is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_replicas_have_not_replayed_yet_are_found_on_the_primary() {
    use common::raw::*;
    let env = trust_env_with(|c| {
        c.monitor.max_replica_lag = Duration::from_secs(3600);
        c.monitor.max_replica_lag_bytes = u64::MAX / 2;
    })
    .await;
    for replica in 0..2 {
        env.cluster.pause_replay(replica).await.unwrap();
    }
    let creator = env.client().await;
    creator
        .batch_execute("CREATE TABLE fresh_t (v int); INSERT INTO fresh_t VALUES (7)")
        .await
        .unwrap();

    // Simple protocol first: tokio-postgres pipelines the Close of a dropped
    // statement ahead of the next query, and a replica read with something
    // still in flight ahead of it is never re-run (that could reorder answers).
    let reader = env.client().await;
    let rows = reader.simple_query("SELECT v FROM fresh_t").await.unwrap();
    assert!(
        rows.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("7"))
        ),
        "simple protocol"
    );
    let v: i32 = reader
        .query_one("SELECT v FROM fresh_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 7, "extended protocol");

    // asyncpg's way: Parse + Describe + Flush, the answers, then Bind/Execute/Sync.
    let (mut raw, _) = raw_login(env.addr).await;
    let prepare = [
        parse("s1", "INSERT INTO fresh_t VALUES (8)"),
        describe_statement("s1"),
        flush(),
    ];
    send(&mut raw, &concat(&prepare)).await;
    for expected in [b'1', b't', b'n'] {
        match read_message(&mut raw, WAIT).await {
            Incoming::Msg(tag, body) => assert_eq!(
                tag as char,
                expected as char,
                "answer to Parse/Describe/Flush: {:?}",
                fields(&body)
            ),
            other => panic!("answer to Parse/Describe/Flush: {other:?}"),
        }
    }
    send(&mut raw, &concat(&[bind("", "s1"), execute(""), sync()])).await;
    let answers = until_ready(&mut raw, WAIT, "Bind/Execute/Sync").await;
    // ParameterStatus (the new write token) may come before ReadyForQuery.
    let tags: String = answers
        .iter()
        .map(|(t, _)| *t as char)
        .filter(|&t| t != 'S')
        .collect();
    assert_eq!(tags, "2CZ", "the insert ran");

    // A table missing everywhere still gets PostgreSQL's error.
    let err = reader
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    for replica in 0..2 {
        env.cluster.resume_replay(replica).await.unwrap();
    }
    env.stop().await;
}
