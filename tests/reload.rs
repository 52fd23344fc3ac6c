//! `pgrouter run --config FILE` as operators run it: SIGHUP re-reads the file,
//! applies a valid one without dropping clients, and keeps the old one when the
//! new one is invalid.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgrouter::cluster::{Cluster, ClusterSpec};

fn config_text(cluster: &Cluster, port: u16, max_lag: &str) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\n[monitor]\nmax_replica_lag = \"{max_lag}\"\n\n[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        cluster.superuser(),
        cluster.password()
    );
    for (i, node) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\nrole = \"{role}\"\n",
            node.name, node.host, node.port
        ));
    }
    text
}

/// Sends a signal to the router process.
fn signal(pid: &str, which: &str) {
    let sent = Command::new("kill").args([which, pid]).status().unwrap();
    assert!(sent.success(), "kill {which} {pid}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line containing {needle:?} within {within:?}")
}

async fn read_port(client: &tokio_postgres::Client) -> u16 {
    client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get::<_, i32>(0) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_without_dropping_clients() {
    let cluster = Cluster::start(ClusterSpec::default()).await.unwrap();
    let port = free_port();
    let dir = tempdir();
    let path = dir.join("pgrouter.toml");
    std::fs::write(&path, config_text(&cluster, port, "30s")).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    wait_for_line(&lines, "accepting connections", Duration::from_secs(20));
    let dsn = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname=postgres",
        cluster.superuser(),
        cluster.password()
    );
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let primary_port = cluster.primary().port;
    client
        .batch_execute("CREATE TABLE beat (at timestamptz)")
        .await
        .unwrap();
    cluster.pause_replay(0).await.unwrap();
    cluster.pause_replay(1).await.unwrap();
    let writer = {
        let client_dsn = cluster.dsn(cluster.primary());
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&client_dsn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for _ in 0..300 {
                c.batch_execute("INSERT INTO beat VALUES (now())")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(
        read_port(&client).await,
        primary_port,
        "1 s of lag is within 30 s"
    );

    // An invalid file is rejected and the running config stays.
    std::fs::write(&path, "listen = 12\n").unwrap();
    let pid = child.id().to_string();
    signal(&pid, "-HUP");
    wait_for_line(&lines, "config reload rejected", Duration::from_secs(5));
    assert_ne!(read_port(&client).await, primary_port);

    // A valid file with a lower threshold takes effect for the same client.
    std::fs::write(&path, config_text(&cluster, port, "300ms")).unwrap();
    signal(&pid, "-HUP");
    wait_for_line(&lines, "config reloaded", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_port(&client).await,
        primary_port,
        "lagging replicas are now over the threshold"
    );

    writer.abort();
    cluster.resume_replay(0).await.unwrap();
    cluster.resume_replay(1).await.unwrap();
    signal(&pid, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
    cluster.shutdown().await.unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgrouter-reload-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
