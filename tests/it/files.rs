//! Regression tests: files no one else can read (data folder, journal, secrets), `doctor` on the configured socket.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::starve::Shell;
use crate::support::World;

const CARD: &str = "6222020000000000008";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o777
}

fn every_entry(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        out.push(e.path());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            every_entry(&e.path(), out);
        }
    }
}

/// Found by review: the data folder was 0755 and `journal/db` 0644 (masked cards, amounts, personal
/// fields readable by every local user). Run under umask 000, from a data folder left at 0755.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_and_journal_are_owner_only_even_under_umask_000() {
    let world = World::new("modes").await;
    let data = world.dir.join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let d = Shell::start(&world, "umask 000").await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    let body = json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 100, "cashAmount": 0, "registerTraceNo": "M1"});
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", body, Some("modes-1")).await.expect("consume");
    assert_eq!(s, 200, "{v}");
    let mut entries = vec![data.clone()];
    every_entry(&data, &mut entries);
    assert!(entries.iter().any(|p| p.ends_with("journal/db")), "{entries:?}");
    let mut open = Vec::new();
    for p in &entries {
        let ft = std::fs::symlink_metadata(p).expect("meta").file_type();
        let want = if ft.is_dir() {
            0o700
        } else if ft.is_socket() {
            continue;
        } else {
            0o600
        };
        if mode(p) & 0o077 != 0 || (ft.is_dir() && mode(p) != want) {
            open.push(format!("{} {:04o}", p.display(), mode(p)));
        }
    }
    assert!(open.is_empty(), "open to others: {open:?}");
    drop(d);
}

/// Found by review: a master key and an API token at 0644 were used without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_secret_stops_the_start_naming_file_mode_and_fix() {
    let world = World::new("exposed").await;
    for (file, extra) in [("secrets/loyalty-tmk.hex", ""), ("secrets/api-token", "token_file = \"secrets/api-token\"\n")] {
        std::fs::write(&world.config, format!("data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n{extra}")).expect("config");
        let path = world.dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).arg("serve").arg("--config").arg(&world.config).kill_on_drop(true).output(),
        )
        .await
        .expect("posgate serve must stop at once")
        .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {file} at 0644: {err}");
        assert!(err.contains(file) && err.contains("0644") && err.contains("chmod 600"), "{err}");
        // doctor says the same about the file.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).arg("doctor").arg("--config").arg(&world.config).output().await.expect("doctor");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains(file) && l.contains("0644")), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// Found by review: `doctor` asked the default socket, not the one in the config it was checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_asks_the_socket_named_in_its_config() {
    let world = World::new("doctorsock").await;
    let d = world.start(&[]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .arg("doctor")
        .arg("--config")
        .arg(&world.config)
        .env_remove("POSGATE_SOCKET")
        .output()
        .await
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("daemon running")), "{text}");
    d.stop().await;
}
