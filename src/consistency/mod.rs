//! Read-your-writes: what a read must see, given what its session (or the
//! application, through tokens and keys) wrote before.
//!
//! Modes (config `[consistency] mode`, per session `SET pgrouter.consistency`):
//! - `none`: any replica within the lag limits.
//! - `pin`: for `pin_duration` after a session's write, its reads go to the primary.
//! - `causal` (default): after a session's write commits, the front end learns the
//!   primary's WAL insert position right after the commit (never below the
//!   commit record's end) and the session's reads go only to a node that has
//!   replayed that far: the primary, or a replica whose replay LSN is at or past it.
//!
//! In every mode a read may also carry a floor of its own: `SET
//! pgrouter.read_after_lsn`, the hint `after_lsn=...`, or a causal key
//! (`key=...`, see [`keys`]) whose last write the router remembers; and a
//! staleness budget (`SET pgrouter.max_staleness`, hint `max_staleness=`).
//!
//! This module is pure logic: it computes a [`ReadNeed`] from session state
//! and hints, and answers whether a measured replica satisfies it. It must not
//! do I/O or know about connections; the front end asks the servers. The one
//! exception is [`verify`], the checker, which is a client of the router.

pub mod keys;
pub mod settings;
pub mod verify;

use std::time::{Duration, Instant};

use crate::config::{ConsistencyConfig, ConsistencyMode};
use crate::monitor::{NodeState, WalLayout};
use crate::router::hints::FreshnessHints;

pub use keys::CausalKeys;
pub use settings::{Setting, SettingError, parse_setting};

/// The end of the WAL written before `insert_lsn`, a primary's
/// `pg_current_wal_insert_lsn()`. When the last record ended exactly at a
/// page's end, the insert position is already past the next page's header,
/// where no record ever ends, and a replica that has replayed everything
/// reports the page's start: waiting for it to pass the header would wait
/// for the next write (forever, on an idle primary). PostgreSQL makes the
/// same correction for record ends (`XLogBytePosToEndRecPtr`).
pub fn written_end(insert_lsn: u64, layout: WalLayout) -> u64 {
    // Sizes of XLogPageHeaderData and XLogLongPageHeaderData (64-bit builds).
    const PAGE_HEADER: u64 = 24;
    const SEGMENT_HEADER: u64 = 40;
    let page_start = insert_lsn - insert_lsn % layout.page.max(1);
    let segment_start = insert_lsn - insert_lsn % layout.segment.max(1);
    let header = if page_start == segment_start {
        SEGMENT_HEADER
    } else {
        PAGE_HEADER
    };
    if insert_lsn == page_start + header {
        page_start
    } else {
        insert_lsn
    }
}

/// Formats an LSN the way PostgreSQL prints `pg_lsn` (`0/3000060`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// One session's read-your-writes state.
#[derive(Debug, Default, Clone)]
pub struct SessionFreshness {
    /// `SET pgrouter.consistency` (None: the config's mode).
    pub mode: Option<ConsistencyMode>,
    /// `SET pgrouter.read_after_lsn`.
    pub read_after_lsn: Option<u64>,
    /// `SET pgrouter.max_staleness`.
    pub max_staleness: Option<Duration>,
    /// Commit position of the session's last write (causal mode, or keyed writes).
    pub last_write_lsn: Option<u64>,
    /// When the session's last write completed (pin mode).
    pub last_write_done: Option<Instant>,
    /// A write was sent and its transaction has not finished yet.
    pub dirty: bool,
    /// Causal mode: the session wrote and the commit's position is not known
    /// yet (or could not be learnt): its reads need the primary until it is.
    pub uncaptured: bool,
}

impl SessionFreshness {
    /// The mode in force: the session's own, else the config's.
    pub fn mode(&self, config: &ConsistencyConfig) -> ConsistencyMode {
        self.mode.unwrap_or(config.mode)
    }

