//! What each admin command answers: pure functions from a [`Snapshot`] of the
//! router's state to a [`Table`], so the answers are unit-tested without a
//! socket. Reading the state and writing the rows is `mod.rs`'s.

use std::time::{Duration, Instant};

use crate::config::NodeRole;
use crate::consistency::format_lsn;
use crate::monitor::Topology;
use crate::pool::PoolStats;
use crate::router::CacheStats;
use crate::server::ClientSummary;

/// A command the console understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Help,
    Pools,
    Nodes,
    Stats,
    Clients,
    Config,
    Version,
    /// Re-read the config file: done by the caller, answered with "RELOAD".
    Reload,
    /// A statement drivers send on their own (`SET extra_float_digits`, a
    /// `BEGIN` before the first query): accepted, changes nothing, answered
    /// with this command tag, as PgBouncer's console fakes `SET`.
    Ignored(&'static str),
}

/// First words of the statements answered as [`Command::Ignored`], and their tags.
const IGNORED: &[(&str, &str)] = &[
    ("SET", "SET"),
    ("RESET", "RESET"),
    ("BEGIN", "BEGIN"),
    ("START", "START TRANSACTION"),
    ("COMMIT", "COMMIT"),
    ("END", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("ABORT", "ROLLBACK"),
];

/// Each command's words and what it shows (`SHOW HELP`'s rows, in order).
const COMMANDS: &[(Command, &str, &str)] = &[
    (
        Command::Pools,
        "SHOW POOLS",
        "server connection pools: size, in use, idle, waiting clients, checkout timeouts",
    ),
    (
        Command::Nodes,
        "SHOW NODES",
        "each server: role, health, WAL position, measured lag, statements routed",
    ),
    (
        Command::Stats,
        "SHOW STATS",
        "clients, statements re-run, classifier cache, uptime",
    ),
    (
        Command::Clients,
        "SHOW CLIENTS",
        "client sessions: address, login, connected for, running a query (on which server) or idle",
    ),
    (
        Command::Config,
        "SHOW CONFIG",
        "the settings in force (passwords hidden)",
    ),
    (Command::Version, "SHOW VERSION", "pgrouter's version"),
    (
        Command::Reload,
        "RELOAD",
        "re-read the config file, as SIGHUP does",
    ),
    (Command::Help, "SHOW HELP", "this list"),
];

/// Reads one command: case and spacing are free, trailing `;` are dropped.
/// The ignored statements are known by their first word alone.
/// `Ok(None)` for an empty query; `Err` names what was not understood.
pub fn parse(text: &str) -> Result<Option<Command>, String> {
    let words: Vec<String> = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_ascii_whitespace())
        .split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    if words.is_empty() {
        return Ok(None);
    }
    if let Some((_, tag)) = IGNORED.iter().find(|(first, _)| *first == words[0]) {
        return Ok(Some(Command::Ignored(tag)));
    }
    let spoken = words.join(" ");
    if spoken == "HELP" {
        return Ok(Some(Command::Help));
    }
    COMMANDS
        .iter()
        .find(|(_, words, _)| *words == spoken)
        .map(|(command, _, _)| Some(*command))
        .ok_or_else(|| {
            format!(
                "pgrouter admin console: unknown command {text:?}; SHOW HELP lists the commands"
            )
        })
}

/// Everything the answers are made from, read once per command.
pub struct Snapshot<'a> {
    pub topology: &'a Topology,
    /// Statements routed to each node, by config position.
    pub routed: Vec<u64>,
    pub pools: Vec<PoolStats>,
    pub clients: usize,
    pub misrouted: u64,
    pub read_retries: u64,
    pub cache: CacheStats,
    pub uptime: Duration,
    pub now: Instant,
    /// How old a replica's measurement may be and still take reads
    /// (`Config::measurement_stale_after`).
    pub stale_after: Duration,
    /// The config in force, as `pgrouter check-config` prints it.
    pub settings: String,
    /// Client sessions (read only for SHOW CLIENTS: there may be thousands).
    pub clients_list: Vec<ClientSummary>,
}

/// Rows to send: column names, text values (`None` is NULL), the command tag.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: &'static str,
}

/// The answer to `command`.
pub fn answer(command: Command, snapshot: &Snapshot<'_>) -> Table {
    match command {
        Command::Help => help(),
        Command::Pools => pools(&snapshot.pools),
        Command::Nodes => nodes(snapshot),
        Command::Stats => stats(snapshot),
        Command::Clients => clients(snapshot),
        Command::Version => Table {
            columns: &["version"],
            rows: vec![vec![Some(format!(
                "pgrouter {}",
                env!("CARGO_PKG_VERSION")
            ))]],
            tag: "SHOW",
        },
        Command::Config => Table {
            columns: &["setting"],
            rows: snapshot
                .settings
                .lines()
                .map(|line| vec![Some(line.to_owned())])
                .collect(),
            tag: "SHOW",
        },
        // No rows: the caller acts on these and answers with their tag alone.
        Command::Reload => Table {
            columns: &[],
            rows: Vec::new(),
            tag: "RELOAD",
        },
        Command::Ignored(tag) => Table {
            columns: &[],
            rows: Vec::new(),
            tag,
        },
    }
}

