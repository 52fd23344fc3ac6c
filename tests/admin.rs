//! The admin console against the real cluster: what `SHOW NODES`, `SHOW POOLS`
//! and `SHOW STATS` report while clients use the router (a client waiting for a
//! full pool, one that gave up), errors that leave the console usable, and who
//! may log in to it.

mod common;

use std::time::{Duration, Instant};

use pgrouter::config::{Config, PoolMode, UserConfig};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Connects to database `dbname` through the router as `user`.
async fn connect(
    env: &common::TestEnv,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<Client, tokio_postgres::Error> {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname={dbname}",
        env.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn console(env: &common::TestEnv) -> Client {
    let (user, password) = (env.cluster.superuser(), env.cluster.password());
    connect(env, user, password, "pgrouter")
        .await
        .expect("the cluster's superuser may use the console")
}

/// A console answer as (column name -> value) maps, one per row.
async fn show(console: &Client, command: &str) -> Vec<Vec<(String, Option<String>)>> {
    let messages = console
        .simple_query(command)
        .await
        .unwrap_or_else(|err| panic!("{command}: {err}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn field<'a>(row: &'a [(String, Option<String>)], name: &str) -> &'a str {
    row.iter()
        .find(|(column, _)| column == name)
        .and_then(|(_, value)| value.as_deref())
        .unwrap_or_else(|| panic!("no value in column {name}: {row:?}"))
}

/// Polls `SHOW POOLS` until the primary's pool row satisfies `done`.
async fn primary_pool_until(
    console: &Client,
    done: impl Fn(&[(String, Option<String>)]) -> bool,
) -> Vec<(String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = show(console, "SHOW POOLS").await;
        let primary = rows.into_iter().find(|row| field(row, "node") == "primary");
        match primary {
            Some(row) if done(&row) => return row,
            last if Instant::now() > deadline => panic!("primary pool never got there: {last:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_nodes_pools_and_stats_as_clients_use_the_router() {
    let env = common::start_with(|config: &mut Config| {
        config.pool.mode = PoolMode::Transaction;
        config.pool.pool_size = 1;
        // Long enough for the console to see the waiting client on a busy machine.
        config.pool.checkout_timeout = Duration::from_secs(5);
    })
    .await;
    let console = console(&env).await;

    // Nodes: every server, the primary acting as one, replicas taking reads
    // once the monitor has measured them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let nodes = loop {
        let nodes = show(&console, "show nodes;").await;
        let replicas_read = nodes
            .iter()
            .filter(|n| field(n, "role") == "replica")
            .all(|n| field(n, "takes_reads") == "true");
        if replicas_read || Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = nodes.iter().map(|n| field(n, "name")).collect();
    assert_eq!(names, ["primary", "replica0", "replica1"]);
    assert_eq!(field(&nodes[0], "acting_as"), "primary");
    for replica in &nodes[1..] {
        assert_eq!(field(replica, "acting_as"), "replica", "{replica:?}");
        assert_eq!(field(replica, "takes_reads"), "true", "{replica:?}");
        assert!(field(replica, "lag_bytes").parse::<u64>().is_ok());
    }

    // A client in a transaction holds the primary's one connection; a second
    // one waits for it (counted), then gives up at checkout_timeout (counted).
    // (Clients log in first: a login takes a primary connection for a moment.)
    let holder = env.client().await;
    // Shared with its task, so it stays connected (and counted) after it.
    let waiter = std::sync::Arc::new(env.client().await);
    let reader = env.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let held = primary_pool_until(&console, |p| field(p, "in_use") == "1").await;
    assert_eq!(field(&held, "size"), "1");
    assert_eq!(field(&held, "user"), env.cluster.superuser());
    assert_eq!(field(&held, "database"), "postgres");
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.batch_execute("BEGIN; SELECT 2").await }
    });
    primary_pool_until(&console, |p| field(p, "waiting") == "1").await;
    let gave_up = waiting.await.unwrap().expect_err("the pool stays full");
    assert_eq!(gave_up.code().map(|c| c.code()), Some("53300"), "{gave_up}");
    let after = primary_pool_until(&console, |p| field(p, "waiting") == "0").await;
    assert_eq!(field(&after, "timeouts"), "1");
    holder.batch_execute("COMMIT").await.unwrap();
    let released = primary_pool_until(&console, |p| field(p, "in_use") == "0").await;
    assert_eq!(field(&released, "idle"), "1");

    // Stats count the statements routed and the clients connected, exactly.
    let before = stats(&console).await;
    for _ in 0..3 {
        reader.simple_query("SELECT 1").await.unwrap();
    }
    let more = [env.client().await, env.client().await];
    let after = stats(&console).await;
    let delta = |name: &str| after[name] - before[name];
    assert_eq!(delta("statements_routed"), 3, "{before:?} -> {after:?}");
    assert_eq!(
        delta("clients"),
        more.len() as i64,
        "{before:?} -> {after:?}"
    );
    assert_eq!(delta("writes_rerun_on_primary"), 0);
}

/// SHOW STATS as numbers by name.
async fn stats(console: &Client) -> std::collections::HashMap<String, i64> {
    show(console, "SHOW STATS")
        .await
        .iter()
        .filter_map(|row| {
            Some((
                field(row, "name").to_owned(),
                field(row, "value").parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_its_users_only_and_stays_usable_after_errors() {
    let env = common::start_with(|config: &mut Config| {
        // A second login to the same server role, not an admin.
        config.users.push(UserConfig {
            name: "app".to_owned(),
            password: Some("app-secret".to_owned()),
            server_user: Some(config.users[0].name.clone()),
            server_password: config.users[0].password.clone(),
            pool_mode: None,
        });
    })
    .await;
    let console = console(&env).await;

    // An unknown command and an extended-protocol query are errors; the
    // console answers the next command.
    let unknown = console.simple_query("SHOW TABLES").await.unwrap_err();
    assert_eq!(unknown.code().map(|c| c.code()), Some("42601"), "{unknown}");
    let extended = console.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(
        extended.code().map(|c| c.code()),
        Some("0A000"),
        "{extended}"
    );
    let version = show(&console, "SHOW VERSION").await;
    assert!(
        field(&version[0], "version").starts_with("pgrouter "),
        "{version:?}"
    );
    // What drivers send on their own is accepted.
    console
        .batch_execute("SET extra_float_digits = 3; BEGIN")
        .await
        .unwrap();
    console.batch_execute("COMMIT").await.unwrap();
    let help = show(&console, "HELP").await;
    assert!(
        help.iter().any(|row| field(row, "command") == "SHOW POOLS"),
        "{help:?}"
    );

    // SHOW CLIENTS: each session with its login, and the server running its
    // query while one runs (the console's own session is not listed).
    let (user, password) = (env.cluster.superuser(), env.cluster.password());
    let busy = connect(&env, user, password, "postgres application_name=busy")
        .await
        .unwrap();
    let _quiet = connect(&env, user, password, "postgres application_name=quiet")
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(2)").await });
    let by_name = |rows: &[Vec<(String, Option<String>)>], name: &str| {
        rows.iter()
            .find(|row| field(row, "application_name") == name)
            .cloned()
            .unwrap_or_else(|| panic!("no client {name} in {rows:?}"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let clients = loop {
        let clients = show(&console, "SHOW CLIENTS").await;
        if field(&by_name(&clients, "busy"), "state") == "active" || Instant::now() > deadline {
            break clients;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let busy_row = by_name(&clients, "busy");
    assert_eq!(field(&busy_row, "state"), "active", "{clients:?}");
    let servers: Vec<String> = env
        .handle
        .config()
        .nodes
        .iter()
        .map(|n| format!("{}:{}", n.host, n.port))
        .collect();
    assert!(
        servers.contains(&field(&busy_row, "server").to_owned()),
        "{busy_row:?}"
    );
    assert_eq!(field(&busy_row, "user"), user);
    assert_eq!(field(&busy_row, "database"), "postgres");
    let quiet_row = by_name(&clients, "quiet");
    assert_eq!(field(&quiet_row, "state"), "idle", "{quiet_row:?}");
    assert!(quiet_row.iter().any(|(c, v)| c == "server" && v.is_none()));
    assert_eq!(clients.len(), 2, "{clients:?}");
    sleeping.await.unwrap().unwrap();

    // A user not in admin.users is refused after logging in (42501); a wrong
    // password is refused as for any database.
    let refused = connect(&env, "app", "app-secret", "pgrouter")
        .await
        .expect_err("refused");
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused}");
    let bad_password = connect(&env, env.cluster.superuser(), "wrong", "pgrouter")
        .await
        .expect_err("refused");
    assert_eq!(
        bad_password.code().map(|c| c.code()),
        Some("28P01"),
        "{bad_password}"
    );
    // The same user reaches ordinary databases as usual.
    let app = connect(&env, "app", "app-secret", "postgres")
        .await
        .unwrap();
    app.simple_query("SELECT 1").await.unwrap();

    // With admin.users emptied by a reload, "pgrouter" is an ordinary database
    // name again: the server answers that it does not exist.
    // The open console session ends at its next command.
    let mut config = (*env.handle.config()).clone();
    config.admin.users.clear();
    env.handle.reload(config).unwrap();
    let ended = console.simple_query("SHOW POOLS").await.unwrap_err();
    assert_eq!(ended.code().map(|c| c.code()), Some("42501"), "{ended}");
    let (user, password) = (env.cluster.superuser(), env.cluster.password());
    let ordinary = connect(&env, user, password, "pgrouter").await;
    let err = match ordinary {
        Ok(client) => client.simple_query("SELECT 1").await.unwrap_err(),
        Err(err) => err,
    };
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
}

/// A config file in the temp directory, removed when dropped.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("pgrouter-admin-{}-{nanos}.toml", std::process::id());
        TempConfig(std::env::temp_dir().join(name))
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The running config's nodes as TOML.
fn nodes_toml(config: &Config) -> String {
    config
        .nodes
        .iter()
        .map(|n| {
            let role = match n.role {
                pgrouter::config::NodeRole::Primary => "primary",
                pgrouter::config::NodeRole::Replica => "replica",
            };
            let name = n.name.clone().unwrap_or_default();
            format!(
                "[[nodes]]\nname = {name:?}\nhost = {:?}\nport = {}\nrole = \"{role}\"\n",
                n.host, n.port
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_config_file_and_a_bad_file_changes_nothing() {
    let env = common::start().await;
    let console = console(&env).await;
    let no_file = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(no_file.code().map(|c| c.code()), Some("55000"), "{no_file}");

    let file = TempConfig::new();
    let (user, password) = (env.cluster.superuser(), env.cluster.password());
    let users = format!(
        "[[users]]\nname = {user:?}\npassword = {password:?}\n[admin]\nusers = [{user:?}]\n"
    );
    let nodes = nodes_toml(&env.handle.config());
    file.write(&format!("{users}[pool]\npool_size = 3\n{nodes}"));
    env.handle.set_config_file(pgrouter::config::ConfigFile {
        path: file.0.clone(),
        demo: false,
    });
    let pool_line = |rows: &[Vec<(String, Option<String>)>]| {
        rows.iter()
            .map(|row| field(row, "setting").to_owned())
            .find(|line| line.starts_with("pool:"))
            .unwrap()
    };
    assert!(!pool_line(&show(&console, "SHOW CONFIG").await).contains("pool_size=3"));
    console.batch_execute("RELOAD").await.unwrap();
    let settings = show(&console, "SHOW CONFIG").await;
    assert!(pool_line(&settings).contains("pool_size=3"), "{settings:?}");
    let node_lines = settings
        .iter()
        .filter(|row| field(row, "setting").starts_with("node "))
        .count();
    assert_eq!(node_lines, 3, "{settings:?}");

    // Each bad file is refused as `check-config` refuses it, and what is in
    // force stays: a file without nodes; a mistyped key, named without an
    // excerpt of the file (the line could hold a password).
    let rejected = |text: String| {
        let console = &console;
        let file = &file;
        async move {
            file.write(&text);
            let err = console.simple_query("RELOAD").await.unwrap_err();
            assert_eq!(err.code().map(|c| c.code()), Some("F0000"), "{err}");
            let message = err
                .as_db_error()
                .map(|e| e.message().to_owned())
                .unwrap_or_default();
            assert!(pool_line(&show(console, "SHOW CONFIG").await).contains("pool_size=3"));
            message
        }
    };
    let no_nodes = rejected(format!("{users}[pool]\npool_size = 4\n")).await;
    assert!(no_nodes.contains("primary"), "{no_nodes}");
    let typo = rejected(format!(
        "[[users]]\nname = {user:?}\npasword = \"hunter2\"\n[pool]\npool_size = 4\n{nodes}"
    ))
    .await;
    assert!(typo.contains("pasword"), "{typo}");
    assert!(!typo.contains("hunter2"), "{typo}");
}
