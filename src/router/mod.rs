//! Statement classification: decides where a statement may run and what it does
//! to the session. Pure and synchronous: no I/O, no shared mutable state except
//! the classification cache. It must not know about connections or sockets.
//!
//! Layout (all `sqlparser` usage stays inside this module, because its AST
//! changes between minor versions):
//! - `mod.rs` (this file): the public interface and the orchestration of one text.
//! - [`hints`]: the leading `/* pgrouter: ... */` comment and the text's first word.
//! - `keywords.rs`: splitting a text into statements and classifying the
//!   statements whose leading keywords decide everything (writes, DDL,
//!   transaction control, SET ...) without a full parse.
//! - `ast.rs`: parsing and walking queries, EXPLAIN and COPY with sqlparser.
//! - `simple.rs`: a recogniser for plain SELECTs, which skip the full parse.
//! - [`functions`]: the deny-list of functions that write or fail on a standby,
//!   and the token scan that finds their calls (`calls.rs` tells calls apart
//!   from other words before `(`).
//! - [`policy`]: [`FunctionPolicy`], what the primary's catalog and the config
//!   say about user-defined functions.
//! - [`listen`]: names the channel of a lone LISTEN/UNLISTEN.
//! - `normalize.rs`: the literal-free cache key of a plain SELECT.
//! - `cache.rs`: [`ClassifierCache`], a sharded bounded cache of decisions.
//!
//! How a text is classified:
//! 1. The leading comments are scanned for a routing hint.
//! 2. Fast path: a single statement whose first keyword alone decides it
//!    (INSERT, UPDATE, DELETE, ALTER, DROP, ...) is answered without tokenizing.
//! 3. Otherwise the text is tokenized once (PostgreSQL dialect), split into
//!    statements at top-level semicolons, and each statement is classified:
//!    by its leading keywords when they decide it, as a plain read when it is
//!    a SELECT of the simple grammar, else by parsing it (the parser takes the
//!    same tokens: nothing is tokenized twice). Queries are also scanned token
//!    by token for function calls (deny-list and [`FunctionPolicy`]) and
//!    locking clauses at any depth.
//! 4. The strongest requirement of any statement wins; the hint is applied last.
//!
//! Known limits (by design, not bugs): what a user-defined function does is
//! only known through its declared volatility (see [`policy`]); functions
//! run without a call in the text (operators, casts, `t.f` attribute
//! notation, calls inside views) are invisible; anything sqlparser cannot
//! parse goes to the primary.

mod ast;
mod cache;
mod calls;
pub mod functions;
pub mod hints;
mod keywords;
pub mod listen;
mod normalize;
pub mod policy;
mod simple;

#[cfg(test)]
mod tests;

pub use cache::{CacheStats, ClassifierCache};
pub use hints::Hint;
pub use policy::{FunctionName, FunctionNameError, FunctionPolicy, Volatility};

use std::sync::LazyLock;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// Where a statement may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Safe on any replica that satisfies the session's freshness needs.
    Replica,
    /// Must run on the primary (writes, and everything we are not sure of).
    Primary,
}

/// What a statement does to the transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxEffect {
    None,
    /// BEGIN / START TRANSACTION; `read_only` when it says READ ONLY.
    Begin {
        read_only: bool,
    },
    /// COMMIT / END / ROLLBACK / ABORT / PREPARE TRANSACTION ...
    End,
}

/// What a statement does to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEffect {
    None,
    /// SET / RESET / DISCARD and the like: must be in effect on every node the
    /// session uses afterwards, so the front end replays it on other nodes.
    SetsState,
    /// The session must stay on the primary from now on (temp tables, LISTEN, ...).
    PinPrimary,
}

/// The classifier's verdict for one statement text (which may hold several statements).
///
/// For a text with several statements: `route` is the strongest of all
/// (Primary wins), `reason` is the first statement's that needs that route,
/// `tx` is the last statement's transaction effect that is not `None` (so
/// `BEGIN; ...; COMMIT` is `End`), and `session` is the strongest (PinPrimary >
/// SetsState > None).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub route: Route,
    /// Why: a short static reason for logs and the admin console.
    pub reason: &'static str,
    pub tx: TxEffect,
    pub session: SessionEffect,
    /// The text carried a `/* pgrouter: replica */` hint that was refused
    /// because the classifier knows the text writes or changes session or
    /// transaction state; `route` is then Primary.
    pub hint_refused: bool,
    /// It may write (a statement needs the primary for what it does, not only
    /// for transaction control or session state): read-your-writes tracks it.
    /// A `/* pgrouter: primary */` hint on a read makes it count too.
    pub writes: bool,
}

