//! Fixtures for the masking tests: a policy, realistic Snowflake answers, Arrow streams built
//! with arrow-rs (Snowflake field metadata, timestamp structs), and decoding helpers.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, DictionaryArray, Float64Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Fields, Schema};
use serde_json::{Value, json};

use crate::mask::{Column, ColumnPlan, Masker, MaskingSpec, ProfileId};

/// The policy most tests use: `agents` masks; `open` has every detector off and no rules.
pub(crate) const POLICY: &str = r#"
[masking.profiles.agents.detectors]
card = { mask = { style = "keep_last", keep = 4 } }

[masking.profiles.agents.dictionary]
words = ["Lovelace", "Project Falcon"]
mask = { style = "token", token = "[NAME]" }

[[masking.profiles.agents.columns]]
name = "ssn"
mask = { style = "null" }

[[masking.profiles.agents.columns]]
name = "AMOUNT"
table = "CUSTOMERS"
mask = { style = "type_valid" }

[[masking.profiles.agents.columns]]
name = "*_AT"
mask = { style = "type_valid" }

[masking.profiles.open.detectors]
card = false
email = false
ssn = false
iban = false
aws_access_key = false
gcp_api_key = false
github_token = false
slack_token = false
jwt = false
pem_private_key = false
"#;

/// Raw values that must never survive masking under `agents`.
pub(crate) const CANARIES: &[&str] = &[
    "ada.lovelace42@example.com",
    "4111 1111 1111 1111",
    "Lovelace",
    "123-45-6789",
    "4532015112830366",
    "grace@navy.mil",
    "alan@example.org",
    "alan\\u0040example",
    "5555-5555-5555-4444",
    "12345.67",
    "AKIAIOSFODNN7EXAMPLE",
    "378282246310005",
    "078-05-1120",
    "ewd@utexas.edu",
];

pub(crate) fn masker(text: &str) -> Masker {
    #[derive(serde::Deserialize)]
    struct File {
        masking: MaskingSpec,
    }
    let file: File = toml::from_str(text).unwrap();
    Masker::new(&file.masking).unwrap()
}

pub(crate) fn stars(text: &str) -> String {
    "*".repeat(text.len())
}

pub(crate) fn assert_no_canary(bytes: &[u8]) {
    for canary in CANARIES {
        assert!(memchr::memmem::find(bytes, canary.as_bytes()).is_none(), "canary {canary:?} survived");
    }
}

/// The customer rows, as raw JSON (so that escapes are exactly as written).
pub(crate) const CUSTOMER_ROWS: [&str; 4] = [
    r#"["1","Ada Lovelace","ada.lovelace42@example.com","4111 1111 1111 1111",null,"12345.67","18262","note: call 4532015112830366 or mail grace@navy.mil"]"#,
    r#"["3","Grace Hopper",null,"no card",null,"0.01","18263",null]"#,
    r#"["2","Alan Turing","alan@example.org","5555-5555-5555-4444","123-45-6789","99.10","18300","mail \"alan\u0040example.org\" \u00e9"]"#,
    r#"["4","Edsger Dijkstra","ewd@utexas.edu","378282246310005","078-05-1120","1.00","18400","AKIAIOSFODNN7EXAMPLE"]"#,
];

pub(crate) fn customer_rowtype() -> Value {
    let column = |name: &str, ty: &str, scale: Option<u32>, nullable: bool| {
        json!({"name": name, "database": "TESTDB", "schema": "PUBLIC", "table": "CUSTOMERS", "type": ty,
               "scale": scale, "precision": scale.map(|_| 38), "length": null, "byteLength": null,
               "nullable": nullable, "collation": null})
    };
    json!([
        column("ID", "fixed", Some(0), false),
        column("NAME", "text", None, false),
        column("EMAIL", "text", None, true),
        column("CARD", "text", None, false),
        column("SSN", "text", None, false),
        column("AMOUNT", "fixed", Some(2), false),
        column("CREATED", "date", None, true),
        column("NOTES", "text", None, true),
    ])
}

pub(crate) fn customer_row(i: usize) -> Value {
    serde_json::from_str(CUSTOMER_ROWS[i]).unwrap()
}

/// A query answer with rows Ada, Alan, Grace (in that order).
pub(crate) fn query_answer_json() -> Vec<u8> {
    let rowtype = serde_json::to_string(&customer_rowtype()).unwrap();
    format!(
        r#"{{"data":{{"parameters":[{{"name":"TIMEZONE","value":"UTC"}}],"rowtype":{rowtype},"rowset":[{},{},{}],"total":3,"returned":3,"queryId":"01b2c3d4-0000-4000-8000-000000000001","queryResultFormat":"json"}},"code":null,"message":null,"success":true}}"#,
        CUSTOMER_ROWS[0], CUSTOMER_ROWS[2], CUSTOMER_ROWS[1]
    )
    .into_bytes()
}

