//! A session's side of LISTEN/NOTIFY in pgrouter's shared listener (see
//! `notify`): LISTEN and UNLISTEN outside a transaction are answered here, and
//! notifications wait in the session until its client is idle, outside any
//! transaction, as PostgreSQL delivers them. The session is not pinned, so its
//! other statements keep going to pooled connections and replicas.
//!
//! LISTEN inside a transaction block, or beside other statements in one
//! message, still runs on the session's primary connection and pins it: only
//! there can it take effect at COMMIT as PostgreSQL promises.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::batch::Need;
use super::dispatch::send_internal;
use super::session::{PRIMARY, Session};
use crate::notify::{NotifyError, SESSION_QUEUE, quote};
use crate::protocol::build::{self, Severity};
use crate::protocol::fields::notification_channel;
use crate::protocol::{Frame, sqlstate, tx_status};
use crate::router::listen::ListenCommand;

/// Notifications a session keeps for a busy client before it drops the oldest
/// (PostgreSQL's own queue is bounded too, if far larger).
const MAX_PENDING: usize = 10_000;

/// Made on a session's first LISTEN: sessions that never listen pay nothing.
pub(super) struct Listens {
    queue: mpsc::Sender<Bytes>,
    inbox: mpsc::Receiver<Bytes>,
    channels: HashSet<String>,
    pending: VecDeque<Bytes>,
}

impl Listens {
    fn new() -> Listens {
        let (queue, inbox) = mpsc::channel(SESSION_QUEUE);
        Listens {
            queue,
            inbox,
            channels: HashSet::new(),
            pending: VecDeque::new(),
        }
    }
}

impl Session {
    /// Whether LISTEN/UNLISTEN can be served by the shared listener now:
    /// outside a transaction block, in a session not pinned to its own
    /// connection (a pinned one LISTENs there, as before it was pinned).
    pub(super) fn shares_listen(&self) -> bool {
        self.tx_status == tx_status::IDLE && !self.tx_pending && !self.pinned
    }

    /// Answers a batch whose one statement is LISTEN or UNLISTEN (simple or
    /// extended protocol) from the shared listener.
    pub(super) async fn answer_listen(
        &mut self,
        command: ListenCommand,
        frames: &[(Frame, Need)],
        ends_sync: bool,
    ) {
        let session = self.cancel_key().0;
        let result = match &command {
            ListenCommand::Listen(channel) => {
                let listens = self.listens.get_or_insert_with(|| Box::new(Listens::new()));
                let queue = listens.queue.clone();
                let subscribed = self
                    .shared
                    .notifier
                    .listen(&self.login, channel, session, &queue)
                    .await;
                if subscribed.is_ok() {
                    if let Some(listens) = self.listens.as_mut() {
                        listens.channels.insert(channel.clone());
                    }
                }
                subscribed
            }
            ListenCommand::Unlisten(_) | ListenCommand::UnlistenAll => {
                self.forget_listens(&command);
                Ok(())
            }
        };
        match result {
            Ok(()) => {
                self.command_answers(frames, command.tag());
                if ends_sync {
                    build::ready_for_query(&mut self.out, self.tx_status);
                }
            }
            Err(err) => {
                // The client's own connection is fine: no 08xxx, which pools
                // take as "throw this connection away".
                let (code, message) = match err {
                    NotifyError::Server { code, message } => (code, message),
                    NotifyError::Stopped => (
                        sqlstate::ADMIN_SHUTDOWN.to_owned(),
                        format!("pgrouter could not LISTEN: {err}"),
                    ),
                    other => (
                        sqlstate::CANNOT_CONNECT_NOW.to_owned(),
                        format!("pgrouter could not LISTEN: {other}"),
                    ),
                };
                build::error_response(&mut self.out, Severity::Error, &code, &message);
                if ends_sync {
                    build::ready_for_query(&mut self.out, self.tx_status);
                } else {
                    self.discard_until_sync = true;
                }
            }
        }
    }

    /// Drops this session's subscriptions in the shared listener that an
    /// UNLISTEN names (also when the UNLISTEN itself runs on a pinned connection).
    pub(super) fn forget_listens(&mut self, command: &ListenCommand) {
        let Some(listens) = self.listens.as_mut() else {
            return;
        };
        // Notifications still waiting for a channel the client leaves are
        // dropped, as PostgreSQL does after UNLISTEN.
        let channel = match command {
            ListenCommand::Listen(_) => return,
            ListenCommand::Unlisten(channel) => {
                if !listens.channels.remove(channel) {
                    return;
                }
                listens.pending.retain(|frame| {
                    let body = frame.get(5..).unwrap_or_default();
                    notification_channel(body) != Some(channel.as_str())
                });
                Some(channel.as_str())
            }
            ListenCommand::UnlistenAll => {
                listens.channels.clear();
                listens.pending.clear();
                None
            }
        };
        let session = self.cancel_key().0;
        self.shared.notifier.unlisten(&self.login, channel, session);
    }

    /// The session is being pinned to its primary connection: its channels
    /// are LISTENed there (before the batch that pins it) and left in the shared
    /// listener, so each notification reaches the client once. Notifications
    /// committed in the moment between the two may be missed.
    pub(super) fn move_listens_to_primary(&mut self) {
        let Some(listens) = self.listens.as_ref() else {
            return;
        };
        let channels: Vec<String> = listens.channels.iter().cloned().collect();
        if channels.is_empty() {
            return;
        }
        if let Some(attached) = self.servers[PRIMARY].as_mut() {
            for channel in &channels {
                send_internal(attached, &format!("LISTEN {}", quote(channel)));
            }
        }
        // Left without dropping what already waits: those still count.
        if let Some(listens) = self.listens.as_mut() {
            listens.channels.clear();
        }
        let session = self.cancel_key().0;
        self.shared.notifier.unlisten(&self.login, None, session);
    }

    /// Keeps a notification until the client is idle.
    /// Queues `frame` and every notification already in the inbox, so a burst
    /// takes one turn of the session's loop, not one turn each.
    pub(super) fn queue_notifications(&mut self, frame: Bytes) {
        let Some(listens) = self.listens.as_mut() else {
            return;
        };
        let mut next = Some(frame);
        while let Some(frame) = next {
            if listens.pending.len() >= MAX_PENDING {
                listens.pending.pop_front();
                tracing::warn!("a client does not go idle; dropped its oldest notification");
            }
            listens.pending.push_back(frame);
            next = listens.inbox.try_recv().ok();
        }
    }

    /// Gives the client its waiting notifications if it is idle: nothing in
    /// flight, no message half sent, outside any transaction.
    pub(super) fn deliver_notifications(&mut self) {
        if self.listens.as_ref().is_none_or(|l| l.pending.is_empty()) {
            return;
        }
        let idle = self.active.is_none()
            && self.ready.is_empty()
            && self.open.is_none()
            && self.batch.frames.is_empty()
            && self.held_ready.is_none()
            && self.tx_status == tx_status::IDLE
            && !self.tx_pending;
        let Some(listens) = self.listens.as_mut() else {
            return;
        };
        if idle {
            for frame in listens.pending.drain(..) {
                self.out.extend_from_slice(&frame);
            }
        }
    }

    /// Leaves every channel (the session ends).
    pub(super) fn stop_listening(&mut self) {
        self.forget_listens(&ListenCommand::UnlistenAll);
    }
}

/// The next notification for a session that listens; never, for one that does not.
pub(super) async fn next_notification(listens: &mut Option<Box<Listens>>) -> Option<Bytes> {
    match listens {
        Some(listens) => listens.inbox.recv().await,
        None => std::future::pending().await,
    }
}
