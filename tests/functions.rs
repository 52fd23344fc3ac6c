//! User-defined functions: the router learns their volatility from the primary's
//! catalog at start-up, and config lists override it.

mod common;

const SETUP: &str = "
    CREATE TABLE calls (n int);
    CREATE FUNCTION writes_row() RETURNS int VOLATILE LANGUAGE sql AS 'INSERT INTO calls VALUES (1) RETURNING 1';
    CREATE FUNCTION answer() RETURNS int STABLE LANGUAGE sql AS 'SELECT 42';
    CREATE FUNCTION jitter() RETURNS float8 VOLATILE LANGUAGE sql AS 'SELECT random()';
    CREATE FUNCTION pinned_answer() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 7';
";

async fn port_of(client: &tokio_postgres::Client, call: &str) -> u16 {
    let sql = format!("SELECT {call}, inet_server_port()");
    let row = client
        .query_one(sql.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, i32>(1) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_volatility_decides_the_route() {
    let env = common::start_after_setup(SETUP, |config| {
        config.routing.read_only_functions = vec!["jitter".into()];
        config.routing.primary_functions = vec!["public.pinned_answer".into()];
    })
    .await;
    env.wait_replicas().await;
    let client = env.client().await;
    assert_eq!(
        port_of(&client, "writes_row()").await,
        env.primary_port(),
        "volatile UDF"
    );
    assert!(
        env.replica_ports()
            .contains(&port_of(&client, "answer()").await),
        "stable UDF"
    );
    assert!(
        env.replica_ports()
            .contains(&port_of(&client, "jitter()").await),
        "listed read-only"
    );
    assert_eq!(
        port_of(&client, "pinned_answer()").await,
        env.primary_port(),
        "listed primary-only"
    );
    assert!(
        env.replica_ports()
            .contains(&port_of(&client, "upper('x')").await),
        "built-in"
    );
    // The volatile function went to the primary by classification, not by the
    // safety net catching a replica's refusal.
    assert_eq!(env.handle.stats().misrouted(), 0);

    // A function created after start-up is unknown: primary, until a reload
    // re-reads the catalog.
    client
        .batch_execute("CREATE FUNCTION later() RETURNS int STABLE LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    env.wait_replicas().await;
    assert_eq!(port_of(&client, "later()").await, env.primary_port());
    env.handle.reload((*env.handle.config()).clone()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while port_of(&client, "later()").await == env.primary_port() {
        assert!(
            std::time::Instant::now() < deadline,
            "reload did not re-read the catalog"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    env.stop().await;
}
