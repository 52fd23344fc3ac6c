//! What session-state statements mean for the state pgrouter replays on
//! every server connection of a session (see `session_log`): which prepared
//! statements `DEALLOCATE` and `DISCARD ALL` drop, and which earlier entries a
//! statement undoes or overrides. Pure text functions: no I/O, no session.

use std::sync::Arc;

/// Whether `sql`'s first words are `words` (any case, a trailing `;` ignored).
fn starts_with_words(sql: &str, words: &[&str]) -> bool {
    let mut found = sql.split_whitespace().map(|w| w.trim_end_matches(';'));
    words
        .iter()
        .all(|word| found.next().is_some_and(|w| w.eq_ignore_ascii_case(word)))
}

/// `DISCARD ALL`, which also ends every LISTEN.
pub(super) fn discards_all(sql: &str) -> bool {
    starts_with_words(sql, &["DISCARD", "ALL"])
}

/// The statement a `DEALLOCATE [PREPARE] name` drops (not `ALL`), as the
/// server names it.
pub(super) fn deallocated_name(sql: &str) -> Option<String> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let rest = after_word(sql, "DEALLOCATE")?;
    let rest = after_word(rest, "PREPARE").unwrap_or(rest);
    let (name, after) = leading_name(rest)?;
    let is_all = name == "all" && !rest.starts_with('"');
    (after.trim().is_empty() && !is_all).then_some(name)
}

/// The statement a SQL `PREPARE name [(types)] AS ...` creates, as the server
/// names it (not `PREPARE TRANSACTION 'id'`).
fn prepared_name(sql: &str) -> Option<String> {
    if several_statements(sql) {
        return None;
    }
    let rest = after_word(sql.trim_start(), "PREPARE")?;
    let (name, after) = leading_name(rest)?;
    let after = after.trim_start();
    (after.starts_with('(') || after_word(after, "AS").is_some()).then_some(name)
}

/// What follows `word` (any case) and the whitespace after it at the start of `sql`.
fn after_word<'a>(sql: &'a str, word: &str) -> Option<&'a str> {
    let head = sql.get(..word.len())?;
    let rest = &sql[word.len()..];
    let ends = rest.is_empty() || rest.starts_with(char::is_whitespace);
    (head.eq_ignore_ascii_case(word) && ends).then(|| rest.trim_start())
}

/// The identifier at the start of `sql` as the server names it (a quoted one
/// as written, an unquoted one folded to lower case in ASCII, as PostgreSQL
/// does in UTF-8 databases), and the text after it.
fn leading_name(sql: &str) -> Option<(String, &str)> {
    if let Some(quoted) = sql.strip_prefix('"') {
        let mut name = String::new();
        let mut rest = quoted;
        loop {
            let end = rest.find('"')?;
            name.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(after) => {
                    name.push('"');
                    rest = after;
                }
                None => break,
            }
        }
        return (!name.is_empty()).then_some((name, rest));
    }
    let end = sql
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(sql.len());
    let name = &sql[..end];
    let starts_well = name.starts_with(|c: char| c.is_alphabetic() || c == '_');
    starts_well.then(|| (name.to_ascii_lowercase(), &sql[end..]))
}

/// The log once `sql`, just completed, has taken effect, when it undoes or
/// overrides earlier entries; `None` when it is simply appended.
/// - `DISCARD ALL` leaves only `LOAD`s (it unloads nothing);
/// - `DEALLOCATE ALL` drops every `PREPARE`;
/// - `DEALLOCATE name` drops the `PREPARE` of that name, if the log has one
///   (else it dropped a protocol-level statement, in session pooling: the log
///   stays, and `replace_session_log` cleans the other connections, which may
///   have it);
/// - a plain `SET p ...` or `RESET p` replaces the plain SETs and RESETs of
///   `p` among the last entries (see `superseded`).
pub(super) fn compacted(log: &[Arc<str>], sql: &str) -> Option<Vec<Arc<str>>> {
    if several_statements(sql) {
        return None;
    }
    if let Some(setting) = plain_setting(sql) {
        return superseded(log, &setting).map(|mut kept| {
            // A RESET with nothing but plain SETs of other parameters before
            // it leaves what a fresh (or cleaned) connection has anyway;
            // except for a custom parameter (`a.b`), which a RESET leaves
            // defined (as '') where a fresh connection does not know it.
            let custom = setting.parameter.contains('.');
            let needed =
                !setting.reset || custom || kept.iter().any(|e| plain_setting(e).is_none());
            if needed {
                kept.push(Arc::from(sql));
            }
            kept
        });
    }
    // What an entry of several statements did is not taken apart: with one
    // in the log, these are only appended.
    if log.iter().any(|e| several_statements(e)) {
        return None;
    }
    if discards_all(sql) {
        let loads = log.iter().filter(|e| starts_with_words(e, &["LOAD"]));
        return Some(loads.cloned().collect());
    }
    if drops_prepared_statements(sql) {
        let others = log.iter().filter(|e| prepared_name(e).is_none());
        return Some(others.cloned().collect());
    }
    let name = deallocated_name(sql)?;
    let mut kept = log.to_vec();
    if let Some(at) = kept
        .iter()
        .rposition(|e| prepared_name(e).as_deref() == Some(name.as_str()))
    {
        kept.remove(at);
    }
    Some(kept)
}

