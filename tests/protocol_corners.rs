//! Protocol corners through the router: portals with row limits,
//! pipelining, empty queries and parameter status changes.

mod common;

use futures_util::TryStreamExt;
use tokio_postgres::SimpleQueryMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_with_row_limits_and_pipelined_queries() {
    let env = common::start().await;
    let mut client = env.client().await;
    let tx = client.transaction().await.unwrap();
    let statement = tx
        .prepare("SELECT g FROM generate_series(1, 25) g")
        .await
        .unwrap();
    let portal = tx.bind(&statement, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        // Execute with max rows: the server answers PortalSuspended until the end.
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    tx.commit().await.unwrap();

    // tokio-postgres pipelines concurrent queries on one connection.
    let client = env.client().await;
    let futures = (0..50i32).map(|i| {
        let client = &client;
        async move {
            let row = client
                .query_one("SELECT $1::int4 + 1", &[&i])
                .await
                .unwrap();
            row.get::<_, i32>(0)
        }
    });
    let results: Vec<i32> = futures_util::future::join_all(futures).await;
    assert_eq!(results, (1..=50).collect::<Vec<_>>());

    // Reads and writes interleaved in one pipeline keep their order.
    client
        .batch_execute("CREATE TABLE pipe_t (v int)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO pipe_t VALUES ($1)")
        .await
        .unwrap();
    let ops = (0..20i32).map(|i| {
        let client = &client;
        let insert = &insert;
        async move {
            if i % 2 == 0 {
                client.execute(insert, &[&i]).await.map(|_| ())
            } else {
                client.query_one("SELECT 1", &[]).await.map(|_| ())
            }
        }
    });
    for result in futures_util::future::join_all(ops).await {
        result.unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_query_and_parameter_status_changes() {
    let env = common::start().await;
    let client = env.client().await;
    let messages = client.simple_query("").await.unwrap();
    assert!(
        messages
            .iter()
            .all(|m| !matches!(m, SimpleQueryMessage::Row(_)))
    );
    client
        .batch_execute("SET TIME ZONE 'America/New_York'")
        .await
        .unwrap();
    let rows = client.simple_query("SHOW TimeZone").await.unwrap();
    let zone = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(zone, "America/New_York");
    // Query results streamed row by row arrive whole.
    let rows: Vec<_> = client
        .query_raw(
            "SELECT repeat('x', 1000) FROM generate_series(1, 2000)",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2000);
    env.stop().await;
}
