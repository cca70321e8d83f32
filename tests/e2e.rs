//! End to end against a real broker: the compiled daemon as a separate process
//! (`clevertap-deleter run --config FILE`), Apache Kafka (started by the tests
//! with `deploy/local-kafka/local-kafka`, the cluster named by
//! `KAFKA_BROKERS`, or a testcontainers container with
//! `E2E_BROKER=testcontainers`) and the fake CleverTap API. Crashes,
//! restarts, rebalances under both group protocols, a fenced zombie, broker
//! and API outages, API faults. See docs/TESTING.md "Real-broker tests".
//!
//! A scenario that cannot run here fails, naming what is missing, unless
//! `E2E_ALLOW_SKIP=1`. The scenarios run one at a time (they share two cores
//! and measure time and memory); `--nocapture` shows their figures.
//! 3-node scenarios: `tests/e2e_cluster.rs`; replay-dlq's transactions:
//! `tests/e2e_replay.rs`; SASL/TLS: `tests/e2e_security.rs`.

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/cgrp.rs"]
mod cgrp;
#[path = "e2e/check.rs"]
mod check;
mod common;
#[path = "e2e/daemon.rs"]
mod daemon;
#[path = "e2e/local_kafka.rs"]
mod local_kafka;
#[path = "e2e/world.rs"]
mod world;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clevertap_deleter::testkit::fake_api::Faults;
use clevertap_deleter::testkit::synth::{generate, SynthSpec};
use clevertap_deleter::{app::pipeline, input::source};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use check::{verify, wait_fully_committed, Expected};
use daemon::{metric_sum, Api, Daemon};
use world::{
    assigned, begin, committed_events, per_sec, ready, replica_figures, serial, wait_until,
    Protocol, World,
};

// ------------------------------------------------------------------ 1. steady

/// 60,000 events, one daemon, no fault: 40,000 waiting when it starts and
/// 20,000 produced while it runs. Every id is deleted exactly once.
#[test]
fn e2e_1_steady_run_deletes_each_id_exactly_once() {
    let Some((_serial, world)) = begin("steady", 6) else {
        return;
    };
    let mut events = generate(&SynthSpec {
        count: 60_000,
        seed: 101,
        ..SynthSpec::default()
    });
    let later = events.split_off(40_000);
    let (mut produced, produce_time) = world.produce_events(events, 0);
    println!(
        "[1 steady] produced 40000 events in {produce_time:.1?} ({:.0}/s)",
        per_sec(40_000, produce_time)
    );

    let api = Api::start(Duration::from_millis(10), Faults::default());
    // Not every event is known yet: the sampler only watches for moves back.
    let sampler = check::CommitSampler::backwards_only(
        &world.broker,
        &world.topic,
        world.partitions,
        &world.group,
        Duration::from_millis(100),
    );
    let started = Instant::now();
    let mut d = world.daemon("steady", &api, "");
    let (more, _) = world.produce_events(later, 40_000);
    produced.append(more);
    let expected = Expected::new(&produced);
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(&reader, &expected, Duration::from_secs(150), &mut [&mut d]);
    let took = started.elapsed();
    let metrics = d.metrics().unwrap_or_default();
    let mem = d.memory();
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let samples = sampler.finish();

    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    println!(
        "[1 steady] all committed {took:.1?} after start ({:.0} events/s); {outcome}; \
         daemon (VmRSS, VmHWM) KiB {mem:?}; {samples}",
        per_sec(expected.events(), took)
    );
    samples.assert_strict("1 steady", 0);
    assert_eq!(
        outcome.ids_deleted_more_than_once, 0,
        "no id is sent twice in a steady run"
    );
    assert_eq!(
        metric_sum(&metrics, "clevertap_deleter_events_consumed_total"),
        expected.events() as f64,
        "every event read once"
    );
}

// ------------------------------------------------------------------ 2. kill -9

/// What the group and the fake looked like right after a kill -9.
struct Kill {
    after: Duration,
    /// Events the killed process had read (its last scrape, just before the kill).
    consumed: f64,
    in_memory: f64,
    /// The replica's own counters.
    figures: String,
    /// Committed offsets when it started and after it died.
    started_from: Vec<i64>,
    committed: Vec<i64>,
    /// Every deletion so far.
    deleted: std::collections::HashMap<daemon::Key, u32>,
}

