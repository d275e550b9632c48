//! CORS for browser POS apps on the TCP listener: an exact origin allowlist, preflights, response headers.
//!
//! A browser page sends `Origin` with every cross-origin request and preflights anything carrying
//! `Authorization` (every API request over TCP). Without an allowlist (the default) nothing changes for
//! programs, which send no `Origin`, while any request that names an origin is refused with 403: a web page
//! on another origin (or a DNS-rebinding page) never gets an answer. An allowed origin's preflight is
//! answered 204 before the bearer check (browsers never send credentials in a preflight), and its real
//! requests are answered with `Access-Control-Allow-Origin` echoing it, whatever the status, so the page
//! can read a 401 or 409 problem too.
use hyper::header::{HeaderMap, HeaderValue, ORIGIN, VARY};
use hyper::{Method, Response, StatusCode};

use super::problem::Problem;
use super::server::ApiBody;

/// Methods the API has.
pub const ALLOW_METHODS: &str = "GET, POST";
/// Request headers a browser app may send.
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key, X-Request-Id";
/// Response headers a browser app may read besides the simple ones.
pub const EXPOSE_HEADERS: &str = "X-Request-Id, Retry-After, Location";
/// How long a browser may cache a preflight answer (seconds).
pub const MAX_AGE_S: u32 = 600;

/// The origins allowed to call the API from a browser, exactly as configured (`scheme://host[:port]`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<String>,
}

/// What to do with one request.
pub enum Verdict {
    /// Answer this now (a preflight, or a refused origin).
    Answer(Response<ApiBody>),
    /// Go on; `Some(origin)`: an allowed browser origin, echoed on the response.
    Go(Option<String>),
}

impl Policy {
    pub fn new(allowed: Vec<String>) -> Self {
        Policy { allowed }
    }

    fn allows(&self, origin: &str) -> bool {
        self.allowed.iter().any(|a| a == origin)
    }

    /// Look at a TCP request's `Origin` (none: a program, not a browser; go on as before).
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Verdict {
        let Some(raw) = headers.get(ORIGIN) else { return Verdict::Go(None) };
        let origin = raw.to_str().ok().filter(|o| self.allows(o)).map(str::to_string);
        let preflight = method == Method::OPTIONS && headers.contains_key("access-control-request-method");
        let Some(origin) = origin else {
            let detail = if self.allowed.is_empty() {
                "requests from web pages are refused: no browser origin is allowed (`allowed_origins` in the daemon config)"
            } else {
                "this web page's origin is not in the daemon's `allowed_origins`"
            };
            let mut resp = Problem::new(StatusCode::FORBIDDEN, "origin-not-allowed", "Origin not allowed", detail).into_response();
            resp.headers_mut().insert(VARY, HeaderValue::from_static("Origin"));
            return Verdict::Answer(resp);
        };
        if !preflight {
            return Verdict::Go(Some(origin));
        }
        let mut resp = Response::new(http_body_util::BodyExt::boxed(http_body_util::Full::new(bytes::Bytes::new())));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&origin) {
            h.insert("access-control-allow-origin", v);
        }
        h.insert("access-control-allow-methods", HeaderValue::from_static(ALLOW_METHODS));
        h.insert("access-control-allow-headers", HeaderValue::from_static(ALLOW_HEADERS));
        h.insert("access-control-max-age", HeaderValue::from(MAX_AGE_S));
        h.insert(VARY, HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"));
        Verdict::Answer(resp)
    }
}

/// Stamp an allowed origin's response (any status) so its page can read it.
pub fn decorate(resp: &mut Response<ApiBody>, origin: Option<&str>) {
    let Some(origin) = origin else { return };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert("access-control-allow-origin", v);
    }
    h.insert("access-control-expose-headers", HeaderValue::from_static(EXPOSE_HEADERS));
    h.append(VARY, HeaderValue::from_static("Origin"));
}

/// Check one configured origin: `http` or `https`, a host, an optional port, nothing else (no path, no
/// trailing slash, no `*`), lower case, since browsers send it serialized that way and it is compared exactly.
pub fn valid_origin(o: &str) -> Result<(), String> {
    let rest = o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")).ok_or("must start with http:// or https://")?;
    if rest.is_empty() {
        return Err("has no host".into());
    }
    if o.len() > 253 {
        return Err("is too long".into());
    }
    if o != o.to_ascii_lowercase() {
        return Err("must be lower case (browsers send it so)".into());
    }
    let ok = rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !ok {
        return Err("must be scheme://host[:port] with no path, query, `*` or trailing slash".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_as_browsers_serialize_them() {
        for good in ["http://localhost:8080", "https://pos.example", "http://127.0.0.1:3000", "http://[::1]:8080"] {
            assert!(valid_origin(good).is_ok(), "{good}");
        }
        for bad in ["*", "localhost:8080", "http://localhost:8080/", "http://Localhost", "http://a/b", "ftp://a", "http://", "null"] {
            assert!(valid_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_and_an_allowed_one_preflighted() {
        let p = Policy::new(vec!["http://localhost:8080".into()]);
        let mut h = HeaderMap::new();
        assert!(matches!(p.check(&Method::GET, &h), Verdict::Go(None)));
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        match p.check(&Method::GET, &h) {
            Verdict::Answer(r) => assert_eq!(r.status(), StatusCode::FORBIDDEN),
            Verdict::Go(_) => panic!("a foreign origin went on"),
        }
        h.insert(ORIGIN, HeaderValue::from_static("http://localhost:8080"));
        assert!(matches!(p.check(&Method::POST, &h), Verdict::Go(Some(ref o)) if o == "http://localhost:8080"));
        h.insert("access-control-request-method", HeaderValue::from_static("POST"));
        match p.check(&Method::OPTIONS, &h) {
            Verdict::Answer(r) => {
                assert_eq!(r.status(), StatusCode::NO_CONTENT);
                assert_eq!(r.headers()["access-control-allow-origin"], "http://localhost:8080");
                assert!(r.headers()["access-control-allow-headers"].to_str().unwrap_or("").contains("Idempotency-Key"));
            }
            Verdict::Go(_) => panic!("a preflight went on"),
        }
    }
}
