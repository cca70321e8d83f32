//! The throughput benchmark: `cargo bench --bench throughput`.
//!
//! One run per broker, three topics (see `throughput/workload.rs`): every
//! event a deletion; 99 % of events of another type (the skip path); 1,000
//! deletions repeated (the recently-deleted memory). On each topic:
//! 1. the ceiling: a plain rdkafka consumer (the daemon's consumer settings)
//!    in this process that only reads every message;
//! 2. the daemon binary (`clevertap-deleter run`) against a fake API that
//!    answers at once, until the group's committed offsets reach the end.
//!
//! And on the deletions topic, the API-bound case: the fake answers after
//! 50 ms, compared with the API's ceiling
//! `accounts * max_concurrency * 100 ids / 0.05 s`; and scale-out: 2 and 3
//! replicas in one group against the instant API, timed from the moment the
//! last replica read its first message, compared with one replica.
//!
//! And the outage (`throughput/outage.rs`, on the deletions topic): the
//! API answers 503 for BENCH_OUTAGE_SECS (600) while the whole topic waits;
//! the daemon's RSS sampled every BENCH_OUTAGE_SAMPLE_SECS (5) once it holds
//! its bound must stay within 10 % (and 64 MiB); then the API answers again
//! and the drain's rate is compared with the plain consumer's.
//!
//! And latency (`throughput/latency.rs`): events produced at a steady rate
//! (1,000/s) to a topic of their own while the daemon runs against the API
//! that answers after BENCH_LATENCY_MS; p50/p99 from produce to the API call
//! and to the commit, held against p99 to the API call <= linger + 2 x API
//! latency.
//!
//! The cases run on each broker, one after the other: librdkafka's mock
//! cluster (in a child process), then Apache Kafka 4.4.0 (a 1-node cluster
//! started with deploy/local-kafka/local-kafka, needs Java and Maven; skipped
//! with a printed reason without them). The daemon runs in a process of its
//! own, so CPU seconds and peak memory are each process's own: the plain
//! consumer's are this process's while only it runs, the daemon's are the
//! daemon process's from its first message on. Rates are timed from the first message consumed to the
//! last one committed, so joining the group is not counted. Ratios compare
//! cases on the same broker and topic in the same run. Each row names the goal
//! of issue #18 it is held against and whether this run met it.
//!
//! Environment: BENCH_EVENTS (default 1000000 per topic), BENCH_PARTITIONS
//! (48: the mock cluster keeps about 5 MB per partition), BENCH_LATENCY_MS (50), BENCH_MAX_EVENTS_IN_MEMORY (daemon default),
//! BENCH_COMMIT_MS (100), BENCH_KAFKA_PROPS (extra librdkafka properties
//! for the daemon and the plain consumer, `key=value,...`), BENCH_EXTRA_TOML (more daemon
//! configuration, sections not set by the bench; `\n` for new lines), BENCH_BROKER (`mock`, `local-kafka`, or
//! both when unset), KAFKA_BROKERS (an existing cluster instead of both; the
//! bench creates its topics), BENCH_WORKLOADS (comma-separated subset of
//! `deletions,skip,repeats,outage,latency`; `outage` needs `deletions`), BENCH_REPLICAS (`2,3`),
//! BENCH_LATENCY_SECS (20: how long the latency row's counted events are
//! produced), BENCH_LATENCY_WARMUP_SECS (5: produced first at the same rate,
//! not counted), BENCH_LATENCY_RATE (1000 events/s), BENCH_LATENCY_REFERENCE
//! (0; 1: a plain consumer reads the latency topic too, for reference),
//! BENCH_DAEMON (another build of the daemon to run, e.g. an older commit's,
//! for a before/after on the same machine). Writes `target/bench-throughput.json`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "throughput/latency.rs"]
mod latency;
#[path = "../tests/e2e/local_kafka.rs"]
mod local_kafka;
#[path = "throughput/measure.rs"]
mod measure;
#[path = "throughput/outage.rs"]
mod outage;
#[path = "throughput/report.rs"]
mod report;
#[path = "throughput/workload.rs"]
mod workload;

