//! Server connections: connect, authenticate (SCRAM-SHA-256, md5, cleartext or
//! trust), then move raw frames in both directions. It tracks what the session
//! layer needs to know about a connection (transaction status, parameters, the
//! prepared statements that exist on it) and nothing about clients or routing.

mod auth;
mod prepared;

pub use prepared::{EVICTABLE_PREFIX, PreparedSet};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::build::to_server;
use crate::protocol::fields::{error_fields, parameter_status};
use crate::protocol::framer::ReadError;
use crate::protocol::{Frame, FrameError, FramedReader, backend_tag, tx_status};

/// Errors talking to a server. `Server` carries the server's own ErrorResponse so
/// it can be relayed to the client unchanged.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("server {addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server {addr}: connecting took longer than {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("server {addr}: i/o error: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server {addr}: {source}")]
    Frame {
        addr: String,
        #[source]
        source: FrameError,
    },
    #[error("server {addr}: authentication failed: {reason}")]
    Auth { addr: String, reason: String },
    #[error("server {addr}: {code}: {message}")]
    Server {
        addr: String,
        code: String,
        message: String,
        /// The ErrorResponse frame exactly as the server sent it.
        raw: Bytes,
    },
    #[error("server {addr}: protocol error: {problem}")]
    Protocol { addr: String, problem: String },
}

/// How pgrouter logs in to a server for one client.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// Other startup parameters the client sent (application_name, options, ...).
    pub params: Vec<(String, String)>,
}

/// Where and how to cancel the query running on a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

/// One authenticated server connection.
pub struct ServerConn {
    /// Index of the node in the config's node list.
    pub node: usize,
    addr: String,
    host: String,
    port: u16,
    reader: FramedReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    out: BytesMut,
    pid: i32,
    secret: i32,
    /// What a cancel request for this connection needs, made once (a session
    /// takes it at every checkout).
    cancel: std::sync::OnceLock<Arc<CancelTarget>>,
    /// ParameterStatus values the server reported.
    pub params: Vec<(String, String)>,
    /// Status byte of the last ReadyForQuery.
    pub tx_status: u8,
    /// Named prepared statements that exist on this connection: name → hash of
    /// the Parse message that created them.
    pub prepared: PreparedSet,
    /// Which client session state (SETs) is applied here: a hash of the
    /// session's statement log, 0 when none (as after connect or DISCARD ALL).
    pub session_state: u64,
    pub created: Instant,
    pub last_used: Instant,
}

