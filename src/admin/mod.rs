//! The admin console: a virtual database (`admin.database`, "pgrouter" by
//! default) that the users named in `admin.users` log in to as to any other
//! database (same authentication), as operators reach PgBouncer's `pgbouncer`
//! database. It answers simple queries itself: `SHOW POOLS`, `SHOW NODES`,
//! `SHOW CLIENTS`, `SHOW STATS`, `SHOW CONFIG`, `SHOW VERSION`, `SHOW HELP`
//! and `RELOAD` (see [`commands`]).
//!
//! It must not reach the servers. It reads the topology snapshot, the pools'
//! counters, the sessions' handles and the router's statistics; the one
//! thing it changes is the
//! config, with RELOAD, exactly as SIGHUP does. Off (the database name is then
//! an ordinary one) while `admin.users` is empty.

pub(crate) mod commands;

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
use crate::{ReloadError, RouterHandle};
use commands::{Command, Snapshot, Table};

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

/// Who is at the console: checked again before each command, so a reload
/// that takes a user out of `admin.users` ends their open console sessions.
pub(crate) struct Console {
    pub database: String,
    pub user: String,
    /// Echoed back in the greeting, as PostgreSQL reports what the client set.
    pub application_name: String,
}

/// Refuses a user not in `admin.users`, after AuthenticationOk (in `out`),
/// as PostgreSQL refuses a database the user may not connect to.
pub(crate) async fn refuse(
    user: &str,
    mut write: OwnedWriteHalf,
    mut out: BytesMut,
) -> Result<(), SessionError> {
    let message = format!("user {user:?} may not use the pgrouter admin console (admin.users)");
    build::error_response(
        &mut out,
        Severity::Fatal,
        sqlstate::INSUFFICIENT_PRIVILEGE,
        &message,
    );
    let _ = write.write_all(&out).await;
    Err(SessionError::ClientProtocol(message))
}

/// Serves one console client after it authenticated (AuthenticationOk is in
/// `out`) until it leaves or the router stops.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    console: Console,
    mut reader: FramedReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    mut out: BytesMut,
) -> Result<(), SessionError> {
    greet(&mut out, &console.application_name);
    write.write_all(&out).await?;
    let mut shutdown = shared.shutdown.clone();
    let mut state = State::default();
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
            Err(ReadError::Frame(err)) => return violation(&mut write, &mut out, err).await,
        };
        match frame.tag {
            frontend_tag::TERMINATE => return Ok(()),
            frontend_tag::SYNC => {
                state.skipping = false;
                build::ready_for_query(&mut out, state.status());
            }
            // After an extended-protocol message the console reported one
            // error; like PostgreSQL it ignores everything up to Sync.
            _ if state.skipping => {}
            frontend_tag::QUERY => {
                let text = match fields::query_text(frame.body()) {
                    Ok(text) => text,
                    Err(err) => return violation(&mut write, &mut out, err).await,
                };
                let config = shared.config.load();
                if access(&config, &console.database, &console.user) != Access::Allowed {
                    let message = format!("user {:?} was taken out of admin.users", console.user);
                    return end(
                        &mut write,
                        &mut out,
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        &message,
                    )
                    .await;
                }
                run(&shared, &config, text, &mut state, &mut out).await;
                build::ready_for_query(&mut out, state.status());
            }
            frontend_tag::FUNCTION_CALL => {
                not_supported(&mut out);
                build::ready_for_query(&mut out, state.status());
            }
            frontend_tag::PARSE
            | frontend_tag::BIND
            | frontend_tag::DESCRIBE
            | frontend_tag::EXECUTE
            | frontend_tag::CLOSE => {
                state.skipping = true;
                not_supported(&mut out);
            }
            // Nothing is held back, and no COPY runs: as PostgreSQL, ignore them.
            frontend_tag::FLUSH
            | frontend_tag::COPY_DATA
            | frontend_tag::COPY_DONE
            | frontend_tag::COPY_FAIL => {}
            other => {
                let message = format!("invalid frontend message type {:?}", char::from(other));
                return violation(&mut write, &mut out, message).await;
            }
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
        }
    }
}

