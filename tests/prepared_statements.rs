//! Named prepared statements through the router, in both pool modes, as
//! PostgreSQL handles them: a Parse of a name in use is refused (42P05), and
//! SQL `DEALLOCATE`, `DEALLOCATE ALL` and `DISCARD ALL` drop them. Raw
//! protocol messages over real sockets, against the real cluster.

mod common;

/// Runs one raw extended-protocol exchange up to ReadyForQuery.
async fn exchange(
    stream: &mut tokio::net::TcpStream,
    messages: &[Vec<u8>],
    what: &str,
) -> Vec<(u8, Vec<u8>)> {
    use common::raw::{WAIT, concat, send, until_ready};
    send(stream, &concat(messages)).await;
    until_ready(stream, WAIT, what).await
}

/// Parse, Bind and Execute of statement `name`, then Sync.
fn prepare_and_run(name: &str, sql: &str) -> Vec<Vec<u8>> {
    use common::raw::{bind, execute, parse, sync};
    vec![parse(name, sql), bind("", name), execute(""), sync()]
}

/// A Parse of a name the client has not closed fails as on PostgreSQL: 42P05
/// naming the client's statement, after the answers to what came before it in
/// the batch, and the first statement stays. In both pool modes (transaction
/// pooling renames statements on the servers, session pooling does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_of_an_existing_name_is_refused_with_42p05() {
    use common::raw::*;
    use pgrouter::config::PoolMode;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let env = trust_env_with(|config| config.pool.mode = mode).await;
        let (mut stream, _) = raw_login(env.addr).await;
        let s = &mut stream;
        let what = |step: &str| format!("{mode:?}: {step}");
        let answer = exchange(s, &[parse("s1", "SELECT 1"), sync()], &what("first Parse")).await;
        assert_eq!(tags(&answer), "1Z", "{}", what("first Parse"));

        // The same name again, alone in its batch: the Bind after it is skipped.
        let step = what("duplicate Parse");
        let messages = prepare_and_run("s1", "SELECT 2");
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(tags(&answer), "EZ", "{step}");
        let error = fields(&answer[0].1);
        assert_eq!(code(&error), "42P05", "{step}");
        assert_eq!(
            error.get(&'M').map(String::as_str),
            Some("prepared statement \"s1\" already exists"),
            "{step}"
        );

        // Behind other work in the same batch: that work is answered first.
        let step = what("duplicate Parse behind a Bind");
        let messages = [
            parse("s2", "SELECT 2"),
            bind("", "s2"),
            execute(""),
            parse("s1", "SELECT 3"),
            bind("", "s1"),
            execute(""),
            sync(),
        ];
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(tags(&answer), "12DCEZ", "{step}");
        assert_eq!(first_value(&answer).as_deref(), Some("2"), "{step}");
        assert_eq!(error_codes(&answer), ["42P05"], "{step}");

        // Two duplicates in one batch: the server skips the second one's
        // re-prepare after the first one's error; s2 must still run.
        let step = what("two duplicate Parses in one batch");
        let messages = [parse("s1", "SELECT 11"), parse("s2", "SELECT 12"), sync()];
        assert_eq!(tags(&exchange(s, &messages, &step).await), "EZ", "{step}");
        for _ in 0..3 {
            let messages = [
                bind("", "s2"),
                execute(""),
                bind("", "s1"),
                execute(""),
                sync(),
            ];
            let answer = exchange(s, &messages, &step).await;
            assert_eq!(
                tags(&answer),
                "2DC2DCZ",
                "{step}: {:?}",
                error_codes(&answer)
            );
        }

        // s1 still runs its first text, from a replica and from the primary.
        for (sql_first, expected) in [(None, "1"), (Some("BEGIN READ WRITE"), "1")] {
            let step = what(&format!("s1 after the duplicates ({sql_first:?})"));
            if let Some(sql) = sql_first {
                raw_query(s, sql).await;
            }
            let answer = exchange(s, &[bind("", "s1"), execute(""), sync()], &step).await;
            assert_eq!(tags(&answer), "2DCZ", "{step}");
            assert_eq!(first_value(&answer).as_deref(), Some(expected), "{step}");
        }
        raw_query(s, "COMMIT").await;

        // A Parse that failed leaves no statement, even when the next Parse of
        // that name is already on its way behind it (pipelined).
        let step = what("Parse pipelined behind a failed one");
        let messages = [
            parse("s3", "SELEC 1"),
            sync(),
            parse("s3", "SELECT 6"),
            bind("", "s3"),
            execute(""),
            sync(),
        ];
        send(s, &concat(&messages)).await;
        assert_eq!(
            error_codes(&until_ready(s, WAIT, &step).await),
            ["42601"],
            "{step}"
        );
        let answer = until_ready(s, WAIT, &step).await;
        assert_eq!(tags(&answer), "12DCZ", "{step}");
        assert_eq!(first_value(&answer).as_deref(), Some("6"), "{step}");

        // Pipelined behind a batch whose error skipped the statement's re-Parse
        // on a connection: still refused, and s1 still runs its text there.
        let step = what("duplicate Parse pipelined behind a failed batch");
        let messages = [
            parse("u", "SELEC 1"),
            bind("", "s1"),
            execute(""),
            sync(),
            parse("s1", "SELECT 7"),
            bind("", "s1"),
            execute(""),
            sync(),
        ];
        send(s, &concat(&messages)).await;
        assert_eq!(
            error_codes(&until_ready(s, WAIT, &step).await),
            ["42601"],
            "{step}"
        );
        assert_eq!(
            error_codes(&until_ready(s, WAIT, &step).await),
            ["42P05"],
            "{step}"
        );
        for _ in 0..3 {
            let answer = exchange(s, &[bind("", "s1"), execute(""), sync()], &step).await;
            assert_eq!(first_value(&answer).as_deref(), Some("1"), "{step}");
        }

        // In a Flush-ended section inside a transaction (no Sync sent yet).
        let step = what("duplicate Parse before a Flush in a transaction");
        raw_query(s, "BEGIN").await;
        send(s, &concat(&[parse("s1", "SELECT 8"), flush()])).await;
        match read_message(s, WAIT).await {
            Incoming::Msg(b'E', body) => {
                let error = fields(&body);
                assert_eq!(code(&error), "42P05", "{step}");
                let message = error.get(&'M').map(String::as_str);
                assert_eq!(
                    message,
                    Some("prepared statement \"s1\" already exists"),
                    "{step}"
                );
            }
            other => panic!("{step}: {other:?}"),
        }
        send(s, &sync()).await;
        assert_eq!(tags(&until_ready(s, WAIT, &step).await), "Z", "{step}");
        raw_query(s, "ROLLBACK").await;

        // After DISCARD ALL the names may be prepared again, as on PostgreSQL;
        // a statement parsed behind it in the same pipeline is refused again.
        let step = what("Parse after DISCARD ALL");
        let messages = [
            query("DISCARD ALL"),
            parse("s2", "SELECT 5"),
            parse("s6", "SELECT 6"),
            sync(),
        ];
        send(s, &concat(&messages)).await;
        assert_eq!(tags(&until_ready(s, WAIT, &step).await), "CZ", "{step}");
        assert_eq!(tags(&until_ready(s, WAIT, &step).await), "11Z", "{step}");
        let messages = [parse("s6", "SELECT 9"), sync()];
        assert_eq!(
            error_codes(&exchange(s, &messages, &step).await),
            ["42P05"],
            "{step}"
        );
        let messages = [
            bind("", "s2"),
            execute(""),
            bind("", "s6"),
            execute(""),
            sync(),
        ];
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(tags(&answer), "2DC2DCZ", "{step}");

        // SQL DEALLOCATE of one name frees it.
        let step = what("Parse after DEALLOCATE");
        assert_eq!(
            error_codes(&raw_query(s, "DEALLOCATE s2").await),
            Vec::<String>::new()
        );
        let messages = prepare_and_run("s2", "SELECT 10");
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("10"), "{step}");

        // Other server errors about a statement name the client's too.
        let step = what("Bind with too few parameters");
        let messages = prepare_and_run("s7", "SELECT $1::int");
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(tags(&answer), "1EZ", "{step}");
        assert_eq!(
            fields(&answer[1].1).get(&'M').map(String::as_str),
            Some("bind message supplies 0 parameters, but prepared statement \"s7\" requires 1"),
            "{step}"
        );

        // Once closed, the name can be used again.
        let step = what("Parse after Close");
        let messages = [
            close_statement("s1"),
            parse("s1", "SELECT 4"),
            bind("", "s1"),
            execute(""),
            sync(),
        ];
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(tags(&answer), "312DCZ", "{step}");
        assert_eq!(first_value(&answer).as_deref(), Some("4"), "{step}");
        assert_raw_usable(s, &what("afterwards")).await;
        env.stop().await;
    }
}

