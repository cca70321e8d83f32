use crate::input::decode::tests::{
    both_paths, cloudevents, decode_with, envelope, verdict_with, with_settings, BINARY, STRUCTURED,
};
use crate::input::decode::*;
use std::sync::Arc;

#[test]
fn header_fields_join_the_pointers_and_must_agree_with_them() {
    let json = with_settings(EventSettings {
        region_header: Some("tenant-region".into()),
        identity_header: Some("user-id".into()),
        type_header: Some("event-type".into()),
        ..EventSettings::default()
    });
    let ce = cloudevents(|s| {
        s.region_header = Some("tenant-region".into());
        s.guid_header = Some("ce_subject".into());
    });
    let typed = r#""type":"user-deleted""#;
    for d in &both_paths(json) {
        let region = [("tenant-region", "IN1")];
        for (payload, headers, expected) in [
            (format!(r#"{{{typed},"guid":"g"}}"#), &region[..], "in1"),
            (
                format!(r#"{{{typed},"guid":"g","region":"in1 "}}"#),
                &region,
                "in1",
            ),
            (
                format!(r#"{{{typed},"guid":"g","region":null}}"#),
                &region,
                "in1",
            ),
            (
                format!(r#"{{{typed},"guid":"g","region":"eu1"}}"#),
                &[],
                "eu1",
            ),
        ] {
            let Decoded::Delete(req) = decode_with(d, &payload, headers) else {
                panic!("{payload}")
            };
            assert_eq!(req.region, RegionName::new(expected), "{payload}");
        }
        for (payload, headers, expected) in [
            // Header and pointer disagree, or a header repeats.
            (
                format!(r#"{{{typed},"guid":"g","region":"eu1"}}"#),
                vec![("tenant-region", "in1")],
                "duplicate_key",
            ),
            (
                format!(r#"{{{typed},"guid":"g","region":7}}"#),
                vec![("tenant-region", "in1")],
                "duplicate_key",
            ),
            (
                format!(r#"{{{typed},"guid":"g"}}"#),
                vec![("tenant-region", "in1"), ("tenant-region", "in1")],
                "duplicate_key",
            ),
            (
                format!(r#"{{{typed},"identity":"a"}}"#),
                vec![("user-id", "b")],
                "duplicate_key",
            ),
            (
                format!(r#"{{{typed},"identity":["a","a"]}}"#),
                vec![("user-id", "a"), ("tenant-region", "eu1")],
                "delete",
            ),
            (
                format!(r#"{{{typed},"identity":["a","b"]}}"#),
                vec![("user-id", "a"), ("tenant-region", "eu1")],
                "duplicate_key",
            ),
            // Ids from a header alone; the type from a header alone.
            (
                r#"{"type":"user-deleted"}"#.into(),
                vec![("user-id", "a"), ("tenant-region", "eu1")],
                "delete",
            ),
            (
                r#"{"region":"eu1"}"#.into(),
                vec![("user-id", "a"), ("event-type", "user-deleted")],
                "delete",
            ),
            (
                r#"{"region":"eu1"}"#.into(),
                vec![("user-id", "a"), ("event-type", "user-created")],
                "skip",
            ),
            (
                format!(r#"{{{typed},"guid":"g","region":"eu1"}}"#),
                vec![("event-type", "user-created")],
                "duplicate_key",
            ),
            (
                r#"{"region":"eu1"}"#.into(),
                vec![("user-id", "a")],
                "missing_type",
            ),
            (r#"{"region":"eu1"}"#.into(), vec![], "skip"),
            (
                r#"{"type":"user-deleted"}"#.into(),
                vec![("tenant-region", "eu1")],
                "no_id",
            ),
            (
                format!(r#"{{{typed},"guid":"g"}}"#),
                vec![("tenant-region", "mars")],
                "unknown_region",
            ),
            (format!(r#"{{{typed},"guid":"g"}}"#), vec![], "no_region"),
        ] {
            assert_eq!(
                verdict_with(d, &payload, &headers),
                expected,
                "{payload} {headers:?}"
            );
        }
        let Decoded::DeadLetter(r) = decode_with(d, r#"{"type":"user-deleted","guid":"g"}"#, &[])
        else {
            panic!()
        };
        assert_eq!(
            r.detail,
            "no region at header `tenant-region` or `/region` and no event.default_region"
        );
        let Decoded::DeadLetter(r) = decode_with(
            d,
            r#"{"type":"user-deleted","identity":"secret-id-1","region":"eu1"}"#,
            &[("user-id", "secret-id-2")],
        ) else {
            panic!()
        };
        assert_eq!(
            r.detail,
            "the identity is given twice, differently: by header `user-id` and at `/identity`"
        );
    }
    for d in &both_paths(ce) {
        // `ce_subject`: the header in binary mode, the attribute in structured mode.
        let subject = [
            &BINARY[..],
            &[("ce_subject", "g7"), ("tenant-region", "in1")],
        ]
        .concat();
        let Decoded::Delete(req) = decode_with(d, "{}", &subject) else {
            panic!()
        };
        assert_eq!(req.ids, vec![(IdKind::Guid, Arc::from("g7"))]);
        assert_eq!(req.region, RegionName::new("in1"));
        let with_subject = envelope("{}").replace(r#""time""#, r#""subject":"g7","time""#);
        let headers = [STRUCTURED[0], ("tenant-region", "in1")];
        assert_eq!(
            decode_with(d, &with_subject, &headers),
            Decoded::Delete(req)
        );
        for (payload, headers, expected) in [
            // A ce_subject header does not count in structured mode.
            (
                envelope("{}"),
                vec![STRUCTURED[0], ("ce_subject", "g7")],
                "no_id",
            ),
            (
                envelope(r#"{"guid":"g7"}"#).replace(r#""time""#, r#""subject":"g7","time""#),
                vec![STRUCTURED[0]],
                "delete",
            ),
            (
                envelope(r#"{"guid":"g8"}"#).replace(r#""time""#, r#""subject":"g7","time""#),
                vec![STRUCTURED[0]],
                "duplicate_key",
            ),
            (
                envelope("{}").replace(r#""time""#, r#""subject":"g7","subject":"g7","time""#),
                vec![STRUCTURED[0]],
                "duplicate_key",
            ),
            (
                envelope("{}").replace(r#""time""#, r#""subject":7,"time""#),
                vec![STRUCTURED[0]],
                "invalid_id",
            ),
            (
                r#"{"guid":"g8"}"#.into(),
                [&BINARY[..], &[("ce_subject", "g7")]].concat(),
                "duplicate_key",
            ),
            (
                r#"{"region":"eu1","guid":"g"}"#.into(),
                [&BINARY[..], &[("tenant-region", "in1")]].concat(),
                "duplicate_key",
            ),
        ] {
            assert_eq!(
                verdict_with(d, &payload, &headers),
                expected,
                "{payload} {headers:?}"
            );
        }
    }
}

#[test]
fn cloudevent_details_name_no_id() {
    let d = cloudevents(|s| s.guid_header = Some("ce_subject".into()));
    for (payload, headers) in [
        (
            envelope(r#"{"identity":"person-secret-170"}"#),
            STRUCTURED.to_vec(),
        ),
        (
            r#"{"identity":["person-secret-17", 5]}"#.into(),
            BINARY.to_vec(),
        ),
        (
            r#"{"guid":"person-secret-18"}"#.into(),
            [&BINARY[..], &[("ce_subject", "person-secret-19")]].concat(),
        ),
    ] {
        let Decoded::DeadLetter(r) = decode_with(&d, &payload, &headers) else {
            panic!("{payload}")
        };
        assert!(!r.detail.contains("person-secret"), "{}", r.detail);
    }
}
