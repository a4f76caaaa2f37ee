//! Unit tests of the [`Verifier`](super::Verifier): tokens minted with jsonwebtoken from the
//! test keys in `tests/fixtures/keys/`, hand-made hostile tokens, and JWKS rotation driven with
//! synthetic instants.

use super::*;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, encode};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "snowgate";
const JWKS_URL: &str = "https://idp.test/.well-known/jwks.json";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn config() -> IdentityConfig {
    IdentityConfig::new(ISSUER, vec![AUDIENCE.to_owned()])
}

fn config_with(algorithms: &[Algorithm]) -> IdentityConfig {
    IdentityConfig { algorithms: algorithms.to_vec(), ..config() }
}

fn file_verifier(config: IdentityConfig) -> Verifier {
    Verifier::new(config, JwksSource::File(fixture("jwks.json"))).unwrap()
}

/// The verifier most tests use: RS256 only, keys `key-a` (RSA) and `key-ec` (P-256).
fn verifier() -> Verifier {
    file_verifier(config())
}

fn url_verifier() -> Verifier {
    Verifier::new(config(), JwksSource::Url(JWKS_URL.to_owned())).unwrap()
}

/// A verifier that lets HS256 through its allow-list, which configuration validation forbids,
/// to prove that the key checks behind the allow-list refuse HMAC on their own.
fn hs256_forced_verifier() -> Verifier {
    let mut verifier = verifier();
    let validation = verifier.config.validation_for(Algorithm::HS256);
    verifier.config.algorithms.push(Algorithm::HS256);
    verifier.validations.push((Algorithm::HS256, validation));
    verifier
}

fn now_unix() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "agent-7",
        "iat": now_unix(),
        "exp": now_unix() + 600,
        "groups": ["analysts", "readers"],
    })
}

fn claims_with(name: &str, value: Value) -> Value {
    let mut claims = claims();
    claims[name] = value;
    claims
}

fn claims_without(name: &str) -> Value {
    let mut claims = claims();
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn rsa_key(file: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read(file)).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read("idp-ec.pem")).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

/// A token from the IdP's key `key-a`.
fn token_a(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("key-a"), &rsa_key("idp-a.pem"), claims)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token from raw header and payload text, validly signed, so that the JSON itself can be
/// hostile (duplicate members, say).
fn sign_raw(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// A token with an arbitrary signature.
fn hand_made(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string()), b64(claims.to_string()), b64(signature))
}

fn check(verifier: &Verifier, token: &str) -> Result<Identity, AuthError> {
    verifier.verify(token, Instant::now())
}

#[track_caller]
fn assert_refused(verifier: &Verifier, token: &str, expected: AuthError) {
    assert_eq!(check(verifier, token), Err(expected));
}

// --- accepted tokens -------------------------------------------------------------------------

#[test]
fn valid_token_is_accepted_with_array_groups() {
    let claims = claims();
    let identity = check(&verifier(), &token_a(&claims)).unwrap();
    assert_eq!(identity.sub, "agent-7");
    assert_eq!(identity.groups, ["analysts", "readers"]);
    assert_eq!(identity.expires_at_unix, claims["exp"].as_u64().unwrap());
}

#[test]
fn valid_token_with_single_string_group_is_accepted() {
    let identity = check(&verifier(), &token_a(&claims_with("groups", json!("analysts")))).unwrap();
    assert_eq!(identity.groups, ["analysts"]);
}

#[test]
fn valid_token_without_groups_has_no_groups() {
    let identity = check(&verifier(), &token_a(&claims_without("groups"))).unwrap();
    assert!(identity.groups.is_empty());
}

#[test]
fn groups_of_the_wrong_type_are_refused() {
    for groups in [json!(7), json!({"a": 1}), json!(["ok", 2]), json!(null)] {
        assert_refused(&verifier(), &token_a(&claims_with("groups", groups)), AuthError::InvalidClaim("groups"));
    }
}

#[test]
fn audience_array_containing_ours_is_accepted() {
    let token = token_a(&claims_with("aud", json!(["someone-else", AUDIENCE])));
    assert!(check(&verifier(), &token).is_ok());
}

#[test]
fn fractional_exp_is_accepted_and_rounded_down() {
    let exp = now_unix() as f64 + 600.75;
    let identity = check(&verifier(), &token_a(&claims_with("exp", json!(exp)))).unwrap();
    assert_eq!(identity.expires_at_unix, exp.floor() as u64);
}

#[test]
fn token_without_kid_uses_the_only_key_for_its_algorithm() {
    let token = sign(Algorithm::RS256, None, &rsa_key("idp-a.pem"), &claims());
    assert!(check(&verifier(), &token).is_ok());
}

