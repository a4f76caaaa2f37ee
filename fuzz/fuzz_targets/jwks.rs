//! Fuzz target `jwks`: the JWKS document an identity provider serves, fed to
//! `Verifier::finish_refetch` as a fetch would. Invariants: loading never panics (one broken key
//! once did, an Ed25519 key shorter than 32 bytes); a document is taken only when it is a JSON
//! object with a `keys` array; and a token signed with the test IdP's P-256 key verifies only
//! when the document lists that key's public point.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use snowgate::identity::{IdentityConfig, JwksSource, Verifier};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "snowgate";
const CLAIMS: &str =
    r#"{"iss":"https://idp.test/","aud":"snowgate","sub":"agent-1","exp":4102444800,"groups":["analysts"]}"#;
/// The fixture P-256 key's public x coordinate (`tests/fixtures/keys/jwks.json`, `key-ec`).
fn fixture_x() -> &'static str {
    static X: OnceLock<String> = OnceLock::new();
    X.get_or_init(|| {
        let jwks: Value = serde_json::from_slice(&std::fs::read(keys_dir().join("jwks.json")).unwrap()).unwrap();
        jwks["keys"][1]["x"].as_str().unwrap().to_owned()
    })
}

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys")
}

/// A token for `kid`, signed with the fixture's P-256 key.
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let key = EncodingKey::from_ec_pem(&std::fs::read(keys_dir().join("idp-ec.pem")).unwrap()).unwrap();
        let header = r#"{"alg":"ES256","kid":"key-ec","typ":"JWT"}"#;
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(CLAIMS));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    })
}

fuzz_target!(|data: &[u8]| {
    let config = IdentityConfig {
        algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        lifetime_max: std::time::Duration::from_secs(100 * 365 * 86_400),
        ..IdentityConfig::new(ISSUER, vec![AUDIENCE.to_owned()])
    };
    let verifier = Verifier::new(config, JwksSource::Url("https://idp.test/jwks".into())).unwrap();
    let now = Instant::now();
    let permit = verifier.begin_refetch(now).expect("a first refetch is allowed");
    let loaded = verifier.finish_refetch(permit, Ok(data), now).is_ok();
    let document = serde_json::from_slice::<Value>(data).ok();
    let keys = document.as_ref().and_then(|d| d.get("keys")).and_then(Value::as_array);
    // serde_json may fail where the gateway's reading succeeds (numbers out of range, invalid
    // UTF-8 in a member nobody reads): judge only documents it reads.
    if loaded && document.is_some() {
        assert!(keys.is_some_and(|keys| !keys.is_empty()), "a document without keys was taken");
    }
    let verified = verifier.verify(token(), now).is_ok();
    if verified {
        assert!(loaded);
        if let Some(keys) = keys {
            let listed = keys.iter().any(|key| key.get("x").and_then(Value::as_str) == Some(fixture_x()));
            assert!(listed, "a token verified against a document without its key");
        }
    }
});
