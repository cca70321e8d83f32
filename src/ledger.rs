//! The pure core of the pipeline: which events wait for which deletions, which
//! deletions are open or in flight, and what each partition may commit.
//! No I/O here: the pipeline feeds it inputs and carries out what it returns.

// foldhash: these maps are on the per-event path; SipHash's DoS resistance
// is not needed for keys that only the broker and CleverTap influence.
use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{BatchCapacity, DeleteBatch, RegionBatcher};
use crate::decode::{DeadLetterReason, Decoded, Rejection};
use crate::dedup::{Admission, DeletionKey, DeletionTable};
use crate::ids::{IdKind, RegionName};
use crate::offsets::{OffsetTracker, PartitionId};

/// Identifies an admitted event for acknowledgements. Never reused, so an ack
/// that arrives after its partition was revoked finds nothing and is dropped.
pub type EventId = u64;

/// What was read from Kafka, kept until the event finishes in case it must go
/// to the dead-letter topic with its original key and payload.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    /// The Kafka timestamp in milliseconds since the epoch, when known.
    pub timestamp_ms: Option<i64>,
    /// How often `replay-dlq` already moved this record back (its header).
    pub replay_count: Option<u32>,
}

/// How an event finished, the `outcome` label of `events_finished_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finish {
    /// At least one deletion was requested for it and all its deletions succeeded.
    Deleted,
    /// All its ids were already deleted or being deleted for other events.
    Deduplicated,
    /// The dead-letter topic acknowledged it.
    DeadLettered,
    /// Not an event this daemon handles.
    Skipped,
}

impl Finish {
    /// In discriminant order, so `ALL[f as usize] == f`.
    pub const ALL: [Finish; 4] = [
        Finish::Deleted,
        Finish::Deduplicated,
        Finish::DeadLettered,
        Finish::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Deleted => "deleted",
            Finish::Deduplicated => "deduplicated",
            Finish::DeadLettered => "dead_lettered",
            Finish::Skipped => "skipped",
        }
    }
}

/// An instruction to write one event to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetterOrder {
    pub event: EventId,
    pub source: PartitionId,
    pub offset: i64,
    pub record: RawRecord,
    pub rejection: Rejection,
}

/// What an input changed: events that finished and dead letters to write.
#[derive(Debug, Default)]
pub struct Progress {
    pub finished: Vec<Finish>,
    pub dead_letters: Vec<DeadLetterOrder>,
    /// Batches that closed because they became full.
    pub batches: Vec<DeleteBatch>,
    /// Milliseconds since the epoch of finished events' Kafka timestamps (deleted ones).
    pub deleted_timestamps_ms: Vec<i64>,
    /// Acknowledgements for events whose partition was revoked meanwhile.
    pub late_acks: u64,
    /// Records read before by this process (a rebalance gave their
    /// partition back, or the consumer re-read them): duplicate deliveries.
    pub redelivered: u64,
}

#[derive(Debug)]
struct PendingEvent {
    partition: PartitionId,
    offset: i64,
    remaining: u32,
    requested_deletion: bool,
    record: RawRecord,
    rejection: Option<Rejection>,
    admitted: Instant,
}

pub struct LedgerSettings {
    pub capacity: BatchCapacity,
    pub linger: Duration,
    pub recent_capacity: usize,
    pub recent_ttl: Duration,
}

pub struct Ledger {
    next_event: EventId,
    events: HashMap<EventId, PendingEvent>,
    /// Deletions open in a batch or in flight, with the events waiting on
    /// each, and the recently confirmed ones.
    deletions: DeletionTable<EventId>,
    offsets: OffsetTracker,
    batcher: RegionBatcher,
    /// Highest offset admitted per partition in this process; survives revokes.
    highest_seen: HashMap<PartitionId, i64>,
}

impl Ledger {
    pub fn new(s: LedgerSettings) -> Self {
        Ledger {
            next_event: 0,
            events: HashMap::default(),
            deletions: DeletionTable::new(s.recent_capacity, s.recent_ttl),
            offsets: OffsetTracker::new(),
            batcher: RegionBatcher::new(s.capacity, s.linger),
            highest_seen: HashMap::default(),
        }
    }

    /// Takes one decoded message into the pipeline.
    pub fn admit(
        &mut self,
        partition: &PartitionId,
        offset: i64,
        record: RawRecord,
        decoded: Decoded,
        now: Instant,
    ) -> Progress {
        let mut progress = Progress::default();
        self.admit_into(partition, offset, record, decoded, now, &mut progress);
        progress
    }

