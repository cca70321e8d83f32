//! Sends batches to CleverTap within each account's concurrency limit and
//! keeps at each batch until every id has an answer: deleted, or rejected
//! alone by a 400. Retries never give up; 401/403/404 hold the region.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::api::{classify, DeleteApi, Hold, Verdict};
use crate::backoff::Backoff;
use crate::batch::DeleteBatch;
use crate::config::RegionAccount;
use crate::health::Health;
use crate::ids::{IdKind, RegionName};
use crate::limiter::AimdLimiter;
use crate::metrics::Metrics;

/// What the dispatcher reports back: the only thing flowing upstream.
#[derive(Debug)]
pub enum DispatchReport {
    Deleted {
        batch: DeleteBatch,
        /// Requests this batch took, the successful one included.
        attempts: u32,
    },
    Rejected {
        region: RegionName,
        kind: IdKind,
        id: Arc<str>,
        message: String,
        attempts: u32,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    pub max_concurrency: usize,
    pub backoff: Backoff,
    pub auth_retry: Duration,
    /// `log.log_ids`: put ids into debug logs (personal data, off by default).
    pub log_ids: bool,
}

/// One account's lane: its credentials, its limiter, and the probe lock that
/// lets a single request at a time test a held account.
struct AccountLane {
    account: RegionAccount,
    limiter: AimdLimiter,
    probe: tokio::sync::Mutex<()>,
    /// Batches handed to this lane and not finished (waiting or in flight).
    pending: AtomicUsize,
}

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<DispatcherInner>,
}

struct DispatcherInner {
    api: Arc<dyn DeleteApi>,
    lanes: HashMap<RegionName, Arc<AccountLane>>,
    reports: mpsc::UnboundedSender<DispatchReport>,
    settings: DispatchSettings,
    metrics: Metrics,
    health: Health,
    batches_in_flight: AtomicUsize,
}

