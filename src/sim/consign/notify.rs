//! The simulator's callback sender: POSTs the signed result form to the merchant's notifyUrl and retries as the document says.
//!
//! "收到异步消息需输出success … 如没有正确响应系统会再回掉2次，每次回掉间隔递增10秒": one attempt and two
//! retries, `base` then `2 × base` apart (10 s and 20 s on the platform; configurable for tests). Only an
//! answer whose body is `success` counts as delivered. Plain `http://` only, as the document's URLs are.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// At most this many bytes of a merchant's answer are read.
const MAX_ANSWER: usize = 4096;

/// One attempt: POST `form` to `url`; the answer's status and (bounded) body text.
pub async fn post_form(url: &str, form: &str, timeout: Duration) -> Result<(u16, String), String> {
    let u = url::Url::parse(url).map_err(|e| format!("notifyUrl: {e}"))?;
    if u.scheme() != "http" {
        return Err("notifyUrl: only http:// is served by the simulator".into());
    }
    let host = u.host_str().ok_or("notifyUrl: no host")?.to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=UTF-8")
            .body(Full::new(Bytes::from(form.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let resp = send.send_request(req).await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| format!("answer: {e}"))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| "timed out".to_string())?
}

/// The wait before attempt `n` (0-based): none, then `base`, `2 × base`.
pub fn backoff(base: Duration, n: u32) -> Duration {
    base * n
}

/// How many attempts in all: the first and two retries.
pub const ATTEMPTS: u32 = 3;

/// Whether a merchant's answer confirms the notification.
pub fn confirmed(status: u16, body: &str) -> bool {
    status == 200 && body.trim() == "success"
}
