//! The Kafka side: a consumer on its own thread that reads and decodes
//! messages, reports assignments and revocations, and carries out the commit,
//! pause and stop requests it receives. It never decides what to commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::domain::ledger::RawRecord;
use crate::domain::offsets::PartitionId;
use crate::domain::revokes::Generation;
use crate::input::decode::{Decoded, EventDecoder};
use crate::input::lag::LagTracker;
use crate::input::warm;
use crate::ops::health::{any_broker_up, Health};
use crate::ops::log_throttle::KafkaLinkLog;
use crate::ops::metrics::Metrics;

mod reading;
use reading::{consume, lag_interval};

/// What was read from Kafka, already decoded.
#[derive(Debug)]
pub enum SourceRecord {
    /// One message with work to do (a deletion or a dead letter).
    Message {
        partition: PartitionId,
        offset: i64,
        record: RawRecord,
        decoded: Decoded,
    },
    /// Consecutive offsets of one partition that the decoder skipped (other
    /// event types): one entry for the run, nothing to do but move the
    /// watermark. On a topic of mostly other types this is most messages.
    Skipped {
        partition: PartitionId,
        first: i64,
        last: i64,
    },
}

impl SourceRecord {
    pub fn partition(&self) -> &PartitionId {
        match self {
            SourceRecord::Message { partition, .. } | SourceRecord::Skipped { partition, .. } => {
                partition
            }
        }
    }
}

/// What the consumer thread tells the pipeline, in the order it happened.
#[derive(Debug)]
pub enum SourceEvent {
    /// Records in offset order per partition, handed over in chunks (fewer
    /// wake-ups); a chunk is always flushed before any other event.
    Records(Vec<SourceRecord>),
    Assigned {
        partitions: Vec<PartitionId>,
        generation: Generation,
    },
    /// The pipeline answers with the watermarks to commit for these partitions
    /// before they are given up (the consumer waits for the answer, up to the
    /// revoke timeout plus a margin, then goes on without committing).
    Revoked {
        partitions: Vec<PartitionId>,
        generation: Generation,
        reply: std_mpsc::SyncSender<Vec<(PartitionId, i64)>>,
    },
    /// The group coordinator's answer to a commit (`ok`), or a commit that
    /// was not sent because the partitions are no longer owned (not `ok`).
    Committed {
        marks: Vec<(PartitionId, i64)>,
        ok: bool,
    },
    /// The consumer cannot go on (a fatal librdkafka error).
    Fatal(String),
}

/// Requests from the pipeline to the consumer thread.
#[derive(Debug)]
pub enum SourceCommand {
    Commit(Vec<(PartitionId, i64)>),
    /// Stop fetching for good (shutdown); backpressure uses `intake_held`.
    Pause,
    /// Commit synchronously, leave the group, end the thread.
    Stop {
        final_commit: Vec<(PartitionId, i64)>,
        done: oneshot::Sender<()>,
    },
}

pub struct SourceSettings {
    pub client_config: ClientConfig,
    pub topics: Vec<String>,
    pub decoder: EventDecoder,
    /// How long a revoke waits for the pipeline's answer.
    pub revoke_timeout: Duration,
    /// Set by the pipeline while it holds too many events: stop reading.
    pub intake_held: Arc<AtomicBool>,
    /// Stored with every commit (see `warm::decoding_fingerprint`).
    pub fingerprint: String,
    /// Set at start while the dedup memory is read back: intake is held and
    /// partitions are paused from their assignment on (the group is joined,
    /// nothing is read) until the pipeline clears it. Not backpressure:
    /// `consumer_paused` stays 0.
    pub warming: Arc<AtomicBool>,
}

/// Records per chunk sent to the pipeline.
pub const SOURCE_CHUNK: usize = 256;

