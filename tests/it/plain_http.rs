//! Plain-HTTP profiles through the real daemon: refused without `allow_plain_http`, shown as such when allowed.
use std::time::Duration;

use crate::support::World;

/// Point the world's profile at `url`, with `extra` top-level keys.
fn repoint(world: &World, url: &str, extra: &str) {
    let path = world.dir.join("terminal-profiles/loyalty.toml");
    let text = std::fs::read_to_string(&path).expect("profile");
    let text = text.replace(&format!("base_url = \"https://{}\"", world.sim_addr), &format!("base_url = \"{url}\"\n{extra}"));
    std::fs::write(&path, text).expect("write profile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_base_url_without_allow_plain_http_stops_the_start_with_file_and_line() {
    let world = World::new("plain-refused").await;
    repoint(&world, "http://127.0.0.1:9/v1", "");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).arg("serve").arg("--config").arg(&world.config).output(),
    )
    .await
    .expect("serve exits")
    .expect("run posgate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("terminal-profiles/loyalty.toml:3") && err.contains("base_url") && err.contains("allow_plain_http = true"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_profile_is_a_warning_in_status_and_doctor() {
    // Something listens on the plain port (doctor's reachability check connects, sends nothing).
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = plain.local_addr().expect("addr");
    tokio::spawn(async move { while plain.accept().await.is_ok() {} });
    let world = World::new("plain-allowed").await;
    repoint(&world, &format!("http://{addr}"), "allow_plain_http = true");
    let d = world.start(&[]).await;

    let (s, st) = d.client.get("/v1/status").await.expect("status");
    assert_eq!(s, 200);
    let p = &st["profiles"][0];
    assert_eq!(p["plain_http"], true, "{st}");
    let warning = p["warnings"][0].as_str().unwrap_or_default().to_string();
    assert!(warning.contains("plain HTTP") && warning.contains(&addr.to_string()), "{st}");

    let cli =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).arg("status").arg("--socket").arg(&world.socket).output().await.expect("posgate status");
    let err = String::from_utf8_lossy(&cli.stderr);
    assert!(cli.status.success(), "{err}");
    assert!(err.contains("WARN profile loyalty: plain HTTP"), "{err}");

    let report = posgate::doctor::run(&world.config, Some(&d.client)).await;
    let text = report.render();
    assert!(text.contains("WARN profile loyalty: plain HTTP"), "{text}");
    assert!(text.contains("profile loyalty: backend reachable (plain HTTP"), "{text}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_profile_has_no_plain_http_warning() {
    let world = World::new("plain-none").await;
    let d = world.start(&[]).await;
    let (_, st) = d.client.get("/v1/status").await.expect("status");
    assert_eq!((st["profiles"][0]["plain_http"].clone(), st["profiles"][0]["warnings"].clone()), (serde_json::json!(false), serde_json::json!([])), "{st}");
    d.stop().await;
}
