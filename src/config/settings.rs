//! The configuration file's shape: every section, `[server]` and `[log]`, and
//! the effective settings shown with secrets redacted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::audit::AuditSettings;
use super::batch_api::{ApiSettings, BatchSettings, DedupSettings, PipelineSettings};
use super::event::EventSettings;
use super::kafka::KafkaSettings;
use super::regions::RegionSettings;
use super::secrets::SecretsSettings;

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
    #[serde(default)]
    pub secrets: SecretsSettings,
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

/// The effective configuration as TOML, with every secret replaced.
pub fn redacted_toml(settings: &Settings) -> String {
    let mut shown = settings.clone();
    shown.kafka.properties = settings.kafka.redacted_properties();
    toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
