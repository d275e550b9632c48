//! Lottery answers made into replies: which answers the document gives, what they mean, what is journaled.
use super::*;

/// Answer fields that are yuan (whole yuan, `balance` a decimal) and become integer fen in [`Reply::fields`].
pub const MONEY_FIELDS: &[&str] = &["price", "prize", "balance", "amountPrize", "AmountPrize", "amount"];

/// Redeem answers after which nothing can be said about whether the ticket was paid: the outcome is
/// unknown and the same `transacId` is sent again (server errors, "try later", database failures).
pub const AMBIGUOUS: &[&str] = &["1", "32", "1001", "1002", "1005", "1023", "1024", "1025", "1026", "1043", "1044"];

/// Answers to a resend that say only that this `transacId` reached the host before (15 流水号已经存在,
/// 10030 交易流水号重复): the outcome is learnt by query.
pub const SEEN_BEFORE: &[&str] = &["15", "10030"];

/// Ticket-level answers: a resend that gets one of these has learnt the ticket's fate.
pub fn ticket_level(ret: &str) -> bool {
    let n: u32 = ret.trim().parse().unwrap_or(0);
    matches!(n, 1027..=1029 | 1039..=1042 | 1301..=1316 | 8001..=8007 | 10000 | 10023..=10028)
}

/// `transacId` = merchant + YYYYMMDDHHMMSS (record creation time in `tz`) + 6-digit trace.
pub fn transac_id(merchant: &str, created_at: &str, trace: &str, tz: FixedOffset) -> Result<String, String> {
    let t = chrono::DateTime::parse_from_rfc3339(created_at).map_err(|e| format!("created_at {created_at:?}: {e}"))?;
    if trace.len() != 6 || !trace.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("trace {trace:?} is not 6 digits"));
    }
    Ok(format!("{merchant}{}{trace}", t.with_timezone(&tz).format("%Y%m%d%H%M%S")))
}

/// Answer content converted for the journal: only the fields the answer table of the interface at
/// `path` defines ([`wire::answer_fields`]), text bounded ([`wire::FIELD_MAX_CHARS`], a report
/// [`wire::REPORT_MAX_CHARS`]), whole-yuan and decimal-yuan amounts to fen, tokens dropped.
pub fn content_fields(content: &Value, path: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Value::Object(m) = content else {
        match content {
            Value::Null => {}
            Value::String(s) => {
                out.insert("content".into(), Value::String(wire::bound(s, wire::FIELD_MAX_CHARS)));
            }
            other => {
                out.insert("content".into(), Value::String(wire::bound(&other.to_string(), wire::FIELD_MAX_CHARS)));
            }
        }
        return out;
    };
    let known = wire::answer_fields(path);
    for (k, v) in m {
        if k == "token" || k == "access_token" || !known.contains(&k.as_str()) {
            continue;
        }
        let max = if k == "report" { wire::REPORT_MAX_CHARS } else { wire::FIELD_MAX_CHARS };
        let v = if MONEY_FIELDS.contains(&k.as_str()) {
            match money::json_yuan_to_fen(v) {
                Ok(f) => Value::from(f),
                Err(_) => Value::Null,
            }
        } else {
            match v {
                Value::String(s) => Value::String(wire::bound(s, max)),
                Value::Number(_) | Value::Bool(_) | Value::Null => v.clone(),
                other => Value::String(wire::bound(&other.to_string(), max)),
            }
        };
        out.insert(k.clone(), v);
    }
    out
}

/// The reply for a non-redeem answer from the interface at `path`: `success=true` is approved.
pub(crate) fn plain_reply(a: &Answer, path: &str, station: &str) -> Reply {
    let (zh, en, _) = codes::lookup(&a.ret);
    let mut fields = content_fields(&a.content, path);
    if let Some(Value::String(html)) = fields.get("report") {
        let text = wire::bound(&wire::html_to_text(html), wire::REPORT_MAX_CHARS);
        fields.insert("report_text".into(), Value::String(text));
    }
    fields.insert("station".into(), Value::String(station.to_string()));
    Reply {
        verdict: if a.success { Verdict::Approved } else { Verdict::Declined },
        code: a.ret.clone(),
        message: if a.msg.is_empty() { zh.to_string() } else { a.msg.clone() },
        message_en: en.to_string(),
        fields,
        reference: None,
        trans_time: None,
        amount_fen: None,
    }
}

