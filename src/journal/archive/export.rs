//! `posgate journal export`: one record view as a CSV row or a JSON line for the shop's accounts.
//!
//! The same columns in both formats, from the record's view (no sealed field, no fingerprint): money
//! is `amount_fen`, an integer number of fen; the card is as journaled (masked 6+4).
use serde_json::{Map, Value};

/// The exported fields, in column order.
pub const COLUMNS: [&str; 17] = [
    "id",
    "created_at",
    "updated_at",
    "profile",
    "operation",
    "class",
    "status",
    "state",
    "trace",
    "batch",
    "amount_fen",
    "card",
    "reference",
    "pos_reference",
    "code",
    "message",
    "original",
];

/// Output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            other => Err(format!("unknown format {other:?} (csv or jsonl)")),
        }
    }
}

/// The header row (CSV), or nothing (JSON lines), with its line end.
pub fn header(f: Format) -> String {
    match f {
        Format::Csv => format!("{}\r\n", COLUMNS.join(",")),
        Format::Jsonl => String::new(),
    }
}

/// One record view as one line (with its line end).
pub fn line(f: Format, view: &Value) -> String {
    match f {
        Format::Csv => {
            let cells: Vec<String> = COLUMNS.iter().map(|c| csv_cell(view.get(*c).unwrap_or(&Value::Null))).collect();
            format!("{}\r\n", cells.join(","))
        }
        Format::Jsonl => {
            let mut m = Map::new();
            for c in COLUMNS {
                m.insert(c.to_string(), view.get(c).cloned().unwrap_or(Value::Null));
            }
            format!("{}\n", Value::Object(m))
        }
    }
}

/// RFC 4180: a cell holding a comma, a quote, a line break or edge spaces is quoted, quotes doubled.
/// Text that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a carriage
/// return; OWASP's CSV-injection list) gets a leading `'`: vendor messages and references come from outside,
/// and the shop opens this file in a spreadsheet. Numbers (fen, ids) are JSON numbers and stay as they are.
fn csv_cell(v: &Value) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_what_needs_quoting_and_keeps_fen_integers() {
        let v = json!({"id": 7, "amount_fen": 12345, "message": "余额不足, \"retry\"\nlater", "profile": "store-1", "card": null});
        let row = line(Format::Csv, &v);
        let cells: Vec<&str> = row.trim_end().splitn(17, ',').collect();
        assert_eq!(cells[0], "7");
        assert_eq!(cells[3], "store-1");
        assert!(row.contains(",12345,"), "{row}");
        assert!(row.contains("\"余额不足, \"\"retry\"\"\nlater\""), "{row}");
        assert!(header(Format::Csv).starts_with("id,created_at,"));
        let j: Value = serde_json::from_str(line(Format::Jsonl, &v).trim_end()).unwrap();
        assert_eq!(j["amount_fen"], json!(12345));
        assert_eq!(j["card"], Value::Null);
        assert_eq!(j.as_object().unwrap().len(), COLUMNS.len());
    }

    #[test]
    fn csv_export_neutralises_formula_text_from_vendors_but_keeps_negative_fen() {
        let v =
            json!({"id": 8, "amount_fen": -500, "message": "=HYPERLINK(\"http://x\",\"ok\")", "reference": "@SUM(A1)", "code": "+1", "pos_reference": "-2"});
        let row = line(Format::Csv, &v);
        assert!(row.contains(",-500,"), "{row}");
        assert!(row.contains("\"'=HYPERLINK(\"\"http://x\"\",\"\"ok\"\")\""), "{row}");
        assert!(row.contains(",'@SUM(A1),"), "{row}");
        assert!(row.contains(",'+1,"), "{row}");
        assert!(row.contains(",'-2,"), "{row}");
        let j: Value = serde_json::from_str(line(Format::Jsonl, &v).trim_end()).unwrap();
        assert_eq!(j["reference"], json!("@SUM(A1)"), "JSON lines carry the text as it is");
    }
}
