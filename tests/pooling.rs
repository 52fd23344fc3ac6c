//! Transaction pooling against the real cluster: many clients share a few
//! server connections, and what a client set up (prepared statements, SETs,
//! SQL PREPARE, temp tables) still behaves as on its own PostgreSQL session.

mod common;

use std::time::{Duration, Instant};

use common::{first_text, primary_pid, router_backends};
use pgrouter::config::{Config, PoolMode};
use tokio_postgres::error::SqlState;

fn small_pools(size: usize) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        config.pool.mode = PoolMode::Transaction;
        config.pool.pool_size = size;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_share_two_server_connections() {
    let env = common::start_with(small_pools(2)).await;
    env.client()
        .await
        .batch_execute("CREATE TABLE hits (client int, n int)")
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(env.client().await);
    }
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..25 {
                client
                    .execute("INSERT INTO hits VALUES ($1, $2)", &[&(i as i32), &n])
                    .await
                    .unwrap();
                client
                    .batch_execute(&format!("BEGIN; INSERT INTO hits VALUES ({i}, -1); COMMIT"))
                    .await
                    .unwrap();
                let row = client
                    .query_one(
                        "SELECT count(*) FROM hits WHERE client = $1 AND n >= 0",
                        &[&(i as i32)],
                    )
                    .await
                    .unwrap();
                // Read-your-writes (causal) holds through the pool too.
                assert_eq!(row.get::<_, i64>(0), i64::from(n) + 1);
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    let backends = router_backends(&env).await;
    assert!(
        backends <= 2,
        "40 clients held {backends} primary connections with pool_size 2"
    );
    for client in &clients {
        assert!(!client.is_closed());
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_of_clients_sharing_one_connection_never_collide() {
    let env = common::start_with(small_pools(1)).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(env.client().await);
    }
    // tokio-postgres names every client's statements s0, s1, ...: the same
    // names for different texts, on one shared server connection per node.
    let mut statements = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let own = client
            .prepare(&format!("SELECT $1::int + {i}"))
            .await
            .unwrap();
        let shared = client.prepare("SELECT $1::int * 2").await.unwrap();
        statements.push((own, shared));
    }
    for round in 0..30 {
        for (i, (client, (own, shared))) in clients.iter().zip(&statements).enumerate() {
            let got: i32 = client.query_one(own, &[&round]).await.unwrap().get(0);
            assert_eq!(got, round + i as i32);
            let twice: i32 = client.query_one(shared, &[&round]).await.unwrap().get(0);
            assert_eq!(twice, round * 2);
        }
    }
    // Closing one client's statement leaves the others' working.
    let (own0, shared0) = statements.remove(0);
    drop((own0, shared0));
    clients[0].batch_execute("SELECT 1").await.unwrap();
    for (client, (own, shared)) in clients[1..].iter().zip(&statements) {
        client.query_one(own, &[&1]).await.unwrap();
        client.query_one(shared, &[&1]).await.unwrap();
    }
    env.stop().await;
}

