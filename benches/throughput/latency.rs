//! The latency row (issue #18 goal 7): at a steady 1,000 events/s with a
//! 50 ms API, p50/p99 from produce to the API call and to the commit; p99 to
//! the API call at most linger + 2 x API latency.
//!
//! The daemon reads a topic of its own against the fake API answering after
//! BENCH_LATENCY_MS. First one event per partition, until the group has
//! committed them all (the join, the first fetches and the first connections
//! to the API are not counted); then events at BENCH_LATENCY_RATE:
//! BENCH_LATENCY_WARMUP_SECS (5) of them not counted (a local-kafka broker
//! just started is slow at first: up to 1 s for its first seconds), then
//! BENCH_LATENCY_SECS (20) of them counted, each with the instant it was
//! handed to the producer (`linger.ms` 5, librdkafka's default, so its own
//! batching is counted) and, from the delivery report, its partition and
//! offset.
//! An event's API call is when the fake received the first request that
//! deleted its last id (`FakeCleverTap::first_deleted_at`); its commit is the
//! first reading of the group's committed offsets (every 10 ms, by a client
//! of this process) past its offset. With BENCH_LATENCY_REFERENCE=1, a
//! plain consumer in this process (the daemon's consumer settings, all
//! partitions assigned) reads the same events: produce -> read there is what
//! the broker and the machine add before the daemon. Off by default: its
//! fetches load the broker too, and on 2 cores local-kafka's JVM (over a
//! core already) then fell seconds behind (produce -> read p50 1 to 5 s, the
//! daemon's the same; without it, p50 about 40 ms).
//!
//! On librdkafka's mock cluster an empty fetch is answered only after the
//! consumer's `fetch.wait.max.ms` (500 ms by default), even when messages
//! arrive meanwhile (rdkafka_mock_handlers.c): there that wait, not the
//! daemon, sets the latency, and the row says so.
//! `BENCH_KAFKA_PROPS=fetch.wait.max.ms=10` shows the daemon's own latency on
//! the mock; a real broker answers a waiting fetch as soon as data arrives.
//! The figures are wall-clock times across three processes (the broker: the
//! mock's child process or local-kafka's JVM; the daemon; this bench): other
//! work on the machine shows in the tail, hence the worst of each second
//! printed under the row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clevertap_deleter::testkit::synth::{generate, SynthEvent, SynthSpec};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::measure::{committed_reader, cpu_seconds, env_or, free_port, status_mib, try_committed};
use super::report::{CaseResult, Latency};
use super::workload::REGIONS;
use super::{consumer_settings, daemon_config, fake, spawn_daemon};

/// How often the group's committed offsets are read.
const SAMPLE: Duration = Duration::from_millis(10);
/// How long to wait for the last event's commit once producing ended.
const DRAIN: Duration = Duration::from_secs(60);

/// Whether BENCH_WORKLOADS selects the latency row (unset: every row).
pub fn selected() -> bool {
    let chosen = std::env::var("BENCH_WORKLOADS").unwrap_or_default();
    chosen.is_empty() || chosen.split(',').any(|c| c.trim() == "latency")
}

pub fn topic(base: &str) -> String {
    format!("{base}-latency")
}

/// Where each event landed (partition, offset), by event number.
struct Landed(Mutex<Vec<Option<(i32, i64)>>>);

impl ClientContext for Landed {}

impl ProducerContext for Landed {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, n: usize) {
        if let Ok(m) = result {
            self.0.lock().expect("landed")[n] = Some((m.partition(), m.offset()));
        }
    }
}

