//! Tests of the compact record encoding: round trips (fixed and proptest), size, and garbage.
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

/// Records have no `PartialEq`: compare their JSON.
fn same(a: &Record, b: &Record) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn consume() -> Record {
    let mut r = Record::new("loyalty", "consume", Class::Financial, "900001", "2026-01-01T00:00:00.000Z");
    r.id = 123_456;
    r.trace = "000042".into();
    r.amount_fen = 1;
    r.card = Some("622202*********0008".into());
    r.request = json!({"cardNo": "622202*********0008", "consumeType": "01", "pointAmount": 1, "cashAmount": 0, "registerTraceNo": "B000000001"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    r.totals = vec![("pointDebitCount".into(), 1), ("pointDebitAmount".into(), 1), ("totalTransCount".into(), 1)];
    r.status = Status::Approved;
    r.reference = Some("500000000001".into());
    r.trans_time = Some("20260101120000".into());
    r.code = Some("00".into());
    r.result = json!({"pointBalance": 999_999}).as_object().cloned().unwrap_or_default();
    r.updated_at = "2026-01-01T00:00:00.120Z".into();
    r
}

#[test]
fn a_consume_reads_back_as_written_and_is_small() {
    let r = consume();
    let b = encode_record(&r);
    let back = decode_record(&b).unwrap();
    assert!(same(&r, &back), "{back:?}");
    let json = serde_json::to_vec(&r).unwrap();
    assert!(b.len() * 3 < json.len() + 200, "binary {} bytes, JSON {}", b.len(), json.len());
    assert!(b.len() <= 260, "a consume's record is {} bytes", b.len());
}

#[test]
fn every_optional_field_and_odd_timestamps_read_back() {
    let mut r = consume();
    r.sealed = Some("sealed".into());
    r.message = Some("交易成功".into());
    r.message_en = Some("ok".into());
    r.original = Some(u64::MAX);
    r.idempotency_key = Some("k".into());
    r.request_fingerprint = Some("fp".into());
    r.pos_reference = Some("pos".into());
    r.recovery = Some(RecoveryState { how: Recovery::Query, attempts: 7, next_at_ms: -5, parked: true, last_error: Some("timeout".into()) });
    r.error = Some("e".into());
    r.slot = Some("s".into());
    r.unit = Some("u".into());
    r.superseded_by = Some(9);
    r.amount_fen = i64::MIN;
    r.result = json!({"f": 1.5, "neg": -3, "big": u64::MAX, "n": null, "t": true, "a": [1, [2, {"x": "y"}]], "o": {}}).as_object().cloned().unwrap_or_default();
    for (c, u) in [("2026-01-01T00:00:00.000Z", "2025-12-31T23:59:59.999Z"), ("not a time", "2026-01-01T00:00:00Z"), ("", "2026-01-01T00:00:00.000+08:00")] {
        r.created_at = c.into();
        r.updated_at = u.into();
        let back = decode_record(&encode_record(&r)).unwrap();
        assert!(same(&r, &back), "{back:?}");
    }
}

/// Format 4 packs the strings a consume repeats (digits, the masked card, `cardNo` = the card); format 3
/// still reads. Fails before format 4: there was one form only.
#[test]
fn format_4_packs_a_consumes_strings_and_format_3_still_reads() {
    let r = consume();
    let (v3, v4) = (encode_record_v3(&r), encode_record(&r));
    assert_eq!((v3[0], v4[0]), (TAG_V3, TAG));
    assert!(same(&decode_record(&v3).unwrap(), &r));
    assert!(same(&decode_record(&v4).unwrap(), &r));
    assert!(v4.len() + 50 <= v3.len(), "format 4 {} bytes, format 3 {}", v4.len(), v3.len());
    assert!(v4.len() <= 110, "a consume's record is {} bytes", v4.len());
    assert_eq!(has_sealed(&v3), Ok(false));
    assert_eq!(has_sealed(&v4), Ok(false));
    assert!(is_current(&v4) && !is_current(&v3) && !is_current(b"{}"));
}

#[test]
fn profile_states_read_back_in_binary_and_as_the_json_of_older_formats() {
    use crate::journal::ProfileState;
    let full = ProfileState {
        batch: Some("000123".into()),
        batch_open: true,
        last_trace: 999_999,
        last_batch: u32::MAX,
        session: json!({"key": "v", "n": [1, 2]}),
        unsettled: vec!["000120".into(), "x".into()],
        seq: u64::MAX,
        idem_keys: 7,
    };
    for st in [ProfileState::default(), full] {
        let b = encode_profile(&st);
        assert_eq!(b[0], PROFILE_TAG);
        let json = serde_json::to_vec(&st).unwrap();
        assert_eq!(serde_json::to_vec(&decode_profile(&b).unwrap()).unwrap(), json);
        assert_eq!(serde_json::to_vec(&decode_profile(&json).unwrap()).unwrap(), json);
        for n in 0..b.len() {
            assert!(decode_profile(&b[..n]).is_err(), "cut at {n}");
        }
    }
    assert!(encode_profile(&ProfileState { last_trace: 123_456, seq: 200_000, ..Default::default() }).len() <= 12);
}

/// Strings on the edges of the packed forms read back exactly: leading zeros, 19 and 20 digits, a
/// card-like string that is not masked 6+4, a request value equal to the card inside a nested value.
#[test]
fn packed_strings_on_the_edges_read_back_exactly() {
    let mut r = consume();
    for s in [
        "0",
        "000000",
        "9999999999999999999",
        "18446744073709551615",
        "99999999999999999999",
        "-1",
        "+1",
        "1 ",
        "١٢",
        "622202****0008",
        "622202*0008",
        "62220*********0008",
        "622202*********000",
        "622202*********00080",
        "622202***x*****0008",
        &format!("622202{}0008", "*".repeat(40)),
    ] {
        r.trace = s.into();
        r.batch = s.into();
        r.reference = Some(s.into());
        r.card = Some(s.into());
        r.request = json!({"cardNo": s, "n": [s, {"cardNo": s}], "other": "x"}).as_object().cloned().unwrap_or_default();
        r.result = json!({"cardNo": s}).as_object().cloned().unwrap_or_default();
        let back = decode_record(&encode_record(&r)).unwrap();
        assert!(same(&r, &back), "{s:?}: {back:?}");
    }
    // A number too big for its length, or a card value where the record has no card, is refused.
    assert!(decode_record(&[TAG, 1, 3, 3, 2, 0, 2 << 2 | 1, 100]).is_err());
    let mut b = encode_record(&Record::new("p", "o", Class::Inquiry, "1", "x"));
    let cut = b.len() - 3;
    b.truncate(cut);
    b.extend_from_slice(&[1, 2, b'a', V_CARD, 0, 0]);
    assert!(matches!(decode_record(&b), Err(CodecError::Bad("card value without a card", _))));
}

#[test]
fn totals_read_back_in_binary_and_as_the_json_of_older_formats() {
    let m: std::collections::BTreeMap<String, i64> =
        [("pointDebitAmount".to_string(), i64::MIN), ("x".to_string(), 7), ("totalTransCount".to_string(), 1)].into();
    let b = encode_totals(&m);
    assert_eq!(b[0], TOTALS_TAG);
    assert_eq!(decode_totals(&b), Ok(m.clone()));
    assert_eq!(decode_totals(&serde_json::to_vec(&m).unwrap()), Ok(m));
    assert!(b.len() < 20, "{} bytes", b.len());
    for n in 0..b.len() {
        assert!(decode_totals(&b[..n]).is_err(), "cut at {n}");
    }
    assert!(decode_totals(&[TOTALS_TAG, 0xff, 0xff, 0xff, 0x7f]).is_err());
}

#[test]
fn a_sealed_field_is_seen_from_the_head_alone() {
    let mut r = consume();
    assert_eq!(has_sealed(&encode_record(&r)), Ok(false));
    r.sealed = Some("x".into());
    assert_eq!(has_sealed(&encode_record(&r)), Ok(true));
    assert_eq!(has_sealed(&serde_json::to_vec(&r).unwrap()), Ok(true));
}

#[test]
fn json_of_formats_1_and_2_still_reads() {
    let r = consume();
    let back = decode_any(&serde_json::to_vec(&r).unwrap()).unwrap();
    assert!(same(&r, &back));
    assert_eq!(decode_record(b"{}").err(), Some(CodecError::Tag(b'{')));
}

#[test]
fn every_cut_and_every_flipped_byte_is_an_error_or_a_record_never_a_panic() {
    let b = encode_record(&consume());
    for n in 0..b.len() {
        assert!(decode_record(&b[..n]).is_err(), "cut at {n} decodes");
    }
    for i in 0..b.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut c = b.clone();
            c[i] ^= x;
            let _ = decode_record(&c);
        }
    }
    let mut long = b.clone();
    long.push(0);
    assert_eq!(decode_record(&long).err(), Some(CodecError::Trailing(1)));
}

