//! Tests of the masking engine through its public entry point: realistic query answers, SQL API
//! results, JSON and Arrow chunks (built with arrow-rs, plus a pyarrow stream shaped by
//! fakesnow's `to_sf`, committed under `tests/fixtures/mask/`), envelopes and refusals.
//! Property tests against a reference implementation are in `tests/properties.rs`.

mod fixtures;
mod properties;

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde_json::{Value, json};

use super::*;
use fixtures::*;

#[test]
fn masks_a_json_query_answer() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut body = query_answer_json();
    let original = body.clone();
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(body.len(), original.len());
    assert_eq!(masked.format, ResultFormat::QueryJson);
    let rows = decoded_rows(&body, "/data/rowset");
    assert_eq!(
        rows[0],
        [
            Some("1".into()),
            Some("Ada [NAME]".into()),
            Some(stars("ada.lovelace42@example.com")),
            Some(format!("{}1111", stars("4111 1111 1111 "))),
            None,
            Some("00000.00".into()),
            Some("18262".into()),
            Some(format!("note: call {}0366 or mail {}", stars("453201511283"), stars("grace@navy.mil"))),
        ]
    );
    // Not nullable: the SSN column gets a type-valid mask instead of NULL.
    assert_eq!(rows[1][4], Some("***********".into()));
    // Escapes are decoded before detection, and masks do not break them.
    assert_eq!(rows[1][7], Some(format!("mail \"{}\" é", stars("alan@example.org"))));
    assert_eq!(
        rows[2],
        [
            Some("3".into()),
            Some("Grace Hopper".into()),
            None,
            Some("no card".into()),
            None,
            Some("0.00".into()),
            Some("18263".into()),
            None
        ]
    );
    let report = &masked.report;
    assert_eq!(report.rows, 3);
    assert_eq!(report.by_column_rule, 4, "{report:?}");
    assert_eq!(report.by_detector[DetectorKind::Email.index()], 4);
    assert_eq!(report.by_detector[DetectorKind::Card.index()], 3);
    assert_eq!(report.by_dictionary, 1);
    assert_eq!(report.values_masked, 11);
    // Everything outside the rowset is byte for byte the same.
    let before: Value = serde_json::from_slice(&original).unwrap();
    let after: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(before["data"]["rowtype"], after["data"]["rowtype"]);
    assert_eq!(before["data"]["parameters"], after["data"]["parameters"]);
    assert_no_canary(&body);
}

#[test]
fn golden_query_answer_fixture() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut body = include_bytes!("../../tests/fixtures/mask/query_answer.json").to_vec();
    let expected = include_bytes!("../../tests/fixtures/mask/query_answer.masked.json");
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mask/query_answer.masked.json"), &body)
            .unwrap();
    }
    assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(expected));
    let envelope = masked.envelope.unwrap();
    assert_eq!(envelope.chunks.len(), 2);
    assert_eq!(envelope.total, Some(7));
    assert_eq!(envelope.chunk_rows(), 5);
    assert_eq!(masked.report.rows, 2);
}

/// Profile `p`: every column masked with a value its type still decodes.
const EVERY_COLUMN_TYPE_VALID: &str = r#"
[[masking.profiles.p.columns]]
name = "*"
mask = { style = "type_valid" }
"#;

#[test]
fn typed_json_values_still_decode() {
    let masker = masker(EVERY_COLUMN_TYPE_VALID);
    let p = masker.profile("p").unwrap();
    let types = [
        ("N", "fixed", Some(2), "-1234.50"),
        ("R", "real", None, "1.5e-3"),
        ("R2", "real", None, "NaN"),
        ("D", "date", None, "-365"),
        ("T", "time", Some(9), "3600.123456789"),
        ("TS", "timestamp_ntz", Some(9), "1700000000.123456789"),
        ("TZ", "timestamp_tz", Some(9), "1700000000.000000000 1500"),
        ("B", "boolean", None, "true"),
        ("B1", "boolean", None, "1"),
        ("X", "binary", None, "DEADBEEF"),
        ("V", "variant", None, "{\n  \"a\": 1\n}"),
        ("S", "text", None, "secret"),
    ];
    let rowtype: Vec<Value> =
        types.iter().map(|(n, t, s, _)| json!({"name": n, "type": t, "scale": s, "nullable": false})).collect();
    let row: Vec<&str> = types.iter().map(|t| t.3).collect();
    let mut body = serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [row]}})).unwrap();
    let len = body.len();
    masker.mask(p, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(body.len(), len);
    let rows = decoded_rows(&body, "/data/rowset");
    let got: Vec<&str> = rows[0].iter().map(|v| v.as_deref().unwrap()).collect();
    assert_eq!(
        got,
        [
            "00000.00",
            "0.0e00",
            "000",
            "0000",
            "0000.000000000",
            "0000000000.000000000",
            "0000000000.000000000 1500",
            "0",
            "0",
            "00000000",
            "{}",
            "******"
        ]
    );
    for (value, (_, type_name, _, _)) in got.iter().zip(types) {
        assert!(decodes_as(type_name, value), "{type_name}: {value:?}");
    }
}

#[test]
fn a_type_valid_timestamp_tz_with_escapes_stays_valid_json() {
    // Found by the mask_json fuzz target: the kept offset was written decoded, so an escaped
    // quote in it ended the string early.
    let masker = masker(EVERY_COLUMN_TYPE_VALID);
    let p = masker.profile("p").unwrap();
    let mut body = br#"{"data":{"rowtype":[{"name":"TZ","type":"timestamp_tz","scale":9,"nullable":false}],"rowset":[["11 1\"}\n"]]}}"#.to_vec();
    let len = body.len();
    masker.mask(p, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(body.len(), len);
    let rows = decoded_rows(&body, "/data/rowset");
    assert_eq!(rows[0][0].as_deref(), Some("00 10}0"));
}

#[test]
fn tokens_shrink_json_values_and_fall_back_when_too_long() {
    let masker = masker(
        r#"
[masking.profiles.p.dictionary]
words = ["Falcon", "Project"]
mask = { style = "token", token = "[X]" }
[masking.profiles.p.detectors]
mask = { style = "token", token = "[A-LONG-TOKEN]" }
"#,
    );
    let p = masker.profile("p").unwrap();
    let mut body = json_chunk_bytes(&[&[Some("Project Falcon at someone@example.com"), Some("x@y.io")]]);
    let plan = text_plan(&masker, p, 2);
    let len = body.len();
    masker.mask(p, &mut body, Some(&plan), &mut Scratch::default()).unwrap();
    assert_eq!(body.len(), len);
    let rows = chunk_rows(&body);
    assert_eq!(rows[0][0].as_deref(), Some("[X] [X] at [A-LONG-TOKEN]"));
    // "x@y.io" is shorter than the token: full mask.
    assert_eq!(rows[0][1].as_deref(), Some("******"));
}

#[test]
fn null_style_needs_room_and_a_nullable_column() {
    let masker = masker(
        r#"
[[masking.profiles.p.columns]]
name = "*"
mask = { style = "null" }
"#,
    );
    let p = masker.profile("p").unwrap();
    let rowtype = json!([
        {"name": "A", "type": "text", "nullable": true},
        {"name": "B", "type": "text", "nullable": true},
        {"name": "C", "type": "fixed", "scale": 0, "nullable": true},
        {"name": "D", "type": "text", "nullable": false},
    ]);
    let mut body =
        serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [["long enough", "a", "7", "xyz"]]}}))
            .unwrap();
    masker.mask(p, &mut body, None, &mut Scratch::default()).unwrap();
    let rows = decoded_rows(&body, "/data/rowset");
    assert_eq!(rows[0], [None, Some("*".into()), Some("0".into()), Some("***".into())]);
    assert!(String::from_utf8_lossy(&body).contains("null         ,"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn escaped_keys_and_values_are_masked() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    // `\u0072owset` is `rowset` once decoded: a client reads it, so it is masked.
    let mut body = br#"{"data":{"rowtype":[{"name":"E","type":"text","nullable":true}],"\u0072owset":[["ada\u0040example.com"]]}}"#.to_vec();
    masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["data"]["rowset"][0][0], stars("ada@example.com"));
}

#[test]
fn duplicate_envelope_keys_are_refused() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut body = br#"{"data":{"rowtype":[{"name":"E","type":"text"}],"rowset":[["a"]],"rowset":[["b"]]}}"#.to_vec();
    let err = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap_err();
    assert!(matches!(err, MaskError::Json { .. }), "{err}");
    assert_eq!(err.fault(), Fault::Upstream);
}