/// Whether `sql` holds more than one statement (a `;` before its end; also,
/// to be safe, one inside a quoted value).
fn several_statements(sql: &str) -> bool {
    sql.trim().trim_end_matches(';').contains(';')
}

/// A `SET [SESSION] p {TO | =} value` or `RESET p` whose effect is only the
/// value of `p`.
struct PlainSetting {
    /// The parameter, as the server names it (`a.b` for a custom one).
    parameter: String,
    reset: bool,
}

/// Parameters whose value changes what later statements mean or may do, so a
/// SET of one is never moved past others: `role` and `session_authorization`
/// (which SETs are allowed), `client_encoding`, `standard_conforming_strings`
/// and `backslash_quote` (how later values are read), and
/// `default_text_search_config` (resolved through `search_path` when set).
const ORDER_DEPENDENT: &[&str] = &[
    "role",
    "session_authorization",
    "client_encoding",
    "standard_conforming_strings",
    "backslash_quote",
    "default_text_search_config",
];

/// `sql` as a plain setting, if it is one. Not: `SET ROLE` and `SET SESSION
/// AUTHORIZATION` in any form (they change which later SETs are allowed),
/// `SET LOCAL`, `RESET ALL`, `SET TIME ZONE` and the like, nor a text with
/// several statements.
fn plain_setting(sql: &str) -> Option<PlainSetting> {
    if several_statements(sql) {
        return None;
    }
    let sql = sql.trim().trim_end_matches(';');
    let (rest, reset) = match after_word(sql, "RESET") {
        Some(rest) => (rest, true),
        None => {
            let rest = after_word(sql, "SET")?;
            (after_word(rest, "SESSION").unwrap_or(rest), false)
        }
    };
    let (mut parameter, mut after) = leading_name(rest)?;
    while let Some(part) = after.strip_prefix('.') {
        let (name, next) = leading_name(part)?;
        parameter = format!("{parameter}.{name}");
        after = next;
    }
    // PostgreSQL matches parameter names in any (ASCII) case, even quoted.
    let parameter = parameter.to_ascii_lowercase();
    let after = after.trim_start();
    let well_formed = if reset {
        after.is_empty() && parameter != "all"
    } else {
        after.starts_with('=') || after_word(after, "TO").is_some()
    };
    (well_formed && !ORDER_DEPENDENT.contains(&parameter.as_str()))
        .then_some(PlainSetting { parameter, reset })
}

/// The log without the plain SETs and RESETs of `setting`'s parameter that
/// only other plain settings follow, or `None` when there are none. Older
/// ones stay: an entry after them (a `PREPARE` resolving names through
/// `search_path`, a `set_config`, a `LOAD`) may have depended on their value.
fn superseded(log: &[Arc<str>], setting: &PlainSetting) -> Option<Vec<Arc<str>>> {
    let barrier = log.iter().rposition(|e| plain_setting(e).is_none());
    let start = barrier.map_or(0, |at| at + 1);
    let same = |e: &Arc<str>| plain_setting(e).is_some_and(|p| p.parameter == setting.parameter);
    let tail = log.get(start..).unwrap_or_default();
    let resets_unset = setting.reset && barrier.is_none();
    if !tail.iter().any(same) && !resets_unset {
        return None;
    }
    let mut kept = log.get(..start).unwrap_or_default().to_vec();
    kept.extend(tail.iter().filter(|e| !same(e)).cloned());
    Some(kept)
}

