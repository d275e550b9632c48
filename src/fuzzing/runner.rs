//! The stable fuzz runner: coverage-free mutation of a seed corpus, catching panics, slow execs and memory growth.
//!
//! No nightly and no sanitizer: each exec runs the target in this process under `catch_unwind`, a
//! watchdog thread ends the process (after writing the input) when one exec hangs, and RSS is sampled
//! from `/proc/self/statm`. Mutations are the usual blind ones (bit flips, interesting bytes, inserts,
//! deletes, duplicated runs, splices of two seeds, dictionary tokens cut from the corpus, length
//! extremes), stacked 1 to 8 deep on a seed.
// The runner measures itself (run length, the watchdog), not engine time: no injected clock here.
#![allow(clippy::disallowed_methods)]
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long and how hard to run one target.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stop after this many execs.
    pub execs: u64,
    /// Or after this long, whichever comes first.
    pub time: Duration,
    /// The PRNG seed (the same seed and corpus give the same inputs).
    pub seed: u64,
    /// Longest input made (length extremes go up to it).
    pub max_len: usize,
    /// An exec taking more CPU than this is a finding (`slow`); thirty times this in wall time and the
    /// watchdog ends the process (`hang`).
    pub hang: Duration,
    /// RSS above this (KiB) is a finding (`rss`).
    pub rss_limit_kib: u64,
    /// Where findings are written (`<dir>/<target>/<kind>-<hash>`); `None` keeps them in memory only.
    pub artifacts: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            execs: 1_000_000,
            time: Duration::from_secs(3600),
            seed: 0x5eed,
            max_len: 64 * 1024,
            hang: Duration::from_secs(1),
            rss_limit_kib: 1024 * 1024,
            artifacts: None,
        }
    }
}

/// What broke, with the input that broke it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `panic`, `slow` or `rss`.
    pub kind: &'static str,
    pub message: String,
    pub input: Vec<u8>,
    /// Where the input was written, when an artifacts folder was given.
    pub path: Option<PathBuf>,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Stats {
    pub target: &'static str,
    pub execs: u64,
    pub elapsed: Duration,
    pub max_rss_kib: u64,
    /// The slowest exec seen.
    pub slowest: Duration,
    pub finding: Option<Finding>,
}

impl Stats {
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<18} execs {:>10}  {:>9.0} execs/s  {:>7.1} s  max RSS {:>7} KiB  slowest {:>6} µs  {}",
            self.target,
            self.execs,
            self.execs_per_sec(),
            self.elapsed.as_secs_f64(),
            self.max_rss_kib,
            self.slowest.as_micros(),
            match &self.finding {
                None => "ok".to_string(),
                Some(x) => format!("FINDING {}: {}", x.kind, x.message),
            }
        )
    }
}

#[derive(Debug, Error)]
pub enum CorpusError {
    #[error("reading the corpus {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// Every file of `dir` (not recursive), sorted by name; a missing folder is an empty corpus.
pub fn load_corpus(dir: &Path) -> Result<Vec<Vec<u8>>, CorpusError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CorpusError::Read { path: dir.to_path_buf(), source }),
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.into_iter().map(|p| std::fs::read(&p).map_err(|source| CorpusError::Read { path: p, source })).collect()
}

/// The process's resident set in KiB (0 where `/proc` is missing).
pub fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4
}

/// xorshift64*: small, fast, reproducible; fuzzing needs no better.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"-0",
    b"1e999",
    b"-1e-999",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-9223372036854775809",
    b"null",
    b"true",
    b"\"\"",
    b"{}",
    b"[]",
    b"\\u0000",
    b"\\ud800",
    b"%",
    b"%zz",
    b"\r\n",
    b"\x00",
    b"\xff\xfe",
    b"\xe4\xb8\xad",
    b"\x02",
    b"\x03",
    b"\x1d",
    b"^",
    b"=",
    b"?",
    b";",
    b"]",
    b"[[",
    b"\"\"\"",
];

/// Tokens cut from the corpus at JSON, form, TOML and track delimiters (2 to 40 bytes, at most 1024).
fn dictionary(corpus: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut seen = std::collections::BTreeSet::new();
    for input in corpus {
        for tok in input.split(|b| b" \t\r\n\"'=&,:{}[]()<>;|^?%".contains(b)) {
            if (2..=40).contains(&tok.len()) {
                seen.insert(tok.to_vec());
            }
            if seen.len() >= 1024 {
                break;
            }
        }
    }
    seen.into_iter().collect()
}

