//! Client-side scale with transaction pooling, through the real binary as
//! operators run it (which raises its own open-files limit): 10,000 idle
//! client connections held at once while a new client is served, then 2,000
//! clients running select-only pgbench through pools of 20 server connections
//! per node with zero failed transactions.

mod common;

use std::time::{Duration, Instant};

use common::pgbench::{pgbench, pgbench_path, summarise};
use common::process::*;
use common::raw::{finish_login, raw_query, startup, tags};
use pgrouter::cluster::{Cluster, ClusterSpec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const IDLE_CLIENTS: usize = 10_000;
const ACTIVE_CLIENTS: u32 = 2_000;

/// Resident memory of a process, in KiB (from /proc).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn idle_login(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&startup()).await.unwrap();
    finish_login(&mut stream, Duration::from_secs(60)).await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_clients_then_two_thousand_active() {
    let cluster = Cluster::start(ClusterSpec::default()).await.unwrap();
    let port = free_port();
    let dir = tempdir("scale");
    let path = dir.join("pgrouter.toml");
    let text = config_text(
        &cluster,
        port,
        "auth = \"trust\"",
        "[pool]\nmode = \"transaction\"\npool_size = 20\ncheckout_timeout = \"30s\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let (mut child, _lines) = spawn_router(&path);
    let pid = child.id();

    // Warm up (pools, catalog), then measure memory around 10,000 idle logins.
    drop(idle_login(port).await);
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    while idle.len() < IDLE_CLIENTS {
        let batch: Vec<_> = (0..250).map(|_| tokio::spawn(idle_login(port))).collect();
        for login in batch {
            idle.push(login.await.unwrap());
        }
    }
    let after = rss_kib(pid);
    let per_client = (after.saturating_sub(before)) as f64 * 1024.0 / IDLE_CLIENTS as f64;
    println!(
        "{IDLE_CLIENTS} idle clients logged in within {:?}; router RSS {before} KiB -> {after} KiB: {per_client:.0} bytes per idle client",
        started.elapsed()
    );

    // With all of them connected, a new client and some of the idle ones are served.
    let mut fresh = idle_login(port).await;
    let answer = raw_query(&mut fresh, "SELECT 1").await;
    assert_eq!(tags(&answer), "TDCZ");
    for stream in idle.iter_mut().step_by(IDLE_CLIENTS / 20) {
        assert_eq!(tags(&raw_query(stream, "SELECT 1").await), "TDCZ");
    }
    drop(idle);

    // 2,000 active clients, pools of 20 per node, select-only for 10 s.
    let bin = pgbench_path();
    let url = format!(
        "postgres://{}@127.0.0.1:{port}/postgres",
        cluster.superuser()
    );
    let direct = format!(
        "postgres://{}:{}@127.0.0.1:{}/postgres",
        cluster.superuser(),
        cluster.password(),
        cluster.primary().port
    );
    pgbench(
        &bin,
        &["-i".into(), "-q".into(), "-s".into(), "2".into(), direct],
        Duration::from_secs(120),
    )
    .await;
    let args: Vec<String> = [
        "-S",
        "-n",
        "-T",
        "10",
        "-c",
        &ACTIVE_CLIENTS.to_string(),
        "-j",
        "2",
        &url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = pgbench(&bin, &args, Duration::from_secs(180)).await;
    let summary = summarise("pgbench -S -c 2000 through pgrouter", &out);
    println!(
        "{ACTIVE_CLIENTS} clients: {} transactions, {:.0} tps",
        summary.transactions, summary.tps
    );

    signal(&pid.to_string(), "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
    cluster.shutdown().await.unwrap();
}
