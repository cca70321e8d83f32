//! End to end against a real broker: the compiled daemon as a separate process
//! (`clevertap-deleter run --config FILE`), a Kafka-compatible broker (tansu
//! started by the tests, or the cluster named by `KAFKA_BROKERS`) and the fake
//! CleverTap API. Crashes, restarts, rebalances, broker and API outages, API
//! faults. See README "Real-broker tests".
//!
//! Without a broker every test prints one line saying why and passes.
//! The scenarios run one at a time (they share two cores and measure time
//! and memory); `--nocapture` shows their figures.

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/cgrp.rs"]
mod cgrp;
#[path = "e2e/check.rs"]
mod check;
mod common;
#[path = "e2e/daemon.rs"]
mod daemon;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clevertap_deleter::fake_api::Faults;
use clevertap_deleter::synth::{generate, SynthEvent, SynthSpec};
use clevertap_deleter::{pipeline, source};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use broker::{Broker, Produced, Target};
use check::{verify, wait_fully_committed, CommitSampler, Expected};
use common::unique;
use daemon::{config_toml, daemon_port, metric_sum, Api, Daemon};

/// One scenario at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start of a scenario: the broker to use (`None`: skipped, the reason
/// printed), the lock that runs scenarios one at a time, and a fresh topic
/// with `partitions` partitions.
fn begin(name: &str, partitions: i32) -> Option<(Target, MutexGuard<'static, ()>, World)> {
    let target = broker::target()?;
    let serial = serial();
    let world = World::new(&target, name, partitions);
    Some((target, serial, world))
}

