//! Getting server connections for a session: which node (from the topology
//! snapshot), from which pool, and what happens when none is available.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::attached::attach;
use super::session::{PRIMARY, REPLICA, Session};
use crate::backend::BackendError;
use crate::config::{BalanceStrategy, Config, NoReplica};
use crate::consistency::{ReadNeed, Verdict};
use crate::monitor::select::{self, Candidate};
use crate::pool::{NodeAddr, PoolError, PoolHandle, PoolKey, PoolSettings, PooledConn};
use crate::protocol::build::{self, Severity};
use crate::protocol::sqlstate;

/// A failure to get a connection, with the SQLSTATE the client is told.
pub(super) struct AttachError {
    pub code: &'static str,
    pub message: String,
}

impl Session {
    /// Tells the client why it could not be served: the server's own error when
    /// there is one (e.g. 3D000 for a missing database), else a connection error.
    pub(super) fn refuse(&mut self, err: &PoolError) {
        match err {
            PoolError::Backend(BackendError::Server { raw, .. }) => self.out.extend_from_slice(raw),
            PoolError::Exhausted { .. } => build::error_response(
                &mut self.out,
                Severity::Fatal,
                sqlstate::TOO_MANY_CONNECTIONS,
                &err.to_string(),
            ),
            PoolError::NoPrimary { .. } => build::error_response(
                &mut self.out,
                Severity::Fatal,
                sqlstate::CANNOT_CONNECT_NOW,
                &err.to_string(),
            ),
            PoolError::Backend(_) => build::error_response(
                &mut self.out,
                Severity::Fatal,
                sqlstate::UNABLE_TO_CONNECT,
                &err.to_string(),
            ),
        }
    }

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
        self.release_other_if_idle(PRIMARY).await;
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

    /// The connection for a replica that may serve a read with `need`.
    /// `Ok(false)`: none can, read from the primary; `Err`: none is within the
    /// lag limits and the config says to fail.
    ///
    /// In order: the attached replica if it serves (judged from the snapshot,
    /// else asked for its replay position when the snapshot is older than the
    /// session's floor); another replica that serves; a replica that is only
    /// behind the floor, asked (and waited for up to `causal_wait`). A read
    /// whose floor no replica reaches goes to the primary, never to an error.
    pub(super) async fn attach_replica(&mut self, need: &ReadNeed) -> Result<bool, AttachError> {
        let config = self.shared.config.load_full();
        let stale_after = config.measurement_stale_after();
        let topology = self.shared.topology.load_full();
        if let Some(attached) = &self.servers[REPLICA] {
            let node = attached.conn.conn.node;
            if self.verdict(&topology, stale_after, node, need) == Some(Verdict::Serves) {
                return Ok(true);
            }
        }
        // The session's scratch list (no allocation per read); `behind` is
        // only filled while a replica lags.
        let mut serving = std::mem::take(&mut self.scratch_candidates);
        serving.clear();
        let mut behind = Vec::new();
        for node in (0..topology.nodes.len()).filter(|&n| topology.replica_live(n, stale_after)) {
            let candidate = Candidate {
                node,
                weight: config.nodes.get(node).map_or(1, |n| n.weight),
                outstanding: self.shared.outstanding(node),
            };
            match self.verdict(&topology, stale_after, node, need) {
                Some(Verdict::Serves) => serving.push(candidate),
                Some(Verdict::Behind { min_lsn }) => behind.push((candidate, min_lsn)),
                _ => {}
            }
        }
        let attached = self.attach_one_of(&serving).await;
        self.scratch_candidates = serving;
        if attached {
            return Ok(true);
        }
        if let Some(&(_, min_lsn)) = behind.first() {
            let current = self.servers[REPLICA].as_ref().map(|a| a.conn.conn.node);
            let attached_is_behind = behind.iter().any(|(c, _)| Some(c.node) == current);
            let candidates: Vec<Candidate> = behind.into_iter().map(|(c, _)| c).collect();
            if attached_is_behind || self.attach_one_of(&candidates).await {
                return Ok(self.wait_for_replay(min_lsn).await);
            }
            return Ok(false);
        }
        if need.min_lsn.is_some() {
            return Ok(false);
        }
        match config.monitor.no_replica {
            NoReplica::Primary => Ok(false),
            NoReplica::Error => Err(AttachError {
                code: sqlstate::CANNOT_CONNECT_NOW,
                message: format!(
                    "pgrouter: no replica is within the lag limits (max_replica_lag {:?}, max_replica_lag_bytes {}) and no_replica = \"error\": {}",
                    need.max_staleness.unwrap_or(config.monitor.max_replica_lag),
                    config.monitor.max_replica_lag_bytes,
                    topology.describe_replicas()
                ),
            }),
        }
    }