/// Classifies one statement text (simple Query or Parse) with no catalog
/// loaded: only the deny-list judges function calls. Never fails: anything
/// it cannot parse or does not recognise goes to the primary.
pub fn classify(sql: &str) -> Decision {
    static NO_CATALOG: LazyLock<FunctionPolicy> = LazyLock::new(FunctionPolicy::default);
    classify_with(sql, &NO_CATALOG)
}

/// Classifies one statement text, judging calls of user-defined functions
/// with `policy` (see [`policy`]).
pub fn classify_with(sql: &str, policy: &FunctionPolicy) -> Decision {
    let prefix = hints::scan_prefix(sql);
    let verdict = match fast_path(sql, prefix.body_start) {
        Some(verdict) => verdict,
        None => classify_text(sql, policy),
    };
    verdict.into_decision(prefix.hint)
}

/// What a replica hint may do with a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HintPolicy {
    /// A read (or an unparsed text that looks like one): the hint may send it to a replica.
    Allow,
    /// Transaction control or session state: must stay where the classifier put it.
    RefuseSession,
    /// A known write: never on a replica.
    RefuseWrite,
}

/// The classification of one statement, or of several combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) route: Route,
    pub(crate) reason: &'static str,
    pub(crate) tx: TxEffect,
    pub(crate) session: SessionEffect,
    pub(crate) hint: HintPolicy,
    /// Combined verdicts: an earlier statement was a write (see `is_write`).
    pub(crate) wrote: bool,
}

impl Verdict {
    /// A statement that must run on the primary and has no other effect.
    pub(crate) const fn primary(reason: &'static str, hint: HintPolicy) -> Self {
        Self {
            route: Route::Primary,
            reason,
            tx: TxEffect::None,
            session: SessionEffect::None,
            hint,
            wrote: false,
        }
    }

    /// A read that any replica may serve.
    pub(crate) const fn read(reason: &'static str) -> Self {
        Self {
            route: Route::Replica,
            reason,
            tx: TxEffect::None,
            session: SessionEffect::None,
            hint: HintPolicy::Allow,
            wrote: false,
        }
    }

    /// A known write.
    pub(crate) const fn write(reason: &'static str) -> Self {
        Self::primary(reason, HintPolicy::RefuseWrite)
    }

    pub(crate) const fn with_session(mut self, session: SessionEffect) -> Self {
        self.session = session;
        self
    }

    pub(crate) const fn with_tx(mut self, tx: TxEffect) -> Self {
        self.tx = tx;
        self
    }

    /// Text with no statement at all (empty, blanks, comments): rare, so primary.
    const EMPTY: Self = Self::primary("empty", HintPolicy::Allow);

    /// Combines the verdict of an earlier statement (`self`) with a later one.
    pub(crate) fn then(self, next: Self) -> Self {
        let (route, reason) = match (self.route, next.route) {
            (Route::Replica, Route::Primary) => (Route::Primary, next.reason),
            _ => (self.route, self.reason),
        };
        Self {
            route,
            reason,
            tx: if next.tx == TxEffect::None {
                self.tx
            } else {
                next.tx
            },
            session: strongest_session(self.session, next.session),
            hint: self.hint.max(next.hint),
            wrote: self.is_write() || next.is_write(),
        }
    }

    /// It may write: some statement needs the primary for what it does, not
    /// for transaction control or session state (BEGIN, COMMIT, SET are not writes;
    /// `BEGIN; UPDATE ...; COMMIT` is).
    fn is_write(&self) -> bool {
        self.wrote
            || (self.route == Route::Primary
                && self.tx == TxEffect::None
                && self.session == SessionEffect::None)
    }

