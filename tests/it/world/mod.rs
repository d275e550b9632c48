//! The vendor-neutral test world: what a backend's simulator, profile, POS traffic and host ledger offer the generic crash loop and soak.
//!
//! Each vendor has one file here implementing [`VendorWorld`]; the [`worlds!`] line at the bottom turns
//! each into the same two tests, `crash_loop_<vendor>` ([`crash::run`]: the real daemon SIGKILLed at
//! every crash point it offers) and `soak_<vendor>` ([`soak::run`]: 8 lanes on one terminal, lost answers
//! of every kind, SIGKILL every ~1.5 s). A new backend is one file and one line in that list.
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use posgate::client::ApiClient;
use rand::rngs::StdRng;
use serde_json::{json, Value};

pub mod campaign;
pub mod crash;
pub mod load;
pub mod matrix;
pub mod soak;

/// The answer statuses that end a POS request; anything else is asked again with the same key.
pub const FINAL: [&str; 4] = ["approved", "declined", "reversed", "failed"];

/// One POS request as the harness sends (and resends, with the same Idempotency-Key) it.
#[derive(Debug, Clone)]
pub struct PosRequest {
    /// The operation, as in `/v1/profiles/<profile>/<operation>`.
    pub operation: &'static str,
    pub body: Value,
    pub key: String,
    /// What the host's ledger knows the request by (the loyalty `registerTraceNo`, the lottery bar code).
    pub reference: String,
}

/// A request and what the POS was told: `answer` is the final answer, once there is one.
#[derive(Debug, Clone)]
pub struct Told {
    pub req: PosRequest,
    pub answer: Option<Value>,
    /// The journal id the daemon gave it, once seen.
    pub id: Option<u64>,
}

impl Told {
    pub fn new(req: PosRequest) -> Told {
        Told { req, answer: None, id: None }
    }

    /// The final status word, `""` while there is none.
    pub fn status(&self) -> &str {
        self.answer.as_ref().and_then(|a| a["status"].as_str()).unwrap_or("")
    }
}

/// The kinds of request a host answers, for losing the next answer of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Check-in, station login.
    SignOn,
    /// A POS's money request (consume, redeem).
    Financial,
    /// A reversal of one.
    Reversal,
    Settlement,
    /// Reports and reconciliation queries.
    Report,
}

/// What a run is for: the world may tune its profile and faults for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Crash,
    Soak,
}

/// One backend's test world: its simulator(s) on loopback TLS and a config folder whose profile points
/// at them, the POS traffic to send, the faults to inject and the ledger check to run afterwards.
#[allow(async_fn_in_trait)]
pub trait VendorWorld: Send + Sync + Sized + 'static {
    /// The vendor, for test names and logs.
    const NAME: &'static str;
    /// The profile name in the local API.
    const PROFILE: &'static str;
    /// The crash points this backend's requests reach (`src/testhook.rs`).
    const CRASH_POINTS: &'static [&'static str];
    /// The request kinds whose answers this host can lose.
    const KINDS: &'static [Kind];
    /// Lives of the short crash loop (CI); `POSGATE_CRASH_ITERS` overrides.
    const CRASH_LIVES: usize;
    /// Whether the backend has a settlement (`POST .../settle`, batches in status).
    const SETTLES: bool;

    /// Start the simulator(s) and write the config and profile.
    async fn start(name: &str, mode: Mode) -> Self;
    /// The daemon config file and the local API socket.
    fn config(&self) -> &Path;
    fn socket(&self) -> &Path;
    /// The `n`-th new POS request of the run (the `lane`-th POS lane sends it).
    fn next_request(&self, rng: &mut StdRng, lane: usize, n: usize) -> PosRequest;
    /// The same, for a world whose requests follow up earlier ones (a cancel names an approved pay's
    /// journal id): `told` is every request so far, with what the POS was told. By default [`Self::next_request`].
    fn next_request_after(&self, rng: &mut StdRng, lane: usize, n: usize, _told: &[Told]) -> PosRequest {
        self.next_request(rng, lane, n)
    }
    /// Lose the answer of the next request of this kind, after the host applied it.
    fn lose_next_answer(&self, kind: Kind);
    /// Lose the answers of `per_mille` of ALL requests (every kind), after applying them; 0: off.
    fn lose_answers(&self, per_mille: u32, seed: u64);
    /// A fault of this backend's own choosing for the coming requests (resets, 500s, garbage, delays).
    fn random_fault(&self, rng: &mut StdRng);
    /// The faults a soak runs under besides lost answers (slow answers and the like).
    fn soak_faults(&self, _seed: u64) {}
    /// A request beside the POS traffic whose answer the run does not judge (a report, a reconciliation),
    /// sent now and then so that lost answers of [`Kind::Report`] happen; `None`: the backend has none.
    fn side_request(&self) -> Option<(&'static str, Value)> {
        None
    }
    /// Queue a fault for the next money request (reversals included) at the host.
    fn push_fault(&self, f: posgate::sim::faults::Fault);
    /// Stop every fault.
    fn quiet(&self);
    /// The port of the simulator the daemon sends money requests to (for link faults: resets at accept,
    /// cut TLS handshakes, the listener down for a while).
    fn sim_port(&self) -> u16;
    /// Whether the daemon talks TLS to that simulator (a cut handshake is a TLS failure only then).
    const TLS: bool;
    /// A delay past the answer timeout of the profile [`Mode::Soak`] starts (one the world's holds outlast).
    const LATE: Duration;
    /// Fault-free requests at the end of a matrix cell, enough for the ledger check's "enough to prove anything".
    const MATRIX_TAIL: usize = 24;
    /// Compare the host's books with what the POS was told, after the run was drained and settled;
    /// every problem found, in words.
    async fn check_ledger(&self, told: &[Told], c: &ApiClient) -> Vec<String>;
}

