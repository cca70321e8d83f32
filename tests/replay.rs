//! `replay-dlq` on rdkafka's MockCluster: the dry run, bad options, a failed
//! transaction, a missing dead-letter topic, and what the mock's
//! transactions do. The mock stores no transactional offsets and writes no
//! abort markers, so everything that depends on committed progress (filters,
//! refusals, `--limit` and `--to` runs resuming, kill -9 in the middle) runs
//! on Apache Kafka in tests/e2e_replay.rs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use clevertap_deleter::app::replay::{self, ReplayOptions, ReplaySummary, StopCause};
use clevertap_deleter::config::{self, Config};
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

struct Setup {
    kafka: Kafka,
    topic: String,
    dlq: String,
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
            let headers = r.headers(&self.topic, i);
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

#[test]
fn the_binary_exits_2_on_bad_options() {
    let s = setup(1);
    s.put(&[
        dl("k0", "no_region", None),
        dl("k1", "no_region", Some("3")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &s.toml).display().to_string();

    for bad in [
        vec!["--reason", "not-json"],
        vec!["--to", s.dlq.as_str()],
        vec!["--limit", "0"],
        vec!["--max-replays", "0"],
    ] {
        let mut args = vec!["replay-dlq", "--config", config.as_str()];
        args.extend(bad.iter().copied());
        let (code, stdout, stderr) = run_to_end(&args);
        assert_eq!(code, Some(2), "{args:?}\n{stdout}\n{stderr}");
    }
    let (code, _, stderr) = run_to_end(&["replay-dlq", "--config", "/nonexistent/config.toml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");

    // A successful run of the binary, with its progress committed, is in
    // tests/e2e_replay.rs (the mock cluster stores no transactional offsets).
}

#[test]
fn a_failed_transaction_is_aborted_and_commits_nothing() {
    use clevertap_deleter::app::replay::ReplayError;
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

    // The next run does everything (the aborted run committed nothing).
    // That it resumes from stored progress is proven on Apache Kafka
    // (tests/e2e_replay.rs): the mock cluster stores no transactional offsets.
    let (summary, _) = s.replay(&ReplayOptions::default());
    assert_eq!(
        (
            summary.counts.total.replayed,
            summary.counts.total.refused_too_many_replays
        ),
        (1, 1),
        "{summary}"
    );
}

#[test]
fn a_missing_dead_letter_topic_exits_1() {
    let s = setup(1);
    let dir = tempfile::tempdir().unwrap();
    let toml = merge_toml(&s.toml, "[kafka]\ndlq_topic = \"no-such-topic\"\n");
    let config = write_config(dir.path(), &toml).display().to_string();
    let (code, stdout, stderr) = run_to_end(&["replay-dlq", "--config", &config]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("no-such-topic does not exist"), "{stderr}");
    assert!(stdout.contains("on a Kafka error"), "{stdout}");
}
