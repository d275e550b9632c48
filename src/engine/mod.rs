//! The vendor-neutral transaction engine: journal-before-send, trace/batch, recovery queue, totals.
pub mod types;

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

pub use types::*;

use crate::config::Profile;

/// What the engine needs to open.
pub struct EngineConfig {
    pub data_dir: std::path::PathBuf,
    pub profiles: Vec<Profile>,
}

/// An operation's answer for the POS app: HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub http_status: u16,
    pub body: Value,
}

pub struct Engine {
    events: broadcast::Sender<Event>,
}

impl Engine {
    pub async fn open(_cfg: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        todo!("engine open")
    }
    /// Run `operation` on `profile` with the POS body.
    pub async fn run(&self, _profile: &str, _operation: &str, _body: Value, _idempotency_key: Option<&str>) -> Result<Answer, EngineError> {
        todo!("engine run")
    }
    /// The `GET /v1/status` body: version, profiles, devices.
    pub fn status(&self) -> Value {
        todo!()
    }
    pub fn journal(&self, _q: &JournalQuery) -> Result<Vec<Value>, EngineError> {
        todo!()
    }
    pub fn journal_record(&self, _id: u64) -> Result<Value, EngineError> {
        todo!()
    }
    /// Every record with recovery owed or parked.
    pub fn recoveries(&self) -> Result<Vec<Value>, EngineError> {
        todo!()
    }
    /// Put a parked ("needs attention") entry back into the queue.
    pub fn retry_recovery(&self, _id: u64) -> Result<Value, EngineError> {
        todo!()
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
    /// Stop the recovery workers and make the journal durable.
    pub async fn shutdown(&self) {}
}
