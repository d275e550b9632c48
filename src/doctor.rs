//! `posgate doctor`: what a technician checks on site — config, secrets, backends, devices, the daemon.
use std::path::Path;

use crate::client::ApiClient;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<(Level, String)>,
}

impl Level {
    /// The word the technician page shows (and styles by).
    pub fn word(&self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

impl Report {
    fn push(&mut self, level: Level, text: impl Into<String>) {
        self.findings.push((level, text.into()));
    }
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|(l, _)| *l == Level::Fail)
    }
    pub fn render(&self) -> String {
        self.findings
            .iter()
            .map(|(l, t)| {
                format!(
                    "{} {t}\n",
                    match l {
                        Level::Ok => "ok  ",
                        Level::Warn => "WARN",
                        Level::Fail => "FAIL",
                    }
                )
            })
            .collect()
    }
}

fn mode_of(p: &Path) -> Option<u32> {
    std::fs::metadata(p).ok().map(|m| crate::platform::mode_bits(&m))
}

/// How doctor reaches the daemon: the socket (or TCP listener) in the config it checks, unless the
/// command line named one.
fn client_for(cfg: Option<&crate::config::DaemonConfig>, given: Option<&ApiClient>) -> ApiClient {
    if let Some(c) = given {
        return c.clone();
    }
    match cfg {
        Some(c) if c.unix_socket.is_some() => ApiClient::unix(c.unix_socket.clone().unwrap_or_default()),
        Some(c) if c.tcp.is_some() => ApiClient::tcp(c.tcp.map(|a| a.to_string()).unwrap_or_default(), c.token.clone()),
        _ => ApiClient::unix(crate::cli::DEFAULT_SOCKET),
    }
}

/// Run every check. Never prints a secret; contacts only the configured backends (handshake, no request).
/// `client`: the daemon as named on the command line; `None` asks the config where it listens.
pub async fn run(config_path: &Path, client: Option<&ApiClient>) -> Report {
    let mut r = Report::default();
    let cfg = match crate::backend::registry::load_config(config_path) {
        Ok(c) => {
            r.push(Level::Ok, format!("config {} loads: {} profile(s), {} device(s)", config_path.display(), c.profiles.len(), c.devices.len()));
            Some(c)
        }
        Err(e) => {
            r.push(Level::Fail, format!("config: {e}"));
            None
        }
    };
    let client = client_for(cfg.as_ref(), client);
    if let Some(cfg) = &cfg {
        if let Some(token) = &cfg.token_file {
            // The config loaded, so the token passed the start's check; say so (a refused one fails `config` above).
            match crate::secret::check_private(token) {
                Ok(()) => r.push(Level::Ok, format!("API token {} is private", token.display())),
                Err(e) => r.push(Level::Fail, e.to_string()),
            }
        }
        let key = cfg.data_dir.join("journal.key");
        match mode_of(&key) {
            Some(m) if m & 0o077 != 0 => r.push(Level::Warn, format!("{} is readable by others (mode {m:o}); want 600", key.display())),
            Some(_) => r.push(Level::Ok, format!("journal data key {} is private", key.display())),
            None => r.push(Level::Warn, format!("no journal data key yet at {} (made at first start)", key.display())),
        }
        for p in &cfg.profiles {
            r.push(Level::Ok, format!("profile {} ({}) → {}", p.name, p.backend, p.base_url));
            for (name, file) in &p.secret_files {
                match crate::secret::check_private(file) {
                    Ok(()) => r.push(Level::Ok, format!("profile {}: secret {name} present and private", p.name)),
                    Err(e) => r.push(Level::Fail, format!("profile {}: secret {name}: {e}", p.name)),
                }
            }
            for w in crate::backend::registry::warnings(p) {
                r.push(Level::Warn, w);
            }
            let probe = if p.plain_http {
                crate::net::client::tcp_probe(&p.base_url, p.connect_timeout).await.map(|()| "plain HTTP, no certificate to verify".to_string())
            } else {
                crate::net::client::tls_probe(&p.base_url, p.ca_file.as_deref(), p.client_cert.as_ref(), p.connect_timeout, p.tls_timeout).await
            };
            match probe {
                Ok(v) if p.plain_http => r.push(Level::Ok, format!("profile {}: backend reachable ({v})", p.name)),
                Ok(v) => r.push(Level::Ok, format!("profile {}: backend reachable, certificate verified ({v})", p.name)),
                Err(e) => r.push(Level::Fail, format!("profile {}: backend: {}", p.name, e.detail())),
            }
        }
        for d in &cfg.devices {
            r.push(Level::Ok, format!("device {} configured ({})", d.stable_id(), d.path.as_deref().unwrap_or("by USB match")));
        }
        callbacks(&mut r, cfg).await;
    }
    match crate::devices::serial::list_ports() {
        Ok(ports) if ports.is_empty() => r.push(Level::Ok, "no serial ports on this host"),
        Ok(ports) => {
            for p in ports {
                let usb = p
                    .usb
                    .map(|u| format!(" USB {:04x}:{:04x}{}", u.vid, u.pid, u.serial.map(|s| format!(" serial {s}")).unwrap_or_default()))
                    .unwrap_or_default();
                r.push(Level::Ok, format!("serial port {}{usb}", p.path));
            }
        }
        Err(e) => r.push(Level::Warn, format!("serial ports: {e}")),
    }
    match client.get("/v1/status").await {
        Ok((200, st)) => {
            r.push(Level::Ok, format!("daemon running, version {}", st["version"].as_str().unwrap_or("?")));
            for p in st["profiles"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("?");
                let owed = p["pending_recovery"].as_u64().unwrap_or(0);
                let parked = p["needs_attention"].as_u64().unwrap_or(0);
                let level = if parked > 0 {
                    Level::Fail
                } else if owed > 0 {
                    Level::Warn
                } else {
                    Level::Ok
                };
                r.push(
                    level,
                    format!(
                        "profile {name}: batch {} open={} online={} recovery owed {owed}, needs attention {parked}",
                        p["batch"], p["batch_open"], p["online"]
                    ),
                );
            }
            for d in st["devices"].as_array().into_iter().flatten() {
                let level = if d["state"] == "attached" { Level::Ok } else { Level::Warn };
                r.push(level, format!("device {} {}", d["device"].as_str().unwrap_or("?"), d["state"].as_str().unwrap_or("?")));
            }
        }
        Ok((s, v)) => r.push(Level::Fail, format!("daemon answered HTTP {s}: {v}")),
        Err(e) => r.push(Level::Warn, format!("daemon: {e}")),
    }
    r
}

