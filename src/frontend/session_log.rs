//! A session's state log: the statements (SET, RESET, SQL PREPARE, ...) it
//! ran outside pgrouter's view of any one connection, replayed on every server
//! connection it uses, and what `DISCARD ALL` and `DEALLOCATE` drop from that
//! log and from the client's prepared statements. It only queues internal
//! queries on a connection; it never decides where a batch goes.

use std::sync::Arc;

use super::dispatch::send_internal;
use super::server_statements::close_statement;
use super::session::Session;
use crate::consistency;
use crate::protocol::tx_status;

/// Past this many remembered session-state statements the session is pinned to
/// the primary instead of replaying an ever longer log on every new connection.
const MAX_SESSION_LOG: usize = 256;

/// A connection's `session_state` when what it carries is not known: never a
/// log's hash (see `next_log_hash`) nor 0 (no state), so its next use cleans it.
const UNKNOWN_STATE: u64 = u64::MAX;

impl Session {
    /// Brings the session's state (SETs, SQL PREPAREs, ...) to the connection:
    /// nothing when it already carries exactly this state; else the statements
    /// it has not seen, each as an internal query whose answers the client never
    /// sees, after a `DISCARD ALL` when another session's state is on it
    /// (transaction pooling). One query per statement, because some (DISCARD
    /// ALL) refuse to run inside a multi-statement query.
    pub(super) fn replay_session_state(&mut self, slot: usize) {
        let log_len = self.session_log.len();
        let log_hash = self.log_hash;
        let Some(attached) = self.servers[slot].as_mut() else {
            return;
        };
        if attached.applied == 0 {
            let state = attached.conn.conn.session_state;
            if state == log_hash {
                attached.applied = log_len;
                return;
            }
            if state != 0 {
                send_internal(attached, "DISCARD ALL");
                attached.conn.conn.prepared.clear();
            }
        }
        for sql in &self.session_log[attached.applied..] {
            send_internal(attached, sql);
            if drops_prepared_statements(sql) {
                attached.conn.conn.prepared.clear();
            }
        }
        attached.applied = log_len;
        attached.conn.conn.session_state = log_hash;
    }

    /// Remembers a session-state statement that completed on `slot`. One that
    /// only undoes earlier ones (DISCARD ALL, DEALLOCATE) shortens the log
    /// instead of growing it, so a client that prepares and deallocates
    /// statements all day (psycopg after every ROLLBACK) is never pinned for a
    /// long log.
    pub(super) fn remember_state(&mut self, slot: usize, sql: Arc<str>) {
        if let Some(Ok(setting)) = consistency::parse_setting(&sql) {
            self.freshness.apply(&setting);
        }
        if drops_prepared_statements(&sql) {
            if let Some(attached) = self.servers[slot].as_mut() {
                attached.conn.conn.prepared.clear();
            }
        }
        if let Some(kept) = compacted(&self.session_log, &sql) {
            self.replace_session_log(slot, kept);
            return;
        }
        if self.session_log.len() >= MAX_SESSION_LOG {
            if !self.pinned {
                tracing::info!(
                    "session changed its settings {MAX_SESSION_LOG} times; pinning it to the primary"
                );
                self.pinned = true;
            }
            return;
        }
        let up_to_date = self.servers[slot]
            .as_ref()
            .is_some_and(|a| a.applied == self.session_log.len());
        self.log_hash = next_log_hash(self.log_hash, &sql);
        self.session_log.push(sql);
        if up_to_date {
            if let Some(attached) = self.servers[slot].as_mut() {
                attached.applied = self.session_log.len();
                attached.conn.conn.session_state = self.log_hash;
            }
        }
    }

    /// Makes `kept` the session's log after a statement that ran on `slot`
    /// undid part of it. That connection now carries exactly `kept` if it
    /// carried the whole log before; any other attached connection still has
    /// the undone state, so it is marked unknown: its next use starts with
    /// `DISCARD ALL` and replays `kept`. Pooled connections with the old state
    /// no longer match the log's hash and are cleaned the same way.
    fn replace_session_log(&mut self, slot: usize, kept: Vec<Arc<str>>) {
        let old_len = self.session_log.len();
        self.log_hash = kept.iter().fold(0, |hash, sql| next_log_hash(hash, sql));
        self.session_log = kept;
        for (index, server) in self.servers.iter_mut().enumerate() {
            let Some(attached) = server else {
                continue;
            };
            if index == slot && attached.applied == old_len {
                attached.applied = self.session_log.len();
                attached.conn.conn.session_state = self.log_hash;
            } else {
                attached.applied = 0;
                attached.conn.conn.session_state = UNKNOWN_STATE;
            }
        }
    }