#[test]
fn huge_counts_and_deep_nesting_are_refused_without_allocating() {
    // A request map claiming 2^62 entries.
    let mut b = encode_record(&Record::new("p", "o", Class::Inquiry, "1", "x"));
    let cut = b.len() - 3; // request, result, totals: three empty counts
    b.truncate(cut);
    b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    assert!(matches!(decode_record(&b), Err(CodecError::Bad("count", _))));
    // Nesting beyond the cap: request = {"a": [[[[...]]]]}.
    let mut b = encode_record(&Record::new("p", "o", Class::Inquiry, "1", "x"));
    b.truncate(cut);
    b.extend_from_slice(&[1, 2, b'a']);
    b.extend(std::iter::repeat_n([V_ARRAY, 1], 100).flatten());
    b.push(V_NULL);
    b.extend_from_slice(&[0, 0]);
    assert!(matches!(decode_record(&b), Err(CodecError::Bad("nesting", _))));
    // A varint longer than 64 bits.
    assert!(decode_record(&[TAG, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-zA-Z]{0,10}", arb_value(), 0..5).prop_map(|m| m.into_iter().collect())
}

fn arb_opt() -> impl Strategy<Value = Option<String>> {
    prop::option::of(".{0,16}")
}

prop_compose! {
    fn arb_record()(
        id in any::<u64>(), profile in ".{0,10}", operation in ".{0,10}", class in 0u8..7, status in 0u8..6, trace in "[0-9]{0,6}",
        batch in "[0-9]{0,6}", created in prop_oneof![Just(String::new()), ".{0,30}", (0i64..4_102_444_800_000).prop_map(|ms| ms_ts(ms).unwrap_or_default())],
        updated_delta in -1_000_000i64..1_000_000, amount in any::<i64>(),
        strs in prop::collection::vec(arb_opt(), 13), original in prop::option::of(any::<u64>()), superseded in prop::option::of(any::<u64>()),
        recovery in prop::option::of((0u8..4, any::<u32>(), any::<i64>(), any::<bool>(), arb_opt())),
        request in arb_map(), result in arb_map(), totals in prop::collection::vec((".{0,8}", any::<i64>()), 0..4),
    ) -> Record {
        let updated = ts_ms(&created).and_then(|ms| ms_ts(ms + updated_delta)).unwrap_or_else(|| created.clone());
        let mut r = Record::new(&profile, &operation, class_of(class).unwrap_or(Class::Inquiry), &batch, &created);
        r.id = id;
        r.status = status_of(status).unwrap_or(Status::Pending);
        r.trace = trace;
        r.updated_at = updated;
        r.amount_fen = amount;
        let mut s = strs.into_iter();
        let mut next = || s.next().flatten();
        (r.card, r.sealed, r.code, r.message, r.message_en, r.reference, r.trans_time) = (next(), next(), next(), next(), next(), next(), next());
        (r.idempotency_key, r.request_fingerprint, r.pos_reference, r.error, r.slot, r.unit) = (next(), next(), next(), next(), next(), next());
        r.original = original;
        r.superseded_by = superseded;
        r.recovery = recovery.map(|(how, attempts, next_at_ms, parked, last_error)| RecoveryState {
            how: recovery_of(how).unwrap_or(Recovery::Manual), attempts, next_at_ms, parked, last_error,
        });
        r.request = request;
        r.result = result;
        r.totals = totals;
        r
    }
}

proptest! {
    #[test]
    fn any_record_reads_back_as_written(r in arb_record()) {
        for b in [encode_record(&r), encode_record_v3(&r)] {
            let back = decode_record(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(same(&r, &back), "{:?} != {:?}", r, back);
        }
    }

    #[test]
    fn digit_and_card_like_strings_read_back_as_written(s in prop_oneof!["[0-9]{0,22}", "[0-9]{4,7}[*]{0,24}[0-9]{3,5}", "[0-9*]{0,20}"], card in any::<bool>()) {
        let mut r = consume();
        r.trace = s.clone();
        r.reference = Some(s.clone());
        r.card = card.then(|| s.clone());
        r.request = json!({"cardNo": s, "a": [s]}).as_object().cloned().unwrap_or_default();
        let back = decode_record(&encode_record(&r)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(same(&r, &back), "{:?} != {:?}", r, back);
    }

    #[test]
    fn any_bytes_decode_to_a_record_or_an_error(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_record(&b);
        for tag in [TAG, TAG_V3] {
            let mut tagged = vec![tag];
            tagged.extend_from_slice(&b);
            let _ = decode_record(&tagged);
        }
        let _ = decode_totals(&b);
        let _ = decode_profile(&b);
    }
}
