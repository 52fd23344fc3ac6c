//! Replica lag in bytes and in time, and the admission rule with hysteresis.
//!
//! Time lag comes from the history of the primary's WAL position, not from
//! `now() - pg_last_xact_replay_timestamp()` (which grows without bound on an idle
//! primary although the replica is current) and not from a heartbeat table (which
//! would add WAL and wake replicas every interval): a replica whose replay position
//! is `r` is as far behind as the time since the primary first moved past `r`.
//! Precision is one monitor interval. Pure code: no I/O, no clocks of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// History older than this is dropped; a replica further behind reads as at least this far.
const HORIZON: Duration = Duration::from_secs(600);
/// Bound on stored samples (16 bytes each + deque overhead): at most ~160 KiB.
const MAX_SAMPLES: usize = 10_000;

/// When the primary's WAL position changed, oldest first.
#[derive(Debug, Default)]
pub struct LsnHistory {
    samples: VecDeque<(Instant, u64)>,
}

impl LsnHistory {
    /// Records the primary's position at `now` (only changes are kept).
    pub fn record(&mut self, now: Instant, lsn: u64) {
        match self.samples.back() {
            Some(&(_, last)) if last == lsn => {}
            // A position that goes backwards means a new primary: start over.
            Some(&(_, last)) if lsn < last => {
                self.samples.clear();
                self.samples.push_back((now, lsn));
            }
            _ => self.samples.push_back((now, lsn)),
        }
        while self.samples.len() > MAX_SAMPLES
            || self.samples.front().is_some_and(|&(t, _)| {
                now.saturating_duration_since(t) > HORIZON && self.samples.len() > 1
            })
        {
            self.samples.pop_front();
        }
    }

    /// Forgets everything (after a failover).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// How long ago the primary first stood past `replay_lsn`; zero when the
    /// replica has replayed everything the primary had at the last sample.
    pub fn time_lag(&self, now: Instant, replay_lsn: u64) -> Option<Duration> {
        let &(_, newest) = self.samples.back()?;
        if replay_lsn >= newest {
            return Some(Duration::ZERO);
        }
        let first_beyond = self.samples.partition_point(|&(_, lsn)| lsn <= replay_lsn);
        let (since, _) = self.samples.get(first_beyond)?;
        Some(now.saturating_duration_since(*since))
    }
}

/// Lag limits for one replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagLimits {
    pub max_bytes: u64,
    pub max_time: Duration,
    /// A replica over a limit is re-admitted only once back under this fraction of it.
    pub readmit_fraction: f64,
}

/// Whether a replica may take reads, given whether it could before (hysteresis:
/// out above the limit, back in only below `readmit_fraction` of it, so a replica
/// hovering at the limit does not flap).
pub fn admitted(
    was_admitted: bool,
    lag_bytes: Option<u64>,
    lag_time: Option<Duration>,
    limits: LagLimits,
) -> bool {
    let (Some(bytes), Some(time)) = (lag_bytes, lag_time) else {
        return false;
    };
    if was_admitted {
        bytes <= limits.max_bytes && time <= limits.max_time
    } else {
        (bytes as f64) <= limits.max_bytes as f64 * limits.readmit_fraction
            && time <= limits.max_time.mul_f64(limits.readmit_fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_lag_from_primary_history() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, 100);
        h.record(t0 + Duration::from_millis(100), 200);
        h.record(t0 + Duration::from_millis(200), 300);
        h.record(t0 + Duration::from_millis(300), 300);
        let now = t0 + Duration::from_millis(1000);
        assert_eq!(
            h.time_lag(now, 300),
            Some(Duration::ZERO),
            "caught up, however idle the primary"
        );
        assert_eq!(h.time_lag(now, 250), Some(Duration::from_millis(800)));
        assert_eq!(h.time_lag(now, 150), Some(Duration::from_millis(900)));
        assert_eq!(
            h.time_lag(now, 50),
            Some(Duration::from_millis(1000)),
            "older than history: at least this"
        );
        assert_eq!(LsnHistory::default().time_lag(now, 1), None);
    }

    #[test]
    fn history_is_bounded_and_resets_on_a_new_primary() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        for i in 0..(MAX_SAMPLES as u64 + 50) {
            h.record(t0 + Duration::from_millis(i), i + 1);
        }
        assert_eq!(h.samples.len(), MAX_SAMPLES);
        h.record(t0 + Duration::from_secs(100), 5);
        assert_eq!(h.samples.len(), 1);
    }

    #[test]
    fn hysteresis() {
        let limits = LagLimits {
            max_bytes: 1000,
            max_time: Duration::from_secs(1),
            readmit_fraction: 0.5,
        };
        let ms = Duration::from_millis;
        assert!(admitted(true, Some(900), Some(ms(900)), limits));
        assert!(!admitted(true, Some(1001), Some(ms(10)), limits));
        assert!(!admitted(true, Some(10), Some(ms(1001)), limits));
        assert!(
            !admitted(false, Some(900), Some(ms(100)), limits),
            "not back until under half"
        );
        assert!(admitted(false, Some(400), Some(ms(400)), limits));
        assert!(
            !admitted(true, None, Some(ms(1)), limits),
            "unmeasured is out"
        );
    }
}
