//! `replay-dlq`: moves dead letters back to a source topic once their cause is
//! fixed. Consume-transform-produce in Kafka transactions: the replayed records
//! of a chunk and the replay group's offsets on the dead-letter topic commit
//! together, so a crash neither duplicates nor skips a replay.
//!
//! The decision per record ([`parse_headers`], [`decide`]) is pure; [`run`]
//! does the Kafka side.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::input::decode::DeadLetterReason;
use crate::ops::log_throttle::KafkaLinkLog;
use crate::output::dead_letter::headers as dlq;

/// Headers the replay adds to each replayed record.
pub mod headers {
    /// How often the record was replayed, this replay included.
    pub const REPLAY_COUNT: &str = "replay_count";
    /// `<dead-letter topic>/<partition>/<offset>` of the record it came from.
    pub const REPLAYED_FROM: &str = "replayed_from";
    /// The `reason` header of that dead-letter record.
    pub const REPLAYED_REASON: &str = "replayed_reason";
}

pub const DEFAULT_MAX_REPLAYS: u32 = 3;
/// How long `replay-dlq` waits for the brokers before it gives up (exit 1).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 30;

/// Records per transaction. Small enough to stay far below
/// `transaction.timeout.ms`, large enough to keep commits rare.
const CHUNK_RECORDS: usize = 500;
const POLL: Duration = Duration::from_millis(200);
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the group to assign the dead-letter partitions.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// With partitions assigned, neither a record nor an end-of-partition event
/// for this long means the brokers are unreachable.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Tallies records without a `reason` header.
const NO_REASON: &str = "(none)";

/// Options of `clevertap-deleter replay-dlq`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayOptions {
    /// Replay only dead letters with this `reason` header (repeatable).
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Stop after replaying this many records.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// List what would be replayed or refused; produce and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse records whose `replay_count` header is at least this.
    #[arg(long, default_value_t = DEFAULT_MAX_REPLAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replays: u32,
    /// Consumer group that keeps the replay's position on the dead-letter topic
    /// [default: {kafka.group_id}-replay, plus -{reasons joined by +} when filtered].
    #[arg(long, value_name = "ID")]
    pub group: Option<String>,
    /// Produce to this topic instead of each record's `source_topic` header.
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Give up (exit 1) when the brokers do not answer within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            reasons: Vec::new(),
            limit: None,
            dry_run: false,
            max_replays: DEFAULT_MAX_REPLAYS,
            group: None,
            to: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad options or Kafka client settings: exit code 2.
    #[error("{0}")]
    Config(String),
    /// A Kafka failure: the open transaction was aborted; `done` holds what
    /// was committed before. Exit code 1.
    #[error("{message}")]
    Kafka {
        message: String,
        done: Box<ReplaySummary>,
    },
}

/// What the replay reads from a dead-letter record's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source_topic: Option<String>,
    /// 0 when the header is absent; `Err(raw value)` when it is not a number.
    pub replay_count: Result<u32, String>,
}

/// Reads the headers the replay needs. When a header repeats, the last one
/// wins (as Kafka's `lastHeader`); empty values count as absent.
pub fn parse_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> DeadLetterHeaders {
    let mut h = DeadLetterHeaders {
        reason: None,
        detail: None,
        source_topic: None,
        replay_count: Ok(0),
    };
    for (key, value) in headers {
        let text = value
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
            .filter(|v| !v.is_empty());
        match key {
            dlq::REASON => h.reason = text,
            dlq::DETAIL => h.detail = text,
            dlq::SOURCE_TOPIC => h.source_topic = text,
            headers::REPLAY_COUNT => {
                h.replay_count = match text {
                    None => Ok(0),
                    Some(t) => t.parse().map_err(|_| t),
                }
            }
            _ => {}
        }
    }
    h
}

