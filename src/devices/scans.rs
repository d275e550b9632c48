//! Scan events for subscribers, and the in-memory store that holds a swiped card for 60 seconds under its scan id.
//!
//! The POS app sees a masked card and a scan id; an operation names that id (`"scan": "s_..."`) and
//! the daemon takes the card data from here. Track data thus never passes through the POS app and is
//! never written anywhere: it lives in this map until it is used or expires.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::time::Instant;

use super::classify::Suggestion;
use super::track::{Swipe, TrackError};

/// How long a swiped card can be used by an operation.
pub const CARD_TTL: Duration = Duration::from_secs(60);
/// How long an expired id is remembered (without its data) so its use gets "expired", not "unknown".
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Most cards held at once; the oldest goes first (a counter swipes a few per minute).
const MAX_HELD: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanKind {
    Barcode,
    Card,
}

/// One failed track, for the cashier's "swipe again".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackIssue {
    pub track: u8,
    #[serde(flatten)]
    pub error: TrackError,
    pub message: String,
}

/// What subscribers learn of a swipe: masked, never track data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardSummary {
    pub masked_pan: Option<String>,
    /// Luhn check of the PAN; informational (store cards may not use Luhn).
    pub luhn_ok: Option<bool>,
    /// Track numbers that parsed.
    pub tracks: Vec<u8>,
    pub errors: Vec<TrackIssue>,
    /// The card data can be used by an operation as `"scan": "<id>"` until it expires.
    pub held: bool,
}

impl CardSummary {
    pub fn of(swipe: &Swipe) -> Self {
        let pan = swipe.pan();
        CardSummary {
            masked_pan: pan.map(|p| p.masked()),
            luhn_ok: pan.map(|p| p.luhn_ok()),
            tracks: swipe.tracks_ok(),
            errors: swipe.errors().into_iter().map(|(track, error)| TrackIssue { track, message: error.to_string(), error }).collect(),
            held: pan.is_some(),
        }
    }
}

/// The `scan` event sent to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanEvent {
    pub id: String,
    pub device: String,
    pub kind: ScanKind,
    /// Symbology name (`EAN-13`, `QR Code`, `Magnetic stripe`), when known.
    pub symbology: Option<String>,
    /// The AIM identifier the scanner sent (`]E0`), if any.
    pub aim: Option<String>,
    /// The scanned text without AIM id; for cards the masked PAN (or empty when none was read).
    pub text: String,
    pub suggested: Option<Suggestion>,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<CardSummary>,
}

/// A swiped card held for an operation. `Debug` shows only the masked PAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCard {
    pub device: String,
    pub swipe: Swipe,
}

/// A new random scan id: `s_` and 16 hex digits.
pub fn new_scan_id() -> String {
    format!("s_{:016x}", rand::random::<u64>())
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScanError {
    #[error("scan {0} is unknown (never swiped here, or long gone)")]
    Unknown(String),
    #[error("scan {0} expired: a card swipe can be used for 60 seconds; swipe again")]
    Expired(String),
    #[error("scan {0} was already used: a card swipe pays for one operation only; swipe again")]
    Used(String),
}

enum Entry {
    Held {
        card: Box<HeldCard>,
        expires: Instant,
        seq: u64,
    },
    /// The data is gone; only the fact that the id existed is kept.
    Expired {
        forget_at: Instant,
    },
    /// An operation took the card; the id is remembered so a second use is refused as such.
    Used {
        forget_at: Instant,
    },
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    seq: u64,
}

/// Swiped cards by scan id, in memory only. Clone-cheap handle.
#[derive(Clone)]
pub struct ScanStore {
    inner: Arc<Mutex<Inner>>,
    ttl: Duration,
}

impl Default for ScanStore {
    fn default() -> Self {
        Self::new(CARD_TTL)
    }
}

impl std::fmt::Debug for ScanStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanStore").field("held", &self.held_count()).field("ttl", &self.ttl).finish()
    }
}

