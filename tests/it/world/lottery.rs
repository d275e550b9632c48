//! The lottery world: the shipped example profile against the strict lottery host (4 serial stations), redeems of winning, losing and foreign-paid tickets, and the host's payments.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::net::tls::TestPki;
use posgate::sim::faults::Fault;
use posgate::sim::lottery::{LotterySim, DEMO_APP_SECRET, DEMO_PASSWORD};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::{all_records, Kind, Mode, PosRequest, Told, VendorWorld};
use crate::support::scratch;

/// Risk rules that refuse nothing (the harness tests the host, not the rules).
pub const OPEN_RISK: &str = "hours = \"00:00-00:00\"\nmin_interval_s = 0\ndaily_tickets = 100000\ndaily_amount_fen = 10000000000\ndaily_abnormal = 100000";

/// A lottery simulator and a config folder whose one profile (`lottery`) points at it.
pub struct LotteryWorld {
    pub dir: PathBuf,
    pub sim: Arc<LotterySim>,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The simulator's port (its link faults: [`posgate::sim::server::link`]).
    pub port: u16,
}

impl Drop for LotteryWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shipped example profile against a fresh simulator, with the risk section replaced by `risk` and
/// the text edited further by `edit`.
pub async fn world_with(name: &str, risk: &str, edit: &dyn Fn(String) -> String) -> LotteryWorld {
    let dir = scratch(name);
    let pki = TestPki::ensure(&dir.join("pki")).expect("pki");
    std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
    std::fs::write(dir.join("secrets/lottery-app-secret.txt"), DEMO_APP_SECRET).expect("secret");
    std::fs::write(dir.join("secrets/lottery-station-password.txt"), DEMO_PASSWORD).expect("secret");
    let sim = Arc::new(LotterySim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().expect("acceptor"), std::future::pending::<()>()));
    let example = posgate::demo::LOTTERY_PROFILE;
    let cut = example.find("[options.risk]").expect("the example has a risk section");
    let profile = format!("{}[options.risk]\n{risk}\n", &example[..cut])
        .replace("https://127.0.0.1:18444", &format!("https://{addr}"))
        .replace("backoff_initial_ms = 200", "backoff_initial_ms = 20")
        .replace("backoff_max_ms = 60000", "backoff_max_ms = 200")
        .replace("max_attempts = 12", "max_attempts = 50");
    let profile = edit(profile);
    std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
    std::fs::write(dir.join("terminal-profiles/lottery.toml"), profile).expect("profile");
    let config = dir.join("posgate.toml");
    std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n").expect("config");
    let socket = dir.join("posgate.sock");
    LotteryWorld { dir, sim, config, socket, port: addr.port() }
}

/// A profile edit: `timeout_ms`, and extra `[options]` lines.
pub fn tuned(timeout_ms: u64, options: &'static str) -> impl Fn(String) -> String {
    move |p: String| p.replace("timeout_ms = 5000", &format!("timeout_ms = {timeout_ms}")).replace("merchant = \"01\"", &format!("merchant = \"01\"\n{options}"))
}

/// The business day of the simulated host (+08:00), as the daemon under test sees it.
#[allow(clippy::disallowed_methods)]
pub fn beijing_today() -> String {
    chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00")).date_naive().to_string()
}

