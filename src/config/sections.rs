//! The config sections below the top level: pools, monitoring, limits and
//! routing lists. Plain data with serde defaults; checks live in `Config::validate`.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// Pool mode: how long a client keeps a server connection.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps its server connections until it disconnects.
    Session,
    /// A client holds server connections only while a transaction (or an
    /// autocommit statement) runs; at ReadyForQuery idle they go back to the pool.
    #[default]
    Transaction,
}

/// Server connection pools, one per node and (user, database, startup parameters).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// "transaction" (default) or "session"; per user with `[[users]] pool_mode`.
    #[serde(default)]
    pub mode: PoolMode,
    /// Most server connections per node and pool key.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long a client waits for a server connection before it gets SQLSTATE 53300.
    #[serde(
        default = "default_checkout_timeout",
        with = "duration::serde_duration"
    )]
    pub checkout_timeout: Duration,
    /// How long connecting and authenticating to a server may take.
    #[serde(default = "default_connect_timeout", with = "duration::serde_duration")]
    pub connect_timeout: Duration,
    /// Idle server connections kept open per pool even when unused (opened ahead of need).
    #[serde(default)]
    pub min_idle: usize,
    /// An idle server connection unused for this long is closed (down to `min_idle`).
    #[serde(default = "default_idle_timeout", with = "duration::serde_duration")]
    pub idle_timeout: Duration,
    /// A server connection is closed once this old, when it is next idle.
    #[serde(default = "default_max_lifetime", with = "duration::serde_duration")]
    pub max_lifetime: Duration,
    /// A connection idle for longer than this is checked (an empty query)
    /// before it is handed to a client.
    #[serde(
        default = "default_health_check_after",
        with = "duration::serde_duration"
    )]
    pub health_check_after: Duration,
    /// Most client statements (transaction pooling) kept prepared on one server
    /// connection; past it the least recently used is closed, and prepared
    /// again if a client runs it later. 0: no limit. As PgBouncer's setting
    /// of the same name.
    #[serde(default = "default_max_prepared_statements")]
    pub max_prepared_statements: usize,
}

fn default_max_prepared_statements() -> usize {
    200
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_health_check_after() -> Duration {
    Duration::from_secs(30)
}

fn default_pool_size() -> usize {
    20
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::default(),
            pool_size: default_pool_size(),
            checkout_timeout: default_checkout_timeout(),
            connect_timeout: default_connect_timeout(),
            min_idle: 0,
            idle_timeout: default_idle_timeout(),
            max_lifetime: default_max_lifetime(),
            health_check_after: default_health_check_after(),
            max_prepared_statements: default_max_prepared_statements(),
        }
    }
}

/// Lag and health monitoring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// How often each node is measured.
    #[serde(default = "default_interval", with = "duration::serde_duration")]
    pub interval: Duration,
    /// A replica further behind than this (in time) gets no reads.
    #[serde(default = "default_max_lag", with = "duration::serde_duration")]
    pub max_replica_lag: Duration,
    /// A replica further behind than this many WAL bytes gets no reads.
    #[serde(default = "default_max_lag_bytes")]
    pub max_replica_lag_bytes: u64,
    /// A replica shut out for lag gets reads again only once under this fraction
    /// of both limits (hysteresis, so it does not flap at the limit).
    #[serde(default = "default_readmit_fraction")]
    pub readmit_fraction: f64,
    /// What reads do when no replica qualifies: "primary" (run there) or "error"
    /// (an ErrorResponse naming each replica's lag).
    #[serde(default)]
    pub no_replica: NoReplica,
    /// How long a write waits for a primary during a failover before it fails
    /// with SQLSTATE 57P03.
    #[serde(
        default = "default_failover_timeout",
        with = "duration::serde_duration"
    )]
    pub failover_timeout: Duration,
    /// Login the monitor uses; defaults to the first user's server login.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `monitor.user`.
    #[serde(default)]
    pub password: Option<String>,
    /// Database the monitor connects to.
    #[serde(default = "default_monitor_db")]
    pub database: String,
}

fn default_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_max_lag() -> Duration {
    Duration::from_secs(1)
}
fn default_max_lag_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_readmit_fraction() -> f64 {
    0.5
}
fn default_failover_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What reads do when no replica is within the lag limits.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoReplica {
    /// Read from the primary (slower, never stale).
    #[default]
    Primary,
    /// Fail the read with a clear error.
    Error,
}