/// kill -9 at three random moments, restarted each time: nothing lost, and
/// each id deleted at most once plus once per crash that caught it done but
/// not committed.
#[test]
fn e2e_2_kill9_three_times_loses_nothing() {
    let Some((_serial, world)) = begin("kill9", 6) else {
        return;
    };
    let partitions = world.partitions;
    // Enough backlog, and answers slow enough, that the third restart still
    // finds work: a faster daemon drained 80,000 events at 10 ms before the
    // third kill, and its successor had nothing left to delete.
    let (produced, _) = world.produce(200_000, 202);
    // The bound below counts crashes only: the recently-deleted memory must
    // hold every id of the run (about 204,000), or a repeat of an id it
    // forgot is sent again by design, not because of a crash.
    let memory = "[dedup]\nrecent_capacity = 400000\n";
    let expected = Arc::new(Expected::new(&produced));
    let api = Api::start(Duration::from_millis(25), Faults::default());
    let sampler = world.sampler(&expected, &api, Duration::from_millis(200));
    let seed: u64 = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = StdRng::seed_from_u64(seed);
    println!("[2 kill -9] random moments from E2E_SEED={seed}");

    let reader = world.broker.offsets_reader(&world.group);
    let started = Instant::now();
    let mut started_from = vec![0i64; partitions as usize];
    let mut kills: Vec<Kill> = Vec::new();
    let mut d = world.daemon("kill9-0", &api, memory);
    for k in 0..3 {
        // A random moment once this process is deleting.
        let base = api.deleted_total();
        wait_until(
            "the daemon deletes",
            Duration::from_secs(60),
            &mut [&mut d],
            || api.deleted_total() > base,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(200..2500)));
        d.assert_running();
        let metrics = d.metrics().unwrap_or_default();
        d.kill9();
        // Let requests that reached the fake before the kill finish there,
        // and a commit the broker had received land: read until two reads a
        // second apart agree.
        std::thread::sleep(Duration::from_millis(500));
        let mut committed: Vec<i64> = Vec::new();
        for _ in 0..15 {
            let now: Vec<i64> = reader
                .committed(&expected.topic, partitions)
                .into_iter()
                .map(|c| c.max(0))
                .collect();
            if now == committed {
                break;
            }
            committed = now;
            std::thread::sleep(Duration::from_secs(1));
        }
        kills.push(Kill {
            after: started.elapsed(),
            consumed: metric_sum(&metrics, "clevertap_deleter_events_consumed_total"),
            in_memory: common::metric(&metrics, "clevertap_deleter_events_in_memory"),
            figures: replica_figures("killed", &metrics),
            started_from: std::mem::replace(&mut started_from, committed.clone()),
            committed,
            deleted: api.deletion_counts(),
        });
        // Restarted at once: Kafka needs no delay (see docs/TESTING.md "Broker quirks").
        d = world.daemon(&format!("kill9-{}", k + 1), &api, memory);
    }
    let restarted = Instant::now();
    wait_fully_committed(&reader, &expected, Duration::from_secs(150), &mut [&mut d]);
    let drained = restarted.elapsed();
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    println!("[2 kill -9] {samples}");
    samples.assert_strict("2 kill -9", expected.events() / 2);

    // The bound: an id may be deleted again only after a crash that caught it
    // already deleted while an event asking for it was not committed yet
    // (read and finished but not committed, or a repeat further on that the
    // restarted process cannot recognise: the dedup memory is per process).
    // So each id is deleted at most 1 + (number of such crashes) times.
    let counts = api.deletion_counts();
    let exposed: Vec<std::collections::HashSet<&daemon::Key>> = kills
        .iter()
        .map(|k| {
            expected
                .ids_from(&k.committed)
                .into_iter()
                .filter(|x| k.deleted.contains_key(*x))
                .collect()
        })
        .collect();
    let mut beyond = Vec::new();
    for (x, &n) in &counts {
        let allowed = 1 + exposed.iter().filter(|e| e.contains(x)).count();
        if n as usize > allowed {
            beyond.push(format!("{x:?} deleted {n} times, bound {allowed}"));
        }
    }
    for (i, k) in kills.iter().enumerate() {
        let after = kills.get(i + 1).map_or(&counts, |next| &next.deleted);
        let redone = k
            .deleted
            .iter()
            .filter(|(x, n)| after.get(*x).is_some_and(|m| m > n))
            .count();
        let progress = committed_events(&k.committed) - committed_events(&k.started_from);
        println!(
            "[2 kill -9] kill {} at {:.1?}: committed {:?} ({} events); the process read {} \
             and committed {progress} of them, so {} read but not committed ({} unfinished in \
             memory); ids deleted again after this kill: {redone}, bound {} (ids deleted before \
             the kill that uncommitted events ask for)",
            i + 1,
            k.after,
            k.committed,
            committed_events(&k.committed),
            k.consumed,
            k.consumed - progress as f64,
            k.in_memory,
            exposed[i].len()
        );
        println!("[2 kill -9]     {}", k.figures);
        assert!(
            redone <= exposed[i].len(),
            "kill {}: {redone} ids redone, above the bound {}",
            i + 1,
            exposed[i].len()
        );
    }
    println!(
        "[2 kill -9] last restart drained in {drained:.1?}, total {:.1?}; {outcome}",
        started.elapsed()
    );
    assert!(
        beyond.is_empty(),
        "{} ids deleted more often than the crashes explain, e.g. {:?}",
        beyond.len(),
        &beyond[..beyond.len().min(5)]
    );
}

// ------------------------------------------------------------------ 3. API faults

/// 15 % 5xx, 10 % 429, 10 % lost replies (deleted, then 502), 2 % hangs past
/// the client timeout: nothing lost, nothing committed before it finished.
#[test]
fn e2e_3_api_faults_lose_nothing_and_commit_nothing_early() {
    let Some((_serial, world)) = begin("faults", 6) else {
        return;
    };
    let (produced, _) = world.produce(60_000, 303);
    let expected = Arc::new(Expected::new(&produced));
    let api = Api::start(
        Duration::from_millis(20),
        Faults {
            server_error: 0.15,
            too_many: 0.10,
            lost_reply: 0.10,
            empty_200: 0.0,
            hang: 0.02,
            // Past api.timeout_ms = 2000.
            hang_for: Duration::from_millis(2500),
            retry_after_secs: None,
        },
    );
    let sampler = world.sampler(&expected, &api, Duration::from_millis(100));
    let started = Instant::now();
    let mut d = world.daemon("faults", &api, "[api]\ntimeout_ms = 2000\n");
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(&reader, &expected, Duration::from_secs(150), &mut [&mut d]);
    let took = started.elapsed();
    let metrics = d.metrics().unwrap_or_default();
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    let requests = |status: &str| {
        common::metric(
            &metrics,
            &format!("clevertap_deleter_api_requests_total{{region=\"eu1\",status=\"{status}\"}}"),
        ) + common::metric(
            &metrics,
            &format!("clevertap_deleter_api_requests_total{{region=\"in1\",status=\"{status}\"}}"),
        ) + common::metric(
            &metrics,
            &format!("clevertap_deleter_api_requests_total{{region=\"us1\",status=\"{status}\"}}"),
        )
    };
    let timeouts = requests("timeout");
    println!(
        "[3 faults] drained in {took:.1?}; {outcome}; daemon saw {} timeouts, {} retries; \
         {samples}",
        timeouts,
        metric_sum(&metrics, "clevertap_deleter_api_retries_total"),
    );
    samples.assert_strict("3 faults", expected.events() / 2);
    assert!(timeouts > 0.0, "some requests hung past the client timeout");
    assert!(
        outcome.redundant_deletions > 0,
        "lost replies make the daemon delete again"
    );
}

