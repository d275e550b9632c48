//! The consignment backend through the real daemon against its strict simulator: submit, query, lost and garbage answers, no secret at rest.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::sim::consign::{ConsignSim, ConsignSimConfig, DEMO_AES_KEY, DEMO_SIGN_KEY};
use posgate::sim::faults::Fault;
use serde_json::{json, Value};

use crate::support::{scratch, wait_recovered, Daemon};

const SUBMIT: &str = "api/consignmentOrders";
const QUERY: &str = "api/searchOrders";
const CARD: &str = "6222021234567890123";
const SECRET: &str = "Card-Secret-777123";

struct ConsignWorld {
    dir: PathBuf,
    sim: Arc<ConsignSim>,
    config: PathBuf,
    socket: PathBuf,
}

impl Drop for ConsignWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shipped example profile against a fresh simulator (results held until a test finishes them).
async fn world(name: &str) -> ConsignWorld {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
    std::fs::write(dir.join("secrets/consign-sign-key.txt"), DEMO_SIGN_KEY).expect("key");
    std::fs::write(dir.join("secrets/consign-aes-key.txt"), DEMO_AES_KEY).expect("key");
    let sim = Arc::new(ConsignSim::new(ConsignSimConfig { finish_after: None, ..ConsignSimConfig::demo() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve_plain(listener, std::future::pending::<()>()));
    let profile = crate::support::fast_profile(posgate::demo::CONSIGN_PROFILE, "http://127.0.0.1:18447", &format!("http://{addr}"));
    std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
    std::fs::write(dir.join("terminal-profiles/consign.toml"), profile).expect("profile");
    let config = dir.join("posgate.toml");
    std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\nmax_body_bytes = 1048576\n").expect("config");
    let socket = dir.join("posgate.sock");
    ConsignWorld { dir, sim, config, socket }
}

fn submit() -> Value {
    json!({"productCode": "JD100", "cardNumber": CARD, "cardPassword": SECRET, "faceMoney": 10_000})
}

async fn record(c: &ApiClient, id: u64) -> Value {
    c.get(&format!("/v1/journal/{id}")).await.expect("record").1
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_card_is_accepted_awaiting_its_result_and_its_secret_is_never_at_rest() {
    let w = world("consign-submit").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let (s, v) = c.post("/v1/profiles/consign/submit", submit(), Some("sub-1")).await.expect("submit");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let order_id = v["reference"].as_str().expect("orderId").to_string();
    assert_eq!(v["result"]["status"], "processing", "{v}");
    let l = w.sim.ledger();
    // The platform decrypted exactly the secret the POS gave, and was told once.
    assert_eq!(l.secrets.get(&order_id).map(String::as_str), Some(SECRET));
    assert!(l.told_accepted.contains(&order_id));
    assert_eq!(l.by_path.get(SUBMIT), Some(&1));
    // The query of that order: found, processing.
    let (s, q) = c.post("/v1/profiles/consign/query", json!({"orderId": order_id}), None).await.expect("query");
    assert_eq!((s, q["status"].as_str(), q["result"]["status"].as_str()), (200, Some("approved"), Some("processing")), "{q}");
    // A second submit gets a new orderId: none is reused.
    let (_, v2) = c.post("/v1/profiles/consign/submit", submit(), Some("sub-2")).await.expect("submit");
    assert_eq!(v2["status"], "approved", "{v2}");
    assert_ne!(v2["reference"], v["reference"]);
    assert_eq!(w.sim.ledger().reused_order_ids, 0);
    // A POS may not name the orderId.
    let mut body = submit();
    body["orderId"] = json!("MINE1");
    let (s, e) = c.post("/v1/profiles/consign/submit", body, None).await.expect("submit");
    assert_eq!(s, 400, "{e}");
    let rec = record(&c, v["id"].as_u64().expect("id")).await.to_string();
    assert!(!rec.contains(CARD) && !rec.contains(SECRET), "{rec}");
    d.stop().await;
    // Neither the card number nor the secret is anywhere in the data dir (journal, logs, mark).
    let mut all = Vec::new();
    files(&w.dir.join("data"), &mut all);
    assert!(!all.is_empty());
    for f in all {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!contains(&bytes, SECRET.as_bytes()), "the card secret is in {}", f.display());
        assert!(!contains(&bytes, CARD.as_bytes()), "the card number is in {}", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_submit_answer_is_queried_and_settled_without_a_second_submit() {
    let w = world("consign-lost").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    w.sim.push_fault_on(SUBMIT, Fault::DropAfterCommit);
    let (_, v) = c.post("/v1/profiles/consign/submit", submit(), None).await.expect("submit");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "approved", "{r}");
    let l = w.sim.ledger();
    assert_eq!(l.by_path.get(SUBMIT), Some(&1), "a submit is never resent: {l:?}");
    assert!(l.by_path.get(QUERY).is_some_and(|n| *n >= 1), "{l:?}");
    assert_eq!(l.accepted.len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_never_arrived_ends_not_applied_after_its_query() {
    let w = world("consign-never").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    w.sim.push_fault_on(SUBMIT, Fault::Reset);
    let (_, v) = c.post("/v1/profiles/consign/submit", submit(), None).await.expect("submit");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "reversed", "{r}");
    let l = w.sim.ledger();
    assert!(l.accepted.is_empty(), "{l:?}");
    assert!(l.by_path.get(QUERY).is_some_and(|n| *n >= 1), "{l:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_is_unknown_and_the_query_finds_the_accepted_card() {
    let w = world("consign-garbage").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    w.sim.push_fault_on(SUBMIT, Fault::Garbage);
    let (_, v) = c.post("/v1/profiles/consign/submit", submit(), None).await.expect("submit");
    // Garbage is never believed nor a decline: the answer the POS gets is the query's finding.
    assert_ne!(v["status"], "declined", "garbage is never a decline: {v}");
    assert!(w.sim.ledger().by_path.get(QUERY).is_some_and(|n| *n >= 1), "the outcome was learned by query");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "approved", "{r}");
    assert_eq!(w.sim.ledger().by_path.get(SUBMIT), Some(&1));
    // An answer with a code outside the table is unknown too, and settled the same way.
    w.sim.push_fault_on(SUBMIT, Fault::AnswerWith(r#"{"code":7,"msg":"?"}"#));
    let (_, v) = c.post("/v1/profiles/consign/submit", submit(), None).await.expect("submit");
    assert_ne!(v["status"], "declined", "{v}");
    wait_recovered(&c, Duration::from_secs(20)).await;
    assert_eq!(record(&c, v["id"].as_u64().expect("id")).await["status"], "approved");
    d.stop().await;
}
