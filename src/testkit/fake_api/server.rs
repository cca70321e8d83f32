//! The HTTP server and its handle: how to start the fake, the handle tests
//! and the demo use to steer it and read what it saw, and the request handler.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use tokio::sync::watch;

use crate::domain::ids::IdKind;
use crate::testkit::fake_api::contract::{header_str, ACCOUNT_HEADER, MAX_BODY_BYTES};
use crate::testkit::fake_api::faults::{Faults, OddAnswer};
use crate::testkit::fake_api::records::{Log, RequestRecord};
use crate::testkit::fake_api::state::{duration_nanos, lock, new_account, Inner};

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

/// A running fake. Cheap to clone; every clone controls the same server.
#[derive(Clone)]
pub struct FakeCleverTap {
    inner: Arc<Inner>,
    addr: SocketAddr,
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
            .map(|((acc, kind, id), (n, _))| ((acc.to_string(), *kind, id.clone()), *n))
            .collect()
    }

    /// When the first request that deleted each (account_id, kind, id)
    /// arrived (for latency measurements).
    pub fn first_deleted_at(&self) -> HashMap<(String, IdKind, String), Instant> {
        lock(&self.inner.deletions)
            .iter()
            .map(|((acc, kind, id), (_, at))| ((acc.to_string(), *kind, id.clone()), *at))
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
