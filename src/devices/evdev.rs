//! Reads one keyboard-mode scanner through Linux evdev and sends its scans and `device` events, as `serial` does for a port.
//!
//! The thin I/O shell around [`KeyboardSession`]: open the event device (`/dev/input/by-id/...-event-kbd`),
//! take the exclusive grab (EVIOCGRAB, through the `evdev` crate: this crate forbids `unsafe`) when
//! the session says no key is held, feed it every `EV_KEY` event, decode the frames it gives with
//! [`decode`], release the grab on shutdown and on error, and reopen with backoff when the device
//! goes away (unplug, re-enumeration). A `SYN_DROPPED` overflow is compensated by the `evdev` crate,
//! which replays the key state changes it missed.
//!
//! `attached` is sent once the grab is held (from then on the scanner types into posgate only, not
//! into the focused window); `detached` when an attached device is lost; `error` for a device that
//! cannot be opened or grabbed (once, not at every retry) and for keys or frames that are dropped.
//! The typed text is never logged, only lengths.
//!
//! Not exercised against a device by the tests: this sandbox and CI have no /dev/input (and no
//! /dev/uinput to fake a keyboard), so only the "cannot open" path runs here. Every decision — when
//! to grab, what text a key types, where a frame ends, what is dropped — is in `keyboard`, tested
//! without hardware.
use std::future::Future;
use std::pin::Pin;

use ::evdev::{Device, EventStream, EventType};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::framer::FrameEvent;
use super::keyboard::{GrabState, KeyboardSession, Typed};
use super::serial::{DeviceConfig, BACKOFF_MAX, BACKOFF_MIN};
use super::{decode, DeviceContext, DeviceEvent, DeviceMsg, DeviceState};

/// Why a read session ended.
enum End {
    /// The device failed or went away; reopen it.
    Lost(String),
    /// The grab was refused (another program holds the device); retry later.
    Refused(String),
    /// Shutdown asked, or nobody listens any more.
    Stop,
}

struct Kbd {
    id: String,
    path: String,
    cfg: DeviceConfig,
    ctx: DeviceContext,
    out: mpsc::Sender<DeviceMsg>,
}

impl Kbd {
    async fn send(&self, msg: DeviceMsg) -> bool {
        self.out.send(msg).await.is_ok()
    }

    async fn device(&self, state: DeviceState, detail: Option<String>) -> bool {
        let path = self.path.as_str();
        match state {
            DeviceState::Attached => tracing::info!(device = %self.id, path, "keyboard scanner attached (grabbed)"),
            DeviceState::Detached => tracing::warn!(device = %self.id, path, detail = detail.as_deref().unwrap_or(""), "keyboard scanner detached"),
            DeviceState::Error => tracing::warn!(device = %self.id, path, detail = detail.as_deref().unwrap_or(""), "keyboard scanner error"),
        }
        self.send(DeviceMsg::Device(DeviceEvent { device: self.id.clone(), path: self.path.clone(), state, detail, at: self.ctx.now() })).await
    }

    async fn typed(&self, t: Typed) -> bool {
        let detail = match t {
            Typed::Frame(FrameEvent::Frame(bytes)) => match decode(&self.id, &bytes, self.cfg.reader, &self.ctx.classifier, self.ctx.now()) {
                Ok(d) => {
                    tracing::debug!(device = %self.id, scan = %d.event.id, kind = ?d.event.kind, symbology = d.event.symbology.as_deref().unwrap_or(""), len = bytes.len(), "scan");
                    return self.send(DeviceMsg::Scan(Box::new(d))).await;
                }
                Err(e) => e.to_string(),
            },
            Typed::Frame(FrameEvent::Overlong { len }) => format!("overlong frame of {len} bytes (max {}) dropped", self.cfg.framing.max_len),
            Typed::Frame(FrameEvent::Noise { len }) => format!("{len} bytes outside a frame dropped"),
            Typed::Unmapped(e) => format!("{e}; the scan it is in will be dropped"),
            Typed::Dropped { len } => format!("frame of {len} bytes dropped: it held a key that could not be translated"),
        };
        self.device(DeviceState::Error, Some(detail)).await
    }

    /// Open the device and read which keys are down right now (for the grab rule).
    fn open(&self) -> Result<(EventStream, Vec<u16>), String> {
        let dev = Device::open(&self.path).map_err(|e| e.to_string())?;
        if !dev.supported_events().contains(EventType::KEY) {
            return Err("not a keyboard: the device reports no key events".into());
        }
        let held = dev.get_key_state().map_err(|e| format!("reading key state: {e}"))?.iter().map(|k| k.code()).collect();
        let stream = dev.into_event_stream().map_err(|e| e.to_string())?;
        Ok((stream, held))
    }

