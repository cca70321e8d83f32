//! The pure core of the pipeline: which events wait for which deletions, which
//! deletions are open or in flight, and what each partition may commit.
//! No I/O here: the pipeline feeds it inputs and carries out what it returns.

// foldhash: these maps are on the per-event path; SipHash's DoS resistance
// is not needed for keys that only the broker and CleverTap influence.
use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::domain::batch::{BatchCapacity, DeleteBatch, RegionBatcher};
use crate::domain::dedup::{Admission, DeletionKey, DeletionTable};
pub use crate::domain::event::SourceRef;
use crate::domain::event::{CloudEventRef, Decoded, RecordHeaders, Rejection};
use crate::domain::ids::{IdKind, RegionName};
use crate::domain::offsets::{OffsetTracker, PartitionId};
use crate::domain::outcome::DeadLetterReason;

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
    /// Its own headers, for its dead letter.
    pub headers: RecordHeaders,
}

pub use crate::domain::outcome::Finish;

pub use crate::domain::outcome::AuditStatus;

mod audit_due;
pub use audit_due::{merge_already_deleted, AuditDue};

pub use crate::domain::outcome::PartitionView;

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
    /// Audit on: records to write before the events they name finish.
    pub audits: Vec<AuditDue>,
    /// Events that finished as [`Finish::Skipped`] (counted, not listed:
    /// on a busy topic of other types they are most events).
    pub skipped: u64,
    /// Events finished because their dead letter was already written
    /// before this start (also in `finished` as dead-lettered).
    pub dead_letters_found_written: u64,
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
    /// Audit records naming this event not yet acknowledged (audit on).
    audit_holds: u32,
    /// The CloudEvent it came in, for audit records.
    cloud_event: Option<Arc<CloudEventRef>>,
}

impl PendingEvent {
    /// The source record as audit records name it.
    fn source(&self) -> SourceRef {
        SourceRef {
            partition: self.partition.clone(),
            offset: self.offset,
            cloud_event: self.cloud_event.clone(),
        }
    }
}

pub struct LedgerSettings {
    pub capacity: BatchCapacity,
    pub linger: Duration,
    pub recent_capacity: usize,
    pub recent_ttl: Duration,
    /// Audit records are on: no event that asked for a deletion finishes
    /// before an acknowledged audit record names it.
    pub audit: bool,
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
    audit: bool,
    /// Dead letters written before this start for events not committed yet
    /// (see `written`).
    written_dead_letters: HashMap<(PartitionId, i64), u64>,
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
            audit: s.audit,
            written_dead_letters: HashMap::default(),
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

    /// Records `first..=last` of one partition, all skipped by the decoder:
    /// nothing to remember, the watermark moves past them.
    pub fn skip_run(
        &mut self,
        partition: &PartitionId,
        first: i64,
        last: i64,
        progress: &mut Progress,
    ) {
        match self.highest_seen.get_mut(partition) {
            Some(highest) => {
                if first <= *highest {
                    progress.redelivered += (last.min(*highest) - first + 1) as u64;
                }
                *highest = (*highest).max(last);
            }
            None => {
                self.highest_seen.insert(partition.clone(), last);
            }
        }
        self.offsets.skip_through(partition, last);
        progress.skipped += (last - first + 1) as u64;
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
        if matches!(decoded, Decoded::Skip) {
            return self.skip_run(partition, offset, offset, progress);
        }
        match self.highest_seen.get_mut(partition) {
            Some(highest) if offset <= *highest => progress.redelivered += 1,
            Some(highest) => *highest = offset,
            None => {
                self.highest_seen.insert(partition.clone(), offset);
            }
        }
        self.offsets.track(partition, offset);
        if self.finished_before(partition, offset, &record, &decoded, progress) {
            return;
        }
        let request = match decoded {
            Decoded::Skip => unreachable!("handled above"),
            Decoded::DeadLetter(rejection) => {
                let event = self.insert(partition, offset, record, now);
                let pending = self.events.get_mut(&event).expect("just inserted");
                pending.rejection = Some(rejection);
                self.dead_letter_if_done(event, progress);
                return;
            }
            Decoded::Delete(request) => request,
        };

        // The event enters the map only if it waits for something (below).
        let event = self.next_event;
        self.next_event += 1;
        let mut remaining = 0;
        let mut requested = false;
        let mut already: Vec<(IdKind, Arc<str>)> = Vec::new();
        for (kind, id) in request.ids {
            let key = DeletionKey {
                region: request.region.clone(),
                kind,
                id,
            };
            match self.deletions.admit(&key, event, now) {
                Admission::Joined => remaining += 1,
                Admission::AlreadyDeleted => {
                    if self.audit {
                        already.push((kind, key.id));
                    }
                }
                Admission::Requested => {
                    if let Some(full) = self.batcher.push(&key.region, kind, key.id, now) {
                        progress.batches.push(full);
                    }
                    remaining += 1;
                    requested = true;
                }
            }
        }
        if remaining == 0 && already.is_empty() {
            // Every id already deleted, nothing to audit: it finishes here,
            // without entering the event map (the repeat path's cost).
            self.offsets.finish(partition, offset);
            progress.finished.push(Finish::Deduplicated);
            return;
        }
        self.insert_as(event, partition, offset, record, now);
        let pending = self.events.get_mut(&event).expect("just inserted");
        pending.remaining = remaining;
        pending.requested_deletion = requested;
        pending.cloud_event = request.cloud_event;
        // Audit on: ids found in the recently-deleted memory are named in an
        // `already_deleted` record (one per id kind) before the event finishes.
        for kind in IdKind::ALL {
            let ids: Vec<Arc<str>> = already
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, id)| id.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            pending.audit_holds += 1;
            progress.audits.push(AuditDue {
                region: request.region.clone(),
                kind,
                ids,
                status: AuditStatus::AlreadyDeleted,
                message: None,
                attempts: 0,
                sources: vec![pending.source()],
                events: vec![event],
            });
        }
        if remaining == 0 && pending.audit_holds == 0 {
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
        self.insert_as(id, partition, offset, record, now);
        id
    }

