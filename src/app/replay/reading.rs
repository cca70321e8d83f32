//! Reading the dead-letter topic: the replay consumer, its client context, the
//! reachability check, records copied out of the consumer, and consumer errors.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::{ClientContext, Message};

use crate::config::Config;
use crate::input::headers as record_headers;
use crate::ops::log_throttle::KafkaLinkLog;

use super::decide::{
    original_headers, parse_headers, DeadLetterHeaders, Decision, OriginalHeaders,
};

/// Tallies records without a `reason` header.
pub(super) const NO_REASON: &str = "(none)";

/// The replay consumer: the daemon's settings and the user's properties, then
/// what the replay depends on (these win over the properties).
pub fn replay_consumer_config(config: &Config, group: &str) -> ClientConfig {
    let mut c = crate::app::pipeline::consumer_config(config);
    c.set("group.id", group)
        .set("client.id", "clevertap-deleter-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new replay group starts at the oldest dead letter.
        .set("auto.offset.reset", "earliest")
        // The run ends when every assigned partition reported its end.
        .set("enable.partition.eof", "true")
        // Nothing reads the statistics here; they would only be logged.
        .set("statistics.interval.ms", "0");
    c
}

/// rdkafka hands every consumer error event to the context too, and its
/// default logs each at ERROR: with `enable.partition.eof`, the normal end
/// of every partition. The poll loop handles the errors; this only logs,
/// connection problems as state changes (see [`KafkaLinkLog`]).
pub(super) struct ReplayContext {
    link: KafkaLinkLog,
}

impl ReplayContext {
    pub(super) fn new(client: &'static str) -> Self {
        ReplayContext {
            link: KafkaLinkLog::new(client),
        }
    }
}

impl ClientContext for ReplayContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.link.librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.link.client_error(&error, reason);
    }
}

impl ConsumerContext for ReplayContext {}

impl ProducerContext for ReplayContext {
    type DeliveryOpaque = ();
    // Delivery failures surface at the transaction's commit.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

pub(super) type ReplayConsumer = BaseConsumer<ReplayContext>;
pub(super) type ReplayProducer = BaseProducer<ReplayContext>;

/// Fails unless the brokers answer within `timeout` and the dead-letter
/// topic exists; the error names the cause librdkafka reported.
pub(super) fn check_reachable(
    consumer: &ReplayConsumer,
    config: &Config,
    timeout: Duration,
) -> Result<(), String> {
    let k = &config.settings.kafka;
    match consumer.fetch_metadata(None, timeout) {
        Ok(metadata) => {
            if metadata.topics().iter().any(|t| t.name() == k.dlq_topic) {
                Ok(())
            } else {
                Err(format!(
                    "the dead-letter topic {} does not exist (or this principal may not describe it)",
                    k.dlq_topic
                ))
            }
        }
        Err(e) => {
            // Log lines and error events (with the cause) arrive through poll.
            let _ = consumer.poll(Duration::ZERO);
            let cause = consumer
                .context()
                .link
                .cause()
                .unwrap_or_else(|| e.to_string());
            Err(format!(
                "cannot reach the Kafka brokers {} within {} s (--connect-timeout): {}; check \
                 kafka.brokers, the security properties and the network path",
                k.brokers,
                timeout.as_secs(),
                k.redact(&cause)
            ))
        }
    }
}

/// One dead-letter record, copied out of the consumer's buffer.
pub(super) struct DlqRecord {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Option<Vec<u8>>,
    pub(super) headers: DeadLetterHeaders,
    /// The source record's own headers, replayed with it.
    pub(super) original_headers: OriginalHeaders,
}

impl DlqRecord {
    pub(super) fn from_message(m: &BorrowedMessage<'_>) -> Self {
        // Read as bytes: rdkafka's own accessor panics on a key that is not
        // UTF-8, and a source record's headers are the producer's.
        let all: Vec<(&[u8], Option<&[u8]>)> = m
            .headers()
            .map(|h| record_headers::each(h).collect())
            .unwrap_or_default();
        let headers = parse_headers(
            all.iter()
                .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, *v))),
        );
        DlqRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            original_headers: original_headers(&all),
        }
    }

    pub(super) fn reason(&self) -> &str {
        self.headers.reason.as_deref().unwrap_or(NO_REASON)
    }

    /// One line of the dry-run listing.
    pub(super) fn listing(&self, dlq_topic: &str, decision: &Decision) -> Option<String> {
        let what = match decision {
            Decision::Skip => return None,
            Decision::Replay { topic, .. } => format!("would replay to {topic}"),
            Decision::Refuse(r) => format!("refused ({r})"),
        };
        let key = self.key.as_deref().map_or_else(
            || "(none)".into(),
            |k| format!("{:?}", String::from_utf8_lossy(k)),
        );
        let replay_count = match &self.headers.replay_count {
            Ok(c) => c.to_string(),
            Err(raw) => format!("{raw:?}"),
        };
        Some(format!(
            "{dlq_topic}/{}/{}: {what}; reason={} replay_count={replay_count} key={key} detail={:?}",
            self.partition,
            self.offset,
            self.reason(),
            self.headers.detail.as_deref().unwrap_or("")
        ))
    }
}

pub(super) fn rebalanced() -> String {
    "the replay group rebalanced during the replay (another replay-dlq with the same group?); \
     run it again to resume"
        .into()
}

/// Consumer errors are mostly transient (librdkafka retries them); those that
/// cannot heal end the run.
pub(super) fn consumer_error(e: KafkaError, dlq_topic: &str) -> Result<(), String> {
    match &e {
        KafkaError::MessageConsumptionFatal(_) => Err(format!("consumer: {e}")),
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
        ) => Err(format!(
            "the dead-letter topic {dlq_topic} does not exist: {e}"
        )),
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::GroupAuthorizationFailed,
        ) => Err(format!("not authorized: {e}")),
        // Already logged by ReplayContext.
        _ => Ok(()),
    }
}
