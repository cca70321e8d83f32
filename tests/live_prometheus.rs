//! The alert rules of deploy/prometheus/alerts.yaml, seen firing in a real
//! Prometheus that scrapes live daemons every second.
//!
//! Three `clevertap-deleter run` processes against an in-process Kafka
//! (MockCluster) and fake CleverTap APIs (one per region, so each region gets
//! its own fault), scraped by Debian's `prometheus` server with the project's
//! rule file, every duration divided by 60 (minutes become seconds:
//! deploy/prometheus/scale_rules.py, which checks that nothing else changed).
//!
//! - A: a healthy run: no alert fires (or is even pending).
//! - B: faults, each in its own region, partition or daemon: a wrong passcode
//!   (in1), 5xx (us1), an unreachable endpoint (sg1), a 429 storm (aps3),
//!   poison events (dead letters, the first of a new reason too), events
//!   with old timestamps, a slow API behind a growing backlog (daemon 2),
//!   failing offset commits, a daemon that cannot reach Kafka (daemon 3),
//!   and a dead-letter topic that refuses writes (a partition stuck behind
//!   one event). Each alert must fire, with the right labels, and no
//!   per-region alert fires for a region without a fault.
//! - C: nothing can be deleted anywhere, mostly skipped events arrive.
//! - D: recovery; the lagging daemon finds records removed by retention.
//! - E: every daemon is killed: their /metrics disappears.
//!
//! Then every dashboard query is evaluated over the run and must return data.
//! The measured times are printed and written to
//! `$CARGO_TARGET_TMPDIR/live_prometheus/report.txt`; with
//! LIVE_PROMETHEUS_KEEP=1 the TSDB is kept there too, for
//! deploy/grafana/render_panels.py.
//!
//! Needs `prometheus` and `python3` with PyYAML: fails without them, unless
//! PROMETHEUS_ALLOW_SKIP=1 (then it says it did not run).

mod common;
mod live;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clevertap_deleter::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap, Faults};
use common::*;
use live::*;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Minutes in the rules become seconds.
const TIME_FACTOR: u32 = 60;
const SKIP_VAR: &str = "PROMETHEUS_ALLOW_SKIP";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------- Prometheus

struct Prometheus {
    child: Option<Child>,
    base: String,
    targets: PathBuf,
    client: reqwest::Client,
    log: PathBuf,
}

#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    values: Vec<(f64, f64)>,
}

impl Prometheus {
    /// Starts with no rules: `load_rules` adds them once the targets are
    /// scraped (discovery hands new targets to the scrapers up to 5 s late,
    /// which a 5 s `for:` of `absent(up == 1)` would count as an outage).
    fn start(bin: &Path, dir: &Path, data: &Path) -> Prometheus {
        let port = free_port();
        let rules = dir.join("rules.yaml");
        std::fs::write(&rules, "groups: []\n").unwrap();
        let targets = dir.join("targets.json");
        std::fs::write(&targets, "[]").unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: clevertap-deleter
    metrics_path: {path}
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"#,
                rules = rules.display(),
                path = service_monitor_path(),
                targets = targets.display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            targets,
            client: http_client(),
            log,
        }
    }

    /// Replaces the (empty) rule file and reloads the configuration.
    async fn load_rules(&self, rules: &Path, expected: usize) {
        std::fs::copy(rules, self.targets.with_file_name("rules.yaml")).unwrap();
        let pid = self.child.as_ref().expect("running").id();
        let hup = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.api("/api/v1/rules", &[]).await;
            let n: usize = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| g["rules"].as_array().map_or(0, Vec::len))
                .sum();
            if n == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus loaded {n} rules, not {expected}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The scrape targets (file service discovery, picked up within a second).
    fn set_targets(&self, targets: &[String]) {
        let json = serde_json::json!([{ "targets": targets }]).to_string();
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::rename(&tmp, &self.targets).unwrap();
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("prometheus exited with {status}:\n{}", self.log_tail());
            }
            if let Ok(r) = self
                .client
                .get(format!("{}/-/ready", self.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> serde_json::Value {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.base), params).unwrap();
        let r = self
            .client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        let body: serde_json::Value = r.json().await.expect("prometheus answers JSON");
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    fn samples(data: &serde_json::Value) -> Vec<Sample> {
        let parse = |v: &serde_json::Value| -> (f64, f64) {
            (
                v[0].as_f64().unwrap_or(0.0),
                v[1].as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN),
            )
        };
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Sample {
                labels: serde_json::from_value(r["metric"].clone()).unwrap_or_default(),
                values: match r.get("values") {
                    Some(vs) => vs.as_array().unwrap().iter().map(parse).collect(),
                    None => vec![parse(&r["value"])],
                },
            })
            .collect()
    }

    async fn query(&self, q: &str) -> Vec<Sample> {
        Self::samples(&self.api("/api/v1/query", &[("query", q.to_string())]).await)
    }

    /// The value of a query that returns one series (None: no series).
    async fn value(&self, q: &str) -> Option<f64> {
        self.query(q).await.first().map(|s| s.values[0].1)
    }

    async fn query_range(&self, q: &str, start: f64, end: f64, step: f64) -> Vec<Sample> {
        Self::samples(
            &self
                .api(
                    "/api/v1/query_range",
                    &[
                        ("query", q.to_string()),
                        ("start", format!("{start:.3}")),
                        ("end", format!("{end:.3}")),
                        ("step", format!("{step}")),
                    ],
                )
                .await,
        )
    }

    /// Stops with SIGTERM (the TSDB is closed cleanly), SIGKILL after 20 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- alerts seen

