//! Warms the recently-deleted memory at start.
//!
//! A restarted daemon remembers no deletion, so a repeat of an id deleted
//! before the restart is sent to CleverTap again: after a crash that is most
//! of the ids sent twice (issue #18). The events just below a partition's
//! committed offset are done: each one's ids were confirmed deleted, or it
//! was dead-lettered, or skipped. This reads that tail of every partition,
//! leaves out the events the dead-letter topic names, and returns the ids of
//! the rest with their message timestamps, for the ledger to remember as
//! confirmed deletions.
//!
//! Only offsets committed by this daemon with the same decoding are read, and
//! only down to where that decoding began: the commit metadata carries a
//! fingerprint of `[event]` and the regions ([`decoding_fingerprint`]) and
//! the first offset read with it ([`commit_metadata`]), because an event
//! skipped or dead-lettered under other settings was never deleted, and an
//! offset moved by a tool says nothing about what is below it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::domain::dedup::DeletionKey;
use crate::domain::event::Decoded;
use crate::domain::ledger::record_digest;
use crate::domain::offsets::PartitionId;
use crate::input::decode::EventDecoder;
use crate::input::headers;
use crate::output::dead_letter::headers as dead_letter_headers;

/// Dead letters are looked for from this long before the oldest event read:
/// their timestamps come from the daemon's clock, the events' from the
/// producers'.
const CLOCK_MARGIN: Duration = Duration::from_secs(600);

/// The commit metadata that says "committed by this daemon, decoding like
/// this": a hash of the `[event]` settings and each region's account.
pub fn decoding_fingerprint(config: &Config) -> String {
    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(&config.settings.event).unwrap_or_default());
    let mut regions: Vec<(&str, &str)> = config
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r.account_id.as_str()))
        .collect();
    regions.sort_unstable();
    for (name, account) in regions {
        hash.update(b"\0region\0");
        hash.update(name.as_bytes());
        hash.update(b"\0");
        hash.update(account.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("clevertap-deleter/1 decoding={hex}")
}

/// The metadata stored with a commit: the decoding's fingerprint and the
/// first offset of the partition this decoding read (everything from there
/// to the committed offset was decided by it).
pub fn commit_metadata(fingerprint: &str, since: i64) -> String {
    format!("{fingerprint} since={since}")
}

/// The first offset decided by the decoding `fingerprint` names, when
/// `metadata` was written by it.
pub fn decoding_since(metadata: &str, fingerprint: &str) -> Option<i64> {
    metadata
        .strip_prefix(fingerprint)?
        .strip_prefix(" since=")?
        .parse()
        .ok()
}

pub struct WarmSettings<'a> {
    /// The daemon's consumer settings (group id included: its committed
    /// offsets are read, never written).
    pub client_config: ClientConfig,
    pub topics: &'a [String],
    pub dead_letter_topic: &'a str,
    pub decoder: &'a EventDecoder,
    pub fingerprint: &'a str,
    /// Events read at most, shared evenly by the partitions.
    pub max_events: usize,
    /// Deletions older than this are not remembered.
    pub ttl: Duration,
    pub timeout: Duration,
}

