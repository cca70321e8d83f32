//! The edge to CleverTap: the `DeleteApi` trait, its HTTP implementation, and
//! the explicit classification of every answer.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::RegionAccount;
use crate::domain::batch::DeleteBatch;

/// The most of an answer body that is read. CleverTap's answers are tens of
/// bytes; anything longer than this is not one of them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What came back from one request at the HTTP level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiReply {
    pub status: u16,
    /// The body, or its first [`MAX_BODY_BYTES`] + 1 bytes: a body longer
    /// than [`MAX_BODY_BYTES`] was cut off, and [`classify`] reads only its
    /// first [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// `Retry-After`, in seconds or as an HTTP date, converted to a delay.
    pub retry_after: Option<Duration>,
}

/// The request never got an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    Timeout,
    Connect,
    /// Any other I/O or protocol failure (reset, bad response).
    Other,
    /// The request could not even be built: a header value with a control
    /// character (a passcode with a newline), an endpoint that is not a URL.
    /// Sending it again changes nothing, so it holds the region.
    InvalidRequest,
}

impl TransportError {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect => "connect_error",
            TransportError::Other => "transport_error",
            TransportError::InvalidRequest => "invalid_request",
        }
    }
}

/// The Delete User Profile call, behind a trait so tests and the dry-run mode
/// can replace it.
pub trait DeleteApi: Send + Sync + 'static {
    fn delete<'a>(
        &'a self,
        account: &'a RegionAccount,
        batch: &'a DeleteBatch,
    ) -> BoxFuture<'a, Result<ApiReply, TransportError>>;
}

pub use crate::domain::outcome::RetryReason;

/// What to do with a batch after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every id of the batch is marked for deletion: a 2xx whose body is a
    /// JSON object with `"status": "success"` and nothing else that matters.
    Deleted,
    /// `"status": "success"` that also says which ids were not processed
    /// (`unprocessed`, `errors`, `failed` or `failures` listing ids), or how
    /// many were (`processed`). [`split_confirmed`] tells which ids of the
    /// batch it confirms; the others are unconfirmed.
    PartlyDeleted {
        /// The ids listed as not processed (never empty when `processed` is
        /// `None`).
        unprocessed: Vec<String>,
        processed: Option<u64>,
    },
    /// A 2xx that does not confirm the deletion: retried a bounded number of
    /// times (`api.unconfirmed_retries`), then split like a 400; a single id
    /// that stays unconfirmed is dead-lettered as `unconfirmed`.
    Unconfirmed {
        why: Unconfirmed,
        after: Option<Duration>,
    },
    /// Nothing is known to be done; try again later (at least `after`, if given).
    Retry {
        reason: RetryReason,
        after: Option<Duration>,
    },
    /// The request was refused for its content: split to isolate the bad ids.
    Rejected { message: String },
    /// Credentials, permissions or the endpoint are wrong (401/403/404), or
    /// the request cannot be built: hold the region, never dead-letter, retry
    /// slowly.
    Held { cause: Hold },
}

/// Why a region is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hold {
    /// CleverTap answered 401, 403 or 404.
    Refused(u16),
    /// The request cannot be built from the region's settings
    /// ([`TransportError::InvalidRequest`]).
    InvalidRequest,
}

impl Hold {
    /// The `status` label of `region_auth_failures_total`: `401`, `403`,
    /// `404` or `invalid_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::Refused(status) => crate::ops::metrics::api_status_label(status),
            Hold::InvalidRequest => "invalid_request",
        }
    }

    /// The `/readyz` line for a region held for this cause.
    pub fn readiness(self) -> &'static str {
        match self {
            Hold::Refused(_) => crate::ops::health::HELD_REFUSED,
            Hold::InvalidRequest => {
                "held, its request cannot be built (a control character in the account id or passcode, or a bad endpoint)"
            }
        }
    }
}

