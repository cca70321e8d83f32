//! What the events ask for, and the checks every scenario ends with: every id
//! deleted, every poison event dead-lettered, the group's offsets at the end of
//! every partition, the API contract kept. Plus a sampler that watches the
//! committed offsets during a run and proves nothing was committed early.
// Shared by several test binaries; each uses a part.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clevertap_deleter::testkit::synth::ExpectedDeletion;

use super::broker::{Broker, DlqReader, OffsetsReader, Produced};
use super::daemon::{Api, Daemon, Fakes, Key, ACCOUNT_LIMIT};
use crate::common::account_id;

/// A poison event: the reason it must be dead-lettered with, and its
/// original key and payload.
pub struct Poison {
    pub reason: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A committed offset that moved back between two samples: the times (seconds
/// since the epoch) of the previous and of this sample, partition, from, to.
pub type Backward = (f64, f64, i32, i64, i64);

/// What the produced events ask for, by position.
pub struct Expected {
    pub topic: String,
    pub partitions: i32,
    /// Per partition, per offset: the ids the event asks to delete, or the
    /// poison reason (`Err`).
    pub by_offset: Vec<Vec<Result<Vec<Key>, String>>>,
    pub ids: HashSet<Key>,
    /// Poison events by position.
    pub poison: HashMap<(i32, i64), Poison>,
    pub ends: Vec<i64>,
}

impl Expected {
    pub fn new(produced: &Produced) -> Expected {
        let ends = produced.ends();
        let mut by_offset: Vec<Vec<Result<Vec<Key>, String>>> = ends
            .iter()
            .map(|&n| vec![Ok(Vec::new()); n as usize])
            .collect();
        let mut ids = HashSet::new();
        let mut poison = HashMap::new();
        for (event, &(p, o)) in produced.events.iter().zip(&produced.positions) {
            let slot = &mut by_offset[p as usize][o as usize];
            match event.poison {
                Some(reason) => {
                    poison.insert(
                        (p, o),
                        Poison {
                            reason: reason.as_str().to_string(),
                            key: event.key.as_bytes().to_vec(),
                            payload: event.payload.clone(),
                        },
                    );
                    *slot = Err(reason.as_str().to_string());
                }
                None => {
                    let keys: Vec<Key> = event
                        .deletions
                        .iter()
                        .map(|ExpectedDeletion { region, kind, id }| {
                            (account_id(region), *kind, id.clone())
                        })
                        .collect();
                    ids.extend(keys.iter().cloned());
                    *slot = Ok(keys);
                }
            }
        }
        Expected {
            topic: produced.topic.clone(),
            partitions: produced.partitions,
            by_offset,
            ids,
            poison,
            ends,
        }
    }

    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    pub fn events(&self) -> usize {
        self.ends.iter().sum::<i64>() as usize
    }

    /// Ids of the events at offsets >= `from[p]` in each partition.
    pub fn ids_from(&self, from: &[i64]) -> HashSet<&Key> {
        let mut out = HashSet::new();
        for (p, events) in self.by_offset.iter().enumerate() {
            let start = from[p].max(0) as usize;
            for keys in events.iter().skip(start).flatten() {
                out.extend(keys.iter());
            }
        }
        out
    }
}

/// Polls the committed offsets until they reach the end of every partition.
/// Panics after `timeout` with the daemons' logs. Returns the time it took.
pub fn wait_fully_committed(
    reader: &OffsetsReader,
    expected: &Expected,
    timeout: Duration,
    daemons: &mut [&mut Daemon],
) -> Duration {
    let started = Instant::now();
    let mut committed = Vec::new();
    loop {
        if let Some(c) = reader.try_committed(&expected.topic, expected.partitions) {
            committed = c;
        }
        if committed == expected.ends {
            return started.elapsed();
        }
        for d in daemons.iter_mut() {
            d.assert_running();
        }
        if started.elapsed() >= timeout {
            let logs: String = daemons.iter().map(|d| d.log_tail(40)).collect();
            panic!(
                "committed {committed:?}, expected {:?} within {timeout:?}\n{logs}",
                expected.ends
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The figures every scenario reports.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: usize,
    pub expected_ids: usize,
    pub deleted_ids: usize,
    /// Deletions beyond the first, summed over ids.
    pub redundant_deletions: u64,
    /// Ids deleted more than once.
    pub ids_deleted_more_than_once: usize,
    pub max_deletions_of_one_id: u32,
    pub poison: usize,
    pub dead_letters: usize,
    pub requests: u64,
    pub largest_request: usize,
    pub peak_concurrency: Vec<(String, usize)>,
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events {}, ids {} (deleted {}), ids deleted more than once {} ({} redundant deletions, \
             at most {} times), poison {} / dead letters {}, API requests {} (largest {} ids), \
             answers {:?}, peak concurrency per account {:?}",
            self.events,
            self.expected_ids,
            self.deleted_ids,
            self.ids_deleted_more_than_once,
            self.redundant_deletions,
            self.max_deletions_of_one_id,
            self.poison,
            self.dead_letters,
            self.requests,
            self.largest_request,
            self.statuses,
            self.peak_concurrency
                .iter()
                .map(|(a, n)| format!("{a}={n}"))
                .collect::<Vec<_>>()
        )
    }
}

/// The end-of-run checks shared by every scenario; `concurrency_limit` is
/// what the replicas together may have in flight per account.
pub fn verify(
    broker: &Broker,
    expected: &Expected,
    api: &Api,
    group: &str,
    concurrency_limit: usize,
) -> Outcome {
    // Offsets: the end of every partition, which is also the broker's high watermark.
    let high = broker.high_watermarks(&expected.topic, expected.partitions);
    assert_eq!(
        high, expected.ends,
        "the broker's high watermarks match what was produced"
    );
    let committed = broker
        .offsets_reader(group)
        .committed(&expected.topic, expected.partitions);
    assert_eq!(committed, expected.ends, "committed offsets at the end");

    // Every valid id deleted at least once, in its region's account; nothing else.
    let counts = api.deletion_counts();
    let deleted: HashSet<&Key> = counts.keys().collect();
    let missing: Vec<&Key> = expected
        .ids
        .iter()
        .filter(|k| !deleted.contains(k))
        .take(10)
        .collect();
    let missing_count = expected.ids.iter().filter(|k| !deleted.contains(k)).count();
    assert!(
        missing.is_empty(),
        "{missing_count} ids were never deleted, e.g. {missing:?}"
    );
    let unexpected: Vec<&&Key> = deleted
        .iter()
        .filter(|k| !expected.ids.contains(**k))
        .take(10)
        .collect();
    assert!(
        unexpected.is_empty(),
        "deleted but never asked for: {unexpected:?}"
    );

    // Poison: each poison event in the dead-letter topic with its reason, and
    // nothing else there.
    let dead = broker.dead_letters(&expected.dlq_topic());
    let mut seen: HashSet<(i32, i64)> = HashSet::new();
    for d in &dead {
        assert_eq!(d.source_topic, expected.topic, "{d:?}");
        let at = (d.source_partition, d.source_offset);
        let poison = expected
            .poison
            .get(&at)
            .unwrap_or_else(|| panic!("dead letter for a valid event: {d:?}"));
        assert_eq!(d.reason, poison.reason, "dead-letter reason of {at:?}");
        assert_eq!(
            d.key.as_ref(),
            Some(&poison.key),
            "dead-letter key of {at:?}"
        );
        assert_eq!(
            d.payload.as_ref(),
            Some(&poison.payload),
            "dead-letter payload of {at:?}"
        );
        seen.insert(at);
    }
    let not_dead: Vec<_> = expected
        .poison
        .keys()
        .filter(|at| !seen.contains(at))
        .take(10)
        .collect();
    assert!(
        not_dead.is_empty(),
        "poison events missing from the dead-letter topic: {not_dead:?}"
    );

    // The API contract: at most 100 ids and one kind per request (the fake
    // answers anything else 400 and records it as a violation), and the
    // concurrency limits.
    let violations = api.violations();
    assert!(violations.is_empty(), "contract violations: {violations:?}");
    let largest = api.largest_request();
    assert!(largest <= 100, "a request carried {largest} ids");
    let peaks = api.max_concurrent();
    for (account, peak) in &peaks {
        assert!(
            *peak <= concurrency_limit.min(ACCOUNT_LIMIT),
            "{account}: {peak} requests at once, above the limit {concurrency_limit}"
        );
    }

    let redundant: u64 = counts.values().map(|&n| u64::from(n) - 1).sum();
    Outcome {
        events: expected.events(),
        expected_ids: expected.ids.len(),
        deleted_ids: counts.len(),
        redundant_deletions: redundant,
        ids_deleted_more_than_once: counts.values().filter(|&&n| n > 1).count(),
        max_deletions_of_one_id: counts.values().copied().max().unwrap_or(0),
        poison: expected.poison.len(),
        dead_letters: dead.len(),
        requests: api.request_count(),
        largest_request: largest,
        peak_concurrency: peaks,
        statuses: api.status_counts(),
    }
}

/// What the sampler saw.
#[derive(Debug, Default)]
pub struct Samples {
    pub samples: usize,
    /// Samples taken while the broker did not answer.
    pub unanswered: usize,
    /// Events found below a committed offset whose ids were not all deleted, or
    /// (poison) not in the dead-letter topic, at that time.
    pub early_commits: Vec<String>,
    /// Committed offsets that moved backwards between two samples.
    pub backwards: Vec<Backward>,
    /// Events checked against a committed offset.
    pub events_checked: usize,
}

impl Samples {
    /// Nothing committed before it was finished, no committed offset moved
    /// back, and the sampler saw the commits (at least `min_checked` events
    /// checked against a committed offset).
    pub fn assert_strict(&self, label: &str, min_checked: usize) {
        assert!(
            self.early_commits.is_empty(),
            "[{label}] committed before finished: {:?}",
            &self.early_commits[..self.early_commits.len().min(10)]
        );
        assert!(
            self.backwards.is_empty(),
            "[{label}] committed offsets moved back (time of the sample before, of the sample, \
             partition, from, to): {:?}",
            self.backwards
        );
        assert!(
            self.events_checked >= min_checked,
            "[{label}] the sampler saw too few commits: {} events checked, expected at least \
             {min_checked}",
            self.events_checked
        );
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} commit samples ({} unanswered), {} events checked against a committed offset, \
             early commits {}, moves back {}",
            self.samples,
            self.unanswered,
            self.events_checked,
            self.early_commits.len(),
            self.backwards.len()
        )
    }
}

/// Watches the group's committed offsets while the daemons run. At every
/// sample: read the committed offsets first, then what the fake deleted and
/// what the dead-letter topic holds. Deletions and dead letters only grow, and
/// the daemon may commit only after both, so an event below a committed offset
/// that is not finished in the later snapshot was committed early.
pub struct CommitSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Samples>>,
    pub latest: Arc<Mutex<Vec<i64>>>,
}