use clevertap_deleter::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap};
use measure::{committed, committed_reader, cpu_seconds, env_or, free_port, scrape, status_mib};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use report::{print_table, CaseResult};
use workload::{create_topics, produce, Produced, Workload, REGIONS};

const MAX_CONCURRENCY: usize = 10;
/// The daemon this build made, unless BENCH_DAEMON names another.
fn daemon_binary() -> String {
    std::env::var("BENCH_DAEMON").unwrap_or_else(|_| env!("CARGO_BIN_EXE_clevertap-deleter").into())
}
/// Issue #18's memory goal: peak RSS while draining 1,000,000 events.
const MEMORY_GOAL_MIB: f64 = 64.0;

/// The child process that only hosts the mock cluster.
fn serve_mock_broker(topics: &[String], partitions: i32) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in topics {
        cluster.create_topic(topic, partitions, 1).expect("topic");
        cluster
            .create_topic(&format!("{topic}.dlq"), 1, 1)
            .expect("dlq topic");
    }
    println!("{}", cluster.bootstrap_servers());
    std::io::stdout().flush().expect("stdout");
    // Serve until the parent closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn consumer_settings(brokers: &str, group: &str) -> ClientConfig {
    // The daemon's own consumer defaults (see app/pipeline/clients.rs).
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("queued.max.messages.kbytes", "8192")
        .set("queued.min.messages", "10000")
        .set("fetch.max.bytes", "4194304")
        .set("fetch.queue.backoff.ms", "20");
    for (k, v) in extra_kafka_props() {
        c.set(k, v);
    }
    c
}

/// BENCH_KAFKA_PROPS as pairs: given to the daemon and the plain consumer alike.
fn extra_kafka_props() -> Vec<(String, String)> {
    std::env::var("BENCH_KAFKA_PROPS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The plain consumer: reads every message; returns seconds from the first
/// to the last.
fn plain_consumer(brokers: &str, topic: &str, total: usize) -> f64 {
    let consumer: BaseConsumer = consumer_settings(brokers, &format!("bench-plain-{topic}"))
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let subscribed = Instant::now();
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
            subscribed.elapsed() < Duration::from_secs(120),
            "plain consumer stuck at {n}"
        );
    }
    std::hint::black_box(bytes);
    first.map_or(0.0, |f| f.elapsed().as_secs_f64())
}

struct DaemonRun {
    seconds: f64,
    cpu_per_million: f64,
    peak_rss: f64,
}

/// The daemon binary until every offset of `topic` is committed.
/// The daemon's configuration file for the bench (the directory holds it).
fn daemon_config(
    brokers: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    port: u16,
) -> tempfile::TempDir {
    let commit_ms: u64 = env_or("BENCH_COMMIT_MS", 100);
    let mut text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\ndlq_topic = \"{topic}.dlq\"\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [batch]\nlinger_ms = 50\n[api]\nmax_concurrency = {MAX_CONCURRENCY}\n\
         [pipeline]\ncommit_interval_ms = {commit_ms}\nrebalance_drain_timeout_ms = 5000\n[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n"
    );
    // Extra librdkafka properties for the daemon, "key=value,key=value"
    // (to try other prefetch bounds).
    let lines: String = extra_kafka_props()
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    text = text.replace(
        "[kafka.properties]\n",
        &format!("[kafka.properties]\n{lines}"),
    );
    if let Ok(max) = std::env::var("BENCH_MAX_EVENTS_IN_MEMORY") {
        text = text.replace(
            "[pipeline]\n",
            &format!("[pipeline]\nmax_events_in_memory = {max}\n"),
        );
    }
    for r in REGIONS {
        text.push_str(&format!(
            "[regions.{r}]\naccount_id = \"B-{r}\"\npasscode = \"bench-{r}\"\nendpoint = \"{endpoint}\"\n"
        ));
    }
    // More configuration for the daemon, as TOML sections not set above
    // (`[dedup]`, say), to try other settings.
    if let Ok(extra) = std::env::var("BENCH_EXTRA_TOML") {
        text.push_str(&extra.replace("\\n", "\n"));
        text.push('\n');
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, text).expect("config");
    dir
}

