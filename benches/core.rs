//! The pure core on one thread, no network: decode (the consumer thread's
//! share of the work) and the ledger (the coordinator's share: admit, dedup,
//! batch, confirm, offsets) over the same synthetic events as the throughput
//! benchmark. Prints nanoseconds per event for each step, best of 5 rounds.
//! `cargo bench --bench core`; BENCH_EVENTS=N (default 500,000).

use std::hint::black_box;
use std::time::{Duration, Instant};

use clevertap_deleter::config::from_toml;
use clevertap_deleter::domain::batch::BatchCapacity;
use clevertap_deleter::domain::ledger::{Ledger, LedgerSettings, Progress, RawRecord};
use clevertap_deleter::domain::offsets::PartitionId;
use clevertap_deleter::input::decode::{Decoded, EventDecoder};
use clevertap_deleter::input::source::SOURCE_CHUNK;
use clevertap_deleter::testkit::synth::{generate, SynthSpec};

// The daemon's allocator (src/main.rs), so the figures are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 24;

fn main() {
    let total: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    // Under valgrind's callgrind (stable instruction counts on a noisy
    // machine): BENCH_ROUNDS=1, and --toggle-collect='*run_ledger*'.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let config = from_toml(
        "[regions.eu1]\naccount_id = \"A\"\npasscode = \"p\"\n\
         [regions.in1]\naccount_id = \"B\"\npasscode = \"p\"\n\
         [regions.us1]\naccount_id = \"C\"\npasscode = \"p\"\n",
    )
    .expect("config");
    let events = generate(&SynthSpec {
        count: total,
        regions: vec!["eu1".into(), "in1".into(), "us1".into()],
        duplicate_ratio: 0.2,
        poison_ratio: 0.0,
        seed: 5,
    });
    let decoder = EventDecoder::new(&config.settings.event, &config.regions);
    let partitions: Vec<PartitionId> = (0..PARTITIONS)
        .map(|p| PartitionId::new("bench", p))
        .collect();

    let mut decode_best = Duration::MAX;
    let mut decoded = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        decoded = events
            .iter()
            .map(|e| decoder.decode(Some(&e.payload)))
            .collect::<Vec<Decoded>>();
        decode_best = decode_best.min(started.elapsed());
    }

    let mut ledger_best = Duration::MAX;
    for _ in 0..rounds {
        let inputs = decoded.clone();
        let payloads: Vec<RawRecord> = events
            .iter()
            .map(|e| RawRecord {
                key: Some(bytes::Bytes::copy_from_slice(e.key.as_bytes())),
                payload: Some(bytes::Bytes::copy_from_slice(&e.payload)),
                timestamp_ms: Some(0),
                replay_count: None,
            })
            .collect();
        let started = Instant::now();
        let finished = run_ledger(&config, &partitions, inputs, payloads);
        ledger_best = ledger_best.min(started.elapsed());
        assert_eq!(finished, total, "every event finished");
    }
    let per = |d: Duration| d.as_nanos() as f64 / total as f64;
    println!("{total} events, best of {rounds} rounds, one thread");
    println!("decode: {:>7.0} ns per event", per(decode_best));
    println!(
        "ledger: {:>7.0} ns per event (admit, dedup, batch, confirm, offsets)",
        per(ledger_best)
    );
}

/// Admits every event in partition round robin, in chunks of 256 as the
/// consumer thread hands them over, confirms each batch as it closes (an
/// instant API), then the rest; returns the events finished.
#[inline(never)]
fn run_ledger(
    config: &clevertap_deleter::config::Config,
    partitions: &[PartitionId],
    inputs: Vec<Decoded>,
    records: Vec<RawRecord>,
) -> usize {
    let mut ledger = Ledger::new(LedgerSettings {
        capacity: BatchCapacity::new(100).expect("100"),
        linger: Duration::from_millis(50),
        recent_capacity: config.settings.dedup.recent_capacity,
        recent_ttl: Duration::from_secs(config.settings.dedup.recent_ttl_secs),
        audit: false,
    });
    for p in partitions {
        ledger.assign(p.clone());
    }
    let now = Instant::now();
    let mut offsets = vec![0i64; partitions.len()];
    let mut finished = 0;
    let mut progress = Progress::default();
    for (n, (decoded, record)) in inputs.into_iter().zip(records).enumerate() {
        let p = n % partitions.len();
        ledger.admit_into(
            &partitions[p],
            offsets[p],
            record,
            decoded,
            now,
            &mut progress,
        );
        offsets[p] += 1;
        if n % SOURCE_CHUNK == SOURCE_CHUNK - 1 {
            let chunk = std::mem::take(&mut progress);
            finished += chunk.finished.len();
            for batch in chunk.batches {
                finished += ledger.deleted(&batch, now).finished.len();
            }
        }
        if n % 1000 == 0 {
            black_box(ledger.take_commits());
        }
    }
    finished += progress.finished.len();
    for batch in progress.batches {
        finished += ledger.deleted(&batch, now).finished.len();
    }
    for batch in ledger.take_all_batches() {
        finished += ledger.deleted(&batch, now).finished.len();
    }
    black_box(ledger.take_commits());
    finished
}