/// Why a 2xx answer does not confirm the deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unconfirmed {
    /// No body: a 204, or a 200 that is empty or only whitespace.
    EmptyBody,
    /// Longer than [`MAX_BODY_BYTES`]: cut off, so whatever it said is unknown.
    CutOff,
    /// Not JSON (a proxy's HTML page, truncated JSON, a byte order mark
    /// followed by anything but JSON).
    NotJson,
    /// JSON, but not an object with a string `status` (`[...]`, a nested
    /// status, `"status": null`).
    NoStatus,
    /// A key the classifier reads (`status`, `error`, a listing of ids,
    /// `processed`) appears twice, so the answer says two things.
    DuplicateKey,
    /// A `status` other than `success` and `fail`: `"partial"`, `"SUCCESS"`,
    /// `" success"`.
    OtherStatus,
    /// A success that lists ids as not processed, in a shape that does not
    /// map to the batch's ids, or that lists all of them.
    Unprocessed,
}

impl Unconfirmed {
    pub fn as_str(self) -> &'static str {
        match self {
            Unconfirmed::EmptyBody => "empty_body",
            Unconfirmed::CutOff => "cut_off",
            Unconfirmed::NotJson => "not_json",
            Unconfirmed::NoStatus => "no_status",
            Unconfirmed::DuplicateKey => "duplicate_key",
            Unconfirmed::OtherStatus => "other_status",
            Unconfirmed::Unprocessed => "unprocessed",
        }
    }

    /// What the answer was, for logs and the dead-letter detail (never the body).
    pub fn describe(self, status: u16) -> String {
        let what = match self {
            Unconfirmed::EmptyBody => "an empty body",
            Unconfirmed::CutOff => "a body longer than 64 KiB",
            Unconfirmed::NotJson => "a body that is not JSON",
            Unconfirmed::NoStatus => "no \"status\" in its JSON",
            Unconfirmed::DuplicateKey => "a key repeated in its JSON",
            Unconfirmed::OtherStatus => "a \"status\" other than \"success\"",
            Unconfirmed::Unprocessed => "a success listing ids as not processed",
        };
        format!("HTTP {status} with {what}")
    }
}

/// Keys of a success answer that list ids CleverTap did not process.
pub const LISTING_KEYS: [&str; 4] = ["unprocessed", "errors", "failed", "failures"];
/// Keys naming an id in a listed entry (`{"identity": "x", "error": "..."}`);
/// `record` holds the original record, as CleverTap's upload API answers.
const ID_KEYS: [&str; 4] = ["identity", "guid", "objectId", "id"];

/// The UTF-8 byte order mark. RFC 8259 section 8.1: JSON senders must not
/// add one, parsers may ignore it.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// The top-level keys of a JSON object, in order, duplicates kept (a plain
/// `serde_json::Value` keeps only the last of `{"status":"fail","status":"success"}`).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// An answer body as the classifier reads it.
enum Body {
    /// Empty, or only whitespace.
    Empty,
    NotJson,
    /// JSON, but not an object.
    NotObject,
    Object(Entries),
}

impl Body {
    fn parse(body: &[u8]) -> Body {
        let body = body.strip_prefix(BOM).unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) {
            return Body::Empty;
        }
        match serde_json::from_slice::<Entries>(body) {
            Ok(entries) => Body::Object(entries),
            Err(e) if e.is_data() => Body::NotObject,
            Err(_) => Body::NotJson,
        }
    }
}

impl Entries {
    /// The value of `key`; `Err` when it appears more than once.
    fn get(&self, key: &str) -> Result<Option<&serde_json::Value>, Unconfirmed> {
        let mut found = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        let first = found.next();
        match found.next() {
            Some(_) => Err(Unconfirmed::DuplicateKey),
            None => Ok(first),
        }
    }

    /// The `error` message, when it is a string that is not blank.
    fn message(&self) -> Option<String> {
        match self.get("error") {
            Ok(Some(serde_json::Value::String(e))) if !e.trim().is_empty() => Some(e.clone()),
            _ => None,
        }
    }
}

