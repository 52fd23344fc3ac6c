//! The `pgrouter` command: `run` (production), `check-config`, and `demo` (a
//! local primary + replicas cluster with the router in front).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use pgrouter::cluster::{Cluster, ClusterSpec};
use pgrouter::config::{Config, ConfigFile, ConsistencyMode};
use pgrouter::consistency::verify::{self, Pattern, VerifyOptions};
use pgrouter::{Router, RouterHandle};

#[derive(Parser)]
#[command(
    name = "pgrouter",
    version,
    about = "A replica-aware PostgreSQL connection router"
)]
struct Cli {
    /// Config file (same as `pgrouter run --config FILE`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients with the given config (the production entry point).
    Run,
    /// Validate a config file and print the effective settings.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Start a local primary + 2 replicas and the router in front of them.
    Demo {
        /// Port the router listens on.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port of the primary; replicas use the next two.
        #[arg(long, default_value_t = 15432)]
        cluster_port: u16,
        /// Where the cluster's data lives (reused and wiped on each start).
        #[arg(long, default_value = "/tmp/pgrouter-demo")]
        dir: PathBuf,
    },
    /// Check read-your-writes through a running router: concurrent sessions
    /// write then read, and stale reads are counted (exit status 1 if any).
    Verify {
        /// The router's DSN, e.g. postgres://pgrouter:pgrouter@127.0.0.1:6432/postgres
        #[arg(long)]
        dsn: String,
        /// Concurrent sessions.
        #[arg(long, default_value_t = 8)]
        sessions: usize,
        /// How long to run.
        #[arg(long, default_value = "10s", value_parser = pgrouter::config::parse_duration)]
        duration: Duration,
        /// Where reads run: same (the writing connection), token (another
        /// connection, with the write's pgrouter.last_write_lsn) or key (another
        /// connection, with a shared causal key).
        #[arg(long, default_value = "same", value_parser = parse_pattern)]
        pattern: Pattern,
        /// SET pgrouter.consistency to this on every connection (none, pin, causal).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<ConsistencyMode>,
        /// Pause between each write and its read.
        #[arg(long, default_value = "0ms", value_parser = pgrouter::config::parse_duration)]
        gap: Duration,
        /// A replica's own DSN (repeatable): its replay is paused for the middle
        /// third of the run, to induce real lag.
        #[arg(long)]
        pause_replica: Vec<String>,
    },
}

fn parse_pattern(name: &str) -> Result<Pattern, String> {
    Pattern::from_name(name).ok_or_else(|| format!("{name:?}: expected same, token or key"))
}

fn parse_mode(name: &str) -> Result<ConsistencyMode, String> {
    ConsistencyMode::from_name(name)
        .ok_or_else(|| format!("{name:?}: expected none, pin or causal"))
}

fn main() -> anyhow::Result<()> {
    init_logging();
    raise_fd_limit();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let Some(path) = cli.config else {
                bail!(
                    "no config given: use `pgrouter run --config FILE` (see config/pgrouter.toml)"
                );
            };
            let config = Config::load(&path)?;
            runtime(config.effective_worker_threads())?.block_on(serve(config, Some(path)))
        }
        Command::Verify {
            dsn,
            sessions,
            duration,
            pattern,
            mode,
            gap,
            pause_replica,
        } => {
            let options = VerifyOptions {
                dsn,
                sessions,
                duration,
                pattern,
                mode,
                gap,
                pause_replicas: pause_replica,
            };
            let report = runtime(2)?.block_on(verify::verify(&options))?;
            print!("{report}");
            if report.stale > 0 {
                bail!("{} stale reads", report.stale);
            }
            Ok(())
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            print!("{}", config.describe());
            println!("config OK: {}", file.display());
            Ok(())
        }
        Command::Demo {
            port,
            cluster_port,
            dir,
        } => {
            // The demo shares the machine with its own three servers.
            let threads = match &cli.config {
                Some(path) => Config::load_unvalidated(path)?.effective_worker_threads(),
                None => pgrouter::config::default_worker_threads(),
            };
            runtime(threads)?.block_on(demo(port, cluster_port, dir, cli.config))
        }
    }
}

fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tracing::info!(worker_threads, "starting");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Runs the router until SIGINT/SIGTERM; SIGHUP reloads `config_path`.
async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "pgrouter accepting connections");
    let router = Router::new(config)?;
    let handle = router.handle();
    if let Some(path) = config_path {
        handle.set_config_file(ConfigFile { path, demo: false });
    }
    let reloader = tokio::spawn(reload_on_sighup(handle));
    let result = router.serve(listener, stop_signal()).await;
    reloader.abort();
    Ok(result?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGTERM; Ctrl-C still works");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// The `sighup` task: re-reads the config; a bad file is logged and ignored.
async fn reload_on_sighup(handle: RouterHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        // The file is read off the runtime's threads.
        let reloading = handle.clone();
        let reloaded = tokio::task::spawn_blocking(move || reloading.reload_from_file()).await;
        let Ok(reloaded) = reloaded else {
            continue;
        };
        match reloaded {
            Ok(path) => tracing::info!(path = %path.display(), "config reloaded"),
            Err(err) => {
                tracing::error!(%err, "config reload rejected; the previous config stays in force")
            }
        }
    }
}

async fn demo(
    port: u16,
    cluster_port: u16,
    dir: PathBuf,
    config_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    println!(
        "starting a local primary + 2 replicas in {} ...",
        dir.display()
    );
    let cluster = Cluster::start(ClusterSpec {
        base_port: Some(cluster_port),
        dir: Some(dir),
        ..ClusterSpec::default()
    })
    .await
    .context("starting the demo cluster")?;
    let listen = format!("127.0.0.1:{port}");
    let mut config = match &config_path {
        // The file's node list is replaced by the demo cluster's, so it is checked after that.
        Some(path) => Config::load_unvalidated(path)?,
        None => cluster.router_config(&listen)?,
    };
    config.listen = listen.clone();
    config.nodes = cluster.router_nodes();
    if config.users.is_empty() {
        config.users = cluster.router_config(&listen)?.users;
    }
    config.validate()?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let user = config
        .users
        .first()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    let password = config
        .users
        .first()
        .and_then(|u| u.password.clone())
        .unwrap_or_default();
    let router = Router::new(config)?;
    let handle = router.handle();
    let status = tokio::spawn(status_lines(handle.clone()));
    if let Some(path) = config_path {
        // The demo's nodes are its own cluster's, whatever the file lists.
        handle.set_config_file(ConfigFile { path, demo: true });
    }
    let reloader = tokio::spawn(reload_on_sighup(handle));
    let served = tokio::spawn(router.serve(listener, stop_signal()));
    println!("ready: postgres://{user}:{password}@127.0.0.1:{port}/postgres");
    let result = served.await;
    status.abort();
    reloader.abort();
    println!("stopping the cluster ...");
    cluster
        .shutdown()
        .await
        .context("stopping the demo cluster")?;
    println!("stopped");
    result.context("router task")??;
    Ok(())
}

/// The `status` task: one line every five seconds.
async fn status_lines(handle: RouterHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let topology = handle.topology();
        let routed = handle.stats().routed();
        let parts: Vec<String> = topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let role = if i == topology.primary {
                    "primary"
                } else {
                    "replica"
                };
                let lag = match (i == topology.primary, n.lag_bytes, n.up) {
                    (_, _, false) => " DOWN".to_owned(),
                    (true, _, true) => String::new(),
                    (false, Some(lag), true) => format!(" lag={lag}B"),
                    (false, None, true) => " lag=?".to_owned(),
                };
                format!(
                    "{} ({role}) routed={}{lag}",
                    n.name,
                    routed.get(i).copied().unwrap_or(0)
                )
            })
            .collect();
        println!(
            "status: clients={} | {}",
            handle
                .stats()
                .clients
                .load(std::sync::atomic::Ordering::Relaxed),
            parts.join(" | ")
        );
    }
}

/// Raises the soft limit on open files to the hard limit: every client and
/// server connection is a file descriptor, and the usual soft limit (1024)
/// would cap pgrouter far below the thousands of clients it is meant to hold.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by
    // pointer, which lives on this stack frame for the whole call.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if read != 0 || limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    if raised == 0 {
        tracing::info!(
            before,
            after = limit.rlim_max,
            "raised the open-files limit"
        );
    } else {
        tracing::warn!(
            before,
            "could not raise the open-files limit; clients beyond it will be refused"
        );
    }
}
