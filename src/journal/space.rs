//! The journal's health: a free-space guard that refuses new records before the disk fills, and the last write error, for status.
//!
//! sled 0.34 turns one failed write of its own files into a global error that refuses every later
//! operation until it is reopened, so the journal must not let sled run into ENOSPC: new records are
//! refused (with an error the POS sees) while the journal's filesystem has less than a reserve free, and
//! the checkpoint skips its sled flush meanwhile. The reserve is kept for what is owed: the outcome of a
//! record already sent to a backend is always written. Once space is back, the next check lets work in.
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::JournalError;

/// The default reserve: two 8 MiB log segments plus room for sled's own files.
pub const DEFAULT_RESERVE_BYTES: u64 = 32 * 1024 * 1024;
/// Free space is read again at most this often (more often is not needed: the reserve covers bursts).
const RECHECK: Duration = Duration::from_millis(100);

/// What `/v1/status` says about the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalHealth {
    /// `"ok"` or `"unavailable"`.
    pub state: &'static str,
    pub error: Option<String>,
    /// Bytes free on the journal's filesystem at the last check (`None` where unknown).
    pub free_bytes: Option<u64>,
}

impl JournalHealth {
    pub fn ok() -> JournalHealth {
        JournalHealth { state: "ok", error: None, free_bytes: None }
    }
}

struct Seen {
    at: Option<Instant>,
    free: Option<u64>,
    /// The last write or sync error, until a later write and sync succeed.
    io_error: Option<String>,
}

pub(super) struct Space {
    dir: PathBuf,
    reserve: u64,
    seen: Mutex<Seen>,
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
#[cfg(unix)]
#[allow(clippy::useless_conversion)] // the field types differ between Unix targets
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Not measured here (the Windows build has no guard; a write error still makes the journal unavailable).
#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

const MIB: u64 = 1024 * 1024;

impl Space {
    /// `POSGATE_JOURNAL_RESERVE_MB` overrides the reserve (0 turns the guard off).
    pub(super) fn new(dir: &Path) -> Space {
        let reserve = std::env::var("POSGATE_JOURNAL_RESERVE_MB").ok().and_then(|v| v.parse::<u64>().ok()).map(|m| m * MIB).unwrap_or(DEFAULT_RESERVE_BYTES);
        Space { dir: dir.to_path_buf(), reserve, seen: Mutex::new(Seen { at: None, free: None, io_error: None }) }
    }

    /// Free bytes now, read again when the last reading is older than `RECHECK` or was low.
    #[allow(clippy::disallowed_methods)] // a rate limit on statvfs, not engine time
    fn free(&self, seen: &mut Seen) -> Option<u64> {
        let stale = seen.at.is_none_or(|t| t.elapsed() >= RECHECK) || seen.free.is_some_and(|f| f < self.reserve);
        if stale {
            seen.free = free_bytes(&self.dir);
            seen.at = Some(Instant::now());
        }
        seen.free
    }

    fn low_message(&self, free: u64) -> String {
        format!(
            "journal unavailable: only {} MiB free on {}, the journal keeps a reserve of {} MiB for the outcomes it owes; free disk space and new requests are taken again",
            free / MIB,
            self.dir.display(),
            self.reserve / MIB
        )
    }

    /// Whether a new record may be written: refused while free space is below the reserve.
    pub(super) fn admit(&self) -> Result<(), JournalError> {
        let Ok(mut seen) = self.seen.lock() else { return Ok(()) };
        match self.free(&mut seen) {
            Some(free) if free < self.reserve => Err(JournalError::Unavailable(self.low_message(free))),
            _ => Ok(()),
        }
    }

    /// True while free space is below the reserve (the checkpoint waits: a sled flush could hit ENOSPC).
    pub(super) fn low(&self) -> bool {
        self.admit().is_err()
    }

    /// A write or sync failed: the journal is unavailable until one succeeds again.
    pub(super) fn failed(&self, what: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.io_error.is_none() {
                tracing::error!("journal unavailable: {what}");
            }
            seen.io_error = Some(what.to_string());
            // Read the free space again on the next request.
            seen.at = None;
        }
    }

    /// A write and its sync succeeded.
    pub(super) fn succeeded(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.io_error.take().is_some() {
                tracing::info!("journal available again");
            }
        }
    }

    pub(super) fn health(&self) -> JournalHealth {
        let Ok(mut seen) = self.seen.lock() else { return JournalHealth::ok() };
        let free = self.free(&mut seen);
        let low = free.filter(|f| *f < self.reserve).map(|f| self.low_message(f));
        let error = low.or_else(|| seen.io_error.as_ref().map(|e| format!("journal unavailable: {e}")));
        JournalHealth { state: if error.is_some() { "unavailable" } else { "ok" }, error, free_bytes: free }
    }
}
