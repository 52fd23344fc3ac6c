//! Turning client messages into batches: extended-protocol messages are
//! collected up to Sync or Flush so one routing decision covers everything that
//! shares an implicit transaction; a simple Query is a batch of its own.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SessionError;
use super::local::{deallocated_statement, is_one_statement};
use super::savepoints::{SavepointOp, savepoint_of};
use super::session::{Flow, PRIMARY, REPLICA, Session};
use super::session_log::Forgotten;
use crate::consistency::SettingError;
use crate::consistency::settings::{is_show_last_write_lsn, parse_setting};
use crate::protocol::fields::{
    bind_message, execute_message, parse_content, parse_message, query_text, target_message,
    with_statement_name,
};
use crate::protocol::{Frame, frontend_tag, target_kind, tx_status};
use crate::router::hints::{FreshnessHints, freshness_hints};
use crate::router::listen::{ListenCommand, listen_command};
use crate::router::{Decision, Route, SessionEffect, TxEffect};

/// A batch without Sync is sent once it holds this much, so a client that
/// streams many messages before syncing is not buffered without bound.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A client's prepared statement: the Parse message to replay on another
/// connection, and the routing verdict for its text.
pub(super) struct Statement {
    /// The Parse as servers get it (renamed in transaction pooling).
    pub parse: Frame,
    /// Its name on the servers: the client's, or in transaction pooling
    /// `pgr_<hash of text and parameter types>`, so clients sharing a server
    /// connection never collide and identical statements are prepared once.
    pub server_name: String,
    pub hash: u64,
    pub decision: Decision,
    /// Freshness hints in its text, applied to every execution.
    pub freshness: FreshnessHints,
    /// It may start COPY FROM STDIN (see `Batch::copy_in`).
    pub copy_in: bool,
    /// The savepoint statement it is (see `savepoints`).
    pub savepoint: Option<SavepointOp>,
    /// The server answered its Parse with ParseComplete: it exists, so a Parse
    /// of its name is refused (see `Need::Duplicate`). Until then the Parse
    /// may still fail, and a new Parse of the name replaces it.
    pub confirmed: AtomicBool,
}

/// A batch pgrouter answers itself instead of sending it to a server.
#[derive(Clone, Debug)]
pub(super) enum LocalAnswer {
    /// A `/* pgrouter: replica */` hint on a statement that writes.
    RefusedHint,
    /// A `SET pgrouter.*` with an unknown name or a bad value.
    BadSetting(SettingError),
    /// `SHOW pgrouter.last_write_lsn`.
    ShowLastWriteLsn,
    /// A lone LISTEN/UNLISTEN, served by the shared listener when the session
    /// is outside a transaction (see `listen`).
    Listen(ListenCommand),
    /// A lone `DEALLOCATE` of a protocol-level statement, with its server-side
    /// name (see `local::deallocated_statement`).
    Deallocate(String),
}

/// What a message needs from the connection it is sent to.
#[derive(Clone)]
pub(super) enum Need {
    Nothing,
    /// Bind/Describe of a statement: it must exist there (replayed if not).
    Statement(String, Arc<Statement>),
    /// A Parse creating this statement there. `stale_ok`: the client had no
    /// statement of that name, so a leftover copy on the server may be closed first
    /// (when the client still has one, the server's "already exists" error is the
    /// right answer and must not be hidden).
    Creates {
        /// Its name on the server.
        name: String,
        /// The client's name for it (forgotten again if the Parse fails).
        client: String,
        hash: u64,
        stale_ok: bool,
    },
    /// A Close removing this statement there.
    Closes(String),
    /// A client's Parse of a name its confirmed statement `existing` still
    /// holds. PostgreSQL refuses it (42P05, "already exists"). The server gives
    /// that answer itself, at its place in the batch, because the Parse is sent
    /// under `existing`'s server name after making sure the connection has it.
    Duplicate {
        /// The client's name for it (what the error must say).
        client: String,
        existing: Arc<Statement>,
    },
}

