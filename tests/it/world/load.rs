//! The long load: 32 POS lanes against one real daemon, its RSS and open file descriptors printed as it runs and bounded after warm-up.
//!
//! `POSGATE_LOAD_SECS` (default 20 in CI; 3600 for the one-hour form in README.md) of 32 lanes sending
//! consumes to the loyalty host, one at a time each, resending with the same key until final. Every
//! `POSGATE_LOAD_EVERY_SECS` (default 60 in runs of 10 minutes or more, else 5) it prints the daemon's
//! VmRSS (`/proc/<pid>/status`), its open fds (`/proc/<pid>/fd`) and the consumes done. After the warm-up
//! (`POSGATE_LOAD_WARM_SECS`, default 300 in the long form, a third of the run in the short one) the
//! fds may not grow by more than 16 and the RSS by more than 20 % (at least 8 MiB) over the first sample
//! after warm-up. Why a warm-up: it fills sled's 8 MiB page cache (`journal/sled_cache.rs`).
//!
//! Flatness, in runs with at least 10 minutes after warm-up. The journal grows by every consume, and sled
//! keeps, for every page of it, cached or not, an entry in its page table and the page's log positions in
//! memory (vendor/sled/PATCHES.md): a daemon holding a bigger journal is bigger at rest too. The test
//! measures that cost in the same run instead of assuming it. The lanes first run a warm-up's length to
//! give the journal a size; the daemon is then sampled at rest ([`at_rest`]: started again on the journal,
//! with a tiny sled cache and jemalloc returning freed pages at once, idle for [`REST_SECS`]); a new daemon
//! runs the measured load (the bounds above are on it); at the end the daemon is sampled at rest again.
//! The second rest sample less the first, over the records written in between, is the journal's resident
//! cost per record. Over the second half of the measured time after warm-up the RSS (the mean of
//! [`WINDOW`] samples at each end: jemalloc returns pages in steps of several MB) may grow by that cost
//! times the consumes of that half plus [`FLAT_KIB`]: more is memory the running daemon keeps that a
//! daemon started on the same journal would not have. Figures (README.md): glibc's malloc grew ≈ 96 bytes
//! a consume after warm-up; jemalloc (the daemon's allocator on Linux) ≈ 32. At the end the host must
//! have applied exactly the consumes the lanes were told approved (a consume reversed after a timeout
//! under load is a safe end and only counted).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;

use super::loyalty::LoyaltyWorld;
use super::{env_or, Mode, VendorWorld, FINAL};
use crate::support::Daemon;

pub const LANES: usize = 32;

/// The most the RSS may grow over the second half of a long run's post-warm-up window beyond what the
/// journal added there costs at rest (KiB).
const FLAT_KIB: u64 = 4 * 1024;
/// sled's cache in the daemon restarted to be sampled at rest (`POSGATE_SLED_CACHE_KIB`): without it the
/// restart's reads would fill the 8 MiB cache and count as the journal's cost.
const REST_CACHE_KIB: u64 = 64;
/// Samples averaged at each end of the second half.
const WINDOW: usize = 5;
/// How long the daemon rests before each sample at rest in the long form (jemalloc returns freed pages
/// after 10 s); 2 s in the short one.
const REST_SECS: u64 = 20;

/// The daemon's resident set (KiB) and open file descriptors, from `/proc`.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    approved: AtomicUsize,
    declined: AtomicUsize,
    other: AtomicUsize,
    resends: AtomicUsize,
}

impl Counts {
    /// Consumes that reached a final status.
    fn done(&self) -> usize {
        self.approved.load(Ordering::Relaxed) + self.declined.load(Ordering::Relaxed) + self.other.load(Ordering::Relaxed)
    }
}

