//! The binary half of the double's corpus: Arrow IPC encodings of the fake tables (with the
//! Snowflake field metadata drivers read) and the chunked results (gzip chunks served back
//! under SSE-C headers). Pure: it builds bytes once and never touches a socket.
//!
//! # Chunked results
//! A chunked result is what Snowflake answers for a large query: the first part of the rows
//! inline (`rowset` for JSON, `rowsetBase64` for Arrow), then `data.chunks[]`, each with a
//! `url`, `rowCount`, `uncompressedSize` and `compressedSize`, plus the key the driver must
//! present when it downloads them (`qrmk`, and for JSON also `chunkHeaders`). Each chunk is a
//! gzip body: for JSON, row arrays separated by commas without enclosing brackets
//! (`["1","Ada"],["2","Alan"]`); for Arrow, a whole IPC stream (schema, then one batch). Chunks
//! with an even index are answered with `Content-Encoding: gzip`, odd ones without it (raw
//! gzip bytes, as S3 serves objects stored compressed), so clients must handle both.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use base64::Engine as _;
use bytes::Bytes;

use crate::results::{Column, Table};

/// The SSE-C algorithm header chunk downloads must carry.
pub const SSE_C_ALGORITHM_HEADER: &str = "x-amz-server-side-encryption-customer-algorithm";
/// The SSE-C key header chunk downloads must carry (its value is the result's `qrmk`).
pub const SSE_C_KEY_HEADER: &str = "x-amz-server-side-encryption-customer-key";
/// The only SSE-C algorithm.
pub const SSE_C_AES: &str = "AES256";
/// The query result master key of every chunked result the double serves: base64 of 32 fixed
/// bytes, as a real `qrmk` looks. It protects nothing; it only proves a client sent it.
pub const QRMK: &str = "c25vd2dhdGUtcGVyZi1mYWtlLXFybWstMzItYnl0ZXM=";

/// Which chunked result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkFormat {
    /// JSON chunks (comma-separated row arrays).
    Json,
    /// Arrow chunks (IPC streams).
    Arrow,
}

impl ChunkFormat {
    /// The path segment naming the format in chunk URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkFormat::Json => "json",
            ChunkFormat::Arrow => "arrow",
        }
    }

    /// The format named by a chunk URL's path segment.
    pub fn parse(segment: &str) -> Option<ChunkFormat> {
        match segment {
            "json" => Some(ChunkFormat::Json),
            "arrow" => Some(ChunkFormat::Arrow),
            _ => None,
        }
    }
}

/// The shape of the chunked results. The masking work drives chunk masking with this; the
/// defaults make a result of about 3.5 MB of JSON in 12 chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    /// Rows answered inline with the query, before the first chunk.
    pub first_rows: usize,
    /// Chunks after the inline rows.
    pub chunk_count: usize,
    /// Rows in each chunk.
    pub rows_per_chunk: usize,
}

impl Default for ChunkLayout {
    fn default() -> ChunkLayout {
        ChunkLayout { first_rows: 100, chunk_count: 12, rows_per_chunk: 3000 }
    }
}

impl ChunkLayout {
    /// Rows in the whole result.
    pub fn total_rows(&self) -> usize {
        self.first_rows + self.chunk_count * self.rows_per_chunk
    }
}

/// One downloadable chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The gzip-compressed body.
    pub gzip_body: Bytes,
    /// Rows in it.
    pub row_count: usize,
    /// Bytes before compression.
    pub uncompressed_size: usize,
    /// Whether it is answered with `Content-Encoding: gzip` (otherwise as raw bytes).
    pub content_encoding_gzip: bool,
}

/// A chunked result: its inline rows and its chunks, all precomputed.
#[derive(Debug, Clone)]
pub struct ChunkedResult {
    /// The table's columns and inline rows.
    pub first: Table,
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
    /// The rows of the whole result.
    pub total_rows: usize,
}

