//! `replay-dlq` on rdkafka's MockCluster: dead letters with different reasons
//! and replay counts go back to the source topic with key and payload intact;
//! filters, refusals, committed progress, dry run and limit.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use clevertap_deleter::config::{self, Config};
use clevertap_deleter::replay::{self, ReplayOptions, ReplaySummary, StopCause};
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");

/// A dead-letter record as the daemon writes it (plus `replay_count` when it
/// was replayed before).
struct DeadLetter {
    partition: i32,
    key: Option<&'static str>,
    payload: Option<&'static str>,
    reason: &'static str,
    /// false: no `source_topic` header.
    with_source: bool,
    replay_count: Option<&'static str>,
}

fn dl(key: &'static str, reason: &'static str, replay_count: Option<&'static str>) -> DeadLetter {
    DeadLetter {
        partition: 0,
        key: Some(key),
        payload: Some("payload"),
        reason,
        with_source: true,
        replay_count,
    }
}

struct Setup {
    kafka: Kafka,
    topic: String,
    dlq: String,
    group_id: String,
    toml: String,
    config: Config,
}

fn setup(dlq_partitions: i32) -> Setup {
    let kafka = Kafka::new();
    let topic = unique("rp");
    kafka.topic(&topic, 2);
    let dlq = format!("{topic}.dlq");
    kafka.topic(&dlq, dlq_partitions);
    let group_id = unique("g");
    // No API call is made; the regions only have to be valid.
    let toml = config_toml(
        &kafka.bootstrap,
        &topic,
        &group_id,
        "http://127.0.0.1:9",
        "",
    );
    let config = config::from_toml(&toml).expect("valid config");
    Setup {
        kafka,
        topic,
        dlq,
        group_id,
        toml,
        config,
    }
}

