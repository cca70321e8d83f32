use super::*;

fn reply(status: u16, body: &str) -> Result<ApiReply, TransportError> {
    Ok(ApiReply {
        status,
        body: body.as_bytes().to_vec(),
        retry_after: None,
    })
}

#[test]
fn classification_of_every_answer() {
    assert_eq!(
        classify(&reply(200, r#"{"status":"success"}"#)),
        Verdict::Deleted
    );
    assert_eq!(
        classify(&reply(
            200,
            r#"{"status":"fail","error":"Invalid identity","code":400}"#
        )),
        Verdict::Rejected {
            message: "Invalid identity".into()
        }
    );
    assert_eq!(
        classify(&reply(200, "<html>")),
        Verdict::Unconfirmed {
            why: Unconfirmed::NotJson,
            after: None
        }
    );
    assert!(matches!(
        classify(&reply(
            429,
            r#"{"status":"fail","error":"Too many concurrent requests","code":429}"#
        )),
        Verdict::Retry {
            reason: RetryReason::TooManyRequests,
            ..
        }
    ));
    for s in [408, 500, 502, 503, 504] {
        assert!(matches!(
            classify(&reply(s, "")),
            Verdict::Retry {
                reason: RetryReason::ServerError,
                ..
            }
        ));
    }
    assert_eq!(
        classify(&reply(
            400,
            r#"{"status":"fail","error":"bad guid","code":400}"#
        )),
        Verdict::Rejected {
            message: "bad guid".into()
        }
    );
    assert_eq!(
        classify(&reply(400, "not json")),
        Verdict::Rejected {
            message: "HTTP 400".into()
        }
    );
    for s in [401, 403, 404] {
        assert_eq!(
            classify(&reply(s, "")),
            Verdict::Held {
                cause: Hold::Refused(s)
            }
        );
    }
    assert_eq!(
        classify(&Err(TransportError::InvalidRequest)),
        Verdict::Held {
            cause: Hold::InvalidRequest
        }
    );
    assert!(matches!(
        classify(&reply(418, "")),
        Verdict::Retry {
            reason: RetryReason::Unexpected,
            ..
        }
    ));
    assert!(matches!(
        classify(&Err(TransportError::Timeout)),
        Verdict::Retry {
            reason: RetryReason::Timeout,
            ..
        }
    ));
    assert!(matches!(
        classify(&Err(TransportError::Connect)),
        Verdict::Retry {
            reason: RetryReason::Connection,
            ..
        }
    ));
}

#[test]
fn nothing_but_a_clear_success_is_a_deletion() {
    for body in [
        "",
        "  \n",
        "<html><body>Request accepted</body></html>",
        r#"{"status":"partial"}"#,
        r#"{"status":"SUCCESS"}"#,
        r#"{"status":" success"}"#,
        r#"{"status":"fail","status":"success"}"#,
        r#"{"data":{"status":"success"}}"#,
        r#"[{"status":"success"}]"#,
        r#"{"status":"success""#,
        r#"{"status":"success","unprocessed":["a"]}"#,
        r#"{"status":"success","errors":[{"identity":"a","error":"not found"}]}"#,
    ] {
        assert_ne!(classify(&reply(200, body)), Verdict::Deleted, "{body:?}");
    }
    assert_ne!(classify(&reply(204, "")), Verdict::Deleted);
}

#[test]
fn odd_2xx_answers_say_why_they_confirm_nothing() {
    let why = |status, body: &str| match classify(&reply(status, body)) {
        Verdict::Unconfirmed { why, .. } => Some(why),
        _ => None,
    };
    use Unconfirmed::*;
    assert_eq!(why(200, ""), Some(EmptyBody));
    assert_eq!(why(204, ""), Some(EmptyBody));
    assert_eq!(why(200, " \r\n"), Some(EmptyBody));
    assert_eq!(why(200, "\u{feff}"), Some(EmptyBody));
    assert_eq!(why(200, "<html></html>"), Some(NotJson));
    assert_eq!(why(200, r#"{"status":"success""#), Some(NotJson));
    assert_eq!(why(200, r#"{"status":"success"} trailing"#), Some(NotJson));
    assert_eq!(why(200, r#"["success"]"#), Some(NoStatus));
    assert_eq!(why(200, r#""success""#), Some(NoStatus));
    assert_eq!(why(200, r#"{"data":{"status":"success"}}"#), Some(NoStatus));
    assert_eq!(why(200, r#"{"status":null}"#), Some(NoStatus));
    assert_eq!(why(200, r#"{"status":["success"]}"#), Some(NoStatus));
    assert_eq!(
        why(200, r#"{"status":"fail","status":"success"}"#),
        Some(DuplicateKey)
    );
    assert_eq!(
        why(200, r#"{"status":"success","status":"success"}"#),
        Some(DuplicateKey)
    );
    assert_eq!(
        why(
            200,
            r#"{"status":"success","unprocessed":[],"unprocessed":["a"]}"#
        ),
        Some(DuplicateKey)
    );
    assert_eq!(why(200, r#"{"status":"partial"}"#), Some(OtherStatus));
    assert_eq!(why(200, r#"{"status":"SUCCESS"}"#), Some(OtherStatus));
    assert_eq!(why(200, r#"{"status":" success"}"#), Some(OtherStatus));
    assert_eq!(
        why(200, r#"{"status":"success","unprocessed":3}"#),
        Some(Unprocessed)
    );
    assert_eq!(
        why(200, r#"{"status":"success","errors":true}"#),
        Some(Unprocessed)
    );
    assert_eq!(
        why(
            200,
            r#"{"status":"success","errors":[{"code":5,"error":"x"}]}"#
        ),
        Some(Unprocessed)
    );
    assert_eq!(
        why(200, r#"{"status":"success","unprocessed":[7]}"#),
        Some(Unprocessed)
    );
    let mut cut = br#"{"status":"success"}"#.to_vec();
    cut.resize(MAX_BODY_BYTES + 1, b' ');
    assert_eq!(
        classify(&Ok(ApiReply {
            status: 200,
            body: cut,
            retry_after: None
        })),
        Verdict::Unconfirmed {
            why: CutOff,
            after: None
        }
    );
    // Exactly at the cap, it is read whole.
    let mut full = br#"{"status":"success"}"#.to_vec();
    full.resize(MAX_BODY_BYTES, b' ');
    assert_eq!(
        classify(&Ok(ApiReply {
            status: 200,
            body: full,
            retry_after: None
        })),
        Verdict::Deleted
    );
    assert_eq!(
        Unconfirmed::EmptyBody.describe(204),
        "HTTP 204 with an empty body"
    );
}

#[test]
fn listings_of_unprocessed_ids_in_every_plausible_shape() {
    let listed = |body: &str| match classify(&reply(200, body)) {
        Verdict::PartlyDeleted { unprocessed, .. } => unprocessed,
        v => panic!("{body}: {v:?}"),
    };
    let ab = vec!["a".to_string(), "b".to_string()];
    for body in [
        r#"{"status":"success","unprocessed":["a","b"]}"#,
        r#"{"status":"success","errors":["a","b"]}"#,
        r#"{"status":"success","failed":["a","b"]}"#,
        r#"{"status":"success","failures":["a","b"]}"#,
        r#"{"status":"success","unprocessed":["a"],"errors":["b"]}"#,
        r#"{"status":"success","errors":[{"identity":"a","error":"x"},{"identity":"b"}]}"#,
        r#"{"status":"success","errors":[{"guid":["a","b"],"code":404}]}"#,
        r#"{"status":"success","errors":[{"objectId":"a"},{"id":"b"}]}"#,
        r#"{"status":"success","processed":0,"unprocessed":[{"status":"fail","error":"x","record":{"identity":"a"}},{"record":{"identity":"b"}}]}"#,
        r#"{"status":"success","errors":{"a":"not found","b":"not found"}}"#,
        r#"{"status":"success","errors":{"identity":["a","b"]}}"#,
    ] {
        assert_eq!(listed(body), ab, "{body}");
    }
    // Empty listings say nothing was left out.
    for body in [
        r#"{"status":"success","unprocessed":[]}"#,
        r#"{"status":"success","errors":null}"#,
        r#"{"status":"success","errors":{}}"#,
        r#"{"status":"success","failed":0}"#,
        r#"{"status":"success","failed":false}"#,
    ] {
        assert_eq!(classify(&reply(200, body)), Verdict::Deleted, "{body}");
    }
}

#[test]
fn split_confirmed_maps_a_listing_onto_the_batch_or_gives_up() {
    let ids: Vec<std::sync::Arc<str>> = ["a", "b", "c"].map(std::sync::Arc::from).to_vec();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let arcs = |v: &[&str]| {
        v.iter()
            .map(|x| std::sync::Arc::<str>::from(*x))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        split_confirmed(&ids, &s(&["b"]), None),
        Some((arcs(&["a", "c"]), arcs(&["b"])))
    );
    assert_eq!(
        split_confirmed(&ids, &s(&["b", "b"]), Some(2)),
        Some((arcs(&["a", "c"]), arcs(&["b"])))
    );
    assert_eq!(
        split_confirmed(&ids, &s(&["a", "b", "c"]), None),
        Some((vec![], arcs(&["a", "b", "c"])))
    );
    assert_eq!(
        split_confirmed(&ids, &[], Some(3)),
        Some((arcs(&["a", "b", "c"]), vec![]))
    );
    // An id the batch does not hold, or a count that does not add up.
    assert_eq!(split_confirmed(&ids, &s(&["b", "z"]), None), None);
    assert_eq!(split_confirmed(&ids, &s(&["B"]), None), None);
    assert_eq!(split_confirmed(&ids, &[], Some(2)), None);
    assert_eq!(split_confirmed(&ids, &s(&["b"]), Some(3)), None);
}

#[test]
fn a_byte_order_mark_before_a_success_is_read_past() {
    // RFC 8259 section 8.1: a parser may ignore a byte order mark.
    assert_eq!(
        classify(&reply(200, "\u{feff}{\"status\":\"success\"}")),
        Verdict::Deleted
    );
}

#[test]
fn an_odd_error_field_does_not_hide_success() {
    // Found by tests/fuzz_classify.rs: `error` used to have to be a string.
    for body in [
        r#"{"error":false,"status":"success"}"#,
        r#"{"status":"success","error":{"code":0}}"#,
        r#"{"status":"success","error":null,"code":200}"#,
    ] {
        assert_eq!(classify(&reply(200, body)), Verdict::Deleted, "{body}");
    }
    assert_eq!(
        classify(&reply(
            200,
            r#"{"status":"success","error":null,"processed":3}"#
        )),
        Verdict::PartlyDeleted {
            unprocessed: vec![],
            processed: Some(3)
        }
    );
    assert_eq!(
        classify(&reply(400, r#"{"status":"fail","error":17}"#)),
        Verdict::Rejected {
            message: "HTTP 400".into()
        }
    );
    // Found by the same test: an empty message became an empty detail.
    assert_eq!(
        classify(&reply(200, r#"{"status":"fail","error":" "}"#)),
        Verdict::Rejected {
            message: "HTTP 200".into()
        }
    );
}

#[tokio::test]
async fn a_request_that_cannot_be_built_is_an_invalid_request() {
    let api = HttpDeleteApi::new(Duration::from_secs(1), 1).unwrap();
    let batch = DeleteBatch::new(
        crate::domain::ids::RegionName::new("eu1"),
        crate::domain::ids::IdKind::Guid,
        vec![std::sync::Arc::from("g")],
    )
    .unwrap();
    let account = |account_id: &str, passcode: &str, endpoint: &str| RegionAccount {
        name: crate::domain::ids::RegionName::new("eu1"),
        account_id: account_id.into(),
        passcode: crate::domain::secret::Secret::new(passcode),
        endpoint: endpoint.into(),
    };
    for bad in [
        account("A", "pass\nword", "http://127.0.0.1:1"),
        account("A", "pass\rword", "http://127.0.0.1:1"),
        account("A\u{7f}", "p", "http://127.0.0.1:1"),
        account("A", "p", "not a url"),
    ] {
        assert_eq!(
            api.delete(&bad, &batch).await,
            Err(TransportError::InvalidRequest),
            "{:?} {}",
            bad.account_id,
            bad.endpoint
        );
    }
}

/// Serves one HTTP/1.1 request on a fresh port: reads it, writes `head`,
/// then `chunks` bodies of `chunk` bytes each (`None` = forever).
async fn serve_once(head: String, chunk: Vec<u8>, chunks: Option<usize>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then the body by its Content-Length.
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if request.len() >= end + 4 + length || n == 0 {
                    break;
                }
            }
        }
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut sent = 0;
        while chunks.is_none_or(|c| sent < c) {
            if conn.write_all(&chunk).await.is_err() {
                return; // the client stopped reading
            }
            sent += 1;
        }
    });
    endpoint
}

fn test_account(endpoint: String) -> RegionAccount {
    RegionAccount {
        name: crate::domain::ids::RegionName::new("eu1"),
        account_id: "A".into(),
        passcode: crate::domain::secret::Secret::new("p"),
        endpoint,
    }
}

fn test_batch() -> DeleteBatch {
    DeleteBatch::new(
        crate::domain::ids::RegionName::new("eu1"),
        crate::domain::ids::IdKind::Guid,
        vec![std::sync::Arc::from("g")],
    )
    .unwrap()
}

#[tokio::test]
async fn a_huge_success_body_is_cut_and_not_a_success() {
    // `{"status":"success"}` and then a megabyte of spaces: valid JSON,
    // but nobody reads a megabyte to learn that.
    let filler = vec![b' '; 1 << 20];
    let prefix = br#"{"status":"success"}"#;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        prefix.len() + filler.len(),
        std::str::from_utf8(prefix).unwrap()
    );
    let endpoint = serve_once(head, filler, Some(1)).await;
    let api = HttpDeleteApi::new(Duration::from_secs(5), 1).unwrap();
    let result = api.delete(&test_account(endpoint), &test_batch()).await;
    let reply = result.clone().expect("an answer");
    assert!(
        reply.body.len() <= 64 * 1024 + 1,
        "read {} bytes",
        reply.body.len()
    );
    assert_ne!(classify(&result), Verdict::Deleted);
}

#[tokio::test]
async fn an_endless_body_is_cut_before_the_timeout() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\r\n<html>".to_string();
    let endpoint = serve_once(head, vec![b'x'; 8192], None).await;
    let api = HttpDeleteApi::new(Duration::from_secs(3), 1).unwrap();
    let started = std::time::Instant::now();
    let result = api.delete(&test_account(endpoint), &test_batch()).await;
    let reply = result.clone().expect("an answer, not a timeout");
    assert!(reply.body.len() <= 64 * 1024 + 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_ne!(classify(&result), Verdict::Deleted);
}

#[test]
fn retry_after_is_carried() {
    let r = Ok(ApiReply {
        status: 429,
        body: vec![],
        retry_after: Some(Duration::from_secs(3)),
    });
    assert_eq!(
        classify(&r),
        Verdict::Retry {
            reason: RetryReason::TooManyRequests,
            after: Some(Duration::from_secs(3))
        }
    );
}

#[test]
fn long_messages_are_cut() {
    let long = format!(r#"{{"status":"fail","error":"{}"}}"#, "x".repeat(5000));
    let Verdict::Rejected { message } = classify(&reply(400, &long)) else {
        panic!()
    };
    assert_eq!(message.len(), MAX_MESSAGE_CHARS);
}

#[test]
fn retry_after_parsing() {
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
    assert_eq!(
        parse_retry_after(" 99999 ", now),
        Some(Duration::from_secs(3600))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(30))
    );
    let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
}