/// Send (or resend, with the same key) request `i` once; true when its answer is final.
pub async fn send(c: &ApiClient, profile: &str, all: &Mutex<Vec<Told>>, i: usize) -> bool {
    let req = lock(all)[i].req.clone();
    let path = format!("/v1/profiles/{profile}/{}", req.operation);
    match c.post(&path, req.body.clone(), Some(&req.key)).await {
        // Connection refused or cut (the daemon died): the same key again, later.
        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        // Reversal pending, busy: wait for recovery, then the same key again.
        Ok((409, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
        Ok((_, v)) => {
            let done = {
                let mut all = lock(all);
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    all[i].id = Some(id);
                }
                let done = FINAL.contains(&v.get("status").and_then(Value::as_str).unwrap_or(""));
                if done {
                    all[i].answer = Some(v);
                }
                done
            };
            if done {
                return true;
            }
            // Pending, sign-on failed, shutting down: the same key again, later.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    false
}

/// Send the world's side request once, if it has one; its answer is not judged.
pub async fn side<W: VendorWorld>(w: &W, c: &ApiClient) {
    if let Some((op, body)) = w.side_request() {
        let _ = c.post(&format!("/v1/profiles/{}/{op}", W::PROFILE), body, None).await;
    }
}

/// The lock of the shared request list (a panicking lane must not hide the others' results).
pub fn lock(all: &Mutex<Vec<Told>>) -> std::sync::MutexGuard<'_, Vec<Told>> {
    all.lock().unwrap_or_else(|p| p.into_inner())
}

/// Poll the status until no recovery is owed; `false` when an entry is parked or `limit` passes.
pub async fn drain(c: &ApiClient, limit: Duration) -> (Value, bool) {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let st = c.get("/v1/status").await.map(|(_, v)| v).unwrap_or(Value::Null);
        let sum = |k: &str| -> u64 { st["profiles"].as_array().map(|a| a.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum()).unwrap_or(0) };
        let (owed, parked) = (sum("pending_recovery"), sum("needs_attention"));
        if owed == 0 && parked == 0 {
            return (st, true);
        }
        if parked > 0 || tokio::time::Instant::now() >= until {
            return (st, false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end of every run, faults off and a clean daemon: recovery drained, every request resent until
/// final (bounded), every batch settled (the open one and each the daemon lists unsettled), and the
/// final answer of each key fetched again. Problems found on the way, in words.
pub async fn finish<W: VendorWorld>(c: &ApiClient, all: &Mutex<Vec<Told>>) -> Vec<String> {
    let mut failures = Vec::new();
    let (st, drained) = drain(c, Duration::from_secs(60)).await;
    if !drained {
        failures.push(format!("recovery did not drain after the last restart: {}", st["profiles"][0]));
    }
    let n = lock(all).len();
    let until = tokio::time::Instant::now() + Duration::from_secs(90);
    for i in 0..n {
        while lock(all)[i].answer.is_none() && tokio::time::Instant::now() < until {
            send(c, W::PROFILE, all, i).await;
        }
    }
    let (st, drained) = drain(c, Duration::from_secs(30)).await;
    if !drained {
        failures.push(format!("recovery did not drain after the resends: {}", st["profiles"][0]));
    }
    if W::SETTLES {
        let settle = format!("/v1/profiles/{}/settle", W::PROFILE);
        let (_, status) = c.get("/v1/status").await.unwrap_or((0, Value::Null));
        let p = &status["profiles"][0];
        let mut bodies = Vec::new();
        if p["batch_open"].as_bool().unwrap_or(false) {
            bodies.push(json!({}));
        }
        for b in p["unsettled_batches"].as_array().into_iter().flatten() {
            if let Some(b) = b.as_str().or_else(|| b["batch"].as_str()) {
                bodies.push(json!({ "batch": b }));
            }
        }
        for body in bodies {
            let mut last = (0, Value::Null);
            for _ in 0..40 {
                match c.post(&settle, body.clone(), None).await {
                    Ok((s, v)) if s == 409 || s >= 500 => last = (s, v),
                    Ok(r) => {
                        last = r;
                        break;
                    }
                    Err(e) => last = (0, json!(e.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if last.0 != 200 || last.1["result"]["balanced"] == json!(false) {
                failures.push(format!("the final settlement {body} did not balance: {} {}", last.0, last.1));
            }
        }
    }
    let unanswered: Vec<String> = lock(all).iter().filter(|t| t.answer.is_none()).map(|t| format!("{} (journal id {:?})", t.req.key, t.id)).collect();
    if !unanswered.is_empty() {
        failures.push(format!("{} requests never got a final answer: {:?}", unanswered.len(), &unanswered[..unanswered.len().min(10)]));
    }
    // What the POS is told now, asking again with the same key, is what the ledger must show.
    let reqs: Vec<PosRequest> = lock(all).iter().map(|t| t.req.clone()).collect();
    for (i, r) in reqs.iter().enumerate() {
        let path = format!("/v1/profiles/{}/{}", W::PROFILE, r.operation);
        if let Ok((_, v)) = c.post(&path, r.body.clone(), Some(&r.key)).await {
            let before = lock(all)[i].answer.clone();
            if let Some(b) = before.filter(|b| b["status"] != v["status"]) {
                failures.push(format!("{} was told {} and now {}", r.key, b["status"], v["status"]));
            }
            if FINAL.contains(&v["status"].as_str().unwrap_or("")) {
                lock(all)[i].answer = Some(v);
            }
        }
    }
    let failed: Vec<Value> = lock(all).iter().filter(|t| t.status() == "failed").filter_map(|t| t.answer.clone()).take(5).collect();
    if !failed.is_empty() {
        eprintln!("{}: requests that ended failed (first 5): {failed:#?}", W::NAME);
    }
    failures.extend(traces_unique(c).await);
    failures
}

/// Every (batch, trace) of the daemon's journal is used once.
async fn traces_unique(c: &ApiClient) -> Vec<String> {
    let Some(records) = records_paged(c).await else { return vec!["the journal could not be read".into()] };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in &records {
        let trace = r["trace"].as_str().unwrap_or("").to_string();
        if !trace.is_empty() && !seen.insert((r["profile"].to_string(), r["batch"].to_string(), trace.clone())) {
            out.push(format!("trace {trace} reused in batch {} (record {})", r["batch"], r["id"]));
        }
    }
    out
}

/// A number from the environment, or the default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One line per world: its file, its type, and the names of its two generic tests.
macro_rules! worlds {
    ($($vendor:ident => $world:ident, $crash:ident, $soak:ident);* $(;)?) => {
        $(
            pub mod $vendor;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $crash() {
                crash::run::<$vendor::$world>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $soak() {
                soak::run::<$vendor::$world>().await;
            }
        )*
    };
}

worlds! {
    loyalty => LoyaltyWorld, crash_loop_loyalty, soak_loyalty;
    lottery => LotteryWorld, crash_loop_lottery, soak_lottery;
    wallet => WalletWorld, crash_loop_wallet, soak_wallet;
    scenic => ScenicWorld, crash_loop_scenic, soak_scenic;
    consign => ConsignWorld, crash_loop_consign, soak_consign;
}

/// Every journal record (paged); what was read before a page failed.
pub async fn all_records(c: &ApiClient) -> Vec<Value> {
    let mut out = Vec::new();
    let _ = read_pages(c, &mut out).await;
    out
}

/// Every journal record (paged), or `None` when a page could not be read.
async fn records_paged(c: &ApiClient) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    read_pages(c, &mut out).await.then_some(out)
}

/// Reads the journal newest first into `out`, a page at a time; false when a page could not be read.
async fn read_pages(c: &ApiClient, out: &mut Vec<Value>) -> bool {
    let mut before: Option<u64> = None;
    loop {
        let q = match before {
            Some(b) => format!("/v1/journal?limit=1000&before={b}"),
            None => "/v1/journal?limit=1000".to_string(),
        };
        let Ok((_, page)) = c.get(&q).await else { return false };
        let page = page["records"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return true;
        }
        before = page.last().and_then(|r| r["id"].as_u64());
        out.extend(page);
    }
}
