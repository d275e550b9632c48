//! The local HTTP+JSON API for POS apps over a Unix socket (a named pipe on Windows) and loopback TCP.
//!
//! The server speaks to the engine only through [`Service`], so the HTTP layer can be tested
//! against a small fake and the engine can change behind it. Routes are data ([`server::ROUTES`]),
//! shared by the router and by the test that keeps the OpenAPI document complete.
pub use crate::model::idempotency;
pub mod callbacks;
pub mod cors;
pub mod limits;
#[cfg(unix)]
#[path = "listen_unix.rs"]
mod listen;
#[cfg(windows)]
#[path = "listen_windows.rs"]
mod listen;
pub mod page;
pub(crate) mod parse;
pub mod problem;
pub mod server;
pub mod sse;
pub mod strict_json;

use std::path::PathBuf;

use serde_json::Value;
use thiserror::Error;
use tokio::sync::broadcast;

use crate::engine::{Answer, Engine, EngineError, Event, JournalQuery};
use crate::secret::Secret;

pub use idempotency::{valid_idempotency_key, IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN};
#[cfg(unix)]
pub use listen::bind_unix;
pub use listen::{bind_local, connect_local, remove_local, LocalListener, LocalStream};
pub use problem::Problem;
pub use server::{serve, ROUTES};

/// The OpenAPI 3.1 document of this API, served at `GET /v1/openapi`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// What the API needs from the engine. `crate::engine::Engine` implements it by delegation.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    /// Run `operation` on `profile`; the answer's status and body go to the POS app as they are.
    async fn run(&self, profile: &str, operation: &str, body: Value, idempotency_key: Option<&str>) -> Result<Answer, EngineError>;
    /// The `GET /v1/status` body.
    async fn status(&self) -> Value;
    async fn journal(&self, q: &JournalQuery) -> Result<Vec<Value>, EngineError>;
    async fn journal_record(&self, id: u64) -> Result<Value, EngineError>;
    /// `GET /v1/journal/export`: records created from day `from` to `to`, id above `after`, hot and
    /// archived, each once, ordered by id.
    async fn journal_export(&self, _from: &str, _to: &str, _after: u64, _limit: usize) -> Result<Vec<Value>, EngineError> {
        Err(EngineError::BadRequest("this service exports nothing".into()))
    }
    /// Every record with recovery owed or parked.
    async fn recoveries(&self) -> Result<Vec<Value>, EngineError>;
    /// Put a parked entry back into the recovery queue.
    async fn retry_recovery(&self, id: u64) -> Result<Value, EngineError>;
    /// A profile's cached catalog (`GET /v1/profiles/{p}/products`).
    async fn products(&self, profile: &str) -> Result<Value, EngineError> {
        Err(EngineError::UnknownProfile(profile.to_string()))
    }
    /// Resume a paused job (`POST /v1/jobs/{id}/resume`).
    async fn resume_job(&self, id: u64) -> Result<Value, EngineError> {
        Err(EngineError::NoRecord(id))
    }
    /// Close a recovery entry by hand with the outcome the vendor confirmed.
    async fn resolve_recovery(&self, _id: u64, _outcome: &str, _note: Option<&str>) -> Result<Value, EngineError> {
        Err(EngineError::BadRequest("this service resolves nothing".into()))
    }
    /// A new subscription to the event feed (one per `GET /v1/events` client).
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// `POST /v1/scans`: publish an injected scan; answers the `scan` event.
    async fn scan(&self, _device: Option<&str>, _text: &str) -> Result<Value, EngineError> {
        Err(EngineError::BadRequest("this service takes no scans".into()))
    }
}

#[async_trait::async_trait]
impl Service for Engine {
    async fn run(&self, profile: &str, operation: &str, body: Value, idempotency_key: Option<&str>) -> Result<Answer, EngineError> {
        Engine::run(self, profile, operation, body, idempotency_key).await
    }
    async fn status(&self) -> Value {
        Engine::status(self)
    }
    async fn journal(&self, q: &JournalQuery) -> Result<Vec<Value>, EngineError> {
        Engine::journal(self, q)
    }
    async fn journal_record(&self, id: u64) -> Result<Value, EngineError> {
        Engine::journal_record(self, id)
    }
    async fn journal_export(&self, from: &str, to: &str, after: u64, limit: usize) -> Result<Vec<Value>, EngineError> {
        Engine::export_page(self, from, to, after, limit).await
    }
    async fn recoveries(&self) -> Result<Vec<Value>, EngineError> {
        Engine::recoveries(self)
    }
    async fn retry_recovery(&self, id: u64) -> Result<Value, EngineError> {
        Engine::retry_recovery(self, id).await
    }
    async fn products(&self, profile: &str) -> Result<Value, EngineError> {
        Engine::products(self, profile)
    }
    async fn resume_job(&self, id: u64) -> Result<Value, EngineError> {
        Engine::resume_job(self, id)
    }
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        Engine::subscribe(self)
    }
    async fn scan(&self, device: Option<&str>, text: &str) -> Result<Value, EngineError> {
        Engine::inject_scan(self, device, text)
    }
    async fn resolve_recovery(&self, id: u64, outcome: &str, note: Option<&str>) -> Result<Value, EngineError> {
        Engine::resolve_recovery(self, id, outcome, note).await
    }
}

/// Listeners the caller has already bound (so binding errors surface before the daemon reports ready).
#[derive(Debug, Default)]
pub struct Listeners {
    /// The Unix socket (the named pipe on Windows), trusted by file permissions (mode 0660): no token needed.
    pub unix: Option<LocalListener>,
    /// Loopback TCP: every request needs `Authorization: Bearer <token>`.
    pub tcp: Option<tokio::net::TcpListener>,
}

#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Bearer token for the TCP listener; required when a TCP listener is given.
    pub token: Option<Secret>,
    /// Larger request bodies get 413 (checked on `Content-Length` and while reading).
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the TCP listener (CORS); see [`cors`].
    pub allowed_origins: Vec<String>,
    /// Connection caps and read deadlines.
    pub limits: limits::ApiLimits,
    /// The daemon's config file, for the technician page's doctor run (none: the page says so).
    pub config_file: Option<std::path::PathBuf>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions { token: None, max_body_bytes: 64 * 1024, allowed_origins: Vec::new(), limits: limits::ApiLimits::default(), config_file: None }
    }
}

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot bind the API socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("cannot remove the stale API socket {path}: {source}")]
    Stale { path: PathBuf, source: std::io::Error },
    #[error("another process is serving on {0}; is posgate already running?")]
    InUse(PathBuf),
    #[error("cannot set mode 0660 on {path}: {source}")]
    Permissions { path: PathBuf, source: std::io::Error },
    #[error("a TCP listener needs a bearer token (set `token_file`)")]
    TcpWithoutToken,
    #[error("the API token must be non-empty UTF-8 text")]
    BadToken,
    #[error("no listener to serve on")]
    NoListener,
}

#[cfg(test)]
mod tests;
