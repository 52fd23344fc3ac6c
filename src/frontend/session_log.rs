//! A session's state log: the statements (SET, RESET, SQL PREPARE, ...) it
//! ran outside pgrouter's view of any one connection, replayed on every server
//! connection it uses, and what `DISCARD ALL` and `DEALLOCATE` drop from that
//! log and from the client's prepared statements. It only queues internal
//! queries on a connection; it never decides where a batch goes.

use std::sync::Arc;

use super::attached::Mark;
use super::batch::Statement;
use super::dispatch::send_internal;
use super::savepoints::{SavepointOp, Undo};
use super::server_statements::close_statement;
use super::session::Session;
use super::state_sql::{
    compacted, deallocated_name, discards_all, drops_prepared_statements, undone_by_rollback,
};
use crate::config::PoolMode;
use crate::consistency;
use crate::protocol::tx_status;

/// Past this many remembered session-state statements the session is pinned to
/// the primary instead of replaying an ever longer log on every new connection.
const MAX_SESSION_LOG: usize = 256;

/// A client statement dropped by a `DEALLOCATE` or `DISCARD ALL`, by name.
pub(super) type Forgotten = (String, Arc<Statement>);

/// A connection's `session_state` when what it carries is not known: never a
/// log's hash (see `next_log_hash`) nor 0 (no state), so its next use cleans it.
pub(super) const UNKNOWN_STATE: u64 = u64::MAX;

impl Session {
    /// Brings the session's state (SETs, SQL PREPAREs, ...) to the connection:
    /// nothing when it already carries exactly this state; else the statements
    /// it has not seen, each as an internal query whose answers the client never
    /// sees, after a `DISCARD ALL` when another session's state is on it
    /// (transaction pooling). One query per statement, because some (DISCARD
    /// ALL) refuse to run inside a multi-statement query.
    pub(super) fn replay_session_state(&mut self, slot: usize) {
        let in_block = self.tx_status != tx_status::IDLE || self.tx_pending;
        let open_here = self.open == Some(slot);
        let log_len = self.session_log.len();
        let log_hash = self.log_hash;
        let Some(attached) = self.servers[slot].as_mut() else {
            return;
        };
        // Never on a connection running the client's transaction block or a
        // section before its Sync: a DISCARD ALL would fail there and abort
        // the block. It is brought up to date after the block. A connection
        // newly attached in a block (another replica for a READ ONLY one) is
        // idle and gets its replay.
        let runs_block = in_block
            && (attached.conn.conn.tx_status != tx_status::IDLE || !attached.marks.is_empty());
        if runs_block || open_here {
            return;
        }
        if attached.applied == 0 {
            let state = attached.conn.conn.session_state;
            if state == log_hash {
                attached.applied = log_len;
                return;
            }
            if state != 0 {
                send_internal(attached, "DISCARD ALL");
                attached.conn.conn.prepared.clear();
                // Clean now: a distrusted connection is trusted again.
                attached.conn.conn.session_state = 0;
            }
        }
        for sql in &self.session_log[attached.applied..] {
            send_internal(attached, sql);
            if drops_prepared_statements(sql) {
                attached.conn.conn.prepared.clear();
            }
        }
        attached.applied = log_len;
        stamp(&mut attached.conn.conn.session_state, log_hash);
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
        let in_tx = self.tx_status != tx_status::IDLE;
        let survives = !undone_by_rollback(&sql);
        if in_tx && (!survives || !self.tx_state.is_empty()) {
            // Remembered when the transaction ends (`end_tx_state`), in order.
            // Meanwhile the connection is not returned to its pool, so what it
            // carries matters only from then on.
            self.tx_state.push((sql, survives));
        } else {
            self.log_state(slot, sql);
        }
    }