/// What the replay does with every record, from the command's options.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Empty: every reason.
    pub reasons: BTreeSet<String>,
    pub max_replays: u32,
    pub to: Option<String>,
    pub dlq_topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Its reason is not among the `--reason` filters.
    Skip,
    Refuse(Refusal),
    /// Produce it to `topic` with `replay_count` (already incremented).
    Replay {
        topic: String,
        replay_count: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `replay_count` reached `--max-replays`: its cause is likely not fixed.
    TooManyReplays {
        replay_count: u32,
    },
    NoSourceTopic,
    /// An unreadable `replay_count`, or a `source_topic` naming the
    /// dead-letter topic itself (it would loop).
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyReplays { replay_count } => {
                write!(f, "replayed {replay_count} times already")
            }
            Refusal::NoSourceTopic => f.write_str("no source_topic header"),
            Refusal::Invalid(why) => f.write_str(why),
        }
    }
}

pub fn decide(h: &DeadLetterHeaders, policy: &Policy) -> Decision {
    if !policy.reasons.is_empty()
        && !h
            .reason
            .as_ref()
            .is_some_and(|r| policy.reasons.contains(r))
    {
        return Decision::Skip;
    }
    let count = match &h.replay_count {
        Ok(count) => *count,
        Err(raw) => {
            return Decision::Refuse(Refusal::Invalid(format!(
                "replay_count header {raw:?} is not a number"
            )))
        }
    };
    if count >= policy.max_replays {
        return Decision::Refuse(Refusal::TooManyReplays {
            replay_count: count,
        });
    }
    let Some(topic) = policy.to.as_deref().or(h.source_topic.as_deref()) else {
        return Decision::Refuse(Refusal::NoSourceTopic);
    };
    if topic == policy.dlq_topic {
        return Decision::Refuse(Refusal::Invalid(
            "its source_topic is the dead-letter topic".into(),
        ));
    }
    Decision::Replay {
        topic: topic.to_string(),
        // count < max_replays <= u32::MAX, so this cannot overflow.
        replay_count: count + 1,
    }
}

/// Checks the `--reason` values against the reasons the daemon writes, so a
/// typo fails instead of silently matching nothing.
pub fn validate_reasons(reasons: &[String]) -> Result<BTreeSet<String>, String> {
    let known: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    reasons
        .iter()
        .map(|r| {
            if known.contains(&r.as_str()) {
                Ok(r.clone())
            } else {
                Err(format!(
                    "--reason `{r}` is not a dead-letter reason (one of: {})",
                    known.join(", ")
                ))
            }
        })
        .collect()
}

/// `{group_id}-replay`, plus `-{reasons sorted, joined by '+'}` when filtered,
/// so each filter keeps its own position on the dead-letter topic.
pub fn default_group(group_id: &str, reasons: &BTreeSet<String>) -> String {
    let mut group = format!("{group_id}-replay");
    if !reasons.is_empty() {
        group.push('-');
        group.push_str(&reasons.iter().cloned().collect::<Vec<_>>().join("+"));
    }
    group
}

/// Records per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub replayed: u64,
    pub skipped: u64,
    pub refused_too_many_replays: u64,
    pub refused_no_source_topic: u64,
    pub refused_invalid: u64,
}

impl Counts {
    fn record(&mut self, decision: &Decision) {
        match decision {
            Decision::Skip => self.skipped += 1,
            Decision::Replay { .. } => self.replayed += 1,
            Decision::Refuse(Refusal::TooManyReplays { .. }) => self.refused_too_many_replays += 1,
            Decision::Refuse(Refusal::NoSourceTopic) => self.refused_no_source_topic += 1,
            Decision::Refuse(Refusal::Invalid(_)) => self.refused_invalid += 1,
        }
    }

    fn add(&mut self, other: &Counts) {
        self.replayed += other.replayed;
        self.skipped += other.skipped;
        self.refused_too_many_replays += other.refused_too_many_replays;
        self.refused_no_source_topic += other.refused_no_source_topic;
        self.refused_invalid += other.refused_invalid;
    }

    pub fn refused(&self) -> u64 {
        self.refused_too_many_replays + self.refused_no_source_topic + self.refused_invalid
    }

    pub fn handled(&self) -> u64 {
        self.replayed + self.skipped + self.refused()
    }
}

/// Counts in total and per `reason` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: Counts,
    pub per_reason: BTreeMap<String, Counts>,
}

impl Tally {
    fn record(&mut self, reason: &str, decision: &Decision) {
        self.total.record(decision);
        self.per_reason
            .entry(reason.to_string())
            .or_default()
            .record(decision);
    }

