//! Startup-phase packets: untagged, `len: i32` then a 4-byte code.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest startup packet accepted (PostgreSQL uses 10000 too).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// What a client opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and `name=value` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Errors in the startup phase; always the client's side.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("i/o error reading startup packet: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    #[error("unsupported frontend protocol {0}.{1}")]
    UnsupportedProtocol(u16, u16),
}

/// Reads one startup-phase packet. `Ok(None)` when the client closed first.
pub async fn read_startup<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<StartupPacket>, StartupError> {
    let mut len_buf = [0u8; 4];
    match reader.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len_buf);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(len));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    reader.read_exact(&mut body).await?;
    parse_startup(body).map(Some)
}

/// Parses the body (after the length) of a startup-phase packet.
pub fn parse_startup(mut body: BytesMut) -> Result<StartupPacket, StartupError> {
    let code = body.get_i32();
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if body.remaining() < 8 {
                return Err(StartupError::Malformed("short CancelRequest"));
            }
            Ok(StartupPacket::Cancel {
                pid: body.get_i32(),
                secret: body.get_i32(),
            })
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            let params = parse_params(&body)?;
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params,
            }))
        }
    }
}

fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let malformed = |_| StartupError::Malformed("missing terminator");
    let mut fields = super::fields::Fields::new(body, "StartupMessage");
    let mut params = Vec::new();
    loop {
        let name = fields.cstr_bytes().map_err(malformed)?;
        if name.is_empty() {
            // The list ends with an empty name; nothing may follow it.
            if !fields.rest().is_empty() {
                return Err(StartupError::Malformed("data after the parameter list"));
            }
            return Ok(params);
        }
        let value = fields.cstr_bytes().map_err(malformed)?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn parses_startup_params() {
        let p = parse_startup(packet(PROTOCOL_3_0, b"user\0app\0database\0db\0\0")).unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!("not a startup")
        };
        assert_eq!(m.param("user"), Some("app"));
        assert_eq!(m.param("database"), Some("db"));
    }

    #[test]
    fn rejects_unterminated_params() {
        assert!(parse_startup(packet(PROTOCOL_3_0, b"user\0app")).is_err());
        assert!(
            parse_startup(packet(PROTOCOL_3_0, b"user\0app\0")).is_err(),
            "no final terminator"
        );
        assert!(parse_startup(packet(PROTOCOL_3_0, b"user\0app\0\0x")).is_err());
        assert!(parse_startup(packet(PROTOCOL_3_0, b"user")).is_err());
    }

    #[test]
    fn parses_special_requests() {
        assert_eq!(
            parse_startup(packet(SSL_REQUEST_CODE, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        let cancel = parse_startup(packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9])).unwrap();
        assert_eq!(cancel, StartupPacket::Cancel { pid: 7, secret: 9 });
        assert!(parse_startup(packet(CANCEL_REQUEST_CODE, &[0, 0])).is_err());
        assert!(parse_startup(packet(2 << 16, b"")).is_err());
    }
}
