//! Dead letters already written for events not yet committed: found at start
//! by the read-back of the dead-letter topic. An event read again at such a
//! position, with the same key and payload, was finished by the process
//! before (a dead letter is written only once an event is done), so it
//! finishes again at once instead of being dead-lettered twice.

use std::hash::{Hash, Hasher};

use super::{Ledger, Progress, RawRecord};
use crate::domain::event::Decoded;
use crate::domain::offsets::PartitionId;
use crate::domain::outcome::Finish;

/// A fingerprint of a record's key and payload: the same in every process
/// of one build (std's SipHash with fixed keys), which is all it needs.
pub fn record_digest(key: Option<&[u8]>, payload: Option<&[u8]>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Ledger {
    /// Dead letters already written for events at or above the committed
    /// offsets: (partition, offset, [`record_digest`] of the original).
    pub fn remember_dead_lettered(
        &mut self,
        written: impl IntoIterator<Item = (PartitionId, i64, u64)>,
    ) {
        for (partition, offset, digest) in written {
            self.written_dead_letters
                .insert((partition, offset), digest);
        }
    }

    /// Finishes the event at `offset` if its dead letter is already written:
    /// a poison event always; one that asked for deletions only with audit
    /// off (with audit on, its records are written again instead).
    pub(super) fn finished_before(
        &mut self,
        partition: &PartitionId,
        offset: i64,
        record: &RawRecord,
        decoded: &Decoded,
        progress: &mut Progress,
    ) -> bool {
        if self.written_dead_letters.is_empty() {
            return false;
        }
        let Some(digest) = self
            .written_dead_letters
            .remove(&(partition.clone(), offset))
        else {
            return false;
        };
        let eligible = match decoded {
            Decoded::DeadLetter(_) => true,
            Decoded::Delete(_) => !self.audit,
            Decoded::Skip => false,
        };
        if !eligible || digest != record_digest(record.key.as_deref(), record.payload.as_deref()) {
            return false;
        }
        self.offsets.finish(partition, offset);
        progress.finished.push(Finish::DeadLettered);
        progress.dead_letters_found_written += 1;
        true
    }
}
