//! The daemon's Prometheus metrics: counters and fixed-bucket histograms on atomics, rendered by hand.
//!
//! One process-wide registry, so each hook in the API server, the engine, the journal's group-commit
//! thread and the device hub is a one-line call. Label values can come from outside (an operation name
//! in a URL, a device name in `POST /v1/scans`), so each family holds at most [`MAX_SERIES`] label sets
//! (the rest count under `other`) and each value is cut at [`MAX_LABEL`] bytes. Gauges (recovery queue,
//! parked records, unsettled batches) are not kept here: they are read at scrape time from the status
//! the engine already computes for `GET /v1/status`.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde_json::Value;

/// The content type of the text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// At most this many label sets per family; further ones count under the label value `other`.
pub const MAX_SERIES: usize = 256;
/// A label value is cut at this many bytes.
pub const MAX_LABEL: usize = 64;

/// Latency buckets in microseconds: 1 ms … 30 s (the longest backend budget is a request timeout).
const LATENCY_US: &[u64] = &[1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000];
/// fsync buckets in microseconds: 100 µs … 5 s.
const FSYNC_US: &[u64] = &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000];
/// Group-commit sizes: records released by one fdatasync.
const GROUP_SIZE: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

/// A histogram with fixed upper bounds (in integer units: µs or a count), cumulative when rendered.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound; the `+Inf` bucket is `count`.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram { bounds, buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(), count: AtomicU64::new(0), sum: AtomicU64::new(0) }
    }

    /// Record one observation of `v` units.
    pub fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// `_bucket`, `_sum` and `_count` lines; `scale` divides units into the exposed unit (1e6: µs → s).
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}", *b as f64 / scale);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum.load(Ordering::Relaxed) as f64 / scale);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// One family of series keyed by label values, bounded by [`MAX_SERIES`].
#[derive(Debug)]
struct Family<T> {
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, Arc<T>>>,
    make: fn() -> T,
}

impl<T> Family<T> {
    const fn new(labels: &'static [&'static str], make: fn() -> T) -> Self {
        Family { labels, series: Mutex::new(BTreeMap::new()), make }
    }

    fn get(&self, values: &[&str]) -> Arc<T> {
        let key: Vec<String> = values.iter().map(|v| bound_label(v)).collect();
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&key) {
            return s.clone();
        }
        let key = if map.len() >= MAX_SERIES { vec!["other".to_string(); values.len()] } else { key };
        map.entry(key).or_insert_with(|| Arc::new((self.make)())).clone()
    }

    fn each(&self, mut f: impl FnMut(&str, &T)) {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (values, s) in map.iter() {
            let labels: Vec<String> = self.labels.iter().zip(values).map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            f(&labels.join(","), s);
        }
    }
}

/// Every metric the daemon keeps.
struct Registry {
    requests: Family<AtomicU64>,
    backend: Family<Histogram>,
    recovery: Family<AtomicU64>,
    scans: Family<AtomicU64>,
    fsync: Histogram,
    group: Histogram,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    requests: Family::new(&["operation", "status"], || AtomicU64::new(0)),
    backend: Family::new(&["backend", "profile", "operation"], || Histogram::new(LATENCY_US)),
    recovery: Family::new(&["profile", "result"], || AtomicU64::new(0)),
    scans: Family::new(&["device"], || AtomicU64::new(0)),
    fsync: Histogram::new(FSYNC_US),
    group: Histogram::new(GROUP_SIZE),
});

/// One API request answered with `status`; `operation` is the route (`status`, `journal`, …) or, for
/// `POST /v1/profiles/{p}/{op}`, the operation's name.
pub fn request(operation: &str, status: u16) {
    REGISTRY.requests.get(&[operation, &status.to_string()]).fetch_add(1, Ordering::Relaxed);
}

/// One backend call (a send or a recovery attempt) that took `took`.
pub fn backend(kind: &str, profile: &str, operation: &str, took: Duration) {
    REGISTRY.backend.get(&[kind, profile, operation]).observe(micros(took));
}

/// Time a backend call: the call's result, with its latency recorded (tokio's monotonic clock, as the
/// engine's wait budgets use; never the wall clock).
pub async fn timed<F: std::future::Future>(kind: &str, profile: &str, operation: &str, call: F) -> F::Output {
    let start = tokio::time::Instant::now();
    let r = call.await;
    backend(kind, profile, operation, start.elapsed());
    r
}

/// One recovery attempt (a retry of an unknown outcome) ended with `result`: `resolved`, `again`, `parked`.
pub fn recovery_attempt(profile: &str, result: &str) {
    REGISTRY.recovery.get(&[profile, result]).fetch_add(1, Ordering::Relaxed);
}

/// One group commit of the journal: `size` commits released by one flush + fdatasync that took `took`.
pub fn group_commit(size: u64, took: Duration) {
    REGISTRY.group.observe(size);
    REGISTRY.fsync.observe(micros(took));
}

