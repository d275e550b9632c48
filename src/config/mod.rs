//! Raw TOML (daemon config and terminal profiles) turned into one validated config, errors naming file, line and field.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::model::TerminalIdentity;
use crate::secret::Secret;

mod callbacks;
pub(crate) use callbacks::RawCallbacks;
pub use callbacks::{CallbackListener, IpNet, PollSettings, ResultsMode, MAX_POLL_INTERVAL_MS};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {why}")]
    Io { path: PathBuf, why: String },
    #[error("{path}{}: field `{field}`: {why}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Field { path: PathBuf, line: Option<usize>, field: String, why: String },
    #[error("{path}: {why}")]
    Parse { path: PathBuf, why: String },
}

impl ConfigError {
    pub fn field(path: &Path, line: Option<usize>, field: &str, why: impl Into<String>) -> Self {
        ConfigError::Field { path: path.to_path_buf(), line, field: field.to_string(), why: why.into() }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

fn parse_toml<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // toml's message names the key; add the file and line in our own format.
        let line = e.span().map(|s| line_of(text, s.start));
        let msg = e.message().to_string();
        // toml names unknown and missing keys in backticks; for a bad value, the key is on the span's line.
        let named = |prefix: &str| msg.strip_prefix(prefix).and_then(|r| r.split('`').next()).map(str::to_string);
        let field = named("unknown field `")
            .or_else(|| named("missing field `"))
            .or_else(|| {
                let l = line?;
                let src = text.lines().nth(l - 1)?;
                let (key, _) = src.split_once('=')?;
                Some(key.trim().trim_start_matches('[').trim_end_matches(']').to_string())
            })
            .unwrap_or_else(|| "(syntax)".to_string());
        ConfigError::Field { path: path.to_path_buf(), line, field, why: msg }
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Io { path: path.to_path_buf(), why: e.to_string() })
}

/// Retry and parking settings for the recovery queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySettings {
    /// Attempts before an entry is parked as "needs attention".
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        RecoverySettings { max_attempts: 12, backoff_initial_ms: 200, backoff_max_ms: 60_000 }
    }
}

/// Bounds on the money a POS request may name, per profile (`[limits]`).
///
/// A zero amount is a mistake at the counter (and the vendors approve it), an absurd one a typo
/// or an attack that would also overflow batch totals; both are refused before anything is
/// journaled, with the field named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Smallest amount an operation that charges an amount may name, in fen.
    pub min_amount_fen: i64,
    /// Largest amount any money field may name (and the most a list of amounts may add up to), in fen.
    pub max_amount_fen: i64,
}

impl Default for Limits {
    fn default() -> Self {
        // 100,000 yuan: far above a store counter's sale, far below any overflow.
        Limits { min_amount_fen: 1, max_amount_fen: 10_000_000 }
    }
}

/// The largest `max_amount_fen` a profile may set: 10^12 yuan, so that even millions of such amounts
/// add up in an `i64` batch total.
pub const MAX_AMOUNT_CEILING_FEN: i64 = 100_000_000_000_000;

