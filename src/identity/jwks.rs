//! JWKS ingestion: turns a JSON Web Key Set document into the verification keys the
//! [`Verifier`](super::Verifier) may use, skipping every key it cannot use safely, and selects
//! the key for a token from its `kid` and `alg`.
//!
//! The document is parsed key by key (each entry as a jsonwebtoken [`Jwk`], the element type of
//! its `JwkSet`) rather than as a whole `JwkSet`, because a single key of a type jsonwebtoken
//! does not know (an X25519 or P-521 key, say) would otherwise make the whole set unreadable and
//! lock every agent out. A key is skipped, and logged, when:
//! - it is symmetric (`kty` `oct`): see [`parse_key`] for why none is ever loaded;
//! - its `use` is present and not `sig`, or its `key_ops` are present and lack `verify`;
//! - its `alg` is present and is not an asymmetric signature algorithm, or does not fit its type;
//! - its `kid` is empty or repeats the `kid` of an earlier key;
//! - it is an RSA key shorter than [`RSA_MODULUS_BITS_MIN`] or longer than 4096 bits, or an
//!   elliptic-curve point that is not on its curve.

use std::fmt;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use rsa::traits::PublicKeyParts as _;
use serde_json::Value;

use super::AuthError;

/// Largest JWKS document accepted, in bytes.
pub const JWKS_BYTES_MAX: usize = 1024 * 1024;

/// Most keys a JWKS document may list (usable or not).
pub const JWKS_KEYS_MAX: usize = 100;

/// Shortest RSA modulus accepted, in bits.
pub const RSA_MODULUS_BITS_MIN: usize = 2048;

/// Length of an Ed25519 public key, in bytes (RFC 8032).
const ED25519_KEY_BYTES: usize = 32;

/// Longest `kid` copied into a log line, in characters, so that a hostile JWKS cannot flood logs.
const KID_LOGGED_CHARS_MAX: usize = 64;

/// Why a JWKS could not be loaded, or why the identity configuration was refused.
///
/// Messages name files and limits but never echo the document's contents.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The [`IdentityConfig`](super::IdentityConfig) is unusable.
    #[error("invalid identity configuration: {0}")]
    InvalidConfig(&'static str),
    /// The JWKS file could not be read.
    #[error("cannot read JWKS file {}: {source}", path.display())]
    Read {
        /// The file that was being read.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The JWKS file was read but its contents were refused.
    #[error("JWKS file {}: {reason}", path.display())]
    File {
        /// The file that was read.
        path: std::path::PathBuf,
        /// Why its contents were refused.
        reason: Box<JwksError>,
    },
    /// The document is larger than [`JWKS_BYTES_MAX`].
    #[error("the JWKS document is larger than {size_max_bytes} bytes")]
    TooLarge {
        /// The limit that was crossed.
        size_max_bytes: usize,
    },
    /// The document is not JSON, or not an object with a `keys` array.
    #[error("the JWKS document is not a JSON object with a `keys` array (line {line}, column {column})")]
    Json {
        /// Line of the first error, from 1.
        line: usize,
        /// Column of the first error, from 1.
        column: usize,
    },
    /// The document lists more than [`JWKS_KEYS_MAX`] keys.
    #[error("the JWKS document lists more than {count_max} keys")]
    TooManyKeys {
        /// The limit that was crossed.
        count_max: usize,
    },
    /// Every key in the document was skipped (or there were none).
    #[error("the JWKS document holds no usable signing key")]
    NoUsableKeys,
    /// The caller's fetch of the JWKS URL failed; the reason is the caller's own text.
    #[error("the JWKS fetch failed: {0}")]
    Fetch(String),
    /// [`Verifier::reload_file`](super::Verifier::reload_file) was called on a URL source.
    #[error("the JWKS source is not a file")]
    NotAFile,
    /// A [`RefetchPermit`](super::RefetchPermit) was handed to a verifier that did not issue it.
    #[error("the JWKS refetch permit was issued by another verifier")]
    ForeignPermit,
}

impl JwksError {
    /// Wraps an error about a file's contents so that its message names the file.
    fn in_file(self, path: &Path) -> JwksError {
        JwksError::File { path: path.to_path_buf(), reason: Box::new(self) }
    }
}

/// The kind of public key, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// An RSA key: RS256/384/512 and PS256/384/512.
    Rsa,
    /// A P-256 key: ES256 only.
    EcP256,
    /// A P-384 key: ES384 only.
    EcP384,
    /// An Ed25519 key: EdDSA only.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind can verify `alg`. HS* is never accepted: no kind is symmetric.
    fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One usable public key from a JWKS.
#[derive(Debug, Clone)]
pub(crate) struct VerifyKey {
    /// The key's `kid`, never empty.
    pub(crate) kid: Option<String>,
    /// The key's own `alg`, when the JWKS pins one.
    pub(crate) alg: Option<Algorithm>,
    /// The key's type, which fixes the algorithms it may verify.
    pub(crate) kind: KeyKind,
    /// The key in jsonwebtoken's form, already checked to be well formed.
    pub(crate) decoding: DecodingKey,
}

impl VerifyKey {
    /// Whether this key may verify a token whose header says `alg`: the key's own `alg`, if it
    /// has one, must be the same, and the key's type must belong to the algorithm's family.
    pub(crate) fn usable_for(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|own| own == alg) && self.kind.accepts(alg)
    }
}

