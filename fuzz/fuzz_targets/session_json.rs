//! Fuzz target `session_json`: the JSON the gateway reads and rewrites around sessions and
//! queries, other than login requests (see `login_rewrite`). The first byte chooses: a query
//! request, an answer envelope, a login answer to seal, or a renewal request in which the text
//! `SEALED` is replaced by a real sealed session token. Invariants: nothing panics; what is
//! read agrees with an independent serde_json reading of the same bytes; a sealed login answer
//! carries sealed tokens that open to the upstream ones, and no IdP token field; a renewal
//! request is rewritten only around a token this sealer made for the same session, and then
//! holds the real upstream token with every other member unchanged.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use snowgate::session::login::{SessionOwner, rewrite_renew_request, seal_login_response};
use snowgate::session::query::{parse_query_request, summarize_answer, summarize_sql_api_answer};
use snowgate::session::token::{Sealer, TokenClaims, TokenKind};

const UPSTREAM_SESSION_TOKEN: &str = "upstream-session-token-0123456789";

fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| Sealer::new(&[vec![7; 32]]).unwrap())
}

fn master() -> TokenClaims {
    TokenClaims {
        upstream_token: "upstream-master-token".into(),
        sub: "agent-1".into(),
        groups: vec!["analysts".into()],
        role: "ANALYST".into(),
        session_id: Some(42),
        expires_at_unix_ms: 4_102_444_800_000,
        identity_expires_at_unix_ms: 4_102_444_800_000,
    }
}

fn query_request(data: &[u8]) {
    let Ok(request) = parse_query_request(data) else { return };
    // What was read is UTF-8 throughout and an object (fuzz/artifacts-found/session_json: an
    // array was once read by position, and invalid UTF-8 in a skipped member passed).
    let text = std::str::from_utf8(data).expect("a query request read is UTF-8");
    // serde_json does not check the range of numbers it skips (1e999: see
    // fuzz/artifacts-found/session_json), so the reference reading may fail where the
    // gateway's succeeds; it compares only when it can read the body at all.
    let Ok(value) = serde_json::from_str::<Value>(text) else { return };
    assert!(value.is_object(), "a query request read from a non-object");
    assert!(value["parameters"].is_null() || value["parameters"].is_object(), "parameters read from a non-object");
    assert_eq!(value["sqlText"].as_str(), Some(request.sql_text.as_str()));
    match &request.bindings {
        Some(raw) => {
            let bindings: Value = serde_json::from_str(raw).expect("bindings are JSON");
            assert_eq!(bindings, value["bindings"]);
            assert!(!bindings.is_null());
        }
        None => assert!(value["bindings"].is_null()),
    }
    assert_eq!(request.async_exec, value["asyncExec"].as_bool().unwrap_or(false));
    assert_eq!(request.describe_only, value["describeOnly"].as_bool().unwrap_or(false));
    assert_eq!(request.query_tag.as_deref(), value["parameters"]["QUERY_TAG"].as_str());
}

fn answer(data: &[u8]) {
    let Some(summary) = summarize_answer(data) else { return };
    // Answers are not checked for UTF-8 where nothing reads them: the reference reading
    // replaces invalid UTF-8, and compares only when it can read the body at all.
    let Ok(value) = serde_json::from_str::<Value>(&String::from_utf8_lossy(data)) else { return };
    assert!(value.is_object(), "an answer summarised from a non-object");
    assert!(value["data"].is_null() || value["data"].is_object(), "data read from a non-object");
    assert_eq!(summary.success, value["success"].as_bool().unwrap_or(false));
    match &value["code"] {
        Value::String(code) => assert_eq!(summary.code.as_deref(), Some(code.as_str())),
        Value::Number(code) => assert_eq!(summary.code, Some(code.to_string())),
        _ => assert_eq!(summary.code, None),
    }
    assert_eq!(summary.query_id.as_deref(), value["data"]["queryId"].as_str());
    assert_eq!(summary.total_rows, value["data"]["total"].as_u64());
}

fn sql_api_answer(data: &[u8]) {
    let Some(summary) = summarize_sql_api_answer(200, data) else { return };
    let Ok(value) = serde_json::from_str::<Value>(&String::from_utf8_lossy(data)) else { return };
    assert!(value.is_object(), "an answer summarised from a non-object");
    let code = match &value["code"] {
        Value::String(code) => Some(code.clone()),
        Value::Number(code) => Some(code.to_string()),
        _ => None,
    };
    assert_eq!(summary.code, code);
    let partition = value["code"].is_null() && !value["data"].is_null();
    assert_eq!(summary.success, summary.code.as_deref() == Some("090001") || partition);
    assert_eq!(summary.query_id.as_deref(), value["statementHandle"].as_str());
    assert_eq!(summary.total_rows, value["resultSetMetaData"]["numRows"].as_u64());
    assert!(!summarize_sql_api_answer(422, data).is_some_and(|s| s.success), "a 422 read as a success");
}