// ------------------------------------------------------------------ 4. rebalances

/// Three replicas in one group (A, B, C); A stopped with SIGTERM and D
/// started once it exited (as with `maxSurge: 0`), then B killed with kill -9
/// and not replaced: C and D must take B's partitions over by themselves.
/// `protocol` is the group protocol; under the classic one, `strategy` is
/// librdkafka's `partition.assignment.strategy` (None: its default, eager
/// `range,roundrobin`).
fn rebalance_scenario(label: &str, protocol: Protocol, strategy: Option<&str>) {
    let label = format!("4 rebalance {label}");
    let Some((_serial, world)) = begin("rebalance", 6) else {
        return;
    };
    let world = world.with_protocol(protocol);
    let (produced, _) = world.produce(60_000, 404);
    let expected = Arc::new(Expected::new(&produced));
    let total = expected.events() as i64;
    // 3 replicas x 5 = CleverTap's 15 per account. librdkafka's group
    // debug logs show which partitions each replica owned when.
    let mut extra =
        String::from("[api]\nmax_concurrency = 5\n[kafka.properties]\n\"debug\" = \"cgrp\"\n");
    if let Some(s) = strategy {
        extra.push_str(&format!("\"partition.assignment.strategy\" = \"{s}\"\n"));
    }
    let log = [("RUST_LOG", "info,librdkafka=debug")];
    // The API is slower here, so the run lasts long enough for the changes.
    let api = Api::start(Duration::from_millis(40), Faults::default());
    let sampler = world.sampler(&expected, &api, Duration::from_millis(200));
    let latest_committed = sampler.latest.clone();
    let latest = sampler.latest.clone();
    let progress = move || committed_events(&latest.lock().unwrap());
    let started = Instant::now();
    let started_at = cgrp::now_secs();
    let mut a = world.daemon_with("A", &api, &extra, &log);
    let mut b = world.daemon_with("B", &api, &extra, &log);
    let mut c = world.daemon_with("C", &api, &extra, &log);
    let mut figures = Vec::new();

    wait_until(
        "15 % committed",
        Duration::from_secs(90),
        &mut [&mut a, &mut b, &mut c],
        || progress() >= total * 15 / 100,
    );
    let at_term = progress();
    let metrics = a.metrics().unwrap_or_default();
    let status = a.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "A exits 0 after SIGTERM: {status}");
    figures.push(replica_figures("A (SIGTERM)", &metrics));
    let mut d = world.daemon_with("D", &api, &extra, &log);
    wait_until(
        "50 % committed",
        Duration::from_secs(90),
        &mut [&mut b, &mut c, &mut d],
        || progress() >= total / 2,
    );
    // The victim: the replica with the most work left on the partitions it
    // owns now (a replica may have finished its share already).
    let left = |r: &Daemon| -> i64 {
        let latest = latest_committed.lock().unwrap().clone();
        cgrp::Member::from_logs(&r.name, &r.logs(), &world.topic, None)
            .owned_now()
            .iter()
            .map(|&p| expected.ends[p as usize] - latest[p as usize].max(0))
            .sum()
    };
    let mut replicas = [b, c, d];
    replicas.sort_by_key(|r| -left(r));
    let [mut victim, mut c, mut d] = replicas;
    let victim_left = left(&victim);
    let at_kill = progress();
    let metrics = victim.metrics().unwrap_or_default();
    victim.kill9();
    let killed_at = cgrp::now_secs();
    figures.push(replica_figures(
        &format!("{} (kill -9)", victim.name),
        &metrics,
    ));
    assert!(
        victim_left > 0,
        "[{label}] no replica had work left when one was to be killed"
    );
    // No replacement: the survivors take the victim's partitions over once
    // its session expires.
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(
        &reader,
        &expected,
        Duration::from_secs(150),
        &mut [&mut c, &mut d],
    );
    let took = started.elapsed();
    let after_kill = cgrp::now_secs() - killed_at;
    for r in [&mut c, &mut d] {
        let metrics = r.metrics().unwrap_or_default();
        let status = r.terminate(Duration::from_secs(60));
        assert_eq!(
            status.code(),
            Some(0),
            "{} exits 0 after SIGTERM: {status}",
            r.name
        );
        figures.push(replica_figures(&r.name, &metrics));
    }
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 15);
    let all: Vec<&Daemon> = vec![&a, &victim, &c, &d];
    let warnings: usize = all
        .iter()
        .map(|r| {
            r.log_lines_with("revoke drain timeout").len()
                + r.log_lines_with("no answer from the pipeline for the revoke")
                    .len()
        })
        .sum();
    let members: Vec<cgrp::Member> = all
        .iter()
        .map(|r| {
            let killed = (r.name == victim.name).then_some(killed_at);
            cgrp::Member::from_logs(&r.name, &r.logs(), &world.topic, killed)
        })
        .collect();
    let takeover = cgrp::taken_over(&members, &victim.name, killed_at).map(|t| t - killed_at);
    println!(
        "[{label}] SIGTERM of A at {at_term} committed events, kill -9 of {} at {at_kill} \
         ({victim_left} events left on its partitions); {} and {} owned all of its partitions \
         {takeover:.1?} s after the kill; all committed \
         {after_kill:.1} s after the kill ({took:.1?} after start); {outcome}",
        victim.name, c.name, d.name
    );
    println!(
        "[{label}] {}; {samples}; revoke-drain warnings in the logs {warnings}",
        figures.join("; "),
    );
    samples.assert_strict(&label, expected.events() / 2);
    cgrp::assert_strict(&label, &members, &samples.backwards, started_at);
    assert!(
        takeover.is_some(),
        "[{label}] the survivors never started all the partitions {} owned when it was killed",
        victim.name
    );
}

