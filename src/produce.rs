//! Writes one record to Kafka and returns only once the broker acknowledged it.
//! Used by the dead-letter and audit sides: the events they cover must not be
//! committed before their record is safely stored, so failures are retried.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use crate::backoff::Backoff;
use crate::health::{any_broker_up, Health};
use crate::log_throttle::KafkaLinkLog;

/// The producer the dead-letter and audit writers share.
pub type RecordProducer = FutureProducer<BrokerWatch>;

/// Reports the producer's view of the cluster to readiness. The producer's
/// callbacks run on its own polling thread, so an outage is reported at once
/// even while the consumer thread is blocked in a commit that waits for the
/// coordinator. It reports "up" only from positive evidence (a broker UP in
/// its statistics): an idle producer may hold no connection at all.
pub struct BrokerWatch {
    health: Health,
    /// Connection problems as state changes, not one line per callback.
    link: KafkaLinkLog,
}

impl BrokerWatch {
    pub fn new(health: Health) -> Self {
        BrokerWatch {
            health,
            link: KafkaLinkLog::new("producer"),
        }
    }
}

impl ClientContext for BrokerWatch {
    fn stats(&self, stats: Statistics) {
        if any_broker_up(&stats) {
            self.health.set_kafka_connected(true);
            self.link.up();
        }
        self.link.tick();
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.link.librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_kafka_connected(false);
        }
        self.link.client_error(&error, reason);
    }
}

const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

/// Produces until acknowledged, with backoff between attempts. `what` names
/// the record in warnings (never its content).
pub async fn send_until_acked(
    producer: &RecordProducer,
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
