//! Configuration: a TOML file plus `CLEVERTAP_DELETER__…` environment overrides,
//! validated into typed settings. Every error names the key it is about.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::domain::batch::BatchCapacity;
use crate::domain::ids::RegionName;

mod audit;
mod batch_api;
mod error;
mod event;
mod kafka;
mod regions;
mod secret_files;
mod secrets;
mod settings;
mod sources;
mod validation;

pub use audit::{AuditSettings, IdDisclosure};
pub use batch_api::{ApiSettings, BatchSettings, DedupSettings, PipelineSettings};
pub use error::{env_var_for, ConfigError, ENV_PREFIX};
pub use event::{EventFormat, EventSettings};
pub use kafka::{KafkaSettings, KAFKA_ENV_PROPERTIES};
pub use regions::{
    default_endpoint, RegionAccount, RegionSettings, DEFAULT_ACCOUNT_CONCURRENCY, DELETE_PATH,
};
pub use secrets::{SecretFile, SecretTarget, SecretsSettings};
pub use settings::{redacted_toml, LogSettings, ServerSettings, Settings};

use batch_api::read_ca_file;
use kafka::{check_forbidden_values, resolve_kafka_secrets, MANAGED_PROPERTIES};
use regions::resolve_region;
use validation::{dead_letter_size_warning, drain_warning, resolve_audit};

/// Settings after validation: what the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub regions: Vec<RegionAccount>,
    pub batch_capacity: BatchCapacity,
    pub listen: SocketAddr,
    /// Where audit records go and how ids appear in them; `None`: no audit.
    pub audit: Option<(String, IdDisclosure)>,
    /// Certificates of `api.ca_file`, trusted on top of the platform's roots.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// Problems that do not stop the daemon, e.g. a secret file readable by
    /// others. `check-config` prints them to stderr; `run` and `replay-dlq`
    /// log them at start.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.api.timeout_ms)
    }
}

/// Reads the file (if any) and the environment, then validates.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist".to_string()
                } else {
                    format!("cannot be read: {}", e.kind())
                };
                ConfigError::new("--config", format!("file {} {why}", path.display()))
            })?;
            sources::parse_file(&text)?
        }
        None => toml::Table::new(),
    };
    let overrides = sources::env_overrides(std::env::vars_os())?;
    let settings = sources::settings_from(table, &overrides)?;
    // The caller shows `warnings`: on stderr for check-config, through the
    // log (JSON or not, as configured) for run and replay-dlq.
    validate_with_env(settings, &|name| std::env::var(name).ok())
}

/// Parses TOML text (used by tests and the demo) with no environment overrides.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    from_toml_and_env(text, &[])
}

/// Parses TOML text with the given `CLEVERTAP_DELETER…` variables instead of
/// the process environment (tests).
pub fn from_toml_and_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let overrides = sources::env_overrides(
        env.iter()
            .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v))),
    )?;
    let settings = sources::settings_from(sources::parse_file(text)?, &overrides)?;
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    validate_with_env(settings, &lookup)
}

/// Validates settings without looking at the environment.
pub fn validate(settings: Settings) -> Result<Config, ConfigError> {
    validate_with_env(settings, &|_| None)
}

