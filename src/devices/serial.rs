//! Runs one serial device: configuration, USB discovery, and a read task that survives unplug and replug.
//!
//! A scanner on a counter gets unplugged, kicked, or re-enumerated by a flaky hub many times a day.
//! The task reopens its port with backoff until it is back instead of needing a daemon restart, and
//! tells subscribers (`device` events) what happened, so the POS can show "scanner disconnected".
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use super::framer::{FrameEvent, Framer, FramingConfig};
use super::keyboard::Layout;
use super::{decode, DeviceContext, DeviceEvent, DeviceMsg, DeviceState, ReaderKind};

/// First reopen delay after a port goes away; doubles up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reopen attempts: a replugged scanner is back within ~2 s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

/// Select a USB serial device by vendor and product id, and optionally its serial number.
/// Ids are written as hex strings (`"05e0"`, `"0x05E0"`) or integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsbMatch {
    #[serde(deserialize_with = "de_hex16")]
    pub vid: u16,
    #[serde(deserialize_with = "de_hex16")]
    pub pid: u16,
    #[serde(default)]
    pub serial: Option<String>,
}

fn de_hex16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum HexOrInt {
        Int(u16),
        Hex(String),
    }
    match HexOrInt::deserialize(d)? {
        HexOrInt::Int(n) => Ok(n),
        HexOrInt::Hex(s) => {
            let t = s.trim();
            let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
            u16::from_str_radix(t, 16).map_err(|_| serde::de::Error::custom(format!("{s:?} is not a 16-bit hex USB id")))
        }
    }
}

/// What a `[[devices]]` entry reads: a serial line (the default), or a keyboard-mode scanner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Serial,
    /// A scanner that types as a USB keyboard, read through Linux evdev (`devices::evdev`).
    Keyboard,
}

fn d_baud() -> u32 {
    9600
}
fn d_data_bits() -> u8 {
    8
}
fn d_stop_bits() -> u8 {
    1
}