#[test]
fn rows_must_match_the_row_type() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    for rowset in [r#"[["a","b"]]"#, r#"[[]]"#, r#"[["a"],["b","c"]]"#, r#"[["a"] ["b"]]"#, r#"[[1]]"#] {
        let text = format!(r#"{{"data":{{"rowtype":[{{"name":"E","type":"text"}}],"rowset":{rowset}}}}}"#);
        let mut body = text.into_bytes();
        assert!(masker.mask(agents, &mut body, None, &mut Scratch::default()).is_err(), "{rowset}");
    }
}

#[test]
fn sql_api_results_and_partitions() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut scratch = Scratch::default();
    let mut first = serde_json::to_vec(&json!({
        "resultSetMetaData": {"numRows": 2, "format": "jsonv2", "rowType": customer_rowtype(), "partitionInfo": []},
        "data": [customer_row(0)],
        "code": "090001",
        "statementHandle": "01b2c3d4-0000-0000-0000-000000000001",
    }))
    .unwrap();
    let masked = masker.mask(agents, &mut first, None, &mut scratch).unwrap();
    assert_eq!(masked.format, ResultFormat::SqlApi);
    let plan = masked.plan.unwrap();
    assert_eq!(decoded_rows(&first, "/data")[0][2], Some(stars("ada.lovelace42@example.com")));

    let mut partition = serde_json::to_vec(&json!({"data": [customer_row(1)]})).unwrap();
    let mut without = partition.clone();
    assert_eq!(masker.mask(agents, &mut without, None, &mut scratch).unwrap_err(), MaskError::ColumnsRequired);
    // The plan travels encoded (sealed, in the proxy) and comes back.
    let carried = ColumnPlan::decode(&plan.encode()).unwrap();
    let masked = masker.mask(agents, &mut partition, Some(&carried), &mut scratch).unwrap();
    assert_eq!(masked.format, ResultFormat::SqlApiPartition);
    assert_eq!(decoded_rows(&partition, "/data")[0][1].as_deref(), Some("Grace Hopper"));
    assert_eq!(decoded_rows(&partition, "/data")[0][4], None);

    let mut arrow_format = br#"{"resultSetMetaData":{"format":"arrowv1","rowType":[]},"data":[]}"#.to_vec();
    assert!(matches!(masker.mask(agents, &mut arrow_format, None, &mut scratch), Err(MaskError::Unrecognized { .. })));
}

#[test]
fn json_chunks_with_commas_and_newlines() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let plan =
        masker.plan(agents, &Column::from_rowtype_json(&serde_json::to_vec(&customer_rowtype()).unwrap()).unwrap());
    let rows: Vec<String> = (0..4).map(|i| serde_json::to_string(&customer_row(i)).unwrap()).collect();
    let mut body = format!("{},\n{}\n{},{}\n", rows[0], rows[1], rows[2], rows[3]).into_bytes();
    let len = body.len();
    let masked = masker.mask(agents, &mut body, Some(&plan), &mut Scratch::default()).unwrap();
    assert_eq!((masked.format, masked.report.rows, body.len()), (ResultFormat::JsonChunk, 4, len));
    assert_no_canary(&body);
    let mut no_plan = rows[0].clone().into_bytes();
    assert_eq!(
        masker.mask(agents, &mut no_plan, None, &mut Scratch::default()).unwrap_err(),
        MaskError::ColumnsRequired
    );
}

#[test]
fn detectors_find_lower_case_ibans_dotted_cards_apostrophes_and_accents() {
    // Each value alone (a short value: the bit-map path) and inside a value over 64 bytes
    // (the byte path), in a JSON chunk of text columns.
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let cases = [
        ("de89370400440532013000", stars("de89370400440532013000")),
        ("gb82 west 1234 5698 7654 32", stars("gb82 west 1234 5698 7654 32")),
        ("4111.1111.1111.1111", format!("{}1111", stars("4111.1111.1111."))),
        ("o'brien@example.com", stars("o'brien@example.com")),
        ("'ada@example.com'", format!("'{}'", stars("ada@example.com"))),
        ("josé@bücher.de", stars("josé@bücher.de")),
        ("連絡先ada@example.comまで", format!("連絡先{}まで", stars("ada@example.com"))),
    ];
    let padding = "a value long enough to leave the short path: ".repeat(2);
    for (value, expected) in cases {
        let long = format!("{padding}{value}.");
        let mut body = json_chunk_bytes(&[&[Some(value), Some(&long), Some("untouched 1234.5678")]]);
        let plan = text_plan(&masker, agents, 3);
        let masked = masker.mask(agents, &mut body, Some(&plan), &mut Scratch::default()).unwrap();
        let rows = chunk_rows(&body);
        assert_eq!(rows[0][0].as_deref(), Some(expected.as_str()), "{value}");
        assert_eq!(rows[0][1], Some(format!("{padding}{expected}.")), "{value}");
        assert_eq!(rows[0][2].as_deref(), Some("untouched 1234.5678"));
        assert_eq!(masked.report.values_masked, 2, "{value}");
    }
}

#[test]
fn percent_encoded_values_are_searched_decoded() {
    // URL-encoding hides what the detectors key on: `%3D` glues a value to a word, `%40` is an
    // `@`, `%20` a separator. Each value alone (the short path), inside a value over 64 bytes
    // (the byte path) and written with a `\u` escape (the decoding path), in JSON and Arrow.
    let cases = [
        ("q%3Dcard%3D4111111111111111", format!("q%3Dcard%3D{}1111", stars("411111111111"))),
        ("4111%201111%201111%201111", format!("{}1111", stars("4111%201111%201111%20"))),
        ("mailto%3Aada%40example.com", format!("mailto%3A{}", stars("ada%40example.com"))),
        ("ssn%3D123-45-6789&x=1", format!("ssn%3D{}&x=1", stars("123-45-6789"))),
        ("ssn=123%2045%206789", format!("ssn={}", stars("123%2045%206789"))),
        // Encoded twice (a URL in another's parameter) and three times.
        (
            "next%3D%252Fpay%253Fcard%253D4111111111111111",
            format!("next%3D%252Fpay%253Fcard%253D{}1111", stars("411111111111")),
        ),
        ("u=ada%252540example.com", format!("u={}", stars("ada%252540example.com"))),
        (
            "X-Amz-Credential%3DAKIAIOSFODNN7EXAMPLE%2F2024",
            format!("X-Amz-Credential%3D{}%2F2024", stars("AKIAIOSFODNN7EXAMPLE")),
        ),
        // Not escapes, or escapes hiding nothing: left as they were.
        ("50% off 4111", "50% off 4111".to_string()),
        ("a%2", "a%2".to_string()),
        ("100%25 of ada%40example", "100%25 of ada%40example".to_string()),
    ];
    each_masks_alone_long_and_escaped(POLICY, "agents", &cases);
}

#[test]
fn backslash_escaped_values_are_searched_decoded() {
    // JSON text escapes what its strings hold: `\n` glues a card to an `n`, `\t` a key to a
    // `t`, `\u0040` is an `@` (fuzz and review: VARIANT values passed in clear).
    let cases = [
        (r"paid with\n4111111111111111", format!(r"paid with\n{}1111", stars("411111111111"))),
        (r"key:\tAKIAIOSFODNN7EXAMPLE", format!(r"key:\t{}", stars("AKIAIOSFODNN7EXAMPLE"))),
        (r"ssn\r\n123-45-6789", format!(r"ssn\r\n{}", stars("123-45-6789"))),
        (r"to ada\u0040example.com", format!("to {}", stars(r"ada\u0040example.com"))),
        (r"x\u00204111111111111111", format!(r"x\u0020{}1111", stars("411111111111"))),
        // A document in a document's string: escaped twice.
        (r"note\\n4111111111111111", format!(r"note\\n{}1111", stars("411111111111"))),
        // Not escapes: left as they were.
        (r"a\x4111", r"a\x4111".to_string()),
        (r"a\u00", r"a\u00".to_string()),
        (r"C:\temp\file", r"C:\temp\file".to_string()),
    ];
    each_masks_alone_long_and_escaped(POLICY, "agents", &cases);
}