impl Limits {
    /// Check one money field; `charged` says the operation charges this amount (so it must reach the
    /// minimum), otherwise only the maximum applies (0 is fine for a part of a payment, say).
    /// The error says why, for the caller to put after the field's name.
    pub fn check(&self, fen: i64, charged: bool) -> Result<(), String> {
        if fen < 0 {
            return Err("must not be negative".into());
        }
        if charged && fen < self.min_amount_fen {
            return Err(format!("is {fen} fen; must be at least {} fen (the profile's `limits.min_amount_fen`)", self.min_amount_fen));
        }
        if fen > self.max_amount_fen {
            return Err(format!("is {fen} fen; must be at most {} fen (the profile's `limits.max_amount_fen`)", self.max_amount_fen));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Spanned<String>,
    backend: Spanned<String>,
    base_url: Spanned<String>,
    /// Permits an `http://` base_url: for vendors whose documents give only plain-HTTP endpoints and
    /// protect their payloads with signatures and encryption instead.
    #[serde(default)]
    allow_plain_http: bool,
    ca_file: Option<Spanned<String>>,
    /// A client certificate (PEM chain) for vendors that require mutual TLS; needs `client_key`.
    client_cert: Option<Spanned<String>>,
    /// The client certificate's private key (PEM).
    client_key: Option<Spanned<String>>,
    store: String,
    terminal: String,
    #[serde(default = "default_operator")]
    operator: String,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    /// The TLS handshake's own timeout; the connect timeout when absent.
    #[serde(default)]
    tls_timeout_ms: Option<u64>,
    /// The largest answer read from the backend; a longer one is not read on (outcome unknown).
    #[serde(default = "default_max_answer")]
    max_answer_bytes: usize,
    #[serde(default)]
    recovery: RecoverySettings,
    #[serde(default)]
    limits: Limits,
    /// name -> file path holding the secret (relative to the profile's folder).
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<String>>,
    /// Backend-specific options, read by the backend.
    #[serde(default)]
    options: toml::Table,
    /// Patterns that tag a scan with this profile and the operation it suggests.
    #[serde(default)]
    scan_rules: Vec<crate::devices::ScanRule>,
    /// Source addresses (`"127.0.0.1"`, `"10.0.0.0/8"`) the callback listener accepts for this profile.
    #[serde(default)]
    callback_allow: Vec<Spanned<String>>,
    /// How results that arrive later reach this terminal: `callbacks`, `polling` or `both`.
    #[serde(default)]
    results: ResultsMode,
    #[serde(default)]
    poll: PollSettings,
}

fn default_operator() -> String {
    "01".into()
}
fn default_connect_ms() -> u64 {
    3_000
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_answer() -> usize {
    crate::net::client::DEFAULT_MAX_ANSWER_BYTES
}
/// No profile may allow answers above this (a vendor answer is a few KB; an upload report a few MB).
const MAX_ANSWER_CEILING: usize = 64 * 1024 * 1024;

/// One terminal bound to one backend.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// The backend kind, checked against `backend::registry` where profiles are loaded and built.
    pub backend: String,
    /// The line of `backend =`, for the registry check's error.
    pub backend_line: Option<usize>,
    pub base_url: String,
    /// True when `base_url` is `http://` (permitted only by `allow_plain_http = true`): no TLS at all,
    /// so `doctor` and the status output say so.
    pub plain_http: bool,
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM paths) for mutual TLS, both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub identity: TerminalIdentity,
    /// TCP connect to the backend.
    pub connect_timeout: Duration,
    /// The TLS handshake after TCP connected (`tls_timeout_ms`, default the connect timeout).
    pub tls_timeout: Duration,
    /// From writing a request to the end of its answer.
    pub timeout: Duration,
    /// The largest answer read from the backend (`max_answer_bytes`, default 1 MiB).
    pub max_answer_bytes: usize,
    pub recovery: RecoverySettings,
    /// Money bounds for POS requests (`[limits]`).
    pub limits: Limits,
    pub secrets: BTreeMap<String, Secret>,
    /// Where each secret came from (for `posgate doctor`'s permission check).
    pub secret_files: BTreeMap<String, PathBuf>,
    pub options: toml::Table,
    /// Scan classification rules, with this profile filled in.
    pub scan_rules: Vec<crate::devices::ScanRule>,
    /// The file it came from, for error messages.
    pub source: PathBuf,
    /// Source networks the callback listener accepts for this profile (empty: none).
    pub callback_allow: Vec<IpNet>,
    /// Callbacks, polling or both, for results that arrive later.
    pub results: ResultsMode,
    /// The polling schedule (`[poll]`).
    pub poll: PollSettings,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Profile, ConfigError> {
        let raw: RawProfile = parse_toml(path, text)?;
        let at = |s: &std::ops::Range<usize>| Some(line_of(text, s.start));
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = raw.name.get_ref().clone();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ConfigError::field(path, at(&raw.name.span()), "name", "must be non-empty ASCII letters, digits, '-' or '_'"));
        }
        // The kind is checked against the registry where profiles are loaded (`backend::registry`), so
        // config depends on no backend.
        let backend = raw.backend.get_ref().clone();
        let base_url = raw.base_url.get_ref().trim_end_matches('/').to_string();
        let base_at = at(&raw.base_url.span());
        let plain_http = match url::Url::parse(&base_url) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => false,
            Ok(u) if u.scheme() == "http" && u.host().is_some() && raw.allow_plain_http => true,
            Ok(u) if u.scheme() == "http" && u.host().is_some() => {
                return Err(ConfigError::field(
                    path,
                    base_at,
                    "base_url",
                    "is plain http:// (unencrypted); set `allow_plain_http = true` in this profile if the vendor offers only http://",
                ))
            }
            Ok(_) if raw.allow_plain_http => return Err(ConfigError::field(path, base_at, "base_url", "must be an https:// or http:// URL with a host")),
            Ok(_) => return Err(ConfigError::field(path, base_at, "base_url", "must be an https:// URL with a host")),
            Err(e) => return Err(ConfigError::field(path, base_at, "base_url", format!("not a URL: {e}"))),
        };
        let existing = |f: &Spanned<String>, field: &str| -> Result<PathBuf, ConfigError> {
            let p = dir.join(f.get_ref());
            if !p.is_file() {
                return Err(ConfigError::field(path, at(&f.span()), field, format!("{} does not exist", p.display())));
            }
            Ok(p)
        };
        let ca_file = raw.ca_file.as_ref().map(|f| existing(f, "ca_file")).transpose()?;
        let client_cert = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(_), _) | (_, Some(_)) if plain_http => {
                return Err(ConfigError::field(path, base_at, "client_cert", "a client certificate needs an https:// base_url"));
            }
            (Some(c), Some(k)) => {
                let key = existing(k, "client_key")?;
                crate::secret::check_private(&key).map_err(|e| ConfigError::field(path, at(&k.span()), "client_key", e.to_string()))?;
                Some((existing(c, "client_cert")?, key))
            }
            (Some(c), None) => return Err(ConfigError::field(path, at(&c.span()), "client_key", "required with `client_cert`")),
            (None, Some(k)) => return Err(ConfigError::field(path, at(&k.span()), "client_cert", "required with `client_key`")),
        };
        let mut secrets = BTreeMap::new();
        let mut secret_files = BTreeMap::new();
        for (k, f) in &raw.secrets {
            let p = dir.join(f.get_ref());
            secret_files.insert(k.clone(), p.clone());
            let secret = crate::secret::read_file(&p).map_err(|e| ConfigError::field(path, at(&f.span()), &format!("secrets.{k}"), e.to_string()))?;
            secrets.insert(k.clone(), secret);
        }
        if raw.timeout_ms == 0 || raw.connect_timeout_ms == 0 {
            return Err(ConfigError::field(path, None, "timeout_ms", "timeouts must be above zero"));
        }
        let Limits { min_amount_fen: min, max_amount_fen: max } = raw.limits;
        if min < 1 || max < min || max > MAX_AMOUNT_CEILING_FEN {
            return Err(ConfigError::field(
                path,
                None,
                "limits",
                format!("need 1 <= min_amount_fen <= max_amount_fen <= {MAX_AMOUNT_CEILING_FEN}; got {min} and {max}"),
            ));
        }
        let tls_timeout_ms = raw.tls_timeout_ms.unwrap_or(raw.connect_timeout_ms);
        if tls_timeout_ms == 0 {
            return Err(ConfigError::field(path, None, "tls_timeout_ms", "timeouts must be above zero"));
        }
        if raw.max_answer_bytes == 0 || raw.max_answer_bytes > MAX_ANSWER_CEILING {
            return Err(ConfigError::field(path, None, "max_answer_bytes", format!("must be from 1 to {MAX_ANSWER_CEILING}")));
        }
        let scan_rules = raw.scan_rules.into_iter().map(|r| r.in_profile(&name)).collect();
        let mut callback_allow = Vec::new();
        for a in &raw.callback_allow {
            callback_allow.push(a.get_ref().parse::<IpNet>().map_err(|why| ConfigError::field(path, at(&a.span()), "callback_allow", why))?);
        }
        let PollSettings { initial_ms, max_ms } = raw.poll;
        if initial_ms < 10 || max_ms < initial_ms || max_ms > MAX_POLL_INTERVAL_MS {
            return Err(ConfigError::field(
                path,
                None,
                "poll",
                format!("need 10 <= initial_ms <= max_ms <= {MAX_POLL_INTERVAL_MS}; got {initial_ms} and {max_ms}"),
            ));
        }
        Ok(Profile {
            name,
            backend,
            backend_line: at(&raw.backend.span()),
            base_url,
            plain_http,
            ca_file,
            client_cert,
            identity: TerminalIdentity { store: raw.store, terminal: raw.terminal, operator: raw.operator },
            connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
            tls_timeout: Duration::from_millis(tls_timeout_ms),
            timeout: Duration::from_millis(raw.timeout_ms),
            max_answer_bytes: raw.max_answer_bytes,
            recovery: raw.recovery,
            limits: raw.limits,
            secrets,
            secret_files,
            options: raw.options,
            scan_rules,
            source: path.to_path_buf(),
            callback_allow,
            results: raw.results,
            poll: raw.poll,
        })
    }

    /// A secret named in `[secrets]`, or an error naming the profile and the missing key.
    pub fn secret(&self, key: &str) -> Result<&Secret, ConfigError> {
        self.secrets.get(key).ok_or_else(|| ConfigError::field(&self.source, None, &format!("secrets.{key}"), "required by this backend"))
    }

    /// A string option from `[options]`, or the default.
    pub fn option_str(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.options.get(key) {
            None => Ok(default.to_string()),
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ConfigError::field(&self.source, None, &format!("options.{key}"), "must be a string")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    data_dir: String,
    #[serde(default)]
    profiles_dir: Option<String>,
    #[serde(default)]
    unix_socket: Option<String>,
    /// Windows: the local API's named pipe (`\\.\pipe\posgate`), in place of `unix_socket`.
    #[serde(default)]
    pipe: Option<String>,
    #[serde(default)]
    tcp: Option<Spanned<String>>,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default = "default_body_limit")]
    max_body_bytes: usize,
    /// Browser origins (`http://localhost:8080`) whose pages may call the API over TCP (CORS).
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    /// Counter devices: serial ports by path, or USB matching rules.
    #[serde(default)]
    devices: Vec<crate::devices::DeviceConfig>,
    /// The vendors' callback listener; off when absent.
    #[serde(default)]
    callbacks: Option<RawCallbacks>,
    /// Connection caps and request deadlines of the local API (`[api]`).
    #[serde(default)]
    api: crate::api::limits::ApiLimits,
    /// Retention of the hot journal (`[journal]`).
    #[serde(default)]
    journal: crate::journal::archive::settings::JournalSettings,
}

