//! Classification cost: cold (`router::classify`, every call tokenizes and,
//! for queries, parses) and cached (`ClassifierCache::classify` on a text it
//! has seen), for pgbench's own statements, a few short ones and a long
//! analytic query.
//!
//! Run: `cargo bench --bench classify -- --warm-up-time 1 --measurement-time 3`.
//! Targets (issue 4): cold pgbench statements < 5 µs, cached lookups < 100 ns.
//! This file only measures: it must not assert on decisions (the unit tests do).

use std::hint::black_box;

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pgrouter::config::RoutingConfig;
use pgrouter::router::{self, ClassifierCache, FunctionPolicy};

/// (name, text): pgbench's built-in scripts as sent with `-M extended`
/// (`$n` parameters) and `-M simple` (literals), then other shapes.
const STATEMENTS: &[(&str, &str)] = &[
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    ),
    (
        "pgbench_select_simple",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ),
    (
        "pgbench_update_accounts",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    ),
    (
        "pgbench_update_tellers",
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
    ),
    (
        "pgbench_insert_history",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
    ),
    ("pgbench_begin", "BEGIN;"),
    ("pgbench_end", "END;"),
    ("select_1", "SELECT 1"),
    (
        "select_now_function",
        "SELECT id, name FROM users WHERE created_at > now() - interval '1 day' AND lower(email) = $1",
    ),
    ("set", "SET search_path TO app, public"),
    ("analytic_long", ANALYTIC),
];

/// A reporting query of the kind a BI tool sends: CTEs, joins, window
/// functions, a subquery and many function calls (about 1.2 KB).
const ANALYTIC: &str = "\
WITH recent_orders AS (
    SELECT o.id, o.customer_id, o.total, o.created_at, date_trunc('day', o.created_at) AS day
    FROM orders o
    WHERE o.created_at >= now() - interval '90 days' AND o.status IN ('paid', 'shipped')
),
customer_stats AS (
    SELECT r.customer_id, count(*) AS orders, sum(r.total) AS revenue,
           avg(r.total) AS avg_order, max(r.created_at) AS last_order
    FROM recent_orders r
    GROUP BY r.customer_id
    HAVING count(*) > 1
)
SELECT c.id, c.name, coalesce(c.region, 'unknown') AS region, s.orders, s.revenue,
       round(s.avg_order::numeric, 2) AS avg_order,
       rank() OVER (PARTITION BY c.region ORDER BY s.revenue DESC) AS region_rank,
       percent_rank() OVER (ORDER BY s.revenue) AS revenue_pct,
       extract(epoch FROM now() - s.last_order) / 86400 AS days_since_last,
       (SELECT count(*) FROM support_tickets t WHERE t.customer_id = c.id AND t.open) AS open_tickets
FROM customers c
JOIN customer_stats s ON s.customer_id = c.id
LEFT JOIN LATERAL (
    SELECT string_agg(DISTINCT p.category, ', ' ORDER BY p.category) AS categories
    FROM recent_orders r2 JOIN order_items i ON i.order_id = r2.id JOIN products p ON p.id = i.product_id
    WHERE r2.customer_id = c.id
) cat ON true
WHERE c.deleted_at IS NULL AND c.country = $1
ORDER BY s.revenue DESC, c.id
LIMIT 100 OFFSET $2";

/// A catalog of realistic size: about 3,000 built-ins (as in a fresh
/// PostgreSQL 17) and a few hundred user functions.
fn policy() -> FunctionPolicy {
    let builtins = [
        "now",
        "date_trunc",
        "count",
        "sum",
        "avg",
        "max",
        "round",
        "rank",
        "percent_rank",
        "string_agg",
        "lower",
        "numeric",
    ];
    let rows = builtins
        .iter()
        .map(|name| ("pg_catalog".to_owned(), (*name).to_owned(), 'i'))
        .chain((0..3000).map(|i| ("pg_catalog".to_owned(), format!("builtin_{i}"), 's')))
        .chain((0..300).map(|i| ("app".to_owned(), format!("user_fn_{i}"), 'v')))
        .chain([("app".to_owned(), "account_total".to_owned(), 's')]);
    FunctionPolicy::from_rows(rows, &RoutingConfig::default())
}

/// Statements whose cost depends on the policy (calls to look up).
const POLICY_STATEMENTS: &[(&str, &str)] = &[
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    ),
    ("stable_udf", "SELECT account_total($1)"),
    ("volatile_udf", "SELECT app.user_fn_7($1, $2)"),
    ("analytic_long", ANALYTIC),
];

fn cold(c: &mut Criterion) {
    let mut group = c.benchmark_group("cold");
    for &(name, sql) in STATEMENTS {
        group.bench_function(name, |b| b.iter(|| router::classify(black_box(sql))));
    }
    group.finish();
}

fn cached(c: &mut Criterion) {
    let mut group = c.benchmark_group("cached");
    let cache = ClassifierCache::default();
    for &(name, sql) in STATEMENTS {
        cache.classify(sql);
        group.bench_function(name, |b| b.iter(|| cache.classify(black_box(sql))));
    }
    group.finish();
}

fn cold_with_catalog(c: &mut Criterion) {
    let mut group = c.benchmark_group("cold_with_catalog");
    let policy = policy();
    for &(name, sql) in POLICY_STATEMENTS {
        group.bench_function(name, |b| {
            b.iter(|| router::classify_with(black_box(sql), &policy))
        });
    }
    group.finish();
}

fn cached_with_catalog(c: &mut Criterion) {
    let mut group = c.benchmark_group("cached_with_catalog");
    let cache = ClassifierCache::default();
    cache.set_policy(Arc::new(policy()));
    for &(name, sql) in POLICY_STATEMENTS {
        cache.classify(sql);
        group.bench_function(name, |b| b.iter(|| cache.classify(black_box(sql))));
    }
    group.finish();
}

criterion_group!(
    benches,
    cold,
    cached,
    cold_with_catalog,
    cached_with_catalog
);
criterion_main!(benches);
