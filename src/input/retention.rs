//! Loss the daemon cannot prevent, made loud: records that retention (or a
//! DeleteRecords call) removed before this group read them are deletions
//! lost for good, and `auto.offset.reset` jumps over them without a word.
//! Checked where it can happen: at assignment (the committed offset is below
//! the partition's log start) and while reading (the next offset jumps past
//! a gap that the log start has overtaken).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::domain::offsets::PartitionId;
use crate::ops::metrics::Metrics;

/// Broker queries here block the consumer thread; they happen only on
/// assignment and on a gap, so a short bound is enough.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The offset expected next in one partition, or unknown.
pub type NextOffset = Option<i64>;

/// A range of records removed before they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub from: i64,
    /// Exclusive.
    pub to: i64,
}

/// What a gap in read offsets means, given the log start offset `low`
/// observed after it: records in `[expected, min(read, low))` were removed
/// unread. Gaps below the log start are transaction markers, aborted or
/// compacted records: nothing lost.
pub fn lost_in_gap(expected: i64, read: i64, low: i64) -> Option<Lost> {
    let to = read.min(low);
    (to > expected).then_some(Lost { from: expected, to })
}

/// Records lost before an assignment starts at `committed`.
pub fn lost_before_start(committed: i64, low: i64) -> Option<Lost> {
    (low > committed).then_some(Lost {
        from: committed,
        to: low,
    })
}

fn report(metrics: &Metrics, partition: &PartitionId, lost: &Lost, when: &str) {
    let count = lost.to - lost.from;
    tracing::error!(
        topic = %partition.topic,
        partition = partition.partition,
        from_offset = lost.from,
        to_offset = lost.to - 1,
        records = count,
        "{when}: records were removed by retention before they were read; their deletions are lost for good"
    );
    metrics
        .records_lost
        .with_label_values(&[&*partition.topic, partition.partition.to_string().as_str()])
        .inc_by(count as u64);
}

fn low_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partition: &PartitionId,
) -> Option<i64> {
    match consumer.fetch_watermarks(&partition.topic, partition.partition, QUERY_TIMEOUT) {
        Ok((low, _)) => Some(low),
        Err(e) => {
            tracing::warn!(topic = %partition.topic, partition = partition.partition, error = %e, "could not read the log start offset");
            None
        }
    }
}

/// On assignment: where each partition starts, and what was lost before.
/// Returns the offset expected next per partition (in `partitions` order).
/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Default)]
pub struct AssignedStart {
    /// The committed offset (raised to the log start), expected next.
    pub next: NextOffset,
    /// The first offset this member reads: the committed offset, or the log
    /// start when the group has none.
    pub reading_from: Option<i64>,
    /// The committed offset's metadata ("" when none).
    pub metadata: String,
}

pub fn check_assigned<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[PartitionId],
    metrics: &Metrics,
) -> Vec<AssignedStart> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&p.topic, p.partition);
    }
    let committed = match consumer.committed_offsets(tpl, QUERY_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the committed offsets of the new assignment");
            return vec![AssignedStart::default(); partitions.len()];
        }
    };
    partitions
        .iter()
        .map(|p| {
            // The series exists from the assignment on, at 0 until a loss.
            metrics
                .records_lost
                .with_label_values(&[&*p.topic, p.partition.to_string().as_str()]);
            let Some(low) = low_watermark(consumer, p) else {
                return AssignedStart::default();
            };
            let element = committed.find_partition(&p.topic, p.partition);
            let metadata = element
                .as_ref()
                .map(|e| e.metadata().to_string())
                .unwrap_or_default();
            match element.map(|e| e.offset()) {
                Some(Offset::Offset(c)) => {
                    if let Some(lost) = lost_before_start(c, low) {
                        report(metrics, p, &lost, "before this assignment");
                    }
                    AssignedStart {
                        next: Some(c.max(low)),
                        reading_from: Some(c.max(low)),
                        metadata,
                    }
                }
                _ => {
                    tracing::info!(
                        topic = %p.topic,
                        partition = p.partition,
                        start_offset = low,
                        "no committed offset for this group: starting at the earliest retained record"
                    );
                    AssignedStart {
                        next: None,
                        reading_from: Some(low),
                        metadata,
                    }
                }
            }
        })
        .collect()
}

/// On each record read: a jump past the expected offset is checked against
/// the log start. `next` is updated to the offset after `offset`.
#[inline]
pub fn check_read<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partition: &PartitionId,
    offset: i64,
    next: &mut NextOffset,
    metrics: &Metrics,
) {
    // A gap of one offset is a transaction marker: not worth a query.
    if let Some(expected) = *next {
        if offset > expected + 1 {
            if let Some(low) = low_watermark(consumer, partition) {
                if let Some(lost) = lost_in_gap(expected, offset, low) {
                    report(metrics, partition, &lost, "while reading");
                }
            }
        }
    }
    *next = Some(offset + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_the_log_start_overtook_is_lost() {
        // Read up to 99, then 500 came: the log starts at 400 now.
        assert_eq!(
            lost_in_gap(100, 500, 400),
            Some(Lost { from: 100, to: 400 })
        );
        // The log start moved past what we read after the gap too: only the
        // gap itself was never read.
        assert_eq!(
            lost_in_gap(100, 500, 700),
            Some(Lost { from: 100, to: 500 })
        );
        // Aborted transactions or compaction: the log still starts below.
        assert_eq!(lost_in_gap(100, 500, 0), None);
        assert_eq!(lost_in_gap(100, 500, 100), None);
    }

    #[test]
    fn a_committed_offset_below_the_log_start_lost_the_difference() {
        assert_eq!(lost_before_start(10, 250), Some(Lost { from: 10, to: 250 }));
        assert_eq!(lost_before_start(250, 250), None);
        assert_eq!(lost_before_start(300, 250), None);
    }
}