#[test]
fn e2e_4a_rebalances_eager() {
    rebalance_scenario("eager", Protocol::Classic, None);
}

#[test]
fn e2e_4b_rebalances_cooperative_sticky() {
    rebalance_scenario("cooperative", Protocol::Classic, Some("cooperative-sticky"));
}

/// KIP-848: `group.protocol = "consumer"`, the broker assigns (uniform
/// assignor), incrementally, without a global barrier.
#[test]
fn e2e_4c_rebalances_kip848_consumer_protocol() {
    rebalance_scenario("kip848", Protocol::Consumer, None);
}

// ------------------------------------------------------------------ 5. broker restart

/// The only broker is killed with kill -9, stays down 10 seconds and is
/// started again on the same data: the daemon rides it out, /readyz is 503
/// while the broker is down and 200 after, nothing is lost. Runs on a
/// 1-node local Kafka of its own, whatever the target.
#[test]
fn e2e_5_broker_restart_is_ridden_out() {
    let _serial = serial();
    let Some(broker) = broker::own(1, false) else {
        return;
    };
    let partitions = 6;
    let world = World::new(broker, "restart", partitions);
    let mut events = generate(&SynthSpec {
        count: 40_000,
        seed: 505,
        ..SynthSpec::default()
    });
    let later = events.split_off(30_000);
    let (mut produced, _) = world.produce_events(events, 0);
    // A slow API, so the backlog outlasts the outage.
    let api = Api::start(Duration::from_millis(150), Faults::default());
    let sampler = check::CommitSampler::backwards_only(
        &world.broker,
        &world.topic,
        partitions,
        &world.group,
        Duration::from_millis(200),
    );
    let mut d = world.daemon("restart", &api, "[api]\nmax_concurrency = 2\n");
    let port = d.port;
    wait_until(
        "/readyz 200 after start",
        Duration::from_secs(30),
        &mut [&mut d],
        || ready(port) == Some(200),
    );
    let reader = world.broker.offsets_reader(&world.group);
    wait_until(
        "some progress",
        Duration::from_secs(60),
        &mut [&mut d],
        || {
            reader
                .try_committed(&world.topic, partitions)
                .is_some_and(|c| committed_events(&c) > 2_000)
        },
    );
    let before = committed_events(&reader.committed(&world.topic, partitions));

    let kafka = world.broker.local_kafka();
    let deleted_at_stop = api.deleted_total();
    let killed_at = cgrp::now_secs();
    kafka.kill(1);
    let down = Instant::now();
    let mut first_503: Option<Duration> = None;
    let mut while_down = std::collections::BTreeMap::new();
    while down.elapsed() < Duration::from_secs(10) {
        d.assert_running();
        let status = ready(port);
        *while_down.entry(status).or_insert(0) += 1;
        if status == Some(503) && first_503.is_none() {
            first_503 = Some(down.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted_while_down = api.deleted_total() - deleted_at_stop;
    kafka.restart(1);
    let up = Instant::now();
    // More events after the restart: consumption goes on.
    let (more, _) = world.produce_events(later, 30_000);
    produced.append(more);
    let expected = Expected::new(&produced);
    let mut after_restart = std::collections::BTreeMap::new();
    let mut first_503_after: Option<Duration> = None;
    wait_until(
        "everything committed after the restart",
        Duration::from_secs(150),
        &mut [&mut d],
        || {
            let status = ready(port);
            *after_restart.entry(status).or_insert(0) += 1;
            if status == Some(503) && first_503_after.is_none() {
                first_503_after = Some(up.elapsed());
            }
            std::thread::sleep(Duration::from_millis(150));
            reader.try_committed(&world.topic, partitions) == Some(expected.ends.clone())
        },
    );
    let drained = up.elapsed();
    // Ready again (statistics come every 5 s).
    let ready_again = wait_until(
        "/readyz 200 after the broker is back",
        Duration::from_secs(30),
        &mut [&mut d],
        || ready(port) == Some(200),
    );
    let metrics = d.metrics().unwrap_or_default();
    // When a Kafka client's error callback first reported the outage (the
    // producer's runs on its own thread; the consumer's only between polls).
    let noticed = d
        .log_lines_with("all Kafka brokers are down")
        .iter()
        .filter_map(|l| l["timestamp"].as_str().and_then(cgrp::epoch_secs))
        .find(|t| *t >= killed_at)
        .map(|t| t - killed_at);
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 2);
    println!("[5 broker restart] {samples}");
    samples.assert_strict("5 broker restart", 0);
    println!(
        "[5 broker restart] committed {before} events before the kill; /readyz while down \
         (every 200 ms for 10 s): {while_down:?}, first 503 after {first_503:?}; a client \
         logged \"all Kafka brokers are down\" {noticed:.1?} s after the kill; {deleted_while_down} \
         ids deleted while the broker was down; after the restart /readyz {after_restart:?} \
         (first 503 {first_503_after:?} after the restart); everything committed \
         {drained:.1?} after the restart, ready {ready_again:.1?} later; {}; {outcome}",
        replica_figures("daemon", &metrics)
    );
    assert!(
        first_503.is_some(),
        "/readyz never answered 503 while the broker was down: {while_down:?}; the outage \
         was logged {noticed:?} s after the kill"
    );
}

// ------------------------------------------------------------------ 6. API outage

/// Resident memory bound while the API is unreachable with a 200,000-event
/// backlog waiting: librdkafka's prefetch (16 MiB), at most
/// `max_events_in_memory` (20,000) events plus the hand-over channel, and the
/// runtime.
const RSS_BOUND_MIB: u64 = 200;

/// The API is unreachable (connections refused) for 30 seconds while 200,000
/// events wait: consumption pauses, resident memory stays under
/// RSS_BOUND_MIB, and everything drains once the API is back.
#[test]
fn e2e_6_api_outage_with_200k_backlog_keeps_memory_flat() {
    let Some((_serial, world)) = begin("outage", 6) else {
        return;
    };
    let partitions = world.partitions;
    let (produced, produce_time) = world.produce(200_000, 606);
    let expected = Arc::new(Expected::new(&produced));
    println!(
        "[6 API outage] produced {} events in {produce_time:.1?}",
        expected.events()
    );
    let mut api = Api::start(Duration::from_millis(10), Faults::default());
    api.take_down();
    let sampler = world.sampler(&expected, &api, Duration::from_millis(500));
    let mut d = world.daemon("outage", &api, "");
    let outage = Instant::now();
    let mut peak_rss = 0u64;
    let mut max_in_memory = 0.0f64;
    let mut max_consumed = 0.0f64;
    let mut paused_seen = false;
    while outage.elapsed() < Duration::from_secs(30) {
        d.assert_running();
        if let Some((rss, _)) = d.memory() {
            peak_rss = peak_rss.max(rss);
        }
        if let Some(m) = d.metrics() {
            max_in_memory =
                max_in_memory.max(common::metric(&m, "clevertap_deleter_events_in_memory"));
            max_consumed =
                max_consumed.max(metric_sum(&m, "clevertap_deleter_events_consumed_total"));
            paused_seen |= common::metric(&m, "clevertap_deleter_consumer_paused") == 1.0;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hwm_outage = d.peak_hwm_kib;
    api.bring_back();
    let back = Instant::now();
    let reader = world.broker.offsets_reader(&world.group);
    loop {
        if let Some((rss, _)) = d.memory() {
            peak_rss = peak_rss.max(rss);
        }
        if reader
            .try_committed(&world.topic, partitions)
            .is_some_and(|c| c == expected.ends)
        {
            break;
        }
        d.assert_running();
        std::thread::sleep(Duration::from_millis(800));
        if back.elapsed() >= Duration::from_secs(150) {
            let m = d.metrics().unwrap_or_default();
            let state: Vec<&str> = m
                .lines()
                .filter(|l| {
                    [
                        "clevertap_deleter_events_in_memory",
                        "clevertap_deleter_consumer_paused",
                        "clevertap_deleter_events_consumed_total",
                        "clevertap_deleter_events_finished_total",
                        "clevertap_deleter_committed_offset",
                        "clevertap_deleter_api_in_flight_requests",
                        "clevertap_deleter_partitions_assigned",
                    ]
                    .iter()
                    .any(|f| l.starts_with(f))
                })
                .collect();
            panic!(
                "not drained 150 s after the API came back: committed {:?} of {:?}; API \
                 deleted {}; daemon metrics:\n{}\n{}",
                reader.try_committed(&world.topic, partitions),
                expected.ends,
                api.deleted_total(),
                state.join("\n"),
                d.log_tail_except(30, &["no answer from CleverTap", "delete request failed"])
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let drained = back.elapsed();
    d.memory();
    let hwm = d.peak_hwm_kib;
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    println!("[6 API outage] {samples}");
    samples.assert_strict("6 API outage", expected.events() / 2);
    println!(
        "[6 API outage] during the 30 s outage: consumed at most {max_consumed}, at most \
         {max_in_memory} events in memory, paused {paused_seen}, VmHWM {} MiB; drained \
         {drained:.1?} after the API came back ({:.0} events/s); peak VmRSS {} MiB, VmHWM {} MiB \
         (bound {RSS_BOUND_MIB} MiB); {outcome}",
        hwm_outage / 1024,
        per_sec(expected.events(), drained),
        peak_rss / 1024,
        hwm / 1024
    );
    assert!(paused_seen, "consumption paused during the outage");
    // Unfinished events held and events read while nothing could finish: at
    // most the pause threshold, plus what was already on its way when the
    // pause took effect (the hand-over channel, the chunk the consumer thread
    // was sending and the one it was filling).
    let held_bound = 20_000 + pipeline::SOURCE_CHANNEL_CAPACITY + 2 * source::SOURCE_CHUNK;
    assert!(
        max_in_memory <= held_bound as f64,
        "{max_in_memory} events in memory, above {held_bound}"
    );
    assert!(
        max_consumed <= held_bound as f64,
        "{max_consumed} events read during the outage, above {held_bound}"
    );
    assert!(
        hwm / 1024 < RSS_BOUND_MIB,
        "peak resident memory {} MiB, above the bound {RSS_BOUND_MIB} MiB",
        hwm / 1024
    );
}

// ------------------------------------------------------------ 7. static membership

/// Static membership (`kafka.group_instance_id`, from the environment as a
/// pod name would be): two replicas with stable ids. A is stopped with
/// SIGTERM and restarted at once under the same id, later killed with kill -9
/// and restarted at once: each time it owns partitions again well before the
/// session timeout (30 s), B is never asked to give up a partition, and
/// nothing is lost.
#[test]
fn e2e_7_static_membership_restarts_without_rebalance() {
    let Some((_serial, world)) = begin("static", 6) else {
        return;
    };
    let partitions = world.partitions;
    let (produced, _) = world.produce(60_000, 707);
    let expected = Arc::new(Expected::new(&produced));
    // A slow API, so the backlog outlasts both restarts.
    let api = Api::start(Duration::from_millis(100), Faults::default());
    let sampler = world.sampler(&expected, &api, Duration::from_millis(200));
    // A session long enough that waiting it out would show in the figures.
    let extra =
        "[api]\nmax_concurrency = 2\n[kafka.properties]\n\"session.timeout.ms\" = \"30000\"\n";
    let id = |v: &'static str| [("CLEVERTAP_DELETER__KAFKA__GROUP_INSTANCE_ID", v)];
    let mut b = world.daemon_with("B", &api, extra, &id("replica-b"));
    let mut a = world.daemon_with("A", &api, extra, &id("replica-a"));
    let (a_port, b_port) = (a.port, b.port);
    wait_until(
        "A and B both own partitions",
        Duration::from_secs(60),
        &mut [&mut a, &mut b],
        || {
            let (a, b) = (assigned(a_port), assigned(b_port));
            a > 0.0 && b > 0.0 && a + b == f64::from(partitions)
        },
    );
    let revokes = |d: &Daemon| {
        common::metric(
            &d.metrics().unwrap_or_default(),
            "clevertap_deleter_rebalances_total{kind=\"revoke\"}",
        )
    };
    let b_revokes = revokes(&b);
    let a_owned = assigned(a_port);

    let status = a.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "A exits 0 after SIGTERM: {status}");
    // Restarts A under its id at once; waits until it owns A's share again.
    let restart = |name: &str, b: &mut Daemon, since: Instant| {
        let mut replica = world.daemon_with(name, &api, extra, &id("replica-a"));
        let port = replica.port;
        wait_until(
            &format!("{name} owns partitions after the restart"),
            Duration::from_secs(25),
            &mut [&mut replica, b],
            || assigned(port) > 0.0,
        );
        let back = since.elapsed();
        assert_eq!(assigned(port), a_owned, "{name} got A's share back");
        (replica, back)
    };
    let (mut a2, back_after_sigterm) = restart("A2", &mut b, Instant::now());
    a2.kill9();
    let (mut a3, back_after_kill) = restart("A3", &mut b, Instant::now());

    let reader = world.broker.offsets_reader(&world.group);
    let drained = wait_fully_committed(
        &reader,
        &expected,
        Duration::from_secs(150),
        &mut [&mut a3, &mut b],
    );
    let b_revokes_after = revokes(&b);
    let b_metrics = b.metrics().unwrap_or_default();
    let a3_metrics = a3.metrics().unwrap_or_default();
    for d in [&mut a3, &mut b] {
        let status = d.terminate(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{} exits 0: {status}", d.name);
    }
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 4);
    println!("[7 static membership] {samples}");
    samples.assert_strict("7 static membership", expected.events() / 2);
    println!(
        "[7 static membership] A owned {a_owned} of {partitions} partitions; after SIGTERM + \
         restart it owned them again {back_after_sigterm:.1?} after the restart, after kill -9 \
         + restart {back_after_kill:.1?} after the kill (session timeout 30 s); B's revokes \
         {b_revokes} before, {b_revokes_after} after; all committed {drained:.1?} later; {}; \
         {}; {outcome}",
        replica_figures("B", &b_metrics),
        replica_figures("A3", &a3_metrics),
    );
    assert_eq!(
        b_revokes_after, b_revokes,
        "B gave up partitions while A restarted under its static id"
    );
}

// ------------------------------------------------------------------ 8. a fenced zombie

/// A replica frozen (SIGSTOP) past its session timeout while it holds
/// partitions: the group gives them to the other replica, which commits
/// further; when the frozen one resumes (SIGCONT) it still believes it owns
/// them and tries to commit its own, older progress with its old
/// generation. Kafka must refuse that commit (the zombie is fenced): no
/// committed offset ever moves back, and nothing is lost.
fn fenced_zombie_scenario(label: &str, protocol: Protocol, require: Fencing) {
    let label = format!("8 fenced zombie {label}");
    let Some((_serial, world)) = begin("zombie", 6) else {
        return;
    };
    let world = world.with_protocol(protocol);
    let (produced, _) = world.produce(60_000, 808);
    let expected = Arc::new(Expected::new(&produced));
    let total = expected.events() as i64;
    let extra = "[api]\nmax_concurrency = 5\n[kafka.properties]\n\"debug\" = \"cgrp\"\n";
    let log = [("RUST_LOG", "info,librdkafka=debug")];
    // Slow enough that the run outlasts the freeze.
    let api = Api::start(Duration::from_millis(60), Faults::default());
    let sampler = world.sampler(&expected, &api, Duration::from_millis(100));
    let latest = sampler.latest.clone();
    let started_at = cgrp::now_secs();
    let mut a = world.daemon_with("A", &api, extra, &log);
    let mut b = world.daemon_with("B", &api, extra, &log);
    let (a_port, b_port) = (a.port, b.port);
    let partitions = f64::from(world.partitions);
    wait_until(
        "A and B share the partitions and 10 % is committed",
        Duration::from_secs(90),
        &mut [&mut a, &mut b],
        || {
            let (x, y) = (assigned(a_port), assigned(b_port));
            x > 0.0
                && y > 0.0
                && x + y == partitions
                && committed_events(&latest.lock().unwrap()) >= total / 10
        },
    );
    let a_owned = cgrp::Member::from_logs("A", &a.logs(), &world.topic, None).owned_now();
    let at_stop = latest.lock().unwrap().clone();
    broker::signal(a.pid(), "STOP");
    let stopped_at = cgrp::now_secs();
    // B takes everything once A's session expired, and commits further on
    // A's partitions than A had.
    let took_over = wait_until(
        "B owns every partition and committed past A's progress on A's partitions",
        Duration::from_secs(60),
        &mut [&mut b],
        || {
            let now = latest.lock().unwrap().clone();
            assigned(b_port) == partitions
                && a_owned.iter().all(|&p| {
                    now[p as usize] > at_stop[p as usize]
                        || now[p as usize] == expected.ends[p as usize]
                })
        },
    );
    broker::signal(a.pid(), "CONT");
    let resumed_at = cgrp::now_secs();
    // A finds out: a new generation (it rejoined) after it resumed.
    let a_log = a.stderr_path();
    wait_until(
        "A rejoins the group after it resumed",
        Duration::from_secs(60),
        &mut [&mut a, &mut b],
        || {
            let logs = std::fs::read_to_string(&a_log).unwrap_or_default();
            cgrp::Member::from_logs("A", &logs, &world.topic, None)
                .events
                .iter()
                .any(|(t, e)| *t > resumed_at && matches!(e, cgrp::Event::Generation(_)))
        },
    );
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(
        &reader,
        &expected,
        Duration::from_secs(150),
        &mut [&mut a, &mut b],
    );
    let mut figures = Vec::new();
    for r in [&mut a, &mut b] {
        let metrics = r.metrics().unwrap_or_default();
        let status = r.terminate(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{} exits 0: {status}", r.name);
        figures.push(replica_figures(&r.name, &metrics));
    }
    let samples = sampler.finish();
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    let members: Vec<cgrp::Member> = [&a, &b]
        .iter()
        .map(|r| cgrp::Member::from_logs(&r.name, &r.logs(), &world.topic, None))
        .collect();
    let zombie = &members[0];
    let old_generation = zombie
        .events
        .iter()
        .filter(|(t, _)| *t < stopped_at)
        .filter_map(|(_, e)| match e {
            cgrp::Event::Generation(g) => Some(*g),
            _ => None,
        })
        .next_back()
        .expect("A's generation before the freeze");
    // What A did right after it resumed, until it joined a new generation.
    let rejoined_at = zombie
        .events
        .iter()
        .find(|(t, e)| *t > resumed_at && matches!(e, cgrp::Event::Generation(_)))
        .map(|(t, _)| *t)
        .expect("A rejoined");
    let after: Vec<String> = zombie
        .events
        .iter()
        .filter(|(t, _)| *t > resumed_at && *t <= rejoined_at)
        .filter(|(_, e)| {
            matches!(
                e,
                cgrp::Event::Commit(..) | cgrp::Event::CommitResult(..) | cgrp::Event::Lost
            )
        })
        .map(|(t, e)| format!("{:.2}s {e:?}", t - resumed_at))
        .collect();
    let stale_commits = zombie
        .events
        .iter()
        .filter(|(t, e)| {
            *t > resumed_at && matches!(e, cgrp::Event::Commit(_, g) if *g == old_generation)
        })
        .count();
    // The answers to the stale commits: answers come in the order the
    // commits went out (one coordinator connection), so the answers after
    // the resume, less those owed to commits sent before the freeze, pair
    // with the commits after it. (Answers to the new generation's commits
    // soon after the rejoin are not the zombie's.)
    let (sent_before, answered_before) = zombie
        .events
        .iter()
        .filter(|(t, _)| *t <= resumed_at)
        .fold((0usize, 0usize), |(c, r), (_, e)| match e {
            cgrp::Event::Commit(..) => (c + 1, r),
            cgrp::Event::CommitResult(..) => (c, r + 1),
            _ => (c, r),
        });
    let answers_after = zombie
        .events
        .iter()
        .filter(|(t, _)| *t > resumed_at)
        .filter_map(|(_, e)| match e {
            cgrp::Event::CommitResult(_, r) => Some(r),
            _ => None,
        })
        .skip(sent_before.saturating_sub(answered_before));
    let stale_results: Vec<&String> = zombie
        .events
        .iter()
        .filter(|(t, _)| *t > resumed_at)
        .filter_map(|(_, e)| match e {
            cgrp::Event::Commit(_, g) => Some(*g),
            _ => None,
        })
        .zip(answers_after)
        .filter(|(g, _)| *g == old_generation)
        .map(|(_, r)| r)
        .collect();
    println!(
        "[{label}] A frozen at {:.1}s owning {a_owned:?} (committed {:?}); B owned everything \
         and committed past it {took_over:.1?} later; A resumed at {:.1}s; in its old \
         generation {old_generation} it then: {after:?}; rejoined {:.1}s after resuming; \
         {} stale commits sent, answers {stale_results:?}; {}; {samples}; {outcome}",
        stopped_at - started_at,
        at_stop,
        resumed_at - started_at,
        rejoined_at - resumed_at,
        stale_commits,
        figures.join("; ")
    );
    samples.assert_strict(&label, expected.events() / 2);
    cgrp::assert_strict(&label, &members, &samples.backwards, started_at);
    assert!(
        stale_results.iter().all(|r| r.as_str() != "Success"),
        "[{label}] a commit of the zombie was accepted: {stale_results:?}"
    );
    assert!(
        stale_commits == 0 || !stale_results.is_empty(),
        "[{label}] {stale_commits} stale commits and no answer to them: {after:?}"
    );
    // Its stale progress never lands: a commit with the old generation is
    // refused by the broker, or (KIP-848, where the expedited heartbeat
    // usually wins the race) librdkafka learns from the heartbeat that the
    // member was fenced and drops the assignment before any commit.
    let learnt_first = zombie
        .events
        .iter()
        .filter(|(t, _)| *t > resumed_at)
        .find(|(_, e)| matches!(e, cgrp::Event::Lost | cgrp::Event::Commit(..)))
        .is_some_and(|(_, e)| matches!(e, cgrp::Event::Lost));
    match require {
        Fencing::RefusedCommit => assert!(
            stale_commits > 0,
            "[{label}] A sent no commit with its old generation {old_generation} after it \
             resumed, so the broker's fencing was not exercised: {after:?}"
        ),
        Fencing::RefusedCommitOrLostFirst => assert!(
            stale_commits > 0 || learnt_first,
            "[{label}] after resuming, A neither had a stale commit refused nor learnt it \
             was fenced: {after:?}"
        ),
    }
    println!(
        "[{label}] REPORT fencing: {}",
        if stale_commits > 0 {
            format!("{stale_commits} commit(s) with the old generation refused: {stale_results:?}")
        } else {
            "the heartbeat told A it was fenced before it sent any commit".to_string()
        }
    );
}

/// What fencing a test requires to have seen.
enum Fencing {
    /// A commit with the old generation, refused by the broker.
    RefusedCommit,
    /// That, or the member learnt it was fenced before committing.
    RefusedCommitOrLostFirst,
}

#[test]
fn e2e_8a_a_fenced_zombie_cannot_commit_classic() {
    // Classic: the lost assignment's revoke makes the daemon commit what it
    // finished, with the old generation; the broker refuses it.
    fenced_zombie_scenario("classic", Protocol::Classic, Fencing::RefusedCommit);
}

#[test]
fn e2e_8b_a_fenced_zombie_cannot_commit_kip848() {
    fenced_zombie_scenario(
        "kip848",
        Protocol::Consumer,
        Fencing::RefusedCommitOrLostFirst,
    );
}

/// Under `group.protocol = "consumer"` the session timeout, heartbeat
/// interval and assignor are the broker's: librdkafka refuses the classic
/// properties, and the daemon exits 2 naming the property (no broker
/// needed: the check happens when the client is built).
#[test]
fn e2e_4d_kip848_refuses_classic_only_properties() {
    let dir = daemon::scratch_dir("e2e-kip848-conf-");
    for property in world::CLASSIC_ONLY {
        let value = if property.ends_with(".ms") {
            "6000"
        } else if property == "group.protocol.type" {
            "consumer"
        } else {
            "range"
        };
        let config = common::merge_toml(
            &world::consumer_protocol(&common::config_toml(
                "127.0.0.1:9",
                "t",
                "g",
                "http://127.0.0.1:9",
                "",
            )),
            &format!("[kafka.properties]\n\"{property}\" = \"{value}\"\n"),
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(daemon::BIN)
            .args(["run", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{property}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "`{property}` is not supported for `group.protocol=consumer`"
            )),
            "{property}: {stderr}"
        );
    }
}

// ------------------------------------------------------------ 6b. a region unreachable

/// Readiness red while a region (its CleverTap endpoint) is unreachable,
/// naming the region, and green again once it answers; nothing lost.
#[test]
fn e2e_6b_readiness_red_while_a_region_is_unreachable() {
    let Some((_serial, world)) = begin("unreachable", 2) else {
        return;
    };
    let (mut produced, _) = world.produce(1_000, 616);
    let mut api = Api::start(Duration::from_millis(5), Faults::default());
    let mut d = world.daemon("unreachable", &api, "");
    let port = d.port;
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(
        &reader,
        &Expected::new(&produced),
        Duration::from_secs(60),
        &mut [&mut d],
    );
    wait_until("ready", Duration::from_secs(30), &mut [&mut d], || {
        ready(port) == Some(200)
    });
    api.take_down();
    let (more, _) = world.produce_events(
        generate(&SynthSpec {
            count: 500,
            seed: 617,
            ..SynthSpec::default()
        }),
        1_000,
    );
    produced.append(more);
    // The daemon tries and fails (positive signal), then must say so.
    let log = d.stderr_path();
    wait_until(
        "a refused connection to CleverTap in the log",
        Duration::from_secs(30),
        &mut [&mut d],
        || !logs_with(&log, "no answer from CleverTap").is_empty(),
    );
    let red = wait_until(
        "/readyz 503 while the API is unreachable",
        Duration::from_secs(30),
        &mut [&mut d],
        || ready(port) == Some(503),
    );
    api.bring_back();
    let expected = Expected::new(&produced);
    wait_fully_committed(&reader, &expected, Duration::from_secs(60), &mut [&mut d]);
    let green = wait_until(
        "ready again",
        Duration::from_secs(30),
        &mut [&mut d],
        || ready(port) == Some(200),
    );
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
    println!("[6b unreachable region] /readyz 503 {red:.1?} after the first refused connection, 200 {green:.1?} after the API came back");
}

fn logs_with(path: &std::path::Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
