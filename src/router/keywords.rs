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

use sqlparser::tokenizer::Token;

use super::functions::{is_kw, keyword};
use super::{HintPolicy, SessionEffect, TxEffect, Verdict};

/// Splits a token stream into statements at top-level `;`. Semicolons inside
/// parentheses (`CREATE RULE ... DO (a; b)`) and inside `BEGIN ATOMIC ... END`
/// function bodies do not split. Statements holding only blanks and comments
/// are dropped; the `;` tokens themselves are not kept.
pub(crate) fn split_statements(tokens: Vec<Token>) -> Vec<Vec<Token>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut parens = 0usize;
    let mut atomic = 0usize;
    let mut prev_begin = false;
    for token in tokens {
        if token == Token::SemiColon && parens == 0 && atomic == 0 {
            push_statement(&mut statements, std::mem::take(&mut current));
            continue;
        }
        match &token {
            Token::LParen => parens += 1,
            Token::RParen => parens = parens.saturating_sub(1),
            Token::Whitespace(_) => {}
            _ => {
                if atomic > 0 && is_kw(&token, "CASE") {
                    atomic += 1;
                } else if atomic > 0 && is_kw(&token, "END") {
                    atomic -= 1;
                } else if prev_begin && is_kw(&token, "ATOMIC") {
                    atomic = 1;
                }
                prev_begin = is_kw(&token, "BEGIN");
            }
        }
        current.push(token);
    }
    push_statement(&mut statements, current);
    statements
}

fn push_statement(statements: &mut Vec<Vec<Token>>, statement: Vec<Token>) {
    if statement
        .iter()
        .any(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
    {
        statements.push(statement);
    }
}

/// The first `N` significant (non-blank, non-comment) tokens of a statement.
fn lead<const N: usize>(tokens: &[Token]) -> [Option<&Token>; N] {
    let mut out = [None; N];
    let sig = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_)));
    for (slot, token) in out.iter_mut().zip(sig) {
        *slot = Some(token);
    }
    out
}

fn kw_at(token: Option<&Token>, kw: &str) -> bool {
    token.is_some_and(|t| is_kw(t, kw))
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
pub(crate) fn read_lead(tokens: &[Token]) -> Option<ReadLead> {
    match lead::<1>(tokens)[0]? {
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
        ("DEALLOCATE", control("prepared statement")),
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
pub(crate) fn keyword_verdict(tokens: &[Token]) -> Option<Verdict> {
    let first = lead::<1>(tokens)[0].and_then(keyword)?;
    if let Some(verdict) = fast_verdict(first) {
        return Some(verdict);
    }
    let upper = first.to_ascii_uppercase();
    let verdict = match upper.as_str() {
        "BEGIN" => begin(tokens),
        "START" => {
            if !kw_at(lead::<2>(tokens)[1], "TRANSACTION") {
                return None;
            }
            begin(tokens)
        }
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" => finish(tokens, &upper),
        "PREPARE" => {
            if kw_at(lead::<2>(tokens)[1], "TRANSACTION") {
                control("prepare transaction").with_tx(TxEffect::End)
            } else {
                control("prepared statement")
            }
        }
        "SET" => set(tokens),
        "DECLARE" => declare(tokens),
        "CREATE" => create(tokens),
        _ => return None,
    };
    Some(verdict)
}

/// BEGIN / START TRANSACTION with optional modes. A READ ONLY transaction may
/// start on a replica, unless it is SERIALIZABLE (a standby refuses that).
fn begin(tokens: &[Token]) -> Verdict {
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
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
fn finish(tokens: &[Token], first: &str) -> Verdict {
    let [_, second, ..] = lead::<2>(tokens);
    if kw_at(second, "PREPARED") {
        let reason = if first == "COMMIT" {
            "commit prepared"
        } else {
            "rollback prepared"
        };
        return control(reason).with_tx(TxEffect::End);
    }
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
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
fn set(tokens: &[Token]) -> Verdict {
    let second = lead::<2>(tokens)[1];
    if kw_at(second, "LOCAL") {
        control("set local")
    } else if kw_at(second, "TRANSACTION") {
        control("set transaction")
    } else if kw_at(second, "CONSTRAINTS") {
        control("set constraints")
    } else {
        session("set", SessionEffect::SetsState)
    }
}

/// DECLARE name ... CURSOR [WITH HOLD] FOR query: a held cursor outlives the
/// transaction, so the session must stay where it was declared.
fn declare(tokens: &[Token]) -> Verdict {
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take_while(|t| !is_kw(t, "FOR"))
        .collect();
    let hold = sig
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
fn create(tokens: &[Token]) -> Verdict {
    let mut sig = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .skip(1);
    let temp = sig
        .by_ref()
        .find(|t| {
            !["OR", "REPLACE", "GLOBAL", "LOCAL"]
                .iter()
                .any(|k| is_kw(t, k))
        })
        .is_some_and(|t| is_kw(t, "TEMP") || is_kw(t, "TEMPORARY"));
    let pg_temp = tokens.iter().any(|t| match t {
        Token::Word(w) => w.value.eq_ignore_ascii_case("pg_temp"),
        _ => false,
    });
    if temp || pg_temp {
        Verdict::write("create temp").with_session(SessionEffect::PinPrimary)
    } else {
        Verdict::write("ddl")
    }
}
