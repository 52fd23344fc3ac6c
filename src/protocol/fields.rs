//! Bounds-checked readers for the message bodies routing needs. Every accessor
//! returns an error instead of panicking on short or malformed input.

use super::{Frame, frontend_tag, target_kind};

/// A body that did not have the shape its tag promises.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {message} message: {problem}")]
pub struct FieldError {
    pub message: &'static str,
    pub problem: &'static str,
}

/// A cursor over a message body.
pub struct Fields<'a> {
    body: &'a [u8],
    message: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(body: &'a [u8], message: &'static str) -> Self {
        Self { body, message }
    }

    fn err(&self, problem: &'static str) -> FieldError {
        FieldError {
            message: self.message,
            problem,
        }
    }

    /// A NUL-terminated string, as raw bytes.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], FieldError> {
        let end = self
            .body
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("missing string terminator"))?;
        let (s, rest) = self.body.split_at(end);
        self.body = &rest[1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, FieldError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.err("string is not UTF-8"))
    }

    pub fn u8(&mut self) -> Result<u8, FieldError> {
        let (&b, rest) = self
            .body
            .split_first()
            .ok_or_else(|| self.err("truncated"))?;
        self.body = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, FieldError> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, FieldError> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FieldError> {
        if self.body.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(head)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.body
    }
}

/// Query: the SQL text.
pub fn query_text(body: &[u8]) -> Result<&str, FieldError> {
    Fields::new(body, "Query").cstr()
}

/// Parse: statement name and SQL text (parameter types follow, untouched).
pub fn parse_message(body: &[u8]) -> Result<(&str, &str), FieldError> {
    let mut f = Fields::new(body, "Parse");
    let name = f.cstr()?;
    let query = f.cstr()?;
    let count = f.i16()?;
    if count < 0 || f.rest().len() != count as usize * 4 {
        return Err(f.err("parameter type count does not match length"));
    }
    Ok((name, query))
}

/// Bind: portal name and statement name.
pub fn bind_message(body: &[u8]) -> Result<(&str, &str), FieldError> {
    let mut f = Fields::new(body, "Bind");
    let portal = f.cstr()?;
    let statement = f.cstr()?;
    Ok((portal, statement))
}

/// Describe or Close: kind ('S' or 'P') and name.
pub fn target_message<'a>(
    body: &'a [u8],
    message: &'static str,
) -> Result<(u8, &'a str), FieldError> {
    let mut f = Fields::new(body, message);
    let kind = f.u8()?;
    if kind != super::target_kind::STATEMENT && kind != super::target_kind::PORTAL {
        return Err(f.err("kind must be 'S' or 'P'"));
    }
    let name = f.cstr()?;
    Ok((kind, name))
}

/// Execute: portal name.
pub fn execute_message(body: &[u8]) -> Result<&str, FieldError> {
    let mut f = Fields::new(body, "Execute");
    let portal = f.cstr()?;
    f.i32()?;
    Ok(portal)
}

/// ParameterStatus: name and value.
/// The value of a FunctionCallResponse as text (None for NULL or malformed).
pub fn function_result_text(body: &[u8]) -> Option<&str> {
    let mut reader = Fields::new(body, "FunctionCallResponse");
    let len = usize::try_from(reader.i32().ok()?).ok()?;
    std::str::from_utf8(reader.take(len).ok()?).ok()
}

/// The first column of a DataRow as text (None for NULL or a malformed row).
pub fn first_column_text(body: &[u8]) -> Option<&str> {
    let mut reader = Fields::new(body, "DataRow");
    if reader.i16().ok()? < 1 {
        return None;
    }
    let len = usize::try_from(reader.i32().ok()?).ok()?;
    std::str::from_utf8(reader.take(len).ok()?).ok()
}

pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), FieldError> {
    let mut f = Fields::new(body, "ParameterStatus");
    Ok((f.cstr()?, f.cstr()?))
}

/// Whether an ErrorResponse ends the server session (severity FATAL or PANIC).
pub fn is_fatal(body: &[u8]) -> bool {
    let mut f = Fields::new(body, "ErrorResponse");
    while let Ok(kind) = f.u8() {
        if kind == 0 {
            break;
        }
        let Ok(value) = f.cstr_bytes() else { break };
        if (kind == b'V' || kind == b'S') && (value == b"FATAL" || value == b"PANIC") {
            return true;
        }
    }
    false
}

/// ErrorResponse / NoticeResponse: the SQLSTATE (`C`) and message (`M`) fields.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut f = Fields::new(body, "ErrorResponse");
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(kind) = f.u8() {
        if kind == 0 {
            break;
        }
        let Ok(value) = f.cstr_bytes() else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

/// The channel of a NotificationResponse (process id, channel, payload).
pub fn notification_channel(body: &[u8]) -> Option<&str> {
    let mut f = Fields::new(body, "NotificationResponse");
    f.i32().ok()?;
    f.cstr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_message_checks_counts() {
        assert_eq!(
            parse_message(b"s1\0select 1\0\0\0").unwrap(),
            ("s1", "select 1")
        );
        assert_eq!(
            parse_message(b"\0select $1\0\0\x01\0\0\0\x17").unwrap(),
            ("", "select $1")
        );
        assert!(parse_message(b"s1\0select 1\0\0\x01").is_err());
        assert!(parse_message(b"s1\0select 1").is_err());
        assert!(parse_message(b"").is_err());
    }

    #[test]
    fn target_and_execute() {
        assert_eq!(
            target_message(b"Sname\0", "Describe").unwrap(),
            (b'S', "name")
        );
        assert!(target_message(b"Xname\0", "Describe").is_err());
        assert!(execute_message(b"\0\0\0").is_err());
        assert_eq!(execute_message(b"p\0\0\0\0\0").unwrap(), "p");
    }

    #[test]
    fn fatal_errors_are_recognised() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42P01\0Mno\0\0"));
        assert!(!is_fatal(b"SFATA"));
    }

    #[test]
    fn error_fields_tolerate_garbage() {
        assert_eq!(
            error_fields(b"SERROR\0C42P01\0Mno table\0\0"),
            ("42P01".into(), "no table".into())
        );
        assert_eq!(error_fields(b"C42"), (String::new(), String::new()));
    }
}

