//! Smoke test of the local test cluster (`pgrouter::cluster`): a real primary with
//! two streaming replicas, replay pause/resume, crash and restart, clean shutdown;
//! two clusters side by side; re-use of an explicit dir after a crashed run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use pgrouter::cluster::{Cluster, ClusterSpec, NodeRole};
use tokio_postgres::Client;

const CATCH_UP: Duration = Duration::from_secs(30);

async fn in_recovery(client: &Client) -> Result<bool> {
    Ok(client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0))
}

async fn ids(client: &Client) -> Result<Vec<i32>> {
    let rows = client
        .query("SELECT id FROM smoke ORDER BY id", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_two_replicas_pause_kill_restart() -> Result<()> {
    let t0 = Instant::now();
    let cluster = Cluster::start(ClusterSpec::default()).await?;
    eprintln!("cluster of 3 nodes started in {:?}", t0.elapsed());
    let base_dir = cluster.base_dir().to_owned();
    ensure!(base_dir.exists());
    ensure!(cluster.primary().role == NodeRole::Primary);
    ensure!(cluster.replicas().len() == 2);
    ensure!(cluster.nodes().len() == 3);
    ensure!(cluster.dsn(cluster.primary()).contains("dbname=postgres"));

    let primary = cluster.connect(cluster.primary()).await?;
    ensure!(!in_recovery(&primary).await?, "primary is in recovery");
    let mut replicas = Vec::new();
    for node in cluster.replicas() {
        let client = cluster.connect(node).await?;
        ensure!(
            in_recovery(&client).await?,
            "{} is not in recovery",
            node.name
        );
        replicas.push(client);
    }

    primary
        .batch_execute("CREATE TABLE smoke (id int PRIMARY KEY); INSERT INTO smoke VALUES (1);")
        .await?;
    for (i, client) in replicas.iter().enumerate() {
        cluster.wait_caught_up(i, CATCH_UP).await?;
        ensure!(ids(client).await? == vec![1], "replica {i} misses row 1");
    }

    cluster.pause_replay(0).await?;
    primary
        .batch_execute("INSERT INTO smoke VALUES (2)")
        .await?;
    let lag = cluster.replay_lag_bytes(0).await?;
    ensure!(lag > 0, "paused replica 0 reports no lag");
    ensure!(
        ids(&replicas[0]).await? == vec![1],
        "paused replica 0 replayed row 2"
    );
    cluster.wait_caught_up(1, CATCH_UP).await?;
    ensure!(ids(&replicas[1]).await? == vec![1, 2]);
    cluster.resume_replay(0).await?;
    cluster.wait_caught_up(0, CATCH_UP).await?;
    ensure!(
        ids(&replicas[0]).await? == vec![1, 2],
        "resumed replica 0 misses row 2"
    );

    let name = cluster.replicas()[1].name.clone();
    cluster.kill_node(&name).await?;
    ensure!(
        cluster.connect(&cluster.replicas()[1]).await.is_err(),
        "killed replica still accepts connections"
    );
    primary
        .batch_execute("INSERT INTO smoke VALUES (3)")
        .await?;
    cluster.start_node(&name).await?;
    cluster.wait_streaming(1, CATCH_UP).await?;
    cluster.wait_caught_up(1, CATCH_UP).await?;
    let restarted = cluster.connect(&cluster.replicas()[1]).await?;
    ensure!(in_recovery(&restarted).await?);
    ensure!(ids(&restarted).await? == vec![1, 2, 3]);

    drop((primary, replicas, restarted));
    cluster.shutdown().await?;
    ensure!(
        !base_dir.exists(),
        "{} survived shutdown",
        base_dir.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_at_once() -> Result<()> {
    let spec = || ClusterSpec {
        replicas: 1,
        ..ClusterSpec::default()
    };
    let (a, b) = tokio::join!(Cluster::start(spec()), Cluster::start(spec()));
    let (a, b) = (a.context("cluster a")?, b.context("cluster b")?);
    let ports_a: Vec<u16> = a.nodes().iter().map(|n| n.port).collect();
    let ports_b: Vec<u16> = b.nodes().iter().map(|n| n.port).collect();
    ensure!(
        ports_a.iter().all(|p| !ports_b.contains(p)),
        "{ports_a:?} vs {ports_b:?}"
    );
    ensure!(a.base_dir() != b.base_dir());
    for (cluster, value) in [(&a, 10), (&b, 20)] {
        let primary = cluster.connect(cluster.primary()).await?;
        primary
            .batch_execute(&format!(
                "CREATE TABLE smoke (id int); INSERT INTO smoke VALUES ({value})"
            ))
            .await?;
        cluster.wait_caught_up(0, CATCH_UP).await?;
        let replica = cluster.connect(&cluster.replicas()[0]).await?;
        ensure!(ids(&replica).await? == vec![value]);
    }
    let (dir_a, dir_b) = (a.base_dir().to_owned(), b.base_dir().to_owned());
    a.shutdown().await?;
    // Dropping (instead of shutdown) must clean up just as well.
    drop(b);
    ensure!(!dir_a.exists() && !dir_b.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_dir_survives_a_crashed_run() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("pgrouter-smoke-dir-{}", std::process::id()));
    let spec = || ClusterSpec {
        replicas: 1,
        dir: Some(dir.clone()),
        ..ClusterSpec::default()
    };
    let first = Cluster::start(spec()).await?;
    let old_pid = std::fs::read_to_string(first.primary().data_dir.join("postmaster.pid"))?;
    let old_pid = old_pid.lines().next().context("empty pid file")?.to_owned();
    // Simulate a crashed demo: the process is gone, its servers keep running.
    std::mem::forget(first);

    let second = Cluster::start(spec()).await?;
    let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap_or_default();
    ensure!(
        stat.is_empty()
            || stat
                .rsplit_once(')')
                .is_some_and(|(_, s)| s.trim_start().starts_with('Z')),
        "old primary {old_pid} still runs"
    );
    let primary = second.connect(second.primary()).await?;
    ensure!(!in_recovery(&primary).await?);
    drop(primary);
    second.shutdown().await?;
    ensure!(dir.exists(), "an explicit dir must be kept");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
