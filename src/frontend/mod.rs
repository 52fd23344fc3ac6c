//! Client sessions: the startup handshake, client authentication, cancel
//! requests, and the relay loop that carries each client's traffic to the server
//! connections the router picks.
//!
//! It must not parse SQL itself (it asks `router`), must not decode rows (frames
//! pass through as bytes), and one client's failure must never reach another.

mod attach;
mod attached;
mod auth;
mod batch;
mod dispatch;
mod freshness;
mod listen;
mod local;
mod release;
mod retry;
mod savepoints;
mod server_msgs;
mod server_statements;
mod session;
mod session_log;
mod state_sql;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

pub use auth::ClientSecrets;

use crate::backend::Login;
use crate::protocol::build::{self, Severity};
use crate::protocol::startup::{StartupError, StartupMessage, StartupPacket, read_startup};
use crate::protocol::{FramedReader, sqlstate};
use crate::server::{ClientInfo, SessionHandle, Shared};

/// Parameters that describe the login itself and are never forwarded as-is.
const LOGIN_PARAMS: &[&str] = &["user", "database"];

/// Serves one client connection until it ends. Never panics on client input.
pub(crate) async fn serve_client(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let span = tracing::info_span!("client", %peer);
    async {
        shared
            .stats
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(err) = handshake(stream, peer, &shared).await {
            tracing::debug!(%err, "client session ended with an error");
        }
        shared
            .stats
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    .instrument(span)
    .await
}

/// Why a session ended early. Which side failed is in the variant.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client i/o: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("client protocol violation: {0}")]
    ClientProtocol(String),
    #[error("client authentication: {0}")]
    Auth(#[from] auth::AuthError),
    #[error("server: {0}")]
    Server(#[from] crate::pool::PoolError),
}

/// A client that logged in, ready for its session.
struct LoggedIn {
    login: Login,
    /// The name the client logged in with (`login.user` is the server login).
    client_user: String,
    /// Whether it logged in to the admin console (decided with the config it
    /// authenticated under).
    admin: crate::admin::Access,
    pool_mode: crate::config::PoolMode,
    reader: FramedReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
    out: BytesMut,
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), SessionError> {
    let connected_at = std::time::Instant::now();
    // A client that stalls before logging in is dropped, as PostgreSQL does with
    // authentication_timeout, so half-open connections cannot pile up.
    let limit = shared.config.load().limits.startup_timeout;
    let logged_in = match tokio::time::timeout(limit, Box::pin(log_in(stream, shared))).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(SessionError::ClientProtocol(format!(
                "no login within {limit:?}"
            )));
        }
    };
    let Some(LoggedIn {
        login,
        client_user,
        admin,
        pool_mode,
        reader,
        write,
        out,
    }) = logged_in
    else {
        return Ok(());
    };
    let application_name = login
        .params
        .iter()
        .find(|(name, _)| name == "application_name")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    match admin {
        crate::admin::Access::NotAdmin => {}
        crate::admin::Access::Allowed => {
            let console = crate::admin::Console {
                application_name,
                database: login.database,
                user: client_user,
            };
            return crate::admin::serve(shared.clone(), console, reader, write, out).await;
        }
        crate::admin::Access::Refused => {
            return crate::admin::refuse(&client_user, write, out).await;
        }
    }
    // Made here and passed as a pointer: the session task keeps every
    // future's state for its whole life, thousands of them at once.
    let handle = Arc::new(SessionHandle {
        info: ClientInfo {
            peer: Some(peer),
            user: client_user,
            database: login.database.clone(),
            application_name,
            connected_at: Some(connected_at),
        },
        ..SessionHandle::default()
    });
    session::Session::start(shared.clone(), handle, login, pool_mode, reader, write, out).await
}