#[test]
fn es256_is_accepted_when_allowed_and_uses_the_ec_key() {
    let verifier = file_verifier(config_with(&[Algorithm::RS256, Algorithm::ES256]));
    let token = sign(Algorithm::ES256, Some("key-ec"), &ec_key(), &claims());
    assert_eq!(check(&verifier, &token).unwrap().sub, "agent-7");
    let without_kid = sign(Algorithm::ES256, None, &ec_key(), &claims());
    assert!(check(&verifier, &without_kid).is_ok());
    // The same token naming the RSA key is refused: the key's type decides, not the kid.
    let wrong_kid = sign(Algorithm::ES256, Some("key-a"), &ec_key(), &claims());
    assert_refused(&verifier, &wrong_kid, AuthError::KeyMismatch);
}

#[test]
fn es256_is_refused_when_not_allowed() {
    let token = sign(Algorithm::ES256, Some("key-ec"), &ec_key(), &claims());
    assert_refused(&verifier(), &token, AuthError::AlgorithmNotAllowed);
}

#[test]
fn expiry_within_leeway_is_accepted() {
    let token = token_a(&claims_with("exp", json!(now_unix() - 10)));
    assert!(check(&verifier(), &token).is_ok());
    let strict = file_verifier(IdentityConfig { leeway: Duration::ZERO, ..config() });
    assert_refused(&strict, &token, AuthError::Expired);
}

#[test]
fn tokens_issued_in_the_future_or_living_too_long_are_refused() {
    let verifier = verifier();
    assert_refused(&verifier, &token_a(&claims_with("iat", json!(now_unix() + 600))), AuthError::NotYetValid);
    assert_refused(&verifier, &token_a(&claims_with("iat", json!("now"))), AuthError::InvalidClaim("iat"));
    // A day is the default: a token for a year is refused, whether or not it says when it was
    // issued.
    let a_year = json!(now_unix() + 365 * 86_400);
    let too_long = AuthError::LifetimeTooLong { lifetime_max_secs: 86_400 };
    assert_refused(&verifier, &token_a(&claims_with("exp", a_year.clone())), too_long);
    let mut without_iat = claims_without("iat");
    without_iat["exp"] = a_year;
    assert_refused(&verifier, &token_a(&without_iat), too_long);
    // Ten minutes pass a ten-minute limit, not a five-minute one.
    let ten_minutes = file_verifier(IdentityConfig { lifetime_max: Duration::from_secs(600), ..config() });
    assert!(check(&ten_minutes, &token_a(&claims())).is_ok());
    let five_minutes =
        file_verifier(IdentityConfig { lifetime_max: Duration::from_secs(300), leeway: Duration::ZERO, ..config() });
    assert_refused(&five_minutes, &token_a(&claims()), AuthError::LifetimeTooLong { lifetime_max_secs: 300 });
}

// --- refused tokens: framing -----------------------------------------------------------------

#[test]
fn empty_token_is_missing() {
    assert_refused(&verifier(), "", AuthError::Missing);
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let limit = DEFAULT_TOKEN_BYTES_MAX;
    // Not even a JWT: the size check comes first.
    assert_refused(&verifier(), &"a".repeat(limit + 1), AuthError::TooLarge { size_max_bytes: limit });
    // A valid token made too large by a fat claim.
    let token = token_a(&claims_with("pad", json!("x".repeat(limit))));
    assert_refused(&verifier(), &token, AuthError::TooLarge { size_max_bytes: limit });
    // The limit is configurable.
    let small = file_verifier(IdentityConfig { token_bytes_max: 64, ..config() });
    assert_refused(&small, &token_a(&claims()), AuthError::TooLarge { size_max_bytes: 64 });
}

#[test]
fn five_segment_token_is_refused() {
    let jwe = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn";
    assert_refused(&verifier(), jwe, AuthError::Malformed);
    let valid = token_a(&claims());
    assert_refused(&verifier(), &format!("{valid}.e30.e30"), AuthError::Malformed);
}

#[test]
fn tokens_without_exactly_three_segments_are_refused() {
    let valid = token_a(&claims());
    let (message, _) = valid.rsplit_once('.').unwrap();
    let (header, payload) = message.split_once('.').unwrap();
    for token in [
        "abc".to_owned(),
        message.to_owned(),
        format!("{valid}."),
        format!("{header}..sig"),
        format!(".{payload}.sig"),
        format!("{valid}=="),
        format!("Bearer {valid}"),
        format!("{valid}\n"),
        format!("{header}.{payload}.a+b/c"),
    ] {
        assert_refused(&verifier(), &token, AuthError::Malformed);
    }
}

