//! Causal keys: `/* pgrouter: key=user:42 */` on a write records that key's
//! commit position; a later read with the same key, on any connection of this
//! router, needs a node that has replayed it.
//!
//! Bounded and expiring: an entry lives `key_ttl` after its last write, and at
//! most `max_keys` are kept (spread over shards, oldest first out). A key
//! pushed out early must not lose its guarantee, so each shard keeps the
//! highest position it evicted (with its write time) and answers that for any
//! key it does not know, until that too is older than `key_ttl`. That floor is
//! conservative (it may send a read to the primary that did not need it) and
//! never too low.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    entries: HashMap<Box<str>, (u64, Instant)>,
    /// Keys in order of first insertion, for eviction.
    order: VecDeque<Box<str>>,
    /// Highest position evicted before its time, and when it was written.
    evicted: Option<(u64, Instant)>,
}

/// The router-wide map of causal keys to their last write's commit position.
pub struct CausalKeys {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl Default for CausalKeys {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl CausalKeys {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update; its data is
        // still a valid map, so keep using it.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records a committed write at `lsn` under `key`.
    pub fn record(&self, key: &str, lsn: u64, now: Instant, max_keys: usize) {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        let mut shard = self.shard(key);
        if let Some(entry) = shard.entries.get_mut(key) {
            *entry = (entry.0.max(lsn), now);
            return;
        }
        while shard.entries.len() >= per_shard {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            if let Some(gone) = shard.entries.remove(&oldest) {
                shard.evicted = Some(match shard.evicted {
                    Some((lsn, at)) => (lsn.max(gone.0), at.max(gone.1)),
                    None => gone,
                });
            }
        }
        shard.entries.insert(key.into(), (lsn, now));
        shard.order.push_back(key.into());
    }

    /// The position a read with `key` must see, if any write under it is recent.
    pub fn floor(&self, key: &str, now: Instant, ttl: Duration) -> Option<u64> {
        let mut shard = self.shard(key);
        let fresh =
            |(lsn, at): (u64, Instant)| (now.saturating_duration_since(at) < ttl).then_some(lsn);
        match shard.entries.get(key).copied() {
            Some(entry) => {
                let lsn = fresh(entry);
                if lsn.is_none() {
                    shard.entries.remove(key);
                    shard.order.retain(|k| &**k != key);
                }
                lsn
            }
            None => shard.evicted.and_then(fresh),
        }
    }

    /// How many keys are remembered (for the admin console and tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn remembers_the_highest_position_per_key() {
        let keys = CausalKeys::default();
        let now = Instant::now();
        keys.record("user:1", 100, now, 1000);
        keys.record("user:1", 50, now, 1000);
        assert_eq!(keys.floor("user:1", now, TTL), Some(100));
        assert_eq!(keys.floor("user:2", now, TTL), None);
    }

    #[test]
    fn entries_expire() {
        let keys = CausalKeys::default();
        let then = Instant::now();
        keys.record("k", 7, then, 1000);
        assert_eq!(keys.floor("k", then + TTL, TTL), None);
        assert!(keys.is_empty());
    }

    #[test]
    fn evicted_keys_keep_a_conservative_floor() {
        let keys = CausalKeys::default();
        let now = Instant::now();
        // One entry per shard: every second key in a shard evicts the first.
        for i in 0..200u64 {
            keys.record(&format!("k{i}"), i, now, SHARDS);
        }
        assert!(keys.len() <= SHARDS);
        for i in 0..200u64 {
            let floor = keys.floor(&format!("k{i}"), now, TTL);
            assert!(
                floor.is_some_and(|f| f >= i),
                "key k{i} lost its floor: {floor:?}"
            );
        }
    }
}
