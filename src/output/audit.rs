//! Audit records: one per finished deletion request, written to
//! `kafka.audit_topic` and acknowledged by the broker before the offsets it
//! covers are committed, so the trail has no gaps. The evidence a
//! data-protection officer asks for: what was deleted, where, when, on whose
//! behalf (the source records), after how many attempts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::domain::event::SourceRef;
use crate::domain::ids::{IdKind, RegionName};
pub use crate::domain::outcome::AuditStatus;
use crate::output::produce::{KafkaWriter, Unwritable};

pub use crate::config::IdDisclosure;

impl IdDisclosure {
    fn show(&self, id: &str) -> String {
        match self {
            IdDisclosure::Plain => id.to_string(),
            IdDisclosure::SaltedSha256(salt) => salted_sha256(salt.expose(), id),
        }
    }

    /// A message from CleverTap with every quoted id of `ids` replaced by its
    /// hash (hashed ids). If an id still shows in another spelling (case,
    /// JSON escapes), the whole message is withheld.
    fn redact(&self, message: &str, ids: &[Arc<str>]) -> String {
        let IdDisclosure::SaltedSha256(_) = self else {
            return message.to_string();
        };
        let mut out = message.to_string();
        for id in ids.iter().filter(|id| !id.is_empty()) {
            out = out.replace(&**id, &self.show(id));
        }
        let lower = out.to_lowercase();
        let leaks = ids.iter().filter(|id| !id.is_empty()).any(|id| {
            let escaped = serde_json::to_string(&**id).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_lowercase();
            lower.contains(&id.to_lowercase()) || lower.contains(&escaped)
        });
        if leaks {
            "(withheld: it quoted an id)".to_string()
        } else {
            out
        }
    }
}

pub fn salted_sha256(salt: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(id.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The CloudEvent the record carried (`event.format = "cloudevents"`):
    /// its `id` and `source` attributes, as the producer wrote them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevent_source: Option<String>,
}

/// One audit record, serialized as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub region: String,
    pub account_id: String,
    pub kind: IdKind,
    /// Plain ids, or salted SHA-256 hashes when `ids_hashed`.
    pub ids: Vec<String>,
    pub ids_hashed: bool,
    pub status: AuditStatus,
    /// CleverTap's message for a rejection. With hashed ids, an id it quotes
    /// is replaced by its hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub attempts: u32,
    pub completed_at_ms: u64,
    /// The source records whose deletion this request carried out.
    pub sources: Vec<AuditSource>,
    /// When the sources did not fit one record: this record's number (from
    /// 1) and how many records share the same ids and status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

impl Serialize for IdKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

pub struct AuditInput<'a> {
    pub region: &'a RegionName,
    pub account_id: &'a str,
    pub kind: IdKind,
    pub ids: &'a [Arc<str>],
    pub status: AuditStatus,
    pub message: Option<&'a str>,
    pub attempts: u32,
    pub sources: Vec<SourceRef>,
}

/// Bytes of sources per record: with the ids and the rest, a record stays
/// far below the producer's 1,000,000-byte default, whatever the topic names.
pub const SOURCES_BUDGET: usize = 256 * 1024;

/// A source's JSON size, near enough: `{"topic":"…","partition":N,"offset":N},`
/// and the CloudEvent's id and source, escaped.
fn source_size(source: &SourceRef) -> usize {
    let cloud_event = source
        .cloud_event
        .as_ref()
        .map_or(0, |ce| json_len(&ce.id) + json_len(&ce.source) + 48);
    json_len(&source.partition.topic) + 64 + cloud_event
}

/// Bytes of `text` as a JSON string's content (escapes included).
fn json_len(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// The audit record(s) for one finished request: more than one when its
/// sources exceed [`SOURCES_BUDGET`], each with every id and a share of the
/// sources, numbered with `part` of `parts`.
pub fn build_records(
    input: AuditInput<'_>,
    disclosure: &IdDisclosure,
    now: SystemTime,
) -> Vec<AuditRecord> {
    let mut chunks: Vec<Vec<SourceRef>> = vec![Vec::new()];
    let mut used = 0;
    for source in input.sources {
        let size = source_size(&source);
        if used + size > SOURCES_BUDGET && !chunks.last().expect("one chunk").is_empty() {
            chunks.push(Vec::new());
            used = 0;
        }
        used += size;
        chunks.last_mut().expect("one chunk").push(source);
    }
    let parts = chunks.len() as u32;
    let ids: Vec<String> = input.ids.iter().map(|id| disclosure.show(id)).collect();
    let message = input.message.map(|m| disclosure.redact(m, input.ids));
    let completed_at_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, sources)| AuditRecord {
            region: input.region.to_string(),
            account_id: input.account_id.to_string(),
            kind: input.kind,
            ids: ids.clone(),
            ids_hashed: matches!(disclosure, IdDisclosure::SaltedSha256(_)),
            status: input.status,
            message: message.clone(),
            attempts: input.attempts,
            completed_at_ms,
            sources: sources
                .into_iter()
                .map(|s| AuditSource {
                    topic: s.partition.topic.to_string(),
                    partition: s.partition.partition,
                    offset: s.offset,
                    cloudevent_id: s.cloud_event.as_ref().map(|ce| ce.id.clone()),
                    cloudevent_source: s.cloud_event.as_ref().map(|ce| ce.source.clone()),
                })
                .collect(),
            part: (parts > 1).then_some(i as u32 + 1),
            parts: (parts > 1).then_some(parts),
        })
        .collect()
}

