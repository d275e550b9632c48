//! `posgate bench`: consume latency against the floor (2 × fsync + 1 HTTPS round trip) and durable throughput.
//!
//! Figures are printed, never asserted: these machines are noisy.
#![allow(clippy::disallowed_methods)]
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use thiserror::Error;

use crate::cli::BenchArgs;
use crate::client::ApiClient;
use crate::net::client::{HttpOptions, HttpsClient};

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("bench setup: {0}")]
    Setup(String),
    #[error("bench request failed: {0}")]
    Request(String),
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A consume body for the demo card that has no PIN; 1 fen each so balances last.
fn consume_body(n: usize) -> Value {
    json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 1, "cashAmount": 0, "registerTraceNo": format!("B{n:09}")})
}

async fn consume(c: &ApiClient, n: usize) -> Result<(), BenchError> {
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume_body(n), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    if s != 200 || v.get("status").and_then(Value::as_str) != Some("approved") {
        return Err(BenchError::Request(format!("HTTP {s}: {v}")));
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    println!("posgate bench ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if args.only == "all" || args.only == "consume" {
        consumes(&args).await?;
    }
    if args.only == "all" || args.only == "scan" {
        scans(&args).await?;
    }
    if args.only == "all" || args.only == "startup" {
        startup(&args).await?;
    }
    if args.only == "all" || args.only == "journal" {
        crate::bench_journal::run(args.startup_records).await?;
    }
    Ok(())
}

/// Start the real binary on `config`; time until `GET /v1/status` answers, then read its idle RSS.
async fn time_start(config: &std::path::Path, sock: &std::path::Path) -> Result<(Duration, u64), BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    let t = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--config"])
        .arg(config)
        .env("POSGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let client = ApiClient::unix(sock);
    let ready = loop {
        if let Ok((200, _)) = client.get("/v1/status").await {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::Setup("the daemon did not become ready in 120 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = child
        .id()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok((ready, rss_kib))
}

/// Ready-to-serve time and idle RSS of the real daemon, with an empty journal and with a big one.
async fn startup(args: &BenchArgs) -> Result<(), BenchError> {
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

/// Scan latency: bytes written to a pseudo-terminal → the `scan` event at an SSE subscriber, and frames/s.
async fn scans(args: &BenchArgs) -> Result<(), BenchError> {
    let dir = std::env::temp_dir().join(format!("posgate-bench-scan-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis()));
    let mut setup = crate::demo::prepare(&dir, None, None).await.map_err(BenchError::Setup)?;
    let mut pty = crate::platform::Pty::open().map_err(BenchError::Setup)?;
    let path = pty.path().to_path_buf();
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
        pty.master().write_all(frame.as_bytes()).map_err(|e| BenchError::Request(e.to_string()))?;
        next_scan(&mut events).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    // Throughput: write frames back to back from another thread; count events.
    let n = args.scan_frames.max(1);
    let mut writer = pty.master().try_clone().map_err(|e| BenchError::Setup(e.to_string()))?;
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

async fn consumes(args: &BenchArgs) -> Result<(), BenchError> {
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("posgate-bench-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis())));
    let setup = crate::demo::prepare(&dir, None, None).await.map_err(BenchError::Setup)?;
    let sock: PathBuf = setup.config.unix_socket.clone().ok_or_else(|| BenchError::Setup("no socket".into()))?;
    let profile = setup.config.profiles[0].clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(crate::daemon::run(setup.config, async move {
        let _ = stop_rx.await;
    }));
    let client = ApiClient::unix(&sock);
    for _ in 0..500 {
        if client.get("/v1/status").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, v) = client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    if s != 200 {
        return Err(BenchError::Request(format!("checkin: HTTP {s}: {v}")));
    }
    // Warm up connections and caches.
    for i in 0..50 {
        consume(&client, 9_000_000 + i).await?;
    }

    // The floor: what a consume cannot avoid, measured now on this machine.
    let http = HttpsClient::new(&HttpOptions::for_profile(&profile)).map_err(|e| BenchError::Setup(e.to_string()))?;
    let url = format!("{}/v1/jpos/cards", profile.base_url);
    let form = format!("storeNo={}&terminalNo={}&cardNo=6222020000000000008&traceNo=000000&batchNo=000000", profile.identity.store, profile.identity.terminal);
    let floor_file = dir.join("floor.bin");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&floor_file).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut floor = Vec::with_capacity(args.latency_ops);
    for _ in 0..args.latency_ops {
        let t = Instant::now();
        for _ in 0..2 {
            f.write_all(&[0u8; 256]).map_err(|e| BenchError::Setup(e.to_string()))?;
            f.sync_data().map_err(|e| BenchError::Setup(e.to_string()))?;
        }
        http.post(&url, "application/x-www-form-urlencoded", Bytes::from(form.clone()), 0).await.map_err(|e| BenchError::Request(e.to_string()))?;
        floor.push(t.elapsed());
    }
    floor.sort();

    let mut lat = Vec::with_capacity(args.latency_ops);
    for i in 0..args.latency_ops {
        let t = Instant::now();
        consume(&client, i).await?;
        lat.push(t.elapsed());
    }
    lat.sort();

    let lanes = args.lanes.max(1);
    let per_lane = args.throughput_ops / lanes;
    let client = Arc::new(client);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for l in 0..lanes {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_lane {
                consume(&c, 1_000_000 + l * per_lane + i).await?;
            }
            Ok::<(), BenchError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError::Request(e.to_string()))??;
    }
    let elapsed = t.elapsed();
    let done = per_lane * lanes;
    let (_, status) = client.get("/v1/status").await.map_err(|e| BenchError::Request(e.to_string()))?;

    let fm = pct(&floor, 0.5);
    println!("floor (2 x fdatasync + 1 HTTPS round trip to the simulator), n={}: median {:.3} ms, p99 {:.3} ms", floor.len(), ms(fm), ms(pct(&floor, 0.99)));
    println!(
        "consume through the local API (Unix socket), 1 lane, n={}: median {:.3} ms, p99 {:.3} ms; median / floor = {:.2} (target <= 1.3)",
        lat.len(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        pct(&lat, 0.5).as_secs_f64() / fm.as_secs_f64().max(1e-9)
    );
    println!(
        "durable consumes over {lanes} lanes: {done} in {:.2} s = {:.0} consumes/s (target >= 2000); journal syncs so far: {}",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        status["journal"]["syncs"]
    );
    let _ = stop_tx.send(());
    let _ = daemon.await;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