impl Setup {
    /// Produces dead letters with the daemon's header names, in order.
    fn put(&self, records: &[DeadLetter]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap)
            .create()
            .expect("producer");
        for (i, r) in records.iter().enumerate() {
            let offset = i.to_string();
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "reason",
                    value: Some(r.reason),
                })
                .insert(Header {
                    key: "detail",
                    value: Some("what was wrong"),
                })
                .insert(Header {
                    key: "source_partition",
                    value: Some("1"),
                })
                .insert(Header {
                    key: "source_offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "dead_lettered_at_ms",
                    value: Some("1767225600000"),
                });
            if r.with_source {
                headers = headers.insert(Header {
                    key: "source_topic",
                    value: Some(self.topic.as_str()),
                });
            }
            if let Some(count) = r.replay_count {
                headers = headers.insert(Header {
                    key: "replay_count",
                    value: Some(count),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.dlq)
                .partition(r.partition)
                .headers(headers);
            if let Some(key) = r.key {
                record = record.key(key.as_bytes());
            }
            if let Some(payload) = r.payload {
                record = record.payload(payload.as_bytes());
            }
            // One at a time, so offsets follow the order given.
            let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
            futures::executor::block_on(delivery)
                .expect("delivery")
                .expect("produced");
        }
    }

    fn replay(&self, options: &ReplayOptions) -> (ReplaySummary, String) {
        let mut out = Vec::new();
        let summary = replay::run(&self.config, options, &mut out).expect("replay succeeds");
        (summary, String::from_utf8(out).unwrap())
    }

    /// Records in the source topic, keyed by `replayed_from`. Waits up to
    /// `timeout` for more than `expect`, so a count also proves "no more".
    fn replayed(&self, topic: &str, expect: usize) -> HashMap<String, Record> {
        let records = self
            .kafka
            .read_all(topic, 2, expect + 1, Duration::from_secs(3));
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

#[test]
fn replays_matching_records_refuses_and_filters_and_commits_progress() {
    let s = setup(1);
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
    let not_json = summary.counts.per_reason["not_json"];
    assert_eq!(
        (not_json.replayed, not_json.refused_too_many_replays),
        (2, 1)
    );
    assert_eq!(summary.counts.per_reason["no_id"].skipped, 1);

    let out = s.replayed(&s.topic, 3);
    let r0 = &out[&s.from(0, 0)];
    assert_eq!(r0.key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(
        r0.payload.as_deref(),
        Some(&br#"{"type":"user-deleted","identity":"u0"}"#[..])
    );
    assert_eq!(r0.headers["replay_count"], "1");
    assert_eq!(r0.headers["replayed_reason"], "not_json");
    let r1 = &out[&s.from(0, 1)];
    assert_eq!(r1.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(r1.payload.as_deref(), Some(&b"payload"[..]));
    assert_eq!(r1.headers["replay_count"], "2");
    assert_eq!(r1.headers["replayed_reason"], "unknown_region");
    let r5 = &out[&s.from(0, 5)];
    assert_eq!(r5.key.as_deref(), Some(&b"k5"[..]));
    assert_eq!(r5.payload, None, "a tombstone stays a tombstone");
    assert_eq!(r5.headers["replay_count"], "3");

    // Progress is committed past every handled record, refused ones included.
    let group = summary.group.clone();
    assert_eq!(s.kafka.committed(&group, &s.dlq, 1), vec![6]);
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
    assert_eq!(s.kafka.committed(&all.group, &s.dlq, 1), vec![6]);
}

#[test]
fn dry_run_lists_and_produces_and_commits_nothing() {
    let s = setup(1);
    s.put(&[
        dl("k0", "not_json", None),
        dl("k1", "no_region", Some("3")),
        dl("k2", "no_id", Some("1")),
    ]);
    let dry = ReplayOptions {
        dry_run: true,
        ..ReplayOptions::default()
    };
    let (summary, listing) = s.replay(&dry);
    assert!(summary.dry_run);
    assert_eq!(summary.stop, StopCause::EndOfTopic);
    assert_eq!(summary.counts.total.replayed, 2, "{summary}");
    assert_eq!(summary.counts.total.refused_too_many_replays, 1);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert_eq!(
        lines[0],
        format!(
            "{}: would replay to {}; reason=not_json replay_count=0 key=\"k0\" detail=\"what was wrong\"",
            s.from(0, 0),
            s.topic
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}: refused (replayed 3 times already)",
            s.from(0, 1)
        )),
        "{listing}"
    );
    assert!(lines[2].contains("replay_count=1 key=\"k2\""), "{listing}");
    assert!(summary.to_string().contains("would be replayed:"));

    s.replayed(&s.topic, 0);
    assert_eq!(s.kafka.committed(&summary.group, &s.dlq, 1), vec![-1]);

    // A real run afterwards still finds everything.
    let (real, _) = s.replay(&ReplayOptions::default());
    assert_eq!(real.counts.total.replayed, 2, "{real}");
    let out = s.replayed(&s.topic, 2);
    assert_eq!(out[&s.from(0, 2)].headers["replay_count"], "2");
}

#[test]
fn limit_stops_after_n_replays_and_the_next_run_resumes() {
    let s = setup(1);
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
    assert_eq!(s.kafka.committed(&first.group, &s.dlq, 1), vec![3]);
    let out = s.replayed(&s.topic, 2);
    assert!(out.contains_key(&s.from(0, 0)) && out.contains_key(&s.from(0, 2)));

    let (second, _) = s.replay(&limit);
    assert_eq!(second.stop, StopCause::Limit);
    assert_eq!(second.counts.total.handled(), 2);
    assert_eq!(s.kafka.committed(&first.group, &s.dlq, 1), vec![5]);

    let (rest, _) = s.replay(&limit);
    assert_eq!(rest.stop, StopCause::EndOfTopic);
    assert_eq!(rest.counts.total.replayed, 1);
    let out = s.replayed(&s.topic, 5);
    for offset in [0, 2, 3, 4, 5] {
        assert!(out.contains_key(&s.from(0, offset)), "offset {offset}");
    }
}

#[test]
fn stops_at_the_end_of_every_partition_and_to_overrides_the_source_topic() {
    let s = setup(3);
    let other = format!("{}-fixed", s.topic);
    s.kafka.topic(&other, 2);
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
    assert_eq!(s.kafka.committed(&summary.group, &s.dlq, 3), vec![1, 2, -1]);
    let out = s.replayed(&other, 3);
    assert_eq!(out[&s.from(1, 1)].key.as_deref(), Some(&b"k2"[..]));
    s.replayed(&s.topic, 0);
}

/// librdkafka's mock cluster runs the transactional protocol
/// (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
/// EndTxn), which is what the replay needs to run there. It does not give
/// the semantics: its TxnOffsetCommit stores nothing and EndTxn writes no
/// markers (aborted records stay visible). Those facts are printed, not
/// asserted, so a librdkafka upgrade that adds them breaks nothing.
#[test]
fn mock_cluster_runs_the_transactional_protocol() {
    let s = setup(1);
    s.put(&[dl("k0", "not_json", None), dl("k1", "not_json", None)]);
    let group = unique("txn-probe");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka.bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[s.dlq.as_str()]).unwrap();
    let mut read = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            assert_eq!(m.offset(), read);
            read += 1;
        }
    }
    assert_eq!(read, 2, "consumed the dead letters");

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka.bootstrap)
        .set("transactional.id", format!("{group}-tx"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init_transactions");
    producer.begin_transaction().expect("begin_transaction");
    producer
        .send(
            BaseRecord::<'_, str, str>::to(&s.topic)
                .key("committed")
                .payload("c"),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&s.dlq, 0, Offset::Offset(1))
        .unwrap();
    let cgm = consumer.group_metadata().expect("group metadata");
    producer
        .send_offsets_to_transaction(&offsets, &cgm, timeout)
        .expect("send_offsets_to_transaction");
    producer
        .commit_transaction(timeout)
        .expect("commit_transaction");
    let stored = s.kafka.committed(&group, &s.dlq, 1);

    producer
        .begin_transaction()
        .expect("second begin_transaction");
    producer
        .send(
            BaseRecord::<'_, str, str>::to(&s.topic)
                .key("aborted")
                .payload("a"),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    producer.flush(timeout).expect("flush");
    producer
        .abort_transaction(timeout)
        .expect("abort_transaction");

    let records = s.kafka.read_all(&s.topic, 2, 3, Duration::from_secs(3));
    let keys: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into())
        .collect();
    assert!(keys.contains(&"committed".to_string()), "{keys:?}");
    eprintln!(
        "mock cluster: offsets after a transactional offset commit of 1: {stored:?} \
         (stored: {}); aborted record visible to read_committed: {}",
        stored == vec![1],
        keys.contains(&"aborted".to_string())
    );
}

fn run_bin(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("CLEVERTAP_DELETER__") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_binary_replays_and_exits_2_on_bad_options() {
    let s = setup(1);
    s.put(&[
        dl("k0", "no_region", None),
        dl("k1", "no_region", Some("3")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &s.toml);

    for bad in [
        vec!["--reason", "not-json"],
        vec!["--to", s.dlq.as_str()],
        vec!["--limit", "0"],
        vec!["--max-replays", "0"],
    ] {
        let mut args = vec!["replay-dlq", "--config", config.as_str()];
        args.extend(bad.iter().copied());
        let (code, stdout, stderr) = run_bin(&args);
        assert_eq!(code, Some(2), "{args:?}\n{stdout}\n{stderr}");
    }
    let (code, _, stderr) = run_bin(&["replay-dlq", "--config", "/nonexistent/config.toml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");

    let (code, stdout, stderr) = run_bin(&[
        "replay-dlq",
        "--config",
        &config,
        "--reason",
        "no_region",
        "--group",
        "cli-replay",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("group cli-replay"), "{stdout}");
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
    assert_eq!(s.kafka.committed("cli-replay", &s.dlq, 1), vec![2]);
}

#[test]
fn a_failed_transaction_is_aborted_commits_nothing_and_the_next_run_resumes() {
    use clevertap_deleter::replay::ReplayError;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let s = setup(1);
    s.put(&[dl("k0", "not_json", None), dl("k1", "not_json", Some("4"))]);
    // As if the group rebalanced: the broker refuses the transaction's offsets.
    s.kafka.cluster.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
    );
    let mut out = Vec::new();
    let err = replay::run(&s.config, &ReplayOptions::default(), &mut out)
        .expect_err("the transaction fails");
    let ReplayError::Kafka { message, done } = err else {
        panic!("a Kafka error, not {err:?}");
    };
    assert!(message.contains("offsets"), "{message}");
    assert_eq!(done.stop, StopCause::Failed);
    assert_eq!(done.counts.total.handled(), 0, "nothing was committed");
    assert_eq!(s.kafka.committed(&done.group, &s.dlq, 1), vec![-1]);

    let (summary, _) = s.replay(&ReplayOptions::default());
    assert_eq!(
        (
            summary.counts.total.replayed,
            summary.counts.total.refused_too_many_replays
        ),
        (1, 1),
        "{summary}"
    );
    assert_eq!(s.kafka.committed(&summary.group, &s.dlq, 1), vec![2]);
}

#[test]
fn a_missing_dead_letter_topic_exits_1() {
    let s = setup(1);
    let dir = tempfile::tempdir().unwrap();
    let toml = merge_toml(&s.toml, "[kafka]\ndlq_topic = \"no-such-topic\"\n");
    let config = write_config(dir.path(), &toml);
    let (code, stdout, stderr) = run_bin(&["replay-dlq", "--config", &config]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("no-such-topic does not exist"), "{stderr}");
    assert!(stdout.contains("on a Kafka error"), "{stdout}");
}
