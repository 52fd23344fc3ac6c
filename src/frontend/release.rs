//! Giving server connections back: to their pool when clean (with the reset the
//! pool mode needs), else closed; and, in transaction pooling, as soon as the
//! session is between transactions. It must not decide routes.

use super::session::{PRIMARY, REPLICA, Session};
use crate::config::PoolMode;
use crate::pool::{PooledConn, Release};
use crate::protocol::tx_status;

impl Session {
    /// Gives a connection back: to its pool when it is clean, else closed.
    pub(super) async fn detach(&mut self, slot: usize) {
        if let Some((conn, how)) = self.unhook(slot) {
            conn.release(how).await;
        }
    }

    /// Takes `slot`'s connection off the session. Returns it with the reset it
    /// needs when it may be reused; one that may not is closed here.
    fn unhook(&mut self, slot: usize) -> Option<(PooledConn, Release)> {
        let attached = self.servers[slot].take()?;
        if self.active == Some(slot) {
            self.set_active(None);
        }
        if slot == PRIMARY && !attached.is_idle() {
            // A write's ReadyForQuery held for its commit position, whose
            // answer is now never coming (the primary moved): the write is
            // done, its position unknown, so reads need the primary until the
            // next capture (`uncaptured` stays set).
            if let Some((ready, _)) = self.held_ready.take() {
                self.out.extend_from_slice(&ready.raw);
            }
        }
        // A connection with answers outstanding, a batch not yet closed by Sync
        // (after an error the server ignores everything up to Sync, so a reset would
        // hang), or an open transaction is closed instead of reused.
        let reusable = attached.is_idle()
            && self.open != Some(slot)
            && attached.conn.conn.tx_status == tx_status::IDLE;
        if self.open == Some(slot) {
            self.open = None;
        }
        if !reusable {
            return None;
        }
        // A pinned session left state DISCARD ALL must clear (temp tables,
        // LISTEN, advisory locks, held cursors) whatever the pool mode.
        let how = match self.pool_mode {
            PoolMode::Transaction if !self.pinned => Release::AsIs,
            _ => Release::Reset,
        };
        Some((attached.conn, how))
    }

    /// Transaction pooling: before waiting for a connection of one kind, gives
    /// back an idle one of the other kind, so two sessions never each hold one
    /// kind while waiting for the other (a pool deadlock until checkout_timeout).
    pub(super) async fn release_other_if_idle(&mut self, wanted: usize) {
        let other = if wanted == PRIMARY { REPLICA } else { PRIMARY };
        let idle = self.servers[other]
            .as_ref()
            .is_some_and(|a| a.is_idle() && a.conn.conn.tx_status == tx_status::IDLE);
        let releasable = self.pool_mode == PoolMode::Transaction
            && !self.pinned
            && idle
            && self.tx_status == tx_status::IDLE
            && !self.tx_pending
            && self.open != Some(other)
            && self.active != Some(other)
            && self.retry.as_ref().is_none_or(|r| r.slot != other)
            && (other == REPLICA || self.held_ready.is_none());
        if releasable {
            self.detach(other).await;
        }
    }

    /// Transaction pooling: gives back every server connection the session does
    /// not need right now, i.e. when it is between transactions with nothing in
    /// flight, queued or held. Pinned sessions keep theirs.
    /// Needs no future: in transaction pooling an unpinned session's
    /// connections go back as they are (see `unhook`).
    pub(super) fn release_idle(&mut self) {
        if self.pool_mode != PoolMode::Transaction
            || self.pinned
            || self.tx_status != tx_status::IDLE
            || self.tx_pending
            || self.open.is_some()
            || self.active.is_some()
            || !self.ready.is_empty()
            || self.retry.is_some()
            || self.held_ready.is_some()
            || !self.batch.frames.is_empty()
        {
            return;
        }
        for slot in [PRIMARY, REPLICA] {
            let idle = self.servers[slot]
                .as_ref()
                .is_some_and(|a| a.is_idle() && a.conn.conn.tx_status == tx_status::IDLE);
            if idle {
                if let Some((conn, _as_is)) = self.unhook(slot) {
                    conn.release_as_is();
                }
            }
        }
    }
}
