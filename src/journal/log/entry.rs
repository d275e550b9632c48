//! One log entry: a change's sequence number and the exact sled writes it made (a physical redo record).
//!
//! Payload: `change_seq u64 | ops`, each op `tree u8 | kind u8 (0 remove, 1 insert) | key_len u16 | key |
//! [value_len u32 | value]`, all little-endian. Replaying an entry sets every key it names to what the
//! change set it to, so replaying it twice is harmless.
use super::LogError;

/// The sled trees a change writes, by their number in an op.
pub const TREES: [&str; 10] = ["records", "pending", "recovery", "batchidx", "profidx", "totals", "profiles", "idem", "refidx", "meta"];
pub const RECORDS: u8 = 0;
pub const PENDING: u8 = 1;
pub const RECOVERY: u8 = 2;
pub const BATCHIDX: u8 = 3;
pub const PROFIDX: u8 = 4;
pub const TOTALS: u8 = 5;
pub const PROFILES: u8 = 6;
pub const IDEM: u8 = 7;
pub const REFIDX: u8 = 8;

/// One write of a change: set `key` of `tree` to `value`, or remove it when `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub tree: u8,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Op {
    pub fn put(tree: u8, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op { tree, key: key.into(), value: Some(value.into()) }
    }
    pub fn del(tree: u8, key: impl Into<Vec<u8>>) -> Op {
        Op { tree, key: key.into(), value: None }
    }
}

/// A decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub ops: Vec<Op>,
}

impl Entry {
    pub fn encode(&self) -> Result<Vec<u8>, LogError> {
        let size = 8 + self.ops.iter().map(|o| 4 + o.key.len() + o.value.as_ref().map_or(0, |v| 4 + v.len())).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.seq.to_le_bytes());
        for op in &self.ops {
            if usize::from(op.tree) >= TREES.len() {
                return Err(LogError::TooBig(format!("tree number {}", op.tree)));
            }
            let klen = u16::try_from(op.key.len()).map_err(|_| LogError::TooBig(format!("key of {} bytes", op.key.len())))?;
            out.push(op.tree);
            out.push(u8::from(op.value.is_some()));
            out.extend_from_slice(&klen.to_le_bytes());
            out.extend_from_slice(&op.key);
            if let Some(v) = &op.value {
                let vlen = u32::try_from(v.len()).map_err(|_| LogError::TooBig(format!("value of {} bytes", v.len())))?;
                out.extend_from_slice(&vlen.to_le_bytes());
                out.extend_from_slice(v);
            }
        }
        Ok(out)
    }

    pub fn decode(b: &[u8]) -> Result<Entry, String> {
        let mut r = Reader { b, at: 0 };
        let seq = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| "seq")?);
        let mut ops = Vec::new();
        while r.at < b.len() {
            let head = r.take(4)?;
            let (tree, kind) = (head[0], head[1]);
            if usize::from(tree) >= TREES.len() || kind > 1 {
                return Err(format!("op at byte {}: tree {tree}, kind {kind}", r.at - 4));
            }
            let klen = usize::from(u16::from_le_bytes([head[2], head[3]]));
            let key = r.take(klen)?.to_vec();
            let value = if kind == 1 {
                let vlen = u32::from_le_bytes(r.take(4)?.try_into().map_err(|_| "value length")?) as usize;
                Some(r.take(vlen)?.to_vec())
            } else {
                None
            };
            ops.push(Op { tree, key, value });
        }
        Ok(Entry { seq, ops })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| format!("{n} bytes wanted at byte {} of {}", self.at, self.b.len()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_written() {
        let e =
            Entry { seq: 42, ops: vec![Op::put(RECORDS, vec![0, 1], b"{}".to_vec()), Op::del(PENDING, vec![9; 8]), Op::put(IDEM, b"p\0k".to_vec(), vec![])] };
        let b = e.encode().unwrap();
        assert_eq!(Entry::decode(&b).unwrap(), e);
        assert!(Entry::decode(&b[..b.len() - 1]).is_err(), "a cut entry does not decode");
    }
}
