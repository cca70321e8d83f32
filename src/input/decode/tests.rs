use super::*;
use crate::domain::secret::Secret;

fn decoder(default_region: Option<&str>) -> EventDecoder {
    let settings = EventSettings {
        default_region: default_region.map(str::to_string),
        max_ids_per_event: 5,
        max_id_bytes: 16,
        max_message_bytes: 512,
        ..EventSettings::default()
    };
    let regions: Vec<RegionAccount> = ["eu1", "in1"]
        .iter()
        .map(|n| RegionAccount {
            name: RegionName::new(n),
            account_id: "A".into(),
            passcode: Secret::new("p"),
            endpoint: "https://x".into(),
        })
        .collect();
    EventDecoder::new(&settings, &regions)
}

fn reason(d: &EventDecoder, payload: &[u8]) -> DeadLetterReason {
    match d.decode(Some(payload)) {
        Decoded::DeadLetter(r) => r.reason,
        other => panic!(
            "expected a dead letter for {:?}, got {other:?}",
            String::from_utf8_lossy(payload)
        ),
    }
}

#[test]
fn decodes_both_kinds_strings_and_arrays() {
    let d = decoder(None);
    let got = d.decode(Some(
        br#"{"type":"user-deleted","region":"IN1","identity":["u1","u2","u1"],"guid":"g1"}"#,
    ));
    let Decoded::Delete(req) = got else {
        panic!("{got:?}")
    };
    assert_asks_in1_for_u1_u2_g1(&req);
}

