//! Configuration: a TOML file plus `CLEVERTAP_DELETER__…` environment overrides,
//! validated into typed settings. Every error names the key it is about.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::batch::BatchCapacity;
use crate::ids::RegionName;
use crate::secret::{Secret, REDACTED};

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
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub event: EventSettings,
    #[serde(default)]
    pub batch: BatchSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub dedup: DedupSettings,
    #[serde(default)]
    pub pipeline: PipelineSettings,
    #[serde(default)]
    pub regions: BTreeMap<String, RegionSettings>,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub audit: AuditSettings,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Write salted SHA-256 hashes of the ids instead of the ids.
    pub hash_ids: bool,
    pub salt: Option<Secret>,
    pub salt_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub dlq_topic: String,
    /// One audit record per finished deletion request; unset: no audit records.
    pub audit_topic: Option<String>,
    /// Handed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["user-deleted".into()],
            group_id: "clevertap-deleter".into(),
            dlq_topic: "user-deleted.dlq".into(),
            audit_topic: None,
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// JSON pointer to the event type; empty accepts every message.
    pub type_pointer: String,
    pub accept_types: Vec<String>,
    pub identity_pointer: String,
    pub guid_pointer: String,
    pub region_pointer: String,
    pub default_region: Option<String>,
    pub max_message_bytes: usize,
    pub max_id_bytes: usize,
    pub max_ids_per_event: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            type_pointer: "/type".into(),
            accept_types: vec!["user-deleted".into()],
            identity_pointer: "/identity".into(),
            guid_pointer: "/guid".into(),
            region_pointer: "/region".into(),
            default_region: None,
            max_message_bytes: 65_536,
            max_id_bytes: 256,
            max_ids_per_event: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    pub max_ids: usize,
    pub linger_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_ids: 100,
            linger_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub timeout_ms: u64,
    pub max_concurrency: usize,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Pause between probes while a region answers 401/403/404.
    pub auth_retry_ms: u64,
    /// Log and count API calls instead of making them.
    pub dry_run: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            timeout_ms: 10_000,
            max_concurrency: 10,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            auth_retry_ms: 30_000,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSettings {
    /// How many recently deleted ids are remembered to finish repeats at once.
    pub recent_capacity: usize,
    pub recent_ttl_secs: u64,
}

impl Default for DedupSettings {
    fn default() -> Self {
        DedupSettings {
            recent_capacity: 200_000,
            recent_ttl_secs: 3_600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Above this many unfinished events, consumption pauses until a quarter drained.
    pub max_events_in_memory: usize,
    pub commit_interval_ms: u64,
    /// On SIGTERM/SIGINT: how long to wait for in-flight deletions before the final commit.
    pub shutdown_timeout_ms: u64,
    /// On partition revoke: how long to wait for their deletions (keep below session.timeout.ms).
    pub rebalance_drain_timeout_ms: u64,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            max_events_in_memory: 20_000,
            commit_interval_ms: 1_000,
            shutdown_timeout_ms: 30_000,
            rebalance_drain_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSettings {
    #[serde(default)]
    pub account_id: String,
    #[serde(default)]
    pub passcode: Option<Secret>,
    #[serde(default)]
    pub passcode_file: Option<PathBuf>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_insecure_endpoint: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `clevertap_deleter=debug`; `RUST_LOG` wins.
    pub level: String,
    /// Put people's ids into debug logs. Off by default: ids are personal data.
    pub log_ids: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "human".into(),
            level: "info".into(),
            log_ids: false,
        }
    }
}

/// One CleverTap account the daemon deletes from, resolved and checked.
#[derive(Debug, Clone)]
pub struct RegionAccount {
    pub name: RegionName,
    pub account_id: String,
    pub passcode: Secret,
    /// Base URL without trailing slash, e.g. `https://in1.api.clevertap.com`.
    pub endpoint: String,
}

/// Settings after validation: what the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub regions: Vec<RegionAccount>,
    pub batch_capacity: BatchCapacity,
    pub listen: SocketAddr,
    /// Where audit records go and how ids appear in them; `None`: no audit.
    pub audit: Option<(String, crate::audit::IdDisclosure)>,
}

