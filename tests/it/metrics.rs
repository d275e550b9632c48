//! `GET /metrics` on the real daemon: the text format, and counters that move by what was done.
use std::collections::BTreeMap;

use posgate::client::ApiClient;
use posgate::secret::Secret;
use serde_json::json;

use crate::support::World;

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A loyalty world whose daemon also listens on loopback TCP (token `test-token-123`), with `extra`
/// appended to the daemon config; the TCP port.
pub async fn tcp_world(name: &str, extra: &str) -> (World, u16) {
    let world = World::new(name).await;
    let port = free_port();
    let cfg = format!("data_dir = \"data\"\nunix_socket = \"posgate.sock\"\ntcp = \"127.0.0.1:{port}\"\ntoken_file = \"secrets/api-token\"\n{extra}");
    std::fs::write(&world.config, cfg).expect("config");
    (world, port)
}

pub fn tcp_client(port: u16, token: Option<&str>) -> ApiClient {
    ApiClient::tcp(format!("127.0.0.1:{port}"), token.map(|t| Secret::new(t.as_bytes().to_vec())))
}

/// A scrape as `series → value` (`name{labels}` exactly as written), with the `# TYPE` of each family.
fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let (mut series, mut types) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (key, value) = line.rsplit_once(' ').expect("series value");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            assert!(series.insert(key.to_string(), v).is_none(), "series twice: {line}");
        }
    }
    (series, types)
}

async fn scrape(c: &ApiClient) -> (BTreeMap<String, f64>, BTreeMap<String, String>, String) {
    let r = c.request(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new()).await.expect("scrape");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = String::from_utf8(r.body.to_vec()).expect("utf-8");
    let (s, t) = parse(&text);
    (s, t, text)
}

fn get(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_requests_backend_calls_group_commits_and_scans() {
    let (world, port) = tcp_world("metrics", "").await;
    let d = world.start(&[]).await;
    let tcp = tcp_client(port, Some("test-token-123"));
    // The same token as the rest of the API over TCP.
    let r = tcp_client(port, None).request(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new()).await.expect("no token");
    assert_eq!(r.status, 401);
    let (before, _, _) = scrape(&tcp).await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    for i in 0..3 {
        let body = json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 100 + i, "cashAmount": 0, "registerTraceNo": format!("M{i}")});
        let (s, v) = tcp.post("/v1/profiles/loyalty/consume", body, None).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    }
    for _ in 0..2 {
        let (s, v) = d.client.post("/v1/scans", json!({"device": "front-scanner", "text": "4006381333931"}), None).await.expect("scan");
        assert_eq!(s, 202, "{v}");
    }
    let (after, types, text) = scrape(&tcp).await;
    let consume_ok = "posgate_requests_total{operation=\"consume\",status=\"200\"}";
    assert_eq!(get(&after, consume_ok) - get(&before, consume_ok), 3.0, "{text}");
    assert_eq!(get(&after, "posgate_requests_total{operation=\"Scans\",status=\"202\"}"), 2.0, "{text}");
    // The first scrape counts itself in the second.
    assert_eq!(get(&after, "posgate_requests_total{operation=\"metrics\",status=\"200\"}"), 1.0, "{text}");
    let lbl = "backend=\"loyalty\",profile=\"loyalty\",operation=\"consume\"";
    assert_eq!(get(&after, &format!("posgate_backend_seconds_count{{{lbl}}}")), 3.0, "{text}");
    assert_eq!(get(&after, &format!("posgate_backend_seconds_bucket{{{lbl},le=\"+Inf\"}}")), 3.0, "{text}");
    assert!(get(&after, &format!("posgate_backend_seconds_sum{{{lbl}}}")) > 0.0, "{text}");
    assert_eq!(get(&after, "posgate_scans_total{device=\"front-scanner\"}"), 2.0, "{text}");
    // Each consume and the check-in made at least one group commit; buckets are cumulative and end at +Inf = count.
    let syncs = get(&after, "posgate_journal_fsync_seconds_count") - get(&before, "posgate_journal_fsync_seconds_count");
    assert!(syncs >= 4.0, "{syncs}: {text}");
    assert_eq!(get(&after, "posgate_journal_group_size_count"), get(&after, "posgate_journal_fsync_seconds_count"), "{text}");
    assert!(get(&after, "posgate_journal_group_size_sum") >= get(&after, "posgate_journal_group_size_count"), "{text}");
    for family in ["posgate_journal_fsync_seconds", "posgate_journal_group_size"] {
        let buckets: Vec<f64> = after.iter().filter(|(k, _)| k.starts_with(&format!("{family}_bucket{{le="))).map(|(_, v)| *v).collect();
        assert!(buckets.len() > 5, "{family}: {text}");
        let inf = get(&after, &format!("{family}_bucket{{le=\"+Inf\"}}"));
        assert!(buckets.iter().all(|b| *b <= inf), "{family}: {text}");
        assert_eq!(inf, get(&after, &format!("{family}_count")), "{family}: {text}");
    }
    for (name, kind) in [
        ("posgate_requests_total", "counter"),
        ("posgate_backend_seconds", "histogram"),
        ("posgate_journal_fsync_seconds", "histogram"),
        ("posgate_journal_group_size", "histogram"),
        ("posgate_scans_total", "counter"),
        ("posgate_recovery_attempts_total", "counter"),
        ("posgate_recovery_queue_depth", "gauge"),
        ("posgate_recovery_parked", "gauge"),
        ("posgate_unsettled_batches", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "# TYPE {name}: {text}");
    }
    assert_eq!(get(&after, "posgate_recovery_queue_depth{profile=\"loyalty\",backend=\"loyalty\"}"), 0.0, "{text}");
    assert!(after.contains_key("posgate_unsettled_batches{profile=\"loyalty\",backend=\"loyalty\"}"), "{text}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_shows_as_a_retry_and_the_queue_drains() {
    let (world, port) = tcp_world("metrics-retry", "").await;
    let d = world.start(&[]).await;
    let tcp = tcp_client(port, Some("test-token-123"));
    let (s, _) = d.client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200);
    world.sim.push_fault(posgate::sim::faults::Fault::DropAfterCommit);
    let body = json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 300, "cashAmount": 0, "registerTraceNo": "LOST"});
    let _ = d.client.post("/v1/profiles/loyalty/consume", body, Some("lost-1")).await.expect("consume");
    crate::support::wait_recovered(&d.client, std::time::Duration::from_secs(20)).await;
    let (after, _, text) = scrape(&tcp).await;
    let attempts: f64 = after.iter().filter(|(k, _)| k.starts_with("posgate_recovery_attempts_total{profile=\"loyalty\"")).map(|(_, v)| *v).sum();
    assert!(attempts >= 1.0, "{text}");
    assert_eq!(get(&after, "posgate_recovery_attempts_total{profile=\"loyalty\",result=\"resolved\"}"), 1.0, "{text}");
    assert_eq!(get(&after, "posgate_recovery_queue_depth{profile=\"loyalty\",backend=\"loyalty\"}"), 0.0, "{text}");
    d.stop().await;
}