#[test]
fn variant_text_is_searched_as_the_json_it_is() {
    // A VARIANT holding a string with a newline: Snowflake writes it `\n` in the JSON text.
    let masker = masker(POLICY);
    let p = masker.profile("agents").unwrap();
    let variant = "{\n  \"note\": \"paid with\\n4111111111111111\",\n  \"key\": \"\\tAKIAIOSFODNN7EXAMPLE\"\n}";
    let rowtype = json!([{"name": "DOC", "type": "variant", "nullable": true}]);
    let mut body = serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [[variant]]}})).unwrap();
    masker.mask(p, &mut body, None, &mut Scratch::default()).unwrap();
    let rows = decoded_rows(&body, "/data/rowset");
    let doc: Value = serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(doc["note"], format!("paid with\n{}1111", stars("411111111111")));
    assert_eq!(doc["key"], format!("\t{}", stars("AKIAIOSFODNN7EXAMPLE")));

    // The same in an Arrow chunk.
    let columns: Vec<Column> = Column::from_rowtype_json(&serde_json::to_vec(&rowtype).unwrap()).unwrap();
    let plan = masker.plan(p, &columns);
    let fields = vec![Field::new("DOC", DataType::Utf8, true)];
    let arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![variant]))];
    let mut stream = ipc_stream(&RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap());
    masker.mask(p, &mut stream, Some(&plan), &mut Scratch::default()).unwrap();
    let batches = read_arrow(&stream);
    let column = batches[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let doc: Value = serde_json::from_str(column.value(0)).unwrap();
    assert_eq!(doc["note"], format!("paid with\n{}1111", stars("411111111111")));
    assert_eq!(doc["key"], format!("\t{}", stars("AKIAIOSFODNN7EXAMPLE")));
}

/// Masks each value under the profile alone (the short path), inside a value over 64 bytes
/// (the byte path) and written with a `\u` escape (the decoding path) in JSON, and alone and
/// long in Arrow, and checks it comes out as expected.
fn each_masks_alone_long_and_escaped(policy: &str, profile: &str, cases: &[(&str, String)]) {
    let masker = masker(policy);
    let agents = masker.profile(profile).unwrap();
    let padding = "a value long enough to leave the short path: ".repeat(2);
    for (value, expected) in cases {
        let long = format!("{padding}{value}.");
        let changed = usize::from(value != expected);
        let mut body = json_chunk_bytes(&[&[Some(value), Some(&long)]]);
        // The third cell writes its first character as a `\u` escape.
        let rest = serde_json::to_string(&value[1..]).unwrap();
        let escaped = format!(r#"\u{:04x}{}"#, value.as_bytes()[0], &rest[1..rest.len() - 1]);
        body.truncate(body.len() - 1);
        body.extend_from_slice(format!(r#","{escaped}"]"#).as_bytes());
        let plan = text_plan(&masker, agents, 3);
        let masked = masker.mask(agents, &mut body, Some(&plan), &mut Scratch::default()).unwrap();
        let rows = chunk_rows(&body);
        assert_eq!(rows[0][0].as_deref(), Some(expected.as_str()), "{value}");
        assert_eq!(rows[0][1], Some(format!("{padding}{expected}.")), "{value}");
        assert_eq!(rows[0][2].as_deref(), Some(expected.as_str()), "escaped {value}");
        assert_eq!(masked.report.values_masked, 3 * changed as u64, "{value}");

        let mut stream = text_stream(&[value, &long]);
        let original = stream.clone();
        let plan = text_plan(&masker, agents, 1);
        masker.mask(agents, &mut stream, Some(&plan), &mut Scratch::default()).unwrap();
        assert_eq!(stream.len(), original.len());
        let batches = read_arrow(&stream);
        let column = batches[0].column(0).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        assert_eq!(column.value(0), expected, "arrow {value}");
        assert_eq!(column.value(1), format!("{padding}{expected}."), "arrow {value}");
    }
}

#[test]
fn dictionary_words_are_found_encoded() {
    // A word holding a space is written `+` or `%20` in a URL, and any byte of a word may be
    // written as an escape (`Jos%C3%A9`).
    let policy = r#"
[masking.profiles.p.dictionary]
words = ["Grace Hopper", "José"]
mask = { style = "full" }
"#;
    let cases = [
        ("q=Grace+Hopper&x=1", format!("q={}&x=1", stars("Grace+Hopper"))),
        ("q=Grace%20Hopper", format!("q={}", stars("Grace%20Hopper"))),
        // A form-encoded URL in another's parameter.
        ("next%3D%2Fp%3Fname%3DGrace%2BHopper", format!("next%3D%2Fp%3Fname%3D{}", stars("Grace%2BHopper"))),
        ("%47race Hopper", stars("%47race Hopper")),
        ("to=Jos%C3%A9", format!("to={}", stars("Jos%C3%A9"))),
        // Not the words: left as they were.
        ("q=Grace+Hop", "q=Grace+Hop".to_string()),
        ("+14155550100", "+14155550100".to_string()),
    ];
    each_masks_alone_long_and_escaped(policy, "p", &cases);
}

#[test]
fn plus_signs_are_read_as_spaces() {
    // Form encoding (Python's `urlencode`) writes a space as `+`, which hides a grouped card
    // number's, an SSN's or an IBAN's separators and a PEM key's header.
    let key = "-----BEGIN+PRIVATE+KEY-----%0AMIIEvQ%2Bx%0A-----END+PRIVATE+KEY-----";
    let cases = [
        ("card=4111+1111+1111+1111", format!("card={}1111", stars("4111+1111+1111+"))),
        ("ssn=123+45+6789&x=1", format!("ssn={}&x=1", stars("123+45+6789"))),
        ("iban=DE89+3704+0044+0532+0130+00", format!("iban={}", stars("DE89+3704+0044+0532+0130+00"))),
        (key, stars(key)),
        // A form-encoded URL in another's parameter: its `+` are written `%2B`.
        (
            "next%3D%2Fpay%3Fcard%3D4111%2B1111%2B1111%2B1111",
            format!("next%3D%2Fpay%3Fcard%3D{}1111", stars("4111%2B1111%2B1111%2B")),
        ),
        // An e-mail address keeps its `+` whole.
        ("to=ada+tag@example.com", format!("to={}", stars("ada+tag@example.com"))),
        // Nothing hidden: left as they were.
        ("tel=+1+555+0100+200", "tel=+1+555+0100+200".to_string()),
        ("card=4111+1111+1111+1112", "card=4111+1111+1111+1112".to_string()),
    ];
    each_masks_alone_long_and_escaped(POLICY, "agents", &cases);
}

#[test]
fn an_answer_with_chunks_and_no_row_type_is_refused() {
    // Its chunks are masked by the plan its row type makes: without one they would go out raw.
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut answer: Value =
        serde_json::from_slice(include_bytes!("../../tests/fixtures/mask/query_answer.json")).unwrap();
    let data = answer["data"].as_object_mut().unwrap();
    data.remove("rowtype");
    data.remove("rowset");
    let mut body = serde_json::to_vec(&answer).unwrap();
    assert_eq!(masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap_err(), MaskError::ColumnsRequired);
    // Without chunks, an answer with no rows and no row type is fine.
    answer["data"].as_object_mut().unwrap().remove("chunks");
    let mut body = serde_json::to_vec(&answer).unwrap();
    assert!(masker.mask(agents, &mut body, None, &mut Scratch::default()).is_ok());
}

#[test]
fn envelope_reports_chunks_and_rebuild_strips_keys() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut body = include_bytes!("../../tests/fixtures/mask/query_answer.json").to_vec();
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    let envelope = masked.envelope.unwrap();
    assert_eq!(envelope.query_result_format.as_deref(), Some("json"));
    assert_eq!((envelope.total, envelope.returned), (Some(7), Some(2)));
    assert_eq!(envelope.qrmk.as_deref(), Some("Q1JNS19TRUNSRVRfS0VZX0NBTkFSWQ=="));
    assert_eq!(
        envelope.chunk_headers,
        [("x-amz-server-side-encryption-customer-key".to_string(), "SSEC-CANARY".to_string())]
    );
    let first = &envelope.chunks[0];
    assert_eq!(
        &body[first.url_range.clone()],
        br#""https://sfc-stage.s3.amazonaws.com/results/chunk_0?X-Amz-Signature=PRESIGNED-CANARY-0""#
    );
    assert_eq!((first.row_count, first.uncompressed_size, first.compressed_size), (Some(3), Some(420), Some(180)));
    let qrmk_member = envelope.qrmk_member.clone().unwrap();
    assert!(body[qrmk_member].starts_with(b"\"qrmk\""));
    let debug = format!("{envelope:?}");
    assert!(!debug.contains("CANARY"), "{debug}");

    let rebuilt = rebuild_envelope(&body, &envelope, &["/gw/chunk/0?t=sealed", "/gw/chunk/1?t=sealed"], None).unwrap();
    let text = String::from_utf8(rebuilt.clone()).unwrap();
    assert!(!text.contains("CANARY") && !text.contains("qrmk") && !text.contains("chunkHeaders"), "{text}");
    let value: Value = serde_json::from_slice(&rebuilt).unwrap();
    assert_eq!(value["data"]["chunks"][1]["url"], "/gw/chunk/1?t=sealed");
    assert_eq!(value["data"]["chunks"][1]["rowCount"], 2);
    assert_eq!(value["data"]["total"], 7);
    assert_eq!(value["data"]["rowset"], serde_json::from_slice::<Value>(&body).unwrap()["data"]["rowset"]);
    let own = [("authorization", "Snowflake Token=\"sg1.agent\"")];
    let with_headers = rebuild_envelope(&body, &envelope, &["/gw/0", "/gw/1"], Some(&own)).unwrap();
    let value: Value = serde_json::from_slice(&with_headers).unwrap();
    assert_eq!(value["data"]["chunkHeaders"], serde_json::json!({"authorization": "Snowflake Token=\"sg1.agent\""}));
    assert!(value["data"].get("qrmk").is_none());
    assert_eq!(rebuild_envelope(&body, &envelope, &["/gw/1"], None).unwrap_err(), MaskError::ChunkUrlCount);
    assert_eq!(rebuild_envelope(&body[1..], &envelope, &["a", "b"], None).unwrap_err(), MaskError::EnvelopeMismatch);
}

#[test]
fn answers_without_rows_pass_untouched() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    for text in [
        r#"{"data":{"sqlState":"42S02","queryId":"x"},"code":"002003","message":"SQL compilation error","success":false}"#,
        r#"{"data":{"getResultUrl":"/queries/x/result","queryId":"x"},"code":"333333","success":true}"#,
        r#"{"data":null,"success":true}"#,
        r#"{"code":"090001","message":"ok"}"#,
    ] {
        let mut body = text.as_bytes().to_vec();
        let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
        assert_eq!(masked.format, ResultFormat::NoRows, "{text}");
        assert_eq!(body, text.as_bytes());
    }
    let mut empty = b"  ".to_vec();
    assert_eq!(masker.mask(agents, &mut empty, None, &mut Scratch::default()).unwrap().format, ResultFormat::Empty);
}

#[test]
fn error_messages_are_masked_as_text() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let open = masker.profile("open").unwrap();
    let message = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap()["message"].as_str().unwrap().to_owned();
    let cases = [
        // A conversion error quotes the value that failed: a detected e-mail address, a value
        // of a column rule (no detector knows it), the dictionary's word, an escaped quote.
        (
            r#"{"data":{"sqlState":"22018","queryId":"x"},"code":"100038","message":"Numeric value 'ada.lovelace42@example.com' is not recognized","success":false}"#,
            format!("Numeric value '{}' is not recognized", stars("ada.lovelace42@example.com")),
        ),
        (
            r#"{"code":"100040","message":"Date '12345.67' is not recognized","sqlState":"22007","statementHandle":"01b2"}"#,
            format!("Date '{}' is not recognized", stars("12345.67")),
        ),
        (
            r#"{"data":null,"code":"100038","message":"Numeric value 'Ada Lovelace' is not recognized","success":false}"#,
            format!("Numeric value '{}' is not recognized", stars("Ada Lovelace")),
        ),
        // Quotes in the value, and an apostrophe before it: from the first quote that opens to
        // the last that closes, with what lies between two values.
        (
            r#"{"data":null,"code":"100038","message":"Numeric value 'Miles O'Brien' is not recognized","success":false}"#,
            format!("Numeric value '{}' is not recognized", stars("Miles O'Brien")),
        ),
        (
            r#"{"data":null,"code":"100096","message":"Can't parse 'Grace Hopper' as date with format 'YYYY-MM-DD'","success":false}"#,
            format!("Can't parse '{}'", stars("Grace Hopper' as date with format 'YYYY-MM-DD")),
        ),
        // Double quotes, as a JSON parser's or a UDF's error may put them.
        (
            r#"{"data":null,"code":"100069","message":"Error parsing JSON: unknown keyword \"Ada Lovelace\", pos 4","success":false}"#,
            format!("Error parsing JSON: unknown keyword \"{}\", pos 4", stars("Ada Lovelace")),
        ),
        // A pair of one kind of quote does not close a value the other kind opened.
        (
            r#"{"data":null,"code":"100038","message":"Column \"NOTES\": Numeric value 'Miles O'Brien","success":false}"#,
            format!("Column \"{}\": Numeric value '{}", stars("NOTES"), stars("Miles O'Brien")),
        ),
        // A quote that opens and none that closes: masked to the end.
        (
            r#"{"data":null,"code":"100038","message":"Numeric value 'Miles O'Brien","success":false}"#,
            format!("Numeric value '{}", stars("Miles O'Brien")),
        ),
        // Unquoted: the detectors and the dictionary still apply.
        (
            r#"{"code":"1","message":"card 4111 1111 1111 1111 of Lovelace","success":false}"#,
            format!("card {}1111 of [NAME]", stars("4111 1111 1111 ")),
        ),
    ];
    for (text, expected) in cases {
        let mut body = text.as_bytes().to_vec();
        let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
        assert_eq!(masked.format, ResultFormat::NoRows, "{text}");
        assert_eq!(body.len(), text.len(), "{text}");
        assert_eq!(message(&body).trim_end(), expected, "{text}");
        assert!(masked.report.values_masked >= 1, "{text}");
        // A profile with no rules, no detectors and no dictionary leaves it as it was.
        let mut body = text.as_bytes().to_vec();
        masker.mask(open, &mut body, None, &mut Scratch::default()).unwrap();
        assert_eq!(body, text.as_bytes());
    }
}

