//! What the decoder makes of one event, and what the ledger takes in.

use std::sync::Arc;

use crate::domain::ids::{IdKind, RegionName};
use crate::domain::offsets::PartitionId;
use crate::domain::outcome::DeadLetterReason;

/// A dead-letter verdict. Details made by the decoder never hold an id (ids
/// are personal data); they name the field and the problem. For `ApiRejected`
/// the detail is CleverTap's message, which may repeat the id, like the
/// payload beside it in the dead-letter record; it is never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// A CloudEvent's identity: its `source` and `id` attributes, unique
/// together (CloudEvents 1.0, "id"). Audit records name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloudEventRef {
    pub source: String,
    pub id: String,
}

/// What one event asks for: ids of one region, each (kind, id) at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRequest {
    pub region: RegionName,
    pub ids: Vec<(IdKind, Arc<str>)>,
    /// The CloudEvent it came in (`event.format = "cloudevents"`).
    pub cloud_event: Option<Arc<CloudEventRef>>,
}

/// A record's Kafka headers as read, in order: key and value (`None`: a
/// null value). Carried to its dead letter: a binary-mode CloudEvent's
/// attributes are headers.
pub type RecordHeaders = Vec<(Box<[u8]>, Option<Box<[u8]>>)>;

/// A source record an audit record covers: where it was read, and the
/// CloudEvent it carried (`event.format = "cloudevents"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceRef {
    pub partition: PartitionId,
    pub offset: i64,
    pub cloud_event: Option<Arc<CloudEventRef>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Delete(DeletionRequest),
    /// Not an event this daemon handles (its type is not accepted).
    Skip,
    DeadLetter(Rejection),
}
