//! The deny-list of functions that must not run on a replica, and the token
//! scan that finds their calls (and locking clauses) anywhere in a statement.
//! Calls of other functions are judged by the [`FunctionPolicy`] (see
//! `calls.rs` for which words before `(` count as calls there).
//!
//! The scan works on sqlparser tokens, not on the AST: a function call is a
//! word followed by `(`, wherever it appears (select list, WHERE, FROM,
//! subqueries, CTEs, arguments of other calls). String literals and
//! dollar-quoted bodies are single tokens, so names inside them are not calls.
//! False positives (a table alias list named like a denied function, a column
//! named `update` after `FOR`) only send a read to the primary, which is safe.
//!
//! This module must not decide routes on its own: it reports what it saw and
//! `Scan::apply` strengthens a verdict accordingly.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Word};

use super::calls;
use super::policy::{CallRisk, FunctionPolicy};
use super::{HintPolicy, Route, SessionEffect, Verdict};

/// Functions that write, take session-level state, or fail on a standby.
///
/// Matched case-insensitively against the unqualified name of any call, with
/// or without a schema (`nextval(...)`, `pg_catalog.nextval(...)`, and
/// conservatively `any_schema.nextval(...)`, since extensions such as dblink
/// live in arbitrary schemas). An entry ending in `*` matches every name with
/// that prefix. Keep the list sorted (a unit test checks it) and lowercase.
///
/// `pg_sleep` and plain reads (`pg_is_in_recovery`, `now`, `random`, ...) are
/// fine on a replica and deliberately absent. Functions defined by users are
/// judged by the [`FunctionPolicy`] instead (their volatility and the config).
pub const DENIED_FUNCTIONS: &[&str] = &[
    "currval",                           // session-local: the value lives on the primary
    "dblink*",                           // dblink, dblink_exec, dblink_connect...: remote SQL
    "lastval",                           // session-local
    "lo_creat",                          // large objects: writes
    "lo_create",                         //
    "lo_export",                         //
    "lo_from_bytea",                     //
    "lo_import",                         //
    "lo_open",                           //
    "lo_put",                            //
    "lo_truncate",                       //
    "lo_truncate64",                     //
    "lo_unlink",                         //
    "lowrite",                           //
    "nextval",                           // sequences: writes
    "pg_advisory_*",                     // advisory locks: session/xact state on the primary
    "pg_backup_start",                   // backups are taken through the primary
    "pg_backup_stop",                    //
    "pg_cancel_backend",                 // backend pids are the primary's
    "pg_copy_logical_replication_slot",  // replication slots
    "pg_copy_physical_replication_slot", //
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_restore_point", // WAL
    "pg_current_wal_flush_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_lsn",
    "pg_current_xact_id", // assigns a transaction id: fails on a standby
    "pg_current_xact_id_if_assigned",
    "pg_drop_replication_slot",
    "pg_logical_emit_message",
    "pg_logical_slot_get_binary_changes", // consumes a slot
    "pg_logical_slot_get_changes",
    "pg_notify",
    "pg_promote",
    "pg_reload_conf",
    "pg_replication_slot_advance",
    "pg_rotate_logfile",
    "pg_start_backup",
    "pg_stat_reset*",
    "pg_stop_backup",
    "pg_switch_wal",
    "pg_terminate_backend",
    "pg_try_advisory_*",
    "set_config", // session state (see `Scan::sets_config`)
    "setval",
    "txid_current",
    "txid_current_if_assigned",
];

/// Whether `name` (unqualified, any case) is on [`DENIED_FUNCTIONS`].
pub fn is_denied(name: &str) -> bool {
    DENIED_FUNCTIONS
        .iter()
        .any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => {
                name.len() >= prefix.len()
                    && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            None => name.eq_ignore_ascii_case(entry),
        })
}

/// What a token scan of one statement found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// A call to a function on [`DENIED_FUNCTIONS`].
    pub(crate) denied_function: bool,
    /// A call to `set_config`: changes session state.
    pub(crate) sets_config: bool,
    /// A session-level advisory lock (`pg_advisory_lock`, not the `_xact_`
    /// ones): it outlives the transaction, so the session keeps its connection.
    pub(crate) session_lock: bool,
    /// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE` at any depth.
    pub(crate) locking: bool,
    /// A keyword that only appears in writes (INSERT, INTO, ...): used to
    /// decide whether an unparsed text may follow a replica hint.
    pub(crate) write_word: bool,
    /// `SELECT ... INTO [LOCAL|GLOBAL] TEMP ...` or `INTO pg_temp.x`: creates
    /// a temporary table, so the session must stay on the primary.
    pub(crate) into_temp: bool,
    /// The worst of the calls the [`FunctionPolicy`] judged.
    pub(crate) function_risk: CallRisk,
}

