//! Running the `pgbench` client in tests: finding it, running it with a
//! timeout, and reading its summary (zero failed transactions checked).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// `pgbench` from PATH, else the newest `/usr/lib/postgresql/*/bin/pgbench`.
pub fn pgbench_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("pgbench"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    if let Some(path) = on_path {
        return path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let path = entry.path().join("bin/pgbench");
            path.is_file().then_some((version, path))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, path)) => path,
        None => panic!(
            "pgbench not found on PATH nor in /usr/lib/postgresql/*/bin; \
             install the PostgreSQL client tools (e.g. `apt-get install postgresql-client`)"
        ),
    }
}

/// What one pgbench invocation printed.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs pgbench with `args`; panics (with its output) unless it exits with 0 and
/// wrote no error to stderr.
pub async fn pgbench(pgbench: &Path, args: &[String], timeout: Duration) -> Output {
    let shown = args.join(" ");
    let child = tokio::process::Command::new(pgbench)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", pgbench.display()));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|err| panic!("pgbench {shown}: {err}")),
        Err(_) => panic!("pgbench {shown} did not finish within {timeout:?} (hung?)"),
    };
    let out = Output {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success(),
        "pgbench {shown} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        out.stdout,
        out.stderr
    );
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|line| {
            let line = line.to_ascii_lowercase();
            line.contains("error") || line.contains("fatal")
        })
        .collect();
    assert!(
        errors.is_empty(),
        "pgbench {shown} reported errors on stderr:\n{}\n--- full stderr ---\n{}",
        errors.join("\n"),
        out.stderr
    );
    out
}

/// The text after `prefix` on the first stdout line starting with it.
pub fn field<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .map(str::trim)
}

/// The leading number of `text` ("12345", "0 (0.000%)", "1234.5 (without ...)").
pub fn leading_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// Numbers of one benchmark run, checked: transactions processed > 0 and zero
/// failed transactions (when this pgbench reports failures at all).
pub struct Summary {
    pub transactions: u64,
    pub tps: f64,
}

pub fn summarise(what: &str, out: &Output) -> Summary {
    let context = || format!("{what}\n--- stdout ---\n{}", out.stdout);
    let transactions = field(&out.stdout, "number of transactions actually processed:")
        .and_then(leading_number::<u64>)
        .unwrap_or_else(|| panic!("no transaction count in the output of {}", context()));
    assert!(
        transactions > 0,
        "no transaction was processed by {}",
        context()
    );
    // pgbench >= 15 prints this line; older ones abort the client instead.
    if let Some(failed) = field(&out.stdout, "number of failed transactions:") {
        assert_eq!(
            leading_number::<u64>(failed),
            Some(0),
            "failed transactions in {}",
            context()
        );
    }
    let tps = field(&out.stdout, "tps =")
        .and_then(leading_number::<f64>)
        .unwrap_or_else(|| panic!("no tps in the output of {}", context()));
    Summary { transactions, tps }
}
