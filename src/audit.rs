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

use crate::ids::{IdKind, RegionName};
use crate::offsets::PartitionId;
use crate::produce::{send_until_acked, RecordProducer};
use crate::secret::Secret;

/// How ids appear in audit records.
#[derive(Debug, Clone)]
pub enum IdDisclosure {
    Plain,
    /// SHA-256 of salt followed by the id, hex: provable for a known id,
    /// unreadable without it.
    SaltedSha256(Secret),
}

impl IdDisclosure {
    fn show(&self, id: &str) -> String {
        match self {
            IdDisclosure::Plain => id.to_string(),
            IdDisclosure::SaltedSha256(salt) => salted_sha256(salt.expose(), id),
        }
    }
}

pub fn salted_sha256(salt: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(id.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    /// CleverTap answered success: the profiles are marked for deletion.
    Deleted,
    /// CleverTap refused the id (400); its events went to the dead-letter topic.
    Rejected,
    /// CleverTap's 2xx answers for the id never said success; its events
    /// went to the dead-letter topic (reason `unconfirmed`).
    Unconfirmed,
}

impl AuditStatus {
    /// The `status` header and the `status` label of `audit_records_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Deleted => "deleted",
            AuditStatus::Rejected => "rejected",
            AuditStatus::Unconfirmed => "unconfirmed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
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
    /// CleverTap's message for a rejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub attempts: u32,
    pub completed_at_ms: u64,
    /// The source records whose deletion this request carried out.
    pub sources: Vec<AuditSource>,
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
    pub sources: Vec<(PartitionId, i64)>,
}

pub fn build_record(
    input: AuditInput<'_>,
    disclosure: &IdDisclosure,
    now: SystemTime,
) -> AuditRecord {
    AuditRecord {
        region: input.region.to_string(),
        account_id: input.account_id.to_string(),
        kind: input.kind,
        ids: input.ids.iter().map(|id| disclosure.show(id)).collect(),
        ids_hashed: matches!(disclosure, IdDisclosure::SaltedSha256(_)),
        status: input.status,
        message: input.message.map(str::to_string),
        attempts: input.attempts,
        completed_at_ms: now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        sources: input
            .sources
            .into_iter()
            .map(|(p, offset)| AuditSource {
                topic: p.topic.to_string(),
                partition: p.partition,
                offset,
            })
            .collect(),
    }
}

#[derive(Clone)]
pub struct AuditWriter {
    producer: RecordProducer,
    topic: String,
    pub disclosure: IdDisclosure,
}

impl AuditWriter {
    pub fn new(producer: RecordProducer, topic: String, disclosure: IdDisclosure) -> Self {
        AuditWriter {
            producer,
            topic,
            disclosure,
        }
    }

    /// Returns once the broker acknowledged the record (retries until then).
    pub async fn write(&self, record: &AuditRecord) {
        let payload = serde_json::to_vec(record).expect("audit records serialize");
        let headers = OwnedHeaders::new().insert(Header {
            key: "status",
            value: Some(record.status.as_str()),
        });
        send_until_acked(
            &self.producer,
            &self.topic,
            Some(record.region.as_bytes()),
            Some(&payload),
            &headers,
            "audit record",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(ids: &'a [Arc<str>], region: &'a RegionName) -> AuditInput<'a> {
        AuditInput {
            region,
            account_id: "ACC",
            kind: IdKind::Guid,
            ids,
            status: AuditStatus::Deleted,
            message: None,
            attempts: 2,
            sources: vec![(PartitionId::new("t", 3), 42)],
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
}