struct Mutator {
    rng: Rng,
    dict: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    fn pick<'a>(&mut self, corpus: &'a [Vec<u8>]) -> &'a [u8] {
        if corpus.is_empty() {
            return &[];
        }
        &corpus[self.rng.below(corpus.len())]
    }

    fn token(&mut self) -> Vec<u8> {
        if !self.dict.is_empty() && self.rng.chance(2) {
            self.dict[self.rng.below(self.dict.len())].clone()
        } else {
            INTERESTING[self.rng.below(INTERESTING.len())].to_vec()
        }
    }

    fn mutate(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut v = self.pick(corpus).to_vec();
        let rounds = 1 + self.rng.below(8);
        for _ in 0..rounds {
            self.once(&mut v, corpus);
        }
        v.truncate(self.max_len);
        v
    }

    fn once(&mut self, v: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let len = v.len();
        match self.rng.below(14) {
            0 if len > 0 => {
                let i = self.rng.below(len);
                v[i] ^= 1 << self.rng.below(8);
            }
            1 if len > 0 => {
                let i = self.rng.below(len);
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b'"', b'\\', b'\n', b' '][self.rng.below(10)];
            }
            2 if len > 0 => {
                let i = self.rng.below(len);
                v[i] = self.rng.next() as u8;
            }
            3 => {
                let i = self.rng.below(len + 1);
                let n = 1 + self.rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            4 | 5 if len > 0 => {
                let i = self.rng.below(len);
                let n = 1 + self.rng.below((len - i).min(32));
                v.drain(i..i + n);
            }
            6 if len > 0 => {
                // Duplicate a run (repeats keys, nests brackets).
                let i = self.rng.below(len);
                let n = 1 + self.rng.below((len - i).min(64));
                let run = v[i..i + n].to_vec();
                let at = self.rng.below(v.len() + 1);
                v.splice(at..at, run);
            }
            7 => {
                // Splice: our head, another seed's tail.
                let other = self.pick(corpus).to_vec();
                let cut = self.rng.below(len + 1);
                let from = self.rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            8 | 9 => {
                let tok = self.token();
                let i = self.rng.below(len + 1);
                v.splice(i..i, tok);
            }
            10 if len > 0 => {
                // Overwrite with a token.
                let tok = self.token();
                let i = self.rng.below(len);
                let end = (i + tok.len()).min(len);
                v.splice(i..end, tok);
            }
            11 if self.rng.chance(8) => {
                // Length extreme: one run repeated up to max_len.
                let i = self.rng.below(len + 1);
                let unit = if len > 0 && self.rng.chance(2) {
                    let n = 1 + self.rng.below((len - i.min(len - 1)).min(16));
                    v[i.min(len - 1)..i.min(len - 1) + n].to_vec()
                } else {
                    self.token()
                };
                let target = self.rng.below(self.max_len.max(1)) + 1;
                let mut fill = Vec::with_capacity(target);
                while fill.len() < target && !unit.is_empty() {
                    fill.extend_from_slice(&unit);
                }
                v.splice(i..i, fill);
            }
            12 if self.rng.chance(4) => {
                // Length extreme: cut to almost nothing.
                v.truncate(self.rng.below(4));
            }
            13 if len > 1 => {
                // Swap two bytes.
                let (a, b) = (self.rng.below(len), self.rng.below(len));
                v.swap(a, b);
            }
            _ => {
                let i = self.rng.below(len + 1);
                v.insert(i, self.rng.next() as u8);
            }
        }
    }
}

