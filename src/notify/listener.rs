//! The "notify-listener" task of one hub: owns the listening server
//! connection, runs LISTEN/UNLISTEN for the sessions, reconnects to the
//! current primary, and hands each NotificationResponse frame to the sessions
//! listening on its channel. Must not wait on a session.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use super::{CHECK_EVERY, Command, Hub, LISTEN_TIMEOUT, NotifyError, lock, quote};
use crate::backend::{BackendError, Login, ServerConn};
use crate::config::Config;
use crate::monitor::TopologyHandle;
use crate::protocol::build::to_server;
use crate::protocol::fields::{error_fields, notification_channel};
use crate::protocol::{Frame, backend_tag};

enum Event {
    Command(Option<Command>),
    Read(Result<(), BackendError>),
    Check,
    Shutdown,
}

/// The "notify-listener" task's state.
pub(super) struct Listener {
    pub(super) hub: Arc<Hub>,
    pub(super) login: Login,
    pub(super) config: Arc<ArcSwap<Config>>,
    pub(super) topology: TopologyHandle,
    pub(super) conn: Option<ServerConn>,
    /// Channels LISTENed on the current connection.
    pub(super) listening: HashSet<String>,
}

impl Listener {
    pub(super) async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The select only picks what happened; handling it (which awaits)
            // comes after, so nothing borrowed by a branch is held meanwhile.
            let event = tokio::select! {
                // Shutdown first: a hub started during shutdown must not connect.
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Event::Shutdown,
                command = inbox.recv() => Event::Command(command),
                read = fill(&mut self.conn) => Event::Read(read),
                _ = check.tick() => Event::Check,
            };
            match event {
                Event::Command(Some(command)) => self.on_command(command).await,
                Event::Read(read) => {
                    if let Err(err) = read.and_then(|()| self.drain()) {
                        self.lost(&err);
                    }
                }
                Event::Check => self.check().await,
                Event::Command(None) | Event::Shutdown => break,
            }
            // Notifications read together with a command's answer are still in
            // the buffer; the next read might not come for a long time.
            if let Err(err) = self.drain() {
                self.lost(&err);
            }
        }
        if let Some(conn) = self.conn.take() {
            conn.terminate().await;
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Listen(channel, reply) => {
                let result = if self.listening.contains(&channel) && self.conn.is_some() {
                    Ok(())
                } else {
                    self.run_listen(&format!("LISTEN {}", quote(&channel)))
                        .await
                        .map(|()| {
                            self.listening.insert(channel);
                        })
                };
                let _ = reply.send(result);
            }
            Command::Forget(channel) => {
                let still_wanted = lock(&self.hub.channels).contains_key(&channel);
                if !still_wanted && self.listening.remove(&channel) && self.conn.is_some() {
                    let sql = format!("UNLISTEN {}", quote(&channel));
                    if let Err(err) = self.run_listen(&sql).await {
                        tracing::warn!(%err, channel, "UNLISTEN failed");
                    }
                }
            }
        }
    }

    /// Runs a LISTEN/UNLISTEN on the connection (made first if needed),
    /// handing out notifications that arrive meanwhile. A server that does not
    /// answer in time costs the connection (made anew on the next command).
    async fn run_listen(&mut self, sql: &str) -> Result<(), NotifyError> {
        match tokio::time::timeout(LISTEN_TIMEOUT, self.run_listen_inner(sql)).await {
            Ok(result) => result,
            Err(_) => {
                self.conn = None;
                self.listening.clear();
                Err(NotifyError::Timeout(LISTEN_TIMEOUT))
            }
        }
    }

    async fn run_listen_inner(&mut self, sql: &str) -> Result<(), NotifyError> {
        self.connect().await?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(NotifyError::Connection("no connection".into()));
        };
        let sent = match to_server::query(conn.out(), sql) {
            Ok(()) => conn.flush().await,
            Err(err) => return Err(NotifyError::Connection(err.to_string())),
        };
        if let Err(err) = sent {
            self.lost(&err);
            return Err(NotifyError::Connection(err.to_string()));
        }
        let mut refused = None;
        loop {
            let frame = match self.conn.as_mut() {
                Some(conn) => conn.read_frame().await,
                None => return Err(NotifyError::Connection("no connection".into())),
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => {
                    self.lost(&err);
                    return Err(NotifyError::Connection(err.to_string()));
                }
            };
            match frame.tag {
                backend_tag::ERROR_RESPONSE => {
                    let (code, message) = error_fields(frame.body());
                    refused = Some(NotifyError::Server { code, message });
                }
                backend_tag::READY_FOR_QUERY => return refused.map_or(Ok(()), Err),
                _ => self.on_frame(&frame),
            }
        }
    }

    /// Connects to the current primary unless connected, and LISTENs there on
    /// every channel sessions listen on.
    async fn connect(&mut self) -> Result<(), NotifyError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let topology = self.topology.load_full();
        let Some(node) = topology
            .nodes
            .get(topology.primary)
            .filter(|_| topology.primary_available)
        else {
            return Err(NotifyError::NoPrimary);
        };
        let config = self.config.load();
        let mut conn = ServerConn::connect(
            topology.primary,
            &node.host,
            node.port,
            &self.login,
            config.pool.connect_timeout,
            config.limits.max_message_size,
        )
        .await
        .map_err(|err| NotifyError::Connection(err.to_string()))?;
        let channels: Vec<String> = lock(&self.hub.channels).keys().cloned().collect();
        for channel in &channels {
            let sql = format!("LISTEN {}", quote(channel));
            match tokio::time::timeout(config.pool.connect_timeout, conn.run_quiet(&sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(NotifyError::Connection(err.to_string())),
                Err(_) => return Err(NotifyError::Timeout(config.pool.connect_timeout)),
            }
        }
        tracing::info!(server = conn.addr(), channels = channels.len(), "listening");
        self.listening = channels.into_iter().collect();
        self.conn = Some(conn);
        Ok(())
    }

    fn drain(&mut self) -> Result<(), BackendError> {
        loop {
            let frame = match self.conn.as_mut() {
                Some(conn) => conn.try_next()?,
                None => return Ok(()),
            };
            match frame {
                Some(frame) => self.on_frame(&frame),
                None => return Ok(()),
            }
        }
    }

    /// Hands a notification to every session listening on its channel.
    fn on_frame(&mut self, frame: &Frame) {
        if frame.tag != backend_tag::NOTIFICATION_RESPONSE {
            return;
        }
        let Some(channel) = notification_channel(frame.body()) else {
            return;
        };
        let mut channels = lock(&self.hub.channels);
        let Some(listeners) = channels.get_mut(channel) else {
            return;
        };
        listeners.retain(|(session, queue)| match queue.try_send(frame.raw.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    session,
                    channel,
                    "a session's notification queue is full; dropped one"
                );
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn lost(&mut self, err: &BackendError) {
        tracing::warn!(%err, "listening connection lost; reconnecting");
        self.conn = None;
        self.listening.clear();
    }

    /// Reconnects after a loss or a change of primary, and drops channels whose
    /// sessions all went away without UNLISTEN.
    async fn check(&mut self) {
        let topology = self.topology.load();
        let moved = self.conn.as_ref().is_some_and(|conn| {
            conn.node != topology.primary
                || topology
                    .nodes
                    .get(conn.node)
                    .is_none_or(|n| format!("{}:{}", n.host, n.port) != conn.addr())
        });
        if moved {
            tracing::info!("the primary changed; listening there instead");
            if let Some(conn) = self.conn.take() {
                conn.terminate().await;
            }
            self.listening.clear();
        }
        let wanted = {
            let mut channels = lock(&self.hub.channels);
            channels.retain(|_, listeners| {
                listeners.retain(|(_, queue)| !queue.is_closed());
                !listeners.is_empty()
            });
            !channels.is_empty()
        };
        if wanted && self.conn.is_none() {
            if let Err(err) = self.connect().await {
                tracing::warn!(%err, "cannot listen on the primary yet");
            }
        }
        let gone: Vec<String> = {
            let channels = lock(&self.hub.channels);
            self.listening
                .iter()
                .filter(|c| !channels.contains_key(*c))
                .cloned()
                .collect()
        };
        for channel in gone {
            self.on_command(Command::Forget(channel)).await;
        }
    }
}

/// Reads once from the connection, or waits forever without one.
async fn fill(conn: &mut Option<ServerConn>) -> Result<(), BackendError> {
    match conn {
        Some(conn) => conn.fill().await,
        None => std::future::pending().await,
    }
}
