//! Times opening a sled journal of N records (default 200,000) made the way the engine writes them.
#![allow(clippy::disallowed_methods)]
use std::time::Instant;

use posgate::journal::{Begun, Change, JournalStore, NewRecord, SledJournal};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("openjournal-{}", std::process::id()));
    let mut template = posgate::engine::Record::new("loyalty", "consume", posgate::model::Class::Financial, "900001", "2026-01-01T00:00:00.000Z");
    template.amount_fen = 1;
    template.card = Some("622202*********0008".into());
    template.request =
        serde_json::json!({"cardNo": "622202*********0008", "consumeType": "01", "pointAmount": 1, "cashAmount": 0}).as_object().cloned().unwrap_or_default();
    template.totals = vec![("pointDebitCount".into(), 1), ("pointDebitAmount".into(), 1), ("totalTransCount".into(), 1)];
    {
        let j = SledJournal::open(&dir).unwrap();
        for _ in 0..n {
            let Begun::Created(mut r) = j.begin(NewRecord { record: template.clone(), allocate_trace: true }).unwrap() else { continue };
            r.status = posgate::engine::Status::Approved;
            let totals = r.totals.iter().map(|(k, d)| (r.profile.clone(), r.batch.clone(), k.clone(), *d)).collect();
            j.commit(Change { records: vec![r], totals, profile_states: Vec::new() }).unwrap();
        }
        j.sync().await.unwrap();
    }
    let size: u64 = std::fs::read_dir(&dir).unwrap().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    for _ in 0..2 {
        let t = Instant::now();
        let j = SledJournal::open(&dir).unwrap();
        let opened = t.elapsed();
        let pending = j.pending().unwrap().len();
        println!("{n} records, {:.0} MiB: SledJournal::open {:?}, then pending scan {:?} ({pending})", size as f64 / 1048576.0, opened, t.elapsed() - opened);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
