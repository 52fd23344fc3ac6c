//! The session settings pgrouter itself understands: `SET pgrouter.consistency`,
//! `SET pgrouter.read_after_lsn`, `SET pgrouter.max_staleness` (and `RESET`), plus
//! `SHOW pgrouter.last_write_lsn`, which pgrouter answers itself.
//!
//! The SET statements still go to the servers (PostgreSQL keeps dotted names as
//! placeholder settings, so `SHOW pgrouter.consistency` works there); pgrouter
//! checks the value first and applies it once the server accepted it.
//! `SET LOCAL pgrouter.*` is not tracked (it passes through unchanged).
//! Hand-written because these are four fixed statement shapes, read on the
//! hot path before any SQL parser would be worth running.

use std::time::Duration;

use crate::config::ConsistencyMode;

/// A pgrouter session setting and its new value (None: back to the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Consistency(Option<ConsistencyMode>),
    ReadAfterLsn(Option<u64>),
    MaxStaleness(Option<Duration>),
}

/// A `SET pgrouter.*` that must be refused, with the SQLSTATE PostgreSQL uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("unrecognized configuration parameter \"pgrouter.{0}\"")]
    Unknown(String),
    #[error("invalid value for parameter \"pgrouter.{name}\": \"{value}\" ({expected})")]
    InvalidValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("parameter \"pgrouter.last_write_lsn\" cannot be changed: pgrouter sets it")]
    ReadOnly,
}

impl SettingError {
    /// The SQLSTATE for the client: 42704 undefined_object, 22023
    /// invalid_parameter_value or 55P02 cant_change_runtime_param.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SettingError::Unknown(_) => "42704",
            SettingError::InvalidValue { .. } => "22023",
            SettingError::ReadOnly => "55P02",
        }
    }
}

const PREFIX: &str = "pgrouter.";

/// Reads `SET [SESSION] pgrouter.name {=|TO} value` or `RESET pgrouter.name`.
/// `None` when the text is anything else (including `SET LOCAL`).
pub fn parse_setting(sql: &str) -> Option<Result<Setting, SettingError>> {
    let text = statement_text(sql);
    let mut words = text.splitn(2, char::is_whitespace);
    let verb = words.next()?;
    let rest = words.next()?.trim_start();
    let (name, value) = if verb.eq_ignore_ascii_case("reset") {
        (rest, None)
    } else if verb.eq_ignore_ascii_case("set") {
        let rest = strip_word(rest, "session").unwrap_or(rest);
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        let tail = tail.trim_start();
        let value = tail
            .strip_prefix('=')
            .or_else(|| strip_word(tail, "to"))?
            .trim();
        (name, Some(value))
    } else {
        return None;
    };
    let name = strip_prefix_ci(name.trim(), PREFIX)?;
    let value = value.and_then(unquote);
    Some(setting(name, value))
}

/// The pgrouter settings in a startup packet's `options` (libpq's `options`
/// connection parameter or `PGOPTIONS`): `-c pgrouter.name=value` or
/// `--pgrouter.name=value`, as PostgreSQL reads them. Other options are left to
/// the server (which also keeps the pgrouter ones as placeholders).
pub fn from_startup_options(options: &str) -> Result<Vec<Setting>, SettingError> {
    let mut settings = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next()
        } else {
            word.strip_prefix("--").or_else(|| word.strip_prefix("-c"))
        };
        let Some((name, value)) = assignment.and_then(|a| a.split_once('=')) else {
            continue;
        };
        if let Some(name) = strip_prefix_ci(name, PREFIX) {
            settings.push(setting(&name.replace('-', "_"), Some(value))?);
        }
    }
    Ok(settings)
}

/// Whether the text is `SHOW pgrouter.last_write_lsn`.
pub fn is_show_last_write_lsn(sql: &str) -> bool {
    let text = statement_text(sql);
    // Every read's short text comes here: reject on the first word cheaply.
    if !text
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("show"))
    {
        return false;
    }
    let mut words = text.split_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(show), Some(name), None)
            if show.eq_ignore_ascii_case("show")
                && name.eq_ignore_ascii_case("pgrouter.last_write_lsn")
    )
}

/// The text without leading comments, surrounding blanks or a final semicolon.
fn statement_text(sql: &str) -> &str {
    let body = sql
        .get(crate::router::hints::body_start(sql)..)
        .unwrap_or("");
    let body = body.trim();
    body.strip_suffix(';').unwrap_or(body).trim_end()
}

