//! Issue #19 on a real broker (Apache Kafka, started by the tests with
//! deploy/local-kafka/local-kafka), the daemon as separate processes and the
//! fake CleverTap API in this process, which enforces the account's limit
//! for all callers together:
//!
//! 1. three replicas share one account budget by their part of the group's
//!    partitions: their requests together never exceed the budget, no 429,
//!    and the throughput of one replica at the full budget; the same three
//!    replicas each on their own limit (the "before") live on 429s;
//! 2. secrets rotated in place (a Kubernetes Secret volume's symlink swap)
//!    are used without a restart: a region held on the old passcode
//!    recovers within seconds, nothing is lost, and the reloads are counted
//!    and logged without their values.
//!
//! `cargo test --test e2e_fleet -- --nocapture` shows the figures.

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/cgrp.rs"]
mod cgrp;
#[path = "e2e/check.rs"]
mod check;
mod common;
#[path = "e2e/daemon.rs"]
mod daemon;
#[path = "e2e/local_kafka.rs"]
mod local_kafka;
#[path = "e2e/world.rs"]
mod world;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clevertap_deleter::domain::ids::IdKind;
use clevertap_deleter::output::audit::salted_sha256;
use clevertap_deleter::testkit::fake_api::Faults;
use clevertap_deleter::testkit::synth::{ExpectedDeletion, SynthEvent};

use check::{verify, wait_fully_committed, Expected};
use common::{account_id, metric, passcode};
use daemon::{Api, Daemon, ACCOUNT_LIMIT};
use world::{serial, wait_until, Protocol, World};

/// `n` events for eu1 with one identity each, `{prefix}{i}`.
fn eu1_events(prefix: &str, n: usize) -> Vec<SynthEvent> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            SynthEvent {
                key: format!("k{i}"),
                headers: Vec::new(),
                payload: format!(r#"{{"type":"user-deleted","region":"eu1","identity":"{id}"}}"#)
                    .into_bytes(),
                deletions: vec![ExpectedDeletion {
                    region: "eu1".into(),
                    kind: IdKind::Identity,
                    id,
                }],
                poison: None,
            }
        })
        .collect()
}

/// The daemon's /metrics on `port`, or "" when it does not answer.
fn scrape_port(port: u16) -> String {
    daemon::http_get(port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

// ---------------------------------------------------------------- 1. one budget

const PARTITIONS: i32 = 12;
/// `regions.eu1.account_concurrency`: the default, 15 less a margin of 3.
const BUDGET: usize = 12;
const EVENTS: usize = 30_000;
/// Each request takes this long at the fake: the API, not Kafka, bounds the
/// throughput, as in production.
const LATENCY: Duration = Duration::from_millis(250);

/// What one run of `replicas` daemons against a fresh fake measured.
#[derive(Debug)]
struct Run {
    label: &'static str,
    /// Ids CleverTap confirmed per second, from the first produce to the
    /// last deletion.
    ids_per_sec: f64,
    /// Peak requests in flight at the fake for the account, all replicas
    /// together.
    max_concurrent: usize,
    too_many: u64,
    requests: u64,
    /// 429 answers after the first 5 seconds of the run.
    too_many_after_5s: u64,
    shares: Vec<f64>,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:.0} ids/s, peak {} concurrent at the account, {} answers of 429 in {} requests \
             ({} after the first 5 s), shares {:?}",
            self.label,
            self.ids_per_sec,
            self.max_concurrent,
            self.too_many,
            self.requests,
            self.too_many_after_5s,
            self.shares
        )
    }
}