pub(crate) fn decoded_rows(body: &[u8], pointer: &str) -> Vec<Vec<Option<String>>> {
    let value: Value = serde_json::from_slice(body).unwrap();
    rows_of(value.pointer(pointer).unwrap())
}

pub(crate) fn rows_of(rows: &Value) -> Vec<Vec<Option<String>>> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_str().map(str::to_owned)).collect())
        .collect()
}

pub(crate) fn chunk_rows(body: &[u8]) -> Vec<Vec<Option<String>>> {
    let mut wrapped = b"[".to_vec();
    wrapped.extend_from_slice(body);
    wrapped.push(b']');
    rows_of(&serde_json::from_slice(&wrapped).unwrap())
}

pub(crate) fn json_chunk_bytes(rows: &[&[Option<&str>]]) -> Vec<u8> {
    rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect::<Vec<_>>().join(",").into_bytes()
}

pub(crate) fn text_column(name: &str) -> Column {
    Column {
        name: name.into(),
        table: Some("T".into()),
        schema: None,
        database: None,
        type_name: "text".into(),
        scale: None,
        nullable: true,
    }
}

pub(crate) fn text_plan(masker: &Masker, profile: ProfileId, n: usize) -> ColumnPlan {
    let columns: Vec<Column> = (0..n).map(|i| text_column(&format!("C{i}"))).collect();
    masker.plan(profile, &columns)
}

/// Whether a JSON cell decodes under a Snowflake type the way drivers decode it.
pub(crate) fn decodes_as(type_name: &str, value: &str) -> bool {
    let number = |v: &str| v.parse::<f64>().is_ok();
    match type_name {
        "fixed" => number(value) && value.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'),
        "real" | "date" | "time" | "timestamp_ntz" | "timestamp_ltz" => number(value),
        "timestamp_tz" => {
            let mut parts = value.split(' ');
            let (Some(seconds), Some(offset), None) = (parts.next(), parts.next(), parts.next()) else { return false };
            number(seconds) && offset.parse::<i32>().is_ok_and(|o| (0..=2880).contains(&o))
        }
        "boolean" => matches!(value, "0" | "1" | "true" | "false" | "TRUE" | "FALSE"),
        "binary" => value.len().is_multiple_of(2) && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "variant" => serde_json::from_str::<Value>(value).is_ok(),
        // Structured and semi-structured objects and arrays stay what they were.
        "object" => serde_json::from_str::<Value>(value).is_ok_and(|v| v.is_object()),
        "array" => serde_json::from_str::<Value>(value).is_ok_and(|v| v.is_array()),
        _ => true,
    }
}

fn meta(logical: &str, scale: u32) -> HashMap<String, String> {
    HashMap::from([
        ("logicalType".to_string(), logical.to_string()),
        ("precision".to_string(), "38".to_string()),
        ("scale".to_string(), scale.to_string()),
        ("charLength".to_string(), "0".to_string()),
    ])
}

fn customer_name(i: usize) -> String {
    const FIRST: [&str; 5] = ["Ada", "Grace", "Alan", "Edsger", "Barbara"];
    const LAST: [&str; 5] = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov"];
    format!("{} {}", FIRST[i % 5], LAST[(i / 5 + i) % 5])
}

/// A Luhn-valid 16-digit number derived from `i`.
pub(crate) fn card_number(i: usize) -> String {
    let mut digits: Vec<u8> = format!("4{:014}", (i as u64).wrapping_mul(7_919_274_347) % 100_000_000_000_000)
        .bytes()
        .map(|b| b - b'0')
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &d)| {
            let d = u32::from(d);
            if k % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    digits.push(((10 - sum % 10) % 10) as u8);
    digits.into_iter().map(|d| char::from(b'0' + d)).collect()
}

