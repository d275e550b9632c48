//! The event bus's message: what subscribers of `GET /v1/events` hear (engine and devices both speak it).
use serde::Serialize;
use serde_json::Value;

/// Something subscribers of `GET /v1/events` hear.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// SSE event name: `transaction`, `recovery`, `device`, `scan`, `notification`.
    pub kind: &'static str,
    pub data: Value,
}
