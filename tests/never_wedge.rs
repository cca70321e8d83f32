//! Nothing wedges a partition for good, and whatever is stuck is visible:
//! records the producer can never write, a dead-letter topic that refuses
//! writes, commits that fail while the partition is idle. On rdkafka's
//! MockCluster with the fake CleverTap API.

mod common;

use std::time::{Duration, Instant};

use clevertap_deleter::testkit::synth::SynthEvent;
use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sha2::{Digest, Sha256};

/// One event whose payload is `size` bytes of valid JSON (a deletion
/// padded with a long field), too large for the decoder and the producer.
fn huge_event(size: usize) -> SynthEvent {
    let head = r#"{"type":"user-deleted","region":"eu1","identity":"huge","pad":""#;
    let tail = r#""}"#;
    let pad = "x".repeat(size - head.len() - tail.len());
    SynthEvent {
        key: "huge".into(),
        headers: Vec::new(),
        payload: format!("{head}{pad}{tail}").into_bytes(),
        deletions: Vec::new(),
        poison: Some(clevertap_deleter::input::decode::DeadLetterReason::TooLarge),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_to_write_goes_out_truncated_and_the_partition_commits() {
    let s = setup(1, 15).await;
    let mut events = simple_events(2_000, |i| REGIONS[i % 3]);
    let huge = huge_event(1_500_000);
    let digest: String = Sha256::digest(&huge.payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    events.insert(425, huge);
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let running = start(&s.toml(""));
    s.wait_committed(vec![events.len() as i64], Duration::from_secs(60))
        .await;

    let dlq = s
        .kafka
        .read_all(&format!("{}.dlq", s.topic), 1, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1, "one dead letter");
    let d = &dlq[0];
    assert_eq!(d.headers["reason"], "too_large");
    assert_eq!(d.headers["source_offset"], "425");
    assert_eq!(d.headers["truncated"], "true");
    assert_eq!(d.headers["original_size"], "1500000");
    assert_eq!(d.headers["original_sha256"], digest);
    assert_eq!(d.key, None, "the copy carries no key");
    let kept = d.payload.as_ref().expect("the payload's start");
    assert!(kept.len() <= 16 * 1024);
    assert!(events[425].payload.starts_with(kept));
    let text = running.metrics.render();
    assert_eq!(
        metric(&text, "clevertap_deleter_dead_letters_truncated_total"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_kafka_write_failures_total{reason=\"too_large\",writer=\"dead_letter\"}"
        ),
        1.0
    );
    assert_eq!(
        s.api.deletion_counts().len(),
        2_000,
        "every other id deleted"
    );
    let stopping = Instant::now();
    running.stop().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_refuses_writes_holds_visibly_and_shutdown_does_not_hang() {
    let s = setup(1, 15).await;
    let dlq_topic = format!("{}.dlq", s.topic);
    let mut events = simple_events(1_000, |i| REGIONS[i % 3]);
    events[100].payload = b"not json".to_vec();
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    s.kafka
        .cluster
        .topic_error(
            &dlq_topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let toml = s.toml("[pipeline]\nshutdown_timeout_ms = 2000");
    let running = start(&toml);
    // Visible: the writer is held, readiness names it, and the partition's
    // held-back offsets show everything read after the stuck event.
    wait_for(
        "a held dead-letter write and 900 offsets held back",
        Duration::from_secs(30),
        || {
            let text = running.metrics.render();
            let held = metric(
                &text,
                "clevertap_deleter_kafka_writes_held{writer=\"dead_letter\"}",
            );
            let back = metric_sum(&text, "clevertap_deleter_offsets_held_back");
            async move { held == 1.0 && back >= 900.0 }
        },
    )
    .await;
    let reasons = running.health.readiness().expect_err("not ready");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("dead_letter writes held") && r.contains(&dlq_topic)),
        "{reasons:?}"
    );
    wait_for("the others deleted", Duration::from_secs(30), || {
        let n = s.api.deletion_counts().len();
        async move { n == 999 }
    })
    .await;
    // The commit of the tick that saw it may still be on its way.
    s.wait_committed(vec![100], Duration::from_secs(10)).await;

    // The status view says what holds the partition, from the binary too.
    let (addr, _server) = clevertap_deleter::ops::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        running.metrics.clone(),
        running.health.clone(),
    )
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_clevertap-deleter"))
            .args(["status", "--url", &format!("http://{addr}")])
            .output()
            .expect("run status")
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("ready: NO"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{}/0", s.topic)))
        .unwrap_or_else(|| panic!("no partition row: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "100", "committed: {row}");
    assert_eq!(cells[2], "1000", "read up to: {row}");
    assert_eq!(cells[3], "900", "held back: {row}");
    assert!(row.contains("100, "), "the oldest unfinished event: {row}");
    assert!(
        table.contains(&format!(
            "HELD: not authorized to write to topic {dlq_topic}"
        )),
        "{table}"
    );

    // Shutdown ends the held write instead of waiting for it.
    let stopping = Instant::now();
    let summary = running.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        stopping.elapsed()
    );
    assert_eq!(summary.committed[0].1, 100);

    // Once writable, a restart finishes the event and the partition.
    s.kafka
        .cluster
        .topic_error(&dlq_topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let again = start(&toml);
    s.wait_committed(vec![1_000], Duration::from_secs(60)).await;
    let text = again.metrics.render();
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_kafka_writes_held{writer=\"dead_letter\"}"
        ),
        0.0
    );
    again.health.readiness().expect("ready again");
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_retried_while_the_partition_is_idle() {
    let s = setup(1, 15).await;
    let events = simple_events(50, |i| REGIONS[i % 3]);
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    // The API holds every request, so the only commits before the end are
    // of the starting offset.
    s.api.set_latency(Duration::from_secs(2));
    let running = start(&s.toml("[api]\ntimeout_ms = 5000"));
    wait_for("requests in flight", Duration::from_secs(30), || {
        let n = metric_sum(
            &running.metrics.render(),
            "clevertap_deleter_api_in_flight_requests",
        );
        async move { n > 0.0 }
    })
    .await;
    // The next commits fail: the ones of the final watermark.
    s.kafka.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    wait_for("every event finished", Duration::from_secs(30), || {
        let n = metric_sum(
            &running.metrics.render(),
            "clevertap_deleter_events_finished_total",
        );
        async move { n >= 50.0 }
    })
    .await;
    wait_for("failed commits", Duration::from_secs(30), || {
        let n = metric(
            &running.metrics.render(),
            "clevertap_deleter_commits_total{result=\"failure\"}",
        );
        async move { n >= 1.0 }
    })
    .await;
    // Nothing moves any more; the group must still catch up.
    s.wait_committed(vec![50], Duration::from_secs(30)).await;
    running.stop().await.unwrap();
}

/// `n` deletion events padded to about `size` bytes each.
fn padded_events(from: usize, n: usize, size: usize) -> Vec<SynthEvent> {
    let mut events = simple_events(from + n, |i| REGIONS[i % 3]);
    events.drain(..from);
    for e in &mut events {
        let pad = "p".repeat(size.saturating_sub(e.payload.len() + 10));
        e.payload.truncate(e.payload.len() - 1);
        e.payload
            .extend_from_slice(format!(r#","pad":"{pad}"}}"#).as_bytes());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_removed_before_they_were_read_are_counted_as_lost() {
    let s = setup(1, 15).await;
    let first = padded_events(0, 100, 1_000);
    s.kafka.produce(&s.topic, &first, |_| 0).await;
    let running = start(&s.toml(""));
    s.wait_committed(vec![100], Duration::from_secs(30)).await;
    let text = running.metrics.render();
    assert_eq!(
        metric_sum(&text, "clevertap_deleter_records_lost_total"),
        0.0
    );
    running.stop().await.unwrap();

    // While the daemon is stopped, far more than the mock cluster keeps per
    // partition (5 MiB): the oldest records go before anyone read them.
    let more = padded_events(100, 8_000, 1_000);
    s.kafka.produce(&s.topic, &more, |_| 0).await;
    let (low, high) = s.kafka.watermarks(&s.topic, 0);
    assert!(
        low > 100,
        "the mock cluster removed records: log start {low}"
    );
    assert_eq!(high, 8_100);

    let again = start(&s.toml(""));
    s.wait_committed(vec![8_100], Duration::from_secs(60)).await;
    let text = again.metrics.render();
    let series = format!(
        "clevertap_deleter_records_lost_total{{partition=\"0\",topic=\"{}\"}}",
        s.topic
    );
    assert_eq!(metric(&text, &series), (low - 100) as f64);
    assert_eq!(
        s.api.deletion_counts().len() as i64,
        100 + (8_100 - low),
        "everything still there was deleted"
    );
    again.stop().await.unwrap();
}
