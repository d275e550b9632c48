//! The journal's high-water mark: what the journal had made durable, kept outside sled's own files.
//!
//! sled recovers a damaged log by stopping at the first bad entry, silently: a journal that lost its
//! tail opens with fewer records, an older trace counter and fewer idempotency keys, and the daemon
//! would hand out trace numbers and accept POS retries a second time. The mark is the independent
//! witness that lets `SledJournal::open` notice and refuse.
//!
//! The file holds two fixed-size slots written alternately in place (one `pwrite` + `fdatasync` per
//! update, no rename): a torn write can only damage the slot being written, and the other still holds
//! the previous mark, which is a valid lower bound. Each slot: magic, sequence number, payload length,
//! JSON payload, SHA-1 of all of that. The newest slot whose checksum holds wins; a file with no valid
//! slot is corrupt and refused.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::JournalError;

const MAGIC: &[u8; 8] = b"PGHWM\x01\0\0";
/// Bytes per slot. Only the used part (a few hundred bytes) is written on an update.
const SLOT: usize = 64 * 1024;
/// magic + seq + len, before the payload; the SHA-1 follows the payload.
const HEAD: usize = 8 + 8 + 4;
const SUM: usize = 20;

/// One terminal profile's counters as the journal last made them durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileMark {
    /// The profile state's write counter (bumped by every change of trace, batch or keys).
    pub seq: u64,
    pub last_trace: u32,
    pub last_batch: u32,
    pub batch: Option<String>,
    pub batch_open: bool,
    pub idem_keys: u64,
}

/// What the journal had made durable at one group commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The highest record id (0: none yet).
    pub last_id: u64,
    pub profiles: BTreeMap<String, ProfileMark>,
}

/// The mark file of the journal in `journal_dir`: `<parent>/<name>.hwm` (`data/journal.hwm`).
pub fn mark_path(journal_dir: &Path) -> PathBuf {
    let name = journal_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "journal".into());
    journal_dir.with_file_name(format!("{name}.hwm"))
}

fn io_err(path: &Path, e: std::io::Error) -> JournalError {
    JournalError::Mark(format!("{}: {e}", path.display()))
}

