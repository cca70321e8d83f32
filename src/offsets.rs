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
    /// Sorted by offset; the front is the oldest unfinished or a finished run
    /// that is popped as soon as it reaches the front.
    pending: VecDeque<(i64, bool)>,
    next: Option<i64>,
    committed: Option<i64>,
}

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
        self.pending[pos].1 = true;
        while matches!(self.pending.front(), Some((_, true))) {
            self.pending.pop_front();
        }
        true
    }

    fn committable(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.next,
        }
    }
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
            .map_or(0, |w| w.pending.iter().filter(|(_, done)| !done).count())
    }

    /// Watermarks that moved past what was last committed; marks them committed.
    pub fn take_commits(&mut self) -> Vec<(PartitionId, i64)> {
        let mut out = Vec::new();
        for (p, w) in self.partitions.iter_mut() {
            if let Some(c) = w.committable() {
                if w.committed.is_none_or(|prev| c > prev) {
                    w.committed = Some(c);
                    out.push((p.clone(), c));
                }
            }
        }
        out.sort();
        out
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
        assert!(t.take_commits().is_empty());
        t.finish(&q, 0);
        assert_eq!(t.take_commits(), vec![(q.clone(), 1)]);
        t.forget(&q);
        assert!(!t.finish(&q, 0));
        assert!(!t.owns(&q));
        assert_eq!(t.watermarks(&[p.clone(), q]), vec![(p, 0)]);
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
