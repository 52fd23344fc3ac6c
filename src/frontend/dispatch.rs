//! Sending a batch to a server connection: attach the connection, bring the
//! session's state there (SET replay, prepared statements), then forward the
//! client's frames unchanged.

use super::attach::AttachError;
use super::attached::{Attached, Mark};
use super::batch::{Batch, LocalAnswer, Need};
use super::savepoints::SavepointOp;
use super::server_statements::{close_least_used_over, prepare_statement_for, prepares};
use super::session::{PRIMARY, REPLICA, Session};
use super::state_sql::discards_all;
use crate::consistency::{self, ReadNeed};
use crate::pool::PoolError;
use crate::protocol::build::{self, Severity, to_server};
use crate::protocol::{frontend_tag, sqlstate, tx_status};

impl Session {
    /// Sends `batch` to `slot` (falling back to the primary when no replica can
    /// take it). On failure the client gets an ErrorResponse and the batch is dropped.
    pub(super) async fn dispatch(&mut self, slot: usize, mut batch: Batch, ends_sync: bool) {
        if let Some(LocalAnswer::Listen(command)) = batch.local.clone() {
            if self.shares_listen() {
                self.answer_listen(command, &batch.frames, ends_sync).await;
                return;
            }
            // In a transaction or a pinned session it runs on the primary
            // connection; an UNLISTEN also leaves the shared listener's channels.
            self.forget_listens(&command);
            batch.local = None;
        }
        if matches!(batch.local, Some(LocalAnswer::Deallocate(_)))
            && self.tx_status == tx_status::FAILED
        {
            // The transaction failed after the batch was read: the server
            // refuses the DEALLOCATE (25P02), and the statement comes back.
            batch.local = None;
        }
        if let Some(answer) = batch.local.clone() {
            self.answer_locally(answer, &batch.frames, ends_sync);
            return;
        }
        let mut need = ReadNeed::default();
        let mut slot = slot;
        let in_tx = self.tx_status != tx_status::IDLE || self.tx_pending;
        // A batch that only prepares statements runs nothing, but its Parse
        // resolves names in the node's catalog: it needs the session's own
        // writes (a CREATE TABLE just before) as much as a read does.
        let judged = batch.has_statement || prepares(&batch);
        if slot == REPLICA && self.open != Some(REPLICA) && judged && !in_tx {
            need = self.read_need(&batch);
            if need.primary == Some(consistency::UNCAPTURED) && self.capture_now().await {
                need = self.read_need(&batch);
            }
            if need.primary.is_some() {
                slot = PRIMARY;
            }
            // Reads pipelined behind a read still running on the replica may
            // stay there only if it serves them too; otherwise they wait until
            // it is idle and are judged again, so answers never reorder.
            let busy_replica = self.active == Some(REPLICA);
            if busy_replica && (slot == PRIMARY || !self.replica_serves(&need)) {
                self.wait_idle = true;
                self.ready.push_front((REPLICA, batch, ends_sync));
                return;
            }
        }
        let slot = match self.ensure_attached(slot, &need).await {
            Ok(slot) => slot,
            Err(err) => {
                build::error_response(&mut self.out, Severity::Error, err.code, &err.message);
                if ends_sync {
                    build::ready_for_query(&mut self.out, self.tx_status);
                } else {
                    self.discard_until_sync = true;
                }
                return;
            }
        };
        // Only a replica batch with nothing in flight ahead of it can be re-run
        // elsewhere without reordering answers (see `retry`). A prepare-only
        // section pgrouter closes with its own Sync counts as ended.
        let hide_sync = !ends_sync && self.closes_prepare_section(&batch);
        let retryable = slot == REPLICA
            && judged
            && (ends_sync || hide_sync)
            && self.tx_status == tx_status::IDLE
            && !self.tx_pending
            && !batch.begins_tx
            && self.open.is_none()
            && self.servers[REPLICA].as_ref().is_some_and(|a| a.is_idle());
        if retryable {
            self.retry = Some(super::retry::RetryGuard::new(
                slot,
                batch.clone(),
                ends_sync,
            ));
        }
        self.replay_session_state(slot);
        if batch.pins && !self.pinned {
            tracing::info!(
                "session pinned to the primary (temporary objects, LISTEN or cursors WITH HOLD)"
            );
            self.pinned = true;
            if slot == PRIMARY {
                self.move_listens_to_primary();
            }
        }
        if batch.state.as_deref().is_some_and(discards_all) {
            // DISCARD ALL includes UNLISTEN *.
            self.forget_listens(&crate::router::listen::ListenCommand::UnlistenAll);
        }
        // Whether the session will be outside a transaction after this batch
        // (autocommit, or it ends one): then a write's commit position is final.
        let may_commit = batch.ends_tx
            || (!batch.begins_tx && self.tx_status == tx_status::IDLE && !self.tx_pending);
        let wrote = slot == PRIMARY && batch.writes;
        if wrote {
            self.note_write(&batch);
        }
        let capture = slot == PRIMARY && may_commit && self.wants_capture();
        let max_prepared = self.shared.config.load().pool.max_prepared_statements;
        let Some(attached) = self.servers[slot].as_mut() else {
            return;
        };
        let mut last_mark = None;
        // What an earlier batch without a Sync of its own left for this one's.
        let mut created = std::mem::take(&mut attached.unsynced_created);
        let mut duplicates = std::mem::take(&mut attached.unsynced_duplicates);
        for (frame, need) in batch.frames {
            let parses_before = attached.sent_parse;
            prepare_statement_for(attached, &need);
            close_least_used_over(attached, max_prepared);
            match need {
                Need::Creates { name, client, .. } => {
                    created.push((attached.sent_parse - 1, Some(client), name));
                }
                Need::Statement(name, _) if attached.sent_parse > parses_before => {
                    created.push((attached.sent_parse - 1, None, name));
                }
                Need::Duplicate { client, existing } => {
                    // A re-sent Parse of the existing statement precedes the
                    // client's (which fails and so creates nothing).
                    created.push((parses_before, None, existing.server_name.clone()));
                    duplicates.push((existing.server_name.clone(), client));
                }
                _ => {}
            }
            // A simple Query drops the server's unnamed statement.
            if frame.tag == frontend_tag::QUERY {
                attached.conn.conn.prepared.remove("");
            }
            attached.conn.conn.out().extend_from_slice(&frame.raw);
            if matches!(
                frame.tag,
                frontend_tag::SYNC | frontend_tag::QUERY | frontend_tag::FUNCTION_CALL
            ) {
                let mut mark = Mark::client(attached, frame.tag == frontend_tag::SYNC);
                mark.created = std::mem::take(&mut created);
                mark.duplicates = std::mem::take(&mut duplicates);
                attached.marks.push_back(mark);
                last_mark = Some(attached.marks.len() - 1);
            }
        }
        if hide_sync {
            to_server::sync(attached.conn.conn.out());
            let mut mark = Mark::client(attached, true);
            mark.created = std::mem::take(&mut created);
            mark.duplicates = std::mem::take(&mut duplicates);
            mark.ready_hidden = true;
            attached.marks.push_back(mark);
        }
        // No Sync yet (Flush): the next Sync's mark answers for these.
        attached.unsynced_created = created;
        attached.unsynced_duplicates = duplicates;
        let ends_sync = ends_sync || hide_sync;
        if last_mark.is_none() && batch.state.is_some() {
            // A setting in a Flush-ended section is not remembered (no mark
            // to complete it): the connection is not trusted as it is.
            attached.conn.conn.session_state = super::session_log::UNKNOWN_STATE;
        }
        if last_mark.is_none() {
            // Its answer may be counted on the next Sync's mark.
            attached.unsynced_savepoint |= batch.savepoint.is_some();
        }
        if let Some(index) = last_mark {
            let after_unsynced = std::mem::take(&mut attached.unsynced_savepoint);
            if let Some(mark) = attached.marks.get_mut(index) {
                // A setting beside a savepoint statement (which came first is
                // not kept), or a savepoint statement in a section before
                // this one's Sync: what the answers belong to is not known.
                mark.savepoint = match batch.savepoint {
                    Some(_) if batch.state.is_some() => Some(Box::new(SavepointOp::Several)),
                    _ if after_unsynced => Some(Box::new(SavepointOp::Several)),
                    op => op,
                };
                mark.state = batch.state;
                mark.state_before_end = batch.state_before_end;
                // Lost with a Flush-ended batch (no mark): not put back then.
                mark.forgotten = batch.forgotten;
                mark.began_tx = batch.begins_tx;
                // Behind a possible COPY FROM STDIN nothing may be pipelined (the
                // server would take it for copy data): capture once it is done.
                mark.capture_after = capture && batch.copy_in;
            }
        }
        let node = attached.conn.conn.node;
        if capture && !batch.copy_in && last_mark.is_some() {
            self.send_capture(true);
        }
        if batch.begins_tx {
            self.tx_pending = true;
            self.tx_slot = Some(slot);
        }
        self.shared.stats.count_routed(node);
        self.open = if ends_sync { None } else { Some(slot) };
        self.last_slot = slot;
        self.set_active(Some(slot));
    }

