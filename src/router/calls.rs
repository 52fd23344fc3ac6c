//! Finding the function calls the [`FunctionPolicy`] must judge: which words
//! followed by `(` really call a function, and under what (qualified) name.
//!
//! Many words before `(` are not calls: `IN (`, `USING (`, `OVER (`, type
//! modifiers (`varchar(10)`), alias column lists (`AS g(i)`), `EXPLAIN (` ...
//! Taking those for calls would send reads to the primary for nothing once a
//! catalog is loaded (their names are in no catalog). Each rule that skips a
//! word must be one PostgreSQL's grammar guarantees: a skipped word can never
//! be a call of a user-defined function. Anything else counts as a call
//! (a false positive only costs a read on the primary).
//!
//! This module must not decide routes: it reports the worst [`CallRisk`].

use sqlparser::tokenizer::{Token, Word};

use super::functions::{is_kw, keyword};
use super::policy::{Call, CallRisk, FunctionPolicy};

/// PostgreSQL's reserved keywords and "column name" keywords (PostgreSQL 17,
/// `src/include/parser/kwlist.h`, lower case, sorted). Unquoted, neither can
/// name a function in a call: before `(` they are syntax (`IN (`, `EXISTS (`,
/// `ROW (`), special forms that call built-ins only (`extract(`, `trim(`,
/// `coalesce(`), or type modifiers (`numeric(10, 2)`).
#[rustfmt::skip]
pub(super) const NOT_FUNCTION_NAMES: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "between",
    "bigint", "bit", "boolean", "both", "case", "cast", "char", "character", "check",
    "coalesce", "collate", "column", "constraint", "create", "current_catalog", "current_date",
    "current_role", "current_time", "current_timestamp", "current_user", "dec", "decimal",
    "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists",
    "extract", "false", "fetch", "float", "for", "foreign", "from", "grant", "greatest",
    "group", "grouping", "having", "in", "initially", "inout", "int", "integer", "intersect",
    "interval", "into", "json", "json_array", "json_arrayagg", "json_exists", "json_object",
    "json_objectagg", "json_query", "json_scalar", "json_serialize", "json_table", "json_value",
    "lateral", "leading", "least", "limit", "localtime", "localtimestamp", "merge_action",
    "national", "nchar", "none", "normalize", "not", "null", "nullif", "numeric", "offset",
    "on", "only", "or", "order", "out", "overlay", "placing", "position", "precision",
    "primary", "real", "references", "returning", "row", "select", "session_user", "setof",
    "smallint", "some", "substring", "symmetric", "system_user", "table", "then", "time",
    "timestamp", "to", "trailing", "treat", "trim", "true", "union", "unique", "user", "using",
    "values", "varchar", "variadic", "when", "where", "window", "with", "xmlattributes",
    "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces", "xmlparse", "xmlpi",
    "xmlroot", "xmlserialize", "xmltable",
];

/// Words after which a word followed by `(` is not a call: `AS g(i)` (alias
/// column list, or a type in CAST), `TABLESAMPLE system(10)` (a sampling
/// method: an internal handler, not callable from SQL), `WITH x(a) AS` and
/// `WITH RECURSIVE x(a) AS` (CTE column lists), `COPY t(a, b)`.
const NOT_CALL_AFTER: &[&str] = &["AS", "COPY", "RECURSIVE", "TABLESAMPLE", "WITH"];

/// (word two before, previous word, word): where the word before `(` is
/// syntax. Each needs enough context to be unambiguous: `BY cube(` is a call
/// after ORDER BY, but grouping syntax after GROUP BY (PostgreSQL's rule too).
#[rustfmt::skip]
const NOT_CALL_CONTEXTS: &[(Option<&str>, &str, &str)] = &[
    (None, "BIT", "VARYING"),           // bit varying(8)
    (None, "CHAR", "VARYING"),          // char varying(8)
    (None, "CHARACTER", "VARYING"),     // character varying(8)
    (None, "FETCH", "FIRST"),           // FETCH FIRST (n) ROWS ONLY
    (None, "FETCH", "NEXT"),
    (None, "GROUP", "BY"),              // GROUP BY (a, b)
    (None, "GROUPING", "SETS"),         // GROUPING SETS ((a), ())
    (None, "ORDER", "BY"),
    (None, "PARTITION", "BY"),
    (Some("AS"), "NOT", "MATERIALIZED"), // x AS NOT MATERIALIZED (...)
    (Some("GROUP"), "BY", "CUBE"),       // GROUP BY CUBE (a, b)
    (Some("GROUP"), "BY", "ROLLUP"),
];

