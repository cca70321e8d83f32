//! The coordinator's upkeep: revokes answered once drained, offsets sent for
//! commit, consumption held and resumed, and the gauges.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::app::pipeline::coordinator::Coordinator;
use crate::domain::offsets::PartitionId;
use crate::domain::revokes::DueRevoke;
use crate::input::source::SourceCommand;

impl Coordinator {
    pub(super) fn finish_revoke_if_drained(&mut self) {
        if self.revoking.is_empty() {
            return;
        }
        let ledger = &self.ledger;
        let due = self
            .revoking
            .take_due(Instant::now(), |ps| ledger.unfinished_in(ps));
        for revoke in due {
            self.answer_revoke(revoke);
        }
    }

    /// Forgets the revoked partitions and sends their watermarks to the
    /// consumer, which commits them before giving the partitions up.
    pub(super) fn answer_revoke(&mut self, revoke: DueRevoke) {
        if revoke.timed_out {
            tracing::warn!(
                unfinished = self.ledger.unfinished_in(&revoke.partitions),
                generation = revoke.generation,
                "revoke drain timeout: committing the watermark below the unfinished events"
            );
        }
        let marks = self.ledger.revoke(&revoke.partitions);
        for p in &revoke.partitions {
            if let Some(token) = self.ownership.remove(p) {
                token.cancel();
            }
        }
        // Fewer partitions, a smaller share: lowered before the consumer
        // gives the partitions up, and the answer waits until the requests
        // in flight fit it (see `settle_revokes`).
        self.update_shares();
        if let Some(reply) = revoke.reply {
            let marks = if self.dry_run { Vec::new() } else { marks };
            self.hold_until_settled(reply, marks);
        }
    }

    /// The token that ends with this member's ownership of `partition`.
    pub(super) fn ownership_token(&mut self, partition: &PartitionId) -> CancellationToken {
        self.ownership
            .entry(partition.clone())
            .or_insert_with(|| self.stopped.child_token())
            .clone()
    }

    pub(super) fn commit(&mut self) {
        let marks = self.ledger.take_commits();
        if !marks.is_empty() && !self.dry_run {
            let _ = self.commands.send(SourceCommand::Commit(marks));
        }
    }

    /// `queued`: records decoded and waiting in the channel, counted too so
    /// the pause comes before they are admitted.
    pub(super) fn apply_backpressure(&mut self, stopping: bool, queued: usize) {
        if stopping || self.warming {
            return;
        }
        let held = self.ledger.events_in_memory() + queued;
        let hold = if !self.paused && held >= self.pause_at {
            tracing::debug!(held, "too many events in memory: holding consumption");
            true
        } else if self.paused && held <= self.resume_at {
            tracing::debug!(held, "events drained: resuming consumption");
            false
        } else {
            return;
        };
        self.paused = hold;
        self.intake_held
            .store(hold, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn update_gauges(&mut self) {
        self.metrics
            .events_in_memory
            .set(self.ledger.events_in_memory() as i64);
        // Per owned partition; series of partitions no longer owned go away.
        let gauge = &self.metrics.offsets_held_back;
        let mut labelled = std::mem::take(&mut self.held_back_labelled);
        let mut now_labelled = Vec::new();
        for (p, held) in self.ledger.held_back() {
            let partition = p.partition.to_string();
            gauge
                .with_label_values(&[&*p.topic, partition.as_str()])
                .set(held);
            labelled.retain(|q| q != p);
            now_labelled.push(p.clone());
        }
        for gone in labelled {
            let _ = gauge.remove_label_values(&[&*gone.topic, gone.partition.to_string().as_str()]);
        }
        self.held_back_labelled = now_labelled;
        let age = self
            .ledger
            .oldest_admitted()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.oldest_unfinished_age.set(age);
    }
}
