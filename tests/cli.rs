//! The binary as a user runs it: `check-config`, `--help`, exit codes, and the
//! daemon end to end as a process (HTTP endpoints, committed offsets, SIGTERM).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use clevertap_deleter::domain::ids::IdKind;
use clevertap_deleter::testkit::synth::{generate, ExpectedDeletion, SynthSpec};
use common::*;

/// `check-config --config <text as a file>`.
fn check_config(text: &str, envs: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), text);
    run_bin(&["check-config", "--config", path.to_str().unwrap()], envs)
}

/// A valid configuration with the three test regions (loopback endpoints),
/// with `extra` laid over it.
fn valid_config(extra: &str) -> String {
    let base = config_toml(
        "127.0.0.1:9",
        "user-deleted",
        "check-group",
        "http://127.0.0.1:9",
        "",
    );
    merge_toml(&base, extra)
}

fn parse_toml(out: &Outcome) -> toml::Table {
    out.stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("stdout is not TOML: {e}\n{}", out.all()))
}

/// `table["a"]["b"]…` as a string, or panics naming the path.
fn toml_str<'a>(table: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut value: Option<&toml::Value> = None;
    let mut current = table;
    for (i, key) in path.iter().enumerate() {
        let v = current
            .get(*key)
            .unwrap_or_else(|| panic!("no `{}` in\n{table}", path[..=i].join(".")));
        if i + 1 < path.len() {
            current = v
                .as_table()
                .unwrap_or_else(|| panic!("`{}` is not a table", path[..=i].join(".")));
        }
        value = Some(v);
    }
    value
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("`{}` is not a string in\n{table}", path.join(".")))
}

fn assert_secret_absent(out: &Outcome, secret: &str) {
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "the secret `{secret}` was printed:\n{}",
        out.all()
    );
}

fn assert_config_error(out: &Outcome, key: &str) {
    assert_eq!(
        out.code(),
        Some(2),
        "a configuration error exits 2:\n{}",
        out.all()
    );
    assert!(
        out.stderr.contains(key),
        "stderr names `{key}`:\n{}",
        out.all()
    );
}

fn assert_redacted(shown: &toml::Table, path: &[&str], out: &Outcome) {
    assert_eq!(toml_str(shown, path), "<redacted>", "{}", out.all());
}

// ---------------------------------------------------------------- check-config

#[test]
fn check_config_prints_the_config_with_passcodes_redacted() {
    let out = check_config(&valid_config(""), &[]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let shown = parse_toml(&out);
    for r in REGIONS {
        assert!(
            out.stdout.contains(&format!("[regions.{r}]")),
            "{}",
            out.all()
        );
        assert_eq!(
            toml_str(&shown, &["regions", r, "account_id"]),
            account_id(r),
            "{}",
            out.all()
        );
        assert_redacted(&shown, &["regions", r, "passcode"], &out);
        assert_secret_absent(&out, &passcode(r));
    }
    // The effective settings, not just the file: defaults are filled in.
    assert_eq!(toml_str(&shown, &["kafka", "group_id"]), "check-group");
    assert_eq!(toml_str(&shown, &["log", "format"]), "human");
}

#[test]
fn check_config_redacts_kafka_secret_properties() {
    let secrets = [
        ("sasl.password", "kafka-pw-Zq9x-4471"),
        ("ssl.key.password", "keypw-Hh21-0093"),
        ("ssl.keystore.password", "keystore-pw-77Qp"),
    ];
    let mut text = String::from(
        "[kafka]\nbrokers = \"broker-1:9093\"\n[kafka.properties]\n\
         \"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
         \"sasl.username\" = \"svc-deleter\"\n",
    );
    for (key, value) in secrets {
        text.push_str(&format!("\"{key}\" = \"{value}\"\n"));
    }
    text.push_str(&format!(
        "[regions.eu1]\naccount_id = \"{}\"\npasscode = \"{}\"\n",
        account_id("eu1"),
        passcode("eu1")
    ));
    let out = check_config(&text, &[]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let shown = parse_toml(&out);
    for (key, value) in secrets {
        assert_secret_absent(&out, value);
        assert_redacted(&shown, &["kafka", "properties", key], &out);
    }
    assert_secret_absent(&out, &passcode("eu1"));
    // Only secrets are hidden.
    assert_eq!(
        toml_str(&shown, &["kafka", "properties", "sasl.username"]),
        "svc-deleter"
    );
    assert_eq!(
        toml_str(&shown, &["kafka", "properties", "security.protocol"]),
        "SASL_SSL"
    );
}

#[test]
fn check_config_invalid_values_exit_2_naming_the_key() {
    let cases = [
        ("[batch]\nmax_ids = 500", "batch.max_ids"),
        ("[batch]\nmax_ids = 0", "batch.max_ids"),
        ("[api]\nmax_concurrency = 99", "api.max_concurrency"),
        ("[log]\nformat = \"xml\"", "log.format"),
    ];
    for (extra, key) in cases {
        let out = check_config(&valid_config(extra), &[]);
        assert_config_error(&out, key);
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for an invalid config:\n{}",
            out.all()
        );
        for r in REGIONS {
            assert_secret_absent(&out, &passcode(r));
        }
    }
}

#[test]
fn check_config_missing_file_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-config.toml");
    let out = run_bin(
        &["check-config", "--config", missing.to_str().unwrap()],
        &[],
    );
    assert_config_error(&out, "no-such-config.toml");
    assert!(out.stdout.is_empty(), "{}", out.all());
}

