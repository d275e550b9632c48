//! Journal-before-send, proven on the real code path: no request leaves before its record's sync returned.
use std::collections::HashSet;

use serde_json::json;

use crate::support::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_leaves_before_the_sync_of_its_record_returned() {
    let world = World::new("order").await;
    let log = world.dir.join("order.log");
    let d = world.start(&[("POSGATE_ORDER_LOG", log.display().to_string())]).await;
    let (_, before) = d.client.get("/v1/status").await.expect("status");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = d.client.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 100 + i, "cashAmount": 0});
            c.post("/v1/profiles/loyalty/consume", body, None).await.expect("consume")
        }));
    }
    for t in tasks {
        let (s, v) = t.await.expect("task");
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "approved", "{v}");
    }
    let (_, after) = d.client.get("/v1/status").await.expect("status");
    d.stop().await;

    let text = std::fs::read_to_string(&log).expect("order log");
    let mut synced = HashSet::new();
    let mut sends = 0;
    for line in text.lines() {
        let (ev, id) = line.split_once(' ').expect("event id");
        let id: u64 = id.parse().expect("id");
        match ev {
            "synced" => {
                synced.insert(id);
            }
            "send" => {
                assert!(synced.contains(&id), "request for journal record {id} left before its sync returned:\n{text}");
                sends += 1;
            }
            other => panic!("unexpected order-log event {other}"),
        }
    }
    // 24 consumes plus the automatic sign-on.
    assert!(sends >= 25, "only {sends} sends logged:\n{text}");
    // Group commit: concurrent lanes share syncs, so there are fewer syncs than 2 per record.
    let syncs = after["journal"]["syncs"].as_u64().unwrap_or(0) - before["journal"]["syncs"].as_u64().unwrap_or(0);
    assert!(syncs >= 2, "no fsync was counted: {after}");
    eprintln!("{sends} sends, {syncs} journal syncs for them");
}