/// Starts `replicas` daemons in one group (each with `extra`), waits until
/// the group settled (every replica owns its part of the partitions and,
/// when `expected_share` is set, shows that share), then produces `EVENTS`
/// events for eu1 and times their deletion. The fake allows
/// `ACCOUNT_LIMIT` (15) requests at once for all callers.
fn measure(label: &'static str, replicas: usize, extra: &str, expected_share: Option<f64>) -> Run {
    let broker = broker::shared().expect("the shared broker");
    let world = World::new(broker, label, PARTITIONS);
    let api = Api::start(LATENCY, Faults::default());
    let mut fleet: Vec<Daemon> = (0..replicas)
        .map(|i| world.daemon(&format!("{label}-{i}"), &api, extra))
        .collect();
    let per_replica = (PARTITIONS as usize / replicas) as f64;
    let ports: Vec<u16> = fleet.iter().map(|d| d.port).collect();
    let settled = |port: u16| {
        let text = scrape_port(port);
        metric(&text, "clevertap_deleter_partitions_assigned") == per_replica
            && expected_share.is_none_or(|expected| eu1_share(&text) == expected)
    };
    wait_until(
        "the group settled: partitions spread, shares set",
        Duration::from_secs(90),
        &mut fleet.iter_mut().collect::<Vec<_>>(),
        || ports.iter().all(|&p| settled(p)),
    );
    let shares: Vec<f64> = ports.iter().map(|&p| eu1_share(&scrape_port(p))).collect();

    let started = Instant::now();
    let (produced, _) = world.produce_events(eu1_events("u", EVENTS), 0);
    let mut too_many_at_5s = None;
    wait_until(
        "every id deleted",
        Duration::from_secs(120),
        &mut fleet.iter_mut().collect::<Vec<_>>(),
        || {
            if too_many_at_5s.is_none() && started.elapsed() >= Duration::from_secs(5) {
                too_many_at_5s = Some(too_many(&api));
            }
            api.deleted_total() >= EVENTS as u64
        },
    );
    let elapsed = started.elapsed();
    let expected = Expected::new(&produced);
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(
        &reader,
        &expected,
        Duration::from_secs(60),
        &mut fleet.iter_mut().collect::<Vec<_>>(),
    );
    for d in &mut fleet {
        let status = d.terminate(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}: exit after SIGTERM", d.name);
    }
    let counts = api.deletion_counts();
    let deleted: HashSet<_> = counts.keys().collect();
    let missing = expected.ids.iter().filter(|k| !deleted.contains(k)).count();
    assert_eq!(missing, 0, "{label}: every id deleted");
    assert!(api.violations().is_empty(), "{:?}", api.violations());
    let statuses = api.status_counts();
    let total_429 = too_many(&api);
    Run {
        label,
        ids_per_sec: EVENTS as f64 / elapsed.as_secs_f64(),
        max_concurrent: api.fake.max_concurrent(&account_id("eu1")),
        too_many: total_429,
        requests: statuses.values().sum(),
        too_many_after_5s: total_429 - too_many_at_5s.unwrap_or(total_429),
        shares,
    }
}

fn too_many(api: &Api) -> u64 {
    api.status_counts().get(&429).copied().unwrap_or(0)
}

fn eu1_share(metrics: &str) -> f64 {
    metric(
        metrics,
        "clevertap_deleter_account_concurrency_share{region=\"eu1\"}",
    )
}

#[test]
fn e2e_fleet_1_three_replicas_share_one_account_budget() {
    let _serial = serial();
    if broker::shared().is_none() {
        return;
    }
    // One replica alone owns every partition: the whole budget.
    let alone = measure(
        "one-replica",
        1,
        "[api]\nmax_concurrency = 15\n",
        Some(BUDGET as f64),
    );
    println!("[fleet 1] {alone}");
    // Three replicas, 4 partitions each: 12 x 4 / 12 = 4 each, 12 in all.
    let three = measure(
        "three-replicas",
        3,
        "[api]\nmax_concurrency = 15\n",
        Some(4.0),
    );
    println!("[fleet 1] {three}");
    // Before: each replica on its own limit (max_concurrency 10, the budget
    // set so high that it never binds): 3 x 10 = 30 against 15.
    let before = measure(
        "before",
        3,
        "[api]\nmax_concurrency = 10\n[regions.eu1]\naccount_concurrency = 1000\n",
        None,
    );
    println!("[fleet 1] {before}");
    let ratio = three.ids_per_sec / alone.ids_per_sec;
    println!(
        "[fleet 1] throughput of three replicas sharing the budget / one replica at the full budget: {ratio:.3}; \
         before / one replica: {:.3}",
        before.ids_per_sec / alone.ids_per_sec
    );

    assert_eq!(three.shares, vec![4.0; 3]);
    assert!(
        three.max_concurrent <= BUDGET,
        "three replicas together never exceed the budget: {three}"
    );
    assert!(alone.max_concurrent <= BUDGET, "{alone}");
    // The budget is below the account's limit: the fake has no reason to
    // answer 429.
    assert_eq!(three.too_many, 0, "no 429 with the shared budget: {three}");
    // The fake does enforce the limit: the old rule ran into it.
    assert!(
        before.too_many > 0 && before.max_concurrent > ACCOUNT_LIMIT,
        "{before}"
    );
    assert!(
        ratio >= 0.9,
        "three replicas within 10 % of one replica at the full budget: {ratio:.3}"
    );
}