    fn add(&mut self, other: &Tally) {
        self.total.add(&other.total);
        for (reason, counts) in &other.per_reason {
            self.per_reason
                .entry(reason.clone())
                .or_default()
                .add(counts);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    EndOfTopic,
    Limit,
    /// A Kafka error; the counts are what was committed before it.
    Failed,
}

/// What a run did. Only committed work is counted (in a dry run: everything
/// read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub dlq_topic: String,
    pub group: String,
    pub dry_run: bool,
    pub max_replays: u32,
    pub counts: Tally,
    pub stop: StopCause,
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.counts.total;
        writeln!(
            f,
            "replay-dlq summary: dead-letter topic {}, group {}{}",
            self.dlq_topic,
            self.group,
            if self.dry_run {
                " (dry run: nothing produced, nothing committed)"
            } else {
                ""
            }
        )?;
        let stop = match self.stop {
            StopCause::EndOfTopic => "at the end of the dead-letter topic",
            StopCause::Limit => "--limit reached",
            StopCause::Failed => "on a Kafka error (the counts are what was committed before it)",
        };
        writeln!(f, "  stopped:                       {stop}")?;
        let replayed = if self.dry_run {
            "would be replayed:"
        } else {
            "replayed:"
        };
        writeln!(f, "  {replayed:<30} {}", t.replayed)?;
        writeln!(f, "  skipped by --reason filter:    {}", t.skipped)?;
        writeln!(
            f,
            "  refused, too many replays:     {}  (replay_count >= {})",
            t.refused_too_many_replays, self.max_replays
        )?;
        writeln!(
            f,
            "  refused, no source topic:      {}",
            t.refused_no_source_topic
        )?;
        writeln!(f, "  refused, invalid headers:      {}", t.refused_invalid)?;
        if !self.counts.per_reason.is_empty() {
            writeln!(
                f,
                "  {:<16} {:>9} {:>8} {:>17} {:>16} {:>8}",
                "reason", "replayed", "skipped", "too many replays", "no source topic", "invalid"
            )?;
            for (reason, c) in &self.counts.per_reason {
                writeln!(
                    f,
                    "  {:<16} {:>9} {:>8} {:>17} {:>16} {:>8}",
                    reason,
                    c.replayed,
                    c.skipped,
                    c.refused_too_many_replays,
                    c.refused_no_source_topic,
                    c.refused_invalid
                )?;
            }
        }
        Ok(())
    }
}

/// The replay consumer: the daemon's settings and the user's properties, then
/// what the replay depends on (these win over the properties).
pub fn replay_consumer_config(config: &Config, group: &str) -> ClientConfig {
    let mut c = crate::app::pipeline::consumer_config(config);
    c.set("group.id", group)
        .set("client.id", "clevertap-deleter-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new replay group starts at the oldest dead letter.
        .set("auto.offset.reset", "earliest")
        // The run ends when every assigned partition reported its end.
        .set("enable.partition.eof", "true")
        // Nothing reads the statistics here; they would only be logged.
        .set("statistics.interval.ms", "0");
    c
}

/// The transactional producer: the dead-letter producer's settings plus a
/// `transactional.id` per replay group, so a restarted replay fences and
/// aborts the transaction its crashed predecessor left open.
pub fn replay_producer_config(config: &Config, group: &str) -> ClientConfig {
    let mut c = crate::app::pipeline::producer_config(config);
    c.set("client.id", "clevertap-deleter-replay")
        .set("transactional.id", format!("{group}-replayer"));
    c
}

/// rdkafka hands every consumer error event to the context too, and its
/// default logs each at ERROR: with `enable.partition.eof`, the normal end
/// of every partition. The poll loop handles the errors; this only logs,
/// connection problems as state changes (see [`KafkaLinkLog`]).
struct ReplayContext {
    link: KafkaLinkLog,
}

impl ReplayContext {
    fn new(client: &'static str) -> Self {
        ReplayContext {
            link: KafkaLinkLog::new(client),
        }
    }
}

impl ClientContext for ReplayContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.link.librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.link.client_error(&error, reason);
    }
}

