//! Shared harness: an in-process Kafka (rdkafka's MockCluster), the fake
//! CleverTap API, and helpers to read what the group committed and what went
//! to the dead-letter topic.
#![allow(dead_code)]

pub mod dead_letters;
pub mod files;
pub mod process;
#[allow(unused_imports)]
pub use dead_letters::*;
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use process::*;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clevertap_deleter::app::pipeline::{self, PipelineError, RunSummary};
use clevertap_deleter::clevertap::api::DeleteApi;
use clevertap_deleter::config::{self, Config};
use clevertap_deleter::domain::ids::IdKind;
use clevertap_deleter::ops::health::Health;
use clevertap_deleter::ops::metrics::Metrics;
use clevertap_deleter::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap};
use clevertap_deleter::testkit::synth::{ExpectedDeletion, SynthEvent};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

pub const REGIONS: [&str; 3] = ["eu1", "in1", "us1"];

pub fn account_id(region: &str) -> String {
    format!("ACC-{}", region.to_uppercase())
}

pub fn passcode(region: &str) -> String {
    format!("pass-{region}-s3cr3t")
}

pub struct Kafka {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub bootstrap: String,
}

impl Kafka {
    pub fn new() -> Self {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let bootstrap = cluster.bootstrap_servers();
        Kafka { cluster, bootstrap }
    }

    pub fn topic(&self, name: &str, partitions: i32) {
        self.cluster
            .create_topic(name, partitions, 1)
            .expect("create topic");
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "5")
            // Tests produce oversized records on purpose.
            .set("message.max.bytes", "10000000")
            .create()
            .expect("producer")
    }

    /// Produces events, with their headers (CloudEvents); `partition_of`
    /// picks each one's partition.
    pub async fn produce(
        &self,
        topic: &str,
        events: &[SynthEvent],
        partition_of: impl Fn(usize) -> i32,
    ) {
        let producer = self.producer();
        let sends: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut record = FutureRecord::to(topic)
                    .key(e.key.as_bytes())
                    .payload(&e.payload[..])
                    .partition(partition_of(i));
                if let Some(headers) = e.kafka_headers() {
                    record = record.headers(headers);
                }
                producer.send(record, Duration::from_secs(10))
            })
            .collect();
        for s in futures::future::join_all(sends).await {
            if let Err((e, _)) = s {
                panic!("produce: {e}");
            }
        }
    }

    /// Offsets committed by `group` for partitions 0..n (-1 when none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let offsets = {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(topic, p);
            }
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(5))
                .expect("committed offsets");
            let offsets: Vec<i64> = (0..partitions)
                .map(
                    |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    },
                )
                .collect();
            drop(committed);
            offsets
        };
        drop(consumer);
        offsets
    }

    /// The low and high watermarks of one partition.
    pub fn watermarks(&self, topic: &str, partition: i32) -> (i64, i64) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("consumer");
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .expect("watermarks")
    }

    /// Every record of partitions 0..n: reads until nothing came for a second.
    pub fn read_everything(&self, topic: &str, partitions: i32) -> Vec<Record> {
        self.read_records(
            topic,
            partitions,
            usize::MAX,
            Duration::from_secs(30),
            Some(Duration::from_secs(1)),
        )
    }

    /// Records of partitions 0..n, until `expect` are read or `timeout`.
    pub fn read_all(
        &self,
        topic: &str,
        partitions: i32,
        expect: usize,
        timeout: Duration,
    ) -> Vec<Record> {
        self.read_records(topic, partitions, expect, timeout, None)
    }

    fn read_records(
        &self,
        topic: &str,
        partitions: i32,
        expect: usize,
        timeout: Duration,
        idle: Option<Duration>,
    ) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&tpl).expect("assign");
        }
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut last = Instant::now();
        while out.len() < expect && Instant::now() < deadline {
            if idle.is_some_and(|idle| last.elapsed() >= idle) {
                break;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                last = Instant::now();
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).to_string(),
                        );
                    }
                }
                out.push(Record {
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().map(|p| p.to_vec()),
                    headers,
                });
            }
        }
        drop(consumer);
        out
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

pub async fn fake_api(max_concurrency: usize) -> FakeCleverTap {
    FakeCleverTap::start(FakeApiConfig {
        accounts: REGIONS
            .iter()
            .map(|r| FakeAccount {
                account_id: account_id(r),
                passcode: passcode(r),
            })
            .collect(),
        max_concurrency,
        ..FakeApiConfig::default()
    })
    .await
    .expect("fake api")
}

/// A configuration for the test: short timers so tests run fast.
pub fn config_toml(
    bootstrap: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    extra: &str,
) -> String {
    let mut regions = String::new();
    for r in REGIONS {
        regions.push_str(&format!(
            "[regions.{r}]\naccount_id = \"{}\"\npasscode = \"{}\"\nendpoint = \"{endpoint}\"\n",
            account_id(r),
            passcode(r)
        ));
    }
    let base = format!(
        r#"
[kafka]
brokers = "{bootstrap}"
topics = ["{topic}"]
group_id = "{group}"
dlq_topic = "{topic}.dlq"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[batch]
max_ids = 100
linger_ms = 30
[api]
timeout_ms = 2000
max_concurrency = 4
retry_initial_ms = 10
retry_max_ms = 200
auth_retry_ms = 200
[pipeline]
commit_interval_ms = 100
shutdown_timeout_ms = 10000
[server]
listen = "127.0.0.1:0"
{regions}"#
    );
    merge_toml(&base, extra)
}

