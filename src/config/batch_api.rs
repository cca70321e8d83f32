//! `[batch]`, `[api]`, `[dedup]` and `[pipeline]`: how ids are batched, how the
//! CleverTap API is called, and how much the pipeline holds.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

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
    /// Events read back at start from below the committed offsets to fill
    /// that memory (0: none), shared by the partitions.
    pub warm_events: usize,
    /// How long that reading may take before the daemon starts without it.
    pub warm_timeout_ms: u64,
}

impl Default for DedupSettings {
    fn default() -> Self {
        DedupSettings {
            recent_capacity: 100_000,
            recent_ttl_secs: 3_600,
            warm_events: 100_000,
            warm_timeout_ms: 15_000,
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
            max_events_in_memory: 10_000,
            commit_interval_ms: 100,
            shutdown_timeout_ms: 30_000,
            rebalance_drain_timeout_ms: 10_000,
        }
    }
}

/// Reads `api.ca_file` and checks that an HTTPS client accepts its certificates.
pub(super) fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
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