/// A dynamic `PIVOT` (`… PIVOT (SUM(n) FOR email IN (ANY))`) names columns after the values it
/// finds: the names are masked as free text in every format that carries them (the driver's
/// row type, the SQL API's, an Arrow schema), once the plan has been made from them; the rows,
/// and every other name, are masked or kept as before.
#[test]
fn column_names_made_of_values_are_masked() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let open = masker.profile("open").unwrap();
    let mut rowtype = customer_rowtype();
    let pivoted = [
        ("'ada.lovelace42@example.com'", format!("'{}'", stars("ada.lovelace42@example.com"))),
        // Quoted, as Snowflake names a pivoted text value: a column rule's value could be
        // anything, so under column rules what lies in quotes goes.
        ("'Grace Hopper'", format!("'{}'", stars("Grace Hopper"))),
        ("4111 1111 1111 1111", format!("{}1111", stars("4111 1111 1111 "))),
    ];
    for (i, (name, _)) in pivoted.iter().enumerate() {
        rowtype[i + 1]["name"] = json!(name);
    }
    let names = |rowtype: &Value| -> Vec<String> {
        rowtype.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
    };
    let expected: Vec<String> = ["ID".to_owned()]
        .into_iter()
        .chain(pivoted.iter().map(|(_, masked)| masked.clone()))
        .chain(["SSN", "AMOUNT", "CREATED", "NOTES"].map(str::to_owned))
        .collect();

    // The driver's answer: names masked, rows masked as with the plain names (SSN's column
    // rule still applies: the plan was made before).
    let answer = |rowtype: &Value| {
        serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [customer_row(2)], "total": 1,
                                            "returned": 1, "queryResultFormat": "json"}, "success": true}))
        .unwrap()
    };
    let mut body = answer(&rowtype);
    let len = body.len();
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!((masked.format, body.len()), (ResultFormat::QueryJson, len));
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(names(&value["data"]["rowtype"]), expected);
    assert_no_canary(&body);
    let mut plain = answer(&customer_rowtype());
    masker.mask(agents, &mut plain, None, &mut Scratch::default()).unwrap();
    assert_eq!(decoded_rows(&body, "/data/rowset"), decoded_rows(&plain, "/data/rowset"));
    assert!(masked.report.values_masked > 3, "{:?}", masked.report);
    // Without rules, detectors or words the names stay as they were.
    let mut body = answer(&rowtype);
    masker.mask(open, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(body, answer(&rowtype));

    // The SQL API's row type.
    let mut body = serde_json::to_vec(&json!({
        "resultSetMetaData": {"numRows": 1, "format": "jsonv2", "rowType": rowtype, "partitionInfo": []},
        "data": [customer_row(0)], "code": "090001", "statementHandle": "01b2c3d4-0000-0000-0000-000000000001",
    }))
    .unwrap();
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(masked.format, ResultFormat::SqlApi);
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(names(&value["resultSetMetaData"]["rowType"]), expected);
    assert_no_canary(&body);

    // An Arrow stream (a chunk, or `rowsetBase64`): the schema's field names, in place; the
    // stream still reads, with the masked names and the same values masked as before.
    let fields: Vec<Field> =
        ["ID", pivoted[0].0, pivoted[1].0].iter().map(|name| Field::new(*name, DataType::Utf8, true)).collect();
    let columns: Vec<ArrayRef> = (0..3)
        .map(|i| Arc::new(StringArray::from(vec![format!("v{i}"), "grace@navy.mil".into()])) as ArrayRef)
        .collect();
    let stream = ipc_stream(&RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap());
    let mut masked_stream = stream.clone();
    let masked = masker.mask(agents, &mut masked_stream, None, &mut Scratch::default()).unwrap();
    assert_eq!((masked.format, masked_stream.len()), (ResultFormat::ArrowChunk, stream.len()));
    let batches = read_arrow(&masked_stream);
    let schema = batches[0].schema();
    let arrow_names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(arrow_names, ["ID", expected[1].as_str(), expected[2].as_str()]);
    assert_no_canary(&masked_stream);
    assert_eq!(masked.report.by_detector[DetectorKind::Email.index()], 4, "three values and one name");
}