/// The ids a listing names; `Err` when its shape names no id or something
/// else than ids (a count, `true`, an entry without an id).
fn listed_ids(value: &serde_json::Value, out: &mut Vec<String>) -> Result<(), ()> {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(false) => Ok(()),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(()),
        Value::String(id) if !id.is_empty() => {
            out.push(id.clone());
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| match item {
            Value::String(id) if !id.is_empty() => {
                out.push(id.clone());
                Ok(())
            }
            Value::Object(_) => entry_ids(item, out),
            _ => Err(()),
        }),
        Value::Object(map) if map.is_empty() => Ok(()),
        Value::Object(map) => {
            if map
                .keys()
                .any(|k| ID_KEYS.contains(&k.as_str()) || k == "record")
            {
                entry_ids(value, out)
            } else {
                // `{"<id>": "<why>", ...}`
                out.extend(map.keys().cloned());
                Ok(())
            }
        }
        _ => Err(()),
    }
}

/// The ids of one listed entry: `{"identity": "x", ...}`, `{"guid": ["x"]}`,
/// `{"record": {"identity": "x"}, "error": "..."}`.
fn entry_ids(entry: &serde_json::Value, out: &mut Vec<String>) -> Result<(), ()> {
    use serde_json::Value;
    let Value::Object(map) = entry else {
        return Err(());
    };
    let before = out.len();
    for (key, value) in map {
        if key == "record" {
            entry_ids(value, out)?;
        } else if ID_KEYS.contains(&key.as_str()) {
            match value {
                Value::String(id) if !id.is_empty() => out.push(id.clone()),
                Value::Array(ids) => {
                    for id in ids {
                        match id {
                            Value::String(id) if !id.is_empty() => out.push(id.clone()),
                            _ => return Err(()),
                        }
                    }
                }
                _ => return Err(()),
            }
        }
    }
    if out.len() == before {
        return Err(());
    }
    Ok(())
}

/// Reads a 2xx answer's body (already cut to [`MAX_BODY_BYTES`]).
fn classify_2xx(body: &[u8], status: u16, after: Option<Duration>) -> Verdict {
    let unconfirmed = |why| Verdict::Unconfirmed { why, after };
    let entries = match Body::parse(body) {
        Body::Empty => return unconfirmed(Unconfirmed::EmptyBody),
        Body::NotJson => return unconfirmed(Unconfirmed::NotJson),
        Body::NotObject => return unconfirmed(Unconfirmed::NoStatus),
        Body::Object(entries) => entries,
    };
    let status_value = match entries.get("status") {
        Ok(Some(serde_json::Value::String(s))) => s.as_str(),
        Ok(_) => return unconfirmed(Unconfirmed::NoStatus),
        Err(why) => return unconfirmed(why),
    };
    if status_value.eq_ignore_ascii_case("fail") {
        // An explicit failure in a 2xx: treat like a 400 so bad ids are isolated.
        return Verdict::Rejected {
            message: api_message(body, status),
        };
    }
    // Exactly "success": never "SUCCESS" or " success".
    if status_value != "success" {
        return unconfirmed(Unconfirmed::OtherStatus);
    }
    let mut unprocessed = Vec::new();
    for key in LISTING_KEYS {
        match entries.get(key) {
            Ok(None) => {}
            Ok(Some(listing)) => {
                if listed_ids(listing, &mut unprocessed).is_err() {
                    return unconfirmed(Unconfirmed::Unprocessed);
                }
            }
            Err(why) => return unconfirmed(why),
        }
    }
    let processed = match entries.get("processed") {
        Ok(value) => value.and_then(serde_json::Value::as_u64),
        Err(why) => return unconfirmed(why),
    };
    if let Err(why) = entries.get("error") {
        return unconfirmed(why);
    }
    if unprocessed.is_empty() && processed.is_none() {
        Verdict::Deleted
    } else {
        Verdict::PartlyDeleted {
            unprocessed,
            processed,
        }
    }
}

