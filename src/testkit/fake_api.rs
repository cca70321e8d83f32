//! An in-process fake of CleverTap's "Delete User Profile" API
//! (`POST /1/delete/profiles.json`).
//!
//! It enforces the real contract strictly (so tests catch a daemon that would be
//! refused in production), records every deletion and every answer, and can
//! inject the faults the daemon must survive: 5xx, 429, replies lost after the
//! deletion happened, hangs, and 2xx answers that do not confirm the deletion
//! (empty, 204, HTML, `"status":"partial"`, success listing unprocessed ids). Used by the `demo` command, integration tests
//! and the benchmark, so the hot path only takes short, uncontended locks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;

use crate::domain::ids::IdKind;
use crate::input::decode::json_type;

/// The only path the real API serves for deletions.
pub const DELETE_PATH: &str = "/1/delete/profiles.json";
/// The documented per-request limit of values in an `identity` or `guid` array.
pub const MAX_IDS_PER_REQUEST: usize = 100;
/// Far above any legal body (100 ids); a bigger body is a client bug.
const MAX_BODY_BYTES: usize = 1 << 20;
const ACCOUNT_HEADER: &str = "x-clevertap-account-id";
const PASSCODE_HEADER: &str = "x-clevertap-passcode";
const SUCCESS_BODY: &str = r#"{"status":"success"}"#;

/// A 2xx answer outside the documented contract, given to every request
/// that holds an id marked with [`FakeCleverTap::odd_ids`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OddAnswer {
    /// 200 with an empty body; nothing is deleted.
    Empty,
    /// 204 No Content; nothing is deleted.
    NoContent,
    /// 200 with a proxy's HTML page; nothing is deleted.
    Html,
    /// 200 `{"status":"partial"}`; nothing is deleted.
    Partial,
    /// 200 with a UTF-8 byte order mark before `{"status":"success"}`; the
    /// whole request is deleted.
    BomSuccess,
    /// 200 `{"status":"success","processed":N,"unprocessed":[...]}` listing
    /// the request's marked ids: the others are deleted, those are not.
    Unprocessed,
}

/// One account the fake accepts.
#[derive(Clone, Debug)]
pub struct FakeAccount {
    pub account_id: String,
    pub passcode: String,
}

impl FakeAccount {
    pub fn new(account_id: impl Into<String>, passcode: impl Into<String>) -> Self {
        FakeAccount {
            account_id: account_id.into(),
            passcode: passcode.into(),
        }
    }
}

/// Injected faults; each probability is rolled independently per valid request,
/// in the order too_many, server_error, lost_reply, empty_200, hang.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability of answering 500/502/503 (random pick) without deleting.
    pub server_error: f64,
    /// Probability of answering 429 without deleting.
    pub too_many: f64,
    /// Probability of deleting (recording the ids) and then answering 502.
    pub lost_reply: f64,
    /// Probability of answering 200 with an empty body, deleting nothing
    /// (a proxy's artefact: the daemon must not count it as a deletion).
    pub empty_200: f64,
    /// Probability of sleeping `hang_for` before answering (then answering normally).
    pub hang: f64,
    pub hang_for: Duration,
    /// If set, 429 answers carry `Retry-After: N`.
    pub retry_after_secs: Option<u64>,
}

/// How to start the fake.
#[derive(Clone, Debug)]
pub struct FakeApiConfig {
    pub accounts: Vec<FakeAccount>,
    /// Per account; above it requests are answered 429 "Too many concurrent requests".
    pub max_concurrency: usize,
    /// Every valid request waits this long before its answer (0 = answer at once).
    pub latency: Duration,
    pub faults: Faults,
    /// Usually 127.0.0.1:0.
    pub listen: SocketAddr,
}