impl ScanStore {
    pub fn new(ttl: Duration) -> Self {
        ScanStore { inner: Arc::new(Mutex::new(Inner::default())), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every update is one insert/remove).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold a card under its scan event's id until the TTL passes.
    pub fn hold(&self, id: &str, card: HeldCard) {
        let now = Instant::now();
        let mut g = self.lock();
        purge_locked(&mut g, now);
        g.seq += 1;
        let seq = g.seq;
        g.map.insert(id.to_string(), Entry::Held { card: Box::new(card), expires: now + self.ttl, seq });
        let held = g.map.values().filter(|e| matches!(e, Entry::Held { .. })).count();
        if held > MAX_HELD {
            let oldest = g
                .map
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Held { seq, .. } => Some((*seq, k.clone())),
                    Entry::Expired { .. } | Entry::Used { .. } => None,
                })
                .min();
            if let Some((_, k)) = oldest {
                g.map.insert(k, Entry::Expired { forget_at: now + TOMBSTONE_TTL });
            }
        }
    }

    /// A look at the card, left in place (tests only: an operation must [`take`](Self::take) it).
    #[cfg(test)]
    pub fn get(&self, id: &str) -> Result<HeldCard, ScanError> {
        let mut g = self.lock();
        purge_locked(&mut g, Instant::now());
        match g.map.get(id) {
            Some(Entry::Held { card, .. }) => Ok(HeldCard::clone(card)),
            Some(Entry::Expired { .. }) => Err(ScanError::Expired(id.to_string())),
            Some(Entry::Used { .. }) => Err(ScanError::Used(id.to_string())),
            None => Err(ScanError::Unknown(id.to_string())),
        }
    }

    /// The card for an operation, removed: one swipe pays once, and a second use of the id (a
    /// replayed or double-clicked request) is refused as used rather than charging the card again.
    pub fn take(&self, id: &str) -> Result<HeldCard, ScanError> {
        let now = Instant::now();
        let mut g = self.lock();
        purge_locked(&mut g, now);
        match g.map.remove(id) {
            Some(Entry::Held { card, .. }) => {
                g.map.insert(id.to_string(), Entry::Used { forget_at: now + TOMBSTONE_TTL });
                Ok(*card)
            }
            Some(e) => {
                let err = match e {
                    Entry::Used { .. } => ScanError::Used(id.to_string()),
                    _ => ScanError::Expired(id.to_string()),
                };
                g.map.insert(id.to_string(), e);
                Err(err)
            }
            None => Err(ScanError::Unknown(id.to_string())),
        }
    }

    /// Drop expired card data now (the daemon calls this on a timer so data does not outlive its TTL).
    pub fn purge(&self) {
        purge_locked(&mut self.lock(), Instant::now());
    }

    pub fn held_count(&self) -> usize {
        self.lock().map.values().filter(|e| matches!(e, Entry::Held { .. })).count()
    }

    /// Purge every second until the store's last handle elsewhere is dropped.
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                purge_locked(&mut g, Instant::now());
            }
        })
    }
}

fn purge_locked(g: &mut Inner, now: Instant) {
    g.map.retain(|_, e| match e {
        Entry::Expired { forget_at } | Entry::Used { forget_at } => *forget_at > now,
        Entry::Held { .. } => true,
    });
    for e in g.map.values_mut() {
        if let Entry::Held { expires, .. } = e {
            if *expires <= now {
                // Replacing the entry drops the card; its TrackData overwrite their bytes on drop.
                *e = Entry::Expired { forget_at: now + TOMBSTONE_TTL };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::track::parse_swipe;

    fn card() -> HeldCard {
        HeldCard { device: "d".into(), swipe: parse_swipe(";6222021234567890123=25121010000?") }
    }

    #[test]
    fn ids_look_right() {
        let id = new_scan_id();
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("s_") && id[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_scan_id(), new_scan_id());
    }

    #[tokio::test(start_paused = true)]
    async fn cards_expire_after_sixty_seconds() {
        let store = ScanStore::default();
        store.hold("s_1", card());
        tokio::time::advance(Duration::from_secs(59)).await;
        let got = store.get("s_1").expect("still held");
        assert_eq!(got.swipe.pan().map(|p| p.expose()), Some("6222021234567890123"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.get("s_1"), Err(ScanError::Expired("s_1".into())));
        assert_eq!(store.take("s_1"), Err(ScanError::Expired("s_1".into())));
        assert_eq!(store.held_count(), 0);
        assert_eq!(store.get("s_2"), Err(ScanError::Unknown("s_2".into())));
        tokio::time::advance(TOMBSTONE_TTL).await;
        assert_eq!(store.get("s_1"), Err(ScanError::Unknown("s_1".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn take_is_once() {
        let store = ScanStore::default();
        store.hold("s_1", card());
        assert!(store.take("s_1").is_ok());
        assert_eq!(store.take("s_1"), Err(ScanError::Used("s_1".into())));
        assert_eq!(store.get("s_1"), Err(ScanError::Used("s_1".into())));
        assert_eq!(store.held_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn oldest_goes_when_full() {
        let store = ScanStore::default();
        for i in 0..=MAX_HELD {
            store.hold(&format!("s_{i}"), card());
        }
        assert_eq!(store.held_count(), MAX_HELD);
        assert!(matches!(store.get("s_0"), Err(ScanError::Expired(_))));
        assert!(store.get(&format!("s_{MAX_HELD}")).is_ok());
    }
}
