//! Choosing among the replicas that may take reads. Pure code: the caller passes
//! each candidate's weight and statements in flight.

use crate::config::BalanceStrategy;

/// A replica that may take reads now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub node: usize,
    /// Relative share of reads (config `weight`); 0 takes none.
    pub weight: u32,
    /// Statements running on it right now, through this router.
    pub outstanding: usize,
}

/// Picks a node. `turn` rotates round robin and breaks ties; `random` is any
/// random number (used by the random strategy).
pub fn choose(
    candidates: &[Candidate],
    strategy: BalanceStrategy,
    turn: usize,
    random: u64,
) -> Option<usize> {
    // Iterators, not collected lists: this runs for every read in transaction
    // pooling, and allocating here showed up in profiles.
    let weighted = || candidates.iter().filter(|c| c.weight > 0);
    let total: u64 = weighted().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    match strategy {
        BalanceStrategy::LeastOutstanding => {
            // Fewest in flight per unit of weight: compare a/wa < b/wb as a*wb < b*wa.
            let load = |c: &Candidate| (c.outstanding as u128, u128::from(c.weight));
            let best = weighted()
                .map(load)
                .min_by(|(a, wa), (b, wb)| (a * wb).cmp(&(b * wa)))?;
            let tied = || {
                weighted().filter(move |c| {
                    let (o, w) = load(c);
                    o * best.1 == best.0 * w
                })
            };
            let count = tied().count();
            tied().nth(turn % count.max(1)).map(|c| c.node)
        }
        BalanceStrategy::RoundRobin => pick_by_weight(weighted(), turn as u64 % total),
        BalanceStrategy::Random => pick_by_weight(weighted(), random % total),
    }
}

/// The candidate whose weight band contains `point` (0 <= point < total weight).
fn pick_by_weight<'a>(
    candidates: impl Iterator<Item = &'a Candidate>,
    mut point: u64,
) -> Option<usize> {
    for candidate in candidates {
        let weight = u64::from(candidate.weight);
        if point < weight {
            return Some(candidate.node);
        }
        point -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: usize, weight: u32, outstanding: usize) -> Candidate {
        Candidate {
            node,
            weight,
            outstanding,
        }
    }

    #[test]
    fn least_outstanding_prefers_idle_and_respects_weight() {
        let nodes = [c(1, 1, 3), c(2, 1, 1)];
        assert_eq!(
            choose(&nodes, BalanceStrategy::LeastOutstanding, 0, 0),
            Some(2)
        );
        // Twice the weight carries twice the load before it looks busier.
        let nodes = [c(1, 2, 2), c(2, 1, 2)];
        assert_eq!(
            choose(&nodes, BalanceStrategy::LeastOutstanding, 0, 0),
            Some(1)
        );
        // Ties rotate.
        let nodes = [c(1, 1, 0), c(2, 1, 0)];
        assert_eq!(
            choose(&nodes, BalanceStrategy::LeastOutstanding, 0, 0),
            Some(1)
        );
        assert_eq!(
            choose(&nodes, BalanceStrategy::LeastOutstanding, 1, 0),
            Some(2)
        );
    }

    #[test]
    fn round_robin_and_random_follow_weights() {
        let nodes = [c(1, 3, 0), c(2, 1, 0), c(3, 0, 0)];
        let picks: Vec<_> = (0..8)
            .map(|t| choose(&nodes, BalanceStrategy::RoundRobin, t, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 1, 1, 2, 1, 1, 1, 2]);
        let random: Vec<_> = (0..4u64)
            .map(|r| choose(&nodes, BalanceStrategy::Random, 0, r).unwrap())
            .collect();
        assert_eq!(random, vec![1, 1, 1, 2]);
        assert_eq!(
            choose(&[c(3, 0, 0)], BalanceStrategy::Random, 0, 0),
            None,
            "weight 0 takes no reads"
        );
        assert_eq!(choose(&[], BalanceStrategy::RoundRobin, 0, 0), None);
    }
}
