//! What each server connection holds of a client's prepared statements: the
//! Close/Parse pgrouter injects before a client's message so the server has
//! exactly the statements the client expects, and the SQL statements that drop
//! them. It only adds messages to a connection's output buffer; it never
//! decides where a batch goes nor reads answers.

use std::collections::HashMap;
use std::sync::Arc;

use super::attached::Attached;
use super::batch::{Batch, Need, Statement};
use crate::protocol::build::to_server;
use crate::protocol::fields::{find, replace_in_fields};
use crate::protocol::{Frame, backend_tag};

/// Prefix of the server-side names of client statements in transaction pooling.
pub(super) const SERVER_NAME_PREFIX: &str = crate::backend::EVICTABLE_PREFIX;

/// Length of a server-side statement name: the prefix and 16 hex digits.
const SERVER_NAME_LEN: usize = SERVER_NAME_PREFIX.len() + 16;

/// A server error that names pgrouter's server-side statements (`pgr_<hash>`,
/// e.g. "bind message supplies 0 parameters, but prepared statement ...
/// requires 1"), rewritten to name the client's. A name that several of the
/// client's statements share (identical texts) is left as it is: which one
/// the client used is not known here. `None` when nothing changes.
pub(super) fn with_client_names(
    frame: &Frame,
    statements: &HashMap<String, Arc<Statement>>,
) -> Option<Frame> {
    let mut rewritten: Option<Frame> = None;
    let mut from = 0;
    loop {
        let body = rewritten.as_ref().unwrap_or(frame).body();
        let found = body
            .get(from..)
            .and_then(|rest| find(rest, SERVER_NAME_PREFIX.as_bytes()));
        let Some(offset) = found else {
            return rewritten;
        };
        let start = from + offset;
        from = start + SERVER_NAME_PREFIX.len();
        let Some(name) = body
            .get(start..start + SERVER_NAME_LEN)
            .and_then(|n| std::str::from_utf8(n).ok())
        else {
            continue;
        };
        let mut owners = statements.iter().filter(|(_, s)| s.server_name == name);
        let (Some((client, _)), None) = (owners.next(), owners.next()) else {
            continue;
        };
        let current = rewritten.as_ref().unwrap_or(frame);
        if let Some(renamed) = replace_in_fields(current, name, client) {
            // Searching goes on after the client's name.
            from = start + client.len();
            rewritten = Some(renamed);
        }
    }
}

/// Whether the batch makes a server prepare a statement (the client's Parse, or
/// one pgrouter re-sends for a Describe).
pub(super) fn prepares(batch: &Batch) -> bool {
    batch.frames.iter().any(|(_, need)| {
        matches!(
            need,
            Need::Creates { .. } | Need::Statement(..) | Need::Duplicate { .. }
        )
    })
}

/// Before a message that uses or creates a named statement, makes the server's
/// set of statements match what the client expects, injecting Close/Parse whose
/// answers are swallowed.
pub(super) fn prepare_statement_for(attached: &mut Attached, need: &Need) {
    match need {
        Need::Nothing => {}
        Need::Statement(name, statement) => {
            if attached.conn.conn.prepared.get(name) == Some(&statement.hash) {
                attached.conn.conn.prepared.touch(name);
                return;
            }
            // Closed first even when not known to be there: the record may be
            // wrong after messages the server skipped (an error before Sync), and
            // closing a missing statement is no error.
            if !name.is_empty() {
                close_statement(attached, name);
            }
            inject_parse(attached, statement);
        }
        Need::Creates {
            name,
            hash,
            stale_ok,
            ..
        } => {
            if *stale_ok {
                inject_close_if_present(attached, name);
            }
            attached.sent_parse += 1;
            attached.conn.conn.prepared.insert(name.clone(), *hash);
        }
        Need::Closes(name) => {
            attached.sent_close += 1;
            attached.conn.conn.prepared.remove(name);
        }
        Need::Duplicate { existing, .. } => {
            // The server refuses the client's Parse only if the statement it
            // names is there. The connection's record is updated when a Parse is
            // sent, not when it succeeds, so it is not trusted here: the statement
            // is closed and prepared again (same text, so nothing changes for
            // anyone), and the client's Parse after it is sure to fail.
            close_statement(attached, &existing.server_name);
            inject_parse(attached, existing);
            attached.sent_parse += 1;
        }
    }
}

/// Sends `statement`'s Parse, whose answer is swallowed, and records it there.
fn inject_parse(attached: &mut Attached, statement: &Statement) {
    attached
        .conn
        .conn
        .out()
        .extend_from_slice(&statement.parse.raw);
    attached
        .swallow
        .push((backend_tag::PARSE_COMPLETE, attached.sent_parse));
    attached.sent_parse += 1;
    attached
        .conn
        .conn
        .prepared
        .insert(statement.server_name.clone(), statement.hash);
}

/// Keeps at most `limit` of pgrouter's own statements on the connection by
/// closing the least recently used one. Safe at any point of a pipeline: the
/// server runs messages in order, so a Bind queued earlier has already used the
/// statement, and a later Bind of it finds it missing and prepares it again.
pub(super) fn close_least_used_over(attached: &mut Attached, limit: usize) {
    if let Some(name) = attached.conn.conn.prepared.over_limit(limit) {
        inject_close_if_present(attached, &name);
    }
}

/// A named statement left on this connection from before the client closed or
/// replaced it elsewhere must go before the client's Parse re-creates it.
/// pgrouter's own server-side names (`pgr_...`, transaction pooling) are
/// closed even when not known to be there: a Close the server skipped after an
/// error may have left one behind, and closing a missing statement is no error.
fn inject_close_if_present(attached: &mut Attached, name: &str) {
    let known = attached.conn.conn.prepared.contains_key(name);
    if name.is_empty() || !(known || name.starts_with(SERVER_NAME_PREFIX)) {
        return;
    }
    close_statement(attached, name);
}

/// Closes statement `name` on the connection, swallowing the answer (closing a
/// statement that is not there is no error).
pub(super) fn close_statement(attached: &mut Attached, name: &str) {
    if to_server::close_statement(attached.conn.conn.out(), name).is_ok() {
        attached
            .swallow
            .push((backend_tag::CLOSE_COMPLETE, attached.sent_close));
        attached.sent_close += 1;
        attached.conn.conn.prepared.remove(name);
    }
}
