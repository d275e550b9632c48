//! The journal's durable record: an append-only log of preallocated, checksummed segment files.
//!
//! Each change the journal makes is one entry, `len u32 | crc32 u32 | payload` (the CRC covers the
//! length and the payload), written with `pwrite` into a segment file that was filled with zeros when
//! it was made, so a later write changes no file metadata and one `fdatasync` makes a whole group of
//! entries durable. A zero length marks the end of a segment's entries. Segments are
//! `log/0000000001.seg`, `log/0000000002.seg`, …; an entry never spans two.
//!
//! On open the entries after a position are read back in order. A damaged LAST entry (a write torn by a
//! power cut: cut short, or a checksum that does not hold, with nothing valid after it) is zeroed and the
//! log goes on from there; a damaged entry FOLLOWED by valid ones is real corruption and is refused.
pub mod entry;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use entry::{Entry, Op};

/// Bytes preallocated per segment (an entry larger than this gets a segment of its own size).
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Entry header: length and CRC.
const HEAD: usize = 8;
/// No single change is this large; a length above it is damage, not an entry.
const MAX_ENTRY: usize = 64 * 1024 * 1024;

#[derive(Debug, Error, Clone)]
pub enum LogError {
    #[error("journal log {0}")]
    Io(String),
    #[error("journal log is corrupt: {0}")]
    Corrupt(String),
    #[error("journal log entry too big: {0}")]
    TooBig(String),
}

fn io(path: &Path, what: &str, e: std::io::Error) -> LogError {
    LogError::Io(format!("{}: {what}: {e}", path.display()))
}

/// A place in the log: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seg: u64,
    pub off: u64,
}

impl Pos {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.seg.to_be_bytes());
        b[8..].copy_from_slice(&self.off.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<Pos> {
        let seg = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let off = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Pos { seg, off })
    }
}

struct Segment {
    no: u64,
    file: Arc<File>,
    /// Preallocated size.
    len: u64,
    /// Where the next entry goes.
    at: u64,
}

/// The open log, positioned for appending.
pub struct Log {
    dir: PathBuf,
    cur: Segment,
    /// Earlier segments written since the last `to_sync` (a roll-over happened in between).
    unsynced: Vec<Arc<File>>,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// The last valid entry's sequence number (0: none after `from`).
    pub last_seq: u64,
    /// A torn tail that was zeroed, described.
    pub torn: Option<String>,
}

pub fn segment_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:010}.seg"))
}

