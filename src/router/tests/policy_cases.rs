//! The function policy: catalog rows and config lists in, routes out.

use std::sync::Arc;

use crate::config::RoutingConfig;
use crate::router::calls::NOT_FUNCTION_NAMES;
use crate::router::{
    ClassifierCache, FunctionName, FunctionPolicy, Route, Volatility, classify, classify_with,
};

/// A small catalog: built-ins, and user functions of every volatility.
fn rows() -> Vec<(String, String, char)> {
    [
        ("pg_catalog", "lower", 'i'),
        ("pg_catalog", "random", 'v'),
        ("pg_catalog", "now", 's'),
        ("pg_catalog", "count", 'i'),
        ("pg_catalog", "nextval", 'v'),
        ("pg_catalog", "generate_series", 'v'),
        ("pg_catalog", "system", 'v'),
        ("information_schema", "_pg_truetypid", 'i'),
        ("public", "account_total", 's'),
        ("public", "bump_counter", 'v'),
        ("public", "get_balance", 's'),
        ("reporting", "get_balance", 'v'),
        ("app", "pure_fn", 'i'),
        ("app", "Mixed", 'v'),
        ("public", "safe_volatile", 'v'),
        ("audit", "stable_but_writes", 's'),
        ("public", "overloaded", 's'),
        ("public", "overloaded", 'v'),
        ("public", "odd_code", '?'),
    ]
    .into_iter()
    .map(|(s, n, v)| (s.to_owned(), n.to_owned(), v))
    .collect()
}

fn routing() -> RoutingConfig {
    RoutingConfig {
        read_only_functions: vec!["safe_volatile".into(), "app.\"Mixed\"".into()],
        primary_functions: vec!["audit.stable_but_writes".into(), "PURE_FN".into()],
    }
}

const VOLATILE: &str = "volatile function";
const UNKNOWN: &str = "unknown function";
const FORCED: &str = "primary function";

