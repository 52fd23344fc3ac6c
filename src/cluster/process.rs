//! Process helpers for postmasters we did not spawn directly (pg_ctl daemonizes
//! them): read a pid file, tell alive from dead, SIGKILL and wait.
//!
//! Role: the only place that signals processes directly (pg_ctl aside). It shells
//! out to `kill` because the crate has no libc dependency, and it must never signal
//! a pid it has not just read from one of our pid files.

use std::path::Path;
use std::time::{Duration, Instant};

use super::error::ClusterError;

/// How long to wait for a SIGKILLed postmaster to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// `kill -9` and wait until the process is gone (or a zombie).
pub(crate) async fn sigkill(pid: u32) -> Result<(), ClusterError> {
    let output = tokio::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .await
        .map_err(|source| ClusterError::Spawn {
            step: format!("killing postmaster {pid}"),
            program: "kill".to_owned(),
            source,
        })?;
    // `kill` may fail only because the process exited meanwhile; the wait decides.
    let deadline = Instant::now() + KILL_WAIT;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: format!(
                    "postmaster {pid} to die after SIGKILL (kill said: {})",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                waited: KILL_WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The postmaster pid: first line of postmaster.pid.
pub(crate) fn read_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Alive and not a zombie. A killed postmaster is reparented to PID 1, which in a
/// container often never reaps, so `kill -0` alone would call a corpse alive.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) if Path::new("/proc/self/stat").exists() => false,
        // No procfs (not Linux): fall back to asking the kernel via kill -0.
        Err(_) => std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

pub(crate) fn is_postgres(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("postgres"),
        // Without procfs we cannot tell; trust the pid file as pg_ctl would.
        Err(_) => !Path::new("/proc/self/stat").exists(),
    }
}

/// Best-effort synchronous SIGKILL for `Drop`.
pub(crate) fn sigkill_blocking(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Stops and removes temp clusters whose creating process is gone (a test killed
/// by a timeout never runs `Drop`), so they cannot pile up across CI runs. Only
/// directories named `pgrouter-cluster-<pid>-<hex>` holding our marker file are
/// touched, and only postgres processes are killed.
pub(crate) fn reap_abandoned(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("pgrouter-cluster-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if process_alive(owner) || !dir.join(super::node::MARKER).exists() {
            continue;
        }
        let Ok(nodes) = std::fs::read_dir(&dir) else {
            continue;
        };
        for node in nodes.filter_map(Result::ok) {
            if let Some(pid) = read_pid(&node.path()) {
                if process_alive(pid) && is_postgres(pid) {
                    sigkill_blocking(pid);
                }
            }
        }
        tracing::info!(dir = %dir.display(), "removed a cluster abandoned by a killed process");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn missing_pid_file_reads_none() {
        assert_eq!(read_pid(Path::new("/nonexistent-pgrouter-dir")), None);
    }
}
