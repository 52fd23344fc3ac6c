use std::time::{Duration, Instant};

use super::*;
use crate::monitor::NodeState;
use crate::server::ClientInfo;

#[test]
fn commands_are_read_loosely_and_unknown_ones_named() {
    let cases: &[(&str, Result<Option<Command>, ()>)] = &[
        ("SHOW POOLS", Ok(Some(Command::Pools))),
        ("  show   pools ;; ", Ok(Some(Command::Pools))),
        ("Show Nodes;", Ok(Some(Command::Nodes))),
        ("SHOW\tSTATS", Ok(Some(Command::Stats))),
        ("show version", Ok(Some(Command::Version))),
        ("SHOW HELP", Ok(Some(Command::Help))),
        ("help;", Ok(Some(Command::Help))),
        ("", Ok(None)),
        (" ; ", Ok(None)),
        ("SHOW", Err(())),
        ("SHOW POOLS EXTRA", Err(())),
        ("SHOW POOLS; SHOW NODES", Err(())),
        ("SELECT 1", Err(())),
        ("SHOW\u{a0}POOLS", Err(())),
        // What drivers send on their own is accepted and changes nothing.
        (
            "SET extra_float_digits = 3",
            Ok(Some(Command::Ignored("SET"))),
        ),
        (
            "set application_name = 'x';",
            Ok(Some(Command::Ignored("SET"))),
        ),
        ("RESET ALL", Ok(Some(Command::Ignored("RESET")))),
        ("BEGIN", Ok(Some(Command::Ignored("BEGIN")))),
        (
            "start transaction read only",
            Ok(Some(Command::Ignored("START TRANSACTION"))),
        ),
        ("COMMIT", Ok(Some(Command::Ignored("COMMIT")))),
        ("end", Ok(Some(Command::Ignored("COMMIT")))),
        ("ROLLBACK", Ok(Some(Command::Ignored("ROLLBACK")))),
        ("abort;", Ok(Some(Command::Ignored("ROLLBACK")))),
        ("SETTINGS", Err(())),
        ("reload;", Ok(Some(Command::Reload))),
        ("SHOW CONFIG", Ok(Some(Command::Config))),
    ];
    for (text, expected) in cases {
        let got = parse(text);
        match (expected, &got) {
            (Ok(command), Ok(parsed)) => assert_eq!(parsed, command, "{text:?}"),
            (Err(()), Err(message)) => {
                assert!(message.contains("SHOW HELP"), "{text:?}: {message}")
            }
            _ => panic!("{text:?}: {got:?}"),
        }
    }
}

#[test]
fn help_lists_every_command_and_each_listed_one_parses() {
    let table = answer(Command::Help, &snapshot(&topology()));
    assert_eq!(table.columns, ["command", "shows"]);
    let listed: Vec<Command> = table
        .rows
        .iter()
        .map(|row| {
            let words = row[0].as_deref().unwrap();
            parse(words).unwrap().unwrap()
        })
        .collect();
    let every = [
        Command::Help,
        Command::Pools,
        Command::Nodes,
        Command::Stats,
        Command::Clients,
        Command::Config,
        Command::Version,
        Command::Reload,
    ];
    for command in every {
        // Adding a variant makes this match fail to compile until it is listed above.
        match command {
            Command::Help
            | Command::Pools
            | Command::Nodes
            | Command::Stats
            | Command::Clients
            | Command::Config
            | Command::Version
            | Command::Reload
            | Command::Ignored(_) => {}
        }
        assert!(
            listed.contains(&command),
            "{command:?} missing from SHOW HELP"
        );
    }
}

