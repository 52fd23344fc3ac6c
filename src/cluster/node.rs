//! One node's files and server process: base dir, initdb, configuration,
//! pg_basebackup, and pg_ctl start/stop plus SIGKILL.
//!
//! Role: everything that touches a data directory or a postmaster pid. It must not
//! speak SQL (that is `sql.rs`) nor choose names, ports or topology (that is `mod.rs`);
//! it works on whatever [`NodeInfo`] it is handed.

use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::NodeInfo;
use super::bins::{Bins, tail};
use super::error::ClusterError;
use super::process::{is_postgres, process_alive, read_pid, sigkill, sigkill_blocking};

/// Dropped into every base dir we create, so a later run may wipe it without fear
/// of deleting a directory the user pointed us at by mistake.
pub(crate) const MARKER: &str = ".pgrouter-cluster";
/// After a SIGKILL the old backends need a moment to notice and detach from shared
/// memory; until then a new postmaster refuses to start. Retry for this long.
const STALE_SHMEM_WAIT: Duration = Duration::from_secs(10);
const LOG_TAIL: usize = 3000;

/// Settings shared by every node (replicas inherit them through pg_basebackup).
/// Durability is off because the cluster is throwaway; replication is on.
const COMMON_CONF: &str = "
# ---- added by pgrouter's test cluster ----
listen_addresses = '127.0.0.1'
shared_buffers = 16MB
# Room for benchmarks that connect 500 clients straight to the primary.
max_connections = 600
fsync = off
full_page_writes = off
synchronous_commit = on
wal_level = replica
hot_standby = on
hot_standby_feedback = on
wal_keep_size = '256MB'
logging_collector = off
log_min_messages = warning
password_encryption = 'scram-sha-256'
";

const PG_HBA: &str = "\
# written by pgrouter's test cluster
local all all trust
local replication all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError {
    let path = path.to_owned();
    move |source| ClusterError::Io { step, path, source }
}

pub(crate) fn log_path(node: &NodeInfo) -> PathBuf {
    sibling(&node.data_dir, &format!("{}.log", node.name))
}

/// Each node gets its own socket dir so two nodes can never fight over a lock file.
fn socket_dir(node: &NodeInfo) -> PathBuf {
    sibling(&node.data_dir, "sock").join(&node.name)
}

fn sibling(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.parent().unwrap_or(Path::new("/")).join(name)
}

fn create_private_dir(bins: &Bins, dir: &Path, mode: u32) -> Result<(), ClusterError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io("creating directory", dir))?;
    bins.give(dir)
}

/// Create the fresh temp base dir; fails if it already exists (never reuse one).
pub(crate) fn create_temp_base(bins: &Bins, base: &Path) -> Result<(), ClusterError> {
    bins.check_traversable(base)?;
    // 0755: the server user (owner) writes, everyone else may traverse to sockets.
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(base)
        .map_err(io("creating temporary cluster directory", base))?;
    finish_base(bins, base)
}

/// Make an explicit base dir usable: stop and wipe a previous cluster in it
/// (a crashed earlier run), refuse to wipe anything we did not create.
pub(crate) async fn reuse_base(bins: &Bins, base: &Path) -> Result<(), ClusterError> {
    // Before creating anything, so a hopeless path leaves no trace.
    bins.check_traversable(base)?;
    match std::fs::read_dir(base) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(bins, base, 0o755)?;
        }
        Err(e) => return Err(io("reading cluster directory", base)(e)),
        Ok(entries) => {
            let entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            if !entries.is_empty() && !base.join(MARKER).exists() {
                return Err(ClusterError::ForeignDir {
                    path: base.to_owned(),
                    marker: MARKER,
                });
            }
            for entry in &entries {
                if entry.join("postmaster.pid").exists() {
                    stop_leftover(bins, entry).await;
                }
            }
            for entry in &entries {
                let removed = if entry.is_dir() && !entry.is_symlink() {
                    std::fs::remove_dir_all(entry)
                } else {
                    std::fs::remove_file(entry)
                };
                removed.map_err(io("wiping previous cluster", entry))?;
            }
        }
    }
    finish_base(bins, base)
}

fn finish_base(bins: &Bins, base: &Path) -> Result<(), ClusterError> {
    bins.give(base)?;
    let marker = base.join(MARKER);
    std::fs::write(&marker, "created by pgrouter::cluster; safe to delete\n")
        .map_err(io("writing cluster marker", &marker))?;
    bins.give(&marker)
}

/// A server from an earlier run may still hold the ports we want: stop it.
async fn stop_leftover(bins: &Bins, data_dir: &Path) {
    let Some(pid) = read_pid(data_dir) else {
        return;
    };
    // A stale pid file's pid may since belong to an unrelated process; only signal
    // something that is a postgres.
    if !process_alive(pid) || !is_postgres(pid) {
        return;
    }
    let mut cmd = bins.command("pg_ctl");
    cmd.arg("-D").arg(data_dir);
    cmd.args(["-m", "immediate", "-w", "-t", "30", "stop"]);
    // Ignored: the fallback below covers a pg_ctl that cannot do it.
    let _ = bins.run("stopping a leftover server", cmd).await;
    if process_alive(pid) {
        let _ = sigkill(pid).await;
    }
}

