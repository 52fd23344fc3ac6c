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

use crate::backend::Login;
use crate::config::Config;
use crate::monitor::TopologyHandle;

mod listener;

use listener::Listener;

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

/// A channel name as a quoted identifier.
pub fn quote(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}
