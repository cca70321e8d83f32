//! Checks across sections: the audit topic against the other topics, and the
//! warnings on the rebalance drain and on dead-letter sizes.

use super::audit::{check_salt, IdDisclosure};
use super::error::ConfigError;
use super::secret_files::read_secret;
use super::settings::Settings;

pub(super) fn resolve_audit(
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<Option<(String, IdDisclosure)>, ConfigError> {
    let a = &settings.audit;
    let topic = match settings.kafka.audit_topic.as_deref().map(str::trim) {
        None | Some("") => {
            return Ok(None);
        }
        Some(t) => t.to_string(),
    };
    if settings.kafka.topics.contains(&topic) || topic == settings.kafka.dlq_topic {
        return Err(ConfigError::new(
            "kafka.audit_topic",
            "must differ from kafka.topics and kafka.dlq_topic",
        ));
    }
    if !a.hash_ids {
        return Ok(Some((topic, IdDisclosure::Plain)));
    }
    let salt = read_secret(
        "audit",
        "salt",
        a.salt.as_ref(),
        a.salt_file.as_deref(),
        warnings,
    )?;
    check_salt(&salt)?;
    Ok(Some((topic, IdDisclosure::SaltedSha256(salt))))
}

/// Bytes a dead letter carries besides the payload (key and headers), at most,
/// near enough.
const DEAD_LETTER_OVERHEAD: usize = 4 * 1024;

/// Events up to `event.max_message_bytes` are accepted and, when bad,
/// dead-lettered whole; the producer refuses records above its
/// `message.max.bytes` (librdkafka's default 1,000,000), so those dead
/// letters go out truncated. Not an error: said once, at start.
pub(super) fn dead_letter_size_warning(settings: &Settings) -> Option<String> {
    let producer_max: usize = settings
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000);
    let event_max = settings.event.max_message_bytes;
    (event_max + DEAD_LETTER_OVERHEAD > producer_max).then(|| {
        format!(
            "event.max_message_bytes = {event_max} is more than the dead-letter producer writes              (message.max.bytes = {producer_max}, less about {DEAD_LETTER_OVERHEAD} bytes of headers):              bad events that large are dead-lettered as a truncated copy (16 KiB, with the original's              size and SHA-256); raise kafka.properties message.max.bytes (and the topic's              max.message.bytes) to keep them whole"
        )
    })
}

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// A rebalance drain that outlasts the session timeout.
pub(super) fn drain_warning(settings: &Settings) -> Option<String> {
    let session = match settings.kafka.properties.get("session.timeout.ms") {
        Some(v) => v.trim().parse::<u64>().ok()?,
        None => DEFAULT_SESSION_TIMEOUT_MS,
    };
    let drain = settings.pipeline.rebalance_drain_timeout_ms;
    (drain >= session).then(|| {
        format!(
            "pipeline.rebalance_drain_timeout_ms ({drain}) is not below session.timeout.ms ({session}): \
             a revoke that waits that long can cost this member its place in the group; keep the drain below the session timeout"
        )
    })
}
