//! Configuration: a TOML file plus `CLEVERTAP_DELETER__…` environment overrides,
//! validated into typed settings. Every error names the key it is about.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::batch::BatchCapacity;
use crate::domain::ids::RegionName;
use crate::domain::secret::{Secret, REDACTED};

mod sources;
pub use sources::env_var_for;

/// Environment variables with this prefix (then `__` between levels) override the file.
pub const ENV_PREFIX: &str = "CLEVERTAP_DELETER";

/// Kafka credentials from the environment. librdkafka property names contain
/// dots, which `CLEVERTAP_DELETER__…` variables cannot express, so each of
/// these variables sets one property: the property's name in upper case with
/// `.` written as `_`, after `CLEVERTAP_DELETER_KAFKA_` (one `_`). A value
/// from here wins over `[kafka.properties]` and is redacted like a secret.
pub const KAFKA_ENV_PROPERTIES: [(&str, &str); 5] = [
    ("CLEVERTAP_DELETER_KAFKA_SASL_USERNAME", "sasl.username"),
    ("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", "sasl.password"),
    (
        "CLEVERTAP_DELETER_KAFKA_SSL_KEY_PASSWORD",
        "ssl.key.password",
    ),
    (
        "CLEVERTAP_DELETER_KAFKA_SSL_KEYSTORE_PASSWORD",
        "ssl.keystore.password",
    ),
    (
        "CLEVERTAP_DELETER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
        "sasl.oauthbearer.client.secret",
    ),
];

/// librdkafka properties the daemon sets itself and refuses from the user.
const MANAGED_PROPERTIES: [&str; 3] =
    ["enable.auto.commit", "enable.auto.offset.store", "group.id"];

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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// Static membership (KIP-345): a stable id per replica, e.g. the pod
    /// name from `CLEVERTAP_DELETER__KAFKA__GROUP_INSTANCE_ID`. A restarted
    /// replica gets its partitions back without a rebalance.
    pub group_instance_id: Option<String>,
    pub dlq_topic: String,
    /// One audit record per finished deletion request; unset: no audit records.
    pub audit_topic: Option<String>,
    /// Handed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    /// After validation it also holds the values of `secret_properties_files`
    /// and of [`KAFKA_ENV_PROPERTIES`] (their keys are in `secret_keys`).
    pub properties: BTreeMap<String, String>,
    /// librdkafka property -> file whose trimmed content is its value
    /// (`"sasl.password" = "/run/secrets/kafka-password"`).
    pub secret_properties_files: BTreeMap<String, PathBuf>,
    /// Properties whose values came from a secret file or the environment:
    /// always redacted. Filled by validation, never read from the file.
    #[serde(skip)]
    pub secret_keys: BTreeSet<String>,
}

impl KafkaSettings {
    /// Whether the value of `key` must never be shown.
    pub fn is_secret(&self, key: &str) -> bool {
        self.secret_keys.contains(key) || is_secret_property(key)
    }

    /// `properties` with every secret value replaced by [`REDACTED`].
    pub fn redacted_properties(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| (k.clone(), self.shown_value(k, v)))
            .collect()
    }

    /// How the value of property `key` may be shown: [`REDACTED`] for a
    /// secret property; otherwise the value with any credentials inside it
    /// (a URL's user-info, a `password=` setting) replaced.
    pub fn shown_value(&self, key: &str, value: &str) -> String {
        if self.is_secret(key) || holds_password_setting(value) {
            return REDACTED.to_string();
        }
        let mut shown = value.to_string();
        for userinfo in url_userinfos(value) {
            shown = shown.replace(&format!("{userinfo}@"), &format!("{REDACTED}@"));
        }
        shown
    }

    /// Every text a message must not show: the values of secret
    /// properties, and the credentials inside other values. Longest first.
    pub fn secret_fragments(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, value) in &self.properties {
            if self.is_secret(key) || holds_password_setting(value) {
                out.push(value.clone());
                out.extend(password_settings(value));
            }
            for userinfo in url_userinfos(value) {
                out.extend(userinfo.split(':').map(str::to_string));
                out.push(userinfo);
            }
        }
        out.retain(|f| !f.trim().is_empty());
        out.sort_by_key(|f| std::cmp::Reverse(f.len()));
        out.dedup();
        out
    }

    /// `text` with every [`KafkaSettings::secret_fragments`] replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for fragment in self.secret_fragments() {
            text = text.replace(&fragment, REDACTED);
        }
        text
    }

    /// A librdkafka client-creation error as a configuration error: it names
    /// the property, and shows its value only when it is not a secret.
    /// (librdkafka's own text carries the value, and for an unknown property
    /// the name may be a misspelt secret one, so its value is never shown.)
    pub fn client_error(&self, error: &rdkafka::error::KafkaError) -> ConfigError {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaConfRes;
        match error {
            KafkaError::ClientConfig(res, description, key, value) => {
                let hide = *res == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN
                    || self.shown_value(key, value) != *value;
                let mut text = self.redact(description.trim());
                if hide && !value.is_empty() {
                    text = text.replace(value.as_str(), REDACTED);
                }
                let text = if *res == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN {
                    format!("librdkafka has no such property ({text}); check its spelling against librdkafka's CONFIGURATION.md")
                } else {
                    format!("librdkafka refuses it: {text}")
                };
                ConfigError::new(format!("kafka.properties.{key}"), text)
            }
            other => {
                let text = self.redact(&other.to_string());
                // Name the property the text is about ("ssl.key.pem failed: ..."), if any.
                let key = self
                    .properties
                    .keys()
                    .filter(|k| text.contains(k.as_str()))
                    .max_by_key(|k| k.len())
                    .map_or_else(
                        || "kafka.properties".to_string(),
                        |k| format!("kafka.properties.{k}"),
                    );
                ConfigError::new(key, format!("librdkafka cannot create a client: {text}"))
            }
        }
    }
}

