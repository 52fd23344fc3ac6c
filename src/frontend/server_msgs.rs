//! Server → client: relays frames unchanged, swallowing only the answers to
//! messages pgrouter injected, and keeps the session's view of each connection
//! (transaction status, in-flight syncs) current.

use std::sync::atomic::Ordering;

use super::savepoints::SavepointOp;
use super::server_statements::with_client_names;
use super::session::{PRIMARY, Session};
use crate::backend::BackendError;
use crate::monitor::parse_lsn;
use crate::protocol::build::{self, Severity};
use crate::protocol::fields::{
    error_fields, first_column_text, function_result_text, replace_in_fields,
};
use crate::protocol::{Frame, backend_tag, sqlstate, tx_status};

impl Session {
    /// Handles every frame already buffered from `slot`.
    pub(super) fn drain_server(&mut self, slot: usize) {
        loop {
            let Some(attached) = self.servers[slot].as_mut() else {
                return;
            };
            match attached.conn.conn.try_next() {
                Ok(Some(frame)) => self.on_server_frame(slot, frame),
                Ok(None) => return,
                Err(err) => {
                    self.server_lost(slot, &err);
                    return;
                }
            }
        }
    }

    fn on_server_frame(&mut self, slot: usize, mut frame: Frame) {
        let Some(attached) = self.servers[slot].as_mut() else {
            return;
        };
        match frame.tag {
            backend_tag::PARSE_COMPLETE | backend_tag::CLOSE_COMPLETE => {
                let counter = if frame.tag == backend_tag::PARSE_COMPLETE {
                    &mut attached.seen_parse
                } else {
                    &mut attached.seen_close
                };
                let index = *counter;
                *counter += 1;
                if let Some(pos) = attached
                    .swallow
                    .iter()
                    .position(|&(t, i)| t == frame.tag && i == index)
                {
                    attached.swallow.swap_remove(pos);
                    return;
                }
            }
            backend_tag::PARAMETER_STATUS => attached.conn.conn.note_parameter(&frame),
            backend_tag::ERROR_RESPONSE => {
                // The server refused a Parse sent under pgrouter's name for the
                // client's statement (see `Need::Duplicate`): the client must
                // read its own name. Inside a Flush-ended section no mark exists yet.
                let duplicate = match attached.current_mark() {
                    Some(mark) => mark.duplicates.first().cloned(),
                    None => attached.unsynced_duplicates.first().cloned(),
                };
                if let Some((server, client)) = duplicate {
                    if let Some(renamed) = replace_in_fields(&frame, &server, &client) {
                        frame = renamed;
                    }
                }
                // Any other error naming one of the client's statements by
                // pgrouter's name (transaction pooling).
                if let Some(renamed) = with_client_names(&frame, &self.statements) {
                    frame = renamed;
                }
                let addr = attached.conn.conn.addr().to_owned();
                if let Some(mark) = attached.current_mark() {
                    mark.had_error = true;
                    if mark.internal {
                        let (code, message) = error_fields(frame.body());
                        tracing::warn!(
                            server = addr,
                            code,
                            message,
                            "replaying session state failed"
                        );
                    }
                }
            }
            backend_tag::COMMAND_COMPLETE
                if matches!(
                    frame.body(),
                    b"ROLLBACK\0" | b"COMMIT\0" | b"PREPARE TRANSACTION\0"
                ) =>
            {
                // The last one wins: ROLLBACK TO SAVEPOINT; COMMIT commits.
                if let Some(mark) = attached.current_mark() {
                    let rollback = frame.body() == b"ROLLBACK\0";
                    mark.commit_tag = Some(!rollback);
                    mark.savepoint_answers += u32::from(rollback);
                    mark.commit_answers += u32::from(!rollback);
                }
            }
            backend_tag::COMMAND_COMPLETE
                if matches!(frame.body(), b"SAVEPOINT\0" | b"RELEASE\0") =>
            {
                if let Some(mark) = attached.current_mark() {
                    mark.savepoint_answers += 1;
                }
            }
            backend_tag::COMMAND_COMPLETE if frame.body().first() == Some(&b'D') => {
                // A DEALLOCATE or DISCARD ALL that completed holds even when
                // something later in its batch fails (it is not undone by a
                // rollback): what it dropped stays dropped.
                let body = frame.body();
                if body.starts_with(b"DEALLOCATE ALL\0") || body.starts_with(b"DISCARD ALL\0") {
                    attached.conn.conn.prepared.clear();
                }
                if body.starts_with(b"DEALLOCATE") || body.starts_with(b"DISCARD ALL\0") {
                    if let Some(mark) = attached.current_mark() {
                        mark.forgotten.clear();
                    }
                }
            }
            backend_tag::READY_FOR_QUERY => return self.on_ready(slot, frame),
            backend_tag::DATA_ROW => {
                if let Some(mark) = attached.current_mark().filter(|m| m.captures) {
                    mark.captured = first_column_text(frame.body()).and_then(parse_lsn);
                }
            }
            backend_tag::FUNCTION_CALL_RESPONSE => {
                if let Some(mark) = attached.current_mark().filter(|m| m.captures) {
                    mark.captured = function_result_text(frame.body()).and_then(parse_lsn);
                }
            }
            backend_tag::COPY_IN_RESPONSE => {
                // The Sync that closed this extended batch reached the server in
                // copy-in mode, where it is ignored: its mark completes with the
                // ReadyForQuery that follows the client's CopyDone + Sync.
                let front_is_sync = attached
                    .marks
                    .front()
                    .is_some_and(|m| m.extended && !m.internal);
                if attached.deferred.is_empty() && front_is_sync {
                    if let Some(mark) = attached.marks.pop_front() {
                        attached.deferred.push(mark);
                    }
                }
            }
            _ => {}
        }
        match attached.current_mark().map(|m| m.internal) {
            Some(true) => {}
            Some(false) => self.forward(slot, frame),
            // Nothing in flight: only asynchronous messages are expected here.
            None => match frame.tag {
                backend_tag::NOTIFICATION_RESPONSE | backend_tag::NOTICE_RESPONSE => {
                    self.out.extend_from_slice(&frame.raw)
                }
                backend_tag::PARAMETER_STATUS if slot == PRIMARY => {
                    self.out.extend_from_slice(&frame.raw)
                }
                _ if self.open == Some(slot) => {
                    // A section ended by Flush has no mark to count a savepoint
                    // answer or a block's end (COMMIT AND CHAIN) on.
                    let savepoint_answer = matches!(
                        frame.body(),
                        b"SAVEPOINT\0"
                            | b"RELEASE\0"
                            | b"ROLLBACK\0"
                            | b"COMMIT\0"
                            | b"PREPARE TRANSACTION\0"
                    );
                    if frame.tag == backend_tag::COMMAND_COMPLETE && savepoint_answer {
                        self.lose_savepoints();
                    }
                    self.out.extend_from_slice(&frame.raw)
                }
                other => {
                    tracing::debug!(tag = %(other as char), "dropped an unsolicited server message")
                }
            },
        }
    }

