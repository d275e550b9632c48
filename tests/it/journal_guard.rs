//! A journal that cannot silently go backwards: the real daemon refuses a damaged, rolled-back or keyless journal.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::World;

const CARD: &str = "6222020000000000008";
/// Consumes each test journals before it damages the data directory.
const SALES: i64 = 22;

fn consume(i: i64) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 100 + i, "cashAmount": 0, "registerTraceNo": format!("R{i:08}")})
}

/// A world whose daemon approved `SALES` consumes (keys `k-0`..), then stopped.
async fn used_world(name: &str) -> World {
    let world = World::new(name).await;
    let d = world.start(&[]).await;
    for i in 0..SALES {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
        assert_eq!(v["trace"], format!("{:06}", i + 1), "{v}");
    }
    d.stop().await;
    world
}

/// Run `posgate serve` and expect it to refuse: exit non-zero within the time limit. Its stderr.
async fn refused(world: &World, what: &str) -> String {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .args(["serve", "--config"])
        .arg(&world.config)
        .env("POSGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn posgate");
    let out = match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("posgate started on {what} instead of refusing"),
    };
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "posgate exited 0 on {what}: {err}");
    err
}

/// `posgate journal verify --data-dir DIR`: (success, stdout + stderr).
async fn verify(data: &Path) -> (bool, String) {
    let out =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).args(["journal", "verify", "--data-dir"]).arg(data).output().await.expect("run verify");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// The review's case: `journal/db` damaged mid-log. sled recovers up to the damage without a word,
/// so the daemon used to start with fewer records, the trace counter back (000022 → 000014) and
/// smaller batch totals, and sent a POS retry of an approved Idempotency-Key again as a new sale
/// under a reused trace number. Now it refuses, naming the mark; restoring the journal starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_lost_records_is_refused_at_start_naming_the_mark() {
    let world = used_world("guard-lost").await;
    let data = world.dir.join("data");
    copy_dir(&data.join("journal"), &world.dir.join("backup"));
    // Cut the log in half: sled opens what is left as if nothing happened.
    let db = data.join("journal/db");
    let len = std::fs::metadata(&db).expect("db").len();
    std::fs::OpenOptions::new().write(true).open(&db).expect("open db").set_len(len / 2).expect("truncate");

    let err = refused(&world, "a journal that lost records").await;
    assert!(err.contains("behind its high-water mark") && err.contains("journal.hwm"), "{err}");
    assert!(err.contains("restore the journal folder") && err.contains("posgate journal verify"), "{err}");
    // Proof that sled really opens it with fewer records and an older trace counter (verify opens
    // a copy without the guard and counts), and that the refusal names those numbers.
    let (ok, report) = verify(&data).await;
    assert!(!ok, "{report}");
    let lost = regex_lite::Regex::new(r"last record id (\d+) < (\d+) in the mark").expect("re");
    let caps = lost.captures(&report).unwrap_or_else(|| panic!("verify should name the lost ids: {report}"));
    let (now, mark): (u64, u64) = (caps[1].parse().expect("n"), caps[2].parse().expect("n"));
    assert!(now < mark && mark > SALES as u64, "{report}");
    let trace = regex_lite::Regex::new(r"trace (\d{6}) < (\d{6})").expect("re");
    let caps = trace.captures(&report).unwrap_or_else(|| panic!("verify should name the trace counter: {report}"));
    assert_eq!(&caps[2], format!("{SALES:06}"), "{report}");
    assert!(err.contains(&format!("last record id {now} < {mark}")) && err.contains(&format!("trace {} < {SALES:06}", &caps[1])), "{err}");

    // Restored from the backup, it starts, and the POS retry gets the first answer, not a new sale.
    std::fs::remove_dir_all(data.join("journal")).expect("rm");
    copy_dir(&world.dir.join("backup"), &data.join("journal"));
    let d = world.start(&[]).await;
    let sent = world.sim.state_snapshot().transactions.len();
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(SALES - 1), Some(&format!("k-{}", SALES - 1))).await.expect("retry");
    assert_eq!((s, v["status"].as_str(), v["trace"].as_str()), (200, Some("approved"), Some(format!("{SALES:06}").as_str())), "{v}");
    assert_eq!(world.sim.state_snapshot().transactions.len(), sent, "the retry must not reach the vendor again");
    d.stop().await;
}

/// Deleting `journal.key` used to make a new key silently: the daemon started, and every sealed
/// card number recovery must replay no longer opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_data_key_with_sealed_records_is_refused() {
    let world = used_world("guard-key").await;
    let key = world.dir.join("data/journal.key");
    std::fs::remove_file(&key).expect("rm key");
    let err = refused(&world, "a journal whose data key is gone").await;
    assert!(err.contains("journal.key is missing") && err.contains("sealed"), "{err}");
    assert!(!key.exists(), "no new key may be made for a used journal");
    let (ok, report) = verify(&world.dir.join("data")).await;
    assert!(!ok && report.contains(&format!("{SALES} records hold sealed fields but the data key")), "{report}");
}

/// Deleting `journal/` used to start an empty journal from trace 000000 and forget every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_journal_with_a_mark_is_refused() {
    let world = used_world("guard-nojournal").await;
    std::fs::remove_dir_all(world.dir.join("data/journal")).expect("rm journal");
    let err = refused(&world, "a data directory whose journal is gone").await;
    assert!(err.contains("is missing") && err.contains("journal.hwm") && err.contains(&format!("trace {SALES:06}")), "{err}");
    assert!(!world.dir.join("data/journal/db").exists(), "the refusal must not start an empty journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_mark_is_refused() {
    let world = used_world("guard-badmark").await;
    let mark = world.dir.join("data/journal.hwm");
    let mut bytes = std::fs::read(&mark).expect("mark");
    for b in bytes.iter_mut().filter(|b| **b == b':') {
        *b = b';';
    }
    std::fs::write(&mark, &bytes).expect("write mark");
    let err = refused(&world, "a corrupt high-water mark").await;
    assert!(err.contains("high-water mark") && err.contains("is corrupt") && err.contains("checksum"), "{err}");
}

/// A brand-new data directory (no mark, no journal, no key) starts, and keeps a mark from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_dir_starts_and_keeps_a_mark() {
    let world = World::new("guard-fresh").await;
    assert!(!world.dir.join("data").exists());
    let d = world.start(&[]).await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(0), Some("k-0")).await.expect("consume");
    assert_eq!(s, 200, "{v}");
    d.stop().await;
    assert!(world.dir.join("data/journal.hwm").exists(), "no high-water mark beside the journal");
    let (ok, report) = verify(&world.dir.join("data")).await;
    assert!(ok && report.contains("profile loyalty: trace 000001"), "{report}");
    // And a clean restart is not mistaken for damage.
    let d = world.start(&[]).await;
    d.stop().await;
}