/// initdb the primary and write its configuration.
pub(crate) async fn init_primary(
    bins: &Bins,
    node: &NodeInfo,
    superuser: &str,
    password: &str,
    replicas: usize,
) -> Result<(), ClusterError> {
    create_private_dir(bins, &node.data_dir, 0o700)?;
    let pwfile = sibling(&node.data_dir, ".initdb-password");
    write_private(bins, &pwfile, &format!("{password}\n"))?;
    let mut cmd = bins.command("initdb");
    cmd.arg("-D").arg(&node.data_dir).arg("-U").arg(superuser);
    cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
    cmd.arg(format!("--pwfile={}", pwfile.display()));
    // --no-sync: the cluster is throwaway, and syncing ~1000 files dominates initdb.
    cmd.args(["-E", "UTF8", "--locale=C", "--no-sync"]);
    let result = bins.run("initdb of the primary", cmd).await;
    // The password file must not outlive initdb, success or not.
    let _ = std::fs::remove_file(&pwfile);
    result?;

    let conf = node.data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).map_err(io("reading postgresql.conf", &conf))?;
    text.push_str(COMMON_CONF);
    // 10 as usual, but never too few: while replicas are cloned in parallel each
    // pg_basebackup holds two walsenders (base backup + WAL stream).
    let _ = writeln!(text, "max_wal_senders = {}", (2 * replicas + 2).max(10));
    std::fs::write(&conf, text).map_err(io("writing postgresql.conf", &conf))?;
    let hba = node.data_dir.join("pg_hba.conf");
    std::fs::write(&hba, PG_HBA).map_err(io("writing pg_hba.conf", &hba))
}

fn write_private(bins: &Bins, path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating password file", path))?;
    file.write_all(text.as_bytes())
        .map_err(io("writing password file", path))?;
    bins.give(path)
}

/// Clone the primary into `replica.data_dir` as a streaming standby.
pub(crate) async fn base_backup(
    bins: &Bins,
    replica: &NodeInfo,
    primary_port: u16,
    superuser: &str,
    password: &str,
) -> Result<(), ClusterError> {
    create_private_dir(bins, &replica.data_dir, 0o700)?;
    let mut cmd = bins.command("pg_basebackup");
    cmd.arg("-D").arg(&replica.data_dir);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &primary_port.to_string(),
        "-U",
        superuser,
    ]);
    cmd.args(["-X", "stream", "-R", "-c", "fast", "--no-sync"]);
    cmd.env("PGPASSWORD", password);
    bins.run(&format!("pg_basebackup for {}", replica.name), cmd)
        .await?;
    // -R does write the password it used into primary_conninfo, but we replace its
    // line anyway: our own conninfo adds application_name, which is how
    // pg_stat_replication on the primary tells the replicas apart.
    let conninfo = format!(
        "host=127.0.0.1 port={primary_port} user={} password={} application_name={}",
        conninfo_value(superuser),
        conninfo_value(password),
        conninfo_value(&replica.name),
    );
    let auto = replica.data_dir.join("postgresql.auto.conf");
    set_conf(bins, &auto, &[("primary_conninfo", conf_string(&conninfo))])
}

/// Write the node's own port and socket dir.
///
/// They go into postgresql.auto.conf rather than postgresql.conf: the auto file is
/// read last so it wins, and a replica's copy of the primary's postgresql.conf can
/// then stay untouched. Rewriting (not appending) keeps port retries idempotent.
pub(crate) fn configure(bins: &Bins, node: &NodeInfo) -> Result<(), ClusterError> {
    let sock = socket_dir(node);
    create_private_dir(bins, &sock, 0o755)?;
    let auto = node.data_dir.join("postgresql.auto.conf");
    set_conf(
        bins,
        &auto,
        &[
            ("port", node.port.to_string()),
            (
                "unix_socket_directories",
                conf_string(&sock.to_string_lossy()),
            ),
        ],
    )
}