/// Ids of a batch, in batch order.
pub type Ids = Vec<Arc<str>>;

/// Which ids of a batch a [`Verdict::PartlyDeleted`] answer confirms:
/// `(confirmed, unconfirmed)`, in batch order. `None` when the answer cannot
/// be mapped to the batch: it lists an id the batch does not hold, or its
/// `processed` count differs from the ids it does not list. Then the whole
/// batch is unconfirmed.
pub fn split_confirmed(
    ids: &[Arc<str>],
    unprocessed: &[String],
    processed: Option<u64>,
) -> Option<(Ids, Ids)> {
    let listed: std::collections::HashSet<&str> = unprocessed.iter().map(String::as_str).collect();
    if listed.iter().any(|l| !ids.iter().any(|id| &**id == *l)) {
        return None;
    }
    let (left, confirmed): (Vec<_>, Vec<_>) =
        ids.iter().cloned().partition(|id| listed.contains(&**id));
    if processed.is_some_and(|n| n != confirmed.len() as u64) {
        return None;
    }
    Some((confirmed, left))
}

/// The longest API message carried into dead-letter headers.
pub const MAX_MESSAGE_CHARS: usize = 300;

fn api_message(body: &[u8], status: u16) -> String {
    // A blank message says nothing: the status at least does.
    let text = match Body::parse(body) {
        Body::Object(entries) => entries.message(),
        _ => None,
    }
    .unwrap_or_else(|| format!("HTTP {status}"));
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// Classifies one attempt's result. Pure, so every branch is unit-tested.
pub fn classify(result: &Result<ApiReply, TransportError>) -> Verdict {
    let reply = match result {
        Ok(reply) => reply,
        Err(TransportError::Timeout) => {
            return Verdict::Retry {
                reason: RetryReason::Timeout,
                after: None,
            }
        }
        Err(TransportError::Connect | TransportError::Other) => {
            return Verdict::Retry {
                reason: RetryReason::Connection,
                after: None,
            }
        }
        Err(TransportError::InvalidRequest) => {
            return Verdict::Held {
                cause: Hold::InvalidRequest,
            }
        }
    };
    let retry = |reason| Verdict::Retry {
        reason,
        after: reply.retry_after,
    };
    let cut_off = reply.body.len() > MAX_BODY_BYTES;
    let body = &reply.body[..reply.body.len().min(MAX_BODY_BYTES)];
    match reply.status {
        // A success cut off is not a success: what followed is unknown.
        200..=299 if cut_off => Verdict::Unconfirmed {
            why: Unconfirmed::CutOff,
            after: reply.retry_after,
        },
        200..=299 => classify_2xx(body, reply.status, reply.retry_after),
        429 => retry(RetryReason::TooManyRequests),
        408 | 500..=599 => retry(RetryReason::ServerError),
        400 | 413 | 422 => Verdict::Rejected {
            message: api_message(body, reply.status),
        },
        401 | 403 | 404 => Verdict::Held {
            cause: Hold::Refused(reply.status),
        },
        _ => retry(RetryReason::Unexpected),
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3_600)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3_600)),
    )
}

/// The real client: HTTPS with rustls, pooled connections, a timeout per request.
///
/// Server certificates are checked by rustls-platform-verifier: on Linux
/// against the system's CA store (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`), plus any extra roots (`api.ca_file`). Redirects are not
/// followed: a 3xx is an answer outside the contract (retried as
/// `unexpected`), so the passcode header never goes to another host.
pub struct HttpDeleteApi {
    client: reqwest::Client,
}

pub use crate::config::DELETE_PATH;

impl HttpDeleteApi {
    pub fn new(timeout: Duration, pool_per_host: usize) -> Result<Self, reqwest::Error> {
        Self::with_extra_roots(timeout, pool_per_host, Vec::new())
    }

