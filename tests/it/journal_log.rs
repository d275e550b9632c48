//! The journal's log under the real daemon: a SIGKILL during a checkpoint, a torn log tail, damage mid-log.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Daemon, World};

const CARD: &str = "6222020000000000008";

fn consume(i: usize) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 100 + i, "cashAmount": 0, "registerTraceNo": format!("L{i:08}")})
}

/// The newest log segment of the world's journal.
fn last_segment(world: &World) -> PathBuf {
    let dir = world.dir.join("data/journal/log");
    let mut segs: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("log dir").flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "seg")).collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// (offset, length with header) of every entry of a segment file, walked by the entries' own lengths.
fn entries(seg: &Path) -> Vec<(usize, usize)> {
    let b = std::fs::read(seg).expect("read segment");
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= b.len() {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().expect("4")) as usize;
        if len == 0 && b[off + 4..off + 8] == [0, 0, 0, 0] {
            break;
        }
        out.push((off, 8 + len));
        off += 8 + len;
    }
    out
}

fn write_at(path: &Path, off: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).expect("open").write_all_at(bytes, off as u64).expect("write");
}

/// A restart after a crash keeps every answered sale (`all_kept`) and approves a new one.
async fn restart_keeps_all_and_sells_on(world: &World, answered: &[(usize, String)], what: &str) {
    let d = world.start(&[]).await;
    all_kept(world, &d, answered).await;
    let n = answered.len() + 100;
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(n), Some(&format!("k-{n}"))).await.expect("consume after");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{what}: {v}");
    d.stop().await;
}

/// Every consume in `answered` (index, trace) is in the journal: its retry under the same key gets the first
/// answer, and the vendor sees nothing new.
async fn all_kept(world: &World, d: &Daemon, answered: &[(usize, String)]) {
    let sent = world.sim.state_snapshot().transactions.len();
    for (i, trace) in answered {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(*i), Some(&format!("k-{i}"))).await.expect("retry");
        assert_eq!((s, v["status"].as_str(), v["trace"].as_str()), (200, Some("approved"), Some(trace.as_str())), "consume {i}: {v}");
    }
    assert_eq!(world.sim.state_snapshot().transactions.len(), sent, "a retry of an answered consume reached the vendor again");
}

/// Consumes one at a time until one is not answered within `wait` (the daemon is held at a crash point) or
/// `max` were answered. The answered ones, (index, trace).
async fn sell_until_held(d: &Daemon, max: usize, wait: Duration) -> Vec<(usize, String)> {
    let mut answered = Vec::new();
    for i in 0..max {
        match tokio::time::timeout(wait, d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}")))).await {
            Ok(Ok((200, v))) if v["status"] == "approved" => answered.push((i, v["trace"].as_str().unwrap_or_default().to_string())),
            Ok(other) => panic!("consume {i}: {other:?}"),
            Err(_) => break,
        }
    }
    answered
}

/// Regression: when the log's fdatasync failed, the daemon told that group's writers and went on
/// answering later groups, although after a failed fdatasync the kernel may drop the failed pages while
/// later ones reach the disk (a hole the next start refuses as damage mid-log). Now the failure stops
/// the daemon (exit code 75) before anything later is answered; the restart keeps every consume answered
/// before it, and the one in flight, resent with its key, ends final and reaches the vendor at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_sync_stops_the_daemon_before_anything_later_is_answered() {
    let world = World::new("jlog-syncfail").await;
    let mut d = world.start(&[("POSGATE_FAIL_AT", "log_sync:14".to_string())]).await;
    let mut answered = Vec::new();
    let mut in_flight = None;
    for i in 0..40 {
        match tokio::time::timeout(Duration::from_secs(10), d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}")))).await {
            Ok(Ok((200, v))) if v["status"] == "approved" => answered.push((i, v["trace"].as_str().unwrap_or_default().to_string())),
            _ => {
                in_flight = Some(i);
                break;
            }
        }
    }
    let Some(i) = in_flight else { panic!("the injected fdatasync failure was never reached ({} answered)", answered.len()) };
    assert!(answered.len() >= 3, "the 14th fdatasync came after only {} consumes", answered.len());
    eprintln!("{} consumes answered, consume {i} in flight when the fdatasync failed", answered.len());
    let code = d.exit_code(Duration::from_secs(10)).await;
    assert_eq!(code, Some(posgate::journal::EXIT_STORE_BROKEN), "the daemon must exit when the log's fdatasync fails (consume {i} was in flight)");
    let d = world.start(&[]).await;
    crate::support::wait_recovered(&d.client, Duration::from_secs(30)).await;
    all_kept(&world, &d, &answered).await;
    let before = world.sim.state_snapshot().transactions.len();
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("resend");
    assert_eq!(s, 200, "{v}");
    assert!(crate::world::FINAL.contains(&v["status"].as_str().unwrap_or("")), "consume {i} resent after the restart: {v}");
    eprintln!("consume {i} resent after the restart: {}", v["status"]);
    let (_, again) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("resend");
    assert_eq!((again["status"].clone(), again["trace"].clone()), (v["status"].clone(), v["trace"].clone()), "a second resend changed the answer");
    assert!(world.sim.state_snapshot().transactions.len() <= before + 1, "consume {i} reached the vendor more than once");
    d.stop().await;
}

