//! Read-your-writes in the session: learning each write's commit position,
//! telling the client (ParameterStatus `pgrouter.last_write_lsn`), and
//! judging whether a replica may serve a read (the rules are the
//! `consistency` module's; this file does the I/O they need).
//!
//! Commit position: after a batch on the primary that wrote and may end its
//! transaction, pgrouter pipelines `SELECT pg_current_wal_insert_lsn()` right
//! behind it on the same connection. The insert position after the commit is
//! never below the commit record's end, even with `synchronous_commit = off`.
//! No extra round trip: the client's ReadyForQuery is held until that answer
//! arrives right behind it, so a client that reads its token after the write
//! (libpq's PQparameterStatus) always sees the new one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::attached::Mark;
use super::batch::Batch;
use super::session::{PRIMARY, REPLICA, Session};
use crate::config::ConsistencyMode;
use crate::consistency::{self, ReadNeed, Verdict, format_lsn};
use crate::monitor::{NodeState, Topology, parse_lsn};
use crate::protocol::build::{self, to_server};
use crate::protocol::{Frame, tx_status};

/// The commit-position query. The insert position, not the write position:
/// with asynchronous commit the commit record may not be written yet.
const CAPTURE_SQL: &str = "SELECT pg_current_wal_insert_lsn()";
/// The server-side name of the prepared capture statement (client statement
/// names never collide with it: pgrouter renames those in transaction mode,
/// and a session-mode client would have to pick this very name).
const CAPTURE_STATEMENT: &str = "pgrouter:commit_lsn";
/// `pg_catalog.pg_current_wal_insert_lsn()`: built-in OIDs are fixed in
/// PostgreSQL's catalog (this one since 10). Should a server disagree, the call
/// fails once and pgrouter falls back to `CAPTURE_STATEMENT` for good.
const CAPTURE_FUNCTION_OID: u32 = 2852;
/// A replica's own replay position, when the snapshot is older than the write.
const REPLAY_SQL: &str = "SELECT pg_last_wal_replay_lsn()";
/// How long pgrouter waits for its own small queries before giving up on the
/// connection (it is closed: its state is unknown).
const OWN_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between fresh looks at a replica while `causal_wait` lasts.
const WAIT_STEP: Duration = Duration::from_millis(1);
/// Keys of one uncommitted transaction kept at most (the first ones).
const MAX_PENDING_KEYS: usize = 64;

impl Session {
    /// What a read batch needs from the node that serves it.
    pub(super) fn read_need(&self, batch: &Batch) -> ReadNeed {
        let config = self.shared.config.load();
        let now = Instant::now();
        let key_lsn = batch
            .freshness
            .key
            .as_deref()
            .and_then(|key| self.shared.keys.floor(key, now, config.consistency.key_ttl));
        consistency::read_need(
            &config.consistency,
            &self.freshness,
            &batch.freshness,
            key_lsn,
            now,
        )
    }

    /// How `node` stands for `need`, from the snapshot and what this session
    /// read itself; None when it is no live replica. A replica whose replay is
    /// paused is not worth a fresh look: it cannot have caught up.
    /// The caller loads the snapshot once for all the nodes it judges.
    pub(super) fn verdict(
        &self,
        topology: &Topology,
        stale_after: Duration,
        node: usize,
        need: &ReadNeed,
    ) -> Option<Verdict> {
        if !topology.replica_live(node, stale_after) {
            return None;
        }
        let state = topology.nodes.get(node)?;
        let admitted = topology.replica_eligible(node, stale_after);
        match consistency::judge(state, admitted, need) {
            Verdict::Behind { min_lsn } if self.seen_replay_of(node, state) >= min_lsn => {
                Some(Verdict::Serves)
            }
            Verdict::Behind { .. } if state.replay_paused == Some(true) => Some(Verdict::Refused),
            verdict => Some(verdict),
        }
    }

    /// What this session saw `node` replay, if `node` is still the server it
    /// asked: a reload may have put another server at that position.
    fn seen_replay_of(&self, node: usize, state: &NodeState) -> u64 {
        self.seen_replay
            .iter()
            .find(|(n, addr, _)| *n == node && is_addr_of(addr, &state.host, state.port))
            .map_or(0, |(_, _, lsn)| *lsn)
    }

    /// Whether the attached replica may serve `need` without asking it.
    pub(super) fn replica_serves(&self, need: &ReadNeed) -> bool {
        let stale_after = self.shared.config.load().measurement_stale_after();
        let topology = self.shared.topology.load();
        self.servers[REPLICA]
            .as_ref()
            .and_then(|a| self.verdict(&topology, stale_after, a.conn.conn.node, need))
            == Some(Verdict::Serves)
    }