    /// [`Ledger::admit`], adding to `progress`: one `Progress` can collect a
    /// whole chunk of records.
    pub fn admit_into(
        &mut self,
        partition: &PartitionId,
        offset: i64,
        record: RawRecord,
        decoded: Decoded,
        now: Instant,
        progress: &mut Progress,
    ) {
        match self.highest_seen.get_mut(partition) {
            Some(highest) if offset <= *highest => progress.redelivered += 1,
            Some(highest) => *highest = offset,
            None => {
                self.highest_seen.insert(partition.clone(), offset);
            }
        }
        self.offsets.track(partition, offset);
        let request = match decoded {
            Decoded::Skip => {
                self.offsets.finish(partition, offset);
                progress.finished.push(Finish::Skipped);
                return;
            }
            Decoded::DeadLetter(rejection) => {
                let event = self.insert(partition, offset, record, now);
                let pending = self.events.get_mut(&event).expect("just inserted");
                pending.rejection = Some(rejection);
                self.dead_letter_if_done(event, progress);
                return;
            }
            Decoded::Delete(request) => request,
        };

        let event = self.insert(partition, offset, record, now);
        let mut remaining = 0;
        let mut requested = false;
        for (kind, id) in request.ids {
            let key = DeletionKey {
                region: request.region.clone(),
                kind,
                id,
            };
            match self.deletions.admit(&key, event, now) {
                Admission::Joined => remaining += 1,
                Admission::AlreadyDeleted => {}
                Admission::Requested => {
                    if let Some(full) = self.batcher.push(&key.region, kind, key.id, now) {
                        progress.batches.push(full);
                    }
                    remaining += 1;
                    requested = true;
                }
            }
        }
        let pending = self.events.get_mut(&event).expect("just inserted");
        pending.remaining = remaining;
        pending.requested_deletion = requested;
        if remaining == 0 {
            self.finish(event, Finish::Deduplicated, progress);
        }
    }

    fn insert(
        &mut self,
        partition: &PartitionId,
        offset: i64,
        record: RawRecord,
        now: Instant,
    ) -> EventId {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(
            id,
            PendingEvent {
                partition: partition.clone(),
                offset,
                remaining: 0,
                requested_deletion: false,
                record,
                rejection: None,
                admitted: now,
            },
        );
        id
    }

    /// CleverTap answered success for every id of `batch`.
    pub fn deleted(&mut self, batch: &DeleteBatch, now: Instant) -> Progress {
        let mut progress = Progress::default();
        for id in batch.ids() {
            let key = DeletionKey {
                region: batch.region().clone(),
                kind: batch.kind(),
                id: id.clone(),
            };
            for event in self.deletions.confirm(key, now) {
                self.resolve_one(event, None, &mut progress);
            }
        }
        progress
    }

    /// The source records (partition, offset) of the events still waiting on
    /// these deletions, in order, each once: what an audit record covers.
    pub fn sources_of(
        &self,
        region: &RegionName,
        kind: IdKind,
        ids: &[Arc<str>],
    ) -> Vec<(PartitionId, i64)> {
        let mut sources: Vec<(PartitionId, i64)> = Vec::new();
        for id in ids {
            let key = DeletionKey {
                region: region.clone(),
                kind,
                id: id.clone(),
            };
            for event in self.deletions.waiters(&key) {
                if let Some(e) = self.events.get(event) {
                    sources.push((e.partition.clone(), e.offset));
                }
            }
        }
        sources.sort();
        sources.dedup();
        sources
    }

    /// The dispatcher gave up on this one id: CleverTap rejected it (400 on
    /// a single-id request, `ApiRejected`) or never confirmed its deletion
    /// (`Unconfirmed`). Its events are dead-lettered with `reason`.
    pub fn rejected(
        &mut self,
        region: &RegionName,
        kind: IdKind,
        id: &Arc<str>,
        reason: DeadLetterReason,
        message: &str,
    ) -> Progress {
        let mut progress = Progress::default();
        let key = DeletionKey {
            region: region.clone(),
            kind,
            id: id.clone(),
        };
        let detail = match reason {
            DeadLetterReason::ApiRejected => format!("CleverTap rejected this {kind}: {message}"),
            DeadLetterReason::Unconfirmed => {
                format!("CleverTap did not confirm the deletion of this {kind}: {message}")
            }
            _ => message.to_string(),
        };
        let rejection = Rejection { reason, detail };
        for event in self.deletions.reject(&key) {
            self.resolve_one(event, Some(rejection.clone()), &mut progress);
        }
        progress
    }