/// One `[[devices]]` entry of the daemon config.
///
/// ```toml
/// [[devices]]
/// id = "front-scanner"               # optional; default from the port path or USB ids
/// path = "/dev/ttyACM0"              # or "COM3"; or instead:
/// # match = { vid = "05e0", pid = "1200", serial = "S123" }
/// baud = 9600
/// data_bits = 8
/// parity = "none"                    # odd, even
/// stop_bits = 1
/// flow_control = "none"              # software, hardware
/// reader = "auto"                    # "card" for a dedicated magnetic card reader
/// framing = { terminators = ["cr", "lf", "crlf"], stx = false, max_len = 4096, idle_gap_ms = 50 }
///
/// [[devices]]
/// kind = "keyboard"                  # a keyboard-mode scanner (Linux, evdev); default "serial"
/// path = "/dev/input/by-id/usb-Honeywell_Scanner-event-kbd"
/// layout = "de"                      # required: us, de or fr, as the scanner is set up
/// # id, reader and framing as above; Enter and keypad Enter type CR, Tab types TAB.
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    #[serde(default)]
    pub kind: DeviceKind,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default, rename = "match")]
    pub usb: Option<UsbMatch>,
    #[serde(default = "d_baud")]
    pub baud: u32,
    #[serde(default = "d_data_bits")]
    pub data_bits: u8,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "d_stop_bits")]
    pub stop_bits: u8,
    #[serde(default)]
    pub flow_control: FlowControl,
    #[serde(default)]
    pub reader: ReaderKind,
    #[serde(default)]
    pub framing: FramingConfig,
    /// The keyboard layout a `kind = "keyboard"` scanner types in; only for keyboards.
    #[serde(default)]
    pub layout: Option<Layout>,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DeviceConfigError {
    #[error("device {id}: give exactly one of `path` and `match`")]
    PathOrMatch { id: String },
    #[error("device {id}: `{field}` {why}")]
    Field { id: String, field: &'static str, why: String },
}

impl DeviceConfig {
    /// A config for a port path with every default (9600 8N1, CR/LF framing).
    pub fn for_path(path: impl Into<String>) -> Self {
        DeviceConfig {
            kind: DeviceKind::Serial,
            id: None,
            path: Some(path.into()),
            usb: None,
            baud: d_baud(),
            data_bits: d_data_bits(),
            parity: Parity::None,
            stop_bits: d_stop_bits(),
            flow_control: FlowControl::None,
            reader: ReaderKind::Auto,
            framing: FramingConfig::default(),
            layout: None,
        }
    }

    /// A keyboard-mode scanner at an evdev path, typing in `layout`, with default framing (Enter ends a scan).
    pub fn keyboard(path: impl Into<String>, layout: Layout) -> Self {
        DeviceConfig { kind: DeviceKind::Keyboard, layout: Some(layout), ..DeviceConfig::for_path(path) }
    }

    /// The device id in events: the configured one, else from the USB ids and serial number or the
    /// port path, never from discovery order (so it survives reboots and replugs).
    pub fn stable_id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        match (&self.usb, &self.path) {
            (Some(m), _) => match &m.serial {
                Some(s) => format!("usb-{:04x}:{:04x}-{s}", m.vid, m.pid),
                None => format!("usb-{:04x}:{:04x}", m.vid, m.pid),
            },
            (None, Some(p)) if self.kind == DeviceKind::Keyboard => format!("kbd-{}", base_name(p)),
            (None, Some(p)) => port_id(p),
            (None, None) => "unnamed".to_string(),
        }
    }

    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        let id = self.stable_id();
        let field = |field, why: &str| Err(DeviceConfigError::Field { id: id.clone(), field, why: why.to_string() });
        match (self.kind, self.layout) {
            (DeviceKind::Keyboard, _) if !super::keyboard::SUPPORTED => return field("kind", super::keyboard::UNSUPPORTED),
            (DeviceKind::Keyboard, _) if self.usb.is_some() => {
                return field("match", "is for serial devices; give a keyboard's `path` (/dev/input/by-id/...-event-kbd)")
            }
            (DeviceKind::Keyboard, None) => return field("layout", "is required for a keyboard device (us, de or fr)"),
            (DeviceKind::Serial, Some(_)) => return field("layout", "applies only to kind = \"keyboard\""),
            _ => {}
        }
        if self.path.is_some() == self.usb.is_some() {
            return Err(DeviceConfigError::PathOrMatch { id });
        }
        if self.path.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return field("path", "is empty");
        }
        if self.kind == DeviceKind::Keyboard {
            let serial_only = [
                ("baud", self.baud != d_baud()),
                ("data_bits", self.data_bits != d_data_bits()),
                ("parity", self.parity != Parity::None),
                ("stop_bits", self.stop_bits != d_stop_bits()),
                ("flow_control", self.flow_control != FlowControl::None),
            ];
            if let Some((name, _)) = serial_only.iter().find(|(_, set)| *set) {
                return field(name, "is a serial line setting; it does not apply to a keyboard device");
            }
        }
        if self.baud == 0 {
            return field("baud", "must be more than 0");
        }
        if !(5..=8).contains(&self.data_bits) {
            return field("data_bits", "must be 5, 6, 7 or 8");
        }
        if !(1..=2).contains(&self.stop_bits) {
            return field("stop_bits", "must be 1 or 2");
        }
        if self.framing.max_len == 0 {
            return field("framing.max_len", "must be more than 0");
        }
        if self.framing.terminators.is_empty() && self.framing.idle_gap.is_none() {
            return field("framing", "needs terminators or idle_gap_ms, or no frame would ever end");
        }
        Ok(())
    }

    fn builder(&self, path: &str) -> tokio_serial::SerialPortBuilder {
        tokio_serial::new(path, self.baud)
            .data_bits(match self.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Odd => tokio_serial::Parity::Odd,
                Parity::Even => tokio_serial::Parity::Even,
            })
            .stop_bits(if self.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One })
            .flow_control(match self.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Software => tokio_serial::FlowControl::Software,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            })
    }
}

/// `port-<basename>` for a path like `/dev/ttyACM0` or `COM3`.
fn port_id(path: &str) -> String {
    format!("port-{}", base_name(path))
}

