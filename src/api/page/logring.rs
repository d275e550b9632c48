//! The log tail for the technician page: a bounded ring of the last formatted log lines, as a tracing layer.
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{LazyLock, Mutex};

/// At most this many lines are kept.
pub const LINES: usize = 300;
/// A line is cut at this many bytes.
pub const LINE_MAX: usize = 400;

static RING: LazyLock<Mutex<VecDeque<String>>> = LazyLock::new(|| Mutex::new(VecDeque::with_capacity(LINES)));

/// Keep one line (cut on a character boundary), dropping the oldest beyond [`LINES`].
pub fn push(line: &str) {
    let line = line.trim_end();
    let mut end = line.len().min(LINE_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = line[..end].to_string();
    if end < line.len() {
        kept.push('…');
    }
    let mut r = RING.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() >= LINES {
        r.pop_front();
    }
    r.push_back(kept);
}

/// The lines kept, oldest first.
pub fn tail() -> Vec<String> {
    RING.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
}

/// A writer for one event: collects its bytes and keeps them as lines when dropped.
#[derive(Default)]
pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Bounded even for a huge event: the line is cut anyway.
        let room = (LINE_MAX * 4).saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        for line in String::from_utf8_lossy(&self.0).lines().filter(|l| !l.trim().is_empty()) {
            push(line);
        }
    }
}

/// The layer to add to the daemon's subscriber: the same lines as stderr, without colours.
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().with_ansi(false).with_writer(LineWriter::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_lines_each_bounded() {
        for i in 0..LINES + 10 {
            push(&format!("line {i}"));
        }
        push(&"é".repeat(1000));
        let t = tail();
        assert_eq!(t.len(), LINES);
        assert!(t.iter().all(|l| l.len() <= LINE_MAX + 3));
        assert!(!t.iter().any(|l| l == "line 10"), "the oldest went");
    }
}
