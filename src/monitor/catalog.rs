//! Reads the primary's function catalog for the router's [`FunctionPolicy`]:
//! schema, name and volatility of every function in every schema (built-ins
//! included: the policy needs their names to tell them from unknown ones).
//!
//! One query, run by the caller at start-up and on config reload, on a
//! connection of its choosing (the primary's: a replica's catalog is the same
//! but may lag a fresh `CREATE FUNCTION`). It must not decide routes or keep
//! state: it turns rows into a policy and returns it; the caller swaps it in
//! with `ClassifierCache::set_policy`, and keeps the previous policy when the
//! load fails.

use tokio_postgres::Client;

use crate::config::RoutingConfig;
use crate::router::FunctionPolicy;

/// Every function with its schema and volatility ('i', 's' or 'v'). Cast to
/// text so that the columns decode as `String` whatever their catalog types
/// (`name`, `"char"`). About 3,000 rows on a fresh PostgreSQL 17.
pub const FUNCTION_CATALOG_QUERY: &str = "\
SELECT n.nspname::text, p.proname::text, p.provolatile::text \
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// Why the catalog could not be read. The policy then stays as it was
/// (without a catalog: only the deny-list and the config lists apply).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the function catalog failed: {0}")]
    Query(#[source] tokio_postgres::Error),
    #[error("unexpected function catalog row: {0}")]
    Row(#[source] tokio_postgres::Error),
}

/// Runs [`FUNCTION_CATALOG_QUERY`] on `client` and builds the policy from
/// its rows and the `[routing]` lists.
pub async fn load_function_policy(
    client: &Client,
    routing: &RoutingConfig,
) -> Result<FunctionPolicy, CatalogError> {
    let rows = client
        .query(FUNCTION_CATALOG_QUERY, &[])
        .await
        .map_err(CatalogError::Query)?;
    let mut functions = Vec::with_capacity(rows.len());
    for row in &rows {
        let schema: String = row.try_get(0).map_err(CatalogError::Row)?;
        let name: String = row.try_get(1).map_err(CatalogError::Row)?;
        let volatility: String = row.try_get(2).map_err(CatalogError::Row)?;
        functions.push((schema, name, volatility_code(&volatility)));
    }
    let policy = FunctionPolicy::from_rows(functions, routing);
    tracing::debug!(functions = policy.catalog_rows(), "function catalog loaded");
    Ok(policy)
}

/// The `provolatile` letter; an empty or odd value counts as volatile ('v'),
/// the cautious reading.
fn volatility_code(text: &str) -> char {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(code), None) => code,
        _ => 'v',
    }
}

/// Loads the catalog from the node the topology calls primary, over a short-lived
/// connection, and swaps the new policy into `cache`. On failure the current
/// policy stays and the failure is logged: routing then errs toward the primary
/// only for what the deny-list and config lists say.
pub(crate) async fn refresh(
    config: &crate::config::Config,
    primary: (&str, u16),
    cache: &crate::router::ClassifierCache,
) {
    let dsn = super::poll::dsn(config, primary.0, primary.1);
    let result = async {
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .map_err(CatalogError::Query)?;
        let connection = tokio::spawn(connection);
        let policy = load_function_policy(&client, &config.routing).await;
        drop(client);
        let _ = connection.await;
        policy
    };
    match tokio::time::timeout(config.pool.connect_timeout, result).await {
        Ok(Ok(policy)) => {
            tracing::info!(
                functions = policy.catalog_rows(),
                "function catalog loaded from the primary"
            );
            cache.set_policy(std::sync::Arc::new(policy));
        }
        Ok(Err(err)) => {
            tracing::warn!(%err, "function catalog not loaded; keeping the current routing policy")
        }
        Err(_) => {
            tracing::warn!("function catalog load timed out; keeping the current routing policy")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{Route, classify_with};

    #[test]
    fn query_reads_every_schema_with_volatility() {
        let q = FUNCTION_CATALOG_QUERY;
        assert!(q.contains("pg_catalog.pg_proc") && q.contains("pg_catalog.pg_namespace"));
        assert!(q.contains("provolatile") && !q.contains("WHERE"));
    }

    #[test]
    fn rows_become_a_policy() {
        let rows = [
            ("pg_catalog", "now", "s"),
            ("public", "touch", "v"),
            ("public", "peek", "s"),
            ("public", "odd", ""),
        ]
        .map(|(s, n, v)| (s.to_owned(), n.to_owned(), volatility_code(v)));
        let routing = RoutingConfig {
            read_only_functions: vec!["public.touch".into()],
            primary_functions: vec![],
        };
        let policy = FunctionPolicy::from_rows(rows, &routing);
        assert_eq!(policy.catalog_rows(), 4);
        for (sql, route) in [
            ("SELECT now(), peek()", Route::Replica),
            ("SELECT touch()", Route::Replica),
            ("SELECT odd()", Route::Primary),
            ("SELECT missing()", Route::Primary),
        ] {
            assert_eq!(classify_with(sql, &policy).route, route, "{sql}");
        }
    }
}