impl VendorWorld for LotteryWorld {
    const NAME: &'static str = "lottery";
    const PROFILE: &'static str = "lottery";
    const CRASH_POINTS: &'static [&'static str] = &["before_send", "after_send", "after_outcome"];
    const KINDS: &'static [Kind] = &[Kind::SignOn, Kind::Financial, Kind::Report];
    const CRASH_LIVES: usize = 60;
    const SETTLES: bool = false;
    const TLS: bool = true;
    const LATE: Duration = Duration::from_millis(700);

    /// The strict host: a `transacId` that reached it before is answered 15 (crash loop) or 10030 (soak),
    /// never with the earlier payment, so a resend learns nothing and the daemon must ask (getPrize).
    async fn start(name: &str, mode: Mode) -> Self {
        let w = match mode {
            // A lost answer holds its station (the host may still be working on it) for station_hold_ms,
            // also across the restart: short where the host never answers late.
            Mode::Crash => world_with(name, OPEN_RISK, &tuned(1000, "station_hold_ms = 300")).await,
            // Answers later than the client's timeout: the hold must outlast them.
            Mode::Soak => world_with(name, OPEN_RISK, &tuned(400, "station_hold_ms = 900")).await,
        };
        w.sim.answer_resends_with(Some(if mode == Mode::Crash { "15" } else { "10030" }));
        w
    }

    fn config(&self) -> &Path {
        &self.config
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    /// Mostly winners (each its own ticket until the 2,000 run out), some losers, some paid elsewhere.
    fn next_request(&self, rng: &mut StdRng, _lane: usize, n: usize) -> PosRequest {
        let bar = match rng.gen_range(0..20) {
            0 | 1 => format!("GL{:08}", n % 200 + 1),
            2 => format!("GE{:08}", n % 20 + 1),
            _ => format!("GW{:08}", n % 2000 + 1),
        };
        PosRequest {
            operation: "redeem",
            body: json!({"userId": format!("u{n}"), "userRealIp": "127.0.0.1", "barCode": bar}),
            key: format!("t-{n}"),
            reference: bar,
        }
    }

    fn lose_next_answer(&self, kind: Kind) {
        let path = match kind {
            Kind::SignOn => "proxy/station/login",
            Kind::Financial | Kind::Reversal | Kind::Settlement => "proxy/validate/thirdAward",
            Kind::Report => {
                self.sim.push_fault_on("migt/account/awardDetail", Fault::DropAfterCommit);
                "migt/account/awardSummary"
            }
        };
        self.sim.push_fault_on(path, Fault::DropAfterCommit);
    }

    fn lose_answers(&self, per_mille: u32, seed: u64) {
        self.sim.set_random_drops(per_mille, seed);
    }

    /// A redeem reset, refused with 500, answered with garbage or lost; or the host ends sessions by
    /// itself (every token expired: 27; a station logged in from elsewhere: 1021).
    fn random_fault(&self, rng: &mut StdRng) {
        let f = match rng.gen_range(0..6) {
            0 => Fault::Reset,
            1 => Fault::Http500,
            2 => Fault::Garbage,
            3 => Fault::DropAfterCommit,
            4 => return self.sim.expire_tokens(),
            _ => return self.sim.log_in_elsewhere(&format!("2101{:04}", rng.gen_range(1..=4))),
        };
        self.sim.push_fault(f);
    }

    fn soak_faults(&self, seed: u64) {
        self.sim.set_slow_redeems(120, Duration::from_millis(700), seed);
        self.sim.set_random_faults(80, seed ^ 1);
    }

    /// Today's reconciliation (awardSummary and awardDetail, whose answers may be lost).
    fn side_request(&self) -> Option<(&'static str, Value)> {
        Some(("reconcile", json!({"date": beijing_today()})))
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

    /// Each ticket paid as often as the POS was told approved (at most once), the prize told is the
    /// host's, no two requests on one station at once, no transacId reused, no bad sign, the journal's
    /// per-station totals, the station count and today's reconciliation equal to the host's.
    async fn check_ledger(&self, told: &[Told], c: &ApiClient) -> Vec<String> {
        let mut failures = Vec::new();
        let ledger = self.sim.ledger();
        let mut approved: BTreeMap<&str, usize> = BTreeMap::new();
        let mut told_fen = 0;
        for t in told.iter().filter(|t| t.status() == "approved") {
            *approved.entry(t.req.reference.as_str()).or_default() += 1;
            let a = t.answer.as_ref().cloned().unwrap_or(Value::Null);
            if a["amount_fen"] != a["result"]["prize"] {
                failures.push(format!("{} was told a prize other than the host's: {a}", t.req.key));
            }
            told_fen += a["amount_fen"].as_i64().unwrap_or(0);
        }
        let bars: std::collections::BTreeSet<&str> = told.iter().map(|t| t.req.reference.as_str()).collect();
        for bar in &bars {
            let paid = ledger.paid.get(*bar).map(Vec::len).unwrap_or(0);
            let ok = approved.get(bar).copied().unwrap_or(0);
            if paid != ok || paid > 1 {
                let keys: Vec<(String, String)> = told.iter().filter(|t| t.req.reference == *bar).map(|t| (t.req.key.clone(), t.status().to_string())).collect();
                failures.push(format!("ticket {bar} paid {paid} times at the host, told approved {ok} times: {keys:?}"));
            }
        }
        let unknown: Vec<&String> = ledger.paid.keys().filter(|b| !bars.contains(b.as_str())).collect();
        if !unknown.is_empty() {
            failures.push(format!("the host paid tickets no POS asked for: {unknown:?}"));
        }
        if ledger.overlaps != 0 || ledger.transac_reused != 0 || ledger.bad_signs != 0 || !ledger.violations.is_empty() {
            failures.push(format!(
                "the host saw {} station overlaps, {} reused transacIds, {} bad signs: {:?}",
                ledger.overlaps,
                ledger.transac_reused,
                ledger.bad_signs,
                &ledger.violations[..ledger.violations.len().min(10)]
            ));
        }
        // The journal's stations and amounts equal the host's.
        let mut journal: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for r in all_records(c).await.iter().filter(|r| r["operation"] == "redeem" && r["status"] == "approved") {
            let e = journal.entry(r["result"]["station"].as_str().unwrap_or("?").to_string()).or_default();
            e.0 += 1;
            e.1 += r["amount_fen"].as_i64().unwrap_or(0);
        }
        if journal != ledger.by_station {
            failures.push(format!("the journal's per-station totals {journal:?} differ from the host's {:?}", ledger.by_station));
        }
        let host_fen: i64 = ledger.by_station.values().map(|(_, fen)| fen).sum();
        if host_fen != told_fen {
            failures.push(format!("the host paid {host_fen} fen, the POS was told {told_fen}"));
        }
        // The station count through the API and today's reconciliation agree with the host.
        match c.post("/v1/profiles/lottery/count", json!({}), None).await {
            Ok((200, v)) if v["result"]["amount"].as_i64() == Some(host_fen) => {}
            other => failures.push(format!("the station count is not the host's {host_fen} fen: {other:?}")),
        }
        match c.post("/v1/profiles/lottery/reconcile", json!({"date": beijing_today()}), None).await {
            Ok((200, v)) if v["result"]["balanced"] == json!(true) => {}
            other => failures.push(format!("today's reconciliation did not balance: {other:?}")),
        }
        if approved.values().sum::<usize>() <= 10 {
            failures.push(format!("too few tickets paid to prove anything: {}", approved.len()));
        }
        eprintln!(
            "lottery host: {} payments, {host_fen} fen, {} logins, {} stale tokens refused, {} stale timestamps",
            ledger.payments.len(),
            ledger.logins,
            ledger.stale_tokens,
            ledger.stale_timestamps
        );
        failures
    }
}
