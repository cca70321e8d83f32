//! Transactional writing: the replay producer, and the [`Replayer`] that
//! produces each replayed record and commits it with the offsets in one transaction.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

use super::decide::{decide, headers, Decision, Policy, Tally};
use super::reading::{DlqRecord, ReplayConsumer, ReplayProducer};

/// Records per transaction. Small enough to stay far below
/// `transaction.timeout.ms`, large enough to keep commits rare.
pub(super) const CHUNK_RECORDS: usize = 500;

pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The transactional producer: the dead-letter producer's settings plus a
/// `transactional.id` per replay group, so a restarted replay fences and
/// aborts the transaction its crashed predecessor left open.
pub fn replay_producer_config(config: &Config, group: &str) -> ClientConfig {
    let mut c = crate::app::pipeline::producer_config(config);
    c.set("client.id", "clevertap-deleter-replay")
        .set("transactional.id", format!("{group}-replayer"));
    c
}

/// Retries an operation librdkafka calls retriable (a timeout, a moving
/// coordinator); any other error ends the run.
pub(super) fn retrying<T>(what: &str, mut op: impl FnMut() -> KafkaResult<T>) -> Result<T, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op() {
            Ok(v) => return Ok(v),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 5 => {
                tracing::warn!(attempt, error = %e, "{what} failed; retrying");
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

pub(super) struct Replayer<'a> {
    pub(super) policy: Policy,
    pub(super) limit: Option<u64>,
    /// None in a dry run.
    pub(super) producer: Option<ReplayProducer>,
    pub(super) out: &'a mut dyn Write,
    pub(super) committed: Tally,
    /// The open transaction: its counts and the next offset per partition.
    pub(super) chunk: Tally,
    pub(super) chunk_offsets: BTreeMap<i32, i64>,
    pub(super) in_transaction: bool,
}

impl Replayer<'_> {
    fn replayed(&self) -> u64 {
        self.committed.total.replayed + self.chunk.total.replayed
    }

    /// Handles one record; returns whether `--limit` is reached.
    pub(super) fn handle(&mut self, record: DlqRecord) -> Result<bool, String> {
        let decision = decide(&record.headers, &self.policy);
        let dlq_topic = self.policy.dlq_topic.clone();
        if let Some(producer) = &self.producer {
            // Skipped and refused records are committed past too: they are
            // handled, and explained in the summary.
            if !self.in_transaction {
                producer
                    .begin_transaction()
                    .map_err(|e| format!("beginning a transaction: {e}"))?;
                self.in_transaction = true;
            }
            match &decision {
                Decision::Replay {
                    topic,
                    replay_count,
                } => send(producer, &dlq_topic, &record, topic, *replay_count)?,
                Decision::Refuse(refusal) => tracing::warn!(
                    dlq_partition = record.partition,
                    dlq_offset = record.offset,
                    reason = record.reason(),
                    refusal = %refusal,
                    "refusing to replay a dead letter"
                ),
                Decision::Skip => {}
            }
        } else if let Some(line) = record.listing(&dlq_topic, &decision) {
            let _ = writeln!(self.out, "{line}");
        }
        self.chunk.record(record.reason(), &decision);
        self.chunk_offsets
            .insert(record.partition, record.offset + 1);
        Ok(matches!(decision, Decision::Replay { .. })
            && self.limit.is_some_and(|limit| self.replayed() >= limit))
    }

    pub(super) fn chunk_len(&self) -> u64 {
        self.chunk.total.handled()
    }

    /// Commits the open transaction: the replayed records and the position
    /// after the chunk, atomically.
    pub(super) fn commit(&mut self, consumer: &ReplayConsumer) -> Result<(), String> {
        if self.chunk_len() == 0 {
            return Ok(());
        }
        if let Some(producer) = &self.producer {
            let mut offsets = TopicPartitionList::new();
            for (partition, next) in &self.chunk_offsets {
                offsets
                    .add_partition_offset(&self.policy.dlq_topic, *partition, Offset::Offset(*next))
                    .map_err(|e| format!("building the offsets to commit: {e}"))?;
            }
            let group = consumer
                .group_metadata()
                .ok_or("the consumer has no group metadata")?;
            retrying("adding the offsets to the transaction", || {
                producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
            })?;
            retrying("committing the transaction", || {
                producer.commit_transaction(TXN_TIMEOUT)
            })?;
            // The offsets are committed with the transaction: Kafka stores
            // them when the transaction commits, and a read_committed reader
            // sees exactly the records of committed transactions (proven by
            // tests/e2e_replay.rs with kill -9 in the middle of a replay). No
            // plain commit follows (librdkafka's mock cluster stores no
            // transactional offsets; the tests that need stored progress
            // run on Apache Kafka).
            self.in_transaction = false;
            tracing::info!(
                records = self.chunk_len(),
                replayed = self.chunk.total.replayed,
                "committed a replay transaction"
            );
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.committed.add(&chunk);
        self.chunk_offsets.clear();
        Ok(())
    }
}

/// Queues one replayed record in the open transaction. Delivery failures
/// surface at the commit, which then fails and the transaction is aborted.
fn send(
    producer: &ReplayProducer,
    dlq_topic: &str,
    record: &DlqRecord,
    topic: &str,
    replay_count: u32,
) -> Result<(), String> {
    let count = replay_count.to_string();
    let from = format!("{dlq_topic}/{}/{}", record.partition, record.offset);
    let mut headers = OwnedHeaders::new_with_capacity(record.original_headers.len() + 3);
    for (key, value) in &record.original_headers {
        let value = value.as_deref();
        headers = headers.insert(Header { key, value });
    }
    headers = headers
        .insert(Header {
            key: headers::REPLAY_COUNT,
            value: Some(count.as_str()),
        })
        .insert(Header {
            key: headers::REPLAYED_FROM,
            value: Some(from.as_str()),
        });
    if let Some(reason) = &record.headers.reason {
        headers = headers.insert(Header {
            key: headers::REPLAYED_REASON,
            value: Some(reason.as_str()),
        });
    }
    // The partitioner picks the partition from the key; it may differ from
    // the original one (deletions do not depend on order).
    let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
    if let Some(key) = record.key.as_deref() {
        out = out.key(key);
    }
    if let Some(payload) = record.payload.as_deref() {
        out = out.payload(payload);
    }
    loop {
        match producer.send(out) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                out = back;
                producer.poll(Duration::from_millis(100));
            }
            Err((e, _)) => return Err(format!("producing to {topic}: {e}")),
        }
    }
}
