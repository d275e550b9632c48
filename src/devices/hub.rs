//! The daemon's side of the counter devices: runs the ports, holds swiped cards, publishes `scan`/`device` events.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

use super::{decode, run_port, Classifier, DecodeError, DeviceConfig, DeviceContext, DeviceEvent, DeviceKind, DeviceMsg, ReaderKind, ScanError, ScanStore};
use crate::backend::CardData;
use crate::model::clock::Clock;
use crate::model::Event;

pub struct Hub {
    store: ScanStore,
    ctx: DeviceContext,
    events: broadcast::Sender<Event>,
    /// The last event of each device, for `GET /v1/status`.
    devices: Mutex<BTreeMap<String, DeviceEvent>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("store", &self.store).finish_non_exhaustive()
    }
}

fn strip_sentinels(raw: &str) -> String {
    raw.trim_start_matches(['%', ';', '+']).trim_end_matches('?').to_string()
}

impl Hub {
    pub fn new(classifier: Classifier, clock: Arc<dyn Clock>, events: broadcast::Sender<Event>) -> Arc<Hub> {
        Arc::new(Hub { store: ScanStore::default(), ctx: DeviceContext::new(classifier, clock), events, devices: Mutex::new(BTreeMap::new()) })
    }

    /// Start one task per configured device (serial port or keyboard-mode scanner), the card reaper,
    /// and the forwarder to subscribers.
    pub fn start(self: &Arc<Self>, devices: Vec<DeviceConfig>, stop: watch::Receiver<bool>) {
        self.store.spawn_reaper();
        let (tx, mut rx) = mpsc::channel::<DeviceMsg>(1024);
        for cfg in devices {
            let mut stop = stop.clone();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            match cfg.kind {
                DeviceKind::Serial => {
                    tokio::spawn(run_port(cfg, self.ctx.clone(), tx.clone(), stopped));
                }
                DeviceKind::Keyboard => spawn_keyboard(cfg, self.ctx.clone(), tx.clone(), stopped),
            }
        }
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                hub.accept(m);
            }
        });
    }

    fn accept(&self, m: DeviceMsg) {
        match m {
            DeviceMsg::Scan(d) => {
                self.publish(*d);
            }
            DeviceMsg::Device(ev) => {
                self.devices.lock().unwrap_or_else(|p| p.into_inner()).insert(ev.device.clone(), ev.clone());
                let _ = self.events.send(Event { kind: "device", data: serde_json::to_value(&ev).unwrap_or(Value::Null) });
            }
        }
    }

    /// Hold the card (if any) under the scan id, then tell subscribers.
    fn publish(&self, d: super::Decoded) -> Value {
        if let Some(card) = d.card {
            self.store.hold(&d.event.id, card);
        }
        crate::metrics::scan(&d.event.device);
        let v = serde_json::to_value(&d.event).unwrap_or(Value::Null);
        let _ = self.events.send(Event { kind: "scan", data: v.clone() });
        v
    }

    /// A scan typed or wedged into a POS app and handed to `POST /v1/scans`.
    pub fn inject(&self, device: Option<&str>, text: &str) -> Result<Value, DecodeError> {
        let d = decode(device.unwrap_or("api"), text.as_bytes(), ReaderKind::Auto, &self.ctx.classifier, self.ctx.now())?;
        Ok(self.publish(d))
    }

    /// The card held under a scan id, for one operation: taken, so the same swipe cannot pay twice.
    pub fn card(&self, id: &str) -> Result<CardData, ScanError> {
        let held = self.store.take(id)?;
        let pan = held.swipe.pan().map(|p| p.expose().to_string()).ok_or_else(|| ScanError::Unknown(id.to_string()))?;
        let raw = |t: Option<&super::track::TrackData>| t.map(|d| strip_sentinels(d.expose()));
        Ok(CardData {
            pan,
            track1: raw(held.swipe.track1.as_ref().and_then(|t| t.as_ref().ok()).map(|t| &t.raw)),
            track2: raw(held.swipe.track2.as_ref().and_then(|t| t.as_ref().ok()).map(|t| &t.raw)),
            track3: raw(held.swipe.track3.as_ref().and_then(|t| t.as_ref().ok()).map(|t| &t.raw)),
        })
    }

    pub fn devices(&self) -> Vec<DeviceEvent> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

#[cfg(all(target_os = "linux", feature = "evdev"))]
fn spawn_keyboard(cfg: DeviceConfig, ctx: DeviceContext, tx: mpsc::Sender<DeviceMsg>, stop: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(super::evdev::run_keyboard(cfg, ctx, tx, stop));
}

/// Without evdev (another OS, or built without the feature) a keyboard device says why it is not read.
/// Config validation refuses such a device first; this covers a `Hub` started with one anyway.
#[cfg(not(all(target_os = "linux", feature = "evdev")))]
fn spawn_keyboard(cfg: DeviceConfig, ctx: DeviceContext, tx: mpsc::Sender<DeviceMsg>, _stop: impl std::future::Future<Output = ()> + Send + 'static) {
    let ev = DeviceEvent {
        device: cfg.stable_id(),
        path: cfg.path.unwrap_or_default(),
        state: super::DeviceState::Error,
        detail: Some(super::keyboard::UNSUPPORTED.to_string()),
        at: ctx.now(),
    };
    tokio::spawn(async move {
        let _ = tx.send(DeviceMsg::Device(ev)).await;
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::devices::keyboard::{Layout, SUPPORTED, UNSUPPORTED};
    use crate::devices::DeviceState;
    use crate::model::clock::SystemClock;

    #[tokio::test]
    async fn keyboard_devices_are_started() {
        let (events, mut rx) = broadcast::channel(16);
        let hub = Hub::new(Classifier::default(), Arc::new(SystemClock), events);
        let (stop_tx, stop_rx) = watch::channel(false);
        hub.start(vec![DeviceConfig::keyboard("/nonexistent/event-kbd", Layout::Us)], stop_rx);
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an event").expect("received");
        assert_eq!((ev.kind, ev.data["device"].as_str(), ev.data["state"].as_str()), ("device", Some("kbd-event-kbd"), Some("error")));
        let detail = ev.data["detail"].as_str().unwrap_or_default();
        if SUPPORTED {
            assert!(detail.starts_with("cannot open: "), "{detail}");
        } else {
            assert_eq!(detail, UNSUPPORTED);
        }
        assert_eq!(hub.devices().first().map(|d| d.state), Some(DeviceState::Error));
        let _ = stop_tx.send(true);
    }
}
