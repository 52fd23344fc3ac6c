//! Client authentication: SCRAM-SHA-256 (server side), md5 and trust.
//!
//! The server side of SCRAM is written here by hand (RFC 5802/7677, no channel
//! binding) because pgwire only offers it inside its own server framework, which
//! does not fit a raw relay. The key derivation is postgres-protocol's
//! `scram_sha_256` (the code PostgreSQL's own verifiers match); here is only the
//! message exchange and the proof check, in constant time.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{AuthMethod, Config};
use crate::protocol::build;
use crate::protocol::fields::Fields;
use crate::protocol::framer::ReadError;
use crate::protocol::{FramedReader, frontend_tag};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Why a client was not let in; carries the SQLSTATE it is told.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("client sent a malformed authentication message: {0}")]
    Protocol(String),
    #[error("client went away during authentication: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ReadError> for AuthError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Io(e) => AuthError::Io(e),
            ReadError::Frame(e) => AuthError::Protocol(e.to_string()),
        }
    }
}

/// Precomputed SCRAM keys for one user, so a login costs two HMACs instead of
/// 4096 PBKDF2 rounds.
#[derive(Clone)]
struct ScramKeys {
    salt_b64: String,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Per-user client credentials derived from the config.
#[derive(Default)]
pub struct ClientSecrets {
    method: AuthMethod,
    passwords: HashMap<String, String>,
    scram: HashMap<String, ScramKeys>,
}

impl ClientSecrets {
    pub fn from_config(config: &Config) -> ClientSecrets {
        let mut secrets = ClientSecrets {
            method: config.auth,
            ..Default::default()
        };
        for user in &config.users {
            let Some(password) = &user.password else {
                continue;
            };
            secrets
                .passwords
                .insert(user.name.clone(), password.clone());
            if config.auth == AuthMethod::ScramSha256
                && let Some(keys) = parse_verifier(&postgres_protocol::password::scram_sha_256(
                    password.as_bytes(),
                ))
            {
                secrets.scram.insert(user.name.clone(), keys);
            }
        }
        secrets
    }
}

/// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
fn parse_verifier(verifier: &str) -> Option<ScramKeys> {
    let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt_b64) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ScramKeys {
        salt_b64: salt_b64.to_owned(),
        iterations: iterations.parse().ok()?,
        stored_key: B64.decode(stored).ok()?,
        server_key: B64.decode(server).ok()?,
    })
}

/// Runs the configured exchange with the client; on success AuthenticationOk is
/// queued in `out` (not yet flushed).
pub async fn authenticate<R, W>(
    reader: &mut FramedReader<R>,
    writer: &mut W,
    out: &mut BytesMut,
    secrets: &ClientSecrets,
    user: &str,
    known_user: bool,
) -> Result<(), AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match secrets.method {
        AuthMethod::Trust if known_user => {}
        AuthMethod::Trust => return Err(AuthError::Failed(user.to_owned())),
        AuthMethod::Md5 => md5(reader, writer, out, secrets, user).await?,
        AuthMethod::ScramSha256 => scram(reader, writer, out, secrets, user).await?,
    }
    build::auth_ok(out);
    Ok(())
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, out: &mut BytesMut) -> Result<(), AuthError> {
    writer.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Reads the next PasswordMessage-family body.
async fn password_body<R: AsyncRead + Unpin>(
    reader: &mut FramedReader<R>,
) -> Result<bytes::Bytes, AuthError> {
    let frame = reader
        .next()
        .await?
        .ok_or_else(|| AuthError::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
    if frame.tag != frontend_tag::PASSWORD {
        return Err(AuthError::Protocol(format!(
            "expected a password message, got {:?}",
            frame.tag as char
        )));
    }
    Ok(frame.raw.slice(crate::protocol::framer::HEADER_LEN..))
}

async fn md5<R, W>(
    reader: &mut FramedReader<R>,
    writer: &mut W,
    out: &mut BytesMut,
    secrets: &ClientSecrets,
    user: &str,
) -> Result<(), AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let salt: [u8; 4] = rand::random();
    build::auth_md5(out, salt);
    send(writer, out).await?;
    let body = password_body(reader).await?;
    let sent = Fields::new(&body, "PasswordMessage")
        .cstr()
        .map_err(|e| AuthError::Protocol(e.to_string()))?
        .to_owned();
    let Some(password) = secrets.passwords.get(user) else {
        return Err(AuthError::Failed(user.to_owned()));
    };
    let expected =
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
    if constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Failed(user.to_owned()))
    }
}

