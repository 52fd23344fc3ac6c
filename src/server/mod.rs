//! The router as a whole: shared state, the accept loop and ordered shutdown.
//! Everything a session needs is reached through one `Arc<Shared>`; there are no
//! globals, so several routers can run in one process (tests do).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::CancelTarget;
use crate::config::Config;
use crate::frontend::{self, ClientSecrets};
use crate::monitor::{self, Topology, TopologyHandle};
use crate::pool::Pools;
use crate::router::ClassifierCache;

mod stats;
pub use stats::Stats;

/// Errors that stop the router as a whole (never a single client's problem).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("accepting connections failed: {0}")]
    Accept(#[source] std::io::Error),
    #[error("invalid config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Why a reload from the config file changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("pgrouter was started without a config file: nothing to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Who a client session is, fixed at login (the admin console's SHOW CLIENTS).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    pub peer: Option<std::net::SocketAddr>,
    /// The name it logged in with.
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// When its connection was accepted.
    pub connected_at: Option<std::time::Instant>,
}

/// One client session as SHOW CLIENTS lists it.
#[derive(Debug, Clone)]
pub(crate) struct ClientSummary {
    pub info: ClientInfo,
    /// `host:port` of the server running its current query; None while idle.
    pub server: Option<String>,
}

/// What the router holds of each client session, found by the cancel key
/// handed to its client.
#[derive(Default)]
pub(crate) struct SessionHandle {
    pub info: ClientInfo,
    /// The server connection running the client's current query (None while
    /// idle): where its cancel requests go.
    pub cancel: Mutex<Option<Arc<CancelTarget>>>,
    /// Woken once, when the router stops. A waker of the session's own,
    /// registered without a lock on each turn of its loop, rather than a
    /// wait on the shared `watch` channel: that wait took the channel's one
    /// lock twice a turn, the same lock for every session on every worker
    /// thread (about 1,000 instructions a transaction, measured with callgrind).
    pub stop: AtomicWaker,
}

/// State shared by all sessions of one router.
pub(crate) struct Shared {
    pub config: Arc<ArcSwap<Config>>,
    pub secrets: ArcSwap<ClientSecrets>,
    pub pools: Pools,
    pub topology: TopologyHandle,
    pub classifier: ClassifierCache,
    /// Causal keys' last write positions, shared by every session.
    pub keys: crate::consistency::CausalKeys,
    /// Commit positions are learnt with a fastpath function call until a
    /// server refuses it (then with a prepared statement).
    pub capture_fastpath: std::sync::atomic::AtomicBool,
    /// Every live session, by the cancel key handed to its client.
    pub sessions: Mutex<HashMap<(i32, i32), Arc<SessionHandle>>>,
    pub stats: Stats,
    next_pid: AtomicI32,
    pub replica_turn: AtomicUsize,
    /// Statements in flight per node (by config index), for least_outstanding.
    outstanding: Vec<AtomicUsize>,
    pub shutdown: watch::Receiver<bool>,
    /// Set once when the router stops, before every session's `stop` waker is
    /// woken (see [`Shared::stop_sessions`]).
    pub stopping: AtomicBool,
    /// LISTEN/NOTIFY through pgrouter's own listening connections.
    pub notifier: crate::notify::Notifier,
    /// The file RELOAD and SIGHUP re-read (none when the config was built in code).
    config_file: std::sync::OnceLock<crate::config::ConfigFile>,
    /// Held through a whole reload, so two at once (SIGHUP and RELOAD) cannot
    /// store one's secrets with the other's config.
    reloading: Mutex<()>,
}

impl Shared {
    /// Registers a client session; returns the cancel key its client gets,
    /// by which the session is found again.
    pub fn new_cancel_key(&self, session: Arc<SessionHandle>) -> (i32, i32) {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff;
        let secret = rand::random::<i32>();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((pid, secret), session);
        (pid, secret)
    }