    /// The dead-letter topic acknowledged the event's record.
    pub fn dead_lettered(&mut self, event: EventId) -> Progress {
        let mut progress = Progress::default();
        if self.events.contains_key(&event) {
            self.finish(event, Finish::DeadLettered, &mut progress);
        } else {
            progress.late_acks += 1;
        }
        progress
    }

    fn resolve_one(
        &mut self,
        event: EventId,
        rejection: Option<Rejection>,
        progress: &mut Progress,
    ) {
        // Missing: the event's partition was revoked; the new owner redoes it.
        let Some(pending) = self.events.get_mut(&event) else {
            progress.late_acks += 1;
            return;
        };
        pending.remaining = pending.remaining.saturating_sub(1);
        if rejection.is_some() && pending.rejection.is_none() {
            pending.rejection = rejection;
        }
        if pending.remaining > 0 {
            return;
        }
        if pending.rejection.is_some() {
            self.dead_letter_if_done(event, progress);
        } else {
            let outcome = if pending.requested_deletion {
                Finish::Deleted
            } else {
                Finish::Deduplicated
            };
            self.finish(event, outcome, progress);
        }
    }

    fn dead_letter_if_done(&mut self, event: EventId, progress: &mut Progress) {
        let Some(pending) = self.events.get_mut(&event) else {
            return;
        };
        if pending.remaining > 0 {
            return;
        }
        let Some(rejection) = pending.rejection.clone() else {
            return;
        };
        progress.dead_letters.push(DeadLetterOrder {
            event,
            source: pending.partition.clone(),
            offset: pending.offset,
            record: std::mem::take(&mut pending.record),
            rejection,
        });
    }

    fn finish(&mut self, event: EventId, outcome: Finish, progress: &mut Progress) {
        if let Some(pending) = self.events.remove(&event) {
            self.offsets.finish(&pending.partition, pending.offset);
            progress.finished.push(outcome);
            if outcome == Finish::Deleted {
                if let Some(ts) = pending.record.timestamp_ms {
                    progress.deleted_timestamps_ms.push(ts);
                }
            }
        }
    }

    /// Batches whose linger time passed; see [`RegionBatcher::take_due`].
    pub fn take_due_batches(
        &mut self,
        now: Instant,
        saturated: impl Fn(&RegionName) -> bool,
    ) -> Vec<DeleteBatch> {
        self.batcher.take_due(now, saturated)
    }

    /// Every open batch (shutdown, rebalance).
    pub fn take_all_batches(&mut self) -> Vec<DeleteBatch> {
        self.batcher.take_all()
    }

    pub fn next_batch_deadline(&self) -> Option<Instant> {
        self.batcher.next_deadline()
    }

    /// Whether this member currently owns the partition.
    pub fn owns(&self, partition: &PartitionId) -> bool {
        self.offsets.owns(partition)
    }

    pub fn assign(&mut self, partition: PartitionId) {
        self.offsets.assign(partition);
    }

    /// Final watermarks of revoked partitions; their state is forgotten, so
    /// acknowledgements that arrive later are dropped.
    pub fn revoke(&mut self, partitions: &[PartitionId]) -> Vec<(PartitionId, i64)> {
        let marks = self.offsets.watermarks(partitions);
        self.events
            .retain(|_, e| !partitions.contains(&e.partition));
        for p in partitions {
            self.offsets.forget(p);
        }
        marks
    }

    /// Unfinished events of these partitions.
    pub fn unfinished_in(&self, partitions: &[PartitionId]) -> usize {
        partitions.iter().map(|p| self.offsets.unfinished(p)).sum()
    }

    /// Watermarks that moved since the last call.
    pub fn take_commits(&mut self) -> Vec<(PartitionId, i64)> {
        self.offsets.take_commits()
    }

    /// Current watermarks of every owned partition.
    pub fn all_watermarks(&self) -> Vec<(PartitionId, i64)> {
        let mut owned: Vec<PartitionId> = self.offsets.partitions().cloned().collect();
        owned.sort();
        self.offsets.watermarks(&owned)
    }

    /// Events held in memory, unfinished.
    pub fn events_in_memory(&self) -> usize {
        self.events.len()
    }