fn topology() -> Topology {
    let mut primary = NodeState::unmeasured("primary", "10.0.0.1", 5432, NodeRole::Primary);
    primary.in_recovery = Some(false);
    primary.lsn = Some(0x1_0000_0010);
    let mut fresh = NodeState::unmeasured("r0", "10.0.0.2", 5432, NodeRole::Replica);
    fresh.in_recovery = Some(true);
    fresh.lsn = Some(0x1_0000_0000);
    fresh.lag_bytes = Some(16);
    fresh.lag_time = Some(Duration::from_millis(250));
    fresh.admitted = true;
    fresh.measured_at = Some(Instant::now());
    let mut down = NodeState::unmeasured("r1", "10.0.0.3", 5433, NodeRole::Replica);
    down.up = false;
    down.admitted = true;
    down.error = Some("connection refused".to_owned());
    down.in_recovery = Some(true);
    down.measured_at = Some(Instant::now());
    // Admitted and fresh, but its last measurement is too old to read from.
    let mut stale = NodeState::unmeasured("r2", "10.0.0.4", 5432, NodeRole::Replica);
    stale.in_recovery = Some(true);
    stale.admitted = true;
    stale.measured_at = Instant::now().checked_sub(Duration::from_secs(30));
    Topology {
        nodes: vec![primary, fresh, down, stale],
        primary: 0,
        primary_available: true,
        generation: 7,
    }
}

fn snapshot(topology: &Topology) -> Snapshot<'_> {
    let now = Instant::now();
    Snapshot {
        topology,
        routed: vec![5, 30, 0, 0],
        pools: vec![PoolStats {
            node: 1,
            node_name: "r0".to_owned(),
            user: "app".to_owned(),
            database: "shop".to_owned(),
            params: vec![
                ("application_name".to_owned(), "psql".to_owned()),
                ("TimeZone".to_owned(), "UTC".to_owned()),
            ],
            size: 20,
            in_use: 3,
            idle: 2,
            waiting: 1,
            timeouts: 4,
        }],
        clients: 12,
        misrouted: 1,
        read_retries: 2,
        cache: CacheStats {
            entries: 3,
            capacity: 10_000,
            hits: 90,
            misses: 3,
        },
        uptime: Duration::from_secs(61),
        now,
        stale_after: Duration::from_secs(1),
        settings: "listen = \"127.0.0.1:6432\"\npool: mode=Transaction pool_size=20\n".to_owned(),
        clients_list: vec![
            ClientSummary {
                info: ClientInfo {
                    peer: "10.1.1.1:50000".parse().ok(),
                    user: "app".to_owned(),
                    database: "shop".to_owned(),
                    application_name: "web".to_owned(),
                    connected_at: now.checked_sub(Duration::from_secs(5)),
                },
                server: Some("10.0.0.2:5432".to_owned()),
            },
            ClientSummary {
                info: ClientInfo {
                    peer: "10.1.1.2:50001".parse().ok(),
                    user: "batch".to_owned(),
                    database: "shop".to_owned(),
                    application_name: String::new(),
                    connected_at: now.checked_sub(Duration::from_secs(90)),
                },
                server: None,
            },
        ],
    }
}

