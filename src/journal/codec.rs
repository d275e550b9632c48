//! The compact binary encoding of a journal `Record` (formats 3 and 4): varints and length-prefixed strings.
//!
//! Format 4 (tag `TAG`) writes strings more tightly than format 3 (tag `TAG_V3`), see `put_s`: an all-digit
//! string (trace, batch, a vendor's reference, a `transTime`) is its length and number, a masked card its
//! two visible ends, and a request value equal to the record's card is one byte. Both forms read.
//!
//! Layout: `TAG | id | profile key | operation key | class u8 | status u8 | trace | batch | created | updated |
//! amount | present | [optional fields in bit order] | request | result | totals`. Integers are LEB128
//! varints (signed ones zigzag), strings a varint length then UTF-8. A timestamp in the engine's own
//! form (`YYYY-MM-DDTHH:MM:SS.mmmZ`) is its Unix milliseconds (`updated` as the difference from
//! `created`), anything else the string. `request`/`result` are JSON values in a small tagged form.
//! Decoding is pure, bounded by the input (no length is believed beyond the bytes left, nesting is
//! capped) and never panics: issue 12 fuzzes `decode_record`.
use chrono::{DateTime, NaiveDateTime};
use serde_json::{Map, Number, Value};
use thiserror::Error;

use crate::model::{Class, Record, Recovery, RecoveryState, Status};

/// First byte of a format-4 record (what this build writes).
pub const TAG: u8 = 0xB4;
/// First byte of a format-3 record (strings as plain bytes). A JSON record (formats 1 and 2) starts with `{`.
pub const TAG_V3: u8 = 0xB3;
/// Longest all-digit string written as a number (`10^19 - 1` fits a u64).
const MAX_DIGITS: usize = 19;
/// Longest masked card written as its two ends (a PAN is at most 19 digits).
const MAX_MASKED: usize = 32;
/// How deep `request`/`result` values may nest.
const MAX_DEPTH: u32 = 32;
/// The engine's timestamp form.
const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("record ends early: {0} bytes wanted at byte {1}")]
    Short(usize, usize),
    #[error("not a format-3 or format-4 record (first byte {0:#04x})")]
    Tag(u8),
    #[error("bad {0} at byte {1}")]
    Bad(&'static str, usize),
    #[error("{0} bytes left over after the record")]
    Trailing(usize),
}

// ---- writing ----

/// The output and the form being written: `v4` packs strings (`put_s`), `card` is the record's card
/// (a request value equal to it is written as `V_CARD`).
struct Enc<'a> {
    out: Vec<u8>,
    v4: bool,
    card: Option<&'a str>,
}

