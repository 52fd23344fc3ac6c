//! The safety net behind routing: a replica read whose answer has not started
//! yet can be re-run elsewhere, invisibly to the client.
//!
//! Three cases: the replica refuses the statement because it writes (SQLSTATE 25006,
//! or "recovery is in progress": the classifier was wrong, which is logged and
//! counted; it re-runs on the primary); the replica lacks a table, function,
//! column, type or schema (it may not have replayed another session's DDL yet:
//! it re-runs on the primary, which gives the final answer); or the replica
//! connection dies (it re-runs on another qualifying replica, or the primary
//! when none is left). Until the first result message
//! arrives, the messages that precede it (ParseComplete, BindComplete,
//! RowDescription, ...) are held back, so a retry never shows the client anything twice.
//! Only a batch with nothing else in flight behind it on that replica is retried,
//! so the retry cannot reorder answers.

use bytes::BytesMut;

use super::batch::Batch;
use super::session::{PRIMARY, REPLICA, Session};
use crate::protocol::fields::{error_fields, is_fatal};
use crate::protocol::{Frame, backend_tag, sqlstate};

/// SQLSTATE PostgreSQL uses for "cannot execute ... during recovery" and similar
/// refusals of WAL-control functions on a standby.
const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// A replica batch that may still be re-run elsewhere.
pub(crate) struct RetryGuard {
    pub slot: usize,
    pub batch: Batch,
    /// Whether the batch ended with the client's Sync (else pgrouter's own).
    ends_sync: bool,
    /// Answers held back until it is clear whether the batch stays on the replica.
    held: BytesMut,
    /// The replica refused the batch; re-run it once its ReadyForQuery is in.
    refused: Option<Refusal>,
}

/// Why a replica's answer is not the client's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The statement writes: the classifier was wrong.
    Writes,
    /// An object is missing there, perhaps only not replayed yet.
    Missing,
}

impl RetryGuard {
    pub fn new(slot: usize, batch: Batch, ends_sync: bool) -> Self {
        Self {
            slot,
            batch,
            ends_sync,
            held: BytesMut::new(),
            refused: None,
        }
    }

    /// A batch re-run on the primary keeps its statements there: the
    /// replica's failed Parse must not make the session forget them.
    pub fn reruns_on_primary(&self, slot: usize) -> bool {
        self.slot == slot && self.refused.is_some()
    }
}

/// Messages that come before any result and can be taken back.
fn is_preamble(tag: u8) -> bool {
    matches!(
        tag,
        backend_tag::PARSE_COMPLETE
            | backend_tag::BIND_COMPLETE
            | backend_tag::ROW_DESCRIPTION
            | backend_tag::PARAMETER_DESCRIPTION
            | backend_tag::NO_DATA
            | backend_tag::NOTICE_RESPONSE
            | backend_tag::PARAMETER_STATUS
    )
}

/// Whether a replica's error means "this statement needs the primary".
fn needs_primary(body: &[u8]) -> Option<(Refusal, String, String)> {
    let (code, message) = error_fields(body);
    let writes = code == sqlstate::READ_ONLY_SQL_TRANSACTION
        || (code == OBJECT_NOT_IN_PREREQUISITE_STATE && message.contains("recovery"));
    let missing = [
        sqlstate::UNDEFINED_TABLE,
        sqlstate::UNDEFINED_FUNCTION,
        sqlstate::UNDEFINED_OBJECT,
        sqlstate::UNDEFINED_COLUMN,
        sqlstate::INVALID_SCHEMA_NAME,
    ]
    .contains(&code.as_str());
    match (writes, missing) {
        (true, _) => Some((Refusal::Writes, code, message)),
        (_, true) => Some((Refusal::Missing, code, message)),
        _ => None,
    }
}