#[test]
fn headers_that_are_not_usable_json_are_refused() {
    let payload = b64(claims().to_string());
    for header in [
        "not json",
        "[]",
        r#"{"typ":"JWT"}"#,
        r#"{"alg":256}"#,
        r#"{"alg":"RS256","kid":7}"#,
        r#"{"alg":"RS256","alg":"RS256","kid":"key-a"}"#,
    ] {
        assert_refused(&verifier(), &format!("{}.{payload}.c2ln", b64(header)), AuthError::Malformed);
    }
}

#[test]
fn crit_header_is_refused() {
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("key-a".to_owned());
    header.crit = Some(vec!["exp".to_owned()]);
    let token = encode(&header, &claims(), &rsa_key("idp-a.pem")).unwrap();
    assert_refused(&verifier(), &token, AuthError::Malformed);
}

#[test]
fn duplicate_claims_are_refused() {
    let exp = now_unix() + 600;
    let payload = format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"agent-7","sub":"admin","exp":{exp}}}"#);
    let header = r#"{"alg":"RS256","kid":"key-a"}"#;
    let token = sign_raw(header, &payload, Algorithm::RS256, &rsa_key("idp-a.pem"));
    assert_refused(&verifier(), &token, AuthError::Malformed);
    // The same payload without the second `sub` is fine, so the duplicate is what is refused.
    let single = payload.replace(r#","sub":"admin""#, "");
    assert!(check(&verifier(), &sign_raw(header, &single, Algorithm::RS256, &rsa_key("idp-a.pem"))).is_ok());
}

// --- refused tokens: algorithms and keys -----------------------------------------------------

#[test]
fn alg_none_is_refused_in_every_case() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "key-a"});
        for signature in [&b""[..], b"anything"] {
            let token = hand_made(&header, &claims(), signature);
            assert_refused(&verifier(), &token, AuthError::AlgorithmNotAllowed);
        }
    }
}

#[test]
fn unknown_algorithm_names_are_refused() {
    for alg in ["", "RS1", "rs256", "HS256 ", "ES512", "RSA-OAEP"] {
        let token = hand_made(&json!({"alg": alg, "kid": "key-a"}), &claims(), b"sig");
        assert_refused(&verifier(), &token, AuthError::AlgorithmNotAllowed);
    }
}

#[test]
fn algorithm_not_in_allow_list_is_refused() {
    let token = sign(Algorithm::RS512, Some("key-a"), &rsa_key("idp-a.pem"), &claims());
    assert_refused(&verifier(), &token, AuthError::AlgorithmNotAllowed);
    // Allowing RS512 is not enough either: the JWKS pins key-a to RS256.
    let verifier = file_verifier(config_with(&[Algorithm::RS256, Algorithm::RS512]));
    assert_refused(&verifier, &token, AuthError::KeyMismatch);
}

#[test]
fn hmac_is_refused_by_configuration() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let result = Verifier::new(config_with(&[Algorithm::RS256, alg]), JwksSource::File(fixture("jwks.json")));
        assert!(matches!(result, Err(JwksError::InvalidConfig(_))));
    }
}

/// Signs an HS256 token with `secret` (some form of key-a's public key) and checks that it is
/// refused by the allow-list, by key selection when the allow-list is forced open, and by
/// jsonwebtoken itself when handed key-a for HS256.
fn assert_hs256_with_public_key_refused(secret: &[u8]) {
    let with_kid = sign(Algorithm::HS256, Some("key-a"), &EncodingKey::from_secret(secret), &claims());
    let without_kid = sign(Algorithm::HS256, None, &EncodingKey::from_secret(secret), &claims());
    assert_refused(&verifier(), &with_kid, AuthError::AlgorithmNotAllowed);
    assert_refused(&verifier(), &without_kid, AuthError::AlgorithmNotAllowed);

    let forced = hs256_forced_verifier();
    assert_refused(&forced, &with_kid, AuthError::KeyMismatch);
    assert_refused(&forced, &without_kid, AuthError::UnknownKey);

    let keys = forced.keys.load();
    let key_a = keys.set.select(Some("key-a"), Algorithm::RS256).unwrap();
    let validation = forced.config.validation_for(Algorithm::HS256);
    let error = jsonwebtoken::decode::<Value>(&with_kid, &key_a.decoding, &validation).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidKeyFormat);
}

#[test]
fn hs256_signed_with_rsa_public_key_pem_is_refused() {
    assert_hs256_with_public_key_refused(&read("idp-a.pub.pem"));
}

