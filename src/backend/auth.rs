//! Authenticating pgrouter to a server. The SCRAM and md5 math comes from
//! `postgres-protocol` (the code tokio-postgres uses); this file only drives the
//! message exchange over our raw framer.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};

use super::{BackendError, Login, ServerConn};
use crate::protocol::backend_tag;
use crate::protocol::build::to_server;
use crate::protocol::fields::Fields;

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Runs the authentication exchange up to AuthenticationOk.
pub(super) async fn authenticate(conn: &mut ServerConn, login: &Login) -> Result<(), BackendError> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            backend_tag::AUTHENTICATION => {}
            backend_tag::ERROR_RESPONSE => return Err(conn.server_error(frame)),
            backend_tag::NEGOTIATE_PROTOCOL_VERSION | backend_tag::NOTICE_RESPONSE => continue,
            other => {
                return Err(conn.protocol(format!(
                    "expected an authentication request, got {:?}",
                    other as char
                )));
            }
        }
        let mut fields = Fields::new(frame.body(), "Authentication");
        let kind = fields.i32().map_err(|e| conn.protocol(e.to_string()))?;
        match kind {
            AUTH_OK => return Ok(()),
            AUTH_CLEARTEXT => {
                let password = password(conn, login)?;
                to_server::password(conn.out(), password.as_bytes())
                    .map_err(|e| conn.protocol(e.to_string()))?;
            }
            AUTH_MD5 => {
                let salt = fields.take(4).map_err(|e| conn.protocol(e.to_string()))?;
                let salt = [salt[0], salt[1], salt[2], salt[3]];
                let password = password(conn, login)?;
                let hashed = md5_hash(login.user.as_bytes(), password.as_bytes(), salt);
                to_server::password(conn.out(), hashed.as_bytes())
                    .map_err(|e| conn.protocol(e.to_string()))?;
            }
            AUTH_SASL => {
                let mut offered = Vec::new();
                while let Ok(name) = fields.cstr() {
                    if name.is_empty() {
                        break;
                    }
                    offered.push(name.to_owned());
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(conn.auth(format!("server offers only {offered:?}")));
                }
                let password = password(conn, login)?;
                let exchange = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                to_server::sasl_initial_response(conn.out(), SCRAM_SHA_256, exchange.message())
                    .map_err(|e| conn.protocol(e.to_string()))?;
                scram = Some(exchange);
            }
            AUTH_SASL_CONTINUE => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| conn.protocol("SASLContinue before SASL".into()))?;
                exchange
                    .update(fields.rest())
                    .map_err(|e| conn.auth(format!("SCRAM: {e}")))?;
                let message = exchange.message().to_vec();
                to_server::sasl_response(conn.out(), &message)
                    .map_err(|e| conn.protocol(e.to_string()))?;
            }
            AUTH_SASL_FINAL => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| conn.protocol("SASLFinal before SASL".into()))?;
                exchange
                    .finish(fields.rest())
                    .map_err(|e| conn.auth(format!("SCRAM server signature: {e}")))?;
                continue;
            }
            other => return Err(conn.auth(format!("unsupported authentication request {other}"))),
        }
        conn.flush().await?;
    }
}

fn password<'a>(conn: &ServerConn, login: &'a Login) -> Result<&'a str, BackendError> {
    login
        .password
        .as_deref()
        .ok_or_else(|| conn.auth("server asks for a password and none is configured".into()))
}

impl ServerConn {
    fn auth(&self, reason: String) -> BackendError {
        BackendError::Auth {
            addr: self.addr.clone(),
            reason,
        }
    }
}
