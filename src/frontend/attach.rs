//! Getting server connections for a session: which node (from the topology
//! snapshot), from which pool, and what happens when none is available.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::session::{PRIMARY, REPLICA, Session, attach};
use crate::backend::BackendError;
use crate::config::NoReplica;
use crate::monitor::select::{self, Candidate};
use crate::pool::{NodeAddr, PoolError, PoolKey, PoolSettings, PooledConn};
use crate::protocol::sqlstate;

/// A failure to get a connection, with the SQLSTATE the client is told.
pub(super) struct AttachError {
    pub code: &'static str,
    pub message: String,
}

impl Session {
    /// The connection for the current primary, checked out if needed. During a
    /// failover it waits up to `monitor.failover_timeout` for a primary to appear.
    pub(super) async fn attach_primary(&mut self) -> Result<(), PoolError> {
        let primary = self.wait_for_primary().await?;
        if let Some(attached) = &self.servers[PRIMARY] {
            if attached.conn.conn.node == primary {
                return Ok(());
            }
        }
        self.detach(PRIMARY).await;
        let conn = self.checkout(primary).await?;
        self.servers[PRIMARY] = Some(attach(conn));
        Ok(())
    }

    async fn wait_for_primary(&self) -> Result<usize, PoolError> {
        let config = self.shared.config.load_full();
        let deadline = Instant::now() + config.monitor.failover_timeout;
        loop {
            let topology = self.shared.topology.load();
            if topology.primary_available {
                return Ok(topology.primary);
            }
            if Instant::now() >= deadline {
                return Err(PoolError::NoPrimary {
                    waited: config.monitor.failover_timeout,
                });
            }
            tokio::time::sleep(config.monitor.interval / 2).await;
        }
    }

    /// The connection for a replica that may take reads now. `Ok(false)`: none
    /// can, read from the primary; `Err`: none can and the config says to fail.
    pub(super) async fn attach_replica(&mut self) -> Result<bool, AttachError> {
        let config = self.shared.config.load_full();
        // A measurement older than a few intervals counts as over the threshold.
        let stale_after = config.measurement_stale_after();
        let topology = self.shared.topology.load_full();
        if let Some(attached) = &self.servers[REPLICA] {
            if topology.replica_eligible(attached.conn.conn.node, stale_after) {
                return Ok(true);
            }
        }
        self.detach(REPLICA).await;
        let candidates: Vec<Candidate> = topology
            .eligible_replicas(stale_after)
            .map(|node| Candidate {
                node,
                weight: config.nodes.get(node).map_or(1, |n| n.weight),
                outstanding: self.shared.outstanding(node),
            })
            .collect();
        let turn = self.shared.replica_turn.fetch_add(1, Ordering::Relaxed);
        if let Some(node) =
            select::choose(&candidates, config.balance.strategy, turn, rand::random())
        {
            match self.checkout(node).await {
                Ok(conn) => {
                    self.servers[REPLICA] = Some(attach(conn));
                    return Ok(true);
                }
                Err(err) => tracing::warn!(%err, "replica connection failed"),
            }
        }
        match config.monitor.no_replica {
            NoReplica::Primary => Ok(false),
            NoReplica::Error => Err(AttachError {
                code: sqlstate::CANNOT_CONNECT_NOW,
                message: format!(
                    "pgrouter: no replica is within the lag limits (max_replica_lag {:?}, max_replica_lag_bytes {}) and no_replica = \"error\": {}",
                    config.monitor.max_replica_lag,
                    config.monitor.max_replica_lag_bytes,
                    topology.describe_replicas()
                ),
            }),
        }
    }

    /// Checks out a connection to `node`. A node that cannot be reached is marked
    /// down at once, not at the next poll.
    async fn checkout(&self, node: usize) -> Result<PooledConn, PoolError> {
        let config = self.shared.config.load();
        let addr = config
            .nodes
            .get(node)
            .map(|n| NodeAddr {
                host: n.host.clone(),
                port: n.port,
                name: n.display_name(),
            })
            .ok_or_else(|| {
                PoolError::Backend(BackendError::Protocol {
                    addr: format!("node #{node}"),
                    problem: "node no longer configured".into(),
                })
            })?;
        let key = PoolKey {
            node,
            user: self.login.user.clone(),
            database: self.login.database.clone(),
            params: self.login.params.clone(),
        };
        let settings = PoolSettings {
            pool_size: config.pool.pool_size,
            checkout_timeout: config.pool.checkout_timeout,
            connect_timeout: config.pool.connect_timeout,
            max_message: config.limits.max_message_size,
        };
        let result = self
            .shared
            .pools
            .checkout(&key, &addr, &self.login, settings)
            .await;
        if let Err(PoolError::Backend(
            BackendError::Connect { .. } | BackendError::Io { .. } | BackendError::Timeout { .. },
        )) = &result
        {
            self.shared.report_down(node);
        }
        result
    }
}
