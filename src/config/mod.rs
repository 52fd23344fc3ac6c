//! Typed configuration: the TOML file operators write, parsed with serde
//! (`deny_unknown_fields`, so a typo is an error naming the key) and checked by
//! [`Config::validate`]. It must not read anything but its own file and must not
//! hold runtime state: a loaded `Config` is immutable and is swapped whole on reload.

mod duration;
mod sections;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use duration::parse_duration;
pub use sections::*;

/// Errors from reading or checking a config file. Always the operator's side.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config: `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    /// The error without the excerpt of the file a parse error quotes: what a
    /// client may be shown (the excerpt could hold a mistyped password line).
    pub fn without_excerpt(&self) -> String {
        match self {
            ConfigError::Parse { path, source } => {
                format!("invalid config file {path}: {}", source.message())
            }
            other => other.to_string(),
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Where a running router's config comes from, for SIGHUP and the admin
/// console's RELOAD.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: std::path::PathBuf,
    /// `pgrouter demo`'s file: its listen address and nodes stay the demo's own
    /// (and its users, when the file lists none), as at start-up.
    pub demo: bool,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address pgrouter listens on for clients, e.g. "127.0.0.1:6432".
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Threads that run client sessions. Default: half the cores (at least one),
    /// which leaves room for servers on the same machine and measured best on two
    /// cores; on a machine of its own, set it to the number of cores.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// How clients prove who they are to pgrouter: "scram-sha-256" (default), "md5" or "trust".
    #[serde(default)]
    pub auth: AuthMethod,
    /// Users clients may log in as, and how pgrouter logs in to the servers for them.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// The cluster's nodes: one primary and any number of replicas.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// Server connection pools.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Lag and health monitoring.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// How reads are spread over qualifying replicas.
    #[serde(default)]
    pub balance: BalanceConfig,
    /// Protocol limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Statement routing: how calls to user-defined functions are treated.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Read-your-writes: what a session's reads may see after its writes.
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    /// The admin console (off unless `admin.users` names someone).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// Half the cores, at least one (see `Config::worker_threads`).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn default_listen() -> String {
    "127.0.0.1:6432".to_owned()
}

/// Client authentication method.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the PostgreSQL default since 14).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge-response (legacy clients).
    #[serde(rename = "md5")]
    Md5,
    /// No password: any configured user may log in. Local development only.
    #[serde(rename = "trust")]
    Trust,
}

/// One login clients may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name clients send.
    pub name: String,
    /// The password clients must present (not needed with `auth = "trust"`).
    #[serde(default)]
    pub password: Option<String>,
    /// The role pgrouter logs in to the servers as; defaults to `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// The password pgrouter uses with the servers; defaults to `password`.
    #[serde(default)]
    pub server_password: Option<String>,
    /// Pool mode for this user's sessions; defaults to `pool.mode`.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
}

impl UserConfig {
    /// The role used on the servers.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// The password used on the servers, if any.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}

/// The role a node is expected to have; the monitor checks it at run time.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Primary,
    Replica,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A short name for logs and the admin console; defaults to "host:port".
    #[serde(default)]
    pub name: Option<String>,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Expected role: "primary" or "replica".
    pub role: NodeRole,
    /// This replica's time lag limit, overriding `monitor.max_replica_lag`.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub max_replica_lag: Option<Duration>,
    /// This replica's byte lag limit, overriding `monitor.max_replica_lag_bytes`.
    #[serde(default)]
    pub max_replica_lag_bytes: Option<u64>,
    /// This replica's relative share of reads (0: none).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How reads are spread over the replicas that qualify.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalanceStrategy {
    /// The replica with the fewest statements in flight per unit of weight.
    #[default]
    LeastOutstanding,
    /// Each in turn, in proportion to weight.
    RoundRobin,
    /// At random, in proportion to weight.
    Random,
}

/// Load balancing over replicas.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    /// "least_outstanding" (default), "round_robin" or "random".
    #[serde(default)]
    pub strategy: BalanceStrategy,
}

fn default_pg_port() -> u16 {
    5432
}

impl NodeConfig {
    /// The node's display name.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Reads and parses a file without [`Config::validate`], for callers that
    /// change it first (the demo replaces the node list) and validate after.
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The config to reload from `file` while `current` is in force (see
    /// [`Config::for_reload`]). Not validated here: reloading validates.
    pub fn reread(file: &ConfigFile, current: &Config) -> Result<Config, ConfigError> {
        let new = Self::load_unvalidated(&file.path)?;
        Ok(new.for_reload(file.demo, current))
    }

    /// This config as a reload of `current` takes it: as written, except in
    /// the demo, whose listen address and nodes (and users, when the file
    /// lists none) are the demo's own, as at its start-up. So a file without
    /// nodes is rejected on reload exactly as `check-config` rejects it.
    pub fn for_reload(mut self, demo: bool, current: &Config) -> Config {
        if demo {
            self.listen = current.listen.clone();
            self.nodes = current.nodes.clone();
            if self.users.is_empty() {
                self.users = current.users.clone();
            }
        }
        self
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Self::parse(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses config text without [`Config::validate`]; see [`Config::load_unvalidated`].
    pub fn parse_unvalidated(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::parse(text, origin)
    }

    fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
        })
    }

