//! `posgate-fuzz`: the stable fuzz runner over every parser target (no nightly needed).
//!
//! ```text
//! cargo run --release --example posgate-fuzz -- [TARGET|all] [--execs N] [--secs S] [--seed X]
//!     [--corpus fuzz/corpus] [--artifacts fuzz/artifacts] [--hang-ms 1000] [--rss-mib 1024] [--list]
//! ```
//! Runs the targets one after the other from their seed corpus, prints execs, execs/s and max RSS per
//! target, writes a finding's input to `<artifacts>/<target>/` and exits 1 (3 on a hang).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use posgate::fuzzing::runner::{self, Options};

fn usage() -> ExitCode {
    eprintln!("usage: posgate-fuzz [TARGET|all] [--execs N] [--secs S] [--seed X] [--corpus DIR] [--artifacts DIR] [--hang-ms MS] [--rss-mib MIB] [--list]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut which = "all".to_string();
    let mut opts = Options { artifacts: Some(PathBuf::from("fuzz/artifacts")), ..Options::default() };
    let mut corpus = PathBuf::from("fuzz/corpus");
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--list" => {
                for (name, _) in posgate::fuzzing::targets() {
                    println!("{name}");
                }
                return ExitCode::SUCCESS;
            }
            "--execs" => opts.execs = value().parse().unwrap_or(opts.execs),
            "--secs" => opts.time = Duration::from_secs_f64(value().parse().unwrap_or(3600.0)),
            "--seed" => opts.seed = value().parse().unwrap_or(opts.seed),
            "--corpus" => corpus = PathBuf::from(value()),
            "--artifacts" => opts.artifacts = Some(PathBuf::from(value())),
            "--hang-ms" => opts.hang = Duration::from_millis(value().parse().unwrap_or(1000)),
            "--rss-mib" => opts.rss_limit_kib = value().parse::<u64>().unwrap_or(1024) * 1024,
            "-h" | "--help" => return usage(),
            s if s.starts_with('-') => return usage(),
            s => which = s.to_string(),
        }
    }
    let chosen: Vec<_> = posgate::fuzzing::targets().iter().filter(|(n, _)| which == "all" || *n == which).collect();
    if chosen.is_empty() {
        eprintln!("no target {which:?}; --list shows them");
        return ExitCode::from(2);
    }
    // Panics are caught and reported once per finding; keep the default hook's line off the screen.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, f) in chosen {
        let seeds = match runner::load_corpus(&corpus.join(name)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let stats = runner::run(name, *f, &seeds, &opts);
        println!("{stats}  ({} seeds)", seeds.len());
        if let Some(x) = &stats.finding {
            let shown = String::from_utf8_lossy(&x.input[..x.input.len().min(200)]).into_owned();
            println!("  input ({} bytes) written to {:?}: {shown:?}", x.input.len(), x.path);
            failed = true;
        }
    }
    posgate::fuzzing::remove_fixture();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