fn base_name(path: &str) -> &str {
    Path::new(path).file_name().and_then(|s| s.to_str()).unwrap_or(path)
}

/// A serial port the system reports, with its USB identity when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    pub path: String,
    pub usb: Option<UsbIds>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsbIds {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

/// A port that a `match` rule selected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// `usb-<vid>:<pid>-<serial>`, or `port-<basename>` when the device has no serial number.
    pub id: String,
    pub path: String,
    pub usb: Option<UsbIds>,
    /// Index of the first rule that matched.
    pub rule: usize,
}

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("listing serial ports: {0}")]
    List(String),
}

/// Every serial port the system reports (through sysfs on Linux; no libudev needed).
pub fn list_ports() -> Result<Vec<PortInfo>, DeviceError> {
    // serialport panics when /sys/class/tty is missing (some containers): check first.
    if cfg!(target_os = "linux") && !Path::new("/sys/class/tty").is_dir() {
        return Ok(Vec::new());
    }
    let ports = serialport::available_ports().map_err(|e| DeviceError::List(e.to_string()))?;
    Ok(ports
        .into_iter()
        .map(|p| PortInfo {
            usb: match p.port_type {
                serialport::SerialPortType::UsbPort(u) => {
                    Some(UsbIds { vid: u.vid, pid: u.pid, serial: u.serial_number, manufacturer: u.manufacturer, product: u.product })
                }
                _ => None,
            },
            path: p.port_name,
        })
        .collect())
}

