//! Pool limits against the real cluster, seen from the primary's own
//! `pg_stat_activity`: connections opened ahead of need (`min_idle`), closed
//! after sitting idle (`idle_timeout`) and replaced when old (`max_lifetime`),
//! never more than `pool_size`.

mod common;

use std::time::{Duration, Instant};

use pgrouter::config::{Config, PoolMode};

fn pools(size: usize, tweak: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        config.pool.mode = PoolMode::Transaction;
        config.pool.pool_size = size;
        tweak(config);
    }
}

/// Server connections pgrouter's pools hold on the primary (the monitor's own
/// connection and the test's direct one excluded).
async fn primary_backends(env: &common::TestEnv) -> i64 {
    env.primary_direct()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid() AND coalesce(application_name, '') <> 'pgrouter_monitor'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls the primary until `done` holds for its count of pgrouter's
/// connections, or `within` passes; returns the last count.
async fn backends_once(env: &common::TestEnv, done: impl Fn(i64) -> bool, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let count = primary_backends(env).await;
        if done(count) || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The primary backend that runs a read-write transaction.
async fn primary_pid(client: &tokio_postgres::Client) -> String {
    let rows = client
        .simple_query("BEGIN; SELECT pg_backend_pid(); COMMIT")
        .await
        .expect("the transaction runs");
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_connections_are_opened_ahead_of_need() {
    let env = common::start_with(pools(4, |c| c.pool.min_idle = 3)).await;
    let client = env.client().await;
    // A pool is topped up once it has been used (its login is known then).
    primary_pid(&client).await;
    let open = backends_once(&env, |n| n >= 3, Duration::from_secs(10)).await;
    assert_eq!(open, 3, "min_idle connections wait, idle, on the primary");
    // Clients that use them open no more than pool_size in all.
    let mut clients = vec![client];
    for _ in 0..5 {
        clients.push(env.client().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                client
                    .simple_query("BEGIN; SELECT pg_sleep(0.3); COMMIT")
                    .await
                    .unwrap();
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        primary_backends(&env).await <= 4,
        "pool_size bounds the pool"
    );
    for task in tasks {
        task.await.unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_idle_timeout() {
    let env = common::start_with(pools(4, |c| {
        c.pool.idle_timeout = Duration::from_millis(1500);
    }))
    .await;
    let client = env.client().await;
    let first = primary_pid(&client).await;
    assert!(primary_backends(&env).await >= 1);
    let left = backends_once(&env, |n| n == 0, Duration::from_secs(10)).await;
    assert_eq!(left, 0, "idle connections are closed after idle_timeout");
    // The client, idle all along, gets a new connection.
    assert_ne!(primary_pid(&client).await, first);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_constant_use_is_replaced_after_max_lifetime() {
    let env = common::start_with(pools(1, |c| {
        c.pool.max_lifetime = Duration::from_secs(1);
    }))
    .await;
    let client = env.client().await;
    let first = primary_pid(&client).await;
    // Never idle for long (idle_timeout and health checks stay out of it):
    // only its age can retire it.
    let started = Instant::now();
    let mut replaced = false;
    while started.elapsed() < Duration::from_secs(5) {
        if primary_pid(&client).await != first {
            replaced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replaced, "the connection was replaced after max_lifetime");
    assert!(started.elapsed() >= Duration::from_millis(800));
    env.stop().await;
}