/// Validates settings; `env` looks up the [`KAFKA_ENV_PROPERTIES`] variables.
pub fn validate_with_env(
    mut settings: Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    resolve_kafka_secrets(&mut settings.kafka, env, &mut warnings)?;
    let k = &settings.kafka;
    if k.brokers.trim().is_empty() {
        return Err(ConfigError::new("kafka.brokers", "must not be empty"));
    }
    if k.topics.is_empty() || k.topics.iter().any(|t| t.trim().is_empty()) {
        return Err(ConfigError::new(
            "kafka.topics",
            "must list at least one non-empty topic",
        ));
    }
    if k.group_id.trim().is_empty() {
        return Err(ConfigError::new("kafka.group_id", "must not be empty"));
    }
    if let Some(id) = &k.group_instance_id {
        if id.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.group_instance_id",
                "must not be empty when set (leave it out for dynamic membership)",
            ));
        }
        if k.properties.contains_key("group.instance.id") {
            return Err(ConfigError::new(
                "kafka.group_instance_id",
                "is set twice: also in kafka.properties.\"group.instance.id\"; keep one",
            ));
        }
    }
    if k.dlq_topic.trim().is_empty() {
        return Err(ConfigError::new("kafka.dlq_topic", "must not be empty"));
    }
    if k.topics.contains(&k.dlq_topic) {
        return Err(ConfigError::new(
            "kafka.dlq_topic",
            "must differ from every topic in kafka.topics (dead letters would loop)",
        ));
    }
    for owned in MANAGED_PROPERTIES {
        if k.properties.contains_key(owned) {
            return Err(ConfigError::new(
                format!("kafka.properties.{owned}"),
                "is managed by the daemon (offsets are committed only after deletion)",
            ));
        }
    }
    check_forbidden_values(k)?;

    let e = &settings.event;
    for (key, pointer) in [
        ("event.type_pointer", &e.type_pointer),
        ("event.identity_pointer", &e.identity_pointer),
        ("event.guid_pointer", &e.guid_pointer),
        ("event.region_pointer", &e.region_pointer),
    ] {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(ConfigError::new(
                key,
                format!("`{pointer}` is not a JSON pointer (it must start with `/`, or be empty)"),
            ));
        }
    }
    e.check_fields()?;
    if e.max_id_bytes == 0 || e.max_ids_per_event == 0 || e.max_message_bytes == 0 {
        return Err(ConfigError::new(
            "event",
            "max_message_bytes, max_id_bytes and max_ids_per_event must be at least 1",
        ));
    }

    let batch_capacity = BatchCapacity::new(settings.batch.max_ids).ok_or_else(|| {
        ConfigError::new(
            "batch.max_ids",
            format!(
                "{} is out of range 1..=100 (CleverTap takes at most 100 ids a request)",
                settings.batch.max_ids
            ),
        )
    })?;
    if settings.batch.linger_ms > 60_000 {
        return Err(ConfigError::new("batch.linger_ms", "must be at most 60000"));
    }

    let a = &settings.api;
    if !(1..=15).contains(&a.max_concurrency) {
        return Err(ConfigError::new(
            "api.max_concurrency",
            format!(
                "{} is out of range 1..=15 (CleverTap allows about 15 concurrent requests per account)",
                a.max_concurrency
            ),
        ));
    }
    if a.timeout_ms < 100 {
        return Err(ConfigError::new("api.timeout_ms", "must be at least 100"));
    }
    if a.retry_initial_ms == 0 || a.retry_max_ms < a.retry_initial_ms {
        return Err(ConfigError::new(
            "api.retry_max_ms",
            "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms",
        ));
    }
    if a.auth_retry_ms == 0 {
        return Err(ConfigError::new("api.auth_retry_ms", "must be at least 1"));
    }

    if settings.dedup.recent_capacity == 0 {
        return Err(ConfigError::new(
            "dedup.recent_capacity",
            "must be at least 1",
        ));
    }
    let p = &settings.pipeline;
    if p.max_events_in_memory < 100 {
        return Err(ConfigError::new(
            "pipeline.max_events_in_memory",
            "must be at least 100",
        ));
    }
    if p.commit_interval_ms == 0 {
        return Err(ConfigError::new(
            "pipeline.commit_interval_ms",
            "must be at least 1",
        ));
    }
    if let Some(warning) = drain_warning(&settings) {
        warnings.push(warning);
    }
    if let Some(warning) = dead_letter_size_warning(&settings) {
        warnings.push(warning);
    }

    if settings.regions.is_empty() {
        return Err(ConfigError::new(
            "regions",
            "no region configured: add a [regions.NAME] table with account_id and passcode",
        ));
    }
    let mut regions = Vec::new();
    for (name, region) in &settings.regions {
        regions.push(resolve_region(name, region, &mut warnings)?);
    }
    if let Some(default) = &e.default_region {
        if !regions.iter().any(|r| r.name == RegionName::new(default)) {
            return Err(ConfigError::new(
                "event.default_region",
                format!("`{default}` has no [regions.{default}] table"),
            ));
        }
    }

    let listen: SocketAddr = settings.server.listen.parse().map_err(|_| {
        ConfigError::new(
            "server.listen",
            format!(
                "`{}` is not an address like 0.0.0.0:9464",
                settings.server.listen
            ),
        )
    })?;
    if !matches!(settings.log.format.as_str(), "human" | "json") {
        return Err(ConfigError::new(
            "log.format",
            format!("`{}` is neither `human` nor `json`", settings.log.format),
        ));
    }

    let audit = resolve_audit(&settings, &mut warnings)?;
    let extra_roots = match &settings.api.ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    Ok(Config {
        settings,
        regions,
        batch_capacity,
        listen,
        audit,
        extra_roots,
        warnings,
    })
}

/// The smallest valid configuration, for unit tests here and elsewhere.
#[cfg(test)]
pub(crate) const TEST_MINIMAL: &str = r#"
        [regions.eu1]
        account_id = "ACC"
        passcode = "sekret-pass"
    "#;

// For the unit tests in `config/tests.rs`, which see this module's names.
#[cfg(test)]
use {crate::domain::secret::Secret, std::path::PathBuf};

#[cfg(test)]
mod tests;