/// Hands event `n` to the producer; returns the instant it did.
fn send(
    producer: &ThreadedProducer<Landed>,
    topic: &str,
    e: &SynthEvent,
    n: usize,
    p: i32,
) -> Instant {
    let mut record = BaseRecord::with_opaque_to(topic, n)
        .key(e.key.as_bytes())
        .payload(&e.payload[..])
        .partition(p);
    let at = Instant::now();
    loop {
        match producer.send(record) {
            Ok(()) => return at,
            Err((_, r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Per partition, each new committed offset and when it was first read.
struct Commits {
    seen: Vec<Vec<(i64, Instant)>>,
    samples: usize,
}

impl Commits {
    /// Reads the group's committed offsets once; returns them (-1 each
    /// when the broker could not tell, e.g. its coordinator still loading).
    fn sample(&mut self, reader: &rdkafka::consumer::BaseConsumer, topic: &str) -> Vec<i64> {
        let partitions = self.seen.len();
        let Ok(now) = try_committed(reader, topic, partitions as i32) else {
            return vec![-1; partitions];
        };
        let at = Instant::now();
        self.samples += 1;
        for (seen, &o) in self.seen.iter_mut().zip(&now) {
            if o >= 0 && seen.last().is_none_or(|(last, _)| o > *last) {
                seen.push((o, at));
            }
        }
        now
    }

    /// When the commit of `offset` on `partition` was first read.
    fn of(&self, partition: i32, offset: i64) -> Option<Instant> {
        let seen = &self.seen[partition as usize];
        let k = seen.partition_point(|(o, _)| *o <= offset);
        seen.get(k).map(|(_, at)| *at)
    }
}

/// Nearest-rank percentile of sorted milliseconds (NaN when empty).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The latency row on one broker.
pub fn run(
    brokers: &str,
    base: &str,
    partitions: i32,
    api_latency: Duration,
    runtime: &tokio::runtime::Runtime,
    mock: bool,
) -> CaseResult {
    let rate: f64 = env_or("BENCH_LATENCY_RATE", 1000.0);
    let secs: f64 = env_or("BENCH_LATENCY_SECS", 20.0);
    let lead_secs: f64 = env_or("BENCH_LATENCY_WARMUP_SECS", 5.0);
    let topic = topic(base);
    let warm = partitions as usize;
    let lead = (rate * lead_secs).round() as usize;
    let measured = (rate * secs).round() as usize;
    let streamed = lead + measured;
    let events = generate(&SynthSpec {
        count: warm + streamed,
        regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        duplicate_ratio: 0.0,
        poison_ratio: 0.0,
        seed: 7,
        ..SynthSpec::default()
    });
    eprintln!("latency: {lead} + {measured} events at {rate}/s to {topic} at {brokers}...");

    let api = runtime.block_on(fake(api_latency));
    let group = "bench-latency";
    let config = daemon_config(brokers, &topic, group, &api.endpoint(), free_port());
    let linger_ms = clevertap_deleter::config::load(Some(&config.path().join("bench.toml")))
        .expect("the bench's daemon configuration")
        .settings
        .batch
        .linger_ms;
    let daemon = spawn_daemon(&config);
    let pid = daemon.0.id().to_string();
    let producer: ThreadedProducer<Landed> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create_with_context(Landed(Mutex::new(vec![None; events.len()])))
        .expect("producer");
    let partition = |n: usize| (n % warm) as i32;
    let reader = committed_reader(brokers, group);
    // The reference: a plain consumer (the daemon's consumer settings, all
    // partitions assigned, no group) in this process that only reads.
    let plain: BaseConsumer = consumer_settings(brokers, "bench-latency-plain")
        .create()
        .expect("consumer");
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition_offset(&topic, p, Offset::Beginning)
            .expect("partition");
    }
    let reference = env_or("BENCH_LATENCY_REFERENCE", 0u8) != 0;
    if reference {
        plain.assign(&all).expect("assign");
    }
    let stop = AtomicBool::new(false);
    let mut commits = Commits {
        seen: vec![Vec::new(); warm],
        samples: 0,
    };

    // Warm-up: one event per partition, until every one is committed.
    for (n, e) in events[..warm].iter().enumerate() {
        send(&producer, &topic, e, n, partition(n));
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let started = Instant::now();
    while commits.sample(&reader, &topic).iter().any(|o| *o < 1) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "latency: the warm-up events were not committed in 120 s"
        );
        std::thread::sleep(SAMPLE);
    }
    let (cpu0, deleted0, requests0) = (cpu_seconds(&pid), api.deleted_total(), api.request_count());
    let samples0 = commits.samples;

    // The steady stream, while this thread reads the committed offsets; the
    // first `lead` events are not counted.
    let t0 = Instant::now();
    let (produced_at, produce_secs, read_at) = std::thread::scope(|s| {
        let reading = s.spawn(|| {
            let mut read_at = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = plain.poll(Duration::from_millis(50)) {
                    read_at.insert((m.partition(), m.offset()), Instant::now());
                }
            }
            read_at
        });
        let producing = s.spawn(|| {
            let sent: Vec<Instant> = (warm..warm + streamed)
                .map(|n| {
                    let due = t0 + Duration::from_secs_f64((n - warm) as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    send(&producer, &topic, &events[n], n, partition(n))
                })
                .collect();
            let secs = t0.elapsed().as_secs_f64();
            producer.flush(Duration::from_secs(30)).expect("flush");
            (sent, secs)
        });
        let mut next = Instant::now();
        let mut drained_by: Option<Instant> = None;
        loop {
            let now = commits.sample(&reader, &topic);
            if producing.is_finished() {
                let deadline = *drained_by.get_or_insert_with(|| Instant::now() + DRAIN);
                let landed = producer.context().0.lock().expect("landed").clone();
                let done = landed[warm..]
                    .iter()
                    .all(|l| l.is_some_and(|(p, o)| now.get(p as usize).is_some_and(|c| *c > o)));
                if done || Instant::now() > deadline {
                    break;
                }
            }
            next += SAMPLE;
            match next.checked_duration_since(Instant::now()) {
                Some(wait) => std::thread::sleep(wait),
                None => next = Instant::now(),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (sent, secs) = producing.join().expect("producer thread");
        (sent, secs, reading.join().expect("plain consumer thread"))
    });
    let window = t0.elapsed();
    let cpu = cpu_seconds(&pid) - cpu0;
    let peak_rss = status_mib(&pid, "VmHWM:");
    drop(daemon);
    let (deleted, requests) = (
        api.deleted_total() - deleted0,
        api.request_count() - requests0,
    );
    let first_deleted = api.first_deleted_at();
    api.shutdown();

    // Per event: produce -> API call, produce -> commit.
    let landed = producer.context().0.lock().expect("landed").clone();
    let (mut to_api, mut to_commit, mut to_read) = (Vec::new(), Vec::new(), Vec::new());
    // The worst produce -> API call of each second of the counted stream.
    let mut by_second = vec![0.0f64; secs.ceil() as usize];
    let (mut missing_api_call, mut missing_commit) = (0, 0);
    for (i, at) in produced_at.iter().enumerate().skip(lead) {
        let n = warm + i;
        let called: Option<Vec<Instant>> = events[n]
            .deletions
            .iter()
            .map(|d| {
                first_deleted
                    .get(&(format!("B-{}", d.region), d.kind, d.id.clone()))
                    .copied()
            })
            .collect();
        match called.map(|c| c.into_iter().max()) {
            Some(Some(last)) => {
                let took = ms(last.saturating_duration_since(*at));
                let second = ((i - lead) as f64 / rate) as usize;
                if let Some(worst) = by_second.get_mut(second) {
                    *worst = worst.max(took);
                }
                to_api.push(took);
            }
            Some(None) => {} // an event with no ids
            None => missing_api_call += 1,
        }
        match landed[n].and_then(|(p, o)| commits.of(p, o)) {
            Some(c) => to_commit.push(ms(c.saturating_duration_since(*at))),
            None => missing_commit += 1,
        }
        if let Some(r) = landed[n].and_then(|l| read_at.get(&l)) {
            to_read.push(ms(r.saturating_duration_since(*at)));
        }
    }
    to_read.sort_by(f64::total_cmp);
    to_api.sort_by(f64::total_cmp);
    to_commit.sort_by(f64::total_cmp);
    let api_ms = ms(api_latency);
    let bound_ms = linger_ms as f64 + 2.0 * api_ms;
    let latency = Latency {
        events_per_second_target: rate,
        warmup_events: lead,
        max_to_api_call_ms_by_second: by_second,
        api_latency_ms: api_ms,
        linger_ms,
        bound_ms,
        p50_to_api_call_ms: percentile(&to_api, 0.50),
        p99_to_api_call_ms: percentile(&to_api, 0.99),
        max_to_api_call_ms: to_api.last().copied().unwrap_or(f64::NAN),
        p50_to_commit_ms: percentile(&to_commit, 0.50),
        p99_to_commit_ms: percentile(&to_commit, 0.99),
        p50_to_plain_consumer_ms: reference.then(|| percentile(&to_read, 0.50)),
        p99_to_plain_consumer_ms: reference.then(|| percentile(&to_read, 0.99)),
        max_to_commit_ms: to_commit.last().copied().unwrap_or(f64::NAN),
        commit_sample_ms: ms(window) / (commits.samples - samples0).max(1) as f64,
        missing_api_call,
        missing_commit,
        note: mock.then(|| {
            let set = super::extra_kafka_props()
                .into_iter()
                .find(|(k, _)| k == "fetch.wait.max.ms");
            let wait = set
                .as_ref()
                .map_or("500 ms (librdkafka's default)".into(), |(_, v)| {
                    format!("{v} ms (BENCH_KAFKA_PROPS)")
                });
            format!(
                "the mock cluster answers an empty fetch after fetch.wait.max.ms = {wait} \
                 even when messages arrive meanwhile{}",
                if set.is_none() {
                    "; BENCH_KAFKA_PROPS=fetch.wait.max.ms=10 for the daemon's own latency"
                } else {
                    ""
                }
            )
        }),
    };
    let p99 = latency.p99_to_api_call_ms;
    CaseResult {
        case: format!("daemon, {rate:.0} events/s, API {api_ms:.0} ms"),
        topic: "latency",
        events: measured,
        seconds: produce_secs,
        events_per_second: streamed as f64 / produce_secs,
        ratio_to_ceiling: p99 / bound_ms,
        ceiling: format!(
            "p99 to the API call against linger {linger_ms} + 2 x {api_ms:.0} ms = {bound_ms:.0} ms"
        ),
        cpu_seconds_per_million_events: cpu / streamed.max(1) as f64 * 1e6,
        peak_rss_mib: Some(peak_rss),
        ids_per_api_call: Some(deleted as f64 / requests.max(1) as f64),
        ids_per_second: Some(deleted as f64 / produce_secs),
        goal: format!("p99 to API call <= {bound_ms:.0} ms (linger {linger_ms} + 2 x {api_ms:.0})"),
        met: Some(missing_api_call == 0 && missing_commit == 0 && p99 <= bound_ms),
        latency: Some(latency),
        outage: None,
    }
}
