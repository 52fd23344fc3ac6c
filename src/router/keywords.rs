//! Statement splitting and keyword-level classification.
//!
//! Most PostgreSQL statements are decided by their first few keywords: every
//! INSERT/UPDATE/DELETE/DDL goes to the primary whatever follows, and
//! transaction control or SET only needs two or three words to be understood.
//! Deciding those here keeps their transaction/session effects correct even
//! when sqlparser cannot parse the rest (e.g. `CREATE TEMP TABLE` with options
//! it does not know must still pin the session), and avoids a parse on the
//! hot BEGIN/COMMIT path.
//!
//! Statements whose route depends on their body (SELECT, WITH, VALUES, TABLE,
//! EXPLAIN, COPY, anything unknown) are left to `ast.rs`: this module must not
//! guess about them.

use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::functions::{is_kw, keyword};
use super::{HintPolicy, SessionEffect, TxEffect, Verdict};

/// Splits a token stream into statements at top-level `;`. Semicolons inside
/// parentheses (`CREATE RULE ... DO (a; b)`) and inside `BEGIN ATOMIC ... END`
/// function bodies do not split. Statements holding only blanks and comments
/// are dropped; the `;` tokens themselves are not kept. Tokens keep their
/// spans so that the parser takes them as they are (no conversion), and the
/// first statement keeps the original vector (no copy in the common case of
/// one statement with or without a trailing `;`).
pub(crate) fn split_statements(mut tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let cuts = top_level_semicolons(&tokens);
    let mut statements = Vec::with_capacity(cuts.len() + 1);
    for &cut in cuts.iter().rev() {
        let tail = tokens.split_off(cut + 1);
        tokens.truncate(cut);
        push_statement(&mut statements, tail);
    }
    push_statement(&mut statements, tokens);
    statements.reverse();
    statements
}

/// Positions of the `;` that end statements.
fn top_level_semicolons(tokens: &[TokenWithSpan]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut parens = 0usize;
    let mut atomic = 0usize;
    let mut prev_begin = false;
    for (i, spanned) in tokens.iter().enumerate() {
        let token = &spanned.token;
        match token {
            Token::SemiColon if parens == 0 && atomic == 0 => cuts.push(i),
            Token::LParen => parens += 1,
            Token::RParen => parens = parens.saturating_sub(1),
            Token::Whitespace(_) => {}
            _ => {
                if atomic > 0 && is_kw(token, "CASE") {
                    atomic += 1;
                } else if atomic > 0 && is_kw(token, "END") {
                    atomic -= 1;
                } else if prev_begin && is_kw(token, "ATOMIC") {
                    atomic = 1;
                }
                prev_begin = is_kw(token, "BEGIN");
            }
        }
    }
    cuts
}

fn push_statement(statements: &mut Vec<Vec<TokenWithSpan>>, statement: Vec<TokenWithSpan>) {
    if statement.iter().any(|t| is_significant(&t.token)) {
        statements.push(statement);
    }
}

/// Whether a token means something (is not a blank, a comment or the end).
pub(crate) fn is_significant(token: &Token) -> bool {
    !matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// The significant tokens of a statement: what every check below looks at.
pub(crate) fn significant(tokens: &[TokenWithSpan]) -> Vec<&Token> {
    tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| is_significant(t))
        .collect()
}

fn kw_at(sig: &[&Token], i: usize, kw: &str) -> bool {
    sig.get(i).is_some_and(|t| is_kw(t, kw))
}

/// How a statement that starts like a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadLead {
    /// `TABLE name ...`
    Table,
    /// SELECT, WITH, VALUES, SHOW, EXPLAIN or `(`.
    Other,
}

/// Whether the statement starts like a read; used only to judge unparsed texts.
pub(crate) fn read_lead(sig: &[&Token]) -> Option<ReadLead> {
    match *sig.first()? {
        Token::LParen => Some(ReadLead::Other),
        t if is_kw(t, "TABLE") => Some(ReadLead::Table),
        t if ["SELECT", "WITH", "VALUES", "SHOW", "EXPLAIN"]
            .iter()
            .any(|k| is_kw(t, k)) =>
        {
            Some(ReadLead::Other)
        }
        _ => None,
    }
}

