//! Bounded cache of classifications keyed by statement text.
//!
//! Shared by every session (`&self` methods, `Send + Sync`). To keep sessions
//! from contending, it is split into [`SHARDS`] independently locked shards;
//! a lock is held only for a map lookup or insert, never while classifying.
//!
//! Keys are a keyed SipHash (std's `RandomState`) of the text. SipHash costs a
//! few tens of nanoseconds on a typical statement, negligible next to a parse
//! and of the same order as the full-text comparison every hit does anyway;
//! being keyed per process, clients cannot craft texts that collide in order
//! to thrash one shard. A hit compares the full text, so a hash collision can
//! never return another statement's decision: the colliding entry is replaced.
//!
//! Memory bound: at most `capacity` rounded up to a multiple of [`SHARDS`]
//! entries, each holding its text (at most [`MAX_CACHED_LEN`] bytes; longer
//! texts are classified every time and never stored, as they are rarely
//! repeated and would dominate memory) plus about 100 bytes of bookkeeping.
//! Eviction is FIFO per shard: cheap, and good enough since applications
//! repeat a small set of statements (prepared or not).
//!
//! Decisions depend on the [`FunctionPolicy`], which [`ClassifierCache::set_policy`]
//! swaps through `arc-swap` (a miss reads it without a lock; a hit does not
//! read it at all). Swapping bumps a generation and empties the cache; a miss
//! classified under an older generation is not stored, so no decision made
//! with a replaced policy can outlive the swap.
//!
//! Plain SELECTs are keyed by their text with literals replaced
//! ([`super::normalize`]): a workload that inlines its constants then hits
//! the cache instead of tokenizing every statement.
//!
//! This module must not classify anything itself: it calls [`classify_with`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::normalize::literal_key;
use super::{Decision, FunctionPolicy, classify_with};

thread_local! {
    /// Where [`ClassifierCache::classify`] builds a text's literal key.
    static LITERAL_KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Number of independently locked shards.
pub const SHARDS: usize = 16;

/// Texts longer than this (in bytes) are never cached.
pub const MAX_CACHED_LEN: usize = 8 * 1024;

/// Capacity of [`ClassifierCache::default`].
pub const DEFAULT_CAPACITY: usize = 4096;

/// Counters for the admin console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries currently stored.
    pub entries: usize,
    /// Maximum number of entries (capacity rounded up to a multiple of `SHARDS`).
    pub capacity: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to classify (texts too long to cache are not counted).
    pub misses: u64,
}

/// A sharded, bounded cache in front of [`classify_with`] and the current policy.
pub struct ClassifierCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    policy: ArcSwap<FunctionPolicy>,
    /// Bumped by every policy swap, after the swap.
    generation: AtomicU64,
}

/// The map is keyed by the text's hash, which is already well mixed: it is
/// used as is ([`PassThrough`]) instead of being hashed a second time.
#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<PassThrough>>,
    /// Insertion order of the keys in `map`, each exactly once.
    fifo: VecDeque<u64>,
    hits: u64,
    misses: u64,
}

struct Entry {
    text: Box<str>,
    decision: Decision,
}