    fn into_decision(self, hint: Option<Hint>) -> Decision {
        let mut decision = Decision {
            route: self.route,
            reason: self.reason,
            tx: self.tx,
            session: self.session,
            hint_refused: false,
            writes: self.is_write(),
        };
        match (hint, self.hint) {
            (Some(Hint::Primary), _) if decision.route != Route::Primary => {
                decision.route = Route::Primary;
                decision.reason = "hint: primary";
                decision.writes =
                    decision.tx == TxEffect::None && decision.session == SessionEffect::None;
            }
            (Some(Hint::Replica), HintPolicy::Allow) if decision.route != Route::Replica => {
                decision.route = Route::Replica;
                decision.reason = "hint: replica";
            }
            (Some(Hint::Replica), HintPolicy::RefuseWrite) => {
                decision.hint_refused = true;
                decision.reason = "replica hint refused: write";
            }
            (Some(Hint::Replica), HintPolicy::RefuseSession) => {
                decision.hint_refused = true;
                decision.reason = "replica hint refused: session";
            }
            _ => {}
        }
        decision
    }
}

fn strongest_session(a: SessionEffect, b: SessionEffect) -> SessionEffect {
    fn rank(s: SessionEffect) -> u8 {
        match s {
            SessionEffect::None => 0,
            SessionEffect::SetsState => 1,
            SessionEffect::PinPrimary => 2,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}

/// Answers without tokenizing when the text is a single statement whose first
/// keyword decides everything. "Single" is checked conservatively: no `;`
/// anywhere except trailing ones (a `;` inside a string literal just means the
/// slow path runs). Returns the slow path's verdict, except that for a text
/// the tokenizer rejects (an unterminated quote) the reason names the
/// statement ("write: insert") rather than "unparsed"; both are Primary.
fn fast_path(sql: &str, body_start: usize) -> Option<Verdict> {
    let body = sql.get(body_start..)?;
    let word = hints::first_word(body)?;
    let verdict = keywords::fast_verdict(word)?;
    let trimmed = body.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    if trimmed.contains(';') {
        return None;
    }
    Some(verdict)
}

/// The full path: tokenize once, split into statements, classify each, combine.
pub(crate) fn classify_text(sql: &str, policy: &FunctionPolicy) -> Verdict {
    let dialect = PostgreSqlDialect {};
    // Sized for typical SQL (a token, blanks included, every 3 bytes or so)
    // so that the buffer rarely grows: growing moves every token.
    let mut tokens = Vec::with_capacity(sql.len() / 3 + 4);
    let tokenized = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location_into_buf(&mut tokens);
    if let Err(err) = tokenized {
        tracing::debug!(error = %err, "router: cannot tokenize statement");
        return Verdict::write("unparsed");
    }
    keywords::split_statements(tokens)
        .into_iter()
        .map(|statement| classify_statement(statement, policy))
        .reduce(Verdict::then)
        .unwrap_or(Verdict::EMPTY)
}

/// Classifies one statement's tokens (no top-level `;`, not empty).
fn classify_statement(tokens: Vec<TokenWithSpan>, policy: &FunctionPolicy) -> Verdict {
    let (scan, lead) = {
        let sig: Vec<&Token> = keywords::significant(&tokens);
        if let Some(verdict) = keywords::keyword_verdict(&sig) {
            return verdict;
        }
        let scan = functions::scan(&sig, policy);
        if simple::is_simple_select(&sig) {
            return scan.apply(Verdict::read("select"));
        }
        (scan, keywords::read_lead(&sig))
    };
    let verdict = match ast::classify_tokens(tokens) {
        Some(verdict) => verdict,
        // sqlparser 0.63 does not parse `TABLE name`; nothing in it can write
        // except what the scan finds (locking clauses, denied functions).
        None if lead == Some(keywords::ReadLead::Table) => Verdict::read("table"),
        None => match scan.primary_reason() {
            Some((reason, HintPolicy::RefuseWrite)) => Verdict::write(reason),
            _ => {
                let hint = if lead.is_some() && !scan.write_word {
                    HintPolicy::Allow
                } else {
                    HintPolicy::RefuseWrite
                };
                Verdict::primary("unparsed", hint)
            }
        },
    };
    scan.apply(verdict)
}
