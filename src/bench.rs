//! `posgate bench`: consume latency against the floor (2 × fsync + 1 HTTPS round trip), the local API's own
//! cost, durable throughput, scan latency, start-up, and the shipped binary's size.
//!
//! Figures are printed, never asserted: these machines are noisy.
use std::time::Duration;

use thiserror::Error;

use crate::cli::BenchArgs;

mod binary;
mod consume;
mod scan;
mod startup;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("bench setup: {0}")]
    Setup(String),
    #[error("bench request failed: {0}")]
    Request(String),
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A process's resident set in KiB, from `/proc/<pid>/status` (0 where there is no procfs).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    println!("posgate bench ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let part = |name: &str| args.only == "all" || args.only == name;
    if part("binary") {
        binary::size(args.binary.as_deref())?;
    }
    if part("consume") {
        consume::consumes(&args).await?;
    }
    if part("scan") {
        scan::scans(&args).await?;
    }
    if part("startup") {
        startup::startup(&args).await?;
    }
    if part("journal") {
        crate::bench_journal::run(args.startup_records, args.journal_template.as_deref()).await?;
    }
    Ok(())
}
