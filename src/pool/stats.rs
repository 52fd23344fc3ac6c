//! What the admin console's SHOW POOLS reads of the pools: each pool's
//! counters, and the guard that counts a checkout as waiting. Only the slow
//! path (a checkout that must wait) touches these counters.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{PoolKey, Pools, Slot};

impl Pools {
    /// Every pool's state now, by node, user and database (the admin console's
    /// `SHOW POOLS`). Counts are read one by one, without stopping checkouts.
    pub fn stats(&self) -> Vec<PoolStats> {
        // Copied out first, so no checkout waits on the map's lock while each
        // pool's idle list is locked in turn below.
        let slots: Vec<(PoolKey, Arc<Slot>)> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        let mut stats: Vec<PoolStats> = slots
            .into_iter()
            .map(|(key, slot)| PoolStats {
                node: key.node,
                node_name: slot.addr.name.clone(),
                user: key.user,
                database: key.database,
                params: key.params,
                size: slot.size,
                in_use: slot.size.saturating_sub(slot.permits.available_permits()),
                idle: slot.idle().len(),
                waiting: slot.waiting.load(Ordering::Relaxed),
                timeouts: slot.timeouts.load(Ordering::Relaxed),
            })
            .collect();
        stats.sort_by(|a, b| {
            (a.node.cmp(&b.node))
                .then_with(|| a.user.cmp(&b.user))
                .then_with(|| a.database.cmp(&b.database))
                .then_with(|| a.params.cmp(&b.params))
        });
        stats
    }
}

/// One pool's state, for the admin console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// The node's position in the config, and its name.
    pub node: usize,
    pub node_name: String,
    /// The server login and database.
    pub user: String,
    pub database: String,
    /// The startup parameters its connections were opened with (each
    /// combination has a pool of its own).
    pub params: Vec<(String, String)>,
    /// Most connections it may hold (`pool_size` when it was made).
    pub size: usize,
    /// Connections checked out by sessions, or being opened for one.
    pub in_use: usize,
    /// Open connections waiting for a session.
    pub idle: usize,
    /// Sessions waiting for a place now.
    pub waiting: usize,
    /// Checkouts that gave up at `checkout_timeout` (53300) so far.
    pub timeouts: u64,
}

/// Counts a checkout as waiting while it lives, however the wait ends
/// (a place, the timeout, or the session going away mid-wait).
pub(super) struct Waiting<'a>(&'a Slot);

impl<'a> Waiting<'a> {
    pub(super) fn new(slot: &'a Slot) -> Self {
        slot.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(slot)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}