/// (text, route, reason) with the catalog of [`rows`] and the lists of [`routing`].
#[rustfmt::skip]
const CASES: &[(&str, Route, &str)] = &[
    // volatile user functions, wherever the call is
    ("SELECT bump_counter()", Route::Primary, VOLATILE),
    ("SELECT * FROM t WHERE x = bump_counter()", Route::Primary, VOLATILE),
    ("SELECT * FROM bump_counter()", Route::Primary, VOLATILE),
    ("SELECT (SELECT max(bump_counter()) FROM u)", Route::Primary, VOLATILE),
    ("SELECT overloaded(1)", Route::Primary, VOLATILE),
    ("SELECT odd_code()", Route::Primary, VOLATILE),
    ("SELECT 1; SELECT bump_counter()", Route::Primary, VOLATILE),
    // stable and immutable ones are safe
    ("SELECT account_total($1)", Route::Replica, "select"),
    ("SELECT a FROM t WHERE account_total(a) > 0 ORDER BY 1", Route::Replica, "select"),
    ("SELECT public.get_balance(1)", Route::Replica, "select"),
    ("SELECT \"public\".\"account_total\"(1)", Route::Replica, "select"),
    ("SELECT PUBLIC.ACCOUNT_TOTAL(1)", Route::Replica, "select"),
    ("SELECT Account_Total(1)", Route::Replica, "select"),
    // an unqualified name is as volatile as its most volatile schema
    ("SELECT reporting.get_balance(1)", Route::Primary, VOLATILE),
    ("SELECT get_balance(1)", Route::Primary, VOLATILE),
    // read-only list: by name in every schema, or exactly
    ("SELECT safe_volatile()", Route::Replica, "select"),
    ("SELECT public.safe_volatile()", Route::Replica, "select"),
    ("SELECT app.\"Mixed\"()", Route::Replica, "select"),
    ("SELECT \"Mixed\"()", Route::Replica, "select"),
    ("SELECT MIXED()", Route::Replica, "select"),
    ("SELECT app.mixed()", Route::Primary, UNKNOWN),
    // primary list beats volatility
    ("SELECT audit.stable_but_writes()", Route::Primary, FORCED),
    ("SELECT stable_but_writes()", Route::Primary, FORCED),
    ("SELECT app.pure_fn(1)", Route::Primary, FORCED),
    ("SELECT Pure_Fn(1)", Route::Primary, FORCED),
    // built-ins: only the deny-list matters
    ("SELECT random(), now(), lower('A'), count(*) FROM t", Route::Replica, "select"),
    ("SELECT pg_catalog.lower('A'), information_schema._pg_truetypid(a, t) FROM t", Route::Replica, "select"),
    ("SELECT * FROM generate_series(1, 3) AS g(i)", Route::Replica, "select"),
    ("SELECT * FROM generate_series(1, 3) g(i)", Route::Replica, "select"),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1)", Route::Replica, "select"),
    ("SELECT nextval('s')", Route::Primary, "side-effect function"),
    ("SELECT pg_catalog.nosuch()", Route::Primary, UNKNOWN),
    // unknown names: when unsure, primary
    ("SELECT nosuch(1)", Route::Primary, UNKNOWN),
    ("SELECT s.nosuch(1)", Route::Primary, UNKNOWN),
    // words before `(` that are not calls
    ("SELECT coalesce(a, 1), nullif(a, 0), greatest(a, b), extract(epoch from now()) FROM t", Route::Replica, "select"),
    ("SELECT trim(both 'x' from y), substring(x from 1 for 2), position('a' in b), overlay(x placing 'y' from 1) FROM t", Route::Replica, "select"),
    ("SELECT CAST(a AS numeric(10, 2)), a::varchar(10), a::timestamp(3) FROM t", Route::Replica, "select"),
    ("SELECT * FROM t WHERE a IN (1, 2) AND EXISTS (SELECT 1) AND b = ANY (ARRAY[1]) AND ROW(a, b) > (1, 2)", Route::Replica, "select"),
    ("SELECT count(*) FILTER (WHERE a) OVER (PARTITION BY (b)) FROM t", Route::Replica, "select"),
    ("SELECT * FROM a JOIN (b JOIN c ON true) ON true LEFT JOIN (SELECT 1) s ON true", Route::Replica, "select"),
    ("SELECT * FROM a AS x CROSS JOIN LATERAL (SELECT 1) y JOIN u USING (id)", Route::Replica, "select"),
    ("SELECT a FROM t GROUP BY ROLLUP (a), GROUPING SETS ((a), ()) ORDER BY (a)", Route::Replica, "select"),
    // Known false positive: after a comma `cube(` may be the cube extension's function.
    ("SELECT a FROM t GROUP BY a, CUBE (b)", Route::Primary, UNKNOWN),
    ("SELECT DISTINCT ON (a) a FROM t WHERE (a, b) IN (VALUES (1, 2))", Route::Replica, "select"),
    ("WITH x(a) AS (SELECT 1) SELECT a FROM x", Route::Replica, "select"),
    ("WITH RECURSIVE r(n) AS NOT MATERIALIZED (SELECT 1) SELECT n FROM r", Route::Replica, "select"),
    ("SELECT a::character varying(10) FROM t", Route::Replica, "select"),
    ("SELECT b::bit varying(3) FROM t", Route::Replica, "select"),
    // The same words where they can be calls.
    ("SELECT * FROM t WHERE NOT materialized(a)", Route::Primary, UNKNOWN),
    ("SELECT * FROM t ORDER BY cube(a)", Route::Primary, UNKNOWN),
    ("SELECT * FROM t WHERE a SIMILAR TO stdout(b)", Route::Primary, UNKNOWN),
    ("SELECT * FROM t WHERE a = ANY (x) AND b IN (bump_counter())", Route::Primary, VOLATILE),
    ("SELECT a AS \"b\" FROM t WHERE c = \"bump_counter\"()", Route::Primary, VOLATILE),
    ("EXPLAIN (ANALYZE false) SELECT bump_counter()", Route::Primary, VOLATILE),
    ("EXPLAIN (COSTS false) SELECT 1", Route::Replica, "explain"),
    ("COPY t (a, b) TO STDOUT (FORMAT csv)", Route::Replica, "copy to stdout"),
];

