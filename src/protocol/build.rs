//! Messages pgrouter itself sends. To clients: built with `pgwire`'s message types.
//! To servers: `postgres-protocol`'s frontend encoders (already a dependency of
//! tokio-postgres, so no extra build cost). Each function appends to a buffer.

use bytes::BytesMut;
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::{
    DataRow, FieldDescription, NoData, ParameterDescription, RowDescription,
};
use pgwire::messages::extendedquery::{BindComplete, CloseComplete, ParseComplete};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, ReadyForQuery,
    TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};

use super::tx_status;

/// Severity of a synthetic error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

fn encode(message: PgWireBackendMessage, buf: &mut BytesMut) {
    // Encoding into a BytesMut only fails for messages over pgwire's size limits;
    // everything pgrouter builds is small, so a failure would be a bug worth logging.
    if let Err(err) = message.encode(buf) {
        tracing::error!(%err, "failed to encode a message pgrouter built");
    }
}

/// ErrorResponse with severity, SQLSTATE and message; `M` mentions pgrouter so
/// operators can tell the router's errors from the server's.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let fields = vec![
        (b'S', severity.as_str().to_owned()),
        (b'V', severity.as_str().to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(
        PgWireBackendMessage::ErrorResponse(ErrorResponse::new(fields)),
        buf,
    );
}

/// NoticeResponse at WARNING level.
pub fn warning_notice(buf: &mut BytesMut, code: &str, message: &str) {
    let fields = vec![
        (b'S', "WARNING".to_owned()),
        (b'V', "WARNING".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(
        PgWireBackendMessage::NoticeResponse(NoticeResponse::new(fields)),
        buf,
    );
}

/// ReadyForQuery with a raw status byte (I, T or E).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let status = match status {
        tx_status::IN_TRANSACTION => TransactionStatus::Transaction,
        tx_status::FAILED => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(
        PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status)),
        buf,
    );
}

pub fn auth_ok(buf: &mut BytesMut) {
    encode(
        PgWireBackendMessage::Authentication(Authentication::Ok),
        buf,
    );
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    encode(
        PgWireBackendMessage::Authentication(Authentication::MD5Password(salt.to_vec())),
        buf,
    );
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let mechanisms = mechanisms.iter().map(|m| (*m).to_owned()).collect();
    encode(
        PgWireBackendMessage::Authentication(Authentication::SASL(mechanisms)),
        buf,
    );
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    encode(
        PgWireBackendMessage::Authentication(Authentication::SASLContinue(
            bytes::Bytes::copy_from_slice(data),
        )),
        buf,
    );
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    encode(
        PgWireBackendMessage::Authentication(Authentication::SASLFinal(
            bytes::Bytes::copy_from_slice(data),
        )),
        buf,
    );
}

/// CommandComplete with `tag` (e.g. "LISTEN").
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    encode(
        PgWireBackendMessage::CommandComplete(CommandComplete::new(tag.to_owned())),
        buf,
    );
}

/// What PostgreSQL answers to one extended-protocol message of a statement
/// with no parameters and no result columns (LISTEN, UNLISTEN) that pgrouter
/// runs itself: ParseComplete, BindComplete, CloseComplete, the description
/// (none), CommandComplete `tag` for Execute. Sync and Flush are the caller's.
pub fn no_result_answer(buf: &mut BytesMut, message: u8, describes_statement: bool, tag: &str) {
    use super::frontend_tag;
    let answer = match message {
        frontend_tag::PARSE => PgWireBackendMessage::ParseComplete(ParseComplete::new()),
        frontend_tag::BIND => PgWireBackendMessage::BindComplete(BindComplete::new()),
        frontend_tag::CLOSE => PgWireBackendMessage::CloseComplete(CloseComplete::new()),
        frontend_tag::DESCRIBE => {
            if describes_statement {
                encode(
                    PgWireBackendMessage::ParameterDescription(ParameterDescription::new(vec![])),
                    buf,
                );
            }
            PgWireBackendMessage::NoData(NoData::new())
        }
        frontend_tag::EXECUTE => {
            PgWireBackendMessage::CommandComplete(CommandComplete::new(tag.to_owned()))
        }
        _ => return,
    };
    encode(answer, buf);
}

/// PostgreSQL's OID for `text`.
const TEXT_OID: u32 = 25;

/// The answer to a `SHOW` pgrouter answers itself: one text column, one row
/// (NULL when `value` is None) and CommandComplete "SHOW"; ReadyForQuery is
/// the caller's.
pub fn show_result(buf: &mut BytesMut, name: &str, value: Option<&str>) {
    text_rows(buf, &[name], &[vec![value.map(str::to_owned)]], "SHOW");
}

