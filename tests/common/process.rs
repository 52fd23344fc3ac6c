//! Running the `pgrouter` binary as operators do (`pgrouter run --config FILE`)
//! against a test cluster, and reading its log.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgrouter::cluster::Cluster;

/// A config file's text for `cluster` on `port`: top-level `top` lines, the
/// cluster's superuser as the one user, its nodes, then `tables` (TOML tables).
pub fn config_text(cluster: &Cluster, port: u16, top: &str, tables: &str) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\n{top}\n\n[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        cluster.superuser(),
        cluster.password()
    );
    for (i, node) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\nrole = \"{role}\"\n",
            node.name, node.host, node.port
        ));
    }
    text.push('\n');
    text.push_str(tables);
    text
}

/// Sends a signal to a process.
pub fn signal(pid: &str, which: &str) {
    let sent = Command::new("kill").args([which, pid]).status().unwrap();
    assert!(sent.success(), "kill {which} {pid}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system temp dir.
pub fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgrouter-{prefix}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits for a log line containing `needle`.
pub fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line containing {needle:?} within {within:?}")
}

/// `pgrouter run --config path`, logging at info; its stdout and stderr lines
/// arrive on the returned channel. Waits until it accepts connections.
pub fn spawn_router(path: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    wait_for_line(&lines, "accepting connections", Duration::from_secs(20));
    (child, lines)
}
