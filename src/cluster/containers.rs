//! The same throwaway primary + N streaming replicas as [`Cluster`], started in
//! Docker with `testcontainers` instead of from local PostgreSQL binaries: behind the
//! `testcontainers` cargo feature, for machines that have a Docker engine. Not
//! exercised by CI here (no Docker engine there): it compiles, but has never run.
//!
//! One Docker network per cluster (unique names: clusters work side by side), a
//! `postgres:15` primary with `wal_level=replica` and a `host replication all all
//! scram-sha-256` pg_hba line (init script), and per replica a `postgres:15`
//! container running `pg_basebackup -R` against the primary, then `postgres`.
//! [`NodeInfo`] has `127.0.0.1` and the mapped host port; its `data_dir` is a path
//! inside the container. `spec.base_port` and `spec.dir` are ignored.
//!
//! Offers `primary`, `replicas`, `nodes`, `superuser`, `password`, `dsn`, `shutdown`
//! (drop also removes the containers). Not offered, unlike [`Cluster`]: `base_dir`,
//! `stop_node`/`kill_node`/`start_node`, `connect`, `pause_replay`/`resume_replay`,
//! `replay_lag_bytes`, `wait_caught_up`, `wait_streaming`, `promote`,
//! `router_nodes`/`router_config`.
//!
//! [`Cluster`]: super::Cluster

use std::time::Duration;

use testcontainers::core::{ContainerPort, ImageExt, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage};

use super::{ClusterError, ClusterSpec, NodeInfo, NodeRole};

const IMAGE: &str = "postgres";
const TAG: &str = "15";
const PG_PORT: u16 = 5432;
const HOST: &str = "127.0.0.1";
/// The image's `PGDATA`; replicas clone into a fresh dir the server user can create.
const PRIMARY_DATA: &str = "/var/lib/postgresql/data";
const REPLICA_DATA: &str = "/tmp/replica-data";
/// Covers initdb plus the entrypoint's restart, or a base backup plus catch-up; the
/// image pull happens before this clock starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Logged by the final server only: the entrypoint's temporary set-up server runs
/// under `pg_ctl` without `-l`, which sends its log to stdout instead.
const READY: &str = "database system is ready to accept connections";
const STREAMING: &str = "started streaming WAL";
/// Sourced by the image's entrypoint after initdb; the entrypoint's own
/// `host all all all` line does not match replication connections.
const HBA_SCRIPT: &str =
    "echo 'host replication all all scram-sha-256' >> \"$PGDATA/pg_hba.conf\"\n";

/// A running containerised cluster. Dropping it removes every container.
pub struct ContainerCluster {
    superuser: String,
    password: String,
    primary: NodeInfo,
    replicas: Vec<NodeInfo>,
    /// Replicas in index order. Declared before the primary so drop removes them first.
    replica_containers: Vec<ContainerAsync<GenericImage>>,
    primary_container: ContainerAsync<GenericImage>,
}