    /// Forgets the client's prepared statements that `sql`, sent now, drops on
    /// the server, as PostgreSQL does: a later Bind of one fails (26000) and
    /// its name may be prepared again. Done when the statement is sent, in the
    /// client's order, so Parses pipelined behind it are kept. Not when it is
    /// sure to fail: `DISCARD ALL` inside a transaction block, anything in a
    /// failed one.
    pub(super) fn forget_dropped_statements(&mut self, sql: &str) {
        if self.tx_status == tx_status::FAILED {
            return;
        }
        let in_tx = self.tx_status != tx_status::IDLE || self.tx_pending;
        if discards_all(sql) && in_tx {
            return;
        }
        if drops_prepared_statements(sql) {
            self.statements.clear();
        } else if let Some(name) = deallocated_name(sql) {
            self.statements.remove(&name);
        }
    }

    /// When `sql` is a `DEALLOCATE` of one of the client's protocol-level
    /// statements, which pgrouter answers itself, that statement's server-side
    /// name. The statement lives on whichever connections pgrouter prepared it
    /// (in transaction pooling under pgrouter's name, maybe shared), not
    /// necessarily on the one the DEALLOCATE would run on, so the server
    /// could not answer it. psycopg with a libpq older than 17 deallocates its
    /// statements this way.
    pub(super) fn deallocates_locally(&self, sql: &str) -> Option<String> {
        if self.tx_status == tx_status::FAILED {
            return None;
        }
        let name = deallocated_name(sql)?;
        self.statements.get(&name).map(|s| s.server_name.clone())
    }

    /// After a local `DEALLOCATE`: the statement is closed on the attached
    /// connections that have it, unless another of the client's statements
    /// shares its server-side name, so a later Bind of it fails there as on
    /// PostgreSQL. (The Close goes out with that connection's next batch.)
    pub(super) fn close_deallocated(&mut self, server_name: &str) {
        if self
            .statements
            .values()
            .any(|s| s.server_name == server_name)
        {
            return;
        }
        for attached in self.servers.iter_mut().flatten() {
            if attached.conn.conn.prepared.contains_key(server_name) {
                close_statement(attached, server_name);
            }
        }
    }
}

/// Whether `sql`'s first words are `words` (any case, a trailing `;` ignored).
fn starts_with_words(sql: &str, words: &[&str]) -> bool {
    let mut found = sql.split_whitespace().map(|w| w.trim_end_matches(';'));
    words
        .iter()
        .all(|word| found.next().is_some_and(|w| w.eq_ignore_ascii_case(word)))
}

/// `DISCARD ALL`, which also ends every LISTEN.
pub(super) fn discards_all(sql: &str) -> bool {
    starts_with_words(sql, &["DISCARD", "ALL"])
}

/// The statement a `DEALLOCATE [PREPARE] name` drops (not `ALL`), as the
/// server names it.
fn deallocated_name(sql: &str) -> Option<String> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let rest = after_word(sql, "DEALLOCATE")?;
    let rest = after_word(rest, "PREPARE").unwrap_or(rest);
    let (name, after) = leading_name(rest)?;
    let is_all = name == "all" && !rest.starts_with('"');
    (after.trim().is_empty() && !is_all).then_some(name)
}

/// The statement a SQL `PREPARE name [(types)] AS ...` creates, as the server
/// names it (not `PREPARE TRANSACTION 'id'`).
fn prepared_name(sql: &str) -> Option<String> {
    let rest = after_word(sql.trim_start(), "PREPARE")?;
    let (name, after) = leading_name(rest)?;
    let after = after.trim_start();
    (after.starts_with('(') || after_word(after, "AS").is_some()).then_some(name)
}

/// What follows `word` (any case) and the whitespace after it at the start of `sql`.
fn after_word<'a>(sql: &'a str, word: &str) -> Option<&'a str> {
    let head = sql.get(..word.len())?;
    let rest = &sql[word.len()..];
    let ends = rest.is_empty() || rest.starts_with(char::is_whitespace);
    (head.eq_ignore_ascii_case(word) && ends).then(|| rest.trim_start())
}

/// The identifier at the start of `sql` as the server names it (a quoted one
/// as written, an unquoted one folded to lower case in ASCII, as PostgreSQL
/// does in UTF-8 databases), and the text after it.
fn leading_name(sql: &str) -> Option<(String, &str)> {
    if let Some(quoted) = sql.strip_prefix('"') {
        let mut name = String::new();
        let mut rest = quoted;
        loop {
            let end = rest.find('"')?;
            name.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(after) => {
                    name.push('"');
                    rest = after;
                }
                None => break,
            }
        }
        return (!name.is_empty()).then_some((name, rest));
    }
    let end = sql
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(sql.len());
    let name = &sql[..end];
    let starts_well = name.starts_with(|c: char| c.is_alphabetic() || c == '_');
    starts_well.then(|| (name.to_ascii_lowercase(), &sql[end..]))
}

