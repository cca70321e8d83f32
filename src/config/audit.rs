//! `[audit]`: whether audit records carry the ids or salted hashes of them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::secret::Secret;

use super::error::ConfigError;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Write salted SHA-256 hashes of the ids instead of the ids.
    pub hash_ids: bool,
    pub salt: Option<Secret>,
    pub salt_file: Option<PathBuf>,
}

/// How ids appear in audit records (`audit.hash_ids`).
#[derive(Debug, Clone)]
pub enum IdDisclosure {
    Plain,
    /// SHA-256 of salt followed by the id, hex: provable for a known id,
    /// unreadable without it.
    SaltedSha256(Secret),
}

/// A salt must be long enough that the hashes cannot be recomputed.
pub(super) fn check_salt(salt: &Secret) -> Result<(), ConfigError> {
    if salt.expose().len() < 16 {
        return Err(ConfigError::new(
            "audit.salt",
            "must be at least 16 characters: a short salt lets anyone recompute the hashes",
        ));
    }
    Ok(())
}
