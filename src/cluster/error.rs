//! The single error type of the cluster module.
//!
//! Role: name the step that failed and keep the underlying cause reachable through
//! `std::error::Error::source`, so a failing test or `pgrouter demo` prints an
//! actionable chain. It must not format the cause into its own message (callers that
//! print the chain would show it twice), and it must never carry the cluster password.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while starting, driving or stopping a local test cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory holding all of initdb, pg_ctl, postgres and pg_basebackup.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found; \
         install PostgreSQL server binaries, e.g. `apt-get install -y postgresql` (Debian/Ubuntu). \
         Looked in: {}",
        display_paths(.searched)
    )]
    BinariesNotFound { searched: Vec<PathBuf> },

    /// We run as root but could not find or create the unprivileged server user.
    #[error("cannot run PostgreSQL as root and the `{user}` system user is unusable: {detail}")]
    ServerUser {
        user: String,
        detail: String,
        #[source]
        source: Option<std::io::Error>,
    },

    /// A filesystem operation on a cluster path failed.
    #[error("{step} ({})", .path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A path the server user needs is inside a directory it cannot traverse.
    #[error(
        "the server user `{user}` cannot reach {} because {} is not traversable by it; \
         choose a directory under /tmp",
        .path.display(),
        .blocker.display()
    )]
    NotTraversable {
        user: String,
        path: PathBuf,
        blocker: PathBuf,
    },

    /// An explicit `--dir` that is non-empty and was not created by us; we refuse to wipe it.
    #[error(
        "refusing to wipe {}: it is not empty and has no {marker} marker from an earlier cluster",
        .path.display()
    )]
    ForeignDir { path: PathBuf, marker: &'static str },

    /// A helper program could not be started at all.
    #[error("{step}: could not run {program}")]
    Spawn {
        step: String,
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A helper program ran but reported failure.
    #[error("{step}: `{command}` failed with {status}\n{output}")]
    CommandFailed {
        step: String,
        command: String,
        status: ExitStatus,
        output: String,
    },

    /// A helper program did not finish in time (it has been killed).
    #[error("{step}: `{command}` did not finish within {waited:?}")]
    CommandTimeout {
        step: String,
        command: String,
        waited: Duration,
    },

    /// A server did not come up; the tail of its log says why.
    #[error("starting node {node} on port {port} failed; server log {}:\n{log_tail}", .log.display())]
    ServerStart {
        node: String,
        port: u16,
        log: PathBuf,
        log_tail: String,
        #[source]
        source: Box<ClusterError>,
    },

    /// No free TCP port could be reserved on 127.0.0.1.
    #[error("could not reserve a free TCP port on 127.0.0.1")]
    NoFreePort(#[source] std::io::Error),

    /// `base_port + replicas` does not fit in a port number.
    #[error("base port {base} leaves no room for {nodes} nodes")]
    PortRange { base: u16, nodes: usize },

    /// Connecting to a node with tokio-postgres failed.
    #[error("connecting to node {node} ({dsn_without_password})")]
    Connect {
        node: String,
        dsn_without_password: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A SQL statement run by the harness failed.
    #[error("{step} on node {node}")]
    Query {
        step: &'static str,
        node: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A server returned an LSN we could not parse.
    #[error("node {node} returned an unparsable LSN {value:?}")]
    BadLsn { node: String, value: String },

    /// A polled condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },

    /// `pg_promote` returned false.
    #[error("pg_promote() on node {node} did not complete within its 60 s wait")]
    PromoteFailed { node: String },

    /// No node with that name.
    #[error("no node named {name:?} (nodes: {known})")]
    UnknownNode { name: String, known: String },

    /// A background task setting up a replica panicked or was cancelled.
    #[error("a replica set-up task failed")]
    TaskFailed(#[source] tokio::task::JoinError),

    /// Replica index out of range.
    #[error("replica index {index} out of range: the cluster has {count} replicas")]
    NoSuchReplica { index: usize, count: usize },
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}
