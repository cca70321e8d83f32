//! Sends batches to CleverTap within each account's concurrency limit and
//! keeps at each batch until every id has an answer: deleted, rejected alone
//! by a 400, or left unconfirmed alone by 2xx answers that never said
//! success (`api.unconfirmed_retries` retries per batch and per half).
//! Other retries never give up; 401/403/404 and requests that cannot be
//! built hold the region.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::clevertap::api::{
    classify, split_confirmed, ApiReply, DeleteApi, Hold, TransportError, Unconfirmed, Verdict,
};
use crate::clevertap::limiter::AimdLimiter;
use crate::config::RegionAccount;
use crate::domain::backoff::Backoff;
use crate::domain::batch::DeleteBatch;
use crate::domain::ids::{IdKind, RegionName};
use crate::domain::outcome::DeadLetterReason;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// What the dispatcher reports back: the only thing flowing upstream.
#[derive(Debug)]
pub enum DispatchReport {
    Deleted {
        batch: DeleteBatch,
        /// Requests this batch took, the successful one included.
        attempts: u32,
    },
    /// One id is given up on: CleverTap rejected it (`ApiRejected`), or
    /// never confirmed its deletion (`Unconfirmed`). Its events are
    /// dead-lettered with this reason.
    Rejected {
        region: RegionName,
        kind: IdKind,
        id: Arc<str>,
        reason: DeadLetterReason,
        /// CleverTap's message, or what the unconfirming answers were.
        message: String,
        attempts: u32,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    pub max_concurrency: usize,
    pub backoff: Backoff,
    pub auth_retry: Duration,
    /// `api.unconfirmed_retries`: retries of a batch whose 2xx answers do
    /// not confirm the deletion, before it is split (or, for one id,
    /// dead-lettered as `unconfirmed`).
    pub unconfirmed_retries: u32,
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
    /// When CleverTap last answered (any HTTP status) and how many requests
    /// got no answer since: tells an unreachable region from a lost reply.
    answers: std::sync::Mutex<AnswerWatch>,
}

/// A region is reported unreachable after this many requests in a row got
/// no answer (refused, reset, timed out) over at least `UNREACHABLE_AFTER`.
const UNREACHABLE_NO_ANSWERS: u32 = 3;
const UNREACHABLE_AFTER: Duration = Duration::from_secs(5);

struct AnswerWatch {
    last_answer: Instant,
    no_answers: u32,
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
                        answers: std::sync::Mutex::new(AnswerWatch {
                            last_answer: Instant::now(),
                            no_answers: 0,
                        }),
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