// ---------------------------------------------------------------- 2. rotation

/// A directory laid out like a mounted Kubernetes Secret: each key `NAME`
/// is a symlink to `..data/NAME`, and `..data` a symlink to a versioned
/// directory that an update replaces with one atomic rename, as the
/// kubelet does.
struct SecretVolume {
    dir: tempfile::TempDir,
    values: Vec<(String, String)>,
    version: u32,
}

impl SecretVolume {
    fn new(values: &[(&str, &str)]) -> Self {
        let mut v = SecretVolume {
            dir: daemon::scratch_dir("e2e-secret-volume-"),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version: 0,
        };
        v.write_version();
        for (name, _) in values {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.dir.path().join(name))
                .expect("symlink");
        }
        v
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Sets every `(name, value)` in one new version, one swap.
    fn update(&mut self, changes: &[(&str, &str)]) {
        for (name, value) in changes {
            for (k, v) in &mut self.values {
                if k == name {
                    *v = value.to_string();
                }
            }
        }
        self.write_version();
    }

    fn write_version(&mut self) {
        self.version += 1;
        let d = self.dir.path();
        let version = format!("..2026_12_03_v{}", self.version);
        std::fs::create_dir(d.join(&version)).expect("version dir");
        for (name, value) in &self.values {
            let file = d.join(&version).join(name);
            std::fs::write(&file, value).expect("secret file");
            set_mode(&file, 0o400);
        }
        std::os::unix::fs::symlink(&version, d.join("..data_tmp")).expect("symlink");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("atomic swap");
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// (account id, hash) of every id in a `deleted` audit record.
fn audited_hashes(world: &World, topic: &str) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for (_, payload) in world.broker.records(topic, 1) {
        let v: serde_json::Value =
            serde_json::from_slice(payload.as_deref().unwrap_or_default()).expect("audit JSON");
        assert_eq!(v["ids_hashed"], true, "{v}");
        if v["status"] != "deleted" {
            continue;
        }
        let account = v["account_id"].as_str().unwrap_or_default().to_string();
        for id in v["ids"].as_array().expect("ids") {
            out.insert((account.clone(), id.as_str().expect("a hash").to_string()));
        }
    }
    out
}

/// The first `n` events of `produced`.
fn first_batch(produced: &broker::Produced, n: usize) -> broker::Produced {
    broker::Produced {
        topic: produced.topic.clone(),
        partitions: produced.partitions,
        events: produced.events[..n].to_vec(),
        positions: produced.positions[..n].to_vec(),
    }
}

/// `toml` with eu1's passcode read from `passcode_file`.
fn with_passcode_file(toml: &str, path: &str) -> String {
    let mut table: toml::Table = toml.parse().expect("TOML");
    let eu1 = table["regions"]["eu1"]
        .as_table_mut()
        .expect("[regions.eu1]");
    eu1.remove("passcode");
    eu1.insert("passcode_file".into(), toml::Value::String(path.into()));
    toml::to_string(&table).expect("TOML")
}

fn reloads(metrics: &str, secret: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!(
            "clevertap_deleter_secret_reloads_total{{result=\"{result}\",secret=\"{secret}\"}}"
        ),
    )
}

