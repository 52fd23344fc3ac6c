//! The cache key of a plain SELECT whose constants change from call to call
//! (`... WHERE aid = 48213`): the text with every number and simple string
//! literal replaced by `?`, so all such texts share one cached decision.
//!
//! Sound because a SELECT's route never depends on the value of a literal:
//! functions are judged by name, locking clauses and `INTO` are keywords. To
//! stay sound the scan is deliberately narrow and gives up (the caller then
//! keys by the exact text) on anything it does not fully understand:
//! - a text that is not one SELECT (another first word, or a `;` before its
//!   end: EXPLAIN options such as `ANALYZE 1` do depend on literals);
//! - dollar quotes, prefixed strings (`E'..'`, `B'..'`, `X'..'`, `U&'..'`),
//!   a backslash anywhere (its meaning in a string depends on
//!   `standard_conforming_strings`), nested block comments, unterminated
//!   quotes or comments, a `?` of the text's own, a number glued to a word.
//!
//! Comments (and so routing hints) and quoted identifiers are kept verbatim.
//! This module must not classify: it only computes keys.

/// The placeholder that replaces a literal.
const PLACEHOLDER: u8 = b'?';

/// Writes the key of `sql` into `out` and returns true, or returns false when
/// the text is not one this scan understands (or has no literal: its exact
/// text is then its key). `out` is cleared first.
pub fn literal_key(sql: &str, out: &mut Vec<u8>) -> bool {
    out.clear();
    let bytes = sql.as_bytes();
    let mut i = copy_leading_comments(bytes, out);
    if !starts_with_select(&bytes[i..]) {
        return false;
    }
    let mut replaced = false;
    while i < bytes.len() {
        let b = bytes[i];
        let prev = out.last().copied();
        let next = bytes.get(i + 1).copied();
        i = match b {
            b'\'' => {
                if prev.is_some_and(|p| is_word_byte(p) || p == b'&') {
                    return false; // E'..', B'..', X'..', N'..', U&'..'
                }
                let Some(end) = quoted_end(bytes, i, b'\'') else {
                    return false;
                };
                out.push(PLACEHOLDER);
                replaced = true;
                end
            }
            b'"' => {
                let Some(end) = quoted_end(bytes, i, b'"') else {
                    return false;
                };
                out.extend_from_slice(&bytes[i..end]);
                end
            }
            b'-' if next == Some(b'-') => {
                let end = bytes[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |p| i + p);
                out.extend_from_slice(&bytes[i..end]);
                end
            }
            b'/' if next == Some(b'*') => {
                let Some(end) = block_comment_end(bytes, i) else {
                    return false;
                };
                out.extend_from_slice(&bytes[i..end]);
                end
            }
            b'0'..=b'9' | b'.'
                if !prev.is_some_and(|p| is_word_byte(p) || p == b'.')
                    && (b != b'.' || next.is_some_and(|c| c.is_ascii_digit())) =>
            {
                let end = number_end(bytes, i);
                if bytes.get(end).is_some_and(|&c| is_word_byte(c)) {
                    return false; // 0x1F, 1e, 12abc: not a plain number
                }
                out.push(PLACEHOLDER);
                replaced = true;
                end
            }
            b'$' if !prev.is_some_and(is_word_byte) => {
                // `$1` parameters are kept; anything else is a dollar quote.
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return false;
                }
                out.extend_from_slice(&bytes[i..=i + digits]);
                i + 1 + digits
            }
            b';' => {
                if !bytes[i + 1..].iter().all(|c| c.is_ascii_whitespace()) {
                    return false; // more statements follow
                }
                out.push(b);
                i + 1
            }
            b'?' | b'\\' => return false,
            _ => {
                // Copy the whole run of bytes no arm above looks at in one go
                // (at least this byte): the scan runs on every read's text.
                let run = bytes[i + 1..]
                    .iter()
                    .position(|&c| starts_token(c))
                    .map_or(bytes.len(), |p| i + 1 + p);
                out.extend_from_slice(&bytes[i..run]);
                run
            }
        };
    }
    replaced
}

/// Copies whitespace and comments before the first word; the index after them.
fn copy_leading_comments(bytes: &[u8], out: &mut Vec<u8>) -> usize {
    let mut i = 0;
    loop {
        while bytes.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            out.push(bytes[i]);
            i += 1;
        }
        let end = if bytes[i..].starts_with(b"--") {
            bytes[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(bytes.len(), |p| i + p)
        } else if bytes[i..].starts_with(b"/*") {
            match block_comment_end(bytes, i) {
                Some(end) => end,
                None => return i,
            }
        } else {
            return i;
        };
        out.extend_from_slice(&bytes[i..end]);
        i = end;
    }
}

