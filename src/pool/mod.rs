//! Server connection pools: one per node and pool key (user, database, startup
//! parameters), bounded by `pool_size`, with a FIFO wait queue and a checkout
//! timeout, idle and lifetime limits, a health check before reusing a
//! connection idle for long, and `min_idle` connections kept open ahead of need.
//!
//! Hand-written rather than deadpool's managed pool, for two reasons: dropping
//! a checked-out connection must *close* it (pgrouter drops connections whose
//! protocol state it cannot vouch for: mid-transaction, answers outstanding),
//! while a deadpool `Object` returns to its pool on drop; and the reset on
//! return differs by pool mode (session: `DISCARD ALL` before reuse;
//! transaction: kept as is, the next session brings its own state), which the
//! session decides, not a pool-wide recycle hook. The bound and the fair FIFO
//! wait queue are tokio's `Semaphore`. It must not look inside the traffic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, Login, ServerConn};

mod stats;
pub use stats::PoolStats;
use stats::Waiting;

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "too many clients for {node}: no server connection became free within {waited:?} (pool_size {size})"
    )]
    Exhausted {
        node: String,
        waited: Duration,
        size: usize,
    },
    #[error("no primary is available (waited {waited:?} for a failover to complete)")]
    NoPrimary { waited: Duration },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What makes two server connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: usize,
    /// The node's address when the key was made: after a reload that changes the
    /// node list, position `node` may be another server, which gets a pool of its own.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub params: Vec<(String, String)>,
}

/// How to open more connections for a pool (kept for `min_idle`).
#[derive(Clone)]
struct Template {
    login: Login,
}

struct Slot {
    node: usize,
    /// Where its connections go (the key's host and port, the node's name).
    addr: NodeAddr,
    permits: Arc<Semaphore>,
    /// `pool_size` when the pool was made (the semaphore's permits).
    size: usize,
    /// Checkouts waiting for a place now, and those that gave up at
    /// `checkout_timeout` so far: for the admin console. Touched only on the
    /// slow path, when no place was free.
    waiting: AtomicUsize,
    timeouts: AtomicU64,
    /// Boxed: a connection moves through the pool, the session and back on
    /// every transaction, so it moves as a pointer, not ~300 bytes.
    #[allow(
        clippy::vec_box,
        reason = "boxed to move cheaply, not to be on the heap"
    )]
    idle: Mutex<Vec<Box<ServerConn>>>,
    /// Set by the first checkout; read without a lock on every later one.
    template: OnceLock<Template>,
}

impl Slot {
    #[allow(clippy::vec_box, reason = "see `Slot::idle`")]
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Box<ServerConn>>> {
        // A poisoned lock only means another task panicked mid-push; the list is still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a pool's connections go.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
    pub name: String,
}

/// Settings a checkout needs.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub pool_size: usize,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_message: usize,
    pub min_idle: usize,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub health_check_after: Duration,
}

impl PoolSettings {
    /// The settings in force in `config`.
    pub fn from_config(config: &crate::config::Config) -> PoolSettings {
        let pool = &config.pool;
        PoolSettings {
            pool_size: pool.pool_size,
            checkout_timeout: pool.checkout_timeout,
            connect_timeout: pool.connect_timeout,
            max_message: config.limits.max_message_size,
            min_idle: pool.min_idle,
            idle_timeout: pool.idle_timeout,
            max_lifetime: pool.max_lifetime,
            health_check_after: pool.health_check_after,
        }
    }
}

/// One pool, looked up once. A session keeps a handle per node and reuses it
/// for every checkout while the configuration is unchanged, so the hot path of
/// transaction pooling (a checkout per transaction) builds no key, clones no
/// strings and takes no map lock. Pools are never removed from [`Pools`], so a
/// handle stays valid; a node list change gives new keys, hence new handles.
#[derive(Clone)]
pub struct PoolHandle {
    slot: Arc<Slot>,
}

impl PoolHandle {
    /// The node this pool's connections go to.
    pub fn node(&self) -> usize {
        self.slot.node
    }
}

/// All pools of one router.
#[derive(Default)]
pub struct Pools {
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
}

