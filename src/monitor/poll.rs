//! The polling task: one measuring connection per node, one snapshot per round.
//!
//! A node that cannot be reached is retried with exponential backoff (one
//! interval doubling up to 5 s) so a dead node costs no connect storm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use super::lag::{self, LagLimits, LsnHistory};
use super::{NodeState, Topology, TopologyHandle, WalLayout, parse_lsn, roles};
use crate::config::Config;

/// Longest wait between reconnect attempts to a dead node.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one round measures on a node.
const MEASURE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() END)::text, \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, \
    CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
    current_setting('wal_block_size')::int8, pg_size_bytes(current_setting('wal_segment_size'))";

/// One node's measurement.
struct Sample {
    in_recovery: bool,
    lsn: Option<u64>,
    receive_lsn: Option<u64>,
    replay_paused: Option<bool>,
    timeline: Option<u32>,
    wal_layout: Option<WalLayout>,
}

/// Per-node connection state kept between rounds.
#[derive(Default)]
struct Probe {
    client: Option<Client>,
    failures: u32,
    next_attempt: Option<Instant>,
}

/// Everything the monitor remembers between rounds.
#[derive(Default)]
pub(crate) struct MonitorState {
    /// The node addresses the probes below were made for, in config order.
    addresses: Vec<(String, u16)>,
    probes: Vec<Probe>,
    history: LsnHistory,
    newest_timeline: u32,
    last_primary: Option<usize>,
}

/// Starts the `monitor` task. It measures every node each `monitor.interval` and
/// stops when `shutdown` flips to true. `config` is read each round, so a reload
/// takes effect on the next round.
pub(crate) fn spawn_monitor(
    config: Arc<arc_swap::ArcSwap<Config>>,
    topology: TopologyHandle,
    state: MonitorState,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = state;
        // Rounds start on a fixed beat (not "interval after the last one ended"), so
        // a slow node or a busy machine does not stretch the time between samples.
        let mut period = config.load().monitor.interval;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let current = config.load_full();
            if current.monitor.interval != period {
                period = current.monitor.interval;
                ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            poll_once(&current, &topology, &mut state).await;
        }
        tracing::debug!("monitor stopped");
    })
}

/// Measures every node once and publishes a new snapshot.
pub(crate) async fn poll_once(
    config: &Config,
    topology: &TopologyHandle,
    state: &mut MonitorState,
) {
    // A reload that changed the node list (added, removed, moved or re-addressed
    // nodes) starts measuring afresh: probes and histories are by position.
    let addresses: Vec<(String, u16)> = config
        .nodes
        .iter()
        .map(|n| (n.host.clone(), n.port))
        .collect();
    if state.addresses != addresses {
        if !state.addresses.is_empty() {
            tracing::info!(
                nodes = addresses.len(),
                "node list changed; measuring it afresh"
            );
        }
        // The newest timeline seen stays: it fences demoted primaries whatever
        // the list looks like.
        state.addresses = addresses;
        state.probes.clear();
        state.history = LsnHistory::default();
        state.last_primary = None;
    }
    state.probes.resize_with(config.nodes.len(), Probe::default);
    let timeout = config.pool.connect_timeout.min(Duration::from_secs(2));
    let now = Instant::now();
    // Measure all nodes concurrently so one dead node does not delay the others.
    let tasks: Vec<_> = config
        .nodes
        .iter()
        .zip(state.probes.iter_mut())
        .map(|(node, probe)| {
            let dsn = dsn(config, &node.host, node.port);
            async move {
                if probe.next_attempt.is_some_and(|t| now < t) {
                    return None;
                }
                let result = measure(&mut probe.client, &dsn, timeout).await;
                match &result {
                    Ok(_) => {
                        probe.failures = 0;
                        probe.next_attempt = None;
                    }
                    Err(_) => {
                        probe.failures = probe.failures.saturating_add(1);
                        let backoff =
                            config.monitor.interval * 2u32.saturating_pow(probe.failures.min(16));
                        probe.next_attempt = Some(Instant::now() + backoff.min(MAX_BACKOFF));
                    }
                }
                Some(result)
            }
        })
        .collect();
    let results = futures_util::future::join_all(tasks).await;

    let previous = topology.load_full();
    let mut next = Topology::from_config(config);
    next.generation = previous.generation + 1;
    for (i, (node, result)) in next.nodes.iter_mut().zip(results).enumerate() {
        match result {
            Some(result) => apply(node, result),
            // Not retried this round (backoff): still down.
            None => {
                node.up = false;
                node.error = previous.nodes.get(i).and_then(|p| p.error.clone());
            }
        }
    }

    state.newest_timeline = roles::newest_timeline(&next.nodes, state.newest_timeline);
    match roles::choose_primary(&next.nodes, state.newest_timeline) {
        Some(primary) => {
            if state.last_primary.is_some_and(|p| p != primary) {
                tracing::warn!(primary = %next.nodes[primary].name, "primary changed; writes follow it");
                state.history.clear();
            }
            state.last_primary = Some(primary);
            next.primary = primary;
            next.primary_available = true;
        }
        None => {
            next.primary = state.last_primary.unwrap_or(next.primary);
            next.primary_available = false;
        }
    }
    if next.primary_available {
        if let Some(lsn) = next.nodes.get(next.primary).and_then(|n| n.lsn) {
            state.history.record(now, lsn);
        }
    }
    admit_replicas(config, &previous, &mut next, &state.history, now);
    log_changes(&previous, &next);
    topology.store(Arc::new(next));
}