impl ConsumerContext for ReplayContext {}

impl ProducerContext for ReplayContext {
    type DeliveryOpaque = ();
    // Delivery failures surface at the transaction's commit.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

type ReplayConsumer = BaseConsumer<ReplayContext>;
type ReplayProducer = BaseProducer<ReplayContext>;

/// Fails unless the brokers answer within `timeout` and the dead-letter
/// topic exists; the error names the cause librdkafka reported.
fn check_reachable(
    consumer: &ReplayConsumer,
    config: &Config,
    timeout: Duration,
) -> Result<(), String> {
    let k = &config.settings.kafka;
    match consumer.fetch_metadata(None, timeout) {
        Ok(metadata) => {
            if metadata.topics().iter().any(|t| t.name() == k.dlq_topic) {
                Ok(())
            } else {
                Err(format!(
                    "the dead-letter topic {} does not exist (or this principal may not describe it)",
                    k.dlq_topic
                ))
            }
        }
        Err(e) => {
            // Log lines and error events (with the cause) arrive through poll.
            let _ = consumer.poll(Duration::ZERO);
            let cause = consumer
                .context()
                .link
                .cause()
                .unwrap_or_else(|| e.to_string());
            Err(format!(
                "cannot reach the Kafka brokers {} within {} s (--connect-timeout): {}; check \
                 kafka.brokers, the security properties and the network path",
                k.brokers,
                timeout.as_secs(),
                k.redact(&cause)
            ))
        }
    }
}

/// One dead-letter record, copied out of the consumer's buffer.
struct DlqRecord {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: DeadLetterHeaders,
}

impl DlqRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = match m.headers() {
            Some(h) => parse_headers(h.iter().map(|h| (h.key, h.value))),
            None => parse_headers([]),
        };
        DlqRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    fn reason(&self) -> &str {
        self.headers.reason.as_deref().unwrap_or(NO_REASON)
    }

    /// One line of the dry-run listing.
    fn listing(&self, dlq_topic: &str, decision: &Decision) -> Option<String> {
        let what = match decision {
            Decision::Skip => return None,
            Decision::Replay { topic, .. } => format!("would replay to {topic}"),
            Decision::Refuse(r) => format!("refused ({r})"),
        };
        let key = self.key.as_deref().map_or_else(
            || "(none)".into(),
            |k| format!("{:?}", String::from_utf8_lossy(k)),
        );
        let replay_count = match &self.headers.replay_count {
            Ok(c) => c.to_string(),
            Err(raw) => format!("{raw:?}"),
        };
        Some(format!(
            "{dlq_topic}/{}/{}: {what}; reason={} replay_count={replay_count} key={key} detail={:?}",
            self.partition,
            self.offset,
            self.reason(),
            self.headers.detail.as_deref().unwrap_or("")
        ))
    }
}

/// Retries an operation librdkafka calls retriable (a timeout, a moving
/// coordinator); any other error ends the run.
fn retrying<T>(what: &str, mut op: impl FnMut() -> KafkaResult<T>) -> Result<T, String> {
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

struct Replayer<'a> {
    policy: Policy,
    limit: Option<u64>,
    /// None in a dry run.
    producer: Option<ReplayProducer>,
    out: &'a mut dyn Write,
    committed: Tally,
    /// The open transaction: its counts and the next offset per partition.
    chunk: Tally,
    chunk_offsets: BTreeMap<i32, i64>,
    in_transaction: bool,
}

