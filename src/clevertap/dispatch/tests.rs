use super::*;
use crate::clevertap::api::{ApiReply, TransportError};
use crate::domain::secret::Secret;
use futures::future::BoxFuture;
use std::sync::Mutex;

type Script = Box<dyn Fn(&DeleteBatch, usize) -> Result<ApiReply, TransportError> + Send + Sync>;

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

fn setup(api: Arc<ScriptedApi>) -> (Dispatcher, mpsc::UnboundedReceiver<DispatchReport>, Health) {
    setup_with(api, "p", Metrics::new())
}

fn setup_with(
    api: Arc<dyn DeleteApi>,
    passcode: &str,
    metrics: Metrics,
) -> (Dispatcher, mpsc::UnboundedReceiver<DispatchReport>, Health) {
    dispatcher_for(api, passcode, metrics, Duration::from_millis(20), 4)
}

/// A dispatcher for one account, eu1, probing a held region every
/// `auth_retry`.
fn dispatcher_for(
    api: Arc<dyn DeleteApi>,
    passcode: &str,
    metrics: Metrics,
    auth_retry: Duration,
    max_concurrency: usize,
) -> (Dispatcher, mpsc::UnboundedReceiver<DispatchReport>, Health) {
    let health = Health::new(metrics.clone());
    let account = RegionAccount {
        name: RegionName::new("eu1"),
        account_id: "A".into(),
        passcode: Secret::new(passcode),
        endpoint: "http://127.0.0.1:1".into(),
    };
    let settings = DispatchSettings {
        max_concurrency,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        auth_retry,
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
    assert!(matches!(report, DispatchReport::Deleted { batch, attempts: 4 } if batch.len() == 2));
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

mod shares;