fn starts_with_select(rest: &[u8]) -> bool {
    rest.len() > 6 && rest[..6].eq_ignore_ascii_case(b"select") && !is_word_byte(rest[6])
}

/// A byte one of the arms of `literal_key` may act on: runs without one are
/// copied as they are.
fn starts_token(c: u8) -> bool {
    TOKEN_START[c as usize]
}

/// `starts_token` as a table: one load a byte on the scan's busiest loop.
const TOKEN_START: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = matches!(
            c as u8,
            b'\'' | b'"' | b'-' | b'/' | b'0'..=b'9' | b'.' | b'$' | b';' | b'?' | b'\\'
        );
        c += 1;
    }
    table
};

/// Letters, digits, `_`, `$` and any byte of a multi-byte UTF-8 character.
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// After the string (`'...'`) or quoted identifier (`"..."`) starting at
/// `start`, a doubled `quote` standing for one inside; None when unterminated,
/// or for a string holding a backslash.
fn quoted_end(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match *bytes.get(i)? {
            b'\\' if quote == b'\'' => return None,
            c if c == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// After the `/* ... */` starting at `start`; None when unterminated or nested.
fn block_comment_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 2;
    loop {
        match (bytes.get(i)?, bytes.get(i + 1)) {
            (b'*', Some(b'/')) => return Some(i + 2),
            (b'/', Some(b'*')) => return None,
            _ => i += 1,
        }
    }
}

/// After the number starting at `start`: digits, one fraction, an exponent.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let digits = |mut i: usize| {
        while bytes.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if bytes.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(i + 1), Some(b'+' | b'-')));
        if bytes.get(i + 1 + sign).is_some_and(|c| c.is_ascii_digit()) {
            i = digits(i + 1 + sign);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::literal_key;

    fn key(sql: &str) -> Option<String> {
        let mut out = Vec::new();
        literal_key(sql, &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn literals_of_a_select_share_a_key() {
        let k = |s| key(s).unwrap();
        assert_eq!(
            k("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
        );
        assert_eq!(
            k("select * from t2 where a = 'it''s' and b > 1.5e-3 and c = .5"),
            "select * from t2 where a = ? and b > ? and c = ?"
        );
        // Comments (hints) and quoted identifiers stay as they are.
        assert_eq!(
            k("/* pgrouter: after_lsn=0/16B3748 */ SELECT \"a'1\" FROM t -- 'x' 3\nWHERE id = 7"),
            "/* pgrouter: after_lsn=0/16B3748 */ SELECT \"a'1\" FROM t -- 'x' 3\nWHERE id = ?"
        );
        // A `-` or `/` that starts no comment is copied like any other byte.
        assert_eq!(
            k("SELECT a-1, b/2, é3 FROM t WHERE c = -4"),
            "SELECT a-?, b/?, é3 FROM t WHERE c = -?"
        );
        // Parameters, digits inside names and casts are kept.
        assert_eq!(
            k("SELECT col1, $1::int8, t.x FROM tab_2 WHERE v = 10"),
            "SELECT col1, $1::int8, t.x FROM tab_2 WHERE v = ?"
        );
    }

    #[test]
    fn anything_unclear_keeps_its_exact_text() {
        for sql in [
            "SELECT 1; DELETE FROM t",             // two statements
            "EXPLAIN (ANALYZE 1) DELETE FROM t",   // not a SELECT
            "DELETE FROM t WHERE id = 1",          // not a SELECT
            "SELECT E'\\''; DELETE FROM t; --'",   // prefixed string
            "SELECT 'a\\'; DELETE FROM t; --'",    // backslash
            "SELECT $$it's$$; DELETE FROM t; --'", // dollar quote
            "SELECT data ? 'k' FROM t",            // a ? of its own
            "SELECT 0x1F",                         // not a plain number
            "SELECT B'101'",                       // bit string
            "SELECT 'open",                        // unterminated
            "SELECT 1 /* a /* nested */ */",       // nested comment
            "SELECT a FROM t",                     // no literal
            "SELECTION",                           // not the word SELECT
        ] {
            assert_eq!(key(sql), None, "{sql}");
        }
    }
}