/// Sum of every series of a metric family (all label values), e.g. all
/// reasons of dead_letters_total.
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Overlays `extra` (TOML tables) on `base`, table by table.
pub fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut base: toml::Table = base.parse().expect("base TOML");
    let extra: toml::Table = extra.parse().expect("extra TOML");
    merge(&mut base, extra);
    toml::to_string(&base).expect("TOML")
}

/// A running pipeline with a handle to stop it.
pub struct Running {
    pub metrics: Metrics,
    pub health: Health,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<RunSummary, PipelineError>>,
}

impl Running {
    pub async fn stop(mut self) -> Result<RunSummary, PipelineError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("pipeline stops within 60 s")
            .expect("pipeline task")
    }
}

pub fn start(toml: &str) -> Running {
    let cfg: Config = config::from_toml(toml).expect("valid test config");
    let api = clevertap_deleter::clevertap::api::client_for(&cfg).unwrap();
    start_with(cfg, api)
}

pub fn start_with(cfg: Config, api: Arc<dyn DeleteApi>) -> Running {
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pipeline::run(
        cfg,
        api,
        metrics.clone(),
        health.clone(),
        async move {
            let _ = stopped.await;
        },
        Default::default(),
    ));
    Running {
        metrics,
        health,
        stop: Some(stop),
        task,
    }
}

/// Waits until the pipeline ran `n` more commit ticks, seen through the
/// oldest-unfinished-age gauge that each tick refreshes (so only while some
/// event is unfinished). A commit a tick requested is carried out before the
/// consumer thread's next poll, well within the following tick: after two
/// ticks, the group shows whatever the first one would have committed.
pub async fn commit_ticks(running: &Running, n: usize) {
    let age = || {
        metric(
            &running.metrics.render(),
            "clevertap_deleter_oldest_unfinished_event_age_seconds",
        )
    };
    for _ in 0..n {
        let before = age();
        wait_for("a commit tick", Duration::from_secs(10), || {
            let now = age();
            async move { now > before }
        })
        .await;
    }
}

/// Polls `check` until it returns true, or panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a metric series in Prometheus text, e.g.
/// `metric(&text, "clevertap_deleter_events_finished_total{outcome=\"deleted\"}")`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Unique names so tests never share a group or topic.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `n` events with one identity each, `u0`, `u1`, ...
pub fn simple_events(n: usize, region_of: impl Fn(usize) -> &'static str) -> Vec<SynthEvent> {
    (0..n)
        .map(|i| {
            let region = region_of(i);
            SynthEvent {
                key: format!("k{i}"),
                headers: Vec::new(),
                payload: format!(
                    r#"{{"type":"user-deleted","region":"{region}","identity":"u{i}"}}"#
                )
                .into_bytes(),
                deletions: vec![ExpectedDeletion {
                    region: region.to_string(),
                    kind: IdKind::Identity,
                    id: format!("u{i}"),
                }],
                poison: None,
            }
        })
        .collect()
}

pub fn deleted_identity(
    api: &clevertap_deleter::testkit::fake_api::FakeCleverTap,
    region: &str,
    id: &str,
) -> bool {
    api.deletion_counts()
        .contains_key(&(account_id(region), IdKind::Identity, id.to_string()))
}

/// A mock cluster with a topic of `partitions` and its dead-letter topic,
/// a group name and a fake API.
pub struct Setup {
    pub kafka: Kafka,
    pub topic: String,
    pub group: String,
    pub api: clevertap_deleter::testkit::fake_api::FakeCleverTap,
}

pub async fn setup(partitions: i32, api_limit: usize) -> Setup {
    let kafka = Kafka::new();
    let topic = unique("t");
    kafka.topic(&topic, partitions);
    kafka.topic(&format!("{topic}.dlq"), 1);
    Setup {
        kafka,
        topic,
        group: unique("g"),
        api: fake_api(api_limit).await,
    }
}

impl Setup {
    pub fn toml(&self, extra: &str) -> String {
        config_toml(
            &self.kafka.bootstrap,
            &self.topic,
            &self.group,
            &self.api.endpoint(),
            extra,
        )
    }

    pub fn committed(&self, partitions: i32) -> Vec<i64> {
        self.kafka.committed(&self.group, &self.topic, partitions)
    }

    pub async fn wait_committed(&self, expected: Vec<i64>, timeout: Duration) {
        let n = expected.len() as i32;
        wait_for(&format!("committed offsets {expected:?}"), timeout, || {
            let c = self.committed(n);
            let ok = c == expected;
            async move { ok }
        })
        .await;
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp as the daemon
/// logs it (`2026-11-28T20:30:34.939721Z`).
pub fn epoch_secs(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3_600.0 + mm * 60.0 + ss)
}
