//! The fault matrix: every backend × every fault, each combined with SIGKILL of the daemon, then the world's ledger check.
//!
//! One test per backend (`matrix_<vendor>`) runs every [`Cell`] in parallel, each in its own world (its own
//! simulator, journal and daemon). A cell lives `POSGATE_MATRIX_LIVES` lives (default 2): each life puts
//! the cell's fault in effect, starts the daemon, sends new requests and old keys, and SIGKILLs it — at a
//! crash point (`POSGATE_CRASH_AT`, each of the world's points in turn) on even lives, with the requests
//! in flight (a random moment up to the world's late-answer delay) on odd ones. The last life runs clean
//! and runs [`super::finish`] (recovery drained, every request final, every batch settled and balanced)
//! and the world's ledger check (nothing lost, nothing applied twice, nothing unreversed). The long form
//! (README.md) raises the lives and keeps the backend down for a minute (`POSGATE_MATRIX_DOWN_SECS`).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::sim::faults::Fault;
use posgate::sim::server::link;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::crash::crashed;
use super::{env_or, finish, lock, send, Mode, Told, VendorWorld};
use crate::support::{wait_recovered, Daemon};

/// One fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// The host waits past the client's timeout, then applies the request anyway.
    Delay,
    /// New connections reset at accept, before a byte is read; on a kept-alive connection the request
    /// is read and the connection cut without applying it.
    ResetBeforeRead,
    /// The request is read and applied, then the connection is cut.
    ResetAfterApply,
    /// The request is applied and its answer held past the client's timeout: lost although committed.
    LostAfterCommit,
    /// HTTP 500, not applied.
    Http5xx,
    /// Applied, answered 200 with an HTML page.
    Garbage,
    /// Applied, answered 200 with the real JSON cut in half.
    Truncated,
    /// The TLS handshake cut after the ClientHello (plain-HTTP vendors: the connection cut at accept).
    Tls,
    /// The simulator's listener closed (open connections aborted) and bound again on the same port later.
    Down,
}

pub const CELLS: [Cell; 9] =
    [Cell::Delay, Cell::ResetBeforeRead, Cell::ResetAfterApply, Cell::LostAfterCommit, Cell::Http5xx, Cell::Garbage, Cell::Truncated, Cell::Tls, Cell::Down];

/// Put the cell's fault in effect for the coming requests of one life.
fn inject<W: VendorWorld>(w: &W, cell: Cell, life: usize, down: Duration) {
    let link = link(w.sim_port());
    let twice = |f: Fault| {
        w.push_fault(f);
        w.push_fault(f);
    };
    match cell {
        Cell::Delay => twice(Fault::Delay(W::LATE)),
        Cell::ResetBeforeRead => {
            link.reset_next_connections(2);
            w.push_fault(Fault::Reset);
        }
        Cell::ResetAfterApply => twice(Fault::DropAfterCommit),
        Cell::LostAfterCommit => twice(Fault::LateAnswer(W::LATE)),
        Cell::Http5xx => twice(Fault::Http500),
        Cell::Garbage => twice(Fault::Garbage),
        Cell::Truncated => twice(Fault::Truncated),
        Cell::Tls => link.fail_next_handshakes(2),
        Cell::Down if life == 0 => link.go_down(down),
        Cell::Down => {}
    }
}

