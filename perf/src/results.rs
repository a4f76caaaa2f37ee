//! The SQL vocabulary the double understands, the fake tables behind it, and the result
//! bodies it answers with (built once at startup, with only the query id spliced per query).
//!
//! # Vocabulary
//! The SQL text is lowercased and its whitespace collapsed, then:
//! - contains `no_such_table` → the SQL compilation error 002003 (42S02);
//! - contains `from medium` → the MEDIUM table (see [`MEDIUM_ROWS`]);
//! - contains `from small` → the SMALL table (see [`SMALL_ROWS`]);
//! - contains `from arrow_small` / `from arrow_medium` → SMALL / MEDIUM in Arrow format
//!   (`queryResultFormat:"arrow"`, `rowsetBase64`: one IPC stream with Snowflake's field
//!   metadata, see [`crate::corpus`]);
//! - contains `from chunked_json` / `from chunked_arrow` → the CHUNKED table (several MB,
//!   shaped by [`crate::corpus::ChunkLayout`]): the first rows inline, then `data.chunks[]`
//!   downloaded from the double under SSE-C headers (see [`crate::corpus`]);
//! - otherwise → one column named `1` (FIXED) with one row `["1"]`, or, when the request
//!   carries bindings, one column per binding (named by its key, in key order) and one row
//!   echoing the bound values, so tests can see that bindings arrived;
//! - contains `slow` (in addition to the above) → the query first answers "in progress"
//!   and its result is ready only after `polls_before_ready` polls.
//!
//! SMALL and MEDIUM share one schema of realistic, fake, sensitive-looking columns: `ID`
//! (FIXED), `NAME`, `EMAIL`, `CARD` (Luhn-valid 16-digit numbers), `SSN` (null in every
//! seventh row), `AMOUNT` (FIXED with scale 2) and `CREATED` (DATE, as days since the
//! epoch). Values come from a fixed seed, so every run and every double serve the same rows:
//! the corpus is fixed (a test pins a digest of every body), and only its shape is configurable.
//!
//! The SQL API answers the Arrow and chunked names with the same rows as JSON (SMALL, MEDIUM,
//! MEDIUM), since it has no Arrow or chunk format of its own.

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

/// Rows in the SMALL table: its rowset is about 1 KB of JSON.
pub const SMALL_ROWS: usize = 10;
/// Rows in the MEDIUM table: its query response is about 18 KB of JSON.
pub const MEDIUM_ROWS: usize = 160;
/// The database every fake table lives in, also reported as `finalDatabaseName`.
pub const DATABASE: &str = "TESTDB";
/// The schema every fake table lives in, also reported as `finalSchemaName`.
pub const SCHEMA: &str = "PUBLIC";
/// The warehouse reported as `finalWarehouseName`.
pub const WAREHOUSE: &str = "TEST_WH";
/// The role reported as `finalRoleName`.
pub const ROLE: &str = "SYSADMIN";
/// The message of the SQL compilation error the vocabulary's `no_such_table` triggers.
pub const NO_SUCH_TABLE_MESSAGE: &str =
    "SQL compilation error:\nObject 'NO_SUCH_TABLE' does not exist or not authorized.";

/// A stand-in id, spliced out of templates and replaced per query. It is a valid UUID of
/// the same length as any other, so the splice never moves a byte.
const ID_PLACEHOLDER: &str = "00000000-0000-4000-8000-000000000000";
/// The seed of the fake rows. Changing it changes every expected value in tests.
const ROWS_SEED: u64 = 0x5EED_0F5A_0F1A_4E00;
/// How many partitions the SQL API splits MEDIUM into, so partition fetches get exercised.
const MEDIUM_PARTITIONS: usize = 2;

/// What a SQL text asks for, per the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The rows or error the query ends with.
    pub outcome: Outcome,
    /// Whether the query first answers "in progress" for a number of polls.
    pub slow: bool,
}