impl Replayer<'_> {
    fn replayed(&self) -> u64 {
        self.committed.total.replayed + self.chunk.total.replayed
    }

    /// Handles one record; returns whether `--limit` is reached.
    fn handle(&mut self, record: DlqRecord) -> Result<bool, String> {
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

    fn chunk_len(&self) -> u64 {
        self.chunk.total.handled()
    }

    /// Commits the open transaction: the replayed records and the position
    /// after the chunk, atomically.
    fn commit(&mut self, consumer: &ReplayConsumer) -> Result<(), String> {
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

    fn replay_loop(&mut self, consumer: &ReplayConsumer) -> Result<StopCause, String> {
        let dlq_topic = self.policy.dlq_topic.clone();
        let started = Instant::now();
        let mut last_activity = Instant::now();
        let mut at_eof: HashSet<i32> = HashSet::new();
        let mut assignment: Option<BTreeSet<i32>> = None;
        loop {
            let mut look = false;
            match consumer.poll(POLL) {
                None => look = true,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_eof.insert(partition);
                    last_activity = Instant::now();
                    look = true;
                }
                Some(Err(e)) => consumer_error(e, &dlq_topic)?,
                Some(Ok(m)) => {
                    last_activity = Instant::now();
                    let record = DlqRecord::from_message(&m);
                    drop(m);
                    at_eof.remove(&record.partition);
                    if self.handle(record)? {
                        self.commit(consumer)?;
                        return Ok(StopCause::Limit);
                    }
                    if self.chunk_len() >= CHUNK_RECORDS as u64 {
                        self.commit(consumer)?;
                    }
                }
            }
            if !look {
                continue;
            }
            // Idle or at a partition's end: commit what is open, so a quiet
            // moment never keeps a transaction open for long.
            self.commit(consumer)?;
            // rd_kafka_assignment is a round trip to librdkafka's group
            // thread, so it is asked only here, not per record.
            let current: BTreeSet<i32> = consumer
                .assignment()
                .map_err(|e| format!("reading the assignment: {e}"))?
                .elements()
                .iter()
                .filter(|e| e.topic() == dlq_topic)
                .map(|e| e.partition())
                .collect();
            if current.is_empty() {
                if assignment.is_some() {
                    return Err(rebalanced());
                }
                if started.elapsed() >= ASSIGNMENT_TIMEOUT {
                    return Err(format!(
                        "no partition of {dlq_topic} was assigned within {} s (does the topic exist? \
                         does another replay-dlq run with this group?)",
                        ASSIGNMENT_TIMEOUT.as_secs()
                    ));
                }
                continue;
            }
            match &assignment {
                None => {
                    tracing::info!(partitions = ?current, "dead-letter partitions assigned");
                    assignment = Some(current.clone());
                }
                // Another member joined: what this run holds is no longer
                // certain. Stop; a new run resumes from the committed position.
                Some(first) if *first != current => return Err(rebalanced()),
                Some(_) => {}
            }
            if current.iter().all(|p| at_eof.contains(p)) {
                return Ok(StopCause::EndOfTopic);
            }
            if last_activity.elapsed() >= IDLE_TIMEOUT {
                return Err(format!(
                    "nothing read from {dlq_topic} for {} s before its end",
                    IDLE_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

fn rebalanced() -> String {
    "the replay group rebalanced during the replay (another replay-dlq with the same group?); \
     run it again to resume"
        .into()
}

/// Consumer errors are mostly transient (librdkafka retries them); those that
/// cannot heal end the run.
fn consumer_error(e: KafkaError, dlq_topic: &str) -> Result<(), String> {
    match &e {
        KafkaError::MessageConsumptionFatal(_) => Err(format!("consumer: {e}")),
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
        ) => Err(format!(
            "the dead-letter topic {dlq_topic} does not exist: {e}"
        )),
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::GroupAuthorizationFailed,
        ) => Err(format!("not authorized: {e}")),
        // Already logged by ReplayContext.
        _ => Ok(()),
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
    let mut headers = OwnedHeaders::new_with_capacity(3)
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

/// Replays the dead-letter topic from the group's committed position to its
/// end (or `--limit`). Dry-run listing lines go to `out`; the caller prints
/// the summary.
pub fn run(
    config: &Config,
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplaySummary, ReplayError> {
    let dlq_topic = config.settings.kafka.dlq_topic.clone();
    let reasons = validate_reasons(&options.reasons).map_err(ReplayError::Config)?;
    if options.max_replays == 0 {
        return Err(ReplayError::Config(
            "--max-replays must be at least 1".into(),
        ));
    }
    if options.limit == Some(0) {
        return Err(ReplayError::Config("--limit must be at least 1".into()));
    }
    if let Some(to) = &options.to {
        if to.trim().is_empty() || *to == dlq_topic {
            return Err(ReplayError::Config(format!(
                "--to `{to}` must name a topic other than the dead-letter topic"
            )));
        }
    }
    let group = match &options.group {
        Some(g) if g.trim().is_empty() => {
            return Err(ReplayError::Config("--group must not be empty".into()))
        }
        Some(g) => g.clone(),
        None => default_group(&config.settings.kafka.group_id, &reasons),
    };
    let mut summary = ReplaySummary {
        dlq_topic: dlq_topic.clone(),
        group: group.clone(),
        dry_run: options.dry_run,
        max_replays: options.max_replays,
        counts: Tally::default(),
        stop: StopCause::Failed,
    };
    let kafka_error = |message: String, summary: &ReplaySummary| ReplayError::Kafka {
        message,
        done: Box::new(summary.clone()),
    };

    let consumer: ReplayConsumer = replay_consumer_config(config, &group)
        .create_with_context(ReplayContext::new("replay consumer"))
        .map_err(|e| ReplayError::Config(config.settings.kafka.client_error(&e).to_string()))?;
    check_reachable(
        &consumer,
        config,
        Duration::from_secs(options.connect_timeout.max(1)),
    )
    .map_err(|m| kafka_error(m, &summary))?;
    let producer: Option<ReplayProducer> = if options.dry_run {
        // No producer at all: a dry run must not fence a real replay either.
        None
    } else {
        let producer: ReplayProducer = replay_producer_config(config, &group)
            .create_with_context(ReplayContext::new("replay producer"))
            .map_err(|e| ReplayError::Config(config.settings.kafka.client_error(&e).to_string()))?;
        // Before reading the position: this aborts a transaction a crashed
        // run left open, so the committed offsets are final.
        retrying("initializing transactions", || {
            producer.init_transactions(TXN_TIMEOUT)
        })
        .map_err(|m| kafka_error(m, &summary))?;
        Some(producer)
    };
    consumer
        .subscribe(&[dlq_topic.as_str()])
        .map_err(|e| kafka_error(format!("subscribing to {dlq_topic}: {e}"), &summary))?;
    tracing::info!(
        dlq_topic = %dlq_topic, group = %group, dry_run = options.dry_run,
        "replaying dead letters"
    );

    let mut replayer = Replayer {
        policy: Policy {
            reasons,
            max_replays: options.max_replays,
            to: options.to.clone(),
            dlq_topic,
        },
        limit: options.limit,
        producer,
        out,
        committed: Tally::default(),
        chunk: Tally::default(),
        chunk_offsets: BTreeMap::new(),
        in_transaction: false,
    };
    let outcome = replayer.replay_loop(&consumer);
    summary.counts = replayer.committed.clone();
    match outcome {
        Ok(stop) => {
            summary.stop = stop;
            Ok(summary)
        }
        Err(message) => {
            if let (Some(producer), true) = (&replayer.producer, replayer.in_transaction) {
                // Neither its records nor its offsets become visible.
                if let Err(e) = producer.abort_transaction(TXN_TIMEOUT) {
                    tracing::error!(error = %e, "aborting the replay transaction failed; the next run's start aborts it");
                }
            }
            Err(kafka_error(message, &summary))
        }
    }
}

/// `replay-dlq` as the command line runs it: exit 0 on success, 2 on a
/// configuration error, 1 on a Kafka error.
pub fn main(config: &Config, options: &ReplayOptions) -> ExitCode {
    crate::ops::logging::init(&config.settings.log.format, &config.settings.log.level);
    crate::ops::logging::log_warnings(config);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(config, options, &mut out) {
        Ok(summary) => {
            let _ = write!(out, "{summary}");
            ExitCode::SUCCESS
        }
        Err(ReplayError::Config(message)) => {
            eprintln!("clevertap-deleter replay-dlq: {message}");
            ExitCode::from(crate::app::exit_code::EXIT_CONFIG)
        }
        Err(ReplayError::Kafka { message, done }) => {
            let _ = write!(out, "{done}");
            let _ = out.flush();
            eprintln!("clevertap-deleter replay-dlq: {message}");
            ExitCode::from(crate::app::exit_code::EXIT_FATAL)
        }
    }
}

#[cfg(test)]
mod tests;