#[test]
fn hs256_signed_with_rsa_public_key_der_is_refused() {
    let pem = String::from_utf8(read("idp-a.pub.pem")).unwrap();
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let spki_der = STANDARD.decode(body).unwrap();
    assert_hs256_with_public_key_refused(&spki_der);
    let pkcs1_der = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap().as_bytes().to_vec();
    assert_ne!(pkcs1_der, spki_der);
    assert_hs256_with_public_key_refused(&pkcs1_der);
}

#[test]
fn hs256_signed_with_rsa_modulus_bytes_is_refused() {
    let jwks: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    let n = jwks["keys"][0]["n"].as_str().unwrap();
    assert_hs256_with_public_key_refused(&URL_SAFE_NO_PAD.decode(n).unwrap());
    assert_hs256_with_public_key_refused(n.as_bytes());
    assert_hs256_with_public_key_refused(jwks["keys"][0].to_string().as_bytes());
}

#[test]
fn unknown_kid_is_refused() {
    let token = sign(Algorithm::RS256, Some("key-z"), &rsa_key("idp-a.pem"), &claims());
    assert_refused(&verifier(), &token, AuthError::UnknownKey);
    assert!(AuthError::UnknownKey.refetch_may_help());
}

#[test]
fn empty_kid_is_refused() {
    let token = sign(Algorithm::RS256, Some(""), &rsa_key("idp-a.pem"), &claims());
    assert_refused(&verifier(), &token, AuthError::UnknownKey);
}

#[test]
fn path_like_kid_is_refused() {
    for kid in ["../../etc/passwd", "/etc/passwd", "..\\..\\boot.ini", "file:///etc/passwd", "jwks.json"] {
        let token = sign(Algorithm::RS256, Some(kid), &rsa_key("idp-a.pem"), &claims());
        assert_refused(&verifier(), &token, AuthError::UnknownKey);
    }
}

#[test]
fn kid_of_another_key_type_is_refused() {
    // An RS256 token naming the EC key.
    let token = sign(Algorithm::RS256, Some("key-ec"), &rsa_key("idp-a.pem"), &claims());
    assert_refused(&verifier(), &token, AuthError::KeyMismatch);
}

#[test]
fn embedded_key_headers_are_ignored() {
    let attacker = rsa_key("attacker.pem");
    for kid in [Some("key-a"), None] {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        header.jwk = Some(jsonwebtoken::jwk::Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap());
        header.jku = Some("https://attacker.example/jwks.json".to_owned());
        header.x5u = Some("https://attacker.example/cert.pem".to_owned());
        header.x5c = Some(vec![STANDARD.encode(b"not a certificate")]);
        let token = encode(&header, &claims(), &attacker).unwrap();
        assert_refused(&verifier(), &token, AuthError::BadSignature);
    }
    // A kid that only the embedded key could match stays unknown.
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("attacker".to_owned());
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("attacker".to_owned());
    header.jwk = Some(jwk);
    let token = encode(&header, &claims(), &attacker).unwrap();
    assert_refused(&verifier(), &token, AuthError::UnknownKey);
}

#[test]
fn kid_swap_is_refused() {
    // Signed with idp-b's key but naming key-a.
    let token = sign(Algorithm::RS256, Some("key-a"), &rsa_key("idp-b.pem"), &claims());
    assert_refused(&verifier(), &token, AuthError::BadSignature);
}

#[test]
fn tampered_payload_is_refused() {
    let token = token_a(&claims());
    let mut segments: Vec<&str> = token.split('.').collect();
    let forged = b64(claims_with("sub", json!("admin")).to_string());
    segments[1] = &forged;
    assert_refused(&verifier(), &segments.join("."), AuthError::BadSignature);
}

#[test]
fn tampered_signature_is_refused() {
    let token = token_a(&claims());
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut signature = signature.as_bytes().to_vec();
    // A character in the middle, so that the base64 stays canonical.
    signature[20] = if signature[20] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{message}.{}", String::from_utf8(signature).unwrap());
    assert_refused(&verifier(), &tampered, AuthError::BadSignature);
    assert_refused(&verifier(), &format!("{message}."), AuthError::BadSignature);
}

// --- refused tokens: claims ------------------------------------------------------------------

#[test]
fn expired_token_is_refused() {
    let token = token_a(&claims_with("exp", json!(now_unix() - 3600)));
    let error = check(&verifier(), &token).unwrap_err();
    assert_eq!(error, AuthError::Expired);
    assert_eq!(error.snowflake_code(), "390318");
    assert_eq!(error.to_string(), "OIDC token expired");
}

#[test]
fn not_yet_valid_token_is_refused() {
    let token = token_a(&claims_with("nbf", json!(now_unix() + 3600)));
    assert_refused(&verifier(), &token, AuthError::NotYetValid);
    // Within leeway it is fine.
    assert!(check(&verifier(), &token_a(&claims_with("nbf", json!(now_unix() + 10)))).is_ok());
}

