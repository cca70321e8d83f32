//! `check-config --online`: what can be checked against the real systems
//! without changing anything. Kafka: the brokers answer with the configured
//! security, the source, dead-letter and audit topics exist, the group's
//! committed offsets can be read. CleverTap: each region's endpoint answers
//! over TLS. Every check is one line, OK or FAIL with what to do.
//!
//! The passcodes are not tested: CleverTap's Delete User Profile API has no
//! read-only call, and any other call would need permissions a delete-only
//! passcode may lack. No request carries a passcode.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    /// Not checked, with the reason in the detail.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    /// What was checked, e.g. `topic user-deleted`.
    pub subject: String,
    /// What was found; for a failure, also how to fix it.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Status::Ok => "OK  ",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        write!(f, "{status} {}: {}", self.subject, self.detail)
    }
}

fn check(status: Status, subject: impl Into<String>, detail: impl Into<String>) -> Check {
    Check {
        status,
        subject: subject.into(),
        detail: detail.into(),
    }
}

/// Remembers the first connection problem librdkafka reports (refused,
/// DNS, TLS, SASL), which says more than "timed out"; logs nothing.
#[derive(Default)]
struct Capture {
    cause: Mutex<Option<String>>,
}

impl Capture {
    fn remember(&self, text: &str) {
        let mut cause = self.cause.lock().expect("cause lock");
        if cause.is_none() {
            *cause = Some(text.to_string());
        }
    }
}

impl ClientContext for Capture {
    // librdkafka reports a failed connection (refused, DNS, TLS, SASL) as a
    // FAIL log line from its broker thread, at once; error events would wait
    // for a poll.
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" || fac == "SASL" || fac == "SSL" {
            self.remember(crate::ops::log_throttle::without_thread(message));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        self.remember(if reason.is_empty() {
            "unknown error"
        } else {
            reason
        });
    }
}

impl ConsumerContext for Capture {}

/// Runs every check; each waits at most `timeout`.
pub fn run(config: &Config, timeout: Duration) -> Vec<Check> {
    let mut checks = kafka_checks(config, timeout);
    checks.extend(clevertap_checks(config, timeout));
    checks
}

fn kafka_checks(config: &Config, timeout: Duration) -> Vec<Check> {
    let k = &config.settings.kafka;
    let consumer: BaseConsumer<Capture> = match crate::app::pipeline::consumer_config(config)
        .create_with_context(Capture::default())
    {
        Ok(c) => c,
        Err(e) => {
            return vec![check(
                Status::Fail,
                "kafka client",
                k.client_error(&e).to_string(),
            )]
        }
    };
    let protocol = k
        .properties
        .get("security.protocol")
        .map(String::as_str)
        .unwrap_or("plaintext");
    let metadata = match consumer.fetch_metadata(None, timeout) {
        Ok(m) => m,
        Err(e) => {
            // Serves the queued error events, if no log line said more.
            let _ = consumer.poll(Duration::ZERO);
            let cause = consumer
                .context()
                .cause
                .lock()
                .expect("cause lock")
                .clone()
                .unwrap_or_else(|| e.to_string());
            return vec![
                check(
                    Status::Fail,
                    "kafka brokers",
                    format!(
                        "no answer from {} ({protocol}) within {} s: {}; check kafka.brokers, \
                         security.protocol, the sasl.*/ssl.* properties and the network path",
                        k.brokers,
                        timeout.as_secs_f64(),
                        k.redact(&cause)
                    ),
                ),
                check(
                    Status::Skip,
                    "kafka topics and group",
                    "not checked: the brokers did not answer",
                ),
            ];
        }
    };
    let mut checks = vec![check(
        Status::Ok,
        "kafka brokers",
        format!(
            "{} answered ({protocol}), {} broker(s) in the cluster",
            k.brokers,
            metadata.brokers().len()
        ),
    )];
    let mut topics: Vec<(&str, &str)> = k
        .topics
        .iter()
        .map(|t| (t.as_str(), "kafka.topics"))
        .collect();
    topics.push((k.dlq_topic.as_str(), "kafka.dlq_topic"));
    if let Some((audit, _)) = &config.audit {
        topics.push((audit.as_str(), "kafka.audit_topic"));
    }
    for (topic, key) in topics {
        checks.push(topic_check(&metadata, topic, key, &k.brokers));
    }
    checks.push(group_check(&consumer, &metadata, config, timeout));
    checks
}