async fn scram<R, W>(
    reader: &mut FramedReader<R>,
    writer: &mut W,
    out: &mut BytesMut,
    secrets: &ClientSecrets,
    user: &str,
) -> Result<(), AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    build::auth_sasl(out, &[SCRAM_SHA_256]);
    send(writer, out).await?;

    // SASLInitialResponse: mechanism, length, client-first-message.
    let body = password_body(reader).await?;
    let mut fields = Fields::new(&body, "SASLInitialResponse");
    let mechanism = fields
        .cstr()
        .map_err(|e| AuthError::Protocol(e.to_string()))?;
    if mechanism != SCRAM_SHA_256 {
        return Err(AuthError::Protocol(format!(
            "unsupported SASL mechanism {mechanism:?}"
        )));
    }
    let len = fields
        .i32()
        .map_err(|e| AuthError::Protocol(e.to_string()))?;
    let client_first = std::str::from_utf8(fields.rest())
        .map_err(|_| AuthError::Protocol("client-first-message is not UTF-8".into()))?;
    if len < 0 || len as usize != client_first.len() {
        return Err(AuthError::Protocol("SASL data length mismatch".into()));
    }
    let (gs2_header, client_first_bare) = split_gs2(client_first)?;
    let client_nonce = attribute(client_first_bare, 'r')?;

    // Unknown users run the same exchange against throwaway keys, so the answer
    // does not reveal which user names exist.
    let keys = secrets
        .scram
        .get(user)
        .cloned()
        .unwrap_or_else(|| ScramKeys {
            salt_b64: B64.encode(rand::random::<[u8; 16]>()),
            iterations: 4096,
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        });
    let nonce = format!("{client_nonce}{}", B64.encode(rand::random::<[u8; 18]>()));
    let server_first = format!("r={nonce},s={},i={}", keys.salt_b64, keys.iterations);
    build::auth_sasl_continue(out, server_first.as_bytes());
    send(writer, out).await?;

    // SASLResponse: client-final-message.
    let body = password_body(reader).await?;
    let client_final = std::str::from_utf8(&body)
        .map_err(|_| AuthError::Protocol("client-final-message is not UTF-8".into()))?;
    let (without_proof, proof_b64) = client_final
        .rsplit_once(",p=")
        .ok_or_else(|| AuthError::Protocol("client-final-message has no proof".into()))?;
    let binding = attribute(without_proof, 'c')?;
    if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
        return Err(AuthError::Protocol("channel binding does not match".into()));
    }
    if attribute(without_proof, 'r')? != nonce {
        return Err(AuthError::Protocol("nonce does not match".into()));
    }
    let proof = B64
        .decode(proof_b64)
        .map_err(|_| AuthError::Protocol("proof is not base64".into()))?;

    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac(&keys.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(AuthError::Failed(user.to_owned()));
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let computed_stored = Sha256::digest(&client_key);
    if !secrets.scram.contains_key(user) || !constant_time_eq(&computed_stored, &keys.stored_key) {
        return Err(AuthError::Failed(user.to_owned()));
    }
    let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", B64.encode(server_signature));
    build::auth_sasl_final(out, server_final.as_bytes());
    Ok(())
}

/// Splits "n,,n=user,r=nonce" into the GS2 header "n,," and the bare message.
fn split_gs2(message: &str) -> Result<(&str, &str), AuthError> {
    let bad = || AuthError::Protocol("malformed client-first-message".into());
    let mut parts = message.splitn(3, ',');
    let flag = parts.next().ok_or_else(bad)?;
    let authzid = parts.next().ok_or_else(bad)?;
    let bare = parts.next().ok_or_else(bad)?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => {
            return Err(AuthError::Protocol(
                "channel binding is not supported (no TLS)".into(),
            ));
        }
        _ => return Err(bad()),
    }
    let header_len = flag.len() + authzid.len() + 2;
    Ok((&message[..header_len], bare))
}

/// The value of `k=` in a comma-separated SCRAM message.
fn attribute(message: &str, key: char) -> Result<&str, AuthError> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(key).and_then(|p| p.strip_prefix('=')))
        .ok_or_else(|| AuthError::Protocol(format!("SCRAM message lacks {key}=")))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gs2_split() {
        assert_eq!(split_gs2("n,,n=,r=abc").unwrap(), ("n,,", "n=,r=abc"));
        assert_eq!(split_gs2("y,,n=u,r=x").unwrap(), ("y,,", "n=u,r=x"));
        assert!(split_gs2("p=tls-server-end-point,,n=,r=x").is_err());
        assert!(split_gs2("garbage").is_err());
    }

    #[test]
    fn verifier_parses() {
        let v = postgres_protocol::password::scram_sha_256(b"secret");
        let keys = parse_verifier(&v).unwrap();
        assert_eq!(keys.iterations, 4096);
        assert_eq!(keys.stored_key.len(), 32);
    }

    /// Runs postgres-protocol's client side against our checks, in memory.
    #[test]
    fn client_proof_verifies() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let keys = parse_verifier(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (_, bare) = split_gs2(&first).unwrap();
        let nonce = format!("{}srv", attribute(bare, 'r').unwrap());
        let server_first = format!("r={nonce},s={},i={}", keys.salt_b64, keys.iterations);
        client.update(server_first.as_bytes()).unwrap();
        let fin = String::from_utf8(client.message().to_vec()).unwrap();
        let (without_proof, proof) = fin.rsplit_once(",p=").unwrap();
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let sig = hmac(&keys.stored_key, auth_message.as_bytes());
        let proof = B64.decode(proof).unwrap();
        let client_key: Vec<u8> = proof.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        assert!(constant_time_eq(
            &Sha256::digest(&client_key),
            &keys.stored_key
        ));
        let server_final = format!(
            "v={}",
            B64.encode(hmac(&keys.server_key, auth_message.as_bytes()))
        );
        client.finish(server_final.as_bytes()).unwrap();
    }
}