/// The columns of [`arrow_customers`], as its row type would describe them.
pub(crate) fn customer_rowtype_arrow() -> Value {
    let column = |name: &str, ty: &str, scale: u32, nullable: bool| json!({"name": name, "table": "CUSTOMERS", "type": ty, "scale": scale, "nullable": nullable});
    json!([
        column("ID", "fixed", 0, false),
        column("NAME", "text", 0, false),
        column("EMAIL", "text", 0, true),
        column("CARD", "text", 0, false),
        column("SSN", "text", 0, true),
        column("AMOUNT", "fixed", 2, false),
        column("CREATED", "date", 0, true),
        column("ACTIVE", "boolean", 0, true),
        column("SCORE", "real", 0, true),
        column("UPDATED_AT", "timestamp_ntz", 9, true),
        column("SEEN", "timestamp_tz", 9, true),
        column("CARD_NUM", "fixed", 0, true),
        column("BLOB", "binary", 0, true),
        column("TAGS", "array", 0, true),
    ])
}

/// An Arrow IPC stream of `n` customers shaped like Snowflake's, and its columns.
pub(crate) fn arrow_customers(n: usize) -> (Vec<u8>, Vec<Column>) {
    let ts_fields = |tz: bool| {
        let mut fields =
            vec![Field::new("epoch", DataType::Int64, false), Field::new("fraction", DataType::Int32, false)];
        if tz {
            fields.push(Field::new("timezone", DataType::Int32, false));
        }
        Fields::from(fields)
    };
    let list_field = Arc::new(Field::new("item", DataType::Utf8, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("ID", DataType::Int64, false).with_metadata(meta("FIXED", 0)),
        Field::new("NAME", DataType::Utf8, false).with_metadata(meta("TEXT", 0)),
        Field::new("EMAIL", DataType::Utf8, true).with_metadata(meta("TEXT", 0)),
        Field::new("CARD", DataType::Utf8, false).with_metadata(meta("TEXT", 0)),
        Field::new("SSN", DataType::Utf8, true).with_metadata(meta("TEXT", 0)),
        Field::new("AMOUNT", DataType::Int64, false).with_metadata(meta("FIXED", 2)),
        Field::new("CREATED", DataType::Date32, true).with_metadata(meta("DATE", 0)),
        Field::new("ACTIVE", DataType::Boolean, true).with_metadata(meta("BOOLEAN", 0)),
        Field::new("SCORE", DataType::Float64, true).with_metadata(meta("REAL", 0)),
        Field::new("UPDATED_AT", DataType::Struct(ts_fields(false)), true).with_metadata(meta("TIMESTAMP_NTZ", 9)),
        Field::new("SEEN", DataType::Struct(ts_fields(true)), true).with_metadata(meta("TIMESTAMP_TZ", 9)),
        Field::new("CARD_NUM", DataType::Int64, true).with_metadata(meta("FIXED", 0)),
        Field::new("BLOB", DataType::Binary, true).with_metadata(meta("BINARY", 0)),
        Field::new("TAGS", DataType::List(list_field.clone()), true).with_metadata(meta("ARRAY", 0)),
    ]));
    let ids: Vec<i64> = (0..n as i64).collect();
    let names: Vec<String> = (0..n).map(customer_name).collect();
    let emails: Vec<String> = (0..n).map(|i| format!("customer.{i}@example.com")).collect();
    let cards: Vec<String> = (0..n).map(card_number).collect();
    let ssns: Vec<Option<String>> = (0..n)
        .map(|i| (i % 5 != 3).then(|| format!("{:03}-{:02}-{:04}", 100 + i % 500, 10 + i % 80, 1000 + i)))
        .collect();
    let epochs: Vec<i64> = (0..n as i64).map(|i| 1_700_000_000 + i * 3_600).collect();
    let fractions: Vec<i32> = (0..n as i32).map(|i| i * 1_000).collect();
    let timestamp = |tz: bool| -> ArrayRef {
        let mut arrays: Vec<ArrayRef> =
            vec![Arc::new(Int64Array::from(epochs.clone())), Arc::new(Int32Array::from(fractions.clone()))];
        if tz {
            arrays.push(Arc::new(Int32Array::from(vec![1440 + 120; n])));
        }
        Arc::new(StructArray::new(ts_fields(tz), arrays, None))
    };
    let mut tags = ListBuilder::new(StringBuilder::new()).with_field(list_field);
    for i in 0..n {
        tags.values().append_value(format!("tag{i}"));
        if i % 2 == 0 {
            tags.values().append_value(format!("owner{i}@corp.example"));
        }
        tags.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(StringArray::from(names)),
        Arc::new(StringArray::from(emails)),
        Arc::new(StringArray::from(cards.clone())),
        Arc::new(StringArray::from(ssns)),
        Arc::new(Int64Array::from(ids.iter().map(|i| 1_234_567 + i * 101).collect::<Vec<_>>())),
        Arc::new(Date32Array::from(ids.iter().map(|i| 18_262 + *i as i32).collect::<Vec<_>>())),
        Arc::new(BooleanArray::from(ids.iter().map(|i| i % 3 == 0).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(ids.iter().map(|i| *i as f64 * 1.5).collect::<Vec<_>>())),
        timestamp(false),
        timestamp(true),
        Arc::new(Int64Array::from(
            (0..n).map(|i| if i % 2 == 0 { cards[i].parse::<i64>().ok() } else { Some(i as i64) }).collect::<Vec<_>>(),
        )),
        Arc::new(BinaryArray::from_iter_values((0..n).map(|i| vec![i as u8, 0xAB, 0xCD]))),
        Arc::new(tags.finish()),
    ];
    let out = ipc_stream(&RecordBatch::try_new(schema, columns).unwrap());
    let columns = Column::from_rowtype_json(&serde_json::to_vec(&customer_rowtype_arrow()).unwrap()).unwrap();
    (out, columns)
}

