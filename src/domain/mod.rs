//! The pure core: ids, batches of at most 100 ids of one kind, deduplication, offsets, the ledger that ties events to deletions, and the outcome types (a leaf), the replica share of an account budget. No I/O.

pub mod backoff;
pub mod batch;
pub mod dedup;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod offsets;
pub mod outcome;
pub mod revokes;
pub mod secret;
pub mod share;