/// With `max_prepared_statements = 5`, a client cycling through 20 prepared
/// statements gets every answer right, while no server connection ever holds
/// more than 5 of them (the least recently used are closed and prepared again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_keep_at_most_max_prepared_statements() {
    let env = common::start_with(|config| {
        small_pools(1)(config);
        config.pool.max_prepared_statements = 5;
    })
    .await;
    let client = env.client().await;
    let mut statements = Vec::new();
    for i in 0..20 {
        let sql = format!("SELECT $1::int + {i}");
        statements.push(client.prepare(&sql).await.unwrap());
    }
    let mut most = 0;
    for round in 0..3 {
        for (i, statement) in statements.iter().enumerate() {
            let got: i32 = client.query_one(statement, &[&round]).await.unwrap().get(0);
            assert_eq!(got, round + i as i32);
            // Runs on a connection of the same pools (one per node).
            let rows = client
                .simple_query(
                    "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgr\\_%'",
                )
                .await
                .unwrap();
            let count: i64 = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
                    _ => None,
                })
                .unwrap();
            most = most.max(count);
        }
    }
    assert!(
        (1..=5).contains(&most),
        "a server connection held {most} of pgrouter's statements (limit 5)"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_sql_prepare_follow_the_client() {
    let env = common::start_with(small_pools(1)).await;
    let a = env.client().await;
    let b = env.client().await;
    a.batch_execute("SET application_name = 'client_a'; SET search_path = pg_catalog")
        .await
        .unwrap();
    a.batch_execute("PREPARE answer AS SELECT 42")
        .await
        .unwrap();
    for _ in 0..10 {
        // B runs on the same single server connection per node in between.
        let b_name = first_text(b.simple_query("SHOW application_name").await.unwrap());
        assert_ne!(b_name, "client_a", "B must not see A's settings");
        let a_name = first_text(a.simple_query("SHOW application_name").await.unwrap());
        assert_eq!(a_name, "client_a");
        let answer = first_text(a.simple_query("EXECUTE answer").await.unwrap());
        assert_eq!(answer, "42");
        let err = b.simple_query("EXECUTE answer").await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    }
    a.batch_execute("DEALLOCATE answer").await.unwrap();
    let err = a.simple_query("EXECUTE answer").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    env.stop().await;
}

/// A client that sets the same parameters again and again (per request, as
/// many applications do) is remembered by its last values: it is not pinned
/// to the primary for a long history (past 256 entries it would be), and every
/// connection it gets, also after another client used it, has those values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_changing_settings_is_not_pinned() {
    let env = common::start_with(small_pools(1)).await;
    let a = env.client().await;
    let b = env.client().await;
    a.batch_execute("SET work_mem = '1MB'").await.unwrap();
    for n in 0..300 {
        a.batch_execute(&format!("SET application_name = 'a{n}'"))
            .await
            .unwrap();
        a.batch_execute(&format!("SET statement_timeout = {}", 1000 + n))
            .await
            .unwrap();
        if n % 50 == 0 {
            // B takes the single connection per node in between.
            let b_name = first_text(b.simple_query("SHOW application_name").await.unwrap());
            assert!(!b_name.starts_with('a'), "B sees A's {b_name}");
        }
    }
    a.batch_execute("RESET work_mem").await.unwrap();
    let replica = first_text(a.simple_query("SELECT pg_is_in_recovery()").await.unwrap());
    assert_eq!(replica, "t", "A reads from a replica: it is not pinned");
    let sql = "SELECT current_setting('application_name') || ' ' || \
        current_setting('statement_timeout') || ' ' || current_setting('work_mem')";
    for client in [&b, &a, &b, &a] {
        let seen = first_text(client.simple_query(sql).await.unwrap());
        if std::ptr::eq(client, &a) {
            assert_eq!(seen, "a299 1299ms 4MB");
        } else {
            assert!(!seen.starts_with("a299"), "B sees {seen}");
        }
    }
    // A setting made in a transaction that rolls back is not kept; one made
    // in a transaction that commits is, on every connection A gets.
    for (end, expected) in [("ROLLBACK", "a299"), ("COMMIT", "in_tx")] {
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute("SET application_name = 'in_tx'")
            .await
            .unwrap();
        a.batch_execute(end).await.unwrap();
        for client in [&b, &a, &b, &a] {
            let seen = first_text(client.simple_query("SHOW application_name").await.unwrap());
            if std::ptr::eq(client, &a) {
                assert_eq!(seen, expected, "after {end}");
            } else {
                assert!(!seen.starts_with('a') && seen != "in_tx", "B sees {seen}");
            }
        }
    }
    // A client with no settings yet: its transaction keeps running after a SET.
    let c = env.client().await;
    for sql in [
        "BEGIN",
        "SET statement_timeout = 5000",
        "SELECT 1",
        "COMMIT",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let seen = first_text(c.simple_query("SHOW statement_timeout").await.unwrap());
    assert_eq!(seen, "5s");
    env.stop().await;
}

/// A setting in one extended-protocol batch with the BEGIN and the end of its
/// transaction block is kept only if the block commits: the reads after it
/// run on a replica connection, where the session's settings are replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_sets_and_ends_a_transaction_keeps_it_only_on_commit() {
    use common::raw::*;
    let env = trust_env_with(small_pools(1)).await;
    let (mut stream, _) = raw_login(env.addr).await;
    let s = &mut stream;
    for (end, expected) in [("ROLLBACK", ""), ("COMMIT", "kept")] {
        let mut messages = Vec::new();
        for sql in ["BEGIN", "SET application_name = 'kept'", end] {
            messages.extend([parse("", sql), bind("", ""), execute("")]);
        }
        messages.push(sync());
        send(s, &concat(&messages)).await;
        let answer = until_ready(s, WAIT, end).await;
        assert_eq!(error_codes(&answer), Vec::<String>::new(), "{end}");
        let answer = raw_query(s, "SHOW application_name").await;
        assert_eq!(
            first_value(&answer).as_deref(),
            Some(expected),
            "after {end}"
        );
    }
    env.stop().await;
}

/// COMMIT AND CHAIN commits a block's settings though a block stays open:
/// the client keeps them, and the connection that carries them is never
/// handed to another client as if it were clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_commit_keeps_settings_and_never_leaks_them() {
    let env = common::start_with(small_pools(1)).await;
    let a = env.client().await;
    let b = env.client().await;
    for sql in [
        "BEGIN",
        "SET search_path = pg_catalog, a_only",
        "COMMIT AND CHAIN",
        "ROLLBACK",
    ] {
        a.batch_execute(sql).await.unwrap();
    }
    // B's read-write transaction runs on the single primary connection.
    b.batch_execute("BEGIN").await.unwrap();
    let b_path = first_text(b.simple_query("SHOW search_path").await.unwrap());
    b.batch_execute("COMMIT").await.unwrap();
    assert!(
        !b_path.contains("a_only"),
        "B got A's search_path: {b_path}"
    );
    let a_path = first_text(a.simple_query("SHOW search_path").await.unwrap());
    assert!(
        a_path.contains("a_only"),
        "A lost its committed search_path: {a_path}"
    );
    env.stop().await;
}