fn spawn_daemon(config: &tempfile::TempDir) -> Reaped {
    let path = config.path().join("bench.toml");
    Reaped(
        Command::new(daemon_binary())
            .args(["run", "--config", path.to_str().expect("utf-8 path")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the daemon"),
    )
}

/// The daemon binary until every offset of `topic` is committed.
fn daemon(brokers: &str, topic: &Produced, group: &str, endpoint: &str) -> DaemonRun {
    let run = replicas(brokers, topic, group, endpoint, 1);
    DaemonRun {
        seconds: run.seconds,
        cpu_per_million: run.cpu_seconds / topic.total as f64 * 1e6,
        peak_rss: run.peak_rss,
    }
}

struct ReplicasRun {
    /// From the moment every replica had read its first message.
    seconds: f64,
    /// Events committed in that time.
    events: usize,
    /// CPU seconds of all replicas in that time.
    cpu_seconds: f64,
    /// The largest peak RSS of the replicas.
    peak_rss: f64,
}

/// `n` daemons in one group until every offset of `topic` is committed,
/// timed from the moment the last of them read its first message (so the
/// joins and the rebalances they cause are not counted).
fn replicas(brokers: &str, topic: &Produced, group: &str, endpoint: &str, n: usize) -> ReplicasRun {
    let (partitions, end) = (topic.end.len() as i32, &topic.end);
    let name = topic.topic.as_str();
    let mut daemons = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let config = daemon_config(brokers, name, group, endpoint, port);
        let child = spawn_daemon(&config);
        let pid = child.0.id().to_string();
        daemons.push((config, child, pid, port));
    }
    let consumed = format!("clevertap_deleter_events_consumed_total{{topic=\"{name}\"}}");
    let reader = committed_reader(brokers, group);
    let started = Instant::now();
    let mut reading = vec![false; n];
    // CPU spent before (start, group join, this bench's scrapes of
    // /metrics) is not the drain's.
    let mut at_start: Option<(Instant, i64, f64)> = None;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "daemon did not finish"
        );
        if at_start.is_none() {
            for (i, (_, _, _, port)) in daemons.iter().enumerate() {
                reading[i] = reading[i] || scrape(*port, &consumed) > 0.0;
            }
            if reading.iter().all(|r| *r) {
                let done: i64 = committed(&reader, name, partitions)
                    .iter()
                    .map(|o| o.max(&0))
                    .sum();
                let cpu: f64 = daemons.iter().map(|d| cpu_seconds(&d.2)).sum();
                at_start = Some((Instant::now(), done, cpu));
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if committed(&reader, name, partitions) == *end {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let (t0, done0, cpu0) = at_start.expect("started");
    let run = ReplicasRun {
        seconds: t0.elapsed().as_secs_f64(),
        events: (end.iter().sum::<i64>() - done0) as usize,
        cpu_seconds: daemons.iter().map(|d| cpu_seconds(&d.2)).sum::<f64>() - cpu0,
        peak_rss: daemons
            .iter()
            .map(|d| status_mib(&d.2, "VmHWM:"))
            .fold(0.0, f64::max),
    };
    drop(daemons);
    run
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

/// BENCH_REPLICAS: the replica counts of the scale-out rows (default 2,3;
/// empty for none).
fn scale_out() -> Vec<usize> {
    std::env::var("BENCH_REPLICAS")
        .unwrap_or_else(|_| "2,3".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 1)
        .collect()
}

fn workloads() -> Vec<Workload> {
    let chosen = std::env::var("BENCH_WORKLOADS").unwrap_or_default();
    Workload::ALL
        .into_iter()
        .filter(|w| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == w.name()))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mock-broker") {
        let topics: Vec<String> = args[i + 1].split(',').map(str::to_string).collect();
        serve_mock_broker(&topics, args[i + 2].parse().expect("partitions"));
        return;
    }
    // `cargo bench` passes --bench; any other argument is ignored.
    let total: usize = env_or("BENCH_EVENTS", 1_000_000);
    let partitions: i32 = env_or("BENCH_PARTITIONS", 48);
    let choice = std::env::var("BENCH_BROKER").unwrap_or_default();
    let base = format!("bench-{}", std::process::id());
    let mut topics: Vec<String> = workloads().iter().map(|w| w.topic(&base)).collect();
    if latency::selected() {
        topics.push(latency::topic(&base));
    }
    let mut all = Vec::new();
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        create_topics(&brokers, &topics, partitions);
        all.push(run_on("KAFKA_BROKERS", &brokers, &base, total, partitions));
    } else {
        if choice.is_empty() || choice == "mock" {
            let mut child = Command::new(std::env::current_exe().expect("own path"))
                .args(["--mock-broker", &topics.join(","), &partitions.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the mock broker");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("bootstrap address");
            let _broker = Reaped(child);
            all.push(run_on(
                "mock cluster (child process)",
                line.trim(),
                &base,
                total,
                partitions,
            ));
        }
        if choice.is_empty() || choice == "local-kafka" {
            match local_kafka::missing_prerequisite(false) {
                Some(missing) if choice.is_empty() => {
                    eprintln!("Apache Kafka case SKIPPED: {missing}");
                }
                Some(missing) => panic!("BENCH_BROKER=local-kafka: {missing}"),
                None => {
                    let kafka = local_kafka::LocalKafka::start(1, false);
                    create_topics(&kafka.bootstrap, &topics, partitions);
                    all.push(run_on(
                        "Apache Kafka 4.4.0, 1 node (local-kafka)",
                        &kafka.bootstrap,
                        &base,
                        total,
                        partitions,
                    ));
                }
            }
        }
    }
    for (broker, results) in &all {
        print_table(broker, results);
    }
    report::write_json(&all);
}

/// The goal of a daemon row against the plain consumer: its ratio, and CPU
/// per million events where the issue sets one.
fn consumer_goal(workload: Workload) -> (f64, Option<f64>) {
    match workload {
        Workload::Deletions => (0.5, Some(2.5)),
        Workload::Skip => (0.8, Some(1.5)),
        Workload::Repeats => (0.6, None),
    }
}

/// Every case on one broker; returns its label and results.
fn run_on(
    label: &str,
    brokers: &str,
    base: &str,
    total: usize,
    partitions: i32,
) -> (String, Vec<CaseResult>) {
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let produced: Vec<Produced> = workloads()
        .into_iter()
        .map(|w| produce(brokers, w, w.topic(base), total, partitions))
        .collect();
    let mut results = Vec::new();
    for topic in &produced {
        let name = topic.workload.name();
        // The ceiling, in this process (the broker is another process).
        let cpu_before = cpu_seconds("self");
        let plain_secs = plain_consumer(brokers, &topic.topic, total);
        let plain_cpu = (cpu_seconds("self") - cpu_before) / total as f64 * 1e6;
        let plain_rate = total as f64 / plain_secs;
        results.push(CaseResult {
            case: "plain consumer (ceiling)".into(),
            topic: name,
            events: total,
            seconds: plain_secs,
            events_per_second: plain_rate,
            ratio_to_ceiling: 1.0,
            ceiling: "itself".into(),
            cpu_seconds_per_million_events: plain_cpu,
            peak_rss_mib: None,
            ids_per_api_call: None,
            ids_per_second: None,
            goal: "-".into(),
            met: None,
            latency: None,
            outage: None,
        });

        // The daemon against an API that answers at once.
        let api = runtime.block_on(fake(Duration::ZERO));
        let run = daemon(
            brokers,
            topic,
            &format!("bench-daemon-{name}"),
            &api.endpoint(),
        );
        assert_eq!(
            api.deletion_counts().len(),
            topic.distinct_ids,
            "{name}: every id deleted"
        );
        let rate = total as f64 / run.seconds;
        let ratio = rate / plain_rate;
        let (min_ratio, max_cpu) = consumer_goal(topic.workload);
        let cpu_ok = max_cpu.is_none_or(|max| run.cpu_per_million <= max);
        let memory_ok = total < 1_000_000 || run.peak_rss <= MEMORY_GOAL_MIB;
        results.push(CaseResult {
            case: "daemon, instant API".into(),
            topic: name,
            events: total,
            seconds: run.seconds,
            events_per_second: rate,
            ratio_to_ceiling: ratio,
            ceiling: "plain consumer".into(),
            cpu_seconds_per_million_events: run.cpu_per_million,
            peak_rss_mib: Some(run.peak_rss),
            ids_per_api_call: Some(api.deleted_total() as f64 / api.request_count().max(1) as f64),
            ids_per_second: Some(api.deleted_total() as f64 / run.seconds),
            goal: format!(
                ">= {min_ratio}{}, <= {MEMORY_GOAL_MIB} MiB",
                max_cpu.map_or(String::new(), |c| format!(", <= {c} CPU s/M"))
            ),
            met: Some(ratio >= min_ratio && cpu_ok && memory_ok),
            latency: None,
            outage: None,
        });
        api.shutdown();

        if topic.workload != Workload::Deletions {
            continue;
        }
        // API-bound: the fake answers after `latency`.
        let api = runtime.block_on(fake(latency));
        let run = daemon(brokers, topic, "bench-daemon-api-bound", &api.endpoint());
        let ceiling_ids = (REGIONS.len() * MAX_CONCURRENCY * 100) as f64 / latency.as_secs_f64();
        let ids_per_second = api.deleted_total() as f64 / run.seconds;
        let ids_per_call = api.deleted_total() as f64 / api.request_count().max(1) as f64;
        results.push(CaseResult {
            case: format!("daemon, API answers after {} ms", latency.as_millis()),
            topic: name,
            events: total,
            seconds: run.seconds,
            events_per_second: total as f64 / run.seconds,
            ratio_to_ceiling: ids_per_second / ceiling_ids,
            ceiling: format!(
                "{} accounts x {MAX_CONCURRENCY} concurrent x 100 ids / {} s = {ceiling_ids:.0} ids/s",
                REGIONS.len(),
                latency.as_secs_f64()
            ),
            cpu_seconds_per_million_events: run.cpu_per_million,
            peak_rss_mib: Some(run.peak_rss),
            ids_per_api_call: Some(ids_per_call),
            ids_per_second: Some(ids_per_second),
            goal: ">= 0.95 of the API ceiling".into(),
            met: Some(ids_per_second / ceiling_ids >= 0.95),
            latency: None,
            outage: None,
        });
        api.shutdown();

        // Scale-out: the same drain with more replicas in one group.
        let api = runtime.block_on(fake(Duration::ZERO));
        let one = rate;
        for n in scale_out() {
            let run = replicas(
                brokers,
                topic,
                &format!("bench-replicas-{n}"),
                &api.endpoint(),
                n,
            );
            let rate = run.events as f64 / run.seconds;
            results.push(CaseResult {
                case: format!("{n} replicas, instant API"),
                topic: name,
                events: run.events,
                seconds: run.seconds,
                events_per_second: rate,
                ratio_to_ceiling: rate / one,
                ceiling: "one replica".into(),
                cpu_seconds_per_million_events: run.cpu_seconds / run.events.max(1) as f64 * 1e6,
                peak_rss_mib: Some(run.peak_rss),
                ids_per_api_call: None,
                ids_per_second: None,
                goal: format!(
                    "grows with replicas; {:.2} cores per replica",
                    run.cpu_seconds / run.seconds / n as f64
                ),
                met: None,
                latency: None,
                outage: None,
            });
        }
        api.shutdown();
        if outage::selected() {
            results.push(outage::run(brokers, topic, plain_rate, &runtime));
        }
    }
    if latency::selected() {
        let mock = label.starts_with("mock");
        results.push(latency::run(
            brokers, base, partitions, latency, &runtime, mock,
        ));
    }
    for topic in &produced {
        println!(
            "{label}: topic {}: {} events, {} bytes on average, {} distinct ids, {partitions} partitions",
            topic.workload.name(),
            topic.total,
            topic.avg_bytes,
            topic.distinct_ids
        );
    }
    (label.to_string(), results)
}
