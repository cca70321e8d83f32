//! Dead-letter records as the daemon writes them, for the replay tests (on
//! the mock cluster and on Apache Kafka).

use rdkafka::message::{Header, OwnedHeaders};

/// A dead-letter record as the daemon writes it (plus `replay_count` when it
/// was replayed before).
pub struct DeadLetter {
    pub partition: i32,
    pub key: Option<&'static str>,
    pub payload: Option<&'static str>,
    pub reason: &'static str,
    /// false: no `source_topic` header.
    pub with_source: bool,
    pub replay_count: Option<&'static str>,
}

pub fn dl(
    key: &'static str,
    reason: &'static str,
    replay_count: Option<&'static str>,
) -> DeadLetter {
    DeadLetter {
        partition: 0,
        key: Some(key),
        payload: Some("payload"),
        reason,
        with_source: true,
        replay_count,
    }
}

impl DeadLetter {
    /// The daemon's headers for this record, read from `source_topic` at
    /// `offset`.
    pub fn headers(&self, source_topic: &str, offset: usize) -> OwnedHeaders {
        let offset = offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(self.reason),
            })
            .insert(Header {
                key: "detail",
                value: Some("what was wrong"),
            })
            .insert(Header {
                key: "source_partition",
                value: Some("1"),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "dead_lettered_at_ms",
                value: Some("1767225600000"),
            });
        if self.with_source {
            headers = headers.insert(Header {
                key: "source_topic",
                value: Some(source_topic),
            });
        }
        if let Some(count) = self.replay_count {
            headers = headers.insert(Header {
                key: "replay_count",
                value: Some(count),
            });
        }
        headers
    }
}