/// Run `f` on the seeds, then on mutations of them, until `opts` says stop or something breaks.
pub fn run(target: &'static str, f: fn(&[u8]), corpus: &[Vec<u8>], opts: &Options) -> Stats {
    let started = Instant::now();
    let mut m = Mutator { rng: Rng(opts.seed | 1), dict: dictionary(corpus), max_len: opts.max_len };
    let fallback = [Vec::new()];
    let corpus = if corpus.is_empty() { &fallback[..] } else { corpus };
    let watch = Watchdog::start(target, opts);
    let mut stats = Stats { target, execs: 0, elapsed: Duration::ZERO, max_rss_kib: rss_kib(), slowest: Duration::ZERO, finding: None };
    let mut last_rss_check = 0u64;
    while stats.execs < opts.execs && started.elapsed() < opts.time {
        let input = if (stats.execs as usize) < corpus.len() { corpus[stats.execs as usize].clone() } else { m.mutate(corpus) };
        watch.begin(&input);
        let cpu0 = thread_cpu();
        let r = catch_unwind(AssertUnwindSafe(|| f(&input)));
        let took = thread_cpu().saturating_sub(cpu0);
        watch.end();
        stats.execs += 1;
        stats.slowest = stats.slowest.max(took);
        let found = match r {
            Err(p) => Some(("panic", panic_text(&*p))),
            Ok(()) if took > opts.hang => Some(("slow", format!("one exec took {} ms of CPU (bound {} ms)", took.as_millis(), opts.hang.as_millis()))),
            Ok(()) if stats.execs - last_rss_check >= 256 => {
                last_rss_check = stats.execs;
                let rss = rss_kib();
                stats.max_rss_kib = stats.max_rss_kib.max(rss);
                (rss > opts.rss_limit_kib).then(|| ("rss", format!("RSS {rss} KiB above the bound of {} KiB", opts.rss_limit_kib)))
            }
            Ok(()) => None,
        };
        if let Some((kind, message)) = found {
            let path = opts.artifacts.as_deref().and_then(|dir| write_artifact(dir, target, kind, &input));
            stats.finding = Some(Finding { kind, message, input, path });
            break;
        }
    }
    watch.stop();
    stats.max_rss_kib = stats.max_rss_kib.max(rss_kib());
    stats.elapsed = started.elapsed();
    stats
}

/// CPU time of this thread: the slow bound counts work, not the wait for a core on a busy machine.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec().max(0) as u64, (tv.tv_usec().max(0) as u32) * 1000);
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(non-text panic)".into())
}

/// `<dir>/<target>/<kind>-<fnv64 of the input>`; the path, or `None` if it could not be written.
pub fn write_artifact(dir: &Path, target: &str, kind: &str, input: &[u8]) -> Option<PathBuf> {
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{kind}-{hash:016x}"));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// A thread that ends the process when one exec runs past thirty times the hang bound in wall time
/// (generous: a loaded machine stretches wall time): a real hang cannot be caught in-process, so its
/// input is written first.
struct Watchdog {
    /// Start of the running exec in ms since `epoch`, 0 when none runs.
    running_since: Arc<AtomicU64>,
    input: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(target: &'static str, opts: &Options) -> Watchdog {
        let running_since = Arc::new(AtomicU64::new(0));
        let input = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let limit = opts.hang.saturating_mul(30);
        let artifacts = opts.artifacts.clone();
        let (rs, inp, st) = (running_since.clone(), input.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let since = rs.load(Ordering::Relaxed);
                    if since == 0 {
                        continue;
                    }
                    let now = epoch.elapsed().as_millis() as u64;
                    if now.saturating_sub(since) > limit.as_millis() as u64 {
                        let bytes = inp.lock().map(|g| g.clone()).unwrap_or_default();
                        let path = artifacts.as_deref().and_then(|d| write_artifact(d, target, "hang", &bytes));
                        eprintln!("{target}: FINDING hang: one exec ran over {} ms; input {} bytes at {path:?}", limit.as_millis(), bytes.len());
                        std::process::exit(3);
                    }
                }
            })
            .ok();
        Watchdog { running_since, input, stop, epoch, thread }
    }

    fn begin(&self, input: &[u8]) {
        if let Ok(mut g) = self.input.lock() {
            g.clear();
            g.extend_from_slice(input);
        }
        self.running_since.store((self.epoch.elapsed().as_millis() as u64).max(1), Ordering::Relaxed);
    }

    fn end(&self) {
        self.running_since.store(0, Ordering::Relaxed);
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boom(b: &[u8]) {
        if b.windows(3).any(|w| w == b"BUG") {
            panic!("found the bug");
        }
    }

    #[test]
    fn a_panicking_input_is_caught_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { execs: 200_000, artifacts: Some(dir.path().to_path_buf()), ..Options::default() };
        let stats = run("boom", boom, &[b"xxBUxx".to_vec(), b"G".to_vec()], &opts);
        let f = stats.finding.expect("the mutator finds BUG by splicing or tokens");
        assert_eq!(f.kind, "panic");
        assert!(f.input.windows(3).any(|w| w == b"BUG"));
        assert_eq!(std::fs::read(f.path.unwrap()).unwrap(), f.input);
    }

    #[test]
    fn mutations_stay_within_max_len() {
        let mut m = Mutator { rng: Rng(7), dict: dictionary(&[b"{\"a\": 1}".to_vec()]), max_len: 100 };
        for _ in 0..10_000 {
            assert!(m.mutate(&[b"{\"a\": 1}".to_vec()]).len() <= 100);
        }
    }
}