/// Computes each replica's lag and whether it may take reads.
fn admit_replicas(
    config: &Config,
    previous: &Topology,
    next: &mut Topology,
    history: &LsnHistory,
    now: Instant,
) {
    let primary_lsn = next.nodes.get(next.primary).and_then(|n| n.lsn);
    let primary = next.primary;
    let primary_available = next.primary_available;
    for (i, state) in next.nodes.iter_mut().enumerate() {
        if i == primary || state.in_recovery != Some(true) || !state.up {
            continue;
        }
        let Some(replay) = state.lsn else { continue };
        let before = previous.nodes.get(i).filter(|p| p.name == state.name);
        if !primary_available {
            // Without a primary nothing new can be written, so a replica is as
            // fresh as it was: keep its last verdict and reads keep flowing.
            if let Some(before) = before {
                state.lag_bytes = before.lag_bytes;
                state.lag_time = before.lag_time;
                state.admitted = before.admitted;
            }
            continue;
        }
        state.lag_bytes = primary_lsn.map(|p| p.saturating_sub(replay));
        state.lag_time = history.time_lag(now, replay);
        let node_config = config.nodes.get(i);
        let limits = LagLimits {
            max_bytes: node_config
                .and_then(|n| n.max_replica_lag_bytes)
                .unwrap_or(config.monitor.max_replica_lag_bytes),
            max_time: node_config
                .and_then(|n| n.max_replica_lag)
                .unwrap_or(config.monitor.max_replica_lag),
            readmit_fraction: config.monitor.readmit_fraction,
        };
        let was_admitted = before.is_some_and(|p| p.admitted);
        state.admitted = lag::admitted(was_admitted, state.lag_bytes, state.lag_time, limits);
    }
}

fn log_changes(previous: &Topology, next: &Topology) {
    for (before, after) in previous.nodes.iter().zip(&next.nodes) {
        if before.name != after.name {
            continue;
        }
        if before.up != after.up {
            match &after.error {
                Some(err) if !after.up => {
                    tracing::warn!(node = %after.name, error = %err, "node down")
                }
                _ => tracing::info!(node = %after.name, up = after.up, "node health changed"),
            }
        }
        if before.admitted != after.admitted && after.in_recovery == Some(true) {
            tracing::info!(
                node = %after.name,
                admitted = after.admitted,
                lag_bytes = ?after.lag_bytes,
                lag_ms = ?after.lag_time.map(|t| t.as_millis()),
                "replica read eligibility changed"
            );
        }
    }
}

fn apply(state: &mut NodeState, result: Result<Sample, String>) {
    match result {
        Ok(sample) => {
            state.up = true;
            state.in_recovery = Some(sample.in_recovery);
            state.lsn = sample.lsn;
            state.receive_lsn = sample.receive_lsn;
            state.replay_paused = sample.replay_paused;
            state.timeline = sample.timeline;
            state.wal_layout = sample.wal_layout;
            state.measured_at = Some(Instant::now());
        }
        Err(err) => {
            state.up = false;
            state.error = Some(err);
        }
    }
}

async fn measure(
    client: &mut Option<Client>,
    dsn: &str,
    timeout: Duration,
) -> Result<Sample, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (new_client, connection) =
            tokio::time::timeout(timeout, tokio_postgres::connect(dsn, NoTls))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        // The connection task ends when the client is dropped or the socket closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *client = Some(new_client);
    }
    let Some(c) = client.as_ref() else {
        return Err("no client".into());
    };
    let row = match tokio::time::timeout(timeout, c.query_one(MEASURE_SQL, &[])).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            *client = None;
            return Err(e.to_string());
        }
        Err(_) => {
            *client = None;
            return Err("measurement timed out".into());
        }
    };
    let text =
        |i: usize| -> Result<Option<String>, String> { row.try_get(i).map_err(|e| e.to_string()) };
    let timeline: Option<i32> = row.try_get(4).map_err(|e| e.to_string())?;
    let size = |i: usize| -> Result<Option<u64>, String> {
        let bytes: Option<i64> = row.try_get(i).map_err(|e| e.to_string())?;
        Ok(bytes.and_then(|b| u64::try_from(b).ok()).filter(|&b| b > 0))
    };
    let wal_layout = match (size(5)?, size(6)?) {
        (Some(page), Some(segment)) => Some(WalLayout { page, segment }),
        _ => None,
    };
    Ok(Sample {
        in_recovery: row.try_get(0).map_err(|e| e.to_string())?,
        lsn: text(1)?.as_deref().and_then(parse_lsn),
        receive_lsn: text(2)?.as_deref().and_then(parse_lsn),
        replay_paused: row.try_get(3).map_err(|e| e.to_string())?,
        timeline: timeline.and_then(|t| u32::try_from(t).ok()),
        wal_layout,
    })
}

pub(crate) fn dsn(config: &Config, host: &str, port: u16) -> String {
    let (user, password) = match (&config.monitor.user, config.users.first()) {
        (Some(user), _) => (user.clone(), config.monitor.password.clone()),
        (None, Some(first)) => (
            first.server_user().to_owned(),
            first.server_password().map(str::to_owned),
        ),
        (None, None) => ("postgres".to_owned(), None),
    };
    let mut dsn = format!(
        "host={} port={} user={} dbname={} application_name=pgrouter_monitor connect_timeout=2",
        quote(host),
        port,
        quote(&user),
        quote(&config.monitor.database)
    );
    if let Some(password) = password {
        dsn.push_str(&format!(" password={}", quote(&password)));
    }
    dsn
}

/// Quotes a libpq connection-string value.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
