//! Secrets read from `KEY` or `KEY_file`: trimmed, never empty, with a warning
//! when the file is readable by others.

use std::path::Path;

use crate::domain::secret::Secret;

use super::error::{env_var_for, ConfigError};

/// A secret from `KEY` or `KEY_file` (exactly one), trimmed, not empty.
pub(super) fn read_secret(
    table: &str,
    key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<Secret, ConfigError> {
    let name = |suffix: &str| format!("{table}.{key}{suffix}");
    let secret = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                name("_file"),
                format!("set either {key} or {key}_file, not both"),
            ))
        }
        (Some(s), None) => s.clone(),
        (None, Some(path)) => read_secret_file(&name("_file"), path, warnings)?,
        (None, None) => {
            return Err(ConfigError::new(
                name(""),
                format!(
                "is missing: set {key} or {key}_file in [{table}], or the environment variable {}",
                env_var_for(&name(""))
            ),
            ))
        }
    };
    if secret.expose().is_empty() {
        return Err(ConfigError::new(name(""), "is empty"));
    }
    Ok(secret)
}

/// Reads a secret file: trimmed, not empty, with a warning when others may read it.
pub(super) fn read_secret_file(
    key: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(key, format!("cannot read {}: {}", path.display(), e.kind()))
    })?;
    let secret = Secret::new(text.trim());
    if secret.expose().is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    if let Some(mode) = loose_mode(path) {
        warnings.push(format!(
            "{key}: {} is accessible to group or others (mode {mode:04o}); \
             make it readable by the daemon's user only (chmod 600, or defaultMode 0400 for a Kubernetes Secret volume)",
            path.display()
        ));
    }
    Ok(secret)
}

/// The permission bits of `path` when group or others have any access.
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_path: &Path) -> Option<u32> {
    None
}