/// The passcode rotated at CleverTap holds eu1; the Secret volume updated in
/// place releases it within seconds (probes of a held region only every 10
/// minutes: only the reload can explain it), with no restart and nothing
/// lost. The audit salt and a Kafka secret rotate at the same time: the salt
/// is used at once, the Kafka secret is counted as needing a restart.
#[test]
fn e2e_fleet_2_secrets_rotated_in_place_without_a_restart() {
    let _serial = serial();
    let Some(broker) = broker::shared() else {
        return;
    };
    let world = World::new(broker, "rotation", 3);
    let audit_topic = format!("{}.audit", world.topic);
    world.broker.create_topic(&audit_topic, 1);
    let api = Api::start(Duration::from_millis(5), Faults::default());
    let old = passcode("eu1");
    let new = "pass-eu1-rotated-7f3a";
    let (old_salt, new_salt) = ("salt-before-rotation-91ab", "salt-after-rotation-27cd");
    let (old_kafka, new_kafka) = ("kafka-secret-before-5e", "kafka-secret-after-6f");
    let mut volume = SecretVolume::new(&[
        ("passcode", old.as_str()),
        ("salt", old_salt),
        ("sasl-password", old_kafka),
    ]);
    let port = daemon::daemon_port();
    let config = with_passcode_file(
        &world.config(
            &api,
            port,
            &format!(
                "[api]\nauth_retry_ms = 600000\n[secrets]\nreload_interval_ms = 200\n\
                 [kafka]\naudit_topic = \"{audit_topic}\"\n\
                 [kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n\
                 [audit]\nhash_ids = true\nsalt_file = \"{}\"\n",
                volume.path("sasl-password"),
                volume.path("salt"),
            ),
        ),
        &volume.path("passcode"),
    );
    let mut d = world.start_daemon("rotation", config, port, &[]);
    let (mut produced, _) = world.produce(3_000, 1901);
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(
        &reader,
        &Expected::new(&produced),
        Duration::from_secs(60),
        &mut [&mut d],
    );

    // CleverTap takes the new passcode first; the daemon still sends the old.
    let t0 = Instant::now();
    api.fake.set_passcode(&account_id("eu1"), new);
    let (more, _) = world.produce(3_000, 1902);
    let second = Expected::new(&more);
    produced.append(more);
    let expected = Expected::new(&produced);
    let held = |text: &str| metric(text, "clevertap_deleter_region_held{region=\"eu1\"}");
    wait_until(
        "eu1 held on the old passcode",
        Duration::from_secs(30),
        &mut [&mut d],
        || held(&scrape_port(port)) == 1.0,
    );
    let held_at = t0.elapsed();
    // The other regions go on meanwhile: the positive signal before
    // looking at what eu1 did not do.
    let eu1 = account_id("eu1");
    let others: Vec<_> = second.ids.iter().filter(|k| k.0 != eu1).collect();
    wait_until(
        "in1 and us1 deleted while eu1 is held",
        Duration::from_secs(60),
        &mut [&mut d],
        || {
            let counts = api.deletion_counts();
            others.iter().all(|k| counts.contains_key(*k))
        },
    );
    assert_eq!(held(&scrape_port(port)), 1.0, "nothing released eu1 yet");
    let counts = api.deletion_counts();
    let eu1_released: Vec<daemon::Key> = second
        .ids
        .iter()
        .filter(|k| k.0 == eu1 && !counts.contains_key(*k))
        .cloned()
        .collect();
    assert!(
        !eu1_released.is_empty(),
        "eu1's new ids wait for the passcode"
    );

    // The Secret is updated in place: passcode, salt and Kafka secret.
    let swapped = Instant::now();
    volume.update(&[
        ("passcode", new),
        ("salt", new_salt),
        ("sasl-password", new_kafka),
    ]);
    wait_until(
        "the reloads counted",
        Duration::from_secs(20),
        &mut [&mut d],
        || {
            let text = scrape_port(port);
            reloads(&text, "region_passcode", "success") == 1.0
                && reloads(&text, "audit_salt", "success") == 1.0
                && reloads(&text, "kafka_property", "restart_required") == 1.0
        },
    );
    let reloaded = swapped.elapsed();
    let took = wait_fully_committed(&reader, &expected, Duration::from_secs(30), &mut [&mut d]);
    let recovered = swapped.elapsed();
    assert!(
        recovered < Duration::from_secs(20),
        "recovered {recovered:?} after the swap, far below the 10 min probe interval"
    );
    let metrics = scrape_port(port);
    assert_eq!(held(&metrics), 0.0, "eu1 released");
    for secret in ["region_passcode", "audit_salt", "kafka_property"] {
        assert_eq!(reloads(&metrics, secret, "failure"), 0.0, "{secret}");
    }
    assert!(
        metric(
            &metrics,
            "clevertap_deleter_region_auth_failures_total{region=\"eu1\",status=\"401\"}"
        ) >= 1.0
    );
    // No restart: the same process all along, which exits cleanly.
    d.assert_running();
    let logs = d.logs();
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    // Audit records: the ids deleted before the swap hashed with the old
    // salt, eu1's ids released by the new passcode with the new one.
    let hashed = audited_hashes(&world, &audit_topic);
    let first = Expected::new(&first_batch(&produced, 3_000));
    for (account, _, id) in &first.ids {
        let hash = salted_sha256(old_salt, id);
        assert!(hashed.contains(&(account.clone(), hash)), "{id}: old salt");
    }
    for (account, _, id) in eu1_released.iter() {
        let hash = salted_sha256(new_salt, id);
        assert!(hashed.contains(&(account.clone(), hash)), "{id}: new salt");
    }

    let reloaded_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("secret reloaded"))
        .collect();
    assert_eq!(reloaded_lines.len(), 2, "{logs}");
    assert!(
        reloaded_lines
            .iter()
            .any(|l| l.contains("regions.eu1.passcode_file")),
        "the line names the setting: {reloaded_lines:?}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("restart to apply") && l.contains("sasl.password")),
        "{logs}"
    );
    for secret in [old.as_str(), new, old_salt, new_salt, old_kafka, new_kafka] {
        assert!(
            !logs.contains(secret) && !metrics.contains(secret),
            "a secret reached the logs or metrics"
        );
    }
    println!(
        "[fleet 2] eu1 held {held_at:.1?} after CleverTap's passcode changed; reloads counted \
         {reloaded:.1?} after the swap, everything committed {recovered:.1?} after it \
         ({took:.1?} after the reload); {outcome}"
    );
}