fn put_u(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i(out: &mut Vec<u8>, v: i64) {
    put_u(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Format 3: the length then the bytes. Format 4: a varint `len << 2 | kind`, then for kind 0 the
/// bytes; kind 1 (an all-digit string of at most `MAX_DIGITS`) its number, leading zeros restored from
/// the length; kind 2 (a masked card `dddddd***…dddd`, at most `MAX_MASKED` long) its first six and last
/// four digits as two numbers.
fn put_s(e: &mut Enc, s: &str) {
    let out = &mut e.out;
    if !e.v4 {
        put_u(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let b = s.as_bytes();
    let n = b.len() as u64;
    if (1..=MAX_DIGITS).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) {
        put_u(out, n << 2 | 1);
        put_u(out, digits(b));
    } else if masked(b) {
        put_u(out, n << 2 | 2);
        put_u(out, digits(&b[..6]));
        put_u(out, digits(&b[b.len() - 4..]));
    } else {
        put_u(out, n << 2);
        out.extend_from_slice(b);
    }
}

/// The number an all-digit (at most 19 digits) slice spells.
fn digits(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |v, d| v.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
}

/// `dddddd` + at least one `*` + `dddd`, no longer than `MAX_MASKED`: a card masked 6+4.
fn masked(b: &[u8]) -> bool {
    (11..=MAX_MASKED).contains(&b.len())
        && b[..6].iter().all(u8::is_ascii_digit)
        && b[b.len() - 4..].iter().all(u8::is_ascii_digit)
        && b[6..b.len() - 4].iter().all(|&c| c == b'*')
}

/// Unix milliseconds of `s` when it is exactly in the engine's form (so it reads back identical).
fn ts_ms(s: &str) -> Option<i64> {
    let t = NaiveDateTime::parse_from_str(s, TS_FORMAT).ok()?;
    let ms = t.and_utc().timestamp_millis();
    (ms_ts(ms)?.as_str() == s).then_some(ms)
}

fn ms_ts(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.format(TS_FORMAT).to_string())
}

/// A timestamp: `0` then the string, or `1` then the zigzag milliseconds (minus `base`).
fn put_ts(e: &mut Enc, s: &str, base: i64) {
    match ts_ms(s) {
        Some(ms) => {
            e.out.push(1);
            put_i(&mut e.out, ms.wrapping_sub(base));
        }
        None => {
            e.out.push(0);
            put_s(e, s);
        }
    }
}

/// Names written as their number in this list (`put_key`): the vendors' request, result and totals
/// field names, the operations and the usual profile names a record repeats. Append only: a number, once written, names its key for ever.
const KEYS: [&str; 102] = [
    "cardNo",
    "consumeType",
    "pointAmount",
    "cashAmount",
    "registerTraceNo",
    "pointBalance",
    "pointDebitCount",
    "pointDebitAmount",
    "totalTransCount",
    "pointCreditCount",
    "pointCreditAmount",
    "cancelCount",
    "refundCount",
    "ticketDebitCount",
    "ticketDebitAmount",
    "cardActiveCount",
    "orderCount",
    "orderSum",
    "submitCount",
    "submitFaceSum",
    "debitCount",
    "payCount",
    "payAmount",
    "orderId",
    "transacId",
    "transacIdOrg",
    "amount",
    "transTime",
    "serialNo",
    "balance",
    "cardNumber",
    "amountPrize",
    "amountTicket",
    "orders",
    "order",
    "cashBalance",
    "cashAccountId",
    "amountFen",
    "transferSum",
    "transferCount",
    "totalStages",
    "traceNo",
    "batchNo",
    "orgTraceNo",
    "orgBatchNo",
    "terminalNo",
    "storeNo",
    "retCode",
    "retMsg",
    "code",
    "msg",
    "message",
    "status",
    "phone",
    "mobile",
    "count",
    "quantity",
    "productId",
    "productName",
    "price",
    "ticketNo",
    "ticketId",
    "drawNo",
    "gameId",
    "stationId",
    "outTradeNo",
    "tradeNo",
    "payType",
    "remark",
    "type",
    "id",
    "name",
    "items",
    "consume",
    "refund",
    "cancel",
    "checkin",
    "check-in",
    "settle",
    "query",
    "redeem",
    "sell",
    "cancel-order",
    "create-order",
    "delivery",
    "open-card",
    "open-online",
    "open-online-result",
    "pay",
    "pay-cancel",
    "pay-undo",
    "products",
    "result",
    "submit",
    "transfer",
    "reverse",
    "notify",
    "loyalty",
    "lottery",
    "wallet",
    "scenic",
    "consign",
];

/// A map or totals key, a profile or operation name: `2n+1` for `KEYS[n]`, else `2·len` then the bytes.
fn put_key(out: &mut Vec<u8>, k: &str) {
    match KEYS.iter().position(|&x| x == k) {
        Some(n) => put_u(out, (n as u64) << 1 | 1),
        None => {
            put_u(out, (k.len() as u64) << 1);
            out.extend_from_slice(k.as_bytes());
        }
    }
}

const V_NULL: u8 = 0;
const V_FALSE: u8 = 1;
const V_TRUE: u8 = 2;
const V_INT: u8 = 3;
const V_UINT: u8 = 4;
const V_FLOAT: u8 = 5;
const V_STR: u8 = 6;
const V_ARRAY: u8 = 7;
const V_OBJECT: u8 = 8;
/// Format 4: the string is the record's `card` (a request repeats it as `cardNo`).
const V_CARD: u8 = 9;

fn put_value(e: &mut Enc, v: &Value) {
    let out = &mut e.out;
    match v {
        Value::Null => out.push(V_NULL),
        Value::Bool(false) => out.push(V_FALSE),
        Value::Bool(true) => out.push(V_TRUE),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(V_INT);
                put_i(out, i);
            } else if let Some(u) = n.as_u64() {
                out.push(V_UINT);
                put_u(out, u);
            } else {
                out.push(V_FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
            }
        }
        Value::String(s) if e.v4 && e.card == Some(s.as_str()) => out.push(V_CARD),
        Value::String(s) => {
            out.push(V_STR);
            put_s(e, s);
        }
        Value::Array(a) => {
            out.push(V_ARRAY);
            put_u(out, a.len() as u64);
            a.iter().for_each(|x| put_value(e, x));
        }
        Value::Object(m) => {
            out.push(V_OBJECT);
            put_map(e, m);
        }
    }
}

fn put_map(e: &mut Enc, m: &Map<String, Value>) {
    put_u(&mut e.out, m.len() as u64);
    for (k, v) in m {
        put_key(&mut e.out, k);
        put_value(e, v);
    }
}

fn class_byte(c: Class) -> u8 {
    match c {
        Class::SignOn => 0,
        Class::Inquiry => 1,
        Class::Financial => 2,
        Class::Settle => 3,
        Class::Report => 4,
        Class::Job => 5,
        Class::Notification => 6,
    }
}

fn status_byte(s: Status) -> u8 {
    match s {
        Status::Pending => 0,
        Status::Approved => 1,
        Status::Declined => 2,
        Status::Unknown => 3,
        Status::Reversed => 4,
        Status::Failed => 5,
    }
}

fn recovery_byte(r: Recovery) -> u8 {
    match r {
        Recovery::Reverse => 0,
        Recovery::Resend => 1,
        Recovery::Query => 2,
        Recovery::Manual => 3,
    }
}

/// Bits of `present`, in the order the optional fields follow it.
const CARD: u32 = 1;
const SEALED: u32 = 1 << 1;
const CODE: u32 = 1 << 2;
const MESSAGE: u32 = 1 << 3;
const MESSAGE_EN: u32 = 1 << 4;
const REFERENCE: u32 = 1 << 5;
const TRANS_TIME: u32 = 1 << 6;
const ORIGINAL: u32 = 1 << 7;
const IDEM_KEY: u32 = 1 << 8;
const FINGERPRINT: u32 = 1 << 9;
const POS_REF: u32 = 1 << 10;
const RECOVERY: u32 = 1 << 11;
const ERROR: u32 = 1 << 12;
const SLOT: u32 = 1 << 13;
const UNIT: u32 = 1 << 14;
const SUPERSEDED: u32 = 1 << 15;
const ALL: u32 = (1 << 16) - 1;

/// The record in format 4 (see the module doc): what the journal writes.
pub fn encode_record(r: &Record) -> Vec<u8> {
    encode_as(r, true)
}

/// The record in format 3 (strings as plain bytes): what a version-3 journal holds (migration tests).
pub fn encode_record_v3(r: &Record) -> Vec<u8> {
    encode_as(r, false)
}

/// The strings of `list` that are present, in order (their bits are in `present`).
fn put_all(e: &mut Enc, list: &[(u32, &Option<String>)]) {
    list.iter().filter_map(|(_, v)| v.as_deref()).for_each(|s| put_s(e, s));
}

fn encode_as(r: &Record, v4: bool) -> Vec<u8> {
    let mut e = Enc { out: Vec::with_capacity(256), v4, card: r.card.as_deref() };
    e.out.push(if v4 { TAG } else { TAG_V3 });
    put_u(&mut e.out, r.id);
    put_key(&mut e.out, &r.profile);
    put_key(&mut e.out, &r.operation);
    e.out.push(class_byte(r.class));
    e.out.push(status_byte(r.status));
    put_s(&mut e, &r.trace);
    put_s(&mut e, &r.batch);
    put_ts(&mut e, &r.created_at, 0);
    put_ts(&mut e, &r.updated_at, ts_ms(&r.created_at).unwrap_or(0));
    put_i(&mut e.out, r.amount_fen);
    let strs = [
        (CARD, &r.card),
        (SEALED, &r.sealed),
        (CODE, &r.code),
        (MESSAGE, &r.message),
        (MESSAGE_EN, &r.message_en),
        (REFERENCE, &r.reference),
        (TRANS_TIME, &r.trans_time),
    ];
    let later = [(IDEM_KEY, &r.idempotency_key), (FINGERPRINT, &r.request_fingerprint), (POS_REF, &r.pos_reference)];
    let last = [(ERROR, &r.error), (SLOT, &r.slot), (UNIT, &r.unit)];
    let mut present = 0u32;
    for (bit, v) in strs.iter().chain(later.iter()).chain(last.iter()) {
        if v.is_some() {
            present |= bit;
        }
    }
    if r.original.is_some() {
        present |= ORIGINAL;
    }
    if r.recovery.is_some() {
        present |= RECOVERY;
    }
    if r.superseded_by.is_some() {
        present |= SUPERSEDED;
    }
    put_u(&mut e.out, u64::from(present));
    put_all(&mut e, &strs);
    if let Some(o) = r.original {
        put_u(&mut e.out, o);
    }
    put_all(&mut e, &later);
    if let Some(rs) = &r.recovery {
        e.out.push(recovery_byte(rs.how));
        put_u(&mut e.out, u64::from(rs.attempts));
        put_i(&mut e.out, rs.next_at_ms);
        e.out.push(u8::from(rs.parked) | (u8::from(rs.last_error.is_some()) << 1));
        if let Some(x) = &rs.last_error {
            put_s(&mut e, x);
        }
    }
    put_all(&mut e, &last);
    if let Some(s) = r.superseded_by {
        put_u(&mut e.out, s);
    }
    put_map(&mut e, &r.request);
    // Only the request repeats the card.
    e.card = None;
    put_map(&mut e, &r.result);
    put_u(&mut e.out, r.totals.len() as u64);
    for (k, d) in &r.totals {
        put_key(&mut e.out, k);
        put_i(&mut e.out, *d);
    }
    e.out
}

// ---- reading ----

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    /// Format 4 (packed strings, `V_CARD`).
    v4: bool,
    /// The record's card once read (what `V_CARD` stands for).
    card: Option<String>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(CodecError::Short(n, self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u(&mut self) -> Result<u64, CodecError> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(CodecError::Bad("varint", start));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Bad("varint", start))
    }

    fn i(&mut self) -> Result<i64, CodecError> {
        let z = self.u()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let at = self.at;
        u32::try_from(self.u()?).map_err(|_| CodecError::Bad(what, at))
    }

    /// A count of items each at least one byte long: never more than the bytes left.
    fn count(&mut self) -> Result<usize, CodecError> {
        let at = self.at;
        let n = self.u()?;
        usize::try_from(n).ok().filter(|&n| n <= self.b.len() - self.at).ok_or(CodecError::Bad("count", at))
    }

    fn s(&mut self) -> Result<String, CodecError> {
        if self.v4 {
            return self.packed();
        }
        let n = self.count()?;
        self.utf8(n)
    }

    fn utf8(&mut self, n: usize) -> Result<String, CodecError> {
        let at = self.at;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| CodecError::Bad("UTF-8", at))
    }

    /// A format-4 string (see `put_s`); a number that does not fit its length is an error, so every
    /// string has one form only.
    fn packed(&mut self) -> Result<String, CodecError> {
        let at = self.at;
        let head = self.u()?;
        let n = usize::try_from(head >> 2).map_err(|_| CodecError::Bad("string length", at))?;
        let fits = |v: u64, width: usize| u32::try_from(width).ok().and_then(|w| 10u64.checked_pow(w)).is_none_or(|max| v < max);
        match head & 3 {
            0 => {
                if n > self.b.len() - self.at {
                    return Err(CodecError::Bad("count", at));
                }
                self.utf8(n)
            }
            1 if (1..=MAX_DIGITS).contains(&n) => {
                let v = self.u()?;
                if !fits(v, n) {
                    return Err(CodecError::Bad("digits", at));
                }
                Ok(format!("{v:0n$}"))
            }
            2 if (11..=MAX_MASKED).contains(&n) => {
                let (head6, tail4) = (self.u()?, self.u()?);
                if !fits(head6, 6) || !fits(tail4, 4) {
                    return Err(CodecError::Bad("masked card", at));
                }
                Ok(format!("{head6:06}{}{tail4:04}", "*".repeat(n - 10)))
            }
            _ => Err(CodecError::Bad("string kind", at)),
        }
    }

    fn key(&mut self) -> Result<String, CodecError> {
        let at = self.at;
        let n = self.u()?;
        if n & 1 == 1 {
            return usize::try_from(n >> 1).ok().and_then(|i| KEYS.get(i)).map(|k| (*k).to_owned()).ok_or(CodecError::Bad("key number", at));
        }
        let len = usize::try_from(n >> 1).map_err(|_| CodecError::Bad("key length", at))?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| CodecError::Bad("UTF-8", at))
    }

    fn ts(&mut self, base: i64) -> Result<(String, Option<i64>), CodecError> {
        let at = self.at;
        match self.byte()? {
            0 => {
                let s = self.s()?;
                let ms = ts_ms(&s);
                Ok((s, ms))
            }
            1 => {
                let ms = base.wrapping_add(self.i()?);
                ms_ts(ms).map(|s| (s, Some(ms))).ok_or(CodecError::Bad("timestamp", at))
            }
            _ => Err(CodecError::Bad("timestamp kind", at)),
        }
    }

    fn value(&mut self, depth: u32) -> Result<Value, CodecError> {
        let at = self.at;
        if depth > MAX_DEPTH {
            return Err(CodecError::Bad("nesting", at));
        }
        Ok(match self.byte()? {
            V_NULL => Value::Null,
            V_FALSE => Value::Bool(false),
            V_TRUE => Value::Bool(true),
            V_INT => Value::Number(self.i()?.into()),
            V_UINT => Value::Number(self.u()?.into()),
            V_FLOAT => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| CodecError::Bad("float", at))?;
                Value::Number(Number::from_f64(f64::from_le_bytes(b)).ok_or(CodecError::Bad("float", at))?)
            }
            V_STR => Value::String(self.s()?),
            V_CARD if self.v4 => Value::String(self.card.clone().ok_or(CodecError::Bad("card value without a card", at))?),
            V_ARRAY => {
                let n = self.count()?;
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(self.value(depth + 1)?);
                }
                Value::Array(a)
            }
            V_OBJECT => Value::Object(self.map(depth + 1)?),
            _ => return Err(CodecError::Bad("value kind", at)),
        })
    }

    fn map(&mut self, depth: u32) -> Result<Map<String, Value>, CodecError> {
        let n = self.count()?;
        let mut m = Map::new();
        for _ in 0..n {
            let k = self.key()?;
            let v = self.value(depth)?;
            m.insert(k, v);
        }
        Ok(m)
    }
}