#[test]
fn check_config_unparsable_file_exits_2() {
    let out = check_config("[kafka\nbrokers = ", &[]);
    assert_eq!(out.code(), Some(2), "{}", out.all());
    let out = check_config(&valid_config("[batch]\nmax_idz = 5"), &[]);
    assert_config_error(&out, "max_idz");
}

// ---------------------------------------------------------------- environment

/// A file with region eu1 but no passcode for it.
const NO_PASSCODE: &str = "[regions.eu1]\naccount_id = \"ACC-EU1\"\n[batch]\nmax_ids = 100\n";
const ENV_PASSCODE: &str = "CLEVERTAP_DELETER__REGIONS__EU1__PASSCODE";

#[test]
fn passcode_from_the_environment_is_used_and_not_printed() {
    // Without the variable the file is incomplete...
    let out = check_config(NO_PASSCODE, &[]);
    assert_config_error(&out, "regions.eu1.passcode");

    // ...with it, it is valid, and the value is shown nowhere.
    let secret = "env-pass-Kx81-77aa";
    let out = check_config(NO_PASSCODE, &[(ENV_PASSCODE, secret)]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert_secret_absent(&out, secret);
    let shown = parse_toml(&out);
    assert_redacted(&shown, &["regions", "eu1", "passcode"], &out);
    assert_eq!(
        toml_str(&shown, &["regions", "eu1", "account_id"]),
        "ACC-EU1"
    );
}

#[test]
fn environment_overrides_the_file() {
    let envs = [
        (ENV_PASSCODE, "env-pass-Kx81-77aa"),
        ("CLEVERTAP_DELETER__BATCH__MAX_IDS", "50"),
    ];
    let out = check_config(NO_PASSCODE, &envs);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(
        out.stdout.lines().any(|l| l.trim() == "max_ids = 50"),
        "{}",
        out.all()
    );
    let shown = parse_toml(&out);
    assert_eq!(
        shown["batch"]["max_ids"].as_integer(),
        Some(50),
        "{}",
        out.all()
    );

    // An invalid value from the environment is refused like one from the file.
    let envs = [
        (ENV_PASSCODE, "env-pass-Kx81-77aa"),
        ("CLEVERTAP_DELETER__BATCH__MAX_IDS", "500"),
    ];
    let out = check_config(NO_PASSCODE, &envs);
    assert_config_error(&out, "batch.max_ids");
    assert_secret_absent(&out, "env-pass-Kx81-77aa");
}

#[test]
fn environment_string_values_are_kept_verbatim() {
    // Strings that merely look like numbers must reach the daemon as written:
    // a consumer group "0042" is not the group "42", and the same goes for
    // account ids and passcodes (which check-config cannot show).
    let envs = [
        (ENV_PASSCODE, "env-pass-Kx81-77aa"),
        ("CLEVERTAP_DELETER__KAFKA__GROUP_ID", "0042"),
        ("CLEVERTAP_DELETER__REGIONS__EU1__ACCOUNT_ID", "0123"),
        // Static membership from the pod name (see README).
        (
            "CLEVERTAP_DELETER__KAFKA__GROUP_INSTANCE_ID",
            "clevertap-deleter-0",
        ),
    ];
    let out = check_config(NO_PASSCODE, &envs);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let shown = parse_toml(&out);
    assert_eq!(
        toml_str(&shown, &["kafka", "group_id"]),
        "0042",
        "{}",
        out.all()
    );
    assert_eq!(
        toml_str(&shown, &["regions", "eu1", "account_id"]),
        "0123",
        "{}",
        out.all()
    );
    assert_eq!(
        toml_str(&shown, &["kafka", "group_instance_id"]),
        "clevertap-deleter-0",
        "{}",
        out.all()
    );
}

// ---------------------------------------------------------------- help

#[test]
fn help_exits_0_and_shows_no_secret() {
    let secret = "help-pass-Rr55-0912";
    let envs = [
        (ENV_PASSCODE, secret),
        ("CLEVERTAP_DELETER__BATCH__MAX_IDS", "7"),
    ];
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
        &["help", "run"],
    ] {
        let out = run_bin(args, &envs);
        assert_eq!(out.code(), Some(0), "{args:?}\n{}", out.all());
        assert!(out.stdout.contains("Usage"), "{args:?}\n{}", out.all());
        assert_secret_absent(&out, secret);
    }
    let top = run_bin(&["--help"], &envs);
    for word in ["run", "check-config", ENV_PASSCODE] {
        assert!(top.stdout.contains(word), "{word}\n{}", top.all());
    }
    let run = run_bin(&["run", "--help"], &envs);
    for word in ["--config", "--dry-run"] {
        assert!(run.stdout.contains(word), "{word}\n{}", run.all());
    }
}

/// Every option of every command says what it is for: no bare `--config`.
#[test]
fn every_option_has_a_help_text() {
    for command in ["run", "demo", "replay-dlq", "status", "check-config"] {
        let out = run_bin(&[command, "--help"], &[]);
        assert_eq!(out.code(), Some(0), "{command}\n{}", out.all());
        let lines: Vec<&str> = out.stdout.lines().collect();
        let options = lines
            .iter()
            .position(|l| l.trim_end() == "Options:")
            .unwrap_or_else(|| panic!("{command}: no Options:\n{}", out.stdout));
        for (i, line) in lines.iter().enumerate().skip(options + 1) {
            let trimmed = line.trim_start();
            if !trimmed.starts_with('-') || line.len() - trimmed.len() > 6 {
                continue;
            }
            // Clap puts the help after two or more spaces, or (long help)
            // on the next, further indented lines.
            let inline = trimmed.split("  ").skip(1).any(|s| !s.trim().is_empty());
            let next = lines.get(i + 1).copied().unwrap_or("");
            let below = next.len() - next.trim_start().len() > 6 && !next.trim().is_empty();
            assert!(inline || below, "{command}: option without help: {line}");
        }
    }
    let out = run_bin(&["check-config", "--help"], &[]);
    let config = out
        .stdout
        .lines()
        .find(|l| l.contains("--config"))
        .expect("check-config has --config");
    assert!(
        config.contains("-c, --config <FILE>") && config.contains("configuration file"),
        "{config}"
    );
}