/// What the tail held.
#[derive(Debug, Default)]
pub struct Warmed {
    /// Each id once, dated by its earliest event read, oldest first.
    pub deletions: Vec<(DeletionKey, SystemTime)>,
    pub partitions: usize,
    pub events_read: usize,
    /// Events left out because the dead-letter topic names them.
    pub dead_lettered: usize,
    /// Dead letters of events at or above the committed offsets (written,
    /// not committed before the restart): partition, offset and
    /// [`record_digest`] of the original's key and payload.
    pub written_dead_letters: Vec<(PartitionId, i64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("not finished within {0:?} ({1})")]
    TimedOut(Duration, &'static str),
    #[error("the dead letters written since the oldest event read back could not be located")]
    DeadLettersNotFound,
}

/// A source position: topic, partition, offset.
type Position = (Arc<str>, i32, i64);

/// Dead letters by their event's position, with the [`record_digest`] of a
/// whole copy (`None`: a truncated one).
type DeadLetters = HashMap<Position, Option<u64>>;

/// Offsets `[from, to)` of a partition to read.
struct Window {
    topic: Arc<str>,
    partition: i32,
    from: i64,
    to: i64,
}

/// One event read below a committed offset that asked for deletions.
struct Candidate {
    position: Position,
    at: SystemTime,
    keys: Vec<DeletionKey>,
}

/// Reads the tails and the dead letters (blocking). An error means nothing is
/// warmed; the daemon then starts as before, with an empty memory.
pub fn read_recent(s: &WarmSettings) -> Result<Warmed, WarmError> {
    let deadline = Deadline(Instant::now() + s.timeout, s.timeout);
    let mut config = s.client_config.clone();
    // Never a group member, never a commit: it only reads.
    config
        .remove("group.instance.id")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("client.id", "clevertap-deleter-warm");
    let consumer: BaseConsumer<Quiet> = config.create_with_context(Quiet)?;
    let windows = windows(&consumer, s, &deadline)?;
    if windows.is_empty() {
        return Ok(Warmed::default());
    }
    let (candidates, events_read) = read_candidates(&consumer, s.decoder, &windows, &deadline)?;
    let now = SystemTime::now();
    let oldest = candidates
        .iter()
        .map(|c| c.at)
        .filter(|at| *at <= now)
        .min();
    let excluded = match oldest {
        Some(oldest) => dead_lettered(
            &consumer,
            s.dead_letter_topic,
            oldest.checked_sub(CLOCK_MARGIN).unwrap_or(UNIX_EPOCH),
            s.max_events,
            &deadline,
        )?,
        None => DeadLetters::new(),
    };
    let _ = consumer.unassign();
    let dead_lettered = candidates
        .iter()
        .filter(|c| excluded.contains_key(&c.position))
        .count();
    Ok(Warmed {
        written_dead_letters: above_committed(&excluded, &windows),
        deletions: remembered(candidates, &excluded, now, s.ttl),
        partitions: windows.len(),
        events_read,
        dead_lettered,
    })
}

/// The read-back's client logs nothing of its own: the daemon's consumer
/// reports the same brokers' state, and a failure ends in one warning.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(fac, message, "read-back client");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "read-back client error");
    }
}

impl ConsumerContext for Quiet {}

struct Deadline(Instant, Duration);

impl Deadline {
    fn left(&self, phase: &'static str) -> Result<Duration, WarmError> {
        self.0
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(WarmError::TimedOut(self.1, phase))
    }
}

/// The window below each committed offset this daemon wrote with the same
/// decoding, at most `max_events / partitions` long.
fn windows(
    consumer: &BaseConsumer<Quiet>,
    s: &WarmSettings,
    deadline: &Deadline,
) -> Result<Vec<Window>, WarmError> {
    let mut all = TopicPartitionList::new();
    // A pattern's topics are left out: which ones it matched before is unknown.
    for topic in s.topics.iter().filter(|t| !t.starts_with('^')) {
        let metadata = consumer.fetch_metadata(Some(topic), deadline.left("metadata")?)?;
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    if all.count() == 0 {
        return Ok(Vec::new());
    }
    let per_partition = (s.max_events / all.count()).max(1) as i64;
    let committed = committed_offsets(consumer, &all, deadline)?;
    let mut windows = Vec::new();
    for e in committed.elements() {
        let Offset::Offset(to) = e.offset() else {
            continue;
        };
        // Only what this decoding decided: a type accepted now may have been
        // skipped below `since`.
        let Some(since) = decoding_since(e.metadata(), s.fingerprint) else {
            continue;
        };
        let (low, _) =
            consumer.fetch_watermarks(e.topic(), e.partition(), deadline.left("watermarks")?)?;
        let from = low.max(to - per_partition).max(since);
        if from < to {
            windows.push(Window {
                topic: e.topic().into(),
                partition: e.partition(),
                from,
                to,
            });
        }
    }
    Ok(windows)
}

/// The group's committed offsets; asked again while the group coordinator
/// is still being found or loaded (a first start, a broker restart).
fn committed_offsets(
    consumer: &BaseConsumer<Quiet>,
    partitions: &TopicPartitionList,
    deadline: &Deadline,
) -> Result<TopicPartitionList, WarmError> {
    loop {
        match consumer.committed_offsets(partitions.clone(), deadline.left("committed offsets")?) {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::CoordinatorLoadInProgress
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                    )
                ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            result => return Ok(result?),
        }
    }
}

