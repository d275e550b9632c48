//! `posgate bench --only startup`: ready-to-serve time and idle RSS of the real binary, empty and with a big journal.
#![allow(clippy::disallowed_methods)]
use std::time::{Duration, Instant};

use super::{ms, BenchError};
use crate::cli::BenchArgs;

/// Start the real binary on `config`; time until `GET /v1/status` answers, then read its idle RSS.
async fn time_start(config: &std::path::Path, sock: &std::path::Path) -> Result<(Duration, u64), BenchError> {
    let (mut child, ready) = crate::bench_journal::start(config, sock).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = child.id().map(super::rss_kib).unwrap_or(0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok((ready, rss_kib))
}

/// Ready-to-serve time and idle RSS of the real daemon, with an empty journal and with a big one.
pub(super) async fn startup(args: &BenchArgs) -> Result<(), BenchError> {
    use crate::journal::{Change, JournalStore, NewRecord};
    let dir = std::env::temp_dir().join(format!("posgate-bench-start-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis()));
    let setup = crate::demo::prepare(&dir, None, None).await.map_err(BenchError::Setup)?;
    drop(setup);
    let config = dir.join("posgate.toml");
    std::fs::write(&config, "data_dir = \".\"\nunix_socket = \"bench.sock\"\n").map_err(|e| BenchError::Setup(e.to_string()))?;
    let sock = dir.join("bench.sock");
    let (ready, rss) = time_start(&config, &sock).await?;
    println!("start-up, empty journal: ready to serve in {:.1} ms; idle RSS {:.1} MiB (targets: <= 100 ms, <= 15 MiB)", ms(ready), rss as f64 / 1024.0);

    let n = args.startup_records;
    let t = Instant::now();
    {
        let j = crate::journal::SledJournal::open(&dir.join("journal")).map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut template = crate::engine::Record::new("loyalty", "consume", crate::model::Class::Financial, "900001", "2026-01-01T00:00:00.000Z");
        template.amount_fen = 1;
        template.card = Some("622202*********0008".into());
        template.request = serde_json::json!({"cardNo": "622202*********0008", "consumeType": "01", "pointAmount": 1, "cashAmount": 0})
            .as_object()
            .cloned()
            .unwrap_or_default();
        template.totals = vec![("pointDebitCount".into(), 1), ("pointDebitAmount".into(), 1), ("totalTransCount".into(), 1)];
        for i in 0..n {
            let crate::journal::Begun::Created(mut r) =
                j.begin(NewRecord { record: template.clone(), allocate_trace: false }).map_err(|e| BenchError::Setup(e.to_string()))?
            else {
                continue;
            };
            r.status = crate::engine::Status::Approved;
            r.trace = format!("{:06}", i % 999_999 + 1);
            let totals = r.totals.iter().map(|(k, d)| (r.profile.clone(), r.batch.clone(), k.clone(), *d)).collect();
            j.commit(Change { records: vec![r], totals, profile_states: Vec::new() }).map_err(|e| BenchError::Setup(e.to_string()))?;
        }
        j.sync().await.map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    let fill = t.elapsed();
    let size: u64 = std::fs::read_dir(dir.join("journal")).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0);
    // The first start replays sled's whole log since it was last opened (here: all N writes, as after
    // a crash of a daemon that ran since its last start); sled snapshots while opening, so the next
    // start reads the snapshot instead.
    for which in ["first start after the writes (log replay)", "next start (from sled's snapshot)"] {
        let (ready, rss) = time_start(&config, &sock).await?;
        println!(
            "start-up, journal of {n} records ({:.0} MiB on disk, filled in {:.1} s), {which}: ready to serve in {:.1} ms; idle RSS {:.1} MiB (target: <= 1 s)",
            size as f64 / 1048576.0,
            fill.as_secs_f64(),
            ms(ready),
            rss as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
