use super::*;

const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "secret"

[[nodes]]
host = "127.0.0.1"
port = 5432
role = "primary"

[[nodes]]
host = "127.0.0.1"
port = 5433
role = "replica"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let config = Config::from_toml(MINIMAL, "test").unwrap();
    assert_eq!(config.listen, "127.0.0.1:6432");
    assert_eq!(config.auth, AuthMethod::ScramSha256);
    assert_eq!(config.monitor.max_replica_lag, Duration::from_secs(1));
    assert_eq!(config.monitor.max_replica_lag_bytes, 16_777_216);
    assert_eq!(config.monitor.interval, Duration::from_millis(100));
    assert_eq!(config.primary_index(), 0);
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\n[pool]\npool_sise = 3\n");
    let err = Config::from_toml(&text, "test").unwrap_err().to_string();
    assert!(err.contains("pool_sise"), "{err}");
}

#[test]
fn two_primaries_rejected() {
    let text = MINIMAL.replace("role = \"replica\"", "role = \"primary\"");
    let err = Config::from_toml(&text, "test").unwrap_err().to_string();
    assert!(err.contains("`nodes`"), "{err}");
}

#[test]
fn bad_duration_is_named() {
    let text = format!("{MINIMAL}\n[monitor]\ninterval = \"100\"\n");
    let err = Config::from_toml(&text, "test").unwrap_err().to_string();
    assert!(err.contains("interval") && err.contains("unit"), "{err}");
}

#[test]
fn password_required_unless_trust() {
    let text = MINIMAL.replace("password = \"secret\"", "");
    let err = Config::from_toml(&text, "test").unwrap_err().to_string();
    assert!(err.contains("users[0].password"), "{err}");
    let trust = format!("auth = \"trust\"\n{text}");
    Config::from_toml(&trust, "test").unwrap();
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn shipped_example_config_is_valid() {
    let config = Config::from_toml(
        include_str!("../../config/pgrouter.toml"),
        "config/pgrouter.toml",
    )
    .unwrap();
    assert_eq!(config.nodes.len(), 3);
    assert_eq!(config.monitor.max_replica_lag, Duration::from_secs(1));
    assert_eq!(config.monitor.max_replica_lag_bytes, 16_777_216);
}

#[test]
fn routing_function_lists() {
    let config = Config::from_toml(MINIMAL, "test").unwrap();
    assert!(config.routing.read_only_functions.is_empty());
    assert!(config.routing.primary_functions.is_empty());
    let text = format!(
        "{MINIMAL}\n[routing]\nread_only_functions = [\"app.lookup\", \"Audit_Get\"]\n\
         primary_functions = [\"\\\"Billing\\\".charge\"]\n"
    );
    let config = Config::from_toml(&text, "test").unwrap();
    assert_eq!(
        config.routing.read_only_functions,
        ["app.lookup", "Audit_Get"]
    );
    assert_eq!(config.routing.primary_functions, ["\"Billing\".charge"]);
    for bad in ["", "a.b.c", "1fn", "fn()", "\"unterminated"] {
        let text = format!("{MINIMAL}\n[routing]\nprimary_functions = [{bad:?}]\n");
        let err = Config::from_toml(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("routing.primary_functions[0]"),
            "{bad:?}: {err}"
        );
    }
    let typo = format!("{MINIMAL}\n[routing]\nread_only_function = []\n");
    let err = Config::from_toml(&typo, "test").unwrap_err().to_string();
    assert!(err.contains("read_only_function"), "{err}");
}

#[test]
fn consistency_section() {
    let config = Config::from_toml(MINIMAL, "test").unwrap();
    assert_eq!(config.consistency.mode, ConsistencyMode::Causal);
    assert_eq!(config.consistency.pin_duration, Duration::from_secs(2));
    assert_eq!(config.consistency.causal_wait, Duration::ZERO);
    let text = format!("{MINIMAL}\n[consistency]\nmode = \"pin\"\ncausal_wait = \"50ms\"\n");
    let config = Config::from_toml(&text, "test").unwrap();
    assert_eq!(config.consistency.mode, ConsistencyMode::Pin);
    assert_eq!(config.consistency.causal_wait, Duration::from_millis(50));
    for bad in [
        "mode = \"eventual\"",
        "causal_wait = \"1m\"",
        "max_keys = 0",
        "pin = \"1s\"",
    ] {
        let text = format!("{MINIMAL}\n[consistency]\n{bad}\n");
        assert!(Config::from_toml(&text, "test").is_err(), "{bad}");
    }
}

#[test]
fn admin_console_is_off_by_default_and_its_users_must_exist() {
    let config = Config::from_toml(MINIMAL, "test").unwrap();
    assert!(config.admin.users.is_empty());
    assert_eq!(config.admin.database, "pgrouter");
    let on = format!("{MINIMAL}\n[admin]\nusers = [\"app\"]\ndatabase = \"console\"\n");
    let config = Config::from_toml(&on, "test").unwrap();
    assert_eq!(config.admin.users, ["app"]);
    assert_eq!(config.admin.database, "console");
    let stranger = format!("{MINIMAL}\n[admin]\nusers = [\"root\"]\n");
    let err = Config::from_toml(&stranger, "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.users[0]") && err.contains("root"),
        "{err}"
    );
}

#[test]
fn a_reload_takes_the_file_as_written_but_the_demo_keeps_its_own_cluster() {
    let current = Config::from_toml(
        &format!("listen = \"127.0.0.1:7777\"\n{MINIMAL}"),
        "current",
    )
    .unwrap();
    let file = Config::parse_unvalidated("[pool]\npool_size = 3\n", "file").unwrap();
    // `run`: a file without nodes or users stays so, and is refused.
    let run = file.clone().for_reload(false, &current);
    assert!(run.nodes.is_empty() && run.users.is_empty());
    assert!(run.validate().is_err());
    // The demo: its listen address, nodes and (the file has none) users stay.
    let demo = file.for_reload(true, &current);
    assert_eq!(demo.listen, "127.0.0.1:7777");
    assert_eq!(demo.nodes.len(), 2);
    assert_eq!(demo.users[0].name, "app");
    assert_eq!(demo.pool.pool_size, 3);
    demo.validate().unwrap();
}