/// The reply for a thirdAward answer sent on `station`. `Err(Unknown)` for every answer that is not one
/// the document gives to a redeem: an ambiguous code, a code no decline table names
/// ([`codes::REDEEM_DECLINES`]), a `success` that contradicts the code, a required `content` field missing
/// or of the wrong type ([`wire::redeem_required`]), or a `transacId` that is not ours (another request's
/// answer). The resend or query settles those.
///
/// 1307 is our own earlier payment only when `transacIdOrg` equals ours AND `awardStation` is one of the
/// profile's stations (`ours`); the reply then names `awardStation` as its `station`: the journal says
/// where the host paid it, not where the resend went. Any other 1307 is "already redeemed".
pub fn redeem_reply(a: &Answer, transac: &str, station: &str, ours: &dyn Fn(&str) -> bool) -> Result<Reply, BackendError> {
    let ret = a.ret.as_str();
    let unknown = |why: String| Err(err(Stage::Unknown, format!("redeem {transac}: {why}: the outcome is unknown")));
    if !codes::defined(ret) {
        return unknown(format!("ret {} is not a code the document defines", scrub(ret)));
    }
    if AMBIGUOUS.contains(&ret) {
        return unknown(format!("ret {ret} ({}) says nothing about the ticket", scrub(&a.msg)));
    }
    let expected = if codes::redeem_success(ret) || ret == "1307" {
        true
    } else if codes::redeem_declined(ret) {
        false
    } else {
        return unknown(format!("ret {ret} is not an answer the document gives to a redeem"));
    };
    if a.success != expected {
        return unknown(format!("success={} contradicts ret {ret}", a.success));
    }
    let required = wire::redeem_required(ret);
    let content = a.content.as_object();
    if content.is_none() && (!required.is_empty() || !a.content.is_null()) {
        return unknown(format!("ret {ret} came with content that is {}, not an object", wire::json_kind(&a.content)));
    }
    let empty = Map::new();
    let content = content.unwrap_or(&empty);
    for (name, ty) in required {
        match content.get(*name) {
            None | Some(Value::Null) => return unknown(format!("ret {ret} without `{name}`, which the document requires")),
            Some(v) if !ty.admits(v) => return unknown(format!("ret {ret} with `{name}` {}, not the document's {ty:?}", wire::json_kind(v))),
            Some(_) => {}
        }
    }
    // The echo: an answer naming another transacId answers another request.
    if let Some(theirs) = content.get("transacId") {
        if theirs.as_str() != Some(transac) {
            tracing::warn!(station, field = "transacId", "lottery host fault: a redeem answer names another request");
            let shown = theirs.as_str().map(scrub).unwrap_or_else(|| wire::json_kind(theirs).to_string());
            return unknown(format!("the answer names transacId {shown}: another request's answer"));
        }
    }
    let mut r = plain_reply(a, wire::REDEEM_PATH, station);
    r.fields.insert("transacId".into(), Value::String(transac.to_string()));
    r.reference = r.fields.get("ticketNo").and_then(Value::as_str).map(str::to_string);
    r.trans_time = r.fields.get("awardTime").and_then(Value::as_str).map(str::to_string);
    if ret == "1307" {
        let org = r.fields.get("transacIdOrg").and_then(wire::text_of).unwrap_or_default();
        let st = r.fields.get("awardStation").and_then(wire::text_of).unwrap_or_default();
        if org == transac && ours(&st) {
            r.verdict = Verdict::Approved;
            r.message_en = format!("redeemed by this very request earlier at station {st} (answer had been lost): paid once");
            r.fields.insert("recovered".into(), Value::Bool(true));
            r.fields.insert("sent_on".into(), Value::String(station.to_string()));
            r.fields.insert("station".into(), Value::String(st));
        } else {
            r.verdict = Verdict::Declined;
            let at = r.fields.get("awardTime").and_then(wire::text_of).unwrap_or_default();
            r.message_en = if org == transac {
                format!("the host names our transacId but station {st}, which is not one of this profile's: treated as redeemed elsewhere at {at}")
            } else {
                format!("already redeemed at station {st} at {at} (transacId {org})")
            };
        }
    } else {
        r.verdict = if codes::redeem_success(ret) { Verdict::Approved } else { Verdict::Declined };
    }
    if r.verdict == Verdict::Approved {
        // The prize is known only now; the journal record's amount is what was paid.
        r.amount_fen = r.fields.get("prize").and_then(Value::as_i64);
    }
    Ok(r)
}