/// A checked-out server connection. Dropping it closes the connection and frees
/// its place; [`PooledConn::release`] returns it for reuse instead.
pub struct PooledConn {
    pub conn: Box<ServerConn>,
    permit: OwnedSemaphorePermit,
    slot: Arc<Slot>,
}

/// What a connection needs before another client may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// `DISCARD ALL` (session pooling: the next client expects a fresh session).
    Reset,
    /// Nothing: it is between transactions, and the next session re-applies (or
    /// resets) session state itself (transaction pooling).
    AsIs,
}

impl Pools {
    /// The pool for `key` (created with room for `size` connections if new),
    /// whose connections go to `addr` (the first call's: the key fixes host and port).
    pub fn handle(&self, key: &PoolKey, addr: NodeAddr, size: usize) -> PoolHandle {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match slots.get(key) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::new(Slot {
                    node: key.node,
                    addr,
                    permits: Arc::new(Semaphore::new(size)),
                    size,
                    waiting: AtomicUsize::new(0),
                    timeouts: AtomicU64::new(0),
                    idle: Mutex::new(Vec::new()),
                    template: OnceLock::new(),
                });
                slots.insert(key.clone(), slot.clone());
                slot
            }
        };
        PoolHandle { slot }
    }

    /// Takes an idle connection or opens a new one, waiting at most
    /// `checkout_timeout` (in FIFO order with other waiters) for a free place.
    pub async fn checkout(
        &self,
        pool: &PoolHandle,
        login: &Login,
        settings: PoolSettings,
    ) -> Result<PooledConn, PoolError> {
        let (slot, addr) = (&pool.slot, &pool.slot.addr);
        // The waits below (for a place, a health check, a new connection) are
        // boxed: a session boxes the future that checks out on every
        // transaction, so their states would otherwise be allocated and
        // copied each time (a connect alone is ~1 KB), used or not.
        let permit = match slot.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiter = Waiting::new(slot);
                let permit = Box::pin(tokio::time::timeout(
                    settings.checkout_timeout,
                    slot.permits.clone().acquire_owned(),
                ))
                .await
                .ok()
                .and_then(Result::ok);
                drop(waiter);
                permit.ok_or_else(|| {
                    slot.timeouts.fetch_add(1, Ordering::Relaxed);
                    PoolError::Exhausted {
                        node: addr.name.clone(),
                        waited: settings.checkout_timeout,
                        size: settings.pool_size,
                    }
                })?
            }
        };
        slot.template.get_or_init(|| Template {
            login: login.clone(),
        });
        // One clock read for the age checks of this checkout, read again only
        // after a failed health check (which may have waited).
        let mut now = Instant::now();
        while let Some(conn) = take_idle(slot, &settings, now) {
            let checked =
                if now.saturating_duration_since(conn.last_used) < settings.health_check_after {
                    Some(conn)
                } else {
                    Box::pin(healthy(conn, &settings)).await
                };
            match checked {
                Some(conn) => {
                    let slot = slot.clone();
                    return Ok(PooledConn { conn, permit, slot });
                }
                None => now = Instant::now(),
            }
        }
        let conn = Box::pin(ServerConn::connect(
            slot.node,
            &addr.host,
            addr.port,
            login,
            settings.connect_timeout,
            settings.max_message,
        ))
        .await?;
        let slot = slot.clone();
        Ok(PooledConn {
            conn: Box::new(conn),
            permit,
            slot,
        })
    }

    /// Closes every idle connection (shutdown, or after a node went away).
    pub fn clear_idle(&self) {
        for slot in self.all_slots() {
            slot.idle().clear();
        }
    }

    /// Idle connections to `node` are dropped: used when a node fails.
    pub fn drop_idle_for(&self, node: usize) {
        for slot in self.all_slots().iter().filter(|s| s.node == node) {
            slot.idle().clear();
        }
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().cloned().collect()
    }

    /// Closes idle connections past `idle_timeout` (keeping `min_idle`) or
    /// `max_lifetime`, and opens connections up to `min_idle` for pools that
    /// have been used. Run periodically by the router with the current settings.
    pub async fn maintain(&self, settings: &PoolSettings) {
        for slot in self.all_slots() {
            expire_idle(&slot, settings);
            if let Some(template) = slot.template.get() {
                top_up(&slot, template, settings).await;
            }
        }
    }
}

