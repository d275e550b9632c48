//! How many connections each local API listener may hold and how long a request may take to arrive.
//!
//! Any local user can open TCP connections to the loopback listener; without a cap they used up the
//! daemon's open files and the Unix socket (the POS apps' way in) went unanswered. Each listener has
//! its own cap, both sized below the process's `RLIMIT_NOFILE` with room left for the journal, the
//! backends and the devices, so a TCP flood can never take the files the Unix socket needs.
use std::time::Duration;

use serde::Deserialize;

/// The `[api]` table of the daemon config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Open connections on the loopback TCP listener at most; more wait in the kernel's backlog.
    pub max_tcp_connections: usize,
    /// Open connections on the Unix socket at most (its own count: TCP clients never use it up).
    pub max_unix_connections: usize,
    /// From a connection's start (or the end of its previous request) to the end of the request
    /// headers; an idle or silent connection is closed after this.
    pub header_timeout_ms: u64,
    /// The time a request body may take: this much, plus its length at `min_body_bytes_per_sec`.
    pub body_timeout_ms: u64,
    /// The slowest body accepted, in bytes per second (counted over the whole body, not per read).
    pub min_body_bytes_per_sec: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { max_tcp_connections: 256, max_unix_connections: 256, header_timeout_ms: 5_000, body_timeout_ms: 5_000, min_body_bytes_per_sec: 16 * 1024 }
    }
}

/// Open files kept for everything that is not a local API connection: the journal, backend
/// connections, devices, the callback listener's default 32 connections, the runtime itself.
pub const FD_RESERVE: u64 = 96;

/// The caps in force, after sizing against the open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub tcp: usize,
    pub unix: usize,
}

impl ApiLimits {
    /// Why these settings cannot be used, naming the field (for the config error).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (v, name) in [(self.max_tcp_connections, "api.max_tcp_connections"), (self.max_unix_connections, "api.max_unix_connections")] {
            if v == 0 || v > 65_536 {
                return Err((name, "must be from 1 to 65536".into()));
            }
        }
        for (v, name) in [(self.header_timeout_ms, "api.header_timeout_ms"), (self.body_timeout_ms, "api.body_timeout_ms")] {
            if v == 0 || v > 300_000 {
                return Err((name, "must be from 1 to 300000".into()));
            }
        }
        if self.min_body_bytes_per_sec == 0 {
            return Err(("api.min_body_bytes_per_sec", "must be above zero".into()));
        }
        Ok(())
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// The whole time allowed to read a body of `len` bytes (its `Content-Length`, or the body limit
    /// when it is sent chunked): a slow sender cannot hold a connection longer than this.
    pub fn body_deadline(&self, len: u64) -> Duration {
        let rate = self.min_body_bytes_per_sec.max(1);
        Duration::from_millis(self.body_timeout_ms).saturating_add(Duration::from_millis(len.saturating_mul(1000) / rate))
    }

    /// The configured caps, lowered to fit `nofile` open files: TCP at most half of what is left after
    /// [`FD_RESERVE`], the Unix socket at most a quarter, so the two together never reach the limit
    /// and the Unix socket always has files of its own. `None` (limit unknown or unlimited): as configured.
    pub fn caps(&self, nofile: Option<u64>) -> Caps {
        let configured = Caps { tcp: self.max_tcp_connections, unix: self.max_unix_connections };
        let Some(n) = nofile else { return configured };
        let budget = usize::try_from(n.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        Caps { tcp: configured.tcp.min(budget / 2).max(1), unix: configured.unix.min(budget / 4).max(1) }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, `None` when it cannot be read or is unlimited.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != nix::sys::resource::RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_under_the_open_file_limit_with_a_reserve() {
        let l = ApiLimits::default();
        assert_eq!(l.caps(None), Caps { tcp: 256, unix: 256 });
        assert_eq!(l.caps(Some(1024)), Caps { tcp: 256, unix: 232 });
        let c = l.caps(Some(256));
        assert_eq!(c, Caps { tcp: 80, unix: 40 });
        assert!((c.tcp + c.unix) as u64 + FD_RESERVE <= 256);
        assert_eq!(l.caps(Some(10)), Caps { tcp: 1, unix: 1 });
        assert_eq!(l.caps(Some(1_000_000)), Caps { tcp: 256, unix: 256 });
    }

    #[test]
    fn a_body_gets_a_base_time_plus_its_length_at_the_minimum_rate() {
        let l = ApiLimits::default();
        assert_eq!(l.body_deadline(0), Duration::from_secs(5));
        assert_eq!(l.body_deadline(64 * 1024), Duration::from_secs(9));
        assert!(l.body_deadline(u64::MAX) > Duration::from_secs(1_000_000));
        assert!(ApiLimits { min_body_bytes_per_sec: 0, ..l }.validate().is_err());
        assert!(ApiLimits { max_tcp_connections: 0, ..l }.validate().is_err());
        assert!(l.validate().is_ok());
    }
}
