//! `[kafka]`: brokers, topics, group and librdkafka properties; the secret
//! properties from files and the environment, and how they are redacted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::secret::REDACTED;

use super::error::ConfigError;
use super::secret_files::read_secret_file;

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
pub(super) const MANAGED_PROPERTIES: [&str; 3] =
    ["enable.auto.commit", "enable.auto.offset.store", "group.id"];

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

/// Moves `secret_properties_files` and the [`KAFKA_ENV_PROPERTIES`] variables
/// into `properties`, remembering their keys as secret.
pub(super) fn resolve_kafka_secrets(
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

/// librdkafka values the README forbids because they break a guarantee.
pub(super) fn check_forbidden_values(k: &KafkaSettings) -> Result<(), ConfigError> {
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

/// Keys of librdkafka properties whose values are secrets.
pub(super) fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.ends_with(".pem")
        || k.contains("key")
        || k.contains("passphrase")
        // Free-form `principal=… clientSecret=…` settings of the unsecured JWT method.
        || k == "sasl.oauthbearer.config"
}