    /// Checks what serde cannot: cross-field rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("{:?} is not an IP:port address", self.listen),
            ));
        }
        let primaries = self
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Primary)
            .count();
        if primaries != 1 {
            return Err(invalid(
                "nodes",
                format!("exactly one node must have role = \"primary\" (found {primaries})"),
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.host.trim().is_empty() {
                return Err(invalid(format!("nodes[{i}].host"), "must not be empty"));
            }
            if node.port == 0 {
                return Err(invalid(format!("nodes[{i}].port"), "must not be 0"));
            }
        }
        if self.users.is_empty() {
            return Err(invalid("users", "at least one [[users]] entry is needed"));
        }
        for (i, user) in self.users.iter().enumerate() {
            if user.name.is_empty() {
                return Err(invalid(format!("users[{i}].name"), "must not be empty"));
            }
            if self.auth != AuthMethod::Trust && user.password.is_none() {
                return Err(invalid(
                    format!("users[{i}].password"),
                    "required unless auth = \"trust\"",
                ));
            }
            if self.users[..i].iter().any(|u| u.name == user.name) {
                return Err(invalid(
                    format!("users[{i}].name"),
                    format!("duplicate user {:?}", user.name),
                ));
            }
        }
        for (i, admin) in self.admin.users.iter().enumerate() {
            if self.user(admin).is_none() {
                return Err(invalid(
                    format!("admin.users[{i}]"),
                    format!("{admin:?} is not one of the [[users]]"),
                ));
            }
        }
        if self.admin.database.is_empty() {
            return Err(invalid("admin.database", "must not be empty"));
        }
        if self.worker_threads == Some(0) {
            return Err(invalid("worker_threads", "must be at least 1"));
        }
        if self.pool.pool_size == 0 {
            return Err(invalid("pool.pool_size", "must be at least 1"));
        }
        if self.pool.min_idle > self.pool.pool_size {
            return Err(invalid("pool.min_idle", "must not exceed pool.pool_size"));
        }
        if !(self.monitor.readmit_fraction > 0.0 && self.monitor.readmit_fraction <= 1.0) {
            return Err(invalid("monitor.readmit_fraction", "must be in (0, 1]"));
        }
        if self.consistency.max_keys == 0 {
            return Err(invalid("consistency.max_keys", "must be at least 1"));
        }
        if self.consistency.causal_wait > Duration::from_secs(10) {
            return Err(invalid(
                "consistency.causal_wait",
                "must be at most 10s (a read waits this long before it goes to the primary)",
            ));
        }
        if self.monitor.interval < Duration::from_millis(10) {
            return Err(invalid("monitor.interval", "must be at least 10ms"));
        }
        let lists = [
            ("read_only_functions", &self.routing.read_only_functions),
            ("primary_functions", &self.routing.primary_functions),
        ];
        for (list, entries) in lists {
            for (i, entry) in entries.iter().enumerate() {
                if let Err(err) = crate::router::FunctionName::parse(entry) {
                    return Err(invalid(format!("routing.{list}[{i}]"), err.to_string()));
                }
            }
        }
        if self.limits.max_message_size < 1024 {
            return Err(invalid(
                "limits.max_message_size",
                "must be at least 1024 bytes",
            ));
        }
        Ok(())
    }

    /// How old a replica's last measurement may be before it counts as over the
    /// lag limits: ten monitor intervals, at least one second. Generous enough that
    /// a briefly starved monitor does not shut every replica out at once, tight
    /// enough that a replica nobody can measure stops getting reads.
    pub fn measurement_stale_after(&self) -> Duration {
        (self.monitor.interval * 10).max(Duration::from_secs(1))
    }

    /// `worker_threads`, or the default when unset.
    pub fn effective_worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(default_worker_threads)
    }

    /// The user entry for a client login name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Index of the configured primary (validated to exist).
    pub fn primary_index(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.role == NodeRole::Primary)
            .unwrap_or(0)
    }

    /// A human-readable summary of the effective settings (passwords hidden).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "listen = {:?}\nauth = {:?}\n",
            self.listen, self.auth
        ));
        for u in &self.users {
            out.push_str(&format!(
                "user {:?} -> server user {:?} (password {})\n",
                u.name,
                u.server_user(),
                if u.server_password().is_some() {
                    "set"
                } else {
                    "none"
                }
            ));
        }
        for n in &self.nodes {
            out.push_str(&format!(
                "node {} {}:{} role={:?}\n",
                n.display_name(),
                n.host,
                n.port,
                n.role
            ));
        }
        out.push_str(&format!(
            "pool: mode={:?} pool_size={} checkout_timeout={:?} connect_timeout={:?}\n",
            self.pool.mode,
            self.pool.pool_size,
            self.pool.checkout_timeout,
            self.pool.connect_timeout
        ));
        out.push_str(&format!(
            "monitor: interval={:?} max_replica_lag={:?} max_replica_lag_bytes={} readmit_fraction={} no_replica={:?} failover_timeout={:?} database={:?}\n",
            self.monitor.interval,
            self.monitor.max_replica_lag,
            self.monitor.max_replica_lag_bytes,
            self.monitor.readmit_fraction,
            self.monitor.no_replica,
            self.monitor.failover_timeout,
            self.monitor.database
        ));
        out.push_str(&format!(
            "limits: max_message_size={}\n",
            self.limits.max_message_size
        ));
        let c = &self.consistency;
        out.push_str(&format!(
            "consistency: mode={} pin_duration={:?} causal_wait={:?} key_ttl={:?} max_keys={}\n",
            c.mode.name(),
            c.pin_duration,
            c.causal_wait,
            c.key_ttl,
            c.max_keys
        ));
        out
    }
}

#[cfg(test)]
mod tests;