pub(crate) fn read_arrow(bytes: &[u8]) -> Vec<RecordBatch> {
    StreamReader::try_new(Cursor::new(bytes.to_vec()), None).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

fn strings(array: &ArrayRef) -> Vec<Option<String>> {
    array.as_any().downcast_ref::<StringArray>().unwrap().iter().map(|s| s.map(str::to_owned)).collect()
}

fn ints(array: &ArrayRef) -> Vec<Option<i64>> {
    array.as_any().downcast_ref::<Int64Array>().unwrap().iter().collect()
}

/// Checks [`arrow_customers`] masked under `agents`, column by column, against the original.
pub(crate) fn check_masked_customers(after: &[RecordBatch], before: &[RecordBatch]) {
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(before) {
        assert_eq!(a.num_rows(), b.num_rows());
        assert_eq!(ints(a.column(0)), ints(b.column(0)), "ID unchanged");
        let names: Vec<Option<String>> =
            strings(b.column(1)).into_iter().map(|s| s.map(|s| s.replace("Lovelace", "[NAME]  "))).collect();
        assert_eq!(strings(a.column(1)), names, "NAME: the dictionary token, padded");
        for (masked, original) in strings(a.column(2)).iter().zip(strings(b.column(2))) {
            assert_eq!(masked.as_deref(), original.map(|o| stars(&o)).as_deref(), "EMAIL");
        }
        for (masked, original) in strings(a.column(3)).iter().zip(strings(b.column(3))) {
            let original = original.unwrap();
            assert_eq!(masked.as_deref().unwrap(), format!("{}{}", stars(&original[4..]), &original[12..]), "CARD");
        }
        assert_eq!(a.column(4).null_count(), a.num_rows(), "SSN: NULL");
        assert!(ints(a.column(5)).iter().all(|v| *v == Some(0)), "AMOUNT: zero");
        assert_eq!(a.column(6).as_ref(), b.column(6).as_ref(), "CREATED unchanged");
        assert_eq!(a.column(7).as_ref(), b.column(7).as_ref(), "ACTIVE unchanged");
        assert_eq!(a.column(8).as_ref(), b.column(8).as_ref(), "SCORE unchanged");
        let updated = a.column(9).as_any().downcast_ref::<StructArray>().unwrap();
        assert!(ints(updated.column(0)).iter().all(|v| *v == Some(0)), "UPDATED_AT epoch");
        let fractions = updated.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
        assert!(fractions.iter().all(|v| v == Some(0)), "UPDATED_AT fraction");
        assert_eq!(a.column(10).as_ref(), b.column(10).as_ref(), "SEEN unchanged");
        for ((masked, original), i) in ints(a.column(11)).into_iter().zip(ints(b.column(11))).zip(0..) {
            let expected = if i % 2 == 0 { Some(0) } else { original };
            assert_eq!(masked, expected, "CARD_NUM row {i}");
        }
        assert_eq!(a.column(12).as_ref(), b.column(12).as_ref(), "BLOB unchanged");
        let tags = a.column(13).as_any().downcast_ref::<ListArray>().unwrap();
        let original_tags = b.column(13).as_any().downcast_ref::<ListArray>().unwrap();
        for (masked, original) in strings(tags.values()).iter().zip(strings(original_tags.values())) {
            let original = original.unwrap();
            let expected = if original.contains('@') { stars(&original) } else { original };
            assert_eq!(masked.as_deref(), Some(expected.as_str()), "TAGS");
        }
    }
}

/// Checks the fakesnow fixture masked under `agents`.
pub(crate) fn check_fakesnow_customers(after: &[RecordBatch], before: &[RecordBatch]) {
    let (a, b) = (&after[0], &before[0]);
    assert_eq!(
        strings(a.column(1)),
        [Some("Ada [NAME]  ".into()), Some("Alan Turing".into()), Some("Grace Hopper".into())]
    );
    assert_eq!(
        strings(a.column(2)),
        [Some(stars("ada.lovelace42@example.com")), Some(stars("alan@example.org")), None]
    );
    assert_eq!(
        strings(a.column(3)),
        [
            Some(format!("{}1111", stars("4111 1111 1111 "))),
            Some(format!("{}4444", stars("5555-5555-5555-"))),
            Some("no card".into())
        ]
    );
    let amounts = a.column(4).as_any().downcast_ref::<arrow_array::Decimal128Array>().unwrap();
    assert!(amounts.iter().all(|v| v == Some(0)), "AMOUNT: zero (its rule applies: the chunk names no table)");
    assert_eq!(a.column(5).as_ref(), b.column(5).as_ref(), "CREATED unchanged");
    let updated = a.column(6).as_any().downcast_ref::<StructArray>().unwrap();
    assert!(ints(updated.column(0)).iter().flatten().all(|v| *v == 0), "UPDATED_AT epoch zero");
    assert_eq!(a.column(7).as_ref(), b.column(7).as_ref(), "SEEN unchanged");
}

/// Where the first record batch's field nodes (16 bytes each: length, null count) and buffer
/// descriptors (16 bytes each: offset, length) lie in an Arrow stream written with
/// continuation markers.
pub(crate) fn record_batch_vectors_at(stream: &[u8]) -> (usize, usize) {
    let mut pos = 0;
    loop {
        let word = |at: usize| u32::from_le_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(word(pos), u32::MAX as usize, "a continuation marker");
        let meta = pos + 8..pos + 8 + word(pos + 4);
        let message = arrow_ipc::root_as_message(&stream[meta.clone()]).unwrap();
        if let Some(batch) = message.header_as_record_batch() {
            let at = |bytes: &[u8]| bytes.as_ptr() as usize - stream.as_ptr() as usize;
            return (at(batch.nodes().unwrap().bytes()), at(batch.buffers().unwrap().bytes()));
        }
        pos = meta.end + usize::try_from(message.bodyLength()).unwrap();
    }
}

/// A stream with a dictionary-encoded column, which the masker refuses.
pub(crate) fn arrow_dictionary_stream() -> Vec<u8> {
    let values: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
    let schema = Arc::new(Schema::new(vec![Field::new("D", values.data_type().clone(), false)]));
    ipc_stream(&RecordBatch::try_new(schema, vec![Arc::new(values) as ArrayRef]).unwrap())
}

/// An Arrow stream of one nullable Utf8 column `C0` holding `values`.
pub(crate) fn text_stream(values: &[&str]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new("C0", DataType::Utf8, true)]));
    let column: ArrayRef = Arc::new(StringArray::from_iter_values(values.iter().copied()));
    ipc_stream(&RecordBatch::try_new(schema, vec![column]).unwrap())
}

