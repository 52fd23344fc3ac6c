//! A server connection attached to a client session, with the bookkeeping
//! the relay needs to keep answers in order: one `Mark` per expected
//! ReadyForQuery, and the counters that match ParseComplete/CloseComplete to
//! the Parse/Close that asked for them. Plain data: it reads and sends nothing.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::backend::CancelTarget;
use crate::pool::PooledConn;

/// One expected ReadyForQuery on a server connection.
pub(super) struct Mark {
    /// Sent by pgrouter itself (session replay): its responses are not relayed.
    pub internal: bool,
    /// Parse/Close messages sent up to this Sync, to resynchronise counters.
    pub parse: u64,
    pub close: u64,
    pub had_error: bool,
    /// A session-state statement to remember once this completes without error.
    pub state: Option<Arc<str>>,
    /// Client statements its DEALLOCATE or DISCARD ALL dropped, put back if
    /// the batch fails (see `Session::restore_statements`).
    pub forgotten: Vec<super::session_log::Forgotten>,
    pub began_tx: bool,
    /// The server's last answer that ends a transaction block: `Some(true)`
    /// for COMMIT and PREPARE TRANSACTION (which keeps settings as COMMIT
    /// does), `Some(false)` for ROLLBACK (also the answer to a COMMIT of a
    /// failed transaction, and to ROLLBACK TO SAVEPOINT), `None` when none
    /// came (a COMMIT that failed with an error).
    pub commit_tag: Option<bool>,
    /// See `Batch::state_before_end`.
    pub state_before_end: bool,
    /// The batch's savepoint statement, and how many savepoint answers
    /// (SAVEPOINT, RELEASE, ROLLBACK) the server gave for it: one answer and
    /// a known statement are followed, anything else loses track (see `savepoints`).
    pub savepoint: Option<Box<super::savepoints::SavepointOp>>,
    pub savepoint_answers: u32,
    /// COMMIT and PREPARE TRANSACTION answers: more than one block end in a
    /// batch leaves its settings' fate unknown.
    pub commit_answers: u32,
    /// Pushed for an extended-protocol Sync (not a simple Query or fastpath call).
    pub extended: bool,
    /// The commit-position query follows: hold this ReadyForQuery until it answers.
    pub holds_ready: bool,
    /// Send the commit-position query when this completes (after a COPY).
    pub capture_after: bool,
    /// Client Parses in this batch: (index among the connection's Parses,
    /// client name, server name). One the server skipped or refused leaves no
    /// statement behind, so the client's name is forgotten (see `on_ready`).
    /// Injected re-Parses are listed too (client name None).
    pub created: Vec<(u64, Option<String>, String)>,
    /// Client Parses of names that still hold a statement, which the server
    /// refuses: (server name, client name), so the error names the client's.
    pub duplicates: Vec<(String, String)>,
    /// pgrouter's own commit-position query (internal), and what it returned.
    pub captures: bool,
    pub captured: Option<u64>,
    /// pgrouter added this Sync behind a client's Flush (see
    /// `Session::closes_prepare_section`): relay the answers, not the ReadyForQuery.
    pub ready_hidden: bool,
}

impl Mark {
    /// The mark of a client's batch (its answers are relayed).
    pub fn client(attached: &Attached, extended: bool) -> Mark {
        Mark {
            internal: false,
            parse: attached.sent_parse,
            close: attached.sent_close,
            had_error: false,
            state: None,
            forgotten: Vec::new(),
            began_tx: false,
            commit_tag: None,
            state_before_end: false,
            savepoint: None,
            savepoint_answers: 0,
            commit_answers: 0,
            extended,
            holds_ready: false,
            capture_after: false,
            created: Vec::new(),
            duplicates: Vec::new(),
            captures: false,
            captured: None,
            ready_hidden: false,
        }
    }

    /// The mark of a query pgrouter sent itself (its answers are swallowed).
    pub fn internal(attached: &Attached, captures: bool) -> Mark {
        Mark {
            internal: true,
            captures,
            ..Mark::client(attached, false)
        }
    }
}

/// A server connection attached to the session, with relay bookkeeping.
pub(super) struct Attached {
    pub conn: PooledConn,
    pub cancel: Arc<CancelTarget>,
    pub marks: VecDeque<Mark>,
    pub sent_parse: u64,
    pub sent_close: u64,
    pub seen_parse: u64,
    pub seen_close: u64,
    /// (tag, index) of ParseComplete/CloseComplete answers to messages pgrouter
    /// injected, which the client must not see.
    pub swallow: Vec<(u8, u64)>,
    /// How many entries of the session log this connection has applied.
    pub applied: usize,
    /// Marks whose Sync the server ignored because it arrived during COPY FROM
    /// STDIN (PostgreSQL skips Sync in copy-in mode). They complete with the
    /// next ReadyForQuery, together with the mark in front of `marks`.
    pub deferred: Vec<Mark>,
    /// `Mark::created` and `Mark::duplicates` of messages sent after the last
    /// Sync (a Flush-ended section): they go on the next Sync's mark.
    pub unsynced_created: Vec<(u64, Option<String>, String)>,
    pub unsynced_duplicates: Vec<(String, String)>,
    /// A savepoint statement was sent after the last Sync (see `Mark::savepoint`).
    pub unsynced_savepoint: bool,
}

impl Attached {
    /// The mark that the frames now arriving answer.
    pub fn current_mark(&mut self) -> Option<&mut Mark> {
        match self.deferred.first_mut() {
            Some(mark) => Some(mark),
            None => self.marks.front_mut(),
        }
    }

    /// No answer is outstanding.
    pub fn is_idle(&self) -> bool {
        self.marks.is_empty() && self.deferred.is_empty()
    }
}

pub(super) fn attach(conn: PooledConn) -> Attached {
    Attached {
        cancel: conn.conn.cancel_target(),
        conn,
        marks: VecDeque::new(),
        sent_parse: 0,
        sent_close: 0,
        seen_parse: 0,
        seen_close: 0,
        swallow: Vec::new(),
        applied: 0,
        deferred: Vec::new(),
        unsynced_created: Vec::new(),
        unsynced_duplicates: Vec::new(),
        unsynced_savepoint: false,
    }
}