/// SIGKILL while a checkpoint has flushed sled but not recorded its log position: sales go on meanwhile
/// (the checkpoint holds no lock the sale path needs), and the next start keeps every answered sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_checkpoint_loses_nothing_answered() {
    let world = World::new("jlog-ckpt").await;
    // Checkpoint 1 is the one at first open; 2 is the first the running daemon makes (every 8 changes).
    let env = [("POSGATE_CRASH_AT", "in_checkpoint:2".to_string()), ("POSGATE_JOURNAL_CHECKPOINT_EVERY", "8".to_string())];
    let mut d = world.start(&env).await;
    let mut answered = Vec::new();
    let mut held = false;
    for i in 0..60 {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
        answered.push((i, v["trace"].as_str().unwrap_or_default().to_string()));
        held = held || d.drain().iter().any(|l| l.contains("posgate-crashpoint in_checkpoint"));
        if held && answered.len() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(held, "the checkpoint crash point was never reached");
    d.kill9().await;
    let d = world.start(&[]).await;
    all_kept(&world, &d, &answered).await;
    d.stop().await;
}

/// The log's last entry torn as a power cut leaves it (its payload's byte flipped, or its second half
/// zeroed) after a SIGKILL while the group commit held it unsynced: the daemon starts, keeps every
/// consume it answered, and goes on selling. A flipped byte in an EARLY entry, with valid entries after
/// it, is damage inside the journal: refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_keeps_every_answered_record_and_damage_mid_log_is_refused() {
    for tear in ["flip", "cut", "middle"] {
        let world = World::new(&format!("jlog-torn-{tear}")).await;
        let d = world.start(&[("POSGATE_CRASH_AT", "before_log_sync:14".to_string())]).await;
        let answered = sell_until_held(&d, 40, Duration::from_secs(3)).await;
        assert!(answered.len() >= 3 && answered.len() < 40, "{tear}: the group commit was never held ({} answered)", answered.len());
        d.kill9().await;
        let seg = last_segment(&world);
        let all = entries(&seg);
        assert!(all.len() >= 2 * answered.len(), "{tear}: {} entries for {} answered consumes", all.len(), answered.len());
        let (off, len) = *all.last().expect("an entry");
        match tear {
            "flip" => write_at(&seg, off + len - 3, &[0x5a]),
            "cut" => write_at(&seg, off + len / 2, &vec![0u8; len - len / 2]),
            _ => {
                let (off, len) = all[1];
                write_at(&seg, off + len - 3, &[0x5a]);
            }
        }
        if tear == "middle" {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
                .args(["serve", "--config"])
                .arg(&world.config)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("a damaged journal must be refused, not served").expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("valid entries follow") && err.contains("posgate journal verify"), "{err}");
            continue;
        }
        restart_keeps_all_and_sells_on(&world, &answered, tear).await;
    }
}

/// A checkpoint that closes sled and opens it again (so sled writes its snapshot and a start replays
/// little of sled's own log): sales go on across several reopens, and a clean stop and start keep them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_go_on_across_sled_reopens_and_a_restart_keeps_them() {
    let world = World::new("jlog-reopen").await;
    let env = [("POSGATE_JOURNAL_CHECKPOINT_EVERY", "4".to_string()), ("POSGATE_JOURNAL_REOPEN_EVERY", "8".to_string())];
    let mut d = world.start(&env).await;
    let (mut answered, mut reopens) = (Vec::new(), 0usize);
    for i in 0..40 {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
        answered.push((i, v["trace"].as_str().unwrap_or_default().to_string()));
        reopens += d.drain().iter().filter(|l| l.contains("sled reopened")).count();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(reopens >= 2, "sled was reopened {reopens} times");
    all_kept(&world, &d, &answered).await;
    d.stop().await;
    let d = world.start(&env).await;
    all_kept(&world, &d, &answered).await;
    d.stop().await;
}

/// SIGKILL while a checkpoint has closed sled to open it again (sled flushed and its checkpoint recorded,
/// not yet reopened; sales wait meanwhile): the next start keeps every answered sale and sells on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_sled_is_reopened_loses_nothing_answered() {
    let world = World::new("jlog-reopen-kill").await;
    let env = [
        ("POSGATE_CRASH_AT", "in_reopen:1".to_string()),
        ("POSGATE_JOURNAL_CHECKPOINT_EVERY", "4".to_string()),
        ("POSGATE_JOURNAL_REOPEN_EVERY", "8".to_string()),
    ];
    let mut d = world.start(&env).await;
    let mut answered = Vec::new();
    let mut held = false;
    for i in 0..60 {
        match tokio::time::timeout(Duration::from_secs(3), d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}")))).await {
            Ok(Ok((200, v))) if v["status"] == "approved" => answered.push((i, v["trace"].as_str().unwrap_or_default().to_string())),
            Ok(other) => panic!("consume {i}: {other:?}"),
            Err(_) => {}
        }
        held = held || d.drain().iter().any(|l| l.contains("posgate-crashpoint in_reopen"));
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(held, "the in_reopen crash point was never reached");
    assert!(!answered.is_empty(), "nothing answered before the reopen");
    d.kill9().await;
    restart_keeps_all_and_sells_on(&world, &answered, "after in_reopen").await;
}