// ---------------------------------------------------------------- run

#[test]
fn run_with_an_invalid_config_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &valid_config("[batch]\nmax_ids = 500"));
    let out = run_bin(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_config_error(&out, "batch.max_ids");
    for r in REGIONS {
        assert_secret_absent(&out, &passcode(r));
    }

    let missing = dir.path().join("absent.toml");
    let out = run_bin(&["run", "--config", missing.to_str().unwrap()], &[]);
    assert_config_error(&out, "absent.toml");
}

#[test]
fn run_with_an_unknown_kafka_property_exits_2() {
    // Valid for the config loader, refused by librdkafka when the clients are made.
    let text = valid_config("[kafka.properties]\n\"no.such.property\" = \"1\"");
    assert!(text.contains("no.such.property"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let out = run_bin(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code(), Some(2), "{}", out.all());
    assert!(out.stderr.contains("no.such.property"), "{}", out.all());
}

// ---------------------------------------------------------------- end to end

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_runs_end_to_end_and_stops_cleanly_on_sigterm() {
    let started = Instant::now();
    let kafka = Kafka::new();
    let topic = unique("cli-e2e");
    let partitions = 2;
    kafka.topic(&topic, partitions);
    kafka.topic(&format!("{topic}.dlq"), 1);
    let events = generate(&SynthSpec {
        count: 500,
        ..SynthSpec::default()
    });
    let poison = events.iter().filter(|e| e.poison.is_some()).count();
    assert!(poison > 0, "the default spec has poison events");
    kafka
        .produce(&topic, &events, |i| (i % partitions as usize) as i32)
        .await;
    let end: Vec<i64> = (0..partitions as usize)
        .map(|p| {
            (0..events.len())
                .filter(|i| i % partitions as usize == p)
                .count() as i64
        })
        .collect();

    let api = fake_api(15).await;
    let group = unique("cli-group");
    let port = free_port();
    let text = merge_toml(
        &config_toml(&kafka.bootstrap, &topic, &group, &api.endpoint(), ""),
        &format!("[server]\nlisten = \"127.0.0.1:{port}\""),
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);

    let captured = Captured::new();
    let mut cmd = command(
        &["run", "--config", path.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    captured.attach(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("spawn clevertap-deleter run"));
    let pid = child.0.id();
    let output = |captured: &Captured| {
        let (out, err) = captured.read();
        format!("--- stdout\n{out}\n--- stderr\n{err}")
    };

    // Every event finished: the group committed the end of both partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut committed = Vec::new();
    while committed != end {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            panic!(
                "the daemon exited early with {status}\n{}",
                output(&captured)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "committed {committed:?}, expected {end:?} within 60 s\n{}",
                output(&captured)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        committed = tokio::task::block_in_place(|| kafka.committed(&group, &topic, partitions));
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let base = format!("http://127.0.0.1:{port}");
    let (status, body) = get(&client, &format!("{base}/healthz")).await;
    assert_eq!(status, 200, "/healthz: {body}");
    let (status, body) = get(&client, &format!("{base}/readyz")).await;
    assert_eq!(status, 200, "/readyz: {body}");
    let (status, metrics) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200, "/metrics: {metrics}");
    assert_eq!(
        metric(
            &metrics,
            &format!("clevertap_deleter_events_consumed_total{{topic=\"{topic}\"}}")
        ),
        events.len() as f64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "clevertap_deleter_events_consumed_total"),
        events.len() as f64,
        "{metrics}"
    );
    let dead = metric_sum(&metrics, "clevertap_deleter_dead_letters_total");
    assert!(dead > 0.0, "{metrics}");
    assert_eq!(dead, poison as f64, "one dead letter per poison event");

    // SIGTERM: a clean stop with exit code 0.
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {pid}");
    let status = tokio::task::block_in_place(|| wait_exit(&mut child.0, Duration::from_secs(30)));
    let (stdout, stderr) = captured.read();
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("no exit within 30 s of SIGTERM\n{all}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}\n{all}"
    );
    let after = tokio::task::block_in_place(|| kafka.committed(&group, &topic, partitions));
    assert_eq!(after, end, "the final commit keeps the end offsets");

    // Every id the events asked for was deleted in its region's account, and nothing else.
    let expected: HashSet<(String, IdKind, String)> = events
        .iter()
        .flat_map(|e| e.deletions.iter())
        .map(|ExpectedDeletion { region, kind, id }| (account_id(region), *kind, id.clone()))
        .collect();
    let deleted: HashSet<(String, IdKind, String)> = api.deletion_counts().into_keys().collect();
    let missing: Vec<_> = expected.difference(&deleted).collect();
    assert!(missing.is_empty(), "not deleted: {missing:?}");
    let unexpected: Vec<_> = deleted.difference(&expected).collect();
    assert!(
        unexpected.is_empty(),
        "deleted but not asked for: {unexpected:?}"
    );
    assert!(api.violations().is_empty(), "{:?}", api.violations());

    // Debug logging was on, and no passcode reached the output.
    assert!(
        stderr.contains("DEBUG"),
        "RUST_LOG=debug took effect\n{all}"
    );
    assert!(stderr.contains("clevertap-deleter started"), "{all}");
    // log.log_ids is off by default: ids are personal data, even at debug level.
    let logged: Vec<_> = expected
        .iter()
        .filter(|(_, _, id)| stdout.contains(id.as_str()) || stderr.contains(id.as_str()))
        .take(5)
        .collect();
    assert!(logged.is_empty(), "ids in the logs: {logged:?}");
    for r in REGIONS {
        let secret = passcode(r);
        assert!(!stdout.contains(&secret), "passcode of {r} on stdout");
        assert!(!stderr.contains(&secret), "passcode of {r} on stderr");
    }
    eprintln!("end to end took {:?}", started.elapsed());
}

// ---------------------------------------------------------------- issue #16.1: environment forms

/// The file as operators write it in the README: region tables in any case,
/// lists and passcodes from the environment.
const UPPER_REGION: &str = "[regions.EU1]\naccount_id = \"ACC-EU1\"\n";

#[test]
fn env_lists_are_comma_separated_for_every_list_key() {
    let envs = [
        (ENV_PASSCODE, "env-pass-Kx81-77aa"),
        (
            "CLEVERTAP_DELETER__KAFKA__TOPICS",
            "user-deleted,user-deleted-legacy",
        ),
        (
            "CLEVERTAP_DELETER__EVENT__ACCEPT_TYPES",
            "user-deleted, user-erased",
        ),
    ];
    let out = check_config(NO_PASSCODE, &envs);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let shown = parse_toml(&out);
    let strings = |path: [&str; 2]| -> Vec<String> {
        shown[path[0]][path[1]]
            .as_array()
            .unwrap_or_else(|| panic!("{path:?} is not a list\n{}", out.all()))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strings(["kafka", "topics"]),
        ["user-deleted", "user-deleted-legacy"]
    );
    assert_eq!(
        strings(["event", "accept_types"]),
        ["user-deleted", "user-erased"]
    );
    // A single value is a list of one.
    let out = check_config(
        NO_PASSCODE,
        &[
            (ENV_PASSCODE, "env-pass-Kx81-77aa"),
            ("CLEVERTAP_DELETER__KAFKA__TOPICS", "only-topic"),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let shown = parse_toml(&out);
    assert_eq!(
        shown["kafka"]["topics"].as_array().map(|a| a.len()),
        Some(1),
        "{}",
        out.all()
    );
    assert_eq!(shown["kafka"]["topics"][0].as_str(), Some("only-topic"));
    // Brokers are one comma-separated string, not a list.
    let out = check_config(
        NO_PASSCODE,
        &[
            (ENV_PASSCODE, "env-pass-Kx81-77aa"),
            ("CLEVERTAP_DELETER__KAFKA__BROKERS", "k1:9092,k2:9092"),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert_eq!(
        toml_str(&parse_toml(&out), &["kafka", "brokers"]),
        "k1:9092,k2:9092"
    );
}

#[test]
fn region_names_match_in_any_case_in_files_and_environment() {
    let secret = "env-pass-Up99-1234";
    for (file, var) in [
        (UPPER_REGION, ENV_PASSCODE),
        ("[regions.Eu1]\naccount_id = \"ACC-EU1\"\n", ENV_PASSCODE),
        (
            "[regions.eu1]\naccount_id = \"ACC-EU1\"\n",
            "clevertap_deleter__regions__eu1__passcode",
        ),
    ] {
        let out = check_config(file, &[(var, secret)]);
        assert_eq!(out.code(), Some(0), "{file} + {var}\n{}", out.all());
        let shown = parse_toml(&out);
        let regions = shown["regions"].as_table().unwrap();
        assert_eq!(regions.keys().collect::<Vec<_>>(), ["eu1"], "{}", out.all());
        assert_eq!(
            toml_str(&shown, &["regions", "eu1", "account_id"]),
            "ACC-EU1"
        );
        assert_redacted(&shown, &["regions", "eu1", "passcode"], &out);
        assert_secret_absent(&out, secret);
    }
    // A region from the environment alone, with the default region pointing at it.
    let out = run_bin(
        &["check-config"],
        &[
            ("CLEVERTAP_DELETER__REGIONS__US1__ACCOUNT_ID", "ACC-US1"),
            ("CLEVERTAP_DELETER__REGIONS__US1__PASSCODE", secret),
            ("CLEVERTAP_DELETER__EVENT__DEFAULT_REGION", "US1"),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert_eq!(
        toml_str(&parse_toml(&out), &["regions", "us1", "account_id"]),
        "ACC-US1"
    );
    // The same region twice under different cases is refused.
    let out = check_config(
        "[regions.EU1]\naccount_id = \"A\"\npasscode = \"p1\"\n[regions.eu1]\naccount_id = \"B\"\npasscode = \"p2\"\n",
        &[],
    );
    assert_config_error(&out, "regions.eu1");
}

#[test]
fn every_documented_environment_form_works() {
    let secret = "env-pass-Df71-0000";
    let salt = "env-salt-0123456789abcdef";
    let envs = [
        (ENV_PASSCODE, secret),
        (
            "CLEVERTAP_DELETER__KAFKA__BROKERS",
            "kafka-1:9092,kafka-2:9092",
        ),
        ("CLEVERTAP_DELETER__KAFKA__GROUP_ID", "deleter-7"),
        ("CLEVERTAP_DELETER__KAFKA__GROUP_INSTANCE_ID", "pod-0"),
        ("CLEVERTAP_DELETER__KAFKA__AUDIT_TOPIC", "audit"),
        ("CLEVERTAP_DELETER__EVENT__TYPE_POINTER", ""),
        ("CLEVERTAP_DELETER__EVENT__MAX_IDS_PER_EVENT", "5000"),
        ("CLEVERTAP_DELETER__BATCH__LINGER_MS", "0"),
        ("CLEVERTAP_DELETER__API__MAX_CONCURRENCY", "7"),
        ("CLEVERTAP_DELETER__API__DRY_RUN", "true"),
        (
            "CLEVERTAP_DELETER__PIPELINE__REBALANCE_DRAIN_TIMEOUT_MS",
            "5000",
        ),
        (
            "CLEVERTAP_DELETER__REGIONS__EU1__ALLOW_INSECURE_ENDPOINT",
            "false",
        ),
        (
            "CLEVERTAP_DELETER__REGIONS__EU1__ENDPOINT",
            "https://eu1.api.clevertap.com",
        ),
        ("CLEVERTAP_DELETER__AUDIT__HASH_IDS", "true"),
        ("CLEVERTAP_DELETER__AUDIT__SALT", salt),
        ("CLEVERTAP_DELETER__LOG__FORMAT", "json"),
        ("CLEVERTAP_DELETER__SERVER__LISTEN", "127.0.0.1:9999"),
    ];
    let out = check_config(UPPER_REGION, &envs);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let shown = parse_toml(&out);
    assert_eq!(
        toml_str(&shown, &["kafka", "brokers"]),
        "kafka-1:9092,kafka-2:9092"
    );
    assert_eq!(toml_str(&shown, &["kafka", "group_id"]), "deleter-7");
    assert_eq!(toml_str(&shown, &["kafka", "group_instance_id"]), "pod-0");
    assert_eq!(toml_str(&shown, &["event", "type_pointer"]), "");
    assert_eq!(shown["event"]["max_ids_per_event"].as_integer(), Some(5000));
    assert_eq!(shown["batch"]["linger_ms"].as_integer(), Some(0));
    assert_eq!(shown["api"]["max_concurrency"].as_integer(), Some(7));
    assert_eq!(shown["api"]["dry_run"].as_bool(), Some(true));
    assert_eq!(shown["audit"]["hash_ids"].as_bool(), Some(true));
    assert_eq!(
        toml_str(&shown, &["regions", "eu1", "endpoint"]),
        "https://eu1.api.clevertap.com"
    );
    assert_eq!(toml_str(&shown, &["log", "format"]), "json");
    assert_secret_absent(&out, secret);
    assert_secret_absent(&out, salt);
}

#[test]
fn env_values_are_parsed_strictly_and_errors_name_the_variable() {
    for (var, value, key) in [
        ("CLEVERTAP_DELETER__API__DRY_RUN", "yes", "api.dry_run"),
        ("CLEVERTAP_DELETER__API__DRY_RUN", "1", "api.dry_run"),
        ("CLEVERTAP_DELETER__BATCH__MAX_IDS", "50x", "batch.max_ids"),
        (
            "CLEVERTAP_DELETER__BATCH__LINGER_MS",
            "2.7",
            "batch.linger_ms",
        ),
        (
            "CLEVERTAP_DELETER__BATCH__LINGER_MS",
            "-5",
            "batch.linger_ms",
        ),
        (
            "CLEVERTAP_DELETER__BATCH__NO_SUCH_KEY",
            "1",
            "batch.no_such_key",
        ),
    ] {
        let out = check_config(
            NO_PASSCODE,
            &[(ENV_PASSCODE, "env-pass-Kx81-77aa"), (var, value)],
        );
        assert_config_error(&out, key);
        assert!(
            out.stderr.contains(var),
            "{var}={value}: names the variable\n{}",
            out.all()
        );
        assert_secret_absent(&out, "env-pass-Kx81-77aa");
    }
}

#[test]
fn missing_keys_name_the_toml_key_and_the_environment_variable() {
    let out = check_config("[regions.EU1]\npasscode = \"p-Qq11\"\n", &[]);
    assert_config_error(&out, "regions.eu1.account_id");
    assert!(
        out.stderr
            .contains("CLEVERTAP_DELETER__REGIONS__EU1__ACCOUNT_ID"),
        "{}",
        out.all()
    );
    let out = check_config(UPPER_REGION, &[]);
    assert_config_error(&out, "regions.eu1.passcode");
    assert!(out.stderr.contains(ENV_PASSCODE), "{}", out.all());
    let out = check_config(
        &format!("{UPPER_REGION}passcode = \"p-Qq11\"\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true\n"),
        &[],
    );
    assert_config_error(&out, "audit.salt");
    assert!(
        out.stderr.contains("CLEVERTAP_DELETER__AUDIT__SALT"),
        "{}",
        out.all()
    );
}

// ---------------------------------------------------------------- issue #16.2: check-config checks what run checks

#[test]
fn check_config_validates_librdkafka_properties_without_connecting() {
    for (property, value) in [
        ("no.such.property", "1"),
        ("session.timeout.ms", "banana"),
        ("security.protocol", "SASL_SSSL"),
    ] {
        let text = valid_config(&format!("[kafka.properties]\n\"{property}\" = \"{value}\""));
        let started = Instant::now();
        let out = check_config(&text, &[]);
        assert_config_error(&out, property);
        assert!(out.stdout.is_empty(), "{}", out.all());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        // Built, not connected: no connection attempt is reported.
        assert!(!out.stderr.contains("Connection refused"), "{}", out.all());
    }
    // A valid file still passes, quickly and quietly.
    let out = check_config(&valid_config(""), &[]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(!out.stderr.contains("librdkafka"), "{}", out.all());
}

#[test]
fn check_config_refuses_what_the_readme_forbids() {
    let refused = [
        (
            "[kafka.properties]\n\"auto.offset.reset\" = \"latest\"",
            "auto.offset.reset",
        ),
        (
            "[kafka.properties]\n\"statistics.interval.ms\" = \"0\"",
            "statistics.interval.ms",
        ),
        (
            "[regions.eu1]\nendpoint = \"https://api.clevertap.com/1/delete/profiles.json\"",
            "regions.eu1.endpoint",
        ),
        (
            "[regions.eu1]\npasscode = \"replace-with-your-passcode\"",
            "regions.eu1.passcode",
        ),
    ];
    for (extra, key) in refused {
        let out = check_config(&valid_config(extra), &[]);
        assert_config_error(&out, key);
    }
    // A rebalance drain longer than the session timeout: a warning, exit 0.
    let out = check_config(
        &valid_config(
            "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n[pipeline]\nrebalance_drain_timeout_ms = 30000",
        ),
        &[],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(
        out.stderr.lines().any(|l| l.contains("warning")
            && l.contains("pipeline.rebalance_drain_timeout_ms")
            && l.contains("session.timeout.ms")),
        "{}",
        out.all()
    );
}

#[test]
fn check_config_warns_when_bad_events_are_larger_than_the_producer_writes() {
    let out = check_config(&valid_config("[event]\nmax_message_bytes = 2000000"), &[]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(
        out.stderr.lines().any(|l| l.contains("warning")
            && l.contains("event.max_message_bytes = 2000000")
            && l.contains("message.max.bytes = 1000000")),
        "{}",
        out.all()
    );
    // Raised on the producer side too: no warning.
    let out = check_config(
        &valid_config(
            "[event]\nmax_message_bytes = 2000000\n[kafka.properties]\n\"message.max.bytes\" = \"4000000\"",
        ),
        &[],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(
        !out.stderr.contains("event.max_message_bytes"),
        "{}",
        out.all()
    );
}

#[test]
fn check_config_refuses_loose_types_in_the_file() {
    for (extra, key) in [
        ("[api]\ndry_run = \"yes\"", "api.dry_run"),
        ("[api]\ndry_run = \"true\"", "api.dry_run"),
        ("[batch]\nlinger_ms = 2.7", "batch.linger_ms"),
        ("[batch]\nmax_ids = \"50\"", "batch.max_ids"),
        ("[kafka]\ntopics = \"user-deleted\"", "kafka.topics"),
    ] {
        let out = check_config(&valid_config(extra), &[]);
        assert_config_error(&out, key);
    }
    // A passcode of the wrong type is refused without echoing it.
    let out = check_config(
        "[regions.eu1]\naccount_id = \"A\"\npasscode = 918273645\n",
        &[],
    );
    assert_config_error(&out, "regions.eu1.passcode");
    assert_secret_absent(&out, "918273645");
}

#[test]
fn passcodes_with_control_characters_are_refused_naming_the_key() {
    // From the file (a TOML escape), from a passcode file, from the environment.
    let out = check_config(
        "[regions.eu1]\naccount_id = \"A\"\npasscode = \"ctl-pass\\u0007-Zz12\"\n",
        &[],
    );
    assert_config_error(&out, "regions.eu1.passcode");
    assert_secret_absent(&out, "ctl-pass");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passcode");
    std::fs::write(&file, "file-pass-Aa11\nsecond-line-Bb22\n").unwrap();
    let out = check_config(
        &format!(
            "[regions.eu1]\naccount_id = \"A\"\npasscode_file = \"{}\"\n",
            file.display()
        ),
        &[],
    );
    assert_config_error(&out, "regions.eu1.passcode");
    assert_secret_absent(&out, "file-pass-Aa11");
    assert_secret_absent(&out, "second-line-Bb22");
    let out = check_config(NO_PASSCODE, &[(ENV_PASSCODE, "env-pass\t\r-Cc33")]);
    assert_config_error(&out, "regions.eu1.passcode");
    assert_secret_absent(&out, "env-pass");
}

#[test]
fn the_example_file_needs_real_values() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let out = run_bin(&["check-config", "--config", example], &[]);
    assert_config_error(&out, "regions.eu1.passcode");
    let out = run_bin(
        &["check-config", "--config", example],
        &[
            ("CLEVERTAP_DELETER__REGIONS__EU1__ACCOUNT_ID", "ACC-EU1"),
            (
                "CLEVERTAP_DELETER__REGIONS__EU1__PASSCODE",
                "real-pass-Ee55",
            ),
            ("CLEVERTAP_DELETER__REGIONS__IN1__ACCOUNT_ID", "ACC-IN1"),
            (
                "CLEVERTAP_DELETER__REGIONS__IN1__PASSCODE",
                "real-pass-Ii66",
            ),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(!out.stderr.contains("warning"), "{}", out.all());
}

// ---------------------------------------------------------------- issue #14.15: librdkafka errors and secrets

#[test]
fn librdkafka_errors_never_echo_secret_values() {
    let secret = "typo-secret-Pp40-7731";
    // A typo in a secret property's name (unknown to librdkafka, whose error
    // text carries the value), a secret in a refused value, a password inside
    // a JAAS line, a key librdkafka refuses only when it builds the client.
    let pem = format!(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{secret}\n-----END ENCRYPTED PRIVATE KEY-----\n"
    );
    for (property, value, extra) in [
        ("sasl.pasword", secret.to_string(), ""),
        ("session.timeout.ms", secret.to_string(), ""),
        (
            "sasl.jaas.config",
            format!("org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"{secret}\";"),
            "",
        ),
        ("ssl.key.pem", pem, "\"security.protocol\" = \"SSL\"\n"),
    ] {
        let text = valid_config(&format!(
            "[kafka.properties]\n{extra}\"{property}\" = {}",
            toml::Value::String(value)
        ));
        for command in ["check-config", "run", "replay-dlq"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = write_config(dir.path(), &text);
            let out = run_bin(&[command, "--config", path.to_str().unwrap()], &[]);
            assert_secret_absent(&out, secret);
            assert_config_error(&out, property);
        }
    }
}

#[test]
fn check_config_redacts_secrets_inside_values() {
    // Refused by this build (OIDC needs libcurl), and named without its value.
    let out = check_config(
        &valid_config(
            "[kafka.properties]\n\"sasl.oauthbearer.token.endpoint.url\" = \"https://svc:url-pw-Oo90@idp.example.com/token\"",
        ),
        &[],
    );
    assert_config_error(&out, "sasl.oauthbearer.token.endpoint.url");
    assert_secret_absent(&out, "url-pw-Oo90");
    // Accepted by librdkafka, and shown with the credentials replaced.
    let out = check_config(
        &valid_config(
            "[kafka.properties]\n\"client.id\" = \"see https://svc:url-pw-Oo91@idp.example.com/token\"\n\
             \"client.rack\" = \"user=svc password=jaas-pw-Oo92\"",
        ),
        &[],
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert_secret_absent(&out, "url-pw-Oo91");
    assert_secret_absent(&out, "jaas-pw-Oo92");
    assert!(
        out.stdout.contains("idp.example.com/token"),
        "{}",
        out.all()
    );
}

// ---------------------------------------------------------------- issue #16.3: check-config --online

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_reports_every_check_ok() {
    let kafka = Kafka::new();
    let topic = unique("online");
    kafka.topic(&topic, 2);
    kafka.topic(&format!("{topic}.dlq"), 1);
    kafka.topic(&format!("{topic}.audit"), 1);
    let api = fake_api(15).await;
    let text = merge_toml(
        &config_toml(
            &kafka.bootstrap,
            &topic,
            &unique("online-group"),
            &api.endpoint(),
            "",
        ),
        &format!("[kafka]\naudit_topic = \"{topic}.audit\""),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let out = tokio::task::block_in_place(|| {
        run_bin(
            &[
                "check-config",
                "--online",
                "--timeout",
                "10",
                "--config",
                path.to_str().unwrap(),
            ],
            &[],
        )
    });
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let checks: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("OK") || l.starts_with("FAIL") || l.starts_with("SKIP"))
        .collect();
    for needle in [
        "brokers".to_string(),
        format!("topic {topic}:"),
        format!("topic {topic}.dlq:"),
        format!("topic {topic}.audit:"),
        "group".to_string(),
        "region eu1".to_string(),
    ] {
        assert!(
            checks
                .iter()
                .any(|l| l.starts_with("OK") && l.contains(&needle)),
            "an OK line about {needle}\n{}",
            out.all()
        );
    }
    assert!(
        !checks.iter().any(|l| l.starts_with("FAIL")),
        "{}",
        out.all()
    );
    for r in REGIONS {
        assert_secret_absent(&out, &passcode(r));
    }
}

#[test]
fn check_config_online_names_a_missing_topic_and_the_fix() {
    let kafka = Kafka::new();
    let topic = unique("online-missing");
    kafka.topic(&topic, 1);
    // No dead-letter topic.
    let text = config_toml(&kafka.bootstrap, &topic, "g", "http://127.0.0.1:9", "");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let out = run_bin(
        &[
            "check-config",
            "--online",
            "--timeout",
            "10",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code(), Some(2), "{}", out.all());
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains(&format!("{topic}.dlq")))
        .unwrap_or_else(|| panic!("a FAIL line names the topic\n{}", out.all()));
    assert!(line.contains("create"), "says how to fix it: {line}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("OK") && l.contains(&format!("topic {topic}:"))),
        "{}",
        out.all()
    );
}

#[test]
fn check_config_online_gives_up_on_unreachable_brokers_within_the_timeout() {
    let port = free_port();
    let text = config_toml(
        &format!("127.0.0.1:{port}"),
        "t",
        "g",
        "http://127.0.0.1:9",
        "",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let started = Instant::now();
    let out = run_bin(
        &[
            "check-config",
            "--online",
            "--timeout",
            "3",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    let took = started.elapsed();
    assert_eq!(out.code(), Some(2), "{}", out.all());
    assert!(
        took < Duration::from_secs(12),
        "took {took:?}\n{}",
        out.all()
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("brokers"))
        .unwrap_or_else(|| panic!("a FAIL line about the brokers\n{}", out.all()));
    assert!(line.contains("Connection refused"), "the cause: {line}");
    assert!(out.stderr.lines().count() < 20, "{}", out.all());
}

// ---------------------------------------------------------------- issue #16.5: quiet logs

/// Runs the daemon against a closed port for `secs` seconds, then SIGTERM.
fn run_against_unreachable_brokers(secs: u64, envs: &[(&str, &str)]) -> Outcome {
    let port = free_port();
    let text = merge_toml(
        &config_toml(
            &format!("127.0.0.1:{port}"),
            "t",
            "g",
            "http://127.0.0.1:9",
            "",
        ),
        &format!("[server]\nlisten = \"127.0.0.1:{}\"", free_port()),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let captured = Captured::new();
    let mut cmd = command(&["run", "--config", path.to_str().unwrap()], envs);
    captured.attach(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("spawn"));
    std::thread::sleep(Duration::from_secs(secs));
    signal(child.0.id(), "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(30)).expect("exit after SIGTERM");
    let (stdout, stderr) = captured.read();
    Outcome::new(status, stdout, stderr)
}

#[test]
fn unreachable_brokers_are_logged_as_state_changes_with_the_cause() {
    for envs in [&[][..], &[("RUST_LOG", "warn")][..]] {
        let out = run_against_unreachable_brokers(6, envs);
        assert_eq!(out.code(), Some(0), "{}", out.all());
        let lines = out.stderr.lines().count();
        assert!(
            lines < 15,
            "{lines} lines in 6 s ({envs:?}):\n{}",
            out.all()
        );
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains("brokers are down") && l.contains("Connection refused")),
            "the down line carries the cause\n{}",
            out.all()
        );
    }
}

#[test]
fn replay_dlq_gives_up_on_unreachable_brokers() {
    let port = free_port();
    let text = config_toml(
        &format!("127.0.0.1:{port}"),
        "t",
        "g",
        "http://127.0.0.1:9",
        "",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec![
            "replay-dlq",
            "--config",
            path.to_str().unwrap(),
            "--connect-timeout",
            "3",
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let out = run_bin(&args, &[]);
        let took = started.elapsed();
        assert_eq!(out.code(), Some(1), "{args:?}\n{}", out.all());
        assert!(took < Duration::from_secs(15), "took {took:?}");
        assert!(out.stderr.contains("Connection refused"), "{}", out.all());
        let lines = out.stderr.lines().count();
        assert!(lines < 15, "{lines} lines\n{}", out.all());
    }
}

// ---------------------------------------------------------------- issue #16.6: signals

/// SIGHUP re-reads the secret files (issue #19): the process keeps running,
/// and the log names the reloaded setting, never its value.
#[test]
fn sighup_rereads_the_secret_files_and_keeps_running() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let passcode_file = dir.path().join("eu1-passcode");
    std::fs::write(&passcode_file, passcode("eu1")).expect("passcode file");
    let text = merge_toml(
        &config_toml(
            &format!("127.0.0.1:{}", free_port()),
            "t",
            "g",
            "http://127.0.0.1:9",
            "",
        )
        .replacen(
            &format!("passcode = \"{}\"", passcode("eu1")),
            &format!("passcode_file = {:?}", passcode_file.display().to_string()),
            1,
        ),
        // Files re-read only on SIGHUP here.
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[secrets]\nreload_interval_ms = 0"),
    );
    let path = write_config(dir.path(), &text);
    let captured = Captured::new();
    let mut cmd = command(&["run", "--config", path.to_str().unwrap()], &[]);
    captured.attach(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("spawn"));
    let healthz = || -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split(' ').nth(1)?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "/healthz never answered\n{:?}",
            captured.read()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rotated = "pass-eu1-rotated-by-sighup-5d1e";
    std::fs::write(&passcode_file, rotated).expect("new passcode");
    signal(child.0.id(), "HUP");
    // The positive signal: the reload is logged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !captured.read().1.contains("secret reloaded") {
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "SIGHUP ended the process\n{:?}",
            captured.read()
        );
        assert!(
            Instant::now() < deadline,
            "no reload logged after SIGHUP\n{:?}",
            captured.read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "still running after the reload"
    );
    assert_eq!(healthz(), Some(200));
    signal(child.0.id(), "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(30)).expect("exit after SIGTERM");
    let (_, stderr) = captured.read();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let count = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count("SIGHUP received"), 1, "{stderr}");
    let reloaded: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("secret reloaded"))
        .collect();
    assert_eq!(reloaded.len(), 1, "{stderr}");
    assert!(
        reloaded[0].contains("regions.eu1.passcode_file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(rotated) && !stderr.contains(&passcode("eu1")),
        "a passcode reached the log:\n{stderr}"
    );
}

/// Accepts on `listener` and forwards every connection to `target`.
fn forward(listener: std::net::TcpListener, target: String) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

#[test]
fn brokers_coming_up_are_logged_once_as_reachable_again() {
    let kafka = Kafka::new();
    let topic = unique("late-broker");
    kafka.topic(&topic, 1);
    kafka.topic(&format!("{topic}.dlq"), 1);
    // The bootstrap address refuses connections until the broker "comes up".
    let port = free_port();
    let text = merge_toml(
        &config_toml(
            &format!("127.0.0.1:{port}"),
            &topic,
            &unique("late-group"),
            "http://127.0.0.1:9",
            "",
        ),
        &format!("[server]\nlisten = \"127.0.0.1:{}\"", free_port()),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let captured = Captured::new();
    let mut cmd = command(&["run", "--config", path.to_str().unwrap()], &[]);
    captured.attach(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("spawn"));
    std::thread::sleep(Duration::from_secs(3));
    let (_, before) = captured.read();
    assert!(
        before
            .lines()
            .any(|l| l.contains("all Kafka brokers are down")),
        "{before}"
    );
    forward(
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the bootstrap port"),
        kafka.bootstrap.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, stderr) = captured.read();
        if stderr.contains("Kafka brokers reachable again") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never logged as back up\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(child.0.id(), "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(30)).expect("exit after SIGTERM");
    let (_, stderr) = captured.read();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.lines().count() < 25, "{stderr}");
    let down = stderr
        .lines()
        .filter(|l| l.contains("all Kafka brokers are down"))
        .count();
    assert!(
        (1..=2).contains(&down),
        "one down line per client\n{stderr}"
    );
}
