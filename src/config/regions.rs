//! `[regions.NAME]`: the CleverTap accounts, resolved into [`RegionAccount`]s
//! with their passcode and a checked endpoint.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::ids::RegionName;
use crate::domain::secret::Secret;

use super::error::{env_var_for, ConfigError};
use super::secret_files::read_secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Concurrent requests the whole consumer group may send to this
    /// account; each replica takes the share its partitions give it.
    #[serde(default = "default_account_concurrency")]
    pub account_concurrency: usize,
}

/// CleverTap allows about 15 concurrent requests per account; the default
/// budget the replicas share keeps a margin of 3 below it, for requests
/// started under a share that is being lowered and for other API clients.
pub const DEFAULT_ACCOUNT_CONCURRENCY: usize = 12;

fn default_account_concurrency() -> usize {
    DEFAULT_ACCOUNT_CONCURRENCY
}

impl Default for RegionSettings {
    fn default() -> Self {
        RegionSettings {
            account_id: String::new(),
            passcode: None,
            passcode_file: None,
            endpoint: None,
            allow_insecure_endpoint: false,
            account_concurrency: DEFAULT_ACCOUNT_CONCURRENCY,
        }
    }
}

/// The Delete User Profile API's path, appended to a region's endpoint.
pub const DELETE_PATH: &str = "/1/delete/profiles.json";

/// One CleverTap account the daemon deletes from, resolved and checked.
#[derive(Debug, Clone)]
pub struct RegionAccount {
    pub name: RegionName,
    pub account_id: String,
    pub passcode: Secret,
    /// Base URL without trailing slash, e.g. `https://in1.api.clevertap.com`.
    pub endpoint: String,
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

pub(super) fn resolve_region(
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
    match region.account_concurrency {
        0 => return Err(ConfigError::new(key("account_concurrency"), "must be at least 1")),
        n if n > 15 => warnings.push(format!(
            "{} = {n} is above the 15 concurrent requests CleverTap allows per account: expect 429 answers unless your account's limit is higher",
            key("account_concurrency")
        )),
        _ => {}
    }
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
pub(super) fn check_passcode(key: &str, passcode: &Secret) -> Result<(), ConfigError> {
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