fn text(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

#[test]
fn nodes_show_roles_health_lag_and_routed_statements() {
    let topology = topology();
    let table = answer(Command::Nodes, &snapshot(&topology));
    let column = |name: &str| table.columns.iter().position(|c| *c == name).unwrap();
    let row = |i: usize, name: &str| table.rows[i][column(name)].clone();
    assert_eq!(table.rows.len(), 4);
    assert_eq!(row(0, "acting_as").as_deref(), Some("primary"));
    assert_eq!(row(0, "lsn").as_deref(), Some("1/10"));
    assert_eq!(row(0, "takes_reads").as_deref(), Some("false"));
    assert_eq!(row(0, "routed").as_deref(), Some("5"));
    assert_eq!(row(1, "address").as_deref(), Some("10.0.0.2:5432"));
    assert_eq!(row(1, "acting_as").as_deref(), Some("replica"));
    assert_eq!(row(1, "takes_reads").as_deref(), Some("true"));
    assert_eq!(row(1, "lag_bytes").as_deref(), Some("16"));
    assert_eq!(row(1, "lag_ms").as_deref(), Some("250"));
    // Down: no reads even if its last measurement admitted it; unmeasured
    // values are NULL, not zero.
    assert_eq!(row(2, "up").as_deref(), Some("false"));
    assert_eq!(row(2, "takes_reads").as_deref(), Some("false"));
    assert_eq!(row(2, "acting_as").as_deref(), Some("down"));
    assert_eq!(row(2, "lag_bytes"), None);
    assert_eq!(row(2, "lsn"), None);
    assert_eq!(row(2, "last_error").as_deref(), Some("connection refused"));
    // Measured too long ago: the router reads elsewhere, and so says the console.
    assert_eq!(row(3, "acting_as").as_deref(), Some("replica"));
    assert_eq!(row(3, "takes_reads").as_deref(), Some("false"));
}

#[test]
fn after_a_failover_the_promoted_replica_takes_no_reads() {
    let mut topology = topology();
    topology.primary = 1;
    topology.nodes[1].in_recovery = Some(false);
    topology.nodes[0].in_recovery = Some(true);
    topology.nodes[0].admitted = true;
    topology.nodes[0].measured_at = Some(Instant::now());
    let table = answer(Command::Nodes, &snapshot(&topology));
    let column = |name: &str| table.columns.iter().position(|c| *c == name).unwrap();
    let row = |i: usize, name: &str| table.rows[i][column(name)].clone();
    assert_eq!(row(1, "role").as_deref(), Some("replica"));
    assert_eq!(row(1, "acting_as").as_deref(), Some("primary"));
    assert_eq!(row(1, "takes_reads").as_deref(), Some("false"));
    assert_eq!(row(0, "role").as_deref(), Some("primary"));
    assert_eq!(row(0, "acting_as").as_deref(), Some("replica"));
    assert_eq!(row(0, "takes_reads").as_deref(), Some("true"));
}

#[test]
fn pools_and_stats_show_their_counters() {
    let topology = topology();
    let snapshot = snapshot(&topology);
    let pools = answer(Command::Pools, &snapshot);
    assert_eq!(
        pools.rows,
        vec![text(&[
            Some("r0"),
            Some("app"),
            Some("shop"),
            Some("application_name=psql TimeZone=UTC"),
            Some("20"),
            Some("3"),
            Some("2"),
            Some("1"),
            Some("4")
        ])]
    );
    let stats = answer(Command::Stats, &snapshot);
    let stat = |name: &str| {
        stats
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some(name))
            .and_then(|r| r[1].clone())
    };
    assert_eq!(stat("clients").as_deref(), Some("12"));
    assert_eq!(stat("statements_routed").as_deref(), Some("35"));
    assert_eq!(stat("writes_rerun_on_primary").as_deref(), Some("1"));
    assert_eq!(stat("classifier_cache_hits").as_deref(), Some("90"));
    assert_eq!(stat("uptime_s").as_deref(), Some("61"));
}

#[test]
fn config_shows_one_row_per_setting_line() {
    let topology = topology();
    let table = answer(Command::Config, &snapshot(&topology));
    assert_eq!(table.columns, ["setting"]);
    assert_eq!(
        table.rows,
        vec![
            text(&[Some("listen = \"127.0.0.1:6432\"")]),
            text(&[Some("pool: mode=Transaction pool_size=20")])
        ]
    );
}

#[test]
fn clients_are_listed_oldest_first_with_what_they_run() {
    let topology = topology();
    let table = answer(Command::Clients, &snapshot(&topology));
    assert_eq!(
        table.columns,
        [
            "client",
            "user",
            "database",
            "application_name",
            "connected_s",
            "state",
            "server"
        ]
    );
    assert_eq!(
        table.rows,
        vec![
            text(&[
                Some("10.1.1.2:50001"),
                Some("batch"),
                Some("shop"),
                Some(""),
                Some("90"),
                Some("idle"),
                None
            ]),
            text(&[
                Some("10.1.1.1:50000"),
                Some("app"),
                Some("shop"),
                Some("web"),
                Some("5"),
                Some("active"),
                Some("10.0.0.2:5432")
            ]),
        ]
    );
}
