//! Tests of the response classifier against expectations written down
//! independently of its code: a table of real and odd answers with what the
//! daemon must do for each, and properties that hold whatever comes back
//! (any 5xx retries, 401/403/404 hold, nothing is a deletion without
//! `"status": "success"`, duplicate keys are never a success, a listing of
//! unprocessed ids finishes exactly the others).
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --release --test fuzz_classify -- --nocapture
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clevertap_deleter::clevertap::api::{
    classify, parse_retry_after, split_confirmed, ApiReply, Hold, RetryReason, TransportError,
    Verdict, MAX_BODY_BYTES, MAX_MESSAGE_CHARS,
};
use proptest::prelude::*;

mod fuzz_support;
use fuzz_support::run;

/// The ids of the batch every table answer is for.
const BATCH: [&str; 3] = ["a", "b", "c"];

/// What the daemon does with a batch after an answer, as the table states it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// These ids of [`BATCH`] are finished as deleted now; the others (if
    /// any) go on as unconfirmed.
    Deleted(Vec<&'static str>),
    /// Nothing is finished; retried `api.unconfirmed_retries` times, then
    /// split, then dead-lettered `unconfirmed`.
    Unconfirmed,
    /// Split to isolate the refused ids; dead-lettered `api_rejected` with
    /// this message.
    Rejected(String),
    /// Retried without limit.
    Retried(RetryReason),
    Held(Hold),
}

use Outcome::*;

fn all() -> Outcome {
    Deleted(BATCH.to_vec())
}

fn only(ids: &[&'static str]) -> Outcome {
    Deleted(ids.to_vec())
}

fn batch_ids() -> Vec<Arc<str>> {
    BATCH.iter().map(|i| Arc::from(*i)).collect()
}

/// Maps a verdict to what the dispatcher does with [`BATCH`].
fn outcome_of(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Deleted => all(),
        Verdict::PartlyDeleted {
            unprocessed,
            processed,
        } => match split_confirmed(&batch_ids(), &unprocessed, processed) {
            Some((confirmed, _)) if !confirmed.is_empty() => Deleted(
                BATCH
                    .iter()
                    .copied()
                    .filter(|id| confirmed.iter().any(|c| &**c == *id))
                    .collect(),
            ),
            _ => Unconfirmed,
        },
        Verdict::Unconfirmed { .. } => Unconfirmed,
        Verdict::Rejected { message } => Rejected(message),
        Verdict::Retry { reason, .. } => Retried(reason),
        Verdict::Held { cause } => Held(cause),
    }
}

fn answer(status: u16, body: impl Into<Vec<u8>>) -> Result<ApiReply, TransportError> {
    Ok(ApiReply {
        status,
        body: body.into(),
        retry_after: None,
    })
}

fn bom(rest: &str) -> Vec<u8> {
    let mut b = vec![0xEF, 0xBB, 0xBF];
    b.extend_from_slice(rest.as_bytes());
    b
}

fn padded(prefix: &str, len: usize) -> Vec<u8> {
    let mut b = prefix.as_bytes().to_vec();
    b.resize(len, b' ');
    b
}

