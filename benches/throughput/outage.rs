//! The outage row (issue #18, goal 5): the CleverTap API down while a backlog
//! waits. A daemon in a group of its own reads the deletions topic (all of
//! it is backlog) against a fake API that answers every request 503. Once
//! it holds its in-memory bound (`consumer_paused` = 1), its RSS is read
//! every BENCH_OUTAGE_SAMPLE_SECS (5) for BENCH_OUTAGE_SECS (600); then the
//! API answers again and the backlog drains. The goal: no RSS sample more
//! than 10 % above the first (taken when the bound was reached), peak at
//! most 64 MiB. The row's rate is the drain's from the first commit after
//! the API came back (retries first wait out their backoff), against the
//! plain consumer's.

use std::time::{Duration, Instant};

use clevertap_deleter::testkit::fake_api::Faults;

use super::measure::{
    committed, committed_reader, cpu_seconds, env_or, free_port, scrape, status_mib,
};
use super::report::{CaseResult, Outage};
use super::workload::{Produced, Workload};
use super::{daemon_config, fake, spawn_daemon, MEMORY_GOAL_MIB};

pub fn selected() -> bool {
    let chosen = std::env::var("BENCH_WORKLOADS").unwrap_or_default();
    chosen.is_empty() || chosen.split(',').any(|c| c.trim() == "outage")
}

/// The growth allowed over the first RSS sample.
const FLAT_WITHIN: f64 = 0.10;

pub fn run(
    brokers: &str,
    topic: &Produced,
    plain_rate: f64,
    runtime: &tokio::runtime::Runtime,
) -> CaseResult {
    let outage = Duration::from_secs(env_or("BENCH_OUTAGE_SECS", 600));
    let every =
        Duration::from_secs(env_or("BENCH_OUTAGE_SAMPLE_SECS", 5)).max(Duration::from_secs(1));
    let name = topic.topic.as_str();
    let partitions = topic.end.len() as i32;
    let api = runtime.block_on(fake(Duration::ZERO));
    api.set_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    });
    let group = "bench-daemon-outage";
    let port = free_port();
    let config = daemon_config(brokers, name, group, &api.endpoint(), port);
    // Every refused request logs a warning: thousands of lines in 10 minutes.
    let path = config.path().join("bench.toml");
    let text = std::fs::read_to_string(&path).expect("bench config");
    std::fs::write(&path, text.replace("level = \"warn\"", "level = \"error\""))
        .expect("bench config");
    let daemon = spawn_daemon(&config);
    let pid = daemon.0.id().to_string();

    // The positive signal that the daemon holds its bound: backpressure on.
    let started = Instant::now();
    while scrape(port, "clevertap_deleter_consumer_paused") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "outage: the daemon never paused its consumer with the API down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let held_after = started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    let window = Instant::now();
    while window.elapsed() < outage {
        samples.push(status_mib(&pid, "VmRSS:"));
        std::thread::sleep(every.min(outage.saturating_sub(window.elapsed())));
    }
    samples.push(status_mib(&pid, "VmRSS:"));
    let in_memory = scrape(port, "clevertap_deleter_events_in_memory");
    let refused = api.status_counts().get(&503).copied().unwrap_or(0)
        + api.status_counts().get(&500).copied().unwrap_or(0)
        + api.status_counts().get(&502).copied().unwrap_or(0);

    // The API answers again: the backlog drains.
    let reader = committed_reader(brokers, group);
    let before: i64 = committed(&reader, name, partitions)
        .iter()
        .map(|o| o.max(&0))
        .sum();
    api.set_faults(Faults::default());
    let back = Instant::now();
    // Retries wait out their backoff (up to `api.retry_max_ms`) first.
    let mut resumed: Option<(Instant, i64, f64)> = None;
    loop {
        let now: Vec<i64> = committed(&reader, name, partitions);
        if resumed.is_none() {
            let sum: i64 = now.iter().map(|o| o.max(&0)).sum();
            if sum > before {
                resumed = Some((Instant::now(), sum, cpu_seconds(&pid)));
            }
        }
        if now == topic.end {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(900),
            "outage: the backlog did not drain after the API came back"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let drain = back.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds(&pid);
    let (resumed_at, at_resume, cpu_at_resume) =
        resumed.unwrap_or((Instant::now(), before, cpu_end));
    let resumed_after = resumed_at.duration_since(back).as_secs_f64();
    let peak = status_mib(&pid, "VmHWM:");
    assert_eq!(
        api.deletion_counts().len(),
        topic.distinct_ids,
        "outage: every id deleted once the API came back"
    );
    drop(daemon);
    api.shutdown();

    let (min, max) = samples
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    let spread = max / min.max(f64::MIN_POSITIVE) - 1.0;
    // Growth over the first sample (taken when the bound was reached) is
    // what a leak shows; memory given back after it is not.
    let growth = max / samples[0].max(f64::MIN_POSITIVE) - 1.0;
    let drained = (topic.end.iter().sum::<i64>() - at_resume) as f64;
    let rate = drained / (drain - resumed_after).max(1e-3);
    CaseResult {
        case: format!("API down {} s, then drain", outage.as_secs()),
        topic: Workload::Deletions.name(),
        events: drained as usize,
        seconds: drain - resumed_after,
        events_per_second: rate,
        ratio_to_ceiling: rate / plain_rate,
        ceiling: "plain consumer".into(),
        cpu_seconds_per_million_events: (cpu_end - cpu_at_resume) / drained.max(1.0) * 1e6,
        peak_rss_mib: Some(peak),
        ids_per_api_call: None,
        ids_per_second: None,
        goal: format!(
            "RSS grows < {:.0} % while down, <= {MEMORY_GOAL_MIB} MiB",
            FLAT_WITHIN * 100.0
        ),
        met: Some(growth <= FLAT_WITHIN && peak <= MEMORY_GOAL_MIB),
        latency: None,
        outage: Some(Outage {
            down_seconds: outage.as_secs_f64(),
            held_after_seconds: held_after,
            events_in_memory_held: in_memory,
            requests_refused: refused,
            rss_min_mib: min,
            rss_max_mib: max,
            rss_spread: spread,
            rss_growth: growth,
            resumed_after_seconds: resumed_after,
            rss_samples_mib: samples,
            sample_seconds: every.as_secs_f64(),
        }),
    }
}