fn help() -> Table {
    Table {
        columns: &["command", "shows"],
        rows: COMMANDS
            .iter()
            .map(|(_, words, shows)| vec![Some((*words).to_owned()), Some((*shows).to_owned())])
            .collect(),
        tag: "SHOW",
    }
}

fn pools(pools: &[PoolStats]) -> Table {
    Table {
        columns: &[
            "node",
            "user",
            "database",
            "parameters",
            "size",
            "in_use",
            "idle",
            "waiting",
            "timeouts",
        ],
        rows: pools
            .iter()
            .map(|p| {
                vec![
                    Some(p.node_name.clone()),
                    Some(p.user.clone()),
                    Some(p.database.clone()),
                    Some(
                        p.params
                            .iter()
                            .map(|(name, value)| format!("{name}={value}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    Some(p.size.to_string()),
                    Some(p.in_use.to_string()),
                    Some(p.idle.to_string()),
                    Some(p.waiting.to_string()),
                    Some(p.timeouts.to_string()),
                ]
            })
            .collect(),
        tag: "SHOW",
    }
}

fn nodes(snapshot: &Snapshot<'_>) -> Table {
    let topology = snapshot.topology;
    let rows = topology
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let acting = if !node.up {
                "down"
            } else if i == topology.primary && topology.primary_available {
                "primary"
            } else {
                match node.in_recovery {
                    Some(true) => "replica",
                    Some(false) => "primary (unused)",
                    None => "unknown",
                }
            };
            // The router's own test, so the console never disagrees with it.
            let takes_reads = topology.replica_eligible(i, snapshot.stale_after);
            vec![
                Some(node.name.clone()),
                Some(format!("{}:{}", node.host, node.port)),
                Some(role_name(node.configured_role).to_owned()),
                Some(acting.to_owned()),
                Some(node.up.to_string()),
                Some(takes_reads.to_string()),
                node.lsn.map(format_lsn),
                node.lag_bytes.map(|b| b.to_string()),
                node.lag_time.map(|t| t.as_millis().to_string()),
                node.measured_at.map(|at| {
                    snapshot
                        .now
                        .saturating_duration_since(at)
                        .as_millis()
                        .to_string()
                }),
                Some(snapshot.routed.get(i).copied().unwrap_or(0).to_string()),
                node.error.clone(),
            ]
        })
        .collect();
    Table {
        columns: &[
            "name",
            "address",
            "role",
            "acting_as",
            "up",
            "takes_reads",
            "lsn",
            "lag_bytes",
            "lag_ms",
            "measured_ms_ago",
            "routed",
            "last_error",
        ],
        rows,
        tag: "SHOW",
    }
}

fn clients(snapshot: &Snapshot<'_>) -> Table {
    let mut list: Vec<&ClientSummary> = snapshot.clients_list.iter().collect();
    // Oldest first, as they connected.
    list.sort_by_key(|c| c.info.connected_at);
    let rows = list
        .into_iter()
        .map(|c| {
            let info = &c.info;
            vec![
                info.peer.map(|p| p.to_string()),
                Some(info.user.clone()),
                Some(info.database.clone()),
                Some(info.application_name.clone()),
                info.connected_at.map(|at| {
                    snapshot
                        .now
                        .saturating_duration_since(at)
                        .as_secs()
                        .to_string()
                }),
                Some(if c.server.is_some() { "active" } else { "idle" }.to_owned()),
                c.server.clone(),
            ]
        })
        .collect();
    Table {
        columns: &[
            "client",
            "user",
            "database",
            "application_name",
            "connected_s",
            "state",
            "server",
        ],
        rows,
        tag: "SHOW",
    }
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Primary => "primary",
        NodeRole::Replica => "replica",
    }
}

fn stats(snapshot: &Snapshot<'_>) -> Table {
    let routed: u64 = snapshot.routed.iter().sum();
    let rows: Vec<(&str, String)> = vec![
        ("clients", snapshot.clients.to_string()),
        ("statements_routed", routed.to_string()),
        ("writes_rerun_on_primary", snapshot.misrouted.to_string()),
        ("reads_retried", snapshot.read_retries.to_string()),
        (
            "primary_available",
            snapshot.topology.primary_available.to_string(),
        ),
        (
            "topology_generation",
            snapshot.topology.generation.to_string(),
        ),
        (
            "classifier_cache_entries",
            snapshot.cache.entries.to_string(),
        ),
        (
            "classifier_cache_capacity",
            snapshot.cache.capacity.to_string(),
        ),
        ("classifier_cache_hits", snapshot.cache.hits.to_string()),
        ("classifier_cache_misses", snapshot.cache.misses.to_string()),
        ("uptime_s", snapshot.uptime.as_secs().to_string()),
    ];
    Table {
        columns: &["name", "value"],
        rows: rows
            .into_iter()
            .map(|(name, value)| vec![Some(name.to_owned()), Some(value)])
            .collect(),
        tag: "SHOW",
    }
}

#[cfg(test)]
mod tests;
