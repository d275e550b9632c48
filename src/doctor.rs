//! `posgate doctor`: what a technician checks on site — config, secrets, backends, devices, the daemon.
use std::os::unix::fs::PermissionsExt;
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
    std::fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o777)
}

/// Run every check. Never prints a secret; contacts only the configured backends (handshake, no request).
pub async fn run(config_path: &Path, client: &ApiClient) -> Report {
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
    if let Some(cfg) = &cfg {
        let key = cfg.data_dir.join("journal.key");
        match mode_of(&key) {
            Some(m) if m & 0o077 != 0 => r.push(Level::Warn, format!("{} is readable by others (mode {m:o}); want 600", key.display())),
            Some(_) => r.push(Level::Ok, format!("journal data key {} is private", key.display())),
            None => r.push(Level::Warn, format!("no journal data key yet at {} (made at first start)", key.display())),
        }
        for p in &cfg.profiles {
            r.push(Level::Ok, format!("profile {} ({}) → {}", p.name, p.backend, p.base_url));
            for (name, file) in &p.secret_files {
                match mode_of(file) {
                    Some(m) if m & 0o077 != 0 => {
                        r.push(Level::Warn, format!("profile {}: secret {name} ({}) is readable by others (mode {m:o}); want 600", p.name, file.display()))
                    }
                    Some(_) => r.push(Level::Ok, format!("profile {}: secret {name} present and private", p.name)),
                    None => r.push(Level::Fail, format!("profile {}: secret {name} ({}) is missing", p.name, file.display())),
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