/// Reads `[from, to)` of each window until the consumer's position passes
/// `to` (offsets may be missing: compaction, transaction markers).
fn read_until<F>(
    consumer: &BaseConsumer<Quiet>,
    windows: &[Window],
    deadline: &Deadline,
    phase: &'static str,
    mut each: F,
) -> Result<(), WarmError>
where
    F: FnMut(&BorrowedMessage<'_>),
{
    let mut tpl = TopicPartitionList::new();
    for w in windows {
        tpl.add_partition_offset(&w.topic, w.partition, Offset::Offset(w.from))?;
    }
    consumer.assign(&tpl)?;
    // Window index by topic, then partition.
    let mut index: HashMap<&str, HashMap<i32, usize>> = HashMap::new();
    for (i, w) in windows.iter().enumerate() {
        index.entry(&*w.topic).or_default().insert(w.partition, i);
    }
    let find = |topic: &str, partition: i32| index.get(topic)?.get(&partition).copied();
    let mut open: HashSet<usize> = (0..windows.len()).collect();
    while !open.is_empty() {
        let wait = deadline.left(phase)?.min(Duration::from_millis(100));
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                let Some(i) = find(m.topic(), m.partition()) else {
                    continue;
                };
                if m.offset() < windows[i].to {
                    each(&m);
                }
                if m.offset() + 1 >= windows[i].to {
                    open.remove(&i);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.into()),
            None => {
                // Nothing came: see whether the positions passed the ends.
                for e in consumer.position()?.elements() {
                    if let (Offset::Offset(at), Some(i)) =
                        (e.offset(), find(e.topic(), e.partition()))
                    {
                        if at >= windows[i].to {
                            open.remove(&i);
                        }
                    }
                }
            }
        }
    }
    consumer.unassign()?;
    Ok(())
}

fn timestamp(m: &BorrowedMessage<'_>) -> Option<SystemTime> {
    let ms = u64::try_from(m.timestamp().to_millis()?).ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The events below the committed offsets that asked for deletions, and how
/// many events were read.
fn read_candidates(
    consumer: &BaseConsumer<Quiet>,
    decoder: &EventDecoder,
    windows: &[Window],
    deadline: &Deadline,
) -> Result<(Vec<Candidate>, usize), WarmError> {
    let mut candidates = Vec::new();
    let mut read = 0;
    let topics: HashMap<&str, &Arc<str>> = windows.iter().map(|w| (&*w.topic, &w.topic)).collect();
    read_until(consumer, windows, deadline, "reading the tails", |m| {
        read += 1;
        let Some(at) = timestamp(m) else {
            return;
        };
        let headers = m.headers().into_iter().flat_map(headers::each);
        let Decoded::Delete(request) = decoder.decode_message(m.payload(), headers) else {
            return;
        };
        let Some(&topic) = topics.get(m.topic()) else {
            return;
        };
        let keys = request
            .ids
            .into_iter()
            .map(|(kind, id)| DeletionKey {
                region: request.region.clone(),
                kind,
                id,
            })
            .collect();
        candidates.push(Candidate {
            position: (topic.clone(), m.partition(), m.offset()),
            at,
            keys,
        });
    })?;
    Ok((candidates, read))
}

/// The source positions of the dead letters written since `since`.
fn dead_lettered(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    since: SystemTime,
    max_scan: usize,
    deadline: &Deadline,
) -> Result<DeadLetters, WarmError> {
    let metadata = consumer.fetch_metadata(Some(topic), deadline.left("dead-letter metadata")?)?;
    let mut by_time = TopicPartitionList::new();
    for t in metadata.topics() {
        // No dead-letter topic yet: nothing was ever dead-lettered.
        if t.error().is_some() {
            continue;
        }
        let ms = since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        for p in t.partitions() {
            by_time.add_partition_offset(t.name(), p.id(), Offset::Offset(ms))?;
        }
    }
    if by_time.count() == 0 {
        return Ok(DeadLetters::new());
    }
    let found = consumer.offsets_for_times(by_time, deadline.left("dead-letter offsets")?)?;
    let mut windows = Vec::new();
    // Partitions whose start was not found by time: the first record read
    // there must be older than `since`, or be the partition's first.
    let mut unproven: HashMap<i32, i64> = HashMap::new();
    for e in found.elements() {
        let (low, high) = consumer.fetch_watermarks(
            e.topic(),
            e.partition(),
            deadline.left("dead-letter watermarks")?,
        )?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            // "No record at or after `since`" per the broker; some brokers
            // (rdkafka's mock) say so for any time, so look at the last
            // `max_scan` records and check that they reach back far enough.
            _ => {
                let from = low.max(high - max_scan as i64);
                if from > low {
                    unproven.insert(e.partition(), from);
                }
                from
            }
        };
        if from < high {
            windows.push(Window {
                topic: e.topic().into(),
                partition: e.partition(),
                from,
                to: high,
            });
        }
    }
    let mut positions = DeadLetters::new();
    if windows.is_empty() {
        return Ok(positions);
    }
    let mut proven = true;
    read_until(consumer, &windows, deadline, "reading dead letters", |m| {
        if let Some(from) = unproven.remove(&m.partition()) {
            proven &= m.offset() == from && timestamp(m).is_some_and(|at| at < since);
        }
        if let Some((position, truncated)) = source_of(m) {
            let digest = (!truncated).then(|| record_digest(m.key(), m.payload()));
            positions.insert(position, digest);
        }
    })?;
    if !proven {
        return Err(WarmError::DeadLettersNotFound);
    }
    Ok(positions)
}

