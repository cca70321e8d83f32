use super::*;

const ACC: &str = "ACC-1";
const PASS: &str = "secret";

async fn start(config: FakeApiConfig) -> FakeCleverTap {
    FakeCleverTap::start(FakeApiConfig {
        accounts: vec![FakeAccount::new(ACC, PASS)],
        ..config
    })
    .await
    .expect("start fake")
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn post_with(
    client: &reqwest::Client,
    fake: &FakeCleverTap,
    passcode: &str,
    content_type: &str,
    body: String,
) -> Answer {
    let resp = client
        .post(format!("{}{DELETE_PATH}", fake.endpoint()))
        .header("X-CleverTap-Account-Id", ACC)
        .header("X-CleverTap-Passcode", passcode)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn post(client: &reqwest::Client, fake: &FakeCleverTap, body: Value) -> Answer {
    post_with(
        client,
        fake,
        PASS,
        "application/json; charset=utf-8",
        body.to_string(),
    )
    .await
}

fn key(kind: IdKind, id: &str) -> (String, IdKind, String) {
    (ACC.to_owned(), kind, id.to_owned())
}

#[tokio::test]
async fn success_records_deletions() {
    let fake = start(FakeApiConfig::default()).await;
    let client = reqwest::Client::new();
    let before = std::time::Instant::now();
    let a = post(
        &client,
        &fake,
        serde_json::json!({"identity": ["u1", "u2"]}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, serde_json::json!({"status": "success"}));
    let first = std::time::Instant::now();
    let a = post(&client, &fake, serde_json::json!({"guid": "g1"})).await;
    assert_eq!(a.status, 200);
    let a = post(&client, &fake, serde_json::json!({"identity": "u1"})).await;
    assert_eq!(a.status, 200);

    // Each id keeps the arrival of the first request that deleted it.
    let at = fake.first_deleted_at();
    assert_eq!(at.len(), 3);
    let u1 = at[&key(IdKind::Identity, "u1")];
    assert!(before <= u1 && u1 <= first);
    assert_eq!(u1, at[&key(IdKind::Identity, "u2")]);
    assert!(at[&key(IdKind::Guid, "g1")] >= first);

    let counts = fake.deletion_counts();
    assert_eq!(counts.len(), 3);
    assert_eq!(counts[&key(IdKind::Identity, "u1")], 2);
    assert_eq!(counts[&key(IdKind::Identity, "u2")], 1);
    assert_eq!(counts[&key(IdKind::Guid, "g1")], 1);
    assert_eq!(fake.deleted_total(), 4);
    assert_eq!(fake.request_count(), 3);
    assert_eq!(fake.status_counts(), BTreeMap::from([(200, 3)]));
    assert_eq!(
        fake.requests()[0],
        RequestRecord {
            account_id: ACC.to_owned(),
            status: 200,
            kind: Some(IdKind::Identity),
            ids: 2
        }
    );
    assert!(fake.violations().is_empty());
    assert_eq!(fake.max_concurrent(ACC), 1);
    fake.shutdown();
}

#[tokio::test]
async fn contract_violations_are_400() {
    let fake = start(FakeApiConfig::default()).await;
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let bad = [
        serde_json::json!({"identity": "a", "guid": "b"}),
        serde_json::json!({"identity": ids}),
        serde_json::json!({"identity": []}),
        serde_json::json!({"identity": ""}),
        serde_json::json!({"guid": ["a", 7]}),
        serde_json::json!({"guid": ["a", ""]}),
        serde_json::json!({}),
        serde_json::json!(["a"]),
        serde_json::json!({"identity": "a", "extra": 1}),
    ];
    for body in &bad {
        let a = post(&client, &fake, body.clone()).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.body["status"], "fail");
        assert_eq!(a.body["code"], 400);
    }
    let a = post_with(&client, &fake, PASS, "text/plain", r#"{"guid":"g"}"#.into()).await;
    assert_eq!(a.status, 400);
    let a = post_with(&client, &fake, PASS, "application/json", "{".into()).await;
    assert_eq!(a.status, 400);

    let violations = fake.violations();
    assert_eq!(violations.len(), bad.len() + 2, "{violations:?}");
    assert!(violations[0].contains("both identity and guid"));
    assert!(violations[1].contains("101 values"));
    assert_eq!(fake.requests()[1].ids, 101);
    assert_eq!(fake.deleted_total(), 0);
    assert!(fake.deletion_counts().is_empty());
}

#[tokio::test]
async fn wrong_credentials_path_and_method() {
    let fake = start(FakeApiConfig::default()).await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"guid": "g"}).to_string();
    let a = post_with(&client, &fake, "wrong", "application/json", body.clone()).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.body,
        serde_json::json!({"status": "fail", "error": "Invalid Credentials", "code": 401})
    );
    assert!(fake.violations().is_empty());

    // Credentials fixed at runtime.
    fake.set_passcode(ACC, "wrong");
    let a = post_with(&client, &fake, "wrong", "application/json", body).await;
    assert_eq!(a.status, 200);

    let resp = client
        .post(format!("{}/1/delete/profile.json", fake.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = client
        .get(format!("{}{DELETE_PATH}", fake.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(fake.violations().len(), 2);
    assert_eq!(
        fake.status_counts(),
        BTreeMap::from([(200, 1), (401, 1), (404, 1), (405, 1)])
    );
}

#[tokio::test]
async fn concurrency_above_limit_is_429() {
    let fake = start(FakeApiConfig {
        max_concurrency: 2,
        latency: Duration::from_millis(300),
        faults: Faults {
            retry_after_secs: Some(7),
            ..Faults::default()
        },
        ..FakeApiConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let answers = futures::future::join_all(
        (0..5).map(|i| post(&client, &fake, serde_json::json!({"guid": format!("g{i}")}))),
    )
    .await;
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(!limited.is_empty());
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 429));
    assert_eq!(
        limited[0].body,
        serde_json::json!({"status": "fail", "error": "Too many concurrent requests", "code": 429})
    );
    assert!(limited
        .iter()
        .all(|a| a.retry_after.as_deref() == Some("7")));
    assert!(fake.max_concurrent(ACC) >= 3);
    assert_eq!(fake.deleted_total(), (5 - limited.len()) as u64);
    assert!(fake.violations().is_empty());
}

#[tokio::test]
async fn fail_ids_then_clear() {
    let fake = start(FakeApiConfig::default()).await;
    let client = reqwest::Client::new();
    fake.fail_ids(["bad".to_owned()], 503);
    let a = post(
        &client,
        &fake,
        serde_json::json!({"identity": ["ok", "bad"]}),
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.body["code"], 503);
    let a = post(&client, &fake, serde_json::json!({"identity": ["ok"]})).await;
    assert_eq!(a.status, 200);
    fake.clear_failing_ids();
    let a = post(
        &client,
        &fake,
        serde_json::json!({"identity": ["ok", "bad"]}),
    )
    .await;
    assert_eq!(a.status, 200);
    let counts = fake.deletion_counts();
    assert_eq!(counts[&key(IdKind::Identity, "ok")], 2);
    assert_eq!(counts[&key(IdKind::Identity, "bad")], 1);
    assert!(fake.violations().is_empty());
}

#[tokio::test]
async fn rejected_ids_are_400_without_violation() {
    let fake = start(FakeApiConfig::default()).await;
    let client = reqwest::Client::new();
    fake.reject_ids(["nope".to_owned()]);
    let a = post(&client, &fake, serde_json::json!({"guid": ["x", "nope"]})).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body,
        serde_json::json!({"status": "fail", "error": "Invalid guid nope", "code": 400})
    );
    let a = post(&client, &fake, serde_json::json!({"identity": "nope"})).await;
    assert_eq!(a.body["error"], "Invalid identity nope");
    assert_eq!(fake.deleted_total(), 0);
    assert!(fake.violations().is_empty());
    assert_eq!(fake.requests()[0].kind, Some(IdKind::Guid));
}

#[tokio::test]
async fn lost_reply_deletes_but_answers_502() {
    let fake = start(FakeApiConfig {
        faults: Faults {
            lost_reply: 1.0,
            ..Faults::default()
        },
        ..FakeApiConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let a = post(&client, &fake, serde_json::json!({"identity": "u"})).await;
    assert_eq!(a.status, 502);
    assert_eq!(fake.deletion_counts()[&key(IdKind::Identity, "u")], 1);
    assert_eq!(fake.deleted_total(), 1);

    fake.set_faults(Faults {
        too_many: 1.0,
        retry_after_secs: Some(3),
        ..Faults::default()
    });
    let a = post(&client, &fake, serde_json::json!({"identity": "u"})).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.retry_after.as_deref(), Some("3"));

    fake.set_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    });
    let a = post(&client, &fake, serde_json::json!({"identity": "u"})).await;
    assert!([500, 502, 503].contains(&a.status));
    assert_eq!(fake.deleted_total(), 1);

    fake.set_faults(Faults::default());
    let a = post(&client, &fake, serde_json::json!({"identity": "u"})).await;
    assert_eq!(a.status, 200);
    assert_eq!(fake.deleted_total(), 2);
}

#[tokio::test]
async fn odd_answers_for_marked_ids() {
    let fake = start(FakeApiConfig::default()).await;
    let client = reqwest::Client::new();
    let raw = |body: Value| {
        let client = client.clone();
        let url = format!("{}{DELETE_PATH}", fake.endpoint());
        async move {
            let resp = client
                .post(url)
                .header("X-CleverTap-Account-Id", ACC)
                .header("X-CleverTap-Passcode", PASS)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("send");
            let status = resp.status().as_u16();
            (status, resp.bytes().await.expect("body").to_vec())
        }
    };
    for (id, answer) in [
        ("e", OddAnswer::Empty),
        ("n", OddAnswer::NoContent),
        ("h", OddAnswer::Html),
        ("p", OddAnswer::Partial),
        ("b", OddAnswer::BomSuccess),
        ("u", OddAnswer::Unprocessed),
    ] {
        fake.odd_ids([id.to_owned()], answer);
    }
    assert_eq!(
        raw(serde_json::json!({"identity": ["ok", "e"]})).await,
        (200, vec![])
    );
    assert_eq!(
        raw(serde_json::json!({"identity": "n"})).await,
        (204, vec![])
    );
    let (status, body) = raw(serde_json::json!({"identity": "h"})).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"<html>"));
    assert_eq!(
        raw(serde_json::json!({"identity": "p"})).await,
        (200, br#"{"status":"partial"}"#.to_vec())
    );
    assert!(fake.deletion_counts().is_empty(), "nothing deleted so far");
    let (status, body) = raw(serde_json::json!({"identity": ["b", "ok"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"\xef\xbb\xbf{\"status\":\"success\"}");
    let (status, body) = raw(serde_json::json!({"identity": ["u", "ok2", "h"]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        serde_json::json!({"status": "success", "processed": 1, "unprocessed": ["u", "h"]})
    );
    let deleted: HashSet<String> = fake
        .deletion_counts()
        .into_keys()
        .map(|(_, _, id)| id)
        .collect();
    assert_eq!(
        deleted,
        HashSet::from(["b".to_owned(), "ok".to_owned(), "ok2".to_owned()])
    );
    fake.clear_odd_ids();
    assert_eq!(raw(serde_json::json!({"identity": "e"})).await.0, 200);
    assert!(fake.violations().is_empty());

    fake.set_faults(Faults {
        empty_200: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        raw(serde_json::json!({"identity": "x"})).await,
        (200, vec![])
    );
    assert!(!fake
        .deletion_counts()
        .contains_key(&key(IdKind::Identity, "x")));
}

#[tokio::test]
async fn hang_delays_then_succeeds() {
    let fake = start(FakeApiConfig {
        faults: Faults {
            hang: 1.0,
            hang_for: Duration::from_millis(200),
            ..Faults::default()
        },
        ..FakeApiConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let a = post(&client, &fake, serde_json::json!({"guid": "g"})).await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(fake.deleted_total(), 1);
}

#[test]
fn parse_body_accepts_exactly_the_contract() {
    assert!(parse_body(br#"{"identity":"a"}"#).is_ok());
    let (kind, ids) = parse_body(br#"{"guid":["a","b"]}"#).ok().unwrap();
    assert_eq!((kind, ids.len()), (IdKind::Guid, 2));
    let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let body = serde_json::json!({ "identity": hundred }).to_string();
    assert!(parse_body(body.as_bytes()).is_ok());
    assert!(parse_body(b"").is_err());
    assert!(parse_body(b"null").is_err());
    assert!(parse_body(br#"{"identity":null}"#).is_err());
    assert!(parse_body(br#"{"identity":{"a":1}}"#).is_err());
}
