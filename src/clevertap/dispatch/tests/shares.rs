//! A reloaded passcode releases a held region at once; the share caps the
//! requests in flight and a lowered share is waited for.

use super::*;

/// Accepts only the passcode in `accepted`; every request waits for a
/// permit of `gate` first (none: answers at once).
struct PasscodeApi {
    accepted: Mutex<String>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl DeleteApi for PasscodeApi {
    fn delete<'a>(
        &'a self,
        account: &'a RegionAccount,
        _batch: &'a DeleteBatch,
    ) -> BoxFuture<'a, Result<ApiReply, TransportError>> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            if account.passcode.expose() == *self.accepted.lock().unwrap() {
                reply(200, r#"{"status":"success"}"#)
            } else {
                reply(
                    401,
                    r#"{"status":"fail","error":"Invalid Credentials","code":401}"#,
                )
            }
        })
    }
}

fn passcode_api(accepted: &str, gate: Option<Arc<tokio::sync::Semaphore>>) -> Arc<PasscodeApi> {
    Arc::new(PasscodeApi {
        accepted: Mutex::new(accepted.into()),
        gate,
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    })
}

#[tokio::test]
async fn a_new_passcode_releases_a_held_region_without_waiting_for_the_probe_interval() {
    let api = passcode_api("new", None);
    // Probes only every 10 minutes: only the new passcode can explain a release.
    let metrics = Metrics::new();
    let (d, mut rx, health) = dispatcher_for(
        api.clone(),
        "old",
        metrics.clone(),
        Duration::from_secs(600),
        4,
    );
    for i in 0..3 {
        d.dispatch(batch(&[&format!("id{i}")]));
    }
    let refused = || {
        metrics
            .region_auth_failures
            .with_label_values(&["eu1", "401"])
            .get()
    };
    wait_until("the old passcode refused", || refused() >= 1).await;
    assert!(health.region_held("eu1"));
    assert!(d.set_passcode(&RegionName::new("eu1"), Secret::new("new")));
    assert!(!d.set_passcode(&RegionName::new("xx1"), Secret::new("new")));
    for _ in 0..3 {
        let report = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("released within seconds, not after the probe interval");
        assert!(matches!(report, Some(DispatchReport::Deleted { .. })));
    }
    assert!(!health.region_held("eu1"));
}

#[tokio::test]
async fn the_share_caps_requests_in_flight_and_a_lowered_share_waits_for_them() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let api = passcode_api("old", Some(gate.clone()));
    let metrics = Metrics::new();
    let (d, mut rx, _) = dispatcher_for(
        api.clone(),
        "old",
        metrics.clone(),
        Duration::from_secs(1),
        10,
    );
    let eu1 = RegionName::new("eu1");
    d.share_budgets(&[(eu1.clone(), 12)]);
    let share = || {
        metrics
            .account_concurrency_share
            .with_label_values(&["eu1"])
            .get()
    };
    assert_eq!(share(), 0, "nothing owned yet");
    // 4 of 12 partitions: 12 x 4 / 12 = 4.
    d.set_partitions(4, Some(12));
    assert_eq!(share(), 4);
    for i in 0..8 {
        d.dispatch(batch(&[&format!("id{i}")]));
    }
    wait_until("4 requests in flight", || {
        api.running.load(Ordering::SeqCst) == 4
    })
    .await;
    assert!(d.is_saturated(&eu1));
    assert!(d.fits_shares());
    // Half the partitions revoked: the share halves, and the 4 requests
    // started under the old one do not fit it until 2 finished.
    d.set_partitions(2, Some(12));
    assert_eq!(share(), 2);
    assert!(!d.fits_shares());
    gate.add_permits(2);
    for _ in 0..2 {
        rx.recv().await.expect("deleted");
    }
    wait_until("the requests in flight fit the share", || d.fits_shares()).await;
    gate.add_permits(100);
    for _ in 0..6 {
        rx.recv().await.expect("deleted");
    }
    assert_eq!(api.peak.load(Ordering::SeqCst), 4, "never above the share");
    // All partitions: capped by max_concurrency (10), not the share (12).
    d.set_partitions(12, Some(12));
    assert_eq!(share(), 12);
    assert_eq!(
        metrics
            .api_concurrency_limit
            .with_label_values(&["eu1"])
            .get(),
        10
    );
}
