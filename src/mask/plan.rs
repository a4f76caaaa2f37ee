//! What the masker knows about a result's columns: each column as the row type describes it
//! ([`Column`]), its value type as far as masks care ([`ValueType`]), and the per-column
//! decisions a profile makes once per result ([`ColumnPlan`]), with a compact encoding so the
//! proxy can carry a plan to later chunk and partition fetches. No I/O.

use serde::Deserialize;

use super::MaskError;
use crate::json::Object;

/// The most columns a result may have (Snowflake's own limit is far lower in practice).
pub const COLUMNS_MAX: usize = 100_000;

/// A result column as the row type (`rowtype`, `rowType`, or Arrow field metadata) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name.
    pub name: String,
    /// The table it comes from: `Some("")` for expressions, `None` when unknown (Arrow chunks
    /// masked without the answer's row type). Table globs other than `*` match unknown tables.
    pub table: Option<String>,
    /// The table's schema and database, when the row type names them (`None` when it does not:
    /// a table glob naming them then matches, as for an unknown table).
    pub schema: Option<String>,
    /// See `schema`.
    pub database: Option<String>,
    /// Snowflake's type name (`fixed`, `text`, `TIMESTAMP_TZ`...), any case.
    pub type_name: String,
    /// The scale for `fixed` and time types.
    pub scale: Option<u32>,
    /// Whether the column may hold NULL.
    pub nullable: bool,
}

#[derive(Deserialize)]
struct RowTypeEntry {
    name: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    scale: Option<u32>,
    #[serde(default = "nullable_by_default")]
    nullable: bool,
}

fn nullable_by_default() -> bool {
    true
}

impl Column {
    /// Parses a `rowtype` (query answers) or `rowType` (SQL API) JSON array. Unknown fields are
    /// skipped; a missing `table` means an expression (`""`).
    pub fn from_rowtype_json(rowtype: &[u8]) -> Result<Vec<Column>, MaskError> {
        // Each column is read from an object only: a derived struct would also read an array
        // by position, where a driver would fail.
        let entries: Vec<Object<RowTypeEntry>> = serde_json::from_slice(rowtype)
            .map_err(|_| MaskError::upstream_json(0, "rowtype is not an array of column objects"))?;
        if entries.len() > COLUMNS_MAX {
            return Err(MaskError::Limit { what: "columns in a row type" });
        }
        Ok(entries
            .into_iter()
            .map(|Object(e)| Column {
                name: e.name,
                table: Some(e.table.unwrap_or_default()),
                schema: e.schema,
                database: e.database,
                type_name: e.type_name,
                scale: e.scale,
                nullable: e.nullable,
            })
            .collect())
    }
}

/// A column's type as far as masks are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Text (TEXT, VARCHAR, CHAR, STRING, GEOGRAPHY... and any type this masker does not know).
    Text,
    /// JSON text (VARIANT, OBJECT, ARRAY, MAP, VECTOR in JSON results).
    Json,
    /// A FIXED number with its scale.
    Fixed {
        /// The scale (digits after the point).
        scale: u8,
    },
    /// REAL, FLOAT, DOUBLE, DECFLOAT.
    Real,
    /// DATE.
    Date,
    /// TIME.
    Time,
    /// TIMESTAMP_NTZ, TIMESTAMP_LTZ, TIMESTAMP.
    Timestamp,
    /// TIMESTAMP_TZ (JSON: `seconds.fraction offset`; Arrow: a struct with a `timezone` field).
    TimestampTz,
    /// BOOLEAN.
    Boolean,
    /// BINARY (hex in JSON).
    Binary,
    /// INTERVAL types (numbers).
    Interval,
}