/// Join words: `JOIN (` after them (or after a table name or `)`) starts a
/// parenthesised join or a derived table.
const JOIN_WORDS: &[&str] = &[
    "CROSS", "FULL", "INNER", "LEFT", "NATURAL", "OUTER", "RIGHT",
];

/// The worst risk of the calls in a statement's significant tokens.
pub(crate) fn worst_risk(sig: &[&Token], policy: &FunctionPolicy) -> CallRisk {
    if policy.allows_everything() {
        return CallRisk::Safe;
    }
    let mut worst = CallRisk::Safe;
    for (i, pair) in sig.windows(2).enumerate() {
        if *pair[1] == Token::LParen {
            if let Some(call) = call_at(sig, i) {
                worst = worst.max(policy.call_risk(call.as_call()));
            }
        }
    }
    worst
}

/// A call's name parts, normalised as PostgreSQL does.
struct OwnedCall {
    schema: Option<String>,
    name: String,
}

impl OwnedCall {
    fn as_call(&self) -> Call<'_> {
        Call {
            schema: self.schema.as_deref(),
            name: &self.name,
        }
    }
}

/// The call whose (last) name is `sig[i]`, followed by `(`; `None` when that
/// word is not a call.
fn call_at(sig: &[&Token], i: usize) -> Option<OwnedCall> {
    let Token::Word(last) = sig[i] else {
        return None;
    };
    // Walk back over `a.b.c` to the first part of the name.
    let mut start = i;
    while start >= 2 && *sig[start - 1] == Token::Period && matches!(sig[start - 2], Token::Word(_))
    {
        start -= 2;
    }
    let qualified = start < i;
    // A statement never starts with a call: `EXPLAIN (...)`.
    let prev = *sig.get(start.checked_sub(1)?)?;
    if matches!(prev, Token::DoubleColon | Token::RParen) {
        // `x::numeric(10, 2)` is a type; `f() AS t(a)` / `f() t(a)` /
        // `count(*) FILTER (...)` / `OVER (...)` follow a closing parenthesis.
        return None;
    }
    if let Some(prev_kw) = keyword(prev) {
        if NOT_CALL_AFTER
            .iter()
            .any(|k| prev_kw.eq_ignore_ascii_case(k))
        {
            return None;
        }
    }
    if !qualified && last.quote_style.is_none() {
        let name = last.value.as_str();
        if is_not_function_name(name) {
            return None;
        }
        let before_prev = start.checked_sub(2).map(|j| sig[j]);
        let syntax = |&(two_before, before, word): &(Option<&str>, &str, &str)| {
            name.eq_ignore_ascii_case(word)
                && is_kw(prev, before)
                && two_before.is_none_or(|kw| before_prev.is_some_and(|t| is_kw(t, kw)))
        };
        if NOT_CALL_CONTEXTS.iter().any(syntax) {
            return None;
        }
        if name.eq_ignore_ascii_case("JOIN") && is_join_left_side(prev) {
            return None;
        }
        // COPY ... TO STDOUT (options) / FROM STDIN (options).
        let copy_io = (name.eq_ignore_ascii_case("STDOUT") && is_kw(prev, "TO"))
            || (name.eq_ignore_ascii_case("STDIN") && is_kw(prev, "FROM"));
        if copy_io && sig.first().is_some_and(|t| is_kw(t, "COPY")) {
            return None;
        }
    }
    let name = normalise(last);
    let schema = qualified.then(|| match sig[i - 2] {
        Token::Word(w) => normalise(w),
        _ => String::new(),
    });
    Some(OwnedCall { schema, name })
}

/// What may precede `JOIN (` in a FROM clause: a table name or alias (an
/// identifier), a join word, or `)`.
fn is_join_left_side(prev: &Token) -> bool {
    match prev {
        Token::Word(w) if w.quote_style.is_some() => true,
        Token::Word(w) => {
            w.keyword == sqlparser::keywords::Keyword::NoKeyword
                || JOIN_WORDS.iter().any(|k| w.value.eq_ignore_ascii_case(k))
        }
        _ => false,
    }
}

fn is_not_function_name(word: &str) -> bool {
    NOT_FUNCTION_NAMES
        .binary_search_by(|probe| {
            let probe = probe.bytes();
            let word = word.bytes().map(|b| b.to_ascii_lowercase());
            probe.cmp(word)
        })
        .is_ok()
}

/// Unquoted names fold to lower case; quoted ones are kept as written.
fn normalise(word: &Word) -> String {
    match word.quote_style {
        Some(_) => word.value.clone(),
        None => word.value.to_ascii_lowercase(),
    }
}
