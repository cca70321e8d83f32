//! The throughput benchmark: `cargo bench --bench throughput`.
//!
//! In one process and one run, on the same topic: a plain rdkafka consumer
//! that only reads (the ceiling), the daemon's whole pipeline against a fake
//! API that answers at once, and the API-bound case where the fake answers
//! after 50 ms. Prints a table and writes `target/bench-throughput.json`.
//!
//! Environment: BENCH_EVENTS (default 500000), BENCH_PARTITIONS (24),
//! BENCH_LATENCY_MS (50), KAFKA_BROKERS (use a real cluster instead of the
//! in-process mock; its topic must not exist yet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clevertap_deleter::config::{self, Config};
use clevertap_deleter::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap};
use clevertap_deleter::health::Health;
use clevertap_deleter::ledger::Finish;
use clevertap_deleter::metrics::Metrics;
use clevertap_deleter::synth::{generate, SynthSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

const REGIONS: [&str; 3] = ["eu1", "in1", "us1"];
const MAX_CONCURRENCY: usize = 10;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process so far, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory in MiB since the last reset.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak so each case reports its own (Linux: clear_refs 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(Debug, serde::Serialize)]
struct CaseResult {
    case: String,
    events: usize,
    seconds: f64,
    events_per_second: f64,
    ratio_to_ceiling: f64,
    ceiling: String,
    cpu_seconds_per_million_events: f64,
    peak_rss_mib: f64,
    ids_per_api_call: Option<f64>,
    ids_per_second: Option<f64>,
}

struct Measure {
    started: Instant,
    cpu: f64,
}

impl Measure {
    fn start() -> Self {
        reset_peak_rss();
        Measure {
            started: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    fn finish(self, events: usize) -> (f64, f64, f64) {
        let secs = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - self.cpu;
        (secs, cpu / events as f64 * 1e6, peak_rss_mib())
    }
}

fn consumer_settings(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "20000")
        .set("fetch.queue.backoff.ms", "20");
    if let Ok(extra) = std::env::var("BENCH_CONSUMER_PROPS") {
        for kv in extra.split(',').filter(|kv| !kv.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                c.set(k, v);
            }
        }
    }
    c
}

/// The ceiling: a consumer with the daemon's settings that only reads.
fn plain_consumer(brokers: &str, topic: &str, total: usize) -> f64 {
    let consumer: BaseConsumer = consumer_settings(brokers, "bench-plain")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let subscribed = Instant::now();
    // Timed from the first message: joining the group is not throughput.
    let mut first: Option<Instant> = None;
    let mut n = 0usize;
    let mut bytes = 0usize;
    while n < total {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, |p| p.len());
            n += 1;
        }
        assert!(
            subscribed.elapsed() < Duration::from_secs(600),
            "plain consumer stuck at {n}"
        );
    }
    std::hint::black_box(bytes);
    first.map_or(0.0, |f| f.elapsed().as_secs_f64())
}

fn bench_config(brokers: &str, topic: &str, group: &str, endpoint: &str) -> Config {
    let max_mem: usize = env_or("BENCH_MAX_EVENTS_IN_MEMORY", 20_000);
    let mut text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\ndlq_topic = \"{topic}.dlq\"\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [batch]\nlinger_ms = 50\n[api]\nmax_concurrency = {MAX_CONCURRENCY}\n[pipeline]\ncommit_interval_ms = 500\nmax_events_in_memory = {max_mem}\n\
         [server]\nlisten = \"127.0.0.1:0\"\n"
    );
    if let Ok(extra) = std::env::var("BENCH_CONSUMER_PROPS") {
        for kv in extra.split(',').filter(|kv| !kv.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                text = text.replace(
                    "[kafka.properties]\n",
                    &format!("[kafka.properties]\n\"{k}\" = \"{v}\"\n"),
                );
            }
        }
    }
    for r in REGIONS {
        text.push_str(&format!(
            "[regions.{r}]\naccount_id = \"B-{r}\"\npasscode = \"bench-{r}\"\nendpoint = \"{endpoint}\"\n"
        ));
    }
    config::from_toml(&text).expect("bench config")
}

