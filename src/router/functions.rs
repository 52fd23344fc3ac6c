//! The deny-list of functions that must not run on a replica, and the token
//! scan that finds their calls (and locking clauses) anywhere in a statement.
//!
//! The scan works on sqlparser tokens, not on the AST: a function call is a
//! word followed by `(`, wherever it appears (select list, WHERE, FROM,
//! subqueries, CTEs, arguments of other calls). String literals and
//! dollar-quoted bodies are single tokens, so names inside them are not calls.
//! False positives (a table alias list named like a denied function, a column
//! named `update` after `FOR`) only send a read to the primary, which is safe.
//!
//! This module must not decide routes on its own: it reports what it saw and
//! [`Scan::apply`] strengthens a verdict accordingly.

use sqlparser::tokenizer::{Token, Word};

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
/// fine on a replica and deliberately absent. Functions defined by users that
/// write are invisible to this list; the replica rejects them at run time.
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
    /// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE` at any depth.
    pub(crate) locking: bool,
    /// A keyword that only appears in writes (INSERT, INTO, ...): used to
    /// decide whether an unparsed text may follow a replica hint.
    pub(crate) write_word: bool,
    /// `SELECT ... INTO [LOCAL|GLOBAL] TEMP ...` or `INTO pg_temp.x`: creates
    /// a temporary table, so the session must stay on the primary.
    pub(crate) into_temp: bool,
}

/// Words whose presence (unquoted) makes an unparsed read-looking text a
/// possible write, so that a replica hint is refused.
const WRITE_WORDS: &[&str] = &[
    "ALTER", "CALL", "COPY", "CREATE", "DELETE", "DROP", "GRANT", "INSERT", "INTO", "LOCK",
    "MERGE", "NOTIFY", "REVOKE", "SHARE", "TRUNCATE", "UPDATE",
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

/// Scans one statement's tokens (blanks and comments are skipped).
pub(crate) fn scan(tokens: &[Token]) -> Scan {
    let mut scan = Scan::default();
    let mut sig = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .peekable();
    let mut prev: Option<&Token> = None;
    let mut after_select_into = false;
    while let Some(token) = sig.next() {
        let next = sig.peek().copied();
        if let Token::Word(word) = token {
            if next == Some(&Token::LParen) && is_denied(&word.value) {
                scan.denied_function = true;
                scan.sets_config |= word.value.eq_ignore_ascii_case("set_config");
            }
            if word.value.eq_ignore_ascii_case("pg_temp") && after_select_into {
                scan.into_temp = true;
            }
        }
        if let Some(kw) = keyword(token) {
            if kw.eq_ignore_ascii_case("FOR")
                && next
                    .is_some_and(|n| ["UPDATE", "SHARE", "NO", "KEY"].iter().any(|k| is_kw(n, k)))
            {
                scan.locking = true;
            }
            if WRITE_WORDS.iter().any(|w| kw.eq_ignore_ascii_case(w)) {
                scan.write_word = true;
            }
            let after_insert = prev.is_some_and(|p| is_kw(p, "INSERT") || is_kw(p, "MERGE"));
            if kw.eq_ignore_ascii_case("INTO") && !after_insert {
                after_select_into = true;
                let temp_word = ["TEMP", "TEMPORARY", "LOCAL", "GLOBAL"];
                if next.is_some_and(|n| temp_word.iter().any(|k| is_kw(n, k))) {
                    scan.into_temp = true;
                }
            }
        }
        prev = Some(token);
    }
    scan
}

impl Scan {
    /// Strengthens the verdict of a statement (parsed or not) with what the scan saw.
    pub(crate) fn apply(self, mut verdict: Verdict) -> Verdict {
        if verdict.route == Route::Replica && (self.denied_function || self.locking) {
            verdict.route = Route::Primary;
            verdict.reason = if self.denied_function {
                "side-effect function"
            } else {
                "locking read"
            };
            verdict.hint = HintPolicy::RefuseWrite;
        }
        if self.into_temp {
            verdict.route = Route::Primary;
            verdict.session = SessionEffect::PinPrimary;
            verdict.hint = HintPolicy::RefuseWrite;
        }
        if self.sets_config && verdict.session == SessionEffect::None {
            verdict.session = SessionEffect::SetsState;
        }
        verdict
    }
}