#[test]
fn policy_table() {
    let policy = FunctionPolicy::from_rows(rows(), &routing());
    assert!(policy.has_catalog());
    assert_eq!(policy.catalog_rows(), rows().len());
    let mut failures = Vec::new();
    for &(sql, route, reason) in CASES {
        let got = classify_with(sql, &policy);
        if (got.route, got.reason) != (route, reason) {
            failures.push(format!(
                "{sql:?}\n    want {route:?} ({reason})\n    got  {:?} ({})",
                got.route, got.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn without_a_catalog_only_lists_and_deny_list_count() {
    let policy = FunctionPolicy::without_catalog(&routing());
    assert!(!policy.has_catalog());
    for (sql, route) in [
        ("SELECT bump_counter()", Route::Replica),
        ("SELECT nosuch(1)", Route::Replica),
        ("SELECT app.pure_fn(1)", Route::Primary),
        ("SELECT stable_but_writes()", Route::Primary),
        ("SELECT nextval('s')", Route::Primary),
    ] {
        assert_eq!(classify_with(sql, &policy).route, route, "{sql:?}");
    }
    // The default policy is today's behaviour: `classify` uses it.
    let default = FunctionPolicy::default();
    for sql in [
        "SELECT bump_counter()",
        "SELECT nosuch(1)",
        "SELECT app.pure_fn(1)",
    ] {
        assert_eq!(classify_with(sql, &default), classify(sql), "{sql:?}");
        assert_eq!(classify(sql).route, Route::Replica, "{sql:?}");
    }
}

#[test]
fn reload_keeps_the_catalog() {
    let policy = FunctionPolicy::from_rows(rows(), &routing());
    let relisted = policy.with_routing(&RoutingConfig {
        read_only_functions: vec!["bump_counter".into()],
        primary_functions: vec![],
    });
    assert!(relisted.has_catalog());
    assert_eq!(
        classify_with("SELECT bump_counter()", &relisted).route,
        Route::Replica
    );
    assert_eq!(
        classify_with("SELECT app.pure_fn(1)", &relisted).route,
        Route::Replica
    );
    assert_eq!(
        classify_with("SELECT nosuch()", &relisted).route,
        Route::Primary
    );
}

#[test]
fn hints_and_policy() {
    let policy = FunctionPolicy::from_rows(rows(), &routing());
    // Unsure (volatile, unknown): a replica hint decides.
    let d = classify_with("/* pgrouter: replica */ SELECT bump_counter()", &policy);
    assert_eq!((d.route, d.hint_refused), (Route::Replica, false));
    let d = classify_with("/* pgrouter: replica */ SELECT nosuch()", &policy);
    assert_eq!((d.route, d.hint_refused), (Route::Replica, false));
    // Listed as primary: the hint is refused.
    let d = classify_with(
        "/* pgrouter: replica */ SELECT stable_but_writes()",
        &policy,
    );
    assert_eq!((d.route, d.hint_refused), (Route::Primary, true));
}

#[test]
fn cache_uses_and_swaps_the_policy() {
    let cache = ClassifierCache::new(64);
    assert!(!cache.policy().has_catalog());
    assert_eq!(
        cache.classify("SELECT bump_counter()").route,
        Route::Replica
    );
    assert_eq!(cache.classify("SELECT 1").route, Route::Replica);
    assert_eq!(cache.len(), 2);
    cache.set_policy(Arc::new(FunctionPolicy::from_rows(rows(), &routing())));
    assert!(
        cache.is_empty(),
        "decisions of the old policy are forgotten"
    );
    assert!(cache.policy().has_catalog());
    assert_eq!(
        cache.classify("SELECT bump_counter()").route,
        Route::Primary
    );
    assert_eq!(
        cache.classify("SELECT bump_counter()").route,
        Route::Primary
    );
    assert_eq!(cache.stats().hits, 1);
    cache.set_policy(Arc::new(FunctionPolicy::default()));
    assert_eq!(
        cache.classify("SELECT bump_counter()").route,
        Route::Replica
    );
}

#[test]
fn function_names_parse_like_sql() {
    let parse = |s: &str| FunctionName::parse(s).map(|n| (n.schema, n.name));
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(parse("Fn"), Ok((None, "fn".into())));
    assert_eq!(parse(" app.Get_X "), Ok((some("app"), "get_x".into())));
    assert_eq!(
        parse("\"App\".\"Get X\""),
        Ok((some("App"), "Get X".into()))
    );
    assert_eq!(parse("\"a\"\"b\".c"), Ok((some("a\"b"), "c".into())));
    assert_eq!(parse("_f$1"), Ok((None, "_f$1".into())));
    for bad in [
        "", ".f", "f.", "a.b.c", "1f", "f()", "\"\"", "\"open", "a b", "a.\"b\"c",
    ] {
        assert!(FunctionName::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(Volatility::from_code('i'), Volatility::Immutable);
    assert_eq!(Volatility::from_code('s'), Volatility::Stable);
    assert_eq!(Volatility::from_code('v'), Volatility::Volatile);
    assert_eq!(Volatility::from_code('x'), Volatility::Volatile);
}

#[test]
fn not_function_names_are_sorted_lowercase() {
    for pair in NOT_FUNCTION_NAMES.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{} must sort before {}",
            pair[0],
            pair[1]
        );
    }
    for name in NOT_FUNCTION_NAMES {
        assert_eq!(*name, name.to_ascii_lowercase());
    }
}