/// An Arrow stream of one structured column, `ARRAY(NUMBER(38,0))`: a list of whole numbers
/// whose item field says FIXED, scale 0 (in the first list, a Luhn-valid card number).
pub(crate) fn nested_numbers_stream(lists: &[&[i64]]) -> Vec<u8> {
    let item = Arc::new(Field::new("item", DataType::Int64, true).with_metadata(meta("FIXED", 0)));
    let mut offsets = vec![0i32];
    let mut values = Vec::new();
    for list in lists {
        values.extend_from_slice(list);
        offsets.push(values.len() as i32);
    }
    let list = ListArray::new(
        item.clone(),
        arrow_buffer::OffsetBuffer::new(offsets.into()),
        Arc::new(Int64Array::from(values)),
        None,
    );
    let schema =
        Arc::new(Schema::new(vec![Field::new("NUMS", DataType::List(item), true).with_metadata(meta("ARRAY", 0))]));
    ipc_stream(&RecordBatch::try_new(schema, vec![Arc::new(list) as ArrayRef]).unwrap())
}

/// The whole numbers of [`nested_numbers_stream`]'s column, list by list.
pub(crate) fn nested_numbers(stream: &[u8]) -> Vec<Vec<i64>> {
    let batches = read_arrow(stream);
    let list = batches[0].column(0).as_any().downcast_ref::<ListArray>().unwrap();
    (0..list.len())
        .map(|i| {
            let values = list.value(i);
            values.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
        })
        .collect()
}

/// An Arrow IPC stream of one record batch.
pub(crate) fn ipc_stream(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    out
}
