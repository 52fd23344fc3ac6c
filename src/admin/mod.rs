//! The admin console: a virtual database (`admin.database`, "pgrouter" by
//! default) that the users named in `admin.users` log in to as to any other
//! database (same authentication), as operators reach PgBouncer's `pgbouncer`
//! database. It answers simple queries itself: `SHOW POOLS`, `SHOW NODES`,
//! `SHOW STATS`, `SHOW VERSION`, `SHOW HELP` (see [`commands`]).
//!
//! It must not reach the servers or change any state: it only reads the
//! topology snapshot, the pools' counters and the router's statistics. Off
//! (the database name is then an ordinary one) while `admin.users` is empty.

pub mod commands;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::config::Config;
use crate::frontend::SessionError;
use crate::protocol::build::{self, Severity};
use crate::protocol::framer::ReadError;
use crate::protocol::{FramedReader, fields, frontend_tag, sqlstate, tx_status};
use crate::server::Shared;
use commands::{Snapshot, Table};

/// Whether a login is for the console, and if so whether it may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Not the console's database (or the console is off): an ordinary session.
    NotAdmin,
    Allowed,
    /// The console's database, by a user not in `admin.users`.
    Refused,
}

/// Decides what a client that logged in as `user` to `database` gets.
pub fn access(config: &Config, database: &str, user: &str) -> Access {
    if config.admin.users.is_empty() || database != config.admin.database {
        Access::NotAdmin
    } else if config.admin.users.iter().any(|admin| admin == user) {
        Access::Allowed
    } else {
        Access::Refused
    }
}

/// Serves one console client after it authenticated (AuthenticationOk is in
/// `out`) until it leaves or the router stops.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut reader: FramedReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    mut out: BytesMut,
) -> Result<(), SessionError> {
    greet(&mut out);
    write.write_all(&out).await?;
    let mut shutdown = shared.shutdown.clone();
    // Set by an extended-protocol message: the console takes simple queries
    // only, so it reports one error and skips to the client's Sync, as
    // PostgreSQL skips a failed extended batch.
    let mut skipping = false;
    loop {
        out.clear();
        let frame = tokio::select! {
            frame = reader.next() => frame,
            // The guard `wait_for` returns is dropped inside: it must not live
            // across the write below (it is not Send).
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                build::error_response(&mut out, Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, "pgrouter is shutting down");
                let _ = write.write_all(&out).await;
                return Ok(());
            }
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ReadError::Io(err)) => return Err(err.into()),
            Err(ReadError::Frame(err)) => {
                return refuse(&mut write, &mut out, &err.to_string()).await;
            }
        };
        match frame.tag {
            frontend_tag::TERMINATE => return Ok(()),
            frontend_tag::QUERY => match fields::query_text(frame.body()) {
                Ok(text) => {
                    run(&shared, text, &mut out);
                    build::ready_for_query(&mut out, tx_status::IDLE);
                }
                Err(err) => return refuse(&mut write, &mut out, &err.to_string()).await,
            },
            frontend_tag::SYNC => {
                skipping = false;
                build::ready_for_query(&mut out, tx_status::IDLE);
            }
            frontend_tag::FLUSH => {}
            _ if skipping => {}
            _ => {
                skipping = true;
                build::error_response(
                    &mut out,
                    Severity::Error,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the pgrouter admin console takes simple queries only",
                );
            }
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
        }
    }
}

/// What libpq and psql expect after AuthenticationOk. `server_version` is
/// pgrouter's own, as PgBouncer's console reports its own (psql may warn
/// that it differs from its major version).
fn greet(out: &mut BytesMut) {
    let version = env!("CARGO_PKG_VERSION");
    for (name, value) in [
        ("server_version", version),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        build::parameter_status(out, name, value);
    }
    build::ready_for_query(out, tx_status::IDLE);
}

/// Answers one Query: its rows, or an error; the session goes on either way.
fn run(shared: &Shared, text: &str, out: &mut BytesMut) {
    match commands::parse(text) {
        Ok(None) => build::empty_query_response(out),
        Ok(Some(command)) => {
            let topology = shared.topology.load();
            let snapshot = Snapshot {
                topology: &topology,
                routed: shared.stats.routed(),
                pools: shared.pools.stats(),
                clients: shared
                    .stats
                    .clients
                    .load(std::sync::atomic::Ordering::Relaxed),
                misrouted: shared.stats.misrouted(),
                read_retries: shared.stats.read_retries(),
                cache: shared.classifier.stats(),
                uptime: shared.stats.uptime(),
                now: std::time::Instant::now(),
            };
            let Table { columns, rows, tag } = commands::answer(command, &snapshot);
            build::text_rows(out, columns, &rows, tag);
        }
        Err(message) => {
            build::error_response(out, Severity::Error, sqlstate::SYNTAX_ERROR, &message)
        }
    }
}

/// Ends a console session whose client broke the protocol (08P01).
async fn refuse(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    problem: &str,
) -> Result<(), SessionError> {
    out.clear();
    build::error_response(out, Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, problem);
    let _ = write.write_all(out).await;
    Err(SessionError::ClientProtocol(problem.to_owned()))
}