const fn session(reason: &'static str, effect: SessionEffect) -> Verdict {
    Verdict::primary(reason, HintPolicy::RefuseSession).with_session(effect)
}

const fn control(reason: &'static str) -> Verdict {
    Verdict::primary(reason, HintPolicy::RefuseSession)
}

/// Verdict for statements decided by their first word alone (any case), or
/// `None`. Shared by the fast path and [`keyword_verdict`], so both agree.
pub(crate) fn fast_verdict(word: &str) -> Option<Verdict> {
    const TABLE: &[(&str, Verdict)] = &[
        ("ALTER", Verdict::write("ddl")),
        ("ANALYSE", Verdict::write("maintenance")),
        ("ANALYZE", Verdict::write("maintenance")),
        ("CALL", Verdict::write("call")),
        ("CHECKPOINT", Verdict::write("maintenance")),
        ("CLOSE", control("cursor")),
        ("CLUSTER", Verdict::write("maintenance")),
        ("COMMENT", Verdict::write("ddl")),
        // SQL-level prepared statements are session state: replayed on every
        // server connection the session uses (transaction pooling included).
        (
            "DEALLOCATE",
            session("prepared statement", SessionEffect::SetsState),
        ),
        ("DELETE", Verdict::write("write: delete")),
        ("DISCARD", session("discard", SessionEffect::SetsState)),
        ("DO", Verdict::write("do block")),
        ("DROP", Verdict::write("ddl")),
        ("EXECUTE", control("prepared statement")),
        ("FETCH", control("cursor")),
        ("GRANT", Verdict::write("ddl")),
        ("IMPORT", Verdict::write("ddl")),
        ("INSERT", Verdict::write("write: insert")),
        ("LISTEN", session("listen", SessionEffect::PinPrimary)),
        ("LOAD", session("load", SessionEffect::SetsState)),
        ("LOCK", Verdict::write("lock")),
        ("MERGE", Verdict::write("write: merge")),
        ("MOVE", control("cursor")),
        ("NOTIFY", Verdict::write("notify")),
        ("REASSIGN", Verdict::write("ddl")),
        ("REFRESH", Verdict::write("maintenance")),
        ("REINDEX", Verdict::write("maintenance")),
        ("RELEASE", control("savepoint")),
        ("RESET", session("reset", SessionEffect::SetsState)),
        ("REVOKE", Verdict::write("ddl")),
        ("SAVEPOINT", control("savepoint")),
        ("SECURITY", Verdict::write("ddl")),
        ("SHOW", Verdict::read("show")),
        ("TRUNCATE", Verdict::write("write: truncate")),
        ("UNLISTEN", session("listen", SessionEffect::PinPrimary)),
        ("UPDATE", Verdict::write("write: update")),
        ("VACUUM", Verdict::write("maintenance")),
    ];
    TABLE
        .iter()
        .find(|(kw, _)| kw.eq_ignore_ascii_case(word))
        .map(|(_, verdict)| *verdict)
}

/// Verdict for a statement its leading keywords decide, or `None` when the
/// body matters (or the first word is unknown) and the statement must be parsed.
pub(crate) fn keyword_verdict(sig: &[&Token]) -> Option<Verdict> {
    let first = sig.first().and_then(|t| keyword(t))?;
    if let Some(verdict) = fast_verdict(first) {
        return Some(verdict);
    }
    let upper = first.to_ascii_uppercase();
    let verdict = match upper.as_str() {
        "BEGIN" => begin(sig),
        "START" => {
            if !kw_at(sig, 1, "TRANSACTION") {
                return None;
            }
            begin(sig)
        }
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" => finish(sig, &upper),
        "PREPARE" => {
            if kw_at(sig, 1, "TRANSACTION") {
                control("prepare transaction").with_tx(TxEffect::End)
            } else {
                session("prepared statement", SessionEffect::SetsState)
            }
        }
        "SET" => set(sig),
        "DECLARE" => declare(sig),
        "CREATE" => create(sig),
        _ => return None,
    };
    Some(verdict)
}