#[test]
fn wrong_audience_is_refused() {
    assert_refused(&verifier(), &token_a(&claims_with("aud", json!("someone-else"))), AuthError::WrongAudience);
    assert_refused(&verifier(), &token_a(&claims_with("aud", json!(["a", "b"]))), AuthError::WrongAudience);
}

#[test]
fn reviewer_tokens_verify_only_for_reviewing_once_their_audience_is_set() {
    let now = Instant::now();
    let split = file_verifier(IdentityConfig { reviewer_audiences: vec!["snowgate-review".to_owned()], ..config() });
    let agent = token_a(&claims());
    let reviewer = token_a(&claims_with("aud", json!("snowgate-review")));
    let both = token_a(&claims_with("aud", json!([AUDIENCE, "snowgate-review"])));
    assert!(split.verify_for(&agent, now, TokenUse::Agent).is_ok());
    assert!(split.verify_for(&reviewer, now, TokenUse::Reviewer).is_ok());
    assert_eq!(split.verify_for(&agent, now, TokenUse::Reviewer), Err(AuthError::WrongAudience));
    assert_eq!(split.verify(&reviewer, now), Err(AuthError::WrongAudience));
    assert_eq!(split.verify(&both, now), Err(AuthError::MixedAudience));
    assert_eq!(split.verify_for(&both, now, TokenUse::Reviewer), Err(AuthError::MixedAudience));
    // Unset, both uses take the agents' audience (and nothing else).
    assert!(verifier().verify_for(&agent, now, TokenUse::Reviewer).is_ok());
    assert_eq!(verifier().verify_for(&reviewer, now, TokenUse::Reviewer), Err(AuthError::WrongAudience));
}

#[test]
fn wrong_issuer_is_refused() {
    assert_refused(&verifier(), &token_a(&claims_with("iss", json!("https://evil.test/"))), AuthError::WrongIssuer);
    // Exact match: the trailing slash matters.
    assert_refused(&verifier(), &token_a(&claims_with("iss", json!("https://idp.test"))), AuthError::WrongIssuer);
}

#[test]
fn issuer_array_is_refused_even_if_it_holds_ours() {
    // jsonwebtoken alone would accept this.
    let token = token_a(&claims_with("iss", json!([ISSUER, "https://evil.test/"])));
    assert_refused(&verifier(), &token, AuthError::InvalidClaim("iss"));
}

#[test]
fn missing_aud_is_refused() {
    assert_refused(&verifier(), &token_a(&claims_without("aud")), AuthError::MissingClaim("aud"));
}

#[test]
fn missing_exp_is_refused() {
    assert_refused(&verifier(), &token_a(&claims_without("exp")), AuthError::MissingClaim("exp"));
}

#[test]
fn missing_iss_or_sub_is_refused() {
    assert_refused(&verifier(), &token_a(&claims_without("iss")), AuthError::MissingClaim("iss"));
    assert_refused(&verifier(), &token_a(&claims_without("sub")), AuthError::MissingClaim("sub"));
}

#[test]
fn bad_sub_is_refused() {
    for sub in [json!(""), json!(42), json!("line\nbreak"), json!("s".repeat(SUB_BYTES_MAX + 1))] {
        assert_refused(&verifier(), &token_a(&claims_with("sub", sub)), AuthError::InvalidClaim("sub"));
    }
}

#[test]
fn exp_as_string_is_refused() {
    assert_refused(&verifier(), &token_a(&claims_with("exp", json!("9999999999"))), AuthError::InvalidClaim("exp"));
}

#[test]
fn exp_of_other_json_types_is_refused() {
    for exp in [json!("9999999999.5"), json!(true), json!(null), json!([9999999999u64]), json!({"t": 1}), json!(-5)] {
        assert_refused(&verifier(), &token_a(&claims_with("exp", exp)), AuthError::InvalidClaim("exp"));
    }
}

#[test]
fn nbf_of_wrong_json_types_is_refused() {
    for nbf in [json!("0"), json!("1.5"), json!(true), json!(null), json!([0]), json!({"t": 0}), json!(-5)] {
        assert_refused(&verifier(), &token_a(&claims_with("nbf", nbf.clone())), AuthError::InvalidClaim("nbf"));
    }
}

