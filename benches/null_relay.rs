//! The floor for a proxy built on tokio: a byte relay that pins each client to
//! its own server connection and does nothing else (no framing, no routing, no
//! pool), on one worker thread like pgrouter's default. `proxy_switches.sh`
//! runs it as the `null-relay` target beside PgBouncer and pgrouter, so the
//! table shows how much of pgrouter's cost per transaction is the relay itself
//! (sockets, wake-ups, tokio) and how much is pgrouter's own work.
//!
//! It is a measuring tool, not a product: it drops a connection on any error
//! and holds one server connection per client.
//!
//! ```sh
//! cargo build --release --example null_relay
//! target/release/examples/null_relay 127.0.0.1:16450 127.0.0.1:25432
//! ```

use std::process::ExitCode;

use tokio::net::{TcpListener, TcpStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: null_relay LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("null_relay: cannot start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(relay(listen, upstream.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("null_relay: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn relay(listen: &str, upstream: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // The same socket options pgrouter sets on both sides.
            let _ = client.set_nodelay(true);
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
