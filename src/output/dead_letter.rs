//! Writes unusable events to the dead-letter topic with their original key,
//! payload and headers, and headers saying why; retries until the broker
//! acknowledges. A
//! record the broker refuses as too large (or invalid) is written again as a
//! truncated copy, with headers giving the original's size and SHA-256, so
//! the event still finishes and can be found in the source topic.

use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::domain::ledger::DeadLetterOrder;
use crate::output::produce::{KafkaWriter, Unwritable, WriteFailure};

/// Header names on every dead-letter record.
pub mod headers {
    pub const REASON: &str = "reason";
    pub const DETAIL: &str = "detail";
    pub const SOURCE_TOPIC: &str = "source_topic";
    pub const SOURCE_PARTITION: &str = "source_partition";
    pub const SOURCE_OFFSET: &str = "source_offset";
    pub const DEAD_LETTERED_AT: &str = "dead_lettered_at_ms";
    /// Carried over from a replayed record, so replays stay counted.
    pub const REPLAY_COUNT: &str = "replay_count";
    /// Only on a truncated copy: "true", and the whole original's byte size
    /// and SHA-256 (hex) of payload and key.
    pub const TRUNCATED: &str = "truncated";
    pub const ORIGINAL_SIZE: &str = "original_size";
    pub const ORIGINAL_SHA256: &str = "original_sha256";
    pub const ORIGINAL_KEY_SIZE: &str = "original_key_size";
    /// How many of the original record's headers come first, as they were
    /// (`replay-dlq` puts them back). Absent when it had none.
    pub const ORIGINAL_HEADER_COUNT: &str = "original_header_count";
}

/// Payload bytes kept in a truncated copy: enough to recognise the event,
/// far below any broker's message size limit.
pub const TRUNCATED_PAYLOAD: usize = 16 * 1024;

/// The detail header is cut to this many bytes (an API message can be long).
const MAX_DETAIL: usize = 1024;

#[derive(Clone)]
pub struct DeadLetterWriter {
    writer: KafkaWriter,
    topic: String,
}