fn class_of(b: u8) -> Option<Class> {
    [Class::SignOn, Class::Inquiry, Class::Financial, Class::Settle, Class::Report, Class::Job, Class::Notification].get(usize::from(b)).copied()
}

fn status_of(b: u8) -> Option<Status> {
    [Status::Pending, Status::Approved, Status::Declined, Status::Unknown, Status::Reversed, Status::Failed].get(usize::from(b)).copied()
}

fn recovery_of(b: u8) -> Option<Recovery> {
    [Recovery::Reverse, Recovery::Resend, Recovery::Query, Recovery::Manual].get(usize::from(b)).copied()
}

/// A reader past the tag of a format-3 or format-4 record.
fn reader(b: &[u8]) -> Result<Reader<'_>, CodecError> {
    let mut r = Reader { b, at: 0, v4: false, card: None };
    match r.byte()? {
        TAG => r.v4 = true,
        TAG_V3 => {}
        tag => return Err(CodecError::Tag(tag)),
    }
    Ok(r)
}

/// Read a format-3 or format-4 record. Pure and bounded: any bytes give a record or an error, never a panic.
pub fn decode_record(b: &[u8]) -> Result<Record, CodecError> {
    let mut r = reader(b)?;
    let id = r.u()?;
    let profile = r.key()?;
    let operation = r.key()?;
    let at = r.at;
    let class = class_of(r.byte()?).ok_or(CodecError::Bad("class", at))?;
    let status = status_of(r.byte()?).ok_or(CodecError::Bad("status", at + 1))?;
    let trace = r.s()?;
    let batch = r.s()?;
    let (created_at, base) = r.ts(0)?;
    let (updated_at, _) = r.ts(base.unwrap_or(0))?;
    let amount_fen = r.i()?;
    let at = r.at;
    let present = r.u32("present")?;
    if present & !ALL != 0 {
        return Err(CodecError::Bad("present", at));
    }
    let card = if present & CARD != 0 { Some(r.s()?) } else { None };
    r.card.clone_from(&card);
    let mut opt = |bit: u32| -> Result<Option<String>, CodecError> {
        if present & bit != 0 {
            r.s().map(Some)
        } else {
            Ok(None)
        }
    };
    let sealed = opt(SEALED)?;
    let code = opt(CODE)?;
    let message = opt(MESSAGE)?;
    let message_en = opt(MESSAGE_EN)?;
    let reference = opt(REFERENCE)?;
    let trans_time = opt(TRANS_TIME)?;
    let original = if present & ORIGINAL != 0 { Some(r.u()?) } else { None };
    let mut opt = |bit: u32| -> Result<Option<String>, CodecError> {
        if present & bit != 0 {
            r.s().map(Some)
        } else {
            Ok(None)
        }
    };
    let idempotency_key = opt(IDEM_KEY)?;
    let request_fingerprint = opt(FINGERPRINT)?;
    let pos_reference = opt(POS_REF)?;
    let recovery = if present & RECOVERY != 0 {
        let at = r.at;
        let how = recovery_of(r.byte()?).ok_or(CodecError::Bad("recovery", at))?;
        let attempts = r.u32("attempts")?;
        let next_at_ms = r.i()?;
        let at = r.at;
        let flags = r.byte()?;
        if flags > 3 {
            return Err(CodecError::Bad("recovery flags", at));
        }
        let last_error = if flags & 2 != 0 { Some(r.s()?) } else { None };
        Some(RecoveryState { how, attempts, next_at_ms, parked: flags & 1 != 0, last_error })
    } else {
        None
    };
    let mut opt = |bit: u32| -> Result<Option<String>, CodecError> {
        if present & bit != 0 {
            r.s().map(Some)
        } else {
            Ok(None)
        }
    };
    let error = opt(ERROR)?;
    let slot = opt(SLOT)?;
    let unit = opt(UNIT)?;
    let superseded_by = if present & SUPERSEDED != 0 { Some(r.u()?) } else { None };
    let request = r.map(1)?;
    r.card = None;
    let result = r.map(1)?;
    let n = r.count()?;
    let mut totals = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.key()?;
        totals.push((k, r.i()?));
    }
    if r.at != b.len() {
        return Err(CodecError::Trailing(b.len() - r.at));
    }
    Ok(Record {
        id,
        profile,
        operation,
        class,
        status,
        trace,
        batch,
        created_at,
        updated_at,
        amount_fen,
        card,
        request,
        sealed,
        code,
        message,
        message_en,
        reference,
        trans_time,
        result,
        totals,
        original,
        idempotency_key,
        request_fingerprint,
        pos_reference,
        recovery,
        error,
        slot,
        unit,
        superseded_by,
    })
}