/// A query's monitoring status (`GET /monitoring/queries/<id>`) quotes its error message,
/// which drivers raise: masked like an error answer's `message`, in every status.
#[test]
fn monitoring_error_messages_are_masked_as_text() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let text = r#"{"data":{"queries":[{"id":"q1","status":"SUCCESS"},{"id":"q2","status":"FAILED_WITH_ERROR","errorCode":"100038","errorMessage":"Numeric value 'ada.lovelace42@example.com' is not recognized","sqlText":"select 1"}, 7]},"code":null,"message":null,"success":true}"#;
    let mut body = text.as_bytes().to_vec();
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(masked.format, ResultFormat::NoRows);
    assert_eq!(body.len(), text.len());
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let queries = &answer["data"]["queries"];
    assert_eq!(
        queries[1]["errorMessage"].as_str().unwrap().trim_end(),
        format!("Numeric value '{}' is not recognized", stars("ada.lovelace42@example.com"))
    );
    assert_eq!(
        (&queries[0], &queries[1]["sqlText"], &queries[2]),
        (&json!({"id":"q1","status":"SUCCESS"}), &json!("select 1"), &json!(7))
    );
    assert_eq!(masked.report.values_masked, 1);
    // Two error messages in one status: refused, as any duplicated key the masker reads.
    let twice = r#"{"data":{"queries":[{"errorMessage":"a","errorMessage":"b"}]}}"#;
    assert!(masker.mask(agents, &mut twice.as_bytes().to_vec(), None, &mut Scratch::default()).is_err());
    // Broken JSON in the array is refused, not skipped.
    let broken = r#"{"data":{"queries":[{"errorMessage":"a"} {"x":1}]}}"#;
    assert!(masker.mask(agents, &mut broken.as_bytes().to_vec(), None, &mut Scratch::default()).is_err());
}

#[test]
fn refuses_what_it_cannot_mask() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut gzip = crate::http::gzip::gzip(&query_answer_json());
    let err = masker.mask(agents, &mut gzip, None, &mut Scratch::default()).unwrap_err();
    assert_eq!((err.clone(), err.fault()), (MaskError::Compressed, Fault::Caller));
    let mut html = b"<html>rows</html>".to_vec();
    assert!(matches!(
        masker.mask(agents, &mut html, None, &mut Scratch::default()),
        Err(MaskError::Unrecognized { .. })
    ));
    let mut trailing = br#"{"data":{}} x"#.to_vec();
    assert!(masker.mask(agents, &mut trailing, None, &mut Scratch::default()).is_err());
    // A plan from another spec (a policy reload) or profile is refused.
    let other = self::masker(r#"[masking.profiles.agents]"#);
    let stale = other.plan(other.profile("agents").unwrap(), &[text_column("A")]);
    let mut chunk = br#"["x"]"#.to_vec();
    assert_eq!(
        masker.mask(agents, &mut chunk, Some(&stale), &mut Scratch::default()).unwrap_err(),
        MaskError::PlanMismatch
    );
}

/// A `GET` or `PUT` answer sends the driver to the stage itself, with credentials, keys or
/// presigned URLs: the files would never pass the masker, so the answer is refused (the
/// agent's doing, the policy having let it), wherever the key sits among the data's members.
#[test]
fn stage_access_is_refused() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    for data in [
        r#"{"command":"DOWNLOAD","src_locations":["x.csv"],"stageInfo":{"locationType":"S3","creds":{"AWS_KEY_ID":"AKIA"}}}"#,
        r#"{"command":"UPLOAD","encryptionMaterial":{"queryStageMasterKey":"k"}}"#,
        r#"{"presignedUrls":["https://bucket.s3.amazonaws.com/x?X-Amz-Signature=s"]}"#,
        r#"{"presignedUrl":"https://bucket.s3.amazonaws.com/x"}"#,
        r#"{"command":"UPLOAD","uploadInfo":{"locationType":"S3","creds":{"AWS_KEY_ID":"AKIA"}}}"#,
        r#"{"stage\u0049nfo":{}}"#,
    ] {
        let mut body = format!(r#"{{"data":{data},"success":true}}"#).into_bytes();
        let err = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap_err();
        assert_eq!((err.clone(), err.fault()), (MaskError::StageAccess, Fault::Agent), "{data}");
    }
    // A listing of the stage's files is rows like any others.
    let mut listing = br#"{"data":{"rowtype":[],"rowset":[],"stageInfoNote":"x"},"success":true}"#.to_vec();
    assert!(masker.mask(agents, &mut listing, None, &mut Scratch::default()).is_ok());
}

#[test]
fn searcher_kind_is_reported() {
    let masker = masker(POLICY);
    assert_eq!(masker.searcher_kind(masker.profile("agents").unwrap()), SearcherKind::Teddy);
    assert_eq!(masker.searcher_kind(masker.profile("open").unwrap()), SearcherKind::None);
    let many: Vec<String> = (0..300).map(|i| format!("\"customer-{i:03}\"")).collect();
    let big = self::masker(&format!("[masking.profiles.big.dictionary]\nwords = [{}]", many.join(",")));
    assert_eq!(big.searcher_kind(big.profile("big").unwrap()), SearcherKind::Dfa);
}

#[test]
fn masks_an_arrow_chunk_keeping_types_and_metadata() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let (mut stream, columns) = arrow_customers(40);
    let original = stream.clone();
    let plan = masker.plan(agents, &columns);
    let masked = masker.mask(agents, &mut stream, Some(&plan), &mut Scratch::default()).unwrap();
    assert_eq!(masked.format, ResultFormat::ArrowChunk);
    assert_eq!(stream.len(), original.len());
    // The schema message is untouched: every field's Snowflake metadata is kept byte for byte.
    let schema_len = 8 + u32::from_le_bytes(original[4..8].try_into().unwrap()) as usize;
    assert_eq!(stream[..schema_len], original[..schema_len]);
    let batches = read_arrow(&stream);
    let before = read_arrow(&original);
    assert_eq!(batches[0].schema(), before[0].schema());
    check_masked_customers(&batches, &before);
    assert_no_canary(&stream);
    assert_eq!(masked.report.rows, 40);
    // Forty EMAIL values and twenty TAGS lists holding an address.
    assert_eq!(masked.report.by_detector[DetectorKind::Email.index()], 60);
}

#[test]
fn arrow_chunk_without_plan_uses_its_own_metadata() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let (mut stream, _) = arrow_customers(8);
    let original = stream.clone();
    let masked = masker.mask(agents, &mut stream, None, &mut Scratch::default()).unwrap();
    // AMOUNT's rule names table CUSTOMERS; the chunk does not say its table, so the rule applies.
    let plan = masked.plan.unwrap();
    assert!(plan.columns()[5].rule.is_some());
    check_masked_customers(&read_arrow(&stream), &read_arrow(&original));
}

#[test]
fn masks_rowset_base64_in_a_query_answer() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let (stream, _) = arrow_customers(12);
    let encoded = base64_simd::STANDARD.encode_to_string(&stream);
    let mut body = serde_json::to_vec(&json!({
        "data": {"rowtype": customer_rowtype_arrow(), "rowsetBase64": encoded, "total": 12, "returned": 12,
                 "queryResultFormat": "arrow", "chunks": []},
        "success": true
    }))
    .unwrap();
    let len = body.len();
    let masked = masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!((masked.format, body.len()), (ResultFormat::QueryArrow, len));
    let value: Value = serde_json::from_slice(&body).unwrap();
    let decoded = base64_simd::STANDARD.decode_to_vec(value["data"]["rowsetBase64"].as_str().unwrap()).unwrap();
    assert_eq!(decoded.len(), stream.len());
    check_masked_customers(&read_arrow(&decoded), &read_arrow(&stream));
    assert_no_canary(&decoded);
}

#[test]
fn masks_a_pyarrow_stream_shaped_by_fakesnow() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut stream = include_bytes!("../../tests/fixtures/mask/fakesnow_customers.arrows").to_vec();
    let original = stream.clone();
    let masked = masker.mask(agents, &mut stream, None, &mut Scratch::default()).unwrap();
    assert_eq!(masked.format, ResultFormat::ArrowChunk);
    let after = read_arrow(&stream);
    let before = read_arrow(&original);
    assert_eq!(after[0].schema(), before[0].schema());
    check_fakesnow_customers(&after, &before);
    assert_no_canary(&stream);
}

