//! LISTEN/NOTIFY without pinning: pgrouter holds one listening connection on
//! the primary per (user, database), LISTENs there for every channel some
//! session listens on, and hands each NotificationResponse frame, unchanged, to
//! those sessions. A session delivers it to its client when idle (see
//! `frontend::listen`), as PostgreSQL does between transactions.
//!
//! Each hub runs as a "notify-listener" task that owns its server connection,
//! reconnects to the current primary when the connection fails or the primary
//! changes (LISTENing again on every channel), and stops with the router.
//! Notifications sent while it reconnects are lost, as they are for a client
//! whose server died.
//!
//! Must not: decode payloads, hold a lock across an await, or wait on a slow
//! session (a full session queue drops that session's notification, logged).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{BackendError, Login, ServerConn};
use crate::config::Config;
use crate::monitor::TopologyHandle;
use crate::protocol::build::to_server;
use crate::protocol::fields::{error_fields, notification_channel};
use crate::protocol::{Frame, backend_tag};

/// Notifications a session may have queued before further ones are dropped.
pub const SESSION_QUEUE: usize = 4096;

/// How long a LISTEN may wait for the hub (connecting included).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for a listener task before aborting it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a hub checks that it still listens on the primary, and drops
/// channels whose sessions are gone.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The server refused the LISTEN (its SQLSTATE and message).
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// No node acts as primary (mid-failover).
    #[error("no primary is available")]
    NoPrimary,
    /// The listening connection could not be made or was lost.
    #[error("pgrouter's listening connection failed: {0}")]
    Connection(String),
    #[error("pgrouter's listening connection did not answer within {0:?}")]
    Timeout(Duration),
    #[error("pgrouter is shutting down")]
    Stopped,
}

/// A session's queue for notification frames.
pub type NotificationSender = mpsc::Sender<Bytes>;

/// Router-wide: the hubs by (user, database).
pub struct Notifier {
    hubs: Mutex<HashMap<(String, String), Arc<Hub>>>,
    config: Arc<ArcSwap<Config>>,
    topology: TopologyHandle,
    shutdown: watch::Receiver<bool>,
    /// The hubs' tasks, awaited at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// One listening connection's shared side.
struct Hub {
    /// channel → (session id, queue) of every session listening on it.
    channels: Mutex<HashMap<String, Vec<(i32, NotificationSender)>>>,
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    /// LISTEN (again) on the server; answered once it is in effect.
    Listen(String, oneshot::Sender<Result<(), NotifyError>>),
    /// UNLISTEN on the server if no session listens on it any more.
    Forget(String),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop notifications: the maps stay consistent
    // because every critical section is a single insert or removal.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Notifier {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        topology: TopologyHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Notifier {
        Notifier {
            hubs: Mutex::new(HashMap::new()),
            config,
            topology,
            shutdown,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Waits for every hub's task to end (after the shutdown signal).
    /// A task stuck on a server that stopped answering is aborted after
    /// `STOP_GRACE`, so shutdown always finishes.
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for mut task in tasks {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!("a notify-listener did not stop in time; aborted");
                task.abort();
            }
        }
    }

    /// Subscribes `session` to `channel`; returns once notifications on it
    /// will reach `queue` (the server's LISTEN is in effect).
    pub async fn listen(
        &self,
        login: &Login,
        channel: &str,
        session: i32,
        queue: &NotificationSender,
    ) -> Result<(), NotifyError> {
        let hub = self.hub(login);
        let added = {
            let mut channels = lock(&hub.channels);
            let listeners = channels.entry(channel.to_owned()).or_default();
            let new = !listeners.iter().any(|(id, _)| *id == session);
            if new {
                listeners.push((session, queue.clone()));
            }
            new
        };
        // Asked every time, not only for a new channel: the hub answers at once
        // when it already listens, and only its answer says the LISTEN is in effect.
        let (reply, answer) = oneshot::channel();
        let sent = hub
            .commands
            .send(Command::Listen(channel.to_owned(), reply));
        let result = match sent {
            Err(_) => Err(NotifyError::Stopped),
            Ok(()) => match tokio::time::timeout(LISTEN_TIMEOUT, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(NotifyError::Stopped),
                Err(_) => Err(NotifyError::Timeout(LISTEN_TIMEOUT)),
            },
        };
        // A repeated LISTEN that failed leaves the earlier one in effect, as
        // on PostgreSQL; only a subscription this call made is undone.
        if result.is_err() && added {
            self.unlisten(login, Some(channel), session);
        }
        result
    }

    /// Unsubscribes `session` from `channel` (None: from every channel).
    pub fn unlisten(&self, login: &Login, channel: Option<&str>, session: i32) {
        let Some(hub) = lock(&self.hubs)
            .get(&(login.user.clone(), login.database.clone()))
            .cloned()
        else {
            return;
        };
        let mut emptied = Vec::new();
        {
            let mut channels = lock(&hub.channels);
            channels.retain(|name, listeners| {
                if channel.is_none_or(|c| c == name) {
                    listeners.retain(|(id, _)| *id != session);
                }
                if listeners.is_empty() {
                    emptied.push(name.clone());
                    return false;
                }
                true
            });
        }
        for name in emptied {
            let _ = hub.commands.send(Command::Forget(name));
        }
    }

    /// The hub for the login's (user, database), started on first use.
    fn hub(&self, login: &Login) -> Arc<Hub> {
        let key = (login.user.clone(), login.database.clone());
        let mut hubs = lock(&self.hubs);
        if let Some(hub) = hubs.get(&key) {
            if !hub.commands.is_closed() {
                return hub.clone();
            }
        }
        let (commands, inbox) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            commands,
        });
        let listener = Listener {
            hub: hub.clone(),
            login: Login {
                user: login.user.clone(),
                password: login.password.clone(),
                database: login.database.clone(),
                params: vec![("application_name".into(), "pgrouter_listener".into())],
            },
            config: self.config.clone(),
            topology: self.topology.clone(),
            conn: None,
            listening: HashSet::new(),
        };
        let span = tracing::info_span!(
            "notify-listener",
            user = login.user,
            database = login.database
        );
        let task = tokio::spawn(tracing::Instrument::instrument(
            listener.run(inbox, self.shutdown.clone()),
            span,
        ));
        lock(&self.tasks).push(task);
        tracing::info!(
            user = login.user,
            database = login.database,
            "notify-listener started"
        );
        hubs.insert(key, hub.clone());
        hub
    }
}

enum Event {
    Command(Option<Command>),
    Read(Result<(), BackendError>),
    Check,
    Shutdown,
}

/// The "notify-listener" task's state.
struct Listener {
    hub: Arc<Hub>,
    login: Login,
    config: Arc<ArcSwap<Config>>,
    topology: TopologyHandle,
    conn: Option<ServerConn>,
    /// Channels LISTENed on the current connection.
    listening: HashSet<String>,
}

impl Listener {
    async fn run(
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

/// A channel name as a quoted identifier.
pub fn quote(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}