/// Startup packets and authentication. `Ok(None)`: the client left, or it was a
/// cancel request, which is done.
async fn log_in(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
) -> Result<Option<LoggedIn>, SessionError> {
    let startup = loop {
        match read_startup(&mut stream).await {
            Ok(None) => return Ok(None),
            Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                // No TLS or GSS yet: 'N' tells libpq to continue in plain text (or
                // give up if the client requires encryption).
                stream.write_all(b"N").await?;
            }
            Ok(Some(StartupPacket::Cancel { pid, secret })) => {
                forward_cancel(shared, (pid, secret)).await;
                return Ok(None);
            }
            Ok(Some(StartupPacket::Startup(message))) => break message,
            Err(err) => {
                let mut out = BytesMut::new();
                let code = match err {
                    StartupError::UnsupportedProtocol(..) => sqlstate::FEATURE_NOT_SUPPORTED,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                build::error_response(&mut out, Severity::Fatal, code, &err.to_string());
                let _ = stream.write_all(&out).await;
                return Err(SessionError::ClientProtocol(err.to_string()));
            }
        }
    };
    let config = shared.config.load_full();
    let (read, mut write) = stream.into_split();
    let mut reader = FramedReader::new(
        read,
        config.limits.max_message_size,
        crate::protocol::framer::CLIENT_IDLE_BUFFER,
    );
    let mut out = BytesMut::with_capacity(1024);

    let login = match login_for(&startup, &config, &mut out) {
        Ok(login) => login,
        Err((code, message)) => {
            build::error_response(&mut out, Severity::Fatal, code, &message);
            write.write_all(&out).await?;
            return Err(SessionError::ClientProtocol(message));
        }
    };
    let client_user = startup.param("user").unwrap_or_default().to_owned();
    let secrets = shared.secrets.load_full();
    let known = config.user(&client_user).is_some();
    if let Err(err) = auth::authenticate(
        &mut reader,
        &mut write,
        &mut out,
        &secrets,
        &client_user,
        known,
    )
    .await
    {
        let code = match err {
            auth::AuthError::Failed(_) => sqlstate::INVALID_PASSWORD,
            _ => sqlstate::PROTOCOL_VIOLATION,
        };
        out.clear();
        build::error_response(&mut out, Severity::Fatal, code, &err.to_string());
        let _ = write.write_all(&out).await;
        return Err(err.into());
    }
    let admin = crate::admin::access(&config, &login.database, &client_user);
    let pool_mode = config
        .user(&client_user)
        .and_then(|u| u.pool_mode)
        .unwrap_or(config.pool.mode);
    Ok(Some(LoggedIn {
        login,
        client_user,
        admin,
        pool_mode,
        reader,
        write,
        out,
    }))
}

/// Builds the server login for a client's startup message, or the SQLSTATE and
/// message to refuse it with. Queues NegotiateProtocolVersion when needed.
fn login_for(
    startup: &StartupMessage,
    config: &crate::config::Config,
    out: &mut BytesMut,
) -> Result<Login, (&'static str, String)> {
    let user = startup.param("user").filter(|u| !u.is_empty()).ok_or((
        sqlstate::INVALID_AUTHORIZATION,
        "no PostgreSQL user name specified in startup packet".to_owned(),
    ))?;
    if startup
        .param("replication")
        .is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0"))
    {
        return Err((
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgrouter does not relay replication connections; connect to the server directly"
                .to_owned(),
        ));
    }
    // Protocol options (_pq_.*) and minor versions above 3.0 are declined the way
    // PostgreSQL 15 declines them, so newer clients fall back to 3.0.
    let unsupported: Vec<String> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if startup.minor > 0 || !unsupported.is_empty() {
        build::negotiate_protocol_version(out, unsupported);
    }
    let user_config = config.user(user);
    let database = startup
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user)
        .to_owned();
    let params = startup
        .params
        .iter()
        .filter(|(k, _)| !LOGIN_PARAMS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    Ok(Login {
        user: user_config.map_or(user, |u| u.server_user()).to_owned(),
        password: user_config
            .and_then(|u| u.server_password())
            .map(str::to_owned),
        database,
        params,
    })
}

/// Forwards a client's CancelRequest to the server running its current query.
/// Per protocol, nothing is ever answered on the cancel connection.
async fn forward_cancel(shared: &Shared, key: (i32, i32)) {
    let Some(session) = shared.session_handle(key) else {
        tracing::debug!("cancel request with an unknown key ignored");
        return;
    };
    let target = session
        .cancel
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(target) = target else {
        tracing::debug!("cancel request for an idle session ignored");
        return;
    };
    if let Err(err) = crate::backend::send_cancel(&target, Duration::from_secs(5)).await {
        tracing::warn!(%err, "forwarding a cancel request failed");
    }
}