impl ClassifierCache {
    /// A cache holding at most about `capacity` decisions (see the module
    /// docs for the exact bound). `capacity == 0` disables caching. The
    /// policy starts empty (no catalog): the behaviour of [`super::classify`].
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
            policy: ArcSwap::from_pointee(FunctionPolicy::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the function policy for every later classification and
    /// forgets every decision made with the old one.
    pub fn set_policy(&self, policy: Arc<FunctionPolicy>) {
        self.policy.store(policy);
        // Release: a miss that reads the new generation also sees the new policy.
        self.generation.fetch_add(1, Ordering::Release);
        self.clear();
    }

    /// The policy in use.
    pub fn policy(&self) -> Arc<FunctionPolicy> {
        self.policy.load_full()
    }

    /// Same as [`classify_with`] and the current policy, answered from the
    /// cache when the exact text was seen.
    ///
    /// A plain SELECT is keyed with its literals replaced (see
    /// [`super::normalize`]), so `... WHERE id = 1` and `... WHERE id = 2`
    /// share one entry; other texts are keyed by their exact text.
    pub fn classify(&self, sql: &str) -> Decision {
        if self.per_shard == 0 || sql.len() > MAX_CACHED_LEN {
            return classify_with(sql, &self.policy.load());
        }
        LITERAL_KEY.with(|buffer| {
            // A buffer per thread: computing a key allocates nothing.
            let mut buffer = buffer.borrow_mut();
            let key = if literal_key(sql, &mut buffer) {
                std::str::from_utf8(&buffer).unwrap_or(sql)
            } else {
                sql
            };
            self.classify_keyed(sql, key, self.hasher.hash_one(key))
        })
    }

    /// The body of [`Self::classify`] with the hash given (tests force collisions).
    #[cfg(test)]
    pub(super) fn classify_hashed(&self, sql: &str, hash: u64) -> Decision {
        self.classify_keyed(sql, sql, hash)
    }

    /// Looks `key` up; on a miss classifies `sql` and stores the decision under `key`.
    fn classify_keyed(&self, sql: &str, key: &str, hash: u64) -> Decision {
        let shard = &self.shards[shard_index(hash)];
        {
            let mut shard = lock(shard);
            let hit = shard
                .map
                .get(&hash)
                .filter(|e| *e.text == *key)
                .map(|e| e.decision);
            match hit {
                Some(decision) => {
                    shard.hits += 1;
                    return decision;
                }
                None => shard.misses += 1,
            }
        }
        // Order: generation before policy, so a swap in between is noticed below.
        let generation = self.generation.load(Ordering::Acquire);
        let decision = classify_with(sql, &self.policy.load());
        let entry = Entry {
            text: key.into(),
            decision,
        };
        let mut shard = lock(shard);
        // Under the shard lock: `set_policy` bumps the generation before it
        // clears this shard, so either this insert is refused here or the
        // clear removes it.
        if self.generation.load(Ordering::Acquire) == generation {
            shard.insert(hash, entry, self.per_shard);
        }
        decision
    }

    /// Entries, capacity and hit counters, summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity: self.capacity(),
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stats.entries += shard.map.len();
            stats.hits += shard.hits;
            stats.misses += shard.misses;
        }
        stats
    }

    /// Number of decisions stored.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no decision is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of decisions stored.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Forgets every decision (counters are kept).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            lock(shard).clear();
        }
    }
}

impl Default for ClassifierCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for ClassifierCache {
    /// Does not print the cached statements (they may hold literal values).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifierCache")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl Shard {
    fn insert(&mut self, hash: u64, entry: Entry, bound: usize) {
        if let Some(old) = self.map.get_mut(&hash) {
            // Same text inserted by a concurrent miss, or a hash collision:
            // the newest wins, its position in `fifo` is kept.
            *old = entry;
            return;
        }
        while self.map.len() >= bound {
            match self.fifo.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => {
                    // Unreachable while `fifo` mirrors `map`; never loop forever.
                    self.map.clear();
                    break;
                }
            }
        }
        self.map.insert(hash, entry);
        self.fifo.push_back(hash);
    }

    fn clear(&mut self) {
        self.map.clear();
        self.fifo.clear();
    }
}

/// Locks a shard. A panic while it was held (not expected: nothing in the
/// critical sections panics) may have left `map` and `fifo` out of step, so a
/// poisoned shard is emptied and used again instead of failing every session.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    match shard.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            guard.clear();
            shard.clear_poison();
            guard
        }
    }
}

/// Picks the shard from bits the maps do not use for bucket selection.
fn shard_index(hash: u64) -> usize {
    // `SHARDS` is a power of two; truncating to usize after the shift is intended.
    ((hash >> 32) as usize) % SHARDS
}

/// A `Hasher` that passes an already mixed `u64` key through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