/// How a dead letter went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLettered {
    Whole,
    /// Too large or invalid as it was: a truncated copy was written.
    Truncated,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl DeadLetterWriter {
    pub fn new(writer: KafkaWriter, topic: String) -> Self {
        DeadLetterWriter { writer, topic }
    }

    /// The dead-letter headers, after the original record's own headers
    /// (`with_original`; a truncated copy leaves them out: they may be what
    /// is too large). An original key that is not UTF-8 cannot be written
    /// back and is left out.
    fn headers(order: &DeadLetterOrder, with_original: bool) -> OwnedHeaders {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let partition = order.source.partition.to_string();
        let offset = order.offset.to_string();
        let mut headers = OwnedHeaders::new();
        let mut original = 0;
        for (key, value) in order.record.headers.iter().filter(|_| with_original) {
            if let Ok(key) = std::str::from_utf8(key) {
                let value = value.as_deref();
                headers = headers.insert(Header { key, value });
                original += 1;
            }
        }
        for (key, value) in [
            (headers::REASON, order.rejection.reason.as_str()),
            (headers::DETAIL, cut(&order.rejection.detail, MAX_DETAIL)),
            (headers::SOURCE_TOPIC, &*order.source.topic),
            (headers::SOURCE_PARTITION, &partition),
            (headers::SOURCE_OFFSET, &offset),
            (headers::DEAD_LETTERED_AT, &now_ms),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if let Some(n) = order.record.replay_count {
            headers = headers.insert(Header {
                key: headers::REPLAY_COUNT,
                value: Some(n.to_string().as_str()),
            });
        }
        if original > 0 {
            headers = headers.insert(Header {
                key: headers::ORIGINAL_HEADER_COUNT,
                value: Some(original.to_string().as_str()),
            });
        }
        headers
    }

    /// Writes the record; returns once the broker acknowledged it (the whole
    /// record or a truncated copy), or `None` when `cancel` fired first (the
    /// partition was revoked: its new owner redoes the event).
    pub async fn write(
        &self,
        order: &DeadLetterOrder,
        cancel: &CancellationToken,
    ) -> Option<DeadLettered> {
        let headers = Self::headers(order, true);
        let payload = order.record.payload.as_deref();
        let key = order.record.key.as_deref();
        match self
            .writer
            .send(&self.topic, key, payload, &headers, "dead letter", cancel)
            .await
        {
            Ok(()) => return Some(DeadLettered::Whole),
            Err(Unwritable::Cancelled) => return None,
            Err(Unwritable::Refused(_)) => {}
        }
        // The copy: no key (it may be what is too large), the payload's
        // start, and what identifies the original.
        let original = payload.unwrap_or_default();
        let size = original.len().to_string();
        let digest = sha256_hex(original);
        let key_size = key.map_or(0, <[u8]>::len).to_string();
        let mut truncated = Self::headers(order, false);
        for (k, v) in [
            (headers::TRUNCATED, "true"),
            (headers::ORIGINAL_SIZE, size.as_str()),
            (headers::ORIGINAL_SHA256, digest.as_str()),
            (headers::ORIGINAL_KEY_SIZE, key_size.as_str()),
        ] {
            truncated = truncated.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let start = &original[..original.len().min(TRUNCATED_PAYLOAD)];
        // The start of the payload, then (if even that is refused, e.g. a
        // topic limit below 16 KiB, or an invalid record) none at all.
        for body in [Some(start), None] {
            match self
                .writer
                .send(
                    &self.topic,
                    None,
                    body,
                    &truncated,
                    "truncated dead letter",
                    cancel,
                )
                .await
            {
                Ok(()) => return Some(DeadLettered::Truncated),
                Err(Unwritable::Cancelled) => return None,
                Err(Unwritable::Refused(_)) => {}
            }
        }
        // Headers alone refused: nothing smaller exists. Hold like a missing
        // topic would, visibly, until cancelled.
        tracing::error!(
            topic = %self.topic,
            source_partition = order.source.partition,
            source_offset = order.offset,
            "the dead-letter topic refuses even a record without payload; the partition is held"
        );
        self.writer
            .metrics()
            .kafka_write_failures
            .with_label_values(&[self.writer.name(), WriteFailure::InvalidRecord.as_str()])
            .inc();
        cancel.cancelled().await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_headers_come_first_and_are_counted() {
        use crate::domain::event::Rejection;
        use crate::domain::ledger::RawRecord;
        use crate::domain::offsets::PartitionId;
        use crate::domain::outcome::DeadLetterReason;
        let header = |k: &[u8], v: &[u8]| (k.into(), Some(v.into()));
        let mut order = DeadLetterOrder {
            event: 0,
            source: PartitionId::new("t", 2),
            offset: 9,
            record: RawRecord {
                headers: vec![
                    header(b"ce_id", b"e-1"),
                    header(b"bad\xff", b"left out"),
                    header(b"reason", b"the producer's own"),
                ],
                ..RawRecord::default()
            },
            rejection: Rejection {
                reason: DeadLetterReason::NoId,
                detail: "no id".into(),
            },
        };
        // Every key written is UTF-8: rdkafka's own reader will do.
        let read = |h: &OwnedHeaders| -> Vec<(String, String)> {
            use rdkafka::message::Headers;
            h.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_string(), value.into_owned())
                })
                .collect()
        };
        let whole = read(&DeadLetterWriter::headers(&order, true));
        assert_eq!(whole[0], ("ce_id".into(), "e-1".into()));
        assert_eq!(whole[1], ("reason".into(), "the producer's own".into()));
        assert_eq!(whole[2], ("reason".into(), "no_id".into()));
        assert_eq!(
            whole.last().unwrap(),
            &("original_header_count".into(), "2".into())
        );
        // The last `reason` is ours (Kafka's lastHeader, replay-dlq).
        let truncated = read(&DeadLetterWriter::headers(&order, false));
        assert_eq!(truncated[0], ("reason".into(), "no_id".into()));
        assert!(!truncated.iter().any(|(k, _)| k == "original_header_count"));
        order.record.headers.clear();
        let none = read(&DeadLetterWriter::headers(&order, true));
        assert_eq!(none[0], ("reason".into(), "no_id".into()));
        assert!(!none.iter().any(|(k, _)| k == "original_header_count"));
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
