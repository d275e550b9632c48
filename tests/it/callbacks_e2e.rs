//! Issue 9 end to end: the real simulators call the real daemon's callback listener back (and polling stands in when they cannot).
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::net::tls::TestPki;
use posgate::sim::consign::{ConsignSim, ConsignSimConfig, DEMO_AES_KEY, DEMO_SIGN_KEY};
use posgate::sim::scenic::{callback, ScenicSim, DEMO_APP_SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{scratch, Daemon};

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A test folder with a daemon config whose callback listener is on `port`, and the given profiles.
struct Site {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn site(name: &str, port: u16) -> Site {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
    std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
    let config = dir.join("posgate.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n[callbacks]\nlisten = \"127.0.0.1:{port}\"\nbody_timeout_ms = 2000\n"),
    )
    .expect("config");
    let socket = dir.join("posgate.sock");
    Site { dir, config, socket }
}

/// Root-level profile keys go before the first table.
fn with_root_keys(profile: &str, anchor: &str, keys: &str) -> String {
    profile.replacen(anchor, &format!("{anchor}\n{keys}"), 1)
}

/// The consign example profile against `sim_addr`, answering to `notify_url` (empty: no callbacks), in `results` mode.
async fn consign(s: &Site, retry_base: Duration, notify_url: &str, results: &str) -> Arc<ConsignSim> {
    std::fs::write(s.dir.join("secrets/consign-sign-key.txt"), DEMO_SIGN_KEY).expect("key");
    std::fs::write(s.dir.join("secrets/consign-aes-key.txt"), DEMO_AES_KEY).expect("key");
    let sim = Arc::new(ConsignSim::new(ConsignSimConfig { finish_after: None, retry_base, ..ConsignSimConfig::demo() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve_plain(listener, std::future::pending::<()>()));
    let profile = posgate::demo::CONSIGN_PROFILE
        .replace("http://127.0.0.1:18447", &format!("http://{addr}"))
        .replace("timeout_ms = 5000", "timeout_ms = 2000")
        .replace("backoff_initial_ms = 200", "backoff_initial_ms = 20")
        .replace("backoff_max_ms = 60000", "backoff_max_ms = 200")
        .replace("notify_url = \"\"", &format!("notify_url = \"{notify_url}\""));
    let profile = with_root_keys(&profile, "allow_plain_http = true", &format!("callback_allow = [\"127.0.0.1\"]\nresults = \"{results}\""))
        + "\n[poll]\ninitial_ms = 100\nmax_ms = 200\n";
    std::fs::write(s.dir.join("terminal-profiles/consign.toml"), profile).expect("profile");
    sim
}

/// A loopback relay between a simulator and the daemon's listener that records each answer's body and
/// withholds the answers of the first `lose` connections (the platform sees its attempt fail and retries).
#[derive(Clone, Default)]
struct Relay {
    answers: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    async fn start(upstream: u16, lose: usize) -> (Relay, u16) {
        let relay = Relay::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let answers = relay.answers.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok((mut down, _)) = listener.accept().await {
                n += 1;
                let withhold = n <= lose;
                let answers = answers.clone();
                tokio::spawn(async move {
                    let Some(req) = read_message(&mut down).await else { return };
                    let answer = match tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        Ok(mut up) => {
                            let _ = up.write_all(&req).await;
                            read_message(&mut up).await.unwrap_or_default()
                        }
                        Err(_) => Vec::new(),
                    };
                    let text = String::from_utf8_lossy(&answer).to_string();
                    answers.lock().unwrap().push(text.split("\r\n\r\n").nth(1).unwrap_or("").to_string());
                    if !withhold {
                        let _ = down.write_all(&answer).await;
                    }
                });
            }
        });
        (relay, port)
    }

    fn answers(&self) -> Vec<String> {
        self.answers.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 message (headers and a Content-Length body), or what came before the peer closed.
async fn read_message(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (!buf.is_empty()).then_some(buf),
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn card() -> Value {
    json!({"productCode": "JD100", "cardNumber": "6222021234567890123", "cardPassword": "Card-Secret-777123", "faceMoney": 10_000})
}

async fn record(c: &ApiClient, id: u64) -> Value {
    c.get(&format!("/v1/journal/{id}")).await.expect("record").1
}

async fn notifications(c: &ApiClient, profile: &str) -> Vec<Value> {
    let (_, v) = c.get(&format!("/v1/journal?profile={profile}")).await.expect("journal");
    v["records"].as_array().into_iter().flatten().filter(|r| r["class"] == "notification").cloned().collect()
}

/// Submit a card; its journal id and orderId.
async fn submit(c: &ApiClient) -> (u64, String) {
    let (s, v) = c.post("/v1/profiles/consign/submit", card(), None).await.expect("submit");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    (v["id"].as_u64().expect("id"), v["reference"].as_str().expect("orderId").to_string())
}

async fn until_final(c: &ApiClient, id: u64, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let r = record(c, id).await;
        if r["result"]["final"] == true {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "the order never became final: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consignment_result_called_back_twice_is_journaled_once_answered_success_twice_and_published() {
    let port = free_port();
    let (relay, relay_port) = Relay::start(port, 1).await;
    let s = site("e2e-consign-cb", port);
    let url = format!("http://127.0.0.1:{relay_port}/callbacks/consign/result");
    let sim = consign(&s, Duration::from_millis(200), &url, "callbacks").await;
    let d = Daemon::start(&s.config, &s.socket, &[]).await;
    let c = d.client.clone();
    let mut events = c.events().await.expect("events");
    let (id, order_id) = submit(&c).await;
    // The platform finishes the card and calls back; the first answer is lost, the retry is answered.
    sim.finish(&order_id).await;
    let l = sim.ledger();
    assert_eq!(l.callback_attempts.get(&order_id), Some(&2), "{l:?}");
    assert!(l.callback_confirmed.contains(&order_id), "{l:?}");
    assert_eq!(relay.answers(), ["success", "success"], "the same notification answered `success` both times");
    let o = record(&c, id).await;
    assert_eq!((o["result"]["final"].clone(), o["result"]["success"].clone()), (json!(true), json!(true)), "{o}");
    let notes = notifications(&c, "consign").await;
    assert_eq!(notes.len(), 1, "journaled once: {notes:?}");
    assert_eq!((notes[0]["state"].clone(), notes[0]["original"].clone()), (json!("approved"), json!(id)), "{notes:?}");
    let mut seen = 0;
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        if e.event == "notification" {
            assert_eq!(e.data["final"], true, "{}", e.data);
            seen += 1;
        }
    }
    assert_eq!(seen, 1, "one notification event for two deliveries");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_callbacks_unreachable_polling_brings_a_consignment_to_final() {
    // Polling only (no notifyUrl at all), and both with every callback lost on the way.
    for (name, results, lose) in [("e2e-consign-poll", "polling", false), ("e2e-consign-lost", "both", true)] {
        let port = free_port();
        let s = site(name, port);
        let url = if lose { format!("http://127.0.0.1:{port}/callbacks/consign/result") } else { String::new() };
        let sim = consign(&s, Duration::from_millis(50), &url, results).await;
        if lose {
            sim.lose_callbacks(3);
        }
        let d = Daemon::start(&s.config, &s.socket, &[]).await;
        let c = d.client.clone();
        let mut events = c.events().await.expect("events");
        let (id, order_id) = submit(&c).await;
        sim.finish(&order_id).await;
        let o = until_final(&c, id, Duration::from_secs(10)).await;
        assert_eq!(o["result"]["success"], true, "{o}");
        assert!(sim.ledger().callback_confirmed.is_empty(), "no callback reached the daemon");
        let notes = notifications(&c, "consign").await;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0]["result"]["source"], "poll", "{notes:?}");
        let mut seen = false;
        while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
            seen |= e.event == "notification";
            if seen {
                break;
            }
        }
        assert!(seen, "the POS sees the same event when the result was polled ({results})");
        d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenic_gate_check_in_called_back_shows_its_counts_on_the_order() {
    let port = free_port();
    let s = site("e2e-scenic", port);
    let pki = TestPki::ensure(&s.dir.join("pki")).expect("pki");
    std::fs::write(s.dir.join("secrets/scenic-app-secret.txt"), DEMO_APP_SECRET).expect("secret");
    let sim = Arc::new(ScenicSim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().expect("acceptor"), std::future::pending::<()>()));
    let example = posgate::backend::registry::find("scenic").expect("registered").example_text;
    let profile = with_root_keys(
        &example.replace("https://127.0.0.1:18446", &format!("https://{addr}")),
        "timeout_ms = 5000",
        "callback_allow = [\"127.0.0.1\"]\nresults = \"callbacks\"",
    );
    std::fs::write(s.dir.join("terminal-profiles/scenic.toml"), profile).expect("profile");
    let url = format!("http://127.0.0.1:{port}/callbacks/scenic/check-in");
    sim.set_callback(callback::Sender::new(&url, None, vec![Duration::from_millis(200)]).expect("sender"));
    let d = Daemon::start(&s.config, &s.socket, &[]).await;
    let c = d.client.clone();
    let mut events = c.events().await.expect("events");
    let order = json!({"product_code": "XXX", "take_phone": "13456451211", "date": "2030-04-01", "price": 600, "amount": 1800, "count": 3});
    let (st, v) = c.post("/v1/profiles/scenic/create-order", order, None).await.expect("create");
    assert_eq!((st, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (id, num) = (v["id"].as_u64().expect("id"), v["reference"].as_str().expect("order_num").to_string());
    // The first answer is lost: the platform sends it again and gets the document's answer.
    sim.push_callback_fault(callback::CallbackFault::LoseAnswer);
    assert!(sim.check_in_and_notify(&num, 2, "2030-04-01 10:00:00").await, "the channel acknowledged the check-in");
    assert_eq!(sim.ledger().callbacks_sent, 2);
    let o = record(&c, id).await;
    assert_eq!(
        (o["result"]["check_state"].as_str(), o["result"]["check_count"].as_u64(), o["result"]["no_check_count"].as_u64()),
        (Some("partly-checked"), Some(2), Some(1)),
        "{o}"
    );
    assert_eq!(notifications(&c, "scenic").await.len(), 1);
    let mut seen = 0;
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        seen += usize::from(e.event == "notification");
    }
    assert_eq!(seen, 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_consignment_callback_is_journaled_applies_it_once_and_answers_only_after() {
    let port = free_port();
    let (relay, relay_port) = Relay::start(port, 0).await;
    let s = site("e2e-consign-crash", port);
    let url = format!("http://127.0.0.1:{relay_port}/callbacks/consign/result");
    let sim = consign(&s, Duration::from_millis(1500), &url, "callbacks").await;
    let mut d = Daemon::start(&s.config, &s.socket, &[("POSGATE_CRASH_AT", "in_callback:1".to_string())]).await;
    let (id, order_id) = submit(&d.client).await;
    let finishing = {
        let sim = sim.clone();
        let order_id = order_id.clone();
        tokio::spawn(async move { sim.finish(&order_id).await })
    };
    // The daemon stops at the crash point with the notification durable and unanswered; then SIGKILL.
    let hit = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = d.stderr.recv().await {
            if l.starts_with("posgate-crashpoint in_callback") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(hit, Ok(true), "the crash point was reached");
    assert!(relay.answers().is_empty(), "nothing answered before the journal held it");
    d.kill9().await;
    let d = Daemon::start(&s.config, &s.socket, &[]).await;
    let c = d.client.clone();
    // The pending notification is applied at start-up; the platform's retry is answered `success`.
    let o = until_final(&c, id, Duration::from_secs(5)).await;
    assert_eq!(o["result"]["success"], true, "{o}");
    tokio::time::timeout(Duration::from_secs(10), finishing).await.expect("the platform's retries end").expect("join");
    let l = sim.ledger();
    assert!(l.callback_confirmed.contains(&order_id), "{l:?}");
    // The first attempt met the killed daemon (no answer); a retry met the restarted one.
    let answers = relay.answers();
    assert_eq!(answers.first().map(String::as_str), Some(""), "the killed daemon answered nothing: {answers:?}");
    assert_eq!(answers.iter().filter(|a| !a.is_empty()).collect::<Vec<_>>(), ["success"], "{answers:?}");
    let notes = notifications(&c, "consign").await;
    assert_eq!(notes.len(), 1, "applied once: {notes:?}");
    assert_eq!(notes[0]["state"], "approved", "{notes:?}");
    d.stop().await;
}
