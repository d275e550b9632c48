//! The short fuzz run of CI: every parser target from its seed corpus, a few seconds each, no panic, hang or bloat.
use std::path::Path;
use std::time::Duration;

use posgate::fuzzing::runner::{self, Options};

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    runner::load_corpus(&dir).unwrap()
}

/// 17 targets at 2 s (or 50,000 execs) each stay under the 60 s CI budget on 2 cores.
#[test]
fn every_fuzz_target_survives_a_short_run_from_its_corpus() {
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-artifacts");
    let mut failures = Vec::new();
    for (name, f) in posgate::fuzzing::targets() {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        let opts = Options {
            execs: 50_000,
            time: Duration::from_secs(2),
            seed: 12,
            max_len: 16 * 1024,
            hang: Duration::from_secs(1),
            rss_limit_kib: 512 * 1024,
            artifacts: Some(artifacts.clone()),
        };
        let stats = runner::run(name, *f, &seeds, &opts);
        eprintln!("{stats}");
        assert!(stats.execs >= seeds.len() as u64, "{name}: not even the seeds ran");
        if let Some(x) = stats.finding {
            failures.push(format!("{name}: {} {} (input {:?}, {} bytes)", x.kind, x.message, x.path, x.input.len()));
        }
    }
    posgate::fuzzing::remove_fixture();
    assert!(failures.is_empty(), "fuzz findings:\n{}", failures.join("\n"));
}

/// The seeds are real examples: each one gets past its parser's first check (a corpus of rejects
/// would fuzz only the error path).
#[test]
fn fuzz_seeds_are_accepted_by_their_parsers() {
    for seed in corpus("journal_log_entry") {
        posgate::journal::log::entry::Entry::decode(&seed).unwrap();
    }
    for seed in corpus("answer_lottery") {
        posgate::backend::lottery::wire::parse_answer(&seed).unwrap();
    }
    for seed in corpus("answer_consign") {
        posgate::backend::consign::wire::read_answer(&seed).unwrap();
    }
    for seed in corpus("api_body") {
        assert!(serde_json::from_slice::<serde_json::Value>(&seed).is_ok());
    }
    for seed in corpus("profile") {
        let text = String::from_utf8(seed).unwrap();
        assert!(text.contains("backend ="), "a profile seed names its backend");
    }
}
