//! CORS on the real daemon's TCP listener: an allowed browser origin, a refused one, and the preflight.
use bytes::Bytes;
use hyper::Method;

use crate::metrics::{tcp_client, tcp_world};

const APP: &str = "http://localhost:8080";

fn header<'a>(r: &'a posgate::client::Reply, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_is_preflighted_and_answered_with_its_headers() {
    let (world, port) = tcp_world("cors-ok", &format!("allowed_origins = [\"{APP}\"]\n")).await;
    let d = world.start(&[]).await;
    // The preflight carries no token (browsers never send one there) and is answered before the bearer check.
    let bare = tcp_client(port, None);
    let pre = [("origin", APP), ("access-control-request-method", "POST"), ("access-control-request-headers", "authorization, content-type, idempotency-key")];
    let r = bare.request(Method::OPTIONS, "/v1/profiles/loyalty/consume", &pre, Bytes::new()).await.expect("preflight");
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    let methods = header(&r, "access-control-allow-methods");
    assert!(methods.contains("POST") && methods.contains("GET"), "{methods}");
    let allowed = header(&r, "access-control-allow-headers").to_ascii_lowercase();
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(header(&r, "vary").contains("Origin"), "{:?}", r.headers);
    assert!(header(&r, "access-control-max-age").parse::<u32>().is_ok_and(|s| s > 0), "{:?}", r.headers);
    // The actual request: answered with the origin echoed, and so is a refusal (the page can read its 401).
    let c = tcp_client(port, Some("test-token-123"));
    let r = c.request(Method::GET, "/v1/status", &[("origin", APP)], Bytes::new()).await.expect("status");
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    assert!(header(&r, "vary").contains("Origin"), "{:?}", r.headers);
    assert!(header(&r, "access-control-expose-headers").contains("X-Request-Id"), "{:?}", r.headers);
    let r = bare.request(Method::GET, "/v1/status", &[("origin", APP)], Bytes::new()).await.expect("status");
    assert_eq!(r.status, 401);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    // Programs send no Origin: nothing changes for them, and no CORS header is added.
    let r = c.request(Method::GET, "/v1/status", &[], Bytes::new()).await.expect("status");
    assert_eq!(r.status, 200);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_origin_is_refused_even_with_the_token() {
    let (world, port) = tcp_world("cors-refused", &format!("allowed_origins = [\"{APP}\"]\n")).await;
    let d = world.start(&[]).await;
    let c = tcp_client(port, Some("test-token-123"));
    for evil in ["http://evil.example", "http://localhost:8081", "null", "http://LOCALHOST:8080"] {
        let pre = [("origin", evil), ("access-control-request-method", "POST")];
        let r = c.request(Method::OPTIONS, "/v1/profiles/loyalty/consume", &pre, Bytes::new()).await.expect("preflight");
        assert_eq!(r.status, 403, "{evil}");
        assert!(r.headers.get("access-control-allow-origin").is_none(), "{evil}");
        let body = Bytes::from_static(b"{}");
        let r = c.request(Method::POST, "/v1/profiles/loyalty/checkin", &[("origin", evil), ("content-type", "application/json")], body).await.expect("post");
        assert_eq!(r.status, 403, "{evil}");
        assert!(r.headers.get("access-control-allow-origin").is_none(), "{evil}");
    }
    // Nothing of that reached the journal.
    let (_, j) = d.client.get("/v1/journal").await.expect("journal");
    assert_eq!(j["records"].as_array().map(Vec::len), Some(0), "{j}");
    d.stop().await;
}

/// Without `allowed_origins` (every existing config) a web page gets nothing, even holding the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allowlist_every_browser_origin_is_refused() {
    let (world, port) = tcp_world("cors-none", "").await;
    let d = world.start(&[]).await;
    let c = tcp_client(port, Some("test-token-123"));
    let r = c.request(Method::GET, "/v1/status", &[("origin", APP)], Bytes::new()).await.expect("status");
    assert_eq!(r.status, 403);
    let r = c.request(Method::OPTIONS, "/v1/status", &[("origin", APP), ("access-control-request-method", "GET")], Bytes::new()).await.expect("preflight");
    assert_eq!(r.status, 403);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_origin_in_the_config_is_refused_naming_its_line() {
    let (world, _) = tcp_world("cors-bad", "allowed_origins = [\"http://localhost:8080/\"]\n").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).args(["serve", "--config"]).arg(&world.config).output().await.expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("posgate.toml:5") && err.contains("allowed_origins"), "{err}");
}