    fn on_ready(&mut self, slot: usize, frame: Frame) {
        let Some(attached) = self.servers[slot].as_mut() else {
            return;
        };
        let status = frame.body().first().copied().unwrap_or(tx_status::IDLE);
        attached.conn.conn.tx_status = status;
        let deferred = std::mem::take(&mut attached.deferred);
        let Some(mut mark) = attached.marks.pop_front() else {
            tracing::warn!(
                server = attached.conn.conn.addr(),
                "unexpected ReadyForQuery from server"
            );
            return;
        };
        for earlier in deferred {
            mark.had_error |= earlier.had_error;
            mark.began_tx |= earlier.began_tx;
            mark.state = mark.state.or(earlier.state);
            mark.commit_tag = mark.commit_tag.or(earlier.commit_tag);
            mark.state_before_end |= earlier.state_before_end;
            mark.savepoint = match (mark.savepoint.take(), earlier.savepoint) {
                (Some(_), Some(_)) => Some(Box::new(SavepointOp::Several)),
                (ours, theirs) => ours.or(theirs),
            };
            mark.savepoint_answers += earlier.savepoint_answers;
            mark.commit_answers += earlier.commit_answers;
            mark.forgotten.extend(earlier.forgotten);
            mark.created.extend(earlier.created);
        }
        // A client Parse never answered with ParseComplete failed or was skipped
        // after an earlier error: no such statement exists, as on PostgreSQL.
        let mut failed_parses = Vec::new();
        for (index, client_name, server_name) in &mark.created {
            if *index >= attached.seen_parse {
                attached.conn.conn.prepared.remove(server_name);
                if let Some(client_name) = client_name {
                    failed_parses.push((client_name.clone(), server_name.clone()));
                }
            } else if let Some(statement) = client_name
                .as_ref()
                .and_then(|name| self.statements.get(name))
                .filter(|s| s.server_name == *server_name)
            {
                // It exists now: a Parse of its name is refused from here on.
                statement.confirmed.store(true, Ordering::Relaxed);
            }
        }
        // Every Parse/Close sent before this Sync has been answered or skipped
        // (after an error the server skips to Sync), so counters resynchronise here.
        attached.seen_parse = mark.parse;
        attached.seen_close = mark.close;
        attached.swallow.retain(|&(tag, index)| {
            let done = if tag == backend_tag::PARSE_COMPLETE {
                mark.parse
            } else {
                mark.close
            };
            index >= done
        });
        let idle = attached.is_idle();
        let rerun = self
            .retry
            .as_ref()
            .is_some_and(|g| g.reruns_on_primary(slot));
        for (client_name, server_name) in failed_parses.into_iter().filter(|_| !rerun) {
            // Unless the client has since prepared another statement by that name.
            if self
                .statements
                .get(&client_name)
                .is_some_and(|s| s.server_name == server_name)
            {
                self.statements.remove(&client_name);
            }
        }
        if mark.had_error {
            self.restore_statements(std::mem::take(&mut mark.forgotten));
        }
        if !mark.internal {
            let ends_tx = self.tx_status != tx_status::IDLE && status == tx_status::IDLE;
            self.tx_status = status;
            if mark.began_tx {
                self.tx_pending = false;
            }
            if status == tx_status::IDLE && !self.tx_pending {
                self.tx_slot = None;
            }
            self.retry_after_ready(slot, false);
            // A setting made before its batch ended the transaction block is kept
            // only if the block committed.
            let undone = mark.commit_tag != Some(true) && mark.state_before_end;
            let state = mark.state.clone().filter(|_| !mark.had_error && !undone);
            if mark.had_error && mark.state.is_some() {
                // Whether its setting took effect before the error (a COMMIT
                // between them) is not known: no session takes the
                // connection as it is.
                self.distrust_connection(slot);
            }
            if mark.ready_hidden {
                // pgrouter's own Sync: the client never asked for this one.
            } else if slot == PRIMARY {
                self.on_write_ready(&mark, status, frame);
            } else {
                self.out.extend_from_slice(&frame.raw);
            }
            // Settings made in the transaction first: they came before.
            self.follow_block(slot, &mut mark, ends_tx, status);
            if let Some(sql) = state {
                self.remember_state(slot, sql);
            }
        }
        if mark.captures {
            self.finish_capture(mark.captured.filter(|_| !mark.had_error));
        }
        if mark.internal {
            self.retry_after_ready(slot, true);
        }
        if idle && self.open != Some(slot) {
            self.set_active(None);
        }
    }