/// Messages bound for one connection, and what routing learned from them.
#[derive(Default, Clone)]
pub(super) struct Batch {
    pub frames: Vec<(Frame, Need)>,
    pub bytes: usize,
    pub has_statement: bool,
    pub needs_primary: bool,
    pub begins_tx: bool,
    /// The transaction it begins is READ ONLY from its first statement, so it
    /// may run wholly on one replica.
    pub read_only_tx: bool,
    /// It ends a transaction (COMMIT, ROLLBACK, ...).
    pub ends_tx: bool,
    /// A statement may write: the classifier sends it to the primary for what
    /// it does, not for session or transaction control (SET, BEGIN, COMMIT).
    pub writes: bool,
    /// It may start COPY FROM STDIN: nothing may be pipelined behind it.
    pub copy_in: bool,
    /// Answered by pgrouter itself, without running anywhere.
    pub local: Option<LocalAnswer>,
    /// Freshness hints of its statements (the highest floor, the first key,
    /// the tightest staleness budget).
    pub freshness: FreshnessHints,
    pub pins: bool,
    pub state: Option<Arc<str>>,
    /// A COMMIT or ROLLBACK came after `state` in the batch: a ROLLBACK undid it.
    pub state_before_end: bool,
    /// The client's statements its `DEALLOCATE` or `DISCARD ALL` made pgrouter
    /// forget, put back if it fails.
    pub forgotten: Vec<Forgotten>,
    /// Statements it runs (Query texts and Binds).
    pub statements: u32,
    /// The LISTEN/UNLISTEN among them.
    pub listen: Option<ListenCommand>,
    /// Its savepoint statement (see `savepoints`), boxed: rare, and a
    /// batch is moved several times a transaction.
    pub savepoint: Option<Box<SavepointOp>>,
}

impl Batch {
    fn push(&mut self, frame: Frame, need: Need) {
        self.bytes += frame.raw.len();
        self.frames.push((frame, need));
    }

    fn learn(&mut self, decision: &Decision, text: &str) {
        self.has_statement = true;
        self.statements += 1;
        if decision.route == Route::Primary {
            self.needs_primary = true;
        }
        if decision.writes {
            self.writes = true;
            self.copy_in |= may_copy_in(decision, text);
        }
        match decision.tx {
            TxEffect::Begin { read_only } => {
                self.begins_tx = true;
                self.read_only_tx = read_only;
            }
            TxEffect::End => {
                self.ends_tx = true;
                self.state_before_end |= self.state.is_some();
            }
            TxEffect::None => {}
        }
        if decision.hint_refused {
            self.local = Some(LocalAnswer::RefusedHint);
        }
        match decision.session {
            // A text of several statements that also begins or ends a
            // transaction block: replayed on other connections it would open
            // or end blocks there, so the session stays on its own connection.
            SessionEffect::SetsState if decision.tx != TxEffect::None => self.pins = true,
            SessionEffect::SetsState => {
                if let Some(Err(err)) = parse_setting(text) {
                    self.local = Some(LocalAnswer::BadSetting(err));
                }
                self.state = Some(Arc::from(text));
                self.state_before_end = false;
            }
            SessionEffect::PinPrimary => {
                self.pins = true;
                if let Some(command) = listen_command(text) {
                    self.listen = Some(command);
                }
            }
            SessionEffect::None => {}
        }
    }
}

impl Batch {
    fn add_savepoint(&mut self, op: SavepointOp) {
        let several = self.savepoint.is_some();
        self.savepoint = Some(Box::new(if several { SavepointOp::Several } else { op }));
    }
}

/// A write that may start COPY FROM STDIN (also inside a multi-statement text).
fn may_copy_in(decision: &Decision, text: &str) -> bool {
    decision.writes
        && (crate::router::hints::starts_with_word(text, "copy")
            || (text.contains(';') && text.to_ascii_lowercase().contains("copy")))
}