impl ValueType {
    /// Maps a Snowflake type name (any case) to a value type; unknown names are text, so that
    /// they are scanned and masked rather than passed through.
    pub fn from_snowflake(type_name: &str, scale: Option<u32>) -> ValueType {
        let upper = type_name.trim().to_ascii_uppercase();
        match upper.as_str() {
            "FIXED" | "NUMBER" | "DECIMAL" | "NUMERIC" | "INT" | "INTEGER" | "BIGINT" => {
                ValueType::Fixed { scale: scale.unwrap_or(0).min(u32::from(u8::MAX)) as u8 }
            }
            "REAL" | "FLOAT" | "DOUBLE" | "DOUBLE PRECISION" | "DECFLOAT" => ValueType::Real,
            "DATE" => ValueType::Date,
            "TIME" => ValueType::Time,
            "TIMESTAMP" | "TIMESTAMP_NTZ" | "TIMESTAMP_LTZ" | "DATETIME" => ValueType::Timestamp,
            "TIMESTAMP_TZ" => ValueType::TimestampTz,
            "BOOLEAN" => ValueType::Boolean,
            "BINARY" | "VARBINARY" => ValueType::Binary,
            "VARIANT" | "OBJECT" | "ARRAY" | "MAP" | "VECTOR" => ValueType::Json,
            "INTERVAL_YEAR_MONTH" | "INTERVAL_DAY_TIME" => ValueType::Interval,
            _ => ValueType::Text,
        }
    }

    /// Whether values are free text that detectors and the dictionary scan.
    pub fn is_text(self) -> bool {
        matches!(self, ValueType::Text | ValueType::Json)
    }

    fn code(self) -> (u8, u8) {
        match self {
            ValueType::Text => (0, 0),
            ValueType::Json => (1, 0),
            ValueType::Fixed { scale } => (2, scale),
            ValueType::Real => (3, 0),
            ValueType::Date => (4, 0),
            ValueType::Time => (5, 0),
            ValueType::Timestamp => (6, 0),
            ValueType::TimestampTz => (7, 0),
            ValueType::Boolean => (8, 0),
            ValueType::Binary => (9, 0),
            ValueType::Interval => (10, 0),
        }
    }

    fn from_code(code: u8, scale: u8) -> Option<ValueType> {
        Some(match code {
            0 => ValueType::Text,
            1 => ValueType::Json,
            2 => ValueType::Fixed { scale },
            3 => ValueType::Real,
            4 => ValueType::Date,
            5 => ValueType::Time,
            6 => ValueType::Timestamp,
            7 => ValueType::TimestampTz,
            8 => ValueType::Boolean,
            9 => ValueType::Binary,
            10 => ValueType::Interval,
            _ => return None,
        })
    }
}

/// What a profile does to one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedColumn {
    /// The index of the column rule that masks every value, if any.
    pub rule: Option<u16>,
    /// The column's value type.
    pub value_type: ValueType,
    /// Whether the column may hold NULL.
    pub nullable: bool,
}

/// A profile's decisions for every column of one result, made once per result. Carry it (see
/// [`ColumnPlan::encode`]) to mask the result's later chunks and partitions, which have no row type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    pub(crate) fingerprint: u64,
    pub(crate) profile: u16,
    pub(crate) columns: Vec<PlannedColumn>,
}

const PLAN_MAGIC: &[u8; 4] = b"SGP1";
const PLAN_ZSTD_MAGIC: &[u8; 4] = b"SGPz";
/// The largest uncompressed plan: its header and [`COLUMNS_MAX`] columns.
const PLAN_RAW_BYTES_MAX: usize = 18 + 5 * COLUMNS_MAX;
/// Plans are made once per answer: compress them hard (about 0.2 ms for 2,000 columns).
const PLAN_ZSTD_LEVEL: i32 = 19;
/// Narrower plans (at most 333 bytes) go uncompressed: zstd would not shrink them, and
/// opening a decompressor for each chunk fetch costs more than the bytes.
const PLAN_COMPRESS_COLUMNS_MIN: usize = 64;

impl ColumnPlan {
    /// The planned columns, in result order.
    pub fn columns(&self) -> &[PlannedColumn] {
        &self.columns
    }

    /// Whether any column rule applies (detectors may still mask content).
    pub fn masks_whole_columns(&self) -> bool {
        self.columns.iter().any(|c| c.rule.is_some())
    }