#[test]
fn arrow_nulls_fix_the_null_count() {
    let masker = masker(
        r#"
[[masking.profiles.p.columns]]
name = "SSN"
mask = { style = "null" }
[masking.profiles.p.detectors]
email = { mask = { style = "null" } }
"#,
    );
    let p = masker.profile("p").unwrap();
    let (mut stream, columns) = arrow_customers(16);
    masker.mask(p, &mut stream, Some(&masker.plan(p, &columns)), &mut Scratch::default()).unwrap();
    let batches = read_arrow(&stream);
    let batch = &batches[0];
    // SSN has nulls (so a validity bitmap): every value is now NULL, and arrow-rs agrees.
    assert_eq!(batch.column(4).null_count(), 16);
    // EMAIL has no nulls in this batch, so no bitmap: the e-mails get a type-valid mask.
    assert_eq!(batch.column(2).null_count(), 0);
    let emails = batch.column(2).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
    assert!(emails.iter().all(|e| e.unwrap().bytes().all(|b| b == b'*')));
}

#[test]
fn refuses_arrow_it_does_not_understand() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let (stream, columns) = arrow_customers(4);
    let plan = masker.plan(agents, &columns);
    let mut scratch = Scratch::default();
    let mut truncated = stream[..stream.len() - 20].to_vec();
    assert!(masker.mask(agents, &mut truncated, Some(&plan), &mut scratch).is_err());
    let mut trailing = stream.clone();
    trailing.extend_from_slice(b"more");
    assert!(matches!(masker.mask(agents, &mut trailing, Some(&plan), &mut scratch), Err(MaskError::Arrow { .. })));
    let mut dictionary = arrow_dictionary_stream();
    assert!(matches!(masker.mask(agents, &mut dictionary, None, &mut scratch), Err(MaskError::Arrow { .. })));
    let mut wrong_width = stream.clone();
    let narrow = masker.plan(agents, &columns[..3]);
    assert!(matches!(
        masker.mask(agents, &mut wrong_width, Some(&narrow), &mut scratch),
        Err(MaskError::ColumnCount { .. })
    ));
}

/// Masks the four-row customer stream after `edit` has changed it, having first checked that
/// the stream as written is accepted.
fn mask_edited_customers(edit: impl FnOnce(&mut Vec<u8>)) -> Result<Masked, MaskError> {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let (stream, columns) = arrow_customers(4);
    let plan = masker.plan(agents, &columns);
    let mut scratch = Scratch::default();
    let mut untouched = stream.clone();
    masker.mask(agents, &mut untouched, Some(&plan), &mut scratch).expect("the stream as written is accepted");
    let mut edited = stream;
    edit(&mut edited);
    masker.mask(agents, &mut edited, Some(&plan), &mut scratch)
}

#[test]
fn refuses_arrow_buffers_that_overlap() {
    // Found by the `mask_arrow` fuzz target: a stream whose buffers share bytes, so masking
    // one column rewrote another's offsets, and the masker refused its own output.
    let outcome = mask_edited_customers(|stream| {
        // Buffers 0-1 are ID's (validity, values), 2-4 NAME's and 5-7 EMAIL's (validity,
        // offsets, values): NAME's text now lies on EMAIL's.
        let (_, descriptors) = record_batch_vectors_at(stream);
        let email_values = stream[descriptors + 7 * 16..descriptors + 8 * 16].to_vec();
        stream[descriptors + 4 * 16..descriptors + 5 * 16].copy_from_slice(&email_values);
    });
    assert!(matches!(outcome, Err(MaskError::Arrow { what: "buffers that overlap", .. })));
}

#[test]
fn refuses_an_arrow_length_whose_offsets_would_overflow() {
    // Found by the `mask_arrow` fuzz target: a text array's length near i64::MAX made the
    // size of its offsets buffer overflow.
    let outcome = mask_edited_customers(|stream| {
        // Node 1 is NAME's (text); its length is the first 8 bytes.
        let (nodes, _) = record_batch_vectors_at(stream);
        stream[nodes + 16..nodes + 24].copy_from_slice(&i64::MAX.to_le_bytes());
    });
    assert!(matches!(outcome, Err(MaskError::Arrow { what: "an array too long", .. })));
}

#[test]
fn masks_are_final_after_one_pass() {
    // Masking one match can free another glued to it; what one pass writes needs no second.
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let cases = [
        // The card's mask cuts the run of digits the decoded form read (`…1111211116789`).
        ("4111111111111111%3211116789", format!("{}6789", stars("4111111111111111%321111"))),
        // The first card is glued to `%2D` as written and to `A` (`%41`) decoded: found once
        // the second one's mask no longer decodes to a letter (it was left in clear).
        (
            "%2D4111111111111111%4111111111111111",
            format!("%2D{}1111%{}1111", stars("411111111111"), stars("411111111111")),
        ),
        // A card glued to an address's domain, found once the address is masked.
        ("x@ada.coma4111111111111111", format!("{}{}1111", stars("x@ada.coma"), stars("411111111111"))),
        // Encoded anchors: the decoded form is searched for every anchor.
        ("%41KIAIOSFODNN7EXAMPLE", stars("%41KIAIOSFODNN7EXAMPLE")),
        ("key%3D%41KIAIOSFODNN7EXAMPLE&x=1", format!("key%3D{}&x=1", stars("%41KIAIOSFODNN7EXAMPLE"))),
    ];
    for (value, expected) in &cases {
        let mut body = json_chunk_bytes(&[&[Some(value)]]);
        let plan = text_plan(&masker, agents, 1);
        masker.mask(agents, &mut body, Some(&plan), &mut Scratch::default()).unwrap();
        assert_eq!(chunk_rows(&body)[0][0].as_deref(), Some(expected.as_str()), "{value}");
        let once = body.clone();
        masker.mask(agents, &mut body, Some(&plan), &mut Scratch::default()).unwrap();
        assert_eq!(body, once, "a second pass masked more in {value}");

        let mut stream = text_stream(&[value]);
        masker.mask(agents, &mut stream, Some(&plan), &mut Scratch::default()).unwrap();
        let batches = read_arrow(&stream);
        let column = batches[0].column(0).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        assert_eq!(column.value(0), expected, "arrow {value}");
    }
}

#[test]
fn an_encoded_key_is_found_by_either_walk_with_only_anchored_detectors_on() {
    // Without a detector triggered by `@` or digits, the byte walk took no statistics, and a
    // value with neither an anchor as written nor an `@` skipped the detectors.
    let masker = masker(
        r#"
[masking.profiles.p.detectors]
card = false
email = false
ssn = false
iban = false
"#,
    );
    let p = masker.profile("p").unwrap();
    for scratch in [Scratch::default(), Scratch::byte_walk_only()] {
        let mut scratch = scratch;
        let mut body = json_chunk_bytes(&[&[Some("%41KIAIOSFODNN7EXAMPLE")]]);
        masker.mask(p, &mut body, Some(&text_plan(&masker, p, 1)), &mut scratch).unwrap();
        assert_eq!(chunk_rows(&body)[0][0].as_deref(), Some(stars("%41KIAIOSFODNN7EXAMPLE").as_str()));
    }
}

#[test]
fn a_body_of_4_gib_is_refused() {
    // Offsets inside values are 32 bits. The pages are never touched: zeroed memory is mapped
    // lazily, and the length is checked first.
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut body = vec![0u8; 1 << 32];
    let refused = masker.mask(agents, &mut body, None, &mut Scratch::default());
    assert_eq!(refused.unwrap_err(), MaskError::Limit { what: "a result body of 4 GiB or more" });
}

#[test]
fn scratch_is_reused_without_changing_results() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut scratch = Scratch::default();
    let mut first = query_answer_json();
    let mut second = query_answer_json();
    masker.mask(agents, &mut first, None, &mut scratch).unwrap();
    let (mut arrow, columns) = arrow_customers(5);
    masker.mask(agents, &mut arrow, Some(&masker.plan(agents, &columns)), &mut scratch).unwrap();
    masker.mask(agents, &mut second, None, &mut scratch).unwrap();
    assert_eq!(first, second);
}

#[test]
fn masking_twice_changes_nothing_more() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let mut body = query_answer_json();
    masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    let once = body.clone();
    masker.mask(agents, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(body, once);
}

