//! `[secrets]` and the secret files the daemon re-reads while it runs
//! (Kubernetes updates a mounted Secret in place), and each account's
//! concurrency budget: the settings that change under a running daemon.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::ids::RegionName;
use crate::domain::outcome::SecretKind;
use crate::domain::secret::Secret;

use super::audit::{check_salt, IdDisclosure};
use super::error::ConfigError;
use super::regions::check_passcode;
use super::secret_files::read_secret_file;
use super::Config;

/// How secret files are watched for changes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// How often `passcode_file`, `audit.salt_file` and
    /// `kafka.secret_properties_files` are re-read; 0: only on SIGHUP.
    pub reload_interval_ms: u64,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        SecretsSettings {
            reload_interval_ms: 5_000,
        }
    }
}

/// A file holding a secret, named by its configuration key.
#[derive(Debug, Clone)]
pub struct SecretFile {
    /// e.g. `regions.eu1.passcode_file`.
    pub key: String,
    pub path: PathBuf,
    pub target: SecretTarget,
}

/// What a secret file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretTarget {
    RegionPasscode(RegionName),
    AuditSalt,
    /// A librdkafka property of `kafka.secret_properties_files`.
    KafkaProperty(String),
}

impl SecretTarget {
    pub fn kind(&self) -> SecretKind {
        match self {
            SecretTarget::RegionPasscode(_) => SecretKind::RegionPasscode,
            SecretTarget::AuditSalt => SecretKind::AuditSalt,
            SecretTarget::KafkaProperty(_) => SecretKind::KafkaProperty,
        }
    }
}

impl SecretFile {
    /// Reads the file again and checks the value as at start-up (trimmed,
    /// not empty; a passcode fit for its header; a salt of 16 characters or
    /// more). Errors name the key and never show the value.
    pub fn read(&self) -> Result<Secret, ConfigError> {
        let secret = read_secret_file(&self.key, &self.path, &mut Vec::new())?;
        match &self.target {
            SecretTarget::RegionPasscode(region) => {
                check_passcode(&format!("regions.{region}.passcode"), &secret)?
            }
            SecretTarget::AuditSalt => check_salt(&secret)?,
            SecretTarget::KafkaProperty(_) => {}
        }
        Ok(secret)
    }
}

impl Config {
    /// Each region's `account_concurrency`, the budget its replicas share.
    pub fn account_budgets(&self) -> Vec<(RegionName, usize)> {
        self.settings
            .regions
            .iter()
            .map(|(name, r)| (RegionName::new(name), r.account_concurrency))
            .collect()
    }

    /// The secret files the daemon re-reads while it runs, each with the
    /// value it started with.
    pub fn secret_files(&self) -> Vec<(SecretFile, Secret)> {
        let mut out = Vec::new();
        for (name, r) in &self.settings.regions {
            let region = RegionName::new(name);
            let (Some(path), Some(account)) = (
                &r.passcode_file,
                self.regions.iter().find(|a| a.name == region),
            ) else {
                continue;
            };
            out.push((
                SecretFile {
                    key: format!("regions.{name}.passcode_file"),
                    path: path.clone(),
                    target: SecretTarget::RegionPasscode(region),
                },
                account.passcode.clone(),
            ));
        }
        if let (Some(path), Some((_, IdDisclosure::SaltedSha256(salt)))) =
            (&self.settings.audit.salt_file, &self.audit)
        {
            out.push((
                SecretFile {
                    key: "audit.salt_file".into(),
                    path: path.clone(),
                    target: SecretTarget::AuditSalt,
                },
                salt.clone(),
            ));
        }
        let k = &self.settings.kafka;
        for (property, path) in &k.secret_properties_files {
            if let Some(value) = k.properties.get(property) {
                out.push((
                    SecretFile {
                        key: format!("kafka.secret_properties_files.{property}"),
                        path: path.clone(),
                        target: SecretTarget::KafkaProperty(property.clone()),
                    },
                    Secret::new(value.clone()),
                ));
            }
        }
        out
    }
}