    /// When the oldest unfinished event entered the pipeline.
    pub fn oldest_admitted(&self) -> Option<Instant> {
        self.events.values().map(|e| e.admitted).min()
    }

    pub fn deletions_pending(&self) -> usize {
        self.deletions.open_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DeletionRequest;

    fn ledger(cap: usize) -> Ledger {
        Ledger::new(LedgerSettings {
            capacity: BatchCapacity::new(cap).unwrap(),
            linger: Duration::from_millis(100),
            recent_capacity: 1000,
            recent_ttl: Duration::from_secs(60),
        })
    }

    fn delete(region: &str, ids: &[(IdKind, &str)]) -> Decoded {
        Decoded::Delete(DeletionRequest {
            region: RegionName::new(region),
            ids: ids.iter().map(|(k, i)| (*k, Arc::from(*i))).collect(),
        })
    }

    const G: IdKind = IdKind::Guid;
    const I: IdKind = IdKind::Identity;

    #[test]
    fn event_with_both_kinds_finishes_when_both_succeed() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        let pr = l.admit(
            &p,
            0,
            RawRecord::default(),
            delete("eu1", &[(I, "u"), (G, "g")]),
            now,
        );
        assert!(pr.finished.is_empty());
        let batches = l.take_all_batches();
        assert_eq!(batches.len(), 2);
        let guid = batches.iter().find(|b| b.kind() == G).unwrap();
        let ident = batches.iter().find(|b| b.kind() == I).unwrap();
        assert!(l.deleted(guid, now).finished.is_empty());
        assert_eq!(l.take_commits(), vec![(p.clone(), 0)]);
        assert_eq!(l.deleted(ident, now).finished, vec![Finish::Deleted]);
        assert_eq!(l.take_commits(), vec![(p, 1)]);
        assert_eq!(l.events_in_memory(), 0);
        assert_eq!(l.deletions_pending(), 0);
    }