impl Session {
    /// Relays a client-visible frame from `slot`, unless a retry guard holds it.
    pub(super) fn forward(&mut self, slot: usize, frame: Frame) {
        let Some(guard) = self.retry.as_mut().filter(|g| g.slot == slot) else {
            self.out.extend_from_slice(&frame.raw);
            return;
        };
        if is_preamble(frame.tag) {
            guard.held.extend_from_slice(&frame.raw);
            return;
        }
        if frame.tag == backend_tag::ERROR_RESPONSE && is_fatal(frame.body()) {
            // The server is going away (shutdown, crash, killed postmaster): hold the
            // error; when the connection closes, the batch is re-run elsewhere.
            guard.held.extend_from_slice(&frame.raw);
            return;
        }
        let only_batch = self.servers[slot]
            .as_ref()
            .is_some_and(|a| a.marks.len() == 1);
        if frame.tag == backend_tag::ERROR_RESPONSE && only_batch {
            if let Some((refusal, code, message)) = needs_primary(frame.body()) {
                guard.refused = Some(refusal);
                guard.held.clear();
                // The rest of the replica's answer, up to its ReadyForQuery, is not relayed.
                if let Some(mark) = self.servers[slot].as_mut().and_then(|a| a.current_mark()) {
                    mark.internal = true;
                }
                if refusal == Refusal::Missing {
                    self.shared.stats.count_read_retry();
                    tracing::debug!(
                        code,
                        message,
                        "replica lacks an object; re-running on the primary"
                    );
                    return;
                }
                self.shared.stats.count_misrouted();
                if self.shared.stats.may_log_misroute() {
                    let sql = statement_text(&guard.batch);
                    tracing::warn!(
                        code,
                        message,
                        sql,
                        "replica refused a statement routed as a read; re-running it on the primary"
                    );
                }
                return;
            }
        }
        // The answer has started: it stays on the replica.
        let held = std::mem::take(&mut guard.held);
        self.retry = None;
        self.out.extend_from_slice(&held);
        self.out.extend_from_slice(&frame.raw);
    }

    /// After `slot`'s ReadyForQuery: a refused batch is queued for the primary, in
    /// front of anything the client sent after it.
    /// `internal`: the ReadyForQuery closed a mark the client does not see (a
    /// session-state replay ahead of the guarded batch, or the refused batch itself).
    pub(super) fn retry_after_ready(&mut self, slot: usize, internal: bool) {
        let Some(guard) = self
            .retry
            .take_if(|g| g.slot == slot && (g.refused.is_some() || !internal))
        else {
            return;
        };
        let mut batch = guard.batch;
        match guard.refused {
            // The replica said it writes: on the primary it counts as a write
            // (its commit position is learnt like any other's).
            Some(Refusal::Writes) => {
                batch.needs_primary = true;
                batch.writes = true;
                self.ready.push_front((PRIMARY, batch, guard.ends_sync));
            }
            Some(Refusal::Missing) => {
                batch.needs_primary = true;
                self.ready.push_front((PRIMARY, batch, guard.ends_sync));
            }
            None => self.out.extend_from_slice(&guard.held),
        }
    }

    /// The replica connection died. If the guarded batch was all it had in flight,
    /// it is re-run on the primary and the client never hears of the failure.
    /// Returns whether it was taken over.
    pub(super) fn retry_after_loss(&mut self, slot: usize, client_marks: usize) -> bool {
        let Some(guard) = self.retry.take_if(|g| g.slot == slot) else {
            return false;
        };
        if client_marks > 1 {
            return false;
        }
        self.shared.stats.count_read_retry();
        tracing::info!(
            "replica connection lost before the answer started; re-running the read elsewhere"
        );
        // Routed afresh: the dead node is already marked down, so this picks
        // another qualifying replica, or the primary when none is left.
        self.ready
            .push_front((REPLICA, guard.batch, guard.ends_sync));
        true
    }
}

/// The SQL of a batch, for the misroute log line.
fn statement_text(batch: &Batch) -> String {
    use crate::protocol::fields::{parse_message, query_text};
    use crate::protocol::frontend_tag;
    for (frame, _) in &batch.frames {
        let text = match frame.tag {
            frontend_tag::QUERY => query_text(frame.body()).ok(),
            frontend_tag::PARSE => parse_message(frame.body()).ok().map(|(_, q)| q),
            _ => None,
        };
        if let Some(text) = text {
            return text.chars().take(200).collect();
        }
    }
    String::new()
}
