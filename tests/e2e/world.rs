//! A scenario's world: its broker, topic and group, how its daemons are
//! configured (group protocol included), the producer of its events, and
//! the helpers every scenario uses (waiting on a condition while watching
//! the daemons, readiness, figures).
// Shared by several test binaries; each uses a part.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clevertap_deleter::testkit::synth::{generate, SynthEvent, SynthSpec};

use super::broker::{self, Broker, Produced};
use super::check::{CommitSampler, Expected};
use super::daemon::{self, config_toml, daemon_port, metric_sum, Api, Daemon};
use crate::common::{self, unique};

/// One scenario at a time: they share two cores and measure time and memory.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The consumer group protocol the daemons use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The classic protocol (JoinGroup/SyncGroup, client-side assignors).
    Classic,
    /// KIP-848 (`group.protocol = "consumer"`): the broker assigns, no
    /// global barrier; `session.timeout.ms`, `heartbeat.interval.ms` and
    /// `partition.assignment.strategy` are broker-side and librdkafka
    /// refuses them.
    Consumer,
}

/// librdkafka properties that `group.protocol=consumer` refuses.
pub const CLASSIC_ONLY: [&str; 4] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
    "group.protocol.type",
];

/// The start of a scenario on the shared broker: the lock that runs
/// scenarios one at a time and a world with a fresh topic. `None` when it
/// cannot run and skipping is allowed (then it said so).
pub fn begin(name: &str, partitions: i32) -> Option<(MutexGuard<'static, ()>, World)> {
    let serial = serial();
    let broker = broker::shared()?;
    Some((serial, World::new(broker, name, partitions)))
}

/// A scenario's world: its broker, topic and group names, a runtime for the
/// producer.
pub struct World {
    pub broker: Broker,
    pub topic: String,
    pub group: String,
    pub partitions: i32,
    pub protocol: Protocol,
    rt: tokio::runtime::Runtime,
}

