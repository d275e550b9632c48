//! The consign world: the shipped example profile (plain HTTP, no callbacks) against the strict consignment platform, submits of fresh cards, and the platform's orders.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::sim::consign::{ConsignSim, ConsignSimConfig, DEMO_AES_KEY, DEMO_SIGN_KEY};
use posgate::sim::faults::Fault;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::{Kind, Mode, PosRequest, Told, VendorWorld};
use crate::support::scratch;

const SUBMIT: &str = "api/consignmentOrders";
const QUERY: &str = "api/searchOrders";

/// A consignment platform simulator (plain HTTP on loopback) and a config folder whose one profile (`consign`) points at it.
pub struct ConsignWorld {
    pub dir: PathBuf,
    pub sim: Arc<ConsignSim>,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The simulator's port (its link faults: [`posgate::sim::server::link`]).
    pub port: u16,
}

impl Drop for ConsignWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl VendorWorld for ConsignWorld {
    const NAME: &'static str = "consign";
    const PROFILE: &'static str = "consign";
    /// No settlement: the profile offers no `settle` operation.
    const CRASH_POINTS: &'static [&'static str] = &["before_send", "after_send", "after_outcome"];
    /// Submits and the searchOrders queries (recovery's and the POS's); no sign-on, no settlement.
    const KINDS: &'static [Kind] = &[Kind::Financial, Kind::Report];
    const CRASH_LIVES: usize = 15;
    const SETTLES: bool = false;
    const TLS: bool = false;
    const LATE: Duration = Duration::from_millis(2500);

    /// Results come after half a second (polling: the profile names no notifyUrl).
    async fn start(name: &str, _mode: Mode) -> Self {
        let dir = scratch(name);
        std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
        std::fs::write(dir.join("secrets/consign-sign-key.txt"), DEMO_SIGN_KEY).expect("key");
        std::fs::write(dir.join("secrets/consign-aes-key.txt"), DEMO_AES_KEY).expect("key");
        let sim = Arc::new(ConsignSim::new(ConsignSimConfig { finish_after: Some(Duration::from_millis(500)), ..ConsignSimConfig::demo() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(sim.clone().serve_plain(listener, std::future::pending::<()>()));
        let profile = crate::support::fast_profile(posgate::demo::CONSIGN_PROFILE, "http://127.0.0.1:18447", &format!("http://{addr}"));
        std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
        std::fs::write(dir.join("terminal-profiles/consign.toml"), profile).expect("profile");
        let config = dir.join("posgate.toml");
        std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\nmax_body_bytes = 1048576\n").expect("config");
        let socket = dir.join("posgate.sock");
        ConsignWorld { dir, sim, config, socket, port: addr.port() }
    }

    fn config(&self) -> &Path {
        &self.config
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    /// A submit of a fresh card: its own number and a secret naming the request, so the platform's
    /// decrypted secret tells which submit an accepted order came from.
    fn next_request(&self, rng: &mut StdRng, lane: usize, n: usize) -> PosRequest {
        let reference = format!("K{lane}N{n:07}");
        let card = format!("62220{:014}", rng.gen_range(0..100_000_000_000_000u64));
        let body = json!({"productCode": "JD100", "cardNumber": card, "cardPassword": format!("Secret-{reference}"), "faceMoney": rng.gen_range(1..=20) * 5_000});
        PosRequest { operation: "submit", body, key: format!("k-{n}"), reference }
    }

    fn lose_next_answer(&self, kind: Kind) {
        match kind {
            Kind::Financial => self.sim.push_fault_on(SUBMIT, Fault::DropAfterCommit),
            Kind::Report => self.sim.push_fault_on(QUERY, Fault::DropAfterCommit),
            // The platform has none of these: nothing of theirs to lose.
            Kind::SignOn | Kind::Reversal | Kind::Settlement => {}
        }
    }

    fn lose_answers(&self, per_mille: u32, seed: u64) {
        self.sim.set_random_drops(per_mille, seed);
    }

    /// A reset, a 500, garbage, a delay or a lost answer of the next submit.
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

    /// A query of an order the platform never had (its answer may be lost), beside the POS traffic.
    fn side_request(&self) -> Option<(&'static str, Value)> {
        Some(("query", json!({"orderId": "NOSUCHORDER0001"})))
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

    /// Every submit told approved is one order at the platform under the orderId it was told, holding its
    /// secret; no orderId reused, no card accepted twice, nothing accepted that the POS was not told
    /// approved; no request refused for its envelope.
    async fn check_ledger(&self, told: &[Told], _c: &ApiClient) -> Vec<String> {
        let mut failures = Vec::new();
        let ledger = self.sim.ledger();
        let submits: BTreeMap<&str, &Told> = told.iter().filter(|t| t.req.operation == "submit").map(|t| (t.req.reference.as_str(), t)).collect();
        // Which submit each accepted order came from, by its secret.
        let mut accepted_for: HashMap<&str, Vec<&str>> = HashMap::new();
        for (order_id, secret) in &ledger.secrets {
            match secret.strip_prefix("Secret-").filter(|r| submits.contains_key(r)) {
                Some(r) => accepted_for.entry(r).or_default().push(order_id),
                None => failures.push(format!("the platform accepted order {order_id} no POS submitted")),
            }
        }
        for (reference, t) in &submits {
            let orders = accepted_for.get(reference).cloned().unwrap_or_default();
            if orders.len() > 1 {
                failures.push(format!("submit {reference} (told {}) accepted {} times: {orders:?}", t.status(), orders.len()));
            }
            if t.status() == "approved" {
                let told_id = t.answer.as_ref().and_then(|a| a["reference"].as_str()).unwrap_or("");
                if orders.first().copied() != Some(told_id) {
                    failures.push(format!("submit {reference} was told approved as order {told_id:?}, the platform accepted {orders:?}"));
                }
            } else if !orders.is_empty() {
                failures.push(format!("submit {reference} told {} ({:?}) but the platform accepted {orders:?}", t.status(), t.answer));
            }
        }
        if ledger.reused_order_ids != 0 {
            failures.push(format!("{} submits reused an orderId", ledger.reused_order_ids));
        }
        if ledger.accepted.len() != ledger.secrets.len() {
            failures.push(format!("{} orders accepted but {} secrets decrypted", ledger.accepted.len(), ledger.secrets.len()));
        }
        let refused: Vec<&Value> = told.iter().filter(|t| t.status() == "declined").filter_map(|t| t.answer.as_ref()).take(5).collect();
        if ledger.refused != 0 || !refused.is_empty() {
            failures.push(format!("the platform refused {} submits (fresh, well-formed cards are never refused): {refused:?}", ledger.refused));
        }
        let approved = submits.values().filter(|t| t.status() == "approved").count();
        if approved < 5 {
            failures.push(format!("too little approved to prove anything: {approved} submits"));
        }
        eprintln!(
            "consign platform: {} requests, {} refused, {} accepted ({} answers delivered), {} finished, by path {:?}",
            ledger.requests,
            ledger.refused,
            ledger.accepted.len(),
            ledger.told_accepted.len(),
            ledger.finished.len(),
            ledger.by_path
        );
        failures
    }
}