/// The newest idle connection that is not past its limits (older ones are closed).
fn take_idle(slot: &Slot, settings: &PoolSettings, now: Instant) -> Option<Box<ServerConn>> {
    let mut idle = slot.idle();
    while let Some(conn) = idle.pop() {
        let expired = now.saturating_duration_since(conn.created) >= settings.max_lifetime
            || now.saturating_duration_since(conn.last_used) >= settings.idle_timeout;
        if !expired {
            return Some(conn);
        }
    }
    None
}

/// A connection idle for long (`health_check_after`) is asked an empty query
/// before reuse.
async fn healthy(mut conn: Box<ServerConn>, settings: &PoolSettings) -> Option<Box<ServerConn>> {
    match tokio::time::timeout(settings.connect_timeout, conn.run_quiet("")).await {
        Ok(Ok(())) => Some(conn),
        _ => {
            tracing::debug!(
                server = conn.addr(),
                "idle server connection failed its health check"
            );
            None
        }
    }
}

fn expire_idle(slot: &Slot, settings: &PoolSettings) {
    let mut idle = slot.idle();
    let keep_at_least = settings.min_idle;
    let mut kept = 0;
    // Newest last: walk from the newest so the freshest survive.
    let mut survivors: Vec<Box<ServerConn>> = Vec::with_capacity(idle.len());
    while let Some(conn) = idle.pop() {
        let too_old = conn.created.elapsed() >= settings.max_lifetime;
        let unused = conn.last_used.elapsed() >= settings.idle_timeout;
        if too_old || (unused && kept >= keep_at_least) {
            continue;
        }
        kept += 1;
        survivors.push(conn);
    }
    survivors.reverse();
    *idle = survivors;
}

async fn top_up(slot: &Arc<Slot>, template: &Template, settings: &PoolSettings) {
    while slot.idle().len() < settings.min_idle {
        // Idle connections hold no permit: keep idle + checked out within pool_size.
        let in_use = settings
            .pool_size
            .saturating_sub(slot.permits.available_permits());
        if slot.idle().len() + in_use >= settings.pool_size {
            return;
        }
        let Ok(permit) = slot.permits.clone().try_acquire_owned() else {
            return;
        };
        let connected = ServerConn::connect(
            slot.node,
            &slot.addr.host,
            slot.addr.port,
            &template.login,
            settings.connect_timeout,
            settings.max_message,
        )
        .await;
        match connected {
            Ok(conn) => slot.idle().push(Box::new(conn)),
            Err(err) => {
                tracing::debug!(%err, "could not open a min_idle server connection");
                return;
            }
        }
        drop(permit);
    }
}

impl PooledConn {
    /// Returns the connection to its pool (after `DISCARD ALL` for
    /// [`Release::Reset`]); closes it if it is not clean or the reset fails.
    pub async fn release(self, how: Release) {
        match how {
            Release::AsIs => self.release_as_is(),
            // Boxed: its state (~1 KB) would otherwise sit in every future
            // that may release a connection, checkouts included.
            Release::Reset => Box::pin(self.release_after_reset()).await,
        }
    }

    /// [`Release::AsIs`] without a future: transaction pooling gives a
    /// connection back after every transaction, so this is the hot path.
    pub fn release_as_is(self) {
        let PooledConn { conn, permit, slot } = self;
        if conn.is_clean() {
            keep_idle(&slot, conn);
        } else {
            tracing::debug!(
                server = conn.addr(),
                "server connection not idle at release; closing it"
            );
            conn.terminate_now();
        }
        drop(permit);
    }

    async fn release_after_reset(self) {
        let PooledConn {
            mut conn,
            permit,
            slot,
        } = self;
        // A server that does not answer the reset within this long is not worth keeping.
        let reset = tokio::time::timeout(Duration::from_secs(5), conn.reset()).await;
        match reset.unwrap_or_else(|_| Err(conn.timeout_error())) {
            Ok(()) => keep_idle(&slot, conn),
            Err(err) => {
                tracing::debug!(%err, "server connection not reusable; closing it");
                conn.terminate().await;
            }
        }
        drop(permit);
    }
}

/// Puts a clean connection on its pool's idle list.
fn keep_idle(slot: &Slot, mut conn: Box<ServerConn>) {
    conn.last_used = Instant::now();
    slot.idle().push(conn);
}
