//! The pure core on one thread, no network: decode (the consumer thread's
//! share of the work) and the ledger (the coordinator's share: admit, dedup,
//! batch, confirm, offsets) over the same synthetic events as the throughput
//! benchmark. Decode is measured per `event.format`: the events as plain
//! JSON, as structured-mode CloudEvents and as binary-mode CloudEvents
//! (headers read the way the consumer reads them), and for comparison the
//! same JSON parsed by serde_json and sonic-rs (a SIMD parser) without the
//! decoder's checks, and events of another type (the skip path). Prints
//! nanoseconds per event for each step, best of 5 rounds.
//! `cargo bench --bench core`; BENCH_EVENTS=N (default 500,000) for the
//! ledger, BENCH_DECODE_EVENTS=N (default 100,000) per decoded format.

use std::hint::black_box;
use std::time::{Duration, Instant};

use clevertap_deleter::config::{from_toml, EventFormat};
use clevertap_deleter::domain::batch::BatchCapacity;
use clevertap_deleter::domain::ledger::{Ledger, LedgerSettings, Progress, RawRecord};
use clevertap_deleter::domain::offsets::PartitionId;
use clevertap_deleter::input::decode::{Decoded, EventDecoder};
use clevertap_deleter::input::headers;
use clevertap_deleter::input::source::SOURCE_CHUNK;
use clevertap_deleter::testkit::synth::{generate, SynthEvent, SynthFormat, SynthSpec};
use rdkafka::message::OwnedHeaders;

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
    // machine): BENCH_ROUNDS=1, and --toggle-collect='*run_ledger*', or one
    // --toggle-collect per format by its exact name ('core::decode_json',
    // 'core::decode_structured', 'core::decode_binary',
    // 'core::decode_skipped'; a pattern such as '*decode_*' also matches
    // `decode_all` inside them and toggles the collection off again), then
    // `callgrind_annotate --inclusive=yes`.
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
    let decode_total: usize = std::env::var("BENCH_DECODE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let spec = |count, format| SynthSpec {
        count,
        regions: vec!["eu1".into(), "in1".into(), "us1".into()],
        duplicate_ratio: 0.2,
        poison_ratio: 0.0,
        seed: 5,
        format,
    };
    let events = generate(&spec(total, SynthFormat::Json));
    let partitions: Vec<PartitionId> = (0..PARTITIONS)
        .map(|p| PartitionId::new("bench", p))
        .collect();
    let per = |d: Duration, n: usize| d.as_nanos() as f64 / n.max(1) as f64;
    println!("best of {rounds} rounds, one thread");

    type Run = fn(&EventDecoder, &[SynthEvent], &[Option<OwnedHeaders>]) -> Vec<Decoded>;
    let formats: [(&str, SynthFormat, EventFormat, Run); 3] = [
        ("json", SynthFormat::Json, EventFormat::Json, decode_json),
        (
            "cloudevents, structured",
            SynthFormat::CloudEventsStructured,
            EventFormat::CloudEvents,
            decode_structured,
        ),
        (
            "cloudevents, binary",
            SynthFormat::CloudEventsBinary,
            EventFormat::CloudEvents,
            decode_binary,
        ),
    ];
    for (name, synth, format, run) in formats {
        let mut events = generate(&spec(decode_total, synth));
        let headers: Vec<Option<OwnedHeaders>> =
            events.iter().map(SynthEvent::kafka_headers).collect();
        let bytes: usize = events.iter().map(|e| e.payload.len()).sum();
        let header_bytes: usize = events
            .iter()
            .flat_map(|e| &e.headers)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        for e in &mut events {
            e.headers = Vec::new();
        }
        let mut settings = config.settings.event.clone();
        settings.format = format;
        let decoder = EventDecoder::new(&settings, &config.regions);
        let best = best_of(rounds, || {
            let (out, took) = timed(|| run(&decoder, &events, &headers));
            assert!(
                out.iter().all(|d| matches!(d, Decoded::Delete(_))),
                "{name}: every event is a deletion"
            );
            took
        });
        println!(
            "decode, {name:<24} {:>5.0} ns per event ({decode_total} events; {} payload + {} header bytes on average)",
            per(best, decode_total),
            bytes / decode_total.max(1),
            header_bytes / decode_total.max(1),
        );
    }

    // The skip path: the same JSON events with another type, as on the
    // throughput benchmark's `skip` topic.
    let others: Vec<SynthEvent> = generate(&spec(decode_total, SynthFormat::Json))
        .into_iter()
        .map(|mut e| {
            let text = String::from_utf8(e.payload).expect("synthetic events are UTF-8");
            e.payload = text
                .replacen("\"user-deleted\"", "\"user-updated\"", 1)
                .into_bytes();
            e
        })
        .collect();
    let no_headers = vec![None; others.len()];
    let decoder = EventDecoder::new(&config.settings.event, &config.regions);
    let best = best_of(rounds, || {
        let (out, took) = timed(|| decode_skipped(&decoder, &others, &no_headers));
        assert!(
            out.iter().all(|d| matches!(d, Decoded::Skip)),
            "json, another type: every event is skipped"
        );
        took
    });
    println!(
        "decode, {:<24} {:>5.0} ns per event ({decode_total} events)",
        "json, another type",
        per(best, decode_total),
    );

    parsers_compared(&generate(&spec(decode_total, SynthFormat::Json)), rounds);

    let decoder = EventDecoder::new(&config.settings.event, &config.regions);
    let decoded: Vec<Decoded> = events
        .iter()
        .map(|e| decoder.decode(Some(&e.payload)))
        .collect();

    let ledger_best = best_of(rounds, || {
        let inputs = decoded.clone();
        let payloads: Vec<RawRecord> = events
            .iter()
            .map(|e| RawRecord {
                key: Some(bytes::Bytes::copy_from_slice(e.key.as_bytes())),
                payload: Some(bytes::Bytes::copy_from_slice(&e.payload)),
                timestamp_ms: Some(0),
                replay_count: None,
                headers: Vec::new(),
            })
            .collect();
        let (finished, took) = timed(|| run_ledger(&config, &partitions, inputs, payloads));
        assert_eq!(finished, total, "every event finished");
        took
    });
    println!(
        "ledger: {:>7.0} ns per event ({total} events; admit, dedup, batch, confirm, offsets)",
        per(ledger_best, total)
    );
}

