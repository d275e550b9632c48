//! `posgate demo`: the built-in simulators plus the example profiles, set up in one folder.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;

use crate::config::DaemonConfig;
use crate::net::tls::TestPki;
use crate::sim::lottery::LotterySim;
use crate::sim::loyalty::{LoyaltySim, SimConfig};

/// The example loyalty profile shipped in `terminal-profiles/` (the registry's).
pub const LOYALTY_PROFILE: &str = include_str!("../terminal-profiles/loyalty.toml");
/// The example lottery profile shipped in `terminal-profiles/` (the registry's).
pub const LOTTERY_PROFILE: &str = include_str!("../terminal-profiles/lottery.toml");
/// The example wallet profile shipped in `terminal-profiles/`.
pub const WALLET_PROFILE: &str = include_str!("../terminal-profiles/wallet.toml");
/// The example consignment profile shipped in `terminal-profiles/`.
pub const CONSIGN_PROFILE: &str = include_str!("../terminal-profiles/consign.toml");
/// Offline card orders the demo wallet platform holds, so a delivery of several chunks can be shown.
pub const DEMO_DELIVERY_ORDERS: usize = 4_500;

/// A running simulator and the daemon configuration that points at it.
/// The demo's daemon config, in its data folder.
pub const CONFIG_FILE: &str = "posgate.toml";

pub struct DemoSetup {
    pub config: DaemonConfig,
    /// Where `config` was written ([`CONFIG_FILE`] in the data folder) and loaded from.
    pub config_file: PathBuf,
    pub loyalty: Arc<LoyaltySim>,
    pub loyalty_addr: std::net::SocketAddr,
    pub lottery: Arc<LotterySim>,
    pub lottery_addr: std::net::SocketAddr,
    pub wallet: Arc<crate::sim::wallet::WalletSim>,
    pub wallet_addr: std::net::SocketAddr,
    /// The scenic ticket platform (orders `XXX` and real-name `REAL`); its gate check-ins go to the
    /// callback listener once the daemon has one (`ScenicSim::set_callback`).
    pub scenic: Arc<crate::sim::scenic::ScenicSim>,
    pub scenic_addr: std::net::SocketAddr,
    /// The card consignment platform (plain HTTP, as its document); it finishes a card after two seconds and
    /// posts the result to the callback listener.
    pub consign: Arc<crate::sim::consign::ConsignSim>,
    pub consign_addr: std::net::SocketAddr,
    /// The daemon's callback listener (plain HTTP on loopback), where both simulators call back.
    pub callback_addr: std::net::SocketAddr,
    /// A POSP delivery file of the demo's offline orders (`posgate run wallet delivery --body @FILE`).
    pub delivery_file: PathBuf,
    pub token: String,
}

fn io(p: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", p.display())
}

