//! End-to-end device tests through the real tokio-serial path on pseudo-terminal pairs.
//!
//! The test writes to the pty master as a scanner would write to its line; `run_port` opens the
//! slave by path exactly as it opens `/dev/ttyACM0`. Unplug is closing the pair; replug is a new
//! pair behind the same symlink path (a new pty gets a new name, as a USB device may).
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::sync::{mpsc, oneshot};

use super::classify::{Classifier, ScanRule};
use super::framer::{FramingConfig, Terminator};
use super::scans::{ScanKind, ScanStore};
use super::serial::{run_port, DeviceConfig};
use super::{DeviceContext, DeviceMsg, DeviceState};
use crate::model::clock::SystemClock;

/// The pty tests run one at a time: tracing caches per-callsite interest process-wide, and two
/// tests hitting the port task's log callsites at once (one with a capturing subscriber, one
/// without) can leave the capture empty. One at a time, they are also kinder to a loaded CI box.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Pty {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    fn open() -> Pty {
        let pair = nix::pty::openpty(None, None).expect("openpty");
        // Raw from the start, so nothing written before run_port opens it is cooked or echoed.
        let mut t = tcgetattr(&pair.slave).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).expect("tcsetattr");
        let path = nix::unistd::ttyname(&pair.slave).expect("ttyname");
        Pty { master: File::from(pair.master), _slave: pair.slave, path }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to pty master");
        self.master.flush().expect("flush");
    }
}

/// What a test compares: the event without timestamps, random ids or OS-specific error text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Attached,
    Detached,
    Error(String),
    Scan { kind: ScanKind, symbology: Option<String>, text: String, suggested: Option<(String, String)> },
}

fn project(m: &DeviceMsg) -> Ev {
    match m {
        DeviceMsg::Device(d) => match d.state {
            DeviceState::Attached => Ev::Attached,
            DeviceState::Detached => Ev::Detached,
            DeviceState::Error => Ev::Error(d.detail.clone().unwrap_or_default()),
        },
        DeviceMsg::Scan(d) => Ev::Scan {
            kind: d.event.kind,
            symbology: d.event.symbology.clone(),
            text: d.event.text.clone(),
            suggested: d.event.suggested.as_ref().map(|s| (s.profile.clone(), s.operation.clone())),
        },
    }
}

fn barcode(text: &str) -> Ev {
    Ev::Scan { kind: ScanKind::Barcode, symbology: None, text: text.into(), suggested: None }
}

struct Run {
    rx: mpsc::Receiver<DeviceMsg>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Run {
    fn start(cfg: DeviceConfig) -> Run {
        let rules: Vec<ScanRule> = toml::from_str::<toml::Table>(
            r#"
            [[r]]
            operation = "card-query"
            kind = "card"
            prefix = "622202"
            [[r]]
            operation = "checkin"
            symbology = "EAN-13"
            "#,
        )
        .ok()
        .and_then(|t| t.get("r").cloned())
        .and_then(|v| v.try_into().ok())
        .expect("rules");
        let classifier = Classifier::new(rules.into_iter().map(|r| r.in_profile("loyalty"))).expect("rules compile");
        let (tx, rx) = mpsc::channel(64);
        let (stop, stopped) = oneshot::channel::<()>();
        let ctx = DeviceContext::new(classifier, Arc::new(SystemClock));
        let task = tokio::spawn(run_port(cfg, ctx, tx, async move {
            let _ = stopped.await;
        }));
        Run { rx, stop: Some(stop), task }
    }

    async fn next_msg(&mut self) -> DeviceMsg {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("device task ended"),
            Err(_) => panic!("no device message within 5 s"),
        }
    }

    async fn next(&mut self) -> Ev {
        project(&self.next_msg().await)
    }

    async fn expect(&mut self, want: &[Ev]) {
        let mut got = Vec::new();
        for _ in want {
            got.push(self.next().await);
        }
        assert_eq!(got, want);
    }

    /// Nothing more arrives within a short while.
    async fn quiet(&mut self) {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(150), self.rx.recv()).await {
            panic!("unexpected message {m:?}");
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("task stops").expect("task did not panic");
    }
}

fn cfg(path: &Path) -> DeviceConfig {
    let mut c = DeviceConfig::for_path(path.to_string_lossy());
    c.id = Some("scanner".into());
    c.framing.max_len = 32;
    c
}