/// Runs the pipeline until every event finished; returns the seconds from
/// the first message consumed to the last event finished.
async fn pipeline(config: Config, total: usize) -> f64 {
    let topic = config.settings.kafka.topics[0].clone();
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let api = clevertap_deleter::api::client_for(&config).expect("client");
    let watch = metrics.clone();
    let span = Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    let span_w = span.clone();
    let debug = std::env::var("BENCH_DEBUG").is_ok();
    let mut last_debug = Instant::now();
    let done = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let consumed = watch.events_consumed.with_label_values(&[&topic]).get();
            let finished: u64 = Finish::ALL
                .iter()
                .map(|f| watch.events_finished.with_label_values(&[f.as_str()]).get())
                .sum();
            if debug && last_debug.elapsed() >= Duration::from_millis(500) {
                last_debug = Instant::now();
                eprintln!(
                    "in memory {}, paused {}, in flight eu1 {} limit {}, finished {finished}",
                    watch.events_in_memory.get(),
                    watch.consumer_paused.get(),
                    watch.api_in_flight.with_label_values(&["eu1"]).get(),
                    watch
                        .api_concurrency_limit
                        .with_label_values(&["eu1"])
                        .get(),
                );
            }
            let mut s = span_w.lock().unwrap();
            if consumed > 0 && s.0.is_none() {
                s.0 = Some(Instant::now());
            }
            if finished as usize >= total {
                s.1 = Some(Instant::now());
                return;
            }
        }
    };
    let summary = clevertap_deleter::pipeline::run(config, api, metrics.clone(), health, done)
        .await
        .expect("pipeline");
    if std::env::var("BENCH_DEBUG").is_ok() {
        for r in REGIONS {
            let h = metrics.api_request_duration.with_label_values(&[r]);
            eprintln!(
                "{r}: {} requests, mean {:.2} ms",
                h.get_sample_count(),
                h.get_sample_sum() / h.get_sample_count().max(1) as f64 * 1000.0
            );
        }
    }
    assert_eq!(summary.unfinished_at_exit, 0);
    let (first, last) = *span.lock().unwrap();
    last.unwrap().duration_since(first.unwrap()).as_secs_f64()
}

async fn fake(latency: Duration) -> FakeCleverTap {
    FakeCleverTap::start(FakeApiConfig {
        accounts: REGIONS
            .iter()
            .map(|r| FakeAccount {
                account_id: format!("B-{r}"),
                passcode: format!("bench-{r}"),
            })
            .collect(),
        max_concurrency: 15,
        latency,
        ..FakeApiConfig::default()
    })
    .await
    .expect("fake api")
}

