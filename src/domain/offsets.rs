//! Per-partition watermarks: the offset that may be committed is the lowest
//! offset not yet finished, or one past the last seen when all are finished.
//! Nothing else is ever committed, so a later success can never move the
//! commit past an earlier failure.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::sync::Arc;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic: &str, partition: i32) -> Self {
        PartitionId {
            topic: Arc::from(topic),
            partition,
        }
    }
}

/// Offsets handed to the pipeline in one partition and whether each finished.
#[derive(Debug, Default)]
struct PartitionWatermark {
    /// Sorted by offset. Finished entries are popped as soon as they reach
    /// the front, and swept out when they make up half the queue, so a
    /// partition held back by one stuck event keeps only its unfinished
    /// offsets (which backpressure bounds), however far reading runs ahead.
    pending: VecDeque<(i64, bool)>,
    /// Finished entries still in `pending`.
    finished_in_queue: usize,
    next: Option<i64>,
    /// The last offset the group coordinator confirmed for this partition.
    confirmed: Option<i64>,
    /// The offset of the commit handed out and not answered yet.
    requested: Option<i64>,
}

/// Below this many finished entries the queue is never swept (cheap enough).
const SWEEP_MIN: usize = 64;

impl PartitionWatermark {
    fn track(&mut self, offset: i64) {
        match self.pending.back() {
            Some(&(last, _)) if offset <= last => {
                // Out of order (should not happen within one assignment): keep sorted.
                if let Err(pos) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
                    self.pending.insert(pos, (offset, false));
                }
            }
            _ => self.pending.push_back((offset, false)),
        }
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    fn finish(&mut self, offset: i64) -> bool {
        let Ok(pos) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        if self.pending[pos].1 {
            return true;
        }
        self.pending[pos].1 = true;
        self.finished_in_queue += 1;
        while matches!(self.pending.front(), Some((_, true))) {
            self.pending.pop_front();
            self.finished_in_queue -= 1;
        }
        if self.finished_in_queue >= SWEEP_MIN && self.finished_in_queue * 2 >= self.pending.len() {
            self.pending.retain(|(_, done)| !done);
            self.finished_in_queue = 0;
        }
        true
    }

    fn committable(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.next,
        }
    }

    fn unfinished(&self) -> usize {
        self.pending.len() - self.finished_in_queue
    }
}

/// One partition's watermark as the status view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkView {
    /// The group's last confirmed commit.
    pub confirmed: Option<i64>,
    /// One past the last offset read.
    pub next: Option<i64>,
    pub committable: Option<i64>,
    pub unfinished: usize,
}

