//! LISTEN/NOTIFY in transaction pooling: a listening client is not pinned to a
//! server connection; pgrouter's own listening connection on the primary hands
//! notifications to exactly the clients that listen on the channel, when they
//! are idle and outside a transaction, as PostgreSQL does.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use pgrouter::config::{Config, PoolMode};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client, NoTls};

fn one_connection_per_node(config: &mut Config) {
    config.pool.mode = PoolMode::Transaction;
    config.pool.pool_size = 1;
    config.pool.checkout_timeout = Duration::from_secs(2);
}

/// A client through the router and the (channel, payload) of every
/// notification its connection receives.
async fn listener(env: &common::TestEnv) -> (Client, UnboundedReceiver<(String, String)>) {
    let (client, mut connection) = tokio_postgres::connect(&env.dsn(), NoTls).await.unwrap();
    let (tx, notifications) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(message)) = stream.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    (client, notifications)
}

async fn next(notifications: &mut UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .expect("a notification arrives")
        .unwrap()
}

/// Nothing arrives for a while (long enough for a notification to cross).
async fn nothing(notifications: &mut UnboundedReceiver<(String, String)>, why: &str) {
    let got = tokio::time::timeout(Duration::from_millis(500), notifications.recv()).await;
    assert!(got.is_err(), "{why}: got {got:?}");
}

fn pair(channel: &str, payload: &str) -> (String, String) {
    (channel.to_owned(), payload.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_is_not_pinned_and_gets_notifications_while_idle() {
    let env = common::start_with(one_connection_per_node).await;
    let (client, mut notifications) = listener(&env).await;
    client.batch_execute("LISTEN jobs").await.unwrap();
    // Extended protocol, with a quoted (case-kept) channel name.
    client.execute("LISTEN \"Mixed\"", &[]).await.unwrap();
    // Its reads still go to replicas: it is not pinned to the primary.
    let port = common::server_port(&client, "").await;
    assert!(env.replica_ports().contains(&port), "read ran on {port}");

    // With one primary connection in the pool, a pinned listener would hold
    // it and this writer would wait for it until 53300.
    let writer = env.client().await;
    writer
        .batch_execute("CREATE TABLE listen_t (v int); INSERT INTO listen_t VALUES (1)")
        .await
        .unwrap();
    writer
        .batch_execute("NOTIFY jobs, 'hello'; NOTIFY \"Mixed\", 'kept case'")
        .await
        .unwrap();
    assert_eq!(next(&mut notifications).await, pair("jobs", "hello"));
    assert_eq!(next(&mut notifications).await, pair("Mixed", "kept case"));
    // A client's own NOTIFY reaches it too, as on PostgreSQL.
    client
        .batch_execute("SELECT pg_notify('jobs', 'mine')")
        .await
        .unwrap();
    assert_eq!(next(&mut notifications).await, pair("jobs", "mine"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listeners_of_a_channel_get_it_until_they_unlisten() {
    let env = common::start_with(one_connection_per_node).await;
    let (a, mut to_a) = listener(&env).await;
    let (b, mut to_b) = listener(&env).await;
    a.batch_execute("LISTEN red").await.unwrap();
    a.batch_execute("LISTEN blue").await.unwrap();
    b.batch_execute("LISTEN blue").await.unwrap();
    let sender = env.client().await;

    sender.batch_execute("NOTIFY red, '1'").await.unwrap();
    assert_eq!(next(&mut to_a).await, pair("red", "1"));
    nothing(&mut to_b, "b does not listen on red").await;

    sender.batch_execute("NOTIFY blue, '2'").await.unwrap();
    assert_eq!(next(&mut to_a).await, pair("blue", "2"));
    assert_eq!(next(&mut to_b).await, pair("blue", "2"));

    a.batch_execute("UNLISTEN *").await.unwrap();
    b.batch_execute("UNLISTEN blue").await.unwrap();
    b.batch_execute("LISTEN red").await.unwrap();
    sender
        .batch_execute("NOTIFY blue, '3'; NOTIFY red, '4'")
        .await
        .unwrap();
    assert_eq!(next(&mut to_b).await, pair("red", "4"));
    nothing(&mut to_a, "a unlistened everything").await;
    nothing(&mut to_b, "b unlistened blue").await;

    // A listener that disconnects is forgotten; the others still get theirs.
    drop(b);
    a.batch_execute("LISTEN red").await.unwrap();
    sender.batch_execute("NOTIFY red, '5'").await.unwrap();
    assert_eq!(next(&mut to_a).await, pair("red", "5"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_wait_for_the_end_of_a_transaction() {
    // Two connections: the pinned session below keeps one for itself.
    let env = common::start_with(|config| {
        one_connection_per_node(config);
        config.pool.pool_size = 2;
    })
    .await;
    let (client, mut notifications) = listener(&env).await;
    client.batch_execute("LISTEN jobs").await.unwrap();
    let sender = env.client().await;

    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    sender.batch_execute("NOTIFY jobs, 'later'").await.unwrap();
    nothing(&mut notifications, "delivered inside a transaction").await;
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(next(&mut notifications).await, pair("jobs", "later"));

    // LISTEN inside a transaction takes effect at COMMIT, on the session's
    // own primary connection (the session is pinned there).
    client
        .batch_execute("BEGIN; LISTEN in_tx; COMMIT")
        .await
        .unwrap();
    sender
        .batch_execute("NOTIFY in_tx, 'pinned'")
        .await
        .unwrap();
    assert_eq!(next(&mut notifications).await, pair("in_tx", "pinned"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_moves_channels_and_discard_all_leaves_them() {
    // Two connections: the pinned session below keeps one for itself.
    let env = common::start_with(|config| {
        one_connection_per_node(config);
        config.pool.pool_size = 2;
    })
    .await;
    let (pinned, mut to_pinned) = listener(&env).await;
    let (discarding, mut to_discarding) = listener(&env).await;
    let sender = env.client().await;
    pinned.batch_execute("LISTEN moved").await.unwrap();
    discarding.batch_execute("LISTEN gone").await.unwrap();

    // A temp table pins the session to its primary connection, which takes
    // over its LISTEN: each notification still arrives exactly once.
    pinned
        .batch_execute("CREATE TEMP TABLE scratch (v int)")
        .await
        .unwrap();
    sender.batch_execute("NOTIFY moved, 'once'").await.unwrap();
    assert_eq!(next(&mut to_pinned).await, pair("moved", "once"));
    nothing(&mut to_pinned, "a second copy of the same notification").await;
    pinned.batch_execute("UNLISTEN moved").await.unwrap();
    sender.batch_execute("NOTIFY moved, 'after'").await.unwrap();
    nothing(
        &mut to_pinned,
        "notified after UNLISTEN on the pinned connection",
    )
    .await;

    // DISCARD ALL ends every LISTEN, as on PostgreSQL.
    discarding.batch_execute("DISCARD ALL").await.unwrap();
    sender.batch_execute("NOTIFY gone, 'x'").await.unwrap();
    nothing(&mut to_discarding, "notified after DISCARD ALL").await;
    env.stop().await;
}
