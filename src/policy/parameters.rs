//! Session parameters the policy depends on: which a driver may send in a query request's
//! `parameters` object, how the gateway rewrites them, and which `ALTER SESSION` changes are
//! sensitive (classified [`super::Kind::AlterSessionSensitive`] so rules govern them). Pure.
//!
//! - `MULTI_STATEMENT_COUNT` is pinned: whatever the driver sent is replaced by the number of
//!   statements the gateway counted, so Snowflake refuses a request it splits differently.
//! - Result formats (`*_QUERY_RESULT_FORMAT`) are accepted as `ARROW` or `JSON` only: masking
//!   handles both, and nothing else.
//! - Parameters that change how names resolve or how the policy reads statements
//!   (`SEARCH_PATH`, `QUOTED_IDENTIFIERS_IGNORE_CASE`…) are refused, as is any parameter not
//!   on the benign list below (fail closed: a new Snowflake parameter is refused until listed).

use serde_json::{Map, Value};

/// How the gateway treats one session parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterClass {
    /// Harmless to the policy: passed through; `ALTER SESSION` of it is `alter_session`.
    Benign,
    /// Set by the gateway, whatever the driver sent (`MULTI_STATEMENT_COUNT`).
    Pinned,
    /// Accepted with one of these values only (compared without regard to case).
    Restricted(&'static [&'static str]),
    /// The policy depends on it (or it is not known): refused in requests, and `ALTER SESSION`
    /// of it is `alter_session_sensitive`.
    Sensitive,
}

/// `QUERY_TAG` longer than this is refused (Snowflake's own limit is 2000 characters).
pub const QUERY_TAG_CHARS_MAX: usize = 2000;

const RESULT_FORMATS: &[&str] = &["ARROW", "JSON"];

const PINNED: &[&str] = &["MULTI_STATEMENT_COUNT"];

const RESTRICTED_RESULT_FORMAT: &[&str] = &[
    "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT",
    "JDBC_QUERY_RESULT_FORMAT",
    "ODBC_QUERY_RESULT_FORMAT",
    "GO_QUERY_RESULT_FORMAT",
    "C_API_QUERY_RESULT_FORMAT",
    "DOTNET_QUERY_RESULT_FORMAT",
    "QUERY_RESULT_FORMAT",
];

const BENIGN: &[&str] = &[
    "ABORT_DETACHED_QUERY",
    "AUTOCOMMIT",
    "BINARY_INPUT_FORMAT",
    "BINARY_OUTPUT_FORMAT",
    "CLIENT_MEMORY_LIMIT",
    "CLIENT_METADATA_REQUEST_USE_CONNECTION_CTX",
    "CLIENT_METADATA_USE_SESSION_DATABASE",
    "CLIENT_PREFETCH_THREADS",
    "CLIENT_RESULT_CHUNK_SIZE",
    "CLIENT_RESULT_COLUMN_CASE_INSENSITIVE",
    "CLIENT_SESSION_KEEP_ALIVE",
    "CLIENT_SESSION_KEEP_ALIVE_HEARTBEAT_FREQUENCY",
    "CLIENT_TIMESTAMP_TYPE_MAPPING",
    "DATE_INPUT_FORMAT",
    "DATE_OUTPUT_FORMAT",
    "ERROR_ON_NONDETERMINISTIC_MERGE",
    "ERROR_ON_NONDETERMINISTIC_UPDATE",
    "GEOGRAPHY_OUTPUT_FORMAT",
    "GEOMETRY_OUTPUT_FORMAT",
    "JDBC_TREAT_DECIMAL_AS_INT",
    "JDBC_TREAT_TIMESTAMP_NTZ_AS_UTC",
    "JDBC_USE_SESSION_TIMEZONE",
    "JSON_INDENT",
    "JS_TREAT_INTEGER_AS_BIGINT",
    "LOCK_TIMEOUT",
    "ODBC_TREAT_DECIMAL_AS_INT",
    "QUERY_TAG",
    "ROWS_PER_RESULTSET",
    "STATEMENT_QUEUED_TIMEOUT_IN_SECONDS",
    "STATEMENT_TIMEOUT_IN_SECONDS",
    "STRICT_JSON_OUTPUT",
    "TIMESTAMP_DAY_IS_ALWAYS_24H",
    "TIMESTAMP_INPUT_FORMAT",
    "TIMESTAMP_LTZ_OUTPUT_FORMAT",
    "TIMESTAMP_NTZ_OUTPUT_FORMAT",
    "TIMESTAMP_OUTPUT_FORMAT",
    "TIMESTAMP_TYPE_MAPPING",
    "TIMESTAMP_TZ_OUTPUT_FORMAT",
    "TIMEZONE",
    "TIME_INPUT_FORMAT",
    "TIME_OUTPUT_FORMAT",
    "TRANSACTION_ABORT_ON_ERROR",
    "TRANSACTION_DEFAULT_ISOLATION_LEVEL",
    "TWO_DIGIT_CENTURY_START",
    "UNSUPPORTED_DDL_ACTION",
    "USE_CACHED_RESULT",
    "WEEK_OF_YEAR_POLICY",
    "WEEK_START",
];

