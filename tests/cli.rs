//! The binary as a user runs it: `check-config`, `--help`, exit codes, and the
//! daemon end to end as a process (HTTP endpoints, committed offsets, SIGTERM).

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clevertap_deleter::ids::IdKind;
use clevertap_deleter::synth::{generate, ExpectedDeletion, SynthSpec};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");
const ENV_PREFIX: &str = "CLEVERTAP_DELETER__";

/// What a finished run of the binary left behind.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Both streams, for error messages and leak checks.
    fn all(&self) -> String {
        format!(
            "--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A command for the binary with a clean environment: no inherited
/// `CLEVERTAP_DELETER__…` overrides and no `RUST_LOG`.
fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with(ENV_PREFIX) || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Stdout and stderr go to files, so a chatty child can never block on a full pipe.
struct Captured {
    _dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Captured {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Captured {
            stdout: dir.path().join("stdout"),
            stderr: dir.path().join("stderr"),
            _dir: dir,
        }
    }

    fn attach(&self, cmd: &mut Command) {
        cmd.stdout(File::create(&self.stdout).expect("stdout file"))
            .stderr(File::create(&self.stderr).expect("stderr file"));
    }

    fn read(&self) -> (String, String) {
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into();
        (read(&self.stdout), read(&self.stderr))
    }
}

/// Kills the child (SIGKILL, by its own handle) if a test panics before it exited.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls the child until it exits or `timeout` passes.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the binary to completion (at most 30 s).
fn run_bin(args: &[&str], envs: &[(&str, &str)]) -> Outcome {
    let captured = Captured::new();
    let mut cmd = command(args, envs);
    captured.attach(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("spawn clevertap-deleter"));
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    let (stdout, stderr) = captured.read();
    let status = status.unwrap_or_else(|| {
        panic!("`clevertap-deleter {args:?}` did not exit within 30 s\n{stdout}\n{stderr}")
    });
    Outcome {
        status,
        stdout,
        stderr,
    }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

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
        ("sasl.oauthbearer.client.secret", "oauth-secret-77Qp"),
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

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

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
