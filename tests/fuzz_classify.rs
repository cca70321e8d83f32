//! Property tests of the response classifier: whatever CleverTap (or
//! something pretending to be it) answers, `api::classify` never panics, and
//! only a 2xx with `"status": "success"` counts as a deletion.
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --release --test fuzz_classify -- --nocapture
//! ```

use std::time::{Duration, SystemTime};

use clevertap_deleter::api::{
    classify, parse_retry_after, ApiReply, Hold, RetryReason, TransportError, Verdict,
    MAX_MESSAGE_CHARS,
};
use proptest::prelude::*;

mod fuzz_support;
use fuzz_support::run;

/// Bodies: arbitrary bytes, and JSON with `status`/`error` of every type.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![
        Just("success".to_string()),
        Just("SUCCESS".to_string()),
        Just("fail".to_string()),
        Just("partial".to_string()),
        ".{0,20}",
    ];
    let json_status = prop_oneof![
        text.clone().prop_map(serde_json::Value::String),
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(["success"])),
        Just(serde_json::json!({"status": "success"})),
    ];
    let error = prop_oneof![
        ".{0,600}".prop_map(serde_json::Value::String),
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            prop::option::of(json_status),
            prop::option::of(error),
            any::<bool>()
        )
            .prop_map(|(status, error, truncate)| {
                let mut object = serde_json::Map::new();
                if let Some(s) = status {
                    object.insert("status".into(), s);
                }
                if let Some(e) = error {
                    object.insert("error".into(), e);
                }
                let mut bytes = serde_json::to_vec(&object).unwrap();
                if truncate {
                    bytes.truncate(bytes.len() / 2);
                }
                bytes
            }),
    ]
}

fn outcome() -> impl Strategy<Value = Result<ApiReply, TransportError>> {
    let status = prop_oneof![
        3 => 100u16..600,
        1 => any::<u16>(),
        2 => prop::sample::select(vec![200u16, 400, 401, 403, 404, 408, 413, 422, 429, 500, 503]),
    ];
    let retry_after = prop::option::of((0u64..100_000).prop_map(Duration::from_secs));
    prop_oneof![
        9 => (status, body(), retry_after).prop_map(|(status, body, retry_after)| Ok(ApiReply {
            status,
            body,
            retry_after,
        })),
        1 => prop::sample::select(vec![
            TransportError::Timeout,
            TransportError::Connect,
            TransportError::Other,
        ])
        .prop_map(Err),
    ]
}

fn says_success(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str().map(str::to_string)))
        .is_some_and(|s| s.eq_ignore_ascii_case("success"))
}

#[test]
fn classify_never_panics_and_only_success_deletes() {
    run("classify", 20_000, outcome(), |result| {
        let verdict = classify(&result);
        match (&result, &verdict) {
            (Err(TransportError::Timeout), v) => prop_assert_eq!(
                v,
                &Verdict::Retry {
                    reason: RetryReason::Timeout,
                    after: None
                }
            ),
            (Err(_), v) => prop_assert_eq!(
                v,
                &Verdict::Retry {
                    reason: RetryReason::Connection,
                    after: None
                }
            ),
            (Ok(reply), Verdict::Deleted) => {
                prop_assert!((200..300).contains(&reply.status));
                prop_assert!(says_success(&reply.body));
            }
            (
                Ok(reply),
                Verdict::Held {
                    cause: Hold::Refused(status),
                },
            ) => {
                prop_assert_eq!(*status, reply.status);
                prop_assert!([401, 403, 404].contains(status));
            }
            (Ok(reply), Verdict::Rejected { message }) => {
                prop_assert!(
                    [400, 413, 422].contains(&reply.status) || (200..300).contains(&reply.status)
                );
                prop_assert!(message.chars().count() <= MAX_MESSAGE_CHARS);
                prop_assert!(!message.is_empty());
            }
            (Ok(_), Verdict::Held { .. }) => prop_assert!(false, "only a request error holds"),
            (Ok(reply), Verdict::PartlyDeleted { .. } | Verdict::Unconfirmed { .. }) => {
                prop_assert!((200..300).contains(&reply.status));
            }
            (Ok(reply), Verdict::Retry { reason, after }) => {
                prop_assert_eq!(*after, reply.retry_after);
                match reply.status {
                    429 => prop_assert_eq!(*reason, RetryReason::TooManyRequests),
                    408 | 500..=599 => prop_assert_eq!(*reason, RetryReason::ServerError),
                    _ => prop_assert_eq!(*reason, RetryReason::Unexpected),
                }
            }
        }
        // Every 2xx "success" is a deletion, and nothing but 401/403/404 holds.
        if let Ok(reply) = &result {
            if (200..300).contains(&reply.status) && says_success(&reply.body) {
                prop_assert_eq!(&verdict, &Verdict::Deleted);
            }
            if [401, 403, 404].contains(&reply.status) {
                let held = matches!(verdict, Verdict::Held { .. });
                prop_assert!(held, "{:?} -> {:?}", reply, verdict);
            }
        }
        Ok(())
    });
}

#[test]
fn retry_after_never_panics_and_is_capped() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let value = prop_oneof![
        ".{0,40}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| format!(" {n} ")),
        (0u64..4_000_000_000).prop_map(|s| {
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        }),
        "[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
    ];
    run("Retry-After", 20_000, value, |v| {
        if let Some(d) = parse_retry_after(&v, now) {
            prop_assert!(d <= Duration::from_secs(3_600), "{v:?} -> {d:?}");
        }
        Ok(())
    });
}

#[test]
fn regression_edges() {
    // Found by classify_never_panics_and_only_success_deletes: a success whose
    // `error` field was not a string was retried as `unexpected` forever.
    let v = classify(&Ok(ApiReply {
        status: 200,
        body: br#"{"error":false,"status":"success"}"#.to_vec(),
        retry_after: None,
    }));
    assert_eq!(v, Verdict::Deleted);
    // Found by the same test: `"error": ""` gave an empty rejection message
    // (the dead-letter detail); a blank message is replaced by the status.
    let v = classify(&Ok(ApiReply {
        status: 200,
        body: br#"{"status":"fail","error":""}"#.to_vec(),
        retry_after: None,
    }));
    assert_eq!(
        v,
        Verdict::Rejected {
            message: "HTTP 200".into()
        }
    );

    // Status 0 and 65535 (never sent by a real server) are just unexpected.
    for status in [0u16, 1, 99, 600, 999, u16::MAX] {
        let v = classify(&Ok(ApiReply {
            status,
            body: br#"{"status":"success"}"#.to_vec(),
            retry_after: None,
        }));
        assert!(
            matches!(
                v,
                Verdict::Retry {
                    reason: RetryReason::Unexpected,
                    ..
                }
            ),
            "{status}: {v:?}"
        );
    }
    // A multi-byte error message is cut on a character boundary.
    let long = format!(r#"{{"status":"fail","error":"{}"}}"#, "é".repeat(1000));
    let Verdict::Rejected { message } = classify(&Ok(ApiReply {
        status: 400,
        body: long.into_bytes(),
        retry_after: None,
    })) else {
        panic!("a 400 is a rejection")
    };
    assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
    assert_eq!(
        parse_retry_after("18446744073709551615", SystemTime::now()),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(parse_retry_after("-1", SystemTime::now()), None);
}