/// Whether a stored record (any format) holds a sealed field, reading only its head: the start-up
/// check for a missing data key walks every record with it.
pub fn has_sealed(b: &[u8]) -> Result<bool, CodecError> {
    const NEEDLE: &[u8] = b"\"sealed\":";
    if b.first() == Some(&b'{') {
        return Ok(b.windows(NEEDLE.len()).any(|w| w == NEEDLE));
    }
    let mut r = reader(b)?;
    r.u()?;
    r.key()?;
    r.key()?;
    r.take(2)?;
    r.s()?;
    r.s()?;
    for _ in 0..2 {
        if r.byte()? == 0 {
            r.s()?;
        } else {
            r.i()?;
        }
    }
    r.i()?;
    Ok(r.u32("present")? & SEALED != 0)
}

/// First byte of a batch's totals in format 4 (`encode_totals`); format 3 and before wrote JSON.
pub const TOTALS_TAG: u8 = 0xC4;

/// A batch's running totals: `TOTALS_TAG | count | (key, zigzag value)…`, keys as in records (`put_key`).
pub fn encode_totals(m: &std::collections::BTreeMap<String, i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 * m.len());
    out.push(TOTALS_TAG);
    put_u(&mut out, m.len() as u64);
    for (k, v) in m {
        put_key(&mut out, k);
        put_i(&mut out, *v);
    }
    out
}