/// A setting made in a section ended by Flush inside a transaction block is
/// not remembered (it has no Sync of its own), so the connection carrying it
/// is cleaned before another client gets it, and stays so whatever the
/// session does next on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_before_a_flush_never_reaches_another_client() {
    use common::raw::*;
    let env = trust_env_with(small_pools(1)).await;
    let (mut a, _) = raw_login(env.addr).await;
    let (mut b, _) = raw_login(env.addr).await;
    raw_query(&mut b, "SET work_mem = '2MB'").await;
    raw_query(&mut a, "BEGIN").await;
    let set = "SET search_path = pg_catalog, a_only";
    send(
        &mut a,
        &concat(&[parse("", set), bind("", ""), execute(""), flush()]),
    )
    .await;
    for expected in [b'1', b'2', b'C'] {
        match read_message(&mut a, WAIT).await {
            Incoming::Msg(tag, _) => assert_eq!(tag, expected),
            other => panic!("{other:?}"),
        }
    }
    send(&mut a, &sync()).await;
    until_ready(&mut a, WAIT, "Sync").await;
    for sql in ["SELECT 1", "SET work_mem = '2MB'", "COMMIT"] {
        let answer = raw_query(&mut a, sql).await;
        assert_eq!(error_codes(&answer), Vec::<String>::new(), "{sql}");
    }
    // B, with the same remembered settings as A, gets the single primary
    // connection for its read-write transaction.
    raw_query(&mut b, "BEGIN").await;
    let path = first_value(&raw_query(&mut b, "SHOW search_path").await);
    raw_query(&mut b, "COMMIT").await;
    assert!(
        !path.unwrap_or_default().contains("a_only"),
        "B got A's search_path"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_53300_after_checkout_timeout() {
    let env = common::start_with(|config| {
        small_pools(1)(config);
        config.pool.checkout_timeout = Duration::from_millis(300);
    })
    .await;
    let holder = env.client().await;
    let waiter = env.client().await;
    holder
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let started = Instant::now();
    let err = waiter
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    holder.batch_execute("COMMIT").await.unwrap();
    waiter
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_pin_the_session_and_keep_working() {
    let env = common::start_with(small_pools(2)).await;
    let pinned = env.client().await;
    let other = env.client().await;
    pinned
        .batch_execute("CREATE TEMP TABLE scratch (a int)")
        .await
        .unwrap();
    for i in 0..20 {
        pinned
            .execute("INSERT INTO scratch VALUES ($1)", &[&i])
            .await
            .unwrap();
        other.batch_execute("SELECT 1").await.unwrap();
    }
    let count: i64 = pinned
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 20);
    env.stop().await;
}

/// pgbench -M prepared prepares each statement with a blocking PQprepare on its
/// one thread while its other clients hold the pool: preparing must not need a
/// pooled primary connection, or everything waits for the checkout timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_more_clients_than_connections() {
    use common::pgbench::{pgbench, pgbench_path, summarise};
    let env = common::start_with(small_pools(2)).await;
    let bin = pgbench_path();
    let direct = env.cluster.dsn(env.cluster.primary());
    let init: Vec<String> = ["-i", "-q", "-s", "1", &direct]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pgbench(&bin, &init, Duration::from_secs(120)).await;
    let args: Vec<String> = [
        "-n",
        "-M",
        "prepared",
        "-T",
        "4",
        "-c",
        "20",
        "-j",
        "1",
        &env.url(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = pgbench(&bin, &args, Duration::from_secs(60)).await;
    let summary = summarise(
        "pgbench tpcb-like -M prepared -c 20 through pool_size 2",
        &out,
    );
    assert!(summary.transactions > 20, "{}", out.stdout);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_died_while_idle_is_replaced_before_reuse() {
    let env = common::start_with(|config| {
        small_pools(1)(config);
        config.pool.health_check_after = Duration::from_millis(200);
    })
    .await;
    let client = env.client().await;
    let first = primary_pid(&client).await;
    let killed = env
        .primary_direct()
        .await
        .query_one(&format!("SELECT pg_terminate_backend({first})"), &[])
        .await
        .unwrap();
    assert!(
        killed.get::<_, bool>(0),
        "the pooled backend was terminated"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = primary_pid(&client).await;
    assert_ne!(first, second, "a new server connection serves the client");
    env.stop().await;
}