/// One cell: its lives under the fault, the clean last life and the checks; every problem found, in words.
pub async fn run_cell<W: VendorWorld>(cell: Cell, lives: usize, down: Duration, seed: u64) -> Vec<String> {
    let w = Arc::new(W::start(&format!("matrix-{}-{cell:?}", W::NAME), Mode::Soak).await);
    let mut rng = StdRng::seed_from_u64(seed ^ (cell as u64).wrapping_mul(0x9e37_79b9));
    let all = Arc::new(Mutex::new(Vec::<Told>::new()));
    let up_again = tokio::time::Instant::now() + down;
    let mut hits = 0;
    let mut life = 0;
    // The down cell lives on until the backend is back (the daemon killed again and again meanwhile).
    while life < lives || (cell == Cell::Down && tokio::time::Instant::now() < up_again) {
        let point = W::CRASH_POINTS[(life / 2) % W::CRASH_POINTS.len()];
        let at_point = life % 2 == 0;
        inject(&*w, cell, life, down);
        let env = if at_point { vec![("POSGATE_CRASH_AT", format!("{point}:1"))] } else { vec![] };
        let mut d = Daemon::start(w.config(), w.socket(), &env).await;
        let c = d.client.clone();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let pick = {
                let mut v = lock(&all);
                let open: Vec<usize> = (0..v.len()).filter(|&i| v[i].answer.is_none()).collect();
                if !open.is_empty() && rng.gen_bool(0.3) {
                    open[rng.gen_range(0..open.len())]
                } else {
                    let n = v.len();
                    let req = w.next_request_after(&mut rng, 0, n, &v);
                    v.push(Told::new(req));
                    n
                }
            };
            let (c, a) = (c.clone(), all.clone());
            tasks.push(tokio::spawn(async move { while !send(&c, W::PROFILE, &a, pick).await {} }));
        }
        if W::SETTLES && (point.contains("settle") || rng.gen_bool(0.3)) {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let _ = c.post(&format!("/v1/profiles/{}/settle", W::PROFILE), json!({}), None).await;
            }));
        }
        let limit = if at_point { W::LATE * 3 + Duration::from_secs(2) } else { Duration::from_millis(rng.gen_range(30..W::LATE.as_millis() as u64)) };
        tokio::select! {
            _ = crashed(&mut d) => hits += 1,
            _ = tokio::time::sleep(limit) => {}
        }
        d.kill9().await;
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        life += 1;
    }

    // The last life: faults off, the backend up, a clean daemon.
    w.quiet();
    let fired = link(w.sim_port()).fired();
    link(w.sim_port()).clear();
    let mut failures = Vec::new();
    if matches!(cell, Cell::Tls | Cell::ResetBeforeRead) && fired == 0 {
        failures.push("no connection was reset or handshake cut: the cell tested nothing".to_string());
    }
    if let Some(rest) = up_again.checked_duration_since(tokio::time::Instant::now()) {
        tokio::time::sleep(rest + Duration::from_millis(200)).await;
    }
    let d = Daemon::start(w.config(), w.socket(), &[]).await;
    let c = d.client.clone();
    let _ = tokio::time::timeout(Duration::from_secs(30), wait_recovered(&c, Duration::from_secs(30))).await;
    // Requests more with no fault: every world's check wants enough approvals (and cancels) to prove anything.
    for _ in 0..W::MATRIX_TAIL {
        let i = {
            let mut v = lock(&all);
            let n = v.len();
            let req = w.next_request_after(&mut rng, 1, n, &v);
            v.push(Told::new(req));
            n
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        while !send(&c, W::PROFILE, &all, i).await && tokio::time::Instant::now() < until {}
    }
    failures.extend(finish::<W>(&c, &all).await);
    let told = lock(&all).clone();
    failures.extend(w.check_ledger(&told, &c).await);
    let words = told.iter().fold(std::collections::BTreeMap::<String, usize>::new(), |mut m, t| {
        *m.entry(t.status().to_string()).or_default() += 1;
        m
    });
    let plain = if cell == Cell::Tls && !W::TLS { " (plain HTTP: connections cut at accept)" } else { "" };
    eprintln!(
        "matrix {} {cell:?}{plain}: {life} lives ({hits} at a crash point, {fired} connections cut), {} requests {words:?}, {} problems",
        W::NAME,
        told.len(),
        failures.len()
    );
    d.stop().await;
    failures.into_iter().map(|f| format!("{cell:?}: {f}")).collect()
}

/// Every cell of one backend, `POSGATE_MATRIX_PARALLEL` (default 5) at a time; panics with every problem.
pub async fn run<W: VendorWorld>() {
    let lives: usize = env_or("POSGATE_MATRIX_LIVES", 2);
    let down = Duration::from_secs(env_or("POSGATE_MATRIX_DOWN_SECS", 3));
    let seed: u64 = env_or("POSGATE_MATRIX_SEED", 0x3a7_0001);
    let parallel: usize = env_or("POSGATE_MATRIX_PARALLEL", 5);
    let only = std::env::var("POSGATE_MATRIX_CELLS").unwrap_or_default().to_lowercase();
    let cells: Vec<Cell> = CELLS.into_iter().filter(|c| only.is_empty() || only.split(',').any(|o| format!("{c:?}").to_lowercase() == o.trim())).collect();
    eprintln!("matrix {}: {} cells, {lives} lives each, down {down:?}, seed {seed}", W::NAME, cells.len());
    // The worlds' start-up futures are not `Send`: the cells share one thread (they mostly wait).
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let local = tokio::task::LocalSet::new();
    let failures = local
        .run_until(async move {
            let mut set = tokio::task::JoinSet::new();
            for cell in cells {
                let gate = gate.clone();
                set.spawn_local(async move {
                    let _permit = gate.acquire_owned().await;
                    run_cell::<W>(cell, lives, down, seed).await
                });
            }
            let mut failures = Vec::new();
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(f) => failures.extend(f),
                    Err(e) => failures.push(format!("a cell panicked: {e}")),
                }
            }
            failures
        })
        .await;
    assert!(failures.is_empty(), "matrix {} found {} problems:\n- {}", W::NAME, failures.len(), failures.join("\n- "));
}

macro_rules! matrix_tests {
    ($($name:ident => $world:ty);* $(;)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                run::<$world>().await;
            }
        )*
    };
}

matrix_tests! {
    matrix_loyalty => super::loyalty::LoyaltyWorld;
    matrix_lottery => super::lottery::LotteryWorld;
    matrix_wallet => super::wallet::WalletWorld;
    matrix_scenic => super::scenic::ScenicWorld;
    matrix_consign => super::consign::ConsignWorld;
}
