//! `pgrouter run --config FILE` as operators run it: SIGHUP re-reads the file,
//! applies a valid one without dropping clients, and keeps the old one when the
//! new one is invalid.

mod common;

use std::time::Duration;

use common::process::*;
use pgrouter::cluster::{Cluster, ClusterSpec};

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
    let dir = tempdir("reload");
    let path = dir.join("pgrouter.toml");
    std::fs::write(
        &path,
        config_text(&cluster, port, "", "[monitor]\nmax_replica_lag = \"30s\"\n"),
    )
    .unwrap();

    let (mut child, lines) = spawn_router(&path);
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
    std::fs::write(
        &path,
        config_text(
            &cluster,
            port,
            "",
            "[monitor]\nmax_replica_lag = \"300ms\"\n",
        ),
    )
    .unwrap();
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

/// A reload that changes the node list (a replica added, another removed, the
/// order changed): from then on reads follow the new list, writes still reach
/// the primary at its new position, and a connected client never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_the_node_list_routes_by_the_new_list() {
    let env = common::start_with(|config| config.nodes.truncate(2)).await;
    // Reads are checked on a connection that never writes: a writer's own reads
    // wait for its WAL (read-your-writes) and may go to the primary meanwhile.
    let client = env.client().await;
    let writer = env.client().await;
    let replicas = env.replica_ports();
    writer
        .batch_execute("CREATE TABLE r (a int)")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(common::server_port(&client, "").await, replicas[0]);
    }

    let mut config = common::base_config(&env.cluster);
    let primary = config.nodes.remove(0);
    config.nodes.retain(|n| n.port == replicas[1]);
    config.nodes.push(primary);
    env.handle.reload(config).unwrap();

    // Once the new replica is measured, reads go there and never to the removed one.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "reads never settled on the new replica"
        );
        let port = common::server_port(&client, "").await;
        in_a_row = if port == replicas[1] { in_a_row + 1 } else { 0 };
    }
    for _ in 0..50 {
        assert_ne!(common::server_port(&client, "").await, replicas[0]);
    }
    writer
        .batch_execute("INSERT INTO r VALUES (1)")
        .await
        .unwrap();
    let port = common::server_port(&client, "/* pgrouter: primary */ ").await;
    assert_eq!(port, env.primary_port());
    env.stop().await;
}