impl Default for FakeApiConfig {
    fn default() -> Self {
        FakeApiConfig {
            accounts: Vec::new(),
            max_concurrency: 15,
            latency: Duration::ZERO,
            faults: Faults::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// One answered request, as seen by the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The `X-CleverTap-Account-Id` header as sent ("" if absent).
    pub account_id: String,
    pub status: u16,
    /// The id kind of the body, when it could be told.
    pub kind: Option<IdKind>,
    /// Number of ids in the body, when it could be told (else 0).
    pub ids: usize,
}

/// A running fake. Cheap to clone; every clone controls the same server.
#[derive(Clone)]
pub struct FakeCleverTap {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

struct AccountState {
    passcode: Mutex<String>,
    in_progress: AtomicUsize,
    peak: AtomicUsize,
}

/// Decrements the account's in-progress count however the request ends
/// (answered, hung then cancelled, client gone).
struct InFlight(Arc<AccountState>);

impl InFlight {
    /// Counts the request in; returns the guard and the count including it.
    fn enter(account: Arc<AccountState>) -> (InFlight, usize) {
        let now = account.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        account.peak.fetch_max(now, Ordering::SeqCst);
        (InFlight(account), now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Record {
    // Arc so the benchmark's millions of records do not each own a String.
    account: Arc<str>,
    status: u16,
    kind: Option<IdKind>,
    ids: usize,
}

#[derive(Default)]
struct Log {
    requests: Vec<Record>,
    statuses: BTreeMap<u16, u64>,
}

/// (account, kind, id); the account is shared so each key costs one String.
type DeletionKey = (Arc<str>, IdKind, String);

struct Inner {
    accounts: Mutex<HashMap<String, Arc<AccountState>>>,
    max_concurrency: AtomicUsize,
    latency_nanos: AtomicU64,
    faults: Mutex<Faults>,
    failing: Mutex<HashMap<String, u16>>,
    rejected: Mutex<HashSet<String>>,
    odd: Mutex<HashMap<String, OddAnswer>>,
    deletions: Mutex<HashMap<DeletionKey, u32>>,
    deleted_total: AtomicU64,
    log: Mutex<Log>,
    request_count: AtomicU64,
    violations: Mutex<Vec<String>>,
    shutdown: watch::Sender<bool>,
}

/// Poisoning cannot leave these maps inconsistent (no critical section panics
/// half-way), and the fake must never panic, so a poisoned lock is just used.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn new_account(passcode: &str) -> Arc<AccountState> {
    Arc::new(AccountState {
        passcode: Mutex::new(passcode.to_owned()),
        in_progress: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    })
}

impl FakeCleverTap {
    /// Binds `config.listen` and serves on a task of the current tokio runtime.
    pub async fn start(config: FakeApiConfig) -> std::io::Result<FakeCleverTap> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let accounts = config
            .accounts
            .iter()
            .map(|a| (a.account_id.clone(), new_account(&a.passcode)))
            .collect();
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            accounts: Mutex::new(accounts),
            max_concurrency: AtomicUsize::new(config.max_concurrency),
            latency_nanos: AtomicU64::new(duration_nanos(config.latency)),
            faults: Mutex::new(config.faults),
            failing: Mutex::new(HashMap::new()),
            rejected: Mutex::new(HashSet::new()),
            odd: Mutex::new(HashMap::new()),
            deletions: Mutex::new(HashMap::new()),
            deleted_total: AtomicU64::new(0),
            log: Mutex::new(Log::default()),
            request_count: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
            shutdown,
        });
        // A fallback handler sees every request, so wrong paths and methods are
        // answered (and recorded) by our own code rather than axum's defaults.
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move {
            let signal = async move {
                // Err only if the sender is gone, which also means "stop".
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(error = %e, "fake CleverTap server failed");
            }
        });
        tracing::debug!(%addr, "fake CleverTap API listening");
        Ok(FakeCleverTap { inner, addr })
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.inner.faults) = faults;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.inner
            .latency_nanos
            .store(duration_nanos(latency), Ordering::Relaxed);
    }

    /// Changes the per-account concurrency limit at runtime.
    pub fn set_max_concurrency(&self, max: usize) {
        self.inner.max_concurrency.store(max, Ordering::Relaxed);
    }

    /// Changes the accepted passcode of an account (adding the account if unknown).
    pub fn set_passcode(&self, account_id: &str, passcode: &str) {
        let mut accounts = lock(&self.inner.accounts);
        match accounts.get(account_id) {
            Some(acc) => *lock(&acc.passcode) = passcode.to_owned(),
            None => {
                accounts.insert(account_id.to_owned(), new_account(passcode));
            }
        }
    }