/// Words whose presence (unquoted) makes an unparsed read-looking text a
/// possible write, so that a replica hint is refused. Compared as sqlparser
/// keywords (an enum compare, not a string compare per word).
const WRITE_WORDS: &[Keyword] = &[
    Keyword::ALTER,
    Keyword::CALL,
    Keyword::COPY,
    Keyword::CREATE,
    Keyword::DELETE,
    Keyword::DROP,
    Keyword::GRANT,
    Keyword::INSERT,
    Keyword::INTO,
    Keyword::LOCK,
    Keyword::MERGE,
    Keyword::NOTIFY,
    Keyword::REVOKE,
    Keyword::SHARE,
    Keyword::TRUNCATE,
    Keyword::UPDATE,
];

/// An unquoted word's text.
pub(crate) fn keyword(token: &Token) -> Option<&str> {
    match token {
        Token::Word(Word {
            value,
            quote_style: None,
            ..
        }) => Some(value),
        _ => None,
    }
}

/// Whether `token` is the unquoted word `kw` (any case).
pub(crate) fn is_kw(token: &Token, kw: &str) -> bool {
    keyword(token).is_some_and(|w| w.eq_ignore_ascii_case(kw))
}

/// Scans one statement's significant tokens (see `keywords::significant`).
pub(crate) fn scan(sig: &[&Token], policy: &FunctionPolicy) -> Scan {
    let mut scan = Scan {
        function_risk: calls::worst_risk(sig, policy),
        ..Scan::default()
    };
    let mut sig = sig.iter().copied().peekable();
    let mut prev: Option<&Token> = None;
    let mut after_select_into = false;
    while let Some(token) = sig.next() {
        let next = sig.peek().copied();
        let Token::Word(word) = token else {
            prev = Some(token);
            continue;
        };
        if next == Some(&Token::LParen) && is_denied(&word.value) {
            scan.denied_function = true;
            scan.sets_config |= word.value.eq_ignore_ascii_case("set_config");
            scan.session_lock |= is_session_advisory_lock(&word.value);
        }
        if after_select_into && word.value.eq_ignore_ascii_case("pg_temp") {
            scan.into_temp = true;
        }
        if word.quote_style.is_none() {
            let kw = word.keyword;
            let next_is =
                |kws: &[Keyword]| next.is_some_and(|n| kws.iter().any(|&k| is_keyword(n, k)));
            if kw == Keyword::FOR
                && next_is(&[Keyword::UPDATE, Keyword::SHARE, Keyword::NO, Keyword::KEY])
            {
                scan.locking = true;
            }
            scan.write_word |= WRITE_WORDS.contains(&kw);
            let after_insert = prev
                .is_some_and(|p| is_keyword(p, Keyword::INSERT) || is_keyword(p, Keyword::MERGE));
            if kw == Keyword::INTO && !after_insert {
                after_select_into = true;
                let temp = [
                    Keyword::TEMP,
                    Keyword::TEMPORARY,
                    Keyword::LOCAL,
                    Keyword::GLOBAL,
                ];
                scan.into_temp |= next_is(&temp);
            }
        }
        prev = Some(token);
    }
    scan
}

/// `pg_advisory_lock`, `pg_try_advisory_lock_shared`, ... but not the
/// transaction-scoped `_xact_` ones nor the unlock functions.
fn is_session_advisory_lock(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let name = name
        .strip_prefix("pg_try_")
        .or(name.strip_prefix("pg_"))
        .unwrap_or("");
    name.starts_with("advisory_lock") && !name.contains("xact")
}

/// Whether `token` is the unquoted word sqlparser knows as keyword `kw`.
pub(crate) fn is_keyword(token: &Token, kw: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.keyword == kw)
}

impl Scan {
    /// Strengthens the verdict of a statement (parsed or not) with what the scan saw.
    ///
    /// Known writes (deny-listed or config-forced functions, locking) refuse a
    /// replica hint; calls the policy is merely unsure of (volatile or unknown
    /// functions) let the hint decide, like an unparsed read does.
    pub(crate) fn apply(self, mut verdict: Verdict) -> Verdict {
        if verdict.route == Route::Replica {
            if let Some((reason, hint)) = self.primary_reason() {
                verdict.route = Route::Primary;
                verdict.reason = reason;
                verdict.hint = verdict.hint.max(hint);
            }
        }
        if self.into_temp {
            verdict.route = Route::Primary;
            verdict.session = SessionEffect::PinPrimary;
            verdict.hint = HintPolicy::RefuseWrite;
        }
        if self.session_lock {
            verdict.session = SessionEffect::PinPrimary;
        }
        if self.sets_config && verdict.session == SessionEffect::None {
            verdict.session = SessionEffect::SetsState;
        }
        verdict
    }

    /// Why a read must run on the primary after all, strongest reason first.
    pub(crate) fn primary_reason(&self) -> Option<(&'static str, HintPolicy)> {
        let refuse = HintPolicy::RefuseWrite;
        if self.denied_function {
            Some(("side-effect function", refuse))
        } else if self.function_risk == CallRisk::Forced {
            Some(("primary function", refuse))
        } else if self.locking {
            Some(("locking read", refuse))
        } else if self.function_risk == CallRisk::Volatile {
            Some(("volatile function", HintPolicy::Allow))
        } else if self.function_risk == CallRisk::Unknown {
            Some(("unknown function", HintPolicy::Allow))
        } else {
            None
        }
    }
}
