//! Property tests of the configuration parser: `config::from_toml` never
//! panics on arbitrary text or on valid files with random keys and values
//! swapped in, every error names a key, and whatever it accepts respects the
//! documented bounds and never shows a passcode.
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release --test fuzz_config -- --nocapture
//! ```

use clevertap_deleter::config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

mod fuzz_support;
use fuzz_support::run;

const PASSCODE: &str = "fuzz-pass-Ww13-8820";
/// A password inside an endpoint URL, which must not be echoed.
const URL_PASSWORD: &str = "url-pw-Kk22";

/// What holds for any result of `from_toml`.
fn check(text: &str) -> Result<(), TestCaseError> {
    check_result(config::from_toml(text))
}

/// What holds for any configuration result.
fn check_result(result: Result<config::Config, config::ConfigError>) -> Result<(), TestCaseError> {
    match result {
        Err(e) => {
            prop_assert!(!e.key.is_empty(), "an error without a key: {e}");
            prop_assert!(!e.to_string().contains(PASSCODE), "{e}");
            if e.key.ends_with(".endpoint") {
                prop_assert!(!e.to_string().contains(URL_PASSWORD), "{e}");
            }
        }
        Ok(c) => {
            let s = &c.settings;
            prop_assert!((1..=100).contains(&c.batch_capacity.get()));
            prop_assert!((1..=15).contains(&s.api.max_concurrency));
            prop_assert!(s.api.timeout_ms >= 100);
            prop_assert!(s.batch.linger_ms <= 60_000);
            prop_assert!(!c.regions.is_empty());
            prop_assert!(!s.kafka.topics.is_empty());
            prop_assert!(!s.kafka.topics.contains(&s.kafka.dlq_topic));
            for r in &c.regions {
                prop_assert!(!r.passcode.expose().is_empty());
                let insecure = s.regions.values().any(|x| x.allow_insecure_endpoint);
                prop_assert!(
                    r.endpoint.starts_with("https://")
                        || r.endpoint.starts_with("http://127.")
                        || r.endpoint.starts_with("http://localhost")
                        || r.endpoint.starts_with("http://[::1]")
                        || insecure,
                    "{}",
                    r.endpoint
                );
            }
            let shown = config::redacted_toml(s);
            prop_assert!(!shown.contains(PASSCODE), "{shown}");
            let debug = format!("{c:?}");
            prop_assert!(!debug.contains(PASSCODE), "Debug shows the passcode");
            for w in &c.warnings {
                prop_assert!(!w.contains(PASSCODE), "{w}");
            }
        }
    }
    Ok(())
}

#[test]
fn arbitrary_text_never_panics() {
    run(
        "arbitrary text",
        10_000,
        prop_oneof![".{0,200}", "[\\[\\]a-z_.=\" \n0-9{}]{0,200}",],
        |text| check(&text),
    );
}

const VALID: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["user-deleted"]
[kafka.properties]
"sasl.password" = "fuzz-kafka-pw"
[batch]
max_ids = 100
[api]
max_concurrency = 10
[regions.eu1]
account_id = "ACC"
passcode = "fuzz-pass-Ww13-8820"
[server]
listen = "127.0.0.1:9464"
"#;

/// A valid file with one key set to a random value of a random type.
fn mutated() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "kafka.brokers",
        "kafka.topics",
        "kafka.group_id",
        "kafka.dlq_topic",
        "kafka.audit_topic",
        "kafka.properties",
        "kafka.secret_properties_files",
        "event.type_pointer",
        "event.accept_types",
        "event.identity_pointer",
        "event.guid_pointer",
        "event.region_pointer",
        "event.default_region",
        "event.max_message_bytes",
        "event.max_id_bytes",
        "event.max_ids_per_event",
        "batch.max_ids",
        "batch.linger_ms",
        "api.timeout_ms",
        "api.max_concurrency",
        "api.retry_initial_ms",
        "api.retry_max_ms",
        "api.auth_retry_ms",
        "api.dry_run",
        "api.ca_file",
        "api.unconfirmed_retries",
        "dedup.recent_capacity",
        "dedup.recent_ttl_secs",
        "pipeline.max_events_in_memory",
        "pipeline.commit_interval_ms",
        "regions.eu1.account_id",
        "regions.eu1.passcode",
        "regions.eu1.passcode_file",
        "regions.eu1.endpoint",
        "regions.eu1.allow_insecure_endpoint",
        "regions.xx9.account_id",
        "server.listen",
        "audit.hash_ids",
        "audit.salt",
        "log.format",
        "log.level",
        "log.log_ids",
        "unknown.key",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..200).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[a-zA-Z0-9:/._ -]{0,30}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"http://10.0.0.1\"",
            "\"http://127.0.0.1:1\"",
            "\"https://u:url-pw-Kk22@x\"",
            "\"ftp://x\"",
            "\"\"",
            "[]",
            "[\"a\", \"user-deleted\"]",
            "{}",
            "{ \"group.id\" = \"x\" }",
            "{ \"sasl.password\" = \"/nonexistent\" }",
            "\"/dev/null\"",
            "\"0.0.0.0:0\"",
            "\"[::1]:1\"",
        ])
        .prop_map(str::to_string),
    ];
    (key, value).prop_map(|(key, value)| {
        let mut table: toml::Table = VALID.parse().unwrap();
        let parts: Vec<&str> = key.split('.').collect();
        let mut current = &mut table;
        for part in &parts[..parts.len() - 1] {
            current = current
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        let parsed: Result<toml::Table, _> = format!("v = {value}").parse();
        if let Ok(mut v) = parsed {
            current.insert(parts[parts.len() - 1].to_string(), v.remove("v").unwrap());
        }
        toml::to_string(&table).unwrap()
    })
}