/// Whether a value carries a `password=…` setting (a JAAS line, a
/// connection string): it is then shown as [`REDACTED`] as a whole.
fn holds_password_setting(value: &str) -> bool {
    !password_settings(value).is_empty()
}

/// The values of `password=`/`secret=`-like settings inside a value.
fn password_settings(value: &str) -> Vec<String> {
    let lower = value.to_ascii_lowercase();
    let mut out = Vec::new();
    for word in ["password", "secret", "passwd", "token"] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(word) {
            let after = from + at + word.len();
            from = after;
            // Skip the rest of a name such as clientSecret or password_file.
            let rest = &value[after..];
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len());
            let rest = rest[name_end..].trim_start();
            let Some(rest) = rest.strip_prefix(['=', ':']) else {
                continue;
            };
            let rest = rest.trim_start();
            let secret = if let Some(quoted) = rest.strip_prefix(['"', '\'']) {
                let quote = rest.chars().next().unwrap_or('"');
                quoted.split(quote).next().unwrap_or_default()
            } else {
                rest.split(|c: char| c.is_whitespace() || c == ';' || c == ',')
                    .next()
                    .unwrap_or_default()
            };
            if !secret.is_empty() {
                out.push(secret.to_string());
            }
        }
    }
    out
}

/// The `user:password` parts of every `scheme://user:password@host` in a value.
fn url_userinfos(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find("://") {
        let after = &rest[at + 3..];
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c == ',' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        if let Some(userinfo_end) = authority.rfind('@') {
            out.push(authority[..userinfo_end].to_string());
        }
        rest = &after[authority_end..];
    }
    out
}

/// Written by hand so `{:?}` of a configuration never shows a Kafka password.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("group_instance_id", &self.group_instance_id)
            .field("dlq_topic", &self.dlq_topic)
            .field("audit_topic", &self.audit_topic)
            .field("properties", &self.redacted_properties())
            .field("secret_properties_files", &self.secret_properties_files)
            .finish()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["user-deleted".into()],
            group_id: "clevertap-deleter".into(),
            group_instance_id: None,
            dlq_topic: "user-deleted.dlq".into(),
            audit_topic: None,
            properties: BTreeMap::new(),
            secret_properties_files: BTreeMap::new(),
            secret_keys: BTreeSet::new(),
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
    /// PEM file of extra CA certificates trusted for the CleverTap endpoints,
    /// in addition to the platform's roots (a TLS-inspecting proxy, a test).
    pub ca_file: Option<PathBuf>,
    /// Retries of a batch whose 2xx answers do not confirm the deletion
    /// (empty, not JSON, no `"status":"success"`), before it is split in
    /// halves; a single id still unconfirmed is dead-lettered `unconfirmed`.
    pub unconfirmed_retries: u32,
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
            ca_file: None,
            unconfirmed_retries: 5,
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

/// The Delete User Profile API's path, appended to a region's endpoint.
pub const DELETE_PATH: &str = "/1/delete/profiles.json";