/// Where a dead letter's event was read: its last `source_*` headers (the
/// original record's own headers come first and may have any names), and
/// whether it is a truncated copy.
fn source_of(m: &BorrowedMessage<'_>) -> Option<(Position, bool)> {
    let (mut topic, mut partition, mut offset) = (None, None, None);
    let mut truncated = false;
    for (key, value) in m.headers().into_iter().flat_map(headers::each) {
        let value = value.and_then(|v| std::str::from_utf8(v).ok());
        match key {
            k if k == dead_letter_headers::SOURCE_TOPIC.as_bytes() => topic = value,
            k if k == dead_letter_headers::SOURCE_PARTITION.as_bytes() => partition = value,
            k if k == dead_letter_headers::SOURCE_OFFSET.as_bytes() => offset = value,
            k if k == dead_letter_headers::TRUNCATED.as_bytes() => truncated = true,
            _ => {}
        }
    }
    let position = (
        topic?.into(),
        partition?.parse().ok()?,
        offset?.parse().ok()?,
    );
    Some((position, truncated))
}

/// The whole dead letters of events at or above a window's end (the
/// committed offset) of the same partition.
fn above_committed(dead_letters: &DeadLetters, windows: &[Window]) -> Vec<(PartitionId, i64, u64)> {
    let committed: HashMap<(&str, i32), i64> = windows
        .iter()
        .map(|w| ((&*w.topic, w.partition), w.to))
        .collect();
    dead_letters
        .iter()
        .filter_map(|((topic, partition, offset), digest)| {
            let to = committed.get(&(&**topic, *partition))?;
            let digest = (*offset >= *to).then_some(*digest)??;
            Some((PartitionId::new(topic, *partition), *offset, digest))
        })
        .collect()
}

/// The ids of the events not dead-lettered, each once with its earliest
/// date, without dates in the future or older than `ttl`, oldest first.
fn remembered(
    candidates: Vec<Candidate>,
    excluded: &DeadLetters,
    now: SystemTime,
    ttl: Duration,
) -> Vec<(DeletionKey, SystemTime)> {
    let mut earliest: HashMap<DeletionKey, SystemTime> = HashMap::new();
    for c in candidates {
        let fresh = now.duration_since(c.at).is_ok_and(|age| age < ttl);
        if !fresh || excluded.contains_key(&c.position) {
            continue;
        }
        for key in c.keys {
            earliest
                .entry(key)
                .and_modify(|at| *at = (*at).min(c.at))
                .or_insert(c.at);
        }
    }
    let mut deletions: Vec<_> = earliest.into_iter().collect();
    deletions.sort_by_key(|(_, at)| *at);
    deletions
}

#[cfg(test)]
mod tests;
