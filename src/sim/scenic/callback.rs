//! The scenic platform's side of the gate check-in notification: POST it to the channel's URL and retry until the document's answer comes back.
//!
//! The document says nothing of retries; the simulator retries on its `retry` schedule until the channel
//! answers `{"status":200,...}`, so a channel that journaled it but whose answer was lost sees the same
//! notification again (and must store it once and answer it the same way).
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::net::client::{HttpOptions, HttpsClient};

/// What happens to one attempt of a callback instead of a plain delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackFault {
    /// The attempt never reaches the channel (the shop is unreachable: NAT, a firewall).
    Lose,
    /// The attempt reaches the channel but its answer is lost: the platform retries.
    LoseAnswer,
}

/// Faults queued for the coming callback attempts.
#[derive(Debug, Default)]
pub struct CallbackFaults(Mutex<VecDeque<CallbackFault>>);

impl CallbackFaults {
    pub fn push(&self, f: CallbackFault) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(f);
    }
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    fn take(&self) -> Option<CallbackFault> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// Where and how the platform calls the channel back.
#[derive(Debug, Clone)]
pub struct Sender {
    http: HttpsClient,
    /// The channel's callback URL (`http(s)://host:port/callbacks/<profile>/check-in`).
    pub url: String,
    /// The waits before the 2nd, 3rd, … attempt; attempts = 1 + its length.
    pub retry: Vec<Duration>,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Attempts that reached the channel.
    pub attempts: u64,
    pub acked: bool,
}

impl Sender {
    /// A sender to `url`, trusting `ca_file` for an https URL (plain http allowed: the channel's listener
    /// may be plain).
    pub fn new(url: &str, ca_file: Option<std::path::PathBuf>, retry: Vec<Duration>) -> Result<Self, String> {
        let opts = HttpOptions { ca_file, timeout: Duration::from_secs(5), allow_plain_http: true, ..HttpOptions::default() };
        let http = HttpsClient::new(&opts).map_err(|e| e.to_string())?;
        Ok(Sender { http, url: url.to_string(), retry })
    }

    /// Whether an answer is the document's success: `{"status":200,...}`.
    fn acked(status: u16, body: &[u8]) -> bool {
        status == 200 && serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("status").and_then(Value::as_i64)) == Some(200)
    }

    /// POST `notification` until it is acknowledged or the schedule runs out.
    pub async fn deliver(&self, notification: &Value, faults: &CallbackFaults) -> Delivery {
        let body = Bytes::from(notification.to_string());
        let mut out = Delivery { attempts: 0, acked: false };
        for i in 0..=self.retry.len() {
            if i > 0 {
                tokio::time::sleep(self.retry[i - 1]).await;
            }
            let fault = faults.take();
            if fault == Some(CallbackFault::Lose) {
                continue;
            }
            out.attempts += 1;
            let r = self.http.post(&self.url, "application/json;charset=UTF-8", body.clone(), 0).await;
            match r {
                Ok(a) if fault != Some(CallbackFault::LoseAnswer) && Self::acked(a.status, &a.body) => {
                    out.acked = true;
                    return out;
                }
                Ok(a) => tracing::debug!(status = a.status, attempt = i + 1, "scenic sim: callback not acknowledged"),
                Err(e) => tracing::debug!(error = %e, attempt = i + 1, "scenic sim: callback failed"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;
    use crate::sim::scenic::ScenicSim;

    /// A channel on loopback: counts the notifications it got and answers `answer`.
    async fn channel(answer: &'static str) -> (String, Arc<AtomicU64>, Arc<Mutex<Vec<Value>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (hits, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (h, s) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (h, s) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            h.fetch_add(1, Ordering::SeqCst);
                            s.lock().unwrap_or_else(|p| p.into_inner()).push(serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null));
                            Ok::<_, std::convert::Infallible>(crate::sim::server::reply(200, "application/json", answer.to_string()))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
                });
            }
        });
        (format!("http://{addr}/callbacks/scenic/check-in"), hits, seen)
    }

    const OK: &str = "{\"status\":200,\"message\":\"成功\"}";

    fn sim_with_order() -> (ScenicSim, String) {
        let sim = ScenicSim::demo();
        let params = crate::backend::scenic::wire::create_params("C1", "XXX", "13456451211", &[], "2030-01-01", 600, 1200, 2);
        let body = crate::backend::scenic::wire::envelope(
            super::super::DEMO_APP_KEY,
            &crate::secret::Secret::new(super::super::DEMO_APP_SECRET.as_bytes().to_vec()),
            &params,
            ScenicSim::now_ms(),
        );
        let a = sim.process(crate::backend::scenic::wire::CREATE_PATH, &body);
        let n = a.told.expect("created");
        (sim, n)
    }

    #[tokio::test]
    async fn a_check_in_is_sent_as_the_document_shows_and_retried_after_a_lost_answer_or_a_lost_attempt() {
        let (url, hits, seen) = channel(OK).await;
        let (sim, n) = sim_with_order();
        sim.set_callback(Sender::new(&url, None, vec![Duration::from_millis(10); 3]).expect("sender"));
        sim.push_callback_fault(CallbackFault::Lose);
        sim.push_callback_fault(CallbackFault::LoseAnswer);
        assert!(sim.check_in_and_notify(&n, 1, "2030-01-01 10:00:00").await);
        // The first attempt never arrived, the second arrived but its answer was lost, the third was acknowledged.
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        let got = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(got[0], got[1], "a retry is the same notification");
        assert_eq!(got[0]["order_num"], Value::String(n.clone()));
        assert_eq!((got[0]["check_result"].as_str(), got[0]["check_count"].as_str(), got[0]["no_check_count"].as_str()), (Some("1"), Some("1"), Some("1")));
        // The daemon's own verifier takes the simulator's notification.
        let text = got[0].to_string();
        let req = crate::backend::callback::CallbackRequest { path: "check-in", content_type: Some("application/json"), body: text.as_bytes() };
        let _ = crate::backend::scenic::notify::verify(&req).expect("verifies");
        let l = sim.ledger();
        assert_eq!((l.callbacks_sent, l.callbacks_acked), (2, 1));
    }

    #[tokio::test]
    async fn a_channel_that_never_answers_the_documents_success_gets_every_retry_then_none() {
        let (url, hits, _) = channel("{\"code\":\"401\",\"message\":\"失败\"}").await;
        let (sim, n) = sim_with_order();
        sim.set_callback(Sender::new(&url, None, vec![Duration::from_millis(5); 2]).expect("sender"));
        assert!(!sim.check_in_and_notify(&n, 2, "2030-01-01 10:00:00").await);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert!(!sim.check_in_and_notify("no-such-order", 1, "2030-01-01 10:00:00").await);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }
}