/// One lane: a new consume, resent with its key until final, then the next, until `stop`.
async fn lane(w: Arc<LoyaltyWorld>, c: ApiClient, n: usize, counts: Arc<Counts>, next: Arc<AtomicUsize>, stop: tokio::time::Instant) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(n as u64);
    while tokio::time::Instant::now() < stop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let req = w.next_request(&mut rng, n, i);
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let path = format!("/v1/profiles/{}/{}", LoyaltyWorld::PROFILE, req.operation);
        loop {
            match c.post(&path, req.body.clone(), Some(&req.key)).await {
                Ok((_, v)) if FINAL.contains(&v["status"].as_str().unwrap_or("")) => {
                    let counter = match v["status"].as_str() {
                        Some("approved") => &counts.approved,
                        Some("declined") => &counts.declined,
                        _ => &counts.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ => {
                    counts.resends.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// One phase of load: the lanes against `d` for `secs`, a sample printed every `every` s. Returns the
/// samples `(seconds into the phase, VmRSS KiB, open fds, consumes done)`, or the problem that ended it.
async fn drive(
    w: &Arc<LoyaltyWorld>,
    d: &Daemon,
    phase: &str,
    secs: u64,
    every: u64,
    shared: &(Arc<Counts>, Arc<AtomicUsize>),
) -> (Vec<(u64, u64, usize, usize)>, Option<String>) {
    let Some(pid) = d.pid() else { return (Vec::new(), Some("the daemon has no pid".into())) };
    let (counts, next) = shared;
    let start = tokio::time::Instant::now();
    let stop = start + Duration::from_secs(secs);
    let lanes: Vec<_> = (0..LANES).map(|n| tokio::spawn(lane(w.clone(), d.client.clone(), n, counts.clone(), next.clone(), stop))).collect();
    let mut samples = Vec::new();
    let mut problem = None;
    let mut last_done = counts.done();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(every), Duration::from_secs(every));
    loop {
        let now = tick.tick().await;
        let Some((rss, fds)) = sample(pid) else {
            problem = Some(format!("{phase}: the daemon's /proc entry is gone (it died)"));
            break;
        };
        let done = counts.done();
        let t = now.duration_since(start).as_secs();
        eprintln!(
            "load {phase} t={t:>5} s: VmRSS {rss} KiB, fds {fds}, consumes done {done} (+{} in {every} s, {:.0}/s), approved {}, declined {}, resends {}",
            done - last_done,
            (done - last_done) as f64 / every as f64,
            counts.approved.load(Ordering::Relaxed),
            counts.declined.load(Ordering::Relaxed),
            counts.resends.load(Ordering::Relaxed)
        );
        last_done = done;
        samples.push((t, rss, fds, done));
        if now >= stop {
            break;
        }
    }
    for l in lanes {
        let _ = tokio::time::timeout(Duration::from_secs(30), l).await;
    }
    (samples, problem)
}

/// The daemon started again on the journal as it is, with a tiny sled cache and jemalloc returning freed
/// pages within a second (`_RJEM_MALLOC_CONF`), sampled after `rest` seconds idle, then stopped: what
/// holding this journal costs resident, give or take the same fixed part every time.
async fn at_rest(w: &LoyaltyWorld, rest: u64) -> u64 {
    let env = [
        ("POSGATE_SLED_CACHE_KIB", REST_CACHE_KIB.to_string()),
        ("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".to_string()),
    ];
    let d = Daemon::start(w.config(), w.socket(), &env).await;
    tokio::time::sleep(Duration::from_secs(rest)).await;
    let rss = d.pid().and_then(sample).map(|(rss, _)| rss);
    d.stop().await;
    rss.unwrap_or_else(|| panic!("the daemon started to be sampled at rest died"))
}

/// The load run; panics when a bound is passed or the host's books differ from what the lanes were told.
///
/// Two phases on the same journal: `warm` seconds to give the journal a size, then the measured `secs`
/// on a newly started daemon (its own warm-up, then the bounds). Before and after the measured phase the
/// daemon is sampled at rest ([`at_rest`]): the difference over the records written in between is the
/// journal's resident cost per record, which the flatness rule allows ([`flatness`]).
pub async fn run() {
    let secs: u64 = env_or("POSGATE_LOAD_SECS", 20);
    let every: u64 = env_or("POSGATE_LOAD_EVERY_SECS", if secs >= 600 { 60 } else { 5 });
    let warm: u64 = env_or("POSGATE_LOAD_WARM_SECS", if secs >= 600 { 300 } else { secs / 3 });
    let rest: u64 = env_or("POSGATE_LOAD_REST_SECS", if secs >= 600 { REST_SECS } else { 2 });
    let w = Arc::new(LoyaltyWorld::start("load", Mode::Soak).await);
    let shared = (Arc::new(Counts::default()), Arc::new(AtomicUsize::new(0)));
    let counts = shared.0.clone();
    let mut failures = Vec::new();

    let d = Daemon::start(w.config(), w.socket(), &[]).await;
    eprintln!("load: {LANES} lanes; {warm} s to fill the journal, then {secs} s measured (warm-up {warm} s), a sample every {every} s");
    let (_, problem) = drive(&w, &d, "fill", warm.max(every), every, &shared).await;
    failures.extend(problem);
    d.stop().await;
    let (rest_1, records_1) = (at_rest(&w, rest).await, counts.requests.load(Ordering::Relaxed));
    eprintln!("load: at rest on {records_1} records: VmRSS {rest_1} KiB");

    let d = Daemon::start(w.config(), w.socket(), &[]).await;
    let (samples, problem) = drive(&w, &d, "measured", secs, every, &shared).await;
    failures.extend(problem);
    let after: Vec<_> = samples.iter().copied().filter(|s| s.0 >= warm).collect();
    d.stop().await;
    let (rest_2, records_2) = (at_rest(&w, rest).await, counts.requests.load(Ordering::Relaxed));
    let per_record = (rest_2.saturating_sub(rest_1) * 1024) as f64 / records_2.saturating_sub(records_1).max(1) as f64;
    eprintln!(
        "load: at rest on {records_2} records: VmRSS {rest_2} KiB; the journal costs {per_record:.1} bytes a record resident ({} KiB for {} records)",
        rest_2.saturating_sub(rest_1),
        records_2 - records_1
    );
    // The bounds after warm-up, on the RSS less the journal's resident cost of the consumes done since.
    // Only the long form counts that cost: from a few thousand records (the short form) the rest samples
    // are not yet linear in the records (hundreds of bytes a record), from a hundred thousand they are.
    let long = after.first().zip(after.last()).is_some_and(|(a, b)| b.0 - a.0 >= 600);
    let per_record = if long { per_record } else { 0.0 };
    if let Some(&(_, b_rss, b_fds, b_done)) = after.first() {
        let bound = (b_rss / 5).max(8 * 1024);
        for &(t, rss, fds, done) in &after {
            let journal = journal_kib(done - b_done, per_record);
            let beyond = rss.saturating_sub(b_rss + journal);
            eprintln!("load t={t:>5} s: VmRSS {rss} KiB = {b_rss} after warm-up + {journal} journal since + {beyond} beyond");
            if fds > b_fds + 16 {
                failures.push(format!("t={t} s: {fds} fds, {b_fds} after warm-up (bound +16)"));
            }
            if beyond > bound {
                failures.push(format!(
                    "t={t} s: VmRSS {rss} KiB, {b_rss} KiB after warm-up and {journal} KiB of journal since: {beyond} KiB more (bound {bound} KiB)"
                ));
            }
        }
        let peak = after.iter().fold((0, 0), |p, s| (p.0.max(s.1), p.1.max(s.2)));
        eprintln!("load: after warm-up VmRSS {b_rss} KiB, fds {b_fds}; peak after {} KiB, {} fds", peak.0, peak.1);
    }
    let rss_done: Vec<_> = after.iter().map(|&(t, rss, _, done)| (t, rss, done)).collect();
    failures.extend(flatness(&rss_done, per_record));

    let approved = counts.approved.load(Ordering::Relaxed);
    let applied = w.world.sim.ledger().applied_sales().len();
    if applied != approved {
        failures.push(format!("the host applied {applied} consumes, the lanes were told approved {approved}"));
    }
    // Reversed or failed (an answer later than the timeout on an overloaded machine) is a safe end: the
    // host's books above are the money check.
    eprintln!(
        "load done: {} consumes ({approved} approved, {} reversed or failed after timeouts under load) by {LANES} lanes",
        counts.requests.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed)
    );
    assert!(failures.is_empty(), "load found {} problems:\n- {}", failures.len(), failures.join("\n- "));
}

/// What `consumes` records cost the journal resident, in KiB, at `per_record` bytes each.
fn journal_kib(consumes: usize, per_record: f64) -> u64 {
    (consumes as f64 * per_record / 1024.0).round() as u64
}

/// The second half of the time after warm-up (runs with at least 10 minutes of it): the RSS's growth
/// between the means of [`WINDOW`] samples at each end, less what the consumes done in between cost the
/// journal at rest (`per_record` bytes), may not pass [`FLAT_KIB`]. Returns the problem, if any.
fn flatness(after: &[(u64, u64, usize)], per_record: f64) -> Option<String> {
    let (&(t0, ..), &(t1, ..)) = (after.first()?, after.last()?);
    if t1 - t0 < 600 {
        return None;
    }
    let half = &after[after.iter().position(|&(t, ..)| t >= t0 + (t1 - t0) / 2)?..];
    let n = WINDOW.min(half.len() / 2).max(1);
    let mean = |w: &[(u64, u64, usize)]| {
        let len = w.len() as u64;
        (w.iter().map(|s| s.0).sum::<u64>() / len, w.iter().map(|s| s.1).sum::<u64>() / len, w.iter().map(|s| s.2 as u64).sum::<u64>() / len)
    };
    let (ta, ra, da) = mean(&half[..n]);
    let (tb, rb, db) = mean(&half[half.len() - n..]);
    let grew = rb.saturating_sub(ra);
    let journal = journal_kib((db - da) as usize, per_record);
    let beyond = grew.saturating_sub(journal);
    eprintln!(
        "load: second half after warm-up, means of {n} samples at t≈{ta} s and t≈{tb} s: VmRSS {ra} -> {rb} KiB (+{grew} KiB, {:.1} bytes a consume over {} consumes); the journal's resident cost of those consumes {journal} KiB; beyond it {beyond} KiB (bound {FLAT_KIB} KiB)",
        (grew * 1024) as f64 / (db - da).max(1) as f64,
        db - da
    );
    (beyond > FLAT_KIB).then(|| format!("VmRSS grew {grew} KiB from t≈{ta} s to t≈{tb} s, {beyond} KiB beyond the journal's resident cost of its {} consumes (bound {FLAT_KIB} KiB): not flat", db - da))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_32_lanes() {
    run().await;
}

/// The flatness rule on made-up samples: growth the journal explains passes, the same growth with a
/// journal that costs nothing at rest fails, and noise inside the windows is averaged out.
#[test]
fn flatness_allows_only_what_the_journal_costs_at_rest() {
    // 300..=3600 s every 60 s, 170 consumes a second (the hour did 618,873), 32 bytes a consume resident, ± 3 MiB of swing.
    let samples: Vec<(u64, u64, usize)> = (5..=60u64)
        .map(|m| {
            let done = (m * 60 * 170) as usize;
            let swing = if m % 2 == 0 { 3 * 1024 } else { 0 };
            (m * 60, 140_000 + (done as u64 * 32) / 1024 + swing, done)
        })
        .collect();
    assert_eq!(flatness(&samples, 32.0), None);
    assert!(flatness(&samples, 0.0).is_some_and(|p| p.contains("not flat")));
    // Under 10 minutes after warm-up there is no second half to judge.
    assert_eq!(flatness(&samples[..9], 0.0), None);
}