/// Bind, Execute, Sync of statement `name` through the unnamed portal.
fn run_statement(name: &str) -> Vec<Vec<u8>> {
    use common::raw::{bind, execute, sync};
    vec![bind("", name), execute(""), sync()]
}

/// SQL `DEALLOCATE`, `DEALLOCATE ALL` and `DISCARD ALL` drop the client's
/// protocol-level statements as on PostgreSQL (a later Bind gets 26000, the
/// name may be prepared again), through the simple and the extended protocol
/// (psycopg with a libpq older than 17 deallocates with `DEALLOCATE name`
/// sent by Parse/Bind/Execute), and not from a failed transaction. A session
/// that prepares and deallocates all day is not pinned to the primary for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_drop_the_clients_statements() {
    use common::raw::*;
    use pgrouter::config::PoolMode;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let env = trust_env_with(|config| config.pool.mode = mode).await;
        let (mut stream, _) = raw_login(env.addr).await;
        let s = &mut stream;
        let what = |step: &str| format!("{mode:?}: {step}");
        let gone = |answer: &[(u8, Vec<u8>)], step: &str| {
            assert_eq!(error_codes(answer), ["26000"], "{step}");
            let message = fields(&answer[0].1).get(&'M').cloned();
            assert_eq!(
                message.as_deref(),
                Some("prepared statement \"s1\" does not exist"),
                "{step}"
            );
        };

        let step = what("simple DEALLOCATE");
        let answer = exchange(s, &prepare_and_run("s1", "SELECT 1"), &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("1"), "{step}");
        let answer = raw_query(s, "DEALLOCATE s1").await;
        assert_eq!(tags(&answer), "CZ", "{step}: {:?}", error_codes(&answer));
        assert_eq!(answer[0].1, b"DEALLOCATE\0", "{step}");
        gone(&exchange(s, &run_statement("s1"), &step).await, &step);

        let step = what("extended DEALLOCATE");
        let answer = exchange(s, &prepare_and_run("s1", "SELECT 2"), &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("2"), "{step}");
        let messages = [
            parse("", "DEALLOCATE PREPARE \"s1\""),
            bind("", ""),
            describe_portal(""),
            execute(""),
            sync(),
        ];
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(tags(&answer), "12nCZ", "{step}: {:?}", error_codes(&answer));
        gone(&exchange(s, &run_statement("s1"), &step).await, &step);

        let step = what("DEALLOCATE in a failed transaction");
        exchange(s, &prepare_and_run("s1", "SELECT 3"), &step).await;
        raw_query(s, "BEGIN").await;
        raw_query(s, "SELECT 1/0").await;
        let answer = raw_query(s, "DEALLOCATE s1").await;
        assert_eq!(error_codes(&answer), ["25P02"], "{step}");
        raw_query(s, "ROLLBACK").await;
        let answer = exchange(s, &run_statement("s1"), &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("3"), "{step}");

        let step = what("DEALLOCATE in a transaction");
        raw_query(s, "BEGIN").await;
        let answer = raw_query(s, "DEALLOCATE s1").await;
        assert_eq!(tags(&answer), "CZ", "{step}: {:?}", error_codes(&answer));
        assert_eq!(answer[1].1, b"T", "{step}: still in the transaction");
        raw_query(s, "COMMIT").await;
        gone(&exchange(s, &run_statement("s1"), &step).await, &step);

        // Answered by pgrouter before a Flush: what follows still runs.
        let step = what("DEALLOCATE before a Flush");
        exchange(s, &prepare_and_run("s1", "SELECT 6"), &step).await;
        let messages = [
            parse("", "DEALLOCATE s1"),
            bind("", ""),
            execute(""),
            flush(),
        ];
        send(s, &concat(&messages)).await;
        for expected in [b'1', b'2', b'C'] {
            match read_message(s, WAIT).await {
                Incoming::Msg(tag, _) => assert_eq!(tag, expected, "{step}"),
                other => panic!("{step}: {other:?}"),
            }
        }
        let answer = exchange(s, &prepare_and_run("", "SELECT 7"), &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("7"), "{step}");
        gone(&exchange(s, &run_statement("s1"), &step).await, &step);

        // Beside other messages pgrouter cannot answer, it goes to a server;
        // when the batch fails, the statement is still there.
        let step = what("DEALLOCATE in a failing batch");
        exchange(s, &prepare_and_run("s1", "SELECT 8"), &step).await;
        let messages = [
            parse("s2", "SELEC 1"),
            parse("", "DEALLOCATE s1"),
            bind("", ""),
            execute(""),
            sync(),
        ];
        let answer = exchange(s, &messages, &step).await;
        assert_eq!(error_codes(&answer), ["42601"], "{step}");
        let answer = exchange(s, &run_statement("s1"), &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("8"), "{step}");

        // Pipelined behind the error that fails the transaction: refused, kept.
        let step = what("DEALLOCATE pipelined in a failing transaction");
        let messages = [query("BEGIN"), query("SELECT 1/0"), query("DEALLOCATE s1")];
        send(s, &concat(&messages)).await;
        for expected in [vec![], vec!["22012"], vec!["25P02"]] {
            let answer = until_ready(s, WAIT, &step).await;
            assert_eq!(error_codes(&answer), expected, "{step}");
        }
        raw_query(s, "ROLLBACK").await;
        let answer = exchange(s, &run_statement("s1"), &step).await;
        assert_eq!(first_value(&answer).as_deref(), Some("8"), "{step}");
        raw_query(s, "DEALLOCATE s1").await;

        let step = what("DEALLOCATE of no statement");
        let answer = raw_query(s, "DEALLOCATE s1").await;
        assert_eq!(error_codes(&answer), ["26000"], "{step}");

        // Done, even though the query fails after it (not undone by rollback).
        let step = what("DEALLOCATE ALL before an error");
        exchange(s, &prepare_and_run("s1", "SELECT 9"), &step).await;
        let answer = raw_query(s, "DEALLOCATE ALL; SELECT 1/0").await;
        assert_eq!(error_codes(&answer), ["22012"], "{step}");
        gone(&exchange(s, &run_statement("s1"), &step).await, &step);

        for drop_all in ["DEALLOCATE ALL", "DISCARD ALL"] {
            let step = what(drop_all);
            exchange(s, &prepare_and_run("s1", "SELECT 4"), &step).await;
            let answer = raw_query(s, drop_all).await;
            assert_eq!(tags(&answer), "CZ", "{step}: {:?}", error_codes(&answer));
            gone(&exchange(s, &run_statement("s1"), &step).await, &step);
        }

        // Each of these undoes the one before: the session's state log does
        // not grow, so the session is not pinned (past 256 entries it would
        // be), and what it prepared with SQL still runs everywhere.
        let step = what("many PREPAREs and DEALLOCATEs");
        raw_query(s, "PREPARE kept AS SELECT 42").await;
        for n in 0..150 {
            for sql in [
                format!("PREPARE t{n} AS SELECT {n}"),
                format!("DEALLOCATE t{n}"),
                "DEALLOCATE s1".to_owned(),
            ] {
                if sql.starts_with("DEALLOCATE s1") {
                    exchange(s, &[parse("s1", "SELECT 5"), sync()], &step).await;
                }
                let answer = raw_query(s, &sql).await;
                assert_eq!(error_codes(&answer), Vec::<String>::new(), "{step}: {sql}");
            }
        }
        // A replica answers: a pinned session would read from the primary.
        let answer = raw_query(s, "SELECT pg_is_in_recovery()").await;
        assert_eq!(
            first_value(&answer).as_deref(),
            Some("t"),
            "{step}: not pinned"
        );
        let answer = raw_query(s, "EXECUTE kept").await;
        assert_eq!(first_value(&answer).as_deref(), Some("42"), "{step}");
        for _ in 0..300 {
            let answer = raw_query(s, "DEALLOCATE ALL").await;
            assert_eq!(error_codes(&answer), Vec::<String>::new(), "{step}");
        }
        let answer = raw_query(s, "EXECUTE kept").await;
        assert_eq!(
            error_codes(&answer),
            ["26000"],
            "{step}: DEALLOCATE ALL dropped it"
        );
        // EXECUTE may write: until the replicas are known to have replayed it,
        // read-your-writes sends reads to the primary.
        let mut replica_read = false;
        for _ in 0..50 {
            let answer = raw_query(s, "SELECT pg_is_in_recovery()").await;
            replica_read = first_value(&answer).as_deref() == Some("t");
            if replica_read {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(replica_read, "{step}: pinned after many DEALLOCATE ALL");
        assert_raw_usable(s, &what("afterwards")).await;
        env.stop().await;
    }
}
