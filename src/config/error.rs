//! The configuration error, and the names errors give: the key, and the
//! environment variable that sets it.

/// Environment variables with this prefix (then `__` between levels) override the file.
pub const ENV_PREFIX: &str = "CLEVERTAP_DELETER";

/// A configuration problem, always tied to the key that causes it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(super) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `CLEVERTAP_DELETER` plus the `__` that starts a key path.
pub(super) fn env_key_prefix() -> String {
    format!("{ENV_PREFIX}__")
}

/// The variable that sets `key` (`regions.eu1.account_id` ->
/// `CLEVERTAP_DELETER__REGIONS__EU1__ACCOUNT_ID`), for error messages.
pub fn env_var_for(key: &str) -> String {
    format!(
        "{}{}",
        env_key_prefix(),
        key.replace('.', "__").to_ascii_uppercase()
    )
}