    /// Attaches one of `candidates` (chosen by the balance strategy) in place
    /// of the current replica connection; false when none could be had.
    async fn attach_one_of(&mut self, candidates: &[Candidate]) -> bool {
        let config = self.shared.config.load_full();
        let turn = self.shared.replica_turn.fetch_add(1, Ordering::Relaxed);
        // Only the random strategy draws a number (thread-local generator).
        let strategy = config.balance.strategy;
        let random = match strategy {
            BalanceStrategy::Random => rand::random(),
            _ => 0,
        };
        let Some(node) = select::choose(candidates, strategy, turn, random) else {
            return false;
        };
        self.detach(REPLICA).await;
        self.release_other_if_idle(REPLICA).await;
        match self.checkout(node).await {
            Ok(conn) => {
                self.servers[REPLICA] = Some(attach(conn));
                true
            }
            Err(err) => {
                tracing::warn!(%err, "replica connection failed");
                false
            }
        }
    }

    /// Checks out a connection to `node`. A node that cannot be reached is marked
    /// down at once, not at the next poll.
    async fn checkout(&mut self, node: usize) -> Result<PooledConn, PoolError> {
        // The config guard is dropped before the checkout waits.
        let (pool, settings) = {
            let config = self.shared.config.load();
            self.pool_handles.refresh(&config);
            let pool = match self.pool_handles.get(node) {
                Some(pool) => pool.clone(),
                None => {
                    let pool = self.pool_handle(&config, node)?;
                    self.pool_handles.put(node, pool.clone());
                    pool
                }
            };
            (pool, PoolSettings::from_config(&config))
        };
        let result = self
            .shared
            .pools
            .checkout(&pool, &self.login, settings)
            .await;
        if let Err(PoolError::Backend(
            BackendError::Connect { .. } | BackendError::Io { .. } | BackendError::Timeout { .. },
        )) = &result
        {
            self.shared.report_down(node);
        }
        result
    }

    /// Looks up the pool of `node` for this session's login (once per node
    /// and configuration: see `PoolHandles`).
    fn pool_handle(&self, config: &Config, node: usize) -> Result<PoolHandle, PoolError> {
        let n = config.nodes.get(node).ok_or_else(|| unconfigured(node))?;
        let key = PoolKey {
            node,
            host: n.host.clone(),
            port: n.port,
            user: self.login.user.clone(),
            database: self.login.database.clone(),
            params: self.login.params.clone(),
        };
        let addr = NodeAddr {
            host: n.host.clone(),
            port: n.port,
            name: n.display_name(),
        };
        Ok(self.shared.pools.handle(&key, addr, config.pool.pool_size))
    }
}

fn unconfigured(node: usize) -> PoolError {
    PoolError::Backend(BackendError::Protocol {
        addr: format!("node #{node}"),
        problem: "node no longer configured".into(),
    })
}

/// The session's pool handles by node, valid for one configuration snapshot:
/// a reload may move a node position to another server, which is another pool.
#[derive(Default)]
pub(super) struct PoolHandles {
    config: Option<Arc<Config>>,
    by_node: Vec<Option<PoolHandle>>,
}

impl PoolHandles {
    /// Forgets every handle if the configuration changed since they were made.
    fn refresh(&mut self, config: &Arc<Config>) {
        let current = self
            .config
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, config));
        if !current {
            self.config = Some(config.clone());
            self.by_node.clear();
        }
    }

    fn get(&self, node: usize) -> Option<&PoolHandle> {
        self.by_node.get(node).and_then(Option::as_ref)
    }

    fn put(&mut self, node: usize, handle: PoolHandle) {
        if self.by_node.len() <= node {
            self.by_node.resize(node + 1, None);
        }
        self.by_node[node] = Some(handle);
    }
}
