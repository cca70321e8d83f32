//! The identifiers CleverTap deletes by, and the region (account) they live in.

use std::fmt;
use std::sync::Arc;

/// Which body key a deletion uses. CleverTap refuses a request that carries both,
/// so every batch holds exactly one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// The customer's own user id (`identity` in the request body).
    Identity,
    /// CleverTap's own id, also called objectId (`guid` in the request body).
    Guid,
}

impl IdKind {
    pub const ALL: [IdKind; 2] = [IdKind::Identity, IdKind::Guid];

    /// The JSON key in the request body, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Identity => "identity",
            IdKind::Guid => "guid",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configured region (or tenant) name, the key of a `[regions.NAME]` table.
/// Cheap to clone: it is carried by every pending deletion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionName(Arc<str>);

impl RegionName {
    pub fn new(name: &str) -> Self {
        RegionName(Arc::from(name.to_ascii_lowercase().as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
