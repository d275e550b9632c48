//! The backend kit: what every vendor backend needs and none should write again.
//!
//! - [`fields`]: request tables (`Owner`, `Kind`, `Field`), where each kind of value may live, and the
//!   checks of a POS body's keys against a table.
//! - [`text`]: scrubbing of text from outside for logs and the journal, bounds, JSON scalars as text,
//!   answer field types.
//! - here: an HTTP status or a network failure as a [`Stage`], and code-table look-ups.
//! - [`sign`]: request signing helpers.
pub mod fields;
pub mod sign;
pub mod text;

pub use self::fields::{check_body_keys, check_tables, Field, Keep, Kind, Owner, ENVELOPE_KEYS};
pub use self::text::{bound, cut, json_kind, scalar_text, scrub, text_of, Ty, TRUNCATED};

use crate::backend::{BackendError, Stage};
use crate::net::client::HttpReply;

/// What an HTTP status says about a request: `None` for 2xx (an answer to read), [`Stage::Rejected`] for
/// 4xx (the host refused it unapplied), [`Stage::Unknown`] for anything else (5xx, 1xx, a redirect: it
/// may or may not have happened).
pub fn http_stage(status: u16) -> Option<Stage> {
    match status {
        200..=299 => None,
        400..=499 => Some(Stage::Rejected),
        _ => Some(Stage::Unknown),
    }
}

/// The body of a 2xx answer, or the error its status means, with the (scrubbed) body as the detail,
/// prefixed with `what` (a path, an operation) when given.
pub fn answer_body<'a>(backend: &'static str, what: &str, reply: &'a HttpReply) -> Result<&'a [u8], BackendError> {
    match http_stage(reply.status) {
        None => Ok(&reply.body),
        Some(stage) => {
            let body = scrub(&String::from_utf8_lossy(&reply.body));
            let prefix = if what.is_empty() { String::new() } else { format!("{what}: ") };
            Err(BackendError::new(backend, stage, format!("{prefix}HTTP {}: {body}", reply.status)))
        }
    }
}

/// A code in a vendor's table `(code, vendor text, English)`: its two texts, `None` when undefined.
/// Trimmed and ASCII case-insensitive (loyalty's `A0` arrives as `a0` too).
pub fn lookup_code(table: &'static [(&'static str, &'static str, &'static str)], code: &str) -> Option<(&'static str, &'static str)> {
    let code = code.trim();
    table.iter().find(|(c, _, _)| c.eq_ignore_ascii_case(code)).map(|(_, zh, en)| (*zh, *en))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> HttpReply {
        HttpReply { status, content_type: None, body: bytes::Bytes::from(body.to_string()) }
    }

    #[test]
    fn http_status_decides_the_stage() {
        assert_eq!(http_stage(200), None);
        assert_eq!(http_stage(204), None);
        assert_eq!(http_stage(404), Some(Stage::Rejected));
        assert_eq!(http_stage(503), Some(Stage::Unknown));
        assert_eq!(http_stage(302), Some(Stage::Unknown));
        assert_eq!(http_stage(100), Some(Stage::Unknown));
    }

    #[test]
    fn an_error_answer_body_is_scrubbed_in_the_detail() {
        let e = answer_body("x", "pay", &reply(500, "card 6222021234567890123 failed")).expect_err("500");
        assert_eq!(e.stage, Stage::Unknown);
        assert_eq!(e.detail, "pay: HTTP 500: card 622202*********0123 failed");
        let e = answer_body("x", "", &reply(403, "no")).expect_err("403");
        assert_eq!((e.stage, e.detail.as_str()), (Stage::Rejected, "HTTP 403: no"));
        assert_eq!(answer_body("x", "pay", &reply(200, "{}")).ok(), Some(&b"{}"[..]));
    }

    #[test]
    fn codes_are_looked_up_trimmed() {
        static T: &[(&str, &str, &str)] = &[("00", "成功", "approved")];
        assert_eq!(lookup_code(T, " 00 "), Some(("成功", "approved")));
        assert_eq!(lookup_code(T, "01"), None);
        static U: &[(&str, &str, &str)] = &[("A0", "校验错", "MAC")];
        assert_eq!(lookup_code(U, "a0"), Some(("校验错", "MAC")));
    }
}
