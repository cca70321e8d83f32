//! The Kafka clients' librdkafka settings (ours, then the user's), and the
//! offline check that builds both clients without brokers.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::config::Config;

/// librdkafka (2.10 on) drops the brokers a metadata answer leaves out, so
/// while a cluster stops one broker after another a client may end up
/// knowing only the last, and after a restart wait for its re-bootstrap
/// from `bootstrap.servers`: 5 minutes by default (a dead-letter producer
/// stuck so held its partitions' commits for a minute in e2e_cluster_b).
const REBOOTSTRAP_MS: &str = "10000";

/// The librdkafka settings the consumer uses: ours, then the user's properties.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.settings.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("client.id", "clevertap-deleter")
        // Offsets are committed only by the pipeline, after deletion.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group must not skip deletions produced before it first ran.
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        // Bound librdkafka's prefetch so memory stays flat while paused.
        .set("queued.max.messages.kbytes", "8192")
        .set("queued.min.messages", "10000")
        // One fetch answer is held whole before it is queued: at the default
        // 50 MiB a real broker's answers cost 12 MiB of peak memory in the
        // benchmark, and the rate nothing (docs/PERFORMANCE.md).
        .set("fetch.max.bytes", "4194304")
        // When the prefetch bound is hit, librdkafka waits this long before
        // fetching again (default 1000 ms): with a bound this small that wait,
        // not the broker, would set the pace.
        .set("fetch.queue.backoff.ms", "20")
        .set("metadata.recovery.rebootstrap.trigger.ms", REBOOTSTRAP_MS);
    if let Some(id) = &k.group_instance_id {
        c.set("group.instance.id", id);
    }
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// The librdkafka settings of the dead-letter producer.
pub fn producer_config(config: &Config) -> ClientConfig {
    let k = &config.settings.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", "clevertap-deleter-dlq")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Its statistics tell readiness the cluster is back (see BrokerWatch).
        .set("statistics.interval.ms", "5000")
        .set("metadata.recovery.rebootstrap.trigger.ms", REBOOTSTRAP_MS);
    for (key, value) in &k.properties {
        if !is_consumer_only(key) {
            c.set(key, value);
        }
    }
    c
}

/// Collects what librdkafka says while a client is built offline, so
/// nothing reaches the log.
#[derive(Default)]
struct OfflineContext {
    warnings: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for OfflineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // Configuration warnings (CONFWARN) are worth showing; nothing else
        // can happen without brokers.
        use rdkafka::config::RDKafkaLogLevel as L;
        let serious = matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        );
        if serious && fac == "CONFWARN" {
            self.warnings
                .lock()
                .expect("warnings lock")
                .push(crate::ops::log_throttle::without_thread(message).to_string());
        }
    }

    fn error(&self, _error: rdkafka::error::KafkaError, _reason: &str) {}
}

impl rdkafka::consumer::ConsumerContext for OfflineContext {}

impl rdkafka::producer::ProducerContext for OfflineContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Builds the consumer and the dead-letter producer from the configuration
/// and drops them at once, without brokers (`bootstrap.servers` removed), so
/// nothing connects: librdkafka checks every property name and value, the
/// SASL mechanism and the TLS files as `run` would. Returns librdkafka's
/// configuration warnings. Errors name the property and never show a secret.
pub fn check_clients_offline(config: &Config) -> Result<Vec<String>, crate::config::ConfigError> {
    let kafka = &config.settings.kafka;
    let offline = |mut c: ClientConfig| {
        c.remove("bootstrap.servers").remove("metadata.broker.list");
        c
    };
    let consumer_context = OfflineContext::default();
    let consumer: rdkafka::consumer::BaseConsumer<OfflineContext> =
        offline(consumer_config(config))
            .create_with_context(consumer_context)
            .map_err(|e| kafka.client_error(&e))?;
    let producer: rdkafka::producer::BaseProducer<OfflineContext> =
        offline(producer_config(config))
            .create_with_context(OfflineContext::default())
            .map_err(|e| kafka.client_error(&e))?;
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::Producer;
    // Log lines come through the clients' queues: serve them.
    let _ = consumer.poll(Duration::ZERO);
    producer.poll(Duration::ZERO);
    let mut warnings: Vec<String> = Vec::new();
    for context in [consumer.context(), producer.context()] {
        for w in context.warnings.lock().expect("warnings lock").iter() {
            let w = format!("librdkafka: {}", kafka.redact(w));
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    drop(consumer);
    drop(producer);
    Ok(warnings)
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("group.")
        || key.starts_with("partition.assignment")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("auto.")
        || key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("max.poll")
        || key == "isolation.level"
        || key == "enable.partition.eof"
        || key == "check.crcs"
}
