//! A real PostgreSQL primary plus N streaming replicas, started from the local
//! server binaries, for `pgrouter demo` and every integration test.
//!
//! Role: own the lifecycle of a throwaway cluster (create, start, stop, kill,
//! promote, tear down) and expose the few replication controls tests need (pause
//! replay, measure lag, wait for catch-up). It must not be used by the router's
//! serving path, must not hold global state (two clusters in one process work side
//! by side), must not assume fixed ports unless the caller asks for them, and must
//! never leave servers running behind a dropped [`Cluster`].
//!
//! Layout of a cluster's base dir: `<name>/` data dirs, `<name>.log` server logs,
//! `sock/<name>/` unix socket dirs, and a marker file that allows a later run with
//! the same explicit dir to wipe it after a crash.

mod bins;
#[cfg(feature = "testcontainers")]
mod containers;
mod error;
mod node;
mod process;
mod router_config;
mod sql;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use bins::find_bin_dir;
#[cfg(feature = "testcontainers")]
pub use containers::{ContainerCluster, start_in_containers};
pub use error::ClusterError;

use bins::Bins;

/// How many times a node gets a new free port after losing a race for its port.
const PORT_ATTEMPTS: usize = 5;
/// How long a freshly started cluster may take until every replica streams.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);
const HOST: &str = "127.0.0.1";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of streaming replicas.
    pub replicas: usize,
    /// `Some(p)`: primary on `p`, replica `i` on `p + 1 + i`. `None`: free ports.
    pub base_port: Option<u16>,
    /// `Some(dir)`: keep everything there (wiping an earlier cluster in it).
    /// `None`: a fresh temp dir, removed on shutdown or drop.
    pub dir: Option<PathBuf>,
    pub superuser: String,
    pub password: String,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            replicas: 2,
            base_port: None,
            dir: None,
            superuser: "pgrouter".to_owned(),
            password: "pgrouter".to_owned(),
        }
    }
}

/// The role a node was started in (a promoted replica keeps `Replica` here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Replica,
}

/// Where a node lives. Names are `primary` and `replica<i>` (i = replica index).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: NodeRole,
    pub data_dir: PathBuf,
}

/// A running cluster. Dropping it stops every node immediately (and removes a temp
/// dir); [`Cluster::shutdown`] does the same gracefully and reports errors.
pub struct Cluster {
    bins: Bins,
    base_dir: PathBuf,
    /// Only a dir we created ourselves is removed; an explicit `--dir` is kept so
    /// its logs can be read after the demo.
    remove_base_dir: bool,
    superuser: String,
    password: String,
    primary: NodeInfo,
    replicas: Vec<NodeInfo>,
    /// Set once `shutdown` stopped and removed everything, so `Drop` has nothing to do.
    shut_down: bool,
}