/// The usable keys of one JWKS document, in document order, with unique `kid`s.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// How many usable keys the set holds.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no usable key.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Picks the key that must verify a token with this `kid` and `alg`.
    ///
    /// The `kid` is only ever compared with the `kid`s of the set, so a path-like or otherwise
    /// hostile value can do nothing but miss. A token without a `kid` is accepted only when
    /// exactly one key could verify its algorithm, because guessing among several would let a
    /// token choose which key it is checked against.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, AuthError> {
        match kid {
            Some("") => Err(AuthError::UnknownKey),
            Some(kid) => {
                let key = self.keys.iter().find(|key| key.kid.as_deref() == Some(kid)).ok_or(AuthError::UnknownKey)?;
                if key.usable_for(alg) { Ok(key) } else { Err(AuthError::KeyMismatch) }
            }
            None => {
                let mut candidates = self.keys.iter().filter(|key| key.usable_for(alg));
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(AuthError::UnknownKey),
                    (Some(_), Some(_)) => Err(AuthError::MissingKeyId),
                }
            }
        }
    }
}

/// Reads and parses a JWKS file, which must hold at least one usable key.
///
/// Errors name the file. Only a regular file is read (opened without waiting, which a FIFO
/// would), and at most [`JWKS_BYTES_MAX`] + 1 bytes of it, so a huge one is refused without
/// being read whole.
pub(crate) fn load_file(path: &Path) -> Result<KeySet, JwksError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let read_error = |source| JwksError::Read { path: path.to_path_buf(), source };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(read_error)?;
    if !file.metadata().map_err(read_error)?.is_file() {
        return Err(read_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(JWKS_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    parse_jwks_nonempty(&bytes).map_err(|error| error.in_file(path))
}

/// Parses a JWKS document that must hold at least one usable key.
pub(crate) fn parse_jwks_nonempty(bytes: &[u8]) -> Result<KeySet, JwksError> {
    let set = parse_jwks(bytes)?;
    if set.is_empty() { Err(JwksError::NoUsableKeys) } else { Ok(set) }
}

/// Parses a JWKS document, keeping the usable keys and logging why the others were skipped.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
    // Only the `keys` member is read; other members (some providers add their own) are ignored.
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }

    if bytes.len() > JWKS_BYTES_MAX {
        return Err(JwksError::TooLarge { size_max_bytes: JWKS_BYTES_MAX });
    }
    let crate::json::Object(document): crate::json::Object<Document> = serde_json::from_slice(bytes)
        .map_err(|error| JwksError::Json { line: error.line(), column: error.column() })?;
    if document.keys.len() > JWKS_KEYS_MAX {
        return Err(JwksError::TooManyKeys { count_max: JWKS_KEYS_MAX });
    }

    let mut keys: Vec<VerifyKey> = Vec::with_capacity(document.keys.len());
    for (index, value) in document.keys.into_iter().enumerate() {
        let kid_logged = LoggedKid::of(&value);
        let parsed = parse_key(value).and_then(|key| {
            let duplicate = key.kid.is_some() && keys.iter().any(|kept| kept.kid == key.kid);
            if duplicate { Err(Skip::Broken("its `kid` repeats an earlier key's")) } else { Ok(key) }
        });
        match parsed {
            Ok(key) => keys.push(key),
            Err(Skip::Expected(reason)) => {
                tracing::debug!(index, kid = %kid_logged, reason, "skipping a JWKS key");
            }
            Err(Skip::Broken(reason)) => {
                tracing::warn!(index, kid = %kid_logged, reason, "skipping a JWKS key");
            }
        }
    }
    Ok(KeySet { keys })
}