fn encode_slot(seq: u64, mark: &Mark) -> Result<Vec<u8>, JournalError> {
    let payload = serde_json::to_vec(mark).map_err(|e| JournalError::Mark(e.to_string()))?;
    if HEAD + payload.len() + SUM > SLOT {
        return Err(JournalError::Mark(format!("the high-water mark ({} bytes) does not fit a {SLOT}-byte slot: too many terminal profiles", payload.len())));
    }
    let mut out = Vec::with_capacity(HEAD + payload.len() + SUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let sum = Sha1::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// What one slot holds.
#[derive(Debug)]
enum Slot {
    Empty,
    Damaged(String),
    Valid(u64, Mark),
}

fn decode_slot(b: &[u8]) -> Slot {
    if b.iter().all(|&x| x == 0) {
        return Slot::Empty;
    }
    if &b[..8] != MAGIC {
        return Slot::Damaged("bad magic".into());
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(b[16..20].try_into().unwrap_or_default()) as usize;
    if HEAD + len + SUM > b.len() {
        return Slot::Damaged(format!("payload length {len} out of range"));
    }
    let sum = Sha1::digest(&b[..HEAD + len]);
    if sum.as_slice() != &b[HEAD + len..HEAD + len + SUM] {
        return Slot::Damaged("checksum mismatch".into());
    }
    match serde_json::from_slice(&b[HEAD..HEAD + len]) {
        Ok(m) => Slot::Valid(seq, m),
        Err(e) => Slot::Damaged(format!("payload: {e}")),
    }
}

/// The mark read back: its sequence number and content, and a note when one slot was damaged.
#[derive(Debug, Clone)]
pub struct Found {
    pub seq: u64,
    pub mark: Mark,
    pub warning: Option<String>,
}

/// Read the mark at `path`: `Ok(None)` when there is no file; `Err(MarkCorrupt)` when no slot holds.
pub fn read(path: &Path) -> Result<Option<Found>, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    if bytes.len() != 2 * SLOT {
        return Err(JournalError::MarkCorrupt(path.display().to_string(), format!("{} bytes, want {}", bytes.len(), 2 * SLOT)));
    }
    let slots = [decode_slot(&bytes[..SLOT]), decode_slot(&bytes[SLOT..])];
    let mut best: Option<(u64, &Mark)> = None;
    let mut damaged = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        match s {
            Slot::Valid(seq, m) if best.is_none_or(|(b, _)| *seq > b) => best = Some((*seq, m)),
            Slot::Valid(..) | Slot::Empty => {}
            Slot::Damaged(why) => damaged.push(format!("slot {i}: {why}")),
        }
    }
    match best {
        Some((seq, mark)) => Ok(Some(Found {
            seq,
            mark: mark.clone(),
            warning: (!damaged.is_empty()).then(|| format!("{}: {} (an interrupted update; the other slot is used)", path.display(), damaged.join(", "))),
        })),
        None if damaged.is_empty() => Err(JournalError::MarkCorrupt(path.display().to_string(), "no slot was ever written".into())),
        None => Err(JournalError::MarkCorrupt(path.display().to_string(), damaged.join(", "))),
    }
}

/// The open mark file, owned by the journal's mark thread.
#[derive(Debug)]
pub struct MarkFile {
    path: PathBuf,
    file: File,
    seq: u64,
    last: Mark,
}

impl MarkFile {
    /// Create the file with `mark` in slot 0, atomically (temp file, fsync, rename, fsync folder).
    pub fn create(path: &Path, mark: &Mark) -> Result<MarkFile, JournalError> {
        let tmp = path.with_extension("hwm.tmp");
        let mut buf = vec![0u8; 2 * SLOT];
        let slot = encode_slot(1, mark)?;
        buf[..slot.len()].copy_from_slice(&slot);
        {
            let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            f.write_all(&buf).map_err(|e| io_err(&tmp, e))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        if let Some(parent) = path.parent() {
            let dir = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            crate::platform::sync_dir(dir).map_err(|e| io_err(dir, e))?;
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| io_err(path, e))?;
        Ok(MarkFile { path: path.to_path_buf(), file, seq: 1, last: mark.clone() })
    }

    /// Open an existing file whose newest valid slot is `found`.
    pub fn open(path: &Path, found: &Found) -> Result<MarkFile, JournalError> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| io_err(path, e))?;
        Ok(MarkFile { path: path.to_path_buf(), file, seq: found.seq, last: found.mark.clone() })
    }

    /// The mark last written.
    pub fn last(&self) -> &Mark {
        &self.last
    }

    /// Write `mark` into the older slot and fdatasync; nothing is written when it did not change.
    /// The newer slot is never touched, so a torn write leaves the previous mark readable.
    pub fn update(&mut self, mark: &Mark) -> Result<bool, JournalError> {
        if *mark == self.last {
            return Ok(false);
        }
        let seq = self.seq + 1;
        let slot = encode_slot(seq, mark)?;
        // Odd sequence numbers (the first, from `create`) live in slot 0, even ones in slot 1.
        let offset = if seq % 2 == 1 { 0 } else { SLOT as u64 };
        crate::platform::write_all_at(&self.file, &slot, offset).map_err(|e| io_err(&self.path, e))?;
        self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        self.seq = seq;
        self.last = mark.clone();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(last_id: u64, trace: u32) -> Mark {
        let mut m = Mark { last_id, ..Default::default() };
        m.profiles.insert(
            "loyalty".into(),
            ProfileMark { seq: last_id, last_trace: trace, last_batch: 1, batch: Some("000001".into()), batch_open: true, idem_keys: 3 },
        );
        m
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-mark-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mark_path_sits_beside_the_journal_folder() {
        assert_eq!(mark_path(Path::new("/var/lib/posgate/journal")), PathBuf::from("/var/lib/posgate/journal.hwm"));
    }

    #[test]
    fn updates_alternate_slots_and_the_newest_wins() {
        let d = tmp("alt");
        let p = d.join("journal.hwm");
        let mut f = MarkFile::create(&p, &sample(1, 1)).unwrap();
        assert_eq!(read(&p).unwrap().unwrap().mark, sample(1, 1));
        for i in 2..6 {
            assert!(f.update(&sample(i, i as u32)).unwrap());
            let got = read(&p).unwrap().unwrap();
            assert_eq!((got.seq, got.mark), (i, sample(i, i as u32)));
            assert!(got.warning.is_none());
        }
        // Unchanged: no write.
        assert!(!f.update(&sample(5, 5)).unwrap());
        // A reopened file continues the sequence.
        let found = read(&p).unwrap().unwrap();
        let mut g = MarkFile::open(&p, &found).unwrap();
        g.update(&sample(6, 6)).unwrap();
        assert_eq!(read(&p).unwrap().unwrap().mark, sample(6, 6));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A torn update (power cut mid-write) damages only the slot being written: the previous mark
    /// is still read, which is a valid lower bound of what the journal made durable.
    #[test]
    fn a_torn_update_falls_back_to_the_previous_mark() {
        let d = tmp("torn");
        let p = d.join("journal.hwm");
        let mut f = MarkFile::create(&p, &sample(1, 1)).unwrap();
        f.update(&sample(2, 2)).unwrap();
        // seq 2 lives in slot 1: damage it in the middle of its payload.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[SLOT + HEAD + 3] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let got = read(&p).unwrap().unwrap();
        assert_eq!(got.mark, sample(1, 1));
        assert!(got.warning.unwrap().contains("checksum"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_mark_with_no_valid_slot_is_refused_as_corrupt() {
        let d = tmp("corrupt");
        let p = d.join("journal.hwm");
        let mut f = MarkFile::create(&p, &sample(1, 1)).unwrap();
        f.update(&sample(2, 2)).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEAD + 1] ^= 0x01;
        bytes[SLOT + HEAD + 1] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, JournalError::MarkCorrupt(..)), "{e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // A truncated file too.
        std::fs::write(&p, &bytes[..100]).unwrap();
        assert!(matches!(read(&p).unwrap_err(), JournalError::MarkCorrupt(..)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_file_reads_as_none() {
        let d = tmp("none");
        assert!(read(&d.join("journal.hwm")).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
