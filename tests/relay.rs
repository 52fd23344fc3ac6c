//! Relay fidelity through the router against a real primary + 2 replicas.

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};

fn first_value(rows: &[SimpleQueryMessage]) -> String {
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_route_reads_to_replicas_and_writes_to_primary() {
    let env = common::start().await;
    let client = env.client().await;

    let rows = client
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    assert_eq!(first_value(&rows), "t", "a plain SELECT runs on a replica");
    let port = common::server_port(&client, "").await;
    assert!(
        env.replica_ports().contains(&port),
        "port {port} is a replica"
    );

    client
        .simple_query("CREATE TABLE simple_t (id int primary key, v text); INSERT INTO simple_t VALUES (1, 'a')")
        .await
        .expect("DDL and DML go to the primary");
    client
        .simple_query("INSERT INTO simple_t VALUES (2, 'b')")
        .await
        .expect("insert on primary");
    env.wait_replicas().await;
    let rows = client
        .simple_query("SELECT count(*) FROM simple_t")
        .await
        .unwrap();
    assert_eq!(first_value(&rows), "2");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_wholly_on_the_primary() {
    let env = common::start().await;
    let client = env.client().await;
    client.simple_query("BEGIN").await.unwrap();
    assert_eq!(common::server_port(&client, "").await, env.primary_port());
    let rows = client
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    assert_eq!(first_value(&rows), "f");
    client.simple_query("COMMIT").await.unwrap();
    assert!(
        env.replica_ports()
            .contains(&common::server_port(&client, "").await)
    );

    // The same through the extended protocol (tokio-postgres transactions).
    let mut client = env.client().await;
    let tx = client.transaction().await.unwrap();
    let port: i32 = tx
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, env.primary_port());
    tx.commit().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_binary_parameters_and_results() {
    let env = common::start().await;
    let client = env.client().await;
    let row = client
        .query_one(
            "SELECT $1::int4 + 1, $2::text || '!', $3::bytea, $4::float8 * 2, NOT $5::bool, $6::int8[]",
            &[&41i32, &"hi", &vec![0u8, 255, 10], &1.25f64, &false, &vec![1i64, 2, 3]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0u8, 255, 10]);
    assert_eq!(row.get::<_, f64>(3), 2.5);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<i64>>(5), vec![1, 2, 3]);
    // Non-UTF-8-safe bytes and NULLs pass unchanged.
    let row = client
        .query_one("SELECT NULL::text, decode('00ff00', 'hex')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Vec<u8>>(1), vec![0u8, 255, 0]);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statement_reused_a_thousand_times_and_across_nodes() {
    let env = common::start().await;
    let mut client = env.client().await;
    let statement = client
        .prepare("SELECT $1::int4 * 2, inet_server_port()")
        .await
        .unwrap();
    for i in 0..1000i32 {
        let row = client.query_one(&statement, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
    let row = client.query_one(&statement, &[&1i32]).await.unwrap();
    assert!(env.replica_ports().contains(&(row.get::<_, i32>(1) as u16)));

    // Prepared on a replica, executed inside a transaction: the router prepares it
    // on the primary first.
    let tx = client.transaction().await.unwrap();
    let row = tx.query_one(&statement, &[&5i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 10);
    assert_eq!(row.get::<_, i32>(1) as u16, env.primary_port());
    tx.commit().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_copy_out() {
    let env = common::start().await;
    let client = env.client().await;
    client
        .simple_query("CREATE TABLE copy_t (id int, v text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    let copied = sink.as_mut().finish().await.unwrap();
    assert_eq!(copied, 5000);
    env.wait_replicas().await;
    let stream = client
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<_> = stream.collect().await;
    let text: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 5000);
    assert!(text.starts_with("0\trow 0\n"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_their_sqlstate_and_the_session_stays_usable() {
    let env = common::start().await;
    let client = env.client().await;
    let err = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    let db_err = err.as_db_error().unwrap();
    assert!(db_err.message().contains("no_such_table"));
    assert!(
        db_err.position().is_some(),
        "the server's fields pass through"
    );
    assert_eq!(
        first_value(&client.simple_query("SELECT 7").await.unwrap()),
        "7"
    );
    // Inside a failed transaction the server's state is reported faithfully.
    client.simple_query("BEGIN").await.unwrap();
    assert!(client.simple_query("SELECT 1/0").await.is_err());
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(
        first_value(&client.simple_query("SELECT 8").await.unwrap()),
        "8"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_only_the_targeted_query() {
    let env = common::start().await;
    let victim = env.client().await;
    let bystander = env.client().await;
    let token = victim.cancel_token();
    let other = tokio::spawn(async move {
        let started = Instant::now();
        bystander
            .simple_query("SELECT pg_sleep(2)")
            .await
            .map(|_| started.elapsed())
    });
    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let result = victim.simple_query("SELECT pg_sleep(30)").await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled_at = Instant::now();
    token
        .cancel_query(NoTls)
        .await
        .expect("cancel request sent");
    let (result, _) = sleeper.await.unwrap();
    let err = result.expect_err("the query is cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
    let other_elapsed = other
        .await
        .unwrap()
        .expect("the bystander's query is untouched");
    assert!(other_elapsed >= Duration::from_secs(2));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_session_to_every_node() {
    let env = common::start().await;
    let client = env.client().await;
    client
        .simple_query("CREATE SCHEMA s1; CREATE TABLE s1.only_here (v text); INSERT INTO s1.only_here VALUES ('from s1')")
        .await
        .unwrap();
    env.wait_replicas().await;
    client
        .simple_query("SET search_path TO s1, public")
        .await
        .unwrap();
    client
        .simple_query("SET application_name = 'router-test'")
        .await
        .unwrap();
    let rows = client
        .simple_query(
            "SELECT v, inet_server_port(), current_setting('application_name') FROM only_here",
        )
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap().to_owned(),
                r.get(1).unwrap().to_owned(),
                r.get(2).unwrap().to_owned(),
            )),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.0, "from s1");
    assert!(
        env.replica_ports().contains(&row.1.parse().unwrap()),
        "read ran on a replica"
    );
    assert_eq!(row.2, "router-test");
    // A failed SET is not replayed elsewhere.
    assert!(
        client
            .simple_query("SET search_path TO 'x', y z")
            .await
            .is_err()
    );
    let rows = client.simple_query("SHOW search_path").await.unwrap();
    assert_eq!(first_value(&rows), "s1, public");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_28p01() {
    let env = common::start().await;
    let dsn = env.dsn().replace("password=pgrouter", "password=wrong");
    let err = tokio_postgres::connect(&dsn, NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    let dsn = env.dsn().replace("user=pgrouter", "user=nobody");
    let err = tokio_postgres::connect(&dsn, NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    // A database that does not exist: the server's own error reaches the client.
    let dsn = env.dsn().replace("dbname=postgres", "dbname=nope");
    let err = tokio_postgres::connect(&dsn, NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_authentication() {
    let env = common::start_with(|config| config.auth = pgrouter::config::AuthMethod::Md5).await;
    let client = env.client().await;
    assert_eq!(
        first_value(&client.simple_query("SELECT 1").await.unwrap()),
        "1"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_router_ends_every_session_with_57p01() {
    let mut env = common::start().await;
    // An idle session, and one waiting for a long query on a replica.
    let (idle, idle_connection) = tokio_postgres::connect(&env.dsn(), NoTls).await.unwrap();
    let idle_ended = tokio::spawn(idle_connection);
    idle.simple_query("SELECT 1").await.unwrap();
    let busy = env.client().await;
    let sleeping = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    wait_until_running(&env, "SELECT pg_sleep(60)").await;

    let started = Instant::now();
    env.stop_router().await;
    let idle_end = tokio::time::timeout(Duration::from_secs(10), idle_ended)
        .await
        .expect("the idle session ends")
        .unwrap();
    let err = idle_end.expect_err("the idle session is told why it ends");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the busy session does not wait for its query")
        .unwrap()
        .expect_err("the running query ends with the session");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(idle);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_do_not_outlive_an_aborted_router() {
    let mut env = common::start().await;
    let (client, connection) = tokio_postgres::connect(&env.dsn(), NoTls).await.unwrap();
    let ended = tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();

    env.abort_router().await;
    let end = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the session ends with its router")
        .unwrap();
    let err = end.expect_err("the session is told why it ends");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    drop(client);
    env.stop().await;
}

/// Waits until some node runs `sql` (a read: on a replica, or the primary).
async fn wait_until_running(env: &common::TestEnv, sql: &str) {
    let cluster = &env.cluster;
    let nodes: Vec<_> = std::iter::once(cluster.primary())
        .chain(cluster.replicas().iter())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for node in &nodes {
            let direct = cluster.connect(node).await.unwrap();
            let running: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                    &[&sql],
                )
                .await
                .unwrap()
                .get(0);
            if running > 0 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{sql} never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
