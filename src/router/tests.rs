//! Unit tests of the classifier and its cache. The statement table is in
//! `tests/cases.rs`; this file holds the harness and the focused tests.

mod cases;
mod policy_cases;
mod simple_select;

use std::time::Instant;

use super::cache::{MAX_CACHED_LEN, SHARDS};
use super::functions::{DENIED_FUNCTIONS, is_denied};
use super::hints::{Hint, hint_of, scan_prefix};
use super::*;

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

fn describe(d: &Decision) -> String {
    format!("{:?} {:?} {:?} ({})", d.route, d.tx, d.session, d.reason)
}

#[test]
fn statement_table() {
    assert!(
        cases::CASES.len() >= 200,
        "only {} cases",
        cases::CASES.len()
    );
    let mut failures = Vec::new();
    for &(route, tx, session, sql) in cases::CASES {
        let got = classify(sql);
        if (got.route, got.tx, got.session) != (route, tx, session) || got.hint_refused {
            failures.push(format!(
                "{sql:?}\n    want {route:?} {tx:?} {session:?}\n    got  {}",
                describe(&got)
            ));
        }
        // The fast path must agree with the full path.
        let full = classify_text(sql, &FunctionPolicy::default()).into_decision(hint_of(sql));
        if full != got {
            failures.push(format!(
                "{sql:?}: fast path {} != full path {}",
                describe(&got),
                describe(&full)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn reasons() {
    let cases = [
        ("SELECT 1", "select"),
        ("VALUES (1)", "values"),
        ("TABLE t", "table"),
        ("SHOW work_mem", "show"),
        ("EXPLAIN SELECT 1", "explain"),
        ("COPY t TO STDOUT", "copy to stdout"),
        ("INSERT INTO t VALUES (1)", "write: insert"),
        ("UPDATE t SET a = 1", "write: update"),
        ("DELETE FROM t", "write: delete"),
        ("WITH x AS (SELECT 1) DELETE FROM t", "write: delete"),
        (
            "WITH x AS (DELETE FROM t RETURNING 1) SELECT 1",
            "write: data-modifying cte",
        ),
        ("SELECT nextval('s')", "side-effect function"),
        ("SELECT * FROM t FOR UPDATE", "locking read"),
        ("SELECT * FROM t FOR NO KEY UPDATE", "locking read"),
        ("SELECT * INTO t2 FROM t", "select into"),
        ("EXPLAIN ANALYZE DELETE FROM t", "explain analyze: write"),
        ("COPY t FROM STDIN", "write: copy from"),
        // asyncpg's copy_records_to_table.
        (
            "COPY \"public\".\"t\"(\"a\", \"b\") FROM STDIN (FORMAT binary)",
            "write: copy from",
        ),
        ("COPY \"t\" FROM STDIN (FORMAT binary) ", "write: copy from"),
        ("CREATE TABLE t (a int)", "ddl"),
        ("CREATE TEMP TABLE t (a int)", "create temp"),
        ("BEGIN", "begin"),
        ("BEGIN READ ONLY", "begin read only"),
        ("COMMIT", "commit"),
        ("SET x = 1", "set"),
        ("SELECT 1; UPDATE t SET a = 1", "write: update"),
        ("SELEC 1", "unparsed"),
        ("SELECT 'unterminated", "unparsed"),
        ("", "empty"),
    ];
    for (sql, reason) in cases {
        assert_eq!(classify(sql).reason, reason, "{sql:?}");
    }
}

const REFUSED_WRITE: &str = "replica hint refused: write";
const REFUSED_SESSION: &str = "replica hint refused: session";

/// (text, route, hint_refused, reason)
#[rustfmt::skip]
const HINT_CASES: &[(&str, Route, bool, &str)] = &[
    ("/* pgrouter: primary */ SELECT 1", Route::Primary, false, "hint: primary"),
    ("/*pgrouter:primary*/SELECT 1", Route::Primary, false, "hint: primary"),
    ("-- pgrouter: PRIMARY\nSELECT 1", Route::Primary, false, "hint: primary"),
    ("/* PGROUTER: Primary, because */ SELECT 1", Route::Primary, false, "hint: primary"),
    ("/* pgrouter: primary */ UPDATE t SET a = 1", Route::Primary, false, "write: update"),
    ("/* pgrouter: replica */ SELECT 1", Route::Replica, false, "select"),
    ("/* pgrouter: replica */ SELECT * FROM ROWS FROM (f()) AS g", Route::Replica, false, "hint: replica"),
    ("/* pgrouter: replica */ SELEC 1", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ UPDATE t SET a = 1", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ INSERT INTO t VALUES (1)", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ SELECT nextval('s')", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ SELECT * FROM t FOR UPDATE", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ SELECT * FROM t FOR KEY SHARE", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ SELECT 1; DELETE FROM t", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ WITH x AS (DELETE FROM t RETURNING 1) SELECT 1", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ SELECT * INTO LOCAL TEMP t FROM u", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ EXPLAIN ANALYZE DELETE FROM t", Route::Primary, true, REFUSED_WRITE),
    ("/* pgrouter: replica */ SET x = 1", Route::Primary, true, REFUSED_SESSION),
    ("/* pgrouter: replica */ BEGIN", Route::Primary, true, REFUSED_SESSION),
    ("/* pgrouter: replica */ BEGIN READ ONLY", Route::Replica, false, "begin read only"),
    ("/* pgrouter: replica */ LISTEN c", Route::Primary, true, REFUSED_SESSION),
    ("/* app */ -- pgrouter: replica\n SELECT 1", Route::Replica, false, "select"),
    ("/* pgrouter: replica */ /* pgrouter: primary */ SELECT 1", Route::Replica, false, "select"),
    // Not hints: after the first token, unknown word, not at the comment's start.
    ("SELECT /* pgrouter: primary */ 1", Route::Replica, false, "select"),
    ("/* pgrouter: secondary */ SELECT 1", Route::Replica, false, "select"),
    ("/* note pgrouter: primary */ SELECT 1", Route::Replica, false, "select"),
    ("/* pgrouter */ SELECT 1", Route::Replica, false, "select"),
];

#[test]
fn hints() {
    for &(sql, route, refused, reason) in HINT_CASES {
        let d = classify(sql);
        let got = (d.route, d.hint_refused, d.reason);
        assert_eq!(got, (route, refused, reason), "{sql:?}");
    }
    // Effects are kept under a hint.
    let d = classify("/* pgrouter: primary */ BEGIN READ ONLY");
    let ro = TxEffect::Begin { read_only: true };
    assert_eq!((d.route, d.tx), (Route::Primary, ro));
    let d = classify("/* pgrouter: replica */ CREATE TEMP TABLE t (a int)");
    let pin = SessionEffect::PinPrimary;
    assert_eq!(
        (d.route, d.session, d.hint_refused),
        (Route::Primary, pin, true)
    );
}

#[test]
fn prefix_scan() {
    assert_eq!(scan_prefix("  SELECT 1").body_start, 2);
    assert_eq!(scan_prefix("/* a /* b */ c */SELECT").body_start, 17);
    assert_eq!(scan_prefix("-- x\r\nSELECT").body_start, 6);
    assert_eq!(scan_prefix("/* open").body_start, 7);
    assert_eq!(scan_prefix("").body_start, 0);
    assert_eq!(hint_of("/* x /* pgrouter: replica */ */ SELECT 1"), None);
    assert_eq!(
        hint_of("/* pgrouter: replica /* inner */ */ SELECT 1"),
        Some(Hint::Replica)
    );
    assert_eq!(hint_of("-- pgrouter: primary"), Some(Hint::Primary));
    assert_eq!(hint_of("/* pgrouter: replica"), None);
    assert_eq!(hints::first_word("insert into"), Some("insert"));
    assert_eq!(hints::first_word("insert_x"), None);
    assert_eq!(hints::first_word("inserté"), None);
    assert_eq!(hints::first_word("(SELECT 1)"), None);
}

#[test]
fn deny_list_is_sorted_lowercase_and_unique() {
    for pair in DENIED_FUNCTIONS.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{} must sort before {}",
            pair[0],
            pair[1]
        );
    }
    for name in DENIED_FUNCTIONS {
        assert_eq!(*name, name.to_ascii_lowercase());
    }
    for name in [
        "nextval",
        "NEXTVAL",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "dblink_exec",
        "pg_stat_reset_slru",
        "lo_open",
    ] {
        assert!(is_denied(name), "{name}");
    }
    for name in [
        "pg_sleep",
        "now",
        "nextvalue",
        "pg_is_in_recovery",
        "lo_get",
        "pg_stat",
        "currvals",
        "set",
    ] {
        assert!(!is_denied(name), "{name}");
    }
}

#[test]
fn splitting() {
    let split = |sql: &str| {
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        let tokens = sqlparser::tokenizer::Tokenizer::new(&dialect, sql)
            .tokenize_with_location()
            .unwrap();
        keywords::split_statements(tokens).len()
    };
    assert_eq!(split("SELECT 1; SELECT 2"), 2);
    assert_eq!(split("SELECT 1;;; ; -- x\n"), 1);
    assert_eq!(split("SELECT ';'; SELECT $$;$$"), 2);
    assert_eq!(
        split("CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); SELECT 1"),
        2
    );
    assert_eq!(
        split(
            "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; COMMIT"
        ),
        2
    );
}

#[test]
fn cache_hit_returns_same_decision() {
    let cache = ClassifierCache::new(64);
    for sql in [
        PGBENCH_SELECT,
        "UPDATE t SET a = 1",
        "BEGIN READ ONLY",
        "LISTEN x",
        "SELEC 1",
    ] {
        let first = cache.classify(sql);
        let second = cache.classify(sql);
        assert_eq!(first, classify(sql));
        assert_eq!(second, first);
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (5, 5, 5));
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn cache_bound_is_respected() {
    let cache = ClassifierCache::new(40);
    assert_eq!(cache.capacity(), 48); // rounded up to a multiple of SHARDS
    for i in 0..2000 {
        // Distinct names: texts differing only in literals would share one entry.
        let sql = format!("SELECT c{i} FROM t");
        assert_eq!(cache.classify(&sql).route, Route::Replica);
        assert!(cache.len() <= cache.capacity());
    }
    assert!(cache.len() >= cache.capacity() - SHARDS);
    // Recent entries survive FIFO eviction more than old ones.
    let before = cache.stats().hits;
    cache.classify("SELECT c1999 FROM t");
    assert_eq!(cache.stats().hits, before + 1);
}

#[test]
fn cache_collision_never_returns_another_statement() {
    let cache = ClassifierCache::new(64);
    let read = cache.classify_hashed("SELECT 1", 42);
    let write = cache.classify_hashed("DELETE FROM t", 42);
    assert_eq!(read.route, Route::Replica);
    assert_eq!(write.route, Route::Primary);
    assert_eq!(cache.classify_hashed("SELECT 1", 42).route, Route::Replica);
    assert_eq!(
        cache.classify_hashed("DELETE FROM t", 42).route,
        Route::Primary
    );
    assert_eq!(cache.len(), 1); // one slot per hash: the newest text wins
}

#[test]
fn cache_skips_long_texts_and_zero_capacity() {
    let cache = ClassifierCache::new(16);
    let long = format!("SELECT 1 -- {}", "x".repeat(MAX_CACHED_LEN));
    assert_eq!(cache.classify(&long).route, Route::Replica);
    assert!(cache.is_empty());
    let off = ClassifierCache::new(0);
    assert_eq!(off.classify("SELECT 1").route, Route::Replica);
    assert_eq!((off.len(), off.capacity()), (0, 0));
}

#[test]
fn cache_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ClassifierCache>();
    let cache = std::sync::Arc::new(ClassifierCache::new(256));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = std::sync::Arc::clone(&cache);
            std::thread::spawn(move || {
                for i in 0..500 {
                    let sql = format!("SELECT {}", (i * 7 + t) % 100);
                    assert_eq!(cache.classify(&sql).route, Route::Replica);
                    assert_eq!(cache.classify("UPDATE t SET a = 1").route, Route::Primary);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(cache.stats().hits > 0);
}

/// `cargo test --release --lib router::tests::timing -- --ignored --nocapture`
#[test]
#[ignore]
fn timing() {
    const N: u32 = 100_000;
    let texts = [
        PGBENCH_SELECT,
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
        "BEGIN;",
        "SELECT a, b, c FROM t JOIN u ON t.id = u.tid WHERE t.x = $1 AND u.y IN (SELECT z FROM v WHERE w > $2) ORDER BY a LIMIT 10",
    ];
    for sql in texts {
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(classify(std::hint::black_box(sql)));
        }
        let uncached = start.elapsed() / N;
        let cache = ClassifierCache::default();
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(cache.classify(std::hint::black_box(sql)));
        }
        let cached = start.elapsed() / N;
        println!("{uncached:>10?} uncached {cached:>10?} cached  {sql}");
    }
}

#[test]
fn deep_nesting_does_not_overflow() {
    // sqlparser's recursion limit (50) turns deep nesting into a parse error;
    // run on a 2 MiB stack like a tokio worker to prove it stays within it.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
            let subqueries = format!("SELECT {}1{}", "(SELECT ".repeat(500), ")".repeat(500));
            let ctes = format!(
                "{}SELECT 1{}",
                "WITH a AS (".repeat(300),
                ") SELECT 1".repeat(300)
            );
            let tokens_only = format!(
                "SELECT 1 FROM t WHERE a IN ({})",
                "1, ".repeat(50_000) + "1"
            );
            for sql in [parens, subqueries, ctes] {
                assert_eq!(classify(&sql).route, Route::Primary);
            }
            assert_eq!(classify(&tokens_only).route, Route::Replica);
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn freshness_hints_are_read_from_leading_comments() {
    use super::hints::{FreshnessHints, freshness_hints};
    use std::time::Duration;
    assert_eq!(freshness_hints("SELECT 1"), FreshnessHints::default());
    let h = freshness_hints("/* pgrouter: after_lsn=0/3000060 */ SELECT 1");
    assert_eq!(h.after_lsn, Some(0x300_0060));
    let h = freshness_hints("/* pgrouter: replica, key=user:42 max_staleness=500ms */ SELECT 1");
    assert_eq!(h.key.as_deref(), Some("user:42"));
    assert_eq!(h.max_staleness, Some(Duration::from_millis(500)));
    assert_eq!(
        hint_of("/* pgrouter: key=a replica */ SELECT 1"),
        Some(Hint::Replica)
    );
    let h = freshness_hints("-- pgrouter: max_staleness=0\nSELECT 1");
    assert_eq!(h.max_staleness, Some(Duration::ZERO));
    // The first comment carrying an item wins; malformed values are ignored.
    let h = freshness_hints("/* pgrouter: key=a */ /* pgrouter: key=b after_lsn=zz */ SELECT 1");
    assert_eq!(h.key.as_deref(), Some("a"));
    assert_eq!(h.after_lsn, None);
    // Not in a leading comment, or not addressed to pgrouter: no hint.
    assert!(freshness_hints("SELECT /* pgrouter: key=a */ 1").is_empty());
    assert!(freshness_hints("/* app: key=a */ SELECT 1").is_empty());
    let long = format!("/* pgrouter: key={} */ SELECT 1", "k".repeat(300));
    assert!(freshness_hints(&long).key.is_none());
}

#[test]
fn selects_differing_only_in_literals_share_one_entry() {
    let cache = ClassifierCache::new(64);
    for id in 0..50 {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {id};");
        assert_eq!(cache.classify(&sql).route, Route::Replica);
        let named = format!("SELECT * FROM users WHERE name = 'user {id}'");
        assert_eq!(cache.classify(&named).route, Route::Replica);
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.misses, stats.hits), (2, 2, 98));
    // What decides a route is never a literal, and each keeps its own entry:
    // hints (comments), locking clauses, functions, other statements.
    let cases = [
        (
            "/* pgrouter: primary */ SELECT * FROM t WHERE id = 1",
            Route::Primary,
        ),
        ("SELECT * FROM t WHERE id = 2", Route::Replica),
        ("SELECT * FROM t WHERE id = 3 FOR UPDATE", Route::Primary),
        ("SELECT nextval('s') FROM t WHERE id = 4", Route::Primary),
        (
            "SELECT * FROM t WHERE id = 5; DELETE FROM t",
            Route::Primary,
        ),
        ("SELECT * FROM t WHERE id = 6", Route::Replica),
    ];
    for (sql, route) in cases {
        assert_eq!(cache.classify(sql).route, route, "{sql}");
    }
}