    /// A compact binary form, zstd-compressed from 64 columns on: it travels in every chunk URL of a result, and a
    /// request head caps those (a wide result's plan repeats a handful of column kinds, so
    /// 1,500 columns take a few hundred bytes, not 7.5 KB). It names the masking spec it was
    /// made for by a fingerprint, so a plan from before a policy reload is refused, not
    /// misapplied.
    pub fn encode(&self) -> Vec<u8> {
        let raw = self.encode_raw();
        if self.columns.len() < PLAN_COMPRESS_COLUMNS_MIN {
            return raw;
        }
        let compressed = zstd::bulk::compress(&raw, PLAN_ZSTD_LEVEL).expect("compressing into memory cannot fail");
        let mut out = Vec::with_capacity(PLAN_ZSTD_MAGIC.len() + compressed.len());
        out.extend_from_slice(PLAN_ZSTD_MAGIC);
        out.extend_from_slice(&compressed);
        out
    }

    /// The uncompressed form: 18 bytes plus 5 per column (what plans were before they were
    /// compressed; [`ColumnPlan::decode`] still reads it).
    fn encode_raw(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + 5 * self.columns.len());
        out.extend_from_slice(PLAN_MAGIC);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.profile.to_le_bytes());
        out.extend_from_slice(&(self.columns.len() as u32).to_le_bytes());
        for column in &self.columns {
            let (code, scale) = column.value_type.code();
            out.extend_from_slice(&column.rule.map_or(u16::MAX, |r| r).to_le_bytes());
            out.push(code);
            out.push(scale);
            out.push(u8::from(column.nullable));
        }
        out
    }

    /// Reads [`ColumnPlan::encode`]'s output back (or the uncompressed form). Anything else is
    /// the caller's error. What is inflated is capped at the largest plan there can be.
    pub fn decode(bytes: &[u8]) -> Result<ColumnPlan, MaskError> {
        match bytes.strip_prefix(PLAN_ZSTD_MAGIC) {
            Some(compressed) => {
                let raw = zstd::bulk::decompress(compressed, PLAN_RAW_BYTES_MAX).map_err(|_| MaskError::BadPlan)?;
                ColumnPlan::decode_raw(&raw)
            }
            None => ColumnPlan::decode_raw(bytes),
        }
    }

    fn decode_raw(bytes: &[u8]) -> Result<ColumnPlan, MaskError> {
        let bad = MaskError::BadPlan;
        let header = bytes.get(..18).ok_or(MaskError::BadPlan)?;
        if &header[..4] != PLAN_MAGIC {
            return Err(bad);
        }
        let fingerprint = u64::from_le_bytes(header[4..12].try_into().map_err(|_| MaskError::BadPlan)?);
        let profile = u16::from_le_bytes([header[12], header[13]]);
        let count = u32::from_le_bytes(header[14..18].try_into().map_err(|_| MaskError::BadPlan)?) as usize;
        let body = &bytes[18..];
        if count > COLUMNS_MAX || body.len() != count * 5 {
            return Err(MaskError::BadPlan);
        }
        let columns = body
            .chunks_exact(5)
            .map(|c| {
                let rule = u16::from_le_bytes([c[0], c[1]]);
                Some(PlannedColumn {
                    rule: (rule != u16::MAX).then_some(rule),
                    value_type: ValueType::from_code(c[2], c[3])?,
                    nullable: match c[4] {
                        0 => false,
                        1 => true,
                        _ => return None,
                    },
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(MaskError::BadPlan)?;
        Ok(ColumnPlan { fingerprint, profile, columns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rowtype_leniently() {
        let rowtype =
            br#"[{"name":"ID","database":"D","schema":"S","table":"T","type":"fixed","scale":0,"precision":38,
            "length":null,"byteLength":null,"nullable":false,"collation":null,"extra":[1]},
            {"name":"E","type":"text","nullable":true}]"#;
        let columns = Column::from_rowtype_json(rowtype).unwrap();
        assert_eq!(columns.len(), 2);
        assert_eq!(columns[0].table.as_deref(), Some("T"));
        assert!(!columns[0].nullable);
        assert_eq!(columns[1].table.as_deref(), Some(""));
        assert!(Column::from_rowtype_json(b"{}").is_err());
        // A column given as an array would be read by position by a derived struct; a driver
        // reads objects only.
        assert!(Column::from_rowtype_json(br#"[["ID", null, "fixed", 0, false]]"#).is_err());
    }

    #[test]
    fn maps_type_names() {
        assert_eq!(ValueType::from_snowflake("fixed", Some(2)), ValueType::Fixed { scale: 2 });
        assert_eq!(ValueType::from_snowflake("TIMESTAMP_TZ", None), ValueType::TimestampTz);
        assert_eq!(ValueType::from_snowflake("timestamp_ltz", Some(9)), ValueType::Timestamp);
        assert_eq!(ValueType::from_snowflake("variant", None), ValueType::Json);
        assert_eq!(ValueType::from_snowflake("geography", None), ValueType::Text);
        assert_eq!(ValueType::from_snowflake("something_new", None), ValueType::Text);
    }

    #[test]
    fn plan_round_trips_and_refuses_garbage() {
        let plan = ColumnPlan {
            fingerprint: 0x0123_4567_89ab_cdef,
            profile: 3,
            columns: vec![
                PlannedColumn { rule: Some(2), value_type: ValueType::Fixed { scale: 2 }, nullable: false },
                PlannedColumn { rule: None, value_type: ValueType::TimestampTz, nullable: true },
            ],
        };
        // The uncompressed form (grants issued before plans were compressed) still reads.
        let bytes = plan.encode_raw();
        assert_eq!(bytes.len(), 18 + 10);
        assert_eq!(ColumnPlan::decode(&bytes).unwrap(), plan);
        assert!(ColumnPlan::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad_type = bytes.clone();
        bad_type[18 + 2] = 99;
        assert!(ColumnPlan::decode(&bad_type).is_err());
        assert_eq!(plan.encode(), bytes, "a narrow plan goes uncompressed");
        let wide = ColumnPlan { columns: plan.columns.repeat(40), ..plan.clone() };
        let compressed = wide.encode();
        assert!(compressed.starts_with(PLAN_ZSTD_MAGIC));
        assert_eq!(ColumnPlan::decode(&compressed).unwrap(), wide);
        assert!(ColumnPlan::decode(&compressed[..compressed.len() - 1]).is_err());
        let mut inner_bad_type = PLAN_ZSTD_MAGIC.to_vec();
        inner_bad_type.extend(zstd::bulk::compress(&bad_type, 1).unwrap());
        assert!(ColumnPlan::decode(&inner_bad_type).is_err());
        // A compressed plan inflating past the largest plan there can be is refused.
        let mut bomb = PLAN_ZSTD_MAGIC.to_vec();
        bomb.extend(zstd::bulk::compress(&vec![0u8; PLAN_RAW_BYTES_MAX + 1], 1).unwrap());
        assert!(bomb.len() < 1024);
        assert!(ColumnPlan::decode(&bomb).is_err());
        assert!(ColumnPlan::decode(b"SGP0").is_err());
        assert!(ColumnPlan::decode(b"SGPz").is_err());
    }

    /// A wide result's plan travels in each chunk URL: compressed, 2,000 columns of a few
    /// kinds in an irregular order take a small fraction of their 5 bytes each.
    #[test]
    fn a_wide_plan_stays_small() {
        let kinds = [
            PlannedColumn { rule: None, value_type: ValueType::Text, nullable: true },
            PlannedColumn { rule: None, value_type: ValueType::Fixed { scale: 0 }, nullable: false },
            PlannedColumn { rule: None, value_type: ValueType::Fixed { scale: 2 }, nullable: true },
            PlannedColumn { rule: Some(1), value_type: ValueType::Text, nullable: true },
            PlannedColumn { rule: None, value_type: ValueType::Date, nullable: true },
            PlannedColumn { rule: None, value_type: ValueType::TimestampTz, nullable: true },
        ];
        // An irregular sequence of kinds (a linear congruential walk), not a repeating pattern.
        let mut state = 12_345u32;
        let columns: Vec<PlannedColumn> = (0..2_000)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                kinds[(state >> 16) as usize % kinds.len()]
            })
            .collect();
        let plan = ColumnPlan { fingerprint: 7, profile: 1, columns };
        let compressed = plan.encode();
        assert_eq!(ColumnPlan::decode(&compressed).unwrap(), plan);
        assert!(compressed.len() * 5 < plan.encode_raw().len(), "{} bytes", compressed.len());
        // All one kind (a wide table of floats) is almost nothing.
        let uniform = ColumnPlan { fingerprint: 7, profile: 1, columns: vec![kinds[2]; 2_000] };
        assert!(uniform.encode().len() < 64, "{} bytes", uniform.encode().len());
    }
}
