//! Retention under the real daemon: settled batches move to day files, `journal show`/`export` see each record once, kills and damage.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use posgate::journal::archive::export::COLUMNS;
use serde_json::{json, Value};

use crate::support::{Daemon, World};

const CARD: &str = "6222020000000000008";

fn consume(i: usize) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 100 + i, "cashAmount": 0, "registerTraceNo": format!("R{i:08}")})
}

fn set_retain(world: &World, days: u32) {
    std::fs::write(&world.config, format!("data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n\n[journal]\nretain_days = {days}\n")).expect("config");
}

/// Three consumes and a settlement (batch 1), then two consumes (batch 2, open). Every record's view by id.
async fn sell_settle_sell(d: &Daemon) -> BTreeMap<u64, Value> {
    for i in 0..3 {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    }
    let (s, v) = d.client.post("/v1/profiles/loyalty/settle", json!({}), None).await.expect("settle");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    for i in 3..5 {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(i), Some(&format!("k-{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    }
    hot(d).await
}

/// The hot journal's records (no date filter: the day files are not read).
async fn hot(d: &Daemon) -> BTreeMap<u64, Value> {
    let (s, v) = d.client.get("/v1/journal?limit=1000").await.expect("list");
    assert_eq!(s, 200, "{v}");
    v["records"].as_array().expect("records").iter().map(|r| (r["id"].as_u64().expect("id"), r.clone())).collect()
}

/// The ids of the settled batch (the settlement's batch).
fn settled_ids(all: &BTreeMap<u64, Value>) -> Vec<u64> {
    let batch = all.values().find(|r| r["operation"] == "settle").map(|r| r["batch"].clone()).expect("a settlement");
    all.values().filter(|r| r["batch"] == batch).map(|r| r["id"].as_u64().expect("id")).collect()
}

async fn wait_moved(d: &Daemon, ids: &[u64]) {
    for _ in 0..400 {
        let h = hot(d).await;
        if ids.iter().all(|id| !h.contains_key(id)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the settled batch never left the hot journal");
}

/// `posgate journal …` against the world's daemon: (success, stdout + stderr).
async fn cli(world: &World, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).args(args).arg("--socket").arg(&world.socket).output().await.expect("run posgate");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The export's range: the day before the first record to the day after the last (a run across midnight).
fn range(all: &BTreeMap<u64, Value>) -> (String, String) {
    let day = |r: &Value| chrono::NaiveDate::parse_from_str(&r["created_at"].as_str().expect("created_at")[..10], "%Y-%m-%d").expect("date");
    let first = all.values().map(day).min().expect("records");
    let last = all.values().map(day).max().expect("records");
    (first.pred_opt().expect("day").to_string(), last.succ_opt().expect("day").to_string())
}

/// RFC 4180 rows (quoted cells with doubled quotes and line breaks), for checking the export.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell, mut quoted, mut chars) = (Vec::new(), Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

fn cell_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Both formats hold exactly `want`, each record once, ordered by id, every column equal to its view.
async fn export_matches(world: &World, want: &BTreeMap<u64, Value>) {
    let (from, to) = range(want);
    let (ok, csv, err) = cli(world, &["journal", "export", "--from", &from, "--to", &to, "--format", "csv"]).await;
    assert!(ok, "{err}");
    let rows = parse_csv(&csv);
    assert_eq!(rows[0], COLUMNS.iter().map(|c| c.to_string()).collect::<Vec<_>>(), "header row");
    let ids: Vec<u64> = rows[1..].iter().map(|r| r[0].parse().expect("id")).collect();
    assert_eq!(ids, want.keys().copied().collect::<Vec<_>>(), "each record once, ordered by id");
    for row in &rows[1..] {
        let view = &want[&row[0].parse::<u64>().expect("id")];
        for (c, cell) in COLUMNS.iter().zip(row) {
            assert_eq!(cell, &cell_of(&view[*c]), "csv column {c} of record {}", row[0]);
        }
    }
    assert!(!csv.contains(CARD), "a full card number in the export");
    let (ok, jsonl, err) = cli(world, &["journal", "export", "--from", &from, "--to", &to, "--format", "jsonl"]).await;
    assert!(ok, "{err}");
    let lines: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.iter().map(|l| l["id"].as_u64().expect("id")).collect::<Vec<_>>(), want.keys().copied().collect::<Vec<_>>());
    for l in &lines {
        let view = &want[&l["id"].as_u64().expect("id")];
        for c in COLUMNS {
            assert_eq!(l[c], view[c], "jsonl field {c} of record {}", l["id"]);
        }
        assert!(l["amount_fen"].is_i64(), "money is integer fen: {l}");
    }
}

fn day_files(world: &World) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(world.dir.join("data/archive")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// A settled batch stays while it is younger than `retain_days`, and leaves once it is older (here 0):
/// the current batch stays hot, `journal show` and a dated list still find the moved records, and both
/// export formats carry every record once, field by field as the journal showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_settled_batches_move_to_day_files_and_every_record_is_shown_and_exported_once() {
    let world = World::new("retain-move").await;
    set_retain(&world, 400);
    let d = world.start(&[]).await;
    let all = sell_settle_sell(&d).await;
    let moved = settled_ids(&all);
    assert!(moved.len() >= 4, "three consumes and the settlement: {moved:?}");
    d.stop().await;

    // Settled just now: younger than 400 days, so it stays.
    let d = world.start(&[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hot(&d).await, all, "a recent settled batch must stay in the hot journal");
    assert!(day_files(&world).is_empty());
    d.stop().await;

    set_retain(&world, 0);
    let d = world.start(&[]).await;
    wait_moved(&d, &moved).await;
    let h = hot(&d).await;
    let kept: Vec<u64> = all.keys().copied().filter(|id| !moved.contains(id)).collect();
    assert_eq!(h.keys().copied().collect::<Vec<_>>(), kept, "the open batch stays hot");
    assert!(!day_files(&world).is_empty(), "a day file under data/archive");
    for id in &moved {
        let (s, v) = d.client.get(&format!("/v1/journal/{id}")).await.expect("show");
        assert_eq!((s, &v), (200, &all[id]), "journal show {id} of an archived record");
    }
    let day = &all[&moved[0]]["created_at"].as_str().expect("created_at")[..10];
    let (_, v) = d.client.get(&format!("/v1/journal?date={day}&limit=1000")).await.expect("list");
    let listed: Vec<u64> = v["records"].as_array().expect("records").iter().filter_map(|r| r["id"].as_u64()).collect();
    let on_day: Vec<u64> = all.iter().rev().filter(|(_, r)| r["created_at"].as_str().is_some_and(|c| c.starts_with(day))).map(|(id, _)| *id).collect();
    assert_eq!(listed, on_day, "a dated list holds hot and archived records, each once, newest first");
    export_matches(&world, &all).await;
    // The move holds across a restart, and a sale after it goes on.
    d.stop().await;
    let d = world.start(&[]).await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(9), Some("k-9")).await.expect("consume");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(0), Some("k-0")).await.expect("reuse");
    assert_eq!(s, 200, "{v}");
    d.stop().await;
    let (ok, out, err) = cli(&world, &["journal", "verify", "--data-dir", world.dir.join("data").to_str().expect("utf-8")]).await;
    assert!(ok && out.contains("archive day files"), "{out}{err}");
}

/// SIGKILL after the day file is durable and before the journal let go of its records: meanwhile
/// export shows each record once; the restart finishes the move, loses and doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_in_retention_loses_nothing_and_doubles_nothing() {
    let world = World::new("retain-kill").await;
    set_retain(&world, 0);
    let d = world.start(&[]).await;
    let all = sell_settle_sell(&d).await;
    let moved = settled_ids(&all);
    d.stop().await;

    let mut d = world.start(&[("POSGATE_CRASH_AT", "in_retention:1".to_string())]).await;
    let mut held = false;
    for _ in 0..400 {
        if d.drain().iter().any(|l| l.contains("posgate-crashpoint in_retention")) {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the in_retention crash point was never reached");
    assert!(!day_files(&world).is_empty(), "the day file is written before the journal lets go");
    assert_eq!(hot(&d).await, all, "held: the journal still holds every record");
    export_matches(&world, &all).await;
    d.kill9().await;

    let d = world.start(&[]).await;
    wait_moved(&d, &moved).await;
    export_matches(&world, &all).await;
    for id in &moved {
        let (s, v) = d.client.get(&format!("/v1/journal/{id}")).await.expect("show");
        assert_eq!((s, &v), (200, &all[id]));
    }
    d.stop().await;
    let (ok, out, err) = cli(&world, &["journal", "verify", "--data-dir", world.dir.join("data").to_str().expect("utf-8")]).await;
    assert!(ok, "{out}{err}");
}

/// A day file damaged on disk is named by `journal show`, `journal export` and `journal verify`; the
/// export does not quietly leave its records out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_day_file_is_named_by_show_export_and_verify() {
    let world = World::new("retain-damage").await;
    set_retain(&world, 0);
    let d = world.start(&[]).await;
    let all = sell_settle_sell(&d).await;
    let moved = settled_ids(&all);
    d.stop().await;
    let d = world.start(&[]).await;
    wait_moved(&d, &moved).await;
    d.stop().await;
    let file = day_files(&world).pop().expect("a day file");
    let name = file.file_name().expect("name").to_string_lossy().into_owned();
    let mut b = std::fs::read(&file).expect("read");
    let at = b.len() - 5;
    b[at] ^= 0x41;
    std::fs::write(&file, &b).expect("write");

    let d = world.start(&[]).await;
    let (ok, out, err) = cli(&world, &["journal", &moved[0].to_string()]).await;
    assert!(!ok && out.contains(&name) && out.contains("checksum"), "show: {out}{err}");
    let (from, to) = range(&all);
    let (ok, out, err) = cli(&world, &["journal", "export", "--from", &from, "--to", &to]).await;
    assert!(!ok && err.contains(&name), "export: {out}{err}");
    d.stop().await;
    let (ok, out, err) = cli(&world, &["journal", "verify", "--data-dir", world.dir.join("data").to_str().expect("utf-8")]).await;
    assert!(!ok && out.contains(&name) && out.contains("checksum"), "verify: {out}{err}");
}
