//! Writes one record to Kafka and returns once the broker acknowledged it.
//! Used by the dead-letter and audit sides: the events they cover must not be
//! committed before their record is safely stored, so failures are retried.
//! Errors are told apart: a record the broker will never take (too large,
//! invalid) goes back to the caller, which writes something smaller; a topic
//! that is missing or not authorized holds the writer (readiness red, a metric,
//! a log line a minute) and is retried slowly, since only an operator can fix
//! it; anything else is retried with backoff. A write is abandoned only when
//! its cancellation token fires (its partition was revoked, or shutdown).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::domain::backoff::Backoff;
use crate::ops::health::{any_broker_up, Health};
use crate::ops::log_throttle::KafkaLinkLog;
use crate::ops::metrics::Metrics;

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

pub use crate::domain::outcome::WriteFailure;

impl WriteFailure {
    pub fn of(error: &KafkaError) -> WriteFailure {
        use RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => {
                WriteFailure::TooLarge
            }
            Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::InvalidTopic) => {
                WriteFailure::UnknownTopic
            }
            Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
                WriteFailure::Authorization
            }
            Some(C::InvalidRecord | C::InvalidMessage) => WriteFailure::InvalidRecord,
            Some(C::Fatal) => WriteFailure::ProducerFatal,
            _ => WriteFailure::Transient,
        }
    }

    /// Errors only an operator can end (create the topic, grant the ACL,
    /// restart): they hold the writer, and are retried slowly meanwhile.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            WriteFailure::UnknownTopic | WriteFailure::Authorization | WriteFailure::ProducerFatal
        )
    }

    /// What to tell an operator.
    fn remedy(self, topic: &str) -> String {
        match self {
            WriteFailure::UnknownTopic => format!("topic {topic} does not exist: create it"),
            WriteFailure::Authorization => {
                format!(
                    "not authorized to write to topic {topic}: grant WRITE (and IDEMPOTENT_WRITE)"
                )
            }
            WriteFailure::ProducerFatal => {
                "the Kafka producer failed fatally: restart the process".to_string()
            }
            other => format!("{} writing to {topic}", other.as_str()),
        }
    }
}

/// Why [`KafkaWriter::send`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritable {
    /// The broker will never take this record as it is (too large, invalid):
    /// the caller writes something smaller.
    Refused(WriteFailure),
    /// The cancellation token fired first.
    Cancelled,
}

const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

/// Slower retries while an operator must act, so a missing topic never spins.
const HELD_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// One "still failing" line a minute per writer, whatever the number of records.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One writer (dead letters, audit records) on the shared producer.
#[derive(Clone)]
pub struct KafkaWriter {
    producer: RecordProducer,
    /// `dead_letter` or `audit`: the `writer` label and the readiness text.
    name: &'static str,
    metrics: Metrics,
    health: Health,
    /// Milliseconds since `epoch` of the last warning, shared by the clones.
    last_log_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl KafkaWriter {
    pub fn new(
        producer: RecordProducer,
        name: &'static str,
        metrics: Metrics,
        health: Health,
    ) -> Self {
        KafkaWriter {
            producer,
            name,
            metrics,
            health,
            last_log_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// True at most once a minute across all clones of this writer.
    fn may_log(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + LOG_EVERY.as_millis() as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        now - last >= LOG_EVERY.as_millis() as u64
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Produces until acknowledged. `what` names the record in log lines
    /// (never its content).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &OwnedHeaders,
        what: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Unwritable> {
        let mut attempt = 0;
        let mut held: Option<HeldWrite> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(Unwritable::Cancelled);
            }
            attempt += 1;
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            let sent = tokio::select! {
                sent = self.producer.send(record, Timeout::After(Duration::from_secs(30))) => sent,
                () = cancel.cancelled() => return Err(Unwritable::Cancelled),
            };
            let error = match sent {
                Ok(_) => return Ok(()),
                Err((e, _)) => e,
            };
            let failure = WriteFailure::of(&error);
            self.metrics
                .kafka_write_failures
                .with_label_values(&[self.name, failure.as_str()])
                .inc();
            let delay = if failure.needs_operator() {
                if held.is_none() {
                    held = Some(HeldWrite::start(self, topic, failure));
                }
                if self.may_log() {
                    tracing::error!(
                        writer = self.name,
                        %topic,
                        record = what,
                        attempt,
                        error = %error,
                        "{}; the partitions waiting on this write do not commit",
                        failure.remedy(topic)
                    );
                }
                HELD_BACKOFF.delay(attempt, None, &mut rand::rng())
            } else {
                match failure {
                    WriteFailure::TooLarge | WriteFailure::InvalidRecord => {
                        tracing::warn!(writer = self.name, %topic, record = what, error = %error, "the broker refuses this record");
                        return Err(Unwritable::Refused(failure));
                    }
                    _ => {}
                }
                if self.may_log() || attempt == 1 {
                    tracing::warn!(writer = self.name, %topic, attempt, error = %error, record = what, "write failed; retrying");
                }
                BACKOFF.delay(attempt, None, &mut rand::rng())
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return Err(Unwritable::Cancelled),
            }
        }
    }
}

/// A record held by an error only an operator can end: counted in
/// `kafka_writes_held` and named in readiness while it lasts.
struct HeldWrite {
    writer: KafkaWriter,
}

impl HeldWrite {
    fn start(writer: &KafkaWriter, topic: &str, failure: WriteFailure) -> HeldWrite {
        writer
            .metrics
            .kafka_writes_held
            .with_label_values(&[writer.name])
            .inc();
        writer
            .health
            .writer_held(writer.name, Some(failure.remedy(topic)));
        HeldWrite {
            writer: writer.clone(),
        }
    }
}

impl Drop for HeldWrite {
    fn drop(&mut self) {
        let gauge = self
            .writer
            .metrics
            .kafka_writes_held
            .with_label_values(&[self.writer.name]);
        gauge.dec();
        if gauge.get() <= 0 {
            self.writer.health.writer_held(self.writer.name, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_apart() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            WriteFailure::of(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            WriteFailure::TooLarge
        );
        assert_eq!(
            WriteFailure::of(&e(RDKafkaErrorCode::UnknownTopicOrPartition)),
            WriteFailure::UnknownTopic
        );
        assert_eq!(
            WriteFailure::of(&e(RDKafkaErrorCode::UnknownTopic)),
            WriteFailure::UnknownTopic
        );
        assert_eq!(
            WriteFailure::of(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            WriteFailure::Authorization
        );
        assert_eq!(
            WriteFailure::of(&e(RDKafkaErrorCode::InvalidRecord)),
            WriteFailure::InvalidRecord
        );
        for transient in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert_eq!(WriteFailure::of(&e(transient)), WriteFailure::Transient);
        }
        assert!(WriteFailure::UnknownTopic.needs_operator());
        assert!(!WriteFailure::TooLarge.needs_operator());
        assert!(!WriteFailure::Transient.needs_operator());
    }
}
