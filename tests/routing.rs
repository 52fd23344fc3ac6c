//! Routing decisions against the real cluster: writes never reach a replica, reads
//! do, and the safety net re-runs on the primary what a replica refuses.

mod common;

use tokio_postgres::SimpleQueryMessage;

fn first_value(rows: &[SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// Statements that must run on the primary; each fails on a replica with 25006 or
/// similar, so a single misroute fails the test (the safety net is checked separately
/// through the misroute counter, which must stay at zero here).
const PRIMARY_CORPUS: &[&str] = &[
    "CREATE TABLE corpus (id serial primary key, v text)",
    "INSERT INTO corpus (v) VALUES ('a'), ('b')",
    "insert   into corpus(v) values ('c') returning id",
    "UPDATE corpus SET v = upper(v) WHERE id = 1",
    "DELETE FROM corpus WHERE id = 3",
    "WITH moved AS (DELETE FROM corpus WHERE id = 2 RETURNING v) INSERT INTO corpus (v) SELECT v FROM moved",
    "SELECT * FROM corpus FOR UPDATE",
    "SELECT * FROM corpus FOR SHARE",
    "SELECT nextval('corpus_id_seq')",
    "SELECT setval('corpus_id_seq', 100)",
    "SELECT pg_advisory_lock(1), pg_advisory_unlock(1)",
    "SELECT txid_current()",
    "SELECT pg_current_wal_lsn()",
    "SELECT set_config('application_name', 'x', false)",
    "SELECT * INTO corpus_copy FROM corpus",
    "CREATE INDEX ON corpus (v)",
    "ALTER TABLE corpus ADD COLUMN w int",
    "TRUNCATE corpus_copy",
    "VACUUM corpus",
    "ANALYZE corpus",
    "DO $$ BEGIN PERFORM 1; END $$",
    "NOTIFY some_channel",
    "BEGIN; LOCK TABLE corpus IN SHARE MODE; COMMIT",
    "CREATE MATERIALIZED VIEW corpus_mv AS SELECT count(*) FROM corpus",
    "REFRESH MATERIALIZED VIEW corpus_mv",
    "EXPLAIN ANALYZE INSERT INTO corpus (v) VALUES ('explained')",
    "SELECT 1; UPDATE corpus SET v = v",
    "MERGE INTO corpus c USING (SELECT 1 AS id) s ON c.id = s.id WHEN MATCHED THEN UPDATE SET v = 'merged'",
    "PREPARE ins AS INSERT INTO corpus (v) VALUES ($1)",
    "EXECUTE ins('prepared')",
    "DEALLOCATE ins",
    "COMMENT ON TABLE corpus IS 'corpus'",
    "DROP MATERIALIZED VIEW corpus_mv",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_corpus_never_reaches_a_replica() {
    let env = common::start().await;
    let client = env.client().await;
    for sql in PRIMARY_CORPUS {
        if let Err(err) = client.simple_query(sql).await {
            panic!("{sql}: {err:?}");
        }
    }
    // The same statements through the extended protocol (one statement each).
    for sql in [
        "INSERT INTO corpus (v) VALUES ($1)",
        "UPDATE corpus SET v = $1 WHERE id = 1",
    ] {
        client
            .execute(sql, &[&"ext"])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let row = client
        .query_one("SELECT nextval('corpus_id_seq')", &[])
        .await
        .unwrap();
    assert!(row.get::<_, i64>(0) > 100);
    assert_eq!(
        env.handle.stats().misrouted(),
        0,
        "the classifier sent a write to a replica"
    );

    // Reads report a replica (on a connection that has not written: this
    // session's own reads wait for its writes' WAL, see tests/consistency.rs).
    env.wait_replicas().await;
    let client = env.client().await;
    for sql in [
        "SELECT inet_server_port()",
        "select inet_server_port() from corpus limit 1",
        "WITH x AS (SELECT inet_server_port() p) SELECT p FROM x",
        "/* pgrouter: replica */ SELECT inet_server_port()",
    ] {
        let port: u16 = first_value(&client.simple_query(sql).await.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!(env.replica_ports().contains(&port), "{sql} ran on {port}");
    }
    let port: u16 = first_value(
        &client
            .simple_query("/* pgrouter: primary */ SELECT inet_server_port()")
            .await
            .unwrap(),
    )
    .unwrap()
    .parse()
    .unwrap();
    assert_eq!(port, env.primary_port());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_classifier_cannot_see_is_rerun_on_the_primary() {
    let env = common::start().await;
    let client = env.client().await;
    client
        .batch_execute(
            "CREATE TABLE hits (n int);
             CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS 'INSERT INTO hits VALUES (1) RETURNING 1'",
        )
        .await
        .unwrap();
    env.wait_replicas().await;
    // The hint says "replica" and the text looks like a read: only the replica can
    // tell it writes (25006). The client must see a normal answer, once.
    let rows = client
        .simple_query("/* pgrouter: replica */ SELECT bump()")
        .await
        .unwrap();
    assert_eq!(first_value(&rows).as_deref(), Some("1"));
    // The first statement wrote: until a replica has replayed that write,
    // read-your-writes rightly sends the next read to the primary, where it
    // would not be refused. On a loaded machine replay can lag that long.
    env.wait_replicas().await;
    let row = client
        .query_one(
            "/* pgrouter: replica */ SELECT bump() AS b, 'x'::text AS t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "x");
    assert_eq!(env.handle.stats().misrouted(), 2);
    let direct = env.primary_direct().await;
    let count: i64 = direct
        .query_one("SELECT count(*) FROM hits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "each statement ran exactly once");
    // The session is still fine afterwards.
    let rows = client.simple_query("SELECT 41 + 1").await.unwrap();
    assert_eq!(first_value(&rows).as_deref(), Some("42"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_run_on_one_replica_and_replica_hints_never_write() {
    let env = common::start().await;
    let client = env.client().await;
    client
        .batch_execute("CREATE TABLE ro (v int); INSERT INTO ro VALUES (1)")
        .await
        .unwrap();
    env.wait_replicas().await;

    // READ ONLY from its first statement: the whole transaction on one replica.
    for begin in [
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY",
        "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    ] {
        client.batch_execute(begin).await.unwrap();
        let first = common::server_port(&client, "").await;
        assert!(
            env.replica_ports().contains(&first),
            "{begin}: ran on {first}"
        );
        for _ in 0..5 {
            assert_eq!(
                common::server_port(&client, "").await,
                first,
                "{begin}: one replica throughout"
            );
        }
        let row = client
            .query_one("SELECT count(*) FROM ro", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1);
        // A write inside fails exactly as PostgreSQL fails it in a READ ONLY transaction.
        let err = client
            .batch_execute("INSERT INTO ro VALUES (2)")
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    // A plain BEGIN is read-write: the primary.
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(common::server_port(&client, "").await, env.primary_port());
    client.batch_execute("COMMIT").await.unwrap();

    // A replica hint on a write is refused with a clear error; nothing is written.
    let err = client
        .batch_execute("/* pgrouter: replica */ INSERT INTO ro VALUES (3)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("hint was refused")
    );
    let err = client
        .execute("/* pgrouter: replica */ UPDATE ro SET v = $1", &[&5i32])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    let direct = env.primary_direct().await;
    let row = direct
        .query_one("SELECT count(*), max(v) FROM ro", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (1, 1));
    // The session is fine afterwards.
    assert!(
        env.replica_ports()
            .contains(&common::server_port(&client, "").await)
    );
    assert_eq!(env.handle.stats().misrouted(), 0);
    env.stop().await;
}