/// The class of parameter `name` (compared without regard to case). Anything not listed is
/// [`ParameterClass::Sensitive`].
pub fn parameter_class(name: &str) -> ParameterClass {
    let upper = name.to_ascii_uppercase();
    if PINNED.contains(&upper.as_str()) {
        ParameterClass::Pinned
    } else if RESTRICTED_RESULT_FORMAT.contains(&upper.as_str()) {
        ParameterClass::Restricted(RESULT_FORMATS)
    } else if BENIGN.contains(&upper.as_str()) {
        ParameterClass::Benign
    } else {
        ParameterClass::Sensitive
    }
}

/// Whether `ALTER SESSION` of `name` is plain `alter_session` (else `alter_session_sensitive`).
pub fn session_parameter_is_benign(name: &str) -> bool {
    parameter_class(name) == ParameterClass::Benign
}

/// A query request's parameters the gateway refuses. The parameter's name is the driver's own
/// key and safe to show; its value is never included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the query request sets session parameter {parameter}, which {reason} (the agent's request)")]
pub struct ParameterRefusal {
    /// The parameter, as the driver spelled it.
    pub parameter: String,
    /// Why, as a fixed phrase.
    pub reason: &'static str,
}

/// How to rewrite a query request's `parameters` object before it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterPlan {
    /// Keys to remove (as the driver spelled them).
    pub remove: Vec<String>,
    /// Keys to set, with their values.
    pub set: Vec<(String, Value)>,
}

impl ParameterPlan {
    /// Applies the plan to a `parameters` object.
    pub fn apply(&self, parameters: &mut Map<String, Value>) {
        for key in &self.remove {
            parameters.remove(key);
        }
        for (key, value) in &self.set {
            parameters.insert(key.clone(), value.clone());
        }
    }
}