impl ServerConn {
    /// Connects and authenticates, then reads up to the first ReadyForQuery.
    pub async fn connect(
        node: usize,
        host: &str,
        port: u16,
        login: &Login,
        timeout: Duration,
        max_message: usize,
    ) -> Result<ServerConn, BackendError> {
        let addr = format!("{host}:{port}");
        match tokio::time::timeout(
            timeout,
            Self::connect_inner(node, host, port, login, max_message),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout { addr, timeout }),
        }
    }

    async fn connect_inner(
        node: usize,
        host: &str,
        port: u16,
        login: &Login,
        max_message: usize,
    ) -> Result<ServerConn, BackendError> {
        let addr = format!("{host}:{port}");
        let stream =
            TcpStream::connect((host, port))
                .await
                .map_err(|source| BackendError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
        // Latency matters more than packet count for a query relay.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let now = Instant::now();
        let mut conn = ServerConn {
            node,
            addr,
            host: host.to_owned(),
            port,
            reader: FramedReader::new(
                read,
                max_message,
                crate::protocol::framer::SERVER_IDLE_BUFFER,
            ),
            writer: write,
            out: BytesMut::with_capacity(4096),
            pid: 0,
            secret: 0,
            cancel: std::sync::OnceLock::new(),
            params: Vec::new(),
            tx_status: tx_status::IDLE,
            prepared: PreparedSet::default(),
            session_state: 0,
            created: now,
            last_used: now,
        };
        conn.startup(login).await?;
        Ok(conn)
    }

    async fn startup(&mut self, login: &Login) -> Result<(), BackendError> {
        let mut params: Vec<(&str, &str)> =
            vec![("user", &login.user), ("database", &login.database)];
        params.extend(login.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        to_server::startup(&mut self.out, params).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        auth::authenticate(self, login).await?;
        // After AuthenticationOk: ParameterStatus*, BackendKeyData, ReadyForQuery.
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                backend_tag::PARAMETER_STATUS => self.note_parameter(&frame),
                backend_tag::BACKEND_KEY_DATA => {
                    let body = frame.body();
                    if body.len() < 8 {
                        return Err(self.protocol("short BackendKeyData".into()));
                    }
                    self.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    self.secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                backend_tag::READY_FOR_QUERY => {
                    self.tx_status = frame.body().first().copied().unwrap_or(tx_status::IDLE);
                    return Ok(());
                }
                backend_tag::ERROR_RESPONSE => return Err(self.server_error(frame)),
                backend_tag::NOTICE_RESPONSE | backend_tag::NEGOTIATE_PROTOCOL_VERSION => {}
                other => {
                    return Err(self.protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )));
                }
            }
        }
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter(&mut self, frame: &Frame) {
        if let Ok((name, value)) = parameter_status(frame.body()) {
            match self.params.iter_mut().find(|(k, _)| k == name) {
                Some(entry) => entry.1 = value.to_owned(),
                None => self.params.push((name.to_owned(), value.to_owned())),
            }
        }
    }

    /// "host:port" of the node, for logs.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Where to send a CancelRequest for this connection.
    pub fn cancel_target(&self) -> Arc<CancelTarget> {
        self.cancel
            .get_or_init(|| {
                Arc::new(CancelTarget {
                    host: self.host.clone(),
                    port: self.port,
                    pid: self.pid,
                    secret: self.secret,
                })
            })
            .clone()
    }

    /// The next frame already buffered, without I/O.
    pub fn try_next(&mut self) -> Result<Option<Frame>, BackendError> {
        self.reader
            .try_next()
            .map_err(|source| BackendError::Frame {
                addr: self.addr.clone(),
                source,
            })
    }

    /// Reads once from the socket; an error at end of stream.
    pub async fn fill(&mut self) -> Result<(), BackendError> {
        match self.reader.fill().await {
            Ok(0) => Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Waits for the next frame.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        match self.reader.next().await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Err(ReadError::Io(e)) => Err(self.io(e)),
            Err(ReadError::Frame(source)) => Err(BackendError::Frame {
                addr: self.addr.clone(),
                source,
            }),
        }
    }

    /// The outgoing buffer; bytes are sent by [`ServerConn::flush`].
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Whether bytes wait to be sent.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), BackendError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.writer.write_all(&self.out).await;
        self.out.clear();
        self.last_used = Instant::now();
        result.map_err(|e| self.io(e))
    }

    /// Runs a simple query whose results nobody needs (reset, session replay) and
    /// waits for ReadyForQuery. Fails if the server reported an error.
    pub async fn run_quiet(&mut self, sql: &str) -> Result<(), BackendError> {
        self.query_value(sql).await.map(|_| ())
    }

    /// Runs a simple query and returns its first row's first column as text
    /// (None for no row or NULL). Fails if the server reported an error.
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        // A simple Query drops the server's unnamed statement.
        self.prepared.remove("");
        to_server::query(&mut self.out, sql).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        let mut failure = None;
        let mut value = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                backend_tag::DATA_ROW if value.is_none() => {
                    value =
                        crate::protocol::fields::first_column_text(frame.body()).map(str::to_owned);
                }
                backend_tag::ERROR_RESPONSE => failure = Some(self.server_error(frame)),
                backend_tag::PARAMETER_STATUS => self.note_parameter(&frame),
                backend_tag::READY_FOR_QUERY => {
                    self.tx_status = frame.body().first().copied().unwrap_or(tx_status::IDLE);
                    return failure.map_or(Ok(value), Err);
                }
                _ => {}
            }
        }
    }

    /// Whether it is between transactions with nothing unread: fit to be kept
    /// in a pool as is (transaction pooling).
    pub fn is_clean(&self) -> bool {
        self.tx_status == tx_status::IDLE && self.reader.buffered() == 0 && self.out.is_empty()
    }

    /// Makes the connection fit for another client: `DISCARD ALL` drops session
    /// state and prepared statements. Refuses a connection left inside a transaction.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        if self.tx_status != tx_status::IDLE || self.reader.buffered() > 0 {
            return Err(self.protocol("connection not idle at release".into()));
        }
        self.run_quiet("DISCARD ALL").await?;
        self.prepared.clear();
        self.session_state = 0;
        Ok(())
    }

    /// The error for a server that did not answer in time.
    pub fn timeout_error(&self) -> BackendError {
        BackendError::Timeout {
            addr: self.addr.clone(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Sends Terminate and closes, best effort.
    pub async fn terminate(mut self) {
        to_server::terminate(&mut self.out);
        let _ = self.flush().await;
    }

    /// Sends Terminate if the socket takes it at once, then closes: for
    /// callers that cannot wait (a full send buffer just means the server
    /// sees the connection close instead).
    pub fn terminate_now(mut self) {
        self.out.clear();
        to_server::terminate(&mut self.out);
        let _ = self.writer.try_write(&self.out);
    }

    fn io(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn protocol(&self, problem: String) -> BackendError {
        BackendError::Protocol {
            addr: self.addr.clone(),
            problem,
        }
    }

    fn server_error(&self, frame: Frame) -> BackendError {
        let (code, message) = error_fields(frame.body());
        BackendError::Server {
            addr: self.addr.clone(),
            code,
            message,
            raw: frame.raw,
        }
    }
}

/// Sends a CancelRequest to a server on a fresh connection, as libpq does.
pub async fn send_cancel(target: &CancelTarget, timeout: Duration) -> Result<(), BackendError> {
    let addr = format!("{}:{}", target.host, target.port);
    let attempt = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let mut buf = BytesMut::new();
        to_server::cancel_request(&mut buf, target.pid, target.secret);
        stream.write_all(&buf).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(BackendError::Connect { addr, source }),
        Err(_) => Err(BackendError::Timeout { addr, timeout }),
    }
}