    fn insert_as(
        &mut self,
        id: EventId,
        partition: &PartitionId,
        offset: i64,
        record: RawRecord,
        now: Instant,
    ) {
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
                audit_holds: 0,
                cloud_event: None,
            },
        );
    }

    /// Deletions confirmed before this process started, oldest first:
    /// repeats of them finish at once, as if confirmed here. An id already
    /// known (open or confirmed) is left as it is.
    pub fn remember_deleted(
        &mut self,
        deletions: impl IntoIterator<Item = (DeletionKey, Instant)>,
    ) {
        for (key, at) in deletions {
            self.deletions.remember(key, at);
        }
    }

    /// CleverTap answered success for every id of `batch`. Audit on: the
    /// events waiting on it finish only once the audit record in
    /// `progress.audits` is acknowledged; repeats admitted meanwhile find the
    /// ids confirmed and are named in records of their own.
    pub fn deleted(&mut self, batch: &DeleteBatch, now: Instant) -> Progress {
        let mut progress = Progress::default();
        let mut waiting: Vec<EventId> = Vec::new();
        for id in batch.ids() {
            let key = DeletionKey {
                region: batch.region().clone(),
                kind: batch.kind(),
                id: id.clone(),
            };
            waiting.extend(self.deletions.confirm(key, now));
        }
        let audit = self.audit.then(|| AuditDue {
            region: batch.region().clone(),
            kind: batch.kind(),
            ids: batch.ids().to_vec(),
            status: AuditStatus::Deleted,
            message: None,
            attempts: 0,
            sources: Vec::new(),
            events: Vec::new(),
        });
        self.resolve_all(waiting, None, audit, &mut progress);
        progress
    }

    /// Resolves one deletion for each of `waiting` (an event appears once per
    /// id it waited on). With `audit`, each live event is named in it and
    /// held until [`Ledger::audited`] releases it.
    fn resolve_all(
        &mut self,
        waiting: Vec<EventId>,
        rejection: Option<Rejection>,
        audit: Option<AuditDue>,
        progress: &mut Progress,
    ) {
        let Some(mut audit) = audit else {
            for event in waiting {
                self.resolve_one(event, rejection.clone(), progress);
            }
            return;
        };
        for &event in &waiting {
            if let Some(e) = self.events.get_mut(&event) {
                if !audit.events.contains(&event) {
                    e.audit_holds += 1;
                    audit.events.push(event);
                    audit.sources.push(e.source());
                }
            }
        }
        for event in waiting {
            self.resolve_one(event, rejection.clone(), progress);
        }
        audit.sources.sort();
        progress.audits.push(audit);
    }

    /// The audit record naming `events` was acknowledged: events with nothing
    /// else to wait for finish (or go to the dead-letter topic).
    pub fn audited(&mut self, events: &[EventId]) -> Progress {
        let mut progress = Progress::default();
        for &event in events {
            let Some(e) = self.events.get_mut(&event) else {
                progress.late_acks += 1;
                continue;
            };
            e.audit_holds = e.audit_holds.saturating_sub(1);
            if e.remaining == 0 && e.audit_holds == 0 {
                self.settle_done(event, &mut progress);
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
    ) -> Vec<SourceRef> {
        let mut sources: Vec<SourceRef> = Vec::new();
        for id in ids {
            let key = DeletionKey {
                region: region.clone(),
                kind,
                id: id.clone(),
            };
            for event in self.deletions.waiters(&key) {
                if let Some(e) = self.events.get(event) {
                    sources.push(e.source());
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
        let waiting: Vec<EventId> = self.deletions.reject(&key).into_iter().collect();
        let audit = self.audit.then(|| AuditDue {
            region: region.clone(),
            kind,
            ids: vec![id.clone()],
            status: if reason == DeadLetterReason::Unconfirmed {
                AuditStatus::Unconfirmed
            } else {
                AuditStatus::Rejected
            },
            message: Some(message.to_string()),
            attempts: 0,
            sources: Vec::new(),
            events: Vec::new(),
        });
        self.resolve_all(waiting, Some(rejection), audit, &mut progress);
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
        if pending.remaining > 0 || pending.audit_holds > 0 {
            return;
        }
        self.settle_done(event, progress);
    }

    /// An event with no deletion and no audit record left to wait for:
    /// finished, or to the dead-letter topic if one of its ids was refused.
    fn settle_done(&mut self, event: EventId, progress: &mut Progress) {
        let Some(pending) = self.events.get(&event) else {
            return;
        };
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
        if pending.remaining > 0 || pending.audit_holds > 0 {
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

    pub fn deletions_pending(&self) -> usize {
        self.deletions.open_len()
    }
}

mod partitions;
mod written;
pub use written::record_digest;

#[cfg(test)]
mod tests;