    /// Asks the attached (idle) replica how far it has replayed; true when it
    /// is at or past `min_lsn`. A replica that fails to answer is let go.
    pub(super) async fn fresh_check(&mut self, min_lsn: u64) -> bool {
        let Some(attached) = self.servers[REPLICA].as_mut() else {
            return false;
        };
        if !attached.is_idle() || self.open == Some(REPLICA) {
            return false;
        }
        let node = attached.conn.conn.node;
        let addr = attached.conn.conn.addr().to_owned();
        let answer = tokio::time::timeout(
            OWN_QUERY_TIMEOUT,
            attached.conn.conn.query_value(REPLAY_SQL),
        )
        .await;
        let replayed = match answer {
            Ok(Ok(value)) => value.as_deref().and_then(parse_lsn),
            Ok(Err(err)) => {
                tracing::warn!(%err, "replica did not report its replay position");
                self.servers[REPLICA] = None;
                return false;
            }
            Err(_) => {
                tracing::warn!("replica did not report its replay position in time");
                self.servers[REPLICA] = None;
                return false;
            }
        };
        let Some(replayed) = replayed else {
            return false;
        };
        match self
            .seen_replay
            .iter_mut()
            .find(|(n, seen_addr, _)| *n == node && *seen_addr == addr)
        {
            Some(entry) => entry.2 = entry.2.max(replayed),
            None => {
                // Entries for a server no longer at this position are dead.
                self.seen_replay.retain(|(n, _, _)| *n != node);
                self.seen_replay.push((node, addr, replayed));
            }
        }
        replayed >= min_lsn
    }