fn main() {
    // `cargo bench` passes --bench; any filter argument is ignored.
    if std::env::var("BENCH_DEBUG").is_ok() {
        clevertap_deleter::logging::init("human", "info");
    }
    let total: usize = env_or("BENCH_EVENTS", 500_000);
    let partitions: i32 = env_or("BENCH_PARTITIONS", 24);
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mock = std::env::var("KAFKA_BROKERS")
        .is_err()
        .then(|| MockCluster::new(1).expect("mock cluster"));
    let brokers = std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| mock.as_ref().unwrap().bootstrap_servers());
    let topic = format!("bench-{}", std::process::id());
    if let Some(m) = &mock {
        m.create_topic(&topic, partitions, 1).expect("topic");
        m.create_topic(&format!("{topic}.dlq"), 1, 1)
            .expect("dlq topic");
    }

    eprintln!("producing {total} events to {topic} ({partitions} partitions)...");
    let events = generate(&SynthSpec {
        count: total,
        regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        duplicate_ratio: 0.2,
        poison_ratio: 0.0,
        seed: 5,
    });
    let avg_bytes = events.iter().map(|e| e.payload.len()).sum::<usize>() / total.max(1);
    let distinct_ids = events
        .iter()
        .flat_map(|e| {
            e.deletions
                .iter()
                .map(|d| (d.region.clone(), d.kind, d.id.clone()))
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for (i, e) in events.iter().enumerate() {
        let mut record = BaseRecord::to(&topic)
            .key(e.key.as_bytes())
            .payload(&e.payload[..])
            .partition((i % partitions as usize) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    drop(events);

    let mut results = Vec::new();

    // 1. The ceiling.
    let m = Measure::start();
    let plain_secs = plain_consumer(&brokers, &topic, total);
    let (_, plain_cpu, plain_rss) = m.finish(total);
    let plain_rate = total as f64 / plain_secs;
    results.push(CaseResult {
        case: "plain consumer (ceiling)".into(),
        events: total,
        seconds: plain_secs,
        events_per_second: plain_rate,
        ratio_to_ceiling: 1.0,
        ceiling: "itself".into(),
        cpu_seconds_per_million_events: plain_cpu,
        peak_rss_mib: plain_rss,
        ids_per_api_call: None,
        ids_per_second: None,
    });

    // 2. The pipeline against an API that answers at once.
    let (secs, cpu, rss, api) = runtime.block_on(async {
        let api = fake(Duration::ZERO).await;
        let config = bench_config(&brokers, &topic, "bench-pipeline", &api.endpoint());
        let m = Measure::start();
        let secs = pipeline(config, total).await;
        let (_, cpu, rss) = m.finish(total);
        (secs, cpu, rss, api)
    });
    let rate = total as f64 / secs;
    results.push(CaseResult {
        case: "pipeline, instant API".into(),
        events: total,
        seconds: secs,
        events_per_second: rate,
        ratio_to_ceiling: rate / plain_rate,
        ceiling: "plain consumer".into(),
        cpu_seconds_per_million_events: cpu,
        peak_rss_mib: rss,
        ids_per_api_call: Some(api.deleted_total() as f64 / api.request_count().max(1) as f64),
        ids_per_second: Some(api.deleted_total() as f64 / secs),
    });
    assert_eq!(
        api.deletion_counts().len(),
        distinct_ids,
        "every id deleted"
    );
    api.shutdown();

    // 3. API-bound: the fake answers after `latency`.
    let (secs, cpu, rss, api) = runtime.block_on(async {
        let api = fake(latency).await;
        let config = bench_config(&brokers, &topic, "bench-api-bound", &api.endpoint());
        let m = Measure::start();
        let secs = pipeline(config, total).await;
        let (_, cpu, rss) = m.finish(total);
        (secs, cpu, rss, api)
    });
    let ceiling_ids = (REGIONS.len() * MAX_CONCURRENCY * 100) as f64 / latency.as_secs_f64();
    let ids_per_second = api.deleted_total() as f64 / secs;
    results.push(CaseResult {
        case: format!("pipeline, API answers after {} ms", latency.as_millis()),
        events: total,
        seconds: secs,
        events_per_second: total as f64 / secs,
        ratio_to_ceiling: ids_per_second / ceiling_ids,
        ceiling: format!(
            "{} accounts x {MAX_CONCURRENCY} concurrent x 100 ids / {} s = {ceiling_ids:.0} ids/s",
            REGIONS.len(),
            latency.as_secs_f64()
        ),
        cpu_seconds_per_million_events: cpu,
        peak_rss_mib: rss,
        ids_per_api_call: Some(api.deleted_total() as f64 / api.request_count().max(1) as f64),
        ids_per_second: Some(ids_per_second),
    });
    api.shutdown();

    println!();
    println!(
        "{total} events, {avg_bytes} bytes on average, {distinct_ids} distinct ids, {partitions} partitions, brokers {}",
        if mock.is_some() { "in-process mock" } else { "KAFKA_BROKERS" }
    );
    println!(
        "{:<36} {:>10} {:>8} {:>14} {:>10} {:>11} {:>9}",
        "case", "events/s", "ratio", "CPU s/M ev", "peak MiB", "ids/call", "ids/s"
    );
    for r in &results {
        println!(
            "{:<36} {:>10.0} {:>8.3} {:>14.2} {:>10.1} {:>11} {:>9}",
            r.case,
            r.events_per_second,
            r.ratio_to_ceiling,
            r.cpu_seconds_per_million_events,
            r.peak_rss_mib,
            r.ids_per_api_call.map_or("-".into(), |v| format!("{v:.1}")),
            r.ids_per_second.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    println!(
        "ratio: pipeline rows against the plain consumer; the API-bound row against {}",
        results[2].ceiling
    );
    let target_dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{target_dir}/bench-throughput.json");
    let json = serde_json::to_string_pretty(&results).expect("json");
    match std::fs::write(&path, json) {
        Ok(()) => println!("written: {path}"),
        Err(e) => eprintln!("cannot write {path}: {e}"),
    }
    drop(mock);
}
