//! The throughput benchmark: `cargo bench --bench throughput`.
//!
//! One run, one topic, three cases:
//! 1. the ceiling: a plain rdkafka consumer (the daemon's consumer settings)
//!    in this process that only reads every message;
//! 2. the daemon binary (`clevertap-deleter run`) against a fake API that
//!    answers at once, until the group's committed offsets reach the end;
//! 3. the same with the fake answering after 50 ms, compared with the API's
//!    ceiling `accounts * max_concurrency * 100 ids / 0.05 s`.
//!
//! The three cases run on each broker, one after the other: librdkafka's
//! mock cluster (in a child process), then Apache Kafka 4.4.0 (a 1-node
//! cluster started with deploy/local-kafka/local-kafka, needs Java and
//! Maven; skipped with a printed reason without them). The daemon runs in a
//! process of its own, so CPU seconds and peak memory are each process's own:
//! case 1 is this process while only the consumer runs, cases 2 and 3 are the
//! daemon process. Rates are timed from the first message consumed to the last
//! one finished, so joining the group is not counted. Ratios compare cases on
//! the same broker in the same run.
//!
//! Environment: BENCH_EVENTS (default 500000), BENCH_PARTITIONS (24),
//! BENCH_LATENCY_MS (50), BENCH_MAX_EVENTS_IN_MEMORY (daemon default),
//! BENCH_BROKER (`mock`, `local-kafka`, or both when unset), KAFKA_BROKERS (an
//! existing cluster instead of both; the bench creates its topics).
//! Writes `target/bench-throughput.json`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/e2e/local_kafka.rs"]
mod local_kafka;

use clevertap_deleter::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap};
use clevertap_deleter::testkit::synth::{generate, SynthSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const REGIONS: [&str; 3] = ["eu1", "in1", "us1"];
const MAX_CONCURRENCY: usize = 10;
const DAEMON: &str = env!("CARGO_BIN_EXE_clevertap-deleter");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of a process, from /proc (`self` or a pid).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory in MiB (VmHWM) of a process.
fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
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

/// The child process that only hosts the mock cluster.
fn serve_mock_broker(topic: &str, partitions: i32) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(topic, partitions, 1).expect("topic");
    cluster
        .create_topic(&format!("{topic}.dlq"), 1, 1)
        .expect("dlq topic");
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
    // The daemon's own consumer defaults (see pipeline::consumer_config).
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
    c
}

/// Case 1: reads every message; returns seconds from the first to the last.
fn plain_consumer(brokers: &str, topic: &str, total: usize) -> f64 {
    let consumer: BaseConsumer = consumer_settings(brokers, "bench-plain")
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
            subscribed.elapsed() < Duration::from_secs(600),
            "plain consumer stuck at {n}"
        );
    }
    std::hint::black_box(bytes);
    first.map_or(0.0, |f| f.elapsed().as_secs_f64())
}

/// Reads a group's committed offsets. One client per case, reused: creating
/// a librdkafka client per poll costs threads, connections and a coordinator
/// lookup, on the same two cores as the daemon being measured.
fn committed_reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer")
}

fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Vec<i64> {
    let offsets = {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .expect("committed");
        let v = (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect();
        drop(got);
        v
    };
    offsets
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A metric's value from the daemon's /metrics (0 when absent or unreachable).
fn scrape(port: u16, series: &str) -> f64 {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct DaemonRun {
    seconds: f64,
    cpu_per_million: f64,
    peak_rss: f64,
}

/// Cases 2 and 3: the daemon binary until every offset is committed.
fn daemon(
    brokers: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    total: usize,
    partitions: i32,
    end: &[i64],
) -> DaemonRun {
    let port = free_port();
    let commit_ms: u64 = env_or("BENCH_COMMIT_MS", 100);
    let mut text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\ndlq_topic = \"{topic}.dlq\"\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [batch]\nlinger_ms = 50\n[api]\nmax_concurrency = {MAX_CONCURRENCY}\n\
         [pipeline]\ncommit_interval_ms = {commit_ms}\n[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n"
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
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, text).expect("config");
    let child = Reaped(
        Command::new(DAEMON)
            .args(["run", "--config", path.to_str().expect("utf-8 path")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the daemon"),
    );
    let pid = child.0.id().to_string();
    let consumed = format!("clevertap_deleter_events_consumed_total{{topic=\"{topic}\"}}");
    let reader = committed_reader(brokers, group);
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "daemon did not finish"
        );
        if first.is_none() {
            if scrape(port, &consumed) > 0.0 {
                first = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if committed(&reader, topic, partitions) == end {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let seconds = first.expect("started").elapsed().as_secs_f64();
    let cpu = cpu_seconds(&pid);
    let peak_rss = peak_rss_mib(&pid);
    drop(child);
    DaemonRun {
        seconds,
        cpu_per_million: cpu / total as f64 * 1e6,
        peak_rss,
    }
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
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mock-broker") {
        serve_mock_broker(&args[i + 1], args[i + 2].parse().expect("partitions"));
        return;
    }
    // `cargo bench` passes --bench; any other argument is ignored.
    let total: usize = env_or("BENCH_EVENTS", 500_000);
    let partitions: i32 = env_or("BENCH_PARTITIONS", 24);
    let choice = std::env::var("BENCH_BROKER").unwrap_or_default();
    let mut all = Vec::new();
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        let topic = format!("bench-{}", std::process::id());
        create_topics(&brokers, &topic, partitions);
        all.push(run_on("KAFKA_BROKERS", &brokers, &topic, total, partitions));
    } else {
        if choice.is_empty() || choice == "mock" {
            let topic = format!("bench-{}", std::process::id());
            let mut child = Command::new(std::env::current_exe().expect("own path"))
                .args(["--mock-broker", &topic, &partitions.to_string()])
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
                &topic,
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
                    let topic = format!("bench-{}", std::process::id());
                    create_topics(&kafka.bootstrap, &topic, partitions);
                    all.push(run_on(
                        "Apache Kafka 4.4.0, 1 node (local-kafka)",
                        &kafka.bootstrap,
                        &topic,
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
    let target_dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{target_dir}/bench-throughput.json");
    let json: Vec<serde_json::Value> = all
        .iter()
        .map(|(broker, results)| serde_json::json!({ "broker": broker, "cases": results }))
        .collect();
    match std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("written: {path}"),
        Err(e) => eprintln!("cannot write {path}: {e}"),
    }
}

/// The source topic and its dead-letter topic on a real cluster.
fn create_topics(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let dlq = format!("{topic}.dlq");
    let topics = [
        NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(-1)),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for result in runtime
        .block_on(admin.create_topics(&topics, &options))
        .expect("create topics")
    {
        result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Until every partition has a leader.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics().first().map(|t| {
                    t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{topic}: not every partition has a leader after 30 s");
}

/// The three cases on one broker; returns its label and results.
fn run_on(
    label: &str,
    brokers: &str,
    topic: &str,
    total: usize,
    partitions: i32,
) -> (String, Vec<CaseResult>) {
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let brokers = brokers.to_string();
    eprintln!("producing {total} events to {topic} ({partitions} partitions) at {brokers}...");
    let events = generate(&SynthSpec {
        count: total,
        regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        duplicate_ratio: 0.2,
        poison_ratio: 0.0,
        seed: 5,
        ..SynthSpec::default()
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
    let mut end = vec![0i64; partitions as usize];
    for (i, e) in events.iter().enumerate() {
        let partition = (i % partitions as usize) as i32;
        end[partition as usize] += 1;
        let mut record = BaseRecord::to(topic)
            .key(e.key.as_bytes())
            .payload(&e.payload[..])
            .partition(partition);
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
    drop(producer);
    drop(events);

    let mut results = Vec::new();

    // 1. The ceiling, in this process (the broker is another process).
    let cpu_before = cpu_seconds("self");
    let plain_secs = plain_consumer(&brokers, topic, total);
    let plain_cpu = (cpu_seconds("self") - cpu_before) / total as f64 * 1e6;
    let plain_rate = total as f64 / plain_secs;
    results.push(CaseResult {
        case: "plain consumer (ceiling)".into(),
        events: total,
        seconds: plain_secs,
        events_per_second: plain_rate,
        ratio_to_ceiling: 1.0,
        ceiling: "itself".into(),
        cpu_seconds_per_million_events: plain_cpu,
        peak_rss_mib: peak_rss_mib("self"),
        ids_per_api_call: None,
        ids_per_second: None,
    });

    // 2. The daemon against an API that answers at once.
    let api = runtime.block_on(fake(Duration::ZERO));
    let run = daemon(
        &brokers,
        topic,
        "bench-pipeline",
        &api.endpoint(),
        total,
        partitions,
        &end,
    );
    assert_eq!(
        api.deletion_counts().len(),
        distinct_ids,
        "every id deleted"
    );
    let rate = total as f64 / run.seconds;
    results.push(CaseResult {
        case: "daemon, instant API".into(),
        events: total,
        seconds: run.seconds,
        events_per_second: rate,
        ratio_to_ceiling: rate / plain_rate,
        ceiling: "plain consumer".into(),
        cpu_seconds_per_million_events: run.cpu_per_million,
        peak_rss_mib: run.peak_rss,
        ids_per_api_call: Some(api.deleted_total() as f64 / api.request_count().max(1) as f64),
        ids_per_second: Some(api.deleted_total() as f64 / run.seconds),
    });
    api.shutdown();

    // 3. API-bound: the fake answers after `latency`.
    let api = runtime.block_on(fake(latency));
    let run = daemon(
        &brokers,
        topic,
        "bench-api-bound",
        &api.endpoint(),
        total,
        partitions,
        &end,
    );
    let ceiling_ids = (REGIONS.len() * MAX_CONCURRENCY * 100) as f64 / latency.as_secs_f64();
    let ids_per_second = api.deleted_total() as f64 / run.seconds;
    results.push(CaseResult {
        case: format!("daemon, API answers after {} ms", latency.as_millis()),
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
        peak_rss_mib: run.peak_rss,
        ids_per_api_call: Some(api.deleted_total() as f64 / api.request_count().max(1) as f64),
        ids_per_second: Some(ids_per_second),
    });
    api.shutdown();

    println!(
        "{label}: {total} events, {avg_bytes} bytes on average, {distinct_ids} distinct ids, \
         {partitions} partitions"
    );
    (label.to_string(), results)
}

fn print_table(broker: &str, results: &[CaseResult]) {
    println!();
    println!("broker: {broker}");
    println!(
        "{:<34} {:>10} {:>7} {:>11} {:>9} {:>9} {:>9}",
        "case", "events/s", "ratio", "CPU s/M ev", "peak MiB", "ids/call", "ids/s"
    );
    for r in results {
        println!(
            "{:<34} {:>10.0} {:>7.3} {:>11.2} {:>9.1} {:>9} {:>9}",
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
        "ratio: daemon rows against the plain consumer on the same broker; the API-bound row \
         against {}",
        results[2].ceiling
    );
}
