//! What the throughput benchmark reports: one row per case, printed as a
//! table per broker and written as JSON (read by docs/plot_bench.py).

#[derive(Debug, Default, serde::Serialize)]
pub struct CaseResult {
    pub case: String,
    pub topic: &'static str,
    pub events: usize,
    pub seconds: f64,
    pub events_per_second: f64,
    pub ratio_to_ceiling: f64,
    pub ceiling: String,
    pub cpu_seconds_per_million_events: f64,
    pub peak_rss_mib: Option<f64>,
    pub ids_per_api_call: Option<f64>,
    pub ids_per_second: Option<f64>,
    /// The goal this row is held against, and whether this run met it.
    pub goal: String,
    pub met: Option<bool>,
    /// The latency row's figures (absent from the other rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// The outage row's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<Outage>,
}

/// The daemon while the API is down, then draining (`outage.rs`).
#[derive(Debug, serde::Serialize)]
pub struct Outage {
    pub down_seconds: f64,
    /// From the daemon's start until it paused its consumer.
    pub held_after_seconds: f64,
    pub events_in_memory_held: f64,
    /// Requests the fake answered 5xx while down.
    pub requests_refused: u64,
    pub rss_min_mib: f64,
    pub rss_max_mib: f64,
    /// max / min - 1 over the samples.
    pub rss_spread: f64,
    /// max / first sample - 1: the goal's measure (at most 0.1).
    pub rss_growth: f64,
    /// From the API's return until the first commit moved.
    pub resumed_after_seconds: f64,
    pub rss_samples_mib: Vec<f64>,
    pub sample_seconds: f64,
}

/// Milliseconds from produce to the API call and to the commit.
#[derive(Debug, serde::Serialize)]
pub struct Latency {
    pub events_per_second_target: f64,
    /// Events streamed first at that rate and not counted (the row's
    /// `events` are the counted ones).
    pub warmup_events: usize,
    pub api_latency_ms: f64,
    pub linger_ms: u64,
    /// The goal: p99 to the API call at most linger + 2 x API latency.
    pub bound_ms: f64,
    pub p50_to_api_call_ms: f64,
    pub p99_to_api_call_ms: f64,
    pub max_to_api_call_ms: f64,
    /// The worst of each second of the counted events, in order.
    pub max_to_api_call_ms_by_second: Vec<f64>,
    pub p50_to_commit_ms: f64,
    pub p99_to_commit_ms: f64,
    pub max_to_commit_ms: f64,
    /// With BENCH_LATENCY_REFERENCE=1: produce -> read by a plain consumer
    /// in the bench process (the broker's and the machine's share).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_to_plain_consumer_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_to_plain_consumer_ms: Option<f64>,
    /// How often the group's committed offsets were read.
    pub commit_sample_ms: f64,
    /// Events never seen at the API, or never committed, before the bench
    /// gave up waiting (0 in a good run).
    pub missing_api_call: usize,
    pub missing_commit: usize,
    /// What bounds the figures on this broker, when it is not the daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub fn print_table(broker: &str, results: &[CaseResult]) {
    println!();
    println!("broker: {broker}");
    println!(
        "{:<10} {:<32} {:>10} {:>7} {:>10} {:>8} {:>8} {:>8}  goal",
        "topic", "case", "events/s", "ratio", "CPU s/M", "peak MiB", "ids/call", "ids/s"
    );
    for r in results {
        println!(
            "{:<10} {:<32} {:>10.0} {:>7.3} {:>10.2} {:>8} {:>8} {:>8}  {}{}",
            r.topic,
            r.case,
            r.events_per_second,
            r.ratio_to_ceiling,
            r.cpu_seconds_per_million_events,
            r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
            r.ids_per_api_call.map_or("-".into(), |v| format!("{v:.1}")),
            r.ids_per_second.map_or("-".into(), |v| format!("{v:.0}")),
            r.goal,
            match r.met {
                Some(true) => " (met)",
                Some(false) => " (NOT met)",
                None => "",
            }
        );
        if let Some(o) = &r.outage {
            println!(
                "{:<10} API down {:.0} s: paused {:.1} s after start holding {:.0} events; RSS {:.1}..{:.1} MiB \
                 (first {:.1}, growth {:.1} %, {} samples every {:.0} s); {} requests refused; \
                 first commit {:.1} s after the API came back, then drained at the rate shown",
                "",
                o.down_seconds,
                o.held_after_seconds,
                o.events_in_memory_held,
                o.rss_min_mib,
                o.rss_max_mib,
                o.rss_samples_mib.first().copied().unwrap_or(0.0),
                o.rss_growth * 100.0,
                o.rss_samples_mib.len(),
                o.sample_seconds,
                o.requests_refused,
                o.resumed_after_seconds,
            );
        }
        if let Some(l) = &r.latency {
            println!(
                "{:<10} produce -> API call: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
                 produce -> commit: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
                 (offsets read every {:.0} ms){}",
                "",
                l.p50_to_api_call_ms,
                l.p99_to_api_call_ms,
                l.max_to_api_call_ms,
                l.p50_to_commit_ms,
                l.p99_to_commit_ms,
                l.max_to_commit_ms,
                l.commit_sample_ms,
                if l.missing_api_call + l.missing_commit > 0 {
                    format!(
                        "; MISSING: {} never called, {} never committed",
                        l.missing_api_call, l.missing_commit
                    )
                } else {
                    String::new()
                }
            );
            if let (Some(p50), Some(p99)) = (l.p50_to_plain_consumer_ms, l.p99_to_plain_consumer_ms)
            {
                println!(
                    "{:<10} reference, produce -> read by a plain consumer: p50 {p50:.1} ms, p99 {p99:.1} ms",
                    ""
                );
            }
            let worst: Vec<String> = l
                .max_to_api_call_ms_by_second
                .iter()
                .map(|ms| format!("{ms:.0}"))
                .collect();
            println!(
                "{:<10} worst produce -> API call of each second, ms: {}",
                "",
                worst.join(" ")
            );
            if let Some(note) = &l.note {
                println!("{:<10} note: {note}", "");
            }
        }
    }
    println!(
        "ratio: daemon rows against the plain consumer on the same broker and topic; the \
         API-bound row against the API's ceiling; replica rows against one replica; the \
         outage row's drain after the API came back against the plain consumer; the latency row's p99 to the API call against its bound (at most 1 to meet it)"
    );
}

/// Writes every broker's rows to `$CARGO_TARGET_DIR/bench-throughput.json`.
pub fn write_json(all: &[(String, Vec<CaseResult>)]) {
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