#[test]
fn jsonwebtoken_itself_refuses_string_exp_at_this_version() {
    // GHSA-h395-gr6q-cpjc: before 10.3, an `exp` or `nbf` that was not a number was treated as
    // absent and so skipped. This pins the fixed behaviour of the version we build with.
    let keys = verifier().keys.load_full();
    let key = &keys.set.select(Some("key-a"), Algorithm::RS256).unwrap().decoding;

    let mut optional_exp = Validation::new(Algorithm::RS256);
    optional_exp.required_spec_claims.clear();
    optional_exp.validate_aud = false;
    let token = token_a(&claims_with("exp", json!("9999999999")));
    let error = jsonwebtoken::decode::<Value>(&token, key, &optional_exp).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidClaimFormat("exp".to_owned()));

    let mut with_nbf = optional_exp.clone();
    with_nbf.validate_nbf = true;
    let token = token_a(&claims_with("nbf", json!("0")));
    let error = jsonwebtoken::decode::<Value>(&token, key, &with_nbf).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidClaimFormat("nbf".to_owned()));

    let ours = config().validation_for(Algorithm::RS256);
    let token = token_a(&claims_with("exp", json!("9999999999")));
    assert!(jsonwebtoken::decode::<Value>(&token, key, &ours).is_err());
}

#[test]
fn messages_never_echo_the_token() {
    let marker = "LEAKMARKER";
    let claims = json!({
        "iss": format!("https://{marker}.test/"),
        "aud": marker,
        "sub": marker,
        "exp": marker,
        "groups": [marker, 1],
    });
    let tokens = [
        token_a(&claims),
        token_a(&claims_with("aud", json!(marker))),
        token_a(&claims_with("iss", json!(marker))),
        token_a(&claims_with("groups", json!([marker, 1]))),
        sign(Algorithm::RS256, Some(marker), &rsa_key("idp-a.pem"), &claims),
        hand_made(&json!({"alg": marker}), &claims, marker.as_bytes()),
        format!("{marker}.{marker}.{marker}"),
        format!("{marker}{}", "x".repeat(DEFAULT_TOKEN_BYTES_MAX)),
    ];
    for token in tokens {
        let error = check(&verifier(), &token).unwrap_err();
        assert!(!error.to_string().contains(marker), "{error}");
        assert!(!format!("{error:?}").contains(marker), "{error:?}");
    }
}

#[test]
fn snowflake_codes_and_refetch_hints() {
    let all = [
        AuthError::Missing,
        AuthError::TooLarge { size_max_bytes: 1 },
        AuthError::Malformed,
        AuthError::AlgorithmNotAllowed,
        AuthError::UnknownKey,
        AuthError::MissingKeyId,
        AuthError::KeyMismatch,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::MissingClaim("exp"),
        AuthError::InvalidClaim("exp"),
        AuthError::KeysUnavailable,
        AuthError::KeysStale,
    ];
    for error in all {
        let code = if error == AuthError::Expired { "390318" } else { "390303" };
        assert_eq!(error.snowflake_code(), code, "{error}");
        let helps = matches!(error, AuthError::UnknownKey | AuthError::KeysUnavailable | AuthError::KeysStale);
        assert_eq!(error.refetch_may_help(), helps, "{error}");
        assert!(error.to_string().starts_with("OIDC "), "{error}");
    }
    assert_eq!(AuthError::WrongAudience.to_string(), "OIDC token audience is not accepted");
}

#[test]
fn verifier_and_permit_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Verifier>();
    assert_send_sync::<RefetchPermit>();
}

#[test]
fn invalid_configurations_are_refused() {
    let bad = [
        IdentityConfig { issuer: String::new(), ..config() },
        IdentityConfig { audiences: vec![], ..config() },
        IdentityConfig { audiences: vec![String::new()], ..config() },
        IdentityConfig { algorithms: vec![], ..config() },
        IdentityConfig { groups_claim: String::new(), ..config() },
        IdentityConfig { token_bytes_max: 0, ..config() },
        IdentityConfig { refetch_interval_min: Duration::ZERO, ..config() },
        IdentityConfig { cache_ttl: Duration::from_secs(1), ..config() },
    ];
    for config in bad {
        let result = Verifier::new(config.clone(), JwksSource::Url(JWKS_URL.to_owned()));
        assert!(matches!(result, Err(JwksError::InvalidConfig(_))), "{config:?}");
    }
    assert!(config().validate().is_ok());
}

// --- file sources ----------------------------------------------------------------------------

/// key-a and key-b as JWKs, from the fixture JWKS and idp-b's public key.
fn jwk_a() -> Value {
    let jwks: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    jwks["keys"][0].clone()
}

fn jwk_b() -> Value {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    let pem = String::from_utf8(read("idp-b.pub.pem")).unwrap();
    let key = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
    json!({
        "kty": "RSA",
        "kid": "key-b",
        "use": "sig",
        "alg": "RS256",
        "n": b64(key.n().to_bytes_be()),
        "e": b64(key.e().to_bytes_be()),
    })
}