impl ChunkedResult {
    /// Builds the chunks of `table` (which must hold `layout.total_rows()` rows).
    pub fn build(table: &Table, layout: ChunkLayout, format: ChunkFormat) -> ChunkedResult {
        let first_rows = layout.first_rows.min(table.rows.len());
        let first =
            Table { name: table.name.clone(), columns: table.columns.clone(), rows: table.rows[..first_rows].to_vec() };
        let chunks = table.rows[first_rows..]
            .chunks(layout.rows_per_chunk.max(1))
            .take(layout.chunk_count)
            .enumerate()
            .map(|(index, rows)| {
                let plain = match format {
                    ChunkFormat::Json => json_chunk(rows),
                    ChunkFormat::Arrow => {
                        let part =
                            Table { name: table.name.clone(), columns: table.columns.clone(), rows: rows.to_vec() };
                        arrow_ipc_stream(&part)
                    }
                };
                Chunk {
                    gzip_body: Bytes::from(snowgate::http::gzip::gzip(&plain)),
                    row_count: rows.len(),
                    uncompressed_size: plain.len(),
                    content_encoding_gzip: index % 2 == 0,
                }
            })
            .collect();
        ChunkedResult { first, chunks, total_rows: table.rows.len() }
    }

    /// The `data.chunks` array, with URLs under `base_url` (`http://host:port`) and the query
    /// id as `query_id` (a placeholder the caller splices).
    /// `url_query`, when not empty, ends every URL as a query string (cloud storage's presigned
    /// URLs carry their signature so).
    pub fn chunks_json(
        &self,
        base_url: &str,
        query_id: &str,
        format: ChunkFormat,
        url_query: &str,
    ) -> serde_json::Value {
        let url_query = if url_query.is_empty() { String::new() } else { format!("?{url_query}") };
        serde_json::Value::Array(
            self.chunks
                .iter()
                .enumerate()
                .map(|(index, chunk)| {
                    serde_json::json!({
                        "url": format!("{base_url}/chunks/{query_id}/{}/{index}{url_query}", format.as_str()),
                        "rowCount": chunk.row_count,
                        "uncompressedSize": chunk.uncompressed_size,
                        "compressedSize": chunk.gzip_body.len(),
                    })
                })
                .collect(),
        )
    }
}

/// Rows as a JSON chunk: row arrays separated by commas, no enclosing brackets.
pub fn json_chunk(rows: &[Vec<Option<String>>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 128);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let array = serde_json::Value::Array(row.iter().map(|v| serde_json::json!(v)).collect());
        out.extend_from_slice(array.to_string().as_bytes());
    }
    out
}

/// The Arrow field for a column, with the metadata Snowflake drivers read (`logicalType`,
/// `precision`, `scale`, `charLength`), as Snowflake (and fakesnow's `to_sf`) writes it.
fn arrow_field(column: &Column) -> Field {
    let data_type = match column.type_name {
        "fixed" => DataType::Int64,
        "date" => DataType::Date32,
        _ => DataType::Utf8,
    };
    let metadata = HashMap::from([
        ("logicalType".to_owned(), column.type_name.to_ascii_uppercase()),
        ("precision".to_owned(), column.precision.unwrap_or(38).to_string()),
        ("scale".to_owned(), column.scale.unwrap_or(0).to_string()),
        ("charLength".to_owned(), column.length.unwrap_or(0).to_string()),
    ]);
    Field::new(column.name.clone(), data_type, column.nullable).with_metadata(metadata)
}

/// A FIXED value as Snowflake's Arrow format holds it: the unscaled integer (`"12.34"` at
/// scale 2 is 1234).
fn unscaled(value: &str, scale: u32) -> Option<i64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let scale = scale as usize;
    if fraction.len() > scale {
        return None;
    }
    let digits = format!("{whole}{fraction:0<scale$}");
    digits.parse().ok()
}