/// What the console remembers between messages.
#[derive(Default)]
struct State {
    /// Set by an extended-protocol message, cleared by Sync.
    skipping: bool,
    /// Between an (ignored) BEGIN and COMMIT/ROLLBACK, so drivers that track
    /// the transaction status see what they expect.
    in_block: bool,
}

impl State {
    fn status(&self) -> u8 {
        if self.in_block {
            tx_status::IN_TRANSACTION
        } else {
            tx_status::IDLE
        }
    }
}

/// What libpq and drivers expect after AuthenticationOk. `server_version` is
/// pgrouter's own, as PgBouncer's console reports its own (psql may warn
/// that it differs from its major version). No BackendKeyData: there is
/// nothing to cancel.
fn greet(out: &mut BytesMut, application_name: &str) {
    let version = env!("CARGO_PKG_VERSION");
    for (name, value) in [
        ("server_version", version),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", application_name),
    ] {
        build::parameter_status(out, name, value);
    }
    build::ready_for_query(out, tx_status::IDLE);
}

fn not_supported(out: &mut BytesMut) {
    build::error_response(
        out,
        Severity::Error,
        sqlstate::FEATURE_NOT_SUPPORTED,
        "the pgrouter admin console takes simple queries only",
    );
}

/// Answers one Query: its rows, or an error; the session goes on either way.
async fn run(
    shared: &Arc<Shared>,
    config: &Config,
    text: &str,
    state: &mut State,
    out: &mut BytesMut,
) {
    let command = match commands::parse(text) {
        Ok(Some(command)) => command,
        Ok(None) => return build::empty_query_response(out),
        Err(message) => {
            return build::error_response(out, Severity::Error, sqlstate::SYNTAX_ERROR, &message);
        }
    };
    match command {
        Command::Ignored(tag) => {
            match tag {
                "BEGIN" | "START TRANSACTION" => state.in_block = true,
                "COMMIT" | "ROLLBACK" => state.in_block = false,
                _ => {}
            }
            return build::command_complete(out, tag);
        }
        Command::Reload => return reload(shared, out).await,
        _ => {}
    }
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
        stale_after: config.measurement_stale_after(),
        settings: config.describe(),
        clients_list: if command == Command::Clients {
            shared.client_list()
        } else {
            Vec::new()
        },
    };
    let Table { columns, rows, tag } = commands::answer(command, &snapshot);
    build::text_rows(out, columns, &rows, tag);
}

/// RELOAD: what SIGHUP does. A bad file changes nothing and says why.
async fn reload(shared: &Arc<Shared>, out: &mut BytesMut) {
    // The file is read off the runtime's threads: a slow disk must not stall
    // the sessions that share this worker.
    let handle = RouterHandle::of(shared);
    let reloaded = match tokio::task::spawn_blocking(move || handle.reload_from_file()).await {
        Ok(reloaded) => reloaded,
        Err(err) => {
            let message = format!("config reload failed: {err}");
            return build::error_response(out, Severity::Error, sqlstate::INTERNAL_ERROR, &message);
        }
    };
    match reloaded {
        Ok(path) => {
            tracing::info!(path = %path.display(), "config reloaded (admin console RELOAD)");
            build::command_complete(out, "RELOAD");
        }
        Err(err) => {
            tracing::error!(%err, "config reload rejected (admin console RELOAD); the previous config stays in force");
            // The log has the whole error; the client gets no excerpt of the file.
            let (code, why) = match &err {
                ReloadError::NoFile => {
                    (sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, err.to_string())
                }
                ReloadError::Config(config) => {
                    (sqlstate::CONFIG_FILE_ERROR, config.without_excerpt())
                }
            };
            let message =
                format!("config reload rejected; the previous config stays in force: {why}");
            build::error_response(out, Severity::Error, code, &message);
        }
    }
}

/// Ends a console session whose client broke the protocol (08P01).
async fn violation(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    problem: impl std::fmt::Display,
) -> Result<(), SessionError> {
    end(
        write,
        out,
        sqlstate::PROTOCOL_VIOLATION,
        &problem.to_string(),
    )
    .await
}

/// Ends a console session with a FATAL error.
async fn end(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    code: &str,
    problem: &str,
) -> Result<(), SessionError> {
    out.clear();
    build::error_response(out, Severity::Fatal, code, problem);
    let _ = write.write_all(out).await;
    Err(SessionError::ClientProtocol(problem.to_owned()))
}