    /// While set, any request containing one of these ids is answered with
    /// `status` (e.g. 500) and deletes nothing.
    pub fn fail_ids(&self, ids: impl IntoIterator<Item = String>, status: u16) {
        lock(&self.inner.failing).extend(ids.into_iter().map(|id| (id, status)));
    }

    pub fn clear_failing_ids(&self) {
        lock(&self.inner.failing).clear();
    }

    /// Permanently answer 400 `Invalid identity <id>` (or guid) to any request
    /// containing one of these ids; such a request deletes nothing.
    pub fn reject_ids(&self, ids: impl IntoIterator<Item = String>) {
        lock(&self.inner.rejected).extend(ids);
    }

    /// While set, any request containing one of these ids (and no rejected
    /// or failing id) gets `answer`; the first marked id of the request picks
    /// the answer.
    pub fn odd_ids(&self, ids: impl IntoIterator<Item = String>, answer: OddAnswer) {
        lock(&self.inner.odd).extend(ids.into_iter().map(|id| (id, answer)));
    }

    pub fn clear_odd_ids(&self) {
        lock(&self.inner.odd).clear();
    }

    /// Times each (account_id, kind, id) was deleted (successful requests and
    /// lost replies).
    pub fn deletion_counts(&self) -> HashMap<(String, IdKind, String), u32> {
        lock(&self.inner.deletions)
            .iter()
            .map(|((acc, kind, id), n)| ((acc.to_string(), *kind, id.clone()), *n))
            .collect()
    }

    /// Sum of all deletions counted.
    pub fn deleted_total(&self) -> u64 {
        self.inner.deleted_total.load(Ordering::Relaxed)
    }

    /// Every answered request, in answer order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.log)
            .requests
            .iter()
            .map(|r| RequestRecord {
                account_id: r.account.to_string(),
                status: r.status,
                kind: r.kind,
                ids: r.ids,
            })
            .collect()
    }

    pub fn request_count(&self) -> u64 {
        self.inner.request_count.load(Ordering::Relaxed)
    }

    pub fn status_counts(&self) -> BTreeMap<u16, u64> {
        lock(&self.inner.log).statuses.clone()
    }

    /// Highest number of this account's requests in progress at once (every
    /// authenticated request from arrival to answer, including those answered 429).
    pub fn max_concurrent(&self, account_id: &str) -> usize {
        lock(&self.inner.accounts)
            .get(account_id)
            .map_or(0, |a| a.peak.load(Ordering::SeqCst))
    }

    /// Contract violations seen (requests answered 400 for a contract reason,
    /// plus wrong paths and methods), each as "account: what was wrong".
    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner.violations).clone()
    }

    /// Stops accepting connections and closes idle ones; in-flight requests
    /// may still finish.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

/// What the fake decided to answer.
struct Reply {
    status: StatusCode,
    /// `None` = success body, else the `error` of a fail body.
    error: Option<String>,
    kind: Option<IdKind>,
    ids: usize,
    retry_after: Option<u64>,
    extra_header: Option<(axum::http::HeaderName, HeaderValue)>,
    /// A body outside the contract (content type, bytes), sent instead.
    raw_body: Option<(&'static str, Vec<u8>)>,
}

impl Reply {
    fn success(kind: IdKind, ids: usize) -> Reply {
        Reply {
            status: StatusCode::OK,
            error: None,
            kind: Some(kind),
            ids,
            retry_after: None,
            extra_header: None,
            raw_body: None,
        }
    }

    /// A 2xx outside the contract.
    fn odd(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            error: None,
            kind: None,
            ids: 0,
            retry_after: None,
            extra_header: None,
            raw_body: Some((content_type, body)),
        }
    }

    fn fail(status: StatusCode, error: impl Into<String>) -> Reply {
        Reply {
            status,
            error: Some(error.into()),
            kind: None,
            ids: 0,
            retry_after: None,
            extra_header: None,
            raw_body: None,
        }
    }

