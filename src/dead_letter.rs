//! Writes unusable events to the dead-letter topic with their original key and
//! payload and headers saying why; retries until the broker acknowledges.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::backoff::Backoff;
use crate::ledger::DeadLetterOrder;

/// Header names on every dead-letter record.
pub mod headers {
    pub const REASON: &str = "reason";
    pub const DETAIL: &str = "detail";
    pub const SOURCE_TOPIC: &str = "source_topic";
    pub const SOURCE_PARTITION: &str = "source_partition";
    pub const SOURCE_OFFSET: &str = "source_offset";
    pub const DEAD_LETTERED_AT: &str = "dead_lettered_at_ms";
}

#[derive(Clone)]
pub struct DeadLetterWriter {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterWriter {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
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
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let headers = OwnedHeaders::new()
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
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = order.record.key.as_deref() {
                record = record.key(key);
            }
            if let Some(payload) = order.record.payload.as_deref() {
                record = record.payload(payload);
            }
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
            {
                Ok(_) => return,
                Err((e, _)) => {
                    let delay = backoff.delay(attempt, None, &mut rand::rng());
                    tracing::warn!(
                        topic = %self.topic, attempt, error = %e,
                        source_partition = order.source.partition, source_offset = order.offset,
                        "dead-letter write failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
