//! The technician page in a real headless Chromium (driven over WebDriver) against the real daemon.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use posgate::sim::faults::Fault;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::{free_port, tcp_world};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One HTTP/1.1 exchange on a fresh loopback connection, as a browser or a forger would send it.
async fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    // Read the head, then Content-Length bytes (chromedriver keeps the connection open), else to EOF.
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| out.len() >= end + 4 + n) {
                    return out;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(60), read).await.unwrap_or_else(|_| panic!("no answer in time to {method} {path}"));
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    (status, headers, body.to_string())
}

/// A WebDriver session on chromedriver.
struct Driver {
    port: u16,
    session: String,
}

impl Driver {
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" { String::new() } else { body.to_string() };
        let (status, _, text) = http(self.port, method, &format!("/session/{}{path}", self.session), &[("Content-Type", "application/json")], &body).await;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "webdriver {method} {path}: {text}");
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": css }).to_string();
        let (status, _, text) = http(self.port, "POST", &format!("/session/{}/element", self.session), &[("Content-Type", "application/json")], &body).await;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status == 200).then(|| v["value"][ELEMENT].as_str().map(str::to_string)).flatten()
    }

    async fn wait_for(&self, css: &str) -> String {
        for _ in 0..200 {
            if let Some(e) = self.find(css).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {css} on the page: {}", self.text().await);
    }

    async fn text(&self) -> String {
        self.call("POST", "/execute/sync", json!({ "script": "return document.body.innerText", "args": [] })).await.as_str().unwrap_or("").to_string()
    }

    async fn wait_text(&self, needle: &str) {
        for _ in 0..200 {
            if self.text().await.contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {needle:?}: {}", self.text().await);
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.call("POST", &format!("/element/{e}/clear"), json!({})).await;
        self.call("POST", &format!("/element/{e}/value"), json!({ "text": text })).await;
    }

    async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({})).await;
    }
}