fn default_body_limit() -> usize {
    64 * 1024
}

/// The validated daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    /// The local API endpoint: the Unix socket's path, or on Windows the named pipe's name (`pipe =`).
    pub unix_socket: Option<PathBuf>,
    pub tcp: Option<std::net::SocketAddr>,
    /// Bearer token for the TCP listener.
    pub token: Option<Secret>,
    /// The file it came from (for `posgate doctor`).
    pub token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the TCP API (CORS); empty: every request naming an origin is refused.
    pub allowed_origins: Vec<String>,
    pub profiles: Vec<Profile>,
    pub devices: Vec<crate::devices::DeviceConfig>,
    /// The vendors' callback listener (`[callbacks]`), when configured.
    pub callbacks: Option<CallbackListener>,
    /// Connection caps and request deadlines of the local API.
    pub api: crate::api::limits::ApiLimits,
    /// `[journal]`: how long settled batches stay in the hot journal.
    pub journal: crate::journal::archive::settings::JournalSettings,
    /// The file this config was read from (the technician page runs `doctor` on it).
    pub source: Option<PathBuf>,
}

impl DaemonConfig {
    /// Load `posgate.toml` and every `*.toml` in its profiles folder.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    /// `posgate.toml`'s text as if read from `path` (the token file and profiles folder it names are
    /// read relative to it): split from [`DaemonConfig::load`] so the parser can be fuzzed.
    pub fn parse(path: &Path, text: &str) -> Result<DaemonConfig, ConfigError> {
        let raw: RawDaemon = parse_toml(path, text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tcp = match &raw.tcp {
            Some(s) => {
                let a: std::net::SocketAddr =
                    s.get_ref().parse().map_err(|e| ConfigError::field(path, Some(line_of(text, s.span().start)), "tcp", format!("not an address: {e}")))?;
                if !a.ip().is_loopback() {
                    return Err(ConfigError::field(path, Some(line_of(text, s.span().start)), "tcp", "must be a loopback address"));
                }
                Some(a)
            }
            None => None,
        };
        let token = match &raw.token_file {
            Some(f) => {
                let t = crate::secret::read_file(&dir.join(f)).map_err(|e| ConfigError::field(path, None, "token_file", e.to_string()))?;
                Some(Secret::new(t.expose_str().map_err(|_| ConfigError::field(path, None, "token_file", "the token must be UTF-8 text"))?.as_bytes().to_vec()))
            }
            None => None,
        };
        if tcp.is_some() && token.is_none() {
            return Err(ConfigError::field(path, None, "token_file", "required when `tcp` is set"));
        }
        let mut allowed_origins = Vec::new();
        for o in &raw.allowed_origins {
            crate::api::cors::valid_origin(o.get_ref())
                .map_err(|e| ConfigError::field(path, Some(line_of(text, o.span().start)), "allowed_origins", format!("{:?} {e}", o.get_ref())))?;
            allowed_origins.push(o.get_ref().clone());
        }
        if !allowed_origins.is_empty() && tcp.is_none() {
            return Err(ConfigError::field(path, None, "allowed_origins", "needs `tcp` (browsers reach the API over TCP only)"));
        }
        let profiles_dir = dir.join(raw.profiles_dir.as_deref().unwrap_or("terminal-profiles"));
        let profiles = load_profiles(&profiles_dir)?;
        for d in &raw.devices {
            d.validate().map_err(|e| ConfigError::field(path, None, "devices", e.to_string()))?;
        }
        let mut ids = std::collections::BTreeSet::new();
        for d in &raw.devices {
            if !ids.insert(d.stable_id()) {
                return Err(ConfigError::field(path, None, "devices", format!("two devices have the id {:?}", d.stable_id())));
            }
        }
        // Rules are checked (regexes compiled) at load, so a bad rule stops the start with its profile named.
        for p in &profiles {
            crate::devices::Classifier::new(p.scan_rules.clone()).map_err(|e| ConfigError::field(&p.source, None, "scan_rules", e.to_string()))?;
        }
        let callbacks = raw.callbacks.map(|c| c.validate(path, text, dir)).transpose()?;
        raw.api.validate().map_err(|(field, why)| ConfigError::field(path, None, field, why))?;
        raw.journal.validate().map_err(|(field, why)| ConfigError::field(path, None, field, why))?;
        let unix_socket = crate::platform::local_endpoint(dir, raw.unix_socket, raw.pipe).map_err(|(field, why)| ConfigError::field(path, None, field, why))?;
        Ok(DaemonConfig {
            callbacks,
            data_dir: dir.join(raw.data_dir),
            unix_socket,
            tcp,
            token,
            token_file: raw.token_file.map(|f| dir.join(f)),
            max_body_bytes: raw.max_body_bytes,
            allowed_origins,
            profiles,
            devices: raw.devices,
            api: raw.api,
            journal: raw.journal,
            source: Some(path.to_path_buf()),
        })
    }
}

/// Every `*.toml` in a folder, sorted by file name; names must be unique.
pub fn load_profiles(dir: &Path) -> Result<Vec<Profile>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::Io { path: dir.to_path_buf(), why: e.to_string() })?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    let mut out: Vec<Profile> = Vec::new();
    for f in files {
        let p = Profile::load(&f)?;
        if let Some(prev) = out.iter().find(|q| q.name == p.name) {
            return Err(ConfigError::field(&f, None, "name", format!("{:?} is already used by {}", p.name, prev.source.display())));
        }
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_profile_names_file_line_and_field() {
        let p = Path::new("/x/loyalty.toml");
        let text = "name = \"a\"\nbackend = \"loyalty\"\nbase_url = \"http://h\"\nstore = \"1\"\nterminal = \"2\"\n";
        let e = Profile::parse(p, text).unwrap_err().to_string();
        assert!(e.contains("/x/loyalty.toml:3") && e.contains("base_url"), "{e}");
        let text = "name = \"a\"\nbackend = \"loyalty\"\nbase_url = \"https://h\"\nstore = 1\nterminal = \"2\"\n";
        let e = Profile::parse(p, text).unwrap_err().to_string();
        assert!(e.contains(":4") && e.contains("store"), "{e}");
        let text = "name = \"a\"\nbackend = \"loyalty\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\ncolour = 1\n";
        let e = Profile::parse(p, text).unwrap_err().to_string();
        assert!(e.contains(":6") && e.contains("colour"), "{e}");
    }

    #[test]
    fn limits_have_sane_defaults_and_bounds() {
        let p = Path::new("/x/loyalty.toml");
        let base = "name = \"a\"\nbackend = \"loyalty\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n";
        let d = Profile::parse(p, base).expect("valid").limits;
        assert_eq!((d.min_amount_fen, d.max_amount_fen), (1, 10_000_000));
        let l = Profile::parse(p, &format!("{base}[limits]\nmax_amount_fen = 50000\n")).expect("valid").limits;
        assert_eq!((l.min_amount_fen, l.max_amount_fen), (1, 50_000));
        for bad in ["min_amount_fen = 0", "max_amount_fen = 9223372036854775807", "min_amount_fen = 10\nmax_amount_fen = 5", "max = 1"] {
            let e = Profile::parse(p, &format!("{base}[limits]\n{bad}\n")).expect_err(bad).to_string();
            assert!(e.contains("limits") || e.contains("max"), "{bad}: {e}");
        }
        assert!(d.check(0, true).is_err_and(|e| e.contains("at least 1 fen")));
        assert!(d.check(0, false).is_ok());
        assert!(d.check(10_000_001, false).is_err_and(|e| e.contains("at most 10000000 fen")));
        assert!(d.check(-1, false).is_err());
        assert!(d.check(10_000_000, true).is_ok());
    }

    #[test]
    fn callback_allowlists_results_and_poll_settings_are_checked() {
        let p = Path::new("/x/c.toml");
        let base = "name = \"a\"\nbackend = \"consign\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n";
        let d = Profile::parse(p, base).expect("defaults");
        assert!(d.callback_allow.is_empty());
        assert_eq!((d.results, d.poll), (ResultsMode::Both, PollSettings::default()));
        let ok = Profile::parse(
            p,
            &format!("callback_allow = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\nresults = \"polling\"\n{base}[poll]\ninitial_ms = 50\nmax_ms = 100\n"),
        )
        .expect("valid");
        assert_eq!(ok.results, ResultsMode::Polling);
        assert!(!ok.results.callbacks() && ok.results.polling());
        assert_eq!((ok.poll.initial_ms, ok.poll.max_ms), (50, 100));
        let allows = |ip: &str| ok.callback_allow.iter().any(|n| n.contains(ip.parse().expect("ip")));
        assert!(allows("127.0.0.1") && allows("10.200.3.4") && allows("::1") && allows("::ffff:10.1.1.1"));
        assert!(!allows("127.0.0.2") && !allows("11.0.0.1") && !allows("::2"));
        let e = Profile::parse(p, &format!("callback_allow = [\"10.0.0.0/33\"]\n{base}")).expect_err("prefix").to_string();
        assert!(e.contains("c.toml:1") && e.contains("callback_allow"), "{e}");
        let e = Profile::parse(p, &format!("results = \"sometimes\"\n{base}")).expect_err("mode").to_string();
        assert!(e.contains("results"), "{e}");
        let e = Profile::parse(p, &format!("{base}[poll]\ninitial_ms = 5\n")).expect_err("too fast").to_string();
        assert!(e.contains("poll"), "{e}");
        let all: IpNet = "0.0.0.0/0".parse().expect("any");
        assert!(all.contains("8.8.8.8".parse().expect("ip")) && !all.contains("::1".parse().expect("ip")));
    }

    #[test]
    fn the_callback_listener_section_is_validated() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("terminal-profiles")).expect("profiles");
        let cfg = dir.path().join("posgate.toml");
        let write = |extra: &str| std::fs::write(&cfg, format!("data_dir = \"data\"\n{extra}")).expect("write");
        write("");
        assert!(DaemonConfig::load(&cfg).expect("no listener").callbacks.is_none());
        write("[callbacks]\nlisten = \"127.0.0.1:0\"\n");
        let c = DaemonConfig::load(&cfg).expect("listener").callbacks.expect("on");
        assert_eq!((c.max_body_bytes, c.max_connections, c.tls.is_none()), (16 * 1024, 32, true));
        write("[callbacks]\nlisten = \"nowhere\"\n");
        let e = DaemonConfig::load(&cfg).expect_err("address").to_string();
        assert!(e.contains("posgate.toml:3") && e.contains("callbacks.listen"), "{e}");
        write("[callbacks]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\n");
        assert!(DaemonConfig::load(&cfg).expect_err("half tls").to_string().contains("go together"));
        write("[callbacks]\nlisten = \"127.0.0.1:0\"\nbody_timeout_ms = 0\n");
        assert!(DaemonConfig::load(&cfg).expect_err("zero").to_string().contains("body_timeout_ms"));
    }

    #[test]
    fn plain_http_needs_the_explicit_option() {
        let p = Path::new("/x/wallet.toml");
        let head = "name = \"w\"\nbackend = \"wallet\"\n";
        let tail = "store = \"1\"\nterminal = \"2\"\n";
        let e = Profile::parse(p, &format!("{head}base_url = \"http://127.0.0.1:8080/api\"\n{tail}")).expect_err("plain without the option").to_string();
        assert!(e.contains("/x/wallet.toml:3") && e.contains("base_url") && e.contains("allow_plain_http = true"), "{e}");
        let ok = Profile::parse(p, &format!("{head}base_url = \"http://127.0.0.1:8080/api\"\nallow_plain_http = true\n{tail}")).expect("allowed");
        assert!(ok.plain_http);
        assert_eq!(ok.backend_line, Some(2));
        let tls = Profile::parse(p, &format!("{head}base_url = \"https://h\"\nallow_plain_http = true\n{tail}")).expect("https stays fine");
        assert!(!tls.plain_http);
        let e = Profile::parse(p, &format!("{head}base_url = \"ftp://h\"\nallow_plain_http = true\n{tail}")).expect_err("ftp").to_string();
        assert!(e.contains(":3") && e.contains("https:// or http://"), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_files_and_tls() {
        let dir = std::env::temp_dir().join(format!("posgate-cfg-cc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.pem"), "x").unwrap();
        crate::fsmode::write_private(dir.join("k.pem"), "x").unwrap();
        let p = dir.join("a.toml");
        let base = "name = \"a\"\nbackend = \"loyalty\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n";
        let ok = Profile::parse(&p, &format!("{base}client_cert = \"c.pem\"\nclient_key = \"k.pem\"\n")).expect("both");
        assert_eq!(ok.client_cert, Some((dir.join("c.pem"), dir.join("k.pem"))));
        let e = Profile::parse(&p, &format!("{base}client_cert = \"c.pem\"\n")).expect_err("no key").to_string();
        assert!(e.contains(":6") && e.contains("client_key"), "{e}");
        let e = Profile::parse(&p, &format!("{base}client_cert = \"c.pem\"\nclient_key = \"nope.pem\"\n")).expect_err("missing file").to_string();
        assert!(e.contains(":7") && e.contains("does not exist"), "{e}");
        let plain = base.replace("https://h", "http://h");
        let e =
            Profile::parse(&p, &format!("{plain}allow_plain_http = true\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\n")).expect_err("plain").to_string();
        assert!(e.contains("needs an https://"), "{e}");
    }
}
