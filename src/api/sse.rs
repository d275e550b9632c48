//! `GET /v1/events`: the engine's event feed as a Server-Sent Events body.
//!
//! A task per subscriber turns broadcast events into SSE frames and pushes them into a small
//! channel the response body drains. The task ends when the client goes away, the feed closes or
//! the server shuts down, and then the body ends, so graceful shutdown never waits on an SSE stream.
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{broadcast, mpsc, watch};

use crate::engine::Event;

/// A comment line this often keeps proxies and idle-timeouts from closing a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a client should wait before reconnecting (the SSE `retry:` field), in ms.
pub const RETRY_MS: u64 = 3000;

/// A response body fed by a channel; ends when the sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// One SSE frame: `event: <kind>\ndata: <json>\n\n`. Compact JSON has no raw newlines.
pub fn frame(kind: &str, data: &serde_json::Value) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {kind}\ndata: {json}\n\n"))
}

/// Start the feed for one subscriber. `events` must be subscribed before the response is sent,
/// so nothing broadcast after the client saw the headers is missed.
pub fn start(mut events: broadcast::Receiver<Event>, mut shutdown: watch::Receiver<bool>) -> ChannelBody {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx.send(Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n"))).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            let chunk = tokio::select! {
                _ = tx.closed() => return,
                r = shutdown.wait_for(|stop| *stop) => {
                    // Shutting down (or the server is gone): end the stream so the connection can close.
                    let _ = r;
                    return;
                }
                _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
                ev = events.recv() => match ev {
                    Ok(ev) => frame(ev.kind, &ev.data),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "event subscriber lagged");
                        frame("lagged", &serde_json::json!({ "skipped": skipped }))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    ChannelBody { rx }
}