    fn too_many(retry_after: Option<u64>) -> Reply {
        Reply {
            retry_after,
            ..Reply::fail(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many concurrent requests",
            )
        }
    }

    fn with_body(mut self, kind: IdKind, ids: usize) -> Reply {
        self.kind = Some(kind);
        self.ids = ids;
        self
    }

    fn into_response(self) -> Response {
        if let Some((content_type, body)) = self.raw_body {
            let mut resp = (self.status, body).into_response();
            if !content_type.is_empty() {
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            return resp;
        }
        let body = match &self.error {
            None => Body::from(SUCCESS_BODY),
            Some(error) => Body::from(
                serde_json::json!({
                    "status": "fail",
                    "error": error,
                    "code": self.status.as_u16(),
                })
                .to_string(),
            ),
        };
        let mut resp = (
            self.status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some((name, value)) = self.extra_header {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `application/json`, optionally followed by parameters (`; charset=utf-8`).
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = header_str(headers, CONTENT_TYPE.as_str()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
}

/// A body that breaks the contract: the message plus what could be told of it.
struct Invalid {
    message: String,
    kind: Option<IdKind>,
    ids: usize,
}

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        kind: None,
        ids: 0,
    }
}

/// Checks the body against the contract and returns its single id kind and ids.
fn parse_body(body: &[u8]) -> Result<(IdKind, Vec<String>), Invalid> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(invalid(format!(
            "body must be a JSON object, got {}",
            json_type(&value)
        )));
    };
    let identity = map.remove("identity");
    let guid = map.remove("guid");
    let (kind, value) = match (identity, guid) {
        (Some(_), Some(_)) => {
            return Err(invalid("body has both identity and guid; send only one"))
        }
        (None, None) => return Err(invalid("body has neither identity nor guid")),
        (Some(v), None) => (IdKind::Identity, v),
        (None, Some(v)) => (IdKind::Guid, v),
    };
    let bad = |message: String, ids: usize| Invalid {
        message,
        kind: Some(kind),
        ids,
    };
    // The contract knows no other keys; anything else is a client bug.
    if let Some(key) = map.keys().next() {
        return Err(bad(format!("unexpected key {key:?} in body"), 0));
    }
    match value {
        Value::String(s) if s.is_empty() => Err(bad(format!("{kind} is an empty string"), 1)),
        Value::String(s) => Ok((kind, vec![s])),
        Value::Array(items) => {
            let n = items.len();
            if n == 0 {
                return Err(bad(format!("{kind} is an empty array"), 0));
            }
            if n > MAX_IDS_PER_REQUEST {
                return Err(bad(
                    format!("{kind} has {n} values, at most {MAX_IDS_PER_REQUEST} allowed"),
                    n,
                ));
            }
            let mut ids = Vec::with_capacity(n);
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) if s.is_empty() => {
                        return Err(bad(format!("{kind}[{i}] is an empty string"), n))
                    }
                    Value::String(s) => ids.push(s),
                    other => {
                        return Err(bad(
                            format!("{kind}[{i}] must be a string, got {}", json_type(&other)),
                            n,
                        ))
                    }
                }
            }
            Ok((kind, ids))
        }
        other => Err(bad(
            format!(
                "{kind} must be a string or an array of strings, got {}",
                json_type(&other)
            ),
            0,
        )),
    }
}

/// The random fault picked for one request.
enum Fault {
    None,
    TooMany,
    ServerError(StatusCode),
    LostReply,
    Empty200,
    Hang(Duration),
}

fn roll_faults(f: &Faults) -> Fault {
    // Skip the rng entirely in the common no-fault case (benchmarks).
    if f.too_many <= 0.0
        && f.server_error <= 0.0
        && f.lost_reply <= 0.0
        && f.empty_200 <= 0.0
        && f.hang <= 0.0
    {
        return Fault::None;
    }
    // `random::<f64>()` is in [0, 1): p >= 1 always fires, p <= 0 or NaN never,
    // and unlike `random_bool` it cannot panic on an out-of-range p.
    let mut rng = rand::rng();
    if rng.random::<f64>() < f.too_many {
        return Fault::TooMany;
    }
    if rng.random::<f64>() < f.server_error {
        const CODES: [StatusCode; 3] = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        return Fault::ServerError(CODES[rng.random_range(0..CODES.len())]);
    }
    if rng.random::<f64>() < f.lost_reply {
        return Fault::LostReply;
    }
    if rng.random::<f64>() < f.empty_200 {
        return Fault::Empty200;
    }
    if rng.random::<f64>() < f.hang {
        return Fault::Hang(f.hang_for);
    }
    Fault::None
}