#[test]
fn default_region_applies_when_missing() {
    let d = decoder(Some("eu1"));
    let Decoded::Delete(req) = d.decode(Some(br#"{"type":"user-deleted","guid":"g"}"#)) else {
        panic!()
    };
    assert_eq!(req.region, RegionName::new("eu1"));
}

#[test]
fn other_types_are_skipped() {
    let d = decoder(Some("eu1"));
    assert_eq!(
        d.decode(Some(br#"{"type":"user-created","guid":"g"}"#)),
        Decoded::Skip
    );
    assert_eq!(
        d.decode(Some(br#"{"type":"","identity":["u"],"region":"mars"}"#)),
        Decoded::Skip
    );
}

/// A decoder and the same decoder forced onto the JSON-tree path.
pub(super) fn both_paths(d: EventDecoder) -> [EventDecoder; 2] {
    assert!(d.flat.is_some(), "top-level pointers take the fast path");
    let mut tree = d.clone();
    tree.flat = None;
    [d, tree]
}

/// The example event's deletion: identities u1 and u2 and guid g1 in in1.
pub(super) fn assert_asks_in1_for_u1_u2_g1(req: &DeletionRequest) {
    assert_eq!(req.region, RegionName::new("in1"));
    let ids: Vec<(IdKind, &str)> = req.ids.iter().map(|(k, i)| (*k, &**i)).collect();
    assert_eq!(
        ids,
        vec![
            (IdKind::Identity, "u1"),
            (IdKind::Identity, "u2"),
            (IdKind::Guid, "g1")
        ]
    );
}

pub(super) fn with_settings(settings: EventSettings) -> EventDecoder {
    let regions: Vec<RegionAccount> = ["eu1", "in1"]
        .iter()
        .map(|n| RegionAccount {
            name: RegionName::new(n),
            account_id: "A".into(),
            passcode: Secret::new("p"),
            endpoint: "https://x".into(),
        })
        .collect();
    EventDecoder::new(&settings, &regions)
}

/// "delete", "skip" or the dead-letter reason.
fn verdict(d: &EventDecoder, payload: &str) -> &'static str {
    match d.decode(Some(payload.as_bytes())) {
        Decoded::Delete(_) => "delete",
        Decoded::Skip => "skip",
        Decoded::DeadLetter(r) => r.reason.as_str(),
    }
}

#[test]
fn a_missing_or_non_string_type_with_ids_is_dead_lettered() {
    for d in &both_paths(decoder(Some("eu1"))) {
        for payload in [
            r#"{"guid":"g"}"#,
            r#"{"identity":["u1"],"region":"eu1"}"#,
            r#"{"type":null,"identity":"u1"}"#,
            r#"{"type":7,"guid":"g"}"#,
            r#"{"type":true,"guid":"g"}"#,
            r#"{"type":["user-deleted"],"guid":"g"}"#,
            r#"{"type":{"name":"user-deleted"},"guid":"g"}"#,
            // Something is at an id pointer, even if it is not a valid id.
            r#"{"guid":""}"#,
            r#"{"guid":42}"#,
            r#"{"identity":[null]}"#,
            r#"{"identity":null,"guid":{}}"#,
        ] {
            assert_eq!(verdict(d, payload), "missing_type", "{payload}");
        }
        let Decoded::DeadLetter(r) = d.decode(Some(br#"{"type":7,"guid":"g"}"#)) else {
            panic!()
        };
        assert_eq!(r.detail, "type at `/type` is a number, not a string");
    }
}

#[test]
fn untyped_events_without_ids_are_skipped() {
    for d in &both_paths(decoder(Some("eu1"))) {
        for payload in [
            "{}",
            r#"{"region":"eu1"}"#,
            r#"{"identity":null,"guid":[]}"#,
            r#"{"type":null,"user":"u1"}"#,
            r#"{"type":5,"ids":["u1"]}"#,
            r#"["guid","g"]"#,
            r#""g""#,
            "42",
            "null",
        ] {
            assert_eq!(verdict(d, payload), "skip", "{payload}");
        }
    }
    // Without a type filter every message is a deletion.
    let untyped = with_settings(EventSettings {
        type_pointer: String::new(),
        default_region: Some("eu1".into()),
        ..EventSettings::default()
    });
    for d in &both_paths(untyped) {
        assert_eq!(verdict(d, r#"{"guid":"g"}"#), "delete");
        assert_eq!(
            verdict(d, r#"{"type":"user-created","guid":"g"}"#),
            "delete"
        );
        assert_eq!(verdict(d, "{}"), "no_id");
    }
}

#[test]
fn a_repeated_key_the_decoder_reads_is_dead_lettered() {
    for d in &both_paths(decoder(Some("eu1"))) {
        for payload in [
            r#"{"type":"user-created","guid":"g","type":"user-deleted"}"#,
            r#"{"type":"user-deleted","guid":"g","type":"user-created"}"#,
            r#"{"type":"user-deleted","type":"user-deleted","guid":"g"}"#,
            r#"{"type":"user-deleted","\u0074ype":"user-deleted","guid":"g"}"#,
            r#"{"type":null,"type":"user-deleted","guid":"g"}"#,
            r#"{"type":"user-deleted","identity":"alice","identity":"bob"}"#,
            r#"{"type":"user-deleted","guid":["a"],"guid":null}"#,
            r#"{"type":"user-deleted","guid":"g","region":"eu1","region":"in1"}"#,
            r#"{"type":"user-deleted","guid":"g","region":null,"region":"eu1"}"#,
            // Before the ids are looked at.
            r#"{"type":"user-deleted","guid":42,"region":"eu1","region":"eu1"}"#,
        ] {
            assert_eq!(verdict(d, payload), "duplicate_key", "{payload}");
        }
        // Keys the decoder does not read may repeat.
        for (payload, expected) in [
            (
                r#"{"type":"user-deleted","guid":"g","x":1,"x":2}"#,
                "delete",
            ),
            (
                r#"{"type":"user-deleted","guid":"g","meta":{"type":"a","type":"b"}}"#,
                "delete",
            ),
            (
                r#"{"type":"user-deleted","guid":{"id":"a","id":"b"}}"#,
                "invalid_id",
            ),
            (r#"[{"type":"a"},{"type":"b","type":"c"}]"#, "skip"),
            // Not a deletion event: what it repeats is not our business.
            (r#"{"type":"user-created","guid":"a","guid":"b"}"#, "skip"),
            // No type, but an id key (repeated, so its value is unclear).
            (r#"{"guid":"a","guid":"b"}"#, "missing_type"),
            (r#"{"guid":null,"guid":null}"#, "missing_type"),
            (r#"{"region":"eu1","region":"in1"}"#, "skip"),
        ] {
            assert_eq!(verdict(d, payload), expected, "{payload}");
        }
    }
}

#[test]
fn a_repeated_key_on_the_way_to_a_nested_field_is_dead_lettered() {
    let d = with_settings(EventSettings {
        type_pointer: "/meta/type".into(),
        region_pointer: "/meta/region".into(),
        identity_pointer: "/user/id".into(),
        guid_pointer: "/users/1/id".into(),
        default_region: Some("eu1".into()),
        ..EventSettings::default()
    });
    assert!(d.flat.is_none());
    let t = r#""meta":{"type":"user-deleted"}"#;
    for payload in [
        format!(r#"{{{t},"user":{{"id":"a"}},"user":{{"id":"b"}}}}"#),
        format!(r#"{{{t},"user":{{"id":"a"}},"user":null}}"#),
        format!(r#"{{{t},"user":{{"id":"a","id":"b"}}}}"#),
        format!(r#"{{{t},{t},"user":{{"id":"a"}}}}"#),
        r#"{"meta":{"type":"user-deleted","type":"user-deleted"},"user":{"id":"a"}}"#.into(),
        r#"{"meta":{"type":"user-deleted","region":"eu1","region":"in1"},"user":{"id":"a"}}"#
            .into(),
        format!(r#"{{{t},"users":[{{}},{{"id":"a","id":"b"}}]}}"#),
    ] {
        assert_eq!(verdict(&d, &payload), "duplicate_key", "{payload}");
    }
    for (payload, expected) in [
        (
            format!(r#"{{{t},"user":{{"id":"a","name":"n","name":"m"}},"x":1,"x":{{}}}}"#),
            "delete",
        ),
        (
            r#"{"meta":{"type":"user-deleted","x":1,"x":2},"user":{"id":"a"}}"#.into(),
            "delete",
        ),
        (
            format!(r#"{{{t},"users":[{{"id":"a","id":"b"}},{{"id":"c"}}]}}"#),
            "delete",
        ),
        (
            format!(r#"{{{t},"users":{{"1":{{"id":"c"}},"1":{{"id":"d"}}}}}}"#),
            "duplicate_key",
        ),
        (r#"{"meta":{},"user":{"id":"a"}}"#.into(), "missing_type"),
        (r#"{"user":{"id":"a"}}"#.into(), "missing_type"),
        (r#"{"user":{"name":"a"}}"#.into(), "skip"),
    ] {
        assert_eq!(verdict(&d, &payload), expected, "{payload}");
    }
}

/// `levels` nested arrays or objects, `inner` in the middle.
fn nested(levels: usize, object: bool, inner: &str) -> String {
    let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
    format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
}

/// serde_json refuses a document nested 128 deep (its recursion limit)
/// and accepts 127; both paths refuse exactly that, wherever the deep
/// value is: in a field the decoder skips, in one it reads, or at the top.
#[test]
fn both_paths_refuse_the_same_nesting() {
    let d = with_settings(EventSettings {
        default_region: Some("eu1".into()),
        ..EventSettings::default()
    });
    for d in &both_paths(d) {
        for object in [false, true] {
            for depth in [126, 127, 128, 129] {
                let in_unread = format!(
                    r#"{{"type":"user-deleted","guid":"g","x":{}}}"#,
                    nested(depth - 1, object, "1")
                );
                let in_read = format!(
                    r#"{{"type":"user-deleted","guid":"g","identity":{}}}"#,
                    nested(depth - 1, object, "1")
                );
                let on_top = nested(depth, object, "1");
                let cases = [
                    (in_unread, "delete"),
                    (in_read, "invalid_id"),
                    (on_top, "skip"),
                ];
                for (payload, below_the_limit) in cases {
                    let serde_json_accepts = serde_json::from_str::<Value>(&payload).is_ok();
                    assert_eq!(serde_json_accepts, depth < 128, "serde_json's limit moved");
                    let expected = if depth < 128 {
                        below_the_limit
                    } else {
                        "not_json"
                    };
                    assert_eq!(verdict(d, &payload), expected, "depth {depth}: {payload}");
                }
            }
        }
    }
}

#[test]
fn every_bad_input_class_has_its_reason() {
    let d = decoder(None);
    assert_eq!(
        match d.decode(None) {
            Decoded::DeadLetter(r) => r.reason,
            _ => panic!(),
        },
        DeadLetterReason::Empty
    );
    assert_eq!(reason(&d, b""), DeadLetterReason::Empty);
    assert_eq!(reason(&d, &[b'{'; 600]), DeadLetterReason::TooLarge);
    assert_eq!(
        reason(&d, b"{\"guid\":\"\xff\xfe\"}"),
        DeadLetterReason::NotUtf8
    );
    assert_eq!(reason(&d, b"not json"), DeadLetterReason::NotJson);
    assert_eq!(
        reason(&d, br#"{"type":"user-deleted","guid":"g""#),
        DeadLetterReason::NotJson
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(reason(&d, deep.as_bytes()), DeadLetterReason::NotJson);
    let t = r#""type":"user-deleted","region":"eu1""#;
    assert_eq!(
        reason(&d, format!("{{{t}}}").as_bytes()),
        DeadLetterReason::NoId
    );
    assert_eq!(
        reason(&d, format!("{{{t},\"guid\":[]}}").as_bytes()),
        DeadLetterReason::NoId
    );
    assert_eq!(
        reason(&d, format!("{{{t},\"guid\":\"\"}}").as_bytes()),
        DeadLetterReason::InvalidId
    );
    assert_eq!(
        reason(&d, format!("{{{t},\"guid\":\"  \"}}").as_bytes()),
        DeadLetterReason::InvalidId
    );
    assert_eq!(
        reason(&d, format!("{{{t},\"guid\":42}}").as_bytes()),
        DeadLetterReason::InvalidId
    );
    assert_eq!(
        reason(&d, format!("{{{t},\"identity\":[\"a\",7]}}").as_bytes()),
        DeadLetterReason::InvalidId
    );
    assert_eq!(
        reason(&d, format!("{{{t},\"guid\":{{}}}}").as_bytes()),
        DeadLetterReason::InvalidId
    );
    assert_eq!(
        reason(
            &d,
            format!("{{{t},\"guid\":\"{}\"}}", "x".repeat(17)).as_bytes()
        ),
        DeadLetterReason::IdTooLong
    );
    assert_eq!(
        reason(
            &d,
            format!("{{{t},\"guid\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\"]}}").as_bytes()
        ),
        DeadLetterReason::TooManyIds
    );
    assert_eq!(
        reason(&d, br#"{"type":"user-deleted","guid":"g"}"#),
        DeadLetterReason::NoRegion
    );
    assert_eq!(
        reason(&d, br#"{"type":"user-deleted","guid":"g","region":"mars"}"#),
        DeadLetterReason::UnknownRegion
    );
    assert_eq!(
        reason(&d, br#"{"type":"user-deleted","guid":"g","region":5}"#),
        DeadLetterReason::UnknownRegion
    );
}

#[test]
fn fast_path_and_json_tree_path_agree() {
    let fast = decoder(Some("eu1"));
    assert!(fast.flat.is_some(), "default pointers are top-level keys");
    let mut slow = fast.clone();
    slow.flat = None;
    let mut corpus: Vec<Vec<u8>> = vec![
        br#"{"type":"user-deleted","region":"IN1","identity":["u1","u2","u1"],"guid":"g1"}"#
            .to_vec(),
        br#"{"type":"user-deleted","identity":"a\"b\u00e9","region":"eu1"}"#.to_vec(),
        br#"{"type":"user-deleted","identity":["a",[1],{"x":1},null,true,2.5]}"#.to_vec(),
        br#"{"type":"user-deleted","guid":{"nested":["x"]}}"#.to_vec(),
        br#"{"type":"user-deleted","guid":"g","region":""}"#.to_vec(),
        br#"{"type":"user-deleted","guid":"g","region":null}"#.to_vec(),
        br#"{"type":"user-deleted","guid":"g","region":["eu1"]}"#.to_vec(),
        br#"{"type":"other","guid":"g"}"#.to_vec(),
        br#"{"type":7,"guid":"g"}"#.to_vec(),
        br#"{"type":"user-deleted","guid":"first","guid":"second"}"#.to_vec(),
        br#"{"type":"user-deleted","identity":[]}"#.to_vec(),
        br#"["type","user-deleted"]"#.to_vec(),
        br#""user-deleted""#.to_vec(),
        b"42".to_vec(),
        b"null".to_vec(),
        br#"{"type":"user-deleted","guid":"g"} trailing"#.to_vec(),
        br#"{"type":"user-deleted","guid":"g","#.to_vec(),
        format!(
            "{{\"type\":\"user-deleted\",\"guid\":\"g\",\"deep\":{}{}}}",
            "[".repeat(150),
            "]".repeat(150)
        )
        .into_bytes(),
    ];
    for e in crate::testkit::synth::generate(&crate::testkit::synth::SynthSpec {
        count: 300,
        regions: vec!["eu1".into(), "in1".into(), "mars".into()],
        ..Default::default()
    }) {
        corpus.push(e.payload);
    }
    // The parsers word where JSON breaks differently (sonic-rs, serde_json):
    // a `not_json` detail is compared by its start only.
    let alike = |d: Decoded| match d {
        Decoded::DeadLetter(r) if r.reason == DeadLetterReason::NotJson => {
            let line = r.detail.split(" column").next().unwrap_or("").to_string();
            Decoded::DeadLetter(Rejection {
                reason: r.reason,
                detail: line,
            })
        }
        other => other,
    };
    for payload in &corpus {
        assert_eq!(
            alike(fast.decode(Some(payload))),
            alike(slow.decode(Some(payload))),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn nesting_is_measured_outside_strings() {
    assert!(!nested_deeper_than(br#"{"a":"[[[[[[[[[["}"#, 3));
    assert!(!nested_deeper_than(br#"{"a":"\"[[[[[[[[[["}"#, 3));
    assert!(nested_deeper_than(br#"{"a":[[[1]]]}"#, 3));
    assert!(!nested_deeper_than(br#"{"a":[[1]],"b":[[2]]}"#, 3));
}

#[test]
fn nested_pointers_use_the_json_tree() {
    let settings = EventSettings {
        identity_pointer: "/user/id".into(),
        type_pointer: String::new(),
        default_region: Some("eu1".into()),
        ..EventSettings::default()
    };
    let regions = vec![RegionAccount {
        name: RegionName::new("eu1"),
        account_id: "A".into(),
        passcode: Secret::new("p"),
        endpoint: "https://x".into(),
    }];
    let d = EventDecoder::new(&settings, &regions);
    assert!(d.flat.is_none());
    let Decoded::Delete(req) = d.decode(Some(br#"{"user":{"id":"u7"}}"#)) else {
        panic!()
    };
    assert_eq!(&*req.ids[0].1, "u7");
}

#[test]
fn details_never_carry_ids() {
    let d = decoder(None);
    let payload = br#"{"type":"user-deleted","region":"eu1","guid":"secret-person-id-1"}"#;
    if let Decoded::DeadLetter(r) = d.decode(Some(payload)) {
        assert!(!r.detail.contains("secret-person"), "{}", r.detail);
    } else {
        panic!("id above 16 bytes must be refused");
    }
}

// ------------------------------------------------------------ CloudEvents
// Helpers for the CloudEvents and header tests (`cloudevents/tests.rs`,
// `given/tests.rs`).

pub(super) fn cloudevents(change: impl FnOnce(&mut EventSettings)) -> EventDecoder {
    let mut settings = EventSettings {
        format: EventFormat::CloudEvents,
        default_region: Some("eu1".into()),
        max_ids_per_event: 5,
        max_id_bytes: 16,
        max_message_bytes: 4096,
        ..EventSettings::default()
    };
    change(&mut settings);
    with_settings(settings)
}

pub(super) fn decode_with(d: &EventDecoder, payload: &str, headers: &[(&str, &str)]) -> Decoded {
    d.decode_message(
        Some(payload.as_bytes()),
        headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
    )
}

/// "delete", "skip" or the dead-letter reason.
pub(super) fn verdict_with(d: &EventDecoder, payload: &str, headers: &[(&str, &str)]) -> String {
    match decode_with(d, payload, headers) {
        Decoded::Delete(_) => "delete".into(),
        Decoded::Skip => "skip".into(),
        Decoded::DeadLetter(r) => r.reason.as_str().into(),
    }
}

pub(super) const BINARY: [(&str, &str); 5] = [
    ("ce_specversion", "1.0"),
    ("ce_type", "user-deleted"),
    ("ce_source", "/accounts"),
    ("ce_id", "e-1"),
    ("content-type", "application/json"),
];

pub(super) const STRUCTURED: [(&str, &str); 1] = [(
    "content-type",
    "application/cloudevents+json; charset=UTF-8",
)];

/// A structured-mode envelope around `data` (JSON text).
pub(super) fn envelope(data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","type":"user-deleted","source":"/accounts","id":"e-1","time":"2026-01-01T00:00:00Z","data":{data}}}"#
    )
}

/// `BINARY` with `name` set to `value` (`None`: left out).
pub(super) fn binary_with(
    name: &str,
    value: Option<&'static str>,
) -> Vec<(&'static str, &'static str)> {
    let mut headers: Vec<_> = BINARY.iter().copied().filter(|(k, _)| *k != name).collect();
    if let Some(value) = value {
        let name = BINARY
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("x", |(k, _)| *k);
        headers.push((name, value));
    }
    headers
}