/// The table as one Arrow IPC stream (schema, one record batch, end marker).
pub fn arrow_ipc_stream(table: &Table) -> Vec<u8> {
    let schema = Arc::new(Schema::new(table.columns.iter().map(arrow_field).collect::<Vec<_>>()));
    let arrays: Vec<ArrayRef> = table
        .columns
        .iter()
        .enumerate()
        .map(|(c, column)| {
            let values = table.rows.iter().map(|row| row.get(c).and_then(Option::as_deref));
            match column.type_name {
                "fixed" => Arc::new(
                    values.map(|v| v.and_then(|v| unscaled(v, column.scale.unwrap_or(0)))).collect::<Int64Array>(),
                ) as ArrayRef,
                "date" => Arc::new(values.map(|v| v.and_then(|v| v.parse::<i32>().ok())).collect::<Date32Array>()),
                _ => Arc::new(values.collect::<StringArray>()),
            }
        })
        .collect();
    // The columns and their arrays are built from one schema, so this cannot fail.
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("arrays match their schema");
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).expect("an in-memory writer");
    writer.write(&batch).expect("writing to memory");
    writer.into_inner().expect("finishing in memory")
}

/// The table as `rowsetBase64`.
pub fn arrow_base64(table: &Table) -> String {
    base64::engine::general_purpose::STANDARD.encode(arrow_ipc_stream(table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::customers;
    use arrow_array::Array;

    fn read_stream(bytes: &[u8]) -> Vec<RecordBatch> {
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    #[test]
    fn arrow_stream_keeps_values_and_snowflake_metadata() {
        let table = customers("SMALL", 10);
        let batches = read_stream(&arrow_ipc_stream(&table));
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.num_rows(), 10);
        let schema = batch.schema();
        let amount = schema.field_with_name("AMOUNT").unwrap();
        assert_eq!(amount.metadata()["logicalType"], "FIXED");
        assert_eq!(amount.metadata()["scale"], "2");
        assert_eq!(amount.metadata()["precision"], "12");
        assert_eq!(schema.field_with_name("NAME").unwrap().metadata()["charLength"], "100");
        assert_eq!(schema.field_with_name("CREATED").unwrap().metadata()["logicalType"], "DATE");
        let amounts = batch.column(5).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(Some(amounts.value(0)), unscaled(table.rows[0][5].as_deref().unwrap(), 2));
        let emails = batch.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(Some(emails.value(3)), table.rows[3][2].as_deref());
        let ssn = batch.column(4);
        assert!(ssn.is_null(6), "every seventh SSN is null");
    }

    #[test]
    fn unscaled_handles_scales() {
        assert_eq!(unscaled("12.34", 2), Some(1234));
        assert_eq!(unscaled("12.3", 2), Some(1230));
        assert_eq!(unscaled("7", 2), Some(700));
        assert_eq!(unscaled("42", 0), Some(42));
        assert_eq!(unscaled("1.234", 2), None);
    }

    #[test]
    fn json_chunks_have_no_brackets_and_parse_when_wrapped() {
        let table = customers("C", 3);
        let chunk = json_chunk(&table.rows);
        assert!(chunk.starts_with(b"[\"1\","), "{}", String::from_utf8_lossy(&chunk));
        assert!(!chunk.starts_with(b"[["));
        let wrapped: serde_json::Value = serde_json::from_slice(&[b"[".as_slice(), &chunk, b"]"].concat()).unwrap();
        assert_eq!(wrapped.as_array().unwrap().len(), 3);
    }

    #[test]
    fn chunked_result_follows_the_layout() {
        let layout = ChunkLayout { first_rows: 5, chunk_count: 3, rows_per_chunk: 7 };
        let table = customers("C", layout.total_rows());
        for format in [ChunkFormat::Json, ChunkFormat::Arrow] {
            let result = ChunkedResult::build(&table, layout, format);
            assert_eq!(result.first.rows.len(), 5);
            assert_eq!(result.chunks.len(), 3);
            assert_eq!(result.total_rows, 26);
            assert!(result.chunks[0].content_encoding_gzip && !result.chunks[1].content_encoding_gzip);
            let plain = snowgate::http::gzip::gunzip_capped(&result.chunks[2].gzip_body, 1 << 20).unwrap();
            assert_eq!(plain.len(), result.chunks[2].uncompressed_size);
            if format == ChunkFormat::Arrow {
                assert_eq!(read_stream(&plain)[0].num_rows(), 7);
            }
            let listed = result.chunks_json("http://h:1", "QID", format, "");
            assert_eq!(listed[1]["url"], format!("http://h:1/chunks/QID/{}/1", format.as_str()));
            assert_eq!(listed[1]["rowCount"], 7);
        }
    }
}
