//! End-to-end behaviour on rdkafka's MockCluster with the fake CleverTap API:
//! what the API received, what the group committed, what was dead-lettered.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use clevertap_deleter::domain::ids::IdKind;
use clevertap_deleter::input::decode::DeadLetterReason;
use clevertap_deleter::testkit::synth::{generate, ExpectedDeletion, SynthSpec};
use common::*;

fn expected_set(
    events: &[clevertap_deleter::testkit::synth::SynthEvent],
) -> HashSet<(String, IdKind, String)> {
    events
        .iter()
        .flat_map(|e| e.deletions.iter())
        .map(|ExpectedDeletion { region, kind, id }| (account_id(region), *kind, id.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_deleted_once_with_duplicates_and_mixed_regions() {
    let kafka = Kafka::new();
    let topic = unique("steady");
    let partitions = 4;
    kafka.topic(&topic, partitions);
    kafka.topic(&format!("{topic}.dlq"), 1);
    let events = generate(&SynthSpec {
        count: 3_000,
        poison_ratio: 0.0,
        duplicate_ratio: 0.2,
        ..SynthSpec::default()
    });
    kafka
        .produce(&topic, &events, |i| (i % partitions as usize) as i32)
        .await;
    let api = fake_api(15).await;
    let group = unique("group");
    let running = start(&config_toml(
        &kafka.bootstrap,
        &topic,
        &group,
        &api.endpoint(),
        "",
    ));

    let end: Vec<i64> = (0..partitions)
        .map(|p| {
            events
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as i32 % partitions == p)
                .count() as i64
        })
        .collect();
    wait_for(
        "committed offsets at the end of every partition",
        Duration::from_secs(60),
        || {
            let c = kafka.committed(&group, &topic, partitions);
            let done = c == end;
            async move { done }
        },
    )
    .await;

    let counts = api.deletion_counts();
    let expected = expected_set(&events);
    let deleted: HashSet<(String, IdKind, String)> = counts.keys().cloned().collect();
    assert_eq!(deleted, expected, "exactly the expected ids were deleted");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "no id is sent twice: {twice:?}");
    assert!(api.violations().is_empty(), "{:?}", api.violations());
    for r in REGIONS {
        assert!(
            api.max_concurrent(&account_id(r)) <= 4,
            "concurrency of {r}"
        );
    }
    // Batching works: far fewer requests than ids.
    assert!(
        api.request_count() * 10 < expected.len() as u64 * 2,
        "requests {}",
        api.request_count()
    );

    let text = running.metrics.render();
    let finished = |o: &str| {
        metric(
            &text,
            &format!("clevertap_deleter_events_finished_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(
        finished("deleted") + finished("deduplicated"),
        events.len() as f64
    );
    assert!(
        finished("deduplicated") >= events.len() as f64 * 0.15,
        "{text}"
    );
    let ids: f64 = REGIONS
        .iter()
        .flat_map(|r| ["identity", "guid"].map(|k| (r, k)))
        .map(|(r, k)| {
            metric(
                &text,
                &format!("clevertap_deleter_ids_deleted_total{{kind=\"{k}\",region=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(ids, expected.len() as f64);
    let summary = running.stop().await.expect("clean stop");
    assert_eq!(summary.unfinished_at_exit, 0);
}

/// Simple single-region events, one identity each: `u{i}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_holds_the_commit_until_it_succeeds() {
    let s = setup(1, 15).await;
    let events = simple_events(300, |_| "eu1");
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    s.api.fail_ids(["u100".to_string()], 500);
    let running = start(&s.toml("[batch]\nmax_ids = 10\nlinger_ms = 20"));

    wait_for("later batches deleted", Duration::from_secs(30), || {
        let ok = deleted_identity(&s.api, "eu1", "u299");
        async move { ok }
    })
    .await;
    // Every event outside the failing batch (u100..u109) finished; the
    // ticks after that would (wrongly)
    // commit past the failing event.
    wait_for(
        "all but the failing batch finished",
        Duration::from_secs(30),
        || {
            let n = metric_sum(
                &running.metrics.render(),
                "clevertap_deleter_events_finished_total",
            );
            async move { n >= 290.0 }
        },
    )
    .await;
    commit_ticks(&running, 3).await;
    let held = s.committed(1)[0];
    assert!(
        held <= 100,
        "committed {held} is past the failing event at offset 100"
    );
    assert!(
        held >= 50,
        "events before the failure are committed: {held}"
    );
    assert!(!deleted_identity(&s.api, "eu1", "u100"));
    let text = running.metrics.render();
    assert!(
        metric(
            &text,
            "clevertap_deleter_api_retries_total{reason=\"server_error\",region=\"eu1\"}"
        ) > 0.0
    );

    s.api.clear_failing_ids();
    s.wait_committed(vec![300], Duration::from_secs(30)).await;
    assert!(deleted_identity(&s.api, "eu1", "u100"));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_never_exceeds_max_concurrency_and_everything_is_deleted() {
    // The fake allows 2 at once and throttles 20% at random on top.
    let s = setup(3, 2).await;
    s.api
        .set_faults(clevertap_deleter::testkit::fake_api::Faults {
            too_many: 0.2,
            retry_after_secs: None,
            ..Default::default()
        });
    s.api.set_latency(Duration::from_millis(20));
    let events = simple_events(2_000, |i| REGIONS[i % 3]);
    s.kafka.produce(&s.topic, &events, |i| (i % 3) as i32).await;
    let running = start(&s.toml("[batch]\nmax_ids = 20\nlinger_ms = 10"));
    let per_partition = (2_000 / 3 + 1) as i64;
    s.wait_committed(
        vec![per_partition, per_partition, 2_000 - 2 * per_partition],
        Duration::from_secs(60),
    )
    .await;

    for r in REGIONS {
        let peak = s.api.max_concurrent(&account_id(r));
        assert!(
            peak <= 4,
            "{r}: the fake saw {peak} requests at once, above max_concurrency 4"
        );
    }
    let statuses = s.api.status_counts();
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 10,
        "a storm happened: {statuses:?}"
    );
    assert_eq!(s.api.deletion_counts().len(), 2_000);
    assert!(s.api.violations().is_empty());
    let text = running.metrics.render();
    assert!(
        metric(
            &text,
            "clevertap_deleter_api_retries_total{reason=\"too_many_requests\",region=\"eu1\"}"
        ) > 0.0
    );
    running.stop().await.unwrap();
}

async fn http_get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_hold_one_region_while_others_proceed() {
    let s = setup(1, 15).await;
    s.api.set_passcode(&account_id("in1"), "rotated-elsewhere");
    // Offsets 0..: eu1, in1, us1, eu1, in1, ...; the first in1 event is offset 1.
    let events = simple_events(300, |i| REGIONS[i % 3]);
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let running = start(&s.toml(""));
    let (addr, _server) = clevertap_deleter::ops::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        running.metrics.clone(),
        running.health.clone(),
    )
    .await
    .unwrap();

    wait_for("eu1 and us1 deleted", Duration::from_secs(30), || {
        let ok = (0..300)
            .filter(|i| i % 3 != 1)
            .all(|i| deleted_identity(&s.api, REGIONS[i % 3], &format!("u{i}")));
        async move { ok }
    })
    .await;
    commit_ticks(&running, 3).await;
    let held = s.committed(1)[0];
    assert!(
        held <= 1,
        "nothing past the first in1 event is committed: {held}"
    );
    assert!(!s
        .api
        .deletion_counts()
        .keys()
        .any(|(a, _, _)| a == &account_id("in1")));
    let (status, body) = http_get(&format!("http://{addr}/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("in1"), "{body}");
    let (_, text) = http_get(&format!("http://{addr}/metrics")).await;
    assert_eq!(
        metric(&text, "clevertap_deleter_region_held{region=\"in1\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "clevertap_deleter_region_held{region=\"eu1\"}"),
        0.0
    );
    assert!(
        metric(
            &text,
            "clevertap_deleter_region_auth_failures_total{region=\"in1\",status=\"401\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_dead_letters_total{reason=\"api_rejected\"}"
        ),
        0.0,
        "never dead-lettered"
    );
    // Held probes are slow: far fewer 401s than batches waiting.
    assert!(s.api.status_counts().get(&401).copied().unwrap_or(0) < 40);

    // The credentials are fixed: the region resumes and everything commits.
    s.api.set_passcode(&account_id("in1"), &passcode("in1"));
    s.wait_committed(vec![300], Duration::from_secs(30)).await;
    assert_eq!(s.api.deletion_counts().len(), 300);
    let (status, _) = http_get(&format!("http://{addr}/readyz")).await;
    assert_eq!(status, 200);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic_with_its_reason() {
    let s = setup(2, 15).await;
    let events = generate(&SynthSpec {
        count: 600,
        poison_ratio: 0.1,
        ..SynthSpec::default()
    });
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let running = start(&s.toml(""));
    s.wait_committed(vec![300, 300], Duration::from_secs(60))
        .await;

    let poison: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.poison.is_some())
        .collect();
    assert!(poison.len() >= 30);
    let dlq = s.kafka.read_all(
        &format!("{}.dlq", s.topic),
        1,
        poison.len(),
        Duration::from_secs(20),
    );
    assert_eq!(
        dlq.len(),
        poison.len(),
        "one dead letter per poison message"
    );
    for (i, e) in &poison {
        let key = e.key.as_bytes().to_vec();
        let found = dlq
            .iter()
            .find(|r| {
                r.key.as_ref() == Some(&key)
                    && r.headers.get("source_offset") == Some(&(i / 2).to_string())
            })
            .unwrap_or_else(|| panic!("no dead letter for {}", e.key));
        assert_eq!(found.headers["reason"], e.poison.unwrap().as_str());
        assert_eq!(
            found.payload.as_deref(),
            Some(&e.payload[..]),
            "original payload kept"
        );
        assert_eq!(found.headers["source_topic"], s.topic);
        assert_eq!(found.headers["source_partition"], (i % 2).to_string());
        assert!(!found.headers["detail"].is_empty());
        assert!(found.headers.contains_key("dead_lettered_at_ms"));
    }
    let text = running.metrics.render();
    let dead: f64 = DeadLetterReason::ALL
        .iter()
        .map(|r| {
            metric(
                &text,
                &format!(
                    "clevertap_deleter_dead_letters_total{{reason=\"{}\"}}",
                    r.as_str()
                ),
            )
        })
        .sum();
    assert_eq!(dead, poison.len() as f64);
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_events_finished_total{outcome=\"dead_lettered\"}"
        ),
        poison.len() as f64
    );
    assert_eq!(s.api.deletion_counts().len(), expected_set(&events).len());
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_clevertap_rejects_are_isolated_and_dead_lettered() {
    let s = setup(1, 15).await;
    let events = simple_events(250, |_| "us1");
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let bad = ["u7", "u120", "u121"];
    s.api.reject_ids(bad.iter().map(|b| b.to_string()));
    let running = start(&s.toml("[batch]\nlinger_ms = 100"));
    s.wait_committed(vec![250], Duration::from_secs(30)).await;

    let counts = s.api.deletion_counts();
    assert_eq!(counts.len(), 247, "every other id is deleted");
    assert!(bad.iter().all(|b| !deleted_identity(&s.api, "us1", b)));
    assert!(s.api.requests().iter().all(|r| r.ids <= 100));
    let dlq = s
        .kafka
        .read_all(&format!("{}.dlq", s.topic), 1, 3, Duration::from_secs(10));
    let mut keys: Vec<String> = dlq
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["k120", "k121", "k7"]);
    assert!(dlq.iter().all(|r| r.headers["reason"] == "api_rejected"));
    assert!(dlq
        .iter()
        .all(|r| r.headers["detail"].contains("Invalid identity")));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_2xx_answers_are_never_deletions_and_end_as_unconfirmed_dead_letters() {
    use clevertap_deleter::testkit::fake_api::OddAnswer;
    let s = setup(1, 15).await;
    let events = simple_events(60, |_| "eu1");
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let odd = [
        ("u3", OddAnswer::Empty),
        ("u17", OddAnswer::NoContent),
        ("u30", OddAnswer::Html),
        ("u41", OddAnswer::Partial),
        ("u45", OddAnswer::Unprocessed),
        ("u50", OddAnswer::BomSuccess),
    ];
    for (id, answer) in odd {
        s.api.odd_ids([id.to_string()], answer);
    }
    let running = start(
        &s.toml("[batch]\nlinger_ms = 100\n[api]\nretry_max_ms = 20\nunconfirmed_retries = 1"),
    );
    s.wait_committed(vec![60], Duration::from_secs(60)).await;

    // Deleted: every id but the five the fake never confirmed (the byte
    // order mark before a success is read past).
    let counts = s.api.deletion_counts();
    assert_eq!(counts.len(), 55, "{counts:?}");
    for (id, _) in &odd[..5] {
        assert!(!deleted_identity(&s.api, "eu1", id), "{id}");
    }
    assert!(deleted_identity(&s.api, "eu1", "u50"));
    assert!(s.api.violations().is_empty(), "{:?}", s.api.violations());
    let dlq = s
        .kafka
        .read_all(&format!("{}.dlq", s.topic), 1, 5, Duration::from_secs(10));
    let mut keys: Vec<String> = dlq
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["k17", "k3", "k30", "k41", "k45"]);
    assert!(
        dlq.iter().all(|r| r.headers["reason"] == "unconfirmed"),
        "{dlq:?}"
    );
    let details: Vec<&str> = dlq.iter().map(|r| r.headers["detail"].as_str()).collect();
    assert!(
        details.iter().all(|d| d.starts_with(
            "CleverTap did not confirm the deletion of this identity: no confirmation in 2 answers, the last: HTTP 20"
        )),
        "{details:?}"
    );
    let text = running.metrics.render();
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_ids_deleted_total{kind=\"identity\",region=\"eu1\"}"
        ),
        55.0
    );
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_dead_letters_total{reason=\"unconfirmed\"}"
        ),
        5.0
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_deletions_and_commits_them() {
    let s = setup(2, 15).await;
    // Well below the client timeout (2 s): these requests are slow, not failing.
    s.api.set_latency(Duration::from_millis(1000));
    let events = simple_events(4_000, |i| REGIONS[i % 3]);
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let running = start(&s.toml("[batch]\nmax_ids = 50"));
    wait_for("first deletions", Duration::from_secs(30), || {
        let ok = s.api.deleted_total() > 0;
        async move { ok }
    })
    .await;
    let summary = running.stop().await.expect("clean stop");
    assert_eq!(summary.unfinished_at_exit, 0, "in-flight work was drained");
    let committed = s.committed(2);
    assert_eq!(
        committed,
        summary
            .committed
            .iter()
            .map(|(_, o)| *o)
            .collect::<Vec<_>>(),
        "the final commit is what the pipeline finished"
    );
    assert!(
        committed.iter().all(|c| *c > 0),
        "something was committed: {committed:?}"
    );
    // Everything below the committed offsets was deleted.
    for (i, e) in events.iter().enumerate() {
        let (p, offset) = (i % 2, (i / 2) as i64);
        if offset < committed[p] {
            assert!(
                deleted_identity(&s.api, &e.deletions[0].region, &e.deletions[0].id),
                "event {i} committed but not deleted"
            );
        }
    }
    // A restart picks up where it stopped and finishes the rest.
    s.api.set_latency(Duration::ZERO);
    let again = start(&s.toml(""));
    s.wait_committed(vec![2_000, 2_000], Duration::from_secs(60))
        .await;
    assert_eq!(s.api.deletion_counts().len(), 4_000);
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_the_api_is_down() {
    let s = setup(2, 15).await;
    s.api
        .set_faults(clevertap_deleter::testkit::fake_api::Faults {
            server_error: 1.0,
            ..Default::default()
        });
    let events = simple_events(20_000, |i| REGIONS[i % 3]);
    s.kafka.produce(&s.topic, &events, |i| (i % 2) as i32).await;
    let running =
        start(&s.toml("[pipeline]\nmax_events_in_memory = 500\ncommit_interval_ms = 100"));
    wait_for("consumption paused", Duration::from_secs(30), || {
        let ok = metric(
            &running.metrics.render(),
            "clevertap_deleter_consumer_paused",
        ) == 1.0;
        async move { ok }
    })
    .await;
    let consumed = || {
        metric(
            &running.metrics.render(),
            &format!(
                "clevertap_deleter_events_consumed_total{{topic=\"{}\"}}",
                s.topic
            ),
        )
    };
    // Two commit ticks after the pause: the gauges show the held state and
    // whatever was already read when the hold began has been admitted.
    commit_ticks(&running, 2).await;
    let held_at_pause = running.metrics.events_in_memory.get();
    let consumed_at_pause = consumed();
    // The bound: the configured maximum, the source channel, and what
    // librdkafka hands out before the pause takes effect (documented slack).
    let bound = 500 + clevertap_deleter::app::pipeline::SOURCE_CHANNEL_CAPACITY as i64 + 1_000;
    assert!(
        held_at_pause <= bound,
        "{held_at_pause} events in memory, above {bound}"
    );
    assert!(
        consumed_at_pause < 5_000.0,
        "consumption stopped early: {consumed_at_pause}"
    );
    // The daemon keeps working (retrying the API) while nothing is read.
    for _ in 0..10 {
        let requests = s.api.request_count();
        wait_for("more API retries", Duration::from_secs(30), || {
            let n = s.api.request_count();
            async move { n >= requests + 5 }
        })
        .await;
        assert_eq!(
            consumed(),
            consumed_at_pause,
            "nothing is read while paused"
        );
        assert_eq!(
            running.metrics.events_in_memory.get(),
            held_at_pause,
            "memory stays flat"
        );
    }
    let committed = s.committed(2);
    assert!(
        committed.iter().all(|c| *c <= 0),
        "nothing committed while nothing is deleted: {committed:?}"
    );

    s.api.set_faults(Default::default());
    s.wait_committed(vec![10_000, 10_000], Duration::from_secs(60))
        .await;
    assert_eq!(s.api.deletion_counts().len(), 20_000);
    assert_eq!(
        metric(
            &running.metrics.render(),
            "clevertap_deleter_consumer_paused"
        ),
        0.0
    );
    running.stop().await.unwrap();
}

/// After an outage of the API every waiting batch goes again with the
/// region's first success, not when its own backoff (up to
/// `api.retry_max_ms`) runs out. Here every backoff is up to 120 s; the
/// backlog must drain well inside that once one new event gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_waiting_batches_retry_with_the_first_success() {
    let s = setup(1, 15).await;
    s.api
        .set_faults(clevertap_deleter::testkit::fake_api::Faults {
            server_error: 1.0,
            ..Default::default()
        });
    let events = simple_events(301, |_| "eu1");
    s.kafka.produce(&s.topic, &events[..300], |_| 0).await;
    let running = start(&s.toml(
        "[batch]\nmax_ids = 10\nlinger_ms = 20\n[api]\nretry_initial_ms = 120000\nretry_max_ms = 120000",
    ));
    let backing_off = |running: &Running| {
        metric(
            &running.metrics.render(),
            "clevertap_deleter_api_batches_backing_off{region=\"eu1\"}",
        )
    };
    // The positive signal: all 30 batches refused and waiting out a backoff.
    wait_for("every batch backing off", Duration::from_secs(30), || {
        let n = backing_off(&running);
        async move { n == 30.0 }
    })
    .await;
    let refused = s.api.request_count();
    s.api.set_faults(Default::default());
    // One new event: its batch is sent at once and succeeds.
    s.kafka.produce(&s.topic, &events[300..], |_| 0).await;
    s.wait_committed(vec![301], Duration::from_secs(30)).await;
    assert_eq!(s.api.deletion_counts().len(), 301, "every id deleted");
    assert!(
        s.api.request_count() <= refused + 31 + 5,
        "each waiting batch went once more (requests {} after {refused} refused)",
        s.api.request_count()
    );
    assert_eq!(backing_off(&running), 0.0);
    running.stop().await.unwrap();
}

/// The wake-up above is for outages only: one batch failing on its own while
/// the others succeed keeps its backoff instead of going again with every
/// success (a 5xx loop at the API's pace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_alone_keeps_its_backoff_while_others_succeed() {
    let s = setup(1, 15).await;
    s.api.fail_ids(["u5".to_string()], 500);
    s.api.set_latency(Duration::from_millis(20));
    let events = simple_events(3_000, |_| "eu1");
    let running = start(&s.toml(
        "[batch]\nmax_ids = 10\nlinger_ms = 5\n[api]\nretry_initial_ms = 6000\nretry_max_ms = 6000",
    ));
    let began = std::time::Instant::now();
    // Successes spread over about 3 s (five batches every 50 ms), so no
    // queue of batches stands between a woken retry and the API.
    for chunk in events.chunks(50) {
        s.kafka.produce(&s.topic, chunk, |_| 0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The positive signal: the 299 other batches (299 successes) are done.
    wait_for("every other batch deleted", Duration::from_secs(60), || {
        let n = s.api.deletion_counts().len();
        async move { n >= 2_990 }
    })
    .await;
    let failed = s.api.status_counts().get(&500).copied().unwrap_or(0);
    // Waits uniform in 0..=6 s (3 s on average): twice that rate at most,
    // and a few more. Woken by the others' successes it went 25 times in
    // 11.3 s (bound 11).
    let seconds = began.elapsed().as_secs_f64();
    let allowed = (seconds / 1.5).ceil() as u64 + 3;
    assert!(
        (1..=allowed).contains(&failed),
        "the failing batch went {failed} times in {seconds:.1} s (at most {allowed}) while 299 others succeeded"
    );
    s.api.clear_failing_ids();
    s.wait_committed(vec![3_000], Duration::from_secs(30)).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_calls_nothing_commits_nothing_and_writes_no_dead_letter() {
    let s = setup(1, 15).await;
    let events = generate(&SynthSpec {
        count: 300,
        poison_ratio: 0.05,
        ..SynthSpec::default()
    });
    s.kafka.produce(&s.topic, &events, |_| 0).await;
    let running = start(&s.toml("[api]\ndry_run = true"));
    wait_for("every event finished", Duration::from_secs(30), || {
        let text = running.metrics.render();
        let total: f64 = ["deleted", "deduplicated", "dead_lettered", "skipped"]
            .iter()
            .map(|o| {
                metric(
                    &text,
                    &format!("clevertap_deleter_events_finished_total{{outcome=\"{o}\"}}"),
                )
            })
            .sum();
        async move { total == 300.0 }
    })
    .await;
    // stop() returns after the final commit, where a commit would happen.
    let summary = running.stop().await.unwrap();
    assert!(summary.committed.is_empty());
    assert_eq!(s.api.request_count(), 0, "no API call in a dry run");
    assert_eq!(s.committed(1), vec![-1], "no offset committed in a dry run");
    assert!(s
        .kafka
        .read_all(&format!("{}.dlq", s.topic), 1, 1, Duration::from_secs(2))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_record_that_fails_again_keeps_its_replay_count() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let s = setup(1, 15).await;
    let producer = s.kafka.producer();
    let headers = OwnedHeaders::new().insert(Header {
        key: "replay_count",
        value: Some("2"),
    });
    producer
        .send(
            FutureRecord::to(&s.topic)
                .key("k-replayed")
                .payload("still not json")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    producer
        .send(
            FutureRecord::<str, str>::to(&s.topic)
                .key("k-fresh")
                .payload("not json either"),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    let running = start(&s.toml(""));
    s.wait_committed(vec![2], Duration::from_secs(30)).await;
    let dlq = s
        .kafka
        .read_all(&format!("{}.dlq", s.topic), 1, 2, Duration::from_secs(10));
    let by_key = |k: &str| {
        dlq.iter()
            .find(|r| r.key.as_deref() == Some(k.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {k}"))
    };
    assert_eq!(
        by_key("k-replayed")
            .headers
            .get("replay_count")
            .map(String::as_str),
        Some("2")
    );
    assert!(!by_key("k-fresh").headers.contains_key("replay_count"));
    running.stop().await.unwrap();
}
