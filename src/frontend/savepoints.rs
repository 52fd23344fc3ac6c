//! The savepoints of a session's open transaction block, so that the settings
//! a `ROLLBACK TO SAVEPOINT` undoes are forgotten and those a `RELEASE` keeps
//! are remembered (the block's settings wait in `Session::tx_state` until it
//! ends). Pure bookkeeping on statement texts and positions: it reads and
//! sends nothing, and never decides where a batch goes.
//!
//! Only a savepoint statement alone in its text is followed, with a name
//! pgrouter compares as PostgreSQL does (ASCII, at most 63 bytes). One it
//! cannot attribute (inside a multi-statement query, beside another in one
//! batch, in a section ended by Flush, a name it does not read) makes the stack
//! untrustworthy for the rest of the block, and a later rollback then leaves
//! the block's outcome unknown.

use crate::router::{Decision, Route, SessionEffect, TxEffect};

/// What one statement does to the block's savepoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SavepointOp {
    /// `SAVEPOINT name`.
    Define(String),
    /// `RELEASE [SAVEPOINT] name`: it and every later savepoint go; their
    /// settings stay in the block.
    Release(String),
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`: settings made after
    /// it are undone; it stays, later savepoints go.
    RollbackTo(String),
    /// `COMMIT`, `END`, `ROLLBACK` or `ABORT` `[WORK | TRANSACTION] AND CHAIN`:
    /// the block ends (committed or rolled back, as the server's answer says)
    /// and a new one begins at once.
    Chain,
    /// A batch with more than one of the above.
    Several,
}

/// What a completed savepoint statement means for the block's settings.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Undo {
    /// Nothing is undone.
    Nothing,
    /// The settings from this index of the block's list on are undone.
    From(usize),
    /// Something may be undone, but not known what.
    Unknown,
}

/// The open block's savepoints, innermost last, each with the number of the
/// block's settings made before it.
#[derive(Debug, Default)]
pub(super) struct Savepoints {
    stack: Vec<(String, usize)>,
    /// A savepoint statement went by that could not be attributed.
    lost: bool,
}

impl Savepoints {
    /// Records `op`, which completed without error in the block, when
    /// `settings` of the block's settings had been made.
    pub fn apply(&mut self, op: &SavepointOp, settings: usize) -> Undo {
        match op {
            SavepointOp::Define(name) => {
                self.stack.push((name.clone(), settings));
                Undo::Nothing
            }
            SavepointOp::Release(name) => {
                match self.find(name) {
                    Some(index) => self.stack.truncate(index),
                    None => self.lost = true,
                }
                Undo::Nothing
            }
            SavepointOp::RollbackTo(name) => match self.find(name) {
                Some(index) if !self.lost => {
                    self.stack.truncate(index + 1);
                    Undo::From(self.stack[index].1)
                }
                _ => {
                    self.lost = true;
                    Undo::Unknown
                }
            },
            // The caller ends the block for a chained rollback; `Several` may
            // have rolled anything back.
            SavepointOp::Chain | SavepointOp::Several => {
                self.lost = true;
                Undo::Unknown
            }
        }
    }

    /// The block ended: no savepoints are left.
    pub fn clear(&mut self) {
        self.stack.clear();
        self.lost = false;
    }

    /// The innermost savepoint of that name (PostgreSQL allows repeats and
    /// uses the latest).
    fn find(&self, name: &str) -> Option<usize> {
        self.stack.iter().rposition(|(n, _)| n == name)
    }
}

/// The classifier's reasons for savepoint statements and AND CHAIN (see
/// `router::keywords`); `savepoint_statements_are_recognised` checks them.
const SAVEPOINT_REASONS: [&str; 3] = ["savepoint", "rollback to savepoint", "commit and chain"];

/// The savepoint statement `text` is. Only looked for where the classifier
/// puts them (the primary, as writes, with no transaction or session effect),
/// so reads pay nothing. One the classifier knows but pgrouter cannot read (a
/// comment inside, a name it does not follow) is `Several`: its answer must
/// not be taken for another statement's.
pub(super) fn savepoint_of(decision: &Decision, text: &str) -> Option<SavepointOp> {
    let candidate = decision.route == Route::Primary
        && decision.tx == TxEffect::None
        && decision.session == SessionEffect::None;
    if !candidate {
        return None;
    }
    savepoint_op(text).or_else(|| {
        SAVEPOINT_REASONS
            .contains(&decision.reason)
            .then_some(SavepointOp::Several)
    })
}

/// Longest name PostgreSQL keeps (NAMEDATALEN - 1); it truncates longer
/// ones, which pgrouter does not follow.
const MAX_NAME_LEN: usize = 63;

/// The savepoint statement `sql` is, if it is exactly one (a trailing `;`
/// allowed). Names as the server keeps them: unquoted ones folded to lower case.
pub(super) fn savepoint_op(sql: &str) -> Option<SavepointOp> {
    let sql = sql.trim_matches(is_space);
    let sql = sql
        .strip_suffix(';')
        .unwrap_or(sql)
        .trim_end_matches(is_space);
    let (first, rest) = next_word(sql)?;
    let is = |word: &str| first.eq_ignore_ascii_case(word);
    if is("SAVEPOINT") {
        return only_name(rest).map(SavepointOp::Define);
    }
    if is("RELEASE") {
        let rest = skip_word(rest, "SAVEPOINT");
        return only_name(rest).map(SavepointOp::Release);
    }
    if !(is("ROLLBACK") || is("ABORT") || is("COMMIT") || is("END")) {
        return None;
    }
    let rest = skip_word(skip_word(rest, "WORK"), "TRANSACTION");
    let (word, after) = next_word(rest)?;
    if word.eq_ignore_ascii_case("TO") && is("ROLLBACK") {
        return only_name(skip_word(after, "SAVEPOINT")).map(SavepointOp::RollbackTo);
    }
    let (chain, end) = next_word(after)?;
    let and_chain = word.eq_ignore_ascii_case("AND") && chain.eq_ignore_ascii_case("CHAIN");
    (and_chain && end.is_empty()).then_some(SavepointOp::Chain)
}

/// Whitespace as PostgreSQL's scanner knows it: ASCII only (any other
/// character may be part of an identifier).
fn is_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\x0b'
}

/// The first whitespace-separated word of `sql` and the trimmed rest.
fn next_word(sql: &str) -> Option<(&str, &str)> {
    let sql = sql.trim_start_matches(is_space);
    if sql.is_empty() {
        return None;
    }
    let end = sql.find(is_space).unwrap_or(sql.len());
    Some((&sql[..end], sql[end..].trim_start_matches(is_space)))
}

/// `sql` without a leading `word` (any case), if it has one.
fn skip_word<'a>(sql: &'a str, word: &str) -> &'a str {
    match next_word(sql) {
        Some((first, rest)) if first.eq_ignore_ascii_case(word) => rest,
        _ => sql,
    }
}

/// `sql` as one identifier and nothing else: a quoted one as written, an
/// unquoted one folded to lower case. Only names pgrouter compares exactly as
/// PostgreSQL does: unquoted ones in ASCII (PostgreSQL may also fold other
/// letters, by the database's encoding), none longer than it keeps.
fn only_name(sql: &str) -> Option<String> {
    let name = if let Some(quoted) = sql.strip_prefix('"') {
        let inner = quoted.strip_suffix('"')?;
        // Doubled quotes are one quote; a lone one would end the name early.
        // Only ASCII: the server may count other characters in more bytes
        // (another client encoding) and truncate where pgrouter does not.
        if inner.replace("\"\"", "").contains('"') || !inner.is_ascii() {
            return None;
        }
        inner.replace("\"\"", "\"")
    } else {
        let plain = sql.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && sql
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !plain {
            return None;
        }
        sql.to_ascii_lowercase()
    };
    (!name.is_empty() && name.len() <= MAX_NAME_LEN).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn define(name: &str) -> SavepointOp {
        SavepointOp::Define(name.into())
    }

    #[test]
    fn reads_the_savepoint_statements_postgres_accepts() {
        let cases: &[(&str, Option<SavepointOp>)] = &[
            ("SAVEPOINT sp1", Some(define("sp1"))),
            ("savepoint Sp1;", Some(define("sp1"))),
            ("  SAVEPOINT \"Mixed Case\" ; ", Some(define("Mixed Case"))),
            ("SAVEPOINT \"a\"\"b\"", Some(define("a\"b"))),
            (
                "RELEASE SAVEPOINT sp1",
                Some(SavepointOp::Release("sp1".into())),
            ),
            ("release sp1", Some(SavepointOp::Release("sp1".into()))),
            (
                "ROLLBACK TO SAVEPOINT sp1",
                Some(SavepointOp::RollbackTo("sp1".into())),
            ),
            (
                "rollback to sp1",
                Some(SavepointOp::RollbackTo("sp1".into())),
            ),
            (
                "ROLLBACK WORK TO SAVEPOINT sp1",
                Some(SavepointOp::RollbackTo("sp1".into())),
            ),
            (
                "ROLLBACK TRANSACTION TO sp1",
                Some(SavepointOp::RollbackTo("sp1".into())),
            ),
            ("ROLLBACK AND CHAIN", Some(SavepointOp::Chain)),
            ("abort work and chain;", Some(SavepointOp::Chain)),
            ("COMMIT AND CHAIN", Some(SavepointOp::Chain)),
            ("end transaction and chain", Some(SavepointOp::Chain)),
            // Not savepoint statements, or not alone in the text, or names
            // pgrouter does not compare as PostgreSQL would.
            ("SAVEPOINT \u{a0}a", None),
            ("SAVEPOINT caf\u{e9}", None),
            ("ROLLBACK", None),
            ("ROLLBACK AND NO CHAIN", None),
            ("COMMIT", None),
            ("SAVEPOINT", None),
            ("SAVEPOINT a; SET x = 1", None),
            ("SAVEPOINT a b", None),
            ("SAVEPOINT \"a\"b\"", None),
            ("SAVEPOINT \"\"", None),
            ("SAVEPOINT 1a", None),
            ("ABORT TO sp1", None),
            ("SELECT 'SAVEPOINT a'", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(&savepoint_op(sql), expected, "{sql}");
        }
    }

    #[test]
    fn savepoint_statements_are_recognised() {
        use crate::router::classify;
        let cases: &[(&str, Option<SavepointOp>)] = &[
            ("SAVEPOINT a", Some(define("a"))),
            ("RELEASE a", Some(SavepointOp::Release("a".into()))),
            ("ROLLBACK TO a", Some(SavepointOp::RollbackTo("a".into()))),
            ("ROLLBACK AND CHAIN", Some(SavepointOp::Chain)),
            ("COMMIT AND CHAIN", Some(SavepointOp::Chain)),
            // Known to the classifier, not read by pgrouter.
            ("ROLLBACK TO b /* c */", Some(SavepointOp::Several)),
            ("/* c */ SAVEPOINT a", Some(SavepointOp::Several)),
            ("SAVEPOINT \"caf\u{e9}\"", Some(SavepointOp::Several)),
            ("release savepoint\ta\u{a0}", Some(SavepointOp::Several)),
            // Not savepoint statements.
            ("SELECT 1", None),
            ("INSERT INTO t VALUES (1)", None),
            ("COMMIT", None),
            ("ROLLBACK", None),
            ("SET work_mem = '1MB'", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(&savepoint_of(&classify(sql), sql), expected, "{sql}");
        }
    }

    #[test]
    fn names_longer_than_postgres_keeps_are_not_followed() {
        // PostgreSQL truncates names to 63 bytes, so two long names may be one.
        let longest = format!("s{}", "x".repeat(62));
        assert_eq!(
            savepoint_op(&format!("SAVEPOINT {longest}")),
            Some(define(&longest))
        );
        assert_eq!(savepoint_op(&format!("SAVEPOINT {longest}1")), None);
        assert_eq!(savepoint_op(&format!("SAVEPOINT \"{longest}1\"")), None);
    }

    #[test]
    fn a_rollback_undoes_what_followed_its_savepoint() {
        let mut points = Savepoints::default();
        assert_eq!(points.apply(&define("a"), 1), Undo::Nothing);
        assert_eq!(points.apply(&define("b"), 2), Undo::Nothing);
        // Back to a: b goes, a stays (a second rollback to it works).
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("a".into()), 4),
            Undo::From(1)
        );
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("b".into()), 1),
            Undo::Unknown
        );
        let mut points = Savepoints::default();
        points.apply(&define("a"), 0);
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("a".into()), 3),
            Undo::From(0)
        );
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("a".into()), 2),
            Undo::From(0)
        );
    }

    #[test]
    fn a_repeated_name_means_the_latest_and_release_keeps_settings() {
        let mut points = Savepoints::default();
        points.apply(&define("s"), 0);
        points.apply(&define("s"), 2);
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("s".into()), 3),
            Undo::From(2)
        );
        // Releasing the inner s uncovers the outer one.
        assert_eq!(
            points.apply(&SavepointOp::Release("s".into()), 2),
            Undo::Nothing
        );
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("s".into()), 5),
            Undo::From(0)
        );
        // Releasing the outer one leaves none.
        points.apply(&SavepointOp::Release("s".into()), 0);
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("s".into()), 0),
            Undo::Unknown
        );
    }

    #[test]
    fn after_an_unattributed_statement_rollbacks_are_unknown_until_the_block_ends() {
        let mut points = Savepoints::default();
        points.apply(&define("a"), 0);
        assert_eq!(points.apply(&SavepointOp::Several, 0), Undo::Unknown);
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("a".into()), 1),
            Undo::Unknown
        );
        points.clear();
        points.apply(&define("a"), 0);
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("a".into()), 1),
            Undo::From(0)
        );
        // A RELEASE of a savepoint it never saw: the stack is not the server's.
        assert_eq!(
            points.apply(&SavepointOp::Release("b".into()), 1),
            Undo::Nothing
        );
        assert_eq!(
            points.apply(&SavepointOp::RollbackTo("a".into()), 1),
            Undo::Unknown
        );
    }
}