    #[test]
    fn duplicates_attach_to_the_pending_deletion_then_use_memory() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
        l.admit(&p, 1, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
        let batches = l.take_all_batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), 1, "the repeat is not sent again");
        assert_eq!(
            l.deleted(&batches[0], now).finished,
            vec![Finish::Deleted, Finish::Deduplicated]
        );
        // Once deleted, a later repeat finishes at once with no request.
        let pr = l.admit(&p, 2, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
        assert_eq!(pr.finished, vec![Finish::Deduplicated]);
        assert!(l.take_all_batches().is_empty());
        // Same id in another region is another deletion.
        l.admit(&p, 3, RawRecord::default(), delete("us1", &[(G, "x")]), now);
        assert_eq!(l.take_all_batches().len(), 1);
    }

    #[test]
    fn nothing_is_remembered_before_success() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
        let b = l.take_all_batches();
        // Revoked before success: a redelivery must send it again once the
        // first request is gone.
        l.revoke(std::slice::from_ref(&p));
        let rejected = l.rejected(
            &RegionName::new("eu1"),
            G,
            &b[0].ids()[0],
            DeadLetterReason::ApiRejected,
            "bad",
        );
        assert!(
            rejected.dead_letters.is_empty(),
            "revoked events are not dead-lettered"
        );
        l.assign(p.clone());
        l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
        assert_eq!(l.take_all_batches().len(), 1);
    }

    #[test]
    fn sources_of_lists_each_waiting_event_once() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        l.admit(
            &p,
            4,
            RawRecord::default(),
            delete("eu1", &[(G, "a"), (G, "b")]),
            now,
        );
        l.admit(&p, 9, RawRecord::default(), delete("eu1", &[(G, "a")]), now);
        let b = l.take_all_batches().pop().unwrap();
        assert_eq!(
            l.sources_of(b.region(), b.kind(), b.ids()),
            vec![(p.clone(), 4), (p.clone(), 9)]
        );
        l.deleted(&b, now);
        assert!(l.sources_of(b.region(), b.kind(), b.ids()).is_empty());
    }

    #[test]
    fn records_read_again_after_a_revoke_are_redeliveries() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        let redelivered = |l: &mut Ledger, offset| {
            l.admit(&p, offset, RawRecord::default(), Decoded::Skip, now)
                .redelivered
        };
        assert_eq!(redelivered(&mut l, 0), 0);
        assert_eq!(redelivered(&mut l, 1), 0);
        l.revoke(&[PartitionId::new("t", 0)]);
        l.assign(PartitionId::new("t", 0));
        assert_eq!(redelivered(&mut l, 1), 1);
        assert_eq!(redelivered(&mut l, 2), 0);
    }

    #[test]
    fn full_batches_close_on_admit() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(2);
        let now = Instant::now();
        assert!(l
            .admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "a")]), now)
            .batches
            .is_empty());
        let pr = l.admit(
            &p,
            1,
            RawRecord::default(),
            delete("eu1", &[(G, "b"), (G, "c")]),
            now,
        );
        assert_eq!(pr.batches.len(), 1);
        assert_eq!(pr.batches[0].len(), 2);
        assert_eq!(
            l.next_batch_deadline(),
            Some(now + Duration::from_millis(100))
        );
    }

    #[test]
    fn rejected_id_dead_letters_every_waiting_event_after_its_other_ids() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        let rec = RawRecord {
            key: Some(Bytes::from_static(b"k")),
            payload: Some(Bytes::from_static(b"{}")),
            timestamp_ms: None,
            replay_count: None,
        };
        l.admit(&p, 0, rec, delete("eu1", &[(G, "bad"), (I, "ok")]), now);
        l.admit(
            &p,
            1,
            RawRecord::default(),
            delete("eu1", &[(G, "bad")]),
            now,
        );
        let batches = l.take_all_batches();
        let pr = l.rejected(
            &RegionName::new("eu1"),
            G,
            &Arc::from("bad"),
            DeadLetterReason::ApiRejected,
            "Invalid guid",
        );
        assert_eq!(pr.dead_letters.len(), 1, "event 1 has nothing else pending");
        assert_eq!(pr.dead_letters[0].offset, 1);
        let ident = batches.iter().find(|b| b.kind() == I).unwrap();
        let pr = l.deleted(ident, now);
        assert_eq!(pr.dead_letters.len(), 1);
        let order = &pr.dead_letters[0];
        assert_eq!(order.offset, 0);
        assert_eq!(order.rejection.reason, DeadLetterReason::ApiRejected);
        assert!(order.rejection.detail.contains("Invalid guid"));
        assert_eq!(order.record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            l.take_commits(),
            vec![(p.clone(), 0)],
            "not finished until the DLQ acks"
        );
        assert_eq!(
            l.dead_lettered(order.event).finished,
            vec![Finish::DeadLettered]
        );
        assert_eq!(l.take_commits(), vec![(p.clone(), 1)]);
        assert!(
            l.dead_lettered(order.event).finished.is_empty(),
            "acked once only"
        );
    }

    #[test]
    fn bad_input_and_skips() {
        let p = PartitionId::new("t", 0);
        let mut l = ledger(10);
        let now = Instant::now();
        assert_eq!(
            l.admit(&p, 0, RawRecord::default(), Decoded::Skip, now)
                .finished,
            vec![Finish::Skipped]
        );
        let pr = l.admit(
            &p,
            1,
            RawRecord::default(),
            Decoded::DeadLetter(Rejection {
                reason: DeadLetterReason::NotJson,
                detail: "x".into(),
            }),
            now,
        );
        assert_eq!(pr.dead_letters.len(), 1);
        assert_eq!(l.take_commits(), vec![(p.clone(), 1)]);
        l.dead_lettered(pr.dead_letters[0].event);
        assert_eq!(l.take_commits(), vec![(p, 2)]);
    }

    #[test]
    fn revoke_returns_watermarks_and_drops_late_acks() {
        let p = PartitionId::new("t", 0);
        let q = PartitionId::new("t", 1);
        let mut l = ledger(10);
        let now = Instant::now();
        l.admit(&p, 5, RawRecord::default(), delete("eu1", &[(G, "a")]), now);
        l.admit(&q, 7, RawRecord::default(), delete("eu1", &[(G, "b")]), now);
        let batch = l.take_all_batches().pop().unwrap();
        assert_eq!(l.unfinished_in(std::slice::from_ref(&p)), 1);
        assert_eq!(l.revoke(std::slice::from_ref(&p)), vec![(p.clone(), 5)]);
        assert_eq!(l.events_in_memory(), 1);
        let pr = l.deleted(&batch, now);
        assert_eq!(pr.finished, vec![Finish::Deleted], "only q's event remains");
        assert_eq!(l.all_watermarks(), vec![(q, 8)]);
    }
}
