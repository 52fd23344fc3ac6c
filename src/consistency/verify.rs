//! The read-your-writes checker (`pgrouter verify`, and the integration tests):
//! many concurrent sessions write a counter and read it back through a router,
//! optionally with replay paused on replicas for the middle of the run, and
//! count the reads that saw an older value (stale), where reads were served,
//! and errors.
//!
//! Each worker owns one row of `pgrouter_verify`. A pair is: `UPDATE ... SET v
//! = n`, optionally wait `gap`, then read `v` and `inet_server_port()`; a
//! value below `n` is a stale read. Patterns: the read on the same connection,
//! on another connection carrying the write's token (`SHOW
//! pgrouter.last_write_lsn` then `after_lsn=` hint), or on another connection
//! with a shared causal key (`key=` hint on both).
//!
//! Client-side only: it talks to the router (and, to induce lag, to replicas)
//! with tokio-postgres and must not reach into router internals.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::config::ConsistencyMode;

/// Where each pair's read runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// On the connection that wrote.
    SameConnection,
    /// On another connection, with the write's token as an `after_lsn` hint.
    Token,
    /// On another connection, with a causal key hint on the write and the read.
    Key,
}

impl Pattern {
    pub fn from_name(name: &str) -> Option<Pattern> {
        match name {
            "same" => Some(Pattern::SameConnection),
            "token" => Some(Pattern::Token),
            "key" => Some(Pattern::Key),
            _ => None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The router's DSN (`postgres://user:pass@host:port/db`).
    pub dsn: String,
    /// Concurrent workers (each owns one row).
    pub sessions: usize,
    pub duration: Duration,
    pub pattern: Pattern,
    /// `SET pgrouter.consistency` on every connection (None: the router's default).
    pub mode: Option<ConsistencyMode>,
    /// Pause between a write and its read.
    pub gap: Duration,
    /// Replicas (direct DSNs) whose replay is paused for the middle third of
    /// the run, to induce real lag.
    pub pause_replicas: Vec<String>,
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub pairs: u64,
    pub stale: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Reads per server port (`inet_server_port()`).
    pub reads_by_port: BTreeMap<u16, u64>,
    /// The primary's port, asked through the router at the start.
    pub primary_port: u16,
}

impl VerifyReport {
    /// Share of reads served by a node other than the primary.
    pub fn replica_share(&self) -> f64 {
        let total: u64 = self.reads_by_port.values().sum();
        let on_primary = self
            .reads_by_port
            .get(&self.primary_port)
            .copied()
            .unwrap_or(0);
        if total == 0 {
            return 0.0;
        }
        (total - on_primary) as f64 / total as f64
    }

    fn merge(&mut self, other: VerifyReport) {
        self.pairs += other.pairs;
        self.stale += other.stale;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        for (port, reads) in other.reads_by_port {
            *self.reads_by_port.entry(port).or_default() += reads;
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pairs {}  stale reads {}  errors {}  reads on replicas {:.1}%",
            self.pairs,
            self.stale,
            self.errors,
            self.replica_share() * 100.0
        )?;
        for (port, reads) in &self.reads_by_port {
            let role = if *port == self.primary_port {
                "primary"
            } else {
                "replica"
            };
            writeln!(f, "  port {port} ({role}): {reads} reads")?;
        }
        if let Some(err) = &self.first_error {
            writeln!(f, "  first error: {err}")?;
        }
        Ok(())
    }
}

/// Why the checker could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("could not connect to {what}: {source}")]
    Connect {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("setting up the check table failed: {0}")]
    Setup(tokio_postgres::Error),
    #[error("unexpected answer: {0}")]
    Answer(String),
}

const TABLE: &str = "pgrouter_verify";

/// How long the replicas may take to replay the check table's setup.
const SETUP_WAIT: Duration = Duration::from_secs(30);

async fn connect(dsn: &str, what: &'static str) -> Result<Client, VerifyError> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .map_err(|source| VerifyError::Connect { what, source })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The first column of the first row of a simple query's answer.
async fn first_value(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok(row.get(0).map(str::to_owned));
        }
    }
    Ok(None)
}

