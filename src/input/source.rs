//! The Kafka side: a consumer on its own thread that reads and decodes
//! messages, reports assignments and revocations, and carries out the commit,
//! pause and stop requests it receives. It never decides what to commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::domain::ledger::RawRecord;
use crate::domain::offsets::PartitionId;
use crate::domain::revokes::Generation;
use crate::input::decode::{Decoded, EventDecoder};
use crate::input::headers;
use crate::input::lag::LagTracker;
use crate::input::retention;
use crate::ops::health::{any_broker_up, Health};
use crate::ops::log_throttle::KafkaLinkLog;
use crate::ops::metrics::Metrics;

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
}

/// While intake is held the consumer simply stops polling, and librdkafka's
/// bounded prefetch stops fetching by itself: resuming is instant. After this
/// long (an API outage, say) the partitions are paused for real, which drops
/// the prefetched messages and lets the thread poll again for rebalances.
const HARD_PAUSE_AFTER: Duration = Duration::from_secs(5);

/// Records per chunk sent to the pipeline.
pub const SOURCE_CHUNK: usize = 256;

/// Messages per chunk at most, counting each message of a skipped run.
const SOURCE_CHUNK_MESSAGES: usize = 4096;

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
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| PartitionId::new(e.topic(), e.partition()))
        .collect()
}

fn offsets_list(marks: &[(PartitionId, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in marks {
        // add_partition_offset only fails for invalid offsets; ours are >= 0.
        let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*offset));
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
        let tpl = offsets_list(&marks);
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
    };
    let consumer: BaseConsumer<SourceContext> =
        settings.client_config.create_with_context(context)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let (commands, command_rx) = std_mpsc::channel();
    let decoder = settings.decoder;
    let intake_held = settings.intake_held;
    let thread = std::thread::Builder::new()
        .name("kafka-source".into())
        .spawn(move || {
            consume(
                consumer,
                decoder,
                command_rx,
                metrics,
                intake_held,
                lag_every,
            )
        })
        .expect("spawning a thread");
    Ok(KafkaSource { commands, thread })
}

