//! Routing hints and the text's first word, read straight from the raw text.
//!
//! A hint is a comment *before the first token* of the text whose body starts
//! with `pgrouter:` followed by items separated by blanks or commas: `primary`
//! or `replica` (case-insensitive) for the route, and the freshness items
//! `after_lsn=X/Y`, `key=K` and `max_staleness=D` (see [`FreshnessHints`]);
//! unknown items are ignored:
//!
//! ```sql
//! /* pgrouter: replica */ SELECT count(*) FROM big_table;
//! -- pgrouter: primary
//! SELECT balance FROM accounts WHERE id = $1;
//! /* pgrouter: key=user:42 */ SELECT * FROM profile WHERE user_id = 42;
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
    let mut hint = None;
    let body_start = walk_leading_comments(sql, |body| {
        if hint.is_none() {
            hint = parse_hint(body);
        }
    });
    Prefix { hint, body_start }
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

/// The items of a `pgrouter:` comment body, separated by blanks or commas
/// (`None` when the comment is not addressed to pgrouter).
fn hint_items(comment: &str) -> Option<impl Iterator<Item = &str>> {
    const TAG: &[u8] = b"pgrouter:";
    let comment = comment.trim_start();
    let bytes = comment.as_bytes();
    if bytes.len() < TAG.len() || !bytes[..TAG.len()].eq_ignore_ascii_case(TAG) {
        return None;
    }
    let rest = comment.get(TAG.len()..)?;
    Some(
        rest.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|item| !item.is_empty()),
    )
}

/// The routing word of a comment body: `pgrouter: primary` or `pgrouter: replica`.
fn parse_hint(comment: &str) -> Option<Hint> {
    hint_items(comment)?.find_map(|item| {
        if item.eq_ignore_ascii_case("primary") {
            Some(Hint::Primary)
        } else if item.eq_ignore_ascii_case("replica") {
            Some(Hint::Replica)
        } else {
            None
        }
    })
}

/// Longest causal key accepted; longer ones are ignored (and so give no guarantee).
pub const MAX_KEY_LEN: usize = 256;

/// Freshness hints of one statement text (see the `consistency` module):
/// `/* pgrouter: after_lsn=0/3000060 key=user:42 max_staleness=500ms */`.
/// Items may share a comment with `primary`/`replica`; malformed values are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreshnessHints {
    /// Read only where WAL up to here has been replayed.
    pub after_lsn: Option<u64>,
    /// A causal key: a write records its commit position under it, a read waits for it.
    pub key: Option<Box<str>>,
    /// Accept replicas at most this far behind in time (0: the primary).
    pub max_staleness: Option<std::time::Duration>,
}

impl FreshnessHints {
    pub fn is_empty(&self) -> bool {
        self.after_lsn.is_none() && self.key.is_none() && self.max_staleness.is_none()
    }

    /// Adds another statement's hints (of one batch): the highest floor, the
    /// first key, the tightest staleness budget.
    pub fn merge(&mut self, other: &FreshnessHints) {
        if other.is_empty() {
            return;
        }
        self.after_lsn = self.after_lsn.max(other.after_lsn);
        if self.key.is_none() {
            self.key.clone_from(&other.key);
        }
        self.max_staleness = match (self.max_staleness, other.max_staleness) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The freshness hints in the leading comments of `sql`; for each item the
/// first comment that carries it wins. Cheap when the text has no leading comment.
pub fn freshness_hints(sql: &str) -> FreshnessHints {
    let mut hints = FreshnessHints::default();
    let first = sql.trim_start();
    if !(first.starts_with("/*") || first.starts_with("--")) {
        return hints;
    }
    walk_leading_comments(sql, |body| {
        let Some(items) = hint_items(body) else {
            return;
        };
        for item in items {
            let Some((name, value)) = item.split_once('=') else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "after_lsn" if hints.after_lsn.is_none() => {
                    hints.after_lsn = crate::monitor::parse_lsn(value);
                }
                "key" if hints.key.is_none() && !value.is_empty() && value.len() <= MAX_KEY_LEN => {
                    hints.key = Some(value.into());
                }
                "max_staleness" if hints.max_staleness.is_none() => {
                    hints.max_staleness = parse_staleness(value);
                }
                _ => {}
            }
        }
    });
    hints
}

/// A staleness budget: a duration with a unit, or a bare `0`.
pub fn parse_staleness(value: &str) -> Option<std::time::Duration> {
    if value.trim() == "0" {
        return Some(std::time::Duration::ZERO);
    }
    crate::config::parse_duration(value).ok()
}

/// Calls `visit` with the body of every comment before the first token and
/// returns where that token starts (the text's length when there is none, or
/// a comment is unterminated).
fn walk_leading_comments(sql: &str, mut visit: impl FnMut(&str)) -> usize {
    let bytes = sql.as_bytes();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_blank(bytes[pos]) {
            pos += 1;
        }
        let rest = &bytes[pos..];
        let (body_from, body_to, next) = if rest.starts_with(b"--") {
            let len = rest
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .unwrap_or(rest.len());
            (pos + 2, pos + len, pos + len)
        } else if rest.starts_with(b"/*") {
            match block_comment_len(rest) {
                Some(len) => (pos + 2, pos + len - 2, pos + len),
                None => return sql.len(),
            }
        } else {
            return pos;
        };
        if let Some(body) = sql.get(body_from..body_to) {
            visit(body);
        }
        pos = next;
    }
}

/// Byte offset where the text's first token starts, after leading blanks and comments.
pub fn body_start(sql: &str) -> usize {
    walk_leading_comments(sql, |_| {})
}

/// Whether the text's first token (after comments) is `word`, ignoring case.
pub fn starts_with_word(sql: &str, word: &str) -> bool {
    let body = sql.get(body_start(sql)..).unwrap_or("");
    first_word(body).is_some_and(|first| first.eq_ignore_ascii_case(word))
}
