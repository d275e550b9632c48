//! Counter devices through the real daemon: a pty scanner, SSE scan events, a swipe used by an operation, masking.
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::World;

const PAN: &str = "6222020000000000016";
const SWIPE: &[u8] = b"%B6222020000000000016^TEST/CARD^2912101000123456?;6222020000000000016=2912101000654321?\r";

/// Walk every file under `dir` and return the ones whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swipe_reaches_subscribers_masked_and_pays_without_the_pos_seeing_the_card() {
    let world = World::with_profile_extra("devices", "[[scan_rules]]\noperation = \"consume\"\nkind = \"card\"\nprefix = [\"622202\"]\n").await;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = nix::unistd::ttyname(&pty.slave).expect("ttyname");
    let mut master = std::fs::File::from(pty.master);
    let mut cfg = std::fs::read_to_string(&world.config).expect("config");
    cfg.push_str(&format!("\n[[devices]]\nid = \"counter-1\"\npath = \"{}\"\n", slave.display()));
    std::fs::write(&world.config, cfg).expect("config");
    let mut d = world.start(&[("POSGATE_LOG", "debug".to_string())]).await;
    let mut events = d.client.events().await.expect("events");

    // The port is attached once the daemon has opened it.
    for _ in 0..200 {
        let (_, st) = d.client.get("/v1/status").await.expect("status");
        if st["devices"].as_array().is_some_and(|a| a.iter().any(|x| x["device"] == "counter-1" && x["state"] == "attached")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Noise, a barcode split over two writes, then the swipe.
    master.write_all(b"]E0400638").expect("write");
    master.flush().expect("flush");
    tokio::time::sleep(Duration::from_millis(30)).await;
    master.write_all(b"1333931\r").expect("write");
    master.write_all(SWIPE).expect("write");
    master.flush().expect("flush");

    let mut seen: Vec<(String, Value)> = Vec::new();
    let mut scan_id = None;
    while scan_id.is_none() {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("an event in time").expect("stream").expect("open");
        if ev.event == "scan" && ev.data["kind"] == "card" {
            scan_id = ev.data["id"].as_str().map(str::to_string);
        }
        seen.push((ev.event, ev.data));
    }
    let barcode = seen.iter().find(|(k, v)| k == "scan" && v["kind"] == "barcode").expect("the barcode came first");
    assert_eq!(barcode.1["text"], "4006381333931");
    assert_eq!(barcode.1["symbology"], "EAN-13");
    let card = &seen.last().expect("card").1;
    assert_eq!(card["text"], "622202*********0016", "{card}");
    assert_eq!(card["suggested"]["operation"], "consume", "{card}");

    // The POS pays with the scan id; the card number never passes through it.
    let scan_id = scan_id.expect("scan id");
    let body = json!({"scan": scan_id, "consumeType": "01", "pointAmount": 150, "cashAmount": 0});
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", body, None).await.expect("consume");
    assert_eq!((s, v["status"].clone()), (200, json!("approved")), "{v}");
    assert_eq!(v["card"], "622202*********0016");
    let applied: Vec<_> = world.sim.state_snapshot().transactions.into_iter().filter(|t| t.op == "consume").collect();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].card_no, PAN, "the backend got the real card number");
    // Regression: the held swipe was read, not taken, so the same scan id paid again and again.
    let body = json!({"scan": scan_id, "consumeType": "01", "pointAmount": 15, "cashAmount": 0});
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", body, None).await.expect("second use");
    assert_eq!(s, 400, "{v}");
    let detail = v["detail"].as_str().unwrap_or("");
    assert!(detail.contains(&scan_id) && detail.contains("already used"), "{v}");
    assert_eq!(world.sim.state_snapshot().transactions.iter().filter(|t| t.op == "consume").count(), 1, "one swipe paid twice");
    // An unknown or made-up scan id is refused by name.
    let (s, v) = d
        .client
        .post("/v1/profiles/loyalty/consume", json!({"scan": "s_0000000000000000", "consumeType": "01", "pointAmount": 1, "cashAmount": 0}), None)
        .await
        .expect("consume");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("s_0000000000000000"), "{v}");

    // Collect what subscribers saw after the swipe (the transaction event), then stop the daemon.
    while let Ok(Ok(Some(ev))) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        seen.push((ev.event, ev.data));
    }
    assert!(seen.iter().any(|(k, _)| k == "transaction"), "{seen:?}");
    let log = d.drain();
    d.stop().await;

    // Nowhere in clear: not in events, not in a log line, not in any journal file.
    let secrets: [&str; 3] = [PAN, "2912101000123456", "2912101000654321"];
    for s in secrets {
        for (k, v) in &seen {
            assert!(!v.to_string().contains(s), "{k} event shows {s}: {v}");
        }
        for l in &log {
            assert!(!l.contains(s), "log line shows {s}: {l}");
        }
        let hits = files_containing(&world.dir.join("data"), s.as_bytes());
        assert!(hits.is_empty(), "{s} is on disk in clear: {hits:?}");
    }
    assert!(log.iter().any(|l| l.contains("counter-1")), "the daemon logged nothing about the device: {log:?}");
}

/// Regression: a track 2 without sentinels (a reader set to "data only", or a POS wedge) was classed
/// as a barcode and its full text went to every event subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_without_sentinels_is_a_card_masked_everywhere_and_pays_once() {
    let world = World::new("baretrack").await;
    let mut d = world.start(&[]).await;
    let mut events = d.client.events().await.expect("events");
    let bare = format!("{PAN}=29121010000000000");
    let (s, v) = d.client.post("/v1/scans", json!({"text": bare, "device": "wedge"}), None).await.expect("scan");
    assert_eq!(s, 202, "{v}");
    assert_eq!((v["kind"].as_str(), v["text"].as_str()), (Some("card"), Some("622202*********0016")), "{v}");
    let mut seen = Vec::new();
    let scan_id = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("an event in time").expect("stream").expect("open");
        seen.push(ev.data.clone());
        if ev.event == "scan" {
            break ev.data["id"].as_str().map(str::to_string).expect("scan id");
        }
    };
    let body = json!({"scan": scan_id, "consumeType": "01", "pointAmount": 11, "cashAmount": 0});
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", body.clone(), None).await.expect("consume");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", body, None).await.expect("second use");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains(&scan_id)), "{v}");
    let paid: Vec<_> = world.sim.state_snapshot().transactions.into_iter().filter(|t| t.op == "consume").collect();
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].card_no, PAN);
    while let Ok(Ok(Some(ev))) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        seen.push(ev.data);
    }
    let log = d.drain();
    d.stop().await;
    for secret in [PAN, "29121010000000000"] {
        for v in &seen {
            assert!(!v.to_string().contains(secret), "an event shows {secret}: {v}");
        }
        for l in &log {
            assert!(!l.contains(secret), "a log line shows {secret}: {l}");
        }
        let hits = files_containing(&world.dir.join("data"), secret.as_bytes());
        assert!(hits.is_empty(), "{secret} is on disk in clear: {hits:?}");
    }
}
