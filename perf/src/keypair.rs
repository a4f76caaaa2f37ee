//! Snowflake key-pair JWTs: the public-key fingerprint, minting (for tests and the harness)
//! and verification (for the double's login and SQL API endpoints).
//!
//! Snowflake's rules, as the drivers implement them: RS256; `iss` is
//! `ACCOUNT.USER.SHA256:<base64 std of sha256 of the DER SubjectPublicKeyInfo>`; `sub` is
//! `ACCOUNT.USER`; both uppercase, ACCOUNT being the first `.`-segment of the account
//! identifier; `iat` and `exp` are required.

use anyhow::{Context, anyhow};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `exp` and `iat`, in seconds. Small, so that tests of expired
/// tokens do not have to wait long.
pub const JWT_LEEWAY_SECS: u64 = 5;

/// The `ACCOUNT.USER` pair a key-pair JWT names, uppercased as Snowflake expects.
pub fn jwt_subject(account: &str, user: &str) -> String {
    let account = account.split('.').next().unwrap_or(account);
    format!("{}.{}", account.to_uppercase(), user.to_uppercase())
}

fn parse_public_key(pem: &str) -> anyhow::Result<RsaPublicKey> {
    RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|e| anyhow!("not an RSA public key in SPKI or PKCS#1 PEM: {e}"))
}

fn parse_private_key(pem: &str) -> anyhow::Result<RsaPrivateKey> {
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| anyhow!("not an unencrypted RSA private key in PKCS#8 or PKCS#1 PEM: {e}"))
}

fn fingerprint_of(key: &RsaPublicKey) -> anyhow::Result<String> {
    let der = key.to_public_key_der().context("encoding the public key as DER")?;
    let digest = Sha256::digest(der.as_bytes());
    Ok(format!("SHA256:{}", base64::engine::general_purpose::STANDARD.encode(digest)))
}

/// The fingerprint Snowflake shows as `RSA_PUBLIC_KEY_FP`: `SHA256:<base64>`.
pub fn public_key_fingerprint(public_key_pem: &str) -> anyhow::Result<String> {
    fingerprint_of(&parse_public_key(public_key_pem)?)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Mints a key-pair JWT as a Snowflake driver would, valid for `lifetime_secs` from now.
pub fn mint_keypair_jwt(
    private_key_pem: &str,
    account: &str,
    user: &str,
    lifetime_secs: u64,
) -> anyhow::Result<String> {
    let now = now_secs();
    mint_keypair_jwt_at(private_key_pem, account, user, now, now + lifetime_secs)
}

/// Mints a key-pair JWT with explicit `iat` and `exp` (seconds since the epoch), so tests
/// can make expired tokens.
pub fn mint_keypair_jwt_at(
    private_key_pem: &str,
    account: &str,
    user: &str,
    issued_at_secs: u64,
    expires_at_secs: u64,
) -> anyhow::Result<String> {
    let private_key = parse_private_key(private_key_pem)?;
    let fingerprint = fingerprint_of(&private_key.to_public_key())?;
    let subject = jwt_subject(account, user);
    let claims = serde_json::json!({
        "iss": format!("{subject}.{fingerprint}"),
        "sub": subject,
        "iat": issued_at_secs,
        "exp": expires_at_secs,
    });
    // jsonwebtoken's RustCrypto backend reads RSA private keys as PKCS#1 DER.
    let der = private_key.to_pkcs1_der().context("encoding the private key as PKCS#1")?;
    let key = EncodingKey::from_rsa_der(der.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).context("signing the JWT")
}

/// Checks key-pair JWTs against one configured public key and one account and user.
pub struct KeyPairVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for KeyPairVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairVerifier").field("validation", &self.validation).finish_non_exhaustive()
    }
}

impl KeyPairVerifier {
    /// A verifier for JWTs signed by the private half of `public_key_pem` for `account`
    /// and `user`.
    pub fn new(public_key_pem: &str, account: &str, user: &str) -> anyhow::Result<KeyPairVerifier> {
        let public_key = parse_public_key(public_key_pem)?;
        let subject = jwt_subject(account, user);
        let issuer = format!("{subject}.{}", fingerprint_of(&public_key)?);
        let key = DecodingKey::from_rsa_raw_components(&public_key.n().to_bytes_be(), &public_key.e().to_bytes_be());
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.sub = Some(subject);
        Ok(KeyPairVerifier { key, validation })
    }

    /// Verifies the signature, the algorithm, `iss`, `sub` and `exp`.
    pub fn verify(&self, token: &str) -> anyhow::Result<()> {
        jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map(|_| ())
            .map_err(|e| anyhow!("key-pair JWT refused: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::{OTHER_PRIVATE_KEY_PEM, TEST_PRIVATE_KEY_PEM, TEST_PUBLIC_KEY_PEM};

    #[test]
    fn fingerprint_matches_openssl() {
        // Computed with the openssl pipeline in tests/fixtures/README.md.
        assert_eq!(
            public_key_fingerprint(TEST_PUBLIC_KEY_PEM).unwrap(),
            "SHA256:42KdY1jGS7VavkvWxyD1dSNjifHI+PQIgQRPhbD9u9I="
        );
    }

    #[test]
    fn accepts_its_own_tokens_and_refuses_others() {
        let verifier = KeyPairVerifier::new(TEST_PUBLIC_KEY_PEM, "testacct.us-east-1", "snowgate").unwrap();
        let good = mint_keypair_jwt(TEST_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60).unwrap();
        verifier.verify(&good).unwrap();

        let wrong_key = mint_keypair_jwt(OTHER_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60).unwrap();
        assert!(verifier.verify(&wrong_key).is_err());
        let wrong_user = mint_keypair_jwt(TEST_PRIVATE_KEY_PEM, "TESTACCT", "SOMEONE", 60).unwrap();
        assert!(verifier.verify(&wrong_user).is_err());
        let now = now_secs();
        let expired = mint_keypair_jwt_at(TEST_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", now - 120, now - 60).unwrap();
        assert!(verifier.verify(&expired).is_err());
        assert!(verifier.verify("not.a.jwt").is_err());
    }
}