/// Why one key of a JWKS was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// A key that providers publish on purpose for other uses (encryption keys, say).
    Expected(&'static str),
    /// A key that looks like a mistake or an attack, worth a warning.
    Broken(&'static str),
}

/// Parses one JWKS entry into a usable key, or says why it cannot be used.
fn parse_key(value: Value) -> Result<VerifyKey, Skip> {
    // Symmetric keys are never loaded, whatever the algorithm allow-list says. A shared secret
    // published in a JWKS lets anyone who can read the JWKS mint tokens, and a verifier that
    // mixes HMAC with public keys invites the classic confusion attack (an HS256 token "signed"
    // with the RSA public key). With no `oct` key loaded, no key can ever verify HS*.
    if value.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err(Skip::Expected("it is a symmetric (oct) key"));
    }
    let jwk: Jwk =
        serde_json::from_value(value).map_err(|_| Skip::Expected("its key type or curve is not supported"))?;

    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err(Skip::Expected("its `use` is not `sig`")),
    }
    if let Some(operations) = &jwk.common.key_operations
        && !operations.contains(&KeyOperations::Verify)
    {
        return Err(Skip::Expected("its `key_ops` do not include `verify`"));
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => {
            Some(signature_algorithm(alg).ok_or(Skip::Expected("its `alg` is not an asymmetric signature algorithm"))?)
        }
    };
    let kid = match jwk.common.key_id {
        Some(kid) if kid.is_empty() => return Err(Skip::Broken("its `kid` is empty")),
        kid => kid,
    };

    let (kind, decoding) = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => (KeyKind::Rsa, rsa_key(&params.n, &params.e)?),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => (KeyKind::EcP256, ec_key(&params.x, &params.y, Algorithm::ES256)?),
            EllipticCurve::P384 => (KeyKind::EcP384, ec_key(&params.x, &params.y, Algorithm::ES384)?),
            EllipticCurve::P521 | EllipticCurve::Ed25519 => {
                return Err(Skip::Expected("its curve is not supported"));
            }
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => (KeyKind::Ed25519, ed25519_key(&params.x)?),
            _ => return Err(Skip::Expected("its curve is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(Skip::Expected("it is a symmetric (oct) key"));
        }
    };
    if let Some(alg) = alg
        && !kind.accepts(alg)
    {
        return Err(Skip::Broken("its `alg` does not fit its key type"));
    }
    Ok(VerifyKey { kid, alg, kind, decoding })
}

/// The JWS algorithm a JWK's `alg` names, if it is an asymmetric signature algorithm.
fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        // HMAC is refused for the reason given in `parse_key`; the rest are encryption
        // algorithms or names jsonwebtoken does not know.
        KeyAlgorithm::HS256
        | KeyAlgorithm::HS384
        | KeyAlgorithm::HS512
        | KeyAlgorithm::RSA1_5
        | KeyAlgorithm::RSA_OAEP
        | KeyAlgorithm::RSA_OAEP_256
        | KeyAlgorithm::UNKNOWN_ALGORITHM => return None,
    })
}

/// Builds an RSA key from its base64url modulus and exponent, refusing short or invalid keys.
///
/// jsonwebtoken would only find out that a key is broken when a token arrives (and then report
/// a bad signature), so the key is checked here, once, with the same `rsa` crate it verifies with.
fn rsa_key(n: &str, e: &str) -> Result<DecodingKey, Skip> {
    let key = DecodingKey::from_rsa_components(n, e)
        .map_err(|_| Skip::Broken("its RSA modulus or exponent is not base64url"))?;
    let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() else {
        return Err(Skip::Broken("its RSA key is malformed"));
    };
    let public = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e))
        .map_err(|_| Skip::Broken("its RSA key is invalid or longer than 4096 bits"))?;
    if public.n().bits() < RSA_MODULUS_BITS_MIN {
        return Err(Skip::Broken("its RSA key is shorter than 2048 bits"));
    }
    Ok(key)
}

