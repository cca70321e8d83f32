//! Writes one record to Kafka and returns only once the broker acknowledged it.
//! Used by the dead-letter and audit sides: the events they cover must not be
//! committed before their record is safely stored, so failures are retried.

use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::backoff::Backoff;

const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

/// Produces until acknowledged, with backoff between attempts. `what` names
/// the record in warnings (never its content).
pub async fn send_until_acked(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &OwnedHeaders,
    what: &str,
) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(headers.clone());
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((e, _)) => {
                let delay = BACKOFF.delay(attempt, None, &mut rand::rng());
                tracing::warn!(%topic, attempt, error = %e, record = what, "write failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