impl std::fmt::Debug for ContainerCluster {
    // Hand-written so the password never lands in test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerCluster")
            .field("primary", &self.primary)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// Start a primary and `spec.replicas` streaming replicas in Docker and wait until
/// every replica streams. Needs a reachable Docker engine (`DOCKER_HOST` etc.).
pub async fn start_in_containers(spec: ClusterSpec) -> Result<ContainerCluster, ClusterError> {
    let unique = format!(
        "pgrouter-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let network = format!("{unique}-net");
    let primary_name = format!("{unique}-primary");
    // Hot standby refuses to start if it allows fewer WAL senders than its primary,
    // so primary and replicas get the same settings.
    let settings = [
        "wal_level=replica".to_owned(),
        format!("max_wal_senders={}", spec.replicas + 10),
        "hot_standby=on".to_owned(),
        "listen_addresses=*".to_owned(),
    ];

    let mut primary_cmd = vec!["postgres".to_owned()];
    for setting in &settings {
        primary_cmd.extend(["-c".to_owned(), setting.clone()]);
    }
    let primary_container = GenericImage::new(IMAGE, TAG)
        .with_exposed_port(PG_PORT.tcp())
        .with_wait_for(WaitFor::message_on_stderr(READY))
        .with_network(network.clone())
        .with_container_name(primary_name.clone())
        .with_env_var("POSTGRES_USER", spec.superuser.clone())
        .with_env_var("POSTGRES_PASSWORD", spec.password.clone())
        .with_copy_to(
            "/docker-entrypoint-initdb.d/10-replication-hba.sh",
            HBA_SCRIPT.as_bytes().to_vec(),
        )
        .with_cmd(primary_cmd)
        .with_startup_timeout(STARTUP_TIMEOUT)
        .start()
        .await
        .map_err(|err| docker_error("starting the primary container", err))?;
    let primary = node_info(
        &primary_container,
        "primary",
        NodeRole::Primary,
        PRIMARY_DATA,
    )
    .await?;

    // Started concurrently; `join_all` (not `try_join_all`) lets every start finish,
    // so a failure never abandons a half-created container.
    let script = replica_script(&settings);
    let starts = (0..spec.replicas).map(|i| {
        GenericImage::new(IMAGE, TAG)
            .with_entrypoint("bash")
            .with_exposed_port(PG_PORT.tcp())
            .with_wait_for(WaitFor::message_on_stderr(STREAMING))
            .with_network(network.clone())
            .with_container_name(format!("{unique}-replica{i}"))
            .with_user("postgres")
            .with_env_var("PGHOST", primary_name.clone())
            .with_env_var("PGUSER", spec.superuser.clone())
            .with_env_var("PGPASSWORD", spec.password.clone())
            .with_cmd(["-c".to_owned(), script.clone()])
            .with_startup_timeout(STARTUP_TIMEOUT)
            .start()
    });
    // Collecting into `Result` drops (so removes) the started ones on an error.
    let replica_containers = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| docker_error("starting a replica container", err))?;
    let mut replicas = Vec::with_capacity(spec.replicas);
    for (i, container) in replica_containers.iter().enumerate() {
        let name = format!("replica{i}");
        replicas.push(node_info(container, &name, NodeRole::Replica, REPLICA_DATA).await?);
    }
    tracing::info!(
        network = %network,
        primary_port = primary.port,
        replicas = replicas.len(),
        "containerised test cluster started"
    );
    Ok(ContainerCluster {
        superuser: spec.superuser,
        password: spec.password,
        primary,
        replicas,
        replica_containers,
        primary_container,
    })
}

impl ContainerCluster {
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

    /// libpq-style connection string for `node`, database `postgres`.
    pub fn dsn(&self, node: &NodeInfo) -> String {
        super::sql::node_dsn(node, &self.superuser, &self.password)
    }

    /// Remove the replicas, then the primary, reporting the first error (the
    /// containers that failed to go are still removed in the background on drop).
    pub async fn shutdown(self) -> Result<(), ClusterError> {
        let mut first_error = None;
        for container in self.replica_containers.into_iter().rev() {
            if let Err(err) = container.rm().await {
                first_error.get_or_insert(docker_error("removing a replica container", err));
            }
        }
        if let Err(err) = self.primary_container.rm().await {
            first_error.get_or_insert(docker_error("removing the primary container", err));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The replica's whole life: wait for the primary over TCP, clone it with a
/// `primary_conninfo` (`-R`, password included from `PGPASSWORD`), then become the
/// container's main process so its log is the container's stderr.
fn replica_script(settings: &[String]) -> String {
    let flags: String = settings.iter().map(|s| format!(" -c '{s}'")).collect();
    format!(
        "set -e\n\
         until pg_isready -q; do sleep 0.5; done\n\
         pg_basebackup -h \"$PGHOST\" -D {REPLICA_DATA} -R -X stream -c fast\n\
         exec postgres -D {REPLICA_DATA}{flags}\n"
    )
}

async fn node_info(
    container: &ContainerAsync<GenericImage>,
    name: &str,
    role: NodeRole,
    data_dir: &str,
) -> Result<NodeInfo, ClusterError> {
    let port = container
        .get_host_port_ipv4(ContainerPort::Tcp(PG_PORT))
        .await
        .map_err(|err| docker_error("looking up a mapped container port", err))?;
    Ok(NodeInfo {
        name: name.to_owned(),
        host: HOST.to_owned(),
        port,
        role,
        data_dir: data_dir.into(),
    })
}

/// testcontainers errors go into the existing `Spawn` variant as the `io::Error`
/// source, so the chain still shows the Docker-side cause.
fn docker_error(step: &str, err: testcontainers::TestcontainersError) -> ClusterError {
    ClusterError::Spawn {
        step: step.to_owned(),
        program: format!("docker ({IMAGE}:{TAG})"),
        source: std::io::Error::other(err),
    }
}