#[tokio::test]
async fn chunked_frame_and_several_frames_per_read() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut pty = Pty::open();
    let mut run = Run::start(cfg(&pty.path));
    run.expect(&[Ev::Attached]).await;
    pty.write(b"]E0400638");
    tokio::time::sleep(Duration::from_millis(30)).await;
    pty.write(b"133");
    tokio::time::sleep(Duration::from_millis(30)).await;
    pty.write(b"3931\r");
    run.expect(&[Ev::Scan {
        kind: ScanKind::Barcode,
        symbology: Some("EAN-13".into()),
        text: "4006381333931".into(),
        suggested: Some(("loyalty".into(), "checkin".into())),
    }])
    .await;
    pty.write(b"A1\rB2\r\nC3\n]C1010950110102091\x1d10LOT\r");
    run.expect(&[
        barcode("A1"),
        barcode("B2"),
        barcode("C3"),
        Ev::Scan { kind: ScanKind::Barcode, symbology: Some("GS1-128".into()), text: "010950110102091\x1d10LOT".into(), suggested: None },
    ])
    .await;
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn noise_before_stx_is_reported_and_dropped() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut pty = Pty::open();
    let mut c = cfg(&pty.path);
    c.framing = FramingConfig { terminators: vec![Terminator::Etx, Terminator::Cr, Terminator::Lf], stx: true, max_len: 32, idle_gap: None };
    let mut run = Run::start(c);
    run.expect(&[Ev::Attached]).await;
    pty.write(b"\x00\xffzz\x02ABC\x03\r\n\x02DEF\x03");
    run.expect(&[Ev::Error("4 bytes outside a frame dropped".into()), barcode("ABC"), barcode("DEF")]).await;
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn overlong_frame_then_a_good_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut pty = Pty::open();
    let mut c = cfg(&pty.path);
    c.framing.max_len = 8;
    let mut run = Run::start(c);
    run.expect(&[Ev::Attached]).await;
    pty.write(b"0123456789");
    pty.write(b"AB\rGOOD\r12345678\r");
    run.expect(&[Ev::Error("overlong frame of 12 bytes (max 8) dropped".into()), barcode("GOOD"), barcode("12345678")]).await;
    run.stop().await;
}

#[tokio::test]
async fn non_utf8_is_an_error_event_not_a_panic() {
    let mut pty = Pty::open();
    let mut run = Run::start(cfg(&pty.path));
    run.expect(&[Ev::Attached]).await;
    pty.write(b"ab\xff\xfe\rok\r\xc3\r");
    run.expect(&[
        Ev::Error("frame of 4 bytes is not UTF-8 (invalid byte at offset 2); dropped".into()),
        barcode("ok"),
        Ev::Error("frame of 1 bytes is not UTF-8 (invalid byte at offset 0); dropped".into()),
    ])
    .await;
    run.stop().await;
}

#[tokio::test]
async fn idle_gap_ends_a_frame_without_terminator() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut pty = Pty::open();
    let mut c = cfg(&pty.path);
    c.framing = FramingConfig { terminators: vec![], stx: false, max_len: 32, idle_gap: Some(Duration::from_millis(40)) };
    let mut run = Run::start(c);
    run.expect(&[Ev::Attached]).await;
    pty.write(b"12345");
    tokio::time::sleep(Duration::from_millis(10)).await;
    pty.write(b"678");
    run.expect(&[barcode("12345678")]).await;
    run.stop().await;
}