/// Segment numbers present in `dir`, ascending.
pub fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir, "list", e)),
    };
    for e in rd {
        let e = e.map_err(|e| io(dir, "list", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io(dir, "sync folder", e))
}

/// Make the log folder (0700) when missing.
pub fn make_dir(dir: &Path) -> Result<(), LogError> {
    if !dir.exists() {
        crate::fsmode::private_dir(dir).map_err(|e| io(dir, "create", e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Create segment `no` of `len` zero bytes (0600), durable with its folder entry.
fn create_segment(dir: &Path, no: u64, len: u64) -> Result<Segment, LogError> {
    let path = segment_path(dir, no);
    let made = (|| {
        let f =
            crate::platform::private(std::fs::OpenOptions::new().read(true).write(true).create_new(true)).open(&path).map_err(|e| io(&path, "create", e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            crate::platform::write_all_at(&f, &zeros[..n], at).map_err(|e| io(&path, "preallocate", e))?;
            at += n as u64;
        }
        f.sync_all().map_err(|e| io(&path, "sync", e))?;
        sync_dir(dir)?;
        Ok(f)
    })();
    match made {
        Ok(f) => Ok(Segment { no, file: Arc::new(f), len, at: 0 }),
        Err(e) => {
            // A half-made segment (the disk filled) must not stay: the next try makes it again.
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// One header + payload, checked. `None`: zeros (the end). `Err`: damage at this offset.
fn read_at(b: &[u8], off: usize) -> Result<Option<(Entry, usize)>, String> {
    if off + HEAD > b.len() {
        return Ok(None);
    }
    let len = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
    let crc = u32::from_le_bytes([b[off + 4], b[off + 5], b[off + 6], b[off + 7]]);
    if len == 0 && crc == 0 {
        return Ok(None);
    }
    if len > MAX_ENTRY || off + HEAD + len > b.len() {
        return Err(format!("entry at byte {off} claims {len} bytes, past the segment's end"));
    }
    let payload = &b[off + HEAD..off + HEAD + len];
    if checksum(&b[off..off + 4], payload) != crc {
        return Err(format!("entry at byte {off} ({len} bytes): checksum does not hold"));
    }
    let e = Entry::decode(payload).map_err(|e| format!("entry at byte {off}: {e}"))?;
    Ok(Some((e, off + HEAD + len)))
}

fn checksum(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// True when a valid entry starts at `off` of `b`.
fn valid_at(b: &[u8], off: usize) -> bool {
    matches!(read_at(b, off), Ok(Some(_)))
}

fn read_segment(dir: &Path, no: u64) -> Result<Vec<u8>, LogError> {
    let p = segment_path(dir, no);
    std::fs::read(&p).map_err(|e| io(&p, "read", e))
}

impl Log {
    /// Open the log in `dir` (made when missing), hand every valid entry from `from` on to `each` in
    /// order, zero a torn tail, and position for appending after the last valid entry.
    pub fn open(dir: &Path, from: Option<Pos>, mut each: impl FnMut(Entry) -> Result<(), LogError>) -> Result<(Log, Opened), LogError> {
        make_dir(dir)?;
        let segs = segments(dir)?;
        let mut opened = Opened::default();
        let Some(&last_no) = segs.last() else {
            let cur = create_segment(dir, 1, SEGMENT_BYTES)?;
            return Ok((Log { dir: dir.to_path_buf(), cur, unsynced: Vec::new() }, opened));
        };
        let from = from.unwrap_or(Pos { seg: segs[0], off: 0 });
        let mut end = Pos { seg: last_no, off: 0 };
        let mut prev_seq: Option<u64> = None;
        'segs: for (i, &no) in segs.iter().enumerate().filter(|(_, &no)| no >= from.seg) {
            let b = read_segment(dir, no)?;
            let mut off = if no == from.seg { from.off as usize } else { 0 };
            loop {
                match read_at(&b, off) {
                    Ok(None) => {
                        end = Pos { seg: no, off: off as u64 };
                        continue 'segs;
                    }
                    Ok(Some((e, next))) => {
                        if let Some(p) = prev_seq {
                            if e.seq != p + 1 {
                                return Err(LogError::Corrupt(format!(
                                    "{}: entry at byte {off} has change {} after change {p}",
                                    segment_path(dir, no).display(),
                                    e.seq
                                )));
                            }
                        }
                        prev_seq = Some(e.seq);
                        opened.last_seq = e.seq;
                        each(e)?;
                        off = next;
                    }
                    Err(why) => {
                        // Torn tail or real damage: real when anything valid follows.
                        let len = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
                        let after = off + HEAD + len;
                        let later = segs[i + 1..].iter().any(|&n| read_segment(dir, n).map(|s| valid_at(&s, 0)).unwrap_or(false));
                        if (len <= MAX_ENTRY && valid_at(&b, after)) || later {
                            return Err(LogError::Corrupt(format!(
                                "{}: {why}, and valid entries follow it: this is damage inside the journal, not a write cut short at its end. Restore the journal from a backup and check it with `posgate journal verify`",
                                segment_path(dir, no).display()
                            )));
                        }
                        let last_nonzero = b.iter().rposition(|&x| x != 0).map_or(off, |p| p + 1);
                        let path = segment_path(dir, no);
                        let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(|e| io(&path, "open", e))?;
                        crate::platform::write_all_at(&f, &vec![0u8; last_nonzero.saturating_sub(off)], off as u64)
                            .map_err(|e| io(&path, "zero the torn tail", e))?;
                        f.sync_all().map_err(|e| io(&path, "sync", e))?;
                        opened.torn = Some(format!("{}: {why}; the torn tail ({} bytes) was zeroed", path.display(), last_nonzero.saturating_sub(off)));
                        end = Pos { seg: no, off: off as u64 };
                        // Later segments hold nothing valid: drop them so appends follow the tail.
                        for &n in &segs[i + 1..] {
                            let _ = std::fs::remove_file(segment_path(dir, n));
                        }
                        break 'segs;
                    }
                }
            }
        }
        let path = segment_path(dir, end.seg);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io(&path, "open", e))?;
        let len = file.metadata().map_err(|e| io(&path, "stat", e))?.len();
        let cur = Segment { no: end.seg, file: Arc::new(file), len, at: end.off };
        Ok((Log { dir: dir.to_path_buf(), cur, unsynced: Vec::new() }, opened))
    }

    /// Where the next entry goes.
    pub fn position(&self) -> Pos {
        Pos { seg: self.cur.no, off: self.cur.at }
    }

    /// Write one entry (not yet durable: see `to_sync`). On failure nothing is appended: the log's
    /// position stays, and what was half-written is zeroed (best effort) so no torn entry sits mid-log.
    pub fn append(&mut self, e: &Entry) -> Result<Pos, LogError> {
        let payload = e.encode()?;
        let total = (HEAD + payload.len()) as u64;
        if payload.len() > MAX_ENTRY {
            return Err(LogError::TooBig(format!("{} bytes", payload.len())));
        }
        if self.cur.at + total > self.cur.len {
            let next = create_segment(&self.dir, self.cur.no + 1, SEGMENT_BYTES.max(total))?;
            let old = std::mem::replace(&mut self.cur, next);
            self.unsynced.push(old.file);
        }
        let mut buf = Vec::with_capacity(total as usize);
        let len = (payload.len() as u32).to_le_bytes();
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&checksum(&len, &payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        if let Err(err) = crate::platform::write_all_at(&self.cur.file, &buf, self.cur.at) {
            let _ = crate::platform::write_all_at(&self.cur.file, &vec![0u8; buf.len()], self.cur.at);
            return Err(io(&segment_path(&self.dir, self.cur.no), "append", err));
        }
        self.cur.at += total;
        Ok(self.position())
    }

    /// The files whose writes the next `fdatasync` must cover: the current segment, and any segment
    /// rolled over since the last call.
    pub fn to_sync(&mut self) -> Vec<Arc<File>> {
        let mut v = std::mem::take(&mut self.unsynced);
        v.push(self.cur.file.clone());
        v
    }

    /// Empty the log after a final checkpoint: every other segment removed, the current one's used part
    /// zeroed and synced, appends from its start. Returns the new position.
    pub fn rewind(&mut self) -> Result<Pos, LogError> {
        let path = segment_path(&self.dir, self.cur.no);
        crate::platform::write_all_at(&self.cur.file, &vec![0u8; self.cur.at as usize], 0).map_err(|e| io(&path, "zero", e))?;
        self.cur.file.sync_data().map_err(|e| io(&path, "sync", e))?;
        self.cur.at = 0;
        self.unsynced.clear();
        remove_before(&self.dir, self.cur.no)?;
        Ok(self.position())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Delete the segments wholly before segment `seg` (their changes are in a checkpoint).
pub fn remove_before(dir: &Path, seg: u64) -> Result<usize, LogError> {
    let mut n = 0;
    for no in segments(dir)?.into_iter().filter(|&no| no < seg) {
        let p = segment_path(dir, no);
        std::fs::remove_file(&p).map_err(|e| io(&p, "remove", e))?;
        n += 1;
    }
    if n > 0 {
        sync_dir(dir)?;
    }
    Ok(n)
}

/// Every change still in the log with a sequence number above `seq`, oldest first (for a relay that
/// publishes the journal's changes: issue 15). Reads the segment files; safe beside a running writer.
pub fn changes_since(dir: &Path, seq: u64) -> Result<Vec<Entry>, LogError> {
    let mut out = Vec::new();
    for no in segments(dir)? {
        let b = read_segment(dir, no)?;
        let mut off = 0;
        while let Ok(Some((e, next))) = read_at(&b, off) {
            if e.seq > seq {
                out.push(e);
            }
            off = next;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::entry::RECORDS;
    use super::*;
    use std::os::unix::fs::FileExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("log")
    }

    fn entry(seq: u64) -> Entry {
        Entry { seq, ops: vec![Op::put(RECORDS, seq.to_be_bytes().to_vec(), vec![b'x'; 40])] }
    }

    fn reopen(d: &Path) -> Result<(Log, Opened, Vec<u64>), LogError> {
        let mut seen = Vec::new();
        let (l, o) = Log::open(d, None, |e| {
            seen.push(e.seq);
            Ok(())
        })?;
        Ok((l, o, seen))
    }

    #[test]
    fn entries_read_back_in_order_and_appends_follow_them() {
        let d = tmp("order");
        let (mut l, _, seen) = reopen(&d).unwrap();
        assert!(seen.is_empty());
        for s in 1..=5 {
            l.append(&entry(s)).unwrap();
        }
        drop(l);
        let (mut l, o, seen) = reopen(&d).unwrap();
        assert_eq!((seen, o.last_seq), ((1..=5).collect::<Vec<_>>(), 5));
        l.append(&entry(6)).unwrap();
        drop(l);
        assert_eq!(reopen(&d).unwrap().2, (1..=6).collect::<Vec<_>>());
        assert_eq!(changes_since(&d, 4).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
        let _ = std::fs::remove_dir_all(d.parent().unwrap());
    }

    #[test]
    fn a_torn_last_entry_is_zeroed_and_the_log_goes_on() {
        for tear in ["flip", "cut"] {
            let d = tmp(&format!("torn-{tear}"));
            let (mut l, _, _) = reopen(&d).unwrap();
            let mut ends = Vec::new();
            for s in 1..=3 {
                ends.push(l.append(&entry(s)).unwrap().off);
            }
            drop(l);
            let p = segment_path(&d, 1);
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            match tear {
                "flip" => f.write_all_at(&[0xff], ends[1] + 20).unwrap(),
                _ => f.write_all_at(&[0u8; 30], ends[2] - 30).unwrap(),
            }
            let (mut l, o, seen) = reopen(&d).unwrap();
            assert_eq!(seen, vec![1, 2], "{tear}");
            assert!(o.torn.is_some(), "{tear}");
            l.append(&entry(3)).unwrap();
            drop(l);
            let (_, o, seen) = reopen(&d).unwrap();
            assert_eq!((seen, o.torn.is_none()), (vec![1, 2, 3], true), "{tear}");
            let _ = std::fs::remove_dir_all(d.parent().unwrap());
        }
    }

    #[test]
    fn a_bad_entry_followed_by_valid_ones_is_refused() {
        let d = tmp("middle");
        let (mut l, _, _) = reopen(&d).unwrap();
        let mut ends = Vec::new();
        for s in 1..=3 {
            ends.push(l.append(&entry(s)).unwrap().off);
        }
        drop(l);
        let f = std::fs::OpenOptions::new().write(true).open(segment_path(&d, 1)).unwrap();
        f.write_all_at(&[0xff], ends[0] + 20).unwrap();
        let e = reopen(&d).err().expect("refused");
        assert!(matches!(e, LogError::Corrupt(_)) && e.to_string().contains("valid entries follow"), "{e}");
        let _ = std::fs::remove_dir_all(d.parent().unwrap());
    }

    #[test]
    fn segments_roll_over_and_old_ones_go() {
        let d = tmp("roll");
        let (mut l, _, _) = reopen(&d).unwrap();
        let big = Entry { seq: 1, ops: vec![Op::put(RECORDS, vec![1], vec![0u8; (SEGMENT_BYTES as usize) * 2 / 3])] };
        l.append(&big).unwrap();
        let at = l.append(&Entry { seq: 2, ..big.clone() }).unwrap();
        assert_eq!(at.seg, 2);
        assert_eq!(l.to_sync().len(), 2, "the rolled-over segment is synced too");
        l.append(&entry(3)).unwrap();
        drop(l);
        let (l, _, seen) = reopen(&d).unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(remove_before(&d, 2).unwrap(), 1);
        drop(l);
        assert_eq!(segments(&d).unwrap(), vec![2]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(segment_path(&d, 2)).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(d.parent().unwrap());
    }
}