/// Every answer shape we know of or can imagine, and what must happen.
#[rustfmt::skip]
fn table() -> Vec<(&'static str, Result<ApiReply, TransportError>, Outcome)> {
    let s = |x: &str| Rejected(x.to_string());
    vec![
        // --- What CleverTap documents.
        ("documented success", answer(200, r#"{"status":"success"}"#), all()),
        ("pretty-printed success", answer(200, "{\n  \"status\": \"success\"\n}\n"), all()),
        ("success, other 2xx", answer(202, r#"{"status":"success"}"#), all()),
        ("success with extra keys", answer(200, r#"{"status":"success","code":200,"message":"ok"}"#), all()),
        ("success with a string error", answer(200, r#"{"status":"success","error":"2 profiles not found"}"#), all()),
        ("success spelled with an escape", answer(200, r#"{"status":"succes\u0073"}"#), all()),
        ("400", answer(400, r#"{"status":"fail","error":"Invalid identity","code":400}"#), s("Invalid identity")),
        ("400 without a message", answer(400, r#"{"status":"fail","code":400}"#), s("HTTP 400")),
        ("400 not JSON", answer(400, "Bad Request"), s("HTTP 400")),
        ("400 blank message", answer(400, r#"{"status":"fail","error":"  "}"#), s("HTTP 400")),
        ("400 message not a string", answer(400, r#"{"status":"fail","error":{"m":"x"}}"#), s("HTTP 400")),
        ("413", answer(413, ""), s("HTTP 413")),
        ("422", answer(422, r#"{"status":"fail","error":"bad"}"#), s("bad")),
        ("fail in a 200", answer(200, r#"{"status":"fail","error":"Invalid guid","code":400}"#), s("Invalid guid")),
        ("FAIL in a 200", answer(200, r#"{"status":"FAIL","error":"x"}"#), s("x")),
        ("401", answer(401, r#"{"status":"fail","error":"Invalid Credentials","code":401}"#), Held(Hold::Refused(401))),
        ("403", answer(403, r#"{"status":"fail","error":"Operation not allowed","code":403}"#), Held(Hold::Refused(403))),
        ("404", answer(404, "<html>Not Found</html>"), Held(Hold::Refused(404))),
        ("401 saying success", answer(401, r#"{"status":"success"}"#), Held(Hold::Refused(401))),
        ("429", answer(429, r#"{"status":"fail","error":"Too many concurrent requests","code":429}"#), Retried(RetryReason::TooManyRequests)),
        ("408", answer(408, ""), Retried(RetryReason::ServerError)),
        ("500", answer(500, r#"{"status":"fail","error":"Internal error","code":500}"#), Retried(RetryReason::ServerError)),
        ("502 from a proxy", answer(502, "<html><body>Bad Gateway</body></html>"), Retried(RetryReason::ServerError)),
        ("503 saying success", answer(503, r#"{"status":"success"}"#), Retried(RetryReason::ServerError)),
        ("504", answer(504, ""), Retried(RetryReason::ServerError)),
        ("599", answer(599, ""), Retried(RetryReason::ServerError)),
        ("timeout", Err(TransportError::Timeout), Retried(RetryReason::Timeout)),
        ("connect", Err(TransportError::Connect), Retried(RetryReason::Connection)),
        ("transport", Err(TransportError::Other), Retried(RetryReason::Connection)),
        ("request cannot be built", Err(TransportError::InvalidRequest), Held(Hold::InvalidRequest)),
        // --- Outside the contract, never a deletion.
        ("empty 200", answer(200, ""), Unconfirmed),
        ("204", answer(204, ""), Unconfirmed),
        ("whitespace", answer(200, " \r\n\t"), Unconfirmed),
        ("BOM only", answer(200, bom("")), Unconfirmed),
        ("partial", answer(200, r#"{"status":"partial"}"#), Unconfirmed),
        ("SUCCESS", answer(200, r#"{"status":"SUCCESS"}"#), Unconfirmed),
        ("Success", answer(200, r#"{"status":"Success"}"#), Unconfirmed),
        ("leading space", answer(200, r#"{"status":" success"}"#), Unconfirmed),
        ("trailing space", answer(200, r#"{"status":"success "}"#), Unconfirmed),
        ("NUL after", answer(200, r#"{"status":"success\u0000"}"#), Unconfirmed),
        ("ok", answer(200, r#"{"status":"ok"}"#), Unconfirmed),
        ("key in capitals", answer(200, r#"{"Status":"success"}"#), Unconfirmed),
        ("proxy HTML", answer(200, "<!DOCTYPE html><html><body>Request accepted</body></html>"), Unconfirmed),
        ("plain text", answer(200, "success"), Unconfirmed),
        ("JSON string", answer(200, r#""success""#), Unconfirmed),
        ("truncated", answer(200, r#"{"status":"succ"#), Unconfirmed),
        ("no closing brace", answer(200, r#"{"status":"success""#), Unconfirmed),
        ("two documents", answer(200, r#"{"status":"success"}{"status":"fail"}"#), Unconfirmed),
        ("garbage after", answer(200, r#"{"status":"success"} <html>"#), Unconfirmed),
        ("nested", answer(200, r#"{"data":{"status":"success"}}"#), Unconfirmed),
        ("status object", answer(200, r#"{"status":{"status":"success"}}"#), Unconfirmed),
        ("in an array", answer(200, r#"[{"status":"success"}]"#), Unconfirmed),
        ("status array", answer(200, r#"{"status":["success"]}"#), Unconfirmed),
        ("status true", answer(200, r#"{"status":true}"#), Unconfirmed),
        ("status null", answer(200, r#"{"status":null}"#), Unconfirmed),
        ("no status", answer(200, r#"{"code":200}"#), Unconfirmed),
        ("fail then success", answer(200, r#"{"status":"fail","status":"success"}"#), Unconfirmed),
        ("success then fail", answer(200, r#"{"status":"success","status":"fail"}"#), Unconfirmed),
        ("success twice", answer(200, r#"{"status":"success","status":"success"}"#), Unconfirmed),
        ("UTF-16 BOM", answer(200, [&[0xFF, 0xFE][..], br#"{"status":"success"}"#].concat()), Unconfirmed),
        ("two BOMs", answer(200, bom("\u{feff}{\"status\":\"success\"}")), Unconfirmed),
        ("BOM then partial", answer(200, bom(r#"{"status":"partial"}"#)), Unconfirmed),
        ("BOM then HTML", answer(200, bom("<html>")), Unconfirmed),
        ("cut off success", answer(200, padded(r#"{"status":"success"}"#, MAX_BODY_BYTES + 1)), Unconfirmed),
        ("huge success", answer(200, padded(r#"{"status":"success"}"#, 10 * MAX_BODY_BYTES)), Unconfirmed),
        // The documented byte order mark decision (README, "Byte order mark").
        ("BOM then success", answer(200, bom(r#"{"status":"success"}"#)), all()),
        ("success exactly at the cap", answer(200, padded(r#"{"status":"success"}"#, MAX_BODY_BYTES)), all()),
        // --- Successes that list what was not processed.
        ("unprocessed strings", answer(200, r#"{"status":"success","unprocessed":["b"]}"#), only(&["a", "c"])),
        ("errors entries", answer(200, r#"{"status":"success","errors":[{"identity":"c","error":"not found"}]}"#), only(&["a", "b"])),
        ("upload-style records", answer(200, r#"{"status":"success","processed":2,"unprocessed":[{"status":"fail","code":509,"error":"x","record":{"identity":"a"}}]}"#), only(&["b", "c"])),
        ("errors keyed by id", answer(200, r#"{"status":"success","errors":{"a":"x","c":"y"}}"#), only(&["b"])),
        ("failed guid list", answer(200, r#"{"status":"success","failed":[{"guid":["a","b"]}]}"#), only(&["c"])),
        ("two listings", answer(200, r#"{"status":"success","unprocessed":["a"],"failures":["b"]}"#), only(&["c"])),
        ("empty listings", answer(200, r#"{"status":"success","unprocessed":[],"errors":{},"failed":null,"failures":0}"#), all()),
        ("processed = all", answer(200, r#"{"status":"success","processed":3}"#), all()),
        ("processed short", answer(200, r#"{"status":"success","processed":1}"#), Unconfirmed),
        ("processed contradicts listing", answer(200, r#"{"status":"success","processed":3,"unprocessed":["a"]}"#), Unconfirmed),
        ("every id listed", answer(200, r#"{"status":"success","unprocessed":["a","b","c"]}"#), Unconfirmed),
        ("an id not in the batch", answer(200, r#"{"status":"success","unprocessed":["zz"]}"#), Unconfirmed),
        ("a count, not ids", answer(200, r#"{"status":"success","unprocessed":2}"#), Unconfirmed),
        ("errors: true", answer(200, r#"{"status":"success","errors":true}"#), Unconfirmed),
        ("entries without ids", answer(200, r#"{"status":"success","errors":[{"code":1,"error":"x"}]}"#), Unconfirmed),
        ("numbers as ids", answer(200, r#"{"status":"success","unprocessed":[1]}"#), Unconfirmed),
        ("listing twice", answer(200, r#"{"status":"success","errors":[],"errors":["a"]}"#), Unconfirmed),
        ("listing with partial", answer(200, r#"{"status":"partial","unprocessed":["a"]}"#), Unconfirmed),
        // --- Other codes.
        ("302", answer(302, r#"{"status":"success"}"#), Retried(RetryReason::Unexpected)),
        ("418", answer(418, ""), Retried(RetryReason::Unexpected)),
        ("100", answer(100, r#"{"status":"success"}"#), Retried(RetryReason::Unexpected)),
        ("600", answer(600, r#"{"status":"success"}"#), Retried(RetryReason::Unexpected)),
        ("0", answer(0, r#"{"status":"success"}"#), Retried(RetryReason::Unexpected)),
        ("65535", answer(u16::MAX, r#"{"status":"success"}"#), Retried(RetryReason::Unexpected)),
    ]
}

#[test]
fn every_known_answer_shape_is_handled_as_documented() {
    let mut wrong = Vec::new();
    for (name, result, expected) in table() {
        let got = outcome_of(classify(&result));
        if got != expected {
            wrong.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn messages_are_cut_and_never_empty() {
    let long = format!(r#"{{"status":"fail","error":"{}"}}"#, "é".repeat(1000));
    let Verdict::Rejected { message } = classify(&answer(400, long)) else {
        panic!("a 400 is a rejection")
    };
    assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
    // A 400 whose body is cut off: the message is not read from half a body.
    let huge = format!(
        r#"{{"status":"fail","error":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    assert_eq!(
        classify(&answer(400, huge)),
        Verdict::Rejected {
            message: "HTTP 400".into()
        }
    );
}

// ------------------------------------------------------------- properties

/// Bodies near a success: variants of the documented answer with the edits
/// proxies, broken servers and changed APIs make.
fn near_success() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        Just("success".to_string()),
        Just("SUCCESS".to_string()),
        Just("Success".to_string()),
        Just("fail".to_string()),
        Just("partial".to_string()),
        "[ \t]{0,2}success[ \t]{0,2}",
        "[sS][uU][cC][cC][eE][sS][sS]",
        ".{0,12}",
    ];
    let value = prop_oneof![
        4 => word.prop_map(serde_json::Value::String),
        1 => Just(serde_json::Value::Null),
        1 => any::<i64>().prop_map(serde_json::Value::from),
        1 => Just(serde_json::json!(["success"])),
        1 => Just(serde_json::json!({"status": "success"})),
    ];
    let key = prop_oneof![
        6 => Just("status".to_string()),
        1 => Just("Status".to_string()),
        1 => Just("error".to_string()),
        1 => Just("code".to_string()),
        1 => Just("data".to_string()),
        1 => Just("processed".to_string()),
        1 => Just("unprocessed".to_string()),
    ];
    let object = prop::collection::vec((key, value), 0..4).prop_map(|entries| {
        // Written by hand so keys can repeat.
        let fields: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::json!(k), v))
            .collect();
        format!("{{{}}}", fields.join(","))
    });
    let wrapped = prop_oneof![
        4 => object.clone(),
        1 => object.clone().prop_map(|o| format!("[{o}]")),
        1 => object.clone().prop_map(|o| format!(r#"{{"data":{o}}}"#)),
        1 => object.prop_map(|o| format!("{o}{o}")),
    ];
    let prefix = prop_oneof![
        6 => Just(Vec::new()),
        2 => Just(vec![0xEF, 0xBB, 0xBF]),
        1 => Just(vec![0xEF, 0xBB, 0xBF, 0xEF, 0xBB, 0xBF]),
        1 => Just(vec![0xFF, 0xFE]),
        1 => Just(b" \n".to_vec()),
        1 => Just(b"<html>".to_vec()),
    ];
    let cut = prop_oneof![
        6 => Just(None),
        1 => (0usize..40).prop_map(Some),
    ];
    let pad = prop_oneof![
        8 => Just(0usize),
        1 => MAX_BODY_BYTES - 40..MAX_BODY_BYTES + 40,
    ];
    (prefix, wrapped, cut, pad).prop_map(|(prefix, text, cut, pad)| {
        let mut body = prefix;
        body.extend_from_slice(text.as_bytes());
        if let Some(at) = cut {
            body.truncate(at.min(body.len()));
        }
        if pad > body.len() {
            body.resize(pad, b' ');
        }
        body
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => near_success(),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => ".{0,200}".prop_map(String::into_bytes),
    ]
}

fn any_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => 200u16..300,
        3 => prop::sample::select(vec![200u16, 204, 400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504]),
        2 => 100u16..600,
        1 => any::<u16>(),
    ]
}

fn any_answer() -> impl Strategy<Value = ApiReply> {
    let retry_after = prop::option::of((0u64..100_000).prop_map(Duration::from_secs));
    (any_status(), any_body(), retry_after).prop_map(|(status, body, retry_after)| ApiReply {
        status,
        body,
        retry_after,
    })
}

/// Strips one UTF-8 byte order mark (the documented decision).
fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(body)
}

/// A necessary condition for a deletion, stated without the classifier's
/// code: a 2xx, at most 64 KiB, whose body (after one BOM) is JSON, an
/// object, whose `status` is exactly the string "success".
fn could_be_success(reply: &ApiReply) -> bool {
    (200..300).contains(&reply.status)
        && reply.body.len() <= MAX_BODY_BYTES
        && serde_json::from_slice::<serde_json::Value>(without_bom(&reply.body))
            .ok()
            .and_then(|v| v.as_object().cloned())
            .is_some_and(|o| o.get("status") == Some(&serde_json::json!("success")))
}

/// How often `"status"` appears as a key at the top level of a JSON object.
fn status_keys(body: &[u8]) -> usize {
    // A JSON object whose keys are kept in a list: serde's map visitor sees
    // every entry, duplicates included.
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Keys>(without_bom(body))
        .map(|k| k.0.iter().filter(|k| *k == "status").count())
        .unwrap_or(0)
}

#[test]
fn properties_of_every_answer() {
    run("classify", 20_000, any_answer(), |reply| {
        let result = Ok(reply.clone());
        let verdict = classify(&result);
        let deletes = matches!(verdict, Verdict::Deleted | Verdict::PartlyDeleted { .. });
        // Nothing is a deletion without "status": "success".
        if deletes {
            prop_assert!(could_be_success(&reply), "{reply:?} -> {verdict:?}");
            prop_assert_eq!(status_keys(&reply.body), 1, "{:?} -> {:?}", reply, verdict);
        }
        match reply.status {
            // Any 5xx (and 408) retries, whatever the body.
            408 | 500..=599 => prop_assert_eq!(
                &verdict,
                &Verdict::Retry {
                    reason: RetryReason::ServerError,
                    after: reply.retry_after
                }
            ),
            429 => prop_assert_eq!(
                &verdict,
                &Verdict::Retry {
                    reason: RetryReason::TooManyRequests,
                    after: reply.retry_after
                }
            ),
            // 401/403/404 hold, whatever the body.
            401 | 403 | 404 => prop_assert_eq!(
                &verdict,
                &Verdict::Held {
                    cause: Hold::Refused(reply.status)
                }
            ),
            400 | 413 | 422 => {
                let rejected = matches!(verdict, Verdict::Rejected { .. });
                prop_assert!(rejected, "{:?}", verdict);
            }
            // A 2xx is a deletion, a rejection or unconfirmed; never retried
            // without limit, never a hold.
            200..=299 => {
                prop_assert!(
                    deletes
                        || matches!(
                            verdict,
                            Verdict::Rejected { .. } | Verdict::Unconfirmed { .. }
                        ),
                    "{:?}",
                    verdict
                );
                if reply.body.len() > MAX_BODY_BYTES {
                    let unconfirmed = matches!(verdict, Verdict::Unconfirmed { .. });
                    prop_assert!(unconfirmed, "{:?}", verdict);
                }
            }
            _ => prop_assert_eq!(
                &verdict,
                &Verdict::Retry {
                    reason: RetryReason::Unexpected,
                    after: reply.retry_after
                }
            ),
        }
        if let Verdict::Rejected { message } = &verdict {
            prop_assert!(!message.trim().is_empty());
            prop_assert!(message.chars().count() <= MAX_MESSAGE_CHARS);
        }
        if let Verdict::Unconfirmed { after, .. } = verdict {
            prop_assert_eq!(after, reply.retry_after);
        }
        Ok(())
    });
}

#[test]
fn transport_errors_retry_and_a_request_that_cannot_be_built_holds() {
    for (e, expected) in [
        (TransportError::Timeout, Retried(RetryReason::Timeout)),
        (TransportError::Connect, Retried(RetryReason::Connection)),
        (TransportError::Other, Retried(RetryReason::Connection)),
        (TransportError::InvalidRequest, Held(Hold::InvalidRequest)),
    ] {
        assert_eq!(outcome_of(classify(&Err(e))), expected, "{e:?}");
    }
}

#[test]
fn a_repeated_status_key_is_never_a_success() {
    let status = prop_oneof![
        Just("\"success\"".to_string()),
        Just("\"fail\"".to_string()),
        Just("null".to_string()),
        "\"[a-z]{0,8}\"",
    ];
    let entries = (prop::collection::vec(status, 2..5), any::<bool>());
    run("repeated status", 5_000, entries, |(values, extra)| {
        let mut fields: Vec<String> = values.iter().map(|v| format!(r#""status":{v}"#)).collect();
        if extra {
            fields.insert(1, r#""code":200"#.to_string());
        }
        let body = format!("{{{}}}", fields.join(","));
        let verdict = classify(&answer(200, body.clone()));
        prop_assert!(
            !matches!(verdict, Verdict::Deleted | Verdict::PartlyDeleted { .. }),
            "{body} -> {verdict:?}"
        );
        Ok(())
    });
}

#[test]
fn a_listing_finishes_exactly_the_ids_it_does_not_name() {
    // Which of the batch's ids are listed, in which shape, plus perhaps an
    // id the batch does not hold.
    let shape = 0usize..5;
    let input = (
        prop::collection::vec(any::<bool>(), 3),
        shape,
        any::<bool>(),
        any::<bool>(),
    );
    run(
        "listing",
        5_000,
        input,
        |(listed, shape, foreign, with_count)| {
            let mut names: Vec<&str> = BATCH
                .iter()
                .zip(&listed)
                .filter(|(_, l)| **l)
                .map(|(id, _)| *id)
                .collect();
            if foreign {
                names.push("not-in-batch");
            }
            let listing = match shape {
                0 => serde_json::json!({ "unprocessed": names }),
                1 => {
                    serde_json::json!({ "errors": names.iter().map(|n| serde_json::json!({"identity": n, "error": "x"})).collect::<Vec<_>>() })
                }
                2 => {
                    serde_json::json!({ "unprocessed": names.iter().map(|n| serde_json::json!({"status": "fail", "record": {"identity": n}})).collect::<Vec<_>>() })
                }
                3 => {
                    serde_json::json!({ "errors": names.iter().map(|n| (n.to_string(), serde_json::json!("x"))).collect::<serde_json::Map<_, _>>() })
                }
                _ => serde_json::json!({ "failed": [{ "identity": names }] }),
            };
            let mut body = listing.as_object().unwrap().clone();
            body.insert("status".into(), "success".into());
            let kept: Vec<&'static str> = BATCH
                .iter()
                .zip(&listed)
                .filter(|(_, l)| !**l)
                .map(|(id, _)| *id)
                .collect();
            if with_count {
                body.insert("processed".into(), kept.len().into());
            }
            let body = serde_json::Value::Object(body).to_string();
            let got = outcome_of(classify(&answer(200, body.clone())));
            // An empty `failed: [{"identity": []}]` names no id: not a listing
            // the daemon can read, so nothing is confirmed.
            let unreadable = shape == 4 && names.is_empty();
            let expected = if foreign || kept.is_empty() || unreadable {
                Unconfirmed
            } else {
                Deleted(kept)
            };
            prop_assert_eq!(got, expected, "{}", body);
            Ok(())
        },
    );
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
    assert_eq!(
        parse_retry_after("18446744073709551615", SystemTime::now()),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(parse_retry_after("-1", SystemTime::now()), None);
}

#[test]
fn regression_edges() {
    // Found by the earlier version of this file: a success whose `error`
    // field was not a string was retried forever.
    assert_eq!(
        classify(&answer(200, r#"{"error":false,"status":"success"}"#)),
        Verdict::Deleted
    );
    // Found by the same: `"error": ""` gave an empty dead-letter detail.
    assert_eq!(
        classify(&answer(200, r#"{"status":"fail","error":""}"#)),
        Verdict::Rejected {
            message: "HTTP 200".into()
        }
    );
}