fn jwks_document(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

fn token_b(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("key-b"), &rsa_key("idp-b.pem"), claims)
}

#[test]
fn file_source_is_loaded_now_and_errors_name_the_file() {
    let missing = fixture("no-such-jwks.json");
    let error = Verifier::new(config(), JwksSource::File(missing)).unwrap_err();
    assert!(error.to_string().contains("no-such-jwks.json"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("only-oct.json");
    std::fs::write(&path, br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    let error = Verifier::new(config(), JwksSource::File(path)).unwrap_err();
    assert!(error.to_string().contains("only-oct.json"), "{error}");
}

#[test]
fn file_source_never_issues_refetch_permits() {
    let verifier = verifier();
    assert!(verifier.begin_refetch(Instant::now()).is_none());
    assert_eq!(verifier.source(), &JwksSource::File(fixture("jwks.json")));
}

#[test]
fn file_source_keys_do_not_age() {
    let far_future = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    assert!(verifier().verify(&token_a(&claims()), far_future).is_ok());
}

#[test]
fn reload_file_swaps_keys_and_keeps_them_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_document(&[jwk_a()])).unwrap();
    let verifier = Verifier::new(config(), JwksSource::File(path.clone())).unwrap();
    assert_refused(&verifier, &token_b(&claims()), AuthError::UnknownKey);

    std::fs::write(&path, jwks_document(&[jwk_a(), jwk_b()])).unwrap();
    verifier.reload_file().unwrap();
    assert!(check(&verifier, &token_b(&claims())).is_ok());

    std::fs::write(&path, b"{ not json").unwrap();
    let error = verifier.reload_file().unwrap_err();
    assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    assert!(check(&verifier, &token_b(&claims())).is_ok());

    std::fs::write(&path, jwks_document(&[jwk_a()])).unwrap();
    verifier.reload_file().unwrap();
    assert_refused(&verifier, &token_b(&claims()), AuthError::UnknownKey);

    assert!(matches!(url_verifier().reload_file(), Err(JwksError::NotAFile)));
}

// --- URL sources: rotation and rate limiting -------------------------------------------------

/// Fetches (pretends to) `keys` at `now`, which must be allowed by the rate limit.
#[track_caller]
fn refetch(verifier: &Verifier, keys: &[Value], now: Instant) {
    let permit = verifier.begin_refetch(now).expect("a refetch permit");
    verifier.finish_refetch(permit, Ok(&jwks_document(keys)), now).unwrap();
}

#[test]
fn url_source_starts_empty_until_fetched() {
    let verifier = url_verifier();
    let t0 = Instant::now();
    let error = verifier.verify(&token_a(&claims()), t0).unwrap_err();
    assert_eq!(error, AuthError::KeysUnavailable);
    assert!(error.refetch_may_help());
    refetch(&verifier, &[jwk_a()], t0);
    assert!(verifier.verify(&token_a(&claims()), t0).is_ok());
}

#[test]
fn new_kid_is_picked_up_by_one_refetch() {
    let verifier = url_verifier();
    let t0 = Instant::now();
    refetch(&verifier, &[jwk_a()], t0);

    let t1 = t0 + Duration::from_secs(60);
    let error = verifier.verify(&token_b(&claims()), t1).unwrap_err();
    assert_eq!(error, AuthError::UnknownKey);
    assert!(error.refetch_may_help());
    let permit = verifier.begin_refetch(t1).expect("one permit");
    assert!(verifier.begin_refetch(t1).is_none());
    verifier.finish_refetch(permit, Ok(&jwks_document(&[jwk_a(), jwk_b()])), t1).unwrap();
    assert_eq!(verifier.verify(&token_b(&claims()), t1).unwrap().sub, "agent-7");
    assert!(verifier.verify(&token_a(&claims()), t1).is_ok());
}

#[test]
fn unknown_kid_flood_yields_at_most_one_permit_per_interval() {
    const THREADS: usize = 8;
    const ATTEMPTS: usize = 10_000;
    let verifier = url_verifier();
    let interval = verifier.config().refetch_interval_min;
    let t0 = Instant::now();
    refetch(&verifier, &[jwk_a()], t0);

    let t1 = t0 + interval;
    let unknown = sign(Algorithm::RS256, Some("key-new"), &rsa_key("idp-b.pem"), &claims());
    let permits = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (verifier, unknown, permits) = (&verifier, &unknown, &permits);
            scope.spawn(move || {
                for attempt in 0..ATTEMPTS / THREADS {
                    // Spread over the first 10 ms of the interval, out of order across threads.
                    let now = t1 + Duration::from_micros((attempt * THREADS + thread) as u64);
                    let error = verifier.verify(unknown, now).unwrap_err();
                    assert!(error.refetch_may_help());
                    if let Some(permit) = verifier.begin_refetch(now) {
                        permits.fetch_add(1, Ordering::SeqCst);
                        // The fetch fails, so nothing but the rate limit stops the next one.
                        let result = verifier.finish_refetch(permit, Err("connection refused".to_owned()), now);
                        assert!(matches!(result, Err(JwksError::Fetch(_))));
                    }
                }
            });
        }
    });
    assert_eq!(permits.load(Ordering::SeqCst), 1);

    // The failed fetch kept the old keys.
    assert!(verifier.verify(&token_a(&claims()), t1).is_ok());
    // One interval after the last permit, another is issued.
    let after = t1 + Duration::from_millis(10) + interval;
    assert!(verifier.begin_refetch(after).is_some());
}