/// Runs the check and reports what the clients saw.
pub async fn verify(options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let admin = connect(&options.dsn, "the router").await?;
    let setup = format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO {TABLE} SELECT g, 0 FROM generate_series(1, {}) g ON CONFLICT (id) DO UPDATE SET v = 0",
        options.sessions
    );
    admin
        .batch_execute(&setup)
        .await
        .map_err(VerifyError::Setup)?;
    let primary_port = first_value(&admin, "/* pgrouter: primary */ SELECT inet_server_port()")
        .await
        .map_err(VerifyError::Setup)?
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| VerifyError::Answer("no primary port".into()))?;
    wait_until_replicas_have_the_table(&admin, options).await?;
    let start = Instant::now();
    let deadline = start + options.duration;
    let lag = tokio::spawn(induce_lag(
        options.pause_replicas.clone(),
        start,
        options.duration,
    ));
    let total = Arc::new(Mutex::new(VerifyReport {
        primary_port,
        ..VerifyReport::default()
    }));
    let mut workers = Vec::new();
    for id in 1..=options.sessions {
        let options = options.clone();
        let total = total.clone();
        workers.push(tokio::spawn(async move {
            let report = match worker(&options, id, deadline).await {
                Ok(report) => report,
                Err(err) => VerifyReport {
                    errors: 1,
                    first_error: Some(err.to_string()),
                    ..VerifyReport::default()
                },
            };
            total.lock().await.merge(report);
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let _ = lag.await;
    let report = total.lock().await.clone();
    Ok(report)
}

/// Sessions in mode `none` read replicas at once: the check table must be
/// there first, or their reads fail with "relation does not exist". Replicas
/// given by DSN are waited for exactly; through the router, reads in mode
/// `none` must then succeed 10 times in a row (the balancer spreads them).
async fn wait_until_replicas_have_the_table(
    admin: &Client,
    options: &VerifyOptions,
) -> Result<(), VerifyError> {
    let deadline = Instant::now() + SETUP_WAIT;
    let lsn = first_value(
        admin,
        "/* pgrouter: primary */ SELECT pg_current_wal_lsn()::text",
    )
    .await
    .map_err(VerifyError::Setup)?
    .ok_or_else(|| VerifyError::Answer("no WAL position".into()))?;
    let replayed = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    for dsn in &options.pause_replicas {
        let replica = connect(dsn, "a replica").await?;
        while first_value(&replica, &replayed)
            .await
            .ok()
            .flatten()
            .as_deref()
            != Some("t")
        {
            if Instant::now() >= deadline {
                return Err(VerifyError::Answer(format!(
                    "a replica did not replay {lsn}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let reader = connect(&options.dsn, "the router").await?;
    reader
        .simple_query("SET pgrouter.consistency = 'none'")
        .await
        .map_err(VerifyError::Setup)?;
    let probe = format!("SELECT count(*) FROM {TABLE}");
    let mut in_a_row = 0;
    while in_a_row < 10 {
        if reader.simple_query(&probe).await.is_ok() {
            in_a_row += 1;
        } else if Instant::now() >= deadline {
            return Err(VerifyError::Answer(format!(
                "{TABLE} never became readable"
            )));
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Pauses replay on each replica for the middle third of the run.
async fn induce_lag(replicas: Vec<String>, start: Instant, duration: Duration) {
    if replicas.is_empty() {
        return;
    }
    let mut clients = Vec::new();
    for dsn in &replicas {
        match connect(dsn, "a replica").await {
            Ok(client) => clients.push(client),
            Err(err) => tracing::warn!(%err, "cannot induce lag on a replica"),
        }
    }
    tokio::time::sleep_until((start + duration / 3).into()).await;
    for client in &clients {
        let _ = client.simple_query("SELECT pg_wal_replay_pause()").await;
    }
    tokio::time::sleep_until((start + duration * 2 / 3).into()).await;
    for client in &clients {
        let _ = client.simple_query("SELECT pg_wal_replay_resume()").await;
    }
}

async fn worker(
    options: &VerifyOptions,
    id: usize,
    deadline: Instant,
) -> Result<VerifyReport, VerifyError> {
    let writer = connect(&options.dsn, "the router").await?;
    let separate = options.pattern != Pattern::SameConnection;
    let reader_conn = if separate {
        Some(connect(&options.dsn, "the router").await?)
    } else {
        None
    };
    let reader = reader_conn.as_ref().unwrap_or(&writer);
    if let Some(mode) = options.mode {
        let set = format!("SET pgrouter.consistency = '{}'", mode.name());
        for client in [&writer, reader] {
            client
                .simple_query(&set)
                .await
                .map_err(VerifyError::Setup)?;
        }
    }
    let key_hint = match options.pattern {
        Pattern::Key => format!("/* pgrouter: key=verify:{id} */ "),
        _ => String::new(),
    };
    let mut report = VerifyReport::default();
    let mut value: i64 = 0;
    while Instant::now() < deadline {
        value += 1;
        let write = format!("{key_hint}UPDATE {TABLE} SET v = {value} WHERE id = {id}");
        if let Err(err) = writer.simple_query(&write).await {
            report.note_error(describe(err));
            continue;
        }
        let read_hint = match options.pattern {
            Pattern::Token => match first_value(&writer, "SHOW pgrouter.last_write_lsn").await {
                Ok(Some(token)) => format!("/* pgrouter: after_lsn={token} */ "),
                Ok(None) => String::new(),
                Err(err) => {
                    report.note_error(describe(err));
                    continue;
                }
            },
            _ => key_hint.clone(),
        };
        if !options.gap.is_zero() {
            tokio::time::sleep(options.gap).await;
        }
        let read = format!("{read_hint}SELECT v, inet_server_port() FROM {TABLE} WHERE id = {id}");
        match read_row(reader, &read).await {
            Ok((seen, port)) => {
                report.pairs += 1;
                if seen < value {
                    report.stale += 1;
                }
                *report.reads_by_port.entry(port).or_default() += 1;
            }
            Err(err) => report.note_error(err),
        }
    }
    Ok(report)
}

/// An error as the report shows it: a server's SQLSTATE and message, not
/// tokio-postgres's bare "db error".
fn describe(err: tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}

impl VerifyReport {
    fn note_error(&mut self, err: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err);
        }
    }
}

async fn read_row(client: &Client, sql: &str) -> Result<(i64, u16), String> {
    for message in client.simple_query(sql).await.map_err(describe)? {
        if let SimpleQueryMessage::Row(row) = message {
            let seen = row.get(0).and_then(|v| v.parse().ok());
            let port = row.get(1).and_then(|p| p.parse().ok());
            if let (Some(seen), Some(port)) = (seen, port) {
                return Ok((seen, port));
            }
        }
    }
    Err("the read returned no row".into())
}