    /// Applies a `SET`/`RESET pgrouter.*` the server accepted.
    pub fn apply(&mut self, setting: &Setting) {
        match *setting {
            Setting::Consistency(mode) => self.mode = mode,
            Setting::ReadAfterLsn(lsn) => self.read_after_lsn = lsn,
            Setting::MaxStaleness(budget) => self.max_staleness = budget,
        }
    }

    /// Records a committed write at `lsn` (None: position unknown, e.g. pin mode).
    pub fn wrote(&mut self, lsn: Option<u64>, now: Instant) {
        self.last_write_done = Some(now);
        if let Some(lsn) = lsn {
            self.last_write_lsn = Some(self.last_write_lsn.map_or(lsn, |old| old.max(lsn)));
        }
    }
}

/// What a read needs from the node that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadNeed {
    /// Must run on the primary, and why (for logs).
    pub primary: Option<&'static str>,
    /// The node must have replayed WAL up to here.
    pub min_lsn: Option<u64>,
    /// The replica's measured time lag may be at most this (replaces the
    /// configured `max_replica_lag`, tighter or looser).
    pub max_staleness: Option<Duration>,
}

impl ReadNeed {
    /// The primary serves every read: only a read that needs it is sent there.
    pub fn primary_only(reason: &'static str) -> ReadNeed {
        ReadNeed {
            primary: Some(reason),
            ..ReadNeed::default()
        }
    }
}

/// Why a read needs the primary while its session's last write has no known position.
pub const UNCAPTURED: &str = "causal: the last write's position is not known yet";

/// What a read needs, from the session's state, the statement's hints and the
/// last write of the statement's causal key (looked up by the caller).
pub fn read_need(
    config: &ConsistencyConfig,
    session: &SessionFreshness,
    hints: &FreshnessHints,
    key_lsn: Option<u64>,
    now: Instant,
) -> ReadNeed {
    let max_staleness = hints.max_staleness.or(session.max_staleness);
    if max_staleness == Some(Duration::ZERO) {
        return ReadNeed::primary_only("max_staleness = 0");
    }
    let mode = session.mode(config);
    if mode == ConsistencyMode::Causal && session.uncaptured {
        return ReadNeed::primary_only(UNCAPTURED);
    }
    if mode == ConsistencyMode::Pin {
        let pinned = session
            .last_write_done
            .is_some_and(|done| now.saturating_duration_since(done) < config.pin_duration);
        if pinned {
            return ReadNeed::primary_only("pin: the session wrote recently");
        }
    }
    let own = match mode {
        ConsistencyMode::Causal => session.last_write_lsn,
        ConsistencyMode::Pin | ConsistencyMode::None => None,
    };
    // `None` orders below every `Some`: the highest floor, or none. (An
    // iterator chain over the four compiled to ~900 instructions a read.)
    let min_lsn = own
        .max(session.read_after_lsn)
        .max(hints.after_lsn)
        .max(key_lsn);
    ReadNeed {
        primary: None,
        min_lsn,
        max_staleness,
    }
}

/// How a measured replica stands against a read's needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may serve the read.
    Serves,
    /// Its last measurement is behind the floor, but it may have caught up
    /// since: a fresh look at its replay position can decide.
    Behind { min_lsn: u64 },
    /// It may not serve the read (too stale for the budget, not a replica, down).
    Refused,
}

/// Judges `node` (already known to be a live replica) for `need`. `admitted`
/// is the monitor's verdict against the configured lag limits, which a
/// staleness budget replaces.
pub fn judge(node: &NodeState, admitted: bool, need: &ReadNeed) -> Verdict {
    if need.primary.is_some() {
        return Verdict::Refused;
    }
    let within_budget = match need.max_staleness {
        Some(budget) => node.lag_time.is_some_and(|lag| lag <= budget),
        None => admitted,
    };
    if !within_budget {
        return Verdict::Refused;
    }
    match (need.min_lsn, node.lsn) {
        (None, _) => Verdict::Serves,
        (Some(min_lsn), Some(replayed)) if replayed >= min_lsn => Verdict::Serves,
        (Some(min_lsn), _) => Verdict::Behind { min_lsn },
    }
}

#[cfg(test)]
mod tests;