#[test]
fn a_scratch_lent_before_does_not_carry_another_bodys_structure() {
    // The walker's structure map lives in the scratch: masking a body after another one with
    // the same scratch must not read the first body's quotes.
    let masker = masker(
        r#"
[[masking.profiles.p.columns]]
name = "SECRET"
mask = { style = "full" }
"#,
    );
    let p = masker.profile("p").unwrap();
    let columns = Column::from_rowtype_json(
        br#"[{"name":"NOTE","type":"text","nullable":true},{"name":"SECRET","type":"text","nullable":true}]"#,
    )
    .unwrap();
    let plan = masker.plan(p, &columns);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let chunk = |next: &mut dyn FnMut(u64) -> u64| -> Vec<u8> {
        let rows: Vec<String> = (0..1 + next(3))
            .map(|_| {
                let cell = |next: &mut dyn FnMut(u64) -> u64| -> String {
                    (0..next(6)).map(|_| [b'a', b',', b'[', b']', b'1'][next(5) as usize] as char).collect()
                };
                format!("[\"{}\",\"{}\"]", cell(next), cell(next))
            })
            .collect();
        rows.join(",").into_bytes()
    };
    for _ in 0..20_000 {
        let (mut first, second) = (chunk(&mut next), chunk(&mut next));
        let mut scratch = Scratch::default();
        masker.mask(p, &mut first, Some(&plan), &mut scratch).unwrap();
        let (mut shared, mut fresh) = (second.clone(), second.clone());
        masker.mask(p, &mut shared, Some(&plan), &mut scratch).unwrap();
        masker.mask(p, &mut fresh, Some(&plan), &mut Scratch::default()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&shared),
            String::from_utf8_lossy(&fresh),
            "after {:?}, from {:?}",
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&second)
        );
    }
}

#[test]
fn rows_across_windows_mask_as_they_do_alone() {
    // The walker maps a body window by window (`scan::WINDOW_BYTES`): rows that straddle a
    // window's end, rows longer than a window, values over 64 bytes, escapes and whitespace
    // (which take the byte walk) must mask exactly as each row does alone.
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let columns = Column::from_rowtype_json(
        br#"[{"name":"NAME","type":"text"},{"name":"EMAIL","type":"text"},{"name":"CARD","type":"text"},
             {"name":"ssn","type":"text","nullable":true},{"name":"ID","type":"fixed","scale":0}]"#,
    )
    .unwrap();
    let plan = masker.plan(agents, &columns);
    let mut rows = Vec::new();
    for i in 0..2_000usize {
        let name = match i % 5 {
            0 => "Ada Lovelace".to_string(),
            1 => format!("{} Lovelace", "x".repeat(60 + i % 9)),
            2 => "x".repeat(i % 40),
            _ => format!("Grace Hopper {i}"),
        };
        let email = if i % 7 == 3 { format!("{}{i}@example.com", "y".repeat(70)) } else { format!("u{i}@example.com") };
        let card = if i % 3 == 0 { "4111111111111111".to_string() } else { format!("n{i}") };
        let ssn = if i % 4 == 0 { "null".to_string() } else { "\"123-45-6789\"".to_string() };
        let id = if i % 11 == 0 { "4532015112830366".to_string() } else { i.to_string() };
        let mut row = format!(r#"["{name}","{email}","{card}",{ssn},"{id}"]"#);
        match i % 97 {
            5 => row = row.replace("\",\"", "\" , \""),
            6 => row = row.replace("Grace", "Gr\\u0061ce"),
            7 => row = row.replace("Ada", &"A".repeat(20_000)),
            _ => {}
        }
        rows.push(row);
    }
    let mut whole = rows.join(",").into_bytes();
    assert!(whole.len() > 8 * crate::mask::scan::WINDOW_BYTES);
    let masked = masker.mask(agents, &mut whole, Some(&plan), &mut Scratch::default()).unwrap();
    let mut report = MaskReport::default();
    let mut alone = Vec::new();
    for row in &rows {
        let mut body = row.clone().into_bytes();
        report.add(&masker.mask(agents, &mut body, Some(&plan), &mut Scratch::default()).unwrap().report);
        alone.push(String::from_utf8(body).unwrap());
    }
    assert_eq!(String::from_utf8(whole).unwrap(), alone.join(","));
    assert_eq!(masked.report, report);
    assert!(report.by_dictionary > 0 && report.by_column_rule > 0 && report.by_detector.iter().sum::<u64>() > 0);
}

/// The one-value count (one kind, the usual case, or several) adds what the general count adds.
#[test]
fn counting_one_value_matches_the_general_count() {
    let kinds = [RuleKind::Column, RuleKind::Dictionary].into_iter().chain(DetectorKind::ALL.map(RuleKind::Detector));
    let bits: Vec<u32> = kinds.map(RuleKind::bit).collect();
    let sets =
        bits.iter().copied().chain(bits.windows(2).map(|w| w[0] | w[1])).chain([bits.iter().fold(0, |a, b| a | b)]);
    for set in sets {
        let (mut one, mut general) = (MaskReport::default(), MaskReport::default());
        one.count(set);
        one.count(set);
        general.count_many(set, 2);
        assert_eq!(one, general, "kinds {set:#b}");
        assert_eq!(one.values_masked, 2);
    }
}

/// Two profiles an identity has, masked as one (`Masker::set_name`): each profile's rules and
/// detectors see the values and names as they came, and where two mask the same thing the
/// stronger mask wins, in whichever order the policy lists them.
const TWO_PROFILES: &str = r#"
[masking.profiles.support]
columns = [{ name = "SALARY", mask = { style = "full" } }]
detectors.ssn = { mask = { style = "keep_last", keep = 4 } }
detectors.card = { mask = { style = "keep_last", keep = 4 } }

[masking.profiles.strict]
columns = [
  { name = "*SSN*", mask = { style = "null" } },
  { name = "SALARY", mask = { style = "null" } },
]
detectors.ssn = { mask = { style = "null" } }
detectors.card = false
detectors.email = false
dictionary = { words = ["Falcon"], mask = { style = "token", token = "[X]" } }
"#;

fn set(masker: &Masker, names: &[&str]) -> ProfileId {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    masker.profile(&Masker::set_name(&names)).unwrap()
}

#[test]
fn several_profiles_mask_as_one_with_the_stronger_mask() {
    let masker = masker(TWO_PROFILES);
    let both = set(&masker, &["support", "strict"]);
    assert_eq!(set(&masker, &["strict", "support", "strict"]), both, "a set: order and repeats do not matter");
    let alone = |name: &str, cell: &str| {
        let profile = masker.profile(name).unwrap();
        let mut body = json_chunk_bytes(&[&[Some(cell)]]);
        masker.mask(profile, &mut body, Some(&text_plan(&masker, profile, 1)), &mut Scratch::default()).unwrap();
        rows_of(&serde_json::from_slice(&[b"[", &body[..], b"]"].concat()).unwrap())[0][0].clone()
    };
    let merged = |cell: &str| {
        let mut body = json_chunk_bytes(&[&[Some(cell)]]);
        masker.mask(both, &mut body, Some(&text_plan(&masker, both, 1)), &mut Scratch::default()).unwrap();
        rows_of(&serde_json::from_slice(&[b"[", &body[..], b"]"].concat()).unwrap())[0][0].clone()
    };
    // An SSN: support keeps its last four, strict nulls the cell; together the cell is NULL
    // (masking with support first left no SSN for strict to find).
    let ssn = "SSN 123-45-6789, diagnosis F32.1";
    assert_eq!(alone("support", ssn), Some("SSN *******6789, diagnosis F32.1".into()));
    assert_eq!(alone("strict", ssn), None);
    assert_eq!(merged(ssn), None);
    // A card only support looks for, and a word only strict knows: both masked.
    let masked = merged("card 4111 1111 1111 1111 for Falcon").unwrap();
    assert!(masked.starts_with(&format!("card {}1111 for ", stars("4111 1111 1111 "))), "{masked}");
    assert!(masked.contains("[X]") && !masked.contains("Falcon"), "{masked}");

    // Column rules: the strongest of each profile's first match, from the names as they came.
    // Support masks quoted names (a pivoted value could be anything) and would hide 'ssn'
    // from strict's `*SSN*` if it went first.
    let rowtype = json!([
        {"name": "'ssn'", "type": "text", "nullable": true, "scale": null, "table": "T"},
        {"name": "SALARY", "type": "text", "nullable": true, "scale": null, "table": "T"},
    ]);
    let mut body = serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [["123456789", "100000"]],
        "total": 1, "returned": 1, "queryResultFormat": "json"}, "success": true}))
    .unwrap();
    let masked = masker.mask(both, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(decoded_rows(&body, "/data/rowset"), [[None, None]]);
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["data"]["rowtype"][0]["name"], "'***'");
    // The plan is the set's: it masks the set's chunks, and no single profile's.
    let plan = masked.plan.unwrap();
    let mut chunk = json_chunk_bytes(&[&[Some("987654321"), Some("250000")]]);
    masker.mask(both, &mut chunk, Some(&plan), &mut Scratch::default()).unwrap();
    assert_eq!(rows_of(&serde_json::from_slice(&[b"[", &chunk[..], b"]"].concat()).unwrap()), [[None, None]]);
    let strict = masker.profile("strict").unwrap();
    let mut chunk = json_chunk_bytes(&[&[Some("987654321"), Some("250000")]]);
    let err = masker.mask(strict, &mut chunk, Some(&plan), &mut Scratch::default());
    assert!(matches!(err, Err(MaskError::PlanMismatch)), "{err:?}");
    // A set naming a profile the spec lacks is no profile.
    assert!(masker.profile(&Masker::set_name(&["support".into(), "nobody".into()])).is_none());
}