fn point(link: &Path, target: &Path) {
    // Atomic re-point: a new symlink renamed over the old one.
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

#[tokio::test]
async fn unplug_and_replug_reopens_the_port() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("scanner");
    let mut first = Pty::open();
    point(&link, &first.path);
    let mut run = Run::start(cfg(&link));
    run.expect(&[Ev::Attached]).await;
    first.write(b"one\r");
    run.expect(&[barcode("one")]).await;

    // Replug at once: the new device is behind the path when the old one goes away.
    let mut second = Pty::open();
    point(&link, &second.path);
    first.write(b"partial");
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(first);
    let detached = run.next_msg().await;
    assert_eq!(project(&detached), Ev::Detached);
    let DeviceMsg::Device(d) = &detached else { unreachable!() };
    assert!(d.detail.as_deref().is_some_and(|s| s.ends_with("(partial frame of 7 bytes dropped)")), "{d:?}");
    assert_eq!(d.path, link.to_string_lossy());
    run.expect(&[Ev::Attached]).await;
    second.write(b"two\r");
    run.expect(&[barcode("two")]).await;

    // Unplug with nothing behind the path: one error, however many retries, then back.
    drop(second);
    std::fs::remove_file(&link).expect("unlink");
    run.expect(&[Ev::Detached]).await;
    match run.next().await {
        Ev::Error(d) => assert!(d.starts_with("cannot open: "), "{d}"),
        other => panic!("expected an open error, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut third = Pty::open();
    point(&link, &third.path);
    run.expect(&[Ev::Attached]).await;
    third.write(b"three\r");
    run.expect(&[barcode("three")]).await;
    run.quiet().await;
    run.stop().await;
}

/// A `MakeWriter` that keeps everything logged, to search it for card data.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything this crate's device code logs, process-wide.
///
/// A process-wide subscriber rather than a scoped one (`set_default`): tracing caches each
/// callsite's interest globally, and a callsite first reached on a thread without the scoped
/// subscriber, racing with its registration, stays disabled for everyone. With one global
/// subscriber every thread gives the same answer. Only `posgate::devices` is kept.
fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::Targets::new().with_target("posgate::devices", tracing::Level::TRACE))
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("no other test sets a global subscriber");
        logs
    })
    .clone()
}

#[tokio::test]
async fn card_swipe_is_masked_everywhere_but_the_store() {
    let _one = ONE_AT_A_TIME.lock().await;
    const PAN: &str = "6222021234567890123";
    let logs = captured_logs();

    let mut pty = Pty::open();
    let t1 = format!("%B{PAN}^ZHANG/SAN^2812101000000012300000?");
    let t2 = format!(";{PAN}=2812101000001230?");
    let mut c = cfg(&pty.path);
    c.id = Some("masking-msr".into());
    c.framing.max_len = 200;
    let mut run = Run::start(c);
    run.expect(&[Ev::Attached]).await;
    pty.write(format!("{t1}{t2}\r").as_bytes());
    let msg = run.next_msg().await;
    assert_eq!(
        project(&msg),
        Ev::Scan {
            kind: ScanKind::Card,
            symbology: Some("Magnetic stripe".into()),
            text: "622202*********0123".into(),
            suggested: Some(("loyalty".into(), "card-query".into()))
        }
    );
    // A swipe with a bad track 2 (no separator) still carries the track 1 card, and says which track
    // failed. (A track 2 that only lost its end sentinel is read: readers can be set to send no sentinels.)
    pty.write(format!("{t1};{PAN}2812?\r").as_bytes());
    let msg2 = run.next_msg().await;
    run.stop().await;

    let DeviceMsg::Scan(d1) = &msg else { unreachable!() };
    let DeviceMsg::Scan(d2) = &msg2 else { panic!("{msg2:?}") };
    let (event, card, event2, card2) = (&d1.event, &d1.card, &d2.event, &d2.card);
    assert_eq!(event2.text, "622202*********0123");
    let summary2 = event2.card.as_ref().expect("summary");
    assert_eq!((summary2.tracks.clone(), summary2.errors.len(), summary2.errors[0].track), (vec![1], 1, 2));
    assert!(card2.is_some());

    let json = format!("{} {}", serde_json::to_string(event).expect("json"), serde_json::to_string(event2).expect("json"));
    let debug = format!("{msg:?} {msg2:?} {:#?}", card);
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(logged.lines().any(|l| l.contains("masking-msr") && l.contains("scan")), "the scan was logged: {logged}");
    for (what, text) in [("json", &json), ("debug", &debug), ("log", &logged)] {
        for secret in [PAN, "ZHANG", "2812101", &t1, &t2, "000001230"] {
            assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
        }
    }
    assert!(json.contains("622202*********0123"));

    // The card itself is for the store, and from there for an operation.
    let store = ScanStore::default();
    store.hold(&event.id, card.clone().expect("card held"));
    let held = store.take(&event.id).expect("held");
    assert_eq!(held.swipe.pan().map(|p| p.expose()), Some(PAN));
    assert_eq!(held.swipe.track2.clone().and_then(Result::ok).map(|t| t.raw.expose().to_string()), Some(t2));
}