fn default_monitor_db() -> String {
    "postgres".to_owned()
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            max_replica_lag: default_max_lag(),
            max_replica_lag_bytes: default_max_lag_bytes(),
            readmit_fraction: default_readmit_fraction(),
            no_replica: NoReplica::default(),
            failover_timeout: default_failover_timeout(),
            user: None,
            password: None,
            database: default_monitor_db(),
        }
    }
}

/// Protocol limits that protect the process from hostile or broken clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message (bytes) accepted from a client or server; larger ones close the client with 08P01.
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
    /// How long a client may take from connecting to finishing authentication.
    #[serde(default = "default_startup_timeout", with = "duration::serde_duration")]
    pub startup_timeout: Duration,
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_message() -> usize {
    64 * 1024 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: default_max_message(),
            startup_timeout: default_startup_timeout(),
        }
    }
}

/// Statement routing. The router cannot see what a user-defined function
/// does: with the primary's catalog loaded, a call to a VOLATILE user function
/// (or to a name the catalog does not know) sends the statement to the
/// primary, STABLE and IMMUTABLE ones are fine on a replica. These lists
/// override that per function. Entries are `"name"` (any schema, any case) or
/// `"schema.name"` (exact; unquoted parts are lower-cased as in SQL, quote a
/// part to keep its case: `"\"MySchema\".f"`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Volatile functions that are nevertheless safe on a replica (they only
    /// read, e.g. a function not marked STABLE by mistake).
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Functions that must run on the primary even though marked STABLE or
    /// IMMUTABLE (e.g. one that writes through dblink or a mislabelled one).
    #[serde(default)]
    pub primary_functions: Vec<String>,
}

/// Read-your-writes guarantee (see the `consistency` module and the README).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyMode {
    /// Reads go to any replica within the lag limits, even right after a write.
    None,
    /// After a session writes, its reads go to the primary for `pin_duration`.
    Pin,
    /// After a session writes, its reads go only to nodes that have replayed the
    /// write's commit (its WAL position): the primary, or a caught-up replica.
    #[default]
    Causal,
}

impl ConsistencyMode {
    /// The name used in config files and `SET pgrouter.consistency`.
    pub fn name(self) -> &'static str {
        match self {
            ConsistencyMode::None => "none",
            ConsistencyMode::Pin => "pin",
            ConsistencyMode::Causal => "causal",
        }
    }

    /// Parses a mode name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::Pin, Self::Causal]
            .into_iter()
            .find(|mode| mode.name().eq_ignore_ascii_case(name))
    }
}

/// Read-your-writes settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// "causal" (default), "pin" or "none"; a session may change it with
    /// `SET pgrouter.consistency = '...'`.
    #[serde(default)]
    pub mode: ConsistencyMode,
    /// In "pin" mode: how long after a write the session's reads stay on the primary.
    #[serde(default = "default_pin_duration", with = "duration::serde_duration")]
    pub pin_duration: Duration,
    /// In "causal" mode: how long a read may wait for a replica to replay the
    /// session's last write before it goes to the primary instead (0: never wait).
    #[serde(default, with = "duration::serde_duration")]
    pub causal_wait: Duration,
    /// How long the router remembers a causal key's (`/* pgrouter: key=... */`) last write.
    #[serde(default = "default_key_ttl", with = "duration::serde_duration")]
    pub key_ttl: Duration,
    /// Most causal keys remembered at once; past it the oldest are forgotten
    /// (a forgotten key's reads lose their guarantee only if a replica is still
    /// behind after `key_ttl`-old writes, so keep it generous).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_pin_duration() -> Duration {
    Duration::from_secs(2)
}
fn default_key_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_max_keys() -> usize {
    100_000
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            mode: ConsistencyMode::default(),
            pin_duration: default_pin_duration(),
            causal_wait: Duration::ZERO,
            key_ttl: default_key_ttl(),
            max_keys: default_max_keys(),
        }
    }
}

/// The admin console: a virtual database answering `SHOW POOLS`, `SHOW NODES`
/// and the like (see the `admin` module), as PgBouncer's `pgbouncer` database does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Users (from `[[users]]`, logging in as usual) who may connect to the
    /// console. Empty (the default) turns the console off, and a database of
    /// that name is then an ordinary database on the servers.
    #[serde(default)]
    pub users: Vec<String>,
    /// The database name clients connect to for the console.
    #[serde(default = "default_admin_database")]
    pub database: String,
}

fn default_admin_database() -> String {
    "pgrouter".to_owned()
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            database: default_admin_database(),
        }
    }
}
