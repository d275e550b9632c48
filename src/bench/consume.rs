//! `posgate bench --only consume`: the floor, consume latency through the local API, what the API itself
//! adds per request, and durable consumes/s over many lanes.
#![allow(clippy::disallowed_methods)]
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::{ms, pct, us, BenchError};
use crate::api::{ApiOptions, Listeners, Service};
use crate::cli::BenchArgs;
use crate::client::ApiClient;
use crate::engine::{Engine, EngineConfig, SystemClock};
use crate::net::client::{HttpOptions, HttpsClient};

/// A consume body for the demo card that has no PIN; 1 fen each so balances last.
fn consume_body(n: usize) -> Value {
    json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 1, "cashAmount": 0, "registerTraceNo": format!("B{n:09}")})
}

fn approved(s: u16, v: &Value) -> Result<(), BenchError> {
    if s != 200 || v.get("status").and_then(Value::as_str) != Some("approved") {
        return Err(BenchError::Request(format!("HTTP {s}: {v}")));
    }
    Ok(())
}

/// One consume through the local API (the client keeps its connection).
async fn consume(c: &ApiClient, n: usize) -> Result<(), BenchError> {
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume_body(n), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    approved(s, &v)
}

/// The same consume handed to the engine in this process: no socket, no HTTP, no JSON on the wire.
async fn consume_in_process(e: &Engine, n: usize) -> Result<(), BenchError> {
    let a = Service::run(e, "loyalty", "consume", consume_body(n), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    approved(a.http_status, &a.body)
}

/// The engine and the local API on a Unix socket in this process (what `daemon::run` does, minus
/// devices and the callback listener), so the bench can call the same engine with and without the API.
pub(super) async fn consumes(args: &BenchArgs) -> Result<(), BenchError> {
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("posgate-bench-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis())));
    let setup = crate::demo::prepare(&dir, None, None).await.map_err(BenchError::Setup)?;
    let sock: PathBuf = setup.config.unix_socket.clone().ok_or_else(|| BenchError::Setup("no socket".into()))?;
    let cfg = setup.config.clone();
    let profile = cfg.profiles.first().cloned().ok_or_else(|| BenchError::Setup("the demo has no profile".into()))?;
    let engine = Engine::open(EngineConfig { data_dir: cfg.data_dir.clone(), profiles: cfg.profiles.clone() }, Arc::new(SystemClock))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let unix = crate::api::bind_local(&sock).map_err(|e| BenchError::Setup(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ApiOptions { token: None, max_body_bytes: cfg.max_body_bytes, limits: cfg.api, ..Default::default() };
    let server = tokio::spawn(crate::api::serve(engine.clone() as Arc<dyn Service>, Listeners { unix: Some(unix), tcp: None }, opts, async move {
        let _ = stop_rx.await;
    }));
    let result = measure(args, &dir, &profile, &engine, ApiClient::unix(&sock)).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    engine.shutdown().await;
    drop(setup);
    let _ = std::fs::remove_file(&sock);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The floor's HTTPS round trip: the very request a consume's backend call makes (`jpos/trans/consume`,
/// the same form fields in the same order, the same card and amount, on a kept-alive connection of the
/// same client), answered by the simulator with the same work (checks, ledger, balance, answer).
///
/// It runs on another terminal of the demo store (checked in here), so its trace numbers never meet the
/// engine's. Before, the floor asked `jpos/cards` with batch 000000, which the simulator refused at once
/// (77, no ledger work, a short answer): a round trip cheaper than any consume can be.
struct FloorTrip {
    http: HttpsClient,
    base: String,
    store: String,
    terminal: String,
    batch: String,
    trace: u32,
}

impl FloorTrip {
    /// A terminal of the demo store that no bench profile uses.
    const TERMINAL: &'static str = "10000064";

    async fn new(profile: &crate::config::Profile) -> Result<Self, BenchError> {
        let http = HttpsClient::new(&HttpOptions::for_profile(profile)).map_err(|e| BenchError::Setup(e.to_string()))?;
        let store = profile.identity.store.clone();
        // The URL as the backend makes it: `{base_url}/{protocol_prefix}/{path}`.
        let prefix = profile.option_str("protocol_prefix", "v1").map_err(|e| BenchError::Setup(e.to_string()))?.trim_matches('/').to_string();
        let base = format!("{}/{prefix}", profile.base_url.trim_end_matches('/'));
        let mut trip = FloorTrip { http, base, store, terminal: Self::TERMINAL.into(), batch: String::new(), trace: 0 };
        let form = [("storeNo", trip.store.clone()), ("terminalNo", trip.terminal.clone()), ("operatorNo", profile.identity.operator.clone())];
        let v = trip.post("jpos/terminal/checkin", &form).await?;
        trip.batch = v.get("batchNo").and_then(Value::as_str).map(str::to_string).ok_or_else(|| BenchError::Setup(format!("floor check-in: {v}")))?;
        Ok(trip)
    }

    async fn post(&self, path: &str, form: &[(&str, String)]) -> Result<Value, BenchError> {
        let body = crate::backend::loyalty::wire::encode_form(form);
        let url = format!("{}/{path}", self.base);
        let r = self.http.post(&url, "application/x-www-form-urlencoded", Bytes::from(body), 0).await.map_err(|e| BenchError::Request(e.to_string()))?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| BenchError::Request(format!("floor {path}: {e}")))?;
        if r.status != 200 || v.get("status").and_then(Value::as_str) != Some("00") {
            return Err(BenchError::Request(format!("floor {path}: HTTP {}: {v}", r.status)));
        }
        Ok(v)
    }

    /// One consume of 1 fen with a fresh trace number, approved by the simulator.
    async fn consume(&mut self) -> Result<(), BenchError> {
        self.trace = if self.trace >= 999_999 { 1 } else { self.trace + 1 };
        let form = [
            ("storeNo", self.store.clone()),
            ("terminalNo", self.terminal.clone()),
            ("cardNo", "6222020000000000008".to_string()),
            ("traceNo", format!("{:06}", self.trace)),
            ("batchNo", self.batch.clone()),
            ("consumeType", "01".to_string()),
            ("pointAmount", crate::money::fen_to_yuan(1)),
            ("cashAmount", crate::money::fen_to_yuan(0)),
            ("registerTraceNo", format!("F{:09}", self.trace)),
        ];
        self.post("jpos/trans/consume", &form).await.map(|_| ())
    }
}

/// The floor's durable points: a small write and one `fdatasync`, into a file made and synced
/// beforehand at its full size, as the journal's log segments are (preallocated zeros, so a write changes
/// no file metadata). Before, the floor appended to a growing file, so each fdatasync also committed the
/// new file size to the filesystem's journal: a floor dearer than the log's own sync.
struct FloorFile {
    file: std::fs::File,
    at: u64,
}

impl FloorFile {
    const RECORD: usize = 256;

    fn new(path: &std::path::Path, ops: usize) -> Result<Self, BenchError> {
        let e = |e: std::io::Error| BenchError::Setup(format!("{}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).map_err(e)?;
        let size = (ops * 2 + 2) * Self::RECORD;
        file.write_all(&vec![0u8; size]).map_err(e)?;
        file.sync_all().map_err(e)?;
        Ok(FloorFile { file, at: 0 })
    }

    fn durable_point(&mut self) -> Result<(), BenchError> {
        let e = |e: std::io::Error| BenchError::Setup(format!("floor file: {e}"));
        crate::platform::write_all_at(&self.file, &[1u8; Self::RECORD], self.at).map_err(e)?;
        self.at += Self::RECORD as u64;
        self.file.sync_data().map_err(e)
    }
}

async fn measure(args: &BenchArgs, dir: &std::path::Path, profile: &crate::config::Profile, engine: &Arc<Engine>, client: ApiClient) -> Result<(), BenchError> {
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
    // Warm up the connection, the engine and the caches.
    for i in 0..50 {
        consume(&client, 9_000_000 + i).await?;
        consume_in_process(engine, 9_100_000 + i).await?;
    }

    // The floor: what a consume cannot avoid, measured now on this machine.
    let mut floor_trip = FloorTrip::new(profile).await?;
    let mut floor_file = FloorFile::new(&dir.join("floor.bin"), args.latency_ops)?;
    let mut floor = Vec::with_capacity(args.latency_ops);
    for _ in 0..args.latency_ops {
        let t = Instant::now();
        floor_file.durable_point()?;
        floor_file.durable_point()?;
        floor_trip.consume().await?;
        floor.push(t.elapsed());
    }
    floor.sort();

    // Consumes through the API and straight into the engine, interleaved so both see the same disk and load.
    let mut lat = Vec::with_capacity(args.latency_ops);
    let mut direct = Vec::with_capacity(args.latency_ops);
    for i in 0..args.latency_ops {
        let t = Instant::now();
        consume(&client, i).await?;
        lat.push(t.elapsed());
        let t = Instant::now();
        consume_in_process(engine, 500_000 + i).await?;
        direct.push(t.elapsed());
    }
    lat.sort();
    direct.sort();

    // The API's own cost on a cheap route: `GET /v1/status` through the socket against the same
    // `status()` called in process. Consumes pay fsyncs and an HTTPS round trip whose jitter
    // (tens of µs) hides a difference of this size; the status route has neither.
    let n = args.latency_ops.max(1) * 2;
    let (mut via_api, mut in_proc) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let (s, _) = client.get("/v1/status").await.map_err(|e| BenchError::Request(e.to_string()))?;
        via_api.push(t.elapsed());
        if s != 200 {
            return Err(BenchError::Request(format!("status: HTTP {s}")));
        }
        let t = Instant::now();
        std::hint::black_box(Service::status(engine.as_ref()).await);
        in_proc.push(t.elapsed());
    }
    via_api.sort();
    in_proc.sort();

    let sequential_conns = client.connections_opened();
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

    let (fm, f99) = (pct(&floor, 0.5), pct(&floor, 0.99));
    let (cm, c99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!("floor (2 x (write + fdatasync) into a preallocated file + 1 HTTPS consume round trip to the simulator, the request a consume sends), n={}: median {:.3} ms, p99 {:.3} ms", floor.len(), ms(fm), ms(f99));
    println!(
        "consume through the local API (Unix socket, one kept-alive connection), 1 lane, n={}: median {:.3} ms, p99 {:.3} ms; \
         median / floor median = {:.2} (target <= 1.3), p99 / floor p99 = {:.2} (target <= 2)",
        lat.len(),
        ms(cm),
        ms(c99),
        ratio(cm, fm),
        ratio(c99, f99)
    );
    println!(
        "consume in process (the same engine, no API), n={}: median {:.3} ms, p99 {:.3} ms; the API's share of a consume (median difference) {:.0} us",
        direct.len(),
        ms(pct(&direct, 0.5)),
        ms(pct(&direct, 0.99)),
        us(cm) - us(pct(&direct, 0.5))
    );
    let overhead = us(pct(&via_api, 0.5)) - us(pct(&in_proc, 0.5));
    println!(
        "API overhead per request, GET /v1/status through the socket minus the same status() in process, n={n}: median {:.0} us - {:.0} us = {overhead:.0} us \
         (target <= 60 us); p99 through the socket {:.0} us; connections the client opened for all the sequential requests: {sequential_conns}",
        us(pct(&via_api, 0.5)),
        us(pct(&in_proc, 0.5)),
        us(pct(&via_api, 0.99)),
    );
    println!(
        "durable consumes over {lanes} lanes: {done} in {:.2} s = {:.0} consumes/s (target >= 5000); journal syncs so far: {}; client connections in all: {}",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        status["journal"]["syncs"],
        client.connections_opened()
    );
    Ok(())
}