impl std::fmt::Debug for Cluster {
    // Hand-written so the password never lands in test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("base_dir", &self.base_dir)
            .field("primary", &self.primary)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Create, start and wait for a primary and `spec.replicas` streaming replicas.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        let started = Instant::now();
        let bin_dir = find_bin_dir()?;
        let run_as = bins::server_user()?;
        let (base_dir, temp) = match &spec.dir {
            Some(dir) => (
                std::path::absolute(dir).map_err(|source| ClusterError::Io {
                    step: "resolving the cluster directory",
                    path: dir.clone(),
                    source,
                })?,
                false,
            ),
            None => {
                // /tmp rather than $TMPDIR when dropping privileges: the server user
                // must be able to traverse every parent of its data dirs.
                let root = if run_as.is_some() {
                    PathBuf::from("/tmp")
                } else {
                    std::env::temp_dir()
                };
                process::reap_abandoned(&root);
                let unique = format!(
                    "pgrouter-cluster-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                );
                (root.join(unique), true)
            }
        };
        let ports = match spec.base_port {
            Some(base) => (0..=spec.replicas)
                .map(|i| {
                    u16::try_from(i)
                        .ok()
                        .and_then(|i| base.checked_add(i))
                        .ok_or(ClusterError::PortRange {
                            base,
                            nodes: spec.replicas + 1,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => free_ports(spec.replicas + 1)?,
        };
        let node = |name: String, port: u16, role: NodeRole| NodeInfo {
            data_dir: base_dir.join(&name),
            name,
            host: HOST.to_owned(),
            port,
            role,
        };
        let primary = node("primary".to_owned(), ports[0], NodeRole::Primary);
        let replicas = (0..spec.replicas)
            .map(|i| node(format!("replica{i}"), ports[i + 1], NodeRole::Replica))
            .collect();
        let mut cluster = Cluster {
            bins: Bins {
                dir: bin_dir,
                run_as,
                work_dir: base_dir.clone(),
            },
            base_dir,
            remove_base_dir: false,
            superuser: spec.superuser,
            password: spec.password,
            primary,
            replicas,
            shut_down: false,
        };
        // From here on an early `?` drops `cluster`, which stops whatever already runs.
        if temp {
            node::create_temp_base(&cluster.bins, &cluster.base_dir)?;
            cluster.remove_base_dir = true;
        } else {
            node::reuse_base(&cluster.bins, &cluster.base_dir).await?;
        }
        cluster.bring_up(spec.base_port.is_none()).await?;
        tracing::info!(
            base_dir = %cluster.base_dir.display(),
            primary_port = cluster.primary.port,
            replicas = cluster.replicas.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "test cluster started"
        );
        Ok(cluster)
    }

    async fn bring_up(&mut self, retry_ports: bool) -> Result<(), ClusterError> {
        node::init_primary(
            &self.bins,
            &self.primary,
            &self.superuser,
            &self.password,
            self.replicas.len(),
        )
        .await?;
        start_fresh_node(&self.bins, &mut self.primary, retry_ports).await?;
        // Replicas are cloned and started concurrently: every integration test pays
        // for start-up, and part of each replica's time is spent waiting (backup
        // checkpoint, pg_ctl polling) rather than computing.
        let mut tasks = tokio::task::JoinSet::new();
        for (index, replica) in self.replicas.iter().enumerate() {
            let bins = self.bins.clone();
            let mut replica = replica.clone();
            let primary_port = self.primary.port;
            let (superuser, password) = (self.superuser.clone(), self.password.clone());
            tasks.spawn(async move {
                node::base_backup(&bins, &replica, primary_port, &superuser, &password).await?;
                start_fresh_node(&bins, &mut replica, retry_ports).await?;
                Ok::<_, ClusterError>((index, replica))
            });
        }
        // Let every task finish even after a failure: an aborted task could leave a
        // postmaster starting up after Drop looked for it.
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.map_err(ClusterError::TaskFailed) {
                Ok(Ok((index, replica))) => self.replicas[index] = replica,
                Ok(Err(err)) | Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        for i in 0..self.replicas.len() {
            self.wait_streaming(i, STREAMING_TIMEOUT).await?;
        }
        Ok(())
    }

    /// The node started as primary.
    pub fn primary(&self) -> &NodeInfo {
        &self.primary
    }

    /// The nodes started as replicas, by index.
    pub fn replicas(&self) -> &[NodeInfo] {
        &self.replicas
    }

    /// All nodes, primary first.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .cloned()
            .collect()
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The directory holding data dirs, logs and sockets.
    pub fn base_dir(&self) -> &std::path::Path {
        &self.base_dir
    }

    fn node_named(&self, name: &str) -> Result<&NodeInfo, ClusterError> {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::UnknownNode {
                name: name.to_owned(),
                known: std::iter::once(&self.primary)
                    .chain(&self.replicas)
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn replica(&self, index: usize) -> Result<&NodeInfo, ClusterError> {
        self.replicas.get(index).ok_or(ClusterError::NoSuchReplica {
            index,
            count: self.replicas.len(),
        })
    }

    /// `pg_ctl stop -m fast`. Stopping a stopped node is a no-op.
    pub async fn stop_node(&self, name: &str) -> Result<(), ClusterError> {
        node::stop(&self.bins, self.node_named(name)?, "fast").await
    }

    /// SIGKILL the postmaster (a crash), then wait until it is gone.
    pub async fn kill_node(&self, name: &str) -> Result<(), ClusterError> {
        node::kill(self.node_named(name)?).await
    }

    /// `pg_ctl start -w` on its old port; also after `kill_node`.
    pub async fn start_node(&self, name: &str) -> Result<(), ClusterError> {
        node::start(&self.bins, self.node_named(name)?).await
    }

    /// Fast stop of every node, then removal of a temp dir.
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        let mut first_error = None;
        // Replicas first, so the primary's walsenders have nobody left to wait for.
        for node in self
            .replicas
            .iter()
            .rev()
            .chain(std::iter::once(&self.primary))
        {
            if let Err(err) = node::stop(&self.bins, node, "fast").await {
                first_error.get_or_insert(err);
            }
        }
        if let Some(err) = first_error {
            // `self` drops here: Drop retries with an immediate stop and cleans up.
            return Err(err);
        }
        if self.remove_base_dir {
            tokio::fs::remove_dir_all(&self.base_dir)
                .await
                .map_err(|source| ClusterError::Io {
                    step: "removing the temporary cluster directory",
                    path: self.base_dir.clone(),
                    source,
                })?;
        }
        self.shut_down = true;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        for node in self.replicas.iter().chain(std::iter::once(&self.primary)) {
            node::stop_blocking(&self.bins, node);
        }
        if self.remove_base_dir {
            let _ = std::fs::remove_dir_all(&self.base_dir);
        }
    }
}

/// First start of a node. A free port can be taken by someone else between our
/// probe and the server's bind; then pick another port and try again.
async fn start_fresh_node(
    bins: &Bins,
    node: &mut NodeInfo,
    retry_ports: bool,
) -> Result<(), ClusterError> {
    let mut attempt = 1;
    loop {
        node::configure(bins, node)?;
        match node::start(bins, node).await {
            Ok(()) => return Ok(()),
            Err(err) if retry_ports && attempt < PORT_ATTEMPTS && node::is_port_clash(&err) => {
                let old = node.port;
                node.port = free_ports(1)?[0];
                tracing::debug!(node = %node.name, old, new = node.port, "port taken, retrying");
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Reserve `n` distinct free ports by binding them all at once, then release them
/// for the servers. Another process may grab one meanwhile; callers retry.
fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((HOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::NoFreePort)?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::NoFreePort)
}

/// Parse a PostgreSQL LSN `X/Y` (hex halves) into `(X << 32) | Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (high, low) = s.trim().split_once('/')?;
    let valid = |h: &str| !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid(high) || !valid(low) {
        return None;
    }
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_lsn_examples() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("A/FFFFFFFF"), Some((0xA << 32) | 0xFFFF_FFFF));
        assert_eq!(parse_lsn(" 2/a0 "), Some((2 << 32) | 0xA0));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
    }

    #[test]
    fn parse_lsn_rejects_garbage() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "12",
            "x/1",
            "1/2/3",
            "100000000/0",
            "+1/0",
            "-1/0",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn default_spec() {
        let spec = ClusterSpec::default();
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.base_port, None);
        assert_eq!(spec.superuser, "pgrouter");
        assert_eq!(spec.password, "pgrouter");
    }

    #[test]
    fn cluster_can_move_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send_future<F: std::future::Future + Send>(_: F) {}
        send_sync::<Cluster>();
        // Only builds the future (never polled): start must be spawnable.
        send_future(Cluster::start(ClusterSpec::default()));
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }
}