/// Builds an elliptic-curve key and checks that the point is on the curve for `alg`.
fn ec_key(x: &str, y: &str, alg: Algorithm) -> Result<DecodingKey, Skip> {
    let key =
        DecodingKey::from_ec_components(x, y).map_err(|_| Skip::Broken("its EC coordinates are not base64url"))?;
    check_with_rust_crypto(&key, alg, "its EC point is not on its curve")?;
    Ok(key)
}

/// Builds an Ed25519 key and checks that it decodes.
///
/// The length is checked first: jsonwebtoken's verifier slices the first 32 bytes before it
/// checks the length, so a shorter key would panic there, and a longer one would be cut.
fn ed25519_key(x: &str) -> Result<DecodingKey, Skip> {
    let key = DecodingKey::from_ed_components(x).map_err(|_| Skip::Broken("its Ed25519 key is not base64url"))?;
    if key.as_bytes().len() != ED25519_KEY_BYTES {
        return Err(Skip::Broken("its Ed25519 key is not 32 bytes"));
    }
    check_with_rust_crypto(&key, Algorithm::EdDSA, "its Ed25519 key is invalid")?;
    Ok(key)
}

/// Builds jsonwebtoken's RustCrypto verifier for the key, which parses (and so validates) it.
fn check_with_rust_crypto(key: &DecodingKey, alg: Algorithm, reason: &'static str) -> Result<(), Skip> {
    (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&alg, key)
        .map(drop)
        .map_err(|_| Skip::Broken(reason))
}

/// A JWKS entry's `kid`, shortened and escaped for a log line.
struct LoggedKid(Option<String>);

impl LoggedKid {
    fn of(value: &Value) -> LoggedKid {
        LoggedKid(value.get("kid").and_then(Value::as_str).map(|kid| kid.chars().take(KID_LOGGED_CHARS_MAX).collect()))
    }
}