/// How ids appear in audit records (`audit.hash_ids`).
#[derive(Debug, Clone)]
pub enum IdDisclosure {
    Plain,
    /// SHA-256 of salt followed by the id, hex: provable for a known id,
    /// unreadable without it.
    SaltedSha256(Secret),
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

/// Reads `api.ca_file` and checks that an HTTPS client accepts its certificates.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let bad = |m: String| ConfigError::new("api.ca_file", m);
    let pem = std::fs::read(path)
        .map_err(|e| bad(format!("cannot read {}: {}", path.display(), e.kind())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        bad(format!(
            "{} is not a PEM certificate bundle: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    // The same call the daemon makes, so a certificate rustls refuses is a
    // configuration error now rather than a failed start later.
    reqwest::Client::builder()
        .tls_certs_merge(certs.iter().cloned())
        .build()
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    Ok(certs)
}

/// Moves `secret_properties_files` and the [`KAFKA_ENV_PROPERTIES`] variables
/// into `properties`, remembering their keys as secret.
fn resolve_kafka_secrets(
    k: &mut KafkaSettings,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (property, path) in &k.secret_properties_files {
        let key = format!("kafka.secret_properties_files.{property}");
        if MANAGED_PROPERTIES.contains(&property.as_str()) {
            return Err(ConfigError::new(
                key,
                "is managed by the daemon (offsets are committed only after deletion)",
            ));
        }
        if k.properties.contains_key(property) {
            return Err(ConfigError::new(
                key,
                format!("`{property}` is also set in [kafka.properties]; set it in one place"),
            ));
        }
        if let Some((var, _)) = KAFKA_ENV_PROPERTIES
            .iter()
            .find(|(var, p)| *p == property && env(var).is_some())
        {
            return Err(ConfigError::new(
                key,
                format!("`{property}` is also set by the environment variable {var}; set it in one place"),
            ));
        }
        let value = read_secret_file(&key, path, warnings)?;
        k.properties
            .insert(property.clone(), value.expose().to_string());
        k.secret_keys.insert(property.clone());
    }
    for (var, property) in KAFKA_ENV_PROPERTIES {
        let Some(value) = env(var) else { continue };
        let value = value.trim();
        if value.is_empty() {
            return Err(ConfigError::new(var, "is set but empty"));
        }
        k.properties.insert(property.to_string(), value.to_string());
        k.secret_keys.insert(property.to_string());
    }
    Ok(())
}

/// Reads a secret file: trimmed, not empty, with a warning when others may read it.
fn read_secret_file(
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

fn resolve_audit(
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<Option<(String, IdDisclosure)>, ConfigError> {
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
    let salt = read_secret(
        "audit",
        "salt",
        a.salt.as_ref(),
        a.salt_file.as_deref(),
        warnings,
    )?;
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

/// Bytes a dead letter carries besides the payload (key and headers), at most,
/// near enough.
const DEAD_LETTER_OVERHEAD: usize = 4 * 1024;

/// Events up to `event.max_message_bytes` are accepted and, when bad,
/// dead-lettered whole; the producer refuses records above its
/// `message.max.bytes` (librdkafka's default 1,000,000), so those dead
/// letters go out truncated. Not an error: said once, at start.
fn dead_letter_size_warning(settings: &Settings) -> Option<String> {
    let producer_max: usize = settings
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000);
    let event_max = settings.event.max_message_bytes;
    (event_max + DEAD_LETTER_OVERHEAD > producer_max).then(|| {
        format!(
            "event.max_message_bytes = {event_max} is more than the dead-letter producer writes              (message.max.bytes = {producer_max}, less about {DEAD_LETTER_OVERHEAD} bytes of headers):              bad events that large are dead-lettered as a truncated copy (16 KiB, with the original's              size and SHA-256); raise kafka.properties message.max.bytes (and the topic's              max.message.bytes) to keep them whole"
        )
    })
}

fn resolve_region(
    name: &str,
    region: &RegionSettings,
    warnings: &mut Vec<String>,
) -> Result<RegionAccount, ConfigError> {
    let key = |field: &str| format!("regions.{name}.{field}");
    if region.account_id.trim().is_empty() {
        return Err(ConfigError::new(
            key("account_id"),
            format!(
                "is missing or empty: set account_id in [regions.{name}], or the environment variable {}",
                env_var_for(&key("account_id"))
            ),
        ));
    }
    let account_id = region.account_id.trim();
    if reqwest::header::HeaderValue::from_str(account_id).is_err() {
        return Err(ConfigError::new(
            key("account_id"),
            "contains a control or non-ASCII character, which the X-CleverTap-Account-Id header cannot carry",
        ));
    }
    if is_placeholder_account_id(account_id) {
        warnings.push(format!(
            "{}: `{account_id}` is the example file's placeholder; set the account id from CleverTap's dashboard, or every request will be refused",
            key("account_id")
        ));
    }
    let passcode = read_secret(
        &format!("regions.{name}"),
        "passcode",
        region.passcode.as_ref(),
        region.passcode_file.as_deref(),
        warnings,
    )?;
    check_passcode(&key("passcode"), &passcode)?;
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
        account_id: account_id.to_string(),
        passcode,
        endpoint,
    })
}

/// Passcodes must not travel in clear text by accident: plain http is only for
/// loopback (tests, local proxies) unless explicitly allowed.
fn check_endpoint(endpoint: &str, allow_insecure: bool) -> Result<(), String> {
    // The endpoint is not echoed until it is known to hold no credentials.
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("is not a URL: {e}"))?;
    // Credentials in the URL would be sent and shown in error messages; the
    // passcode goes in its header only. Query and fragment have no meaning here.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain a user name or password (the passcode goes in passcode or passcode_file)"
                .to_string(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must be a base URL, without query or fragment".to_string());
    }
    let path = url.path().trim_end_matches('/');
    if path.ends_with("/1/delete/profiles.json")
        || path.ends_with("/1/delete")
        || path.ends_with("/1")
    {
        let base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        return Err(format!(
            "carries the API path ({}); the daemon appends {}: set the base URL, e.g. {base}{port}",
            url.path(),
            DELETE_PATH
        ));
    }
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

/// Passcodes of the example file and the docs, which can never work.
const PLACEHOLDER_PASSCODES: [&str; 2] = ["replace-with-your-passcode", "change-me"];

fn is_placeholder_account_id(account_id: &str) -> bool {
    let upper = account_id.to_ascii_uppercase();
    upper.starts_with("YOUR-") && upper.ends_with("ACCOUNT-ID")
}

/// A passcode must fit in an HTTP header and must not be a placeholder.
/// Errors never show the value.
fn check_passcode(key: &str, passcode: &Secret) -> Result<(), ConfigError> {
    let value = passcode.expose();
    if value.chars().any(|c| c.is_control()) {
        return Err(ConfigError::new(
            key,
            "contains a control character (a line break, tab, ...), which the X-CleverTap-Passcode header cannot carry; \
             check the variable or file it comes from",
        ));
    }
    if reqwest::header::HeaderValue::from_str(value).is_err() {
        return Err(ConfigError::new(
            key,
            "contains a non-ASCII character, which the X-CleverTap-Passcode header cannot carry",
        ));
    }
    if PLACEHOLDER_PASSCODES
        .iter()
        .any(|p| value.eq_ignore_ascii_case(p))
    {
        return Err(ConfigError::new(
            key,
            format!(
                "is the example file's placeholder; set the account's passcode here, in passcode_file, or in {}",
                env_var_for(key)
            ),
        ));
    }
    Ok(())
}

/// librdkafka values the README forbids because they break a guarantee.
fn check_forbidden_values(k: &KafkaSettings) -> Result<(), ConfigError> {
    if let Some(reset) = k.properties.get("auto.offset.reset") {
        if matches!(
            reset.trim().to_ascii_lowercase().as_str(),
            "latest" | "largest" | "end"
        ) {
            return Err(ConfigError::new(
                "kafka.properties.auto.offset.reset",
                format!(
                    "`{reset}` would make a new consumer group skip every deletion produced before it first ran; \
                     remove it (the daemon uses earliest)"
                ),
            ));
        }
    }
    if let Some(interval) = k.properties.get("statistics.interval.ms") {
        if interval.trim() == "0" {
            return Err(ConfigError::new(
                "kafka.properties.statistics.interval.ms",
                "0 turns statistics off, and with them readiness after an outage, kafka_connected and consumer_lag_messages; \
                 remove it (the daemon uses 5000)",
            ));
        }
    }
    Ok(())
}

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// A rebalance drain that outlasts the session timeout.
fn drain_warning(settings: &Settings) -> Option<String> {
    let session = match settings.kafka.properties.get("session.timeout.ms") {
        Some(v) => v.trim().parse::<u64>().ok()?,
        None => DEFAULT_SESSION_TIMEOUT_MS,
    };
    let drain = settings.pipeline.rebalance_drain_timeout_ms;
    (drain >= session).then(|| {
        format!(
            "pipeline.rebalance_drain_timeout_ms ({drain}) is not below session.timeout.ms ({session}): \
             a revoke that waits that long can cost this member its place in the group; keep the drain below the session timeout"
        )
    })
}

/// Keys of librdkafka properties whose values are secrets.
fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.ends_with(".pem")
        || k.contains("key")
        || k.contains("passphrase")
        // Free-form `principal=… clientSecret=…` settings of the unsecured JWT method.
        || k == "sasl.oauthbearer.config"
}

/// The effective configuration as TOML, with every secret replaced.
pub fn redacted_toml(settings: &Settings) -> String {
    let mut shown = settings.clone();
    shown.kafka.properties = settings.kafka.redacted_properties();
    toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// The smallest valid configuration, for unit tests here and elsewhere.
#[cfg(test)]
pub(crate) const TEST_MINIMAL: &str = r#"
        [regions.eu1]
        account_id = "ACC"
        passcode = "sekret-pass"
    "#;

#[cfg(test)]
mod tests;