fn login_answer(data: &[u8]) {
    let owner = SessionOwner {
        sub: "agent-1".into(),
        groups: vec!["analysts".into()],
        role: "ANALYST".into(),
        identity_expires_at_unix_ms: u64::MAX,
    };
    let Ok(sealed) = seal_login_response(data, sealer(), &owner, 1_000) else { return };
    // The reference reading: serde_json's `Value` refuses an object whose key is its private
    // RawValue marker (`$serde_json::private::RawValue`, with the `raw_value` feature), which
    // the gateway's reading takes as any other key; such bodies are not compared.
    let Ok(input) = serde_json::from_slice::<Value>(data) else { return };
    let output: Value = serde_json::from_slice(&sealed.body).expect("the sealed answer is JSON");
    assert_eq!(sealed.success, input["success"].as_bool().unwrap_or(false));
    let Some(out_data) = output.get("data").and_then(Value::as_object) else {
        // Without a data object, a failed answer passes as it was.
        assert!(!sealed.success);
        assert_eq!(sealed.body, data);
        return;
    };
    // No token member but the sealed ones reaches the agent, in any spelling.
    for field in out_data.keys() {
        let sealed_field = field == "token" || field == "masterToken";
        assert!(sealed_field || !field.to_ascii_lowercase().contains("token"), "{field} reached the agent");
    }
    if !sealed.success {
        assert!(!out_data.contains_key("token") && !out_data.contains_key("masterToken"));
        return;
    }
    let token = out_data["token"].as_str().expect("a sealed session token");
    let claims = sealer().open_ignoring_expiry(TokenKind::Session, token).expect("the session token opens");
    let validity_secs = input["data"]["validityInSeconds"].as_u64().unwrap_or(3600);
    assert_eq!(claims.expires_at_unix_ms, 1_000u64.saturating_add(validity_secs.saturating_mul(1000)));
    assert_eq!(Some(claims.upstream_token.as_str()), input["data"]["token"].as_str());
    assert_eq!((claims.sub.as_str(), claims.role.as_str()), ("agent-1", "ANALYST"));
    match input["data"]["sessionId"].as_i64().filter(|&id| id > 0) {
        Some(session_id) => assert_eq!(claims.session_id, Some(session_id)),
        // Named by none, the session gets a gateway id of its own: negative, and not the SQL API's.
        None => assert!(claims.session_id.is_some_and(|id| id < -1), "{:?}", claims.session_id),
    }
    assert!(sealer().open_ignoring_expiry(TokenKind::Master, token).is_err(), "a session token opened as master");
    match out_data.get("masterToken") {
        Some(Value::String(master)) => {
            let claims = sealer().open_ignoring_expiry(TokenKind::Master, master).expect("the master token opens");
            assert_eq!(Some(claims.upstream_token.as_str()), input["data"]["masterToken"].as_str());
        }
        None => assert!(!matches!(&input["data"]["masterToken"], Value::String(s) if !s.is_empty())),
        Some(other) => panic!("masterToken {other:?} passed on"),
    }
}

fn renew_request(data: &[u8]) {
    let master = master();
    let session =
        TokenClaims { upstream_token: UPSTREAM_SESSION_TOKEN.into(), expires_at_unix_ms: 1, ..master.clone() };
    let sealed = sealer().seal(TokenKind::Session, &session);
    let text = String::from_utf8_lossy(data).replace("SEALED", &sealed);
    let result = rewrite_renew_request(text.as_bytes(), sealer(), &master);
    let Ok(rewritten) = result else { return };
    let mut input: Value = serde_json::from_str(&text).expect("a rewritten renewal was JSON");
    let mut output: Value = serde_json::from_slice(&rewritten).expect("the rewritten renewal is JSON");
    assert_eq!(input["oldSessionToken"], Value::String(sealed), "rewrote a token this sealer did not make");
    assert_eq!(output["oldSessionToken"], Value::String(UPSTREAM_SESSION_TOKEN.into()));
    assert_eq!(output["requestType"], "RENEW", "a renewal went upstream as another request type");
    output["oldSessionToken"] = input["oldSessionToken"].clone();
    // The Node spelling of the type goes upstream in the others'.
    if let Some(object) = input.as_object_mut()
        && let Some(kind) = object.remove("REQUEST_TYPE")
    {
        object.insert("requestType".into(), kind);
    }
    assert_eq!(output, input, "the rewrite changed another member");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => query_request(rest),
        1 => {
            answer(rest);
            sql_api_answer(rest);
        }
        2 => login_answer(rest),
        _ => renew_request(rest),
    }
});
