//! Spreading reads over qualifying replicas: strategies and weights.

mod common;

use pgrouter::config::BalanceStrategy;

async fn first_read_ports(env: &common::TestEnv, sessions: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..sessions {
        let client = env.client().await;
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        ports.push(row.get::<_, i32>(0) as u16);
        // Keep sessions open so their replica connections stay taken.
        clients.push(client);
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_and_least_outstanding() {
    let env = common::start_with(|c| {
        c.balance.strategy = BalanceStrategy::RoundRobin;
        // Session pooling: every open session holds a primary and a replica connection.
        c.pool.pool_size = 64;
        c.nodes[1].weight = 3;
        c.nodes[2].weight = 1;
    })
    .await;
    let [r0, r1] = [env.replica_ports()[0], env.replica_ports()[1]];
    let ports = first_read_ports(&env, 40).await;
    let on_r0 = ports.iter().filter(|&&p| p == r0).count();
    let on_r1 = ports.iter().filter(|&&p| p == r1).count();
    assert_eq!(on_r0 + on_r1, 40, "{ports:?}");
    assert_eq!((on_r0, on_r1), (30, 10), "weights 3:1");

    // Weight 0 takes no reads.
    let mut config = (*env.handle.config()).clone();
    config.nodes[2].weight = 0;
    config.balance.strategy = BalanceStrategy::LeastOutstanding;
    env.handle.reload(config).unwrap();
    let ports = first_read_ports(&env, 10).await;
    assert!(ports.iter().all(|&p| p == r0), "{ports:?}");
    // Nothing stays in flight: the counters drain once the last ReadyForQuery
    // passed (a client may see its rows a moment before that).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let counts: Vec<usize> = (0..3).map(|n| env.handle.outstanding(n)).collect();
        if counts.iter().all(|&c| c == 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still in flight: {counts:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    env.stop().await;
}
