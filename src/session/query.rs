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

/// Summarises an answer envelope; `None` when it is not one (not JSON, or `data` of another
/// shape).
pub fn summarize_answer(body: &[u8]) -> Option<AnswerSummary> {
    let Object(wire): Object<AnswerWire> = serde_json::from_slice(body).ok()?;
    let code = match wire.code {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
