//! How the fake answers one request: the contract checked in the documented
//! order, then latency, injected ids, odd answers and random faults.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header::{ALLOW, CONNECTION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use bytes::Bytes;

use crate::domain::ids::IdKind;
use crate::testkit::fake_api::contract::{
    header_str, is_json_content_type, parse_body, DELETE_PATH, PASSCODE_HEADER,
};
use crate::testkit::fake_api::faults::{roll_faults, Fault, OddAnswer};
use crate::testkit::fake_api::reply::{Reply, SUCCESS_BODY};
use crate::testkit::fake_api::state::{lock, InFlight, Inner};

impl Inner {
    /// Applies the contract in the documented order and decides the answer.
    pub(super) async fn decide(
        &self,
        parts: &Parts,
        body: Result<Bytes, axum::Error>,
        account: &Arc<str>,
    ) -> Reply {
        // When the call arrived (the body is read), kept with the deletions.
        let received = Instant::now();
        // 1. Path, then method.
        if parts.uri.path() != DELETE_PATH {
            self.violation(
                account,
                &format!("request to unknown path {}", parts.uri.path()),
            );
            return Reply::fail(StatusCode::NOT_FOUND, "Not found");
        }
        if parts.method != Method::POST {
            self.violation(account, &format!("method {} not allowed", parts.method));
            return Reply {
                extra_header: Some((ALLOW, HeaderValue::from_static("POST"))),
                ..Reply::fail(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
            };
        }

        // 2. Credentials (a credentials error, not a contract violation).
        let passcode = header_str(&parts.headers, PASSCODE_HEADER);
        let state = match (self.account(account), passcode) {
            (Some(state), Some(passcode)) if *lock(&state.passcode) == passcode => state,
            _ => return Reply::fail(StatusCode::UNAUTHORIZED, "Invalid Credentials"),
        };

        // 3. Concurrency, counted until this function returns (or is dropped).
        let (_in_flight, now) = InFlight::enter(state);
        let faults = lock(&self.faults).clone();
        if now > self.max_concurrency.load(Ordering::Relaxed) {
            return Reply::too_many(faults.retry_after_secs);
        }

        // 4. Content type.
        if !is_json_content_type(&parts.headers) {
            let got = header_str(&parts.headers, CONTENT_TYPE.as_str()).unwrap_or("(none)");
            let message = format!("Content-Type must be application/json, got {got}");
            self.violation(account, &message);
            return Reply::fail(StatusCode::BAD_REQUEST, message);
        }

        // 5. Body.
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                let message = format!("request body could not be read: {e}");
                self.violation(account, &message);
                // Part of the body may be unread: do not reuse this connection.
                return Reply {
                    extra_header: Some((CONNECTION, HeaderValue::from_static("close"))),
                    ..Reply::fail(StatusCode::BAD_REQUEST, message)
                };
            }
        };
        let (kind, ids) = match parse_body(&body) {
            Ok(parsed) => parsed,
            Err(bad) => {
                self.violation(account, &bad.message);
                let reply = Reply::fail(StatusCode::BAD_REQUEST, bad.message);
                return match bad.kind {
                    Some(kind) => reply.with_body(kind, bad.ids),
                    None => reply,
                };
            }
        };
        let n = ids.len();

        // 6. Latency, then injected outcomes, then success.
        let latency = self.latency_nanos.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_nanos(latency)).await;
        }
        if let Some(id) = {
            let rejected = lock(&self.rejected);
            ids.iter().find(|id| rejected.contains(*id)).cloned()
        } {
            return Reply::fail(StatusCode::BAD_REQUEST, format!("Invalid {kind} {id}"))
                .with_body(kind, n);
        }
        if let Some(status) = {
            let failing = lock(&self.failing);
            ids.iter().find_map(|id| failing.get(id).copied())
        } {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reply = if status == StatusCode::TOO_MANY_REQUESTS {
                Reply::too_many(faults.retry_after_secs)
            } else {
                Reply::fail(status, "Injected failure")
            };
            return reply.with_body(kind, n);
        }
        if let Some(answer) = {
            let odd = lock(&self.odd);
            ids.iter().find_map(|id| odd.get(id).copied())
        } {
            return self.odd_answer(account, kind, ids, answer, received);
        }
        match roll_faults(&faults) {
            Fault::None => {}
            Fault::TooMany => return Reply::too_many(faults.retry_after_secs).with_body(kind, n),
            Fault::ServerError(status) => {
                return Reply::fail(status, "Internal server error").with_body(kind, n)
            }
            Fault::LostReply => {
                // The deletion happened; only the answer is lost on the way back.
                self.record_deletions(account, kind, ids, received);
                return Reply::fail(StatusCode::BAD_GATEWAY, "Bad gateway").with_body(kind, n);
            }
            Fault::Empty200 => {
                return Reply::odd(StatusCode::OK, "", Vec::new()).with_body(kind, n);
            }
            Fault::Hang(hang_for) => tokio::time::sleep(hang_for).await,
        }
        self.record_deletions(account, kind, ids, received);
        Reply::success(kind, n)
    }

    /// Answers a valid request that holds an id marked with `answer`.
    fn odd_answer(
        &self,
        account: &Arc<str>,
        kind: IdKind,
        ids: Vec<String>,
        answer: OddAnswer,
        received: Instant,
    ) -> Reply {
        let n = ids.len();
        let json = "application/json";
        let reply = match answer {
            OddAnswer::Empty => Reply::odd(StatusCode::OK, json, Vec::new()),
            OddAnswer::NoContent => Reply::odd(StatusCode::NO_CONTENT, "", Vec::new()),
            OddAnswer::Html => Reply::odd(
                StatusCode::OK,
                "text/html",
                b"<html><body><h1>Request accepted</h1></body></html>".to_vec(),
            ),
            OddAnswer::Partial => {
                Reply::odd(StatusCode::OK, json, br#"{"status":"partial"}"#.to_vec())
            }
            OddAnswer::BomSuccess => {
                self.record_deletions(account, kind, ids, received);
                let mut body = "\u{feff}".as_bytes().to_vec();
                body.extend_from_slice(SUCCESS_BODY.as_bytes());
                Reply::odd(StatusCode::OK, json, body)
            }
            OddAnswer::Unprocessed => {
                let (unprocessed, processed): (Vec<String>, Vec<String>) = {
                    let odd = lock(&self.odd);
                    ids.into_iter().partition(|id| odd.contains_key(id))
                };
                let body = serde_json::json!({
                    "status": "success",
                    "processed": processed.len(),
                    "unprocessed": unprocessed,
                })
                .to_string()
                .into_bytes();
                self.record_deletions(account, kind, processed, received);
                Reply::odd(StatusCode::OK, json, body)
            }
        };
        reply.with_body(kind, n)
    }
}