/// An alert as Prometheus reported it, with when the watcher first saw it
/// pending and firing (Unix seconds). `active_at` is Prometheus' own time
/// of the first evaluation that found the condition true.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    labels: BTreeMap<String, String>,
    active_at: Option<f64>,
    first_pending: Option<f64>,
    first_firing: Option<f64>,
    firing_now: bool,
}

#[derive(Clone)]
struct Watch {
    seen: Arc<Mutex<Vec<Seen>>>,
    polls: Arc<std::sync::atomic::AtomicU64>,
}

impl Watch {
    fn start(prometheus_base: String) -> Watch {
        let watch = Watch {
            seen: Arc::new(Mutex::new(Vec::new())),
            polls: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let w = watch.clone();
        let client = http_client();
        tokio::spawn(async move {
            loop {
                let url = format!("{prometheus_base}/api/v1/alerts");
                if let Ok(r) = client.get(&url).send().await {
                    if let Ok(body) = r.json::<serde_json::Value>().await {
                        let at = now();
                        let alerts = body["data"]["alerts"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        let mut seen = w.seen.lock().unwrap();
                        for s in seen.iter_mut() {
                            s.firing_now = false;
                        }
                        for a in alerts {
                            let mut labels: BTreeMap<String, String> =
                                serde_json::from_value(a["labels"].clone()).unwrap_or_default();
                            let name = labels.remove("alertname").unwrap_or_default();
                            let state = a["state"].as_str().unwrap_or("").to_string();
                            let active_at = a["activeAt"].as_str().and_then(epoch_secs);
                            // A new activation after the alert resolved is a new record.
                            let found = seen.iter().position(|s| {
                                s.name == name && s.labels == labels && s.active_at == active_at
                            });
                            let i = found.unwrap_or_else(|| {
                                seen.push(Seen {
                                    name: name.clone(),
                                    labels: labels.clone(),
                                    active_at,
                                    first_pending: None,
                                    first_firing: None,
                                    firing_now: false,
                                });
                                seen.len() - 1
                            });
                            let s = &mut seen[i];
                            match state.as_str() {
                                "pending" => {
                                    s.first_pending.get_or_insert(at);
                                }
                                "firing" => {
                                    s.first_firing.get_or_insert(at);
                                    s.firing_now = true;
                                }
                                _ => {}
                            }
                        }
                        drop(seen);
                        w.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        watch
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn polls(&self) -> u64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Alerts that fired (`firing` ever) with first firing at or after `since`.
    fn fired_since(&self, since: f64) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.first_firing.is_some_and(|f| f >= since))
            .collect()
    }
}

/// An alert that a fault must fire.
#[derive(Debug, Clone)]
struct Expect {
    alert: &'static str,
    labels: Vec<(&'static str, String)>,
    fault: String,
    since: f64,
    within: Duration,
    /// (pending after, firing after), seconds from `since`.
    got: Option<(Option<f64>, f64)>,
}

impl Expect {
    fn new(alert: &'static str, labels: &[(&'static str, &str)], fault: &str, within: u64) -> Self {
        Expect {
            alert,
            labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            fault: fault.to_string(),
            since: now(),
            within: Duration::from_secs(within),
            got: None,
        }
    }

    /// The fault started at `t` (Unix seconds), not now.
    fn from(mut self, t: f64) -> Self {
        self.since = t;
        self
    }

    fn matches(&self, s: &Seen) -> bool {
        s.name == self.alert && self.labels.iter().all(|(k, v)| s.labels.get(*k) == Some(v))
    }

    fn describe(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}{{{}}}", self.alert, labels.join(","))
    }

    /// Checks the watch: true once fired; panics when overdue.
    fn check(&mut self, watch: &Watch, context: &dyn Fn() -> String) -> bool {
        if self.got.is_some() {
            return true;
        }
        let fired = watch
            .all()
            .into_iter()
            .find(|s| self.matches(s) && s.first_firing.is_some_and(|f| f >= self.since - 1.0));
        if let Some(s) = fired {
            let pending = s
                .active_at
                .or(s.first_pending)
                .map(|p| (p - self.since).max(0.0));
            self.got = Some((pending, s.first_firing.unwrap() - self.since));
            eprintln!(
                "fired: {} after {:.1} s ({})",
                self.describe(),
                s.first_firing.unwrap() - self.since,
                self.fault
            );
            return true;
        }
        if now() - self.since > self.within.as_secs_f64() {
            let seen: Vec<String> = watch
                .all()
                .iter()
                .map(|s| {
                    format!(
                        "{} {:?} firing={:?}",
                        s.name,
                        s.labels,
                        s.first_firing.map(|f| f - self.since)
                    )
                })
                .collect();
            panic!(
                "{} did not fire within {:?} of: {}\nalerts seen:\n{}\n{}",
                self.describe(),
                self.within,
                self.fault,
                seen.join("\n"),
                context()
            );
        }
        false
    }
}

// ---------------------------------------------------------------- traffic

const MAIN_PARTITIONS: i32 = 8;
/// Partition of the main topic per stream.
fn partition_of(stream: &str) -> i32 {
    match stream {
        "eu1" => 0,
        "in1" => 1,
        "us1" => 2,
        "sg1" => 3,
        "aps3" => 4,
        "poison" => 5,
        "skipped" => 6,
        other => panic!("no partition for {other}"),
    }
}

/// Events per second of each stream; the producer task follows changes.
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Regions that get deletion events, each on its own partition.
    regions: Vec<&'static str>,
    per_region: f64,
    /// eu1 events whose Kafka timestamp is two hours old.
    old_eu1: f64,
    not_json: f64,
    skipped: f64,
    /// Deletion events of region lag1 on the lag topic (daemon 2).
    lag: f64,
}

struct Traffic {
    plan: Arc<Mutex<Plan>>,
    producer: FutureProducer,
    main: String,
    lag_topic: String,
    counter: Arc<std::sync::atomic::AtomicU64>,
    /// Ids sent to the lag topic, to make them fail later.
    lag_ids: Arc<Mutex<Vec<String>>>,
}

fn deletion(region: &str, n: u64) -> Vec<u8> {
    format!(r#"{{"type":"user-deleted","region":"{region}","identity":"live-{region}-{n}"}}"#)
        .into_bytes()
}

fn lag_event(n: u64, pad: usize) -> (String, Vec<u8>) {
    let id = format!("lag-{n}");
    let pad = "p".repeat(pad);
    (
        id.clone(),
        format!(r#"{{"type":"user-deleted","region":"lag1","identity":"{id}","pad":"{pad}"}}"#)
            .into_bytes(),
    )
}

impl Traffic {
    fn start(kafka: &Kafka, main: &str, lag_topic: &str) -> Traffic {
        let t = Traffic {
            plan: Arc::new(Mutex::new(Plan::default())),
            producer: kafka.producer(),
            main: main.to_string(),
            lag_topic: lag_topic.to_string(),
            counter: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            lag_ids: Arc::new(Mutex::new(Vec::new())),
        };
        let (plan, producer, counter) = (t.plan.clone(), t.producer.clone(), t.counter.clone());
        let (main, lag_topic, lag_ids) = (t.main.clone(), t.lag_topic.clone(), t.lag_ids.clone());
        tokio::spawn(async move {
            let mut carry: BTreeMap<String, f64> = BTreeMap::new();
            loop {
                let p = plan.lock().unwrap().clone();
                let mut streams: Vec<(String, f64)> = p
                    .regions
                    .iter()
                    .map(|r| (r.to_string(), p.per_region))
                    .collect();
                streams.push(("old_eu1".into(), p.old_eu1));
                streams.push(("poison".into(), p.not_json));
                streams.push(("skipped".into(), p.skipped));
                streams.push(("lag".into(), p.lag));
                let mut records: Vec<(String, i32, Vec<u8>, Option<i64>)> = Vec::new();
                for (stream, rate) in streams {
                    let acc = carry.entry(stream.clone()).or_default();
                    *acc += rate / 10.0;
                    while *acc >= 1.0 {
                        *acc -= 1.0;
                        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let old = SystemTime::now() - Duration::from_secs(7200);
                        let old_ms = old.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
                        records.push(match stream.as_str() {
                            "old_eu1" => (main.clone(), 0, deletion("eu1", n), Some(old_ms)),
                            "poison" => (main.clone(), 5, format!("not json {n}").into_bytes(), None),
                            "skipped" => (
                                main.clone(),
                                6,
                                format!(r#"{{"type":"user-created","region":"eu1","identity":"new-{n}"}}"#)
                                    .into_bytes(),
                                None,
                            ),
                            "lag" => {
                                let (id, payload) = lag_event(n, 0);
                                lag_ids.lock().unwrap().push(id);
                                (lag_topic.clone(), 0, payload, None)
                            }
                            region => (main.clone(), partition_of(region), deletion(region, n), None),
                        });
                    }
                }
                let sends: Vec<_> = records
                    .iter()
                    .map(|(topic, partition, payload, ts)| {
                        let mut r = FutureRecord::<[u8], [u8]>::to(topic)
                            .payload(&payload[..])
                            .partition(*partition);
                        if let Some(ts) = ts {
                            r = r.timestamp(*ts);
                        }
                        producer.send(r, Duration::from_secs(10))
                    })
                    .collect();
                for s in futures::future::join_all(sends).await {
                    if let Err((e, _)) = s {
                        eprintln!("produce failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        t
    }

    fn plan(&self, f: impl FnOnce(&mut Plan)) {
        f(&mut self.plan.lock().unwrap());
    }

    async fn send_all(&self, topic: &str, partition: i32, payloads: &[Vec<u8>]) {
        for chunk in payloads.chunks(500) {
            let sends: Vec<_> = chunk
                .iter()
                .map(|p| {
                    self.producer.send(
                        FutureRecord::<[u8], [u8]>::to(topic)
                            .payload(&p[..])
                            .partition(partition),
                        Duration::from_secs(10),
                    )
                })
                .collect();
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| e).expect("produce");
            }
        }
    }

    async fn send(&self, topic: &str, partition: i32, payload: &[u8]) {
        self.producer
            .send(
                FutureRecord::<[u8], [u8]>::to(topic)
                    .payload(payload)
                    .partition(partition),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    fn next(&self) -> u64 {
        self.counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------- the test

async fn fake(region: &str, latency: Duration) -> FakeCleverTap {
    FakeCleverTap::start(FakeApiConfig {
        accounts: vec![FakeAccount::new(account_id(region), passcode(region))],
        latency,
        ..FakeApiConfig::default()
    })
    .await
    .expect("fake api")
}

fn region_toml(region: &str, endpoint: &str) -> String {
    format!(
        "[regions.{region}]\naccount_id = \"{}\"\npasscode = \"{}\"\nendpoint = \"{endpoint}\"\n",
        account_id(region),
        passcode(region)
    )
}

#[allow(clippy::too_many_arguments)]
fn daemon_toml(
    brokers: &str,
    topic: &str,
    group: &str,
    port: u16,
    regions: &str,
    extra: &str,
) -> String {
    let base = format!(
        r#"
[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
dlq_topic = "{topic}.dlq"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"statistics.interval.ms" = "1000"
[batch]
max_ids = 100
linger_ms = 50
[api]
timeout_ms = 3000
max_concurrency = 4
retry_initial_ms = 50
retry_max_ms = 1000
auth_retry_ms = 500
[pipeline]
commit_interval_ms = 250
max_events_in_memory = 50000
shutdown_timeout_ms = 5000
[server]
listen = "127.0.0.1:{port}"
{regions}"#
    );
    merge_toml(&base, extra)
}

fn scaled_rules(dir: &Path) -> PathBuf {
    let out = dir.join("alerts.scaled.yaml");
    let status = Command::new("python3")
        .arg(repo_path("deploy/prometheus/scale_rules.py"))
        .args(["--factor", &TIME_FACTOR.to_string()])
        .arg(repo_path(ALERTS))
        .arg(&out)
        .status()
        .expect("python3 runs deploy/prometheus/scale_rules.py");
    assert!(status.success(), "scale_rules.py failed");
    // The check refuses a copy that differs in anything but durations.
    let scaled = std::fs::read_to_string(&out).unwrap();
    assert_ne!(scaled, read(ALERTS));
    let tampered = dir.join("tampered.yaml");
    std::fs::write(&tampered, scaled.replacen("> 0.1", "> 0.5", 1)).unwrap();
    let refused = Command::new("python3")
        .arg(repo_path("deploy/prometheus/scale_rules.py"))
        .args(["--factor", &TIME_FACTOR.to_string(), "--check"])
        .arg(repo_path(ALERTS))
        .arg(&tampered)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !refused.success(),
        "the check must refuse a changed threshold"
    );
    out
}

/// Grafana's variables, as the dashboard check and render_panels.py replace them.
fn grafana_expr(expr: &str, range_secs: f64) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("$__range", &format!("{}s", range_secs.ceil() as u64))
        .replace("$region", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_fire_against_live_daemons_in_a_real_prometheus() {
    let Some(prometheus_bin) = require_tool("prometheus", SKIP_VAR) else {
        return;
    };
    let python_ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: python3 with PyYAML is missing and {SKIP_VAR}=1: this test did not run"
            );
            return;
        }
        panic!("python3 with PyYAML is needed (apt-get install python3-yaml), or set {SKIP_VAR}=1");
    }
    let test_started = Instant::now();
    let run_start = now();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live_prometheus");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let keep = std::env::var("LIVE_PROMETHEUS_KEEP").as_deref() == Ok("1");
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path();
    let data = if keep {
        out_dir.join("data")
    } else {
        dir.join("data")
    };
    let rules = scaled_rules(dir);

    // Kafka: the main topic (a partition per stream) and the lag topic.
    let kafka = Kafka::new();
    let main = unique("live-main");
    let lag_topic = unique("live-lag");
    kafka.topic(&main, MAIN_PARTITIONS);
    kafka.topic(&format!("{main}.dlq"), 1);
    kafka.topic(&lag_topic, 1);
    kafka.topic(&format!("{lag_topic}.dlq"), 1);

    // One fake CleverTap per region; sg1 points at a closed port.
    let eu1 = fake("eu1", Duration::ZERO).await;
    let in1 = fake("in1", Duration::ZERO).await;
    let us1 = fake("us1", Duration::ZERO).await;
    let aps3 = fake("aps3", Duration::ZERO).await;
    let lag1 = fake("lag1", Duration::ZERO).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let regions1 = [
        region_toml("eu1", &eu1.endpoint()),
        region_toml("in1", &in1.endpoint()),
        region_toml("us1", &us1.endpoint()),
        region_toml("sg1", &closed),
        region_toml("aps3", &aps3.endpoint()),
    ]
    .concat();

    // Daemon 1 (main topic, five regions); daemon 2 (lag topic, one slow
    // region, little memory); daemon 3 (started in B, no Kafka).
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut d1 = Daemon::start(
        "d1",
        dir,
        &daemon_toml(
            &kafka.bootstrap,
            &main,
            &unique("live-g1"),
            p1,
            &regions1,
            "",
        ),
        p1,
    );
    let group2 = unique("live-g2");
    kafka
        .cluster
        .topic_error(
            &format!("{lag_topic}.dlq"),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let mut d2 = Daemon::start(
        "d2",
        dir,
        &daemon_toml(
            &kafka.bootstrap,
            &lag_topic,
            &group2,
            p2,
            &region_toml("lag1", &lag1.endpoint()),
            "[batch]\nmax_ids = 10\n[api]\nmax_concurrency = 1\ntimeout_ms = 15000\n[pipeline]\nmax_events_in_memory = 200",
        ),
        p2,
    );
    let client = http_client();
    d1.wait_metrics(&client, Duration::from_secs(60)).await;
    d2.wait_metrics(&client, Duration::from_secs(60)).await;

    let traffic = Traffic::start(&kafka, &main, &lag_topic);
    traffic.plan(|p| {
        p.regions = vec!["eu1", "in1", "us1", "aps3"];
        p.per_region = 2.0;
        p.lag = 2.0;
    });
    // Both consumers reach Kafka before Prometheus looks.
    for d in [&mut d1, &mut d2] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = d.wait_metrics(&client, Duration::from_secs(10)).await;
            if metric(&text, "clevertap_deleter_kafka_connected") == 1.0
                && metric(&text, "clevertap_deleter_partitions_assigned") >= 1.0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never connected:\n{}",
                d.name,
                d.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut prometheus = Prometheus::start(&prometheus_bin, dir, &data);
    prometheus.set_targets(&[d1.target(), d2.target()]);
    prometheus.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while prometheus
        .value(r#"sum(up{job="clevertap-deleter"})"#)
        .await
        .unwrap_or(0.0)
        < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped both daemons:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rule_count = read(ALERTS).matches("- alert:").count();
    prometheus.load_rules(&rules, rule_count).await;
    let watch = Watch::start(prometheus.base.clone());
    let instance1 = d1.target();
    let instance2 = d2.target();
    let instance3 = format!("127.0.0.1:{p3}");
    let mut report: Vec<Expect> = Vec::new();
    let mut phases: Vec<(String, f64)> = vec![("start".into(), run_start)];

    // ------------------------------------------------------------ A: healthy
    let t_a = now();
    phases.push(("A healthy".into(), t_a));
    // Warm-up: both targets up, every rule evaluated, deletions in every
    // region of the healthy traffic seen by Prometheus.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let up = prometheus
            .value(r#"sum(up{job="clevertap-deleter"})"#)
            .await
            .unwrap_or(0.0);
        let regions_deleting = prometheus
            .query("sum by (region) (increase(clevertap_deleter_ids_deleted_total[10s])) > 0")
            .await
            .len();
        let rules = prometheus.api("/api/v1/rules", &[]).await;
        let evaluated = rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            })
            .count();
        if up == 2.0 && regions_deleting == 5 && evaluated == rule_count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no healthy start: up {up}, {regions_deleting} regions deleting, {evaluated} rules evaluated\nd1:\n{}\nd2:\n{}\nprometheus:\n{}",
            d1.log_tail(),
            d2.log_tail(),
            prometheus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Observed for 20 s: nothing pending, nothing firing, while the rules'
    // inputs show a live system (requests answered 200 in every region, lag
    // series of both topics, a small oldest-event age).
    let healthy_from = now();
    let polls_before = watch.polls();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        watch.polls() >= polls_before + 20,
        "the alert watch polls Prometheus"
    );
    // Before the first scrapes, `absent(up == 1)` is true for a moment:
    // pending during the warm-up is reported, never firing.
    let seen = watch.all();
    let (startup, during_healthy): (Vec<Seen>, Vec<Seen>) = seen.into_iter().partition(|s| {
        s.first_firing.is_none()
            && s.first_pending.is_some_and(|p| p < healthy_from)
            && !s.firing_now
    });
    let warmup_pending: Vec<String> = startup
        .iter()
        .map(|s| {
            format!(
                "{} pending at {:.1} s (warm-up)",
                s.name,
                s.first_pending.unwrap() - run_start
            )
        })
        .collect();
    eprintln!("healthy run: {warmup_pending:?}");
    assert!(
        during_healthy.is_empty(),
        "alerts during a healthy run (warm-up from {:.1} s, observed from {:.1} s): {during_healthy:#?}",
        t_a - run_start,
        healthy_from - run_start
    );
    let answered = prometheus
        .query(r#"sum by (region) (rate(clevertap_deleter_api_requests_total{status="200"}[15s])) > 0"#)
        .await;
    let regions: BTreeSet<&str> = answered
        .iter()
        .filter_map(|s| s.labels.get("region").map(String::as_str))
        .collect();
    assert_eq!(
        regions,
        BTreeSet::from(["aps3", "eu1", "in1", "lag1", "us1"]),
        "200 answers in every region of the healthy traffic"
    );
    for topic in [&main, &lag_topic] {
        let lag = prometheus
            .query(&format!(
                r#"clevertap_deleter_consumer_lag_messages{{topic="{topic}"}}"#
            ))
            .await;
        assert!(!lag.is_empty(), "lag series of {topic}");
    }
    let age = prometheus
        .value("max(clevertap_deleter_oldest_unfinished_event_age_seconds)")
        .await
        .expect("oldest age");
    assert!(age < 15.0, "healthy oldest unfinished age {age}");

    // ------------------------------------------------------------ B: faults
    let t_b = now();
    phases.push(("B faults".into(), t_b));
    let held_passcode = "rotated-somewhere-else";
    in1.set_passcode(&account_id("in1"), held_passcode);
    us1.set_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    });
    aps3.set_faults(Faults {
        too_many: 0.5,
        ..Faults::default()
    });
    lag1.set_latency(Duration::from_secs(8));
    traffic.plan(|p| {
        p.regions.push("sg1");
        p.old_eu1 = 1.0;
        p.not_json = 3.0;
        p.skipped = 50.0;
        p.lag = 20.0;
    });
    // A backlog for daemon 2 at once.
    // Daemon 2's dead-letter topic refuses writes (set before it started):
    // this poison event's dead letter is held, and its partition with it.
    traffic
        .send(&lag_topic, 0, b"not json: stuck behind its dead letter")
        .await;
    let burst: Vec<Vec<u8>> = (0..1500)
        .map(|_| {
            let (id, payload) = lag_event(traffic.next(), 0);
            traffic.lag_ids.lock().unwrap().push(id);
            payload
        })
        .collect();
    traffic.send_all(&lag_topic, 0, &burst).await;
    let t_d3 = now();
    let mut d3 = Daemon::start(
        "d3",
        dir,
        &daemon_toml(
            &format!("127.0.0.1:{}", free_port()),
            &unique("live-nowhere"),
            &unique("live-g3"),
            p3,
            &region_toml("eu1", &eu1.endpoint()),
            "",
        ),
        p3,
    );
    d3.wait_metrics(&client, Duration::from_secs(60)).await;
    prometheus.set_targets(&[d1.target(), d2.target(), d3.target()]);

    let mut expects = vec![
        Expect::new(
            "CleverTapDeleterRegionHeld",
            &[("region", "in1")],
            "wrong passcode for in1",
            45,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterApiErrors",
            &[("region", "us1")],
            "us1 answers 5xx",
            60,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterApiErrors",
            &[("region", "sg1")],
            "sg1's endpoint unreachable",
            60,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterThrottled",
            &[("region", "aps3")],
            "aps3 answers 429 to half the requests",
            60,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterDeadLetters",
            &[("reason", "not_json")],
            "poison events (not_json, 3/s)",
            30,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterDeadLetterRateHigh",
            &[],
            "poison events, ~4 % of the consumed ones",
            60,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterOldestEventStuck",
            &[],
            "in1 held, us1 5xx, sg1 unreachable: events wait",
            60,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterOldestEventStuckCritical",
            &[],
            "in1 held, us1 5xx, sg1 unreachable: events wait",
            110,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterSlowDeletions",
            &[],
            "eu1 events with Kafka timestamps 2 h old",
            110,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterConsumerLagGrowing",
            &[("topic", lag_topic.as_str())],
            "daemon 2: API slow (8 s a request), 1,500 + 20/s events",
            60,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterPausedLong",
            &[("instance", instance2.as_str())],
            "daemon 2 holds max_events_in_memory behind the slow API",
            80,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterKafkaWritesHeld",
            &[("writer", "dead_letter")],
            "daemon 2's dead-letter topic refuses writes (TOPIC_AUTHORIZATION_FAILED): its partition is stuck behind one poison event",
            45,
        )
        .from(t_b),
        Expect::new(
            "CleverTapDeleterNotReady",
            &[("instance", instance3.as_str())],
            "daemon 3's brokers do not exist",
            45,
        )
        .from(t_d3),
    ];
    let context = || String::new();
    let mut unknown_region_sent = false;
    let mut commit_errors_until: Option<f64> = None;
    let mut last_commit_push = 0.0;
    let mut poison_stopped = false;
    let mut held_checked = false;
    let mut stuck_checked = false;
    let phase_b_deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let el = now() - t_b;
        if el >= 5.0 && !unknown_region_sent {
            unknown_region_sent = true;
            traffic
                .send(
                    &main,
                    partition_of("poison"),
                    br#"{"type":"user-deleted","region":"zz9","identity":"nowhere-1"}"#,
                )
                .await;
            expects.push(Expect::new(
                "CleverTapDeleterDeadLetters",
                &[("reason", "unknown_region")],
                "the first event of an unknown region (one dead letter of a new reason)",
                30,
            ));
        }
        if el >= 8.0 && commit_errors_until.is_none() {
            commit_errors_until = Some(now() + 25.0);
            expects.push(Expect::new(
                "CleverTapDeleterCommitFailures",
                &[],
                "the broker refuses offset commits for 25 s",
                60,
            ));
        }
        if let Some(until) = commit_errors_until {
            if now() < until && now() - last_commit_push >= 0.5 {
                last_commit_push = now();
                kafka.cluster.request_errors(
                    RDKafkaApiKey::OffsetCommit,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 5],
                );
            } else if now() >= until && last_commit_push > 0.0 {
                kafka
                    .cluster
                    .clear_request_errors(RDKafkaApiKey::OffsetCommit);
                last_commit_push = 0.0;
            }
        }
        if el >= 30.0 && !poison_stopped {
            poison_stopped = true;
            traffic.plan(|p| p.not_json = 0.0);
        }
        let mut all = true;
        for e in expects.iter_mut() {
            all &= e.check(&watch, &context);
        }
        // While in1 is held: /readyz says so, and eu1 keeps deleting.
        if !held_checked && expects[0].got.is_some() {
            held_checked = true;
            let r = client.get(d1.url("/readyz")).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("region in1: held"), "{body}");
            assert!(!body.contains(held_passcode) && !body.contains(&passcode("in1")));
            let eu1_deleting = prometheus
                .value(r#"sum(increase(clevertap_deleter_ids_deleted_total{region="eu1"}[10s]))"#)
                .await
                .unwrap_or(0.0);
            assert!(eu1_deleting > 0.0, "eu1 keeps deleting while in1 is held");
        }
        // The stuck partition shows in offsets_held_back.
        if !stuck_checked {
            let held = prometheus
                .value(&format!(
                    r#"max(clevertap_deleter_offsets_held_back{{topic="{lag_topic}",partition="0"}})"#
                ))
                .await
                .unwrap_or(0.0);
            stuck_checked = held >= 10.0;
        }
        if all && poison_stopped && commit_errors_until.is_some_and(|u| now() > u) && stuck_checked
        {
            break;
        }
        assert!(
            Instant::now() < phase_b_deadline,
            "phase B did not complete (stuck partition seen: {stuck_checked})\nd1:\n{}",
            d1.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Per-region and per-instance alerts fired only where the fault was.
    let fired = watch.fired_since(t_b - 1.0);
    let fired_for = |alert: &str, label: &str| -> BTreeSet<String> {
        fired
            .iter()
            .filter(|s| s.name == alert)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    };
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        fired_for("CleverTapDeleterRegionHeld", "region"),
        set(&["in1"])
    );
    assert_eq!(
        fired_for("CleverTapDeleterThrottled", "region"),
        set(&["aps3"])
    );
    assert_eq!(
        fired_for("CleverTapDeleterApiErrors", "region"),
        set(&["sg1", "us1"])
    );
    assert_eq!(
        fired_for("CleverTapDeleterDeadLetters", "reason"),
        set(&["not_json", "unknown_region"])
    );
    assert_eq!(
        fired_for("CleverTapDeleterConsumerLagGrowing", "topic"),
        set(&[lag_topic.as_str()])
    );
    assert_eq!(
        fired_for("CleverTapDeleterPausedLong", "instance"),
        set(&[instance2.as_str()])
    );
    assert_eq!(
        fired_for("CleverTapDeleterKafkaWritesHeld", "writer"),
        set(&["dead_letter"])
    );
    assert_eq!(
        fired_for("CleverTapDeleterNotReady", "instance"),
        set(&[instance3.as_str()])
    );
    for absent in [
        "CleverTapDeleterDown",
        "CleverTapDeleterAbsent",
        "CleverTapDeleterNoDeletions",
        "CleverTapDeleterRecordsLost",
    ] {
        assert!(
            fired_for(absent, "alertname").is_empty() && !fired.iter().any(|s| s.name == absent),
            "{absent} fired in phase B"
        );
    }
    report.append(&mut expects);

    // ------------------------------------------------------------ C: nothing deleted
    let t_c = now();
    phases.push(("C nothing deleted".into(), t_c));
    eu1.set_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    });
    aps3.set_faults(Faults {
        too_many: 1.0,
        ..Faults::default()
    });
    // Requests already waiting in the slow fake fail too.
    lag1.fail_ids(traffic.lag_ids.lock().unwrap().clone(), 503);
    lag1.set_latency(Duration::ZERO);
    traffic.plan(|p| {
        p.old_eu1 = 0.0;
        p.lag = 0.0;
    });
    let mut expects = vec![
        Expect::new("CleverTapDeleterNoDeletions", &[], "no region can delete (eu1 5xx, aps3 429 only, lag1 5xx, in1 held, us1 5xx, sg1 unreachable) while events arrive", 120),
    ];
    let mut skipped = Expect::new(
        "CleverTapDeleterMostlySkipped",
        &[],
        "50 events/s of another type since B (~75 % of the consumed)",
        200,
    );
    skipped.since = t_b;
    expects.push(skipped);
    // Retention removes unread records of the lag topic (the mock keeps 5 MiB).
    let big: Vec<Vec<u8>> = (0..7000)
        .map(|_| lag_event(traffic.next(), 1000).1)
        .collect();
    traffic.send_all(&lag_topic, 0, &big).await;
    let (low, _) = tokio::task::block_in_place(|| kafka.watermarks(&lag_topic, 0));
    let committed2 = tokio::task::block_in_place(|| kafka.committed(&group2, &lag_topic, 1))[0];
    assert!(
        low > committed2 + 200,
        "retention removed unread records: log start {low}, daemon 2 committed {committed2}"
    );
    let phase_c_deadline = Instant::now() + Duration::from_secs(220);
    loop {
        let mut all = true;
        for e in expects.iter_mut() {
            all &= e.check(&watch, &context);
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < phase_c_deadline,
            "phase C did not complete"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.append(&mut expects);

    // ------------------------------------------------------------ D: recovery
    let t_d = now();
    phases.push(("D recovery".into(), t_d));
    for api in [&eu1, &us1, &aps3] {
        api.set_faults(Faults::default());
    }
    in1.set_passcode(&account_id("in1"), &passcode("in1"));
    lag1.clear_failing_ids();
    kafka
        .cluster
        .topic_error(
            &format!("{lag_topic}.dlq"),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
        )
        .unwrap();
    traffic.plan(|p| {
        p.skipped = 0.0;
        p.regions.retain(|r| *r != "sg1");
    });
    let mut expects = vec![Expect::new(
        "CleverTapDeleterRecordsLost",
        &[("topic", lag_topic.as_str()), ("partition", "0")],
        "daemon 2 resumes and reads past records retention removed",
        90,
    )];
    let deadline = Instant::now() + Duration::from_secs(100);
    let mut released = false;
    loop {
        let done = expects[0].check(&watch, &context);
        // The held region is released by the daemon's probe: its alert ends.
        released = released
            || !watch
                .all()
                .iter()
                .any(|s| s.name == "CleverTapDeleterRegionHeld" && s.firing_now);
        if done && released {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "phase D: records lost {done}, in1 released {released}\nd2:\n{}",
            d2.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.append(&mut expects);

    // ------------------------------------------------------------ E: gone
    let t_e = now();
    phases.push(("E killed".into(), t_e));
    traffic.plan(|p| *p = Plan::default());
    d1.kill();
    d2.kill();
    d3.kill();
    let mut expects = vec![
        Expect::new(
            "CleverTapDeleterAbsent",
            &[],
            "every daemon killed (/metrics gone)",
            45,
        ),
        Expect::new(
            "CleverTapDeleterDown",
            &[("instance", instance1.as_str())],
            "daemon 1 killed",
            45,
        ),
        Expect::new(
            "CleverTapDeleterDown",
            &[("instance", instance2.as_str())],
            "daemon 2 killed",
            45,
        ),
        Expect::new(
            "CleverTapDeleterDown",
            &[("instance", instance3.as_str())],
            "daemon 3 killed",
            45,
        ),
    ];
    loop {
        let mut all = true;
        for e in expects.iter_mut() {
            all &= e.check(&watch, &context);
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.append(&mut expects);
    let run_end = now();
    phases.push(("end".into(), run_end));

    // Every rule of the file fired at least once.
    let fired_names: BTreeSet<String> = report.iter().map(|e| e.alert.to_string()).collect();
    let rule_names: BTreeSet<String> = read(ALERTS)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|s| s.trim().to_string())
        .collect();
    let never: Vec<&String> = rule_names.difference(&fired_names).collect();
    assert!(never.is_empty(), "alerts never made to fire: {never:?}");

    // ------------------------------------------------------------ the dashboard
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let range = run_end - run_start;
    let mut empty = Vec::new();
    let mut panel_lines = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let raw = t["expr"].as_str().unwrap_or("");
            // A query of another exporter's metrics (the container limit from
            // kube-state-metrics) has no data here; its panel must say so.
            let names = promql_metric_names(raw);
            let external: Vec<&(&str, &str)> = EXTERNAL_METRICS
                .iter()
                .filter(|(n, _)| *n != "up" && names.contains(*n))
                .collect();
            if !external.is_empty() && external.len() == names.len() {
                let description = p["description"].as_str().unwrap_or("");
                for (name, from) in external {
                    let provider = from.split(' ').next().unwrap();
                    assert!(
                        description.contains(name) && description.contains(provider),
                        "{title}: uses {name} from {from}; the panel's description must say so"
                    );
                }
                panel_lines.push(format!(
                    "{title} | {} | external ({raw}), documented",
                    t["legendFormat"].as_str().unwrap_or("")
                ));
                continue;
            }
            let expr = grafana_expr(raw, range);
            let result = prometheus.query_range(&expr, run_start, run_end, 1.0).await;
            let points = result
                .iter()
                .map(|s| s.values.iter().filter(|(_, v)| v.is_finite()).count())
                .sum::<usize>();
            let nonzero = result
                .iter()
                .any(|s| s.values.iter().any(|(_, v)| v.is_finite() && *v != 0.0));
            panel_lines.push(format!(
                "{title} | {} | {} series, {points} points{}",
                t["legendFormat"].as_str().unwrap_or(""),
                result.len(),
                if nonzero { "" } else { ", all 0" }
            ));
            if points == 0 {
                empty.push(format!("{title}: {expr}"));
            }
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data after the faulted run:\n{}",
        empty.join("\n")
    );

    // ------------------------------------------------------------ report
    let mut text = String::from("alert | labels | fault | pending after s | firing after s\n");
    for e in &report {
        let (pending, firing) = e.got.unwrap();
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!(
            "{} | {} | {} | {} | {:.1}\n",
            e.alert,
            labels.join(","),
            e.fault,
            pending.map_or("-".into(), |p| format!("{p:.1}")),
            firing
        ));
    }
    text.push_str(&format!(
        "\npending during the warm-up of the healthy run: {warmup_pending:?}\n"
    ));
    text.push_str("\nphases (s from start):\n");
    for (name, at) in &phases {
        text.push_str(&format!("{name}: {:.1}\n", at - run_start));
    }
    text.push_str("\ndashboard queries over the run:\n");
    text.push_str(&panel_lines.join("\n"));
    text.push_str(&format!(
        "\n\ntest took {:.0} s\n",
        test_started.elapsed().as_secs_f64()
    ));
    eprintln!("{text}");
    std::fs::write(out_dir.join("report.txt"), &text).unwrap();
    std::fs::write(
        out_dir.join("run.json"),
        serde_json::json!({
            "start": run_start,
            "end": run_end,
            "phases": phases,
            "prometheus_data": data,
        })
        .to_string(),
    )
    .unwrap();
    prometheus.stop();
}
