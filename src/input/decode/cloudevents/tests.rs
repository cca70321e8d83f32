use crate::input::decode::tests::{
    assert_asks_in1_for_u1_u2_g1, binary_with, both_paths, cloudevents, decode_with, envelope,
    verdict_with, BINARY, STRUCTURED,
};
use crate::input::decode::*;

#[test]
fn cloudevents_in_both_modes_are_deleted_with_their_identity() {
    let data = r#"{"region":"IN1","identity":["u1","u2"],"guid":"g1","type":"ignored"}"#;
    for d in &both_paths(cloudevents(|_| {})) {
        for (payload, headers) in [
            (data.to_string(), &BINARY[..]),
            (envelope(data), &STRUCTURED[..]),
        ] {
            let Decoded::Delete(req) = decode_with(d, &payload, headers) else {
                panic!("{payload}")
            };
            assert_asks_in1_for_u1_u2_g1(&req);
            assert_eq!(
                req.cloud_event.as_deref(),
                Some(&CloudEventRef {
                    source: "/accounts".into(),
                    id: "e-1".into()
                })
            );
        }
        // data_base64 holds the same data.
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data);
        let payload = format!(
            r#"{{"specversion":"1.0","type":"user-deleted","source":"/accounts","id":"e-1","datacontenttype":"application/json","data_base64":"{encoded}"}}"#
        );
        assert_eq!(
            decode_with(d, &payload, &STRUCTURED),
            decode_with(d, data, &BINARY)
        );
        // Without a region, the default one.
        let Decoded::Delete(req) = decode_with(d, r#"{"guid":"g"}"#, &BINARY) else {
            panic!()
        };
        assert_eq!(req.region, RegionName::new("eu1"));
    }
}