impl Config {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.api.timeout_ms)
    }
}

/// Host of a region's API, from CleverTap's region table.
pub fn default_endpoint(region: &str) -> Option<&'static str> {
    Some(match region {
        "eu1" | "eu" => "https://api.clevertap.com",
        "in1" | "in" => "https://in1.api.clevertap.com",
        "sg1" | "sg" => "https://sg1.api.clevertap.com",
        "us1" | "us" => "https://us1.api.clevertap.com",
        "aps3" => "https://aps3.api.clevertap.com",
        "mec1" => "https://mec1.api.clevertap.com",
        _ => return None,
    })
}

/// Reads the file (if any) and the environment, then validates.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError::new(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .separator("__")
            // No try_parsing: it would turn a passcode or group id like "0042"
            // into the number 42. Numeric keys still parse from their text.
            .list_separator(",")
            .with_list_parse_key("kafka.topics")
            .with_list_parse_key("event.accept_types"),
    );
    let raw = builder.build().map_err(from_config_error)?;
    let settings: Settings = raw.try_deserialize().map_err(from_config_error)?;
    validate(settings)
}

/// Parses TOML text (used by tests and the demo) with no environment overrides.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(from_config_error)?;
    let settings: Settings = raw.try_deserialize().map_err(from_config_error)?;
    validate(settings)
}

fn from_config_error(err: config::ConfigError) -> ConfigError {
    // The config crate puts the key into its messages ("... for key `batch.max_ids`").
    let text = err.to_string();
    let key = text
        .split("key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("(file)")
        .to_string();
    ConfigError::new(key, text)
}

pub fn validate(settings: Settings) -> Result<Config, ConfigError> {
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
    if k.dlq_topic.trim().is_empty() {
        return Err(ConfigError::new("kafka.dlq_topic", "must not be empty"));
    }
    if k.topics.contains(&k.dlq_topic) {
        return Err(ConfigError::new(
            "kafka.dlq_topic",
            "must differ from every topic in kafka.topics (dead letters would loop)",
        ));
    }
    for owned in ["enable.auto.commit", "enable.auto.offset.store", "group.id"] {
        if k.properties.contains_key(owned) {
            return Err(ConfigError::new(
                format!("kafka.properties.{owned}"),
                "is managed by the daemon (offsets are committed only after deletion)",
            ));
        }
    }

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
    if e.identity_pointer.is_empty() && e.guid_pointer.is_empty() {
        return Err(ConfigError::new(
            "event.identity_pointer",
            "identity_pointer and guid_pointer are both empty: no id could ever be read",
        ));
    }
    if !e.type_pointer.is_empty() && e.accept_types.is_empty() {
        return Err(ConfigError::new(
            "event.accept_types",
            "is empty while type_pointer is set: every message would be skipped",
        ));
    }
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

    if settings.regions.is_empty() {
        return Err(ConfigError::new(
            "regions",
            "no region configured: add a [regions.NAME] table with account_id and passcode",
        ));
    }
    let mut regions = Vec::new();
    for (name, region) in &settings.regions {
        regions.push(resolve_region(name, region)?);
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

    let audit = resolve_audit(&settings)?;
    Ok(Config {
        settings,
        regions,
        batch_capacity,
        listen,
        audit,
    })
}

fn resolve_audit(
    settings: &Settings,
) -> Result<Option<(String, crate::audit::IdDisclosure)>, ConfigError> {
    use crate::audit::IdDisclosure;
    let a = &settings.audit;
    let topic = match settings.kafka.audit_topic.as_deref().map(str::trim) {
        None | Some("") => {
            return Ok(None);
        }
        Some(t) => t.to_string(),
    };
    if settings.kafka.topics.contains(&topic) || topic == settings.kafka.dlq_topic {
        return Err(ConfigError::new(
            "kafka.audit_topic",
            "must differ from kafka.topics and kafka.dlq_topic",
        ));
    }
    if !a.hash_ids {
        return Ok(Some((topic, IdDisclosure::Plain)));
    }
    let salt = read_secret("audit", "salt", a.salt.as_ref(), a.salt_file.as_deref())?;
    if salt.expose().len() < 16 {
        return Err(ConfigError::new(
            "audit.salt",
            "must be at least 16 characters: a short salt lets anyone recompute the hashes",
        ));
    }
    Ok(Some((topic, IdDisclosure::SaltedSha256(salt))))
}

/// A secret from `KEY` or `KEY_file` (exactly one), trimmed, not empty.
fn read_secret(
    table: &str,
    key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
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
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    name("_file"),
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })?;
            Secret::new(text.trim())
        }
        (None, None) => {
            return Err(ConfigError::new(
                name(""),
                format!("is missing (set {key}, {key}_file, or the environment variable)"),
            ))
        }
    };
    if secret.expose().is_empty() {
        return Err(ConfigError::new(name(""), "is empty"));
    }
    Ok(secret)
}

