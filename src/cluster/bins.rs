//! Finding the PostgreSQL server binaries and running them as an allowed OS user.
//!
//! Role: locate initdb/pg_ctl/postgres/pg_basebackup, decide which user runs them
//! (initdb and postgres refuse to run as root, and CI runs as root), and run them with
//! a clean environment, capturing their output for error messages. It must not know
//! about cluster layout, ports or SQL; `node.rs` builds on it.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use super::error::ClusterError;

/// Every binary we execute must live in the same directory so versions match.
const SERVER_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];
/// Debian/Ubuntu install each major version under `<root>/<version>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// The conventional unprivileged account for the server when we are root.
const SERVER_USER: &str = "postgres";
/// Upper bound for any single helper program; pg_ctl has its own -t 60, this only
/// keeps a wedged pg_basebackup or initdb from hanging a test run forever.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How much captured output to keep in an error: the end is where the reason is.
const OUTPUT_TAIL: usize = 4000;

/// Find the directory holding the PostgreSQL server binaries.
///
/// Looks under `/usr/lib/postgresql/*/bin` (highest version first), then on `PATH`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let mut searched = Vec::new();
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(DEBIAN_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(version) = name.to_str().and_then(parse_version) {
                versioned.push((version, entry.path().join("bin")));
            }
        }
    }
    if versioned.is_empty() {
        searched.push(Path::new(DEBIAN_ROOT).join("*").join("bin"));
    }
    // Highest version first: a machine with 14 and 16 installed should test on 16.
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in versioned.into_iter().map(|(_, d)| d).chain(path_dirs) {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(dir);
    }
    Err(ClusterError::BinariesNotFound { searched })
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|bin| {
        std::fs::metadata(dir.join(bin))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The account the server binaries run as when we are root.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Decide who runs the server: ourselves, or (when root) the `postgres` user,
/// creating it if the machine has none (minimal CI images).
pub(crate) fn server_user() -> Result<Option<RunAs>, ClusterError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    if let Some(user) = lookup_user(SERVER_USER)? {
        return Ok(Some(user));
    }
    let output = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg(SERVER_USER)
        .stdin(Stdio::null())
        .output();
    let failure = match output {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some((
            format!(
                "`useradd --system {SERVER_USER}` failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            None,
        )),
        Err(e) => Some(("could not run useradd to create it".to_owned(), Some(e))),
    };
    // Re-read even after a failure: another cluster in this process may have created
    // the user between our lookup and our useradd.
    match (lookup_user(SERVER_USER)?, failure) {
        (Some(user), _) => Ok(Some(user)),
        (None, Some((detail, source))) => Err(ClusterError::ServerUser {
            user: SERVER_USER.to_owned(),
            detail: format!("it does not exist and {detail}; create it or run as a non-root user"),
            source,
        }),
        (None, None) => Err(ClusterError::ServerUser {
            user: SERVER_USER.to_owned(),
            detail: "useradd succeeded but the user is not in /etc/passwd".to_owned(),
            source: None,
        }),
    }
}

/// Effective uid from /proc (no libc dependency); `id -u` where /proc is absent.
fn effective_uid() -> Result<u32, ClusterError> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\treal\teffective\tsaved\tfs"
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        if let Some(euid) = euid {
            return Ok(euid);
        }
    }
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map_err(|source| ClusterError::Spawn {
            step: "finding our user id".to_owned(),
            program: "id -u".to_owned(),
            source,
        })?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| ClusterError::ServerUser {
            user: SERVER_USER.to_owned(),
            detail: "could not determine whether we run as root (`id -u` gave no number)"
                .to_owned(),
            source: None,
        })
}

fn lookup_user(name: &str) -> Result<Option<RunAs>, ClusterError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|source| ClusterError::Io {
        step: "reading the user database",
        path: PathBuf::from("/etc/passwd"),
        source,
    })?;
    Ok(passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [user, _pw, uid, gid, ..] if *user == name => Some(RunAs {
                name: name.to_owned(),
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
            }),
            _ => None,
        }
    }))
}

/// The located binaries plus the user and working directory to run them with.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub dir: PathBuf,
    pub run_as: Option<RunAs>,
    /// The cluster base dir: a cwd the server user can always enter (ours may be
    /// /root/..., which initdb and pg_ctl would complain about).
    pub work_dir: PathBuf,
}

impl Bins {
    /// A server binary command, ready to run as the right user in a clean environment.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.dir.join(program));
        self.prepare(cmd.as_std_mut());
        cmd.kill_on_drop(true);
        cmd
    }

    /// Same as [`Bins::command`] for synchronous use in `Drop`.
    pub fn std_command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.dir.join(program));
        self.prepare(&mut cmd);
        cmd
    }

    fn prepare(&self, cmd: &mut std::process::Command) {
        cmd.current_dir(&self.work_dir).stdin(Stdio::null());
        // Inherited PGHOST/PGPORT/PGDATA/... from a developer shell would silently
        // point pg_basebackup or pg_ctl at some other server.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("PG")) {
                cmd.env_remove(key);
            }
        }
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid).gid(user.gid);
            // root's HOME is unreadable for the server user; libpq probes ~/.pgpass.
            cmd.env("HOME", &self.work_dir).env("USER", &user.name);
        }
    }

    /// Run to completion, capturing output; non-zero exit is an error naming `step`.
    pub async fn run(
        &self,
        step: &str,
        mut cmd: tokio::process::Command,
    ) -> Result<Output, ClusterError> {
        let command = describe(cmd.as_std());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
            Ok(result) => result.map_err(|source| ClusterError::Spawn {
                step: step.to_owned(),
                program: command.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ClusterError::CommandTimeout {
                    step: step.to_owned(),
                    command,
                    waited: COMMAND_TIMEOUT,
                });
            }
        };
        if !output.status.success() {
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            return Err(ClusterError::CommandFailed {
                step: step.to_owned(),
                command,
                status: output.status,
                output: tail(&text, OUTPUT_TAIL).to_owned(),
            });
        }
        Ok(output)
    }

    /// Hand a path we created to the server user (no-op when not root).
    pub fn give(&self, path: &Path) -> Result<(), ClusterError> {
        match &self.run_as {
            None => Ok(()),
            Some(user) => {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|source| {
                    ClusterError::Io {
                        step: "changing owner to the server user",
                        path: path.to_owned(),
                        source,
                    }
                })
            }
        }
    }

    /// Fail early, with a useful message, if the server user cannot reach `path`
    /// (e.g. `--dir /root/demo`): initdb's own error would be far less clear.
    pub fn check_traversable(&self, path: &Path) -> Result<(), ClusterError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        for ancestor in path.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            let mode = meta.mode();
            let bit = if meta.uid() == user.uid {
                0o100
            } else if meta.gid() == user.gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Err(ClusterError::NotTraversable {
                    user: user.name.clone(),
                    path: path.to_owned(),
                    blocker: ancestor.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Program and arguments for error messages. Deliberately not `{:?}` of the
/// Command: that includes environment changes, i.e. PGPASSWORD.
fn describe(cmd: &std::process::Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(OsStr::new("?"))
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `max` bytes of `text`, cut at a char boundary.
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("common"), None);
        assert!(parse_version("10").unwrap() > parse_version("9.6").unwrap());
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
    }
}
