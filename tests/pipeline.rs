//! End-to-end behaviour on rdkafka's MockCluster with the fake CleverTap API:
//! what the API received, what the group committed, what was dead-lettered.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use clevertap_deleter::decode::DeadLetterReason;
use clevertap_deleter::ids::IdKind;
use clevertap_deleter::synth::{generate, ExpectedDeletion, SynthSpec};
use common::*;

fn expected_set(
    events: &[clevertap_deleter::synth::SynthEvent],
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
    let _ = BTreeMap::<u8, u8>::new();
    let _ = DeadLetterReason::Empty;
}
