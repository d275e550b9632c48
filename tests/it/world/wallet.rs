//! The wallet world: the shipped example profile (plain HTTP) against the strict wallet platform, pays, cancels of approved pays, balances and card openings, and the platform's books.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::sim::faults::Fault;
use posgate::backend::wallet::crypto::TsigMode;
use posgate::sim::wallet::{WalletSim, WalletSimConfig, DEMO_APP_KEY, TEST_PRIVATE_KEY};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::{Kind, Mode, PosRequest, Told, VendorWorld};
use crate::support::scratch;

/// The demo accounts (see `WalletSimConfig::demo`) as the POS names them, their payment codes and the
/// account the platform books them on: one by mobile number, one deep, one of 50 yuan (declines for money).
const PAYERS: [(&str, &str, &str); 3] =
    [("13912345678", "123456", "2001755000000001"), ("2001755000000003", "000000", "2001755000000003"), ("2001755000000002", "654321", "2001755000000002")];

/// The interfaces a lost money answer rotates over.
const MONEY_PATHS: [&str; 4] = ["gw/offline/pay", "gw/offline/pay_cancel", "gw/offline/pay", "gw/offline/open_card"];

/// A wallet platform simulator (plain HTTP on loopback) and a config folder whose one profile (`wallet`) points at it.
pub struct WalletWorld {
    pub dir: PathBuf,
    pub sim: Arc<WalletSim>,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The simulator's port (its link faults: [`posgate::sim::server::link`]).
    pub port: u16,
    opening: BTreeMap<String, i64>,
    /// Journal ids of approved pays a cancel was already made for (one cancel per pay).
    cancelled: Mutex<HashSet<u64>>,
    /// Which money interface the next [`Kind::Financial`] lost answer hits.
    rotation: AtomicUsize,
}

impl Drop for WalletWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shipped example profile against a fresh simulator with `app_key` as the profile's appKey, short
/// timeouts and backoff.
pub async fn world(name: &str, app_key: &str) -> WalletWorld {
    world_signed(name, app_key, false).await
}

/// The same; `md5_tsig`: tsig = "md5-key" on both sides instead of the example's RSA-SHA1, whose
/// signing takes a quarter second in a debug build and would starve the soak of requests.
pub async fn world_signed(name: &str, app_key: &str, md5_tsig: bool) -> WalletWorld {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
    std::fs::write(dir.join("secrets/wallet-app-key.txt"), app_key).expect("key");
    std::fs::write(dir.join("secrets/wallet-tsig-key.pem"), TEST_PRIVATE_KEY).expect("pem");
    let mut cfg = WalletSimConfig::demo();
    if md5_tsig {
        cfg.tsig = TsigMode::Md5Key;
    }
    let sim = Arc::new(WalletSim::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Plain HTTP, as the vendor's document gives it (the profile says `allow_plain_http = true`).
    tokio::spawn(sim.clone().serve_plain(listener, std::future::pending::<()>()));
    let profile = crate::support::fast_profile(posgate::demo::WALLET_PROFILE, "http://127.0.0.1:18445", &format!("http://{addr}"))
        .replace("tsig = \"rsa-sha1\"", if md5_tsig { "tsig = \"md5-key\"" } else { "tsig = \"rsa-sha1\"" });
    std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
    std::fs::write(dir.join("terminal-profiles/wallet.toml"), profile).expect("profile");
    let config = dir.join("posgate.toml");
    std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\nmax_body_bytes = 1048576\n").expect("config");
    let socket = dir.join("posgate.sock");
    let opening = sim.ledger().balances;
    WalletWorld { dir, sim, config, socket, port: addr.port(), opening, cancelled: Mutex::new(HashSet::new()), rotation: AtomicUsize::new(0) }
}

fn pay_request(rng: &mut StdRng, reference: String, key: String) -> PosRequest {
    let (consumer, code, _) = match rng.gen_range(0..10) {
        0..=4 => PAYERS[0],
        5..=8 => PAYERS[1],
        _ => PAYERS[2],
    };
    // Now and then a wrong payment code: declined, nothing applied.
    let code = if rng.gen_bool(0.03) { "999999" } else { code };
    PosRequest {
        operation: "pay",
        body: json!({"consumerId": consumer, "paymentCode": code, "sum": rng.gen_range(1..3000), "productName": "0号柴油", "appOrderId": reference}),
        key,
        reference,
    }
}

/// The account a pay request books on.
fn account_of(body: &Value) -> &'static str {
    let consumer = body["consumerId"].as_str().unwrap_or_default();
    PAYERS.iter().find(|p| p.0 == consumer).map(|p| p.2).unwrap_or("?")
}