fn consume(
    consumer: BaseConsumer<SourceContext>,
    decoder: EventDecoder,
    commands: std_mpsc::Receiver<SourceCommand>,
    metrics: Metrics,
    intake_held: Arc<AtomicBool>,
    lag_every: Duration,
) {
    let consumer = Arc::new(consumer);
    let mut held_since: Option<std::time::Instant> = None;
    let mut hard_paused = false;
    // Per topic, once: the shared name, the consumed counter, and per
    // partition the offset expected next (to notice records lost unread).
    let mut topics: BTreeMap<String, TopicState> = BTreeMap::new();
    // Positions are a local read; taken often so the lag thread pairs a
    // fresh end offset with a fresh position.
    let positions_every = lag_every.min(Duration::from_millis(100));
    let mut lag_due = std::time::Instant::now();
    // Messages read since the last hand-over by this loop: runs of skipped
    // messages keep the chunk short, so its length alone would not bound it.
    let mut read_since_flush = 0usize;
    loop {
        if lag_due.elapsed() >= positions_every {
            lag_due = std::time::Instant::now();
            if let Ok(positions) = consumer.position() {
                consumer.context().lag.positions(&positions);
            }
        }
        let assigned = std::mem::take(
            &mut *consumer
                .context()
                .newly_assigned
                .lock()
                .expect("assigned lock"),
        );
        if !assigned.is_empty() {
            let starts = retention::check_assigned(&consumer, &assigned, &metrics);
            consumer
                .context()
                .lag
                .assigned(assigned.iter().cloned().zip(starts.iter().copied()));
            for (p, start) in assigned.iter().zip(starts) {
                *topic_state(&mut topics, &p.topic, &metrics).next_of(p.partition) = start;
            }
        }
        loop {
            match commands.try_recv() {
                Ok(command) => {
                    if carry_out(&consumer, command, &metrics) == Flow::Stopped {
                        return;
                    }
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }

        if intake_held.load(Ordering::Relaxed) {
            let since = *held_since.get_or_insert_with(std::time::Instant::now);
            metrics.consumer_paused.set(1);
            if !consumer.context().flush() {
                await_stop(&consumer, &commands, &metrics);
                return;
            }
            if !hard_paused && since.elapsed() >= HARD_PAUSE_AFTER {
                hard_paused = true;
                set_paused(&consumer, true);
            }
            if !hard_paused {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            // Paused: poll serves rebalances; the few prefetched messages it
            // may still return are handed over as usual.
        } else if held_since.take().is_some() {
            if hard_paused {
                hard_paused = false;
                set_paused(&consumer, false);
            }
            metrics.consumer_paused.set(0);
        }

        // Block only when nothing is waiting to be handed over.
        let pending = consumer
            .context()
            .pending
            .lock()
            .expect("pending lock")
            .len();
        let wait = if pending == 0 {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        let message = match consumer.poll(wait) {
            None => {
                if !consumer.context().flush() {
                    // The pipeline has finished: its Stop (with the final commit) follows.
                    await_stop(&consumer, &commands, &metrics);
                    return;
                }
                continue;
            }
            Some(Err(e)) => {
                consumer.context().link.consumer_error(&e);
                continue;
            }
            Some(Ok(m)) => m,
        };
        let state = topic_state(&mut topics, message.topic(), &metrics);
        state.consumed.inc();
        let partition = PartitionId {
            topic: state.name.clone(),
            partition: message.partition(),
        };
        retention::check_read(
            &consumer,
            &partition,
            message.offset(),
            state.next_of(partition.partition),
            &metrics,
        );
        let payload = message.payload();
        let headers = message.headers().into_iter().flat_map(headers::each);
        let decoded = decoder.decode_message(payload, headers);
        let offset = message.offset();
        let full = if matches!(decoded, Decoded::Skip) {
            // Key and payload are kept only for events that might be
            // dead-lettered later; a skip extends the partition's open run.
            drop(message);
            let mut pending = consumer.context().pending.lock().expect("pending lock");
            match pending.last_mut() {
                Some(SourceRecord::Skipped {
                    partition: p, last, ..
                }) if *last + 1 == offset && *p == partition => *last = offset,
                _ => pending.push(SourceRecord::Skipped {
                    partition,
                    first: offset,
                    last: offset,
                }),
            }
            pending.len() >= SOURCE_CHUNK
        } else {
            let record = SourceRecord::Message {
                partition,
                offset,
                record: RawRecord {
                    key: message.key().map(Bytes::copy_from_slice),
                    payload: payload.map(Bytes::copy_from_slice),
                    timestamp_ms: message.timestamp().to_millis(),
                    replay_count: replay_count(&message),
                    headers: message.headers().map_or_else(Vec::new, |h| {
                        let copy = |(k, v): (&[u8], Option<&[u8]>)| (k.into(), v.map(Into::into));
                        headers::each(h).map(copy).collect()
                    }),
                },
                decoded,
            };
            drop(message);
            let mut pending = consumer.context().pending.lock().expect("pending lock");
            pending.push(record);
            pending.len() >= SOURCE_CHUNK
        };
        read_since_flush += 1;
        if full || read_since_flush >= SOURCE_CHUNK_MESSAGES {
            read_since_flush = 0;
            if !consumer.context().flush() {
                await_stop(&consumer, &commands, &metrics);
                return;
            }
        }
    }
}

/// How often the lag is refreshed: librdkafka's statistics interval (5 s
/// unless configured), or 5 s when statistics are off.
fn lag_interval(config: &ClientConfig) -> Duration {
    match config
        .get("statistics.interval.ms")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(ms) if ms > 0 => Duration::from_millis(ms.max(100)),
        _ => Duration::from_secs(5),
    }
}

/// What the consume loop keeps per topic.
struct TopicState {
    name: Arc<str>,
    consumed: prometheus::IntCounter,
    /// Indexed by partition.
    next: Vec<retention::NextOffset>,
}

impl TopicState {
    fn next_of(&mut self, partition: i32) -> &mut retention::NextOffset {
        let i = partition.max(0) as usize;
        if self.next.len() <= i {
            self.next.resize(i + 1, None);
        }
        &mut self.next[i]
    }
}

fn topic_state<'a>(
    topics: &'a mut BTreeMap<String, TopicState>,
    name: &str,
    metrics: &Metrics,
) -> &'a mut TopicState {
    if !topics.contains_key(name) {
        topics.insert(
            name.to_string(),
            TopicState {
                name: Arc::from(name),
                consumed: metrics.events_consumed.with_label_values(&[name]),
                next: Vec::new(),
            },
        );
    }
    topics.get_mut(name).expect("just inserted")
}

/// Pauses or resumes every assigned partition; partitions assigned later
/// follow the same state (see `post_rebalance`).
fn set_paused(consumer: &BaseConsumer<SourceContext>, pause: bool) {
    consumer.context().paused.store(pause, Ordering::Relaxed);
    if let Ok(a) = consumer.assignment() {
        let _ = if pause {
            consumer.pause(&a)
        } else {
            consumer.resume(&a)
        };
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Running,
    Stopped,
}

fn carry_out(
    consumer: &Arc<BaseConsumer<SourceContext>>,
    command: SourceCommand,
    metrics: &Metrics,
) -> Flow {
    match command {
        SourceCommand::Commit(marks) => {
            let (owned, not_owned) = owned_only(consumer, marks);
            // Synchronous, once per commit interval: the result is known
            // here (librdkafka's callback for async commits of a
            // BaseConsumer is not delivered to our context).
            consumer.context().commit_sync(consumer, owned);
            if !not_owned.is_empty() {
                let _ = consumer.context().send_in_order(SourceEvent::Committed {
                    marks: not_owned,
                    ok: false,
                });
            }
        }
        SourceCommand::Pause => {
            set_paused(consumer, true);
            metrics.consumer_paused.set(1);
        }
        SourceCommand::Stop { final_commit, done } => {
            let (owned, _) = owned_only(consumer, final_commit);
            consumer.context().commit_sync(consumer, owned);
            consumer.context().stopping.store(true, Ordering::Relaxed);
            // librdkafka sends LeaveGroup on unsubscribe even for a static
            // member; closing (when the consumer is dropped) does not.
            if !consumer.context().static_member {
                consumer.unsubscribe();
                // Serve the unsubscribe's revoke so the group sees us leave.
                let _ = consumer.poll(Duration::from_millis(100));
            }
            let _ = done.send(());
            return Flow::Stopped;
        }
    }
    Flow::Running
}

/// After the pipeline stopped reading: keep serving the group (messages read
/// now are not tracked, so never committed) until the Stop command arrives.
fn await_stop(
    consumer: &Arc<BaseConsumer<SourceContext>>,
    commands: &std_mpsc::Receiver<SourceCommand>,
    metrics: &Metrics,
) {
    consumer.context().stopping.store(true, Ordering::Relaxed);
    loop {
        match commands.recv_timeout(Duration::from_millis(50)) {
            Ok(command) => {
                if carry_out(consumer, command, metrics) == Flow::Stopped {
                    return;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                let _ = consumer.poll(Duration::ZERO);
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The `replay_count` header a `replay-dlq` run put on the record, so a
/// record that fails again keeps counting towards `--max-replays`.
fn replay_count(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<u32> {
    headers::each(message.headers()?)
        .find(|(key, _)| *key == crate::output::dead_letter::headers::REPLAY_COUNT.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value?).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Only partitions this member owns now may be committed: splits `marks`
/// into those it owns and the others.
#[allow(clippy::type_complexity)]
fn owned_only(
    consumer: &BaseConsumer<SourceContext>,
    marks: Vec<(PartitionId, i64)>,
) -> (Vec<(PartitionId, i64)>, Vec<(PartitionId, i64)>) {
    let Ok(assignment) = consumer.assignment() else {
        return (Vec::new(), marks);
    };
    let elements = assignment.elements();
    let owned: std::collections::HashSet<(&str, i32)> = elements
        .iter()
        .map(|e| (e.topic(), e.partition()))
        .collect();
    marks
        .into_iter()
        .partition(|(p, _)| owned.contains(&(&*p.topic, p.partition)))
}