/// How a query ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The 002003 compilation error.
    NoSuchTable,
    /// The SMALL table.
    Small,
    /// The MEDIUM table.
    Medium,
    /// One row: `1`, or the bindings echoed.
    One,
    /// SMALL in Arrow format.
    ArrowSmall,
    /// MEDIUM in Arrow format.
    ArrowMedium,
    /// The chunked result, JSON chunks.
    ChunkedJson,
    /// The chunked result, Arrow chunks.
    ChunkedArrow,
    /// `GET @stage ...`: the driver is sent to the stage with its credentials (driver API only).
    StageDownload,
}

/// Applies the vocabulary to a SQL text.
pub fn plan(sql: &str) -> Plan {
    let normalized = sql.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let outcome = if normalized.starts_with("get @") {
        Outcome::StageDownload
    } else if normalized.contains("no_such_table") {
        Outcome::NoSuchTable
    } else if normalized.contains("from chunked_json") {
        Outcome::ChunkedJson
    } else if normalized.contains("from chunked_arrow") {
        Outcome::ChunkedArrow
    } else if normalized.contains("from arrow_small") {
        Outcome::ArrowSmall
    } else if normalized.contains("from arrow_medium") {
        Outcome::ArrowMedium
    } else if normalized.contains("from medium") {
        Outcome::Medium
    } else if normalized.contains("from small") {
        Outcome::Small
    } else {
        Outcome::One
    };
    Plan { outcome, slow: normalized.contains("slow") }
}

/// A column as Snowflake describes it in `rowtype` / `rowType`.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Snowflake's lowercase type name (`fixed`, `text`, `date`...).
    pub type_name: &'static str,
    /// Scale for `fixed`.
    pub scale: Option<u32>,
    /// Precision for `fixed`.
    pub precision: Option<u32>,
    /// Length in characters for `text`.
    pub length: Option<u64>,
    /// Whether the column may hold nulls.
    pub nullable: bool,
}

impl Column {
    fn fixed(name: &str, precision: u32, scale: u32, nullable: bool) -> Column {
        Column {
            name: name.into(),
            type_name: "fixed",
            scale: Some(scale),
            precision: Some(precision),
            length: None,
            nullable,
        }
    }

    fn text(name: &str, length: u64, nullable: bool) -> Column {
        Column { name: name.into(), type_name: "text", scale: None, precision: None, length: Some(length), nullable }
    }

    fn date(name: &str) -> Column {
        Column { name: name.into(), type_name: "date", scale: None, precision: None, length: None, nullable: true }
    }

    fn describe(&self, table: &str) -> Value {
        json!({
            "name": self.name,
            "database": DATABASE,
            "schema": SCHEMA,
            "table": table,
            "type": self.type_name,
            "scale": self.scale,
            "precision": self.precision,
            "length": self.length,
            // Snowflake stores text as UTF-8 and reports 4 bytes per character.
            "byteLength": self.length.map(|n| n * 4),
            "nullable": self.nullable,
            "collation": null,
        })
    }
}

/// A result: columns and rows of JSON-format values (strings, or null).
#[derive(Debug, Clone)]
pub struct Table {
    /// The table name reported in `rowtype` ("" for expressions).
    pub name: String,
    /// The columns.
    pub columns: Vec<Column>,
    /// The rows, each value as Snowflake's JSON format writes it.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub(crate) fn rowtype(&self) -> Value {
        Value::Array(self.columns.iter().map(|c| c.describe(&self.name)).collect())
    }

    pub(crate) fn rowset(rows: &[Vec<Option<String>>]) -> Value {
        Value::Array(rows.iter().map(|r| Value::Array(r.iter().map(|v| json!(v)).collect())).collect())
    }
}

/// SplitMix64: a tiny deterministic generator, enough for fake rows.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const FIRST_NAMES: [&str; 16] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "Tim",
    "Katherine",
    "John",
    "Hedy",
    "Linus",
];
const LAST_NAMES: [&str; 16] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Berners-Lee",
    "Johnson",
    "McCarthy",
    "Lamarr",
    "Torvalds",
];
const MAIL_DOMAINS: [&str; 4] = ["example.com", "example.org", "mail.example.net", "corp.example"];