impl Dispatcher {
    pub fn new(
        api: Arc<dyn DeleteApi>,
        accounts: &[RegionAccount],
        settings: DispatchSettings,
        metrics: Metrics,
        health: Health,
    ) -> (Self, mpsc::UnboundedReceiver<DispatchReport>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lanes = accounts
            .iter()
            .map(|a| {
                metrics.register_region(a.name.as_str());
                metrics
                    .api_concurrency_limit
                    .with_label_values(&[a.name.as_str()])
                    .set(settings.max_concurrency as i64);
                (
                    a.name.clone(),
                    Arc::new(AccountLane {
                        account: a.clone(),
                        limiter: AimdLimiter::new(settings.max_concurrency),
                        probe: tokio::sync::Mutex::new(()),
                        pending: AtomicUsize::new(0),
                    }),
                )
            })
            .collect();
        let inner = DispatcherInner {
            api,
            lanes,
            reports: tx,
            settings,
            metrics,
            health,
            batches_in_flight: AtomicUsize::new(0),
        };
        (
            Dispatcher {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Starts delivering a batch in the background.
    pub fn dispatch(&self, batch: DeleteBatch) {
        let Some(lane) = self.inner.lanes.get(batch.region()).cloned() else {
            // The decoder only admits configured regions, so this is a bug; never drop silently.
            panic!("batch for unconfigured region {}", batch.region());
        };
        let inner = self.inner.clone();
        inner.batches_in_flight.fetch_add(1, Ordering::Relaxed);
        lane.pending.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            inner.deliver(&lane, batch).await;
            lane.pending.fetch_sub(1, Ordering::Relaxed);
            inner.batches_in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Whether the region's account already has a batch for every request
    /// slot: a batch sent now would only wait in line, so a partial one may
    /// as well stay open and fill up.
    pub fn is_saturated(&self, region: &RegionName) -> bool {
        self.inner.lanes.get(region).is_some_and(|lane| {
            lane.pending.load(Ordering::Relaxed) >= self.inner.settings.max_concurrency
        })
    }

    /// Batches (including split parts) still being delivered.
    pub fn batches_in_flight(&self) -> usize {
        self.inner.batches_in_flight.load(Ordering::Relaxed)
    }
}

impl DispatcherInner {
    async fn deliver(&self, lane: &AccountLane, batch: DeleteBatch) {
        // A stack of work: splitting a rejected batch pushes its halves.
        let mut work = vec![batch];
        while let Some(batch) = work.pop() {
            if let Some(halves) = self.deliver_one(lane, batch).await {
                work.push(halves.1);
                work.push(halves.0);
            }
        }
    }

    /// Delivers one batch until it is deleted or rejected. Returns the halves
    /// to try when CleverTap rejected a multi-id batch.
    async fn deliver_one(
        &self,
        lane: &AccountLane,
        batch: DeleteBatch,
    ) -> Option<(DeleteBatch, DeleteBatch)> {
        let region = lane.account.name.as_str();
        let kind = batch.kind();
        let size = batch.len();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            // While the region is held, only one request at a time probes it.
            let probe_guard = if self.health.region_held(region) {
                let guard = lane.probe.lock().await;
                if self.health.region_held(region) {
                    let wait = self.settings.auth_retry;
                    tracing::debug!(region, %kind, size, attempt, "region held: probing after {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Some(guard)
            } else {
                None
            };

            let permit = lane.limiter.acquire().await;
            self.metrics
                .api_in_flight
                .with_label_values(&[region])
                .set(lane.limiter.in_flight() as i64);
            let started = Instant::now();
            let result = self.api.delete(&lane.account, &batch).await;
            let elapsed = started.elapsed();
            drop(permit);
            self.metrics
                .api_in_flight
                .with_label_values(&[region])
                .set(lane.limiter.in_flight() as i64);
            self.metrics
                .api_request_duration
                .with_label_values(&[region])
                .observe(elapsed.as_secs_f64());
            // Logs carry the raw code; the metric label a bounded set of values.
            let status_label = match &result {
                Ok(r) => r.status.to_string(),
                Err(e) => e.as_str().to_string(),
            };
            let status_metric = match &result {
                Ok(r) => crate::metrics::api_status_label(r.status),
                Err(e) => e.as_str(),
            };
            self.metrics
                .api_requests
                .with_label_values(&[region, status_metric])
                .inc();

            let verdict = classify(&result);
            match verdict {
                Verdict::Deleted => {
                    lane.limiter.on_success();
                    self.note_limit(lane);
                    if self.health.set_region_held(region, false) {
                        tracing::info!(
                            region,
                            "region released: CleverTap accepts the credentials again"
                        );
                    }
                    drop(probe_guard);
                    self.metrics
                        .ids_deleted
                        .with_label_values(&[region, kind.as_str()])
                        .inc_by(size as u64);
                    if self.settings.log_ids {
                        tracing::debug!(region, %kind, size, attempt, status = %status_label, ids = ?batch.ids(), "batch deleted");
                    } else {
                        tracing::debug!(region, %kind, size, attempt, status = %status_label, "batch deleted");
                    }
                    let _ = self.reports.send(DispatchReport::Deleted {
                        batch,
                        attempts: attempt,
                    });
                    return None;
                }
                Verdict::Retry { reason, after } => {
                    drop(probe_guard);
                    if reason == crate::api::RetryReason::TooManyRequests {
                        lane.limiter.on_overload(Instant::now());
                        self.note_limit(lane);
                    }
                    self.metrics
                        .api_retries
                        .with_label_values(&[region, reason.as_str()])
                        .inc();
                    let delay = self
                        .settings
                        .backoff
                        .delay(attempt, after, &mut rand::rng());
                    tracing::warn!(
                        region, %kind, size, attempt, status = %status_label,
                        reason = reason.as_str(), retry_in_ms = delay.as_millis() as u64,
                        "delete request failed; will retry"
                    );
                    tokio::time::sleep(delay).await;
                }
                Verdict::Rejected { message } => {
                    drop(probe_guard);
                    lane.limiter.on_success();
                    return match batch.split() {
                        Ok(halves) => {
                            tracing::info!(region, %kind, size, attempt, status = %status_label, "batch rejected; splitting to isolate the refused ids");
                            Some(halves)
                        }
                        Err(single) => {
                            tracing::warn!(region, %kind, size, attempt, status = %status_label, "id rejected by CleverTap; dead-lettering its events");
                            if self.settings.log_ids {
                                tracing::debug!(region, %kind, id = %single.ids()[0], "rejected id");
                            }
                            let _ = self.reports.send(DispatchReport::Rejected {
                                region: single.region().clone(),
                                kind,
                                id: single.ids()[0].clone(),
                                message,
                                attempts: attempt,
                            });
                            None
                        }
                    };
                }
                Verdict::Held { cause } => {
                    self.metrics
                        .region_auth_failures
                        .with_label_values(&[region, cause.as_str()])
                        .inc();
                    if self.health.hold_region(region, cause.readiness()) {
                        match cause {
                            Hold::Refused(status) => tracing::error!(
                                region, %kind, size, attempt, status,
                                "CleverTap refuses this region's credentials or endpoint; holding its deletions (nothing is committed past them) and probing every {:?}",
                                self.settings.auth_retry
                            ),
                            Hold::InvalidRequest => tracing::error!(
                                region, %kind, size, attempt, status = cause.as_str(),
                                "this region's request cannot be built (check its account id, passcode and endpoint for control characters); holding its deletions (nothing is committed past them) and trying again every {:?}",
                                self.settings.auth_retry
                            ),
                        }
                    }
                    drop(probe_guard);
                }
            }
        }
    }

    fn note_limit(&self, lane: &AccountLane) {
        self.metrics
            .api_concurrency_limit
            .with_label_values(&[lane.account.name.as_str()])
            .set(lane.limiter.limit() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiReply, TransportError};
    use crate::secret::Secret;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    type Script =
        Box<dyn Fn(&DeleteBatch, usize) -> Result<ApiReply, TransportError> + Send + Sync>;

    /// Answers from a script keyed by what the batch holds.
    struct ScriptedApi {
        answer: Script,
        calls: Mutex<Vec<Vec<String>>>,
    }

    impl DeleteApi for ScriptedApi {
        fn delete<'a>(
            &'a self,
            _account: &'a RegionAccount,
            batch: &'a DeleteBatch,
        ) -> BoxFuture<'a, Result<ApiReply, TransportError>> {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(batch.ids().iter().map(|i| i.to_string()).collect());
                calls.len()
            };
            let answer = (self.answer)(batch, n);
            Box::pin(async move { answer })
        }
    }

    fn reply(status: u16, body: &str) -> Result<ApiReply, TransportError> {
        Ok(ApiReply {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        })
    }

    fn setup(
        api: Arc<ScriptedApi>,
    ) -> (Dispatcher, mpsc::UnboundedReceiver<DispatchReport>, Health) {
        setup_with(api, "p", Metrics::new())
    }

    fn setup_with(
        api: Arc<dyn DeleteApi>,
        passcode: &str,
        metrics: Metrics,
    ) -> (Dispatcher, mpsc::UnboundedReceiver<DispatchReport>, Health) {
        let health = Health::new(metrics.clone());
        let account = RegionAccount {
            name: RegionName::new("eu1"),
            account_id: "A".into(),
            passcode: Secret::new(passcode),
            endpoint: "http://127.0.0.1:1".into(),
        };
        let settings = DispatchSettings {
            max_concurrency: 4,
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
            },
            auth_retry: Duration::from_millis(20),
            log_ids: false,
        };
        let (d, rx) = Dispatcher::new(api, &[account], settings, metrics, health.clone());
        (d, rx, health)
    }

    fn batch(ids: &[&str]) -> DeleteBatch {
        DeleteBatch::new(
            RegionName::new("eu1"),
            IdKind::Identity,
            ids.iter().map(|i| Arc::from(*i)).collect(),
        )
        .unwrap()
    }

    /// Waits until `cond` holds: the positive signal a test waits for
    /// before asserting that something did not happen.
    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn request_metrics_have_a_bounded_status_label() {
        // A misbehaving endpoint answering ever new codes must not create a
        // series per code.
        let odd: Vec<u16> = vec![302, 418, 451, 599, 700, 999, 1, 1000, 207];
        let script = odd.clone();
        let api = Arc::new(ScriptedApi {
            answer: Box::new(move |_, n| match script.get(n - 1) {
                Some(s) => reply(*s, ""),
                None => reply(200, r#"{"status":"success"}"#),
            }),
            calls: Mutex::new(vec![]),
        });
        let metrics = Metrics::new();
        let (d, mut rx, _) = setup_with(api.clone(), "p", metrics.clone());
        d.dispatch(batch(&["a"]));
        assert!(matches!(
            rx.recv().await.unwrap(),
            DispatchReport::Deleted { .. }
        ));
        let text = metrics.render();
        let labels: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("clevertap_deleter_api_requests_total{"))
            .filter_map(|l| l.split("status=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(labels.len(), 6, "{labels:?}");
        for l in &labels {
            assert!(
                [
                    "200",
                    "2xx_other",
                    "3xx_other",
                    "4xx_other",
                    "5xx_other",
                    "other"
                ]
                .contains(l),
                "unbounded status label {l:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_holds_the_region() {
        // A passcode with a control character (configuration validation
        // bypassed): reqwest refuses to build the request. Retrying it as a
        // connection error would spin forever without anyone noticing.
        let api =
            Arc::new(crate::api::HttpDeleteApi::new(Duration::from_secs(2), 1).expect("client"));
        let metrics = Metrics::new();
        let (d, mut rx, health) = setup_with(api, "bad\npass", metrics.clone());
        d.dispatch(batch(&["a", "b"]));
        wait_until("the region held", || health.region_held("eu1")).await;
        assert!(health.readiness().is_err());
        let text = metrics.render();
        assert!(
            text.contains(
                "clevertap_deleter_region_auth_failures_total{region=\"eu1\",status=\"invalid_request\"} 1"
            ),
            "{text}"
        );
        assert_eq!(
            metrics
                .api_retries
                .with_label_values(&["eu1", "connection"])
                .get(),
            0,
            "not retried as a connection error"
        );
        assert!(rx.try_recv().is_err(), "nothing reported while held");
    }

    #[tokio::test]
    async fn retries_until_success() {
        let api = Arc::new(ScriptedApi {
            answer: Box::new(|_, n| match n {
                1 => reply(500, ""),
                2 => reply(429, ""),
                3 => Err(TransportError::Timeout),
                _ => reply(200, r#"{"status":"success"}"#),
            }),
            calls: Mutex::new(vec![]),
        });
        let (d, mut rx, _) = setup(api.clone());
        d.dispatch(batch(&["a", "b"]));
        let report = rx.recv().await.unwrap();
        assert!(
            matches!(report, DispatchReport::Deleted { batch, attempts: 4 } if batch.len() == 2)
        );
        assert_eq!(api.calls.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_400_is_split_down_to_the_refused_id() {
        let api = Arc::new(ScriptedApi {
            answer: Box::new(|b, _| {
                if b.ids().iter().any(|i| &**i == "bad") {
                    reply(
                        400,
                        r#"{"status":"fail","error":"Invalid identity","code":400}"#,
                    )
                } else {
                    reply(200, r#"{"status":"success"}"#)
                }
            }),
            calls: Mutex::new(vec![]),
        });
        let (d, mut rx, _) = setup(api.clone());
        d.dispatch(batch(&["a", "b", "bad", "c", "d"]));
        let mut deleted = Vec::new();
        let mut rejected = Vec::new();
        while deleted.len() + rejected.len() < 5 {
            match rx.recv().await.unwrap() {
                DispatchReport::Deleted { batch, .. } => {
                    deleted.extend(batch.ids().iter().map(|i| i.to_string()))
                }
                DispatchReport::Rejected { id, message, .. } => {
                    assert_eq!(message, "Invalid identity");
                    rejected.push(id.to_string())
                }
            }
        }
        deleted.sort();
        assert_eq!(deleted, vec!["a", "b", "c", "d"]);
        assert_eq!(rejected, vec!["bad"]);
        assert!(api.calls.lock().unwrap().iter().all(|c| c.len() <= 5));
    }

    #[tokio::test]
    async fn auth_failure_holds_the_region_until_it_succeeds() {
        let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fixed2 = fixed.clone();
        let api = Arc::new(ScriptedApi {
            answer: Box::new(move |_, _| {
                if fixed2.load(Ordering::SeqCst) {
                    reply(200, r#"{"status":"success"}"#)
                } else {
                    reply(
                        401,
                        r#"{"status":"fail","error":"Invalid Credentials","code":401}"#,
                    )
                }
            }),
            calls: Mutex::new(vec![]),
        });
        let (d, mut rx, health) = setup(api.clone());
        for i in 0..5 {
            d.dispatch(batch(&[&format!("id{i}")]));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(health.region_held("eu1"));
        assert!(health.readiness().is_err());
        assert!(rx.try_recv().is_err(), "nothing is reported while held");
        // One probe at a time: about one call per auth_retry, not five.
        let calls = api.calls.lock().unwrap().len();
        assert!(calls <= 5 + 150 / 20 + 2, "probes are serialized: {calls}");
        fixed.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            assert!(matches!(
                rx.recv().await.unwrap(),
                DispatchReport::Deleted { .. }
            ));
        }
        assert!(!health.region_held("eu1"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(d.batches_in_flight(), 0);
    }
}