/// Watermarks of every partition this member owns.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<PartitionId, PartitionWatermark>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a partition (on assignment). Keeps existing state.
    pub fn assign(&mut self, partition: PartitionId) {
        self.partitions.entry(partition).or_default();
    }

    /// Forgets a partition (after its revoke commit).
    pub fn forget(&mut self, partition: &PartitionId) {
        self.partitions.remove(partition);
    }

    pub fn owns(&self, partition: &PartitionId) -> bool {
        self.partitions.contains_key(partition)
    }

    pub fn partitions(&self) -> impl Iterator<Item = &PartitionId> {
        self.partitions.keys()
    }

    /// Records that `offset` entered the pipeline, unfinished.
    pub fn track(&mut self, partition: &PartitionId, offset: i64) {
        self.partitions
            .entry(partition.clone())
            .or_default()
            .track(offset);
    }

    /// Offsets up to `last` that need no work (the decoder skipped them):
    /// only the end moves. A finished offset never holds a commit back (the
    /// front of a queue is always unfinished), so none is queued.
    pub fn skip_through(&mut self, partition: &PartitionId, last: i64) {
        let watermark = match self.partitions.get_mut(partition) {
            Some(w) => w,
            None => self.partitions.entry(partition.clone()).or_default(),
        };
        watermark.next = Some(watermark.next.map_or(last + 1, |n| n.max(last + 1)));
    }

    /// Marks an offset finished; false if it was not tracked (e.g. revoked).
    pub fn finish(&mut self, partition: &PartitionId, offset: i64) -> bool {
        self.partitions
            .get_mut(partition)
            .is_some_and(|w| w.finish(offset))
    }

    /// The offset to commit for one partition: lowest unfinished, or last seen + 1.
    pub fn committable(&self, partition: &PartitionId) -> Option<i64> {
        self.partitions.get(partition)?.committable()
    }

    /// Unfinished offsets in a partition.
    pub fn unfinished(&self, partition: &PartitionId) -> usize {
        self.partitions
            .get(partition)
            .map_or(0, PartitionWatermark::unfinished)
    }

    /// Offsets read but held back from the commit per partition: how far
    /// reading ran ahead of the watermark (0 when everything read finished).
    pub fn held_back(&self) -> impl Iterator<Item = (&PartitionId, i64)> {
        self.partitions.iter().map(|(p, w)| {
            let held = match (w.committable(), w.next) {
                (Some(c), Some(n)) => n - c,
                _ => 0,
            };
            (p, held)
        })
    }

    /// One partition's watermark for the status view.
    pub fn view(&self, partition: &PartitionId) -> Option<WatermarkView> {
        let w = self.partitions.get(partition)?;
        Some(WatermarkView {
            confirmed: w.confirmed,
            next: w.next,
            committable: w.committable(),
            unfinished: w.unfinished(),
        })
    }

    /// Entries kept in memory over all partitions (unfinished offsets plus
    /// finished ones not swept yet): what backpressure must bound.
    pub fn entries(&self) -> usize {
        self.partitions.values().map(|w| w.pending.len()).sum()
    }

    /// Watermarks that differ from what the group last confirmed and are not
    /// already being committed. A commit is marked done only when
    /// [`OffsetTracker::commit_result`] reports success, so a failed commit is
    /// retried at the next call even when the watermark has not moved.
    pub fn take_commits(&mut self) -> Vec<(PartitionId, i64)> {
        let mut out = Vec::new();
        for (p, w) in self.partitions.iter_mut() {
            if let Some(c) = w.committable() {
                if w.confirmed != Some(c) && w.requested != Some(c) {
                    w.requested = Some(c);
                    out.push((p.clone(), c));
                }
            }
        }
        out.sort();
        out
    }

    /// The answer to a commit: on success the offset is confirmed; on
    /// failure it is asked for again by the next [`OffsetTracker::take_commits`].
    pub fn commit_result(&mut self, partition: &PartitionId, offset: i64, ok: bool) {
        let Some(w) = self.partitions.get_mut(partition) else {
            return;
        };
        if w.requested == Some(offset) {
            w.requested = None;
        }
        if ok && w.confirmed.is_none_or(|c| c < offset) {
            w.confirmed = Some(offset);
        }
    }

    /// Current watermarks of the given partitions, whether or not they moved.
    pub fn watermarks(&self, partitions: &[PartitionId]) -> Vec<(PartitionId, i64)> {
        partitions
            .iter()
            .filter_map(|p| Some((p.clone(), self.committable(p)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_in_the_middle_holds_the_watermark() {
        let p = PartitionId::new("t", 0);
        let mut t = OffsetTracker::new();
        assert_eq!(t.committable(&p), None);
        for o in 10..15 {
            t.track(&p, o);
        }
        assert_eq!(t.committable(&p), Some(10));
        // Later events succeed while 11 is still failing.
        for o in [10, 12, 13, 14] {
            assert!(t.finish(&p, o));
        }
        assert_eq!(t.committable(&p), Some(11));
        assert_eq!(t.unfinished(&p), 1);
        assert!(t.finish(&p, 11));
        assert_eq!(t.committable(&p), Some(15));
        assert_eq!(t.unfinished(&p), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let p = PartitionId::new("t", 1);
        let mut t = OffsetTracker::new();
        t.track(&p, 3);
        t.track(&p, 7);
        assert!(t.finish(&p, 7));
        assert_eq!(t.committable(&p), Some(3));
        assert!(t.finish(&p, 3));
        assert_eq!(t.committable(&p), Some(8));
        assert!(!t.finish(&p, 5), "untracked offsets are not finished");
    }

    #[test]
    fn take_commits_only_reports_progress() {
        let p = PartitionId::new("t", 0);
        let q = PartitionId::new("t", 1);
        let mut t = OffsetTracker::new();
        t.track(&p, 0);
        t.track(&q, 0);
        assert_eq!(t.take_commits(), vec![(p.clone(), 0), (q.clone(), 0)]);
        assert!(t.take_commits().is_empty(), "already being committed");
        t.commit_result(&p, 0, true);
        t.commit_result(&q, 0, true);
        assert!(t.take_commits().is_empty());
        t.finish(&q, 0);
        assert_eq!(t.take_commits(), vec![(q.clone(), 1)]);
        t.forget(&q);
        assert!(!t.finish(&q, 0));
        assert!(!t.owns(&q));
        assert_eq!(t.watermarks(&[p.clone(), q]), vec![(p, 0)]);
    }

    #[test]
    fn a_failed_commit_is_asked_for_again_though_the_watermark_did_not_move() {
        let p = PartitionId::new("t", 0);
        let mut t = OffsetTracker::new();
        t.track(&p, 0);
        t.finish(&p, 0);
        assert_eq!(t.take_commits(), vec![(p.clone(), 1)]);
        t.commit_result(&p, 1, false);
        assert_eq!(t.take_commits(), vec![(p.clone(), 1)], "retried");
        t.commit_result(&p, 1, true);
        assert!(t.take_commits().is_empty(), "confirmed");
        // An answer for an older commit neither confirms nor clears a newer one.
        t.track(&p, 1);
        t.finish(&p, 1);
        assert_eq!(t.take_commits(), vec![(p.clone(), 2)]);
        t.commit_result(&p, 1, true);
        assert!(t.take_commits().is_empty(), "2 is still in flight");
        t.commit_result(&p, 2, true);
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn one_stuck_offset_keeps_only_the_unfinished_entries() {
        let p = PartitionId::new("t", 0);
        let mut t = OffsetTracker::new();
        for o in 0..100_000 {
            t.track(&p, o);
            if o != 7 {
                t.finish(&p, o);
            }
        }
        assert_eq!(t.committable(&p), Some(7));
        assert_eq!(t.unfinished(&p), 1);
        assert!(
            t.entries() <= 2 * SWEEP_MIN,
            "{} entries held for one unfinished offset",
            t.entries()
        );
        assert_eq!(t.held_back().next().map(|(_, n)| n), Some(100_000 - 7));
        t.finish(&p, 7);
        assert_eq!(t.committable(&p), Some(100_000));
        assert_eq!(t.entries(), 0);
        assert_eq!(t.held_back().next().map(|(_, n)| n), Some(0));
    }

    #[test]
    fn sweeping_keeps_the_order_and_the_watermark() {
        let p = PartitionId::new("t", 0);
        let mut t = OffsetTracker::new();
        for o in 0..1_000 {
            t.track(&p, o);
        }
        // Finish every offset but multiples of 100, in a scattered order.
        for o in (0..1_000).rev().filter(|o| o % 100 != 0) {
            t.finish(&p, o);
        }
        assert_eq!(t.unfinished(&p), 10);
        for stuck in (0..1_000).step_by(100) {
            assert_eq!(t.committable(&p), Some(stuck));
            assert!(t.finish(&p, stuck));
        }
        assert_eq!(t.committable(&p), Some(1_000));
    }

    #[test]
    fn out_of_order_tracking_stays_sorted() {
        let p = PartitionId::new("t", 0);
        let mut t = OffsetTracker::new();
        t.track(&p, 5);
        t.track(&p, 3);
        assert_eq!(t.committable(&p), Some(3));
        t.finish(&p, 3);
        assert_eq!(t.committable(&p), Some(5));
        t.finish(&p, 5);
        assert_eq!(t.committable(&p), Some(6));
    }
}
