//! `clevertap-deleter demo`: the whole daemon on one machine with nothing to
//! install. An in-process Kafka (librdkafka's mock cluster) and an in-process
//! fake CleverTap API that enforces the real contract; the real configuration
//! code and the real pipeline in between.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::clevertap::api::{DeleteApi, HttpDeleteApi};
use crate::domain::ids::IdKind;
use crate::domain::ledger::Finish;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap, Faults};
use crate::testkit::synth::{generate, SynthFormat, SynthSpec};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    /// Events produced per second; 0 produces them all at once.
    pub rate: u64,
    pub fail_rate: f64,
    pub throttle_rate: f64,
    pub latency: Duration,
    pub listen: SocketAddr,
    pub partitions: i32,
    /// After the summary, keep serving /metrics until Ctrl-C.
    pub keep_serving: bool,
    /// CloudEvents in both modes instead of plain JSON events.
    pub cloudevents: bool,
}

/// The in-process Kafka keeps at most 5 MiB or 100,000 records per
/// partition and drops the oldest beyond that, read or not. The demo's
/// producer never runs further ahead of the consumer than this many events
/// per partition (about 1 MiB), so nothing is dropped unread.
const PRODUCE_AHEAD_PER_PARTITION: u64 = 5_000;

/// No event finished for this long while some are left: the demo says why
/// it stopped instead of waiting forever.
const STALL_AFTER: Duration = Duration::from_secs(60);

const TOPIC: &str = "user-deleted";
const DEMO_REGIONS: [&str; 3] = ["eu1", "in1", "us1"];

fn demo_account(region: &str) -> FakeAccount {
    FakeAccount {
        account_id: format!("DEMO-{}", region.to_uppercase()),
        passcode: format!("demo-passcode-{region}"),
    }
}

