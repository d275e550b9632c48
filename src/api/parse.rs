//! The pure half of the local API: request bodies, ids, headers and journal queries read and bounded,
//! each refusal a problem document naming what was wrong.
use super::idempotency::{valid_idempotency_key, IDEMPOTENCY_KEY_RULE};
use super::problem::Problem;
use super::server::{ApiBody, IDEMPOTENCY_KEY};
use super::strict_json::{self, StrictError};
use crate::engine::JournalQuery;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<ApiBody> {
    let bytes = Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let mut resp = Response::new(Full::new(bytes).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The largest journal id the API takes (the OpenAPI document's int64 `maximum`).
pub(super) const MAX_ID: u64 = i64::MAX as u64;

/// A journal id as the document describes it: ASCII digits, 0 to [`MAX_ID`].
pub(crate) fn journal_id(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<u64>().ok().filter(|&n| n <= MAX_ID)
}

pub(super) fn parse_id(params: &[String]) -> Result<u64, Problem> {
    let raw = params.first().ok_or_else(|| Problem::internal("route parameters"))?;
    journal_id(raw).ok_or_else(|| Problem::invalid_param("id", format!("{raw:?} is not a journal id (a whole number from 0 to {MAX_ID})")))
}

/// `Idempotency-Key`: the one rule of [`super::idempotency`], also in the OpenAPI document.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    match v.to_str() {
        Ok(s) if valid_idempotency_key(s) => Ok(Some(s.to_string())),
        _ => Err(Problem::invalid_param("Idempotency-Key", IDEMPOTENCY_KEY_RULE)),
    }
}

pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Read a JSON object body within `limit` bytes. With `empty_ok`, an empty body means `{}`
/// (operations such as `settle` need no fields).
pub(super) async fn read_json_object(req: Request<Incoming>, limit: usize, empty_ok: bool) -> Result<Map<String, Value>, Problem> {
    let headers = req.headers();
    if let Some(len) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(Problem::too_large(limit));
        }
    }
    let content_type = match headers.get(CONTENT_TYPE) {
        Some(v) => {
            let ct = v.to_str().unwrap_or("(not text)").to_string();
            if !is_json(&ct) {
                return Err(Problem::unsupported_media_type(&ct));
            }
            Some(ct)
        }
        None => None,
    };
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                Problem::too_large(limit)
            } else {
                Problem::bad_request(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            return Ok(Map::new());
        }
        return Err(Problem::bad_request("the request body is empty; a JSON object is required"));
    }
    if content_type.is_none() {
        return Err(Problem::unsupported_media_type("(none)"));
    }
    let v: Value = strict_json::from_slice(&bytes).map_err(|e| match e {
        StrictError::DuplicateKey { key, path } => Problem::duplicate_key(&key, &path),
        StrictError::Syntax { message, line, column } => {
            Problem::invalid_json(format!("request body is not valid JSON: {message}")).with_extra("line", json!(line)).with_extra("column", json!(column))
        }
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Problem::bad_request(format!("the request body must be a JSON object, not {}", json_kind(&other)))),
    }
}

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The engine's default page size for `GET /v1/journal`.
pub(super) const DEFAULT_LIMIT: usize = 100;
pub(super) const MAX_LIMIT: usize = 1000;
/// POS status words and the internal states the journal filter accepts.
pub(super) const STATUS_WORDS: &[&str] = &["approved", "declined", "reversed", "pending", "failed", "unknown"];

pub(crate) fn parse_journal_query(query: Option<&str>) -> Result<JournalQuery, Problem> {
    let mut q = JournalQuery::default();
    let mut seen = HashSet::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(Problem::invalid_param(&k, "given more than once"));
        }
        if v.is_empty() && matches!(k.as_ref(), "profile" | "batch" | "reference") {
            continue; // an empty text filter means "no filter"; typed parameters must be given right
        }
        match k.as_ref() {
            "profile" => q.profile = Some(v.into_owned()),
            "batch" => q.batch = Some(v.into_owned()),
            "reference" if v.chars().count() > 200 => return Err(Problem::invalid_param("reference", "longer than 200 characters")),
            "reference" => q.reference = Some(v.into_owned()),
            "status" => {
                if !STATUS_WORDS.contains(&v.as_ref()) {
                    return Err(Problem::invalid_param("status", format!("{v:?} is not one of {}", STATUS_WORDS.join(", "))));
                }
                q.status = Some(v.into_owned());
            }
            "date" => {
                chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| Problem::invalid_param("date", format!("{v:?} is not a YYYY-MM-DD date")))?;
                q.date = Some(v.into_owned());
            }
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = Some(n),
                _ => return Err(Problem::invalid_param("limit", format!("{v:?} is not a whole number from 1 to {MAX_LIMIT}"))),
            },
            "before" => {
                q.before = Some(
                    journal_id(&v).ok_or_else(|| Problem::invalid_param("before", format!("{v:?} is not a journal id (a whole number from 0 to {MAX_ID})")))?,
                );
            }
            other => {
                return Err(Problem::invalid_param(other, "unknown; known parameters: profile, batch, reference, status, date, limit, before"));
            }
        }
    }
    Ok(q)
}

/// `GET /v1/journal/export?from=YYYY-MM-DD&to=YYYY-MM-DD[&after=ID][&limit=N]`.
pub(super) fn parse_export_query(query: Option<&str>) -> Result<(String, String, u64, usize), Problem> {
    let (mut from, mut to, mut after, mut limit) = (None, None, 0u64, 1000usize);
    let mut seen = HashSet::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(Problem::invalid_param(&k, "given more than once"));
        }
        match k.as_ref() {
            "from" | "to" => {
                chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| Problem::invalid_param(&k, format!("{v:?} is not a YYYY-MM-DD date")))?;
                if k == "from" {
                    from = Some(v.into_owned());
                } else {
                    to = Some(v.into_owned());
                }
            }
            "after" => after = journal_id(&v).ok_or_else(|| Problem::invalid_param("after", format!("{v:?} is not a journal id")))?,
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=crate::engine::EXPORT_PAGE_MAX).contains(&n) => limit = n,
                _ => return Err(Problem::invalid_param("limit", format!("must be a whole number from 1 to {}", crate::engine::EXPORT_PAGE_MAX))),
            },
            other => return Err(Problem::invalid_param(other, "is not a parameter of this path")),
        }
    }
    let from = from.ok_or_else(|| Problem::invalid_param("from", "is required"))?;
    let to = to.ok_or_else(|| Problem::invalid_param("to", "is required"))?;
    // `to` before `from` is an empty range (the CLI refuses it before asking).
    Ok((from, to, after, limit))
}