/// A batch's totals as stored: `encode_totals`, or the JSON of formats 1 to 3.
pub fn decode_totals(b: &[u8]) -> Result<std::collections::BTreeMap<String, i64>, String> {
    if b.first() == Some(&b'{') {
        return serde_json::from_slice(b).map_err(|e| e.to_string());
    }
    let mut r = Reader { b, at: 0, v4: true, card: None };
    let tag = r.byte().map_err(|e| e.to_string())?;
    if tag != TOTALS_TAG {
        return Err(CodecError::Tag(tag).to_string());
    }
    let n = r.count().map_err(|e| e.to_string())?;
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let k = r.key().map_err(|e| e.to_string())?;
        m.insert(k, r.i().map_err(|e| e.to_string())?);
    }
    if r.at != b.len() {
        return Err(CodecError::Trailing(b.len() - r.at).to_string());
    }
    Ok(m)
}

/// First byte of a profile's state in format 4 (`encode_profile`); format 3 and before wrote JSON.
pub const PROFILE_TAG: u8 = 0xD4;

/// A profile's state: `PROFILE_TAG | flags (1 batch present, 2 batch open) | [batch] | last_trace |
/// last_batch | session | unsettled… | seq | idem_keys`. Written at every begin that takes a trace, so
/// kept small (its JSON is about 110 bytes, this about 15).
pub fn encode_profile(st: &crate::journal::ProfileState) -> Vec<u8> {
    // Every field by name: a field added to the state must be added here too.
    let crate::journal::ProfileState { batch, batch_open, last_trace, last_batch, session, unsettled, seq, idem_keys } = st;
    let mut e = Enc { out: Vec::with_capacity(24), v4: true, card: None };
    e.out.push(PROFILE_TAG);
    e.out.push(u8::from(batch.is_some()) | (u8::from(*batch_open) << 1));
    if let Some(b) = batch {
        put_s(&mut e, b);
    }
    put_u(&mut e.out, u64::from(*last_trace));
    put_u(&mut e.out, u64::from(*last_batch));
    put_value(&mut e, session);
    put_u(&mut e.out, unsettled.len() as u64);
    for u in unsettled {
        put_s(&mut e, u);
    }
    put_u(&mut e.out, *seq);
    put_u(&mut e.out, *idem_keys);
    e.out
}

