//! SQL-level controls of a running [`Cluster`]: connecting, pausing and resuming WAL
//! replay, measuring replay lag, waiting for streaming and catch-up, promotion.
//!
//! Role: the replication knobs integration tests turn. It must not manage files or
//! processes (that is `node.rs`). "The primary" here is always the node started as
//! primary; after `promote` the caller knows better and should query directly.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::node::conninfo_value;
use super::{Cluster, ClusterError, NodeInfo, parse_lsn};

/// Pause/resume take effect within milliseconds; this is a generous ceiling.
const REPLAY_STATE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// libpq-style connection string for `node`, database `postgres`; shared by the
/// local-binaries cluster and the container one.
pub(crate) fn node_dsn(node: &NodeInfo, user: &str, password: &str) -> String {
    format!(
        "host={} port={} user={} password={} dbname=postgres",
        node.host,
        node.port,
        conninfo_value(user),
        conninfo_value(password)
    )
}

impl Cluster {
    /// libpq-style connection string for `node`, database `postgres`.
    pub fn dsn(&self, node: &NodeInfo) -> String {
        node_dsn(node, &self.superuser, &self.password)
    }

    /// Connect as the superuser; the connection task is spawned on the current runtime.
    pub async fn connect(&self, node: &NodeInfo) -> Result<Client, ClusterError> {
        let connect_error = |source| ClusterError::Connect {
            node: node.name.clone(),
            dsn_without_password: format!(
                "host={} port={} user={} dbname=postgres",
                node.host, node.port, self.superuser
            ),
            source,
        };
        let mut config: tokio_postgres::Config = self.dsn(node).parse().map_err(connect_error)?;
        // Without a timeout a wedged server would hang the test instead of failing it.
        config.connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
        let name = node.name.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(node = %name, error = %err, "test cluster connection ended");
            }
        });
        Ok(client)
    }

    /// `pg_wal_replay_pause()`, then wait until replay is actually paused.
    pub async fn pause_replay(&self, replica: usize) -> Result<(), ClusterError> {
        let node = self.replica(replica)?;
        let client = self.connect(node).await?;
        execute(
            &client,
            node,
            "pausing WAL replay",
            "SELECT pg_wal_replay_pause()",
        )
        .await?;
        // Pausing is only requested above; the startup process honours it at its
        // next check, and tests rely on "no replay from now on".
        wait_replay_state(&client, node, "paused").await
    }

    /// `pg_wal_replay_resume()`, then wait until replay runs again.
    pub async fn resume_replay(&self, replica: usize) -> Result<(), ClusterError> {
        let node = self.replica(replica)?;
        let client = self.connect(node).await?;
        execute(
            &client,
            node,
            "resuming WAL replay",
            "SELECT pg_wal_replay_resume()",
        )
        .await?;
        wait_replay_state(&client, node, "not paused").await
    }

    /// Bytes of WAL the primary has written that `replica` has not replayed yet.
    pub async fn replay_lag_bytes(&self, replica: usize) -> Result<u64, ClusterError> {
        let node = self.replica(replica)?;
        // Primary first: reading it second could only make the lag look smaller.
        let written = self.primary_lsn().await?;
        let replica_client = self.connect(node).await?;
        let replayed = replay_lsn(&replica_client, node).await?;
        Ok(written.saturating_sub(replayed))
    }

    /// Wait until `replica` has replayed everything the primary had written when
    /// this was called.
    pub async fn wait_caught_up(
        &self,
        replica: usize,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let node = self.replica(replica)?;
        let target = self.primary_lsn().await?;
        let client = self.connect(node).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let replayed = replay_lsn(&client, node).await?;
            if replayed >= target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!(
                        "{} to replay up to {} (replayed {}, {} bytes behind)",
                        node.name,
                        format_lsn(target),
                        format_lsn(replayed),
                        target - replayed
                    ),
                    waited: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait until `replica` streams from the primary: its WAL receiver says
    /// `streaming` and the primary lists it (by application_name) as `streaming`.
    /// Checking the replica too matters after a restart, when the primary may still
    /// show the walsender of the killed instance for a moment.
    pub async fn wait_streaming(
        &self,
        replica: usize,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let node = self.replica(replica)?;
        let primary = self.connect(&self.primary).await?;
        let standby = self.connect(node).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let receiving = standby
                .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                .await
                .and_then(|row| row.map(|r| r.try_get::<_, String>(0)).transpose())
                .map_err(query_error(node, "reading pg_stat_wal_receiver"))?;
            let sending = primary
                .query(
                    "SELECT state FROM pg_stat_replication WHERE application_name = $1",
                    &[&node.name],
                )
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| r.try_get::<_, String>(0))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_error(&self.primary, "reading pg_stat_replication"))?;
            let streaming = receiving.as_deref() == Some("streaming")
                && sending.iter().any(|s| s == "streaming");
            if streaming {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!(
                        "{} to stream from the primary (wal receiver: {}, primary walsender states: [{}])",
                        node.name,
                        receiving.as_deref().unwrap_or("none"),
                        sending.join(", ")
                    ),
                    waited: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `SELECT pg_promote(true, 60)` on `replica`.
    pub async fn promote(&self, replica: usize) -> Result<(), ClusterError> {
        let node = self.replica(replica)?;
        let client = self.connect(node).await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(query_error(node, "promoting"))?;
        if promoted {
            Ok(())
        } else {
            Err(ClusterError::PromoteFailed {
                node: node.name.clone(),
            })
        }
    }

    async fn primary_lsn(&self) -> Result<u64, ClusterError> {
        let client = self.connect(&self.primary).await?;
        let text: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(query_error(&self.primary, "reading pg_current_wal_lsn()"))?;
        lsn(&self.primary, &text)
    }
}

async fn execute(
    client: &Client,
    node: &NodeInfo,
    step: &'static str,
    sql: &str,
) -> Result<(), ClusterError> {
    // Simple protocol: these functions return `void`, which has no binary decoder.
    client
        .batch_execute(sql)
        .await
        .map_err(query_error(node, step))
}

async fn wait_replay_state(
    client: &Client,
    node: &NodeInfo,
    wanted: &str,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + REPLAY_STATE_TIMEOUT;
    loop {
        let state: String = client
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(query_error(node, "reading pg_get_wal_replay_pause_state()"))?;
        if state == wanted {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: format!(
                    "replay on {} to become {wanted:?} (still {state:?})",
                    node.name
                ),
                waited: REPLAY_STATE_TIMEOUT,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Last replayed LSN; NULL (nothing replayed yet) counts as 0.
async fn replay_lsn(client: &Client, node: &NodeInfo) -> Result<u64, ClusterError> {
    let text: Option<String> = client
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(query_error(node, "reading pg_last_wal_replay_lsn()"))?;
    match text {
        None => Ok(0),
        Some(text) => lsn(node, &text),
    }
}

fn lsn(node: &NodeInfo, text: &str) -> Result<u64, ClusterError> {
    parse_lsn(text).ok_or_else(|| ClusterError::BadLsn {
        node: node.name.clone(),
        value: text.to_owned(),
    })
}

fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn query_error(
    node: &NodeInfo,
    step: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> ClusterError {
    let node = node.name.clone();
    move |source| ClusterError::Query { step, node, source }
}
