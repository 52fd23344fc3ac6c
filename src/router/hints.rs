//! Routing hints and the text's first word, read straight from the raw text.
//!
//! A hint is a comment *before the first token* of the text whose body starts
//! with `pgrouter:` followed by `primary` or `replica` (case-insensitive,
//! blanks allowed, anything after the word ignored):
//!
//! ```sql
//! /* pgrouter: replica */ SELECT count(*) FROM big_table;
//! -- pgrouter: primary
//! SELECT balance FROM accounts WHERE id = $1;
//! ```
//!
//! Several leading comments may precede the statement; the first one carrying
//! a hint wins. Comments after the first token are never hints. `primary`
//! forces the primary; `replica` lets a read (or an unparsed text that looks
//! like one) go to a replica but never a known write or a transaction/session
//! statement (`Decision::hint_refused` is set then).
//!
//! This module only reads text: it must not tokenize or parse SQL.

/// A routing hint found in a leading comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hint {
    /// `/* pgrouter: primary */`
    Primary,
    /// `/* pgrouter: replica */`
    Replica,
}

/// What precedes the first token of a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) hint: Option<Hint>,
    /// Byte offset of the first character that is neither blank nor comment
    /// (the text's length when there is none, or a comment is unterminated).
    pub(crate) body_start: usize,
}

/// Returns the routing hint of `sql`, if its leading comments carry one.
pub fn hint_of(sql: &str) -> Option<Hint> {
    scan_prefix(sql).hint
}

/// Skips leading blanks and comments (`--` to end of line, `/* */` nested as
/// in PostgreSQL), looking for a hint in them.
pub(crate) fn scan_prefix(sql: &str) -> Prefix {
    let bytes = sql.as_bytes();
    let mut pos = 0;
    let mut hint = None;
    loop {
        while pos < bytes.len() && is_blank(bytes[pos]) {
            pos += 1;
        }
        let rest = &bytes[pos..];
        let comment_end = if rest.starts_with(b"--") {
            let len = rest
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .unwrap_or(rest.len());
            Some((pos + 2, pos + len, pos + len))
        } else if rest.starts_with(b"/*") {
            match block_comment_len(rest) {
                Some(len) => Some((pos + 2, pos + len - 2, pos + len)),
                None => {
                    return Prefix {
                        hint,
                        body_start: sql.len(),
                    };
                }
            }
        } else {
            None
        };
        let Some((body_from, body_to, next)) = comment_end else {
            return Prefix {
                hint,
                body_start: pos,
            };
        };
        if hint.is_none() {
            hint = sql.get(body_from..body_to).and_then(parse_hint);
        }
        pos = next;
    }
}

/// The first word of `body` (ASCII letters only) if it is followed by
/// something that cannot continue an identifier; `None` otherwise.
pub(crate) fn first_word(body: &str) -> Option<&str> {
    let len = body.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
    if len == 0 {
        return None;
    }
    match body.as_bytes().get(len) {
        Some(&b) if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 => None,
        _ => body.get(..len),
    }
}

/// PostgreSQL's blanks: space, tab, newline, carriage return, form feed, vertical tab.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

/// Length of the nested block comment at the start of `text` (which starts
/// with `/*`), delimiters included; `None` when it is not terminated.
fn block_comment_len(text: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Parses a comment body: `pgrouter: primary` or `pgrouter: replica`.
fn parse_hint(comment: &str) -> Option<Hint> {
    const TAG: &[u8] = b"pgrouter:";
    let comment = comment.trim_start();
    let bytes = comment.as_bytes();
    if bytes.len() < TAG.len() || !bytes[..TAG.len()].eq_ignore_ascii_case(TAG) {
        return None;
    }
    let rest = comment.get(TAG.len()..)?.trim_start();
    let word = rest
        .get(..rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count())
        .unwrap_or("");
    if word.eq_ignore_ascii_case("primary") {
        Some(Hint::Primary)
    } else if word.eq_ignore_ascii_case("replica") {
        Some(Hint::Replica)
    } else {
        None
    }
}