/// BEGIN / START TRANSACTION with optional modes. A READ ONLY transaction may
/// start on a replica, unless it is SERIALIZABLE (a standby refuses that).
fn begin(sig: &[&Token]) -> Verdict {
    let mut read_only = false;
    let mut serializable = false;
    for pair in sig.windows(2) {
        if is_kw(pair[0], "READ") {
            if is_kw(pair[1], "ONLY") {
                read_only = true;
            } else if is_kw(pair[1], "WRITE") {
                read_only = false;
            }
        }
        serializable |= is_kw(pair[1], "SERIALIZABLE");
    }
    let tx = TxEffect::Begin { read_only };
    if read_only && !serializable {
        Verdict::read("begin read only").with_tx(tx)
    } else {
        control("begin").with_tx(tx)
    }
}

/// COMMIT / END / ROLLBACK / ABORT, with PREPARED, TO SAVEPOINT and AND CHAIN.
fn finish(sig: &[&Token], first: &str) -> Verdict {
    if kw_at(sig, 1, "PREPARED") {
        let reason = if first == "COMMIT" {
            "commit prepared"
        } else {
            "rollback prepared"
        };
        return control(reason).with_tx(TxEffect::End);
    }
    if matches!(first, "ROLLBACK" | "ABORT") && sig.iter().any(|t| is_kw(t, "TO")) {
        return control("rollback to savepoint");
    }
    // AND CHAIN starts a new transaction at once: the session stays in one.
    let chain = sig
        .windows(2)
        .any(|p| is_kw(p[0], "AND") && is_kw(p[1], "CHAIN"));
    if chain {
        return control("commit and chain");
    }
    let reason = if matches!(first, "COMMIT" | "END") {
        "commit"
    } else {
        "rollback"
    };
    control(reason).with_tx(TxEffect::End)
}

/// SET: session-wide unless LOCAL, TRANSACTION or CONSTRAINTS (which only
/// last until the end of the transaction).
fn set(sig: &[&Token]) -> Verdict {
    if kw_at(sig, 1, "LOCAL") {
        control("set local")
    } else if kw_at(sig, 1, "TRANSACTION") {
        control("set transaction")
    } else if kw_at(sig, 1, "CONSTRAINTS") {
        control("set constraints")
    } else {
        session("set", SessionEffect::SetsState)
    }
}

/// DECLARE name ... CURSOR [WITH HOLD] FOR query: a held cursor outlives the
/// transaction, so the session must stay where it was declared.
fn declare(sig: &[&Token]) -> Verdict {
    let head = sig
        .iter()
        .position(|t| is_kw(t, "FOR"))
        .map_or(sig, |end| &sig[..end]);
    let hold = head
        .windows(2)
        .any(|p| is_kw(p[0], "WITH") && is_kw(p[1], "HOLD"));
    if hold {
        session("declare cursor with hold", SessionEffect::PinPrimary)
    } else {
        control("declare cursor")
    }
}

/// CREATE ...: always the primary; pins the session when it creates a
/// temporary object (`CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`,
/// or anything naming the `pg_temp` schema).
fn create(sig: &[&Token]) -> Verdict {
    let temp = sig
        .iter()
        .skip(1)
        .find(|t| {
            !["OR", "REPLACE", "GLOBAL", "LOCAL"]
                .iter()
                .any(|k| is_kw(t, k))
        })
        .is_some_and(|t| is_kw(t, "TEMP") || is_kw(t, "TEMPORARY"));
    let pg_temp = sig.iter().any(|t| match t {
        Token::Word(w) => w.value.eq_ignore_ascii_case("pg_temp"),
        _ => false,
    });
    if temp || pg_temp {
        Verdict::write("create temp").with_session(SessionEffect::PinPrimary)
    } else {
        Verdict::write("ddl")
    }
}
