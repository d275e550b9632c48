//! The OpenAPI document against the real daemon: schemathesis fuzzes every documented operation over loopback TCP.
//!
//! It fails on any 5xx, on any answer whose status, content type or body the document does not
//! describe, on a request the document allows being refused, and on the daemon dying. The operation
//! endpoint really runs loyalty operations on the simulator; that is fine, the point is that
//! nothing the document allows breaks the daemon. CI installs the pinned schemathesis (`.ci/run`);
//! elsewhere `POSGATE_SKIP_SCHEMATHESIS=1` skips this test.
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::support::World;

/// The schemathesis release this test was verified with (also pinned in `.ci/run`).
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
const TOKEN: &str = "test-token-123";

/// `st` on PATH, or where `pip install --user` puts it.
fn find_st() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    dirs.into_iter().map(|d| d.join("st")).find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    if std::env::var("POSGATE_SKIP_SCHEMATHESIS").as_deref() == Ok("1") {
        eprintln!("POSGATE_SKIP_SCHEMATHESIS=1: schemathesis pass skipped");
        return;
    }
    let Some(st) = find_st() else {
        panic!(
            "schemathesis is not installed: run `python3 -m pip install --user schemathesis=={SCHEMATHESIS_VERSION}` (as .ci/run does), \
             or set POSGATE_SKIP_SCHEMATHESIS=1 to skip this test"
        );
    };
    let version = std::process::Command::new(&st).arg("--version").output().expect("st --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(version.contains(SCHEMATHESIS_VERSION), "schemathesis {SCHEMATHESIS_VERSION} is pinned; found {version:?} at {}", st.display());

    let world = World::new("schemathesis").await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = std::fs::read_to_string(&world.config).expect("config");
    cfg.push_str(&format!("tcp = \"127.0.0.1:{port}\"\ntoken_file = \"secrets/api-token\"\n"));
    std::fs::write(&world.config, cfg).expect("config");
    let mut d = world.start(&[]).await;
    let base = format!("http://127.0.0.1:{port}");
    let examples = std::env::var("POSGATE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let report = world.dir.join("st-report");

    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("run")
        .arg(format!("{base}/v1/openapi"))
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance",
        ])
        // The event stream never ends by itself: it is tested in tests/it/api.rs and src/api/tests.rs.
        .args(["--exclude-path", "/v1/events"])
        .args(["--max-examples", &examples, "--seed", "7", "--workers", "1", "--request-timeout", "10", "--no-shrink"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .current_dir(&world.dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output()).await.expect("schemathesis finished within 240 s").expect("run st");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The daemon is still up and answering.
    let (s, _) = d.client.get("/v1/status").await.expect("the daemon still answers after the fuzzing");
    assert_eq!(s, 200);
    let log = d.drain();
    d.stop().await;
    assert!(!log.iter().any(|l| l.contains("panicked")), "the daemon panicked:\n{}", log.join("\n"));
    assert!(out.status.success(), "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}", out.status.code());
}
