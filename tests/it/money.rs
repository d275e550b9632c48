//! What may move money through the daemon: one charge per idempotency key and body, per swipe, within bounds.
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::support::World;

const CARD: &str = "6222020000000000008";

fn consume(fen: i64) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": fen, "cashAmount": 0})
}

fn consumes(world: &World) -> Vec<i64> {
    world.sim.state_snapshot().transactions.into_iter().filter(|t| t.op == "consume").map(|t| t.amount_fen).collect()
}

fn slug(v: &Value) -> &str {
    v["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("")
}

/// Regression: the same Idempotency-Key with another body silently answered the first result, so
/// the POS believed 15 was charged when 11 was; now it is 422 and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_body_is_422_and_charges_nothing() {
    let world = World::new("idem-reuse").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, first) = c.post("/v1/profiles/loyalty/consume", consume(11), Some("pos-sale-1")).await.expect("consume");
    assert_eq!((s, first["status"].as_str()), (200, Some("approved")), "{first}");
    assert_eq!(consumes(&world), [11]);

    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(15), Some("pos-sale-1")).await.expect("reuse");
    assert_eq!((s, slug(&v)), (422, "idempotency-key-reused"), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("pos-sale-1")), "{v}");
    assert_eq!(consumes(&world), [11], "the reused key charged again");

    // The very same body (keys in another order) is the retry it always was: the first answer.
    let same = json!({"cashAmount": 0, "pointAmount": 11, "consumeType": "01", "cardNo": CARD});
    let (s, again) = c.post("/v1/profiles/loyalty/consume", same, Some("pos-sale-1")).await.expect("retry");
    assert_eq!((s, &again["id"]), (200, &first["id"]), "{again}");
    assert_eq!(consumes(&world), [11]);
    // The fingerprint is not shown to the POS app.
    assert!(again.get("request_fingerprint").is_none(), "{again}");
    // Nothing was journaled for the refused request.
    let (_, j) = c.get("/v1/journal?status=approved").await.expect("journal");
    assert_eq!(j["records"].as_array().map(|r| r.iter().filter(|x| x["operation"] == "consume").count()), Some(1), "{j}");

    // Across a restart too (the fingerprint is journaled with the record).
    d.stop().await;
    let d = world.start(&[]).await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(15), Some("pos-sale-1")).await.expect("reuse");
    assert_eq!((s, slug(&v)), (422, "idempotency-key-reused"), "{v}");
    let (s, again) = d.client.post("/v1/profiles/loyalty/consume", consume(11), Some("pos-sale-1")).await.expect("retry");
    assert_eq!((s, &again["id"]), (200, &first["id"]), "{again}");
    assert_eq!(consumes(&world), [11]);
    d.stop().await;
}

/// Regression: `{"pointAmount": 1, "pointAmount": 100000}` was read as 100000 (serde_json keeps the last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_with_a_duplicate_key_is_refused_naming_it() {
    let world = World::new("dupkey").await;
    let d = world.start(&[]).await;
    let ct = [("content-type", "application/json")];
    let body = format!(r#"{{"cardNo": "{CARD}", "consumeType": "01", "pointAmount": 1, "cashAmount": 0, "pointAmount": 100000}}"#);
    let r = d.client.request(Method::POST, "/v1/profiles/loyalty/consume", &ct, Bytes::from(body)).await.expect("post");
    let v = r.json().expect("json");
    assert_eq!((r.status, slug(&v), v["key"].as_str()), (400, "duplicate-key", Some("pointAmount")), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("pointAmount")), "{v}");
    let r = d.client.request(Method::POST, "/v1/scans", &ct, Bytes::from_static(br#"{"text": "4006381333931", "text": "x"}"#)).await.expect("post");
    assert_eq!(r.status, 400);
    assert!(consumes(&world).is_empty());
    let (_, j) = d.client.get("/v1/journal").await.expect("journal");
    assert_eq!(j["records"].as_array().map(Vec::len), Some(0), "{j}");
    d.stop().await;
}

/// Regression: a zero-amount consume was approved, and amounts up to i64::MAX were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_absurd_amounts_are_refused_naming_the_field() {
    let world = World::with_profile_extra("limits", "\n[limits]\nmax_amount_fen = 500000\n").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let cases = [
        (consume(0), "pointAmount", "at least 1"),
        (consume(500_001), "pointAmount", "at most 500000"),
        (consume(i64::MAX), "pointAmount", "at most 500000"),
        (json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 5, "cashAmount": 9_000_000_000_000_000_000i64}), "cashAmount", "at most 500000"),
        (
            json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 5, "cashAmount": 0, "vaucher": [{"id": 1, "num": 1000, "amount": 400_000}]}),
            "vaucher",
            "at most 500000",
        ),
    ];
    for (body, field, why) in cases {
        let (s, v) = c.post("/v1/profiles/loyalty/consume", body.clone(), None).await.expect("post");
        assert_eq!(s, 400, "{body}: {v}");
        let detail = v["detail"].as_str().unwrap_or("");
        assert!(detail.contains(field) && detail.contains(why), "{body}: {v}");
    }
    let (s, v) =
        c.post("/v1/profiles/loyalty/ticket-consume", json!({"cardNo": CARD, "ticket": [{"id": "t", "num": 3, "amount": 200_000}]}), None).await.expect("post");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("ticket") && d.contains("600000")), "{v}");
    assert!(consumes(&world).is_empty(), "an out-of-bounds amount reached the backend");
    // Within the bounds all is as before.
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(500_000), None).await.expect("post");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    d.stop().await;
}

/// The key rule is one: a 200-character key works end to end, a 201-character one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_rule_holds_end_to_end() {
    let world = World::new("keyrule").await;
    let d = world.start(&[]).await;
    let long = "k".repeat(posgate::api::IDEMPOTENCY_KEY_MAX);
    let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(3), Some(&long)).await.expect("post");
    assert_eq!(s, 200, "{v}");
    let longer = "k".repeat(posgate::api::IDEMPOTENCY_KEY_MAX + 1);
    for bad in [longer.as_str(), "a b"] {
        let (s, v) = d.client.post("/v1/profiles/loyalty/consume", consume(3), Some(bad)).await.expect("post");
        assert_eq!((s, slug(&v)), (400, "invalid-parameter"), "{v}");
    }
    assert_eq!(consumes(&world), [3]);
    d.stop().await;
}
