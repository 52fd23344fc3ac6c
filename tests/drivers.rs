//! Real client drivers through pgrouter in transaction pooling with 2 server
//! connections per node, so that 8 clients of each driver share connections and
//! their statement names (psycopg `_pg3_N`, asyncpg `__asyncpg_stmt_N__`, pgjdbc
//! `S_N`) collide on the servers unless pgrouter keeps them apart.
//!
//! Each driver runs a script from `tests/drivers/`; `.ci/setup` installs the
//! drivers (`pip install psycopg[binary] asyncpg`, Debian's
//! libpostgresql-jdbc-java), and a missing one fails the test with that advice.

mod common;

use std::path::Path;
use std::process::Command;

use pgrouter::config::{Config, PoolMode};

fn two_connections_per_node(config: &mut Config) {
    config.pool.mode = PoolMode::Transaction;
    config.pool.pool_size = 2;
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(name)
        .display()
        .to_string()
}

/// Runs a driver's script off the async runtime and checks that it said "ok".
async fn run_driver(mut command: Command, what: &str) {
    let what = what.to_owned();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run the {what} check ({e}); run `bash .ci/setup`"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.starts_with("ok"),
        "{what} through pgrouter failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{}", stdout.trim());
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn python_check(env: &common::TestEnv, module: &str, file: &str) -> Command {
    assert!(
        python_has(module),
        "python3 module {module} is missing; run `bash .ci/setup` (pip install)"
    );
    let mut command = Command::new("python3");
    command.arg(script(file)).env("PGROUTER_DSN", env.url());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_with_prepare_threshold_zero() {
    let env = common::start_with(two_connections_per_node).await;
    let command = python_check(&env, "psycopg", "psycopg_check.py");
    run_driver(command, "psycopg").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_named_statements_and_binary_codecs() {
    let env = common::start_with(two_connections_per_node).await;
    let command = python_check(&env, "asyncpg", "asyncpg_check.py");
    run_driver(command, "asyncpg").await;
    env.stop().await;
}

/// Debian's libpostgresql-jdbc-java puts the driver here.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_server_prepared_statements_and_read_only() {
    assert!(
        Path::new(PGJDBC_JAR).exists(),
        "{PGJDBC_JAR} is missing; run `bash .ci/setup` (libpostgresql-jdbc-java)"
    );
    let env = common::start_with(two_connections_per_node).await;
    let mut command = Command::new("java");
    command.args([
        "-cp",
        PGJDBC_JAR,
        &script("JdbcCheck.java"),
        &format!("jdbc:postgresql://127.0.0.1:{}/postgres", env.addr.port()),
        env.cluster.superuser(),
        env.cluster.password(),
    ]);
    run_driver(command, "pgjdbc").await;
    env.stop().await;
}
