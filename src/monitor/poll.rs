//! The polling task: one measuring connection per node, one snapshot per round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use super::{NodeState, Topology, TopologyHandle, parse_lsn};
use crate::config::Config;

/// One node's measurement.
struct Sample {
    in_recovery: bool,
    lsn: Option<u64>,
}

/// Starts the `monitor` task. It measures every node each `monitor.interval` and
/// stops when `shutdown` flips to true. `config` is read each round, so a reload
/// takes effect on the next round.
pub fn spawn_monitor(
    config: Arc<arc_swap::ArcSwap<Config>>,
    topology: TopologyHandle,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut clients: Vec<Option<Client>> = Vec::new();
        loop {
            let current = config.load_full();
            poll_once(&current, &topology, &mut clients).await;
            tokio::select! {
                _ = tokio::time::sleep(current.monitor.interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        tracing::debug!("monitor stopped");
    })
}

/// Measures every node once and publishes a new snapshot.
pub async fn poll_once(
    config: &Config,
    topology: &TopologyHandle,
    clients: &mut Vec<Option<Client>>,
) {
    clients.resize_with(config.nodes.len(), || None);
    let timeout = config.pool.connect_timeout.min(Duration::from_secs(2));
    // Measure all nodes concurrently so one dead node does not delay the others.
    let tasks: Vec<_> = config
        .nodes
        .iter()
        .zip(clients.iter_mut())
        .map(|(node, client)| {
            let dsn = dsn(config, &node.host, node.port);
            async move { measure(client, &dsn, timeout).await }
        })
        .collect();
    let results = futures_util::future::join_all(tasks).await;

    let previous = topology.load();
    let mut next = Topology::from_config(config);
    next.generation = previous.generation + 1;
    for (state, result) in next.nodes.iter_mut().zip(results) {
        apply(state, result);
    }
    if let Some(primary) = next
        .nodes
        .iter()
        .position(|n| n.up && n.in_recovery == Some(false))
    {
        next.primary = primary;
    }
    let primary_lsn = next.nodes.get(next.primary).and_then(|n| n.lsn);
    for (i, state) in next.nodes.iter_mut().enumerate() {
        if i != next.primary && state.in_recovery == Some(true) {
            state.lag_bytes = match (primary_lsn, state.lsn) {
                (Some(p), Some(r)) => Some(p.saturating_sub(r)),
                _ => None,
            };
        }
    }
    topology.store(Arc::new(next));
}

fn apply(state: &mut NodeState, result: Result<Sample, String>) {
    match result {
        Ok(sample) => {
            state.up = true;
            state.in_recovery = Some(sample.in_recovery);
            state.lsn = sample.lsn;
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
    let query = "SELECT pg_is_in_recovery(), \
                 (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text";
    let row = match tokio::time::timeout(timeout, c.query_one(query, &[])).await {
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
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let lsn: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
    Ok(Sample {
        in_recovery,
        lsn: lsn.as_deref().and_then(parse_lsn),
    })
}

fn dsn(config: &Config, host: &str, port: u16) -> String {
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