impl VendorWorld for WalletWorld {
    const NAME: &'static str = "wallet";
    const PROFILE: &'static str = "wallet";
    const CRASH_POINTS: &'static [&'static str] = &["before_send", "after_send", "after_outcome", "in_settle", "settle_sent"];
    /// The platform has no sign-on and no settlement (both are local): nothing of theirs to lose.
    const KINDS: &'static [Kind] = &[Kind::Financial, Kind::Reversal, Kind::Report];
    const CRASH_LIVES: usize = 30;
    /// Local settlement: batches close with the engine's totals.
    const SETTLES: bool = true;
    const TLS: bool = false;
    const LATE: Duration = Duration::from_millis(2500);
    /// Many of its requests are cancels and balance inquiries.
    const MATRIX_TAIL: usize = 48;

    /// The crash loop signs as the example profile does (RSA-SHA1); the soak with md5-key, for throughput.
    async fn start(name: &str, mode: Mode) -> Self {
        world_signed(name, DEMO_APP_KEY, mode == Mode::Soak).await
    }

    fn config(&self) -> &Path {
        &self.config
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn next_request(&self, rng: &mut StdRng, lane: usize, n: usize) -> PosRequest {
        self.next_request_after(rng, lane, n, &[])
    }

    /// Mostly pays; cancels of pays told approved (each at most once), balance inquiries, card openings.
    fn next_request_after(&self, rng: &mut StdRng, lane: usize, n: usize, told: &[Told]) -> PosRequest {
        let key = format!("w-{n}");
        let roll = rng.gen_range(0..20);
        if roll < 3 {
            let mut picked = self.cancelled.lock().unwrap_or_else(|p| p.into_inner());
            let open: Vec<u64> =
                told.iter().filter(|t| t.req.operation == "pay" && t.status() == "approved").filter_map(|t| t.id).filter(|id| !picked.contains(id)).collect();
            if !open.is_empty() {
                let id = open[rng.gen_range(0..open.len())];
                picked.insert(id);
                let reference = format!("C{lane}N{n:07}");
                return PosRequest { operation: "pay-cancel", body: json!({"original": id, "appOrderId": reference}), key, reference };
            }
        }
        match roll {
            3..=5 => {
                let reference = format!("B{lane}N{n:07}");
                PosRequest { operation: "balance", body: json!({"consumerId": PAYERS[1].0}), key, reference }
            }
            6 | 7 => {
                let reference = format!("O{lane}N{n:07}");
                let body = json!({"ID": "515411244445444444X", "name": "李四", "mobileNum": "13912345678", "appOrderId": reference,
                    "productId": "1012", "paySum": 150_000, "remark": "开卡"});
                PosRequest { operation: "open-card", body, key, reference }
            }
            _ => pay_request(rng, format!("P{lane}N{n:07}"), key),
        }
    }

    fn lose_next_answer(&self, kind: Kind) {
        match kind {
            Kind::Financial => {
                let n = self.rotation.fetch_add(1, Ordering::Relaxed);
                self.sim.push_fault_on(MONEY_PATHS[n % MONEY_PATHS.len()], Fault::DropAfterCommit);
            }
            Kind::Reversal => self.sim.push_fault_on("gw/offline/pay_undo", Fault::DropAfterCommit),
            Kind::Report => {
                self.sim.push_fault_on("gw/offline/get_account_info", Fault::DropAfterCommit);
                self.sim.push_fault_on("front/offline/download_product", Fault::DropAfterCommit);
            }
            // Local: nothing is sent.
            Kind::SignOn | Kind::Settlement => {}
        }
    }

    fn lose_answers(&self, per_mille: u32, seed: u64) {
        self.sim.set_random_drops(per_mille, seed);
    }

    /// A reset, a 500, garbage, a delay or a lost answer of the next money request.
    fn random_fault(&self, rng: &mut StdRng) {
        let f = match rng.gen_range(0..5) {
            0 => Fault::DropAfterCommit,
            1 => Fault::Reset,
            2 => Fault::Http500,
            3 => Fault::Garbage,
            _ => Fault::Delay(Duration::from_millis(rng.gen_range(1..50))),
        };
        self.sim.push_fault(f);
    }

    /// The product download (whose answer may be lost), beside the POS traffic.
    fn side_request(&self) -> Option<(&'static str, Value)> {
        Some(("products", json!({})))
    }

    fn push_fault(&self, f: Fault) {
        self.sim.push_fault(f);
    }

    fn sim_port(&self) -> u16 {
        self.port
    }

    fn quiet(&self) {
        self.sim.clear_faults();
    }

    /// Every pay told approved applied once with its sum and standing unless a cancel was told approved
    /// for it; nothing else applied that was not undone; each cancel told approved applied once and no
    /// other; each card opening told approved opened once and no other; the balances what the approvals
    /// say, also through the API; no signature, nonce or timestamp refused, no pay sent twice.
    async fn check_ledger(&self, told: &[Told], c: &ApiClient) -> Vec<String> {
        let mut failures = Vec::new();
        let ledger = self.sim.ledger();
        let approved = |op: &'static str| told.iter().filter(move |t| t.req.operation == op && t.status() == "approved");
        // The pays whose cancel the POS was told approved, by the pay's journal id.
        let cancelled_ids: HashSet<u64> = approved("pay-cancel").filter_map(|t| t.req.body["original"].as_u64()).collect();
        let pays: BTreeMap<&str, &Told> = told.iter().filter(|t| t.req.operation == "pay").map(|t| (t.req.reference.as_str(), t)).collect();
        let mut at_host: BTreeMap<&str, Vec<&posgate::sim::wallet::SimPay>> = BTreeMap::new();
        for p in &ledger.pays {
            at_host.entry(p.app_order_id.as_str()).or_default().push(p);
        }
        for (reference, applied) in &at_host {
            let Some(t) = pays.get(reference) else {
                failures.push(format!("the platform applied a pay no POS asked for: {applied:?}"));
                continue;
            };
            if applied.len() > 1 {
                failures.push(format!("pay {reference} applied {} times: {applied:?}", applied.len()));
            }
            let told_approved = t.status() == "approved";
            for p in applied {
                let want = if !told_approved {
                    "undone"
                } else if t.id.is_some_and(|id| cancelled_ids.contains(&id)) {
                    "cancelled"
                } else {
                    "applied"
                };
                if p.state != want {
                    failures.push(format!("pay {reference} (told {}) is {} at the platform, not {want}: {p:?}", t.status(), p.state));
                }
                if Some(p.sum) != t.req.body["sum"].as_i64() || p.account != account_of(&t.req.body) {
                    failures.push(format!("pay {reference} applied with another sum or account: {p:?} for {}", t.req.body));
                }
                if told_approved && t.answer.as_ref().and_then(|a| a["reference"].as_str()) != Some(p.order_id.as_str()) {
                    failures.push(format!("pay {reference} was told another orderId than the platform's {}: {:?}", p.order_id, t.answer));
                }
            }
        }
        let lost: Vec<&str> = approved("pay").map(|t| t.req.reference.as_str()).filter(|r| !at_host.contains_key(r)).collect();
        if !lost.is_empty() {
            failures.push(format!("{} pays told approved but never applied: {:?}", lost.len(), &lost[..lost.len().min(10)]));
        }
        let host_cancelled = ledger.pays.iter().filter(|p| p.state == "cancelled").count();
        if ledger.cancelled as usize != cancelled_ids.len() || host_cancelled != cancelled_ids.len() {
            failures.push(format!("{} cancels told approved, the platform applied {} ({} pays cancelled)", cancelled_ids.len(), ledger.cancelled, host_cancelled));
        }
        for t in approved("open-card") {
            if t.answer.as_ref().is_some_and(|a| a["result"]["merge"] == json!(true)) {
                failures.push(format!("open-card {} at a product's price was told merge: {:?}", t.req.reference, t.answer));
            }
        }
        let opens: BTreeMap<&str, &Told> = told.iter().filter(|t| t.req.operation == "open-card").map(|t| (t.req.reference.as_str(), t)).collect();
        for (app, n) in &ledger.opened_by_app {
            match opens.get(app.as_str()) {
                Some(t) if *n == 1 && t.status() == "approved" => {}
                other => failures.push(format!("card order {app} opened {n} times at the platform, told {:?}", other.map(|t| t.status()))),
            }
        }
        let unopened: Vec<&str> = approved("open-card").map(|t| t.req.reference.as_str()).filter(|r| !ledger.opened_by_app.contains_key(*r)).collect();
        if !unopened.is_empty() {
            failures.push(format!("{} card orders told approved but never opened: {unopened:?}", unopened.len()));
        }
        // The balances: the opening less every pay told approved and not cancelled, at the platform and through the API.
        let mut expected = self.opening.clone();
        for t in approved("pay").filter(|t| !t.id.is_some_and(|id| cancelled_ids.contains(&id))) {
            *expected.entry(account_of(&t.req.body).to_string()).or_default() -= t.req.body["sum"].as_i64().unwrap_or(0);
        }
        for (_, _, account) in PAYERS {
            let host = ledger.balances.get(account).copied();
            if host != expected.get(account).copied() {
                failures.push(format!("balance of {account}: platform {host:?}, approvals say {:?}", expected.get(account)));
            }
            match c.post("/v1/profiles/wallet/balance", json!({"consumerId": account}), None).await {
                Ok((200, v)) if v["result"]["balance"].as_i64() == host => {}
                other => failures.push(format!("the balance inquiry of {account} is not the platform's {host:?}: {other:?}")),
            }
        }
        if ledger.refused != 0 || ledger.nonce_reuses != 0 || ledger.repeated_pays != 0 {
            failures.push(format!(
                "the platform refused {} requests' envelopes (signature, nonce, timestamp), saw {} nonces reused and {} pays repeated",
                ledger.refused, ledger.nonce_reuses, ledger.repeated_pays
            ));
        }
        if approved("pay").count() <= 10 || cancelled_ids.is_empty() {
            failures.push(format!("too little approved to prove anything: {} pays, {} cancels", approved("pay").count(), cancelled_ids.len()));
        }
        eprintln!(
            "wallet platform: {} requests, {} pays ({} standing, {} undone, {} cancelled), {} undos of pays it never had, {} cards opened, by path {:?}",
            ledger.requests,
            ledger.pays.len(),
            ledger.pays_standing.len(),
            ledger.undone,
            ledger.cancelled,
            ledger.undo_unknown,
            ledger.opened,
            ledger.by_path
        );
        failures
    }
}
