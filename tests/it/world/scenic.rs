//! The scenic world: the shipped example profile over TLS against the strict ticket platform, creates and cancels of approved creates, and the platform's orders.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::net::tls::TestPki;
use posgate::sim::faults::Fault;
use posgate::sim::scenic::{ScenicSim, DEMO_APP_SECRET};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::{Kind, Mode, PosRequest, Told, VendorWorld};
use crate::support::scratch;

const CREATE: &str = "public/createOrder";
const CANCEL: &str = "public/cancelOrder";
/// A resident ID whose check digit is right (for the real-name product, one a ticket).
const RESIDENT_ID: &str = "11010519491231002X";

/// A scenic platform simulator (TLS on loopback, the test CA) and a config folder whose one profile (`scenic`) points at it.
pub struct ScenicWorld {
    pub dir: PathBuf,
    pub sim: Arc<ScenicSim>,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The simulator's port (its link faults: [`posgate::sim::server::link`]).
    pub port: u16,
    /// Journal ids of approved creates a cancel was already made for (one cancel per order).
    cancelled: Mutex<HashSet<u64>>,
}

impl Drop for ScenicWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A create of `count` tickets: mostly the plain product, now and then the real-name one (one ticket, a valid ID).
fn create_request(rng: &mut StdRng, reference: String, key: String) -> PosRequest {
    let body = if rng.gen_bool(0.15) {
        json!({"product_code": "REAL", "take_phone": "13456451211", "date": "2030-04-01", "price": 800, "amount": 800, "count": 1,
            "tourist_info": {RESIDENT_ID: "张三"}})
    } else {
        let count = rng.gen_range(1..=5);
        let price = rng.gen_range(1..=200) * 100;
        json!({"product_code": "XXX", "take_phone": "13456451211", "date": "2030-04-01", "price": price, "amount": price * count, "count": count})
    };
    PosRequest { operation: "create-order", body, key, reference }
}

