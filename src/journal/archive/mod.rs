//! Day files: settled records moved out of the hot journal, one compressed, checksummed file per creation day.
//!
//! `DATA/archive/YYYY-MM-DD.pgz` holds the records created that day (UTC), each exactly as the journal
//! encodes it (`sled_store::encode`: masked, sealed fields still sealed), ordered by id:
//!
//! ```text
//! magic "PGZDAY1\n" | format u32 | count u32 | min_id u64 | max_id u64 | raw_len u64 | body_len u64 | sha256(body) [32]
//! body = deflate( (id u64 | len u32 | record)* )          all integers little-endian
//! ```
//!
//! A file is written to a temporary name, synced, renamed and the folder synced; a second write of
//! the same day merges by record id (the copy being written wins), so a move interrupted after the
//! file and before the journal let go of the records is simply done again. A file whose checksum or
//! contents do not hold is an error naming it, never skipped.
pub mod export;
pub mod settings;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::sled_store::{decode, encode};
use crate::model::Record;

const MAGIC: &[u8; 8] = b"PGZDAY1\n";
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 32;
/// Refuse a day file that claims more than this once inflated (a store's day is far below it).
const MAX_RAW: u64 = 1 << 30;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("archive day file {path}: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error("archive {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("archive: {0}")]
    Record(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Io { path: path.to_path_buf(), why: e.to_string() }
}

fn damaged(path: &Path, why: impl Into<String>) -> ArchiveError {
    ArchiveError::Damaged { path: path.to_path_buf(), why: why.into() }
}

/// What a day file's header says.
#[derive(Debug, Clone, Copy)]
struct Header {
    count: u32,
    min_id: u64,
    max_id: u64,
    raw_len: u64,
    body_len: u64,
    sum: [u8; 32],
}

impl Header {
    fn parse(path: &Path, b: &[u8]) -> Result<Header, ArchiveError> {
        if b.len() < HEADER_LEN || &b[..8] != MAGIC {
            return Err(damaged(path, "not a posgate day file (bad magic or short header)"));
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let format = u32_at(8);
        // Records of every older format still decode (`codec::decode_any`); a newer file is not ours to read.
        if format == 0 || format > super::FORMAT_VERSION {
            return Err(damaged(path, format!("journal format {format}, this build reads 1 to {}", super::FORMAT_VERSION)));
        }
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&b[48..80]);
        Ok(Header { count: u32_at(12), min_id: u64_at(16), max_id: u64_at(24), raw_len: u64_at(32), body_len: u64_at(40), sum })
    }
}

/// The archive folder of one data directory.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
}

/// `YYYY-MM-DD` of a record's creation (the day file it belongs to).
pub fn day_of(rec: &Record) -> Option<&str> {
    let d = rec.created_at.get(..10)?;
    valid_day(d).then_some(d)
}

/// True for a real calendar date written `YYYY-MM-DD`.
pub fn valid_day(d: &str) -> bool {
    d.len() == 10 && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()
}