#[test]
fn valid_files_with_a_random_value_never_panic_and_stay_in_bounds() {
    assert!(config::from_toml(VALID).is_ok());
    run("mutated config", 10_000, mutated(), |text| check(&text));
}

/// `CLEVERTAP_DELETER__…` variables with random names (in any case) and values.
fn env_overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    let var = prop::sample::select(vec![
        "KAFKA__BROKERS",
        "KAFKA__TOPICS",
        "KAFKA__GROUP_ID",
        "KAFKA__GROUP_INSTANCE_ID",
        "KAFKA__DLQ_TOPIC",
        "KAFKA__AUDIT_TOPIC",
        "KAFKA__PROPERTIES",
        "KAFKA__PROPERTIES__X",
        "EVENT__ACCEPT_TYPES",
        "EVENT__TYPE_POINTER",
        "EVENT__DEFAULT_REGION",
        "EVENT__MAX_IDS_PER_EVENT",
        "BATCH__MAX_IDS",
        "BATCH__LINGER_MS",
        "API__DRY_RUN",
        "API__MAX_CONCURRENCY",
        "API__TIMEOUT_MS",
        "API__CA_FILE",
        "PIPELINE__REBALANCE_DRAIN_TIMEOUT_MS",
        "REGIONS__EU1__ACCOUNT_ID",
        "REGIONS__EU1__PASSCODE",
        "REGIONS__Eu1__PASSCODE",
        "REGIONS__EU1__ENDPOINT",
        "REGIONS__EU1__ALLOW_INSECURE_ENDPOINT",
        "REGIONS__EU1",
        "REGIONS__US1__ACCOUNT_ID",
        "REGIONS__US1__PASSCODE",
        "REGIONS",
        "AUDIT__HASH_IDS",
        "AUDIT__SALT",
        "LOG__FORMAT",
        "LOG__LOG_IDS",
        "SERVER__LISTEN",
        "NO_SUCH_SECTION",
        "API____X",
    ]);
    let value = prop_oneof![
        "[a-zA-Z0-9:/._, -]{0,30}",
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "true",
            "false",
            "TRUE",
            "yes",
            "",
            "0",
            "100",
            "2.7",
            "-1",
            "a,b",
            ",",
            " ",
            "<passcode>",
            "https://u:url-pw-Kk22@x",
            "<passcode>\n",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec((var, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(var, value)| {
                // The tracked passcode only where a passcode goes.
                let secret = if var.ends_with("PASSCODE") {
                    PASSCODE
                } else {
                    "x"
                };
                (
                    format!("CLEVERTAP_DELETER__{var}"),
                    value.replace("<passcode>", secret),
                )
            })
            .collect()
    })
}

#[test]
fn environment_overrides_never_panic_and_stay_in_bounds() {
    run("environment overrides", 5_000, env_overrides(), |envs| {
        let pairs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        check_result(config::from_toml_and_env(VALID, &pairs))
    });
}

#[test]
fn regression_edges() {
    // Numbers past every integer type, negative sizes, empty tables.
    for extra in [
        "[batch]\nmax_ids = 18446744073709551616",
        "[batch]\nmax_ids = -1",
        "[api]\ntimeout_ms = 1e308",
        "[regions]",
        "[regions.eu1]\npasscode = \"p\"\naccount_id = \"\"",
        "[kafka]\ntopics = \"\"",
    ] {
        let _ = config::from_toml(&format!("{VALID}\n{extra}"));
        let _ = config::from_toml(extra);
    }
}