impl Inner {
    fn account(&self, account_id: &str) -> Option<Arc<AccountState>> {
        lock(&self.accounts).get(account_id).cloned()
    }

    fn violation(&self, account: &str, message: &str) {
        tracing::debug!(account, message, "fake CleverTap: contract violation");
        lock(&self.violations).push(format!("{account}: {message}"));
    }

    fn record_deletions(&self, account: &Arc<str>, kind: IdKind, ids: Vec<String>) {
        let n = ids.len() as u64;
        {
            let mut deletions = lock(&self.deletions);
            for id in ids {
                *deletions.entry((account.clone(), kind, id)).or_insert(0) += 1;
            }
        }
        self.deleted_total.fetch_add(n, Ordering::Relaxed);
    }

    fn record_answer(&self, account: Arc<str>, reply: &Reply) {
        let status = reply.status.as_u16();
        {
            let mut log = lock(&self.log);
            log.requests.push(Record {
                account,
                status,
                kind: reply.kind,
                ids: reply.ids,
            });
            *log.statuses.entry(status).or_insert(0) += 1;
        }
        self.request_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies the contract in the documented order and decides the answer.
    async fn decide(
        &self,
        parts: &Parts,
        body: Result<Bytes, axum::Error>,
        account: &Arc<str>,
    ) -> Reply {
        // 1. Path, then method.
        if parts.uri.path() != DELETE_PATH {
            self.violation(
                account,
                &format!("request to unknown path {}", parts.uri.path()),
            );
            return Reply::fail(StatusCode::NOT_FOUND, "Not found");
        }
        if parts.method != Method::POST {
            self.violation(account, &format!("method {} not allowed", parts.method));
            return Reply {
                extra_header: Some((ALLOW, HeaderValue::from_static("POST"))),
                ..Reply::fail(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
            };
        }

        // 2. Credentials (a credentials error, not a contract violation).
        let passcode = header_str(&parts.headers, PASSCODE_HEADER);
        let state = match (self.account(account), passcode) {
            (Some(state), Some(passcode)) if *lock(&state.passcode) == passcode => state,
            _ => return Reply::fail(StatusCode::UNAUTHORIZED, "Invalid Credentials"),
        };

        // 3. Concurrency, counted until this function returns (or is dropped).
        let (_in_flight, now) = InFlight::enter(state);
        let faults = lock(&self.faults).clone();
        if now > self.max_concurrency.load(Ordering::Relaxed) {
            return Reply::too_many(faults.retry_after_secs);
        }

        // 4. Content type.
        if !is_json_content_type(&parts.headers) {
            let got = header_str(&parts.headers, CONTENT_TYPE.as_str()).unwrap_or("(none)");
            let message = format!("Content-Type must be application/json, got {got}");
            self.violation(account, &message);
            return Reply::fail(StatusCode::BAD_REQUEST, message);
        }

        // 5. Body.
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                let message = format!("request body could not be read: {e}");
                self.violation(account, &message);
                // Part of the body may be unread: do not reuse this connection.
                return Reply {
                    extra_header: Some((CONNECTION, HeaderValue::from_static("close"))),
                    ..Reply::fail(StatusCode::BAD_REQUEST, message)
                };
            }
        };
        let (kind, ids) = match parse_body(&body) {
            Ok(parsed) => parsed,
            Err(bad) => {
                self.violation(account, &bad.message);
                let reply = Reply::fail(StatusCode::BAD_REQUEST, bad.message);
                return match bad.kind {
                    Some(kind) => reply.with_body(kind, bad.ids),
                    None => reply,
                };
            }
        };
        let n = ids.len();

        // 6. Latency, then injected outcomes, then success.
        let latency = self.latency_nanos.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_nanos(latency)).await;
        }
        if let Some(id) = {
            let rejected = lock(&self.rejected);
            ids.iter().find(|id| rejected.contains(*id)).cloned()
        } {
            return Reply::fail(StatusCode::BAD_REQUEST, format!("Invalid {kind} {id}"))
                .with_body(kind, n);
        }
        if let Some(status) = {
            let failing = lock(&self.failing);
            ids.iter().find_map(|id| failing.get(id).copied())
        } {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reply = if status == StatusCode::TOO_MANY_REQUESTS {
                Reply::too_many(faults.retry_after_secs)
            } else {
                Reply::fail(status, "Injected failure")
            };
            return reply.with_body(kind, n);
        }
        if let Some(answer) = {
            let odd = lock(&self.odd);
            ids.iter().find_map(|id| odd.get(id).copied())
        } {
            return self.odd_answer(account, kind, ids, answer);
        }
        match roll_faults(&faults) {
            Fault::None => {}
            Fault::TooMany => return Reply::too_many(faults.retry_after_secs).with_body(kind, n),
            Fault::ServerError(status) => {
                return Reply::fail(status, "Internal server error").with_body(kind, n)
            }
            Fault::LostReply => {
                // The deletion happened; only the answer is lost on the way back.
                self.record_deletions(account, kind, ids);
                return Reply::fail(StatusCode::BAD_GATEWAY, "Bad gateway").with_body(kind, n);
            }
            Fault::Empty200 => {
                return Reply::odd(StatusCode::OK, "", Vec::new()).with_body(kind, n);
            }
            Fault::Hang(hang_for) => tokio::time::sleep(hang_for).await,
        }
        self.record_deletions(account, kind, ids);
        Reply::success(kind, n)
    }

    /// Answers a valid request that holds an id marked with `answer`.
    fn odd_answer(
        &self,
        account: &Arc<str>,
        kind: IdKind,
        ids: Vec<String>,
        answer: OddAnswer,
    ) -> Reply {
        let n = ids.len();
        let json = "application/json";
        let reply = match answer {
            OddAnswer::Empty => Reply::odd(StatusCode::OK, json, Vec::new()),
            OddAnswer::NoContent => Reply::odd(StatusCode::NO_CONTENT, "", Vec::new()),
            OddAnswer::Html => Reply::odd(
                StatusCode::OK,
                "text/html",
                b"<html><body><h1>Request accepted</h1></body></html>".to_vec(),
            ),
            OddAnswer::Partial => {
                Reply::odd(StatusCode::OK, json, br#"{"status":"partial"}"#.to_vec())
            }
            OddAnswer::BomSuccess => {
                self.record_deletions(account, kind, ids);
                let mut body = "\u{feff}".as_bytes().to_vec();
                body.extend_from_slice(SUCCESS_BODY.as_bytes());
                Reply::odd(StatusCode::OK, json, body)
            }
            OddAnswer::Unprocessed => {
                let (unprocessed, processed): (Vec<String>, Vec<String>) = {
                    let odd = lock(&self.odd);
                    ids.into_iter().partition(|id| odd.contains_key(id))
                };
                let body = serde_json::json!({
                    "status": "success",
                    "processed": processed.len(),
                    "unprocessed": unprocessed,
                })
                .to_string()
                .into_bytes();
                self.record_deletions(account, kind, processed);
                Reply::odd(StatusCode::OK, json, body)
            }
        };
        reply.with_body(kind, n)
    }
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // Read the whole body before any answer, even an early 401/404/429: an
    // unread body makes hyper close the connection, which races with a client
    // reusing it from its pool and shows up as spurious transport errors.
    let body = to_bytes(body, MAX_BODY_BYTES).await;
    let account: Arc<str> = Arc::from(header_str(&parts.headers, ACCOUNT_HEADER).unwrap_or(""));
    let reply = inner.decide(&parts, body, &account).await;
    inner.record_answer(account, &reply);
    reply.into_response()
}

#[cfg(test)]
mod tests;