/// The Luhn check digit for a string of decimal digits.
fn luhn_check_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            // The check digit will sit to the right, so the rightmost payload digit doubles.
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Whether a string of digits passes the Luhn check, as card numbers do.
pub fn luhn_valid(number: &str) -> bool {
    match number.len().checked_sub(1) {
        Some(n) if n > 0 && number.bytes().all(|b| b.is_ascii_digit()) => {
            luhn_check_digit(&number[..n]) == number.as_bytes()[n] - b'0'
        }
        _ => false,
    }
}

/// The fake customer table the vocabulary calls SMALL or MEDIUM, with `rows` rows.
pub fn customers(name: &str, rows: usize) -> Table {
    let columns = vec![
        Column::fixed("ID", 38, 0, false),
        Column::text("NAME", 100, false),
        Column::text("EMAIL", 256, false),
        Column::text("CARD", 19, false),
        Column::text("SSN", 11, true),
        Column::fixed("AMOUNT", 12, 2, false),
        Column::date("CREATED"),
    ];
    let mut rng = SplitMix64(ROWS_SEED);
    let rows = (1..=rows)
        .map(|id| {
            let first = rng.pick(&FIRST_NAMES);
            let last = rng.pick(&LAST_NAMES);
            let email = format!(
                "{}.{}{}@{}",
                first.to_lowercase(),
                last.to_lowercase(),
                rng.below(100),
                rng.pick(&MAIL_DOMAINS)
            );
            let mut card = String::from("4");
            for _ in 0..14 {
                card.push(char::from(b'0' + rng.below(10) as u8));
            }
            card.push(char::from(b'0' + luhn_check_digit(&card)));
            let ssn = format!("{:03}-{:02}-{:04}", 100 + rng.below(565), 10 + rng.below(90), 1000 + rng.below(9000));
            let cents = rng.below(10_000_000);
            // Days since the epoch between 2020-01-01 and mid-2025.
            let created_days = 18_262 + rng.below(2_000);
            vec![
                Some(id.to_string()),
                Some(format!("{first} {last}")),
                Some(email),
                Some(card),
                (id % 7 != 0).then_some(ssn),
                Some(format!("{}.{:02}", cents / 100, cents % 100)),
                Some(created_days.to_string()),
            ]
        })
        .collect();
    Table { name: name.into(), columns, rows }
}

/// The answer to any other query: one column `1`, one row `["1"]`.
pub fn one() -> Table {
    Table { name: String::new(), columns: vec![Column::fixed("1", 1, 0, false)], rows: vec![vec![Some("1".into())]] }
}

/// One column per binding, in key order (numerically when keys are positions), and one
/// row with the bound values. A FIXED binding holding an integer stays FIXED; anything else
/// is echoed as text (arrays and objects as their JSON), so any client can decode it.
pub fn echo_bindings(bindings: &serde_json::Map<String, Value>) -> Table {
    let mut keys: Vec<&String> = bindings.keys().collect();
    if keys.iter().all(|k| k.parse::<u64>().is_ok()) {
        keys.sort_by_key(|k| k.parse::<u64>().unwrap_or(u64::MAX));
    }
    let mut columns = Vec::with_capacity(keys.len());
    let mut row = Vec::with_capacity(keys.len());
    for key in keys {
        let binding = &bindings[key.as_str()];
        let value = match binding.get("value") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let declared = binding.get("type").and_then(Value::as_str).unwrap_or("TEXT");
        let integral = value.as_deref().is_none_or(|v| v.parse::<i128>().is_ok());
        columns.push(if declared.eq_ignore_ascii_case("FIXED") && integral {
            Column::fixed(key, 38, 0, true)
        } else {
            Column::text(key, 16_777_216, true)
        });
        row.push(value);
    }
    Table { name: String::new(), columns, rows: vec![row] }
}

