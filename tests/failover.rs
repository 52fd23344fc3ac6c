//! Node failures through the router: a replica killed under load, and a replica
//! promoted after the primary stops.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

fn pgbench() -> String {
    if std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_ok()
    {
        return "pgbench".to_owned();
    }
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("bin/pgbench"))
                .find(|p| p.exists())
        });
    found
        .map(|p| p.display().to_string())
        .expect("pgbench is installed (bash .ci/setup)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_select_only_load_fails_no_transaction() {
    let env = common::start().await;
    let init = tokio::process::Command::new(pgbench())
        .args(["-i", "-s", "1", "-q", &env.url()])
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    env.wait_replicas().await;

    for mode in ["simple", "prepared"] {
        let bench = tokio::process::Command::new(pgbench())
            .args([
                "-S",
                "-T",
                "6",
                "-c",
                "4",
                "-j",
                "2",
                "-M",
                mode,
                &env.url(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = env.cluster.replicas()[1].name.clone();
        let killed_at = Instant::now();
        env.cluster.kill_node(&victim).await.unwrap();
        let output = bench.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "-M {mode}: {}",
            stdout
                .lines()
                .filter(|l| l.contains("tps") || l.contains("failed"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert!(
            output.status.success(),
            "pgbench failed after the replica kill:\n{stdout}\n{stderr}"
        );
        assert!(
            !stdout.contains("number of failed transactions")
                || stdout.contains("number of failed transactions: 0 "),
            "{stdout}"
        );
        let down = env.handle.topology().nodes[2].up;
        assert!(!down, "the killed replica is known to be down");
        eprintln!(
            "replica kill routed around; killed {:?} before pgbench ended",
            killed_at.elapsed()
        );
        env.cluster.start_node(&victim).await.unwrap();
        env.cluster
            .wait_streaming(1, Duration::from_secs(30))
            .await
            .unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica_without_restarting() {
    let env = common::start_with(|c| c.monitor.failover_timeout = Duration::from_secs(10)).await;
    let client = env.client().await;
    client
        .batch_execute("CREATE TABLE fo (v int); INSERT INTO fo VALUES (1)")
        .await
        .unwrap();
    env.wait_replicas().await;

    env.cluster.stop_node("primary").await.unwrap();
    // While there is no primary, a write waits up to failover_timeout, then fails
    // clearly; here the promotion comes first.
    let promoter = {
        let started = Instant::now();
        env.cluster.promote(0).await.unwrap();
        started
    };
    let new_primary = env.replica_ports()[0];
    let deadline = Instant::now() + Duration::from_secs(15);
    let took = loop {
        match client.batch_execute("INSERT INTO fo VALUES (2)").await {
            Ok(()) => break promoter.elapsed(),
            Err(err) => {
                assert!(Instant::now() < deadline, "writes never resumed: {err:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("writes resumed {took:?} after the promotion started");
    let row = client
        .query_one(
            "/* pgrouter: primary */ SELECT inet_server_port(), count(*) FROM fo",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as u16, new_primary);
    assert_eq!(row.get::<_, i64>(1), 2);
    assert!(took < Duration::from_secs(5), "{took:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_primary_fail_clearly_after_the_timeout() {
    let env = common::start_with(|c| c.monitor.failover_timeout = Duration::from_secs(1)).await;
    let client = env.client().await;
    client.batch_execute("SELECT 1").await.unwrap();
    env.cluster.stop_node("primary").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut last = None;
    // The first write may still find the old connection and fail with 08006; the
    // next ones wait failover_timeout for a primary and fail with 57P03.
    for _ in 0..3 {
        if let Err(err) = client.batch_execute("CREATE TABLE nope (v int)").await {
            last = err.code().cloned();
        }
    }
    let code = last.expect("writes fail without a primary");
    assert!(
        code.code().starts_with("08") || code.code().starts_with("57P0"),
        "{code:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Reads still work from the replicas.
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    env.stop().await;
}
