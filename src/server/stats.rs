//! The router's counters (statements routed per node, clients, re-runs):
//! for the demo's status line and the admin console. Relaxed atomics only:
//! they must not order anything on the hot path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Statements routed per node, for status lines and the admin console.
#[derive(Debug)]
pub struct Stats {
    routed: Vec<AtomicU64>,
    pub clients: AtomicUsize,
    /// Statements a replica refused as writes, re-run on the primary.
    misrouted: AtomicU64,
    /// Reads re-run because their replica connection died before answering.
    read_retries: AtomicU64,
    /// Seconds since `started` when a misroute was last logged (rate limit).
    misroute_logged_at: AtomicU64,
    started: std::time::Instant,
}

impl Stats {
    pub(super) fn new(nodes: usize) -> Self {
        Self {
            routed: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            clients: AtomicUsize::new(0),
            misrouted: AtomicU64::new(0),
            read_retries: AtomicU64::new(0),
            misroute_logged_at: AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn count_misrouted(&self) {
        self.misrouted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_read_retry(&self) {
        self.read_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// At most one misroute log line per second, so a hot misclassified statement
    /// cannot flood the log.
    pub(crate) fn may_log_misroute(&self) -> bool {
        let now = self.started.elapsed().as_secs();
        let last = self.misroute_logged_at.load(Ordering::Relaxed);
        if last != u64::MAX && last >= now {
            return false;
        }
        self.misroute_logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// How long this router has run.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Statements a replica refused and the primary re-ran.
    pub fn misrouted(&self) -> u64 {
        self.misrouted.load(Ordering::Relaxed)
    }

    /// Reads re-run after their replica connection died.
    pub fn read_retries(&self) -> u64 {
        self.read_retries.load(Ordering::Relaxed)
    }

    pub(crate) fn count_routed(&self, node: usize) {
        if let Some(counter) = self.routed.get(node) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Statements routed to each node so far.
    pub fn routed(&self) -> Vec<u64> {
        self.routed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}