/// Runs the demo; returns whether every expected deletion was confirmed.
pub async fn run(opts: DemoOptions) -> Result<bool, String> {
    let started = Instant::now();
    let cluster = MockCluster::new(1).map_err(|e| format!("starting the in-process Kafka: {e}"))?;
    let bootstrap = cluster.bootstrap_servers();
    cluster
        .create_topic(TOPIC, opts.partitions, 1)
        .and_then(|_| cluster.create_topic(&format!("{TOPIC}.dlq"), 1, 1))
        .map_err(|e| format!("creating topics: {e}"))?;

    let api = FakeCleverTap::start(FakeApiConfig {
        accounts: DEMO_REGIONS.iter().map(|r| demo_account(r)).collect(),
        max_concurrency: 15,
        latency: opts.latency,
        faults: Faults {
            server_error: opts.fail_rate,
            too_many: opts.throttle_rate,
            ..Faults::default()
        },
        listen: "127.0.0.1:0".parse().expect("literal address"),
    })
    .await
    .map_err(|e| format!("starting the fake CleverTap API: {e}"))?;

    // The real configuration path: TOML text through the same loader and validation.
    let mut toml = format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\ntopics = [\"{TOPIC}\"]\ngroup_id = \"clevertap-deleter-demo\"\ndlq_topic = \"{TOPIC}.dlq\"\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [batch]\nlinger_ms = 100\n[api]\nmax_concurrency = 10\nretry_initial_ms = 50\nretry_max_ms = 2000\n\
         [pipeline]\ncommit_interval_ms = 500\n[server]\nlisten = \"{}\"\n",
        opts.listen
    );
    for r in DEMO_REGIONS {
        let a = demo_account(r);
        toml.push_str(&format!(
            "[regions.{r}]\naccount_id = \"{}\"\npasscode = \"{}\"\nendpoint = \"{}\"\n",
            a.account_id,
            a.passcode,
            api.endpoint()
        ));
    }
    if opts.cloudevents {
        toml.push_str("[event]\nformat = \"cloudevents\"\n");
    }
    let config = crate::config::from_toml(&toml).map_err(|e| e.to_string())?;

    let events = generate(&SynthSpec {
        count: opts.events,
        regions: DEMO_REGIONS.iter().map(|r| r.to_string()).collect(),
        duplicate_ratio: 0.2,
        poison_ratio: 0.01,
        seed: 2026,
        format: if opts.cloudevents {
            SynthFormat::CloudEvents
        } else {
            SynthFormat::Json
        },
    });
    let expected: std::collections::HashSet<(String, IdKind, String)> = events
        .iter()
        .flat_map(|e| e.deletions.iter())
        .map(|d| (demo_account(&d.region).account_id, d.kind, d.id.clone()))
        .collect();
    let poison = events.iter().filter(|e| e.poison.is_some()).count();

    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let (bound, _server) =
        crate::ops::server::serve(config.listen, metrics.clone(), health.clone())
            .await
            .map_err(|e| {
                format!(
                    "binding {}: {e} (choose another with --listen)",
                    config.listen
                )
            })?;

    println!("clevertap-deleter demo");
    println!(
        "  in-process Kafka at {bootstrap}, topic `{TOPIC}` with {} partitions",
        opts.partitions
    );
    println!("  fake CleverTap API at {} (accounts eu1, in1, us1; 15 concurrent requests each, 100 ids a request)", api.endpoint());
    println!(
        "  {} events: ~20% repeats, {poison} poison messages, {} distinct ids to delete",
        events.len(),
        expected.len()
    );
    if opts.cloudevents {
        println!(
            "  as CloudEvents, structured and binary mode mixed (event.format = \"cloudevents\")"
        );
    }
    if opts.fail_rate > 0.0 || opts.throttle_rate > 0.0 {
        println!(
            "  injected faults: {:.0}% of API calls answer 5xx, {:.0}% answer 429 (watch the retries)",
            opts.fail_rate * 100.0,
            opts.throttle_rate * 100.0
        );
    }
    println!("  metrics: http://{bound}/metrics  (also /healthz, /readyz)");
    println!();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("creating the demo producer: {e}"))?;
    let partitions = opts.partitions;
    let rate = opts.rate;
    let consumed_counter = metrics.events_consumed.with_label_values(&[TOPIC]);
    let ahead = PRODUCE_AHEAD_PER_PARTITION * partitions.max(1) as u64;
    let produce = tokio::spawn(async move {
        let started = Instant::now();
        let mut pending = Vec::new();
        for (i, e) in events.iter().enumerate() {
            // Produce while consuming: stay within what the in-process
            // Kafka keeps per partition.
            while i as u64 >= consumed_counter.get() + ahead {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut record = FutureRecord::to(TOPIC)
                .key(e.key.as_bytes())
                .payload(&e.payload[..])
                .partition((i % partitions as usize) as i32);
            if let Some(headers) = e.kafka_headers() {
                record = record.headers(headers);
            }
            pending.push(producer.send(record, Duration::from_secs(10)));
            if pending.len() >= 1_000 {
                futures::future::join_all(pending.drain(..)).await;
            }
            if rate > 0 {
                let due = started + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
        }
        futures::future::join_all(pending).await;
    });

    let total = opts.events as u64;
    let watch_metrics = metrics.clone();
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stall_flag = stalled.clone();
    let done = async move {
        let finished = || -> u64 {
            Finish::ALL
                .iter()
                .map(|f| {
                    watch_metrics
                        .events_finished
                        .with_label_values(&[f.as_str()])
                        .get()
                })
                .sum()
        };
        let mut progress = Progress::new(total);
        let mut last = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now_finished = finished();
            progress.show(&watch_metrics, now_finished);
            // Records dropped unread can never finish: count them as done.
            if now_finished + lost_records(&watch_metrics) >= total {
                progress.end();
                return;
            }
            if now_finished != last.0 {
                last = (now_finished, Instant::now());
            } else if last.1.elapsed() >= STALL_AFTER {
                progress.end();
                stall_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                println!(
                    "\nstalled: no event finished for {} s ({now_finished} of {total} finished); stopping",
                    STALL_AFTER.as_secs()
                );
                return;
            }
        }
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let shutdown = async move {
        tokio::select! {
            _ = done => {}
            _ = ctrl_c => println!("\ninterrupted: draining and committing"),
        }
    };
    let api_client: Arc<dyn DeleteApi> =
        Arc::new(HttpDeleteApi::new(config.timeout(), 16).map_err(|e| e.to_string())?);
    let summary = crate::app::pipeline::run(
        config,
        api_client,
        metrics.clone(),
        health,
        shutdown,
        Default::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    produce.abort();

    // The summary, from the daemon's own metrics and what the fake API saw.
    let elapsed = started.elapsed();
    let finished = |f: Finish| {
        metrics
            .events_finished
            .with_label_values(&[f.as_str()])
            .get()
    };
    let counts = api.deletion_counts();
    let missing = expected.iter().filter(|k| !counts.contains_key(*k)).count();
    let repeated = counts.values().filter(|n| **n > 1).count();
    let lost = lost_records(&metrics);
    println!();
    println!("summary after {:.1} s", elapsed.as_secs_f64());
    println!(
        "  events consumed     {}",
        metrics.events_consumed.with_label_values(&[TOPIC]).get()
    );
    println!("  deleted             {}", finished(Finish::Deleted));
    println!("  duplicates absorbed {}", finished(Finish::Deduplicated));
    println!("  dead-lettered       {}", finished(Finish::DeadLettered));
    let per_region: Vec<String> = DEMO_REGIONS
        .iter()
        .map(|r| {
            let n: u64 = IdKind::ALL
                .iter()
                .map(|k| {
                    metrics
                        .ids_deleted
                        .with_label_values(&[r, k.as_str()])
                        .get()
                })
                .sum();
            format!("{r} {}", thousands(n))
        })
        .collect();
    println!("  ids deleted         {}", per_region.join(", "));
    let statuses = api.status_counts();
    let successful = statuses.get(&200).copied().unwrap_or(0);
    let answers: Vec<String> = statuses
        .iter()
        .map(|(status, n)| format!("{status}: {}", thousands(*n)))
        .collect();
    println!(
        "  API calls           {} ({:.1} ids a successful call), answers {}",
        thousands(api.request_count()),
        api.deleted_total() as f64 / successful.max(1) as f64,
        answers.join(", ")
    );
    let mut reasons = Vec::new();
    for r in crate::input::decode::DeadLetterReason::ALL {
        let n = metrics.dead_letters.with_label_values(&[r.as_str()]).get();
        if n > 0 {
            reasons.push(format!("{}={n}", r.as_str()));
        }
    }
    println!(
        "  dead letters        {}",
        if reasons.is_empty() {
            "none".to_string()
        } else {
            reasons.join(", ")
        }
    );
    println!(
        "  committed offsets   {}",
        summary
            .committed
            .iter()
            .map(|(p, o)| format!("partition {} at {}", p.partition, thousands(*o as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if lost > 0 {
        println!(
            "  LOST                {} events were dropped by the in-process Kafka before they were read (see records_lost_total); their ids were never deleted",
            thousands(lost)
        );
    }
    let ok = missing == 0 && summary.unfinished_at_exit == 0 && lost == 0;
    if ok {
        println!(
            "  verified: all {} ids confirmed deleted by the fake API; {repeated} sent more than once",
            expected.len()
        );
    } else {
        println!(
            "  NOT complete: {missing} ids not deleted, {} events unfinished{}",
            summary.unfinished_at_exit,
            if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                " (the demo stalled)"
            } else {
                ""
            }
        );
    }
    if opts.keep_serving {
        println!();
        println!("still serving http://{bound}/metrics (Ctrl-C to quit)");
        let _ = tokio::signal::ctrl_c().await;
    }
    api.shutdown();
    drop(cluster);
    Ok(ok)
}

/// Records the in-process Kafka dropped before they were read, all partitions.
fn lost_records(m: &Metrics) -> u64 {
    use prometheus::core::Collector;
    m.records_lost
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A progress line: redrawn in place on a terminal, plain lines otherwise.
struct Progress {
    total: u64,
    terminal: bool,
    started: Instant,
    last_plain: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            total,
            terminal: std::io::stdout().is_terminal(),
            started: Instant::now(),
            last_plain: Instant::now(),
        }
    }

    fn show(&mut self, m: &Metrics, finished: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        if m.partitions_assigned.get() == 0 && finished == 0 {
            let line = "joining the consumer group ...";
            if self.terminal {
                print!("\r{line}   ");
                let _ = std::io::stdout().flush();
            } else if self.last_plain.elapsed() >= Duration::from_secs(2) {
                self.last_plain = Instant::now();
                println!("{line}");
            }
            return;
        }
        let retries: u64 = DEMO_REGIONS
            .iter()
            .flat_map(|r| crate::clevertap::api::RetryReason::ALL.map(|reason| (r, reason)))
            .map(|(r, reason)| m.api_retries.with_label_values(&[r, reason.as_str()]).get())
            .sum();
        let width = 30;
        let filled = ((finished as f64 / self.total.max(1) as f64) * width as f64) as usize;
        let line = format!(
            "[{}{}] {finished}/{} events  {:.0} ev/s  in memory {}  retries {retries}",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width)),
            self.total,
            finished as f64 / secs,
            m.events_in_memory.get(),
        );
        if self.terminal {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
        } else if self.last_plain.elapsed() >= Duration::from_secs(2) || finished >= self.total {
            self.last_plain = Instant::now();
            println!("{line}");
        }
    }

    fn end(&self) {
        if self.terminal {
            println!();
        }
    }
}
