//! Settings and savepoints in transaction pooling, against the real cluster:
//! what a client's `ROLLBACK TO SAVEPOINT` undid stays undone on every
//! connection it gets afterwards (its reads run on replica connections, where
//! pgrouter replays the session's settings), and what `RELEASE` kept stays.

mod common;

use common::first_text;
use common::raw::*;
use pgrouter::config::{Config, PoolMode};
use tokio_postgres::Client;

fn one_connection_per_node(config: &mut Config) {
    config.pool.mode = PoolMode::Transaction;
    config.pool.pool_size = 1;
}

/// `application_name` as the client sees it on a replica (an autocommit read,
/// where its settings are replayed) and on the primary (in a read-write block).
async fn application_names(client: &Client) -> (String, String) {
    let on_replica = first_text(client.simple_query("SHOW application_name").await.unwrap());
    client.batch_execute("BEGIN").await.unwrap();
    let on_primary = first_text(client.simple_query("SHOW application_name").await.unwrap());
    client.batch_execute("COMMIT").await.unwrap();
    (on_replica, on_primary)
}

/// Each block runs statement by statement (one Query each, as psql and ORMs
/// send them); afterwards the client must see the setting PostgreSQL would
/// have left, wherever it reads, and another client never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_undone_by_rollback_to_savepoint_stay_undone() {
    let env = common::start_with(one_connection_per_node).await;
    let a = env.client().await;
    let b = env.client().await;
    let blocks: &[(&[&str], &str)] = &[
        (
            &[
                "BEGIN",
                "SET application_name = 'before'",
                "SAVEPOINT s",
                "SET application_name = 'undone'",
                "ROLLBACK TO SAVEPOINT s",
                "COMMIT",
            ],
            "before",
        ),
        (
            &[
                "BEGIN",
                "SAVEPOINT s",
                "SET application_name = 'released'",
                "RELEASE SAVEPOINT s",
                "COMMIT",
            ],
            "released",
        ),
        // Nested, and a name folded to lower case: back to the outer one.
        (
            &[
                "BEGIN",
                "SAVEPOINT Top",
                "SET application_name = 'one'",
                "SAVEPOINT nested",
                "SET application_name = 'two'",
                "RELEASE nested",
                "ROLLBACK TO top",
                "COMMIT",
            ],
            "released",
        ),
        // A repeated name means the latest savepoint of that name.
        (
            &[
                "BEGIN",
                "SAVEPOINT s",
                "SET application_name = 'outer'",
                "SAVEPOINT s",
                "SET application_name = 'inner'",
                "ROLLBACK TO s",
                "COMMIT",
            ],
            "outer",
        ),
        // A rollback in a failed block, then more work.
        (
            &[
                "BEGIN",
                "SAVEPOINT \"Quoted\"",
                "SET application_name = 'failed'",
                "SELECT 1/0",
                "ROLLBACK TO \"Quoted\"",
                "SET application_name = 'recovered'",
                "COMMIT",
            ],
            "recovered",
        ),
        // RELEASE drops the savepoint: the next one of that name is new.
        (
            &[
                "BEGIN",
                "SAVEPOINT a",
                "SET application_name = 'r1'",
                "RELEASE a",
                "SAVEPOINT a",
                "SET application_name = 'r2'",
                "ROLLBACK TO a",
                "COMMIT",
            ],
            "r1",
        ),
        // ROLLBACK AND CHAIN undoes the whole block and opens another.
        (
            &[
                "BEGIN",
                "SET application_name = 'chained'",
                "ROLLBACK AND CHAIN",
                "COMMIT",
            ],
            "r1",
        ),
        // So does COMMIT AND CHAIN of a failed block (PostgreSQL answers ROLLBACK).
        (
            &[
                "BEGIN",
                "SET application_name = 'failed chain'",
                "SELECT 1/0",
                "COMMIT AND CHAIN",
                "COMMIT",
            ],
            "r1",
        ),
    ];
    for (statements, expected) in blocks {
        for sql in *statements {
            // Only the division by zero fails.
            let result = a.batch_execute(sql).await;
            assert_eq!(result.is_err(), sql.contains("1/0"), "{sql}: {result:?}");
        }
        let (on_replica, on_primary) = application_names(&a).await;
        assert_eq!(
            (on_replica.as_str(), on_primary.as_str()),
            (*expected, *expected),
            "after {statements:?}"
        );
        let (b_replica, b_primary) = application_names(&b).await;
        assert_eq!((b_replica.as_str(), b_primary.as_str()), ("", ""));
    }
    env.stop().await;
}

