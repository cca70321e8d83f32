//! Writes unusable events to the dead-letter topic with their original key and
//! payload and headers saying why; retries until the broker acknowledges.

use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};

use crate::ledger::DeadLetterOrder;
use crate::produce::{send_until_acked, RecordProducer};

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
}

#[derive(Clone)]
pub struct DeadLetterWriter {
    producer: RecordProducer,
    topic: String,
}

impl DeadLetterWriter {
    pub fn new(producer: RecordProducer, topic: String) -> Self {
        DeadLetterWriter { producer, topic }
    }

    /// Writes the record; returns only once the broker acknowledged it. It
    /// retries forever: the event's offset is not committed until then.
    pub async fn write(&self, order: &DeadLetterOrder) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let partition = order.source.partition.to_string();
        let offset = order.offset.to_string();
        let replays = order.record.replay_count.map(|n| n.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::REASON,
                value: Some(order.rejection.reason.as_str()),
            })
            .insert(Header {
                key: headers::DETAIL,
                value: Some(order.rejection.detail.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_TOPIC,
                value: Some(&*order.source.topic),
            })
            .insert(Header {
                key: headers::SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_OFFSET,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: headers::DEAD_LETTERED_AT,
                value: Some(now_ms.as_str()),
            });
        if let Some(n) = &replays {
            headers = headers.insert(Header {
                key: headers::REPLAY_COUNT,
                value: Some(n.as_str()),
            });
        }
        send_until_acked(
            &self.producer,
            &self.topic,
            order.record.key.as_deref(),
            order.record.payload.as_deref(),
            &headers,
            "dead letter",
        )
        .await;
    }
}
