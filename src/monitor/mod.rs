//! Health and lag of every node, measured continuously over one tokio-postgres
//! connection per node and published as one immutable [`Topology`] snapshot
//! through `arc-swap`, which sessions read without locks.
//!
//! It must not route or block the data path: sessions only ever `load()` the
//! latest snapshot. Snapshots are replaced whole, never mutated.

pub(crate) mod poll;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, NodeRole};

pub use poll::spawn_monitor;

/// What was last measured on one node.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub configured_role: NodeRole,
    /// Reachable at the last poll.
    pub up: bool,
    /// `pg_is_in_recovery()` at the last successful poll.
    pub in_recovery: Option<bool>,
    /// Primary: `pg_current_wal_lsn()`; replica: `pg_last_wal_replay_lsn()`.
    pub lsn: Option<u64>,
    /// Primary LSN minus this node's replay LSN (replicas only).
    pub lag_bytes: Option<u64>,
    /// When the last successful measurement finished.
    pub measured_at: Option<Instant>,
    /// The last error, for status output.
    pub error: Option<String>,
}

/// One immutable view of the cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<NodeState>,
    /// Index of the node acting as primary: the one measured not in recovery, or
    /// the configured primary until a measurement says otherwise.
    pub primary: usize,
    /// Snapshot counter, for tests and logs.
    pub generation: u64,
}

/// The shared, lock-free handle to the current topology.
pub type TopologyHandle = Arc<ArcSwap<Topology>>;

impl Topology {
    /// The snapshot before any measurement: configured roles, every node assumed up.
    pub fn from_config(config: &Config) -> Topology {
        let nodes = config
            .nodes
            .iter()
            .map(|n| NodeState {
                name: n.display_name(),
                host: n.host.clone(),
                port: n.port,
                configured_role: n.role,
                up: true,
                in_recovery: None,
                lsn: None,
                lag_bytes: None,
                measured_at: None,
                error: None,
            })
            .collect();
        Topology {
            nodes,
            primary: config.primary_index(),
            generation: 0,
        }
    }

    /// Whether `node` may take reads now: up, measured recently as a replica, and
    /// within the byte lag limit. Unmeasured replicas get no reads.
    pub fn replica_eligible(&self, node: usize, max_lag_bytes: u64, stale_after: Duration) -> bool {
        let Some(state) = self.nodes.get(node) else {
            return false;
        };
        node != self.primary
            && state.up
            && state.in_recovery == Some(true)
            && state
                .measured_at
                .is_some_and(|t| t.elapsed() <= stale_after)
            && state.lag_bytes.is_some_and(|lag| lag <= max_lag_bytes)
    }

    /// Picks a replica for reads, rotating by `turn` among the eligible ones.
    pub fn pick_replica(
        &self,
        turn: usize,
        max_lag_bytes: u64,
        stale_after: Duration,
    ) -> Option<usize> {
        let eligible =
            (0..self.nodes.len()).filter(|&i| self.replica_eligible(i, max_lag_bytes, stale_after));
        let count = eligible.clone().count();
        if count == 0 {
            return None;
        }
        eligible.clone().nth(turn % count)
    }
}

/// LSN parsing lives with the cluster helpers and is shared here.
pub use crate::cluster::parse_lsn;

#[cfg(test)]
mod tests {
    use super::*;

    fn node(in_recovery: bool, lag: u64, up: bool) -> NodeState {
        NodeState {
            name: String::new(),
            host: String::new(),
            port: 0,
            configured_role: NodeRole::Replica,
            up,
            in_recovery: Some(in_recovery),
            lsn: Some(0),
            lag_bytes: Some(lag),
            measured_at: Some(Instant::now()),
            error: None,
        }
    }

    #[test]
    fn picks_only_healthy_replicas() {
        let topo = Topology {
            nodes: vec![
                node(false, 0, true),
                node(true, 10, true),
                node(true, 1 << 30, true),
                node(true, 0, false),
            ],
            primary: 0,
            generation: 1,
        };
        let stale = Duration::from_secs(1);
        for turn in 0..5 {
            assert_eq!(topo.pick_replica(turn, 1 << 20, stale), Some(1));
        }
        assert_eq!(topo.pick_replica(0, 1, stale), None);
    }
}