    /// Fresh looks at the attached replica until it reaches `min_lsn` or
    /// `causal_wait` is over (one look when it is 0).
    pub(super) async fn wait_for_replay(&mut self, min_lsn: u64) -> bool {
        let wait = self.shared.config.load().consistency.causal_wait;
        let deadline = Instant::now() + wait;
        loop {
            if self.fresh_check(min_lsn).await {
                return true;
            }
            if Instant::now() >= deadline || self.servers[REPLICA].is_none() {
                return false;
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// Remembers that a batch that writes was sent to the primary.
    pub(super) fn note_write(&mut self, batch: &Batch) {
        let mode = self.freshness.mode(&self.shared.config.load().consistency);
        self.freshness.dirty = true;
        if mode == ConsistencyMode::Causal {
            self.freshness.uncaptured = true;
        }
        if let Some(key) = &batch.freshness.key {
            if self.pending_keys.len() < MAX_PENDING_KEYS {
                self.pending_keys.push(key.clone());
            }
        }
    }

    /// Whether a commit now would need its position learnt.
    pub(super) fn wants_capture(&self) -> bool {
        self.freshness.uncaptured || !self.pending_keys.is_empty()
    }

    /// Pipelines the commit-position query behind the client's last batch on
    /// the primary; that batch's ReadyForQuery waits for its answer.
    /// `hold`: the client's last batch is still in flight and its ReadyForQuery
    /// waits for the answer (else it is already held).
    pub(super) fn send_capture(&mut self, hold: bool) {
        let Some(attached) = self.servers[PRIMARY].as_mut() else {
            return;
        };
        let fastpath = self.shared.capture_fastpath.load(Ordering::Relaxed);
        let conn = &mut attached.conn.conn;
        if fastpath {
            // A fastpath call runs the function with no parse, plan, portal or
            // executor: the cheapest round on the server.
            to_server::function_call(conn.out(), CAPTURE_FUNCTION_OID);
        } else if !conn.prepared.contains_key(CAPTURE_STATEMENT) {
            if to_server::parse(conn.out(), CAPTURE_STATEMENT, CAPTURE_SQL).is_err() {
                return;
            }
            conn.prepared.insert(CAPTURE_STATEMENT.to_owned(), 0);
            attached.sent_parse += 1;
        }
        // Prepared once per server connection: each capture is then a Bind and
        // Execute, with no parse or plan on the server.
        if !fastpath
            && to_server::execute_prepared(attached.conn.conn.out(), CAPTURE_STATEMENT).is_err()
        {
            return;
        }
        if hold {
            if let Some(last) = attached.marks.back_mut() {
                last.holds_ready = true;
            }
        }
        let mark = Mark::internal(attached, true);
        attached.marks.push_back(mark);
    }

    /// The client's ReadyForQuery came back for a write: pin mode starts its
    /// window; with a capture behind it, the ReadyForQuery waits for it.
    pub(super) fn on_write_ready(&mut self, mark: &Mark, status: u8, frame: Frame) {
        if status == tx_status::IDLE && self.freshness.dirty {
            self.freshness.dirty = false;
            self.freshness.last_write_done = Some(Instant::now());
        }
        if mark.holds_ready && status == tx_status::IDLE {
            self.held_ready = Some((frame, mark.had_error));
        } else if mark.capture_after
            && status == tx_status::IDLE
            && self.wants_capture()
            && self.servers[PRIMARY].as_ref().is_some_and(|a| a.is_idle())
        {
            // Only with nothing else in flight behind it: otherwise the
            // capture would queue behind (and answer after) later batches;
            // the next capture covers this write then.
            self.held_ready = Some((frame, mark.had_error));
            self.send_capture(false);
        } else {
            self.out.extend_from_slice(&frame.raw);
        }
    }

    /// The commit-position query answered (None: it failed). Records the
    /// position for the session and its keys, tells the client, and releases
    /// the held ReadyForQuery.
    pub(super) fn finish_capture(&mut self, lsn: Option<u64>) {
        if lsn.is_none() {
            // Prepare it again next time, in case the failure was the Parse; and
            // a server that refuses the fastpath call gets the statement from now on.
            if let Some(attached) = self.servers[PRIMARY].as_mut() {
                attached.conn.conn.prepared.remove(CAPTURE_STATEMENT);
            }
            if self.shared.capture_fastpath.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    "the fastpath commit-position call failed; using a prepared statement instead"
                );
            }
        }
        // Without a held ReadyForQuery the batch left its transaction open, so
        // the position is not a commit's: ignore it.
        let Some((ready, failed)) = self.held_ready.take() else {
            return;
        };
        match lsn {
            Some(lsn) => self.learn_write_position(lsn, !failed),
            // Causal keys stay pending: the next capture records them at a
            // later position, which is safe (never below their commit).
            None => tracing::warn!(
                "could not learn a write's commit position; the session reads from the primary until it can"
            ),
        }
        self.out.extend_from_slice(&ready.raw);
    }

    /// `announce`: tell the client its new token (not after a failed batch).
    fn learn_write_position(&mut self, insert_lsn: u64, announce: bool) {
        let now = Instant::now();
        let config = self.shared.config.load();
        let topology = self.shared.topology.load();
        let layout = topology
            .nodes
            .get(topology.primary)
            .and_then(|p| p.wal_layout);
        let lsn = layout.map_or(insert_lsn, |layout| {
            consistency::written_end(insert_lsn, layout)
        });
        self.freshness.wrote(Some(lsn), now);
        self.freshness.uncaptured = false;
        for key in self.pending_keys.drain(..) {
            self.shared
                .keys
                .record(&key, lsn, now, config.consistency.max_keys);
        }
        if announce {
            build::parameter_status(&mut self.out, "pgrouter.last_write_lsn", &format_lsn(lsn));
        }
    }

    /// A read needs the primary only because the last write's position is
    /// unknown (its capture failed or its connection died): the primary's
    /// insert position now is past every commit the session made, so learn it
    /// on an idle primary connection and judge the read again.
    pub(super) async fn capture_now(&mut self) -> bool {
        let Some(attached) = self.servers[PRIMARY].as_mut() else {
            return false;
        };
        if !attached.is_idle()
            || self.open == Some(PRIMARY)
            || attached.conn.conn.tx_status != tx_status::IDLE
        {
            return false;
        }
        let answer = tokio::time::timeout(
            OWN_QUERY_TIMEOUT,
            attached.conn.conn.query_value(CAPTURE_SQL),
        )
        .await;
        match answer {
            Ok(Ok(Some(value))) => match parse_lsn(&value) {
                Some(lsn) => {
                    self.learn_write_position(lsn, true);
                    true
                }
                None => false,
            },
            Ok(_) => false,
            Err(_) => {
                self.servers[PRIMARY] = None;
                false
            }
        }
    }
}

/// Whether `addr` ("host:port", as `ServerConn::addr`) names `host`:`port`.
fn is_addr_of(addr: &str, host: &str, port: u16) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(h, p)| h == host && p.parse() == Ok(port))
}

#[cfg(test)]
mod tests {
    use super::is_addr_of;

    #[test]
    fn a_seen_replay_belongs_to_one_server() {
        assert!(is_addr_of("127.0.0.1:5433", "127.0.0.1", 5433));
        assert!(!is_addr_of("127.0.0.1:5433", "127.0.0.1", 5434));
        assert!(!is_addr_of("10.0.0.2:5433", "127.0.0.1", 5433));
        assert!(is_addr_of("::1:5433", "::1", 5433));
        assert!(!is_addr_of("garbage", "garbage", 0));
    }
}
