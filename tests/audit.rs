//! Audit records: one per finished deletion request, acknowledged by the
//! broker before the offsets they cover are committed.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clevertap_deleter::output::audit::salted_sha256;
use clevertap_deleter::testkit::synth::{generate, SynthSpec};
use common::*;
use rdkafka::types::RDKafkaRespErr;

fn records(kafka: &Kafka, topic: &str) -> Vec<serde_json::Value> {
    kafka
        .read_everything(topic, 1)
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload.expect("payload")).expect("JSON audit record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deletion_is_audited_before_its_offsets_are_committed() {
    let kafka = Kafka::new();
    let topic = unique("audited");
    let audit_topic = format!("{topic}.audit");
    kafka.topic(&topic, 2);
    kafka.topic(&format!("{topic}.dlq"), 1);
    kafka.topic(&audit_topic, 1);
    let events = generate(&SynthSpec {
        count: 800,
        poison_ratio: 0.0,
        ..SynthSpec::default()
    });
    kafka.produce(&topic, &events, |i| (i % 2) as i32).await;
    let api = fake_api(15).await;
    let rejected_id = events[10].deletions[0].id.clone();
    api.reject_ids([rejected_id.clone()]);
    // Answered 200 with an empty body: never confirmed, dead-lettered.
    let unconfirmed_id = events[20].deletions[0].id.clone();
    assert_ne!(unconfirmed_id, rejected_id);
    api.odd_ids(
        [unconfirmed_id.clone()],
        clevertap_deleter::testkit::fake_api::OddAnswer::Empty,
    );
    // The audit topic refuses writes: deletions happen, nothing may commit.
    kafka
        .cluster
        .topic_error(
            &audit_topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let group = unique("g");
    let toml = config_toml(
        &kafka.bootstrap,
        &topic,
        &group,
        &api.endpoint(),
        &format!("[kafka]\naudit_topic = \"{audit_topic}\"\n[api]\nunconfirmed_retries = 1"),
    );
    let running = start(&toml);
    wait_for("deletions at the API", Duration::from_secs(30), || {
        let n = api.deleted_total();
        async move { n > 100 }
    })
    .await;
    // Positive signal that the commit ticks ran after the deletions and the
    // refused audit writes: a tick saw all 800 events read and held back,
    // and a later tick saw the oldest of them older than a second.
    let failures =
        "clevertap_deleter_kafka_write_failures_total{reason=\"authorization\",writer=\"audit\"}";
    wait_for("refused audit writes", Duration::from_secs(30), || {
        let n = metric(&running.metrics.render(), failures);
        async move { n >= 1.0 }
    })
    .await;
    wait_for(
        "a commit tick holding every event back",
        Duration::from_secs(30),
        || {
            let text = running.metrics.render();
            let held = metric_sum(&text, "clevertap_deleter_offsets_held_back");
            let age = metric(
                &text,
                "clevertap_deleter_oldest_unfinished_event_age_seconds",
            );
            async move { held >= 800.0 && age > 1.0 }
        },
    )
    .await;
    let held = kafka.committed(&group, &topic, 2);
    assert!(
        held.iter().all(|c| *c <= 0),
        "committed before the audit record was stored: {held:?}"
    );

    kafka
        .cluster
        .topic_error(&audit_topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    wait_for("commits at the end", Duration::from_secs(60), || {
        let done = kafka.committed(&group, &topic, 2) == vec![400, 400];
        async move { done }
    })
    .await;

    let audit = records(&kafka, &audit_topic);
    assert!(!audit.is_empty());
    let mut audited_ids: HashMap<(String, String, String), String> = HashMap::new();
    let mut covered: HashSet<(i64, i64)> = HashSet::new();
    for r in &audit {
        if r["status"] != "already_deleted" {
            assert!(r["attempts"].as_u64().unwrap() >= 1, "{r}");
        }
        assert!(r["completed_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(r["ids_hashed"], false);
        assert_eq!(r["account_id"], account_id(r["region"].as_str().unwrap()));
        let sources = r["sources"].as_array().unwrap();
        assert!(
            !sources.is_empty(),
            "every record names the events it covers: {r}"
        );
        for s in sources {
            assert_eq!(s["topic"], topic.as_str());
            covered.insert((
                s["partition"].as_i64().unwrap(),
                s["offset"].as_i64().unwrap(),
            ));
        }
        for id in r["ids"].as_array().unwrap() {
            audited_ids.insert(
                (
                    r["region"].as_str().unwrap().to_string(),
                    r["kind"].as_str().unwrap().to_string(),
                    id.as_str().unwrap().to_string(),
                ),
                r["status"].as_str().unwrap().to_string(),
            );
        }
    }
    // Every deletion asked for has its record, with the right status, and
    // of the events asking for the same thing (repeats, possibly on another
    // partition and admitted first) at least one is among its sources.
    let mut occurrences: HashMap<&[u8], Vec<(i64, i64)>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        for d in &e.deletions {
            let status = audited_ids
                .get(&(d.region.clone(), d.kind.as_str().to_string(), d.id.clone()))
                .unwrap_or_else(|| panic!("no audit record for event {i}"));
            if d.id == rejected_id {
                assert_eq!(status, "rejected");
            } else if d.id == unconfirmed_id {
                assert_eq!(status, "unconfirmed");
            } else {
                // A repeat found in the recently-deleted memory is named in
                // an already_deleted record, which may come last.
                assert!(
                    status == "deleted" || status == "already_deleted",
                    "{status}"
                );
            }
        }
        occurrences
            .entry(&e.payload)
            .or_default()
            .push(((i % 2) as i64, (i / 2) as i64));
    }
    // Every event is named in a record, repeats included: those that joined
    // a deletion in flight and those finished from the recently-deleted memory.
    for places in occurrences.values() {
        for place in places {
            assert!(
                covered.contains(place),
                "no audit record names event {place:?}"
            );
        }
    }
    let text = running.metrics.render();
    assert!(
        metric(
            &text,
            "clevertap_deleter_audit_records_total{status=\"deleted\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_audit_records_total{status=\"rejected\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "clevertap_deleter_audit_records_total{status=\"unconfirmed\"}"
        ),
        1.0
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_audit_records_carry_no_plain_id() {
    let kafka = Kafka::new();
    let topic = unique("hashed");
    let audit_topic = format!("{topic}.audit");
    kafka.topic(&topic, 1);
    kafka.topic(&format!("{topic}.dlq"), 1);
    kafka.topic(&audit_topic, 1);
    let events = generate(&SynthSpec {
        count: 200,
        poison_ratio: 0.0,
        ..SynthSpec::default()
    });
    kafka.produce(&topic, &events, |_| 0).await;
    let api = fake_api(15).await;
    let group = unique("g");
    let salt = "a-long-enough-salt-value";
    let toml = config_toml(
        &kafka.bootstrap,
        &topic,
        &group,
        &api.endpoint(),
        &format!(
            "[kafka]\naudit_topic = \"{audit_topic}\"\n[audit]\nhash_ids = true\nsalt = \"{salt}\""
        ),
    );
    let running = start(&toml);
    wait_for("commits at the end", Duration::from_secs(30), || {
        let done = kafka.committed(&group, &topic, 1) == vec![200];
        async move { done }
    })
    .await;
    let raw = kafka.read_everything(&audit_topic, 1);
    let all_bytes: Vec<u8> = raw
        .iter()
        .flat_map(|r| r.payload.clone().unwrap())
        .collect();
    let text = String::from_utf8_lossy(&all_bytes);
    let hashes: HashSet<String> = records(&kafka, &audit_topic)
        .iter()
        .flat_map(|r| {
            assert_eq!(r["ids_hashed"], true);
            r["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for d in events.iter().flat_map(|e| e.deletions.iter()) {
        assert!(!text.contains(&d.id), "plain id in the audit topic");
        assert!(
            hashes.contains(&salted_sha256(salt, &d.id)),
            "hash of a deleted id is missing"
        );
    }
    running.stop().await.unwrap();
}
