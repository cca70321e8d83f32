//! The consumer thread's loop: read, decode, hand records over in chunks,
//! hold intake under backpressure, and carry out the pipeline's commit,
//! pause and stop requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

use super::{SourceCommand, SourceContext, SourceEvent, SourceRecord, SOURCE_CHUNK};
use crate::domain::ledger::RawRecord;
use crate::domain::offsets::PartitionId;
use crate::input::decode::{Decoded, EventDecoder};
use crate::input::headers;
use crate::input::retention;
use crate::input::warm;
use crate::ops::metrics::Metrics;

/// While intake is held the consumer simply stops polling, and librdkafka's
/// bounded prefetch stops fetching by itself: resuming is instant. After this
/// long (an API outage, say) the partitions are paused for real, which drops
/// the prefetched messages and lets the thread poll again for rebalances.
const HARD_PAUSE_AFTER: Duration = Duration::from_secs(5);

/// Messages per chunk at most, counting each message of a skipped run.
const SOURCE_CHUNK_MESSAGES: usize = 4096;

pub(super) fn consume(
    consumer: BaseConsumer<SourceContext>,
    decoder: EventDecoder,
    commands: std_mpsc::Receiver<SourceCommand>,
    metrics: Metrics,
    intake_held: Arc<AtomicBool>,
    warming: Arc<AtomicBool>,
    lag_every: Duration,
) {
    let consumer = Arc::new(consumer);
    // Held from the start: paused at once, so the thread polls (joins the
    // group, serves rebalances) and every assignment is paused until resumed.
    let start_held = warming.load(Ordering::Relaxed);
    let mut held_since: Option<std::time::Instant> = start_held.then(std::time::Instant::now);
    let mut hard_paused = start_held;
    // Partitions this consumer ever paused: librdkafka keeps a pause through
    // a revoke, so one given back later must be resumed explicitly.
    let mut ever_paused: std::collections::HashSet<PartitionId> = Default::default();
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
    let mut clock_check = 0u32;
    // The last poll returned nothing (or none was made yet).
    let mut idle = true;
    loop {
        // While messages flow the clock is read once per 256 of them: per
        // message it showed in profiles.
        clock_check = clock_check.wrapping_add(1);
        if (idle || clock_check % 256 == 0) && lag_due.elapsed() >= positions_every {
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
            let context = consumer.context();
            context
                .lag
                .assigned(assigned.iter().cloned().zip(starts.iter().map(|s| s.next)));
            let mut since = context.decoding_since.lock().expect("since lock");
            for (p, start) in assigned.iter().zip(starts) {
                *topic_state(&mut topics, &p.topic, &metrics).next_of(p.partition) = start.next;
                // Decided by this decoding since the committed metadata says,
                // when it names this decoding, else from where reading starts.
                match warm::decoding_since(&start.metadata, &context.fingerprint)
                    .or(start.reading_from)
                {
                    Some(s) => since.insert(p.clone(), s),
                    None => since.remove(p),
                };
            }
            drop(since);
            // librdkafka keeps a partition's pause through a revoke: one paused
            // by an earlier hard pause and given back later would never be
            // fetched again (seen as partitions stuck after a rebalance under
            // backpressure). While paused, every assignment is paused; else
            // only partitions paused before are resumed, never a fresh one (a
            // resume racing a fresh partition's first offset lookup stalled it
            // in one test run of two).
            if hard_paused {
                set_paused(&consumer, true, &mut ever_paused);
            } else {
                let again: Vec<&PartitionId> = assigned
                    .iter()
                    .filter(|p| ever_paused.contains(*p))
                    .collect();
                resume(&consumer, &again);
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

        let backpressure = intake_held.load(Ordering::Relaxed);
        if backpressure || warming.load(Ordering::Relaxed) {
            let since = *held_since.get_or_insert_with(std::time::Instant::now);
            if backpressure {
                metrics.consumer_paused.set(1);
            }
            if !consumer.context().flush() {
                await_stop(&consumer, &commands, &metrics);
                return;
            }
            if !hard_paused && since.elapsed() >= HARD_PAUSE_AFTER {
                hard_paused = true;
                set_paused(&consumer, true, &mut ever_paused);
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
                set_paused(&consumer, false, &mut ever_paused);
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
        let polled = consumer.poll(wait);
        idle = polled.is_none();
        let message = match polled {
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
pub(super) fn lag_interval(config: &ClientConfig) -> Duration {
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
/// Pauses or resumes the whole assignment; remembers what it paused.
fn set_paused(
    consumer: &BaseConsumer<SourceContext>,
    pause: bool,
    ever_paused: &mut std::collections::HashSet<PartitionId>,
) {
    consumer.context().paused.store(pause, Ordering::Relaxed);
    if let Ok(a) = consumer.assignment() {
        let _ = if pause {
            for e in a.elements() {
                ever_paused.insert(PartitionId::new(e.topic(), e.partition()));
            }
            consumer.pause(&a)
        } else {
            consumer.resume(&a)
        };
    }
}

fn resume(consumer: &BaseConsumer<SourceContext>, partitions: &[&PartitionId]) {
    if partitions.is_empty() {
        return;
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&p.topic, p.partition);
    }
    let _ = consumer.resume(&tpl);
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
            // For good (shutdown): nothing to resume later.
            set_paused(consumer, true, &mut Default::default());
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
