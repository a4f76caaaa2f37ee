//! Login bodies from agents: parsing and rewriting never panic, and the rewritten body never
//! carries the agent's token or any secret field besides the gateway's own credential.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowgate::session::credential::{Secret, UpstreamCredential};
use snowgate::session::login::parse_login_request;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_login_request(data) else { return };
    let token = request.oidc_token.clone();
    let credential = UpstreamCredential::Password(Secret::new("gateway-password".into()));
    let body = request.into_upstream_body("ACCT", "USER", &credential, 0);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("the rewrite is JSON");
    let data = &value["data"];
    assert_eq!(data["AUTHENTICATOR"], "SNOWFLAKE");
    assert_eq!(data["PASSWORD"], "gateway-password");
    assert!(data.get("TOKEN").is_none() && data.get("PASSCODE").is_none());
    if token.len() > 8 {
        assert!(!String::from_utf8_lossy(&body).contains(&token));
    }
});