/// The ports that match any rule, with stable ids, sorted by id (so the choice never depends on
/// the order the system listed them in).
pub fn match_ports(ports: &[PortInfo], rules: &[UsbMatch]) -> Vec<Discovered> {
    let mut out: Vec<Discovered> = ports
        .iter()
        .filter_map(|p| {
            let u = p.usb.as_ref()?;
            let rule = rules.iter().position(|r| r.vid == u.vid && r.pid == u.pid && r.serial.as_ref().is_none_or(|s| u.serial.as_ref() == Some(s)))?;
            let id = match &u.serial {
                Some(s) if !s.is_empty() => format!("usb-{:04x}:{:04x}-{s}", u.vid, u.pid),
                _ => port_id(&p.path),
            };
            Some(Discovered { id, path: p.path.clone(), usb: Some(u.clone()), rule })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Auto-discovery: the system's serial ports that match the rules.
pub fn discover(rules: &[UsbMatch]) -> Result<Vec<Discovered>, DeviceError> {
    Ok(match_ports(&list_ports()?, rules))
}

/// Why a read session ended.
enum End {
    /// The port closed or failed; reopen it.
    Lost(String),
    /// Shutdown asked, or nobody listens any more: stop the task.
    Stop,
}

struct Port {
    id: String,
    cfg: DeviceConfig,
    ctx: DeviceContext,
    out: mpsc::Sender<DeviceMsg>,
}

impl Port {
    /// Send one message; false when the receiver is gone (the daemon is stopping).
    async fn send(&self, msg: DeviceMsg) -> bool {
        self.out.send(msg).await.is_ok()
    }

    async fn device(&self, path: &str, state: DeviceState, detail: Option<String>) -> bool {
        match state {
            DeviceState::Attached => tracing::info!(device = %self.id, path, "device attached"),
            DeviceState::Detached => tracing::warn!(device = %self.id, path, detail = detail.as_deref().unwrap_or(""), "device detached"),
            DeviceState::Error => tracing::warn!(device = %self.id, path, detail = detail.as_deref().unwrap_or(""), "device error"),
        }
        self.send(DeviceMsg::Device(DeviceEvent { device: self.id.clone(), path: path.to_string(), state, detail, at: self.ctx.now() })).await
    }

    /// The path to open now: the configured one, or the first USB device the match rule finds.
    fn resolve(&self) -> Result<String, String> {
        if let Some(p) = &self.cfg.path {
            return Ok(p.clone());
        }
        let Some(rule) = &self.cfg.usb else { return Err("no path and no match rule".into()) };
        let found = discover(std::slice::from_ref(rule)).map_err(|e| e.to_string())?;
        found.into_iter().next().map(|d| d.path).ok_or_else(|| format!("no USB serial device matches {:04x}:{:04x}", rule.vid, rule.pid))
    }

    /// Open with the configured settings. Pseudo-terminals and some USB CDC adapters refuse line
    /// settings they cannot honour ("Not a typewriter"); the port is still usable, so fall back to
    /// opening it with defaults rather than failing.
    fn open(&self, path: &str) -> Result<SerialStream, String> {
        match self.cfg.builder(path).open_native_async() {
            Ok(s) => Ok(s),
            Err(e) if is_not_a_tty(&e) => {
                tracing::warn!(device = %self.id, path, error = %e, "port refused line settings; opened with defaults");
                tokio_serial::new(path, self.cfg.baud).open_native_async().map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn frame_event(&self, path: &str, ev: FrameEvent) -> bool {
        match ev {
            FrameEvent::Frame(bytes) => match decode(&self.id, &bytes, self.cfg.reader, &self.ctx.classifier, self.ctx.now()) {
                Ok(d) => {
                    tracing::debug!(device = %self.id, scan = %d.event.id, kind = ?d.event.kind, symbology = d.event.symbology.as_deref().unwrap_or(""), len = bytes.len(), "scan");
                    self.send(DeviceMsg::Scan(Box::new(d))).await
                }
                Err(e) => self.device(path, DeviceState::Error, Some(e.to_string())).await,
            },
            FrameEvent::Overlong { len } => {
                let detail = format!("overlong frame of {len} bytes (max {}) dropped", self.cfg.framing.max_len);
                self.device(path, DeviceState::Error, Some(detail)).await
            }
            FrameEvent::Noise { len } => {
                let detail = format!("{len} bytes outside a frame dropped");
                self.device(path, DeviceState::Error, Some(detail)).await
            }
        }
    }

    async fn session<S: Future<Output = ()>>(&self, path: &str, mut port: SerialStream, framer: &mut Framer, shutdown: &mut std::pin::Pin<&mut S>) -> End {
        let mut buf = vec![0u8; 4096];
        let gap = self.cfg.framing.idle_gap;
        let mut last = Instant::now();
        loop {
            let armed = gap.is_some() && framer.is_pending();
            let deadline = last + gap.unwrap_or_default();
            let events = tokio::select! {
                biased;
                _ = shutdown.as_mut() => return End::Stop,
                r = port.read(&mut buf) => match r {
                    Ok(0) => return End::Lost("end of file".into()),
                    Ok(n) => {
                        last = Instant::now();
                        framer.push(&buf[..n])
                    }
                    Err(e) => return End::Lost(e.to_string()),
                },
                _ = tokio::time::sleep_until(deadline), if armed => framer.flush_idle(),
            };
            for ev in events {
                if !self.frame_event(path, ev).await {
                    return End::Stop;
                }
            }
        }
    }
}

fn is_not_a_tty(e: &tokio_serial::Error) -> bool {
    let s = e.to_string();
    s.contains("Not a typewriter") || s.contains("Inappropriate ioctl") || s.contains("ENOTTY")
}

/// Run one device until `shutdown` resolves or `out` is closed.
///
/// Emits `attached` when the port opens; `detached` when it closes or fails (EOF, EIO when a
/// USB device is unplugged or a pty master closes), then reopens with backoff (100 ms doubling to
/// 2 s) and emits `attached` again. An open that keeps failing is reported once (`error`), not at
/// every retry. Bad frames (overlong, noise, not UTF-8) are `error` events; the port stays open.
pub async fn run_port(cfg: DeviceConfig, ctx: DeviceContext, out: mpsc::Sender<DeviceMsg>, shutdown: impl Future<Output = ()>) {
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    let port = Port { id: cfg.stable_id(), cfg, ctx, out };
    let mut framer = Framer::new(port.cfg.framing.clone());
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    loop {
        let opened = port.resolve().and_then(|path| port.open(&path).map(|s| (path, s)));
        match opened {
            Ok((path, stream)) => {
                backoff = BACKOFF_MIN;
                reported = false;
                if !port.device(&path, DeviceState::Attached, None).await {
                    return;
                }
                match port.session(&path, stream, &mut framer, &mut shutdown).await {
                    End::Stop => return,
                    End::Lost(why) => {
                        let why = match framer.reset() {
                            Some(FrameEvent::Noise { len }) => format!("{why} (partial frame of {len} bytes dropped)"),
                            _ => why,
                        };
                        if !port.device(&path, DeviceState::Detached, Some(why)).await {
                            return;
                        }
                    }
                }
            }
            Err(why) => {
                if !reported {
                    reported = true;
                    let path = port.cfg.path.clone().unwrap_or_default();
                    if !port.device(&path, DeviceState::Error, Some(format!("cannot open: {why}"))).await {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return,
            _ = port.out.closed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_toml_with_defaults() {
        #[derive(Deserialize)]
        struct Daemon {
            devices: Vec<DeviceConfig>,
        }
        let d: Daemon = toml::from_str(
            r#"
            [[devices]]
            path = "/dev/ttyACM0"

            [[devices]]
            id = "msr"
            match = { vid = "0x0801", pid = "0002", serial = "B12" }
            baud = 115200
            data_bits = 7
            parity = "even"
            stop_bits = 2
            flow_control = "hardware"
            reader = "card"
            framing = { terminators = ["crlf"], stx = true, max_len = 300, idle_gap_ms = 40 }

            [[devices]]
            match = { vid = 1504, pid = 4608 }
            "#,
        )
        .expect("toml");
        let [a, b, c] = &d.devices[..] else { panic!("three devices") };
        assert_eq!(*a, DeviceConfig::for_path("/dev/ttyACM0"));
        assert_eq!(a.stable_id(), "port-ttyACM0");
        assert_eq!(
            (b.baud, b.data_bits, b.parity, b.stop_bits, b.flow_control, b.reader),
            (115200, 7, Parity::Even, 2, FlowControl::Hardware, ReaderKind::Card)
        );
        assert_eq!(b.usb, Some(UsbMatch { vid: 0x0801, pid: 2, serial: Some("B12".into()) }));
        assert_eq!(b.framing.idle_gap, Some(Duration::from_millis(40)));
        assert_eq!(b.stable_id(), "msr");
        assert_eq!(c.stable_id(), "usb-05e0:1200");
        for dev in &d.devices {
            assert_eq!(dev.validate(), Ok(()));
        }
        assert_eq!(DeviceConfig::for_path("COM3").stable_id(), "port-COM3");
    }

    #[test]
    fn bad_configs() {
        let mut c = DeviceConfig::for_path("/dev/ttyS0");
        c.usb = Some(UsbMatch { vid: 1, pid: 2, serial: None });
        assert!(matches!(c.validate(), Err(DeviceConfigError::PathOrMatch { .. })));
        let c = DeviceConfig { data_bits: 9, ..DeviceConfig::for_path("/dev/ttyS0") };
        assert!(matches!(c.validate(), Err(DeviceConfigError::Field { field: "data_bits", .. })));
        let c = DeviceConfig { framing: FramingConfig { terminators: vec![], ..FramingConfig::default() }, ..DeviceConfig::for_path("/dev/ttyS0") };
        assert!(matches!(c.validate(), Err(DeviceConfigError::Field { field: "framing", .. })));
        assert!(toml::from_str::<DeviceConfig>("path = \"x\"\nbaudrate = 1").is_err());
        assert!(toml::from_str::<DeviceConfig>("match = { vid = \"zz\", pid = 1 }").is_err());
    }

    #[test]
    fn keyboard_config() {
        #[derive(Deserialize)]
        struct Daemon {
            devices: Vec<DeviceConfig>,
        }
        let d: Daemon = toml::from_str(
            r#"
            [[devices]]
            path = "/dev/ttyACM0"

            [[devices]]
            kind = "keyboard"
            path = "/dev/input/by-id/usb-Honeywell_1900-event-kbd"
            layout = "de"

            [[devices]]
            kind = "keyboard"
            id = "msr"
            path = "/dev/input/event7"
            layout = "fr"
            reader = "card"
            framing = { terminators = ["cr", "tab"] }
            "#,
        )
        .expect("toml");
        let [serial, kbd, msr] = &d.devices[..] else { panic!("three devices") };
        assert_eq!(*serial, DeviceConfig::for_path("/dev/ttyACM0"), "serial entries parse as before");
        assert_eq!(*kbd, DeviceConfig::keyboard("/dev/input/by-id/usb-Honeywell_1900-event-kbd", Layout::De));
        assert_eq!(kbd.stable_id(), "kbd-usb-Honeywell_1900-event-kbd");
        assert_eq!((msr.kind, msr.layout, msr.reader, msr.stable_id().as_str()), (DeviceKind::Keyboard, Some(Layout::Fr), ReaderKind::Card, "msr"));
        let check = |c: &DeviceConfig| c.validate().map_err(|e| e.to_string());
        if super::super::keyboard::SUPPORTED {
            assert_eq!(check(kbd), Ok(()));
            assert_eq!(check(msr), Ok(()));
        } else {
            assert!(check(kbd).is_err_and(|e| e.contains("`evdev` cargo feature")));
        }
        assert_eq!(check(serial), Ok(()));
        let base = || DeviceConfig::keyboard("/dev/input/event3", Layout::Us);
        if super::super::keyboard::SUPPORTED {
            let no_layout = DeviceConfig { layout: None, ..base() };
            assert_eq!(check(&no_layout), Err("device kbd-event3: `layout` is required for a keyboard device (us, de or fr)".into()));
            let baud = DeviceConfig { baud: 115200, ..base() };
            assert!(check(&baud).is_err_and(|e| e.contains("`baud` is a serial line setting")));
            let usb = DeviceConfig { path: None, usb: Some(UsbMatch { vid: 1, pid: 2, serial: None }), ..base() };
            assert!(check(&usb).is_err_and(|e| e.contains("`match` is for serial devices")));
        }
        let serial_with_layout = DeviceConfig { layout: Some(Layout::Us), ..DeviceConfig::for_path("/dev/ttyS0") };
        assert!(check(&serial_with_layout).is_err_and(|e| e.contains("`layout` applies only to kind = \"keyboard\"")));
        assert!(toml::from_str::<DeviceConfig>("kind = \"hid\"\npath = \"x\"").is_err());
        assert!(toml::from_str::<DeviceConfig>("kind = \"keyboard\"\npath = \"x\"\nlayout = \"dvorak\"").is_err());
    }

    #[test]
    fn discovery_ids_are_stable_and_order_free() {
        let usb = |path: &str, serial: Option<&str>| PortInfo {
            path: path.into(),
            usb: Some(UsbIds { vid: 0x05e0, pid: 0x1200, serial: serial.map(Into::into), manufacturer: None, product: None }),
        };
        let ports =
            vec![usb("/dev/ttyACM1", Some("B")), PortInfo { path: "/dev/ttyS0".into(), usb: None }, usb("/dev/ttyACM0", Some("A")), usb("/dev/ttyACM2", None)];
        let mut reversed = ports.clone();
        reversed.reverse();
        let rules = [UsbMatch { vid: 0x05e0, pid: 0x1200, serial: None }];
        let ids: Vec<_> = match_ports(&ports, &rules).into_iter().map(|d| (d.id, d.path)).collect();
        assert_eq!(
            ids,
            [
                ("port-ttyACM2".to_string(), "/dev/ttyACM2".to_string()),
                ("usb-05e0:1200-A".into(), "/dev/ttyACM0".into()),
                ("usb-05e0:1200-B".into(), "/dev/ttyACM1".into())
            ]
        );
        assert_eq!(match_ports(&reversed, &rules), match_ports(&ports, &rules));
        let by_serial = [UsbMatch { vid: 0x05e0, pid: 0x1200, serial: Some("B".into()) }];
        assert_eq!(match_ports(&ports, &by_serial).into_iter().map(|d| d.path).collect::<Vec<_>>(), ["/dev/ttyACM1"]);
        // Enumerating the real machine must not panic, whatever it has.
        let _ = discover(&rules);
    }
}