struct SourceContext {
    events: mpsc::Sender<SourceEvent>,
    /// Records read but not yet handed over. Lives here so the rebalance
    /// callbacks (which run inside poll) can flush it before their event.
    pending: std::sync::Mutex<Vec<SourceRecord>>,
    health: Health,
    metrics: Metrics,
    stopping: AtomicBool,
    paused: AtomicBool,
    revoke_timeout: Duration,
    /// Partitions assigned since the consume loop last looked: it checks
    /// where they start and what retention removed before (see `retention`).
    newly_assigned: std::sync::Mutex<Vec<PartitionId>>,
    /// Counts rebalance events, so the pipeline can tell an old revoke from
    /// a newer assignment of the same partition.
    generation: std::sync::atomic::AtomicU64,
    /// `group.instance.id` is set: on stop, close without unsubscribing, so
    /// no LeaveGroup is sent and a restart within the session timeout gets
    /// the same partitions back with no rebalance.
    static_member: bool,
    /// Connection problems as state changes, not one line per callback.
    link: KafkaLinkLog,
    /// `consumer_lag_messages` of the assigned partitions (see `lag`).
    lag: LagTracker,
    /// The decoding's fingerprint, stored with every commit with the first
    /// offset of the partition it decided (see `warm`).
    fingerprint: String,
    /// Per owned partition, the first offset decided by this decoding; none
    /// when unknown (then the commit carries no metadata).
    decoding_since: std::sync::Mutex<std::collections::HashMap<PartitionId, i64>>,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| PartitionId::new(e.topic(), e.partition()))
        .collect()
}

fn offsets_list(
    marks: &[(PartitionId, i64)],
    metadata: impl Fn(&PartitionId) -> String,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in marks {
        let mut e = tpl.add_partition(&p.topic, p.partition);
        // set_offset only fails for invalid offsets; ours are >= 0.
        let _ = e.set_offset(Offset::Offset(*offset));
        e.set_metadata(metadata(p));
    }
    tpl
}

impl SourceContext {
    /// Hands the pending records over; false once the pipeline is gone.
    fn flush(&self) -> bool {
        let chunk = std::mem::replace(
            &mut *self.pending.lock().expect("pending lock"),
            Vec::with_capacity(SOURCE_CHUNK),
        );
        chunk.is_empty()
            || self
                .events
                .blocking_send(SourceEvent::Records(chunk))
                .is_ok()
    }

    /// Sends an event after the records read before it.
    fn send_in_order(&self, event: SourceEvent) -> bool {
        self.flush() && self.events.blocking_send(event).is_ok()
    }

