//! The ledger's view per partition: ownership, watermarks to commit, what
//! is held back, and the status view.

use std::time::Instant;

use foldhash::HashMap;

use super::{Ledger, PartitionView};
use crate::domain::offsets::PartitionId;

impl Ledger {
    /// Whether this member currently owns the partition.
    pub fn owns(&self, partition: &PartitionId) -> bool {
        self.offsets.owns(partition)
    }

    /// How many partitions this member owns.
    pub fn partitions_owned(&self) -> usize {
        self.offsets.partitions().count()
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

    /// Watermarks to commit: moved, or not confirmed yet; see
    /// [`OffsetTracker::take_commits`].
    pub fn take_commits(&mut self) -> Vec<(PartitionId, i64)> {
        self.offsets.take_commits()
    }

    /// The group coordinator's answer to a commit.
    pub fn commit_result(&mut self, partition: &PartitionId, offset: i64, ok: bool) {
        self.offsets.commit_result(partition, offset, ok);
    }

    /// Per owned partition, the offsets read but held back from the commit.
    pub fn held_back(&self) -> impl Iterator<Item = (&PartitionId, i64)> {
        self.offsets.held_back()
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

    /// Per owned partition, what the status view shows, sorted.
    pub fn partition_views(&self, now: Instant) -> Vec<PartitionView> {
        let mut oldest: HashMap<&PartitionId, (i64, Instant)> = HashMap::default();
        for e in self.events.values() {
            let slot = oldest.entry(&e.partition).or_insert((e.offset, e.admitted));
            if e.offset < slot.0 {
                *slot = (e.offset, e.admitted);
            }
        }
        let mut views: Vec<PartitionView> = self
            .offsets
            .partitions()
            .filter_map(|p| {
                let w = self.offsets.view(p)?;
                let (committed, next, committable, unfinished) =
                    (w.confirmed, w.next, w.committable, w.unfinished);
                let oldest = oldest.get(p);
                Some(PartitionView {
                    topic: p.topic.to_string(),
                    partition: p.partition,
                    committed,
                    read_up_to: next,
                    committable,
                    held_back: match (committable, next) {
                        (Some(c), Some(n)) => n - c,
                        _ => 0,
                    },
                    unfinished,
                    oldest_unfinished_offset: oldest.map(|o| o.0),
                    oldest_unfinished_age_secs: oldest
                        .map(|o| now.saturating_duration_since(o.1).as_secs_f64()),
                })
            })
            .collect();
        views.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        views
    }

    /// When the oldest unfinished event entered the pipeline.
    pub fn oldest_admitted(&self) -> Option<Instant> {
        self.events.values().map(|e| e.admitted).min()
    }
}