/// A response body with the query id (or statement handle) left as a placeholder, so that
/// answering costs one copy and a 36-byte overwrite per occurrence.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Bytes,
    id_offsets: Vec<usize>,
}

impl Template {
    /// A template of `body`, whose every occurrence of the placeholder id is replaced on
    /// [`Template::render`].
    pub fn new(body: &Value) -> Template {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let needle = ID_PLACEHOLDER.as_bytes();
        let id_offsets =
            (0..bytes.len().saturating_sub(needle.len() - 1)).filter(|&i| bytes[i..].starts_with(needle)).collect();
        Template { bytes, id_offsets }
    }

    /// The body with `id` (a 36-character UUID) in place of the placeholder.
    pub fn render(&self, id: &str) -> Bytes {
        assert_eq!(id.len(), ID_PLACEHOLDER.len(), "query ids are 36-character UUIDs");
        if self.id_offsets.is_empty() {
            return self.bytes.clone();
        }
        let mut out = BytesMut::from(&self.bytes[..]);
        for &at in &self.id_offsets {
            out[at..at + id.len()].copy_from_slice(id.as_bytes());
        }
        out.freeze()
    }

    /// The body's length in bytes (the same whatever id is spliced in).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the body is empty (never, for a built template).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Session parameters the double reports with query results.
fn query_parameters() -> Value {
    json!([
        {"name": "TIMEZONE", "value": "America/Los_Angeles"},
        {"name": "TIMESTAMP_OUTPUT_FORMAT", "value": "YYYY-MM-DD HH24:MI:SS.FF3 TZHTZM"},
        {"name": "DATE_OUTPUT_FORMAT", "value": "YYYY-MM-DD"},
        {"name": "CLIENT_RESULT_CHUNK_SIZE", "value": 160},
    ])
}

/// The `/queries/v1/query-request` success body for `table`, with the placeholder id.
fn query_v1_body(table: &Table, binds: usize) -> Value {
    json!({
        "data": {
            "parameters": query_parameters(),
            "rowtype": table.rowtype(),
            "rowset": Table::rowset(&table.rows),
            "total": table.rows.len(),
            "returned": table.rows.len(),
            "queryId": ID_PLACEHOLDER,
            "databaseProvider": null,
            "finalDatabaseName": DATABASE,
            "finalSchemaName": SCHEMA,
            "finalWarehouseName": WAREHOUSE,
            "finalRoleName": ROLE,
            "numberOfBinds": binds,
            "arrayBindSupported": false,
            "statementTypeId": 4096,
            "version": 1,
            "sendResultTime": 1_700_000_000_000u64,
            "queryResultFormat": "json",
        },
        "code": null,
        "message": null,
        "success": true,
    })
}

/// The `/queries/v1/query-request` body for `table` in Arrow format, with the placeholder id.
fn query_v1_arrow_body(table: &Table) -> Value {
    let mut body = query_v1_body(table, 0);
    let data = &mut body["data"];
    if let Some(data) = data.as_object_mut() {
        data.remove("rowset");
        data.insert("rowsetBase64".into(), Value::String(crate::corpus::arrow_base64(table)));
        data.insert("queryResultFormat".into(), Value::String("arrow".into()));
    }
    body
}

/// The `/queries/v1/query-request` body of a chunked result: the inline rows, `chunks[]` with
/// URLs under `base_url`, `qrmk`, and for JSON also `chunkHeaders`; the id is the placeholder.
pub fn chunked_query_body(
    result: &crate::corpus::ChunkedResult,
    format: crate::corpus::ChunkFormat,
    base_url: &str,
    url_query: &str,
) -> Template {
    use crate::corpus::{ChunkFormat, QRMK, SSE_C_AES, SSE_C_ALGORITHM_HEADER, SSE_C_KEY_HEADER};
    let mut body = match format {
        ChunkFormat::Json => query_v1_body(&result.first, 0),
        ChunkFormat::Arrow => query_v1_arrow_body(&result.first),
    };
    let data = &mut body["data"];
    data["total"] = json!(result.total_rows);
    data["returned"] = json!(result.total_rows);
    data["chunks"] = result.chunks_json(base_url, ID_PLACEHOLDER, format, url_query);
    data["qrmk"] = json!(QRMK);
    if format == ChunkFormat::Json {
        data["chunkHeaders"] = json!({SSE_C_ALGORITHM_HEADER: SSE_C_AES, SSE_C_KEY_HEADER: QRMK});
    }
    Template::new(&body)
}

/// A SQL API v2 result: the first response (partition 0, with the handle as placeholder)
/// and the bodies of the later partitions.
#[derive(Debug, Clone)]
pub struct StatementTemplate {
    /// The ResultSet answered on submit and for `GET .../<handle>` or `?partition=0`.
    pub first: Template,
    /// `{"data":[...]}` bodies for `?partition=1..`.
    pub later_partitions: Vec<Bytes>,
}

fn statement_v2(table: &Table, partitions: usize, created_on_ms: u64) -> StatementTemplate {
    let per_partition = table.rows.len().div_ceil(partitions.max(1)).max(1);
    let chunks: Vec<&[Vec<Option<String>>]> =
        if table.rows.is_empty() { vec![&[]] } else { table.rows.chunks(per_partition).collect() };
    let datas: Vec<Value> = chunks.iter().map(|rows| Table::rowset(rows)).collect();
    let partition_info: Vec<Value> = chunks
        .iter()
        .zip(&datas)
        .map(|(rows, data)| json!({"rowCount": rows.len(), "uncompressedSize": data.to_string().len()}))
        .collect();
    let first = json!({
        "resultSetMetaData": {
            "numRows": table.rows.len(),
            "format": "jsonv2",
            "partitionInfo": partition_info,
            "rowType": table.rowtype(),
        },
        "data": datas[0],
        "code": "090001",
        "statementStatusUrl": format!("/api/v2/statements/{ID_PLACEHOLDER}"),
        "sqlState": "00000",
        "statementHandle": ID_PLACEHOLDER,
        "message": "Statement executed successfully.",
        "createdOn": created_on_ms,
    });
    let later_partitions =
        datas[1..].iter().map(|d| Bytes::from(json!({ "data": d }).to_string().into_bytes())).collect();
    StatementTemplate { first: Template::new(&first), later_partitions }
}

/// Every precomputed body, built once per double.
#[derive(Debug, Clone)]
pub struct Results {
    /// Query-request answer for the one-row result.
    pub query_one: Template,
    /// Query-request answer for SMALL.
    pub query_small: Template,
    /// Query-request answer for MEDIUM.
    pub query_medium: Template,
    /// Query-request answer for SMALL in Arrow format.
    pub query_arrow_small: Template,
    /// Query-request answer for MEDIUM in Arrow format.
    pub query_arrow_medium: Template,
    /// SQL API answer for the one-row result.
    pub statement_one: StatementTemplate,
    /// SQL API answer for SMALL.
    pub statement_small: StatementTemplate,
    /// SQL API answer for MEDIUM (in several partitions).
    pub statement_medium: StatementTemplate,
}

impl Results {
    /// Builds every body. `created_on_ms` is reported as the SQL API's `createdOn`.
    pub fn build(created_on_ms: u64) -> Results {
        let small = customers("SMALL", SMALL_ROWS);
        let medium = customers("MEDIUM", MEDIUM_ROWS);
        let one = one();
        Results {
            query_one: Template::new(&query_v1_body(&one, 0)),
            query_small: Template::new(&query_v1_body(&small, 0)),
            query_medium: Template::new(&query_v1_body(&medium, 0)),
            query_arrow_small: Template::new(&query_v1_arrow_body(&small)),
            query_arrow_medium: Template::new(&query_v1_arrow_body(&medium)),
            statement_one: statement_v2(&one, 1, created_on_ms),
            statement_small: statement_v2(&small, 1, created_on_ms),
            statement_medium: statement_v2(&medium, MEDIUM_PARTITIONS, created_on_ms),
        }
    }

