//! The coordinator's part in sharing each account's budget (the share
//! follows the partitions this replica owns, and a revoke is answered only
//! once the requests in flight fit the lowered share) and in using secrets
//! re-read from their files.

use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use crate::app::pipeline::coordinator::{Coordinator, Settling};
use crate::domain::offsets::PartitionId;
use crate::ops::secret_reload::SecretUpdate;

/// How long a drained revoke may wait for the requests in flight to fit a
/// lowered share (the consumer waits 5 s beyond the drain timeout).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

impl Coordinator {
    /// Sends `marks` on `reply` once the requests in flight fit the shares.
    pub(super) fn hold_until_settled(
        &mut self,
        reply: SyncSender<Vec<(PartitionId, i64)>>,
        marks: Vec<(PartitionId, i64)>,
    ) {
        self.settling.push(Settling {
            reply,
            marks,
            deadline: Instant::now() + SETTLE_TIMEOUT,
        });
        self.settle_revokes(false);
    }

    /// Answers the revokes waiting for the requests in flight to fit the
    /// lowered shares, once they do, or their deadline passed, or `now`.
    pub(super) fn settle_revokes(&mut self, now: bool) {
        if self.settling.is_empty() {
            return;
        }
        let fits = now || self.dispatcher.fits_shares();
        let at = Instant::now();
        let (due, waiting): (Vec<Settling>, Vec<Settling>) = std::mem::take(&mut self.settling)
            .into_iter()
            .partition(|s| fits || at >= s.deadline);
        self.settling = waiting;
        for s in due {
            if !fits {
                tracing::warn!(
                    "requests in flight still exceed this replica's lowered share after {SETTLE_TIMEOUT:?}; giving the partitions up anyway"
                );
            }
            let _ = s.reply.send(s.marks);
        }
    }

    /// Sets each account's share from the partitions owned now.
    pub(super) fn update_shares(&self) {
        self.dispatcher
            .set_partitions(self.ledger.partitions_owned(), self.partitions_total);
    }

    /// The brokers said how many partitions the subscribed topics have.
    pub(super) fn on_partition_count(&mut self, total: usize) {
        if self.partitions_total != Some(total) {
            tracing::info!(
                total,
                "partitions of the subscribed topics: each account's share follows this replica's part of them"
            );
        }
        self.partitions_total = Some(total);
        self.update_shares();
    }

    /// A secret file changed: use the new value from now on.
    pub(super) fn on_reload(&mut self, update: SecretUpdate) {
        match update {
            SecretUpdate::RegionPasscode(region, passcode) => {
                if !self.dispatcher.set_passcode(&region, passcode) {
                    tracing::warn!(%region, "reloaded passcode of a region the dispatcher does not know");
                }
            }
            SecretUpdate::AuditSalt(salt) => {
                if let Some(writer) = &mut self.audit {
                    writer.disclosure = crate::config::IdDisclosure::SaltedSha256(salt);
                }
            }
        }
    }
}