fn topic_check(metadata: &Metadata, topic: &str, key: &str, brokers: &str) -> Check {
    let subject = format!("topic {topic}");
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => check(
            Status::Ok,
            subject,
            format!("exists, {} partition(s) ({key})", t.partitions().len()),
        ),
        Some(t) if t.error().is_some() => {
            let code: RDKafkaErrorCode = t.error().expect("checked").into();
            check(
                Status::Fail,
                subject,
                format!(
                    "the brokers answer {code} for it ({key}); if it is an authorization error, \
                     grant this principal Describe, Read/Write on the topic"
                ),
            )
        }
        _ => check(
            Status::Fail,
            subject,
            format!(
                "does not exist, or this principal may not describe it ({key}); create it \
                 (kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic}) or fix {key}"
            ),
        ),
    }
}

fn group_check(
    consumer: &BaseConsumer<Capture>,
    metadata: &Metadata,
    config: &Config,
    timeout: Duration,
) -> Check {
    let group = &config.settings.kafka.group_id;
    let subject = format!("group {group}");
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        if config.settings.kafka.topics.iter().any(|s| s == t.name()) {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let partitions = tpl.count();
    if partitions == 0 {
        return check(
            Status::Skip,
            subject,
            "not checked: no source topic exists to read its offsets for",
        );
    }
    match consumer.committed_offsets(tpl, timeout) {
        Ok(committed) => {
            let with_offset = committed
                .elements()
                .iter()
                .filter(|e| matches!(e.offset(), Offset::Offset(_)))
                .count();
            check(
                Status::Ok,
                subject,
                format!(
                    "committed offsets readable; {with_offset} of {partitions} partition(s) have one \
                     (a new group starts at the earliest offset)"
                ),
            )
        }
        Err(e) => check(
            Status::Fail,
            subject,
            format!(
                "cannot read its committed offsets: {}; grant this principal Describe and Read on the group",
                config.settings.kafka.redact(&e.to_string())
            ),
        ),
    }
}

fn clevertap_checks(config: &Config, timeout: Duration) -> Vec<Check> {
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(config.extra_roots.clone())
        .user_agent(concat!("clevertap-deleter/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return vec![check(
                Status::Fail,
                "https client",
                format!(
                    "cannot be built: {}; check the system CA store and api.ca_file",
                    crate::clevertap::api::error_chain(&e)
                ),
            )]
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return vec![check(Status::Fail, "runtime", e.to_string())],
    };
    runtime.block_on(async {
        let mut checks = Vec::new();
        for region in &config.regions {
            let subject = format!("region {}", region.name);
            // The base URL, without credentials: only DNS, TCP, TLS and HTTP.
            let url = format!("{}/", region.endpoint);
            let line = match client.get(&url).send().await {
                Ok(response) => check(
                    Status::Ok,
                    subject,
                    format!(
                        "{} answers (HTTP {} to GET /, no credentials sent); the passcode is not \
                         checked: CleverTap offers no read-only call to test it with",
                        region.endpoint,
                        response.status().as_u16()
                    ),
                ),
                Err(e) => check(
                    Status::Fail,
                    subject,
                    format!(
                        "{} does not answer: {}; check regions.{}.endpoint, DNS, the egress \
                         firewall or proxy, and api.ca_file for a TLS-inspecting proxy",
                        region.endpoint,
                        crate::clevertap::api::error_chain(&e.without_url()),
                        region.name
                    ),
                ),
            };
            checks.push(line);
        }
        checks
    })
}
