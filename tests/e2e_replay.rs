//! `replay-dlq` on Apache Kafka: its transactions with their real guarantees
//! (librdkafka's mock cluster runs the protocol but stores no transactional
//! offsets and writes no abort markers; see tests/replay.rs).
//!
//! - kill -9 in the middle of a replay, then run again: every dead letter is
//!   replayed exactly once as a read_committed consumer of the source topic
//!   sees it, the replay group's committed offsets match what is visible,
//!   and the records of the transaction the kill left open are invisible
//!   (aborted) while a read_uncommitted consumer still finds them;
//! - progress committed with the transactions only (no plain commit): the
//!   filters, refusals, `--limit` and `--to` runs resume where the last one
//!   stopped.
//!
//! Each test fails when it cannot run (no Java or Maven for local-kafka),
//! unless `E2E_ALLOW_SKIP=1`; see docs/TESTING.md "Real-broker tests".

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

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use clevertap_deleter::app::replay::{self, ReplayOptions, ReplaySummary, StopCause};
use clevertap_deleter::config::{self, Config};
use common::{config_toml, dl, run_to_end, unique, write_config, DeadLetter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use broker::Broker;

const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");

/// One record of a source topic.
#[derive(Debug, Clone)]
struct Record {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: HashMap<String, String>,
}

struct Setup {
    _serial: MutexGuard<'static, ()>,
    broker: Broker,
    topic: String,
    dlq: String,
    dlq_partitions: i32,
    group_id: String,
    toml: String,
    config: Config,
}

/// A source topic (2 partitions) and its dead-letter topic on the shared
/// broker; `None` when the test cannot run and skipping is allowed.
fn setup(dlq_partitions: i32) -> Option<Setup> {
    let serial = world::serial();
    let broker = broker::shared()?;
    let topic = unique("rp");
    broker.create_topic(&topic, 2);
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&dlq, dlq_partitions);
    let group_id = unique("g");
    // No API call is made; the regions only have to be valid.
    let toml = config_toml(
        &broker.bootstrap,
        &topic,
        &group_id,
        "http://127.0.0.1:9",
        "",
    );
    let config = config::from_toml(&toml).expect("valid config");
    Some(Setup {
        _serial: serial,
        broker,
        topic,
        dlq,
        dlq_partitions,
        group_id,
        toml,
        config,
    })
}

