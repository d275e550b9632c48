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

/// `posgate serve`'s stderr lines with `env` set (and `POSGATE_LOG`, `RUST_LOG`, `JOURNAL_STREAM`,
/// `INVOCATION_ID` cleared first), from the start to a clean stop.
async fn serve_log(world: &World, env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"));
    cmd.arg("serve").arg("--config").arg(&world.config).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::piped()).kill_on_drop(true);
    for k in ["POSGATE_LOG", "RUST_LOG", "JOURNAL_STREAM", "INVOCATION_ID"] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    let c = world.client();
    for _ in 0..1000 {
        if let Ok((200, _)) = c.get("/v1/status").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output()).await.expect("stops").expect("output");
    String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect()
}

/// Logs: `RUST_LOG` is honoured (`POSGATE_LOG` wins when both are set), and under journald the lines
/// carry no timestamp of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_is_honoured_and_journald_gets_lines_without_timestamps() {
    let world = World::new("logs").await;
    let stamped = |l: &String| l.len() > 4 && l.as_bytes()[..4].iter().all(u8::is_ascii_digit) && l.as_bytes()[4] == b'-';
    let plain = serve_log(&world, &[]).await;
    let ready = plain.iter().find(|l| l.contains("posgate ready")).unwrap_or_else(|| panic!("{plain:?}"));
    assert!(stamped(ready), "a terminal run should carry timestamps: {ready}");
    let quiet = serve_log(&world, &[("RUST_LOG", "warn")]).await;
    assert!(!quiet.iter().any(|l| l.contains("posgate ready")), "RUST_LOG=warn ignored: {quiet:?}");
    let both = serve_log(&world, &[("RUST_LOG", "warn"), ("POSGATE_LOG", "info")]).await;
    assert!(both.iter().any(|l| l.contains("posgate ready")), "POSGATE_LOG should win: {both:?}");
    // Target directives (the filter is `Targets` now, no longer `EnvFilter`): a list that parses is
    // obeyed per target, one that does not falls back to `info`.
    let targeted = serve_log(&world, &[("POSGATE_LOG", "posgate=warn,info")]).await;
    assert!(!targeted.iter().any(|l| l.contains("posgate ready")), "posgate=warn ignored: {targeted:?}");
    let unparsable = serve_log(&world, &[("POSGATE_LOG", "posgate=loud")]).await;
    assert!(unparsable.iter().any(|l| l.contains("posgate ready")), "a bad filter should fall back to info: {unparsable:?}");
    let journal = serve_log(&world, &[("JOURNAL_STREAM", "8:12345")]).await;
    let ready = journal.iter().find(|l| l.contains("posgate ready")).unwrap_or_else(|| panic!("{journal:?}"));
    assert!(ready.starts_with(" INFO") || ready.starts_with("INFO"), "under journald: {ready}");
    assert!(!journal.iter().any(stamped) && !journal.iter().any(|l| l.contains('\u{1b}')), "{journal:?}");
}

/// `posgate demo` writes the config it runs with, and its banner's `posgate doctor --config …` works on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_banner_doctor_line_works_on_the_written_config() {
    use tokio::io::AsyncBufReadExt;
    let dir = crate::support::scratch("democfg");
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir.join("demo"))
        .arg("--tcp")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("demo");
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut doctor_cmd = None;
    while let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        if let Some(i) = l.find("posgate doctor --config ") {
            doctor_cmd = Some(l[i..].trim_end_matches(')').to_string());
            break;
        }
    }
    let doctor_cmd = doctor_cmd.expect("the banner prints a doctor line");
    let config = doctor_cmd.trim_start_matches("posgate doctor --config ").trim().to_string();
    assert!(Path::new(&config).is_file(), "{config}");
    let socket = dir.join("demo/posgate.sock");
    let c = posgate::client::ApiClient::unix(&socket);
    for _ in 0..1000 {
        if let Ok((200, _)) = c.get("/v1/status").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .arg("doctor")
        .arg("--config")
        .arg(&config)
        .env_remove("POSGATE_SOCKET")
        .output()
        .await
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("loads: 5 profile(s)")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("daemon running")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("API token")), "{text}");
    let _ = demo.start_kill();
    let _ = demo.wait().await;
}

/// Found by review: ID numbers, mobile numbers and verify codes from card activation sat in clear in the
/// journal's files, readable by anyone who could read them (or a backup of them). Activate a card through
/// the real daemon, then look for the clear values in every byte under the data folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_id_number_mobile_and_verify_code_are_not_in_clear_in_the_journal_files() {
    let world = World::new("personal").await;
    let d = world.start(&[]).await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    let (id_no, mobile, code) = ("110101199001011234", "13812345678", "654321");
    let body = json!({"cardNo": CARD, "mobileNo": mobile, "verifyCode": code, "idType": "01", "idNo": id_no});
    let (s, v) = d.client.post("/v1/profiles/loyalty/card-activate", body, Some("personal-1")).await.expect("activate");
    assert!(s < 500, "{s} {v}");
    let id = v["id"].as_u64().or_else(|| v["record"]["id"].as_u64());
    // Whatever the host said, the record is journaled; the answer and the journal view are masked too.
    let shown = v.to_string();
    for clear in [id_no, mobile, code] {
        assert!(!shown.contains(clear), "{clear} in the answer to the POS: {shown}");
    }
    d.stop().await;
    let mut files = Vec::new();
    every_entry(&world.dir.join("data"), &mut files);
    let mut bytes_seen = 0usize;
    for f in files.iter().filter(|p| p.is_file()) {
        let Ok(bytes) = std::fs::read(f) else { continue };
        bytes_seen += bytes.len();
        for clear in [id_no, mobile, code] {
            assert!(!bytes.windows(clear.len()).any(|w| w == clear.as_bytes()), "{clear} in clear in {} (record {id:?})", f.display());
        }
    }
    assert!(bytes_seen > 0, "no journal files found under {}", world.dir.join("data").display());
}
