//! `posgate bench --only scan`: pty bytes to the `scan` event at an SSE subscriber, latency and frames/s.
#![allow(clippy::disallowed_methods)]
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{ms, pct, BenchError};
use crate::cli::BenchArgs;
use crate::client::ApiClient;

/// Scan latency: bytes written to a pseudo-terminal → the `scan` event at an SSE subscriber, and frames/s.
pub(super) async fn scans(args: &BenchArgs) -> Result<(), BenchError> {
    let dir = std::env::temp_dir().join(format!("posgate-bench-scan-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis()));
    let mut setup = crate::demo::prepare(&dir, None, None).await.map_err(BenchError::Setup)?;
    let mut pty = crate::platform::Pty::open().map_err(BenchError::Setup)?;
    let path = pty.path().to_path_buf();
    let master = pty.master();
    let mut dev = crate::devices::DeviceConfig::for_path(path.display().to_string());
    dev.id = Some("bench".into());
    setup.config.devices.push(dev);
    let sock: PathBuf = setup.config.unix_socket.clone().ok_or_else(|| BenchError::Setup("no socket".into()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(crate::daemon::run(setup.config, async move {
        let _ = stop_rx.await;
    }));
    let client = ApiClient::unix(&sock);
    for _ in 0..500 {
        if let Ok((200, st)) = client.get("/v1/status").await {
            if st["devices"].as_array().is_some_and(|a| a.iter().any(|d| d["state"] == "attached")) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = client.events().await.map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut lat = Vec::with_capacity(args.scan_frames);
    for i in 0..args.scan_frames {
        let frame = format!("]C1{:013}\r", 4006381333931u64 + i as u64);
        let t = Instant::now();
        master.write_all(frame.as_bytes()).map_err(|e| BenchError::Request(e.to_string()))?;
        next_scan(&mut events).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    // Throughput: write frames back to back from another thread; count events.
    let n = args.scan_frames.max(1);
    let mut writer = master.try_clone().map_err(|e| BenchError::Setup(e.to_string()))?;
    let t = Instant::now();
    let feeder = std::thread::spawn(move || {
        for i in 0..n {
            let frame = format!("]C1{:013}\r", 5006381333931u64 + i as u64);
            if writer.write_all(frame.as_bytes()).is_err() {
                return;
            }
        }
    });
    for _ in 0..n {
        next_scan(&mut events).await?;
    }
    let elapsed = t.elapsed();
    let _ = feeder.join();
    println!(
        "scan: pty bytes -> `scan` event at an SSE subscriber, n={}: median {:.3} ms, p99 {:.3} ms (target p99 <= 5 ms)",
        lat.len(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );
    println!("scan: one port, back-to-back 17-byte frames: {n} in {:.2} s = {:.0} frames/s", elapsed.as_secs_f64(), n as f64 / elapsed.as_secs_f64());
    let _ = stop_tx.send(());
    let _ = daemon.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn next_scan(events: &mut crate::client::EventStream) -> Result<(), BenchError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Ok(Some(ev))) if ev.event == "scan" => return Ok(()),
            Ok(Ok(Some(_))) => continue,
            other => return Err(BenchError::Request(format!("no scan event: {other:?}"))),
        }
    }
}