impl Setup {
    /// Produces dead letters with the daemon's header names, in order (one
    /// at a time, so offsets follow the order given).
    fn put(&self, records: &[DeadLetter]) {
        let producer: BaseProducer = self
            .broker
            .client_config()
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "1")
            .create()
            .expect("producer");
        for (i, r) in records.iter().enumerate() {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.dlq)
                .partition(r.partition)
                .headers(r.headers(&self.topic, i));
            if let Some(key) = r.key {
                record = record.key(key.as_bytes());
            }
            if let Some(payload) = r.payload {
                record = record.payload(payload.as_bytes());
            }
            producer.send(record).map_err(|(e, _)| e).expect("send");
            producer.flush(Duration::from_secs(30)).expect("flush");
        }
    }

    /// `n` dead letters per dead-letter partition, keyed `p{partition}-{i}`.
    fn put_many(&self, n: usize) {
        let producer: BaseProducer = self
            .broker
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .create()
            .expect("producer");
        for p in 0..self.dlq_partitions {
            for i in 0..n {
                let key = format!("p{p}-{i}");
                let payload = format!("{{\"type\":\"user-deleted\",\"identity\":\"{key}\"}}");
                let headers = dl("", "not_json", None).headers(&self.topic, i);
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.dlq)
                    .partition(p)
                    .key(key.as_bytes())
                    .payload(payload.as_bytes())
                    .headers(headers);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            producer.poll(Duration::from_millis(20));
                        }
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
    }

    fn replay(&self, options: &ReplayOptions) -> (ReplaySummary, String) {
        let mut out = Vec::new();
        let summary = replay::run(&self.config, options, &mut out).expect("replay succeeds");
        (summary, String::from_utf8(out).unwrap())
    }

    /// The group's committed offsets (the stable ones: an open transaction's
    /// offsets are not committed yet).
    fn committed(&self, group: &str) -> Vec<i64> {
        self.broker
            .offsets_reader_with(group, "read_uncommitted")
            .committed(&self.dlq, self.dlq_partitions)
    }

    /// Every record of `topic` (2 partitions) a consumer with `isolation`
    /// (`read_committed` or `read_uncommitted`) sees, up to the end of every
    /// partition (for read_committed: the last stable offset).
    fn read(&self, topic: &str, isolation: &str) -> Vec<Record> {
        let consumer: BaseConsumer = self
            .broker
            .client_config()
            .set("group.id", unique("rp-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while at_end.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "{topic} ({isolation}): no end of every partition within 60 s"
            );
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    let mut headers = HashMap::new();
                    if let Some(h) = m.headers() {
                        for header in h.iter() {
                            headers.insert(
                                header.key.to_string(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            );
                        }
                    }
                    out.push(Record {
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
        }
        out
    }

    /// The records a read_committed consumer sees in `topic`, keyed by
    /// `replayed_from`; exactly `expect` of them, each dead letter once.
    fn replayed(&self, topic: &str, expect: usize) -> HashMap<String, Record> {
        let records = self.read(topic, "read_committed");
        assert_eq!(records.len(), expect, "records in {topic}: {records:?}");
        let by_origin: HashMap<String, Record> = records
            .into_iter()
            .map(|r| (r.headers["replayed_from"].clone(), r))
            .collect();
        assert_eq!(by_origin.len(), expect, "each dead letter replayed once");
        by_origin
    }

    fn from(&self, partition: i32, offset: i64) -> String {
        format!("{}/{partition}/{offset}", self.dlq)
    }
}

fn options(reasons: &[&str]) -> ReplayOptions {
    ReplayOptions {
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
        ..ReplayOptions::default()
    }
}

// ------------------------------------------------------------------ kill -9

/// kill -9 of `replay-dlq` in the middle of a replay (a transaction open),
/// then a second run: exactly once for a read_committed reader, offsets that
/// match, the open transaction aborted and invisible.
#[test]
fn e2e_replay_1_kill9_in_the_middle_then_exactly_once() {
    let Some(s) = setup(2) else {
        return;
    };
    const PER_PARTITION: usize = 10_000;
    let total = 2 * PER_PARTITION;
    s.put_many(PER_PARTITION);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &s.toml).display().to_string();
    let group = format!("{}-replay", s.group_id);
    let reader = s.broker.offsets_reader_with(&group, "read_uncommitted");

    // Kill until a kill catches a transaction with records in it (between
    // two transactions there is nothing to abort); each run resumes.
    let mut attempts = Vec::new();
    let (committed, visible, invisible) = loop {
        assert!(
            attempts.len() < 6,
            "no kill caught an open transaction: {attempts:?}"
        );
        let before = reader
            .try_committed(&s.dlq, 2)
            .map(|c| c.iter().map(|&o| o.max(0)).sum::<i64>())
            .unwrap_or(0);
        let mut child = Command::new(BIN)
            .args(["replay-dlq", "--config", &config])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start replay-dlq");
        // In the middle: once a transaction after this run's first committed.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("replay-dlq ended ({status}) before it could be killed");
            }
            let now: i64 = reader
                .try_committed(&s.dlq, 2)
                .map(|c| c.iter().map(|&o| o.max(0)).sum())
                .unwrap_or(0);
            if now > before + 600 {
                break;
            }
            assert!(Instant::now() < deadline, "replay-dlq made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(attempts.len() as u64 * 37 % 150));
        broker::signal(child.id(), "KILL");
        let _ = child.wait();
        let committed = s.committed(&group);
        let visible = s.read(&s.topic, "read_committed");
        let all = s.read(&s.topic, "read_uncommitted");
        let invisible = all.len() - visible.len();
        attempts.push((committed.clone(), visible.len(), invisible));
        if invisible > 0 {
            break (committed, visible, invisible);
        }
    };

    // Right after the kill: what a read_committed reader sees is exactly what
    // the group committed, each dead letter once.
    let seen: Vec<String> = visible
        .iter()
        .map(|r| r.headers["replayed_from"].clone())
        .collect();
    let unique_seen: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique_seen.len(), seen.len(), "a record visible twice");
    let expected_seen: HashSet<String> = (0..2)
        .flat_map(|p| (0..committed[p as usize]).map(move |o| (p, o)))
        .map(|(p, o)| s.from(p, o))
        .collect();
    assert_eq!(
        unique_seen.len(),
        expected_seen.len(),
        "visible records vs committed offsets {committed:?}"
    );
    assert!(
        seen.iter().all(|f| expected_seen.contains(f)),
        "a visible record beyond the committed offsets {committed:?}"
    );

    // The next run aborts the open transaction and finishes.
    let (code, stdout, stderr) = run_to_end(&["replay-dlq", "--config", &config]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let done = s.committed(&group);
    assert_eq!(done, vec![PER_PARTITION as i64; 2], "offsets at the end");
    let out = s.replayed(&s.topic, total);
    for p in 0..2 {
        for o in 0..PER_PARTITION as i64 {
            let r = &out[&s.from(p, o)];
            assert_eq!(r.headers["replay_count"], "1");
            assert_eq!(
                r.key.as_deref(),
                Some(format!("p{p}-{o}").as_bytes()),
                "{:?}",
                r
            );
        }
    }
    let all = s.read(&s.topic, "read_uncommitted");
    let aborted = all.len() - total;
    assert!(
        aborted >= invisible,
        "the aborted records are still in the log ({aborted}), invisible to read_committed"
    );
    let replayed_line = stdout
        .lines()
        .find(|l| l.contains("replayed:"))
        .unwrap_or_default()
        .to_string();
    println!(
        "[replay kill -9] {total} dead letters; kills (committed offsets, records visible to \
         read_committed, records only read_uncommitted sees): {attempts:?}; the last run: \
         {}; at the end: {total} records visible, each dead letter exactly once, {aborted} \
         aborted records invisible to read_committed; group offsets {done:?}",
        replayed_line.trim()
    );
}

// ------------------------------------------------------------------ progress

#[test]
fn e2e_replay_2_replays_refuses_filters_and_commits_progress() {
    let Some(s) = setup(1) else {
        return;
    };
    s.put(&[
        DeadLetter {
            key: Some("k0"),
            payload: Some(r#"{"type":"user-deleted","identity":"u0"}"#),
            ..dl("", "not_json", None)
        },
        dl("k1", "unknown_region", Some("1")),
        dl("k2", "not_json", Some("3")),
        dl("k3", "no_id", None),
        DeadLetter {
            key: None,
            with_source: false,
            ..dl("", "unknown_region", None)
        },
        DeadLetter {
            payload: None,
            ..dl("k5", "not_json", Some("2"))
        },
    ]);

    let filter = options(&["unknown_region", "not_json"]);
    let (summary, listing) = s.replay(&filter);
    assert!(listing.is_empty(), "only a dry run lists: {listing}");
    assert_eq!(summary.stop, StopCause::EndOfTopic);
    assert_eq!(
        summary.group,
        format!("{}-replay-not_json+unknown_region", s.group_id)
    );
    let t = summary.counts.total;
    assert_eq!(
        (
            t.replayed,
            t.skipped,
            t.refused_too_many_replays,
            t.refused_no_source_topic,
            t.refused_invalid
        ),
        (3, 1, 1, 1, 0),
        "{summary}"
    );
    let out = s.replayed(&s.topic, 3);
    let r0 = &out[&s.from(0, 0)];
    assert_eq!(r0.key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(
        r0.payload.as_deref(),
        Some(&br#"{"type":"user-deleted","identity":"u0"}"#[..])
    );
    assert_eq!(r0.headers["replay_count"], "1");
    assert_eq!(r0.headers["replayed_reason"], "not_json");
    let r5 = &out[&s.from(0, 5)];
    assert_eq!(r5.payload, None, "a tombstone stays a tombstone");
    assert_eq!(r5.headers["replay_count"], "3");

    // Progress is committed (with the transaction) past every handled
    // record, refused ones included; a second run finds nothing to do.
    let group = summary.group.clone();
    assert_eq!(s.committed(&group), vec![6]);
    let (again, _) = s.replay(&filter);
    assert_eq!(again.counts.total.handled(), 0, "{again}");
    assert_eq!(again.stop, StopCause::EndOfTopic);
    s.replayed(&s.topic, 3);

    // Without a filter, the group is another one with its own position.
    let (all, _) = s.replay(&ReplayOptions::default());
    assert_eq!(all.group, format!("{}-replay", s.group_id));
    assert_eq!(
        (
            all.counts.total.replayed,
            all.counts.total.skipped,
            all.counts.total.refused()
        ),
        (4, 0, 2),
        "{all}"
    );
    assert_eq!(s.committed(&all.group), vec![6]);
}

#[test]
fn e2e_replay_3_limit_stops_after_n_replays_and_the_next_run_resumes() {
    let Some(s) = setup(1) else {
        return;
    };
    s.put(&[
        dl("k0", "not_json", None),
        dl("k1", "not_json", Some("5")),
        dl("k2", "not_json", None),
        dl("k3", "not_json", None),
        dl("k4", "not_json", None),
        dl("k5", "not_json", None),
    ]);
    let limit = ReplayOptions {
        limit: Some(2),
        ..ReplayOptions::default()
    };
    let (first, _) = s.replay(&limit);
    assert_eq!(first.stop, StopCause::Limit);
    assert_eq!(
        (first.counts.total.replayed, first.counts.total.refused()),
        (2, 1)
    );
    // Committed right after the second replay (offset 2), not beyond.
    assert_eq!(s.committed(&first.group), vec![3]);
    let out = s.replayed(&s.topic, 2);
    assert!(out.contains_key(&s.from(0, 0)) && out.contains_key(&s.from(0, 2)));

    let (second, _) = s.replay(&limit);
    assert_eq!(second.stop, StopCause::Limit);
    assert_eq!(second.counts.total.handled(), 2);
    assert_eq!(s.committed(&first.group), vec![5]);

    let (rest, _) = s.replay(&limit);
    assert_eq!(rest.stop, StopCause::EndOfTopic);
    assert_eq!(rest.counts.total.replayed, 1);
    let out = s.replayed(&s.topic, 5);
    for offset in [0, 2, 3, 4, 5] {
        assert!(out.contains_key(&s.from(0, offset)), "offset {offset}");
    }
}

#[test]
fn e2e_replay_4_stops_at_the_end_of_every_partition_and_to_overrides() {
    let Some(s) = setup(3) else {
        return;
    };
    let other = format!("{}-fixed", s.topic);
    s.broker.create_topic(&other, 2);
    s.put(&[
        DeadLetter {
            with_source: false,
            ..dl("k0", "api_rejected", None)
        },
        DeadLetter {
            partition: 1,
            ..dl("k1", "api_rejected", None)
        },
        DeadLetter {
            partition: 1,
            ..dl("k2", "api_rejected", None)
        },
    ]);
    // Partition 2 stays empty: its end must count too.
    let (summary, _) = s.replay(&ReplayOptions {
        to: Some(other.clone()),
        ..ReplayOptions::default()
    });
    assert_eq!(summary.stop, StopCause::EndOfTopic);
    assert_eq!(summary.counts.total.replayed, 3, "{summary}");
    assert_eq!(s.committed(&summary.group), vec![1, 2, -1]);
    let out = s.replayed(&other, 3);
    assert_eq!(out[&s.from(1, 1)].key.as_deref(), Some(&b"k2"[..]));
    s.replayed(&s.topic, 0);
}

/// The binary end to end: a filtered run under its own group, exit 0, the
/// summary on stdout, the refusal in the log.
#[test]
fn e2e_replay_5_the_binary_replays_and_commits() {
    let Some(s) = setup(1) else {
        return;
    };
    s.put(&[
        dl("k0", "no_region", None),
        dl("k1", "no_region", Some("3")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &s.toml).display().to_string();
    let group = unique("cli-replay");
    let (code, stdout, stderr) = run_to_end(&[
        "replay-dlq",
        "--config",
        &config,
        "--reason",
        "no_region",
        "--group",
        &group,
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("group {group}")), "{stdout}");
    assert!(
        stdout.contains("replayed:                      1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused, too many replays:     1  (replay_count >= 3)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("refusing to replay a dead letter"),
        "{stderr}"
    );
    // Reaching the end of a partition is the normal way to stop, not an error.
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let out = s.replayed(&s.topic, 1);
    assert_eq!(out[&s.from(0, 0)].headers["replay_count"], "1");
    assert_eq!(s.committed(&group), vec![2]);
}

/// A producer that aborts: its records never reach a read_committed reader,
/// and the replay after it sees only its own (the check the mock cluster
/// cannot make: it writes no abort markers).
#[test]
fn e2e_replay_6_an_aborted_transaction_is_invisible() {
    let Some(s) = setup(1) else {
        return;
    };
    let producer: BaseProducer = s
        .broker
        .client_config()
        .set("transactional.id", unique("abort-probe"))
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    producer.begin_transaction().expect("begin");
    producer
        .send(
            BaseRecord::<'_, str, str>::to(&s.topic)
                .partition(0)
                .key("aborted")
                .payload("a"),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    producer.flush(timeout).expect("flush");
    producer.abort_transaction(timeout).expect("abort");
    s.put(&[dl("k0", "not_json", None)]);
    let (summary, _) = s.replay(&ReplayOptions::default());
    assert_eq!(summary.counts.total.replayed, 1, "{summary}");
    let committed = s.read(&s.topic, "read_committed");
    let keys: Vec<String> = committed
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into())
        .collect();
    assert_eq!(keys, vec!["k0".to_string()], "read_committed sees {keys:?}");
    let everything = s.read(&s.topic, "read_uncommitted");
    assert_eq!(everything.len(), 2, "the aborted record is in the log");
}