/// A column rule writing stars, kept characters or a token into JSON text (VARIANT, OBJECT,
/// ARRAY) left a value no driver parses (the Node driver throws on the row): such columns get
/// a type-valid value of the same JSON kind instead, in JSON rowsets and in Arrow.
#[test]
fn column_rules_on_json_columns_keep_values_json() {
    let masker = masker(
        r#"
[masking.profiles.p]
columns = [
  { name = "V", mask = { style = "full" } },
  { name = "O", mask = { style = "keep_last", keep = 3 } },
  { name = "A", mask = { style = "token", token = "[X]" } },
]
"#,
    );
    let p = masker.profile("p").unwrap();
    let types = [("V", "variant", "{\"a\":1}"), ("O", "object", "{\"k\": \"secret\"}"), ("A", "array", "[1, 2, 3]")];
    let rowtype: Vec<Value> = types.iter().map(|(n, t, _)| json!({"name": n, "type": t, "nullable": true})).collect();
    let row: Vec<&str> = types.iter().map(|t| t.2).collect();
    let mut body = serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [row]}})).unwrap();
    masker.mask(p, &mut body, None, &mut Scratch::default()).unwrap();
    let rows = decoded_rows(&body, "/data/rowset");
    let got: Vec<&str> = rows[0].iter().map(|v| v.as_deref().unwrap().trim_end()).collect();
    assert_eq!(got, ["{}", "{}", "[]"]);
    for (value, (_, type_name, _)) in got.iter().zip(types) {
        assert!(decodes_as(type_name, value), "{type_name}: {value:?}");
    }

    // The same in an Arrow chunk, planned from the row type.
    let columns: Vec<Column> = Column::from_rowtype_json(&serde_json::to_vec(&rowtype).unwrap()).unwrap();
    let plan = masker.plan(p, &columns);
    let fields: Vec<Field> = types.iter().map(|(n, _, _)| Field::new(*n, DataType::Utf8, true)).collect();
    let arrays: Vec<ArrayRef> = types.iter().map(|t| Arc::new(StringArray::from(vec![t.2])) as ArrayRef).collect();
    let mut stream = ipc_stream(&RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap());
    masker.mask(p, &mut stream, Some(&plan), &mut Scratch::default()).unwrap();
    let batches = read_arrow(&stream);
    for (i, expected) in ["{}", "{}", "[]"].iter().enumerate() {
        let column = batches[0].column(i).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(column.value(0).trim_end(), *expected);
    }
}

/// A column one profile's rule masks whole (keeping its last four), which another profile
/// without a rule for it would scan and null (its SSN detector nulls): merged, the column is
/// masked at least as strongly as the scanning profile masks what it finds.
#[test]
fn a_rule_in_one_profile_does_not_spare_a_column_another_would_scan() {
    let masker = masker(
        r#"
[masking.profiles.support]
columns = [{ name = "TAX_ID", mask = { style = "keep_last", keep = 4 } }]

[masking.profiles.strict]
detectors.ssn = { mask = { style = "null" } }
"#,
    );
    let both = set(&masker, &["support", "strict"]);
    let rowtype = json!([
        {"name": "TAX_ID", "type": "text", "nullable": true, "table": "T"},
        {"name": "NOTE", "type": "text", "nullable": true, "table": "T"},
    ]);
    let answer = |row: Value| {
        serde_json::to_vec(&json!({"data": {"rowtype": rowtype, "rowset": [row]}, "success": true})).unwrap()
    };
    let mut body = answer(json!(["123-45-6789", "no number here"]));
    masker.mask(both, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(decoded_rows(&body, "/data/rowset"), [[None, Some("no number here".to_owned())]]);
    // A column no profile has a rule for is scanned by the merged detectors as before.
    let mut body = answer(json!(["x", "call 123-45-6789"]));
    masker.mask(both, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(decoded_rows(&body, "/data/rowset")[0][1], None);
}

/// A `keep_last` mask keeping as many characters as a match or a value has would pass it in
/// clear while counting it masked: it keeps at most half of them.
#[test]
fn keep_last_never_leaves_a_match_or_a_value_whole() {
    let masker = masker(
        r#"
[masking.profiles.p]
columns = [{ name = "PIN", mask = { style = "keep_last", keep = 4 } }]
detectors.ssn = { mask = { style = "keep_last", keep = 11 } }
"#,
    );
    let p = masker.profile("p").unwrap();
    let rowtype = json!([
        {"name": "PIN", "type": "text", "nullable": true, "scale": null, "table": "T"},
        {"name": "NOTE", "type": "text", "nullable": true, "scale": null, "table": "T"},
    ]);
    let mut body = serde_json::to_vec(&json!({"data": {"rowtype": rowtype,
        "rowset": [["1234", "ssn 123-45-6789"], ["987654321", "none"]],
        "total": 2, "returned": 2, "queryResultFormat": "json"}, "success": true}))
    .unwrap();
    let masked = masker.mask(p, &mut body, None, &mut Scratch::default()).unwrap();
    assert_eq!(
        decoded_rows(&body, "/data/rowset"),
        [
            [Some("**34".to_string()), Some("ssn ******-6789".to_string())],
            [Some("*****4321".to_string()), Some("none".to_string())]
        ]
    );
    assert_eq!(masked.report.by_detector[DetectorKind::Ssn.index()], 1);
}

/// A card number nested in a structured column (`ARRAY(NUMBER)`) is found as a column's own
/// is (the JSON form of the same list is read as text); other numbers stay as they were.
#[test]
fn card_numbers_nested_in_arrow_lists_are_masked() {
    let masker = masker(POLICY);
    let agents = masker.profile("agents").unwrap();
    let card = 4_111_111_111_111_111i64;
    let mut stream = nested_numbers_stream(&[&[7, card], &[12_345, -3]]);
    let columns = [Column {
        name: "NUMS".into(),
        table: Some("T".into()),
        schema: None,
        database: None,
        type_name: "array".into(),
        scale: None,
        nullable: true,
    }];
    let plan = masker.plan(agents, &columns);
    let masked = masker.mask(agents, &mut stream, Some(&plan), &mut Scratch::default()).unwrap();
    assert_eq!(masked.report.values_masked, 1);
    let lists = nested_numbers(&stream);
    assert_eq!(lists[1], [12_345, -3]);
    assert_eq!(lists[0][0], 7);
    assert_ne!(lists[0][1], card, "a nested card number passed");
}

/// Found by the `mask_json` fuzz target: masking is idempotent on error messages too. The
/// e-mail's token ends in `]`, which lets the apostrophe after it open a quoted value on a
/// second pass where the `m` of `.com` kept it from doing so on the first; the message is
/// now masked until a pass changes nothing.
#[test]
fn an_error_message_masked_again_is_unchanged() {
    let spec = r#"{"profiles": {"agents": {
        "columns": [{"name": "ssn", "mask": {"style": "null"}}],
        "detectors": {"email": {"mask": {"style": "token", "token": "[EMAIL]"}}}}}}"#;
    let masker = Masker::new(&serde_json::from_str::<MaskingSpec>(spec).unwrap()).unwrap();
    let agents = masker.profile("agents").unwrap();
    let text = r#"{"data": {"queries": [{"id": "q", "status": "FAILED", "errorMessage": "Numeric v@example.com' ise.com' is not recognized"}]}, "success": true}"#;
    let mut once = text.as_bytes().to_vec();
    masker.mask(agents, &mut once, None, &mut Scratch::default()).unwrap();
    let mut twice = once.clone();
    masker.mask(agents, &mut twice, None, &mut Scratch::default()).unwrap();
    assert_eq!(String::from_utf8_lossy(&twice), String::from_utf8_lossy(&once));
    let answer: Value = serde_json::from_slice(&once).unwrap();
    let message = answer["data"]["queries"][0]["errorMessage"].as_str().unwrap();
    assert!(!message.contains("example.com") && !message.contains("ise.com"), "{message}");
}
