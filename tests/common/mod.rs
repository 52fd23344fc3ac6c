//! Shared test harness: a real primary + 2 streaming replicas (from `cluster`) with
//! a router running in-process on port 0 in front of them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pgrouter::cluster::{Cluster, ClusterSpec};
use pgrouter::config::Config;
use pgrouter::{Router, RouterHandle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

pub struct TestEnv {
    pub cluster: Cluster,
    pub addr: SocketAddr,
    pub handle: RouterHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A cluster and a router with the default config.
pub async fn start() -> TestEnv {
    start_with(|_| {}).await
}

/// A cluster and a router whose config `tweak` may change.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestEnv {
    start_after_setup("", tweak).await
}

/// Like [`start_with`], running `setup_sql` on the primary before the router starts.
pub async fn start_after_setup(setup_sql: &str, tweak: impl FnOnce(&mut Config)) -> TestEnv {
    let _ = tracing_subscriber_init();
    let cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("cluster starts");
    if !setup_sql.is_empty() {
        let primary = cluster
            .connect(cluster.primary())
            .await
            .expect("connect to primary");
        primary
            .batch_execute(setup_sql)
            .await
            .expect("setup SQL runs");
    }
    let mut config = base_config(&cluster);
    tweak(&mut config);
    let router = Router::new(config).expect("config is valid");
    let handle = router.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        router
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("router runs");
    });
    TestEnv {
        cluster,
        addr,
        handle,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Logs go to the test's output when RUST_LOG is set (e.g. RUST_LOG=pgrouter=debug).
fn tracing_subscriber_init() -> Option<()> {
    let filter = std::env::var("RUST_LOG").ok()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init()
        .ok()
}

pub fn base_config(cluster: &Cluster) -> Config {
    cluster
        .router_config("127.0.0.1:0")
        .expect("cluster router config")
}

impl TestEnv {
    /// key=value DSN for tokio-postgres, through the router.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname=postgres",
            self.addr.port(),
            self.cluster.superuser(),
            self.cluster.password()
        )
    }

    /// URL for psql and pgbench, through the router.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            self.cluster.superuser(),
            self.cluster.password(),
            self.addr.port()
        )
    }

    /// A tokio-postgres client through the router.
    pub async fn client(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.dsn(), NoTls)
            .await
            .expect("connect through the router");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// A client straight to the primary (bypassing the router).
    pub async fn primary_direct(&self) -> Client {
        self.cluster
            .connect(self.cluster.primary())
            .await
            .expect("connect to primary")
    }

    pub fn primary_port(&self) -> u16 {
        self.cluster.primary().port
    }

    pub fn replica_ports(&self) -> Vec<u16> {
        self.cluster.replicas().iter().map(|r| r.port).collect()
    }

    /// Waits until every replica has replayed everything the primary wrote so far.
    pub async fn wait_replicas(&self) {
        for i in 0..self.cluster.replicas().len() {
            self.cluster
                .wait_caught_up(i, Duration::from_secs(30))
                .await
                .expect("replica catches up");
        }
    }

    /// Stops the router and the cluster.
    pub async fn stop(mut self) {
        self.stop_router().await;
    }

    /// Drops the router's `serve` future without a shutdown signal (as when
    /// its task is aborted); the cluster keeps running.
    pub async fn abort_router(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops the router (as a shutdown signal would) and waits for `serve`
    /// to return (10 s at most); the cluster keeps running.
    pub async fn stop_router(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// The port of the server that ran a statement, via simple query.
pub async fn server_port(client: &Client, sql_prefix: &str) -> u16 {
    let rows = client
        .simple_query(&format!("{sql_prefix}SELECT inet_server_port()"))
        .await
        .expect("inet_server_port");
    for row in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = row {
            return row.get(0).and_then(|p| p.parse().ok()).expect("a port");
        }
    }
    panic!("no row")
}
pub mod pgbench;
pub mod process;
pub mod raw;

/// The first column of the first row of a simple query's answer, as text.
pub fn first_text(rows: Vec<tokio_postgres::SimpleQueryMessage>) -> String {
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

/// The primary backend that runs a read-write transaction; in transaction
/// pooling its connection then waits, idle, in the primary's pool.
pub async fn primary_pid(client: &Client) -> String {
    first_text(
        client
            .simple_query("BEGIN; SELECT pg_backend_pid(); COMMIT")
            .await
            .expect("the transaction runs"),
    )
}

/// Server connections pgrouter holds on the primary (the monitor's own
/// connection and the test's direct one excluded).
pub async fn router_backends(env: &TestEnv) -> i64 {
    router_backends_seen_by(&env.primary_direct().await).await
}

/// [`router_backends`] through a direct connection the caller keeps, so that
/// polling leaves no exiting backend of its own behind to be counted.
pub async fn router_backends_seen_by(direct: &Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid() AND coalesce(application_name, '') <> 'pgrouter_monitor'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}
