//! Fuzz target `login_rewrite`: login bodies from agents. Invariants: parsing and rewriting
//! never panic; the rewritten body is the agent's document with every secret login field
//! removed, in any case (its OIDC token, passwords, passcodes, SAML, secondary roles...) and the gateway's
//! account, user and credential written in, nothing else changed. The agent's token survives
//! only where the agent itself put it outside the `TOKEN` field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use snowgate::session::credential::{Secret, UpstreamCredential};
use snowgate::session::login::{SECRET_LOGIN_FIELDS, parse_login_request};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_login_request(data) else { return };
    let token = request.oidc_token.clone();
    let credential = UpstreamCredential::Password(Secret::new("gateway-password".into()));
    let body = request.into_upstream_body("ACCT", "USER", &credential, 0);
    let output: Map<String, Value> = serde_json::from_slice(&body).expect("the rewrite is JSON");

    let mut expected: Map<String, Value> = serde_json::from_slice(data).expect("a parsed login is JSON");
    let expected_data = expected.get_mut("data").and_then(Value::as_object_mut).expect("a parsed login has data");
    assert_eq!(expected_data.get("TOKEN"), Some(&Value::String(token)));
    expected_data.retain(|key, _| !SECRET_LOGIN_FIELDS.iter().any(|field| field.eq_ignore_ascii_case(key)));
    for (field, value) in [
        ("ACCOUNT_NAME", "ACCT"),
        ("LOGIN_NAME", "USER"),
        ("AUTHENTICATOR", "SNOWFLAKE"),
        ("PASSWORD", "gateway-password"),
    ] {
        expected_data.insert(field.into(), Value::String(value.into()));
    }
    assert_eq!(output, expected, "the rewrite changed more than the credential fields");
});