// ---------------------------------------------------------------- 3. rebalances

/// The shares are recomputed on every rebalance under load: one replica at
/// the whole budget, two more join (12 -> 4 + 4 + 4), one leaves with
/// SIGTERM (-> 6 + 6). A replica lowers its share before it gives
/// partitions up, so the fake never sees more than the budget at once.
#[test]
fn e2e_fleet_3a_the_budget_holds_while_replicas_join_and_leave() {
    scaling_scenario("3a classic", Protocol::Classic);
}

/// The same under KIP-848 (`group.protocol = "consumer"`): the broker
/// assigns, partitions move one revoke at a time.
#[test]
fn e2e_fleet_3b_the_budget_holds_while_replicas_join_and_leave_kip848() {
    scaling_scenario("3b kip848", Protocol::Consumer);
}

fn scaling_scenario(label: &str, protocol: Protocol) {
    let _serial = serial();
    let Some(broker) = broker::shared() else {
        return;
    };
    let world = World::new(broker, "scaling", PARTITIONS).with_protocol(protocol);
    // Slower answers than in test 1, so the run outlasts two rebalances.
    let api = Api::start(Duration::from_millis(500), Faults::default());
    let extra = "[api]\nmax_concurrency = 15\n";
    let (produced, _) = world.produce_events(eu1_events("s", 40_000), 0);
    let expected = Expected::new(&produced);
    let eu1 = account_id("eu1");
    let started = Instant::now();
    let mut first = world.daemon("scaling-0", &api, extra);
    wait_until(
        "one replica sends at its whole share",
        Duration::from_secs(30),
        &mut [&mut first],
        || api.fake.max_concurrent(&eu1) >= BUDGET,
    );
    let mut second = world.daemon("scaling-1", &api, extra);
    let mut third = world.daemon("scaling-2", &api, extra);
    let ports = [first.port, second.port, third.port];
    let settled = |ports: &[u16], partitions: f64, share: f64| {
        ports.iter().all(|&p| {
            let text = scrape_port(p);
            metric(&text, "clevertap_deleter_partitions_assigned") == partitions
                && eu1_share(&text) == share
        })
    };
    let joined = wait_until(
        "three replicas with a share of 4 each",
        Duration::from_secs(60),
        &mut [&mut first, &mut second, &mut third],
        || settled(&ports, 4.0, 4.0),
    );
    let deleted_at_join = api.deleted_total();
    let status = third.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let left = wait_until(
        "two replicas with a share of 6 each",
        Duration::from_secs(60),
        &mut [&mut first, &mut second],
        || settled(&ports[..2], 6.0, 6.0),
    );
    let deleted_at_leave = api.deleted_total();
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(
        &reader,
        &expected,
        Duration::from_secs(120),
        &mut [&mut first, &mut second],
    );
    let took = started.elapsed();
    for d in [&mut first, &mut second] {
        let status = d.terminate(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    }
    let outcome = verify(&world.broker, &expected, &api, &world.group, BUDGET);
    println!(
        "[fleet {label}] joined (4 + 4 + 4) {joined:.1?} after the second replica started, with \
         {deleted_at_join} of {} ids deleted; one left (6 + 6) {left:.1?} after its SIGTERM, \
         with {deleted_at_leave} deleted; all committed {took:.1?} after the start; {outcome}",
        expected.ids.len()
    );
    assert!(
        deleted_at_leave < expected.ids.len() as u64,
        "the rebalances happened under load"
    );
    let peak = api.fake.max_concurrent(&eu1);
    assert!(peak <= BUDGET, "{peak} requests at once, above the budget");
    assert_eq!(too_many(&api), 0, "no 429 through the rebalances");
}