    /// A server connection failed. Every sync the client still waits for on it
    /// gets an error and ReadyForQuery, so the client's session stays usable; the
    /// next statement gets a fresh connection.
    pub(super) fn server_lost(&mut self, slot: usize, err: &BackendError) {
        let Some(attached) = self.servers[slot].take() else {
            return;
        };
        let node = attached.conn.conn.node;
        // Deferred marks are answered by the same ReadyForQuery as the mark after them.
        // A Sync pgrouter added behind a client's Flush (`ready_hidden`) owes
        // the client no ReadyForQuery: like an open section, it gets an error
        // and the client's messages are skipped up to its own Sync.
        let client_marks = || attached.marks.iter().filter(|m| !m.internal);
        let waiting = (client_marks().filter(|m| !m.ready_hidden).count())
            .max(usize::from(!attached.deferred.is_empty()));
        let hidden_last = client_marks().next_back().is_some_and(|m| m.ready_hidden);
        let was_open = self.open == Some(slot) || hidden_last;
        let waiting = if self.retry_after_loss(slot, waiting) {
            waiting.saturating_sub(1)
        } else {
            waiting
        };
        tracing::warn!(%err, waiting, "server connection lost");
        if slot == PRIMARY {
            // A write's ReadyForQuery held for its commit position: the write is
            // done, the position unknown (reads need the primary until it is).
            if let Some((ready, _)) = self.held_ready.take() {
                self.out.extend_from_slice(&ready.raw);
            }
        }
        let message = format!("pgrouter lost the server connection: {err}");
        for _ in 0..waiting {
            build::error_response(
                &mut self.out,
                Severity::Error,
                sqlstate::CONNECTION_FAILURE,
                &message,
            );
            build::ready_for_query(&mut self.out, tx_status::IDLE);
        }
        if was_open {
            build::error_response(
                &mut self.out,
                Severity::Error,
                sqlstate::CONNECTION_FAILURE,
                &message,
            );
            self.discard_until_sync = true;
            self.open = None;
        }
        if slot == self.tx_slot.unwrap_or(PRIMARY) {
            // The transaction died with the connection, and its settings.
            self.tx_status = tx_status::IDLE;
            self.tx_state.clear();
            self.tx_state_uncertain = false;
            self.savepoints.clear();
            self.tx_pending = false;
            self.tx_slot = None;
        }
        if self.active == Some(slot) {
            self.set_active(None);
        }
        self.shared.pools.drop_idle_for(node);
        self.shared.report_down(node);
        // Dropping `attached` closes the socket and frees its pool place.
    }
}
