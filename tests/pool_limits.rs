//! Pool limits against the real cluster, seen from the primary's own
//! `pg_stat_activity`: connections opened ahead of need (`min_idle`), closed
//! after sitting idle (`idle_timeout`) and replaced when old (`max_lifetime`),
//! never more than `pool_size`; waiting clients served first come, first
//! served; a user's own `pool_mode`; sessions pinned by what lives on one
//! server session (cursors WITH HOLD, advisory locks); in session pooling, a
//! connection cleaned before the next client gets it.

mod common;

use std::time::{Duration, Instant};

use common::{first_text, primary_pid, router_backends_seen_by};
use pgrouter::config::{Config, PoolMode};
use tokio_postgres::error::SqlState;

fn pools(size: usize, tweak: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        config.pool.mode = PoolMode::Transaction;
        config.pool.pool_size = size;
        tweak(config);
    }
}

/// Polls the primary (through `direct`, one connection for the whole poll)
/// until `done` holds for its count of pgrouter's connections, or `within`
/// passes; returns the last count.
async fn backends_once(
    direct: &tokio_postgres::Client,
    done: impl Fn(i64) -> bool,
    within: Duration,
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let count = router_backends_seen_by(direct).await;
        if done(count) || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_connections_are_opened_ahead_of_need() {
    let env = common::start_with(pools(4, |c| c.pool.min_idle = 3)).await;
    let direct = env.primary_direct().await;
    let client = env.client().await;
    // A pool is topped up once it has been used (its login is known then).
    primary_pid(&client).await;
    let open = backends_once(&direct, |n| n >= 3, Duration::from_secs(10)).await;
    // 3 idle, or 4 if a top-up ran while the client's one was in use.
    assert!(
        (3..=4).contains(&open),
        "{open}: min_idle connections wait, idle, on the primary"
    );
    // Six clients in transactions at once never open more than pool_size.
    let mut clients = vec![client];
    for _ in 0..5 {
        clients.push(env.client().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                client
                    .simple_query("BEGIN; SELECT pg_sleep(0.5); COMMIT")
                    .await
                    .unwrap();
            })
        })
        .collect();
    let mut most = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        most = most.max(router_backends_seen_by(&direct).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(most, 4, "the pool fills up to pool_size and no further");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_idle_timeout() {
    let env = common::start_with(pools(4, |c| {
        c.pool.idle_timeout = Duration::from_millis(1500);
    }))
    .await;
    let direct = env.primary_direct().await;
    let client = env.client().await;
    let first = primary_pid(&client).await;
    assert!(router_backends_seen_by(&direct).await >= 1);
    let left = backends_once(&direct, |n| n == 0, Duration::from_secs(10)).await;
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
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_for_a_connection_are_served_in_arrival_order() {
    let env = common::start_with(pools(1, |c| {
        c.pool.checkout_timeout = Duration::from_secs(20);
    }))
    .await;
    let holder = env.client().await;
    holder
        .batch_execute("CREATE TABLE arrivals (seq serial, waiter int)")
        .await
        .unwrap();
    // Logged in before the one primary connection is taken.
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(env.client().await);
    }
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut tasks = Vec::new();
    for (i, waiter) in waiters.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // One Query message, straight to the primary's queue (a prepared
            // statement would first visit a replica).
            waiter
                .simple_query(&format!("INSERT INTO arrivals (waiter) VALUES ({i})"))
                .await
                .unwrap();
        }));
        // Each is queued before the next one asks.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    // Read on the primary: a replica may not have the waiters' rows yet.
    let order: Vec<i32> = env
        .primary_direct()
        .await
        .query("SELECT waiter FROM arrivals ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4], "first come, first served");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_pool_mode_overrides_the_default() {
    // Session pooling for this user: a connected client keeps its primary
    // connection, so with one in the pool a second client cannot log in.
    let env = common::start_with(pools(1, |c| {
        c.pool.checkout_timeout = Duration::from_millis(500);
        c.users[0].pool_mode = Some(PoolMode::Session);
    }))
    .await;
    let first = env.client().await;
    first.batch_execute("SELECT 1").await.unwrap();
    let err = tokio_postgres::connect(&env.dsn(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("no connection left for a second session");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    drop(first);
    env.stop().await;

    // Transaction pooling for this user under a session-pooling default: two
    // clients share the one connection.
    let env = common::start_with(|c| {
        c.pool.mode = PoolMode::Session;
        c.pool.pool_size = 1;
        c.pool.checkout_timeout = Duration::from_millis(500);
        c.users[0].pool_mode = Some(PoolMode::Transaction);
    })
    .await;
    let first = env.client().await;
    let second = env.client().await;
    for client in [&first, &second, &first] {
        client
            .batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_with_hold_and_advisory_locks_pin_the_session() {
    // One pinned client each, so neither pin hides the other; room in the
    // pool for a third client besides them.
    let env = common::start_with(pools(3, |_| {})).await;
    let with_cursor = env.client().await;
    let with_lock = env.client().await;
    let other = env.client().await;
    with_cursor
        .batch_execute("DECLARE kept CURSOR WITH HOLD FOR SELECT generate_series(1, 10)")
        .await
        .unwrap();
    with_lock
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    // The other client keeps the pool's connections busy in between.
    for _ in 0..10 {
        other
            .batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .unwrap();
        other.batch_execute("SELECT 1").await.unwrap();
    }
    let fetched = with_cursor.simple_query("FETCH 5 FROM kept").await.unwrap();
    let rows = fetched
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 5, "the cursor is still there");
    assert_eq!(
        first_value(&other, "SELECT pg_try_advisory_lock(42)::text").await,
        "false",
        "the lock is still held"
    );
    assert_eq!(
        first_value(&with_lock, "SELECT pg_advisory_unlock(42)::text").await,
        "true",
        "by the session that took it"
    );
    env.stop().await;
}

/// The first column of the first row of `sql`'s answer, as text.
async fn first_value(client: &tokio_postgres::Client, sql: &str) -> String {
    first_text(client.simple_query(sql).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_cleans_a_connection_before_the_next_client() {
    let env = common::start_with(|c| {
        c.pool.mode = PoolMode::Session;
        c.pool.pool_size = 1;
    })
    .await;
    let first = env.client().await;
    first
        .batch_execute(
            "SET application_name = 'left_behind'; PREPARE kept AS SELECT 1; \
             CREATE TEMP TABLE scratch (a int); SELECT pg_advisory_lock(7)",
        )
        .await
        .unwrap();
    let pid = primary_pid(&first).await;
    drop(first);

    // The pool's one primary connection, once the first client has gone.
    let second = env.client().await;
    assert_eq!(primary_pid(&second).await, pid, "the connection is reused");
    let in_tx = |sql: &str| format!("BEGIN; {sql}; COMMIT");
    let seen = first_value(&second, &in_tx("SHOW application_name")).await;
    assert_ne!(seen, "left_behind");
    let gone = in_tx("SELECT (to_regclass('pg_temp.scratch') IS NULL)::text");
    assert_eq!(first_value(&second, &gone).await, "true");
    // Seen from outside: the session holding it could take it again anyway.
    let advisory: i64 = env
        .primary_direct()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(advisory, 0, "the advisory lock went with the first client");
    let err = second
        .batch_execute("BEGIN; EXECUTE kept")
        .await
        .expect_err("the statement went with the first client");
    assert_eq!(err.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    env.stop().await;
}