    /// Like [`HttpDeleteApi::new`], also trusting `extra_roots` (from `api.ca_file`).
    pub fn with_extra_roots(
        timeout: Duration,
        pool_per_host: usize,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(pool_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(extra_roots)
            .user_agent(concat!("clevertap-deleter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpDeleteApi { client })
    }
}

impl DeleteApi for HttpDeleteApi {
    fn delete<'a>(
        &'a self,
        account: &'a RegionAccount,
        batch: &'a DeleteBatch,
    ) -> BoxFuture<'a, Result<ApiReply, TransportError>> {
        Box::pin(async move {
            let url = format!("{}{}", account.endpoint, DELETE_PATH);
            let response = self
                .client
                .post(url)
                .header("X-CleverTap-Account-Id", &account.account_id)
                .header("X-CleverTap-Passcode", account.passcode.expose())
                .header("Content-Type", "application/json; charset=utf-8")
                .body(batch.request_body())
                .send()
                .await
                .map_err(|e| transport_error(account, e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            // Read at most one byte past the cap: enough to know the body was
            // cut. The rest is never read (the connection is not reused).
            let mut response = response;
            let mut body = Vec::new();
            while body.len() <= MAX_BODY_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = MAX_BODY_BYTES + 1 - body.len();
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(transport_error(account, e)),
                }
            }
            Ok(ApiReply {
                status,
                body,
                retry_after,
            })
        })
    }
}

/// Classifies a failed request and logs why it failed (a TLS certificate
/// refused, a refused connection, ...), which the class alone does not say.
fn transport_error(account: &RegionAccount, e: reqwest::Error) -> TransportError {
    if e.is_builder() {
        // reqwest's message names the problem ("failed to parse header
        // value"), never the value, so no passcode reaches the log.
        tracing::error!(
            region = %account.name,
            endpoint = %account.endpoint,
            status = TransportError::InvalidRequest.as_str(),
            error = %error_chain(&e.without_url()),
            "the request to CleverTap cannot be built: a control character in the account id or passcode, or an endpoint that is not a URL"
        );
        return TransportError::InvalidRequest;
    }
    let class = if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect
    } else {
        TransportError::Other
    };
    tracing::warn!(
        region = %account.name,
        endpoint = %account.endpoint,
        status = class.as_str(),
        error = %error_chain(&e.without_url()),
        "no answer from CleverTap"
    );
    class
}

/// An error and its sources, `: `-separated. reqwest errors carry neither
/// headers nor bodies (so no passcode and no id); the URL is removed by the
/// caller anyway.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The API the configuration asks for: the HTTPS client, or [`DryRunApi`].
pub fn client_for(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn DeleteApi>, reqwest::Error> {
    if config.settings.api.dry_run {
        tracing::warn!(
            "dry run: no Delete User Profile call, no offset commit, no dead-letter write"
        );
        return Ok(std::sync::Arc::new(DryRunApi));
    }
    Ok(std::sync::Arc::new(HttpDeleteApi::with_extra_roots(
        config.timeout(),
        config.settings.api.max_concurrency,
        config.extra_roots.clone(),
    )?))
}

/// Dry-run: makes no call and answers success, so everything else runs for real.
pub struct DryRunApi;

impl DeleteApi for DryRunApi {
    fn delete<'a>(
        &'a self,
        account: &'a RegionAccount,
        batch: &'a DeleteBatch,
    ) -> BoxFuture<'a, Result<ApiReply, TransportError>> {
        Box::pin(async move {
            tracing::info!(
                region = %account.name,
                kind = %batch.kind(),
                size = batch.len(),
                "dry run: would call the Delete User Profile API"
            );
            Ok(ApiReply {
                status: 200,
                body: br#"{"status":"success"}"#.to_vec(),
                retry_after: None,
            })
        })
    }
}

#[cfg(test)]
mod tests;