fn setting(name: &str, value: Option<&str>) -> Result<Setting, SettingError> {
    let default = value.is_none_or(|v| v.eq_ignore_ascii_case("default"));
    let raw = value.unwrap_or("");
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "consistency" if default => Ok(Setting::Consistency(None)),
        "consistency" => ConsistencyMode::from_name(raw)
            .map(|m| Setting::Consistency(Some(m)))
            .ok_or_else(|| invalid("consistency", raw, "one of none, pin, causal")),
        "read_after_lsn" if default || raw.is_empty() => Ok(Setting::ReadAfterLsn(None)),
        "read_after_lsn" => crate::monitor::parse_lsn(raw)
            .map(|lsn| Setting::ReadAfterLsn(Some(lsn)))
            .ok_or_else(|| invalid("read_after_lsn", raw, "an LSN such as 0/3000060")),
        "max_staleness" if default => Ok(Setting::MaxStaleness(None)),
        "max_staleness" => crate::router::hints::parse_staleness(raw)
            .map(|d| Setting::MaxStaleness(Some(d)))
            .ok_or_else(|| invalid("max_staleness", raw, "a duration such as 500ms, or 0")),
        "last_write_lsn" => Err(SettingError::ReadOnly),
        _ => Err(SettingError::Unknown(name.to_owned())),
    }
}

fn invalid(name: &'static str, value: &str, expected: &'static str) -> SettingError {
    SettingError::InvalidValue {
        name,
        value: value.to_owned(),
        expected,
    }
}

/// `'value'` → `value` (with `''` → `'`), a bare word as is.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('\'') {
        Some(inner) => inner.strip_suffix('\'').filter(|v| !v.contains('\'')),
        None => Some(value),
    }
}

/// `rest` after the keyword `word` and a blank, case-insensitively.
fn strip_word<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = strip_prefix_ci(rest, word)?;
    after
        .starts_with(char::is_whitespace)
        .then(|| after.trim_start())
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgrouter_settings() {
        assert_eq!(
            parse_setting("SET pgrouter.consistency = 'pin'"),
            Some(Ok(Setting::Consistency(Some(ConsistencyMode::Pin))))
        );
        assert_eq!(
            parse_setting("/* app */ set session PGROUTER.consistency to causal;"),
            Some(Ok(Setting::Consistency(Some(ConsistencyMode::Causal))))
        );
        assert_eq!(
            parse_setting("RESET pgrouter.consistency"),
            Some(Ok(Setting::Consistency(None)))
        );
        assert_eq!(
            parse_setting("SET pgrouter.read_after_lsn = '0/3000060'"),
            Some(Ok(Setting::ReadAfterLsn(Some(0x300_0060))))
        );
        assert_eq!(
            parse_setting("SET pgrouter.max_staleness='500ms'"),
            Some(Ok(Setting::MaxStaleness(Some(Duration::from_millis(500)))))
        );
        assert_eq!(
            parse_setting("SET pgrouter.max_staleness = 0"),
            Some(Ok(Setting::MaxStaleness(Some(Duration::ZERO))))
        );
        assert_eq!(
            parse_setting("SET pgrouter.max_staleness TO DEFAULT"),
            Some(Ok(Setting::MaxStaleness(None)))
        );
    }

    #[test]
    fn refuses_bad_values_and_unknown_names() {
        let err = |sql| {
            parse_setting(sql)
                .and_then(Result::err)
                .map(|e| e.sqlstate())
        };
        assert_eq!(err("SET pgrouter.consistency = 'strong'"), Some("22023"));
        assert_eq!(
            err("SET pgrouter.read_after_lsn = 'yesterday'"),
            Some("22023")
        );
        assert_eq!(err("SET pgrouter.max_staleness = 'soon'"), Some("22023"));
        assert_eq!(err("SET pgrouter.consistancy = 'pin'"), Some("42704"));
        assert_eq!(err("SET pgrouter.last_write_lsn = '0/1'"), Some("55P02"));
    }

    #[test]
    fn leaves_other_statements_alone() {
        for sql in [
            "SET search_path = public",
            "SET LOCAL pgrouter.consistency = 'pin'",
            "SELECT 'SET pgrouter.consistency = pin'",
            "SHOW pgrouter.consistency",
            "SETpgrouter.consistency = 'pin'",
        ] {
            assert_eq!(parse_setting(sql), None, "{sql}");
        }
    }

    #[test]
    fn reads_startup_options() {
        assert_eq!(
            from_startup_options("-c pgrouter.consistency=none --search_path=x"),
            Ok(vec![Setting::Consistency(Some(ConsistencyMode::None))])
        );
        assert_eq!(
            from_startup_options("--pgrouter.max-staleness=2s -cpgrouter.consistency=pin"),
            Ok(vec![
                Setting::MaxStaleness(Some(Duration::from_secs(2))),
                Setting::Consistency(Some(ConsistencyMode::Pin))
            ])
        );
        assert!(from_startup_options("-c pgrouter.consistency=eventual").is_err());
        assert_eq!(from_startup_options("-c work_mem=64MB"), Ok(vec![]));
    }

    #[test]
    fn recognises_show_last_write_lsn() {
        assert!(is_show_last_write_lsn("SHOW pgrouter.last_write_lsn"));
        assert!(is_show_last_write_lsn(" show PGROUTER.LAST_WRITE_LSN ; "));
        assert!(!is_show_last_write_lsn("SHOW pgrouter.consistency"));
        assert!(!is_show_last_write_lsn("SHOW pgrouter.last_write_lsn x"));
    }
}
