//! The `[callbacks]` section: the listener for vendor notifications, who may reach it, and how late results arrive.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{line_of, ConfigError};

/// How results that arrive later (a gate check-in, a consignment's outcome) reach the shop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultsMode {
    /// Only the vendor's callbacks (the shop is reachable from the vendor).
    Callbacks,
    /// Only polling (the shop is behind NAT): the listener serves no path for this profile.
    Polling,
    /// Both; a callback and a poll of the same result are journaled once.
    #[default]
    Both,
}

impl ResultsMode {
    pub fn callbacks(self) -> bool {
        self != ResultsMode::Polling
    }
    pub fn polling(self) -> bool {
        self != ResultsMode::Callbacks
    }
}

/// The longest a profile may wait between two polls of one order: one hour.
pub const MAX_POLL_INTERVAL_MS: u64 = 3_600_000;

/// The polling schedule for orders awaiting a result: the first poll after `initial_ms`, doubling to `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollSettings {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for PollSettings {
    fn default() -> Self {
        PollSettings { initial_ms: 2_000, max_ms: 300_000 }
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`), for the callback source allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)),
                IpAddr::V6(v) => u128::from(v),
            }
        };
        let width: u32 = if self.addr.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
        (bits(ip) & mask) == (bits(self.addr) & mask)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.trim().parse().map_err(|e| format!("{s:?} is not an address or network: {e}"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => width,
            Some(p) => p.trim().parse::<u8>().ok().filter(|n| *n <= width).ok_or_else(|| format!("{s:?}: the prefix must be 0 to {width}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCallbacks {
    listen: Spanned<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(default = "default_callback_body")]
    max_body_bytes: usize,
    #[serde(default = "default_callback_header_ms")]
    header_timeout_ms: u64,
    #[serde(default = "default_callback_body_ms")]
    body_timeout_ms: u64,
    #[serde(default = "default_callback_conns")]
    max_connections: usize,
}

fn default_callback_body() -> usize {
    16 * 1024
}
fn default_callback_header_ms() -> u64 {
    5_000
}
fn default_callback_body_ms() -> u64 {
    5_000
}
fn default_callback_conns() -> usize {
    32
}

/// The vendors' callback listener (`[callbacks]` in the daemon config): separate from the POS API.
#[derive(Debug, Clone)]
pub struct CallbackListener {
    pub listen: std::net::SocketAddr,
    /// Certificate chain and key (PEM) when the listener speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_body_bytes: usize,
    /// From the connection (after TLS) to the end of the request headers.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body.
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl RawCallbacks {
    pub(crate) fn validate(self, path: &Path, text: &str, dir: &Path) -> Result<CallbackListener, ConfigError> {
        let line = Some(line_of(text, self.listen.span().start));
        let listen: std::net::SocketAddr =
            self.listen.get_ref().parse().map_err(|e| ConfigError::field(path, line, "callbacks.listen", format!("not an address: {e}")))?;
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let (c, k) = (dir.join(c), dir.join(k));
                for (f, name) in [(&c, "callbacks.tls_cert"), (&k, "callbacks.tls_key")] {
                    if !f.is_file() {
                        return Err(ConfigError::field(path, None, name, format!("{} does not exist", f.display())));
                    }
                }
                crate::secret::check_private(&k).map_err(|e| ConfigError::field(path, None, "callbacks.tls_key", e.to_string()))?;
                Some((c, k))
            }
            _ => return Err(ConfigError::field(path, None, "callbacks.tls_cert", "`tls_cert` and `tls_key` go together")),
        };
        if self.max_body_bytes == 0 || self.max_body_bytes > 1024 * 1024 {
            return Err(ConfigError::field(path, None, "callbacks.max_body_bytes", "must be from 1 to 1048576"));
        }
        for (v, name) in [(self.header_timeout_ms, "callbacks.header_timeout_ms"), (self.body_timeout_ms, "callbacks.body_timeout_ms")] {
            if v == 0 || v > 60_000 {
                return Err(ConfigError::field(path, None, name, "must be from 1 to 60000"));
            }
        }
        if self.max_connections == 0 || self.max_connections > 4096 {
            return Err(ConfigError::field(path, None, "callbacks.max_connections", "must be from 1 to 4096"));
        }
        Ok(CallbackListener {
            listen,
            tls,
            max_body_bytes: self.max_body_bytes,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_connections: self.max_connections,
        })
    }
}