/// Run one group commit's flush + fdatasync (`sync`) and record its duration and `size`. On the
/// journal's own sync thread, so the duration is read from the OS's monotonic clock.
#[allow(clippy::disallowed_methods)] // fsync latency, not engine time
pub fn time_group_commit<R>(size: u64, sync: impl FnOnce() -> R) -> R {
    let start = std::time::Instant::now();
    let r = sync();
    group_commit(size, start.elapsed());
    r
}

/// One scan published by `device` (a configured device's id, or the name given to `POST /v1/scans`).
pub fn scan(device: &str) {
    REGISTRY.scans.get(&[device]).fetch_add(1, Ordering::Relaxed);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The label value kept: at most [`MAX_LABEL`] bytes, cut on a character boundary.
fn bound_label(v: &str) -> String {
    let mut end = v.len().min(MAX_LABEL);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole scrape: the registry's counters and histograms, and the gauges read from `status` (the
/// `GET /v1/status` body).
pub fn render(status: &Value) -> String {
    let r = &*REGISTRY;
    let mut out = String::with_capacity(8 * 1024);
    header(&mut out, "posgate_requests_total", "counter", "Local API requests answered, by operation and HTTP status.");
    r.requests.each(|l, n| {
        let _ = writeln!(out, "posgate_requests_total{{{l}}} {}", n.load(Ordering::Relaxed));
    });
    header(&mut out, "posgate_backend_seconds", "histogram", "Latency of backend calls (sends and recovery attempts), by backend kind, profile and operation.");
    r.backend.each(|l, h| h.render(&mut out, "posgate_backend_seconds", l, 1e6));
    header(&mut out, "posgate_recovery_attempts_total", "counter", "Recovery attempts (retries of unknown outcomes), by profile and result.");
    r.recovery.each(|l, n| {
        let _ = writeln!(out, "posgate_recovery_attempts_total{{{l}}} {}", n.load(Ordering::Relaxed));
    });
    header(&mut out, "posgate_journal_fsync_seconds", "histogram", "Duration of one group commit's flush and fdatasync of the journal.");
    r.fsync.render(&mut out, "posgate_journal_fsync_seconds", "", 1e6);
    header(&mut out, "posgate_journal_group_size", "histogram", "Commits made durable by one group commit.");
    r.group.render(&mut out, "posgate_journal_group_size", "", 1.0);
    header(&mut out, "posgate_scans_total", "counter", "Scans published, by device.");
    r.scans.each(|l, n| {
        let _ = writeln!(out, "posgate_scans_total{{{l}}} {}", n.load(Ordering::Relaxed));
    });
    let profiles = status.get("profiles").and_then(Value::as_array).cloned().unwrap_or_default();
    let gauge = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&Value) -> u64| {
        header(out, name, "gauge", help);
        for p in &profiles {
            let profile = p.get("name").and_then(Value::as_str).unwrap_or("");
            let backend = p.get("backend").and_then(Value::as_str).unwrap_or("");
            let _ = writeln!(out, "{name}{{profile=\"{}\",backend=\"{}\"}} {}", escape(profile), escape(backend), value(p));
        }
    };
    let num = |p: &Value, k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
    gauge(&mut out, "posgate_recovery_queue_depth", "Records whose recovery is owed and being retried.", &|p| num(p, "pending_recovery"));
    gauge(&mut out, "posgate_recovery_parked", "Records whose recovery is parked: they need a person.", &|p| num(p, "needs_attention"));
    gauge(&mut out, "posgate_unsettled_batches", "Closed batches the host has not settled.", &|p| {
        p.get("unsettled_batches").and_then(Value::as_array).map_or(0, |a| a.len() as u64)
    });
    header(&mut out, "posgate_journal_syncs", "counter", "Group commits since the daemon started.");
    let syncs = status.pointer("/journal/syncs").and_then(Value::as_u64).unwrap_or(0);
    let _ = writeln!(out, "posgate_journal_syncs {syncs}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(GROUP_SIZE);
        for v in [1, 1, 3, 300] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"", 1.0);
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"256\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 305\nx_count{a=\"b\"} 4\n"), "{out}");
    }

    #[test]
    fn label_values_from_outside_are_escaped_cut_and_bounded_in_number() {
        let f: Family<AtomicU64> = Family::new(&["device"], || AtomicU64::new(0));
        for i in 0..MAX_SERIES + 50 {
            f.get(&[&format!("d{i}")]).fetch_add(1, Ordering::Relaxed);
        }
        f.get(&["\"a\\b\nc"]);
        let mut lines = Vec::new();
        f.each(|l, n| lines.push((l.to_string(), n.load(Ordering::Relaxed))));
        assert_eq!(lines.len(), MAX_SERIES + 1);
        assert!(lines.contains(&("device=\"other\"".to_string(), 50)), "{lines:?}");
        assert_eq!(bound_label(&"é".repeat(100)).len(), MAX_LABEL);
        assert_eq!(escape("\"a\\b\nc"), "\\\"a\\\\b\\nc");
    }
}
