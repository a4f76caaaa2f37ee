//! Fuzz target `jwt_header`: OIDC tokens from agents, against the test identity provider's
//! JWKS (`tests/fixtures/keys/jwks.json`). The first byte chooses what the rest is: a raw
//! token; a header (arbitrary bytes) over good claims, signed with the IdP's P-256 key; or
//! good header over arbitrary claims, signed the same way. Invariants: verifying never panics;
//! the early refusals are the documented ones (empty, too long, not three base64url segments,
//! `alg` none in any case); nothing unsigned by the IdP ever verifies; a token that verifies
//! has a header naming ES256 (and `key-ec` or no `kid`) without `crit`, and claims that meet
//! every documented check, with the identity taken from them.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use snowgate::identity::{AuthError, IdentityConfig, JwksSource, SUB_BYTES_MAX, Verifier};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "snowgate";
/// The claims the seeds sign: valid until 2100 (the verifier accepts lifetimes up to
/// [`LIFETIME_MAX_SECS`]).
const GOOD_CLAIMS: &str =
    r#"{"iss":"https://idp.test/","aud":"snowgate","sub":"agent-1","exp":4102444800,"groups":["analysts"]}"#;
/// A hundred years: tokens living longer are refused.
const LIFETIME_MAX_SECS: u64 = 100 * 365 * 86_400;
const GOOD_HEADER: &str = r#"{"alg":"ES256","kid":"key-ec","typ":"JWT"}"#;

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys")
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = IdentityConfig {
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            lifetime_max: std::time::Duration::from_secs(LIFETIME_MAX_SECS),
            ..IdentityConfig::new(ISSUER, vec![AUDIENCE.to_owned()])
        };
        Verifier::new(config, JwksSource::File(keys_dir().join("jwks.json"))).unwrap()
    })
}

fn signing_key() -> &'static EncodingKey {
    static KEY: OnceLock<EncodingKey> = OnceLock::new();
    KEY.get_or_init(|| EncodingKey::from_ec_pem(&std::fs::read(keys_dir().join("idp-ec.pem")).unwrap()).unwrap())
}

/// A compact JWS over these exact header and claims bytes, signed by the IdP's P-256 key.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), signing_key(), Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

/// What the verifier must refuse before it looks at any key, judged independently.
fn check_early_refusals(token: &str, result: &Result<snowgate::identity::Identity, AuthError>) {
    let max = verifier().config().token_bytes_max;
    if token.is_empty() {
        assert_eq!(result.as_ref().unwrap_err(), &AuthError::Missing);
        return;
    }
    if token.len() > max {
        assert_eq!(result.as_ref().unwrap_err(), &AuthError::TooLarge { size_max_bytes: max });
        return;
    }
    let segments: Vec<&str> = token.split('.').collect();
    let base64url = token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !base64url || segments.len() != 3 || segments[0].is_empty() || segments[1].is_empty() {
        assert_eq!(result.as_ref().unwrap_err(), &AuthError::Malformed);
        return;
    }
    if let Ok(header) = URL_SAFE_NO_PAD.decode(segments[0])
        && let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header)
        && let Some(Value::String(alg)) = header.get("alg")
        && alg.eq_ignore_ascii_case("none")
    {
        // A duplicate member makes it Malformed first; never anything that could pass.
        assert!(matches!(result, Err(AuthError::AlgorithmNotAllowed | AuthError::Malformed)), "{result:?}");
    }
}

/// What must hold of a header and claims whose token verified.
fn check_accepted(header: &[u8], claims: &[u8], identity: &snowgate::identity::Identity) {
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(header) else { panic!("header not an object") };
    assert_eq!(header.get("alg"), Some(&Value::String("ES256".into())));
    assert!(!header.contains_key("crit"), "a crit header was accepted");
    assert!(matches!(header.get("kid"), None | Some(Value::String(_))));
    if let Some(Value::String(kid)) = header.get("kid") {
        assert_eq!(kid, "key-ec");
    }
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(claims) else { panic!("claims not an object") };
    assert_eq!(claims.get("iss"), Some(&Value::String(ISSUER.into())));
    match claims.get("aud") {
        Some(Value::String(aud)) => assert_eq!(aud, AUDIENCE),
        Some(Value::Array(auds)) => assert!(auds.contains(&Value::String(AUDIENCE.into()))),
        other => panic!("aud {other:?} accepted"),
    }
    let Some(Value::String(sub)) = claims.get("sub") else { panic!("sub missing or not a string") };
    assert_eq!(&identity.sub, sub);
    assert!(!sub.is_empty() && sub.len() <= SUB_BYTES_MAX && !sub.chars().any(char::is_control));
    let Some(exp) = claims.get("exp").and_then(Value::as_f64) else { panic!("exp missing or not a number") };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(exp >= 0.0 && exp + 60.0 >= now, "an expired token verified");
    assert_eq!(identity.expires_at_unix, exp as u64);
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("nbf not a number");
        assert!(nbf >= 0.0 && nbf - 60.0 <= now, "a token not valid yet verified");
    }
    let issued = match claims.get("iat") {
        None => now,
        Some(iat) => {
            let iat = iat.as_f64().expect("iat not a number");
            assert!(iat >= 0.0 && iat - 60.0 <= now, "a token issued in the future verified");
            iat.min(now)
        }
    };
    assert!(exp - issued <= (LIFETIME_MAX_SECS + 60) as f64, "a token living too long verified");
    for group in &identity.groups {
        match claims.get("groups") {
            Some(Value::String(one)) => assert_eq!(one, group),
            Some(Value::Array(all)) => assert!(all.contains(&Value::String(group.clone()))),
            other => panic!("groups {other:?} gave {group}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let now = Instant::now();
    match mode % 3 {
        0 => {
            let Ok(token) = std::str::from_utf8(rest) else { return };
            let result = verifier().verify(token, now);
            check_early_refusals(token, &result);
            // The fuzzer holds no key of the IdP: it cannot forge a signature.
            assert!(result.is_err(), "a token nobody signed verified");
        }
        1 => {
            let token = signed(rest, GOOD_CLAIMS.as_bytes());
            let result = verifier().verify(&token, now);
            check_early_refusals(&token, &result);
            if let Ok(identity) = &result {
                check_accepted(rest, GOOD_CLAIMS.as_bytes(), identity);
            }
        }
        _ => {
            let token = signed(GOOD_HEADER.as_bytes(), rest);
            let result = verifier().verify(&token, now);
            check_early_refusals(&token, &result);
            if let Ok(identity) = &result {
                check_accepted(GOOD_HEADER.as_bytes(), rest, identity);
            }
        }
    }
});