/// A SQL `PREPARE` inside a savepoint is not undone by `ROLLBACK TO` (prepared
/// statements are not transactional); the settings beside it are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_survives_the_rollback_to_savepoint_that_undoes_a_setting() {
    let env = common::start_with(one_connection_per_node).await;
    let a = env.client().await;
    for sql in [
        "BEGIN",
        "SET application_name = 'kept'",
        "SAVEPOINT s",
        "PREPARE survivor AS SELECT 42",
        "SET application_name = 'undone'",
        "ROLLBACK TO s",
        "COMMIT",
    ] {
        a.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(
        application_names(&a).await,
        ("kept".to_owned(), "kept".to_owned())
    );
    // On a replica connection, where the PREPARE is replayed.
    let answer = first_text(a.simple_query("EXECUTE survivor").await.unwrap());
    assert_eq!(answer, "42");
    env.stop().await;
}

/// Savepoints sent with the extended protocol (Parse/Bind/Execute/Sync, as
/// JDBC, Npgsql and tokio-postgres's `execute` send them) are followed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_sent_as_prepared_statements_are_followed() {
    let env = common::start_with(one_connection_per_node).await;
    let a = env.client().await;
    for sql in [
        "BEGIN",
        "SET application_name = 'kept'",
        "SAVEPOINT s",
        "SET application_name = 'undone'",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
        "BEGIN",
        "SET application_name = 'chained'",
        "ROLLBACK AND CHAIN",
        "COMMIT",
    ] {
        a.execute(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(
        application_names(&a).await,
        ("kept".to_owned(), "kept".to_owned())
    );
    env.stop().await;
}

/// Savepoints pgrouter cannot follow (a name PostgreSQL truncates, a
/// SAVEPOINT in a section ended by Flush) leave the client with the setting
/// it still has, and its connection is cleaned before another client (with
/// no settings either) gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_pgrouter_cannot_follow_never_leak_a_setting() {
    let env = trust_env_with(one_connection_per_node).await;
    // PostgreSQL keeps 63 bytes of a name: the second SAVEPOINT is the first's
    // name again, and the ROLLBACK TO goes back to it, keeping the SET.
    let long = format!("s{}", "x".repeat(62));
    let (mut a, _) = raw_login(env.addr).await;
    for sql in [
        "BEGIN".to_owned(),
        format!("SAVEPOINT {long}"),
        "SET work_mem = '77MB'".to_owned(),
        format!("SAVEPOINT {long}1"),
        format!("ROLLBACK TO {long}"),
        "COMMIT".to_owned(),
    ] {
        let answer = raw_query(&mut a, &sql).await;
        assert_eq!(error_codes(&answer), Vec::<String>::new(), "{sql}");
    }
    assert_work_mem(&mut a, "77MB", "A after the truncated name").await;
    let (mut b, _) = raw_login(env.addr).await;
    assert_work_mem(&mut b, "4MB", "B after A's truncated name").await;

    // A SAVEPOINT answered before any Sync: the ROLLBACK TO goes back to it.
    let (mut c, _) = raw_login(env.addr).await;
    for sql in ["BEGIN", "SAVEPOINT a", "SET work_mem = '55MB'"] {
        raw_query(&mut c, sql).await;
    }
    send(
        &mut c,
        &concat(&[parse("", "SAVEPOINT a"), bind("", ""), execute(""), flush()]),
    )
    .await;
    for expected in [b'1', b'2', b'C'] {
        match read_message(&mut c, WAIT).await {
            Incoming::Msg(tag, _) => assert_eq!(tag, expected),
            other => panic!("{other:?}"),
        }
    }
    send(&mut c, &sync()).await;
    until_ready(&mut c, WAIT, "Sync").await;
    for sql in ["ROLLBACK TO a", "COMMIT"] {
        let answer = raw_query(&mut c, sql).await;
        assert_eq!(error_codes(&answer), Vec::<String>::new(), "{sql}");
    }
    assert_work_mem(&mut c, "55MB", "C after the Flush-ended SAVEPOINT").await;
    assert_work_mem(&mut b, "4MB", "B after C's Flush-ended SAVEPOINT").await;
    env.stop().await;
}