fn resolve_region(name: &str, region: &RegionSettings) -> Result<RegionAccount, ConfigError> {
    let key = |field: &str| format!("regions.{name}.{field}");
    if region.account_id.trim().is_empty() {
        return Err(ConfigError::new(key("account_id"), "is missing or empty"));
    }
    let passcode = read_secret(
        &format!("regions.{name}"),
        "passcode",
        region.passcode.as_ref(),
        region.passcode_file.as_deref(),
    )?;
    let lower = name.to_ascii_lowercase();
    let endpoint = match &region.endpoint {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => default_endpoint(&lower)
            .ok_or_else(|| {
                ConfigError::new(
                    key("endpoint"),
                    format!("`{name}` is not a known CleverTap region, so endpoint must be set"),
                )
            })?
            .to_string(),
    };
    check_endpoint(&endpoint, region.allow_insecure_endpoint)
        .map_err(|m| ConfigError::new(key("endpoint"), m))?;
    Ok(RegionAccount {
        name: RegionName::new(name),
        account_id: region.account_id.trim().to_string(),
        passcode,
        endpoint,
    })
}

/// Passcodes must not travel in clear text by accident: plain http is only for
/// loopback (tests, local proxies) unless explicitly allowed.
fn check_endpoint(endpoint: &str, allow_insecure: bool) -> Result<(), String> {
    let url =
        reqwest::Url::parse(endpoint).map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback || allow_insecure {
                Ok(())
            } else {
                Err(format!(
                    "`{endpoint}` is plain http to a non-loopback host; use https or set allow_insecure_endpoint = true"
                ))
            }
        }
        other => Err(format!("scheme `{other}` is not http or https")),
    }
}

/// Keys of librdkafka properties whose values are secrets.
fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".pem") || k.contains("key")
}

