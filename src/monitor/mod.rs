//! Health and lag of every node, measured continuously over one tokio-postgres
//! connection per node and published as one immutable [`Topology`] snapshot
//! through `arc-swap`, which sessions read without locks.
//!
//! It must not route or block the data path: sessions only ever `load()` the
//! latest snapshot. Snapshots are replaced whole, never mutated; the one write from
//! outside (a session reporting a dead node) also swaps in a new snapshot.

pub mod catalog;
pub mod lag;
pub(crate) mod poll;
pub mod roles;
pub mod select;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, NodeRole};

pub(crate) use poll::spawn_monitor;

/// LSN parsing lives with the cluster helpers and is shared here.
pub use crate::cluster::parse_lsn;

/// What was last measured on one node.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub configured_role: NodeRole,
    /// Reachable at the last poll, and no session saw its connections fail since.
    pub up: bool,
    /// `pg_is_in_recovery()` at the last successful poll.
    pub in_recovery: Option<bool>,
    /// Primary: `pg_current_wal_lsn()`; replica: `pg_last_wal_replay_lsn()`.
    pub lsn: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// Replica: whether WAL replay is paused.
    pub replay_paused: Option<bool>,
    /// Primary: its current timeline; replica: the timeline it receives.
    pub timeline: Option<u32>,
    /// Primary LSN minus this node's replay LSN (replicas only).
    pub lag_bytes: Option<u64>,
    /// How long ago the primary first passed this replica's replay LSN.
    pub lag_time: Option<Duration>,
    /// Within the lag limits (with hysteresis): may take reads.
    pub admitted: bool,
    /// When the last successful measurement finished.
    pub measured_at: Option<Instant>,
    /// The last error, for status output.
    pub error: Option<String>,
    /// The server's WAL page and segment sizes, read at each poll.
    pub wal_layout: Option<WalLayout>,
}

/// How a server lays out its WAL: every page starts with a header, longer on
/// a segment's first page, and no record ends inside one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalLayout {
    /// `wal_block_size`, in bytes.
    pub page: u64,
    /// `wal_segment_size`, in bytes.
    pub segment: u64,
}

impl NodeState {
    /// A node nothing is known about yet.
    pub fn unmeasured(name: &str, host: &str, port: u16, role: NodeRole) -> NodeState {
        NodeState {
            name: name.to_owned(),
            host: host.to_owned(),
            port,
            configured_role: role,
            up: true,
            in_recovery: None,
            lsn: None,
            receive_lsn: None,
            replay_paused: None,
            timeline: None,
            lag_bytes: None,
            lag_time: None,
            admitted: false,
            measured_at: None,
            error: None,
            wal_layout: None,
        }
    }
}

/// One immutable view of the cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<NodeState>,
    /// Index of the node acting as primary: the measured one, or the configured
    /// primary until a measurement says otherwise.
    pub primary: usize,
    /// False while no node qualifies as primary (mid-failover): writes wait.
    pub primary_available: bool,
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
            .map(|n| NodeState::unmeasured(&n.display_name(), &n.host, n.port, n.role))
            .collect();
        Topology {
            nodes,
            primary: config.primary_index(),
            primary_available: true,
            generation: 0,
        }
    }

    /// Whether `node` may take reads now: up, measured recently as a replica within
    /// its lag limits. Unmeasured replicas get no reads.
    pub fn replica_eligible(&self, node: usize, stale_after: Duration) -> bool {
        self.replica_live(node, stale_after) && self.nodes.get(node).is_some_and(|s| s.admitted)
    }

    /// Whether `node` is a replica that is up and measured recently, whatever
    /// its lag (a read with its own staleness budget judges the lag itself).
    pub fn replica_live(&self, node: usize, stale_after: Duration) -> bool {
        let Some(state) = self.nodes.get(node) else {
            return false;
        };
        node != self.primary
            && state.up
            && state.in_recovery == Some(true)
            && state
                .measured_at
                .is_some_and(|t| t.elapsed() <= stale_after)
    }

    /// The replicas that may take reads now.
    pub fn eligible_replicas(&self, stale_after: Duration) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(move |&i| self.replica_eligible(i, stale_after))
    }

    /// Why no replica can take reads, for the client's error message.
    pub fn describe_replicas(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.primary)
            .map(|(_, n)| match (n.up, n.lag_bytes, n.lag_time) {
                (false, _, _) => format!("{}: down", n.name),
                (true, Some(bytes), Some(time)) => {
                    format!("{}: lag {} bytes, {} ms", n.name, bytes, time.as_millis())
                }
                _ => format!("{}: not measured", n.name),
            })
            .collect();
        parts.join("; ")
    }

    /// A copy with `node` marked down (a session saw its connection fail).
    pub fn with_node_down(&self, node: usize) -> Topology {
        let mut next = self.clone();
        if let Some(state) = next.nodes.get_mut(node) {
            state.up = false;
            state.admitted = false;
        }
        if node == next.primary {
            next.primary_available = false;
        }
        next.generation += 1;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(admitted: bool, up: bool) -> NodeState {
        NodeState {
            up,
            admitted,
            in_recovery: Some(true),
            measured_at: Some(Instant::now()),
            ..NodeState::unmeasured("r", "h", 1, NodeRole::Replica)
        }
    }

    #[test]
    fn picks_only_admitted_live_replicas() {
        let mut primary = replica(true, true);
        primary.in_recovery = Some(false);
        let topo = Topology {
            nodes: vec![
                primary,
                replica(true, true),
                replica(false, true),
                replica(true, false),
            ],
            primary: 0,
            primary_available: true,
            generation: 1,
        };
        let stale = Duration::from_secs(1);
        assert_eq!(topo.eligible_replicas(stale).collect::<Vec<_>>(), vec![1]);
        let down = topo.with_node_down(1);
        assert_eq!(down.eligible_replicas(stale).count(), 0);
        assert!(down.describe_replicas().contains("down"));
    }
}
