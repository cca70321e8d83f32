//! The recently-deleted memory read back at start (`dedup.warm_events`), on
//! rdkafka's MockCluster with the fake CleverTap API: repeats of ids deleted
//! before a restart are not sent again; an id that was dead-lettered is; a
//! daemon decoding differently reads nothing back.

mod common;

use std::time::Duration;

use clevertap_deleter::domain::ids::IdKind;
use common::*;

const FAST: &str = "[batch]\nlinger_ms = 20";

fn api_rejected_dead_letters(s: &Setup, key: &str, expected: usize) -> usize {
    s.kafka
        .read_all(
            &format!("{}.dlq", s.topic),
            1,
            expected,
            Duration::from_secs(10),
        )
        .iter()
        .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
        .filter(|r| r.headers["reason"] == "api_rejected")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_remembers_what_was_deleted_below_the_committed_offsets() {
    let s = setup(2, 15).await;
    let events = simple_events(300, |i| REGIONS[i % 3]);
    // CleverTap refuses u7: its event is dead-lettered, not deleted.
    s.api.reject_ids(["u7".to_string()]);
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let first = start(&s.toml(FAST));
    s.wait_committed(vec![150, 150], Duration::from_secs(30))
        .await;
    first.stop().await.unwrap();
    assert_eq!(s.api.deletion_counts().len(), 299);
    assert_eq!(api_rejected_dead_letters(&s, "k7", 1), 1);

    // The same events again after the restart (a producer retrying).
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let second = start(&s.toml(FAST));
    s.wait_committed(vec![300, 300], Duration::from_secs(30))
        .await;
    let metrics = second.metrics.render();
    second.stop().await.unwrap();
    assert_eq!(
        metric(&metrics, "clevertap_deleter_dedup_warmed_ids"),
        299.0,
        "every deleted id, not the dead-lettered one"
    );
    assert_eq!(
        metric(
            &metrics,
            "clevertap_deleter_events_finished_total{outcome=\"deduplicated\"}"
        ),
        299.0
    );
    let counts = s.api.deletion_counts();
    assert_eq!(counts.len(), 299);
    assert!(
        counts.values().all(|n| *n == 1),
        "no id deleted twice: {:?}",
        counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    // The refused id was not taken for deleted: it was asked for again.
    assert_eq!(api_rejected_dead_letters(&s, "k7", 2), 2);
    assert_eq!(
        metric(&metrics, "clevertap_deleter_dedup_warm_failures_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_decoding_settings_read_nothing_back() {
    let s = setup(2, 15).await;
    let events = simple_events(100, |_| "eu1");
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let first = start(&s.toml(FAST));
    s.wait_committed(vec![50, 50], Duration::from_secs(30))
        .await;
    first.stop().await.unwrap();

    // One more accepted type: events skipped before might now be
    // deletions, so nothing below the committed offsets counts as deleted.
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let other = format!("{FAST}\n[event]\naccept_types = [\"user-deleted\", \"account-closed\"]");
    let second = start(&s.toml(&other));
    s.wait_committed(vec![100, 100], Duration::from_secs(30))
        .await;
    let metrics = second.metrics.render();
    second.stop().await.unwrap();
    assert_eq!(metric(&metrics, "clevertap_deleter_dedup_warmed_ids"), 0.0);
    let counts = s.api.deletion_counts();
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|n| *n == 2), "each id sent again");
    assert!(counts.contains_key(&(account_id("eu1"), IdKind::Identity, "u0".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_events_0_turns_the_read_back_off() {
    let s = setup(1, 15).await;
    let events = simple_events(50, |_| "us1");
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let first = start(&s.toml(FAST));
    s.wait_committed(vec![50], Duration::from_secs(30)).await;
    first.stop().await.unwrap();

    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let off = format!("{FAST}\n[dedup]\nwarm_events = 0");
    let second = start(&s.toml(&off));
    s.wait_committed(vec![100], Duration::from_secs(30)).await;
    second.stop().await.unwrap();
    assert!(s.api.deletion_counts().values().all(|n| *n == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_written_but_not_committed_is_not_written_twice() {
    let s = setup(1, 15).await;
    let dlq = format!("{}.dlq", s.topic);
    s.kafka
        .produce(&s.topic, &simple_events(10, |_| "eu1"), |_| 0)
        .await;
    let first = start(&s.toml(FAST));
    s.wait_committed(vec![10], Duration::from_secs(30)).await;
    first.stop().await.unwrap();

    // Offset 10 cannot be deleted yet (500s), offset 11 is poison: its dead
    // letter is written, but the commit stays at 10 behind the first.
    s.api.fail_ids(["hold".to_string()], 500);
    let mut held = simple_events(2, |_| "eu1");
    held[0].payload = br#"{"type":"user-deleted","region":"eu1","identity":"hold"}"#.to_vec();
    held[1].payload = b"not json".to_vec();
    s.kafka.produce(&s.topic, &held, |_| 0).await;
    let quick = format!("{FAST}\n[pipeline]\nshutdown_timeout_ms = 200");
    let second = start(&s.toml(&quick));
    wait_for("the poison's dead letter", Duration::from_secs(30), || {
        let n = s
            .kafka
            .read_all(&dlq, 1, 1, Duration::from_millis(500))
            .len();
        async move { n == 1 }
    })
    .await;
    second.stop().await.unwrap();
    assert_eq!(s.committed(1), vec![10], "the held event keeps the commit");

    // The API recovers; the restart reads both again.
    s.api.clear_failing_ids();
    let third = start(&s.toml(FAST));
    s.wait_committed(vec![12], Duration::from_secs(30)).await;
    let metrics = third.metrics.render();
    third.stop().await.unwrap();
    assert!(deleted_identity(&s.api, "eu1", "hold"));
    assert_eq!(
        metric(
            &metrics,
            "clevertap_deleter_dead_letters_found_written_total"
        ),
        1.0
    );
    let letters = s.kafka.read_all(&dlq, 1, 2, Duration::from_secs(3));
    assert_eq!(letters.len(), 1, "written once");
    assert_eq!(letters[0].headers["reason"], "not_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_current_decoding_decided_is_read_back() {
    let s = setup(1, 15).await;
    let closed = |n: usize| {
        let mut events = simple_events(n, |_| "eu1");
        for (i, e) in events.iter_mut().enumerate() {
            e.payload = format!(r#"{{"type":"account-closed","region":"eu1","identity":"c{i}"}}"#)
                .into_bytes();
        }
        events
    };
    // Offsets 0..50: another type, skipped by the first configuration.
    s.kafka.produce(&s.topic, &closed(50), |_| 0).await;
    let first = start(&s.toml(FAST));
    s.wait_committed(vec![50], Duration::from_secs(30)).await;
    first.stop().await.unwrap();
    assert!(s.api.deletion_counts().is_empty());

    // The type is accepted from now on; offsets 50..60 are deletions.
    let both = format!("{FAST}\n[event]\naccept_types = [\"user-deleted\", \"account-closed\"]");
    s.kafka
        .produce(&s.topic, &simple_events(10, |_| "eu1"), |_| 0)
        .await;
    let second = start(&s.toml(&both));
    s.wait_committed(vec![60], Duration::from_secs(30)).await;
    second.stop().await.unwrap();

    // Restarted with the same settings, the read-back covers 50..60 only:
    // the events below were skipped, never deleted, and a repeat of them
    // must be sent.
    s.kafka.produce(&s.topic, &closed(50), |_| 0).await;
    let third = start(&s.toml(&both));
    s.wait_committed(vec![110], Duration::from_secs(30)).await;
    let metrics = third.metrics.render();
    third.stop().await.unwrap();
    assert_eq!(metric(&metrics, "clevertap_deleter_dedup_warmed_ids"), 10.0);
    let counts = s.api.deletion_counts();
    for i in 0..50 {
        let key = (account_id("eu1"), IdKind::Identity, format!("c{i}"));
        assert_eq!(counts.get(&key), Some(&1), "c{i}");
    }
}