    /// A client's batch on `slot` completed in a transaction block or ended
    /// one (`ends_tx`; `status`: the ReadyForQuery's). A block that ended, or
    /// was committed or rolled back AND CHAIN, settles its settings
    /// (`end_tx_state`); a ROLLBACK TO SAVEPOINT forgets those made after the
    /// savepoint, or leaves the block's outcome unknown when pgrouter could not
    /// follow its savepoints.
    pub(super) fn follow_block(&mut self, slot: usize, mark: &mut Mark, ends_tx: bool, status: u8) {
        let op = match (mark.savepoint.take(), mark.savepoint_answers) {
            (_, 0) => None,
            (Some(op), 1) => Some(*op),
            _ => Some(SavepointOp::Several),
        };
        let in_block = status != tx_status::IDLE;
        let rolled_back_chain = op == Some(SavepointOp::Chain) && mark.commit_tag == Some(false);
        // A COMMIT beside another block end or a savepoint statement pgrouter
        // does not follow (COMMIT AND CHAIN; ROLLBACK): the last answer does
        // not say which settings survived. Keep them all, trust no connection.
        let followed = matches!(
            op,
            Some(SavepointOp::Define(_) | SavepointOp::Release(_) | SavepointOp::RollbackTo(_))
        );
        let mixed_ends = mark.commit_answers > 1
            || (mark.commit_answers == 1 && mark.savepoint_answers > 0 && !followed);
        // A chain seen as rolled back from its statement, not from the server's
        // state: trusted no further than before pgrouter followed savepoints.
        if mixed_ends || rolled_back_chain {
            self.tx_state_uncertain = true;
        }
        let commit_tag = if mixed_ends {
            Some(true)
        } else {
            mark.commit_tag
        };
        let chained = in_block && (commit_tag == Some(true) || rolled_back_chain);
        if ends_tx || chained {
            if commit_tag == Some(true) && followed {
                // A ROLLBACK TO just before the COMMIT, in the same batch.
                if let Some(op) = &op {
                    self.follow_savepoint(op);
                }
            }
            if !self.tx_state.is_empty() || self.tx_state_uncertain {
                self.end_tx_state(slot, commit_tag);
            }
            self.savepoints.clear();
            return;
        }
        if let Some(op) = op.filter(|_| in_block) {
            self.follow_savepoint(&op);
        }
    }

    /// A savepoint statement completed in the open block.
    fn follow_savepoint(&mut self, op: &SavepointOp) {
        match self.savepoints.apply(op, self.tx_state.len()) {
            Undo::Nothing => {}
            Undo::From(first) if first < self.tx_state.len() => {
                // What a rollback does not undo (a SQL PREPARE) stays.
                let mut index = 0;
                self.tx_state.retain(|(_, survives)| {
                    index += 1;
                    index <= first || *survives
                });
                // The client's settings are right if pgrouter's savepoints
                // match the server's; the connection's are not trusted, so no
                // other client can get a setting this one still has there.
                self.tx_state_uncertain = true;
            }
            Undo::From(_) => {}
            Undo::Unknown if !self.tx_state.is_empty() => self.tx_state_uncertain = true,
            Undo::Unknown => {}
        }
    }

    /// A savepoint statement's answer came outside any batch pgrouter follows
    /// (a section ended by Flush): the block's savepoints are not known.
    pub(super) fn lose_savepoints(&mut self) {
        self.savepoints
            .apply(&SavepointOp::Several, self.tx_state.len());
        if !self.tx_state.is_empty() {
            self.tx_state_uncertain = true;
        }
    }

    /// The transaction block on `slot` ended (`commit_tag`: see
    /// `Mark::commit_tag`): the settings made in it are remembered if it
    /// committed, forgotten otherwise. Then the connection carries the log if
    /// it had all of it before and the outcome is known for sure (a COMMIT or
    /// ROLLBACK answer, no ROLLBACK TO SAVEPOINT in between); else no session
    /// may take it as it is.
    pub(super) fn end_tx_state(&mut self, slot: usize, commit_tag: Option<bool>) {
        let made = std::mem::take(&mut self.tx_state);
        let uncertain = std::mem::take(&mut self.tx_state_uncertain) || commit_tag.is_none();
        let had_all = self.servers[slot]
            .as_ref()
            .is_some_and(|a| a.applied == self.session_log.len());
        for (sql, survives) in made {
            if commit_tag == Some(true) || survives {
                self.log_state(slot, sql);
            }
        }
        let log_len = self.session_log.len();
        if let Some(attached) = self.servers[slot].as_mut() {
            if had_all {
                // Nothing to replay on it for this session.
                attached.applied = log_len;
            }
            let state = if had_all && !uncertain {
                self.log_hash
            } else {
                UNKNOWN_STATE
            };
            stamp(&mut attached.conn.conn.session_state, state);
        }
    }

    /// What the connection on `slot` carries is not known for sure: no session
    /// (this one included, once it gets it back from the pool) takes it as it
    /// is. Its `applied` stays, so nothing is replayed in an open block.
    pub(super) fn distrust_connection(&mut self, slot: usize) {
        if let Some(attached) = self.servers[slot].as_mut() {
            attached.conn.conn.session_state = UNKNOWN_STATE;
        }
    }