impl World {
    pub fn new(broker: Broker, name: &str, partitions: i32) -> World {
        let topic = unique(&format!("e2e-{name}"));
        broker.create_topic(&topic, partitions);
        broker.create_topic(&format!("{topic}.dlq"), 1);
        World {
            broker,
            partitions,
            protocol: Protocol::Classic,
            group: format!("{topic}-group"),
            topic,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    pub fn with_protocol(mut self, protocol: Protocol) -> World {
        self.protocol = protocol;
        self
    }

    /// Synthetic events: three regions, 20 % repeats, identity and guid,
    /// arrays, 2 % poison.
    pub fn produce(&self, count: usize, seed: u64) -> (Produced, Duration) {
        let events = generate(&SynthSpec {
            count,
            seed,
            ..SynthSpec::default()
        });
        self.produce_events(events, 0)
    }

    /// Produces `events`, round robin from partition `first % partitions`.
    pub fn produce_events(&self, events: Vec<SynthEvent>, first: usize) -> (Produced, Duration) {
        let started = Instant::now();
        let produced = self.rt.block_on(broker::produce(
            &self.broker,
            &self.topic,
            self.partitions,
            first,
            events,
        ));
        (produced, started.elapsed())
    }

    /// The daemon's configuration for this world, `extra` laid over it, the
    /// group protocol applied last.
    pub fn config(&self, api: &Api, port: u16, extra: &str) -> String {
        let base = config_toml(
            &self.broker.bootstrap,
            &self.topic,
            &self.group,
            &api.endpoint(),
            port,
            "",
        );
        let merged = common::merge_toml(&base, extra);
        match self.protocol {
            Protocol::Classic => merged,
            Protocol::Consumer => consumer_protocol(&merged),
        }
    }

    /// Starts a daemon. Debugging aids: `E2E_DAEMON_RUST_LOG` becomes its
    /// RUST_LOG (e.g. `info,librdkafka=debug`), `E2E_KAFKA_DEBUG` its
    /// librdkafka `debug` property (e.g. `cgrp`).
    pub fn daemon(&self, name: &str, api: &Api, extra: &str) -> Daemon {
        self.daemon_with(name, api, extra, &[])
    }

    pub fn daemon_with(&self, name: &str, api: &Api, extra: &str, envs: &[(&str, &str)]) -> Daemon {
        let port = daemon_port();
        let config = self.config(api, port, extra);
        self.start_daemon(name, config, port, envs)
    }

    /// Starts a daemon with a configuration made by the caller (whose
    /// `server.listen` port must be `port`).
    pub fn start_daemon(
        &self,
        name: &str,
        mut config: String,
        port: u16,
        envs: &[(&str, &str)],
    ) -> Daemon {
        if let Ok(debug) = std::env::var("E2E_KAFKA_DEBUG") {
            config = common::merge_toml(
                &config,
                &format!("[kafka.properties]\n\"debug\" = \"{debug}\"\n"),
            );
        }
        let rust_log = std::env::var("E2E_DAEMON_RUST_LOG").ok();
        let mut envs = envs.to_vec();
        envs.extend(rust_log.iter().map(|v| ("RUST_LOG", v.as_str())));
        let mut d = Daemon::start(name, &config, port, &envs);
        d.wait_serving();
        d
    }

    /// Watches the group's committed offsets (see `CommitSampler`).
    pub fn sampler(
        &self,
        expected: &Arc<Expected>,
        api: &Api,
        interval: Duration,
    ) -> CommitSampler {
        CommitSampler::start(
            &self.broker,
            expected.clone(),
            &self.group,
            api.incarnations(),
            interval,
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A failed scenario keeps the broker's files (a shared cluster is
        // removed only when the test process ends).
        if std::thread::panicking() {
            if let Some(cluster) = &self.broker.cluster {
                cluster.keep();
                eprintln!(
                    "e2e: the Kafka cluster's files (server.log per node) will be kept in {}",
                    cluster.dir.display()
                );
            }
        }
    }
}

/// `toml` with `group.protocol = "consumer"` and without the properties
/// that protocol refuses.
pub fn consumer_protocol(toml: &str) -> String {
    let mut table: toml::Table = toml.parse().expect("daemon TOML");
    let kafka = table
        .entry("kafka")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[kafka]");
    let props = kafka
        .entry("properties")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[kafka.properties]");
    for key in CLASSIC_ONLY {
        props.remove(key);
    }
    props.insert(
        "group.protocol".into(),
        toml::Value::String("consumer".into()),
    );
    toml::to_string(&table).expect("TOML")
}

pub fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Polls until `done` or panics after `timeout`, checking the daemons are alive.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    daemons: &mut [&mut Daemon],
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        for d in daemons.iter_mut() {
            d.assert_running();
        }
        if started.elapsed() >= timeout {
            let logs: String = daemons.iter().map(|d| d.log_tail(40)).collect();
            panic!("timed out after {timeout:?} waiting for: {what}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `session.timeout.ms` of the daemons under the classic protocol (see
/// daemon::config_toml); under KIP-848 the local cluster's
/// `group.consumer.session.timeout.ms` is 10 s.
pub const SESSION_TIMEOUT_MS: u64 = 6_000;

/// Sum of the committed offsets (-1 counts as 0): events behind the group.
pub fn committed_events(committed: &[i64]) -> i64 {
    committed.iter().map(|&c| c.max(0)).sum()
}

/// A daemon's counters worth reporting when it stops.
pub fn replica_figures(name: &str, metrics: &str) -> String {
    let m = |series: &str| common::metric(metrics, series);
    let mut out = format!(
        "{name}: consumed {}, assign {}, revoke {}, commits ok {} failed {}, late acks dropped {}",
        metric_sum(metrics, "clevertap_deleter_events_consumed_total"),
        m("clevertap_deleter_rebalances_total{kind=\"assign\"}"),
        m("clevertap_deleter_rebalances_total{kind=\"revoke\"}"),
        m("clevertap_deleter_commits_total{result=\"success\"}"),
        m("clevertap_deleter_commits_total{result=\"failure\"}"),
        m("clevertap_deleter_late_acks_dropped_total"),
    );
    if daemon::has_metric(metrics, "clevertap_deleter_redelivered_events_total") {
        out.push_str(&format!(
            ", redelivered {}",
            metric_sum(metrics, "clevertap_deleter_redelivered_events_total")
        ));
    }
    out
}

/// The /readyz status of the daemon serving on `port`.
pub fn ready(port: u16) -> Option<u16> {
    daemon::http_get(port, "/readyz").map(|(s, _)| s)
}

/// Partitions a daemon owns now (its `partitions_assigned` gauge).
pub fn assigned(port: u16) -> f64 {
    let text = daemon::http_get(port, "/metrics").map(|(_, body)| body);
    common::metric(
        &text.unwrap_or_default(),
        "clevertap_deleter_partitions_assigned",
    )
}

/// Polls `/readyz` of some daemons in the background and records every
/// answer with its time (seconds since the epoch), to tell afterwards when
/// each was ready.
pub struct ReadyWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<ReadyAnswer>>>,
}

impl ReadyWatch {
    pub fn start(ports: Vec<u16>, interval: Duration) -> ReadyWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for &port in &ports {
                        seen.push((super::cgrp::now_secs(), port, ready(port)));
                    }
                    std::thread::sleep(interval);
                }
                seen
            })
        };
        ReadyWatch {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Readiness {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Readiness(
            self.thread
                .take()
                .expect("running")
                .join()
                .expect("readiness thread"),
        )
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One answer a `ReadyWatch` saw: when (seconds since the epoch), which
/// port, and the HTTP status if any.
pub type ReadyAnswer = (f64, u16, Option<u16>);

/// What a `ReadyWatch` saw.
pub struct Readiness(pub Vec<ReadyAnswer>);

impl Readiness {
    /// Answers per status between `from` and `to` (seconds since the epoch).
    pub fn between(&self, from: f64, to: f64) -> std::collections::BTreeMap<Option<u16>, usize> {
        let mut out = std::collections::BTreeMap::new();
        for (t, _, s) in &self.0 {
            if *t >= from && *t <= to {
                *out.entry(*s).or_insert(0) += 1;
            }
        }
        out
    }

    /// The first time after `from` that `port` answered `status`.
    pub fn first(&self, port: u16, status: u16, from: f64) -> Option<f64> {
        self.0
            .iter()
            .find(|(t, p, s)| *t >= from && *p == port && *s == Some(status))
            .map(|(t, _, _)| *t)
    }
}