/// `work_mem` on the primary connection (a read-write block), where a
/// connection another client left is found.
async fn assert_work_mem(stream: &mut tokio::net::TcpStream, expected: &str, what: &str) {
    raw_query(stream, "BEGIN").await;
    let seen = first_value(&raw_query(stream, "SHOW work_mem").await);
    raw_query(stream, "COMMIT").await;
    assert_eq!(seen.as_deref(), Some(expected), "{what}");
    let seen = first_value(&raw_query(stream, "SHOW work_mem").await);
    assert_eq!(seen.as_deref(), Some(expected), "{what}, on a replica");
}

/// Batches whose answers pgrouter cannot pin on one statement: a commit and a
/// rollback in one query, and a pipelined ROLLBACK AND CHAIN skipped after an
/// error behind a savepoint statement pgrouter does not read. The client keeps
/// what PostgreSQL kept, and no other client gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_with_several_block_ends_never_leak_a_setting() {
    let env = trust_env_with(one_connection_per_node).await;
    let (mut b, _) = raw_login(env.addr).await;
    // The first block commits the setting; the second, empty, rolls back.
    let (mut a, _) = raw_login(env.addr).await;
    for sql in [
        "BEGIN",
        "SET work_mem = '12MB'",
        "COMMIT AND CHAIN; ROLLBACK",
    ] {
        let answer = raw_query(&mut a, sql).await;
        assert_eq!(error_codes(&answer), Vec::<String>::new(), "{sql}");
    }
    assert_work_mem(&mut a, "12MB", "A after COMMIT AND CHAIN; ROLLBACK").await;
    assert_work_mem(&mut b, "4MB", "B after A's two block ends").await;

    // The ROLLBACK TO (with a comment pgrouter does not read) runs, the
    // division fails, and the ROLLBACK AND CHAIN is skipped.
    let (mut c, _) = raw_login(env.addr).await;
    for sql in ["BEGIN", "SET work_mem = '31MB'", "SAVEPOINT b"] {
        raw_query(&mut c, sql).await;
    }
    let mut messages = Vec::new();
    for sql in ["ROLLBACK TO b /* c */", "SELECT 1/0", "ROLLBACK AND CHAIN"] {
        messages.extend([parse("", sql), bind("", ""), execute("")]);
    }
    messages.push(sync());
    send(&mut c, &concat(&messages)).await;
    let answer = until_ready(&mut c, WAIT, "the pipeline").await;
    assert_eq!(error_codes(&answer), vec!["22012".to_owned()]);
    for sql in ["ROLLBACK TO b", "COMMIT"] {
        let answer = raw_query(&mut c, sql).await;
        assert_eq!(error_codes(&answer), Vec::<String>::new(), "{sql}");
    }
    assert_work_mem(&mut c, "31MB", "C after the skipped chain").await;
    assert_work_mem(&mut b, "4MB", "B after C's skipped chain").await;
    env.stop().await;
}
