//! CloudEvents input (`event.format = "cloudevents"`) end to end: the
//! compiled daemon as a process, Apache Kafka (started by the tests with
//! `deploy/local-kafka/local-kafka`, see docs/TESTING.md "Real-broker
//! tests") and the fake CleverTap API.
//!
//! One scenario per mode of the CloudEvents Kafka binding, each ending with
//! the checks every real-broker scenario ends with (every id deleted, every
//! poison event dead-lettered with its reason, envelope errors included, the
//! group's offsets at the end of every partition, the API contract kept),
//! and with the audit trail: every event that asked for a deletion is named
//! in an audit record with its CloudEvents `id` and `source`; every dead
//! letter starts with its source record's headers (in binary mode, the
//! CloudEvent's attributes), for `replay-dlq` to put back.
//!
//! - structured mode: the payload is the JSON envelope;
//! - binary mode: the attributes are `ce_*` headers, and a third of the
//!   events give their region by the header `tenant-region` only.
//!
//! Each test fails when it cannot run (no Java or Maven for local-kafka),
//! unless `E2E_ALLOW_SKIP=1`.

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/cgrp.rs"]
mod cgrp;
#[path = "e2e/check.rs"]
mod check;
mod common;
#[path = "e2e/daemon.rs"]
mod daemon;
#[path = "e2e/local_kafka.rs"]
mod local_kafka;
#[path = "e2e/world.rs"]
mod world;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clevertap_deleter::domain::outcome::DeadLetterReason;
use clevertap_deleter::input::headers as record_headers;
use clevertap_deleter::testkit::fake_api::Faults;
use clevertap_deleter::testkit::synth::{
    cloudevent, generate, SynthEvent, SynthFormat, SynthSpec, CLOUDEVENT_SOURCE,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

use broker::Produced;
use check::{verify, wait_fully_committed, Expected};
use daemon::{metric_sum, Api};
use world::{begin, World};

/// Events per scenario; 5 % poison, envelope errors among them.
const EVENTS: usize = 3_000;

/// The daemon's settings for these scenarios: CloudEvents, the region also
/// readable from a header, and the audit trail on.
fn cloudevents_config(audit_topic: &str) -> String {
    format!(
        "[event]\nformat = \"cloudevents\"\nregion_header = \"tenant-region\"\n\
         [kafka]\naudit_topic = \"{audit_topic}\"\n"
    )
}

/// Synthetic CloudEvents in one mode, and a few of another type (skipped,
/// whatever their data).
fn events(format: SynthFormat, binary: bool, seed: u64) -> Vec<SynthEvent> {
    let mut events = generate(&SynthSpec {
        count: EVENTS,
        poison_ratio: 0.05,
        seed,
        format,
        ..SynthSpec::default()
    });
    for n in 0..20 {
        let id = format!("created-{n}");
        let message = cloudevent(binary, "user-created", Some(&id), br#"{"identity":"x"}"#);
        events.insert(n * 100, asking_nothing(id, message, None));
    }
    events
}

/// An event that deletes nothing: skipped, or dead-lettered with `poison`.
fn asking_nothing(
    key: String,
    (headers, payload): (Vec<(String, String)>, Vec<u8>),
    poison: Option<DeadLetterReason>,
) -> SynthEvent {
    SynthEvent {
        key,
        headers,
        payload,
        deletions: Vec::new(),
        poison,
    }
}

/// Moves the region of every third binary-mode deletion from its data to
/// the header `tenant-region`.
fn region_by_header(events: &mut [SynthEvent]) -> usize {
    let mut moved = 0;
    for e in events.iter_mut().step_by(3) {
        if e.poison.is_some() || e.deletions.is_empty() {
            continue;
        }
        let mut data: serde_json::Map<String, Value> =
            serde_json::from_slice(&e.payload).expect("synthetic data is JSON");
        let Some(Value::String(region)) = data.remove("region") else {
            continue;
        };
        e.payload = serde_json::to_vec(&data).expect("JSON");
        e.headers
            .push(("tenant-region".into(), region.to_uppercase()));
        moved += 1;
    }
    moved
}

/// The CloudEvents id of each produced event that asks for a deletion, by
/// position: from the `ce_id` header (binary mode) or the envelope.
fn cloudevent_ids(produced: &Produced) -> HashMap<(i32, i64), String> {
    let mut out = HashMap::new();
    for (e, &at) in produced.events.iter().zip(&produced.positions) {
        if e.poison.is_some() || e.deletions.is_empty() {
            continue;
        }
        let id = match e.headers.iter().find(|(k, _)| k == "ce_id") {
            Some((_, id)) => id.clone(),
            None => {
                let envelope: Value = serde_json::from_slice(&e.payload).expect("envelope");
                envelope["id"].as_str().expect("an id").to_string()
            }
        };
        out.insert(at, id);
    }
    out
}

/// Every deletion event is named in the audit trail with its CloudEvent's
/// id and source (a repeat's audit record names it too); no source record
/// is named without them.
fn check_audit_trail(world: &World, audit_topic: &str, produced: &Produced) -> usize {
    let expected = cloudevent_ids(produced);
    let mut named: HashMap<(i32, i64), String> = HashMap::new();
    let records = world.broker.records(audit_topic, 1);
    for (_, payload) in &records {
        let record: Value = serde_json::from_slice(payload.as_deref().expect("a payload"))
            .expect("an audit record is JSON");
        for source in record["sources"].as_array().expect("sources") {
            assert_eq!(source["topic"], world.topic.as_str(), "{source}");
            assert_eq!(source["cloudevent_source"], CLOUDEVENT_SOURCE, "{source}");
            let at = (
                source["partition"].as_i64().expect("partition") as i32,
                source["offset"].as_i64().expect("offset"),
            );
            let id = source["cloudevent_id"].as_str().expect("a cloudevent_id");
            named.insert(at, id.to_string());
        }
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|at| !named.contains_key(at))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "not in the audit trail: {missing:?}");
    for (at, id) in &named {
        assert_eq!(Some(id), expected.get(at), "audit source {at:?}");
    }
    records.len()
}

/// Every dead letter starts with its source record's own headers, as
/// produced (for binary mode, the CloudEvent's attributes), and counts them
/// in `original_header_count`. Returns how many dead letters had headers.
fn check_dead_letter_headers(world: &World, produced: &Produced) -> usize {
    let by_position: HashMap<(i32, i64), &SynthEvent> = produced
        .positions
        .iter()
        .copied()
        .zip(&produced.events)
        .collect();
    let dlq_topic = format!("{}.dlq", world.topic);
    let consumer: BaseConsumer = world
        .broker
        .client_config()
        .set("group.id", "e2e-dead-letter-headers")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let end = world.broker.high_watermarks(&dlq_topic, 1)[0];
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlq_topic, 0, Offset::Beginning)
        .expect("offset");
    consumer.assign(&tpl).expect("assign");
    let (mut read, mut with_headers) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < end {
        assert!(
            Instant::now() < deadline,
            "read {read} of {end} dead letters"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message.expect("a dead letter");
        read = m.offset() + 1;
        let headers: Vec<(String, String)> = m
            .headers()
            .map(|h| {
                record_headers::each(h)
                    .map(|(k, v)| {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        (text(k), v.map(text).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let at = (
            header("source_partition")
                .expect("source_partition")
                .parse()
                .expect("a number"),
            header("source_offset")
                .expect("source_offset")
                .parse()
                .expect("a number"),
        );
        let event = by_position[&at];
        assert_eq!(headers[..event.headers.len()], event.headers[..], "{at:?}");
        let count = (!event.headers.is_empty()).then(|| event.headers.len().to_string());
        assert_eq!(header("original_header_count"), count, "{at:?}");
        with_headers += usize::from(count.is_some());
    }
    with_headers
}

/// Produces `events` in `world`, runs one daemon until everything is
/// committed, and checks deletions, dead letters, offsets and the audit trail.
fn run_scenario(label: &str, world: World, events: Vec<SynthEvent>) {
    let audit_topic = format!("{}.audit", world.topic);
    world.broker.create_topic(&audit_topic, 1);
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        if let Some(reason) = e.poison {
            *reasons.entry(reason.as_str()).or_default() += 1;
        }
    }
    for envelope_error in [
        DeadLetterReason::InvalidCloudevent,
        DeadLetterReason::NotCloudevent,
    ] {
        assert!(
            reasons.contains_key(envelope_error.as_str()),
            "the events include {envelope_error}: {reasons:?}"
        );
    }
    let (produced, _) = world.produce_events(events, 0);
    let expected = Expected::new(&produced);
    let api = Api::start(Duration::from_millis(5), Faults::default());
    let started = Instant::now();
    let mut d = world.daemon(label, &api, &cloudevents_config(&audit_topic));
    let reader = world.broker.offsets_reader(&world.group);
    wait_fully_committed(&reader, &expected, Duration::from_secs(60), &mut [&mut d]);
    let took = started.elapsed();
    let metrics = d.metrics().unwrap_or_default();
    let status = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");

    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    let audit_records = check_audit_trail(&world, &audit_topic, &produced);
    let dead_with_headers = check_dead_letter_headers(&world, &produced);
    assert_eq!(
        metric_sum(&metrics, "clevertap_deleter_events_consumed_total"),
        expected.events() as f64,
        "every event read once"
    );
    let skipped = common::metric(
        &metrics,
        "clevertap_deleter_events_finished_total{outcome=\"skipped\"}",
    );
    assert_eq!(skipped, 20.0, "the user-created CloudEvents are skipped");
    println!(
        "[{label}] all committed {took:.1?} after start; {outcome}; dead letters by reason \
         {reasons:?} ({dead_with_headers} with the original headers); {audit_records} audit \
         records"
    );
}

/// Structured mode: the envelope is the payload (`content-type:
/// application/cloudevents+json`).
#[test]
fn e2e_cloudevents_structured_mode() {
    let Some((_serial, world)) = begin("ce-structured", 3) else {
        return;
    };
    let events = events(SynthFormat::CloudEventsStructured, false, 901);
    run_scenario("cloudevents structured", world, events);
}

/// Binary mode: `ce_*` headers, the payload is the data; a third of the
/// deletions name their region only by the header `tenant-region`.
#[test]
fn e2e_cloudevents_binary_mode_with_region_header() {
    let Some((_serial, world)) = begin("ce-binary", 3) else {
        return;
    };
    let mut events = events(SynthFormat::CloudEventsBinary, true, 902);
    let moved = region_by_header(&mut events);
    assert!(moved > 500, "{moved} events with the region in a header");
    // A header and the data that disagree on the region: neither wins.
    for n in 0..10 {
        let (mut headers, payload) = cloudevent(
            true,
            "user-deleted",
            Some(&format!("conflict-{n}")),
            format!(r#"{{"region":"eu1","identity":"conflict-{n}"}}"#).as_bytes(),
        );
        headers.push(("tenant-region".into(), "in1".into()));
        let poison = Some(DeadLetterReason::DuplicateKey);
        events.insert(
            n * 250 + 7,
            asking_nothing(format!("conflict-{n}"), (headers, payload), poison),
        );
    }
    run_scenario("cloudevents binary", world, events);
}