    async fn session<S: Future<Output = ()>>(&self, stream: &mut EventStream, sess: &mut KeyboardSession, mut grab: bool, shutdown: &mut Pin<&mut S>) -> End {
        let gap = self.cfg.framing.idle_gap;
        let mut last = Instant::now();
        loop {
            if std::mem::take(&mut grab) {
                if let Err(e) = stream.device_mut().grab() {
                    return End::Refused(format!("cannot take the exclusive grab (does another program hold it?): {e}"));
                }
                sess.grabbed();
                if !self.device(DeviceState::Attached, None).await {
                    return End::Stop;
                }
            }
            let armed = gap.is_some() && sess.is_pending();
            let deadline = last + gap.unwrap_or_default();
            let typed = tokio::select! {
                biased;
                _ = shutdown.as_mut() => return End::Stop,
                r = stream.next_event() => match r {
                    Ok(ev) if ev.event_type() == EventType::KEY => {
                        last = Instant::now();
                        let step = sess.key(ev.code(), ev.value());
                        grab = step.grab;
                        step.typed
                    }
                    Ok(_) => Vec::new(),
                    Err(e) => return End::Lost(e.to_string()),
                },
                _ = tokio::time::sleep_until(deadline), if armed => sess.flush_idle(),
            };
            for t in typed {
                if !self.typed(t).await {
                    return End::Stop;
                }
            }
        }
    }
}

/// Run one keyboard-mode scanner until `shutdown` resolves or `out` is closed.
///
/// Reopens with the serial path's backoff (100 ms doubling to 2 s). The grab is released before the
/// device is closed, on shutdown and on error; the kernel also drops it when the handle closes.
pub async fn run_keyboard(cfg: DeviceConfig, ctx: DeviceContext, out: mpsc::Sender<DeviceMsg>, shutdown: impl Future<Output = ()>) {
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    let kbd = Kbd { id: cfg.stable_id(), path: cfg.path.clone().unwrap_or_default(), cfg, ctx, out };
    let Some(layout) = kbd.cfg.layout else {
        let _ = kbd.device(DeviceState::Error, Some("no `layout` configured; not read".into())).await;
        return;
    };
    let mut sess = KeyboardSession::new(layout, kbd.cfg.framing.clone());
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    loop {
        let problem = match kbd.open() {
            Ok((mut stream, held)) => {
                let grab = sess.opened(held);
                if !grab {
                    tracing::info!(device = %kbd.id, held = sess.gate().held(), "keyboard scanner opened; grab waits until no key is held");
                }
                let end = kbd.session(&mut stream, &mut sess, grab, &mut shutdown).await;
                let attached = sess.gate().state() == GrabState::Grabbed;
                if sess.release() {
                    match stream.device_mut().ungrab() {
                        Ok(()) => tracing::debug!(device = %kbd.id, "grab released"),
                        // An unplugged device cannot be ungrabbed; closing it is enough.
                        Err(e) => tracing::debug!(device = %kbd.id, error = %e, "ungrab failed"),
                    }
                }
                drop(stream);
                let partial = sess.lost();
                match end {
                    End::Stop => return,
                    End::Lost(why) if attached => {
                        backoff = BACKOFF_MIN;
                        reported = false;
                        let why = match partial {
                            Some(FrameEvent::Noise { len }) => format!("{why} (partial frame of {len} bytes dropped)"),
                            _ => why,
                        };
                        if !kbd.device(DeviceState::Detached, Some(why)).await {
                            return;
                        }
                        None
                    }
                    End::Lost(why) => Some(format!("lost before the grab: {why}")),
                    End::Refused(why) => Some(why),
                }
            }
            Err(why) => Some(format!("cannot open: {why}")),
        };
        if let Some(why) = problem {
            if !reported {
                reported = true;
                if !kbd.device(DeviceState::Error, Some(why)).await {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return,
            _ = kbd.out.closed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::devices::keyboard::Layout;
    use crate::devices::Classifier;
    use crate::model::clock::SystemClock;

    #[tokio::test]
    async fn missing_device_is_reported_once_and_shutdown_stops_the_task() {
        let (tx, mut rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = DeviceConfig::keyboard("/nonexistent/input/by-id/usb-Scanner-event-kbd", Layout::De);
        let ctx = DeviceContext::new(Classifier::default(), Arc::new(SystemClock));
        let task = tokio::spawn(run_keyboard(cfg, ctx, tx, async move {
            let _ = stop_rx.await;
        }));
        let Some(DeviceMsg::Device(ev)) = rx.recv().await else { panic!("a device event") };
        assert_eq!((ev.device.as_str(), ev.state), ("kbd-usb-Scanner-event-kbd", DeviceState::Error));
        assert!(ev.detail.as_deref().is_some_and(|d| d.starts_with("cannot open: ")), "{ev:?}");
        // Retries at 100, 200 ms... are silent.
        assert!(tokio::time::timeout(Duration::from_millis(450), rx.recv()).await.is_err(), "reported once");
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("stops on shutdown").expect("no panic");
    }

    #[tokio::test]
    async fn a_non_input_file_is_refused() {
        let (tx, mut rx) = mpsc::channel(16);
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let cfg = DeviceConfig::keyboard(file.path().to_string_lossy(), Layout::Us);
        let ctx = DeviceContext::new(Classifier::default(), Arc::new(SystemClock));
        let task = tokio::spawn(run_keyboard(cfg, ctx, tx, std::future::pending()));
        let Some(DeviceMsg::Device(ev)) = rx.recv().await else { panic!("a device event") };
        assert_eq!(ev.state, DeviceState::Error);
        assert!(ev.detail.as_deref().is_some_and(|d| d.starts_with("cannot open: ")), "{ev:?}");
        // Closing the receiver stops the task.
        drop(rx);
        tokio::time::timeout(Duration::from_secs(3), task).await.expect("stops when nobody listens").expect("no panic");
    }
}