/// Read a 16-byte master key from a hex file, creating a random one (0600) on first use.
pub fn ensure_master_key(path: &Path) -> Result<[u8; 16], String> {
    if !path.exists() {
        let mut k = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut k);
        write_private(path, hex::encode_upper(k).as_bytes())?;
    }
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let bytes = hex::decode(text.trim()).map_err(|e| format!("{}: not hex: {e}", path.display()))?;
    bytes.try_into().map_err(|_| format!("{}: want 32 hex characters", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    if let Some(d) = path.parent() {
        crate::fsmode::private_dir(d).map_err(|e| io(d, e))?;
    }
    crate::fsmode::write_private(path, data).map_err(|e| io(path, e))
}

/// What the demo scanner sends, in order: a barcode, a QR code, a card swipe (tracks 1 and 2).
pub const SCANNER_SCRIPT: &[&[u8]] = &[
    b"]E04006381333931\r",
    b"]Q1https://example.invalid/ticket/2026-0001\r",
    b"%B6222021234567890123^ZHANG/SAN^2912101000000000?;6222021234567890123=29121010000000000?\r",
];

/// A pseudo-terminal posing as a serial scanner: the daemon reads the slave path, this task writes
/// the script to the master every `every`, for as long as the process runs.
pub fn spawn_scanner(every: std::time::Duration) -> Result<String, String> {
    use std::io::Write;
    let mut pty = crate::platform::Pty::open()?;
    let path = pty.path().to_path_buf();
    std::thread::Builder::new()
        .name("demo-scanner".into())
        .spawn(move || {
            // The pty moves here, so its slave end stays open between the daemon's reopenings.
            let master = pty.master();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                for frame in SCANNER_SCRIPT {
                    if master.write_all(frame).and_then(|_| master.flush()).is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                std::thread::sleep(every);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(path.display().to_string())
}

/// Make (or reuse) the demo folder: test CA, master key, token, profile; start the simulator.
pub async fn prepare(data_dir: &Path, unix_socket: Option<PathBuf>, tcp: Option<std::net::SocketAddr>) -> Result<DemoSetup, String> {
    crate::fsmode::private_dir(data_dir).map_err(|e| io(data_dir, e))?;
    let data_dir = data_dir.canonicalize().map_err(|e| io(data_dir, e))?;
    let pki = TestPki::ensure(&data_dir.join("pki")).map_err(|e| e.to_string())?;
    let tmk = ensure_master_key(&data_dir.join("secrets/loyalty-tmk.hex"))?;
    let token_path = data_dir.join("secrets/api-token");
    if !token_path.exists() {
        let mut t = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut t);
        write_private(&token_path, hex::encode(t).as_bytes())?;
    }
    let token = std::fs::read_to_string(&token_path).map_err(|e| io(&token_path, e))?.trim().to_string();

    let mut sim_cfg = SimConfig::demo();
    sim_cfg.master_key = tmk;
    let sim = Arc::new(LoyaltySim::new(sim_cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("simulator listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor = pki.acceptor().map_err(|e| e.to_string())?;
    tokio::spawn(sim.clone().serve(listener, acceptor, std::future::pending::<()>()));

    let lottery = Arc::new(LotterySim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("simulator listener: {e}"))?;
    let lottery_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(lottery.clone().serve(listener, pki.acceptor().map_err(|e| e.to_string())?, std::future::pending::<()>()));
    write_private(&data_dir.join("secrets/lottery-app-secret.txt"), crate::sim::lottery::DEMO_APP_SECRET.as_bytes())?;
    write_private(&data_dir.join("secrets/lottery-station-password.txt"), crate::sim::lottery::DEMO_PASSWORD.as_bytes())?;

    let wallet = Arc::new(crate::sim::wallet::WalletSim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("simulator listener: {e}"))?;
    let wallet_addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The wallet's document gives plain http:// endpoints: its simulator speaks plain HTTP too.
    tokio::spawn(wallet.clone().serve_plain(listener, std::future::pending::<()>()));
    write_private(&data_dir.join("secrets/wallet-app-key.txt"), crate::sim::wallet::DEMO_APP_KEY.as_bytes())?;
    write_private(&data_dir.join("secrets/wallet-tsig-key.pem"), crate::sim::wallet::TEST_PRIVATE_KEY.as_bytes())?;
    let orders: Vec<serde_json::Value> =
        wallet.seed_offline_orders(DEMO_DELIVERY_ORDERS).into_iter().map(|id| serde_json::json!({"orderId": id, "accountType": "OAC"})).collect();
    let delivery_file = data_dir.join("wallet-delivery.json");
    std::fs::write(&delivery_file, serde_json::json!({ "orders": orders }).to_string()).map_err(|e| io(&delivery_file, e))?;

    let scenic = Arc::new(crate::sim::scenic::ScenicSim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("simulator listener: {e}"))?;
    let scenic_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(scenic.clone().serve(listener, pki.acceptor().map_err(|e| e.to_string())?, std::future::pending::<()>()));
    write_private(&data_dir.join("secrets/scenic-app-secret.txt"), crate::sim::scenic::DEMO_APP_SECRET.as_bytes())?;

    let consign = Arc::new(crate::sim::consign::ConsignSim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("simulator listener: {e}"))?;
    let consign_addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The consignment document gives plain http:// endpoints: its simulator speaks plain HTTP too.
    tokio::spawn(consign.clone().serve_plain(listener, std::future::pending::<()>()));
    write_private(&data_dir.join("secrets/consign-sign-key.txt"), crate::sim::consign::DEMO_SIGN_KEY.as_bytes())?;
    write_private(&data_dir.join("secrets/consign-aes-key.txt"), crate::sim::consign::DEMO_AES_KEY.as_bytes())?;

    // The callback listener on a free loopback port; the simulators call the daemon back there.
    let callback_addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("callback listener: {e}"))?;
    let scenic_url = format!("http://{callback_addr}/callbacks/{}/check-in", crate::backend::scenic::KIND);
    let retry = vec![std::time::Duration::from_secs(2), std::time::Duration::from_secs(5)];
    scenic.set_callback(crate::sim::scenic::callback::Sender::new(&scenic_url, None, retry)?);

    let profiles_dir = data_dir.join("terminal-profiles");
    std::fs::create_dir_all(&profiles_dir).map_err(|e| io(&profiles_dir, e))?;
    // Each registered kind's example profile, pointed at its simulator; a kind without one is left out.
    let sims = [
        (crate::backend::loyalty::KIND, addr),
        (crate::backend::lottery::KIND, lottery_addr),
        (crate::backend::wallet::KIND, wallet_addr),
        (crate::backend::scenic::KIND, scenic_addr),
        (crate::backend::consign::KIND, consign_addr),
    ];
    for kind in crate::backend::registry::KINDS {
        let (Some(example), Some((_, actual))) = (kind.demo_url, sims.iter().find(|(k, _)| *k == kind.name)) else { continue };
        let file = Path::new(kind.example_profile).file_name().map(|f| f.to_os_string()).unwrap_or_else(|| format!("{}.toml", kind.name).into());
        let path = profiles_dir.join(file);
        // The demo serves around the clock, so a newcomer in any time zone sees a redeem go through.
        let text = kind
            .example_text
            .replace(example, &format!("{}://{actual}", example.split("://").next().unwrap_or("https")))
            .replace("hours = \"01:00-23:00\"", "hours = \"00:00-00:00\"  # demo: around the clock");
        let text = with_callbacks(kind.name, &text, callback_addr);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        crate::backend::registry::load_profile(&path).map_err(|e| e.to_string())?;
    }

    // The daemon config the demo runs with, written beside everything else, so that `posgate doctor
    // --config …` and `posgate serve --config …` work on the demo as its banner prints them.
    let socket = unix_socket.unwrap_or_else(|| crate::platform::demo_endpoint(&data_dir));
    let endpoint_key = if cfg!(windows) { "pipe" } else { "unix_socket" };
    let quoted = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut text = format!(
        "# Written by `posgate demo`: the daemon config it runs with. The simulators live inside `posgate demo`;\n\
         # `posgate serve --config` on this file starts the daemon alone (its backends then unreachable).\n\
         data_dir = {}\nprofiles_dir = \"terminal-profiles\"\n{endpoint_key} = {}\ntoken_file = \"secrets/api-token\"\n\
         # A POSP delivery file of 4,500 orders is about 200 KB.\nmax_body_bytes = 1048576\n",
        quoted(&data_dir),
        quoted(&socket)
    );
    if let Some(a) = tcp {
        text.push_str(&format!("tcp = \"{a}\"\n"));
    }
    text.push_str(&format!(
        "\n[callbacks]\nlisten = \"{callback_addr}\"\nmax_body_bytes = 16384\nheader_timeout_ms = 5000\nbody_timeout_ms = 5000\nmax_connections = 32\n"
    ));
    let config_file = data_dir.join(CONFIG_FILE);
    crate::fsmode::write_private(&config_file, text).map_err(|e| io(&config_file, e))?;
    let config = crate::backend::registry::load_config(&config_file).map_err(|e| e.to_string())?;
    Ok(DemoSetup {
        config,
        config_file,
        loyalty: sim,
        loyalty_addr: addr,
        lottery,
        lottery_addr,
        wallet,
        wallet_addr,
        scenic,
        scenic_addr,
        consign,
        consign_addr,
        callback_addr,
        delivery_file,
        token,
    })
}

/// The demo's gate: a few seconds after each new scenic order, one of its tickets is checked in and the
/// platform calls the daemon back, so the check-in shows up as an event without a real turnstile.
pub fn spawn_gate(scenic: Arc<crate::sim::scenic::ScenicSim>, after: std::time::Duration) {
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        loop {
            tokio::time::sleep(after).await;
            let fresh: Vec<String> = scenic
                .ledger()
                .orders
                .values()
                .filter(|o| !o.cancelled && o.checked == 0 && seen.insert(o.order_num.clone()))
                .map(|o| o.order_num.clone())
                .collect();
            for num in fresh {
                #[allow(clippy::disallowed_methods)] // the simulated gate's wall clock, not the engine's
                let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
                scenic.check_in_and_notify(&num, 1, &now).await;
            }
        }
    });
}

/// The kinds whose results arrive later by callback: their demo profiles allow loopback callers, and
/// consignment's `notify_url` points at the demo's listener.
fn with_callbacks(kind: &str, text: &str, listener: std::net::SocketAddr) -> String {
    if kind != crate::backend::scenic::KIND && kind != crate::backend::consign::KIND {
        return text.to_string();
    }
    let backend = format!("backend = \"{kind}\"");
    text.replacen(&backend, &format!("{backend}\ncallback_allow = [\"127.0.0.1\"]  # demo: the simulators call back from loopback"), 1)
        .replace("notify_url = \"\"", &format!("notify_url = \"http://{listener}/callbacks/{kind}/result\""))
}

#[cfg(test)]
mod tests {
    /// The demo's daemon has a callback listener, and its scenic and consign profiles take callbacks from
    /// loopback, consignment's results addressed to that listener.
    #[tokio::test]
    async fn the_demo_config_has_the_callback_listener_and_both_callback_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let setup = super::prepare(dir.path(), None, None).await.unwrap();
        let cb = setup.config.callbacks.as_ref().expect("a callback listener");
        assert!(cb.listen.ip().is_loopback() && cb.listen == setup.callback_addr);
        for kind in ["scenic", "consign"] {
            let p = setup.config.profiles.iter().find(|p| p.backend == kind).unwrap_or_else(|| panic!("no {kind} profile"));
            assert!(p.callback_allow.iter().any(|n| n.contains("127.0.0.1".parse::<std::net::IpAddr>().unwrap())), "{kind}");
            assert!(p.results.callbacks(), "{kind}");
        }
        let consign = setup.config.profiles.iter().find(|p| p.backend == "consign").unwrap();
        assert_eq!(consign.option_str("notify_url", "").unwrap(), format!("http://{}/callbacks/consign/result", cb.listen));
        assert!(consign.base_url.contains(&setup.consign_addr.to_string()), "{}", consign.base_url);
    }

    /// The demo writes the config it runs with: loading that file gives the same listeners and profiles.
    #[tokio::test]
    async fn the_demo_writes_the_daemon_config_it_runs_with() {
        let dir = tempfile::tempdir().unwrap();
        let tcp: std::net::SocketAddr = "127.0.0.1:7979".parse().unwrap();
        let setup = super::prepare(dir.path(), None, Some(tcp)).await.unwrap();
        assert_eq!(setup.config_file, dir.path().canonicalize().unwrap().join(super::CONFIG_FILE));
        let again = crate::config::DaemonConfig::load(&setup.config_file).unwrap();
        assert_eq!((again.unix_socket, again.tcp, again.data_dir.clone()), (setup.config.unix_socket.clone(), Some(tcp), setup.config.data_dir.clone()));
        assert_eq!(again.token.map(|t| t.expose().to_vec()), Some(setup.token.as_bytes().to_vec()));
        assert_eq!(again.profiles.len(), 5);
        assert_eq!(again.callbacks.map(|c| c.listen), Some(setup.callback_addr));
    }
}
