//! Server connection pools: one per node and pool key (user, database, startup
//! parameters), bounded, with a checkout timeout.
//!
//! Hand-written for now because the walking skeleton only needs session pooling
//! (a client keeps what it checked out until it leaves): a semaphore for the bound
//! and a stack of idle connections. Transaction pooling (its own issue) revisits
//! this against deadpool's managed pool. It must not look inside the traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, Login, ServerConn};

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection to {node} became free within {waited:?} (pool_size {size})")]
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
    pub user: String,
    pub database: String,
    pub params: Vec<(String, String)>,
}

struct Slot {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
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
}

/// All pools of one router.
#[derive(Default)]
pub struct Pools {
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
}

/// A checked-out server connection. Dropping it closes the connection and frees
/// its place; [`PooledConn::release`] returns it for reuse instead.
pub struct PooledConn {
    pub conn: ServerConn,
    permit: OwnedSemaphorePermit,
    slot: Arc<Slot>,
}

impl Pools {
    fn slot(&self, key: &PoolKey, size: usize) -> Arc<Slot> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    permits: Arc::new(Semaphore::new(size)),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Takes an idle connection or opens a new one, waiting at most `checkout_timeout`
    /// for a free place.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        addr: &NodeAddr,
        login: &Login,
        settings: PoolSettings,
    ) -> Result<PooledConn, PoolError> {
        let slot = self.slot(key, settings.pool_size);
        let permit = tokio::time::timeout(
            settings.checkout_timeout,
            slot.permits.clone().acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| PoolError::Exhausted {
            node: addr.name.clone(),
            waited: settings.checkout_timeout,
            size: settings.pool_size,
        })?;
        let idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                ServerConn::connect(
                    key.node,
                    &addr.host,
                    addr.port,
                    login,
                    settings.connect_timeout,
                    settings.max_message,
                )
                .await?
            }
        };
        Ok(PooledConn { conn, permit, slot })
    }

    /// Closes every idle connection (shutdown, or after a node went away).
    pub fn clear_idle(&self) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            slot.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Idle connections to `node` are dropped: used when a node fails.
    pub fn drop_idle_for(&self, node: usize) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for (key, slot) in slots.iter() {
            if key.node == node {
                slot.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
    }
}

impl PooledConn {
    /// Resets the connection and returns it to its pool; closes it if the reset fails.
    pub async fn release(self) {
        let PooledConn {
            mut conn,
            permit,
            slot,
        } = self;
        // A server that does not answer the reset within this long is not worth keeping.
        let reset = tokio::time::timeout(Duration::from_secs(5), conn.reset()).await;
        match reset.unwrap_or_else(|_| Err(conn.timeout_error())) {
            Ok(()) => slot
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn),
            Err(err) => {
                tracing::debug!(%err, "server connection not reusable; closing it");
                conn.terminate().await;
            }
        }
        drop(permit);
    }
}
