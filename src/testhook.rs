//! Test hooks on the real code path: crash points where a test SIGKILLs the daemon, and an order log.
//!
//! Both are off unless an environment variable names them, and cost one atomic load when off.
//! - `POSGATE_CRASH_AT=<point>:<n>`: the n-th time the daemon reaches `<point>` it prints
//!   `posgate-crashpoint <point>` on stderr and stops there forever, so the test can kill it with
//!   SIGKILL at exactly that point.
//! - `POSGATE_FAIL_AT=<point>:<n>`: the n-th time the daemon reaches `<point>` the operation there fails
//!   with an injected I/O error, as a failing disk would make it (only `log_sync`).
//! - `POSGATE_ORDER_LOG=<file>`: append `synced <upto-id>` after each journal sync returns, and
//!   `send <id>` just before a backend request's bytes are written, so a test can prove the order.
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

struct CrashPoint {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

impl CrashPoint {
    fn from_env(var: &str) -> Option<CrashPoint> {
        let v = std::env::var(var).ok()?;
        let (name, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
        Some(CrashPoint { name: name.to_string(), nth: n.parse().unwrap_or(1), seen: AtomicU64::new(0) })
    }

    /// This visit of `name` is the armed one.
    fn hit(&self, name: &str) -> bool {
        self.name == name && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth
    }
}

fn crash_point() -> &'static Option<CrashPoint> {
    static CP: OnceLock<Option<CrashPoint>> = OnceLock::new();
    CP.get_or_init(|| CrashPoint::from_env("POSGATE_CRASH_AT"))
}

fn fail_point() -> &'static Option<CrashPoint> {
    static FP: OnceLock<Option<CrashPoint>> = OnceLock::new();
    FP.get_or_init(|| CrashPoint::from_env("POSGATE_FAIL_AT"))
}

/// The fdatasync of the journal log (a fail point).
pub const LOG_SYNC: &str = "log_sync";

/// Reach a fail point: the injected error when it is the armed one.
pub fn fail(name: &str) -> std::io::Result<()> {
    match fail_point() {
        Some(fp) if fp.hit(name) => Err(std::io::Error::other(format!("{name} failed (injected by POSGATE_FAIL_AT)"))),
        _ => Ok(()),
    }
}

/// Named places where a crash test may stop the daemon.
pub const BEFORE_SEND: &str = "before_send";
pub const AFTER_SEND: &str = "after_send";
pub const AFTER_OUTCOME: &str = "after_outcome";
pub const IN_SETTLE: &str = "in_settle";
/// The settlement was answered but its outcome is not journaled yet.
pub const SETTLE_SENT: &str = "settle_sent";
/// A vendor's notification is journaled (durable), its effect on the order and its answer not yet.
pub const IN_CALLBACK: &str = "in_callback";

/// The journal's checkpoint flushed and synced sled but has not recorded its log position yet.
pub const IN_CHECKPOINT: &str = "in_checkpoint";

/// A checkpoint closed sled to open it again (`sled_store.rs`, `reopen`) and has not opened it yet.
pub const IN_REOPEN: &str = "in_reopen";

/// The journal's group commit has the entries of its group in the log but has not synced them.
pub const BEFORE_LOG_SYNC: &str = "before_log_sync";

/// Retention wrote the day files (synced, renamed) but has not removed their records from the journal yet.
pub const IN_RETENTION: &str = "in_retention";

/// Reach a crash point from a plain thread (the journal's own): when armed, announce and block forever.
pub fn point_blocking(name: &str) {
    if let Some(cp) = crash_point() {
        if cp.hit(name) {
            eprintln!("posgate-crashpoint {name}");
            let _ = std::io::stderr().flush();
            loop {
                std::thread::park();
            }
        }
    }
}

/// Reach a crash point. When it is the armed one, announce and hang until killed.
pub async fn point(name: &str) {
    if let Some(cp) = crash_point() {
        if cp.hit(name) {
            eprintln!("posgate-crashpoint {name}");
            let _ = std::io::stderr().flush();
            std::future::pending::<()>().await;
        }
    }
}

fn order_log() -> &'static Option<Mutex<std::fs::File>> {
    static LOG: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::var_os("POSGATE_ORDER_LOG")?;
        std::fs::OpenOptions::new().create(true).append(true).open(path).ok().map(Mutex::new)
    })
}

/// Append one line to the order log, when one is configured.
pub fn order(event: &str, id: u64) {
    if let Some(m) = order_log() {
        if let Ok(mut f) = m.lock() {
            let _ = writeln!(f, "{event} {id}");
        }
    }
}