/// The callback listener: bound (by the running daemon) or bindable, its TLS files load, and every profile
/// whose backend serves callbacks has a source allowlist (else its callbacks are all refused).
async fn callbacks(r: &mut Report, cfg: &crate::config::DaemonConfig) {
    let mut serving = Vec::new();
    for p in &cfg.profiles {
        let paths = crate::net::client::HttpsClient::new(&crate::net::client::HttpOptions::for_profile(p))
            .ok()
            .and_then(|http| crate::backend::build(p, http).ok())
            .map(|b| b.callbacks().iter().map(|s| s.path).collect::<Vec<_>>())
            .unwrap_or_default();
        if paths.is_empty() {
            continue;
        }
        let polls = if p.results.polling() { "; polled when no callback comes" } else { "" };
        match (&cfg.callbacks, p.results.callbacks()) {
            (_, false) => r.push(Level::Ok, format!("profile {}: results by polling only", p.name)),
            (None, true) => r.push(
                Level::Warn,
                format!("profile {}: its backend calls back ({}), but no [callbacks] listener is configured{polls}", p.name, paths.join(", ")),
            ),
            (Some(_), true) if p.callback_allow.is_empty() => r.push(
                Level::Fail,
                format!(
                    "profile {}: no `callback_allow` sources: every callback to /callbacks/{}/… is refused (set it, or `results = \"polling\"`)",
                    p.name, p.name
                ),
            ),
            (Some(_), true) => {
                let allow: Vec<String> = p.callback_allow.iter().map(ToString::to_string).collect();
                r.push(Level::Ok, format!("profile {}: callbacks at /callbacks/{}/{{{}}} from {}{polls}", p.name, p.name, paths.join(","), allow.join(", ")));
                serving.push(p.name.clone());
            }
        }
    }
    let Some(c) = &cfg.callbacks else { return };
    match crate::api::callbacks::bind(c).await {
        Ok(_) => r.push(
            Level::Ok,
            format!("callback listener {} bindable{} (the daemon is not listening there now)", c.listen, if c.tls.is_some() { ", TLS files load" } else { "" }),
        ),
        Err(crate::api::callbacks::CallbackListenerError::Bind { .. })
            if tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(c.listen)).await.is_ok_and(|s| s.is_ok()) =>
        {
            r.push(Level::Ok, format!("callback listener {} accepting connections", c.listen))
        }
        Err(e) => r.push(Level::Fail, e.to_string()),
    }
    if serving.is_empty() {
        r.push(Level::Warn, "the callback listener is configured, but no profile takes callbacks");
    }
}
