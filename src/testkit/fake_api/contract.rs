//! The request contract of the real API: path, headers, body size, and the
//! strict check of a body (one id kind, 1..=100 non-empty string ids, no other key).

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::domain::ids::IdKind;
use crate::input::decode::json_type;

/// The only path the real API serves for deletions.
pub const DELETE_PATH: &str = "/1/delete/profiles.json";

/// The documented per-request limit of values in an `identity` or `guid` array.
pub const MAX_IDS_PER_REQUEST: usize = 100;

/// Far above any legal body (100 ids); a bigger body is a client bug.
pub(super) const MAX_BODY_BYTES: usize = 1 << 20;

pub(super) const ACCOUNT_HEADER: &str = "x-clevertap-account-id";

pub(super) const PASSCODE_HEADER: &str = "x-clevertap-passcode";

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `application/json`, optionally followed by parameters (`; charset=utf-8`).
pub(super) fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = header_str(headers, CONTENT_TYPE.as_str()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
}

/// A body that breaks the contract: the message plus what could be told of it.
pub(super) struct Invalid {
    pub(super) message: String,
    pub(super) kind: Option<IdKind>,
    pub(super) ids: usize,
}

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        kind: None,
        ids: 0,
    }
}

/// Checks the body against the contract and returns its single id kind and ids.
pub(super) fn parse_body(body: &[u8]) -> Result<(IdKind, Vec<String>), Invalid> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(invalid(format!(
            "body must be a JSON object, got {}",
            json_type(&value)
        )));
    };
    let identity = map.remove("identity");
    let guid = map.remove("guid");
    let (kind, value) = match (identity, guid) {
        (Some(_), Some(_)) => {
            return Err(invalid("body has both identity and guid; send only one"))
        }
        (None, None) => return Err(invalid("body has neither identity nor guid")),
        (Some(v), None) => (IdKind::Identity, v),
        (None, Some(v)) => (IdKind::Guid, v),
    };
    let bad = |message: String, ids: usize| Invalid {
        message,
        kind: Some(kind),
        ids,
    };
    // The contract knows no other keys; anything else is a client bug.
    if let Some(key) = map.keys().next() {
        return Err(bad(format!("unexpected key {key:?} in body"), 0));
    }
    match value {
        Value::String(s) if s.is_empty() => Err(bad(format!("{kind} is an empty string"), 1)),
        Value::String(s) => Ok((kind, vec![s])),
        Value::Array(items) => {
            let n = items.len();
            if n == 0 {
                return Err(bad(format!("{kind} is an empty array"), 0));
            }
            if n > MAX_IDS_PER_REQUEST {
                return Err(bad(
                    format!("{kind} has {n} values, at most {MAX_IDS_PER_REQUEST} allowed"),
                    n,
                ));
            }
            let mut ids = Vec::with_capacity(n);
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) if s.is_empty() => {
                        return Err(bad(format!("{kind}[{i}] is an empty string"), n))
                    }
                    Value::String(s) => ids.push(s),
                    other => {
                        return Err(bad(
                            format!("{kind}[{i}] must be a string, got {}", json_type(&other)),
                            n,
                        ))
                    }
                }
            }
            Ok((kind, ids))
        }
        other => Err(bad(
            format!(
                "{kind} must be a string or an array of strings, got {}",
                json_type(&other)
            ),
            0,
        )),
    }
}
