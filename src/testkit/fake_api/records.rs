//! What the fake keeps of each call for tests to read: answered requests,
//! answers by status, and deletions by (account, kind, id).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::ids::IdKind;

/// One answered request, as seen by the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The `X-CleverTap-Account-Id` header as sent ("" if absent).
    pub account_id: String,
    pub status: u16,
    /// The id kind of the body, when it could be told.
    pub kind: Option<IdKind>,
    /// Number of ids in the body, when it could be told (else 0).
    pub ids: usize,
}

pub(super) struct Record {
    // Arc so the benchmark's millions of records do not each own a String.
    pub(super) account: Arc<str>,
    pub(super) status: u16,
    pub(super) kind: Option<IdKind>,
    pub(super) ids: usize,
}

#[derive(Default)]
pub(super) struct Log {
    pub(super) requests: Vec<Record>,
    pub(super) statuses: BTreeMap<u16, u64>,
}

/// (account, kind, id); the account is shared so each key costs one String.
pub(super) type DeletionKey = (Arc<str>, IdKind, String);