    /// The query-request success body for an outcome, with `query_id` spliced in.
    /// `bindings` (when present and not empty) turn the one-row answer into an echo. The
    /// chunked outcomes are answered by the caller (their bodies need the double's address);
    /// here they fall back to MEDIUM.
    pub fn query_body(
        &self,
        outcome: Outcome,
        bindings: Option<&serde_json::Map<String, Value>>,
        query_id: &str,
    ) -> Bytes {
        match (outcome, bindings) {
            (Outcome::Small, _) => self.query_small.render(query_id),
            (Outcome::Medium | Outcome::ChunkedJson | Outcome::ChunkedArrow, _) => self.query_medium.render(query_id),
            (Outcome::ArrowSmall, _) => self.query_arrow_small.render(query_id),
            (Outcome::ArrowMedium, _) => self.query_arrow_medium.render(query_id),
            (Outcome::One, Some(b)) if !b.is_empty() => {
                Template::new(&query_v1_body(&echo_bindings(b), b.len())).render(query_id)
            }
            (Outcome::One | Outcome::NoSuchTable | Outcome::StageDownload, _) => self.query_one.render(query_id),
        }
    }

    /// The SQL API result for an outcome: partition 0 with `handle` spliced in, and the
    /// later partitions.
    pub fn statement(
        &self,
        outcome: Outcome,
        bindings: Option<&serde_json::Map<String, Value>>,
        created_on_ms: u64,
        handle: &str,
    ) -> (Bytes, Vec<Bytes>) {
        let dynamic;
        let template = match (outcome, bindings) {
            (Outcome::Small | Outcome::ArrowSmall, _) => &self.statement_small,
            (Outcome::Medium | Outcome::ArrowMedium | Outcome::ChunkedJson | Outcome::ChunkedArrow, _) => {
                &self.statement_medium
            }
            (Outcome::One, Some(b)) if !b.is_empty() => {
                dynamic = statement_v2(&echo_bindings(b), 1, created_on_ms);
                &dynamic
            }
            (Outcome::One | Outcome::NoSuchTable | Outcome::StageDownload, _) => &self.statement_one,
        };
        (template.first.render(handle), template.later_partitions.clone())
    }
}

/// Digests (first 8 bytes of SHA-256) of the SMALL, MEDIUM and Arrow SMALL query bodies and
/// of the default chunked result's rows, pinned by a test.
#[cfg(test)]
const PINNED_CORPUS_DIGESTS: [&str; 4] =
    ["101278ebb4cf42d0", "a4893b53299293f0", "7e8cb61ccceee795", "51be449546c1cecc"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary() {
        assert_eq!(plan("select * from small").outcome, Outcome::Small);
        assert_eq!(plan("SELECT *\n  FROM   MEDIUM;").outcome, Outcome::Medium);
        assert_eq!(plan("select * from NO_SUCH_TABLE").outcome, Outcome::NoSuchTable);
        assert_eq!(plan("GET @~/x.csv file:///tmp/").outcome, Outcome::StageDownload);
        assert_eq!(plan("select 1"), Plan { outcome: Outcome::One, slow: false });
        assert_eq!(plan("select * from small /* slow */"), Plan { outcome: Outcome::Small, slow: true });
    }

    #[test]
    fn rows_are_deterministic_and_plausible() {
        let a = customers("SMALL", SMALL_ROWS);
        let b = customers("SMALL", SMALL_ROWS);
        assert_eq!(a.rows, b.rows);
        // SMALL is a prefix of MEDIUM: same seed, same sequence.
        assert_eq!(customers("MEDIUM", MEDIUM_ROWS).rows[..SMALL_ROWS], a.rows[..]);
        for row in &a.rows {
            assert_eq!(row.len(), a.columns.len());
            assert!(row[2].as_deref().unwrap().contains('@'));
            let card = row[3].as_deref().unwrap();
            assert_eq!(card.len(), 16);
            assert!(luhn_valid(card), "{card}");
        }
        assert!(a.rows[6][4].is_none(), "every seventh SSN is null");
        assert!(luhn_valid("4539578763621486"));
        assert!(!luhn_valid("4539578763621487"));
    }

    #[test]
    fn template_splices_every_occurrence() {
        let results = Results::build(1);
        let id = "0192a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b";
        let (first, later) = results.statement(Outcome::Medium, None, 1, id);
        let text = std::str::from_utf8(&first).unwrap();
        assert_eq!(text.matches(id).count(), 2);
        assert!(!text.contains(ID_PLACEHOLDER));
        assert_eq!(later.len(), MEDIUM_PARTITIONS - 1);
        let body: Value = serde_json::from_slice(&results.query_body(Outcome::Small, None, id)).unwrap();
        assert_eq!(body["data"]["queryId"], id);
        assert_eq!(body["data"]["rowset"].as_array().unwrap().len(), SMALL_ROWS);
    }

    #[test]
    fn sizes_are_as_documented() {
        let results = Results::build(1);
        let small: Value = serde_json::from_slice(&results.query_small.render(ID_PLACEHOLDER)).unwrap();
        let small_rowset = small["data"]["rowset"].to_string().len();
        assert!((700..1400).contains(&small_rowset), "SMALL rowset is {small_rowset} bytes");
        let medium = results.query_medium.len();
        assert!((16_000..20_000).contains(&medium), "MEDIUM body is {medium} bytes");
    }

    /// The corpus is fixed: these digests change only when the committed generator does, and
    /// then every figure measured on the old corpus stops being comparable. Update them on
    /// purpose, with a note in BENCHMARKS.md.
    #[test]
    fn corpus_is_pinned() {
        use sha2::{Digest, Sha256};
        let results = Results::build(1);
        let layout = crate::corpus::ChunkLayout::default();
        let chunked = customers("CHUNKED", layout.total_rows());
        let digest =
            |bytes: &[u8]| Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect::<String>();
        let digests = [
            digest(&results.query_small.render(ID_PLACEHOLDER)),
            digest(&results.query_medium.render(ID_PLACEHOLDER)),
            digest(&results.query_arrow_small.render(ID_PLACEHOLDER)),
            digest(&crate::corpus::json_chunk(&chunked.rows)),
        ];
        assert_eq!(digests, PINNED_CORPUS_DIGESTS, "the corpus changed");
    }

    #[test]
    fn new_names_are_in_the_vocabulary() {
        assert_eq!(plan("select * from arrow_small").outcome, Outcome::ArrowSmall);
        assert_eq!(plan("select * from ARROW_MEDIUM").outcome, Outcome::ArrowMedium);
        assert_eq!(plan("select * from chunked_json").outcome, Outcome::ChunkedJson);
        assert_eq!(plan("select * from chunked_arrow -- slow").outcome, Outcome::ChunkedArrow);
        assert!(plan("select * from chunked_arrow -- slow").slow);
    }

    #[test]
    fn bindings_are_echoed_in_key_order() {
        let bindings: Value = serde_json::from_str(
            r#"{"2":{"type":"TEXT","value":"two"},"1":{"type":"FIXED","value":"10"},"10":{"type":"FIXED","value":"x"}}"#,
        )
        .unwrap();
        let table = echo_bindings(bindings.as_object().unwrap());
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["1", "2", "10"]);
        let types: Vec<&str> = table.columns.iter().map(|c| c.type_name).collect();
        assert_eq!(types, ["fixed", "text", "text"]);
        assert_eq!(table.rows, vec![vec![Some("10".into()), Some("two".into()), Some("x".into())]]);
    }
}