/// One record; see [`build_records`] for requests with many sources.
pub fn build_record(
    input: AuditInput<'_>,
    disclosure: &IdDisclosure,
    now: SystemTime,
) -> AuditRecord {
    let mut records = build_records(input, disclosure, now);
    let mut first = records.swap_remove(0);
    for more in records {
        first.sources.extend(more.sources);
    }
    first.part = None;
    first.parts = None;
    first
}

#[derive(Clone)]
pub struct AuditWriter {
    writer: KafkaWriter,
    topic: String,
    pub disclosure: IdDisclosure,
}

impl AuditWriter {
    pub fn new(writer: KafkaWriter, topic: String, disclosure: IdDisclosure) -> Self {
        AuditWriter {
            writer,
            topic,
            disclosure,
        }
    }

    /// Returns once the broker acknowledged the record (retries until then),
    /// or false when `cancel` fired first.
    pub async fn write(&self, record: &AuditRecord, cancel: &CancellationToken) -> bool {
        let payload = serde_json::to_vec(record).expect("audit records serialize");
        let headers = OwnedHeaders::new().insert(Header {
            key: "status",
            value: Some(record.status.as_str()),
        });
        loop {
            match self
                .writer
                .send(
                    &self.topic,
                    Some(record.region.as_bytes()),
                    Some(&payload),
                    &headers,
                    "audit record",
                    cancel,
                )
                .await
            {
                Ok(()) => return true,
                Err(Unwritable::Cancelled) => return false,
                // Records are split well below the producer's default limit;
                // a topic configured smaller needs an operator. Evidence is
                // never dropped: retry slowly, visibly.
                Err(Unwritable::Refused(failure)) => {
                    tracing::error!(
                        topic = %self.topic,
                        reason = failure.as_str(),
                        bytes = payload.len(),
                        "the audit topic refuses a record; raise its max.message.bytes"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                        () = cancel.cancelled() => return false,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::CloudEventRef;
    use crate::domain::offsets::PartitionId;
    use crate::domain::secret::Secret;

    fn source(topic: &str, partition: i32, offset: i64) -> SourceRef {
        SourceRef {
            partition: PartitionId::new(topic, partition),
            offset,
            cloud_event: None,
        }
    }

    fn input<'a>(ids: &'a [Arc<str>], region: &'a RegionName) -> AuditInput<'a> {
        AuditInput {
            region,
            account_id: "ACC",
            kind: IdKind::Guid,
            ids,
            status: AuditStatus::Deleted,
            message: None,
            attempts: 2,
            sources: vec![source("t", 3, 42)],
        }
    }

    #[test]
    fn plain_record() {
        let ids: Vec<Arc<str>> = vec![Arc::from("g1"), Arc::from("g2")];
        let region = RegionName::new("eu1");
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let r = build_record(input(&ids, &region), &IdDisclosure::Plain, at);
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "region": "eu1", "account_id": "ACC", "kind": "guid", "ids": ["g1", "g2"],
                "ids_hashed": false, "status": "deleted", "attempts": 2,
                "completed_at_ms": 1_700_000_000_123u64,
                "sources": [{"topic": "t", "partition": 3, "offset": 42}]
            })
        );
    }

    #[test]
    fn sources_name_their_cloudevent() {
        let ids: Vec<Arc<str>> = vec![Arc::from("g1")];
        let region = RegionName::new("eu1");
        let mut i = input(&ids, &region);
        let mut with_ce = source("t", 3, 43);
        with_ce.cloud_event = Some(Arc::new(CloudEventRef {
            source: "/accounts".into(),
            id: "evt-\"7\"".into(),
        }));
        i.sources.push(with_ce);
        // Hashed ids: the CloudEvent's attributes are not ids and stay readable.
        let hashed = IdDisclosure::SaltedSha256(Secret::new("pepper"));
        let r = build_record(i, &hashed, SystemTime::now());
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["sources"],
            serde_json::json!([
                {"topic": "t", "partition": 3, "offset": 42},
                {"topic": "t", "partition": 3, "offset": 43,
                 "cloudevent_id": "evt-\"7\"", "cloudevent_source": "/accounts"}
            ])
        );
    }

    #[test]
    fn long_cloudevent_attributes_count_towards_the_split() {
        let ids: Vec<Arc<str>> = vec![Arc::from("g1")];
        let region = RegionName::new("eu1");
        let mut i = input(&ids, &region);
        // Attributes of control characters: six bytes each once escaped.
        i.sources = (0..400)
            .map(|o| {
                let mut s = source("t", 0, o);
                s.cloud_event = Some(Arc::new(CloudEventRef {
                    source: "\u{1}".repeat(1024),
                    id: format!("{o}{}", "\u{2}".repeat(1000)),
                }));
                s
            })
            .collect();
        let records = build_records(i, &IdDisclosure::Plain, SystemTime::now());
        assert!(records.len() > 1);
        for r in &records {
            let bytes = serde_json::to_vec(r).unwrap().len();
            assert!(bytes <= SOURCES_BUDGET + 16 * 1024, "{bytes} bytes");
        }
    }

    #[test]
    fn hashed_ids_are_salted_sha256() {
        let ids: Vec<Arc<str>> = vec![Arc::from("person@example.com")];
        let region = RegionName::new("eu1");
        let r = build_record(
            input(&ids, &region),
            &IdDisclosure::SaltedSha256(Secret::new("pepper")),
            SystemTime::now(),
        );
        assert!(r.ids_hashed);
        assert_eq!(r.ids[0].len(), 64);
        assert_ne!(r.ids[0], salted_sha256("other-salt", "person@example.com"));
        // Known vector: sha256("pepper" + "abc"), computed independently.
        assert_eq!(
            salted_sha256("pepper", "abc"),
            "fadf7b97406e1eaa259a82e26e6839e564c37c256876e060e17838c86b7275ef"
        );
        assert!(!serde_json::to_string(&r).unwrap().contains("person@"));
    }

    #[test]
    fn hashed_records_do_not_quote_the_id_in_the_message() {
        let ids: Vec<Arc<str>> = vec![Arc::from("Person@Example.com")];
        let region = RegionName::new("eu1");
        let hashed = IdDisclosure::SaltedSha256(Secret::new("pepper-pepper-16"));
        let mut i = input(&ids, &region);
        i.status = AuditStatus::Rejected;
        i.message = Some("Invalid identity Person@Example.com for this account");
        let r = build_record(i, &hashed, SystemTime::now());
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.to_lowercase().contains("person@example.com"),
            "{text}"
        );
        let hash = salted_sha256("pepper-pepper-16", "Person@Example.com");
        assert_eq!(
            r.message.as_deref(),
            Some(format!("Invalid identity {hash} for this account").as_str())
        );
        // Quoted in another spelling: the message is withheld.
        let mut i = input(&ids, &region);
        i.message = Some("no such profile person@example.com");
        let r = build_record(i, &hashed, SystemTime::now());
        assert!(!serde_json::to_string(&r)
            .unwrap()
            .to_lowercase()
            .contains("person@example.com"));
        // Plain ids keep the message as it was.
        let mut i = input(&ids, &region);
        i.message = Some("no such profile Person@Example.com");
        let r = build_record(i, &IdDisclosure::Plain, SystemTime::now());
        assert_eq!(
            r.message.as_deref(),
            Some("no such profile Person@Example.com")
        );
    }

    #[test]
    fn many_sources_are_split_into_records_the_producer_can_write() {
        let ids: Vec<Arc<str>> = (0..100).map(|n| Arc::from(format!("id-{n:040}"))).collect();
        let region = RegionName::new("eu1");
        let topic = "t".repeat(200);
        let mut i = input(&ids, &region);
        i.sources = (0..20_000)
            .map(|o| source(&topic, (o % 12) as i32, o))
            .collect();
        let records = build_records(i, &IdDisclosure::Plain, SystemTime::now());
        assert!(records.len() > 1);
        let mut offsets = Vec::new();
        for (n, r) in records.iter().enumerate() {
            let bytes = serde_json::to_vec(r).unwrap().len();
            assert!(bytes < 400_000, "record {n} is {bytes} bytes");
            assert_eq!(r.part, Some(n as u32 + 1));
            assert_eq!(r.parts, Some(records.len() as u32));
            assert_eq!(r.ids.len(), 100);
            offsets.extend(r.sources.iter().map(|s| s.offset));
        }
        assert_eq!(
            offsets,
            (0..20_000).collect::<Vec<i64>>(),
            "every source once"
        );
    }
}
