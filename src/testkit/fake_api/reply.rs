//! The answer the fake decided on, and how it becomes an HTTP response
//! (the contract's success and fail bodies, or a body outside the contract).

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::domain::ids::IdKind;

pub(super) const SUCCESS_BODY: &str = r#"{"status":"success"}"#;

/// What the fake decided to answer.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    /// `None` = success body, else the `error` of a fail body.
    pub(super) error: Option<String>,
    pub(super) kind: Option<IdKind>,
    pub(super) ids: usize,
    pub(super) retry_after: Option<u64>,
    pub(super) extra_header: Option<(axum::http::HeaderName, HeaderValue)>,
    /// A body outside the contract (content type, bytes), sent instead.
    pub(super) raw_body: Option<(&'static str, Vec<u8>)>,
}

impl Reply {
    pub(super) fn success(kind: IdKind, ids: usize) -> Reply {
        Reply {
            status: StatusCode::OK,
            error: None,
            kind: Some(kind),
            ids,
            retry_after: None,
            extra_header: None,
            raw_body: None,
        }
    }

    /// A 2xx outside the contract.
    pub(super) fn odd(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            error: None,
            kind: None,
            ids: 0,
            retry_after: None,
            extra_header: None,
            raw_body: Some((content_type, body)),
        }
    }

    pub(super) fn fail(status: StatusCode, error: impl Into<String>) -> Reply {
        Reply {
            status,
            error: Some(error.into()),
            kind: None,
            ids: 0,
            retry_after: None,
            extra_header: None,
            raw_body: None,
        }
    }

    pub(super) fn too_many(retry_after: Option<u64>) -> Reply {
        Reply {
            retry_after,
            ..Reply::fail(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many concurrent requests",
            )
        }
    }

    pub(super) fn with_body(mut self, kind: IdKind, ids: usize) -> Reply {
        self.kind = Some(kind);
        self.ids = ids;
        self
    }

    pub(super) fn into_response(self) -> Response {
        if let Some((content_type, body)) = self.raw_body {
            let mut resp = (self.status, body).into_response();
            if !content_type.is_empty() {
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            return resp;
        }
        let body = match &self.error {
            None => Body::from(SUCCESS_BODY),
            Some(error) => Body::from(
                serde_json::json!({
                    "status": "fail",
                    "error": error,
                    "code": self.status.as_u16(),
                })
                .to_string(),
            ),
        };
        let mut resp = (
            self.status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some((name, value)) = self.extra_header {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}
