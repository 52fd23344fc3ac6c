use std::time::{Duration, Instant};

use super::*;
use crate::config::NodeRole;

fn config(mode: ConsistencyMode) -> ConsistencyConfig {
    ConsistencyConfig {
        mode,
        ..ConsistencyConfig::default()
    }
}

fn replica(replayed: u64, lag_ms: u64) -> NodeState {
    NodeState {
        in_recovery: Some(true),
        lsn: Some(replayed),
        lag_time: Some(Duration::from_millis(lag_ms)),
        ..NodeState::unmeasured("r", "h", 1, NodeRole::Replica)
    }
}

#[test]
fn causal_reads_need_the_last_write() {
    let now = Instant::now();
    let mut session = SessionFreshness::default();
    let none = FreshnessHints::default();
    let cfg = config(ConsistencyMode::Causal);
    assert_eq!(
        read_need(&cfg, &session, &none, None, now),
        ReadNeed::default()
    );
    session.wrote(Some(500), now);
    session.wrote(Some(400), now);
    let need = read_need(&cfg, &session, &none, None, now);
    assert_eq!(need.min_lsn, Some(500));
    assert_eq!(
        judge(&replica(499, 0), true, &need),
        Verdict::Behind { min_lsn: 500 }
    );
    assert_eq!(judge(&replica(500, 0), true, &need), Verdict::Serves);
    assert_eq!(judge(&replica(900, 0), false, &need), Verdict::Refused);
}

#[test]
fn none_mode_ignores_own_writes_but_not_tokens_or_keys() {
    let now = Instant::now();
    let mut session = SessionFreshness::default();
    session.wrote(Some(500), now);
    let cfg = config(ConsistencyMode::None);
    let none = FreshnessHints::default();
    assert_eq!(read_need(&cfg, &session, &none, None, now).min_lsn, None);
    assert_eq!(
        read_need(&cfg, &session, &none, Some(70), now).min_lsn,
        Some(70)
    );
    let hinted = FreshnessHints {
        after_lsn: Some(80),
        ..FreshnessHints::default()
    };
    assert_eq!(
        read_need(&cfg, &session, &hinted, Some(70), now).min_lsn,
        Some(80)
    );
    session.read_after_lsn = Some(90);
    assert_eq!(
        read_need(&cfg, &session, &hinted, Some(70), now).min_lsn,
        Some(90)
    );
}

#[test]
fn pin_mode_holds_reads_on_the_primary_for_a_while() {
    let then = Instant::now();
    let mut session = SessionFreshness::default();
    let cfg = config(ConsistencyMode::Pin);
    let none = FreshnessHints::default();
    assert_eq!(read_need(&cfg, &session, &none, None, then).primary, None);
    session.wrote(None, then);
    assert!(
        read_need(&cfg, &session, &none, None, then)
            .primary
            .is_some()
    );
    let later = then + cfg.pin_duration;
    assert_eq!(read_need(&cfg, &session, &none, None, later).primary, None);
}

#[test]
fn staleness_budget_replaces_the_lag_limit() {
    let now = Instant::now();
    let session = SessionFreshness {
        max_staleness: Some(Duration::from_millis(500)),
        ..SessionFreshness::default()
    };
    let cfg = config(ConsistencyMode::Causal);
    let none = FreshnessHints::default();
    let need = read_need(&cfg, &session, &none, None, now);
    // Looser than the configured limit: a replica the monitor shut out serves.
    assert_eq!(judge(&replica(1, 400), false, &need), Verdict::Serves);
    assert_eq!(judge(&replica(1, 600), true, &need), Verdict::Refused);
    let zero = FreshnessHints {
        max_staleness: Some(Duration::ZERO),
        ..FreshnessHints::default()
    };
    assert!(
        read_need(&cfg, &session, &zero, None, now)
            .primary
            .is_some()
    );
}

#[test]
fn formats_lsns_like_postgres() {
    assert_eq!(format_lsn(0x300_0060), "0/3000060");
    assert_eq!(format_lsn((0x1A << 32) | 0xB), "1A/B");
    assert_eq!(
        crate::monitor::parse_lsn(&format_lsn(u64::MAX)),
        Some(u64::MAX)
    );
}

#[test]
fn a_write_position_just_past_a_page_header_is_the_pages_start() {
    let layout = WalLayout {
        page: 8192,
        segment: 16 << 20,
    };
    for (insert, written) in [
        // A segment's first page has the long header.
        (0x0400_0028, 0x0400_0000),
        (0x1_0400_0028, 0x1_0400_0000),
        // Other pages the short one.
        (0x0400_2018, 0x0400_2000),
        // Anywhere else, the insert position is a record's end already.
        (0x0400_2028, 0x0400_2028),
        (0x0400_0018, 0x0400_0018),
        (0x0400_2000, 0x0400_2000),
        (0x0400_2060, 0x0400_2060),
    ] {
        assert_eq!(written_end(insert, layout), written, "{insert:X}");
    }
    let small_segments = WalLayout {
        page: 8192,
        segment: 1 << 20,
    };
    assert_eq!(written_end(0x0010_0028, small_segments), 0x0010_0000);
    assert_eq!(written_end(0x0010_0028, layout), 0x0010_0028);
}
