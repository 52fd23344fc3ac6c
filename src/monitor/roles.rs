//! Which node is the primary, decided from measurements with the timeline as a
//! fence: a node that reports "not in recovery" but sits on an older timeline than
//! one already seen (a demoted primary, or one back from a crash after a failover)
//! never receives writes again until it is a primary on the newest timeline.
//! Pure code: no I/O.

use super::NodeState;

/// The primary among `nodes` (up, not in recovery, on a timeline at least
/// `newest_timeline`), preferring the highest timeline, then the highest WAL
/// position. `None` while no node qualifies (mid-failover).
pub fn choose_primary(nodes: &[NodeState], newest_timeline: u32) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.up && n.in_recovery == Some(false))
        .filter(|(_, n)| n.timeline.unwrap_or(0) >= newest_timeline)
        .max_by_key(|(_, n)| (n.timeline.unwrap_or(0), n.lsn.unwrap_or(0)))
        .map(|(i, _)| i)
}

/// The newest timeline any node reports (primaries and replicas alike: a replica
/// streaming from a promoted node has already moved to its timeline).
pub fn newest_timeline(nodes: &[NodeState], previous: u32) -> u32 {
    nodes
        .iter()
        .filter(|n| n.up)
        .filter_map(|n| n.timeline)
        .fold(previous, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeRole;

    fn node(up: bool, in_recovery: bool, timeline: u32, lsn: u64) -> NodeState {
        NodeState {
            up,
            in_recovery: Some(in_recovery),
            timeline: Some(timeline),
            lsn: Some(lsn),
            ..NodeState::unmeasured("n", "h", 1, NodeRole::Replica)
        }
    }

    #[test]
    fn the_newest_timeline_wins_and_old_primaries_are_fenced() {
        let nodes = vec![
            node(true, false, 1, 900),
            node(true, false, 2, 100),
            node(true, true, 2, 100),
        ];
        let newest = newest_timeline(&nodes, 1);
        assert_eq!(newest, 2);
        assert_eq!(choose_primary(&nodes, newest), Some(1));
        // The old primary alone on timeline 1 after timeline 2 was seen: no primary.
        assert_eq!(choose_primary(&nodes[..1], 2), None);
    }

    #[test]
    fn no_primary_while_all_are_replicas_or_down() {
        let nodes = vec![node(false, false, 1, 5), node(true, true, 1, 5)];
        assert_eq!(choose_primary(&nodes, 1), None);
    }
}
