//! Recognises a text that is exactly one `LISTEN` or `UNLISTEN`, and names its
//! channel as PostgreSQL would (unquoted names folded to lower case, names cut
//! to 63 bytes), so that the front end can serve it from pgrouter's shared
//! listening connection. Pure: says what the statement is, decides nothing.

use sqlparser::ast::Statement;

use super::hints::starts_with_word;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// PostgreSQL's longest identifier (NAMEDATALEN - 1) in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenCommand {
    Listen(String),
    Unlisten(String),
    /// `UNLISTEN *`
    UnlistenAll,
}

impl ListenCommand {
    /// The command tag PostgreSQL answers with.
    pub fn tag(&self) -> &'static str {
        match self {
            ListenCommand::Listen(_) => "LISTEN",
            ListenCommand::Unlisten(_) | ListenCommand::UnlistenAll => "UNLISTEN",
        }
    }
}

/// The LISTEN/UNLISTEN that `sql` consists of, if that is all it is.
pub fn listen_command(sql: &str) -> Option<ListenCommand> {
    // Most texts that pin a session are not LISTEN: no parse for them.
    if !(starts_with_word(sql, "listen") || starts_with_word(sql, "unlisten")) {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    match statements.pop()? {
        Statement::LISTEN { channel } => Some(ListenCommand::Listen(channel_name(
            &channel.value,
            channel.quote_style.is_some(),
        ))),
        Statement::UNLISTEN { channel }
            if channel.quote_style.is_none() && channel.value == "*" =>
        {
            Some(ListenCommand::UnlistenAll)
        }
        Statement::UNLISTEN { channel } => Some(ListenCommand::Unlisten(channel_name(
            &channel.value,
            channel.quote_style.is_some(),
        ))),
        _ => None,
    }
}

/// The channel's name as the server keeps it.
fn channel_name(written: &str, quoted: bool) -> String {
    let mut name = if quoted {
        written.to_owned()
    } else {
        written.to_ascii_lowercase()
    };
    if name.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::{ListenCommand, listen_command};

    #[test]
    fn listen_statements_and_their_channels() {
        let listen = |s: &str| Some(ListenCommand::Listen(s.to_owned()));
        assert_eq!(listen_command("LISTEN jobs"), listen("jobs"));
        assert_eq!(listen_command("listen Jobs;"), listen("jobs"));
        assert_eq!(listen_command("LISTEN \"Jobs\""), listen("Jobs"));
        assert_eq!(
            listen_command("/* app */ UNLISTEN jobs"),
            Some(ListenCommand::Unlisten("jobs".into()))
        );
        assert_eq!(
            listen_command("UNLISTEN *"),
            Some(ListenCommand::UnlistenAll)
        );
        assert_eq!(
            listen_command("UNLISTEN \"*\""),
            Some(ListenCommand::Unlisten("*".into()))
        );
        let long = "c".repeat(80);
        assert_eq!(
            listen_command(&format!("LISTEN {long}")),
            listen(&"c".repeat(63))
        );
        // Anything else is not ours to answer.
        assert_eq!(listen_command("LISTEN a; LISTEN b"), None);
        assert_eq!(listen_command("NOTIFY jobs"), None);
        assert_eq!(listen_command("SELECT 1"), None);
        assert_eq!(listen_command("LISTEN"), None);
    }
}