impl CommitSampler {
    pub fn start(
        broker: &Broker,
        expected: Arc<Expected>,
        group: &str,
        fakes: Fakes,
        interval: Duration,
    ) -> CommitSampler {
        let dlq = DlqReader::new(broker, &expected.dlq_topic());
        let (topic, partitions) = (expected.topic.clone(), expected.partitions);
        Self::spawn(
            broker,
            &topic,
            partitions,
            group,
            Some((expected, fakes, dlq)),
            interval,
        )
    }

    /// Only watches that no committed offset moves back (for a run whose
    /// events are not all known when it starts).
    pub fn backwards_only(
        broker: &Broker,
        topic: &str,
        partitions: i32,
        group: &str,
        interval: Duration,
    ) -> CommitSampler {
        Self::spawn(broker, topic, partitions, group, None, interval)
    }

    fn spawn(
        broker: &Broker,
        topic: &str,
        partitions: i32,
        group: &str,
        mut early: Option<(Arc<Expected>, Fakes, DlqReader)>,
        interval: Duration,
    ) -> CommitSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(Mutex::new(vec![-1; partitions as usize]));
        let reader = broker.offsets_reader(group);
        let topic = topic.to_string();
        let thread = {
            let stop = stop.clone();
            let latest = latest.clone();
            std::thread::spawn(move || {
                let mut s = Samples::default();
                // Per partition: offsets below this were already verified.
                let mut verified = vec![0i64; partitions as usize];
                let mut previous = vec![-1i64; partitions as usize];
                let mut previous_at = super::cgrp::now_secs();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    let Some(committed) = reader.try_committed(&topic, partitions) else {
                        s.unanswered += 1;
                        continue;
                    };
                    let at = super::cgrp::now_secs();
                    s.samples += 1;
                    for (p, (&now, &before)) in committed.iter().zip(&previous).enumerate() {
                        if now < before {
                            s.backwards.push((previous_at, at, p as i32, before, now));
                        }
                    }
                    previous.clone_from(&committed);
                    previous_at = at;
                    *latest.lock().unwrap() = committed.clone();
                    let Some((expected, fakes, dlq)) = early.as_mut() else {
                        continue;
                    };
                    if committed.iter().zip(&verified).all(|(c, v)| c <= v) {
                        continue;
                    }
                    let mut deleted: HashSet<Key> = HashSet::new();
                    for fake in fakes.lock().unwrap().iter() {
                        deleted.extend(fake.deletion_counts().into_keys());
                    }
                    // The broker may be down or moving leaders: this sample
                    // is then checked at a later one.
                    if dlq.try_catch_up(Duration::from_secs(10)).is_err() {
                        s.unanswered += 1;
                        continue;
                    }
                    let dead: HashSet<(i32, i64)> = dlq
                        .records
                        .iter()
                        .map(|d| (d.source_partition, d.source_offset))
                        .collect();
                    for (p, &c) in committed.iter().enumerate() {
                        for o in verified[p]..c.max(0) {
                            s.events_checked += 1;
                            match &expected.by_offset[p][o as usize] {
                                Ok(keys) => {
                                    if let Some(k) = keys.iter().find(|k| !deleted.contains(*k)) {
                                        s.early_commits.push(format!(
                                            "{}/{p} committed {c}: offset {o} not deleted yet ({k:?})",
                                            expected.topic
                                        ));
                                    }
                                }
                                Err(reason) => {
                                    if !dead.contains(&(p as i32, o)) {
                                        s.early_commits.push(format!(
                                            "{}/{p} committed {c}: offset {o} ({reason}) not in the dead-letter topic yet",
                                            expected.topic
                                        ));
                                    }
                                }
                            }
                        }
                        verified[p] = verified[p].max(c);
                    }
                }
                s
            })
        };
        CommitSampler {
            stop,
            thread: Some(thread),
            latest,
        }
    }

    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("sampler thread")
    }
}

impl Drop for CommitSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