    fn next_generation(&self) -> Generation {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record_commit(&self, result: &Result<(), KafkaError>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["success"]).inc();
                for e in offsets.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        self.metrics
                            .committed_offset
                            .with_label_values(&[e.topic(), &e.partition().to_string()])
                            .set(o);
                    }
                }
            }
            Err(e) => {
                self.metrics.commits.with_label_values(&["failure"]).inc();
                tracing::warn!(error = %e, "offset commit failed; the next commit retries it");
            }
        }
    }

    /// Commits and tells the pipeline how it went, so a failed commit is
    /// asked for again even if the watermark does not move.
    fn commit_sync(&self, consumer: &BaseConsumer<SourceContext>, marks: Vec<(PartitionId, i64)>) {
        if marks.is_empty() {
            return;
        }
        let since = self.decoding_since.lock().expect("since lock");
        let tpl = offsets_list(&marks, |p| {
            since
                .get(p)
                .map(|s| warm::commit_metadata(&self.fingerprint, *s))
                .unwrap_or_default()
        });
        drop(since);
        let result = consumer.commit(&tpl, CommitMode::Sync);
        self.record_commit(&result, &tpl);
        let _ = self.send_in_order(SourceEvent::Committed {
            marks,
            ok: result.is_ok(),
        });
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        // The lag comes from `lag`: statistics measure it against the
        // committed offset and go stale for paused partitions.
        let up = any_broker_up(&stats);
        self.health.set_kafka_connected(up);
        if up {
            self.link.up();
        }
        self.link.tick();
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.link.librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(error = %error, %reason, "fatal Kafka consumer error");
                let _ = self.send_in_order(SourceEvent::Fatal(format!("{error}: {reason}")));
            }
            code => {
                if code == Some(RDKafkaErrorCode::AllBrokersDown) {
                    self.health.set_kafka_connected(false);
                }
                self.link.client_error(&error, reason);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        let partitions = partitions_of(tpl);
        self.lag.revoked(&partitions);
        tracing::info!(
            count = partitions.len(),
            "partitions revoked; draining them before the commit"
        );
        if self.stopping.load(Ordering::Relaxed) {
            return; // the final commit was made before leaving the group
        }
        let (reply, answer) = std_mpsc::sync_channel(1);
        let generation = self.next_generation();
        if !self.send_in_order(SourceEvent::Revoked {
            partitions,
            generation,
            reply,
        }) {
            return;
        }
        match answer.recv_timeout(self.revoke_timeout + Duration::from_secs(5)) {
            Ok(marks) => self.commit_sync(consumer, marks),
            Err(_) => tracing::warn!(
                "no answer from the pipeline for the revoke; nothing committed for it"
            ),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.health.set_kafka_connected(true);
                self.link.up();
                if self.paused.load(Ordering::Relaxed) {
                    let _ = consumer.pause(tpl);
                }
                let partitions = partitions_of(tpl);
                self.newly_assigned
                    .lock()
                    .expect("assigned lock")
                    .extend(partitions.iter().cloned());
                let generation = self.next_generation();
                tracing::info!(count = partitions.len(), generation, "partitions assigned");
                let _ = self.send_in_order(SourceEvent::Assigned {
                    partitions,
                    generation,
                });
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.metrics.partitions_assigned.set(assigned as i64);
    }

    fn commit_callback(&self, result: Result<(), KafkaError>, offsets: &TopicPartitionList) {
        self.record_commit(&result, offsets);
    }
}

/// A handle to the running consumer thread.
pub struct KafkaSource {
    pub commands: std_mpsc::Sender<SourceCommand>,
    pub thread: JoinHandle<()>,
}

/// Creates the consumer (errors here are configuration errors) and starts its thread.
pub fn start(
    settings: SourceSettings,
    events: mpsc::Sender<SourceEvent>,
    metrics: Metrics,
    health: Health,
) -> Result<KafkaSource, KafkaError> {
    metrics.register_topics(&settings.topics);
    let lag_every = lag_interval(&settings.client_config);
    let lag = LagTracker::start(&settings.client_config, lag_every, metrics.clone());
    let context = SourceContext {
        lag,
        events: events.clone(),
        pending: std::sync::Mutex::new(Vec::with_capacity(SOURCE_CHUNK)),
        health,
        metrics: metrics.clone(),
        stopping: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        revoke_timeout: settings.revoke_timeout,
        generation: std::sync::atomic::AtomicU64::new(0),
        newly_assigned: std::sync::Mutex::new(Vec::new()),
        static_member: settings
            .client_config
            .get("group.instance.id")
            .is_some_and(|id| !id.is_empty()),
        link: KafkaLinkLog::new("consumer"),
        fingerprint: settings.fingerprint,
        decoding_since: Default::default(),
    };
    let consumer: BaseConsumer<SourceContext> =
        settings.client_config.create_with_context(context)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let (commands, command_rx) = std_mpsc::channel();
    let decoder = settings.decoder;
    let intake_held = settings.intake_held;
    let warming = settings.warming;
    let thread = std::thread::Builder::new()
        .name("kafka-source".into())
        .spawn(move || {
            consume(
                consumer,
                decoder,
                command_rx,
                metrics,
                intake_held,
                warming,
                lag_every,
            )
        })
        .expect("spawning a thread");
    Ok(KafkaSource { commands, thread })
}