/// The same Parse, Bind, Describe or Close message with its prepared-statement
/// name replaced by `name` (transaction pooling gives statements server-side
/// names of pgrouter's own). Other messages, and Describe/Close of a portal,
/// come back unchanged.
pub fn with_statement_name(frame: &Frame, name: &str) -> Result<Frame, FieldError> {
    let body = frame.body();
    let mut fields = Fields::new(body, "message");
    let (head, rest): (&[u8], &[u8]) = match frame.tag {
        frontend_tag::PARSE => {
            fields.cstr_bytes()?;
            (&[], fields.rest())
        }
        frontend_tag::BIND => {
            let portal_end = fields.cstr_bytes()?.len() + 1;
            fields.cstr_bytes()?;
            (&body[..portal_end], fields.rest())
        }
        frontend_tag::DESCRIBE | frontend_tag::CLOSE => {
            if fields.u8()? != target_kind::STATEMENT {
                return Ok(frame.clone());
            }
            fields.cstr_bytes()?;
            (&body[..1], fields.rest())
        }
        _ => return Ok(frame.clone()),
    };
    let mut new_body = Vec::with_capacity(head.len() + name.len() + 1 + rest.len());
    new_body.extend_from_slice(head);
    new_body.extend_from_slice(name.as_bytes());
    new_body.push(0);
    new_body.extend_from_slice(rest);
    Ok(Frame::from_parts(frame.tag, &new_body))
}

/// An ErrorResponse or NoticeResponse with every `from` in its field values
/// replaced by `to`; `None` when `from` does not occur (or is empty). Field
/// values are NUL-terminated and names hold no NUL, so a match never spans
/// two fields and the field structure survives.
pub fn replace_in_fields(frame: &Frame, from: &str, to: &str) -> Option<Frame> {
    let (body, from) = (frame.body(), from.as_bytes());
    let first = find(body, from)?;
    let mut new_body = Vec::with_capacity(body.len() + to.len());
    let mut rest = body;
    let mut at = Some(first);
    while let Some(position) = at {
        new_body.extend_from_slice(&rest[..position]);
        new_body.extend_from_slice(to.as_bytes());
        rest = &rest[position + from.len()..];
        at = find(rest, from);
    }
    new_body.extend_from_slice(rest);
    Some(Frame::from_parts(frame.tag, &new_body))
}

/// Where `needle` first occurs in `haystack` (never for an empty needle).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The part of a Parse body after the statement name (query text and parameter
/// types): what makes two prepared statements interchangeable.
pub fn parse_content(body: &[u8]) -> Result<&[u8], FieldError> {
    let mut fields = Fields::new(body, "Parse");
    fields.cstr_bytes()?;
    Ok(fields.rest())
}

#[cfg(test)]
mod rename_tests {
    use super::*;

    #[test]
    fn names_in_error_fields_are_replaced_whole_frame_rebuilt() {
        let body = b"SERROR\0C42P05\0Mprepared statement \"pgr_00ff\" already exists\0Dpgr_00ff pgr_00ff\0\0";
        let frame = Frame::from_parts(b'E', body);
        let renamed = replace_in_fields(&frame, "pgr_00ff", "s1").unwrap();
        assert_eq!(
            renamed.body(),
            b"SERROR\0C42P05\0Mprepared statement \"s1\" already exists\0Ds1 s1\0\0"
        );
        let length = i32::from_be_bytes([
            renamed.raw[1],
            renamed.raw[2],
            renamed.raw[3],
            renamed.raw[4],
        ]);
        assert_eq!(length as usize, renamed.raw.len() - 1);
        assert!(replace_in_fields(&frame, "pgr_0000", "s1").is_none());
        assert!(replace_in_fields(&frame, "", "s1").is_none());
    }

    fn frame(tag: u8, body: &[u8]) -> Frame {
        Frame::from_parts(tag, body)
    }

    #[test]
    fn renames_statements_only() {
        let parse = frame(frontend_tag::PARSE, b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let renamed = with_statement_name(&parse, "pgr_1").unwrap();
        assert_eq!(renamed.body(), b"pgr_1\0SELECT $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            parse_content(parse.body()).unwrap(),
            parse_content(renamed.body()).unwrap()
        );
        let bind = frame(frontend_tag::BIND, b"p\0s1\0\0\0\0\0\0\0");
        assert_eq!(
            with_statement_name(&bind, "x").unwrap().body(),
            b"p\0x\0\0\0\0\0\0\0"
        );
        let describe = frame(frontend_tag::DESCRIBE, b"Ss1\0");
        assert_eq!(with_statement_name(&describe, "x").unwrap().body(), b"Sx\0");
        let portal = frame(frontend_tag::CLOSE, b"Pp\0");
        assert_eq!(with_statement_name(&portal, "x").unwrap().body(), b"Pp\0");
        let truncated = frame(frontend_tag::BIND, b"p\0s1");
        assert!(with_statement_name(&truncated, "x").is_err());
    }
}
