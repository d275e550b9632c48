//! A full disk under the journal: consumes fail cleanly and unsent, status says the journal is unavailable, and once space is freed the same daemon recovers.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::World;

const CARD: &str = "6222020000000000008";

fn consume(i: i64) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 100 + i, "cashAmount": 0, "registerTraceNo": format!("R{i:08}")})
}

/// A small tmpfs mounted on a folder, unmounted when dropped (also when the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a `size` tmpfs on `dir`, or say why not.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write `path` until the filesystem says ENOSPC; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    n
}

async fn journal_state(c: &posgate::client::ApiClient) -> Value {
    let (s, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(s, 200, "{st}");
    st["journal"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn diskfull_refuses_cleanly_and_recovers_without_restart() {
    let world = World::new("diskfull").await;
    let data = world.dir.join("data");
    let _mount = match Tmpfs::mount(&data, "64m") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    // Frequent checkpoints, so sled itself is flushed while the disk is full (not only the log).
    let mut d = world.start(&[("POSGATE_JOURNAL_CHECKPOINT_EVERY", "3".to_string())]).await;
    let c = d.client.clone();
    let mut approved = Vec::new();
    for i in 0..6 {
        let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("before-{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
        approved.push(v["id"].as_u64().expect("id"));
    }
    assert_eq!(journal_state(&c).await["state"], "ok");

    // Let the checkpoint after the last consume finish: a sled flush racing the filler can hit ENOSPC
    // before the guard sees the disk full, and sled never forgives that (the daemon then exits to be
    // restarted, which this test does not cover).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filler = data.join("filler");
    let wrote = fill(&filler);
    assert!(wrote > 0, "the filler wrote nothing");
    // The guard reads free space again at most every 100 ms.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let sent_before = world.sim.state_snapshot().requests;
    for i in 0..4 {
        let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(100 + i), Some(&format!("full-{i}"))).await.expect("consume while full");
        assert!(s >= 500, "a consume on a full disk answered {s}: {v}");
        let text = v.to_string();
        assert!(text.contains("journal"), "the error does not say the journal cannot write: {v}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(world.sim.state_snapshot().requests, sent_before, "the backend received requests the journal could not record");
    let j = journal_state(&c).await;
    assert_eq!(j["state"], "unavailable", "status while the disk is full: {j}");
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "no error in the journal status: {j}");
    let cli =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).arg("status").arg("--socket").arg(&world.socket).output().await.expect("posgate status");
    let shown = format!("{}{}", String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr));
    assert!(shown.contains("unavailable"), "posgate status does not show the journal unavailable: {shown}");

    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(200 + n), Some(&format!("after-{n}"))).await.expect("consume after");
        if s == 200 && v["status"] == "approved" {
            approved.push(v["id"].as_u64().expect("id"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "consumes still fail after the disk was freed (no restart): {s} {v}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let j = journal_state(&c).await;
    assert_eq!(j["state"], "ok", "status after the disk was freed: {j}");
    for id in &approved {
        let (s, r) = c.get(&format!("/v1/journal/{id}")).await.expect("record");
        assert_eq!((s, r["status"].as_str()), (200, Some("approved")), "record {id}: {r}");
    }
    let _ = d.drain();
    d.stop().await;
}