#[test]
fn other_cloudevent_types_are_skipped_whatever_their_data() {
    for d in &both_paths(cloudevents(|_| {})) {
        let mut other: Vec<(&str, &str)> = binary_with("ce_type", Some("user-created"));
        for payload in ["", "not JSON", r#"{"guid":42}"#] {
            assert_eq!(verdict_with(d, payload, &other), "skip", "{payload}");
        }
        other.retain(|(k, _)| *k != "content-type");
        other.push(("content-type", "application/avro"));
        assert_eq!(verdict_with(d, "\u{1}avro", &other), "skip");
        // Skipped before the other attributes are looked at.
        other.retain(|(k, _)| *k != "ce_id");
        assert_eq!(verdict_with(d, "", &other), "skip");
        let structured = envelope(r#"{"guid":"g"}"#).replace("user-deleted", "user-created");
        assert_eq!(verdict_with(d, &structured, &STRUCTURED), "skip");
        let no_data = r#"{"specversion":"1.0","type":"user-created","source":"/s"}"#;
        assert_eq!(verdict_with(d, no_data, &STRUCTURED), "skip");
    }
}

/// A binary-mode message (payload, headers) and the verdict it must get.
type BinaryCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn envelope_errors_are_dead_lettered_with_their_reason() {
    let guid = r#"{"guid":"g"}"#;
    let base64_of =
        |text: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
    let structured_cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not_json"),
        (r#"[{"specversion":"1.0"}]"#.into(), "invalid_cloudevent"),
        (
            envelope(guid).replace(r#""id":"e-1","#, ""),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""id":"e-1""#, r#""id":"""#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""id":"e-1""#, r#""id":7"#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""source":"/accounts","#, ""),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""specversion":"1.0""#, r#""specversion":"0.3""#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""specversion":"1.0""#, r#""specversion":1.0"#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""type":"user-deleted""#, r#""type":null"#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""type":"user-deleted""#, r#""type":"""#),
            "invalid_cloudevent",
        ),
        (envelope(r#""g""#), "invalid_cloudevent"),
        (envelope("null"), "invalid_cloudevent"),
        (envelope(r#"["g"]"#), "invalid_cloudevent"),
        (
            envelope(guid).replace(r#","data":{"guid":"g"}"#, ""),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(
                "}}",
                &format!(r#"}},"data_base64":"{}"}}"#, base64_of(guid)),
            ),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""data":{"guid":"g"}"#, r#""data_base64":"not base64!""#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""data":{"guid":"g"}"#, r#""data_base64":5"#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(
                r#""data":{"guid":"g"}"#,
                &format!(r#""data_base64":"{}""#, base64_of("user g deleted")),
            ),
            "not_json",
        ),
        (
            envelope(guid).replace(
                r#""data":{"guid":"g"}"#,
                &format!(r#""data_base64":"{}""#, base64_of("[1]")),
            ),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(r#""time""#, r#""datacontenttype":"text/plain","time""#),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(
                r#""time""#,
                r#""datacontenttype":"application/vnd.x+json; v=2","time""#,
            ),
            "delete",
        ),
        (
            envelope(guid).replace(
                r#""id":"e-1""#,
                &format!(r#""id":"{}""#, "x".repeat(MAX_ATTRIBUTE_BYTES + 1)),
            ),
            "invalid_cloudevent",
        ),
        (
            envelope(guid).replace(
                r#""id":"e-1""#,
                &format!(r#""id":"{}""#, "x".repeat(MAX_ATTRIBUTE_BYTES)),
            ),
            "delete",
        ),
        // The attributes and data the decoder reads must not repeat.
        (
            envelope(guid).replace(r#""id":"e-1""#, r#""id":"e-1","id":"e-2""#),
            "duplicate_key",
        ),
        (
            envelope(guid).replace(r#""time""#, r#""type":"user-created","time""#),
            "duplicate_key",
        ),
        (
            envelope(guid).replace("}}", r#"},"data":{"guid":"h"}}"#),
            "duplicate_key",
        ),
        (envelope(r#"{"guid":"g","guid":"h"}"#), "duplicate_key"),
        // Unread attributes may.
        (
            envelope(guid).replace(r#""time""#, r#""subject":"a","subject":"b","time""#),
            "delete",
        ),
    ];
    for d in &both_paths(cloudevents(|_| {})) {
        for (payload, expected) in &structured_cases {
            assert_eq!(
                &verdict_with(d, payload, &STRUCTURED),
                expected,
                "{payload}"
            );
        }
        for (content_type, expected) in [
            ("application/cloudevents+avro", "invalid_cloudevent"),
            ("application/cloudevents-batch+json", "invalid_cloudevent"),
            ("Application/CloudEvents+JSON", "delete"),
        ] {
            assert_eq!(
                verdict_with(d, &envelope(guid), &[("content-type", content_type)]),
                expected,
                "{content_type}"
            );
        }
        let binary_cases: Vec<BinaryCase<'_>> = vec![
            (guid, binary_with("ce_id", None), "invalid_cloudevent"),
            (guid, binary_with("ce_source", None), "invalid_cloudevent"),
            (guid, binary_with("ce_type", None), "invalid_cloudevent"),
            (
                guid,
                binary_with("ce_specversion", Some("0.3")),
                "invalid_cloudevent",
            ),
            (
                guid,
                binary_with("content-type", Some("application/avro")),
                "invalid_cloudevent",
            ),
            (
                guid,
                binary_with("content-type", Some("text/json")),
                "delete",
            ),
            (guid, binary_with("content-type", None), "delete"),
            ("", BINARY.to_vec(), "empty"),
            ("user g deleted", BINARY.to_vec(), "not_json"),
            (r#"["g"]"#, BINARY.to_vec(), "invalid_cloudevent"),
            (r#""g""#, BINARY.to_vec(), "invalid_cloudevent"),
            ("{}", BINARY.to_vec(), "no_id"),
            (
                guid,
                [&BINARY[..], &[("ce_id", "e-2")]].concat(),
                "duplicate_key",
            ),
            (
                guid,
                [&BINARY[..], &[("ce_type", "user-created")]].concat(),
                "duplicate_key",
            ),
            (
                guid,
                [&BINARY[..], &[("content-type", "text/json")]].concat(),
                "duplicate_key",
            ),
            // Neither mode.
            (guid, vec![], "not_cloudevent"),
            (
                guid,
                vec![("content-type", "application/json")],
                "not_cloudevent",
            ),
            ("", vec![], "empty"),
        ];
        for (payload, headers, expected) in &binary_cases {
            assert_eq!(
                &verdict_with(d, payload, headers),
                expected,
                "{payload} {headers:?}"
            );
        }
    }
    // A header value that is not UTF-8.
    let d = cloudevents(|_| {});
    let verdict = d.decode_message(
        Some(&br#"{"guid":"g"}"#[..]),
        [
            (&b"ce_specversion"[..], Some(&b"1.0"[..])),
            (b"ce_type", Some(b"user-deleted")),
            (b"ce_source", Some(b"/s")),
            (b"ce_id", Some(b"\xff")),
        ],
    );
    let Decoded::DeadLetter(r) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(r.reason, DeadLetterReason::InvalidCloudevent);
    assert_eq!(r.detail, "header `ce_id` is invalid UTF-8, not a string");
    // A null or empty header value counts as absent.
    let verdict = d.decode_message(
        Some(&br#"{"guid":"g"}"#[..]),
        [
            (&b"ce_specversion"[..], Some(&b"1.0"[..])),
            (b"ce_type", Some(b"user-deleted")),
            (b"ce_source", Some(b"/s")),
            (b"ce_id", None),
            (b"ce_id", Some(b"")),
            (b"ce_id", Some(b"e-3")),
        ],
    );
    assert!(matches!(verdict, Decoded::Delete(_)), "{verdict:?}");
}

/// Synthetic CloudEvents decode to exactly the deletions (or the poison
/// reason) they were made with, the same on both paths.
#[test]
fn synthetic_cloudevents_decode_as_made() {
    use crate::testkit::synth::{generate, SynthFormat, SynthSpec};
    let d = cloudevents(|s| {
        s.default_region = None;
        s.max_ids_per_event = 1000;
        s.max_id_bytes = 256;
        s.max_message_bytes = 65536;
    });
    for format in [
        SynthFormat::CloudEvents,
        SynthFormat::CloudEventsBinary,
        SynthFormat::CloudEventsStructured,
    ] {
        let events = generate(&SynthSpec {
            count: 2_000,
            regions: vec!["eu1".into(), "in1".into()],
            poison_ratio: 0.1,
            format,
            ..Default::default()
        });
        for paths in both_paths(d.clone()) {
            for e in &events {
                let verdict = paths.decode_message(
                    Some(&e.payload),
                    e.headers
                        .iter()
                        .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
                );
                match (&e.poison, verdict) {
                    (Some(reason), Decoded::DeadLetter(r)) => assert_eq!(*reason, r.reason),
                    (None, Decoded::Delete(req)) => {
                        let got: Vec<(String, IdKind, String)> = req
                            .ids
                            .iter()
                            .map(|(k, id)| (req.region.to_string(), *k, id.to_string()))
                            .collect();
                        let made: Vec<(String, IdKind, String)> = e
                            .deletions
                            .iter()
                            .map(|x| (x.region.clone(), x.kind, x.id.clone()))
                            .collect();
                        assert_eq!(got, made);
                        let ce = req.cloud_event.expect("a CloudEvent");
                        assert_eq!(ce.source, crate::testkit::synth::CLOUDEVENT_SOURCE);
                        assert!(ce.id.starts_with("evt-"));
                    }
                    (expected, verdict) => panic!("{expected:?}: {verdict:?} for {e:?}"),
                }
            }
        }
    }
}