/// What the decoder's own path (serde_json, borrowed, one pass over the
/// top-level keys, no tree; see `input/decode/flat.rs`) costs next to
/// general parsers over the same JSON events. The others only parse: none
/// checks the ids, the region, repeated keys or nesting, as the decoder does.
fn parsers_compared(events: &[SynthEvent], rounds: usize) {
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    let mut pointers = sonic_rs::PointerTree::new();
    for key in ["type", "region", "identity", "guid"] {
        pointers.add_path([key]);
    }
    type Parse<'a> = Box<dyn Fn(&[u8]) -> usize + 'a>;
    let parsers: [(&str, Parse); 3] = [
        (
            "serde_json, a tree (Value)",
            Box::new(|p| {
                serde_json::from_slice::<serde_json::Value>(p)
                    .map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
            }),
        ),
        (
            "sonic-rs, a tree (Value)",
            Box::new(|p| {
                use sonic_rs::JsonContainerTrait;
                sonic_rs::from_slice::<sonic_rs::Value>(p)
                    .map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
            }),
        ),
        (
            "sonic-rs, 4 keys, lazy",
            Box::new(|p| {
                sonic_rs::get_many(p, &pointers).map_or(0, |found| {
                    found.iter().flatten().map(|v| v.as_raw_str().len()).sum()
                })
            }),
        ),
    ];
    for (name, parse) in parsers {
        let best = best_of(rounds, || {
            let (found, took) =
                timed(|| payloads.iter().map(|p| parse(black_box(p))).sum::<usize>());
            assert!(found > 0, "{name} found nothing");
            took
        });
        println!(
            "parse only, {name:<27} {:>5.0} ns per event (no checks)",
            best.as_nanos() as f64 / payloads.len().max(1) as f64
        );
    }
}

/// The shortest of `rounds` runs of `round`, which times its own work (and
/// checks its result) with [`timed`].
fn best_of(rounds: usize, round: impl FnMut() -> Duration) -> Duration {
    std::iter::repeat_with(round)
        .take(rounds.max(1))
        .min()
        .expect("at least one round")
}

/// `work`'s result and how long it took.
fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = work();
    (out, started.elapsed())
}

/// Decodes every event as the consumer thread does (headers read through
/// [`headers::each`]).
fn decode_all(
    decoder: &EventDecoder,
    events: &[SynthEvent],
    headers: &[Option<OwnedHeaders>],
) -> Vec<Decoded> {
    events
        .iter()
        .zip(headers)
        .map(|(e, h)| {
            decoder.decode_message(
                Some(&e.payload),
                h.iter().flat_map(|h| headers::each(h.as_borrowed())),
            )
        })
        .collect()
}

// One function per format, for callgrind's per-function totals.
// (black_box keeps the three from being merged into one.)
#[inline(never)]
fn decode_json(d: &EventDecoder, e: &[SynthEvent], h: &[Option<OwnedHeaders>]) -> Vec<Decoded> {
    black_box(1);
    decode_all(d, e, h)
}

#[inline(never)]
fn decode_structured(
    d: &EventDecoder,
    e: &[SynthEvent],
    h: &[Option<OwnedHeaders>],
) -> Vec<Decoded> {
    black_box(2);
    decode_all(d, e, h)
}

#[inline(never)]
fn decode_skipped(d: &EventDecoder, e: &[SynthEvent], h: &[Option<OwnedHeaders>]) -> Vec<Decoded> {
    black_box(4);
    decode_all(d, e, h)
}

#[inline(never)]
fn decode_binary(d: &EventDecoder, e: &[SynthEvent], h: &[Option<OwnedHeaders>]) -> Vec<Decoded> {
    black_box(3);
    decode_all(d, e, h)
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
