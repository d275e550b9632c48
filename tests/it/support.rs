//! Shared test plumbing: a loyalty simulator on loopback TLS, config folders, and the real daemon process.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::net::tls::TestPki;
use posgate::sim::loyalty::{LoyaltySim, SimConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// A fresh, unique scratch folder.
///
/// Files made by the test process are owner-only from here on (umask 077), as an installer makes
/// them: the daemon refuses secret files that others can read.
pub fn scratch(name: &str) -> PathBuf {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("posgate-it-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A simulator plus a config folder whose single loyalty profile points at it.
pub struct World {
    pub dir: PathBuf,
    pub sim: Arc<LoyaltySim>,
    pub sim_addr: std::net::SocketAddr,
    pub config: PathBuf,
    pub socket: PathBuf,
    stop_sim: Option<tokio::sync::oneshot::Sender<()>>,
}

pub const TMK_HEX: &str = "0123456789ABCDEFFEDCBA9876543210";

impl World {
    pub async fn new(name: &str) -> World {
        Self::with_profile_extra(name, "").await
    }

    /// `extra` is appended to the profile's top-level keys (before its tables).
    pub async fn with_profile_extra(name: &str, extra: &str) -> World {
        let dir = scratch(name);
        let pki = TestPki::ensure(&dir.join("pki")).expect("pki");
        std::fs::create_dir_all(dir.join("secrets")).expect("secrets dir");
        std::fs::write(dir.join("secrets/loyalty-tmk.hex"), TMK_HEX).expect("tmk");
        std::fs::write(dir.join("secrets/api-token"), "test-token-123").expect("token");
        let tmk: [u8; 16] = hex::decode(TMK_HEX).expect("hex").try_into().expect("16");
        let mut cfg = SimConfig::demo();
        cfg.master_key = tmk;
        let sim = Arc::new(LoyaltySim::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let sim_addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sim.clone().serve(listener, pki.acceptor().expect("acceptor"), async move {
            let _ = rx.await;
        }));
        std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles dir");
        let profile = format!(
            "name = \"loyalty\"\nbackend = \"loyalty\"\nbase_url = \"https://{sim_addr}\"\nca_file = \"../pki/test-ca.pem\"\nstore = \"100000000000001\"\nterminal = \"10000001\"\noperator = \"01\"\nconnect_timeout_ms = 1000\ntimeout_ms = 2000\n{extra}\n[recovery]\nmax_attempts = 50\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n\n[secrets]\nmaster_key = \"../secrets/loyalty-tmk.hex\"\n"
        );
        std::fs::write(dir.join("terminal-profiles/loyalty.toml"), profile).expect("profile");
        let socket = dir.join("posgate.sock");
        let config = dir.join("posgate.toml");
        std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n").expect("config");
        World { dir, sim, sim_addr, config, socket, stop_sim: Some(tx) }
    }

    pub fn client(&self) -> ApiClient {
        ApiClient::unix(&self.socket)
    }

    /// Take the simulator off the network: it stops accepting and drops open connections, so the next
    /// request is refused before a byte leaves (not sent).
    pub fn stop_sim(&mut self) {
        if let Some(tx) = self.stop_sim.take() {
            let _ = tx.send(());
        }
    }

    /// Bring the same simulator (same state) back on the same address.
    pub async fn restart_sim(&mut self) {
        let pki = TestPki::ensure(&self.dir.join("pki")).expect("pki");
        let listener = tokio::net::TcpListener::bind(self.sim_addr).await.expect("rebind sim");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(self.sim.clone().serve(listener, pki.acceptor().expect("acceptor"), async move {
            let _ = rx.await;
        }));
        self.stop_sim = Some(tx);
    }

    /// Start the real daemon binary on this world's config and wait until it answers.
    pub async fn start(&self, env: &[(&str, String)]) -> Daemon {
        Daemon::start(&self.config, &self.socket, env).await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_sim.take() {
            let _ = tx.send(());
        }
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The real `posgate serve` process.
pub struct Daemon {
    child: tokio::process::Child,
    pub stderr: mpsc::UnboundedReceiver<String>,
    pub client: ApiClient,
}

impl Daemon {
    pub async fn start(config: &Path, socket: &Path, env: &[(&str, String)]) -> Daemon {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"));
        cmd.arg("serve").arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd.env("POSGATE_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn posgate");
        let (tx, rx) = mpsc::unbounded_channel();
        let err = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if std::env::var_os("POSGATE_TEST_ECHO").is_some() {
                    eprintln!("daemon: {l}");
                }
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let client = ApiClient::unix(socket);
        for _ in 0..1000 {
            if let Ok((200, _)) = client.get("/v1/status").await {
                return Daemon { child, stderr: rx, client };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut rx = rx;
                let mut out = String::new();
                while let Ok(l) = rx.try_recv() {
                    out.push_str(&l);
                    out.push('\n');
                }
                panic!("posgate exited early ({status}):\n{out}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("posgate did not become ready");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM (graceful), and wait.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Wait up to `limit` for the daemon to exit by itself; its exit code (`None`: still running, or
    /// ended by a signal).
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait()).await.ok()?.ok()?.code()
    }

    /// The daemon's process id (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Drain stderr lines seen so far.
    pub fn drain(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.stderr.try_recv() {
            v.push(l);
        }
        v
    }
}

/// Poll `GET /v1/status` until no profile owes recovery.
pub async fn wait_recovered(c: &ApiClient, limit: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (_, st) = c.get("/v1/status").await.expect("status");
        let sum = |k: &str| -> u64 { st["profiles"].as_array().map(|a| a.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum()).unwrap_or(0) };
        // A parked entry will not resolve by waiting: say so now instead of hanging the test.
        assert_eq!(sum("needs_attention"), 0, "recovery parked an entry (needs attention): {st}");
        let owed = sum("pending_recovery");
        if owed == 0 {
            return st;
        }
        assert!(tokio::time::Instant::now() < deadline, "recovery did not finish: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An example profile pointed at a test simulator (`from` → `to`, the URLs with their scheme) with the
/// short timeouts and fast, patient recovery the tests use.
pub fn fast_profile(example: &str, from: &str, to: &str) -> String {
    example
        .replace(from, to)
        .replace("timeout_ms = 5000", "timeout_ms = 2000")
        .replace("backoff_initial_ms = 200", "backoff_initial_ms = 20")
        .replace("backoff_max_ms = 60000", "backoff_max_ms = 200")
        .replace("max_attempts = 12", "max_attempts = 50")
}
