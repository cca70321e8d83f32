//! Sends batches to CleverTap within each account's concurrency limit and
//! keeps at each batch until every id has an answer: deleted, rejected alone
//! by a 400, or left unconfirmed alone by 2xx answers that never said
//! success (`api.unconfirmed_retries` retries per batch and per half).
//! Other retries never give up; 401/403/404 and requests that cannot be
//! built hold the region.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

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
    name: RegionName,
    /// The account with its current passcode, and the passcode's generation
    /// (bumped on every reload). Each request takes a snapshot, so requests
    /// in flight finish with the passcode they started with.
    account: RwLock<(u64, Arc<RegionAccount>)>,
    /// Announces a new passcode generation: a held region's probe waits for
    /// it or for `auth_retry`, whichever comes first.
    credentials: watch::Sender<u64>,
    /// The newest passcode generation CleverTap refused (401/403/404).
    refused: AtomicU64,
    /// `regions.NAME.account_concurrency`: the budget the replicas share.
    budget: AtomicUsize,
    limiter: AimdLimiter,
    probe: tokio::sync::Mutex<()>,
    /// Batches handed to this lane and not finished (waiting or in flight).
    pending: AtomicUsize,
    /// When CleverTap last answered (any HTTP status) and how many requests
    /// got no answer since: tells an unreachable region from a lost reply.
    answers: std::sync::Mutex<AnswerWatch>,
    /// Batches waiting out a backoff after a 5xx, a timeout or no connection,
    /// and their wake-up: a success after an outage ends such a wait.
    backing_off: AtomicUsize,
    recovered: tokio::sync::Notify,
    /// Such failures since the lane's last success: an outage when
    /// [`OUTAGE_FAILURES`] or more. One batch failing on its own among
    /// successes never is, so it keeps its backoff (no retry at their pace).
    failures_in_a_row: AtomicU32,
}

/// A region is reported unreachable after this many requests in a row got
/// no answer (refused, reset, timed out) over at least `UNREACHABLE_AFTER`.
const UNREACHABLE_NO_ANSWERS: u32 = 3;
const UNREACHABLE_AFTER: Duration = Duration::from_secs(5);

/// Failures in a row (5xx, timeout, no connection) after which the lane's
/// next success wakes every batch waiting out a backoff.
const OUTAGE_FAILURES: u32 = 3;

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
                        name: a.name.clone(),
                        account: RwLock::new((0, Arc::new(a.clone()))),
                        credentials: watch::channel(0).0,
                        refused: AtomicU64::new(0),
                        budget: AtomicUsize::new(settings.max_concurrency),
                        limiter: AimdLimiter::new(settings.max_concurrency),
                        probe: tokio::sync::Mutex::new(()),
                        pending: AtomicUsize::new(0),
                        answers: std::sync::Mutex::new(AnswerWatch {
                            last_answer: Instant::now(),
                            no_answers: 0,
                        }),
                        backing_off: AtomicUsize::new(0),
                        recovered: tokio::sync::Notify::new(),
                        failures_in_a_row: AtomicU32::new(0),
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
        self.inner
            .lanes
            .get(region)
            .is_some_and(|lane| lane.pending.load(Ordering::Relaxed) >= lane.limiter.max())
    }

    /// Per region, what the status view shows, sorted by name.
    pub fn region_views(&self) -> Vec<crate::ops::status::RegionView> {
        let mut views: Vec<crate::ops::status::RegionView> = self
            .inner
            .lanes
            .iter()
            .map(|(name, lane)| crate::ops::status::RegionView {
                region: name.to_string(),
                account_id: lane.account().1.account_id.clone(),
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
        let region = lane.name.as_str();
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
                    let refused = lane.refused.load(Ordering::Relaxed);
                    let mut credentials = lane.credentials.subscribe();
                    tracing::debug!(region, %kind, size, attempt, "region held: probing after {wait:?} or a new passcode");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = credentials.wait_for(|generation| *generation > refused) => {
                            tracing::info!(region, "new passcode for a held region: probing now");
                        }
                    }
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
            let (generation, account) = lane.account();
            let started = Instant::now();
            let result = self.api.delete(&account, &batch).await;
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
                        let delay = self.count_retry(region, reason, attempt, after);
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
                    let delay = self.count_retry(region, reason, attempt, after);
                    tracing::warn!(
                        region, %kind, size, attempt, status = %status_label,
                        reason = reason.as_str(), retry_in_ms = delay.as_millis() as u64,
                        "delete request failed; will retry"
                    );
                    // 429 and Retry-After ask for the wait; an outage (5xx, no
                    // answer) ends for every batch at once.
                    if after.is_none()
                        && reason != crate::clevertap::api::RetryReason::TooManyRequests
                    {
                        lane.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
                        self.back_off(lane, delay).await;
                    } else {
                        tokio::time::sleep(delay).await;
                    }
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
                    lane.refused.fetch_max(generation, Ordering::Relaxed);
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

    /// Waits `delay`, or less when the lane's first success after an outage
    /// comes meanwhile: the batches waiting (up to `api.retry_max_ms`) go
    /// again with it.
    async fn back_off(&self, lane: &AccountLane, delay: Duration) {
        let recovered = lane.recovered.notified();
        let region = lane.name.as_str();
        let gauge = self.metrics.api_backing_off.with_label_values(&[region]);
        let waiting = lane.backing_off.fetch_add(1, Ordering::Relaxed) + 1;
        gauge.set(waiting as i64);
        // Counted down however the wait ends (also when the task is dropped).
        struct Waiting<'a>(&'a AtomicUsize, prometheus::IntGauge);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                let left = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
                self.1.set(left as i64);
            }
        }
        let _waiting = Waiting(&lane.backing_off, gauge);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = recovered => {}
        }
    }

    /// Counts a retry by reason and returns how long to wait before it.
    fn count_retry(
        &self,
        region: &str,
        reason: crate::clevertap::api::RetryReason,
        attempt: u32,
        after: Option<Duration>,
    ) -> Duration {
        self.metrics
            .api_retries
            .with_label_values(&[region, reason.as_str()])
            .inc();
        self.settings
            .backoff
            .delay(attempt, after, &mut rand::rng())
    }

    /// Readiness names a region whose requests get no answer at all for a
    /// while (the endpoint refuses connections or never replies); any HTTP
    /// answer clears it. Lost replies among answers do not count.
    fn note_reachability(&self, lane: &AccountLane, result: &Result<ApiReply, TransportError>) {
        let region = lane.name.as_str();
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
        let region = lane.name.as_str();
        let kind = batch.kind();
        let size = batch.len();
        lane.limiter.on_success();
        self.note_limit(lane);
        if lane.failures_in_a_row.swap(0, Ordering::Relaxed) >= OUTAGE_FAILURES
            && lane.backing_off.load(Ordering::Relaxed) > 0
        {
            lane.recovered.notify_waiters();
        }
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
            .with_label_values(&[lane.name.as_str()])
            .set(lane.limiter.limit() as i64);
    }
}

mod shares;

#[cfg(test)]
mod tests;