/// A profile's state as stored: `encode_profile`, or the JSON of formats 1 to 3.
pub fn decode_profile(b: &[u8]) -> Result<crate::journal::ProfileState, String> {
    if b.first() == Some(&b'{') {
        return serde_json::from_slice(b).map_err(|e| e.to_string());
    }
    let read = || -> Result<crate::journal::ProfileState, CodecError> {
        let mut r = Reader { b, at: 0, v4: true, card: None };
        let tag = r.byte()?;
        if tag != PROFILE_TAG {
            return Err(CodecError::Tag(tag));
        }
        let at = r.at;
        let flags = r.byte()?;
        if flags > 3 {
            return Err(CodecError::Bad("profile flags", at));
        }
        let batch = if flags & 1 != 0 { Some(r.s()?) } else { None };
        let last_trace = r.u32("last trace")?;
        let last_batch = r.u32("last batch")?;
        let session = r.value(1)?;
        let n = r.count()?;
        let mut unsettled = Vec::with_capacity(n);
        for _ in 0..n {
            unsettled.push(r.s()?);
        }
        let (seq, idem_keys) = (r.u()?, r.u()?);
        if r.at != b.len() {
            return Err(CodecError::Trailing(b.len() - r.at));
        }
        Ok(crate::journal::ProfileState { batch, batch_open: flags & 2 != 0, last_trace, last_batch, session, unsettled, seq, idem_keys })
    };
    read().map_err(|e| e.to_string())
}

/// Whether a stored record is in this build's form (format 4): the migration rewrites the others.
pub fn is_current(b: &[u8]) -> bool {
    b.first() == Some(&TAG)
}

/// A stored record of any format: format 3 or 4, or the JSON of formats 1 and 2 (read by the migration and
/// by `journal verify` on a copy not yet migrated).
pub fn decode_any(b: &[u8]) -> Result<Record, String> {
    if b.first() == Some(&b'{') {
        serde_json::from_slice(b).map_err(|e| e.to_string())
    } else {
        decode_record(b).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