/// Checks the `parameters` a driver sent with a query request (`None` when absent) and plans
/// the rewrite: `MULTI_STATEMENT_COUNT` is always set to `statement_count` (the statements
/// the gateway counted), everything else is kept or refused as its class says.
pub fn plan_query_parameters(
    parameters: Option<&Value>,
    statement_count: usize,
) -> Result<ParameterPlan, ParameterRefusal> {
    let mut plan = ParameterPlan {
        remove: Vec::new(),
        set: vec![("MULTI_STATEMENT_COUNT".to_owned(), Value::from(statement_count as u64))],
    };
    let object = match parameters {
        None | Some(Value::Null) => return Ok(plan),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(ParameterRefusal { parameter: "parameters".to_owned(), reason: "is not a JSON object" });
        }
    };
    let mut seen: Vec<String> = Vec::with_capacity(object.len());
    for (key, value) in object {
        let upper = key.to_ascii_uppercase();
        if seen.contains(&upper) {
            return Err(ParameterRefusal { parameter: key.clone(), reason: "appears twice with different case" });
        }
        seen.push(upper.clone());
        let refuse = |reason| Err(ParameterRefusal { parameter: key.clone(), reason });
        match parameter_class(key) {
            ParameterClass::Pinned => plan.remove.push(key.clone()),
            ParameterClass::Restricted(allowed) => match value {
                Value::String(s) if allowed.iter().any(|a| a.eq_ignore_ascii_case(s)) => {}
                _ => return refuse("only accepts ARROW or JSON through the gateway"),
            },
            ParameterClass::Benign if upper == "QUERY_TAG" => match value {
                Value::String(tag) if tag.chars().count() <= QUERY_TAG_CHARS_MAX => {}
                Value::Null => {}
                _ => return refuse("must be a string of at most 2000 characters"),
            },
            ParameterClass::Benign => {}
            ParameterClass::Sensitive => return refuse("the gateway's policy depends on or does not know"),
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pins_the_statement_count_whatever_the_driver_sent() {
        let params = json!({"MULTI_STATEMENT_COUNT": 0, "QUERY_TAG": "trace-1"});
        let plan = plan_query_parameters(Some(&params), 1).unwrap();
        let mut object = params.as_object().unwrap().clone();
        plan.apply(&mut object);
        assert_eq!(Value::Object(object), json!({"MULTI_STATEMENT_COUNT": 1, "QUERY_TAG": "trace-1"}));
        let lower = json!({"multi_statement_count": 5});
        let mut object = lower.as_object().unwrap().clone();
        plan_query_parameters(Some(&lower), 2).unwrap().apply(&mut object);
        assert_eq!(Value::Object(object), json!({"MULTI_STATEMENT_COUNT": 2}));
        assert_eq!(plan_query_parameters(None, 1).unwrap().set, vec![("MULTI_STATEMENT_COUNT".into(), json!(1))]);
    }

    #[test]
    fn restricts_result_formats_and_refuses_sensitive_parameters() {
        let ok = json!({"PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "arrow", "TIMEZONE": "UTC"});
        assert!(plan_query_parameters(Some(&ok), 1).is_ok());
        let bad_format = json!({"JDBC_QUERY_RESULT_FORMAT": "CSV"});
        assert_eq!(plan_query_parameters(Some(&bad_format), 1).unwrap_err().parameter, "JDBC_QUERY_RESULT_FORMAT");
        for name in ["SEARCH_PATH", "QUOTED_IDENTIFIERS_IGNORE_CASE", "SOMETHING_NEW"] {
            let params = json!({ name: "x" });
            let refusal = plan_query_parameters(Some(&params), 1).unwrap_err();
            assert_eq!(refusal.parameter, name);
            assert!(!refusal.to_string().contains("\"x\""));
        }
        let twice = json!({"QUERY_TAG": "a", "query_tag": "b"});
        assert!(plan_query_parameters(Some(&twice), 1).is_err());
        let long_tag = json!({"QUERY_TAG": "x".repeat(2001)});
        assert!(plan_query_parameters(Some(&long_tag), 1).is_err());
        assert!(plan_query_parameters(Some(&json!([1])), 1).is_err());
    }

    #[test]
    fn classes_drive_alter_session_kinds() {
        assert!(session_parameter_is_benign("query_tag"));
        assert!(!session_parameter_is_benign("MULTI_STATEMENT_COUNT"));
        assert!(!session_parameter_is_benign("GO_QUERY_RESULT_FORMAT"));
        assert!(!session_parameter_is_benign("SEARCH_PATH"));
        assert_eq!(parameter_class("Timezone"), ParameterClass::Benign);
    }
}