    /// Whether pgrouter ends this Flush-terminated batch with a Sync of its own.
    /// asyncpg (and others) prepare with Parse + Describe + Flush and send the
    /// Bind/Execute, or a simple Query, only after the answers: left open, that
    /// section would tie the next statement to whichever node answered the
    /// Parse, a replica even for a write. Ending it (outside a transaction, with
    /// nothing executed) changes nothing the client can see: prepared statements
    /// outlive a Sync, and the next Bind finds its statement re-prepared on
    /// whatever connection it gets. One difference remains: after a failed
    /// Parse, PostgreSQL would skip the client's messages up to its own Sync.
    fn closes_prepare_section(&self, batch: &Batch) -> bool {
        !batch.has_statement
            && self.open.is_none()
            && self.tx_status == tx_status::IDLE
            && !self.tx_pending
            && batch
                .frames
                .last()
                .is_some_and(|(frame, _)| frame.tag == frontend_tag::FLUSH)
    }

    /// Makes sure a connection for `slot` is attached; a replica that cannot be
    /// had falls back to the primary. Returns the slot actually used.
    async fn ensure_attached(
        &mut self,
        slot: usize,
        need: &ReadNeed,
    ) -> Result<usize, AttachError> {
        if slot == REPLICA && self.open != Some(REPLICA) {
            if self.attach_replica(need).await? {
                return Ok(REPLICA);
            }
        } else if slot == REPLICA && self.servers[REPLICA].is_some() {
            return Ok(REPLICA);
        }
        if self.open == Some(PRIMARY) && self.servers[PRIMARY].is_some() {
            return Ok(PRIMARY);
        }
        match self.attach_primary().await {
            Ok(()) => Ok(PRIMARY),
            Err(err @ PoolError::NoPrimary { .. }) => Err(AttachError {
                code: sqlstate::CANNOT_CONNECT_NOW,
                message: format!("pgrouter: {err}"),
            }),
            Err(err @ PoolError::Exhausted { .. }) => Err(AttachError {
                code: sqlstate::TOO_MANY_CONNECTIONS,
                message: format!("pgrouter: {err}"),
            }),
            Err(err) => Err(AttachError {
                code: sqlstate::UNABLE_TO_CONNECT,
                message: format!("pgrouter could not reach the primary: {err}"),
            }),
        }
    }
}

/// Sends a query whose answers are swallowed.
pub(super) fn send_internal(attached: &mut Attached, sql: &str) {
    // A simple Query drops the server's unnamed statement.
    attached.conn.conn.prepared.remove("");
    if let Err(err) = to_server::query(attached.conn.conn.out(), sql) {
        tracing::warn!(%err, "session state could not be replayed");
        return;
    }
    let mark = Mark::internal(attached, false);
    attached.marks.push_back(mark);
}
