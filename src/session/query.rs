//! What the gateway reads out of query requests and their answers, for the recording and,
//! later, the policy. No I/O. Unknown fields are skipped, never rejected.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json::{Object, describe_json_error};

/// The fields of a `query-request` body the gateway captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    /// The statement text.
    pub sql_text: String,
    /// The bindings, as the raw JSON the driver sent (`None` when absent).
    pub bindings: Option<String>,
    /// Whether the driver asked for an async execution (expects 333334).
    pub async_exec: bool,
    /// Whether this only describes the statement.
    pub describe_only: bool,
    /// The `QUERY_TAG` the driver set in the request parameters, if any.
    pub query_tag: Option<String>,
}

#[derive(Deserialize)]
struct QueryRequestWire<'a> {
    #[serde(rename = "sqlText")]
    sql_text: String,
    #[serde(borrow, default)]
    bindings: Option<&'a RawValue>,
    #[serde(rename = "asyncExec", default)]
    async_exec: Option<bool>,
    #[serde(rename = "describeOnly", default)]
    describe_only: Option<bool>,
    #[serde(default)]
    parameters: Option<Object<ParametersWire>>,
}

#[derive(Deserialize)]
struct ParametersWire {
    #[serde(rename = "QUERY_TAG", default)]
    query_tag: Option<String>,
}

/// The body is not a query request.
#[derive(Debug, thiserror::Error)]
#[error("the query request is not a JSON object with a string sqlText: {0}")]
pub struct QueryRequestError(String);