async fn start_chrome(dir: &Path) -> (tokio::process::Child, Driver) {
    let port = free_port();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = dir.join("chromium-profile");
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": { "binary": CHROMIUM, "args": args } } } });
    let (status, _, text) = http(port, "POST", "/session", &[("Content-Type", "application/json")], &caps.to_string()).await;
    assert_eq!(status, 200, "new webdriver session: {text}");
    let v: Value = serde_json::from_str(&text).expect("session json");
    let session = v["value"]["sessionId"].as_str().expect("session id").to_string();
    (child, Driver { port, session })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_technician_page_signs_in_shows_the_shop_and_resolves_a_lost_answer_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver; .ci/run does)");
        return;
    }
    let (world, port) = tcp_world("page", "").await;
    // Recovery parks after 3 failed attempts: a parked entry sees no attempt in flight when a person acts on it.
    let profile = world.dir.join("terminal-profiles/loyalty.toml");
    let text = std::fs::read_to_string(&profile).expect("profile");
    std::fs::write(&profile, text.replace("max_attempts = 50", "max_attempts = 3")).expect("profile");
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    let batch = st["profiles"][0]["batch"].as_str().expect("batch").to_string();
    let (chromedriver, b) = start_chrome(&world.dir).await;
    let page = format!("http://127.0.0.1:{port}/");

    // Signed out: the sign-in form, and a wrong token is refused.
    b.go(&page).await;
    b.wait_for("#token").await;
    b.type_into("#token", "not-the-token").await;
    b.click("#signin-button").await;
    b.wait_for("#signin-error").await;
    assert!(b.text().await.contains("Wrong token"));
    assert!(b.find("#profiles").await.is_none(), "a wrong token showed the page");

    // Signed in: the profile and its batch.
    b.type_into("#token", "test-token-123").await;
    b.click("#signin-button").await;
    b.wait_for("#profiles table").await;
    b.wait_text(&batch).await;
    assert!(b.text().await.contains("loyalty"));
    let html = b.call("GET", "/source", json!({})).await.as_str().unwrap_or("").to_string();
    assert!(!html.contains("test-token-123"), "the token is in the page");
    let cookie = b.call("GET", "/cookie/posgate_session", json!({})).await;
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    let session = cookie["value"].as_str().expect("session cookie").to_string();
    assert_eq!(session.len(), 64, "a 256-bit id in hex");

    // `posgate doctor` on the daemon's own config, from the page: the config loads, the daemon answers.
    b.click("#run-doctor").await;
    b.wait_for("#doctor-list").await;
    b.wait_text("daemon running").await;
    let text = b.text().await;
    assert!(text.contains("loads:") && text.contains("profile loyalty"), "the doctor run did not show the config's checks:\n{text}");

    // A swipe typed into the API shows in the live raw view as masked hex and text, the card number cut to 6+4.
    let swipe = ";6222020000000000008=25121011234567890?";
    for _ in 0..50 {
        let (s, v) = c.post("/v1/scans", json!({"device": "counter-msr", "text": swipe}), None).await.expect("scan");
        assert_eq!(s, 202, "{v}");
        if b.text().await.contains("counter-msr") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.wait_text(";622202*********0008=*****************?").await;
    b.wait_text("3b 36 32 32 32 30 32 2a 2a").await;
    assert!(!b.text().await.contains("6222020000000000008"), "a full card number reached the page");

    // A lost answer whose reversal keeps failing: an owed entry the page shows with its actions.
    world.sim.push_fault(Fault::DropAfterCommit);
    for _ in 0..400 {
        world.sim.push_fault(Fault::Http500);
    }
    let body = json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 500, "cashAmount": 0, "registerTraceNo": "PAGE1"});
    let _ = c.post("/v1/profiles/loyalty/consume", body, Some("page-lost-1")).await.expect("consume");
    let (_, owed) = c.get("/v1/reversals").await.expect("reversals");
    let id = owed["records"][0]["id"].as_u64().unwrap_or_else(|| panic!("no owed entry: {owed}"));
    b.wait_for(&format!("#approve-{id}")).await;

    // A forged POST with the session cookie but no CSRF token (or from another origin) changes nothing.
    let cookie_header = format!("posgate_session={session}");
    let origin = format!("http://127.0.0.1:{port}");
    let forged = [("Cookie", cookie_header.as_str()), ("Origin", origin.as_str()), ("Content-Type", "application/json")];
    let (s, _, text) = http(port, "POST", &format!("/page/reversals/{id}/resolve"), &forged, r#"{"outcome":"reversed"}"#).await;
    assert_eq!(s, 403, "{text}");
    let csrf = b.call("POST", "/execute/sync", json!({ "script": "return document.querySelector('meta[name=csrf]').content", "args": [] })).await;
    let csrf = csrf.as_str().expect("csrf").to_string();
    let cross = [("Cookie", cookie_header.as_str()), ("Origin", "http://evil.example"), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let (s, _, text) = http(port, "POST", &format!("/page/reversals/{id}/resolve"), &cross, r#"{"outcome":"reversed"}"#).await;
    assert_eq!(s, 403, "{text}");
    let (s, _, _) = http(port, "POST", &format!("/page/reversals/{id}/resolve"), &[("Origin", origin.as_str()), ("X-CSRF-Token", csrf.as_str())], "{}").await;
    assert_eq!(s, 401, "no session");
    let (_, rec) = c.get(&format!("/v1/journal/{id}")).await.expect("record");
    assert!(rec["recovery"].is_object(), "a forged request changed the record: {rec}");

    // Parked: the page says so; Retry puts it back in the queue (it fails and parks again: the host still answers 500).
    b.wait_text("parked (needs attention)").await;
    b.click(&format!("#retry-{id}")).await;
    b.wait_text(&format!("record {id} retried")).await;
    let parked_twice = "posgate_recovery_attempts_total{profile=\"loyalty\",result=\"parked\"} 2\n";
    for i in 0..200 {
        let r = c.request(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new()).await.expect("metrics");
        if String::from_utf8_lossy(&r.body).contains(parked_twice) {
            break;
        }
        assert!(i < 199, "the retried entry was not attempted and parked again: {}", String::from_utf8_lossy(&r.body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_text("parked (needs attention)").await;

    // The technician confirms with the vendor that it went through, and resolves it in the page.
    b.click(&format!("#approve-{id}")).await;
    b.wait_text(&format!("record {id} resolved: approved")).await;
    let (_, rec) = c.get(&format!("/v1/journal/{id}")).await.expect("record");
    assert_eq!(rec["status"], "approved", "{rec}");
    assert!(rec["recovery"].is_null(), "{rec}");
    let (_, owed) = c.get("/v1/reversals").await.expect("reversals");
    assert_eq!(owed["records"].as_array().map(Vec::len), Some(0), "{owed}");
    // The log tail shows the action; no full card number anywhere on the page.
    b.wait_text("technician page: recovery resolved by hand").await;
    assert!(!b.text().await.contains("6222020000000000008"), "a full card number reached the page");

    world.sim.clear_faults();
    let _ = b.call("DELETE", "", json!({})).await;
    drop(chromedriver);
    d.stop().await;
}
