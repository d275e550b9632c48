//! RFC 9457 problem details: the one shape every error of the local API takes.
//!
//! POS apps branch on `type` (a stable slug URI) and show `detail`; `title` is the same for every
//! problem of one type so it can be logged or localized without parsing `detail`.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::server::ApiBody;
use crate::engine::EngineError;

/// Prefix of every problem `type`; the slug follows.
pub const TYPE_PREFIX: &str = "https://posgate.local/problems/";

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem response, built by the router or mapped from an [`EngineError`].
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members (RFC 9457 §3.2), e.g. `allow` or `limit`.
    pub extra: Map<String, Value>,
    /// Extra response headers (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem { status, slug, title, detail: detail.into(), extra: Map::new(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_extra(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-json", "Request body is not valid JSON", detail)
    }

    pub fn invalid_param(name: &str, why: impl std::fmt::Display) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-parameter", "Invalid parameter", format!("parameter `{name}`: {why}"))
            .with_extra("parameter", Value::String(name.to_string()))
    }

    /// A request body naming one key twice in an object (which of the two would count is ambiguous).
    pub fn duplicate_key(key: &str, path: &str) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "duplicate-key",
            "Duplicate key in the request body",
            format!("key `{key}` appears more than once in the object at {path}"),
        )
        .with_extra("key", Value::String(key.to_string()))
        .with_extra("path", Value::String(path.to_string()))
    }

    pub fn not_found(path: &str) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "No such route", format!("no route for {path}; see GET /v1/openapi"))
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Missing or wrong bearer token", detail)
            .with_header("www-authenticate", "Bearer realm=\"posgate\"")
    }

    pub fn too_large(limit: usize) -> Self {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "Request body too large", format!("the request body is larger than {limit} bytes"))
            .with_extra("limit", json!(limit))
    }

    pub fn unsupported_media_type(got: &str) -> Self {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("the request body must be application/json, not {got:?}"),
        )
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }

    /// The problem for an engine error: its own status and slug, its message as detail.
    pub fn from_engine(e: &EngineError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let title = status.canonical_reason().unwrap_or("Error");
        let mut p = Problem::new(status, e.slug(), title, e.to_string());
        if let EngineError::RecoveryPending { oldest, count, parked, retry_after_s, .. } = e {
            p = p.with_extra("oldest", json!(oldest)).with_extra("count", json!(count)).with_extra("parked", json!(parked));
            p = p.with_header("retry-after", retry_after_s.to_string());
        }
        if let EngineError::Busy { retry_after_s, .. } = e {
            p = p.with_header("retry-after", retry_after_s.to_string());
        }
        p
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(format!("{TYPE_PREFIX}{}", self.slug)));
        m.insert("title".into(), Value::String(self.title.to_string()));
        m.insert("status".into(), json!(self.status.as_u16()));
        m.insert("detail".into(), Value::String(self.detail.clone()));
        for (k, v) in &self.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(m)
    }

    pub fn into_response(self) -> Response<ApiBody> {
        let bytes = Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_default());
        let mut resp = Response::new(Full::new(bytes).boxed());
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_status_and_slug() {
        let e = EngineError::RecoveryPending { profile: "p".into(), count: 2, parked: 0, oldest: 7, retry_after_s: 1 };
        let b = Problem::from_engine(&e).body();
        assert_eq!(b["status"], 409);
        assert_eq!(b["type"], "https://posgate.local/problems/reversal-pending");
        assert_eq!(b["oldest"], 7);
        assert!(b["detail"].as_str().is_some_and(|d| d.contains("oldest journal id 7")));
    }
}