/// A result pgrouter answers itself (the admin console): text columns, rows
/// (`None` is NULL) and CommandComplete `tag`; ReadyForQuery is the caller's.
pub fn text_rows(buf: &mut BytesMut, columns: &[&str], rows: &[Vec<Option<String>>], tag: &str) {
    let fields = columns
        .iter()
        .map(|name| FieldDescription::new((*name).to_owned(), 0, 0, TEXT_OID, -1, -1, 0))
        .collect();
    encode(
        PgWireBackendMessage::RowDescription(RowDescription::new(fields)),
        buf,
    );
    for row in rows {
        let mut data = BytesMut::new();
        for value in row {
            match value {
                // Values are short (names, counters, LSNs): the length always fits.
                Some(text) => {
                    let len = i32::try_from(text.len()).unwrap_or(i32::MAX);
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(text.as_bytes());
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let count = i16::try_from(row.len()).unwrap_or(i16::MAX);
        encode(
            PgWireBackendMessage::DataRow(DataRow::new(data, count)),
            buf,
        );
    }
    encode(
        PgWireBackendMessage::CommandComplete(CommandComplete::new(tag.to_owned())),
        buf,
    );
}

/// The answer to a Query whose text is empty (or only whitespace and `;`).
pub fn empty_query_response(buf: &mut BytesMut) {
    encode(
        PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new()),
        buf,
    );
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    encode(
        PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
            name.to_owned(),
            value.to_owned(),
        )),
        buf,
    );
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    encode(
        PgWireBackendMessage::BackendKeyData(BackendKeyData::new(pid, SecretKey::I32(secret))),
        buf,
    );
}

/// Tells a client asking for protocol 3.x (x > 0) that 3.0 is spoken, as PostgreSQL 15 does.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported_options: Vec<String>) {
    encode(
        PgWireBackendMessage::NegotiateProtocolVersion(NegotiateProtocolVersion::new(
            0,
            unsupported_options,
        )),
        buf,
    );
}

/// Frontend messages pgrouter sends to servers.
pub mod to_server {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;

    /// A simple Query. Fails only for a NUL inside `sql`.
    pub fn query(buf: &mut BytesMut, sql: &str) -> std::io::Result<()> {
        frontend::query(sql, buf)
    }

    /// Sync: ends an extended-protocol section.
    pub fn sync(buf: &mut BytesMut) {
        frontend::sync(buf)
    }

    /// Close of a prepared statement.
    pub fn close_statement(buf: &mut BytesMut, name: &str) -> std::io::Result<()> {
        frontend::close(super::super::target_kind::STATEMENT, name, buf)
    }

    /// Runs an already prepared statement without parameters, text results:
    /// Bind (unnamed portal) + Execute + Sync.
    pub fn execute_prepared(buf: &mut BytesMut, statement: &str) -> std::io::Result<()> {
        let no_params: [Option<&[u8]>; 0] = [];
        frontend::bind(
            "",
            statement,
            [],
            no_params,
            |_, _| Ok(postgres_protocol::IsNull::No),
            [],
            buf,
        )
        .map_err(|err| match err {
            frontend::BindError::Serialization(io) => io,
            frontend::BindError::Conversion(other) => std::io::Error::other(other),
        })?;
        frontend::execute("", 0, buf)?;
        frontend::sync(buf);
        Ok(())
    }

    /// A fastpath FunctionCall of the argument-less function `oid`, text
    /// result, followed by Sync.
    pub fn function_call(buf: &mut BytesMut, oid: u32) {
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&oid.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes()); // no argument format codes
        body.extend_from_slice(&0i16.to_be_bytes()); // no arguments
        body.extend_from_slice(&0i16.to_be_bytes()); // result in text
        buf.extend_from_slice(
            &crate::protocol::Frame::from_parts(
                crate::protocol::frontend_tag::FUNCTION_CALL,
                &body,
            )
            .raw,
        );
    }

    /// Parse of a named statement without declared parameter types.
    pub fn parse(buf: &mut BytesMut, name: &str, sql: &str) -> std::io::Result<()> {
        frontend::parse(name, sql, [], buf)
    }

    pub fn terminate(buf: &mut BytesMut) {
        frontend::terminate(buf)
    }

    pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
        frontend::cancel_request(pid, secret, buf)
    }

    pub fn startup<'a>(
        buf: &mut BytesMut,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> std::io::Result<()> {
        frontend::startup_message(params, buf)
    }

    pub fn password(buf: &mut BytesMut, password: &[u8]) -> std::io::Result<()> {
        frontend::password_message(password, buf)
    }

    pub fn sasl_initial_response(
        buf: &mut BytesMut,
        mechanism: &str,
        data: &[u8],
    ) -> std::io::Result<()> {
        frontend::sasl_initial_response(mechanism, data, buf)
    }

    pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) -> std::io::Result<()> {
        frontend::sasl_response(data, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fields::error_fields;
    use crate::protocol::framer::try_decode;

    #[test]
    fn error_response_round_trips_through_framer() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Error, "08P01", "bad message");
        let frame = try_decode(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.tag, b'E');
        assert_eq!(
            error_fields(frame.body()),
            ("08P01".into(), "bad message".into())
        );
    }

    #[test]
    fn ready_for_query_bytes() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, b'T');
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'T']);
    }
}
