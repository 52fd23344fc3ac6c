//! One client's session: the state that must stay coherent across the server
//! connections it uses, and the event loop that moves frames.
//!
//! Ordering rule that keeps responses in order without reordering buffers: at
//! most one server connection has client work in flight at a time. A batch for
//! the other connection waits (and the client is not read) until the first one
//! answered everything; batches for the same connection pipeline freely.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::SessionError;
use super::attached::Attached;
use super::batch::{Batch, Statement};
use crate::backend::{BackendError, Login};
use crate::config::PoolMode;
use crate::consistency::SessionFreshness;
use crate::protocol::build::{self, Severity};
use crate::protocol::{Frame, FramedReader, sqlstate, tx_status};
use crate::server::{SessionHandle, Shared};

/// Index of the primary connection in `Session::servers`.
pub(super) const PRIMARY: usize = 0;
/// Index of the replica connection in `Session::servers`.
pub(super) const REPLICA: usize = 1;

/// Output buffer a client starts with, and the most an idle one keeps.
const CLIENT_OUT_BUFFER: usize = 1024;
const CLIENT_OUT_KEEP: usize = 64 * 1024;

/// What to do after a client message.
#[derive(PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Stop,
}

pub(crate) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) login: Login,
    /// Transaction pooling: server connections go back to their pools whenever
    /// the session is idle between transactions (see `release_idle`).
    pub(super) pool_mode: PoolMode,
    /// Hash of `session_log`, recorded on each server connection that has it
    /// applied (`ServerConn::session_state`), so a connection that already
    /// carries exactly this session's state needs no replay.
    pub(super) log_hash: u64,
    pub(super) client_in: FramedReader<OwnedReadHalf>,
    client_write: OwnedWriteHalf,
    /// Bytes for the client, written once per loop turn.
    pub(super) out: BytesMut,
    pub(super) servers: [Option<Attached>; 2],
    /// The connection with client work in flight, if any.
    pub(super) active: Option<usize>,
    /// The node `active` points at, counted in the router's outstanding totals.
    active_node: Option<usize>,
    /// The connection an unsynced batch (after Flush) went to: it gets the rest.
    pub(super) open: Option<usize>,
    /// Extended-protocol messages collected up to Sync or Flush.
    pub(super) batch: Batch,
    /// Complete batches waiting for the other connection to finish, in order.
    /// While any wait, the client is not read.
    pub(super) ready: VecDeque<(usize, Batch, bool)>,
    /// A replica read that can still be re-run on the primary (see `retry`).
    pub(super) retry: Option<super::retry::RetryGuard>,
    /// The client's prepared statements by name ("" is the unnamed one).
    pub(super) statements: HashMap<String, Arc<Statement>>,
    /// Session-state statements (SET, RESET, ...) in order, replayed on every
    /// connection the session uses.
    pub(super) session_log: Vec<Arc<str>>,
    /// Session-state statements that completed inside the open transaction
    /// block, and whether a ROLLBACK leaves them (see `end_tx_state`).
    pub(super) tx_state: Vec<(Arc<str>, bool)>,
    /// What the connection carries after the block is not known for sure: a
    /// ROLLBACK TO SAVEPOINT came that `savepoints` could not attribute, or
    /// one that dropped settings, or one batch ended several blocks (see
    /// `follow_block`). The block's connection is then cleaned before reuse.
    pub(super) tx_state_uncertain: bool,
    /// The savepoints of the open block, to know what a ROLLBACK TO undoes.
    pub(super) savepoints: super::savepoints::Savepoints,
    pub(super) tx_status: u8,
    /// A BEGIN was sent but its ReadyForQuery has not come back yet.
    pub(super) tx_pending: bool,
    /// Where the open transaction runs (a READ ONLY one may run on a replica).
    pub(super) tx_slot: Option<usize>,
    /// The session must stay on the primary (temp tables, LISTEN, ...).
    pub(super) pinned: bool,
    /// After an error pgrouter raised inside an extended batch: drop messages up
    /// to Sync, as a server would.
    pub(super) discard_until_sync: bool,
    pub(super) last_slot: usize,
    /// Read-your-writes state: mode, settings and the last write's position.
    pub(super) freshness: SessionFreshness,
    /// Causal keys of writes whose commit position is not known yet.
    pub(super) pending_keys: Vec<Box<str>>,
    /// The client's ReadyForQuery after a write, held until the commit position
    /// is known, so the client never acts on a write the router cannot place yet.
    /// `true` with it: the batch failed, so no new token is announced.
    pub(super) held_ready: Option<(Frame, bool)>,
    /// Replay positions this session read from replicas itself (node, its
    /// "host:port", LSN):
    /// newer than the snapshot's when the monitor has not polled since.
    pub(super) seen_replay: Vec<(usize, String, u64)>,
    /// A read could not be judged while its replica was busy: nothing is
    /// dispatched until every answer is in (see `must_wait`).
    pub(super) wait_idle: bool,
    /// Channels this session listens on through pgrouter's shared listener,
    /// and notifications waiting for the client to be idle.
    pub(super) listens: Option<Box<super::listen::Listens>>,
    /// The pools this session checks out from, looked up once per node.
    pub(super) pool_handles: super::attach::PoolHandles,
    /// Reused for every replica choice.
    pub(super) scratch_candidates: Vec<crate::monitor::select::Candidate>,
    /// What the router holds of this session: cancel target, stop waker.
    handle: Arc<SessionHandle>,
    cancel_key: (i32, i32),
}