/// Replace every `key = ...` line for the given keys and append the new values.
fn set_conf(bins: &Bins, path: &Path, settings: &[(&str, String)]) -> Result<(), ClusterError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("reading server configuration", path)(e)),
    };
    let mut out = String::with_capacity(existing.len() + 256);
    for line in existing.lines() {
        if !settings.iter().any(|(key, _)| sets_key(line, key)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (key, value) in settings {
        let _ = writeln!(out, "{key} = {value}");
    }
    std::fs::write(path, out).map_err(io("writing server configuration", path))?;
    bins.give(path)
}

fn sets_key(line: &str, key: &str) -> bool {
    let line = line.trim_start();
    line.get(..key.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(key))
        && matches!(line[key.len()..].chars().next(), Some(' ' | '\t' | '='))
}

/// A postgresql.conf string literal.
fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq keyword/value conninfo value, quoted only when it has to be.
pub(crate) fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `pg_ctl start -w`. A stale pid file from a SIGKILLed postmaster is removed first,
/// because a zombie postmaster (no reaper in containers) looks alive to postgres.
pub(crate) async fn start(bins: &Bins, node: &NodeInfo) -> Result<(), ClusterError> {
    if let Some(pid) = read_pid(&node.data_dir)
        && !process_alive(pid)
    {
        let pidfile = node.data_dir.join("postmaster.pid");
        std::fs::remove_file(&pidfile).map_err(io("removing stale postmaster.pid", &pidfile))?;
    }
    remove_stale_socket_locks(&socket_dir(node))?;
    let log = log_path(node);
    let deadline = Instant::now() + STALE_SHMEM_WAIT;
    loop {
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = bins.command("pg_ctl");
        cmd.arg("-D").arg(&node.data_dir).arg("-l").arg(&log);
        cmd.args(["-w", "-t", "60", "start"]);
        let Err(err) = bins.run(&format!("starting {}", node.name), cmd).await else {
            return Ok(());
        };
        let log_tail = read_log_from(&log, log_start);
        if log_tail.contains("pre-existing shared memory block") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        return Err(ClusterError::ServerStart {
            node: node.name.clone(),
            port: node.port,
            log,
            log_tail,
            source: Box::new(err),
        });
    }
}

/// The socket lock file names its postmaster's pid too, and postgres refuses to
/// start while that pid "exists" (zombies included), so clear dead owners' locks.
fn remove_stale_socket_locks(sock: &Path) -> Result<(), ClusterError> {
    let Ok(entries) = std::fs::read_dir(sock) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let lock = entry.path();
        let name = entry.file_name();
        let Some(socket_name) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let pid = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let socket = sock.join(socket_name);
            if socket.exists() {
                std::fs::remove_file(&socket).map_err(io("removing stale socket", &socket))?;
            }
            std::fs::remove_file(&lock).map_err(io("removing stale socket lock", &lock))?;
        }
    }
    Ok(())
}

fn read_log_from(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    tail(&text, LOG_TAIL).to_owned()
}

/// Did this start fail only because someone else took the port?
pub(crate) fn is_port_clash(err: &ClusterError) -> bool {
    matches!(err, ClusterError::ServerStart { log_tail, .. }
        if log_tail.contains("could not bind") || log_tail.contains("Address already in use"))
}

/// `pg_ctl stop -m <mode>`; a node that is not running counts as stopped.
pub(crate) async fn stop(bins: &Bins, node: &NodeInfo, mode: &str) -> Result<(), ClusterError> {
    match read_pid(&node.data_dir) {
        Some(pid) if process_alive(pid) => {}
        _ => return Ok(()),
    }
    let mut cmd = bins.command("pg_ctl");
    cmd.arg("-D").arg(&node.data_dir);
    cmd.args(["-m", mode, "-w", "-t", "60", "stop"]);
    bins.run(&format!("stopping {}", node.name), cmd).await?;
    Ok(())
}

/// Synchronous best-effort immediate stop for `Drop`: errors are ignored on purpose,
/// the point is only to leave no server behind a panicking test.
pub(crate) fn stop_blocking(bins: &Bins, node: &NodeInfo) {
    let Some(pid) = read_pid(&node.data_dir) else {
        return;
    };
    if !process_alive(pid) {
        return;
    }
    let mut cmd = bins.std_command("pg_ctl");
    cmd.arg("-D").arg(&node.data_dir);
    cmd.args(["-m", "immediate", "-w", "-t", "20", "stop"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = cmd.status();
    if process_alive(pid) {
        sigkill_blocking(pid);
    }
}

/// SIGKILL the node's postmaster and wait until it is gone. Not running is fine.
pub(crate) async fn kill(node: &NodeInfo) -> Result<(), ClusterError> {
    match read_pid(&node.data_dir) {
        Some(pid) if process_alive(pid) => sigkill(pid).await,
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_key_matches_whole_keys_only() {
        assert!(sets_key("port = 5432", "port"));
        assert!(sets_key("  PORT=5432", "port"));
        assert!(!sets_key("portal = 1", "port"));
        assert!(!sets_key("#port = 1", "port"));
        assert!(!sets_key("po", "port"));
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_string("it's a\\b"), "'it''s a\\\\b'");
        assert_eq!(conninfo_value("pgrouter"), "pgrouter");
        assert_eq!(conninfo_value("a b'c"), "'a b\\'c'");
        assert_eq!(conninfo_value(""), "''");
    }
}
