//! Parsing and AST analysis for statements whose route depends on their body:
//! queries (SELECT / VALUES / TABLE / WITH), EXPLAIN and COPY.
//!
//! The walk is manual and structural (sqlparser's `Visit` needs its `visitor`
//! feature, which this crate does not enable): it follows query bodies, set
//! operations, CTEs and derived tables to find data-modifying CTEs, SELECT
//! INTO and locking clauses. It does not descend into expressions: function
//! calls and locking clauses inside expression subqueries are found by the
//! token scan in `functions.rs`, and PostgreSQL itself rejects data-modifying
//! WITH anywhere but at the top level.
//!
//! This module must not look at leading keywords or hints (see `keywords.rs`
//! and `hints.rs`) and must not fail: a parse error is reported as `None`.

use sqlparser::ast::{
    CopySource, CopyTarget, Expr, Query, SetExpr, Statement, TableFactor, TableWithJoins,
    UtilityOption,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::TokenWithSpan;

use super::{HintPolicy, Route, SessionEffect, Verdict};

/// Parses one statement's tokens and classifies it; `None` when sqlparser
/// rejects them (the caller then treats the statement as unparsed).
pub(crate) fn classify_tokens(tokens: Vec<TokenWithSpan>) -> Option<Verdict> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    match parser.parse_statements() {
        Ok(statements) => statements.iter().map(statement).reduce(Verdict::then),
        Err(err) => {
            tracing::debug!(error = %err, "router: cannot parse statement");
            None
        }
    }
}

fn statement(stmt: &Statement) -> Verdict {
    match stmt {
        Statement::Query(q) => query(q),
        Statement::Explain {
            analyze,
            options,
            statement: inner,
            ..
        } => explain(*analyze, options.as_deref(), inner),
        Statement::Copy {
            source, to, target, ..
        } => copy(source, *to, target),
        Statement::Insert(_) => Verdict::write("write: insert"),
        Statement::Update(_) => Verdict::write("write: update"),
        Statement::Delete(_) => Verdict::write("write: delete"),
        Statement::Merge(_) => Verdict::write("write: merge"),
        Statement::Execute { .. } => {
            Verdict::primary("prepared statement", HintPolicy::RefuseSession)
        }
        _ => Verdict::write("other statement"),
    }
}

/// Why a query is not a plain read.
struct Finding {
    reason: &'static str,
    /// It creates a temporary table (SELECT INTO TEMP).
    temp: bool,
}

impl Finding {
    fn new(reason: &'static str) -> Option<Self> {
        Some(Self {
            reason,
            temp: false,
        })
    }
}

fn query(q: &Query) -> Verdict {
    match find_write(q, false) {
        Some(Finding { reason, temp }) => {
            let verdict = Verdict::write(reason);
            if temp {
                verdict.with_session(SessionEffect::PinPrimary)
            } else {
                verdict
            }
        }
        None => Verdict::read(match q.body.as_ref() {
            SetExpr::Values(_) => "values",
            SetExpr::Table(_) => "table",
            _ => "select",
        }),
    }
}

/// Looks for writes in a query; `nested` is false only for the statement's
/// own top-level body (so `WITH x AS (...) INSERT ...` reads "write: insert").
fn find_write(q: &Query, nested: bool) -> Option<Finding> {
    let mut ctes = q.with.iter().flat_map(|with| &with.cte_tables);
    if let Some(found) = ctes.find_map(|cte| find_write(&cte.query, true)) {
        return Some(found);
    }
    if !q.locks.is_empty() {
        return Finding::new("locking read");
    }
    set_expr(&q.body, nested)
}

fn set_expr(body: &SetExpr, nested: bool) -> Option<Finding> {
    let dml = |reason| {
        Finding::new(if nested {
            "write: data-modifying cte"
        } else {
            reason
        })
    };
    match body {
        SetExpr::Select(select) => {
            if let Some(into) = &select.into {
                return Some(Finding {
                    reason: "select into",
                    temp: into.temporary,
                });
            }
            select.from.iter().find_map(joined)
        }
        SetExpr::Query(q) => find_write(q, nested),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr(left, nested).or_else(|| set_expr(right, nested))
        }
        SetExpr::Values(_) | SetExpr::Table(_) => None,
        SetExpr::Insert(_) => dml("write: insert"),
        SetExpr::Update(_) => dml("write: update"),
        SetExpr::Delete(_) => dml("write: delete"),
        SetExpr::Merge(_) => dml("write: merge"),
    }
}

fn joined(from: &TableWithJoins) -> Option<Finding> {
    factor(&from.relation).or_else(|| from.joins.iter().find_map(|j| factor(&j.relation)))
}

fn factor(relation: &TableFactor) -> Option<Finding> {
    match relation {
        TableFactor::Derived { subquery, .. } => find_write(subquery, true),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => joined(table_with_joins),
        _ => None,
    }
}

/// EXPLAIN runs nothing unless ANALYZE is on (as a keyword or an option);
/// EXPLAIN ANALYZE of a write executes the write.
fn explain(analyze: bool, options: Option<&[UtilityOption]>, inner: &Statement) -> Verdict {
    if matches!(inner, Statement::Execute { .. }) {
        // The prepared statement lives on the node that prepared it: the primary.
        return Verdict::primary("prepared statement", HintPolicy::RefuseSession);
    }
    let analyze = analyze
        || options.unwrap_or_default().iter().any(|o| {
            let name = &o.name.value;
            (name.eq_ignore_ascii_case("analyze") || name.eq_ignore_ascii_case("analyse"))
                && !is_false(o.arg.as_ref())
        });
    if !analyze {
        return Verdict::read("explain");
    }
    let inner = statement(inner);
    if inner.route == Route::Primary {
        Verdict::write("explain analyze: write").with_session(inner.session)
    } else {
        Verdict::read("explain analyze")
    }
}

/// Whether an EXPLAIN option's argument turns it off (`ANALYZE false`, `off`, `0`).
fn is_false(arg: Option<&Expr>) -> bool {
    arg.is_some_and(|e| {
        let text = e.to_string();
        ["false", "off", "0", "'false'", "'off'"]
            .iter()
            .any(|f| text.eq_ignore_ascii_case(f))
    })
}

/// COPY ... TO STDOUT reads (unless its query writes); COPY FROM writes;
/// COPY TO a server file or program stays on the primary.
fn copy(source: &CopySource, to: bool, target: &CopyTarget) -> Verdict {
    if !to {
        return Verdict::write("write: copy from");
    }
    if !matches!(target, CopyTarget::Stdout) {
        return Verdict::write("copy to file");
    }
    match source {
        CopySource::Table { .. } => Verdict::read("copy to stdout"),
        CopySource::Query(q) => {
            let verdict = query(q);
            if verdict.route == Route::Replica {
                Verdict::read("copy to stdout")
            } else {
                verdict
            }
        }
    }
}
