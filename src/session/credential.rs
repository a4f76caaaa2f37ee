//! The gateway's own Snowflake credential: a key pair (preferred) or a password. No I/O.
//!
//! Agents never see it. For key-pair logins the gateway signs Snowflake's JWT (RS256) with
//! `iss = ACCOUNT.USER.SHA256:<fingerprint>` and `sub = ACCOUNT.USER`, where the fingerprint is
//! the base64 SHA-256 of the public key's DER SubjectPublicKeyInfo. The SQL API takes the same
//! JWT as a bearer token, so a signed JWT is cached until half its lifetime has passed: RSA
//! signing costs about a millisecond, far too much per request.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use sha2::Digest as _;
use std::sync::Mutex;

/// Lifetime of the key-pair JWTs the gateway signs (Snowflake accepts at most one hour).
pub const KEYPAIR_JWT_LIFETIME_SECS: u64 = 600;

/// A string that must never be printed: its Debug form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// The credential could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The private key is not an RSA key in PKCS#8 or PKCS#1 PEM.
    #[error("the private key is not an unencrypted RSA key in PKCS#8 or PKCS#1 PEM form")]
    BadPrivateKey,
}

/// Key-pair credential state: the signing key, the claims it signs, and the cached JWT.
pub struct KeyPair {
    encoding_key: EncodingKey,
    issuer: String,
    subject: String,
    cached: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

/// How the gateway logs in to Snowflake.
#[derive(Debug)]
pub enum UpstreamCredential {
    /// Key-pair authentication (`SNOWFLAKE_JWT`).
    KeyPair(KeyPair),
    /// Password authentication (`SNOWFLAKE`).
    Password(Secret),
}

/// The account part Snowflake expects in JWT claims: uppercased, without any region suffix.
pub fn jwt_account(account: &str) -> String {
    account.split('.').next().unwrap_or(account).to_ascii_uppercase()
}

impl KeyPair {
    /// Builds the key-pair credential for `account` and `user` from a private key in PEM.
    pub fn from_pem(pem: &str, account: &str, user: &str) -> Result<KeyPair, CredentialError> {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| CredentialError::BadPrivateKey)?;
        let public_der = private.to_public_key().to_public_key_der().map_err(|_| CredentialError::BadPrivateKey)?;
        let fingerprint = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(public_der.as_bytes()));
        let encoding_key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| CredentialError::BadPrivateKey)?;
        let subject = format!("{}.{}", jwt_account(account), user.to_ascii_uppercase());
        Ok(KeyPair {
            encoding_key,
            issuer: format!("{subject}.SHA256:{fingerprint}"),
            subject,
            cached: Mutex::new(None),
        })
    }

    /// The JWT `iss` claim (`ACCOUNT.USER.SHA256:<fingerprint>`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A signed JWT valid at `now_unix`, reused while more than half its lifetime remains.
    pub fn jwt(&self, now_unix: u64) -> Secret {
        let mut cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((jwt, issued_at)) = cached.as_ref()
            && now_unix >= *issued_at
            && now_unix - issued_at < KEYPAIR_JWT_LIFETIME_SECS / 2
        {
            return Secret(jwt.clone());
        }
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": self.subject,
            "iat": now_unix,
            "exp": now_unix + KEYPAIR_JWT_LIFETIME_SECS,
        });
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.encoding_key)
            .expect("RS256 signing with a validated RSA key cannot fail");
        *cached = Some((jwt.clone(), now_unix));
        Secret(jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_for_jwt_claims() {
        assert_eq!(jwt_account("myacct.us-east-1"), "MYACCT");
        assert_eq!(jwt_account("org-acct"), "ORG-ACCT");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
        let c = UpstreamCredential::Password(s);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn rejects_non_rsa_keys() {
        assert!(KeyPair::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "a", "u").is_err());
    }
}