/// The effective configuration as TOML, with every secret replaced.
pub fn redacted_toml(settings: &Settings) -> String {
    let mut shown = settings.clone();
    for (k, v) in shown.kafka.properties.iter_mut() {
        if is_secret_property(k) {
            *v = REDACTED.to_string();
        }
    }
    toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [regions.eu1]
        account_id = "ACC"
        passcode = "sekret-pass"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = from_toml(MINIMAL).unwrap();
        assert_eq!(c.settings.kafka.topics, vec!["user-deleted"]);
        assert_eq!(c.batch_capacity.get(), 100);
        assert_eq!(c.regions[0].endpoint, "https://api.clevertap.com");
        assert_eq!(c.settings.api.max_concurrency, 10);
        assert!(c.settings.dedup.recent_capacity >= 100_000);
    }

    fn err_key(text: &str) -> String {
        from_toml(text).unwrap_err().key
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err_key(&format!("{MINIMAL}\n[batch]\nmax_ids = 101")),
            "batch.max_ids"
        );
        assert_eq!(
            err_key(&format!("{MINIMAL}\n[batch]\nmax_ids = 0")),
            "batch.max_ids"
        );
        assert_eq!(
            err_key(&format!("{MINIMAL}\n[api]\nmax_concurrency = 16")),
            "api.max_concurrency"
        );
        assert_eq!(
            err_key(&format!("{MINIMAL}\n[event]\ndefault_region = \"us1\"")),
            "event.default_region"
        );
        assert_eq!(
            err_key(&format!("{MINIMAL}\n[server]\nlisten = \"nope\"")),
            "server.listen"
        );
        assert_eq!(
            err_key("[regions.eu1]\naccount_id = \"A\""),
            "regions.eu1.passcode"
        );
        assert_eq!(
            err_key("[regions.xx9]\naccount_id = \"A\"\npasscode = \"p\""),
            "regions.xx9.endpoint"
        );
        assert_eq!(err_key(""), "regions");
        assert_eq!(
            err_key(&format!(
                "{MINIMAL}\n[kafka.properties]\n\"enable.auto.commit\" = \"true\""
            )),
            "kafka.properties.enable.auto.commit"
        );
        let e = from_toml(&format!("{MINIMAL}\n[batch]\nmax_ids = \"many\"")).unwrap_err();
        assert!(e.to_string().contains("max_ids"), "{e}");
    }

    #[test]
    fn audit_settings() {
        assert!(from_toml(MINIMAL).unwrap().audit.is_none());
        let plain = from_toml(&format!("{MINIMAL}\n[kafka]\naudit_topic = \"audit\"")).unwrap();
        assert!(
            matches!(plain.audit, Some((ref t, crate::audit::IdDisclosure::Plain)) if t == "audit")
        );
        assert_eq!(
            err_key(&format!(
                "{MINIMAL}\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true"
            )),
            "audit.salt"
        );
        assert_eq!(
            err_key(&format!("{MINIMAL}\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true\nsalt = \"short\"")),
            "audit.salt"
        );
        let hashed = from_toml(&format!(
            "{MINIMAL}\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true\nsalt = \"0123456789abcdef0123\""
        ))
        .unwrap();
        assert!(matches!(
            hashed.audit,
            Some((_, crate::audit::IdDisclosure::SaltedSha256(_)))
        ));
        assert_eq!(
            err_key(&format!(
                "{MINIMAL}\n[kafka]\naudit_topic = \"user-deleted\""
            )),
            "kafka.audit_topic"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = from_toml(&format!("{MINIMAL}\n[batch]\nmax_idz = 5")).unwrap_err();
        assert!(e.to_string().contains("max_idz"), "{e}");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let base = "[regions.eu1]\naccount_id = \"A\"\npasscode = \"p\"\n";
        assert!(from_toml(&format!("{base}endpoint = \"http://127.0.0.1:8080\"")).is_ok());
        assert!(from_toml(&format!("{base}endpoint = \"http://localhost:8080/\"")).is_ok());
        assert_eq!(
            err_key(&format!("{base}endpoint = \"http://api.example.com\"")),
            "regions.eu1.endpoint"
        );
        assert!(from_toml(&format!(
            "{base}endpoint = \"http://api.example.com\"\nallow_insecure_endpoint = true"
        ))
        .is_ok());
    }

    #[test]
    fn passcode_from_file_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "from-file-secret\n").unwrap();
        let text = format!(
            "[regions.in1]\naccount_id = \"A\"\npasscode_file = \"{}\"\n[kafka.properties]\n\"sasl.password\" = \"kafka-secret\"\n\"security.protocol\" = \"SASL_SSL\"\n",
            file.display()
        );
        let c = from_toml(&text).unwrap();
        assert_eq!(c.regions[0].passcode.expose(), "from-file-secret");
        assert_eq!(c.regions[0].endpoint, "https://in1.api.clevertap.com");
        let mut s = c.settings.clone();
        s.regions.get_mut("in1").unwrap().passcode = Some(Secret::new("inline-secret"));
        let shown = redacted_toml(&s);
        assert!(!shown.contains("kafka-secret"), "{shown}");
        assert!(!shown.contains("inline-secret"), "{shown}");
        assert!(shown.contains("SASL_SSL"));
    }
}
