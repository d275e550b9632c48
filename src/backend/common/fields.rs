//! Request field tables: who supplies each field, how it is typed, where it may live, and the body-key checks.
//!
//! Every vendor describes its operations as tables of [`Field`]s (the documents' 请求参数 tables). The
//! table decides what a POS body may name, what the daemon fills in, and which values may be journaled
//! (`Prepared::public`), sealed (`vault`) or only sent once (`transient`): [`Kind::keep`].
use serde_json::{Map, Value};

use crate::backend::PrepareError;

/// Who supplies a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The POS request body.
    Pos,
    /// The daemon: identity, trace/batch, references from the journal, ids it makes (`transacId`).
    Daemon,
}

/// How a field is typed, and so where its value may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain text, journal-safe.
    Text,
    /// A card number: masked 6+4 in the journal, clear only in the sealed vault.
    Card,
    /// Money: integer fen from the POS, the vendor's decimal text on the wire.
    Money,
    /// A list of objects (loyalty `vaucher`, `ticket`): JSON text in its field, nested `amount` is money.
    List,
    /// Card track data: first send only, never stored.
    Track,
    /// A clear PIN, sent as an encrypted PIN block: first send only.
    Pin,
    /// A settlement total: count or amount, filled from the engine's totals.
    Total,
    /// A ticket's security bar code: whoever holds it can redeem the prize, so masked in the journal and
    /// clear only in the vault (a resend needs it again).
    BarCode,
    /// A password: first send only, never journaled.
    Password,
    /// A date, `YYYY/MM/DD`.
    Date,
}

/// Where a value of a [`Kind`] may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// In the journal as it is.
    Public,
    /// Masked in the journal, clear only sealed in the vault.
    Sealed,
    /// Only for the first send: never written anywhere.
    Transient,
}

impl Kind {
    /// Where values of this kind may be kept.
    pub const fn keep(self) -> Keep {
        match self {
            Kind::Text | Kind::Money | Kind::List | Kind::Total | Kind::Date => Keep::Public,
            Kind::Card | Kind::BarCode => Keep::Sealed,
            Kind::Track | Kind::Pin | Kind::Password => Keep::Transient,
        }
    }
}

/// One row of a request table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// The document's "required" column.
    pub required: bool,
    pub owner: Owner,
    pub kind: Kind,
    /// Sent when the POS leaves the field out (a document's "全部填写: 00000" and the like); a vendor may
    /// give a `$name` meaning of its own (lottery `"$clerk"`: the station's clerk id).
    pub default: Option<&'static str>,
}

impl Field {
    /// A field the POS supplies.
    pub const fn pos(name: &'static str, required: bool, kind: Kind) -> Field {
        Field { name, required, owner: Owner::Pos, kind, default: None }
    }
    /// A text field the POS may leave out, then sent as `default`.
    pub const fn pos_or(name: &'static str, default: &'static str) -> Field {
        Field { name, required: true, owner: Owner::Pos, kind: Kind::Text, default: Some(default) }
    }
    /// A text field the daemon fills in.
    pub const fn daemon(name: &'static str, required: bool) -> Field {
        Field { name, required, owner: Owner::Daemon, kind: Kind::Text, default: None }
    }
    /// A settlement total the daemon fills in from the engine's totals.
    pub const fn total(name: &'static str) -> Field {
        Field { name, required: true, owner: Owner::Daemon, kind: Kind::Total, default: None }
    }
}

/// Body keys that belong to the engine's envelope rather than the vendor request; ignored if present.
pub const ENVELOPE_KEYS: &[&str] = &["original", "scan", "scanId", "scan_id"];

/// Check the keys of a POS body against an operation's table: a key the daemon owns (`daemon_owned`, the
/// vendor's list of envelope, signature and identity fields) is refused as such; the engine's envelope keys
/// ([`ENVELOPE_KEYS`]) and those `extra` admits pass; any other key must be a POS field of the table. No
/// key a vendor does not define reaches it, and none the daemon sets can be smuggled in.
pub fn check_body_keys(
    operation: &str,
    body: &Map<String, Value>,
    fields: &[Field],
    daemon_owned: &[&str],
    extra: &dyn Fn(&str) -> bool,
) -> Result<(), PrepareError> {
    for k in body.keys() {
        if daemon_owned.contains(&k.as_str()) {
            return Err(PrepareError::DaemonOwned(k.clone()));
        }
        if ENVELOPE_KEYS.contains(&k.as_str()) || extra(k) {
            continue;
        }
        if !fields.iter().any(|f| f.owner == Owner::Pos && f.name == k) {
            return Err(PrepareError::invalid(k, format!("is not a field of `{operation}`")));
        }
    }
    Ok(())
}

/// Check one vendor's request tables (`(operation, fields)`): no field twice in an operation, every name
/// in `daemon_owned` owned by the daemon wherever it appears, defaults only on POS fields. For the
/// vendors' table tests: a table that breaks these would let a POS set what the daemon must.
pub fn check_tables<'a>(tables: impl IntoIterator<Item = (&'a str, &'a [Field])>, daemon_owned: &[&str]) -> Result<(), String> {
    for (op, fields) in tables {
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("{op}.{}: listed twice", f.name));
            }
            if daemon_owned.contains(&f.name) && f.owner != Owner::Daemon {
                return Err(format!("{op}.{}: the daemon owns this field, the table lets the POS send it", f.name));
            }
            if f.default.is_some() && f.owner != Owner::Pos {
                return Err(format!("{op}.{}: a default on a daemon field", f.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TABLE: &[Field] = &[Field::daemon("traceNo", true), Field::pos("cardNo", true, Kind::Card), Field::pos("amount", true, Kind::Money)];

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn body_keys_are_the_tables_pos_fields_envelope_and_extras_only() {
        let none = |_: &str| false;
        assert!(check_body_keys("pay", &body(json!({"cardNo": "1", "amount": 1, "original": 3, "scan": "s"})), TABLE, &["traceNo"], &none).is_ok());
        assert_eq!(check_body_keys("pay", &body(json!({"traceNo": "000001"})), TABLE, &["traceNo"], &none), Err(PrepareError::DaemonOwned("traceNo".into())));
        let e = check_body_keys("pay", &body(json!({"colour": 1})), TABLE, &["traceNo"], &none).expect_err("unknown key");
        assert_eq!(e.to_string(), "field `colour`: is not a field of `pay`");
        assert!(check_body_keys("pay", &body(json!({"ref": "x"})), TABLE, &[], &|k| k == "ref").is_ok());
    }

    #[test]
    fn tables_are_checked_for_twice_listed_and_daemon_owned_fields() {
        assert!(check_tables([("pay", TABLE)], &["traceNo"]).is_ok());
        let bad: &[Field] = &[Field::pos("traceNo", true, Kind::Text)];
        assert!(check_tables([("pay", bad)], &["traceNo"]).is_err_and(|e| e.contains("daemon owns")));
        let twice: &[Field] = &[Field::pos("a", true, Kind::Text), Field::pos("a", false, Kind::Text)];
        assert!(check_tables([("pay", twice)], &[]).is_err_and(|e| e.contains("twice")));
    }

    #[test]
    fn secrets_never_keep_public() {
        assert_eq!(Kind::Card.keep(), Keep::Sealed);
        assert_eq!(Kind::BarCode.keep(), Keep::Sealed);
        for k in [Kind::Pin, Kind::Track, Kind::Password] {
            assert_eq!(k.keep(), Keep::Transient);
        }
    }
}
