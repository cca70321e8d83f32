//! Revokes waiting for their partitions to drain, in the order the consumer
//! reported them. Each revoke and assignment carries the consumer's rebalance
//! generation, so an answer that comes late can never forget a partition that
//! a newer assignment gave back meanwhile, and a second revoke never replaces
//! the first.

use std::sync::mpsc::SyncSender;
use std::time::Instant;

use crate::domain::offsets::PartitionId;

/// Numbers the consumer's rebalance events (assignments and revokes) in the
/// order they happened.
pub type Generation = u64;

/// A revoke the consumer is waiting on: it commits the watermarks it is sent.
pub struct PendingRevoke {
    pub generation: Generation,
    pub partitions: Vec<PartitionId>,
    pub reply: SyncSender<Vec<(PartitionId, i64)>>,
    pub deadline: Instant,
}

/// A revoke ready to be answered: forget `partitions`, then send their
/// watermarks on `reply`.
pub struct DueRevoke {
    pub generation: Generation,
    pub partitions: Vec<PartitionId>,
    pub reply: Option<SyncSender<Vec<(PartitionId, i64)>>>,
    /// The drain deadline passed with events still unfinished.
    pub timed_out: bool,
}

#[derive(Default)]
pub struct RevokeQueue {
    pending: Vec<PendingRevoke>,
}

impl RevokeQueue {
    pub fn push(&mut self, revoke: PendingRevoke) {
        self.pending.push(revoke);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The earliest drain deadline, to wake up for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|r| r.deadline).min()
    }

    /// An assignment of `generation` arrived. Any of its partitions still in
    /// an older pending revoke belonged to an ownership that has ended (the
    /// consumer stopped waiting for that revoke): they must be forgotten now,
    /// before the new ownership starts from the group's committed offset.
    /// Returns them, without a reply (nobody listens for it any more).
    pub fn superseded_by(
        &mut self,
        generation: Generation,
        assigned: &[PartitionId],
    ) -> Option<DueRevoke> {
        let mut stale = Vec::new();
        for revoke in self.pending.iter_mut() {
            if revoke.generation >= generation {
                continue;
            }
            revoke.partitions.retain(|p| {
                let reassigned = assigned.contains(p);
                if reassigned {
                    stale.push(p.clone());
                }
                !reassigned
            });
        }
        // A revoke left with no partition is answered with nothing.
        self.pending.retain(|r| !r.partitions.is_empty());
        (!stale.is_empty()).then_some(DueRevoke {
            generation,
            partitions: stale,
            reply: None,
            timed_out: false,
        })
    }

    /// Revokes whose partitions drained (`unfinished` is 0) or whose
    /// deadline passed, oldest first.
    pub fn take_due(
        &mut self,
        now: Instant,
        unfinished: impl Fn(&[PartitionId]) -> usize,
    ) -> Vec<DueRevoke> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let r = &self.pending[i];
            let left = unfinished(&r.partitions);
            if left == 0 || now >= r.deadline {
                let r = self.pending.remove(i);
                due.push(DueRevoke {
                    generation: r.generation,
                    partitions: r.partitions,
                    reply: Some(r.reply),
                    timed_out: left > 0,
                });
            } else {
                i += 1;
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    fn revoke(
        generation: Generation,
        partitions: &[i32],
        deadline: Instant,
    ) -> (
        PendingRevoke,
        std::sync::mpsc::Receiver<Vec<(PartitionId, i64)>>,
    ) {
        let (reply, answer) = sync_channel(1);
        (
            PendingRevoke {
                generation,
                partitions: partitions
                    .iter()
                    .map(|&n| PartitionId::new("t", n))
                    .collect(),
                reply,
                deadline,
            },
            answer,
        )
    }

    #[test]
    fn a_second_revoke_does_not_replace_the_first() {
        let now = Instant::now();
        let mut q = RevokeQueue::default();
        let (a, _ra) = revoke(1, &[0], now + Duration::from_secs(10));
        let (b, _rb) = revoke(2, &[1], now + Duration::from_secs(5));
        q.push(a);
        q.push(b);
        assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(5)));
        // Partition 0 drained, partition 1 not.
        let due = q.take_due(now, |ps| usize::from(ps[0].partition == 1));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].partitions, vec![PartitionId::new("t", 0)]);
        assert!(!due[0].timed_out);
        let due = q.take_due(now + Duration::from_secs(6), |_| 1);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].generation, 2);
        assert!(due[0].timed_out);
        assert!(q.is_empty());
    }

    #[test]
    fn an_assignment_takes_its_partitions_out_of_older_revokes() {
        let now = Instant::now();
        let mut q = RevokeQueue::default();
        let (a, _ra) = revoke(3, &[0, 1], now + Duration::from_secs(10));
        q.push(a);
        let p0 = PartitionId::new("t", 0);
        let stale = q.superseded_by(4, std::slice::from_ref(&p0)).unwrap();
        assert_eq!(stale.partitions, vec![p0.clone()]);
        assert!(stale.reply.is_none());
        // The old revoke still answers for partition 1 only: a late answer
        // cannot touch the reassigned partition 0.
        let due = q.take_due(now, |_| 0);
        assert_eq!(due[0].partitions, vec![PartitionId::new("t", 1)]);
        // Nothing is superseded by an assignment that is not newer.
        let (b, _rb) = revoke(9, &[0], now);
        q.push(b);
        assert!(q.superseded_by(9, &[p0]).is_none());
    }
}