    pub fn forget_cancel_key(&self, key: (i32, i32)) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Statements in flight on `node`.
    pub fn outstanding(&self, node: usize) -> usize {
        self.outstanding
            .get(node)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// A session started (`true`) or finished (`false`) work on `node`.
    pub fn track_outstanding(&self, node: usize, started: bool) {
        if let Some(counter) = self.outstanding.get(node) {
            if started {
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// A session saw `node` fail: publish it as down now rather than at the next poll.
    pub fn report_down(&self, node: usize) {
        let already = self.topology.load().nodes.get(node).is_none_or(|n| !n.up);
        if !already {
            tracing::warn!(node, "node marked down after a failed server connection");
            self.topology.rcu(|current| current.with_node_down(node));
        }
    }

    /// Tells every session the router stops. Order: the flag first, then the
    /// wakes; a session registers its waker before it reads the flag, so it
    /// either sees the flag or gets woken (and one that starts later sees it).
    fn stop_sessions(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for session in sessions.values() {
            session.stop.wake();
        }
    }

    /// Resolves once the router stops; cheap to poll on every loop turn.
    pub fn stopped<'a>(&'a self, session: &'a SessionHandle) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            session.stop.register(cx.waker());
            if self.stopping.load(Ordering::SeqCst) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Every client session now (not admin console ones), read without
    /// stopping any: each is seen at a slightly different moment.
    pub fn client_list(&self) -> Vec<ClientSummary> {
        // Copied out first, so no session waits on the map's lock while each
        // one's own lock is taken below.
        let handles: Vec<Arc<SessionHandle>> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        handles
            .iter()
            .map(|handle| {
                let cancel = handle.cancel.lock().unwrap_or_else(|p| p.into_inner());
                ClientSummary {
                    info: handle.info.clone(),
                    server: cancel.as_ref().map(|t| format!("{}:{}", t.host, t.port)),
                }
            })
            .collect()
    }

    pub fn session_handle(&self, key: (i32, i32)) -> Option<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }
}

/// A configured router, ready to serve.
pub struct Router {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
}

/// A cheap handle for observing a running router (demo status line, tests).
#[derive(Clone)]
pub struct RouterHandle {
    shared: Arc<Shared>,
}

impl RouterHandle {
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.shared.topology.load_full()
    }

    /// Statements in flight on `node` through this router.
    pub fn outstanding(&self, node: usize) -> usize {
        self.shared.outstanding(node)
    }

    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// The handle of the router `shared` belongs to (for the admin console).
    pub(crate) fn of(shared: &Arc<Shared>) -> RouterHandle {
        RouterHandle {
            shared: shared.clone(),
        }
    }

    /// Names the file [`RouterHandle::reload_from_file`] re-reads (the first
    /// call wins: a router's config file does not change while it runs).
    pub fn set_config_file(&self, file: crate::config::ConfigFile) {
        let _ = self.shared.config_file.set(file);
    }

    /// Re-reads the config file and swaps it in (SIGHUP, the console's
    /// RELOAD); a bad file changes nothing. Returns the file's path. Reads
    /// the file: call it off the async runtime (`spawn_blocking`).
    pub fn reload_from_file(&self) -> Result<std::path::PathBuf, ReloadError> {
        let file = self.shared.config_file.get().ok_or(ReloadError::NoFile)?;
        let new = Config::reread(file, &self.config())?;
        self.reload(new)?;
        Ok(file.path.clone())
    }

    /// Swaps in a new, already validated config for new statements and sessions.
    pub fn reload(&self, config: Config) -> Result<(), crate::config::ConfigError> {
        config.validate()?;
        let _one_at_a_time = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let secrets = ClientSecrets::from_config(&config);
        // Secrets first: a client authenticating during the swap sees old users with
        // old secrets or new users with new ones, never a user without a secret.
        self.shared.secrets.store(Arc::new(secrets));
        let routing_changed = self.shared.config.load().routing != config.routing;
        self.shared.config.store(Arc::new(config));
        if routing_changed {
            let classifier = &self.shared.classifier;
            let policy = classifier
                .policy()
                .with_routing(&self.shared.config.load().routing);
            classifier.set_policy(Arc::new(policy));
        }
        // Functions created since the last load become known (until then they
        // count as unknown, which routes them to the primary).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move { refresh_function_catalog(&shared).await });
        }
        Ok(())
    }
}

impl Router {
    /// Builds the shared state. Nothing runs until [`Router::serve`].
    pub fn new(config: Config) -> Result<Router, RunError> {
        config.validate()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Nodes added by a later reload get no outstanding counter and count as idle.
        let node_count = config.nodes.len();
        let topology = Arc::new(ArcSwap::from_pointee(Topology::from_config(&config)));
        let config_handle = Arc::new(ArcSwap::from_pointee(config));
        let notifier = crate::notify::Notifier::new(
            config_handle.clone(),
            topology.clone(),
            shutdown_rx.clone(),
        );
        let config = config_handle.load_full();
        let shared = Shared {
            notifier,
            secrets: ArcSwap::from_pointee(ClientSecrets::from_config(&config)),
            stats: Stats::new(config.nodes.len()),
            config: config_handle,
            pools: Pools::default(),
            topology,
            classifier: ClassifierCache::new(10_000),
            keys: crate::consistency::CausalKeys::default(),
            capture_fastpath: std::sync::atomic::AtomicBool::new(true),
            sessions: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1),
            replica_turn: AtomicUsize::new(0),
            outstanding: (0..node_count).map(|_| AtomicUsize::new(0)).collect(),
            shutdown: shutdown_rx,
            stopping: AtomicBool::new(false),
            config_file: std::sync::OnceLock::new(),
            reloading: Mutex::new(()),
        };
        // Until the catalog is read from the primary, the config lists and the
        // deny-list decide about functions.
        let policy = crate::router::FunctionPolicy::without_catalog(&shared.config.load().routing);
        shared.classifier.set_policy(Arc::new(policy));
        Ok(Router {
            shared: Arc::new(shared),
            shutdown_tx,
        })
    }