impl Archive {
    /// The archive of `data_dir` (`data_dir/archive`); nothing is created until a record moves.
    pub fn of(data_dir: &Path) -> Archive {
        Archive { dir: data_dir.join("archive") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, day: &str) -> PathBuf {
        self.dir.join(format!("{day}.pgz"))
    }

    /// The days that have a file, oldest first.
    pub fn days(&self) -> Result<Vec<String>, ArchiveError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir, e)),
        };
        let mut out: Vec<String> =
            rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".pgz")).filter(|d| valid_day(d)).map(str::to_string)).collect();
        out.sort();
        Ok(out)
    }

    /// The records of `day` (empty when it has no file), ordered by id.
    pub fn read_day(&self, day: &str) -> Result<Vec<Record>, ArchiveError> {
        let path = self.path(day);
        match std::fs::read(&path) {
            Ok(b) => read_file(&path, &b, None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// The archived record `id`, looking only into files whose id range holds it.
    pub fn find(&self, id: u64) -> Result<Option<Record>, ArchiveError> {
        for day in self.days()? {
            let path = self.path(&day);
            let mut head = [0u8; HEADER_LEN];
            let mut f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            f.read_exact(&mut head).map_err(|_| damaged(&path, "short header"))?;
            let h = Header::parse(&path, &head)?;
            if (h.min_id..=h.max_id).contains(&id) {
                let b = std::fs::read(&path).map_err(|e| io(&path, e))?;
                if let Some(r) = read_file(&path, &b, Some(id))?.pop() {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// The records of every day from `from` to `to` (inclusive) with an id above `after`, ordered by id.
    pub fn range_after(&self, from: &str, to: &str, after: u64) -> Result<Vec<Record>, ArchiveError> {
        let mut out = Vec::new();
        for day in self.days()?.into_iter().filter(|d| d.as_str() >= from && d.as_str() <= to) {
            out.extend(self.read_day(&day)?.into_iter().filter(|r| r.id > after));
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Read every day file in full (checksums and records), for `journal verify`: the records per
    /// file, or the error naming the damaged file.
    pub fn check_all(&self) -> Vec<(String, Result<Vec<Record>, ArchiveError>)> {
        match self.days() {
            Ok(days) => days.into_iter().map(|d| (d.clone(), self.read_day(&d))).collect(),
            Err(e) => vec![(String::new(), Err(e))],
        }
    }

    /// Add `records` (all created on `day`) to that day's file, merged by id with what it holds,
    /// durably: temp file, fsync, rename, fsync of the folder.
    pub fn write_day(&self, day: &str, records: &[Record]) -> Result<usize, ArchiveError> {
        if !valid_day(day) {
            return Err(ArchiveError::Record(format!("day {day:?} is not YYYY-MM-DD")));
        }
        crate::fsmode::private_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        let mut all: BTreeMap<u64, Record> = self.read_day(day)?.into_iter().map(|r| (r.id, r)).collect();
        for r in records {
            all.insert(r.id, r.clone());
        }
        let mut raw = Vec::new();
        for (id, r) in &all {
            let bytes = encode(r).map_err(|e| ArchiveError::Record(e.to_string()))?;
            raw.extend_from_slice(&id.to_le_bytes());
            let len = u32::try_from(bytes.len()).map_err(|_| ArchiveError::Record(format!("record {id} is {} bytes", bytes.len())))?;
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&bytes);
        }
        let path = self.path(day);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).map_err(|e| io(&path, e))?;
        let body = z.finish().map_err(|e| io(&path, e))?;
        let count = u32::try_from(all.len()).map_err(|_| ArchiveError::Record("too many records for one day".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&super::FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&all.keys().next().copied().unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&all.keys().next_back().copied().unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        let tmp = self.dir.join(format!("{day}.pgz.tmp"));
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
            f.write_all(&out).map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        crate::platform::sync_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        Ok(all.len())
    }
}

/// Check and decode one day file's bytes; with `only`, keep just that record.
fn read_file(path: &Path, b: &[u8], only: Option<u64>) -> Result<Vec<Record>, ArchiveError> {
    let h = Header::parse(path, b)?;
    let body = &b[HEADER_LEN..];
    if body.len() as u64 != h.body_len {
        return Err(damaged(path, format!("body is {} bytes, the header says {} (cut or extended)", body.len(), h.body_len)));
    }
    if Sha256::digest(body).as_slice() != h.sum {
        return Err(damaged(path, "checksum mismatch: the file is damaged"));
    }
    if h.raw_len > MAX_RAW {
        return Err(damaged(path, format!("claims {} bytes of records", h.raw_len)));
    }
    let mut raw = Vec::with_capacity(usize::try_from(h.raw_len).unwrap_or(0));
    flate2::read::DeflateDecoder::new(body).take(h.raw_len + 1).read_to_end(&mut raw).map_err(|e| damaged(path, format!("does not inflate: {e}")))?;
    if raw.len() as u64 != h.raw_len {
        return Err(damaged(path, format!("inflates to {} bytes, the header says {}", raw.len(), h.raw_len)));
    }
    let mut out = Vec::new();
    let (mut at, mut n) = (0usize, 0u32);
    while at < raw.len() {
        let head = raw.get(at..at + 12).ok_or_else(|| damaged(path, format!("record header cut at byte {at}")))?;
        let mut idb = [0u8; 8];
        idb.copy_from_slice(&head[..8]);
        let id = u64::from_le_bytes(idb);
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        let bytes = raw.get(at + 12..at + 12 + len).ok_or_else(|| damaged(path, format!("record {id} cut")))?;
        at += 12 + len;
        n += 1;
        if only.is_some_and(|o| o != id) {
            continue;
        }
        let rec = decode(&id.to_be_bytes(), bytes).map_err(|e| damaged(path, format!("record {id}: {e}")))?;
        if rec.id != id {
            return Err(damaged(path, format!("record stored as {id} says it is {}", rec.id)));
        }
        out.push(rec);
    }
    if n != h.count {
        return Err(damaged(path, format!("holds {n} records, the header says {}", h.count)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Class, Status};

    fn rec(id: u64, day: &str) -> Record {
        let mut r = Record::new("p", "consume", Class::Financial, "000001", &format!("{day}T10:00:00.000Z"));
        r.id = id;
        r.status = Status::Approved;
        r.amount_fen = 100 * id as i64;
        r.card = Some("622848******1234".into());
        r.sealed = Some("sealed-bytes".into());
        r
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-archive-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_day_file_reads_back_merged_by_id_and_finds_one_record() {
        let d = scratch("roundtrip");
        let a = Archive::of(&d);
        assert_eq!(a.write_day("2025-01-02", &[rec(3, "2025-01-02"), rec(1, "2025-01-02")]).unwrap(), 2);
        let mut again = rec(3, "2025-01-02");
        again.message = Some("newer copy".into());
        // A move done twice (a crash between the file and the journal) holds each record once.
        assert_eq!(a.write_day("2025-01-02", &[again, rec(2, "2025-01-02")]).unwrap(), 3);
        let got = a.read_day("2025-01-02").unwrap();
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(got[2].message.as_deref(), Some("newer copy"));
        assert_eq!(got[0].sealed.as_deref(), Some("sealed-bytes"), "sealed fields stay sealed, as journaled");
        assert_eq!(a.find(2).unwrap().map(|r| r.amount_fen), Some(200));
        assert!(a.find(9).unwrap().is_none());
        assert!(a.read_day("2025-01-03").unwrap().is_empty());
        assert_eq!(a.days().unwrap(), vec!["2025-01-02".to_string()]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_day_file_is_named_not_skipped() {
        let d = scratch("damaged");
        let a = Archive::of(&d);
        a.write_day("2025-01-02", &[rec(1, "2025-01-02")]).unwrap();
        let p = d.join("archive/2025-01-02.pgz");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x55;
        std::fs::write(&p, &b).unwrap();
        let e = a.read_day("2025-01-02").unwrap_err().to_string();
        assert!(e.contains("2025-01-02.pgz") && e.contains("checksum"), "{e}");
        assert!(a.find(1).unwrap_err().to_string().contains("2025-01-02.pgz"));
        assert!(a.range_after("2025-01-01", "2025-01-31", 0).is_err(), "an export never skips a damaged day");
        // Nor is it overwritten by the next move of that day.
        assert!(a.write_day("2025-01-02", &[rec(2, "2025-01-02")]).is_err());
        std::fs::write(&p, &b[..b.len() - 3]).unwrap();
        assert!(a.read_day("2025-01-02").unwrap_err().to_string().contains("cut or extended"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