/// The log once `sql`, just completed, has taken effect, when it only undoes
/// earlier entries: `DISCARD ALL` leaves only `LOAD`s (it unloads nothing),
/// `DEALLOCATE ALL` drops every `PREPARE`, `DEALLOCATE name` the `PREPARE` of
/// that name, if the log has one (else it dropped a protocol-level statement,
/// in session pooling: the log stays, and `replace_session_log` cleans the
/// other connections, which may have it). `None` for anything else.
fn compacted(log: &[Arc<str>], sql: &str) -> Option<Vec<Arc<str>>> {
    if discards_all(sql) {
        let loads = log.iter().filter(|e| starts_with_words(e, &["LOAD"]));
        return Some(loads.cloned().collect());
    }
    if drops_prepared_statements(sql) {
        let others = log.iter().filter(|e| prepared_name(e).is_none());
        return Some(others.cloned().collect());
    }
    let name = deallocated_name(sql)?;
    let mut kept = log.to_vec();
    if let Some(at) = kept
        .iter()
        .rposition(|e| prepared_name(e).as_deref() == Some(name.as_str()))
    {
        kept.remove(at);
    }
    Some(kept)
}

/// `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared statement on the server.
pub(super) fn drops_prepared_statements(sql: &str) -> bool {
    discards_all(sql)
        || starts_with_words(sql, &["DEALLOCATE", "ALL"])
        || starts_with_words(sql, &["DEALLOCATE", "PREPARE", "ALL"])
}

/// The hash of a session log after `sql` is appended to a log hashing to
/// `previous`; never 0, which stands for "no session state", nor `UNKNOWN_STATE`.
fn next_log_hash(previous: u64, sql: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (previous, sql).hash(&mut hasher);
    hasher.finish().clamp(1, UNKNOWN_STATE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_drop_server_state() {
        for sql in [
            "DISCARD ALL",
            "discard all;",
            "DEALLOCATE ALL",
            "deallocate prepare all",
        ] {
            assert!(drops_prepared_statements(sql), "{sql}");
        }
        for sql in [
            "DISCARD PLANS",
            "DEALLOCATE s1",
            "DEALLOCATE PREPARE s1",
            "DISCARD",
        ] {
            assert!(!drops_prepared_statements(sql), "{sql}");
        }
        assert!(discards_all("DISCARD ALL;"));
        assert!(!discards_all("DEALLOCATE ALL"));
    }

    #[test]
    fn the_statement_a_prepare_creates() {
        for (sql, name) in [
            ("PREPARE q AS SELECT 1", Some("q")),
            ("prepare Q(int, text) as SELECT $1", Some("q")),
            ("PREPARE q (int) AS SELECT $1", Some("q")),
            ("PREPARE \"My Q\" AS SELECT 1", Some("My Q")),
            ("PREPARE TRANSACTION 'x'", None),
            ("PREPARE", None),
            ("PREPAREX q AS SELECT 1", None),
            ("SET x = 1", None),
        ] {
            assert_eq!(prepared_name(sql).as_deref(), name, "{sql}");
        }
    }

    #[test]
    fn statements_that_undo_earlier_ones_shorten_the_log() {
        let log: Vec<Arc<str>> = [
            "SET a = 1",
            "PREPARE p AS SELECT 1",
            "LOAD 'x'",
            "PREPARE q AS SELECT 2",
        ]
        .into_iter()
        .map(Arc::from)
        .collect();
        let texts = |kept: Option<Vec<Arc<str>>>| {
            kept.map(|k| k.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            texts(compacted(&log, "DISCARD ALL")),
            Some(vec!["LOAD 'x'".to_owned()])
        );
        assert_eq!(
            texts(compacted(&log, "DEALLOCATE ALL")),
            Some(vec!["SET a = 1".to_owned(), "LOAD 'x'".to_owned()])
        );
        assert_eq!(
            texts(compacted(&log, "DEALLOCATE P")),
            Some(vec![
                "SET a = 1".to_owned(),
                "LOAD 'x'".to_owned(),
                "PREPARE q AS SELECT 2".to_owned()
            ])
        );
        assert_eq!(
            compacted(&log, "DEALLOCATE other").map(|k| k.len()),
            Some(4)
        );
        assert_eq!(compacted(&log, "SET b = 2"), None);
        assert_eq!(compacted(&log, "DISCARD PLANS"), None);
    }

    #[test]
    fn a_log_hash_is_never_a_reserved_value() {
        let hash = ["SET a = 1", "SET b = 2"]
            .iter()
            .fold(0, |h, sql| next_log_hash(h, sql));
        assert!(hash != 0 && hash != UNKNOWN_STATE);
    }

    #[test]
    fn the_statement_a_deallocate_drops() {
        for (sql, name) in [
            ("DEALLOCATE s1", Some("s1")),
            ("deallocate prepare S1;", Some("s1")),
            ("DEALLOCATE \"My \"\"s\"\"\"", Some("My \"s\"")),
            ("DEALLOCATE  PREPARE   x ", Some("x")),
            ("DEALLOCATE ALL", None),
            ("DEALLOCATE PREPARE ALL", None),
            ("DEALLOCATE", None),
            ("DISCARD ALL", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(deallocated_name(sql).as_deref(), name, "{sql}");
        }
    }
}