#[test]
fn outstanding_permit_blocks_other_fetches() {
    let verifier = url_verifier();
    let t0 = Instant::now();
    let permit = verifier.begin_refetch(t0).unwrap();
    let later = t0 + 3 * verifier.config().refetch_interval_min;
    assert!(verifier.begin_refetch(later).is_none());
    // A dropped permit (a cancelled fetch) frees the slot.
    drop(permit);
    assert!(verifier.begin_refetch(later).is_some());
}

#[test]
fn failed_fetch_keeps_old_keys_and_counts_toward_the_limit() {
    let interval = DEFAULT_REFETCH_INTERVAL_MIN;
    let bodies: [Result<&[u8], String>; 4] = [
        Err("timeout".to_owned()),
        Ok(b"<html>"),
        Ok(b"{\"keys\":[]}"),
        Ok(b"{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"}]}"),
    ];
    for body in bodies {
        let verifier = url_verifier();
        let t0 = Instant::now();
        refetch(&verifier, &[jwk_a()], t0);
        let t1 = t0 + interval;
        let permit = verifier.begin_refetch(t1).unwrap();
        assert!(verifier.finish_refetch(permit, body.clone(), t1).is_err(), "{body:?}");
        assert!(verifier.verify(&token_a(&claims()), t1).is_ok(), "{body:?}");
        // The failure counted: no new permit until one interval after it.
        assert!(verifier.begin_refetch(t1 + interval / 2).is_none());
        assert!(verifier.begin_refetch(t1 + interval).is_some());
    }
}

#[test]
fn keys_older_than_cache_ttl_stop_verifying() {
    let verifier = url_verifier();
    let ttl = verifier.config().cache_ttl;
    let t0 = Instant::now();
    refetch(&verifier, &[jwk_a()], t0);
    assert!(verifier.verify(&token_a(&claims()), t0 + ttl).is_ok());

    let aged = t0 + ttl + Duration::from_secs(1);
    let error = verifier.verify(&token_a(&claims()), aged).unwrap_err();
    assert_eq!(error, AuthError::KeysStale);
    assert!(error.refetch_may_help());
    // A failed refetch does not revive them; a successful one does.
    let permit = verifier.begin_refetch(aged).unwrap();
    let _ = verifier.finish_refetch(permit, Err("timeout".to_owned()), aged);
    assert_eq!(verifier.verify(&token_a(&claims()), aged), Err(AuthError::KeysStale));
    refetch(&verifier, &[jwk_a()], aged + verifier.config().refetch_interval_min);
    assert!(verifier.verify(&token_a(&claims()), aged + verifier.config().refetch_interval_min).is_ok());
}

#[test]
fn removed_key_stops_verifying_after_refetch() {
    let verifier = url_verifier();
    let t0 = Instant::now();
    refetch(&verifier, &[jwk_a(), jwk_b()], t0);
    assert!(verifier.verify(&token_b(&claims()), t0).is_ok());

    let t1 = t0 + Duration::from_secs(60);
    refetch(&verifier, &[jwk_a()], t1);
    assert_eq!(verifier.verify(&token_b(&claims()), t1), Err(AuthError::UnknownKey));
    assert!(verifier.verify(&token_a(&claims()), t1).is_ok());
}

#[test]
fn permit_from_another_verifier_is_refused() {
    let (first, second) = (url_verifier(), url_verifier());
    let t0 = Instant::now();
    let permit = first.begin_refetch(t0).unwrap();
    let result = second.finish_refetch(permit, Ok(&jwks_document(&[jwk_a()])), t0);
    assert!(matches!(result, Err(JwksError::ForeignPermit)));
    assert_eq!(second.verify(&token_a(&claims()), t0), Err(AuthError::KeysUnavailable));
}
