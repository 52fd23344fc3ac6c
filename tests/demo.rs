//! `pgrouter demo` as a new user runs it: the binary starts its own cluster,
//! prints a DSN that works with psql, and stops everything on SIGINT.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A base port with the two ports after it free too (the demo's replicas).
fn free_port_run(len: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 60000 {
            continue;
        }
        let all_free = (0..len).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port run")
}

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs")
}

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[test]
fn demo_serves_psql_and_stops_cleanly() {
    let port = free_port_run(1);
    let cluster_port = free_port_run(3);
    let dir = std::env::temp_dir().join(format!("pgrouter-demo-test-{}", std::process::id()));
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_pgrouter"))
            .args([
                "demo",
                "--port",
                &port.to_string(),
                "--cluster-port",
                &cluster_port.to_string(),
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("demo starts"),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("demo prints a ready line").unwrap();
        if let Some(url) = line.strip_prefix("ready: ") {
            break url.to_owned();
        }
    };
    assert_eq!(
        url,
        format!("postgres://pgrouter:pgrouter@127.0.0.1:{port}/postgres")
    );

    let out = psql(&url, "select pg_is_in_recovery()");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");

    let out = psql(
        &url,
        "create table demo_t (id int); insert into demo_t values (1), (2)",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reads go to replicas, which replay the write within moments (read-your-writes
    // on the same session is another feature's promise).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = psql(&url, "select count(*) from demo_t");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // psql shows NOTICEs the server raised.
    let out = psql(&url, "DO $$ BEGIN RAISE NOTICE 'hello from DO'; END $$");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOTICE:  hello from DO"));

    let pid = demo.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = demo.0.wait().expect("demo exits");
    assert!(
        status.success(),
        "demo exit status {status:?}; output {rest:?}"
    );
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    let running = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "servers left running: {}",
        String::from_utf8_lossy(&running.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