/// A scenario's world: its broker, topic and group names, a runtime for the
/// producer.
struct World {
    broker: Broker,
    topic: String,
    group: String,
    partitions: i32,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new(target: &Target, name: &str, partitions: i32) -> World {
        let broker = Broker::for_target(target);
        let topic = unique(&format!("e2e-{name}"));
        broker.create_topic(&topic, partitions);
        broker.create_topic(&format!("{topic}.dlq"), 1);
        World {
            broker,
            partitions,
            group: format!("{topic}-group"),
            topic,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    /// Synthetic events: three regions, 20 % repeats, identity and guid,
    /// arrays, 2 % poison.
    fn produce(&self, count: usize, seed: u64) -> (Produced, Duration) {
        let events = generate(&SynthSpec {
            count,
            seed,
            ..SynthSpec::default()
        });
        self.produce_events(events, 0)
    }

    /// Produces `events`, round robin from partition `first % partitions`.
    fn produce_events(&self, events: Vec<SynthEvent>, first: usize) -> (Produced, Duration) {
        let started = Instant::now();
        let produced = self.rt.block_on(broker::produce(
            &self.broker,
            &self.topic,
            self.partitions,
            first,
            events,
        ));
        (produced, started.elapsed())
    }

    fn config(&self, api: &Api, port: u16, extra: &str) -> String {
        // tansu 0.6.0 quirk: it serves storage requests one at a time, so a
        // large fetch (librdkafka asks for up to 50 MiB) holds up the group's
        // heartbeats; with the daemon reading a backlog at full speed a
        // session (6 s) could expire and tansu then fail to re-form the
        // group (see restart_delay). Smaller fetches against tansu only.
        let tansu = if self.broker.tansu.is_some() {
            "[kafka.properties]\n\"fetch.max.bytes\" = \"1048576\"\n\
             \"max.partition.fetch.bytes\" = \"262144\"\n"
        } else {
            ""
        };
        let base = config_toml(
            &self.broker.bootstrap,
            &self.topic,
            &self.group,
            &api.endpoint(),
            port,
            tansu,
        );
        common::merge_toml(&base, extra)
    }

    /// Starts a daemon. Debugging aids: `E2E_DAEMON_RUST_LOG` becomes its
    /// RUST_LOG (e.g. `info,librdkafka=debug`), `E2E_KAFKA_DEBUG` its
    /// librdkafka `debug` property (e.g. `cgrp`).
    fn daemon(&self, name: &str, api: &Api, extra: &str) -> Daemon {
        self.daemon_with(name, api, extra, &[])
    }

    fn daemon_with(&self, name: &str, api: &Api, extra: &str, envs: &[(&str, &str)]) -> Daemon {
        let port = daemon_port();
        let mut config = self.config(api, port, extra);
        if let Ok(debug) = std::env::var("E2E_KAFKA_DEBUG") {
            config = common::merge_toml(
                &config,
                &format!("[kafka.properties]\n\"debug\" = \"{debug}\"\n"),
            );
        }
        let rust_log = std::env::var("E2E_DAEMON_RUST_LOG").ok();
        let mut envs = envs.to_vec();
        envs.extend(rust_log.iter().map(|v| ("RUST_LOG", v.as_str())));
        let mut d = Daemon::start(name, &config, port, &envs);
        d.wait_serving();
        d
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Polls until `done` or panics after `timeout`, checking the daemons are alive.
fn wait_until(
    what: &str,
    timeout: Duration,
    daemons: &mut [&mut Daemon],
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        for d in daemons.iter_mut() {
            d.assert_running();
        }
        if started.elapsed() >= timeout {
            let logs: String = daemons.iter().map(|d| d.log_tail(40)).collect();
            panic!("timed out after {timeout:?} waiting for: {what}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long a replacement waits after a kill -9 before it starts.
///
/// tansu 0.6.0 quirk: if a member joins while the group's leader is dead
/// but not yet evicted (evictions happen lazily, once session.timeout.ms has
/// passed, on the next group request), the eviction can happen in the middle
/// of the newcomer's join, during its SyncGroup; tansu then takes the
/// follower's empty SyncGroup as the leader's assignment and forms a group in
/// which nobody owns any partition, for good (no later heartbeat asks for a
/// rebalance). So against tansu the replacement starts once the dead member's
/// session (6 s) has expired; its JoinGroup then evicts the dead member first
/// and it becomes the leader. A real Kafka needs no delay.
fn restart_delay(target: &Target) -> Duration {
    if target.is_tansu() {
        Duration::from_millis(SESSION_TIMEOUT_MS + 1_000)
    } else {
        Duration::ZERO
    }
}

/// `session.timeout.ms` of the daemons (see daemon::config_toml).
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// Sum of the committed offsets (-1 counts as 0): events behind the group.
fn committed_events(committed: &[i64]) -> i64 {
    committed.iter().map(|&c| c.max(0)).sum()
}

/// A daemon's counters worth reporting when it stops.
fn replica_figures(name: &str, metrics: &str) -> String {
    let m = |series: &str| common::metric(metrics, series);
    let mut out = format!(
        "{name}: consumed {}, assign {}, revoke {}, commits ok {} failed {}, late acks dropped {}",
        metric_sum(metrics, "clevertap_deleter_events_consumed_total"),
        m("clevertap_deleter_rebalances_total{kind=\"assign\"}"),
        m("clevertap_deleter_rebalances_total{kind=\"revoke\"}"),
        m("clevertap_deleter_commits_total{result=\"success\"}"),
        m("clevertap_deleter_commits_total{result=\"failure\"}"),
        m("clevertap_deleter_late_acks_dropped_total"),
    );
    if daemon::has_metric(metrics, "clevertap_deleter_redelivered_events_total") {
        out.push_str(&format!(
            ", redelivered {}",
            metric_sum(metrics, "clevertap_deleter_redelivered_events_total")
        ));
    }
    out
}

// ------------------------------------------------------------------ 1. steady

/// 60,000 events, one daemon, no fault: 40,000 waiting when it starts and
/// 20,000 produced while it runs. Every id is deleted exactly once.
#[test]
fn e2e_1_steady_run_deletes_each_id_exactly_once() {
    let Some((_target, _serial, world)) = begin("steady", 6) else {
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

    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    println!(
        "[1 steady] all committed {took:.1?} after start ({:.0} events/s); {outcome}; \
         daemon (VmRSS, VmHWM) KiB {mem:?}",
        per_sec(expected.events(), took)
    );
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
    let Some((target, _serial, world)) = begin("kill9", 6) else {
        return;
    };
    let partitions = world.partitions;
    let (produced, _) = world.produce(80_000, 202);
    let expected = Expected::new(&produced);
    let api = Api::start(Duration::from_millis(10), Faults::default());
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
    let mut d = world.daemon("kill9-0", &api, "");
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
        // and commits that reached the broker land: tansu sometimes takes
        // seconds for one, so read until two reads a second apart agree.
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
        std::thread::sleep(restart_delay(&target));
        d = world.daemon(&format!("kill9-{}", k + 1), &api, "");
    }
    let restarted = Instant::now();
    wait_fully_committed(&reader, &expected, Duration::from_secs(150), &mut [&mut d]);
    let drained = restarted.elapsed();
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);

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
    let Some((_target, _serial, world)) = begin("faults", 6) else {
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
    let sampler = CommitSampler::start(
        &world.broker,
        expected.clone(),
        &world.group,
        vec![api.fake.clone()],
        Duration::from_millis(100),
    );
    let started = Instant::now();
    let mut d = world.daemon("faults", &api, "");
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
         {} commit samples, {} events checked against a committed offset, early commits {}, \
         backwards {}",
        timeouts,
        metric_sum(&metrics, "clevertap_deleter_api_retries_total"),
        samples.samples,
        samples.events_checked,
        samples.early_commits.len(),
        samples.backwards.len()
    );
    assert!(
        samples.early_commits.is_empty(),
        "committed before finished: {:?}",
        &samples.early_commits[..samples.early_commits.len().min(10)]
    );
    assert!(
        samples.backwards.is_empty(),
        "committed offsets moved back: {:?}",
        samples.backwards
    );
    assert!(
        samples.events_checked >= expected.events() / 2,
        "the sampler saw the commits progress ({} events checked)",
        samples.events_checked
    );
    assert!(timeouts > 0.0, "some requests hung past the client timeout");
    assert!(
        outcome.redundant_deletions > 0,
        "lost replies make the daemon delete again"
    );
}

// ------------------------------------------------------------------ 4. rebalances

/// Three replicas in one group (A, B, C); A stopped with SIGTERM and D
/// started once it exited (as with `maxSurge: 0`), then B killed with kill -9
/// (against tansu, B is replaced by E once its session expired: see below).
/// `strategy` is librdkafka's `partition.assignment.strategy` (None: its
/// default, eager `range,roundrobin`).
fn rebalance_scenario(label: &str, strategy: Option<&str>) {
    let Some((target, _serial, world)) = begin(label, 6) else {
        return;
    };
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
    let sampler = CommitSampler::start(
        &world.broker,
        expected.clone(),
        &world.group,
        vec![api.fake.clone()],
        Duration::from_millis(200),
    );
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
    let at_kill = progress();
    let metrics = b.metrics().unwrap_or_default();
    b.kill9();
    let b_killed_at = cgrp::now_secs();
    figures.push(replica_figures("B (kill -9)", &metrics));
    // tansu 0.6.0 quirk: when it evicts the dead member it re-forms the
    // group without a new generation, so the survivors' heartbeats keep
    // succeeding, they never rejoin, and the dead member's partitions can stay
    // unowned for good. Against tansu the killed replica is therefore
    // replaced, as Kubernetes would, once its session expired (see
    // restart_delay); the newcomer's join makes everybody rejoin. Against a
    // real Kafka, C and D must take B's partitions over by themselves.
    let mut e = target.is_tansu().then(|| {
        std::thread::sleep(restart_delay(&target));
        world.daemon_with("E", &api, &extra, &log)
    });
    let reader = world.broker.offsets_reader(&world.group);
    {
        let mut running: Vec<&mut Daemon> = vec![&mut c, &mut d];
        running.extend(e.as_mut());
        wait_fully_committed(&reader, &expected, Duration::from_secs(150), &mut running);
    }
    let took = started.elapsed();
    let mut survivors: Vec<&mut Daemon> = vec![&mut c, &mut d];
    survivors.extend(e.as_mut());
    for r in survivors {
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
    let mut all: Vec<&Daemon> = vec![&a, &b, &c, &d];
    all.extend(e.as_ref());
    let warnings: usize = all
        .iter()
        .map(|r| {
            r.log_lines_with("revoke drain timeout").len()
                + r.log_lines_with("no answer from the pipeline for the revoke")
                    .len()
        })
        .sum();
    println!(
        "[4 rebalance {label}] SIGTERM of A at {at_term} committed events, kill -9 of B at \
         {at_kill}, all committed after {took:.1?}; {outcome}"
    );
    println!(
        "[4 rebalance {label}] {}; {} commit samples, {} events checked, early commits {}, \
         backwards {}; revoke-drain warnings in the logs {warnings}",
        figures.join("; "),
        samples.samples,
        samples.events_checked,
        samples.early_commits.len(),
        samples.backwards.len()
    );
    assert!(
        samples.early_commits.is_empty(),
        "committed before finished: {:?}",
        &samples.early_commits[..samples.early_commits.len().min(10)]
    );

    // Each replica's own view (librdkafka's group debug logs): no commit
    // names more partitions than the replica owned when it was sent, in
    // particular none while it owned nothing. The logs give the number of
    // partitions of a commit, not which, so a commit of a revoked partition
    // while others are still owned (cooperative) is only caught above, by
    // its effect on the group's offsets.
    let members: Vec<cgrp::Member> = all
        .iter()
        .map(|r| {
            let killed = (r.name == "B").then_some(b_killed_at);
            cgrp::Member::from_logs(&r.name, &r.logs(), &world.topic, killed)
        })
        .collect();
    for m in &members {
        let owned: Vec<String> = m
            .intervals()
            .iter()
            .map(|(p, iv)| {
                let iv: Vec<String> = iv
                    .iter()
                    .map(|(f, t)| format!("{:.1}-{:.1}", f - started_at, t - started_at))
                    .collect();
                format!("p{p} {}", iv.join(","))
            })
            .collect();
        println!(
            "[4 rebalance {label}] {} owned (s since start) {}; {} commits sent",
            m.name,
            owned.join("; "),
            m.commits()
        );
    }
    assert!(
        members.iter().map(cgrp::Member::commits).sum::<usize>() > 0
            && members.iter().any(|m| m
                .events
                .iter()
                .any(|(_, e)| matches!(e, cgrp::Event::Start(_)))),
        "the librdkafka group debug logs were not found or not understood"
    );
    let beyond: Vec<String> = members
        .iter()
        .flat_map(cgrp::Member::commits_beyond_ownership)
        .collect();
    assert!(beyond.is_empty(), "commits beyond ownership: {beyond:?}");
    let overlaps = cgrp::overlaps(&members);
    println!(
        "[4 rebalance {label}] partitions owned by two replicas at once: {}",
        if overlaps.is_empty() {
            "none".to_string()
        } else {
            overlaps
                .iter()
                .map(|o| {
                    format!(
                        "p{} {}+{} {:.2}s",
                        o.partition,
                        o.members.0,
                        o.members.1,
                        o.to - o.from
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if !target.is_tansu() {
        // A Kafka broker's group protocol never lets two members own a
        // partition at once (tansu's does, see README).
        assert!(overlaps.is_empty(), "{overlaps:?}");
    }
    // A committed offset moving back means a replica committed a partition
    // it no longer owned, unless the broker had given the partition to two
    // replicas at once (both then commit their own progress): such moves are
    // reported, any other fails. The move can come after the overlap ended:
    // the replica that kept the partition, and had fallen behind the other
    // one's commits meanwhile, commits its own progress; so a move is also
    // excused while one of the two owned the partition without a break from
    // the overlap until the move.
    let kept_owning = |name: &str, partition: i32, since: f64, until: f64| {
        members.iter().filter(|m| m.name == name).any(|m| {
            m.intervals()
                .get(&partition)
                .is_some_and(|iv| iv.iter().any(|(f, t)| *f <= since && until <= *t + 1.0))
        })
    };
    let (excused, backwards): (Vec<&check::Backward>, Vec<_>) =
        samples.backwards.iter().partition(|(from, to, p, _, _)| {
            overlaps.iter().any(|o| {
                o.partition == *p
                    && o.from <= *to
                    && (*from <= o.to + 1.0
                        || kept_owning(&o.members.0, *p, o.from, *from)
                        || kept_owning(&o.members.1, *p, o.from, *from))
            })
        });
    println!(
        "[4 rebalance {label}] committed offsets moved back {} times, {} of them caused by \
         two replicas owning the partition at once",
        samples.backwards.len(),
        excused.len()
    );
    assert!(
        backwards.is_empty(),
        "a commit moved an offset back (a replica committed a partition it no longer owned?): \
         {backwards:?}"
    );
}

#[test]
fn e2e_4a_rebalances_eager() {
    rebalance_scenario("eager", None);
}

#[test]
fn e2e_4b_rebalances_cooperative_sticky() {
    rebalance_scenario("cooperative", Some("cooperative-sticky"));
}

// ------------------------------------------------------------------ 5. broker restart

/// The broker is stopped for 10 seconds and started again on the same sqlite
/// file: the daemon rides it out, /readyz is 503 while the broker is down and
/// 200 after, nothing is lost.
#[test]
fn e2e_5_broker_restart_is_ridden_out() {
    let Some(target) = broker::target() else {
        return;
    };
    // This one needs a broker it can stop: its own tansu.
    let target = match target {
        Target::Tansu(_) => target,
        Target::External(_) | Target::Docker => match broker::tansu_bin() {
            Some(bin) => Target::Tansu(bin),
            None => {
                println!(
                    "e2e: SKIPPED e2e_5_broker_restart_is_ridden_out: it stops and restarts \
                     the broker, which needs a tansu binary (TANSU_BIN; KAFKA_BROKERS and \
                     the Docker container are not stopped by this test)"
                );
                return;
            }
        },
    };
    let _serial = serial();
    let partitions = 6;
    let mut world = World::new(&target, "restart", partitions);
    let mut events = generate(&SynthSpec {
        count: 40_000,
        seed: 505,
        ..SynthSpec::default()
    });
    let later = events.split_off(30_000);
    let (mut produced, _) = world.produce_events(events, 0);
    // A slow API, so the backlog outlasts the outage.
    let api = Api::start(Duration::from_millis(150), Faults::default());
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

    let tansu = world.broker.tansu.as_mut().expect("own tansu");
    // SIGKILL, not SIGTERM: tansu 0.6.0 stops its storage first on SIGTERM
    // and answers the requests still in flight with UNKNOWN_SERVER_ERROR;
    // an idempotent producer (the daemon's dead-letter writer) that had
    // produce requests in flight then continues, after the restart, with
    // sequence numbers tansu has no row for, and tansu's sqlite storage
    // panics on them ("more or less than one row"), which kills its storage
    // task: every later request fails until the broker is restarted again.
    // A SIGKILL loses the connections instead; librdkafka retries the
    // in-flight requests after the restart, which tansu handles.
    let deleted_at_stop = api.deleted_total();
    let killed_at = cgrp::now_secs();
    tansu.stop("KILL");
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
    world.broker.tansu.as_mut().expect("own tansu").restart();
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
    let outcome = verify(&world.broker, &expected, &api, &world.group, 2);
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

/// The /readyz status of the daemon serving on `port`.
fn ready(port: u16) -> Option<u16> {
    daemon::http_get(port, "/readyz").map(|(s, _)| s)
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
    let Some((target, _serial, world)) = begin("outage", 6) else {
        return;
    };
    let partitions = world.partitions;
    let (produced, produce_time) = world.produce(200_000, 606);
    let expected = Expected::new(&produced);
    println!(
        "[6 API outage] produced {} events in {produce_time:.1?}",
        expected.events()
    );
    let mut api = Api::start(Duration::from_millis(10), Faults::default());
    api.take_down();
    // tansu 0.6.0 runs all storage work (fetches, commits, group updates)
    // one request at a time; while the daemon reads this backlog at full
    // speed an OffsetCommit or a Heartbeat can wait longer than 6 s there, the
    // session expires, and tansu then fails to re-form the group (see
    // restart_delay). A longer session against tansu; 6 s elsewhere.
    let session = if target.is_tansu() {
        "[kafka.properties]\n\"session.timeout.ms\" = \"30000\"\n\"heartbeat.interval.ms\" = \"1000\"\n"
    } else {
        ""
    };
    let mut d = world.daemon("outage", &api, session);
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
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
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

/// Partitions a daemon owns now (its `partitions_assigned` gauge).
fn assigned(port: u16) -> f64 {
    let text = daemon::http_get(port, "/metrics").map(|(_, body)| body);
    common::metric(
        &text.unwrap_or_default(),
        "clevertap_deleter_partitions_assigned",
    )
}

/// Static membership (`kafka.group_instance_id`, from the environment as a
/// pod name would be): two replicas with stable ids. A is stopped with
/// SIGTERM and restarted at once under the same id, later killed with kill -9
/// and restarted at once: each time it owns partitions again well before the
/// session timeout (30 s), B is never asked to give up a partition, and
/// nothing is lost.
#[test]
fn e2e_7_static_membership_restarts_without_rebalance() {
    let Some((_target, _serial, world)) = begin("static", 6) else {
        return;
    };
    let partitions = world.partitions;
    let (produced, _) = world.produce(60_000, 707);
    let expected = Expected::new(&produced);
    // A slow API, so the backlog outlasts both restarts.
    let api = Api::start(Duration::from_millis(100), Faults::default());
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
    let outcome = verify(&world.broker, &expected, &api, &world.group, 4);
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