    /// Per region, what the status view shows, sorted by name.
    pub fn region_views(&self) -> Vec<crate::ops::status::RegionView> {
        let mut views: Vec<crate::ops::status::RegionView> = self
            .inner
            .lanes
            .iter()
            .map(|(name, lane)| crate::ops::status::RegionView {
                region: name.to_string(),
                account_id: lane.account.account_id.clone(),
                held: self.inner.health.region_held(name.as_str()),
                in_flight: lane.limiter.in_flight(),
                concurrency_limit: lane.limiter.limit(),
                batches_pending: lane.pending.load(Ordering::Relaxed),
            })
            .collect();
        views.sort_by(|a, b| a.region.cmp(&b.region));
        views
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

    /// Delivers one batch until it is deleted, rejected, or stayed
    /// unconfirmed for its whole budget. Returns the halves to try when a
    /// multi-id batch was rejected or stayed unconfirmed.
    async fn deliver_one(
        &self,
        lane: &AccountLane,
        mut batch: DeleteBatch,
    ) -> Option<(DeleteBatch, DeleteBatch)> {
        let region = lane.account.name.as_str();
        let kind = batch.kind();
        let mut attempt: u32 = 0;
        // 2xx answers that did not confirm this batch's deletion.
        let mut unconfirmed: u32 = 0;
        loop {
            attempt += 1;
            let size = batch.len();
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
                Ok(r) => crate::ops::metrics::api_status_label(r.status),
                Err(e) => e.as_str(),
            };
            self.metrics
                .api_requests
                .with_label_values(&[region, status_metric])
                .inc();
            self.note_reachability(lane, &result);

            let verdict = match classify(&result) {
                // A success that names ids it did not process: the others are
                // done now, the named ones go on as unconfirmed.
                Verdict::PartlyDeleted {
                    unprocessed,
                    processed,
                } => {
                    let after = result.as_ref().ok().and_then(|r| r.retry_after);
                    let unconfirmed_all = Verdict::Unconfirmed {
                        why: Unconfirmed::Unprocessed,
                        after,
                    };
                    match split_confirmed(batch.ids(), &unprocessed, processed) {
                        Some((confirmed, left)) if !confirmed.is_empty() => {
                            let done = DeleteBatch::new(batch.region().clone(), kind, confirmed)
                                .expect("a part of a batch is a batch");
                            self.on_deleted(lane, done, attempt, &status_label);
                            match DeleteBatch::new(batch.region().clone(), kind, left) {
                                Some(rest) => {
                                    batch = rest;
                                    unconfirmed_all
                                }
                                None => return None,
                            }
                        }
                        _ => unconfirmed_all,
                    }
                }
                verdict => verdict,
            };
            match verdict {
                Verdict::Deleted => {
                    drop(probe_guard);
                    self.on_deleted(lane, batch, attempt, &status_label);
                    return None;
                }
                // Handled above.
                Verdict::PartlyDeleted { .. } => unreachable!("mapped to Deleted or Unconfirmed"),
                Verdict::Unconfirmed { why, after } => {
                    drop(probe_guard);
                    let size = batch.len();
                    unconfirmed += 1;
                    if unconfirmed <= self.settings.unconfirmed_retries {
                        let reason = crate::clevertap::api::RetryReason::Unconfirmed;
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
                            reason = reason.as_str(), answer = why.as_str(),
                            unconfirmed, retry_in_ms = delay.as_millis() as u64,
                            "CleverTap answered without confirming the deletion; will retry"
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return match batch.split() {
                        Ok(halves) => {
                            tracing::warn!(
                                region, %kind, size, attempt, status = %status_label,
                                answer = why.as_str(), unconfirmed,
                                "deletion still unconfirmed; splitting the batch to isolate the ids"
                            );
                            Some(halves)
                        }
                        Err(single) => {
                            tracing::warn!(
                                region, %kind, size, attempt, status = %status_label,
                                answer = why.as_str(), unconfirmed,
                                "deletion of an id still unconfirmed; dead-lettering its events (replay them with replay-dlq --reason unconfirmed)"
                            );
                            if self.settings.log_ids {
                                tracing::debug!(region, %kind, id = %single.ids()[0], "unconfirmed id");
                            }
                            let _ = self.reports.send(DispatchReport::Rejected {
                                region: single.region().clone(),
                                kind,
                                id: single.ids()[0].clone(),
                                reason: DeadLetterReason::Unconfirmed,
                                message: format!(
                                    "no confirmation in {unconfirmed} answers, the last: {}",
                                    why.describe(result.as_ref().map_or(0, |r| r.status))
                                ),
                                attempts: attempt,
                            });
                            None
                        }
                    };
                }
                Verdict::Retry { reason, after } => {
                    drop(probe_guard);
                    if reason == crate::clevertap::api::RetryReason::TooManyRequests {
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
                                reason: DeadLetterReason::ApiRejected,
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

    /// Readiness names a region whose requests get no answer at all for a
    /// while (the endpoint refuses connections or never replies); any HTTP
    /// answer clears it. Lost replies among answers do not count.
    fn note_reachability(&self, lane: &AccountLane, result: &Result<ApiReply, TransportError>) {
        let region = lane.account.name.as_str();
        let mut watch = lane.answers.lock().expect("answers lock");
        match result {
            Ok(_) => {
                watch.last_answer = Instant::now();
                watch.no_answers = 0;
                if self.health.set_region_unreachable(region, false) {
                    tracing::info!(region, "region reachable again: CleverTap answers");
                }
            }
            Err(TransportError::InvalidRequest) => {}
            Err(e) => {
                watch.no_answers += 1;
                if watch.no_answers >= UNREACHABLE_NO_ANSWERS
                    && watch.last_answer.elapsed() >= UNREACHABLE_AFTER
                    && self.health.set_region_unreachable(region, true)
                {
                    tracing::error!(
                        region,
                        error = e.as_str(),
                        no_answers = watch.no_answers,
                        since_secs = watch.last_answer.elapsed().as_secs(),
                        "region unreachable: no answer from CleverTap; retrying, nothing is committed past its events"
                    );
                }
            }
        }
    }

    /// CleverTap confirmed every id of `batch`: release a held region, count
    /// and report it.
    fn on_deleted(&self, lane: &AccountLane, batch: DeleteBatch, attempt: u32, status: &str) {
        let region = lane.account.name.as_str();
        let kind = batch.kind();
        let size = batch.len();
        lane.limiter.on_success();
        self.note_limit(lane);
        if self.health.set_region_held(region, false) {
            tracing::info!(
                region,
                "region released: CleverTap accepts the credentials again"
            );
        }
        self.metrics
            .ids_deleted
            .with_label_values(&[region, kind.as_str()])
            .inc_by(size as u64);
        if self.settings.log_ids {
            tracing::debug!(region, %kind, size, attempt, status, ids = ?batch.ids(), "batch deleted");
        } else {
            tracing::debug!(region, %kind, size, attempt, status, "batch deleted");
        }
        let _ = self.reports.send(DispatchReport::Deleted {
            batch,
            attempts: attempt,
        });
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
    use crate::clevertap::api::{ApiReply, TransportError};
    use crate::domain::secret::Secret;
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
            unconfirmed_retries: 2,
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
    async fn a_region_that_never_answers_is_not_ready_until_it_answers_again() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answering = up.clone();
        let api = Arc::new(ScriptedApi {
            answer: Box::new(move |_, _| {
                if answering.load(Ordering::Relaxed) {
                    reply(200, r#"{"status":"success"}"#)
                } else {
                    Err(TransportError::Connect)
                }
            }),
            calls: Mutex::new(Vec::new()),
        });
        let (d, mut rx, health) = setup(api.clone());
        let unreachable = || {
            health
                .readiness()
                .is_err_and(|r| r.iter().any(|l| l.starts_with("region eu1: unreachable")))
        };
        d.dispatch(batch(&["a"]));
        // Refused connections alone, for long enough: readiness names the region.
        wait_until("the region reported unreachable", unreachable).await;
        assert!(api.calls.lock().unwrap().len() as u32 >= UNREACHABLE_NO_ANSWERS);
        up.store(true, Ordering::Relaxed);
        assert!(matches!(
            rx.recv().await,
            Some(DispatchReport::Deleted { .. })
        ));
        assert!(!unreachable(), "an answer clears the region");
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
        // Every label value exists from the start (at 0): the ones that
        // counted these answers, and no other.
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("clevertap_deleter_api_requests_total{"))
            .collect();
        assert_eq!(series.len(), 21, "the bounded set: {series:?}");
        let labels: Vec<&str> = series
            .iter()
            .filter(|l| !l.ends_with(" 0"))
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
        let api = Arc::new(
            crate::clevertap::api::HttpDeleteApi::new(Duration::from_secs(2), 1).expect("client"),
        );
        let metrics = Metrics::new();
        let (d, mut rx, health) = setup_with(api, "bad\npass", metrics.clone());
        d.dispatch(batch(&["a", "b"]));
        // The first attempt and two probes handled: where a report or a
        // connection retry would have happened.
        let handled = || {
            metrics
                .region_auth_failures
                .with_label_values(&["eu1", "invalid_request"])
                .get()
        };
        wait_until("three failed builds handled", || handled() >= 3).await;
        assert!(health.region_held("eu1"));
        let not_ready = health.readiness().unwrap_err();
        assert!(
            not_ready
                .iter()
                .any(|r| r.starts_with("region eu1: held, its request cannot be built")),
            "{not_ready:?}"
        );
        let text = metrics.render();
        assert!(
            text.contains(
                "clevertap_deleter_api_requests_total{region=\"eu1\",status=\"invalid_request\"}"
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

    /// Collects reports until `n` ids are accounted for (or 20 s passed).
    async fn reports_for(
        rx: &mut mpsc::UnboundedReceiver<DispatchReport>,
        n: usize,
    ) -> (Vec<String>, Vec<(String, DeadLetterReason, String)>) {
        let mut deleted = Vec::new();
        let mut rejected = Vec::new();
        while deleted.len() + rejected.len() < n {
            let report = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {deleted:?} deleted and {rejected:?} rejected"))
                .expect("dispatcher alive");
            match report {
                DispatchReport::Deleted { batch, .. } => {
                    deleted.extend(batch.ids().iter().map(|i| i.to_string()))
                }
                DispatchReport::Rejected {
                    id,
                    reason,
                    message,
                    ..
                } => rejected.push((id.to_string(), reason, message)),
            }
        }
        deleted.sort();
        rejected.sort_by(|a, b| a.0.cmp(&b.0));
        (deleted, rejected)
    }

    #[tokio::test]
    async fn odd_2xx_answers_are_retried_a_bounded_number_of_times_then_dead_lettered() {
        // A proxy answering 200 with an empty body for some ids: never a
        // deletion, and never an endless retry either.
        let api = Arc::new(ScriptedApi {
            answer: Box::new(|b, _| {
                if b.ids().iter().any(|i| i.starts_with("odd")) {
                    reply(200, "")
                } else {
                    reply(200, r#"{"status":"success"}"#)
                }
            }),
            calls: Mutex::new(vec![]),
        });
        let metrics = Metrics::new();
        let (d, mut rx, _) = setup_with(api.clone(), "p", metrics.clone());
        d.dispatch(batch(&["a", "odd1", "b", "c", "odd2"]));
        let (deleted, rejected) = reports_for(&mut rx, 5).await;
        assert_eq!(deleted, vec!["a", "b", "c"]);
        assert_eq!(
            rejected,
            ["odd1", "odd2"].map(|id| (
                id.to_string(),
                DeadLetterReason::Unconfirmed,
                "no confirmation in 3 answers, the last: HTTP 200 with an empty body".to_string()
            ))
        );
        // Bounded: 3 answers (the setting's 2 retries) for the batch and for
        // each part of it that still holds an odd id: [a odd1 b c odd2],
        // [a odd1], [odd1], [b c odd2], [c odd2], [odd2]; plus one success
        // for each of [a], [b], [c].
        let calls = api.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 6 * 3 + 3, "{calls:?}");
        assert_eq!(
            metrics
                .api_retries
                .with_label_values(&["eu1", "unconfirmed"])
                .get(),
            6 * 2
        );
        assert_eq!(
            metrics
                .ids_deleted
                .with_label_values(&["eu1", "identity"])
                .get(),
            3
        );
    }

    #[tokio::test]
    async fn a_transient_odd_answer_is_retried_and_then_deleted() {
        let api = Arc::new(ScriptedApi {
            answer: Box::new(|_, n| match n {
                1 => reply(204, ""),
                2 => reply(200, "\u{feff}<html>"),
                _ => reply(200, r#"{"status":"success"}"#),
            }),
            calls: Mutex::new(vec![]),
        });
        let (d, mut rx, _) = setup(api.clone());
        d.dispatch(batch(&["a", "b"]));
        assert!(matches!(
            rx.recv().await.unwrap(),
            DispatchReport::Deleted { batch, attempts: 3 } if batch.len() == 2
        ));
    }

    #[tokio::test]
    async fn a_success_listing_unprocessed_ids_finishes_only_the_others() {
        let api = Arc::new(ScriptedApi {
            answer: Box::new(|b, _| {
                let listed: Vec<&str> = b
                    .ids()
                    .iter()
                    .map(|i| &**i)
                    .filter(|i| i.starts_with("left"))
                    .collect();
                reply(
                    200,
                    &serde_json::json!({"status": "success", "unprocessed": listed}).to_string(),
                )
            }),
            calls: Mutex::new(vec![]),
        });
        let (d, mut rx, _) = setup(api.clone());
        d.dispatch(batch(&["a", "left1", "b", "left2"]));
        let (deleted, rejected) = reports_for(&mut rx, 4).await;
        assert_eq!(deleted, vec!["a", "b"]);
        let ids: Vec<(&str, DeadLetterReason)> = rejected
            .iter()
            .map(|(id, r, _)| (id.as_str(), *r))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("left1", DeadLetterReason::Unconfirmed),
                ("left2", DeadLetterReason::Unconfirmed)
            ]
        );
        // The first answer finished a and b; only the listed ids went on.
        let calls = api.calls.lock().unwrap().clone();
        assert_eq!(calls[0], vec!["a", "left1", "b", "left2"]);
        assert!(calls[1..]
            .iter()
            .all(|c| c.iter().all(|i| i.starts_with("left"))));
    }

    #[tokio::test]
    async fn a_listing_that_does_not_map_to_the_batch_confirms_nothing() {
        let api = Arc::new(ScriptedApi {
            answer: Box::new(|b, _| {
                if b.len() > 1 {
                    // Names an id this batch does not hold.
                    reply(200, r#"{"status":"success","unprocessed":["zz"]}"#)
                } else {
                    reply(200, r#"{"status":"success"}"#)
                }
            }),
            calls: Mutex::new(vec![]),
        });
        let (d, mut rx, _) = setup(api.clone());
        d.dispatch(batch(&["a", "b"]));
        let (deleted, rejected) = reports_for(&mut rx, 2).await;
        assert_eq!(deleted, vec!["a", "b"]);
        assert!(rejected.is_empty());
        // 3 unconfirmed answers for [a, b], then one success per half.
        assert_eq!(api.calls.lock().unwrap().len(), 3 + 2);
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
                DispatchReport::Rejected {
                    id,
                    reason,
                    message,
                    ..
                } => {
                    assert_eq!(message, "Invalid identity");
                    assert_eq!(reason, DeadLetterReason::ApiRejected);
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
        let metrics = Metrics::new();
        let (d, mut rx, health) = setup_with(api.clone(), "p", metrics.clone());
        let started = Instant::now();
        for i in 0..5 {
            d.dispatch(batch(&[&format!("id{i}")]));
        }
        // Wait until the dispatcher has handled 12 answers of 401 (the 5
        // first attempts and 7 probes), each the point where a report would
        // have been sent: only then does "nothing reported" mean anything.
        let handled = || {
            metrics
                .region_auth_failures
                .with_label_values(&["eu1", "401"])
                .get()
        };
        wait_until("12 answers of 401 handled", || handled() >= 12).await;
        assert!(health.region_held("eu1"));
        assert!(health.readiness().is_err());
        assert!(rx.try_recv().is_err(), "nothing is reported while held");
        // One probe at a time, each after auth_retry (20 ms): beyond the 5
        // first attempts, at most one call per 20 ms since the start (an
        // upper bound a slow machine only makes looser), not 5 per 20 ms.
        let calls = api.calls.lock().unwrap().len() as u128;
        let probes_allowed = started.elapsed().as_millis() / 20 + 1;
        assert!(
            calls <= 5 + probes_allowed,
            "probes are serialized: {calls} calls, at most {} allowed",
            5 + probes_allowed
        );
        fixed.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            assert!(matches!(
                rx.recv().await.unwrap(),
                DispatchReport::Deleted { .. }
            ));
        }
        assert!(!health.region_held("eu1"));
        wait_until("every batch task finished", || d.batches_in_flight() == 0).await;
    }
}
