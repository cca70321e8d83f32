//! An in-process fake of CleverTap's "Delete User Profile" API
//! (`POST /1/delete/profiles.json`).
//!
//! It enforces the real contract strictly (so tests catch a daemon that would be
//! refused in production), records every deletion and every answer, and can
//! inject the faults the daemon must survive: 5xx, 429, replies lost after the
//! deletion happened, hangs, and 2xx answers that do not confirm the deletion
//! (empty, 204, HTML, `"status":"partial"`, success listing unprocessed ids). Used by the `demo` command, integration tests
//! and the benchmark, so the hot path only takes short, uncontended locks.
//!
//! Parts: `contract` (what a valid request is), `decide` (the answer to one
//! request), `faults` (injected faults, odd answers), `reply` (answer to HTTP),
//! `state` (what clones share), `records` (what is kept for tests), `server`
//! (start, the handle, the HTTP handler).

mod contract;
mod decide;
mod faults;
mod records;
mod reply;
mod server;
mod state;

pub use contract::{DELETE_PATH, MAX_IDS_PER_REQUEST};
pub use faults::{Faults, OddAnswer};
pub use records::RequestRecord;
pub use server::{FakeAccount, FakeApiConfig, FakeCleverTap};

// Names the unit tests (`tests.rs`, `use super::*`) take from here.
#[cfg(test)]
use {
    crate::domain::ids::IdKind,
    contract::parse_body,
    serde_json::Value,
    std::collections::{BTreeMap, HashSet},
    std::time::Duration,
};

#[cfg(test)]
mod tests;
