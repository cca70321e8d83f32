use super::decide::original_headers;
use super::*;

fn h(pairs: &[(&'static str, &'static str)]) -> DeadLetterHeaders {
    parse_headers(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
}

fn policy(reasons: &[&str], to: Option<&str>) -> Policy {
    Policy {
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
        max_replays: 3,
        to: to.map(str::to_string),
        dlq_topic: "t.dlq".into(),
    }
}

#[test]
fn headers_are_read_and_replay_count_defaults_to_zero() {
    let parsed = h(&[
        ("reason", "not_json"),
        ("detail", "bad"),
        ("source_topic", "t"),
        ("source_partition", "2"),
        ("other", "x"),
    ]);
    assert_eq!(
        parsed,
        DeadLetterHeaders {
            reason: Some("not_json".into()),
            detail: Some("bad".into()),
            source_topic: Some("t".into()),
            replay_count: Ok(0),
        }
    );
    assert_eq!(h(&[("replay_count", " 2 ")]).replay_count, Ok(2));
    assert_eq!(h(&[("replay_count", "")]).replay_count, Ok(0));
    assert_eq!(
        h(&[("replay_count", "two")]).replay_count,
        Err("two".into())
    );
    assert_eq!(h(&[("replay_count", "-1")]).replay_count, Err("-1".into()));
    // The last of repeated headers wins; empty or null values are absent.
    let repeated = h(&[
        ("replay_count", "1"),
        ("replay_count", "2"),
        ("source_topic", " "),
    ]);
    assert_eq!(repeated.replay_count, Ok(2));
    assert_eq!(repeated.source_topic, None);
    assert_eq!(parse_headers([("reason", None)]).reason, None);
}

#[test]
fn decision_filters_then_refuses_then_replays() {
    let all = policy(&[], None);
    assert_eq!(
        decide(&h(&[("reason", "not_json"), ("source_topic", "t")]), &all),
        Decision::Replay {
            topic: "t".into(),
            replay_count: 1
        }
    );
    assert_eq!(
        decide(
            &h(&[
                ("reason", "no_id"),
                ("source_topic", "t"),
                ("replay_count", "2")
            ]),
            &all
        ),
        Decision::Replay {
            topic: "t".into(),
            replay_count: 3
        }
    );
    assert_eq!(
        decide(
            &h(&[
                ("reason", "no_id"),
                ("source_topic", "t"),
                ("replay_count", "3")
            ]),
            &all
        ),
        Decision::Refuse(Refusal::TooManyReplays { replay_count: 3 })
    );
    assert_eq!(
        decide(&h(&[("reason", "no_id")]), &all),
        Decision::Refuse(Refusal::NoSourceTopic)
    );
    assert!(matches!(
        decide(&h(&[("source_topic", "t"), ("replay_count", "x")]), &all),
        Decision::Refuse(Refusal::Invalid(_))
    ));
    assert!(matches!(
        decide(&h(&[("source_topic", "t.dlq")]), &all),
        Decision::Refuse(Refusal::Invalid(_))
    ));

    // The filter comes first: a filtered record is skipped whatever else.
    let filtered = policy(&["no_id", "not_json"], None);
    assert_eq!(
        decide(&h(&[("reason", "empty"), ("source_topic", "t")]), &filtered),
        Decision::Skip
    );
    assert_eq!(
        decide(&h(&[("source_topic", "t")]), &filtered),
        Decision::Skip
    );
    assert_eq!(
        decide(&h(&[("reason", "no_id"), ("replay_count", "9")]), &filtered),
        Decision::Refuse(Refusal::TooManyReplays { replay_count: 9 })
    );

    // --to overrides the header and rescues records without one.
    let to = policy(&[], Some("other"));
    assert_eq!(
        decide(&h(&[("reason", "no_id")]), &to),
        Decision::Replay {
            topic: "other".into(),
            replay_count: 1
        }
    );
}

#[test]
fn reasons_are_checked_and_name_the_default_group() {
    let reasons = validate_reasons(&[
        "unknown_region".into(),
        "api_rejected".into(),
        "api_rejected".into(),
    ])
    .unwrap();
    assert_eq!(
        default_group("cd", &reasons),
        "cd-replay-api_rejected+unknown_region"
    );
    assert_eq!(default_group("cd", &BTreeSet::new()), "cd-replay");
    let e = validate_reasons(&["not-json".into()]).unwrap_err();
    assert!(e.contains("not-json") && e.contains("not_json"), "{e}");
}

#[test]
fn tally_and_summary() {
    let mut chunk = Tally::default();
    chunk.record(
        "not_json",
        &Decision::Replay {
            topic: "t".into(),
            replay_count: 1,
        },
    );
    chunk.record(
        "not_json",
        &Decision::Refuse(Refusal::TooManyReplays { replay_count: 3 }),
    );
    chunk.record(NO_REASON, &Decision::Refuse(Refusal::NoSourceTopic));
    chunk.record("empty", &Decision::Skip);
    let mut total = Tally::default();
    total.add(&chunk);
    total.add(&chunk);
    assert_eq!(total.total.replayed, 2);
    assert_eq!(total.total.refused(), 4);
    assert_eq!(total.total.handled(), 8);
    assert_eq!(total.per_reason["not_json"].refused_too_many_replays, 2);
    let summary = ReplaySummary {
        dlq_topic: "t.dlq".into(),
        group: "g".into(),
        dry_run: true,
        max_replays: 3,
        counts: total,
        stop: StopCause::Limit,
    };
    let text = summary.to_string();
    assert!(text.contains("dry run"), "{text}");
    assert!(text.contains("would be replayed:             2"), "{text}");
    assert!(text.contains("--limit reached"), "{text}");
    assert!(text.contains("(replay_count >= 3)"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("(none)")),
        "{text}"
    );
}

#[test]
fn dry_run_listing_shows_the_record() {
    let record = DlqRecord {
        partition: 1,
        offset: 7,
        key: Some(b"k\xff".to_vec()),
        payload: None,
        headers: h(&[
            ("reason", "no_id"),
            ("detail", "no \"id\""),
            ("replay_count", "1"),
        ]),
        original_headers: Vec::new(),
    };
    let line = record
        .listing(
            "t.dlq",
            &Decision::Replay {
                topic: "t".into(),
                replay_count: 2,
            },
        )
        .unwrap();
    assert_eq!(
        line,
        "t.dlq/1/7: would replay to t; reason=no_id replay_count=1 key=\"k\u{fffd}\" detail=\"no \\\"id\\\"\""
    );
    assert!(record.listing("t.dlq", &Decision::Skip).is_none());
}

#[test]
fn the_original_headers_are_the_counted_first_ones_without_the_replays_own() {
    let all: Vec<(&[u8], Option<&[u8]>)> = vec![
        (b"ce_id", Some(b"e-1")),
        (b"replay_count", Some(b"1")),
        (b"bad\xff", Some(b"v")),
        (b"ce_null", None),
        (b"reason", Some(b"no_id")),
        (b"original_header_count", Some(b"4")),
    ];
    assert_eq!(
        original_headers(&all),
        vec![
            ("ce_id".to_string(), Some(b"e-1".to_vec())),
            ("ce_null".to_string(), None)
        ]
    );
    // No count (a dead letter of a record without headers), or a count
    // beyond the headers there are: none.
    assert!(original_headers(&all[..5]).is_empty());
    assert!(original_headers(&[(b"original_header_count", Some(b"9"))]).is_empty());
}
