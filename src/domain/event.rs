//! What the decoder makes of one event, and what the ledger takes in.

use std::sync::Arc;

use crate::domain::ids::{IdKind, RegionName};
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

/// What one event asks for: ids of one region, each (kind, id) at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRequest {
    pub region: RegionName,
    pub ids: Vec<(IdKind, Arc<str>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Delete(DeletionRequest),
    /// Not an event this daemon handles (its type is not accepted).
    Skip,
    DeadLetter(Rejection),
}