    pub fn handle(&self) -> RouterHandle {
        RouterHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves clients from `listener` until `shutdown` resolves, then stops
    /// accepting, tells sessions to end, stops the monitor and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let shared = self.shared;
        // However `serve` ends (returns, or its future is dropped), sessions
        // are told to stop; they do not outlive their router.
        let _stop_sessions = StopSessionsOnDrop(shared.clone());
        // Order: the first measurement lands before the first client is accepted, so
        // early reads can already go to replicas instead of all falling back.
        let mut monitor_state = monitor::poll::MonitorState::default();
        let first_round = {
            let config = shared.config.load_full();
            let wait = config.pool.connect_timeout.min(Duration::from_secs(3));
            tokio::time::timeout(
                wait,
                monitor::poll::poll_once(&config, &shared.topology, &mut monitor_state),
            )
            .await
        };
        if first_round.is_err() {
            tracing::warn!("first health check did not finish in time; starting anyway");
        }
        refresh_function_catalog(&shared).await;
        let monitor = monitor::spawn_monitor(
            shared.config.clone(),
            shared.topology.clone(),
            monitor_state,
            shared.shutdown.clone(),
        );

        let maintenance = tokio::spawn(maintain_pools(shared.clone()));

        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            frontend::serve_client(stream, peer, shared).await;
                        });
                    }
                    // Per-connection failures (e.g. the peer reset before accept
                    // returned, or fd exhaustion) must not stop the router.
                    Err(err) => {
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break Ok(()),
            }
        };
        // Order: stop accepting (listener dropped here), then signal sessions and the
        // monitor, then wait for the monitor so no task outlives `serve`.
        drop(listener);
        let _ = self.shutdown_tx.send(true);
        shared.stop_sessions();
        let _ = monitor.await;
        let _ = maintenance.await;
        shared.notifier.stopped().await;
        shared.pools.clear_idle();
        tracing::info!("router stopped");
        result
    }
}

/// Tells every session to stop when dropped (see `Router::serve`).
struct StopSessionsOnDrop(Arc<Shared>);

impl Drop for StopSessionsOnDrop {
    fn drop(&mut self) {
        self.0.stop_sessions();
    }
}

/// The "pool-maintenance" task: once a second, closes idle server connections
/// past their limits and opens `min_idle` ones; stops with the router.
async fn maintain_pools(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let settings = crate::pool::PoolSettings::from_config(&shared.config.load());
        tokio::select! {
            _ = shared.pools.maintain(&settings) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Reads the function catalog from the current primary into the classifier.
async fn refresh_function_catalog(shared: &Shared) {
    let config = shared.config.load_full();
    let topology = shared.topology.load();
    let Some(primary) = topology.nodes.get(topology.primary) else {
        return;
    };
    let address = (primary.host.clone(), primary.port);
    monitor::catalog::refresh(&config, (&address.0, address.1), &shared.classifier).await;
}

/// Runs a router on `listener` with `config` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    Router::new(config)?.serve(listener, shutdown).await
}