    /// Adds `sql`, which ran on `slot`, to the session's log.
    fn log_state(&mut self, slot: usize, sql: Arc<str>) {
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
                stamp(&mut attached.conn.conn.session_state, self.log_hash);
            }
        }
    }

    /// Makes `kept` the session's log after a statement that ran on `slot`
    /// undid or overrode part of it. That connection now carries exactly
    /// `kept` if it carried the whole log before. Another attached connection
    /// that did too only needs the statement itself when `kept` ends with it
    /// (a SET): it is replayed there next. Any other is marked unknown: its
    /// next use starts with `DISCARD ALL` and replays `kept`. Pooled
    /// connections with the old state no longer match the log's hash and are
    /// cleaned the same way.
    fn replace_session_log(&mut self, slot: usize, kept: Vec<Arc<str>>) {
        if kept == self.session_log {
            // Nothing undone (psycopg's DEALLOCATE ALL after a ROLLBACK, with
            // no SQL PREPAREs): the other connections need no cleaning.
            return;
        }
        let old_len = self.session_log.len();
        let ends_with_new = kept
            .last()
            .is_some_and(|last| !self.session_log.iter().any(|old| Arc::ptr_eq(old, last)));
        self.log_hash = kept.iter().fold(0, |hash, sql| next_log_hash(hash, sql));
        self.session_log = kept;
        for (index, server) in self.servers.iter_mut().enumerate() {
            let Some(attached) = server else {
                continue;
            };
            if index == slot && attached.applied == old_len {
                attached.applied = self.session_log.len();
                stamp(&mut attached.conn.conn.session_state, self.log_hash);
            } else if ends_with_new && attached.applied == old_len {
                attached.applied = self.session_log.len() - 1;
            } else {
                attached.applied = 0;
                attached.conn.conn.session_state = UNKNOWN_STATE;
            }
        }
    }

    /// Forgets the client's prepared statements that `sql` drops on the
    /// server, as PostgreSQL does: a later Bind of one fails (26000) and its
    /// name may be prepared again. Called as the client's messages arrive (at
    /// the Query, or the Bind that runs it), so Parses behind it, even in the
    /// same batch, are kept. Returns what it forgot, to be put back should the
    /// statement fail (`restore_statements`). Not when it is sure to fail:
    /// `DISCARD ALL` inside a transaction block, anything in a failed one.
    pub(super) fn forget_dropped_statements(&mut self, sql: &str) -> Vec<Forgotten> {
        if self.tx_status == tx_status::FAILED {
            return Vec::new();
        }
        let in_tx = self.tx_status != tx_status::IDLE || self.tx_pending;
        if discards_all(sql) && in_tx {
            return Vec::new();
        }
        if drops_prepared_statements(sql) {
            // Not the unnamed statement, which DEALLOCATE ALL keeps.
            let named: Vec<String> = self
                .statements
                .keys()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect();
            named
                .into_iter()
                .filter_map(|name| self.statements.remove_entry(&name))
                .collect()
        } else if let Some(name) = deallocated_name(sql) {
            self.statements.remove_entry(&name).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// A statement that made `forget_dropped_statements` forget `forgotten`
    /// failed: they exist again, unless the client has since prepared another
    /// statement under the name.
    pub(super) fn restore_statements(&mut self, forgotten: Vec<Forgotten>) {
        for (name, statement) in forgotten {
            self.statements.entry(name).or_insert(statement);
        }
    }

    /// After a local `DEALLOCATE` in session pooling, where the server knows the
    /// statement by the client's name: it is closed on the attached connections
    /// that have it, so a later Bind of it fails there as on PostgreSQL. (The
    /// Close goes out with that connection's next batch.) In transaction
    /// pooling the server-side name is pgrouter's and a Bind can no longer
    /// reach it; closing there would only make a connection that goes back
    /// to its pool with the Close unsent look unclean.
    pub(super) fn close_deallocated(&mut self, server_name: &str) {
        if self.pool_mode == PoolMode::Transaction {
            return;
        }
        for attached in self.servers.iter_mut().flatten() {
            if attached.conn.conn.prepared.contains_key(server_name) {
                close_statement(attached, server_name);
            }
        }
    }
}

/// Records that a connection carries the log hashing to `hash`, unless it is
/// distrusted (`UNKNOWN_STATE`): that sticks until a DISCARD ALL cleans it
/// (`replay_session_state`) or it is reset on release.
fn stamp(session_state: &mut u64, hash: u64) {
    if *session_state != UNKNOWN_STATE {
        *session_state = hash;
    }
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
    fn a_log_hash_is_never_a_reserved_value() {
        let hash = ["SET a = 1", "SET b = 2"]
            .iter()
            .fold(0, |h, sql| next_log_hash(h, sql));
        assert!(hash != 0 && hash != UNKNOWN_STATE);
    }
}