fn bad(err: impl std::fmt::Display) -> SessionError {
    SessionError::ClientProtocol(err.to_string())
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

impl Session {
    /// Handles one message from the client.
    pub(super) async fn on_client_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        match frame.tag {
            frontend_tag::QUERY => {
                let sql = query_text(frame.body()).map_err(bad)?;
                let decision = self.shared.classifier.classify(sql);
                let mut batch = Batch::default();
                batch.learn(&decision, sql);
                if let Some(op) = savepoint_of(&decision, sql) {
                    batch.add_savepoint(op);
                }
                if decision.session == SessionEffect::SetsState {
                    batch.forgotten = self.forget_dropped_statements(sql);
                }
                batch.freshness.merge(&freshness_hints(sql));
                // Short texts only: keeps the check off the path of real queries.
                if sql.len() <= 64 && is_show_last_write_lsn(sql) {
                    batch.local = Some(LocalAnswer::ShowLastWriteLsn);
                }
                batch.push(frame, Need::Nothing);
                self.submit(batch, true).await;
            }
            frontend_tag::FUNCTION_CALL => {
                // Fastpath calls can do anything; the primary is the only safe place.
                let mut batch = Batch {
                    needs_primary: true,
                    writes: true,
                    has_statement: true,
                    ..Batch::default()
                };
                batch.push(frame, Need::Nothing);
                self.submit(batch, true).await;
            }
            frontend_tag::PARSE
            | frontend_tag::BIND
            | frontend_tag::DESCRIBE
            | frontend_tag::EXECUTE
            | frontend_tag::CLOSE
            | frontend_tag::SYNC
            | frontend_tag::FLUSH => self.on_extended(frame).await?,
            frontend_tag::COPY_DATA | frontend_tag::COPY_DONE | frontend_tag::COPY_FAIL => {
                // Copy data belongs to the COPY running on the connection with work
                // in flight. Outside COPY, PostgreSQL ignores these too.
                if let Some(slot) = self.open.or(self.active) {
                    if let Some(attached) = &mut self.servers[slot] {
                        attached.conn.conn.out().extend_from_slice(&frame.raw);
                    }
                }
            }
            frontend_tag::TERMINATE => return Ok(Flow::Stop),
            other => return Err(bad(format!("invalid frontend message type {}", other))),
        }
        Ok(Flow::Continue)
    }

    async fn on_extended(&mut self, mut frame: Frame) -> Result<(), SessionError> {
        if self.discard_until_sync {
            if frame.tag == frontend_tag::SYNC {
                self.discard_until_sync = false;
                crate::protocol::build::ready_for_query(&mut self.out, self.tx_status);
            }
            return Ok(());
        }
        let tag = frame.tag;
        let need = match tag {
            frontend_tag::PARSE => self.parse_need(&mut frame)?,
            frontend_tag::BIND => {
                let (_portal, name) = bind_message(frame.body()).map_err(bad)?;
                let need = self.statement_need(name, true);
                self.rename_for(&mut frame, &need)?;
                need
            }
            frontend_tag::DESCRIBE => {
                let (kind, name) = target_message(frame.body(), "Describe").map_err(bad)?;
                if kind == target_kind::STATEMENT {
                    let need = self.statement_need(name, false);
                    self.rename_for(&mut frame, &need)?;
                    need
                } else {
                    Need::Nothing
                }
            }
            frontend_tag::CLOSE => {
                let (kind, name) = target_message(frame.body(), "Close").map_err(bad)?;
                if kind == target_kind::STATEMENT {
                    let server_name = match self.statements.remove(name) {
                        Some(statement) => statement.server_name.clone(),
                        None => name.to_owned(),
                    };
                    if server_name != name {
                        frame = with_statement_name(&frame, &server_name).map_err(bad)?;
                    }
                    Need::Closes(server_name)
                } else {
                    Need::Nothing
                }
            }
            frontend_tag::EXECUTE => {
                execute_message(frame.body()).map_err(bad)?;
                Need::Nothing
            }
            _ => Need::Nothing,
        };
        self.batch.push(frame, need);
        if tag == frontend_tag::SYNC {
            let batch = std::mem::take(&mut self.batch);
            self.submit(batch, true).await;
        } else if tag == frontend_tag::FLUSH || self.batch.bytes > MAX_BATCH_BYTES {
            let batch = std::mem::take(&mut self.batch);
            self.submit(batch, false).await;
        }
        Ok(())
    }

    /// Records a client's Parse (renaming it in transaction pooling) and says
    /// what it needs from the connection it goes to.
    fn parse_need(&mut self, frame: &mut Frame) -> Result<Need, SessionError> {
        let (name, sql) = parse_message(frame.body()).map_err(bad)?;
        if let Some(existing) = self.confirmed_statement(name) {
            // The client's statement stays as it is: only the server's refusal
            // goes back.
            let client = name.to_owned();
            if existing.server_name != client {
                *frame = with_statement_name(frame, &existing.server_name).map_err(bad)?;
            }
            return Ok(Need::Duplicate { client, existing });
        }
        // Only classified here: what it does counts when a Bind runs it
        // (`statement_need`). A batch that only prepares statements
        // needs no particular node (see `choose`).
        let decision = self.shared.classifier.classify(sql);
        let copy_in = may_copy_in(&decision, sql);
        let savepoint = savepoint_of(&decision, sql);
        let freshness = freshness_hints(sql);
        let hash = hash_bytes(parse_content(frame.body()).map_err(bad)?);
        let name = name.to_owned();
        let renamed = self.renames_statements() && !name.is_empty();
        // A renamed statement's server copy has the same content whatever
        // its history, so an existing one may always be replaced.
        let stale_ok = renamed || !self.statements.contains_key(&name);
        let server_name = if renamed {
            let server_name = format!(
                "{}{hash:016x}",
                super::server_statements::SERVER_NAME_PREFIX
            );
            *frame = with_statement_name(frame, &server_name).map_err(bad)?;
            server_name
        } else {
            name.clone()
        };
        let statement = Statement {
            parse: frame.clone(),
            server_name: server_name.clone(),
            hash,
            decision,
            freshness,
            copy_in,
            savepoint,
            confirmed: AtomicBool::new(false),
        };
        self.statements.insert(name.clone(), Arc::new(statement));
        Ok(Need::Creates {
            client: name,
            name: server_name,
            hash,
            stale_ok,
        })
    }

    /// The client's named statement `name`, if the server has confirmed it.
    fn confirmed_statement(&self, name: &str) -> Option<Arc<Statement>> {
        self.statements
            .get(name)
            .filter(|s| !name.is_empty() && s.confirmed.load(Ordering::Relaxed))
            .cloned()
    }

    /// Whether client statement names are replaced by server-side ones.
    fn renames_statements(&self) -> bool {
        self.pool_mode == crate::config::PoolMode::Transaction
    }

    /// Gives a Bind/Describe the server-side name of the statement it uses.
    fn rename_for(&self, frame: &mut Frame, need: &Need) -> Result<(), SessionError> {
        if let Need::Statement(server_name, _) = need {
            if self.renames_statements() && !server_name.is_empty() {
                *frame = with_statement_name(frame, server_name).map_err(bad)?;
            }
        }
        Ok(())
    }

    /// What a message using statement `name` needs on its connection. Only a
    /// Bind (`runs`) makes the batch do what the statement does: describing a
    /// write runs nowhere and may be answered by any node.
    fn statement_need(&mut self, name: &str, runs: bool) -> Need {
        match self.statements.get(name) {
            Some(statement) => {
                let statement = statement.clone();
                if !runs {
                    return Need::Statement(statement.server_name.clone(), statement);
                }
                // A prepared SET takes effect each time it runs, so remember its text again.
                let text = match statement.decision.session {
                    SessionEffect::SetsState | SessionEffect::PinPrimary => {
                        parse_message(statement.parse.body()).map_or("", |(_, q)| q)
                    }
                    _ => "",
                };
                self.batch.learn(&statement.decision, text);
                if statement.decision.session == SessionEffect::SetsState {
                    let forgotten = self.forget_dropped_statements(text);
                    self.batch.forgotten.extend(forgotten);
                }
                self.batch.freshness.merge(&statement.freshness);
                self.batch.copy_in |= statement.copy_in;
                if let Some(op) = &statement.savepoint {
                    self.batch.add_savepoint(op.clone());
                }
                Need::Statement(statement.server_name.clone(), statement)
            }
            None => Need::Nothing,
        }
    }

    /// Picks the connection for a complete batch and sends it, or parks it until
    /// the other connection has answered everything.
    pub(super) async fn submit(&mut self, mut batch: Batch, ends_sync: bool) {
        // Not behind an unsynced section or queued batches: an answer pgrouter
        // gives itself waits for the session to be idle, and an open section
        // keeps it busy until the client's Sync, which would come after.
        let may_answer = self.open.is_none() && self.ready.is_empty();
        let maybe_local = batch.listen.is_some() || !batch.forgotten.is_empty();
        if maybe_local && batch.local.is_none() && may_answer && is_one_statement(&batch) {
            if let Some(command) = batch.listen.take() {
                batch.local = Some(LocalAnswer::Listen(command));
            } else if let Some(server_name) = deallocated_statement(&batch) {
                batch.local = Some(LocalAnswer::Deallocate(server_name));
            }
        }
        let slot = self.choose(&batch);
        if self.must_wait(slot, &batch) {
            self.ready.push_back((slot, batch, ends_sync));
        } else {
            // Boxed: the session's own future stays small (memory per idle
            // client), the deep connect/checkout states live only while used.
            Box::pin(self.dispatch(slot, batch, ends_sync)).await;
        }
    }

    /// Where a batch should run. "When unsure, primary."
    fn choose(&self, batch: &Batch) -> usize {
        if let Some(open) = self.open {
            return open;
        }
        // Everything in a transaction runs where its BEGIN ran.
        if self.tx_status != tx_status::IDLE || self.tx_pending {
            return self.tx_slot.unwrap_or(PRIMARY);
        }
        let read_write_tx = batch.begins_tx && !batch.read_only_tx;
        if self.pinned || batch.pins || batch.needs_primary || read_write_tx {
            return PRIMARY;
        }
        if !batch.has_statement {
            // Only Parse/Describe/Close (e.g. libpq's PQprepare): any server can
            // answer, so use one already attached rather than wait for a pooled
            // primary connection (a client blocked in PQprepare while others hold
            // the pool would otherwise deadlock with it).
            return [self.last_slot, REPLICA, PRIMARY]
                .into_iter()
                .find(|&slot| self.servers[slot].is_some())
                .unwrap_or(REPLICA);
        }
        REPLICA
    }

    /// Whether a batch must wait for answers still in flight. A batch pgrouter
    /// answers itself waits until nothing is in flight at all, and so does
    /// everything after a read that must wait for its replica to go idle
    /// before it can be judged again (see `dispatch`).
    pub(super) fn must_wait(&self, slot: usize, batch: &Batch) -> bool {
        if batch.local.is_some() || self.wait_idle {
            self.active.is_some()
        } else {
            self.conflicts(slot)
        }
    }
}