/// Parses a `query-request` body (already gunzipped).
pub fn parse_query_request(body: &[u8]) -> Result<QueryRequest, QueryRequestError> {
    // serde_json checks the UTF-8 of the strings it reads, not of those it skips; the whole
    // body is checked (once: reading from `str` does not check again) so that no member the
    // warehouse reads can differ from what was parsed.
    let text = std::str::from_utf8(body)
        .map_err(|e| QueryRequestError(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let Object(wire): Object<QueryRequestWire<'_>> =
        serde_json::from_str(text).map_err(|e| QueryRequestError(describe_json_error(&e)))?;
    Ok(QueryRequest {
        sql_text: wire.sql_text,
        bindings: wire.bindings.filter(|b| b.get() != "null").map(|b| b.get().to_owned()),
        async_exec: wire.async_exec.unwrap_or(false),
        describe_only: wire.describe_only.unwrap_or(false),
        query_tag: wire.parameters.and_then(|Object(p)| p.query_tag),
    })
}

/// What the gateway reads out of a Snowflake answer envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerSummary {
    /// `success`.
    pub success: bool,
    /// `code`, as a string (Snowflake sends strings; some paths send numbers).
    pub code: Option<String>,
    /// `data.queryId`.
    pub query_id: Option<String>,
    /// `data.total` (rows in the whole result).
    pub total_rows: Option<u64>,
    /// `data.resultIds`: a multi-statement answer's child statements, which drivers fetch by id.
    pub result_ids: Vec<String>,
}

#[derive(Deserialize)]
struct AnswerWire {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<Object<AnswerDataWire>>,
}

#[derive(Deserialize)]
struct AnswerDataWire {
    #[serde(rename = "queryId", default)]
    query_id: Option<String>,
    #[serde(default)]
    total: Option<u64>,
    #[serde(rename = "resultIds", default)]
    result_ids: Option<String>,
}

/// An answer's `code` as a string (Snowflake sends strings; some paths send numbers).
fn code_text(code: Option<serde_json::Value>) -> Option<String> {
    match code {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Summarises an answer envelope; `None` when it is not one (not JSON, or `data` of another
/// shape).
pub fn summarize_answer(body: &[u8]) -> Option<AnswerSummary> {
    let Object(wire): Object<AnswerWire> = serde_json::from_slice(body).ok()?;
    let code = code_text(wire.code);
    let data = wire.data.map(|Object(data)| data);
    Some(AnswerSummary {
        success: wire.success.unwrap_or(false),
        code,
        query_id: data.as_ref().and_then(|d| d.query_id.clone()),
        total_rows: data.as_ref().and_then(|d| d.total),
        result_ids: data
            .and_then(|d| d.result_ids)
            .map(|ids| ids.split(',').map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()).collect())
            .unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct SqlApiAnswerWire {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<serde::de::IgnoredAny>,
    #[serde(rename = "statementHandle", default)]
    statement_handle: Option<String>,
    #[serde(rename = "resultSetMetaData", default)]
    meta: Option<Object<SqlApiMetaWire>>,
}

#[derive(Deserialize)]
struct SqlApiMetaWire {
    #[serde(rename = "numRows", default)]
    num_rows: Option<u64>,
}

/// The SQL API's code for a statement that ran and answered.
pub const SQL_API_SUCCESS: &str = "090001";

/// Summarises a SQL API v2 answer (`code`, `statementHandle`, `resultSetMetaData.numRows`;
/// its `data` is rows, not the driver envelope's object): a success is HTTP 200 with code
/// `090001`, or a later partition (`{"data": [...]}`, no code). `None` when it is not a JSON
/// object.
pub fn summarize_sql_api_answer(status: u16, body: &[u8]) -> Option<AnswerSummary> {
    let Object(wire): Object<SqlApiAnswerWire> = serde_json::from_slice(body).ok()?;
    // A partition carries no code at all; a code of another type (`false`) is no success.
    let partition = wire.code.is_none() && wire.data.is_some();
    let code = code_text(wire.code);
    Some(AnswerSummary {
        success: status == 200 && (code.as_deref() == Some(SQL_API_SUCCESS) || partition),
        code,
        query_id: wire.statement_handle,
        total_rows: wire.meta.and_then(|Object(meta)| meta.num_rows),
        result_ids: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_sql_api_answers() {
        let ok = br#"{"resultSetMetaData":{"numRows":2,"format":"jsonv2","rowType":[]},"data":[["1"],["2"]],
            "code":"090001","statementHandle":"01b2c3d4-0000-4000-8000-000000000001","message":"ok"}"#;
        let summary = summarize_sql_api_answer(200, ok).unwrap();
        assert!(summary.success);
        assert_eq!(summary.code.as_deref(), Some("090001"));
        assert_eq!(summary.total_rows, Some(2));
        assert_eq!(summary.query_id.as_deref(), Some("01b2c3d4-0000-4000-8000-000000000001"));
        // The driver envelope's reading of it finds no envelope.
        assert!(summarize_answer(ok).is_none());
        let running = br#"{"code":"333334","message":"running","statementHandle":"h"}"#;
        assert!(!summarize_sql_api_answer(202, running).unwrap().success);
        let failed = br#"{"code":"002003","message":"does not exist","sqlState":"02000","statementHandle":"h"}"#;
        let summary = summarize_sql_api_answer(422, failed).unwrap();
        assert!(!summary.success);
        assert_eq!(summary.code.as_deref(), Some("002003"));
        assert!(summarize_sql_api_answer(200, b"[1]").is_none());
        // A later partition is rows alone.
        assert!(summarize_sql_api_answer(200, br#"{"data":[["3"],["4"]]}"#).unwrap().success);
        assert!(!summarize_sql_api_answer(200, br#"{"message":"?"}"#).unwrap().success);
        // A code of another type is no partition (fuzz/artifacts-found/session_json).
        assert!(!summarize_sql_api_answer(200, br#"{"code":false,"data":{"x":"y"}}"#).unwrap().success);
        assert!(summarize_sql_api_answer(200, br#"{"code":null,"data":[]}"#).unwrap().success);
    }

    #[test]
    fn parses_a_python_query_request() {
        let body = br#"{"sqlText":"select ? as x","asyncExec":false,"sequenceId":2,"querySubmissionTime":1,
            "isInternal":false,"describeOnly":false,"parameters":{"QUERY_TAG":"trace-1","CLIENT_RESULT_CHUNK_SIZE":48},
            "bindings":{"1":{"type":"FIXED","value":"10"}},"queryContextDTO":{"entries":[]}}"#;
        let q = parse_query_request(body).unwrap();
        assert_eq!(q.sql_text, "select ? as x");
        assert_eq!(q.bindings.as_deref(), Some(r#"{"1":{"type":"FIXED","value":"10"}}"#));
        assert_eq!(q.query_tag.as_deref(), Some("trace-1"));
        assert!(!q.async_exec && !q.describe_only);
    }

    #[test]
    fn reads_objects_only_and_checks_every_byte_is_utf8() {
        // serde's derived structs would read these by position.
        assert!(parse_query_request(br#"["drop database prod"]"#).is_err());
        assert!(parse_query_request(br#"{"sqlText": "select 1", "parameters": ["tag"]}"#).is_err());
        assert!(summarize_answer(br#"[true, "000000"]"#).is_none());
        assert!(summarize_answer(br#"{"success": true, "data": ["01b2-query-id", 5]}"#).is_none());
        // Invalid UTF-8 in a member nobody reads is still invalid.
        let err = parse_query_request(b"{\"sqlText\": \"select 1\", \"x\": \"\xff\"}").unwrap_err();
        assert!(err.to_string().contains("UTF-8 at byte 30"), "{err}");
        // Objects as before.
        let q = parse_query_request(br#"{"sqlText": "select 1", "parameters": {"QUERY_TAG": "t"}}"#).unwrap();
        assert_eq!(q.query_tag.as_deref(), Some("t"));
        let a = summarize_answer(br#"{"success": true, "data": {"queryId": "q", "total": 5}}"#).unwrap();
        assert_eq!((a.query_id.as_deref(), a.total_rows), (Some("q"), Some(5)));
    }

    #[test]
    fn rejects_non_query_bodies_without_echoing_them() {
        let err = parse_query_request(br#"{"sqlText": 5, "secret": "canary"}"#).unwrap_err();
        assert!(!err.to_string().contains("canary"));
        assert!(parse_query_request(b"[]").is_err());
        assert!(parse_query_request(br#"{"bindings": null}"#).is_err());
        let q = parse_query_request(br#"{"sqlText": "select 1", "bindings": null}"#).unwrap();
        assert_eq!(q.bindings, None);
    }

    #[test]
    fn summarises_answers() {
        let s = summarize_answer(br#"{"data":{"queryId":"q1","total":3,"rowset":[["1"]]},"code":null,"success":true}"#)
            .unwrap();
        let expected = AnswerSummary {
            success: true,
            code: None,
            query_id: Some("q1".into()),
            total_rows: Some(3),
            result_ids: vec![],
        };
        assert_eq!(s, expected);
        let multi = summarize_answer(br#"{"data":{"queryId":"p","resultIds":"c1, c2,"},"success":true}"#).unwrap();
        assert_eq!(multi.result_ids, ["c1", "c2"]);
        let e =
            summarize_answer(br#"{"data":{"queryId":"q2"},"code":"002003","message":"m","success":false}"#).unwrap();
        assert_eq!(e.code.as_deref(), Some("002003"));
        assert!(!e.success);
        assert_eq!(summarize_answer(b"<html>"), None);
    }
}
