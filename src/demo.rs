//! `clevertap-deleter demo`: the whole daemon on one machine with nothing to
//! install. An in-process Kafka (librdkafka's mock cluster) and an in-process
//! fake CleverTap API that enforces the real contract; the real configuration
//! code and the real pipeline in between.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::api::{DeleteApi, HttpDeleteApi};
use crate::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap, Faults};
use crate::health::Health;
use crate::ids::IdKind;
use crate::ledger::Finish;
use crate::metrics::Metrics;
use crate::synth::{generate, SynthSpec};

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
}

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
    let config = crate::config::from_toml(&toml).map_err(|e| e.to_string())?;

    let events = generate(&SynthSpec {
        count: opts.events,
        regions: DEMO_REGIONS.iter().map(|r| r.to_string()).collect(),
        duplicate_ratio: 0.2,
        poison_ratio: 0.01,
        seed: 2026,
    });
    let expected: std::collections::HashSet<(String, IdKind, String)> = events
        .iter()
        .flat_map(|e| e.deletions.iter())
        .map(|d| (demo_account(&d.region).account_id, d.kind, d.id.clone()))
        .collect();
    let poison = events.iter().filter(|e| e.poison.is_some()).count();

    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let (bound, _server) = crate::server::serve(config.listen, metrics.clone(), health.clone())
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
    let produce = tokio::spawn(async move {
        let started = Instant::now();
        let mut pending = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let record = FutureRecord::to(TOPIC)
                .key(e.key.as_bytes())
                .payload(&e.payload[..])
                .partition((i % partitions as usize) as i32);
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
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            progress.show(&watch_metrics, finished());
            if finished() >= total {
                progress.end();
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
    let summary = crate::pipeline::run(config, api_client, metrics.clone(), health, shutdown)
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
    println!();
    println!("summary after {:.1} s", elapsed.as_secs_f64());
    println!(
        "  events consumed     {}",
        metrics.events_consumed.with_label_values(&[TOPIC]).get()
    );
    println!("  deleted             {}", finished(Finish::Deleted));
    println!("  duplicates absorbed {}", finished(Finish::Deduplicated));
    println!("  dead-lettered       {}", finished(Finish::DeadLettered));
    let mut per_region = BTreeMap::new();
    for r in DEMO_REGIONS {
        let n: u64 = IdKind::ALL
            .iter()
            .map(|k| {
                metrics
                    .ids_deleted
                    .with_label_values(&[r, k.as_str()])
                    .get()
            })
            .sum();
        per_region.insert(r, n);
    }
    println!("  ids deleted         {per_region:?}");
    println!(
        "  API calls           {} ({:.1} ids a call), answers {:?}",
        api.request_count(),
        api.deleted_total() as f64 / api.request_count().max(1) as f64,
        api.status_counts()
    );
    let mut reasons = Vec::new();
    for r in crate::decode::DeadLetterReason::ALL {
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
        "  committed offsets   {:?}",
        summary
            .committed
            .iter()
            .map(|(p, o)| format!("{}:{}", p.partition, o))
            .collect::<Vec<_>>()
    );
    let ok = missing == 0 && summary.unfinished_at_exit == 0;
    if ok {
        println!(
            "  verified: all {} ids confirmed deleted by the fake API; {repeated} sent more than once",
            expected.len()
        );
    } else {
        println!(
            "  NOT complete: {missing} ids not deleted, {} events unfinished",
            summary.unfinished_at_exit
        );
    }
    api.shutdown();
    drop(cluster);
    Ok(ok)
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
        let retries: u64 = DEMO_REGIONS
            .iter()
            .flat_map(|r| crate::api::RetryReason::ALL.map(|reason| (r, reason)))
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