enum Event {
    Client(std::io::Result<usize>),
    Server(usize, Result<(), BackendError>),
    Notification(Option<bytes::Bytes>),
    Shutdown,
}

impl Session {
    /// Attaches the primary, greets the client and runs the session.
    pub(super) async fn start(
        shared: Arc<Shared>,
        handle: Arc<SessionHandle>,
        login: Login,
        pool_mode: PoolMode,
        client_in: FramedReader<OwnedReadHalf>,
        client_write: OwnedWriteHalf,
        out: BytesMut,
    ) -> Result<(), SessionError> {
        let cancel_key = shared.new_cancel_key(handle.clone());
        let mut session = Session {
            shared,
            login,
            pool_mode,
            log_hash: 0,
            client_in,
            client_write,
            out,
            servers: [None, None],
            active: None,
            active_node: None,
            open: None,
            batch: Batch::default(),
            ready: VecDeque::new(),
            retry: None,
            statements: HashMap::new(),
            session_log: Vec::new(),
            tx_state: Vec::new(),
            tx_state_uncertain: false,
            savepoints: Default::default(),
            tx_status: tx_status::IDLE,
            tx_pending: false,
            tx_slot: None,
            pinned: false,
            discard_until_sync: false,
            last_slot: PRIMARY,
            freshness: SessionFreshness::default(),
            pending_keys: Vec::new(),
            held_ready: None,
            seen_replay: Vec::new(),
            wait_idle: false,
            listens: None,
            pool_handles: Default::default(),
            scratch_candidates: Vec::new(),
            handle,
            cancel_key,
        };
        let result = session.greet_and_run().await;
        session.finish().await;
        result
    }

    async fn greet_and_run(&mut self) -> Result<(), SessionError> {
        if let Err(err) = self.apply_startup_options() {
            build::error_response(
                &mut self.out,
                Severity::Fatal,
                err.sqlstate(),
                &format!("pgrouter: {err}"),
            );
            let _ = self.flush_client().await;
            return Ok(());
        }
        if let Err(err) = Box::pin(self.attach_primary()).await {
            self.refuse(&err);
            let _ = self.flush_client().await;
            return Err(err.into());
        }
        if let Some(primary) = &self.servers[PRIMARY] {
            for (name, value) in &primary.conn.conn.params {
                build::parameter_status(&mut self.out, name, value);
            }
        }
        build::backend_key_data(&mut self.out, self.cancel_key.0, self.cancel_key.1);
        build::ready_for_query(&mut self.out, tx_status::IDLE);
        self.flush_client().await?;
        self.run().await
    }