impl VendorWorld for ScenicWorld {
    const NAME: &'static str = "scenic";
    const PROFILE: &'static str = "scenic";
    /// No settlement: the profile offers no `settle` operation.
    const CRASH_POINTS: &'static [&'static str] = &["before_send", "after_send", "after_outcome"];
    /// Creates and cancels are all the platform answers (no sign-on, no settlement, no query).
    const KINDS: &'static [Kind] = &[Kind::Financial, Kind::Reversal];
    const CRASH_LIVES: usize = 15;
    const SETTLES: bool = false;
    const TLS: bool = true;
    const LATE: Duration = Duration::from_millis(2500);

    async fn start(name: &str, _mode: Mode) -> Self {
        let dir = scratch(name);
        let pki = TestPki::ensure(&dir.join("pki")).expect("pki");
        std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
        std::fs::write(dir.join("secrets/scenic-app-secret.txt"), DEMO_APP_SECRET).expect("secret");
        let sim = Arc::new(ScenicSim::demo());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(sim.clone().serve(listener, pki.acceptor().expect("acceptor"), std::future::pending::<()>()));
        let example = posgate::backend::registry::find("scenic").expect("registered").example_text;
        let profile = crate::support::fast_profile(example, "https://127.0.0.1:18446", &format!("https://{addr}"));
        std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
        std::fs::write(dir.join("terminal-profiles/scenic.toml"), profile).expect("profile");
        let config = dir.join("posgate.toml");
        std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\nmax_body_bytes = 1048576\n").expect("config");
        let socket = dir.join("posgate.sock");
        ScenicWorld { dir, sim, config, socket, port: addr.port(), cancelled: Mutex::new(HashSet::new()) }
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

    /// Mostly creates; cancels of creates told approved (each at most once).
    fn next_request_after(&self, rng: &mut StdRng, lane: usize, n: usize, told: &[Told]) -> PosRequest {
        let key = format!("s-{n}");
        if rng.gen_range(0..20) < 5 {
            let mut picked = self.cancelled.lock().unwrap_or_else(|p| p.into_inner());
            let open: Vec<u64> =
                told.iter().filter(|t| t.req.operation == "create-order" && t.status() == "approved").filter_map(|t| t.id).filter(|id| !picked.contains(id)).collect();
            if !open.is_empty() {
                let id = open[rng.gen_range(0..open.len())];
                picked.insert(id);
                return PosRequest { operation: "cancel-order", body: json!({"original": id}), key, reference: format!("C{lane}N{n:07}") };
            }
        }
        create_request(rng, format!("O{lane}N{n:07}"), key)
    }

    fn lose_next_answer(&self, kind: Kind) {
        match kind {
            Kind::Financial => self.sim.push_fault_on(CREATE, Fault::DropAfterCommit),
            Kind::Reversal => self.sim.push_fault_on(CANCEL, Fault::DropAfterCommit),
            // The platform has none of these: nothing of theirs to lose.
            Kind::SignOn | Kind::Settlement | Kind::Report => {}
        }
    }

    fn lose_answers(&self, per_mille: u32, seed: u64) {
        self.sim.set_random_drops(per_mille, seed);
    }

    /// A reset, a 500, garbage, a delay or a lost answer of the next create or cancel.
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

    fn push_fault(&self, f: Fault) {
        self.sim.push_fault(f);
    }

    fn sim_port(&self) -> u16 {
        self.port
    }

    fn quiet(&self) {
        self.sim.clear_faults();
    }

    /// Every create told approved is one order at the platform (its answer delivered at least once), with
    /// the POS's amount and count, cancelled exactly when a cancel of it was told approved; the platform
    /// holds no order no POS was told approved; no create was refused for its envelope.
    async fn check_ledger(&self, told: &[Told], _c: &ApiClient) -> Vec<String> {
        let mut failures = Vec::new();
        let ledger = self.sim.ledger();
        let approved = |op: &'static str| told.iter().filter(move |t| t.req.operation == op && t.status() == "approved");
        let cancelled_ids: HashSet<u64> = approved("cancel-order").filter_map(|t| t.req.body["original"].as_u64()).collect();
        let mut by_order: BTreeMap<&str, Vec<&Told>> = BTreeMap::new();
        for t in approved("create-order") {
            match t.answer.as_ref().and_then(|a| a["reference"].as_str()) {
                Some(n) => by_order.entry(n).or_default().push(t),
                None => failures.push(format!("create {} told approved without the platform's order_num: {:?}", t.req.key, t.answer)),
            }
        }
        for (n, ts) in &by_order {
            if ts.len() > 1 {
                failures.push(format!("order {n} was told approved to {} creates: {:?}", ts.len(), ts.iter().map(|t| &t.req.key).collect::<Vec<_>>()));
            }
            let t = ts[0];
            let Some(o) = ledger.orders.get(*n) else {
                failures.push(format!("create {} told approved order {n}, which the platform does not have", t.req.key));
                continue;
            };
            if ledger.created_for(&o.channel_order_num) != 1 {
                failures.push(format!("channel order {} created {} times", o.channel_order_num, ledger.created_for(&o.channel_order_num)));
            }
            if !ledger.told_approved.contains(*n) {
                failures.push(format!("order {n} told approved to the POS but the platform never delivered its create answer"));
            }
            if Some(o.amount_fen) != t.req.body["amount"].as_i64() || Some(o.count) != t.req.body["count"].as_i64() {
                failures.push(format!("order {n} has another amount or count than create {}: {o:?} for {}", t.req.key, t.req.body));
            }
            let want = t.id.is_some_and(|id| cancelled_ids.contains(&id));
            if o.cancelled != want {
                failures.push(format!("order {n} (create {}) is cancelled={} at the platform, the POS was told cancelled={want}", t.req.key, o.cancelled));
            }
        }
        let orphans: Vec<&String> = ledger.orders.keys().filter(|n| !by_order.contains_key(n.as_str())).collect();
        if !orphans.is_empty() {
            failures.push(format!("{} orders at the platform no POS was told approved: {:?}", orphans.len(), &orphans[..orphans.len().min(10)]));
        }
        let host_cancelled = ledger.orders.values().filter(|o| o.cancelled).count();
        if ledger.cancelled as usize != cancelled_ids.len() || host_cancelled != cancelled_ids.len() {
            failures.push(format!("{} cancels told approved, the platform cancelled {} ({} orders cancelled)", cancelled_ids.len(), ledger.cancelled, host_cancelled));
        }
        let envelope: BTreeSet<&str> = ["9001", "9002", "9003"].into();
        for t in told.iter().filter(|t| t.status() == "declined") {
            let code = t.answer.as_ref().and_then(|a| a["code"].as_str()).unwrap_or("");
            if envelope.contains(code) {
                failures.push(format!("{} was refused for its envelope: {:?}", t.req.key, t.answer));
            }
        }
        if by_order.len() < 5 || cancelled_ids.is_empty() {
            failures.push(format!("too little approved to prove anything: {} creates, {} cancels", by_order.len(), cancelled_ids.len()));
        }
        eprintln!(
            "scenic platform: {} requests, {} refused, {} orders ({} cancelled), {} creates answered with the first order",
            ledger.requests,
            ledger.refused,
            ledger.orders.len(),
            ledger.cancelled,
            ledger.duplicate_creates
        );
        failures
    }
}
