//! Answers pgrouter gives a client itself, without a server: refusals of
//! what it will not run, its own settings, and statements that only change
//! pgrouter's bookkeeping (LISTEN in the shared listener, DEALLOCATE of a
//! client's protocol-level statement), and which batches it may answer so.
//! It writes to the client's buffer only.

use super::batch::{Batch, LocalAnswer, Need};
use super::session::Session;
use crate::consistency::format_lsn;
use crate::protocol::build::{self, Severity};
use crate::protocol::fields::{bind_message, execute_message, parse_message, target_message};
use crate::protocol::{Frame, frontend_tag, sqlstate, target_kind};

impl Session {
    /// Answers a batch pgrouter handles itself; `frames` are the batch's.
    pub(super) fn answer_locally(
        &mut self,
        answer: LocalAnswer,
        frames: &[(Frame, Need)],
        ends_sync: bool,
    ) {
        let failed = matches!(
            answer,
            LocalAnswer::RefusedHint | LocalAnswer::BadSetting(_)
        );
        match answer {
            LocalAnswer::RefusedHint => build::error_response(
                &mut self.out,
                Severity::Error,
                sqlstate::READ_ONLY_SQL_TRANSACTION,
                "pgrouter: the /* pgrouter: replica */ hint was refused: this statement writes, and writes run only on the primary",
            ),
            LocalAnswer::BadSetting(err) => build::error_response(
                &mut self.out,
                Severity::Error,
                err.sqlstate(),
                &format!("pgrouter: {err}"),
            ),
            // Answered by `answer_listen`, which `dispatch` calls instead.
            LocalAnswer::Listen(_) => {}
            LocalAnswer::ShowLastWriteLsn => {
                let value = self.freshness.last_write_lsn.map(format_lsn);
                build::show_result(&mut self.out, "pgrouter.last_write_lsn", value.as_deref());
            }
            // `submit` already forgot the statement (`forget_dropped_statements`).
            LocalAnswer::Deallocate(server_name) => {
                self.close_deallocated(&server_name);
                self.command_answers(frames, "DEALLOCATE");
            }
        }
        if ends_sync {
            build::ready_for_query(&mut self.out, self.tx_status);
        } else if failed {
            // As a server does after an error: skip to the client's Sync.
            self.discard_until_sync = true;
        }
    }

    /// What a server answers to `frames` (a simple Query, or Parse, Bind,
    /// Describe, Execute) whose one statement returns no rows and completes
    /// with `tag`; ReadyForQuery is the caller's.
    pub(super) fn command_answers(&mut self, frames: &[(Frame, Need)], tag: &str) {
        for (frame, _) in frames {
            if frame.tag == frontend_tag::QUERY {
                build::command_complete(&mut self.out, tag);
                continue;
            }
            let describes_statement = frame.tag == frontend_tag::DESCRIBE
                && target_message(frame.body(), "Describe")
                    .is_ok_and(|(kind, _)| kind == target_kind::STATEMENT);
            build::no_result_answer(&mut self.out, frame.tag, describes_statement, tag);
        }
    }
}

/// Whether every message of the batch belongs to its one statement: a simple
/// Query, or one Bind with the Parse and Describe of its statement, the
/// Describe and Execute of its portal, and the Sync or Flush after them. Only
/// such a batch can pgrouter answer itself: other messages need a server.
pub(super) fn is_one_statement(batch: &Batch) -> bool {
    use frontend_tag::{BIND, DESCRIBE, EXECUTE, FLUSH, PARSE, QUERY, SYNC};
    let binds = batch.frames.iter().filter(|(frame, _)| frame.tag == BIND);
    if batch.statements != 1 || binds.count() > 1 {
        return false;
    }
    let bound = batch
        .frames
        .iter()
        .find(|(frame, _)| frame.tag == BIND)
        .and_then(|(frame, _)| bind_message(frame.body()).ok());
    // A Query's batch has no Bind: then nothing else is allowed anyway.
    let (portal, statement) = bound.unwrap_or(("", ""));
    batch.frames.iter().all(|(frame, _)| {
        let body = frame.body();
        match frame.tag {
            QUERY | SYNC | FLUSH | BIND => true,
            PARSE => parse_message(body).is_ok_and(|(name, _)| name == statement),
            DESCRIBE => target_message(body, "Describe").is_ok_and(|(kind, name)| {
                name == if kind == target_kind::STATEMENT {
                    statement
                } else {
                    portal
                }
            }),
            EXECUTE => execute_message(body).is_ok_and(|name| name == portal),
            _ => false,
        }
    })
}

/// The server-side name of the client's protocol-level statement the batch's
/// lone `DEALLOCATE` dropped (`forget_dropped_statements`), which pgrouter
/// answers itself: the statement lives on whichever connections pgrouter
/// prepared it (in transaction pooling under pgrouter's name, maybe shared),
/// not necessarily on the one the DEALLOCATE would run on. psycopg with a
/// libpq older than 17 deallocates its statements this way.
pub(super) fn deallocated_statement(batch: &Batch) -> Option<String> {
    let name = batch
        .state
        .as_deref()
        .and_then(super::state_sql::deallocated_name)?;
    match batch.forgotten.as_slice() {
        [(forgotten, statement)] if *forgotten == name => Some(statement.server_name.clone()),
        _ => None,
    }
}