    /// Applies `-c pgrouter.*=...` from the startup packet's `options`.
    fn apply_startup_options(&mut self) -> Result<(), crate::consistency::SettingError> {
        let options = self
            .login
            .params
            .iter()
            .filter(|(name, _)| name == "options");
        for (_, value) in options {
            for setting in crate::consistency::settings::from_startup_options(value)? {
                self.freshness.apply(&setting);
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            for slot in [PRIMARY, REPLICA] {
                self.drain_server(slot);
            }
            while let Some((slot, batch, ends_sync)) = self.ready.pop_front() {
                if self.must_wait(slot, &batch) {
                    self.ready.push_front((slot, batch, ends_sync));
                    break;
                }
                Box::pin(self.dispatch(slot, batch, ends_sync)).await;
            }
            while self.ready.is_empty() {
                let frame = match self.client_in.try_next() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => {
                        return self
                            .fatal(sqlstate::PROTOCOL_VIOLATION, &err.to_string())
                            .await;
                    }
                };
                match self.on_client_frame(frame).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => {
                        self.flush_client().await?;
                        return Ok(());
                    }
                    Err(SessionError::ClientProtocol(problem)) => {
                        return self.fatal(sqlstate::PROTOCOL_VIOLATION, &problem).await;
                    }
                    Err(err) => return Err(err),
                }
            }
            self.release_idle();
            self.deliver_notifications();
            self.flush_all().await?;
            match self.wait().await {
                Event::Client(Ok(0)) => return Ok(()),
                Event::Client(Ok(_)) => {}
                Event::Client(Err(err)) => return Err(err.into()),
                Event::Server(_, Ok(())) => {}
                Event::Server(slot, Err(err)) => self.server_lost(slot, &err),
                Event::Notification(frame) => {
                    if let Some(frame) = frame {
                        self.queue_notifications(frame);
                    }
                }
                Event::Shutdown => {
                    return self
                        .fatal(
                            sqlstate::ADMIN_SHUTDOWN,
                            "terminating connection because pgrouter is shutting down",
                        )
                        .await;
                }
            }
        }
    }

    /// Waits for bytes from the client (unless a batch is waiting) or any server.
    async fn wait(&mut self) -> Event {
        let [primary, replica] = &mut self.servers;
        let client_blocked = !self.ready.is_empty();
        // Biased, in this order (unbiased, select draws a random number per
        // turn): a stop first; server answers before new client input, so a
        // client that keeps sending cannot hold back the answers it waits for;
        // notifications last, so a flood of them cannot hold back the client
        // (they reach it only when it is idle anyway, and a turn takes them all).
        tokio::select! {
            biased;
            _ = self.shared.stopped(&self.handle) => Event::Shutdown,
            read = fill(primary) => Event::Server(PRIMARY, read),
            read = fill(replica) => Event::Server(REPLICA, read),
            read = self.client_in.fill(), if !client_blocked => Event::Client(read),
            frame = super::listen::next_notification(&mut self.listens) => Event::Notification(frame),
        }
    }

    /// The key the client cancels with; its process id also names the session
    /// to the shared listener.
    pub(super) fn cancel_key(&self) -> (i32, i32) {
        self.cancel_key
    }

    /// Sends a FATAL error and ends the session.
    pub(super) async fn fatal(&mut self, code: &str, message: &str) -> Result<(), SessionError> {
        tracing::info!(code, message, "closing client session");
        build::error_response(&mut self.out, Severity::Fatal, code, message);
        let _ = self.flush_client().await;
        if code == sqlstate::PROTOCOL_VIOLATION {
            return Err(SessionError::ClientProtocol(message.to_owned()));
        }
        Ok(())
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.client_write.write_all(&self.out).await?;
            // After a large result, shrink back so an idle client holds little.
            if self.out.capacity() > CLIENT_OUT_KEEP {
                self.out = BytesMut::with_capacity(CLIENT_OUT_BUFFER);
            } else {
                self.out.clear();
            }
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), SessionError> {
        for slot in [PRIMARY, REPLICA] {
            let failed = match &mut self.servers[slot] {
                Some(attached) if attached.conn.conn.has_output() => {
                    attached.conn.conn.flush().await.err()
                }
                _ => None,
            };
            if let Some(err) = failed {
                self.server_lost(slot, &err);
            }
        }
        self.flush_client().await
    }

    /// Whether a batch for `slot` must wait for the other connection.
    pub(super) fn conflicts(&self, slot: usize) -> bool {
        self.active.is_some_and(|active| active != slot)
    }

    /// Marks `slot` as running client work, for ordering and cancel requests.
    pub(super) fn set_active(&mut self, slot: Option<usize>) {
        if slot.is_none() {
            self.wait_idle = false;
        }
        if self.active == slot {
            return;
        }
        // The node is remembered, not looked up, because a lost connection has
        // already left its slot when the session goes idle.
        if let Some(node) = self.active_node.take() {
            self.shared.track_outstanding(node, false);
        }
        self.active_node = slot
            .and_then(|s| self.servers[s].as_ref())
            .map(|a| a.conn.conn.node);
        if let Some(node) = self.active_node {
            self.shared.track_outstanding(node, true);
        }
        self.active = slot;
        let target = slot
            .and_then(|s| self.servers[s].as_ref())
            .map(|a| a.cancel.clone());
        *self.handle.cancel.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    async fn finish(&mut self) {
        self.shared.forget_cancel_key(self.cancel_key);
        self.stop_listening();
        self.set_active(None);
        for slot in [PRIMARY, REPLICA] {
            self.detach(slot).await;
        }
    }
}

/// Reads from an attached connection; never completes for an empty slot.
async fn fill(slot: &mut Option<Attached>) -> Result<(), BackendError> {
    match slot {
        Some(attached) => attached.conn.conn.fill().await,
        None => std::future::pending().await,
    }
}