impl fmt::Display for LoggedKid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(kid) => write!(f, "{kid:?}"),
            None => f.write_str("(none)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
    }

    /// The fixture JWKS as JSON, to build variants of it.
    fn fixture_jwks() -> Value {
        serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap()
    }

    fn rsa_jwk() -> Value {
        fixture_jwks()["keys"][0].clone()
    }

    fn ec_jwk() -> Value {
        fixture_jwks()["keys"][1].clone()
    }

    /// An RSA JWK (no `alg`, no `use`) built from a public key PEM in the fixtures.
    fn rsa_jwk_from_pem(file: &str, kid: &str) -> Value {
        use base64::Engine as _;
        use rsa::pkcs8::DecodePublicKey as _;
        let pem = std::fs::read_to_string(fixture(file)).unwrap();
        let key = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "kty": "RSA",
            "kid": kid,
            "n": b64.encode(key.n().to_bytes_be()),
            "e": b64.encode(key.e().to_bytes_be()),
        })
    }

    /// The public key of RFC 8032's first Ed25519 test vector, base64url.
    const RFC8032_KEY: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn parse_keys(keys: Vec<Value>) -> KeySet {
        parse_jwks(&serde_json::to_vec(&json!({ "keys": keys })).unwrap()).unwrap()
    }

    #[test]
    fn fixture_jwks_loads_both_keys() {
        let set = load_file(&fixture("jwks.json")).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.keys[0].kid.as_deref(), Some("key-a"));
        assert_eq!(set.keys[0].kind, KeyKind::Rsa);
        assert_eq!(set.keys[0].alg, Some(Algorithm::RS256));
        assert_eq!(set.keys[1].kid.as_deref(), Some("key-ec"));
        assert_eq!(set.keys[1].kind, KeyKind::EcP256);
    }

    #[test]
    fn ed25519_key_loads() {
        let set = parse_keys(vec![json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": RFC8032_KEY})]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.keys[0].kind, KeyKind::Ed25519);
    }

    #[test]
    fn whole_jwkset_parsing_would_fail_on_one_unsupported_key() {
        // Why the document is parsed key by key: one X25519 key sinks jsonwebtoken's JwkSet.
        let x25519 = json!({"kty": "OKP", "crv": "X25519", "x": "AAAA", "use": "enc"});
        let document = json!({ "keys": [rsa_jwk(), x25519] });
        assert!(serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(document.clone()).is_err());
        let set = parse_jwks(&serde_json::to_vec(&document).unwrap()).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn oct_keys_are_never_loaded() {
        let oct = json!({"kty": "oct", "kid": "hmac", "alg": "HS256", "use": "sig", "k": "c2VjcmV0"});
        let set = parse_keys(vec![oct, rsa_jwk()]);
        assert_eq!(set.len(), 1);
        assert!(set.keys.iter().all(|key| key.kid.as_deref() != Some("hmac")));
    }

    #[test]
    fn keys_not_for_signatures_are_skipped() {
        let mut enc = rsa_jwk();
        enc["use"] = json!("enc");
        let mut other_use = rsa_jwk();
        other_use["use"] = json!("tls");
        let mut ops = rsa_jwk();
        ops["key_ops"] = json!(["encrypt"]);
        let mut oaep = rsa_jwk();
        oaep["alg"] = json!("RSA-OAEP");
        let mut unknown_alg = rsa_jwk();
        unknown_alg["alg"] = json!("none");
        let mut hs_alg = rsa_jwk();
        hs_alg["alg"] = json!("HS256");
        for key in [enc, other_use, ops, oaep, unknown_alg, hs_alg] {
            assert!(parse_keys(vec![key.clone()]).is_empty(), "{key}");
        }
    }

    #[test]
    fn keys_without_use_or_with_verify_ops_are_kept() {
        let mut no_use = rsa_jwk();
        no_use.as_object_mut().unwrap().remove("use");
        let mut verify_ops = ec_jwk();
        verify_ops["key_ops"] = json!(["verify"]);
        assert_eq!(parse_keys(vec![no_use, verify_ops]).len(), 2);
    }

    #[test]
    fn alg_that_does_not_fit_the_key_type_is_skipped() {
        let mut rsa_as_es = rsa_jwk();
        rsa_as_es["alg"] = json!("ES256");
        let mut ec_as_rs = ec_jwk();
        ec_as_rs["alg"] = json!("RS256");
        let mut p256_as_es384 = ec_jwk();
        p256_as_es384["alg"] = json!("ES384");
        assert!(parse_keys(vec![rsa_as_es, ec_as_rs, p256_as_es384]).is_empty());
    }

    #[test]
    fn weak_or_broken_keys_are_skipped() {
        let weak = rsa_jwk_from_pem("weak-1024.pub.pem", "weak");
        let mut bad_exponent = rsa_jwk();
        bad_exponent["e"] = json!("AQ"); // e = 1
        let mut bad_base64 = rsa_jwk();
        bad_base64["n"] = json!("not base64url!");
        let mut off_curve = ec_jwk();
        off_curve["y"] = off_curve["x"].clone();
        let mut short_x = ec_jwk();
        short_x["x"] = json!("AAAA");
        let p521 = json!({"kty": "EC", "crv": "P-521", "x": "AAAA", "y": "AAAA"});
        // Ed25519 keys of the wrong length (a short one once panicked the loader).
        let short_ed25519 = json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"});
        // 44 base64url characters: 33 bytes (45 would not be base64url at all).
        let long_ed25519 = json!({"kty": "OKP", "crv": "Ed25519", "x": format!("{RFC8032_KEY}A")});
        for key in [weak, bad_exponent, bad_base64, off_curve, short_x, p521, short_ed25519, long_ed25519] {
            assert!(parse_keys(vec![key.clone()]).is_empty(), "{key}");
        }
    }

    #[test]
    fn second_key_with_the_same_kid_is_skipped() {
        let mut twin = rsa_jwk_from_pem("idp-b.pub.pem", "key-a");
        twin["use"] = json!("sig");
        let set = parse_keys(vec![rsa_jwk(), twin, ec_jwk()]);
        assert_eq!(set.len(), 2);
        let first = load_file(&fixture("jwks.json")).unwrap();
        let (kept, expected) = (&set.keys[0].decoding, &first.keys[0].decoding);
        match (kept.kind(), expected.kind()) {
            (
                DecodingKeyKind::RsaModulusExponent { n, .. },
                DecodingKeyKind::RsaModulusExponent { n: expected_n, .. },
            ) => assert_eq!(n, expected_n),
            _ => panic!("expected RSA keys"),
        }
    }

    #[test]
    fn empty_kid_is_skipped() {
        let mut empty = rsa_jwk();
        empty["kid"] = json!("");
        assert!(parse_keys(vec![empty]).is_empty());
    }

    #[test]
    fn document_limits_are_enforced() {
        let big = vec![b' '; JWKS_BYTES_MAX + 1];
        assert!(matches!(parse_jwks(&big), Err(JwksError::TooLarge { .. })));

        let many: Vec<Value> = (0..=JWKS_KEYS_MAX).map(|_| json!({"kty": "oct", "k": "AA"})).collect();
        let bytes = serde_json::to_vec(&json!({ "keys": many })).unwrap();
        assert!(bytes.len() < JWKS_BYTES_MAX);
        assert!(matches!(parse_jwks(&bytes), Err(JwksError::TooManyKeys { .. })));

        // `[[]]` is an array: a derived struct would read it by position as `{"keys": []}`.
        for bad in [&b"not json"[..], b"[]", b"[[]]", b"{}", b"{\"keys\": {}}"] {
            assert!(matches!(parse_jwks(bad), Err(JwksError::Json { .. })));
        }
        assert!(matches!(parse_jwks_nonempty(b"{\"keys\": []}"), Err(JwksError::NoUsableKeys)));
    }

    #[test]
    fn select_by_kid_and_alg() {
        let set = load_file(&fixture("jwks.json")).unwrap();
        assert_eq!(set.select(Some("key-a"), Algorithm::RS256).unwrap().kid.as_deref(), Some("key-a"));
        assert_eq!(set.select(Some("key-ec"), Algorithm::ES256).unwrap().kind, KeyKind::EcP256);
        assert_eq!(set.select(Some("key-a"), Algorithm::ES256).unwrap_err(), AuthError::KeyMismatch);
        // key-a pins RS256, so even another RSA algorithm does not fit it.
        assert_eq!(set.select(Some("key-a"), Algorithm::PS256).unwrap_err(), AuthError::KeyMismatch);
        assert_eq!(set.select(Some("key-z"), Algorithm::RS256).unwrap_err(), AuthError::UnknownKey);
        assert_eq!(set.select(Some(""), Algorithm::RS256).unwrap_err(), AuthError::UnknownKey);
        // Without a kid, exactly one candidate per algorithm.
        assert_eq!(set.select(None, Algorithm::RS256).unwrap().kid.as_deref(), Some("key-a"));
        assert_eq!(set.select(None, Algorithm::ES384).unwrap_err(), AuthError::UnknownKey);
        let two_rsa = parse_keys(vec![rsa_jwk(), rsa_jwk_from_pem("idp-b.pub.pem", "key-b")]);
        assert_eq!(two_rsa.select(None, Algorithm::RS256).unwrap_err(), AuthError::MissingKeyId);
    }

    #[test]
    fn no_key_is_ever_usable_for_hmac() {
        let set = load_file(&fixture("jwks.json")).unwrap();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(set.keys.iter().all(|key| !key.usable_for(alg)));
            assert_eq!(set.select(Some("key-a"), alg).unwrap_err(), AuthError::KeyMismatch);
            assert_eq!(set.select(None, alg).unwrap_err(), AuthError::UnknownKey);
        }
    }

    #[test]
    fn file_errors_name_the_path() {
        let missing = fixture("does-not-exist.json");
        let error = load_file(&missing).unwrap_err();
        assert!(matches!(error, JwksError::Read { .. }));
        assert!(error.to_string().contains("does-not-exist.json"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty-jwks.json");
        std::fs::write(&empty, br#"{"keys": [{"kty": "oct", "k": "AA"}]}"#).unwrap();
        let error = load_file(&empty).unwrap_err();
        assert!(matches!(&error, JwksError::File { reason, .. } if matches!(**reason, JwksError::NoUsableKeys)));
        assert!(error.to_string().contains("empty-jwks.json"), "{error}");
    }
}