/// Whether a ROLLBACK of the transaction block it ran in undoes `sql`: SET,
/// RESET and `set_config` do; SQL PREPARE, DEALLOCATE and LOAD do not.
pub(super) fn undone_by_rollback(sql: &str) -> bool {
    let sql = sql.trim_start();
    prepared_name(sql).is_none()
        && after_word(sql, "PREPARE").is_none()
        && after_word(sql, "DEALLOCATE").is_none()
        && after_word(sql, "LOAD").is_none()
}

/// `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared statement on the server.
pub(super) fn drops_prepared_statements(sql: &str) -> bool {
    discards_all(sql)
        || starts_with_words(sql, &["DEALLOCATE", "ALL"])
        || starts_with_words(sql, &["DEALLOCATE", "PREPARE", "ALL"])
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_drop_server_state() {
        for sql in [
            "DISCARD ALL",
            "discard all;",
            "DEALLOCATE ALL",
            "deallocate prepare all",
        ] {
            assert!(drops_prepared_statements(sql), "{sql}");
        }
        for sql in [
            "DISCARD PLANS",
            "DEALLOCATE s1",
            "DEALLOCATE PREPARE s1",
            "DISCARD",
        ] {
            assert!(!drops_prepared_statements(sql), "{sql}");
        }
        assert!(discards_all("DISCARD ALL;"));
        assert!(!discards_all("DEALLOCATE ALL"));
    }

    #[test]
    fn the_statement_a_prepare_creates() {
        for (sql, name) in [
            ("PREPARE q AS SELECT 1", Some("q")),
            ("prepare Q(int, text) as SELECT $1", Some("q")),
            ("PREPARE q (int) AS SELECT $1", Some("q")),
            ("PREPARE \"My Q\" AS SELECT 1", Some("My Q")),
            ("PREPARE TRANSACTION 'x'", None),
            ("PREPARE", None),
            ("PREPAREX q AS SELECT 1", None),
            ("SET x = 1", None),
        ] {
            assert_eq!(prepared_name(sql).as_deref(), name, "{sql}");
        }
    }

    #[test]
    fn statements_that_undo_earlier_ones_shorten_the_log() {
        let log: Vec<Arc<str>> = [
            "SET a = 1",
            "PREPARE p AS SELECT 1",
            "LOAD 'x'",
            "PREPARE q AS SELECT 2",
        ]
        .into_iter()
        .map(Arc::from)
        .collect();
        let texts = |kept: Option<Vec<Arc<str>>>| {
            kept.map(|k| k.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            texts(compacted(&log, "DISCARD ALL")),
            Some(vec!["LOAD 'x'".to_owned()])
        );
        assert_eq!(
            texts(compacted(&log, "DEALLOCATE ALL")),
            Some(vec!["SET a = 1".to_owned(), "LOAD 'x'".to_owned()])
        );
        assert_eq!(
            texts(compacted(&log, "DEALLOCATE P")),
            Some(vec![
                "SET a = 1".to_owned(),
                "LOAD 'x'".to_owned(),
                "PREPARE q AS SELECT 2".to_owned()
            ])
        );
        assert_eq!(
            compacted(&log, "DEALLOCATE other").map(|k| k.len()),
            Some(4)
        );
        assert_eq!(compacted(&log, "SET b = 2"), None);
        // Texts of several statements are never taken apart.
        assert_eq!(compacted(&log, "DEALLOCATE ALL; SET a = 2"), None);
        let mut mixed = log.clone();
        mixed.push(Arc::from("PREPARE r AS SELECT 1; SET c = 1"));
        assert_eq!(compacted(&mixed, "DEALLOCATE ALL"), None);
        assert_eq!(compacted(&mixed, "DEALLOCATE r"), None);
        assert_eq!(compacted(&mixed, "DISCARD ALL"), None);
        assert_eq!(compacted(&log, "DISCARD PLANS"), None);
    }

    #[test]
    fn what_a_rollback_undoes() {
        for sql in ["SET a = 1", "RESET a", "SELECT set_config('a', '1', false)"] {
            assert!(undone_by_rollback(sql), "{sql}");
        }
        for sql in [
            "PREPARE q AS SELECT 1",
            "DEALLOCATE q",
            "DEALLOCATE ALL",
            "LOAD 'x'",
        ] {
            assert!(!undone_by_rollback(sql), "{sql}");
        }
    }

    #[test]
    fn plain_settings() {
        for (sql, parameter, reset) in [
            ("SET search_path = a, b", "search_path", false),
            (
                "set SESSION statement_timeout TO 5000;",
                "statement_timeout",
                false,
            ),
            ("SET \"Search_Path\" TO x", "search_path", false),
            (
                "SET pgrouter.consistency = 'pin'",
                "pgrouter.consistency",
                false,
            ),
            ("RESET Work_Mem", "work_mem", true),
            // Unquoted names fold in ASCII only, as on PostgreSQL.
            ("SET ÉTÉ = 1", "ÉtÉ", false),
        ] {
            let setting = plain_setting(sql).unwrap_or_else(|| panic!("{sql}"));
            assert_eq!(
                (setting.parameter.as_str(), setting.reset),
                (parameter, reset)
            );
        }
        for sql in [
            "SET ROLE admin",
            "SET role = admin",
            "SET \"ROLE\" = admin",
            "SET client_encoding = 'LATIN1'",
            "SET standard_conforming_strings = off",
            "SET SESSION AUTHORIZATION bob",
            "SET session_authorization TO bob",
            "RESET ROLE",
            "RESET ALL",
            "SET LOCAL work_mem = 1",
            "SET TIME ZONE 'UTC'",
            "SET a = 1; PREPARE q AS SELECT 1",
            "SELECT set_config('a', '1', false)",
            "SET",
        ] {
            assert!(plain_setting(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn a_setting_replaces_the_last_ones_of_its_parameter() {
        let log = |entries: &[&str]| {
            entries
                .iter()
                .map(|e| Arc::from(*e))
                .collect::<Vec<Arc<str>>>()
        };
        let texts = |kept: Option<Vec<Arc<str>>>| {
            kept.map(|k| k.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        let plain = log(&["SET a = 1", "SET b = 2", "SET a = 3"]);
        assert_eq!(
            texts(compacted(&plain, "set A TO 4")),
            Some(vec!["SET b = 2".to_owned(), "set A TO 4".to_owned()])
        );
        assert_eq!(
            texts(compacted(&plain, "RESET a")),
            Some(vec!["SET b = 2".to_owned()])
        );
        // Nothing to replace: appended as usual.
        assert_eq!(compacted(&plain, "SET c = 1"), None);
        // Never across an entry that may have used the old value.
        let prepared = log(&[
            "SET search_path = a",
            "PREPARE q AS SELECT * FROM t",
            "SET x = 1",
        ]);
        assert_eq!(compacted(&prepared, "SET search_path = b"), None);
        assert_eq!(
            texts(compacted(&prepared, "SET x = 2")),
            Some(vec![
                "SET search_path = a".to_owned(),
                "PREPARE q AS SELECT * FROM t".to_owned(),
                "SET x = 2".to_owned()
            ])
        );
        // A RESET after such an entry must stay to undo the older SET.
        assert_eq!(compacted(&prepared, "RESET search_path"), None);
        // A custom parameter stays defined after a RESET: the RESET stays.
        let custom = log(&["SET app.tenant = '5'"]);
        assert_eq!(
            texts(compacted(&custom, "RESET app.tenant")),
            Some(vec!["RESET app.tenant".to_owned()])
        );
        // A RESET of a parameter never set: nothing to remember.
        assert_eq!(
            texts(compacted(&plain, "RESET c")),
            Some(texts(Some(plain.clone())).unwrap_or_default())
        );
        // 300 settings of one parameter leave one entry.
        let mut many: Vec<Arc<str>> = Vec::new();
        for n in 0..300 {
            let sql = format!("SET application_name = 'a{n}'");
            many = compacted(&many, &sql).unwrap_or_else(|| {
                let mut next = many.clone();
                next.push(Arc::from(sql.as_str()));
                next
            });
        }
        assert_eq!(
            texts(Some(many)),
            Some(vec!["SET application_name = 'a299'".to_owned()])
        );
    }

    #[test]
    fn the_statement_a_deallocate_drops() {
        for (sql, name) in [
            ("DEALLOCATE s1", Some("s1")),
            ("deallocate prepare S1;", Some("s1")),
            ("DEALLOCATE \"My \"\"s\"\"\"", Some("My \"s\"")),
            ("DEALLOCATE  PREPARE   x ", Some("x")),
            ("DEALLOCATE ALL", None),
            ("DEALLOCATE PREPARE ALL", None),
            ("DEALLOCATE", None),
            ("DISCARD ALL", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(deallocated_name(sql).as_deref(), name, "{sql}");
        }
    }
}
