//! Sealed tokens: what agents hold instead of Snowflake's session and master tokens. No I/O.
//!
//! A sealed token is `sg1.` followed by base64url(nonce ‖ AES-256-GCM(claims)), the claims
//! being a small JSON object with the upstream token, the identity, the Snowflake session id,
//! an expiry, and the end of the OIDC token the session was opened with, which no token of the
//! session outlives. Any gateway instance holding the key can open it, so instances share no
//! session state. Tokens sealed before the identity's end was a claim do not open (the agent
//! logs in again). The token kind (session or master) is bound as associated data, so a session
//! token can never be replayed where a master token is expected.
//!
//! Keys rotate by listing several: the first seals, every one opens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The prefix of every sealed token, with the format version.
pub const SEALED_PREFIX: &str = "sg1.";
/// The longest sealed token the gateway tries to open.
pub const SEALED_BYTES_MAX: usize = 16 * 1024;
/// Length of a sealing key in bytes.
pub const KEY_BYTES: usize = 32;

/// Which Snowflake token a sealed token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// The session token, sent on every request.
    Session,
    /// The master token, sent only to renew the session.
    Master,
}

impl TokenKind {
    fn aad(self) -> &'static [u8] {
        match self {
            TokenKind::Session => b"snowgate-token-v1:session",
            TokenKind::Master => b"snowgate-token-v1:master",
        }
    }
}

/// What a sealed token carries. Its `Debug` leaves the Snowflake token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The Snowflake token this stands for. Never leaves the gateway in clear.
    #[serde(rename = "t")]
    pub upstream_token: String,
    /// The agent's identity (`sub` of its OIDC token).
    #[serde(rename = "s")]
    pub sub: String,
    /// The agent's groups at login.
    #[serde(rename = "g")]
    pub groups: Vec<String>,
    /// The Snowflake role the gateway logged in with for this agent.
    #[serde(rename = "r")]
    pub role: String,
    /// Snowflake's session id, when it gave one.
    #[serde(rename = "i", default)]
    pub session_id: Option<i64>,
    /// When this token expires, in Unix milliseconds: the upstream token's expiry, but never
    /// later than [`TokenClaims::identity_expires_at_unix_ms`]. Milliseconds, not seconds: a
    /// short validity rounded to whole seconds could end almost as soon as it began.
    #[serde(rename = "x")]
    pub expires_at_unix_ms: u64,
    /// When the OIDC token the agent logged in with expires (its `exp` plus the allowed clock
    /// skew), in Unix milliseconds. Renewals keep it, so a session ends with the identity it
    /// was opened for: past it the agent must log in again, with a token checked afresh.
    #[serde(rename = "e")]
    pub identity_expires_at_unix_ms: u64,
}

impl TokenClaims {
    /// Whom the statements run in this session belong to.
    pub fn owner(&self) -> super::statements::Owner<'_> {
        super::statements::Owner { sub: &self.sub, groups: &self.groups }
    }
}

impl std::fmt::Debug for TokenClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClaims")
            .field("upstream_token", &"(redacted)")
            .field("sub", &self.sub)
            .field("groups", &self.groups)
            .field("role", &self.role)
            .field("session_id", &self.session_id)
            .field("expires_at_unix_ms", &self.expires_at_unix_ms)
            .field("identity_expires_at_unix_ms", &self.identity_expires_at_unix_ms)
            .finish()
    }
}

/// Why a sealed token was refused. All are the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a sealed token at all (not issued by a snowgate).
    #[error("the token was not issued by this gateway")]
    Foreign,
    /// The envelope does not open under any key: forged, tampered, or sealed under another key.
    #[error("the token does not verify: tampered, forged or sealed under another key")]
    Forged,
    /// The token opened but is past its expiry.
    #[error("the token has expired")]
    Expired,
}

/// A sealing key set. Cheap to share: it holds no mutable state.
pub struct Sealer {
    keys: Vec<LessSafeKey>,
    /// Derived from the sealing key, for [`Sealer::keyed_id`].
    id_key: [u8; 32],
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer {{ keys: {} (redacted) }}", self.keys.len())
    }
}

/// A sealing key could not be built.
#[derive(Debug, thiserror::Error)]
#[error("a sealing key must be exactly {KEY_BYTES} bytes (64 hex digits); key {index} is not")]
pub struct KeyError {
    /// Which key in the list, from 0.
    pub index: usize,
}

impl Sealer {
    /// Builds a sealer from raw 32-byte keys; the first one seals.
    pub fn new(raw_keys: &[Vec<u8>]) -> Result<Sealer, KeyError> {
        let mut keys = Vec::with_capacity(raw_keys.len());
        for (index, raw) in raw_keys.iter().enumerate() {
            if raw.len() != KEY_BYTES {
                return Err(KeyError { index });
            }
            let unbound = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| KeyError { index })?;
            keys.push(LessSafeKey::new(unbound));
        }
        let Some(first) = raw_keys.first() else { return Err(KeyError { index: 0 }) };
        let id_key = blake3::derive_key("snowgate 2026-12 keyed ids from the sealing key", first);
        Ok(Sealer { keys, id_key, rng: SystemRandom::new() })
    }

    /// A UUID (version 4 in form) that only a holder of the sealing key can compute from
    /// `purpose`, `owner` and `id`: the same inputs give the same UUID, other owners another.
    /// Ids an agent chooses and the warehouse deduplicates on (the SQL API's `requestId`) are
    /// sent upstream this way, so no agent can name another's. The sealing key's rotation
    /// changes them.
    pub fn keyed_id(&self, purpose: &str, owner: &str, id: &str) -> uuid::Uuid {
        let mut hasher = blake3::Hasher::new_keyed(&self.id_key);
        for part in [purpose, owner, id] {
            // Length-prefixed, so that no two different triples hash the same bytes.
            hasher.update(&(part.len() as u64).to_le_bytes()).update(part.as_bytes());
        }
        let hash = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// Seals claims into a token of the given kind.
    pub fn seal(&self, kind: TokenKind, claims: &TokenClaims) -> String {
        self.seal_bytes(kind.aad(), &serde_json::to_vec(claims).expect("token claims always serialise"))
    }

    /// Seals any bytes under `purpose` (authenticated, so a token sealed for one purpose never
    /// opens for another) into `sg1.` + URL-safe base64, usable in a URL path.
    pub fn seal_bytes(&self, purpose: &[u8], plain: &[u8]) -> String {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        // The system RNG only fails when the OS has no entropy source; a gateway cannot run then.
        self.rng.fill(&mut nonce_bytes).expect("the operating system's random source failed");
        let mut in_out = plain.to_vec();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        self.keys[0]
            .seal_in_place_append_tag(nonce, Aad::from(purpose), &mut in_out)
            .expect("AES-GCM sealing of a small buffer cannot fail");
        let mut envelope = Vec::with_capacity(NONCE_LEN + in_out.len());
        envelope.extend_from_slice(&nonce_bytes);
        envelope.extend_from_slice(&in_out);
        let mut out = String::with_capacity(SEALED_PREFIX.len() + envelope.len() * 4 / 3 + 4);
        out.push_str(SEALED_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&envelope, &mut out);
        out
    }

    /// Opens a token of the given kind, without checking its expiry.
    pub fn open_ignoring_expiry(&self, kind: TokenKind, token: &str) -> Result<TokenClaims, TokenError> {
        let plain = self.open_bytes(kind.aad(), token)?;
        serde_json::from_slice(&plain).map_err(|_| TokenError::Forged)
    }

    /// Opens bytes sealed by [`Sealer::seal_bytes`] under the same `purpose`.
    pub fn open_bytes(&self, purpose: &[u8], token: &str) -> Result<Vec<u8>, TokenError> {
        let body = token.strip_prefix(SEALED_PREFIX).ok_or(TokenError::Foreign)?;
        if token.len() > SEALED_BYTES_MAX {
            return Err(TokenError::Forged);
        }
        let envelope = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Forged)?;
        if envelope.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(TokenError::Forged);
        }
        let (nonce_bytes, sealed) = envelope.split_at(NONCE_LEN);
        for key in &self.keys {
            let mut in_out = sealed.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| TokenError::Forged)?;
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(purpose), &mut in_out) {
                let len = plain.len();
                in_out.truncate(len);
                return Ok(in_out);
            }
        }
        Err(TokenError::Forged)
    }

    /// Opens a token of the given kind and checks that neither it nor the identity it was
    /// issued for has expired at `now_unix_ms`.
    pub fn open(&self, kind: TokenKind, token: &str, now_unix_ms: u64) -> Result<TokenClaims, TokenError> {
        let claims = self.open_ignoring_expiry(kind, token)?;
        // Sealing caps the expiry at the identity's end already; checking both keeps that
        // true whoever sealed the token.
        if claims.expires_at_unix_ms.min(claims.identity_expires_at_unix_ms) <= now_unix_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at_unix_ms: u64) -> TokenClaims {
        TokenClaims {
            upstream_token: "SF-REAL-TOKEN".into(),
            sub: "agent-7".into(),
            groups: vec!["analysts".into()],
            role: "ANALYST".into(),
            session_id: Some(42),
            expires_at_unix_ms,
            identity_expires_at_unix_ms: u64::MAX,
        }
    }

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&[vec![byte; KEY_BYTES]]).unwrap()
    }

    #[test]
    fn debug_leaves_the_snowflake_token_out() {
        let shown = format!("{:?}", claims(1));
        assert!(!shown.contains("SF-REAL-TOKEN") && shown.contains("agent-7"), "{shown}");
    }

    #[test]
    fn keyed_ids_depend_on_every_input_and_on_the_key() {
        let id = sealer(1).keyed_id("p", "agent-7", "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44");
        assert_eq!(id, sealer(1).keyed_id("p", "agent-7", "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44"));
        assert_eq!(id.get_version_num(), 4);
        for other in [
            sealer(2).keyed_id("p", "agent-7", "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44"),
            sealer(1).keyed_id("q", "agent-7", "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44"),
            sealer(1).keyed_id("p", "agent-8", "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44"),
            sealer(1).keyed_id("p", "agent-7", "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b45"),
            // The parts are length-prefixed: moving a boundary changes the id.
            sealer(1).keyed_id("p", "agent-76d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44", ""),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn round_trips_without_revealing_the_upstream_token() {
        let s = sealer(1);
        let token = s.seal(TokenKind::Session, &claims(2000));
        assert!(token.starts_with(SEALED_PREFIX));
        assert!(!token.contains("SF-REAL-TOKEN"));
        assert_eq!(s.open(TokenKind::Session, &token, 1000).unwrap(), claims(2000));
    }

    #[test]
    fn nonces_differ_between_seals() {
        let s = sealer(1);
        assert_ne!(s.seal(TokenKind::Session, &claims(1)), s.seal(TokenKind::Session, &claims(1)));
    }

    #[test]
    fn refuses_expired_foreign_tampered_and_wrong_kind() {
        let s = sealer(1);
        let token = s.seal(TokenKind::Session, &claims(2000));
        assert_eq!(s.open(TokenKind::Session, &token, 2000), Err(TokenError::Expired));
        assert_eq!(s.open(TokenKind::Master, &token, 1000), Err(TokenError::Forged));
        assert_eq!(s.open(TokenKind::Session, "SF-REAL-TOKEN", 1000), Err(TokenError::Foreign));
        assert_eq!(sealer(2).open(TokenKind::Session, &token, 1000), Err(TokenError::Forged));
        // Flip one character in the middle of the envelope.
        let mut bytes = token.into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(s.open(TokenKind::Session, &tampered, 1000), Err(TokenError::Forged));
        assert_eq!(s.open(TokenKind::Session, "sg1.", 1000), Err(TokenError::Forged));
        assert_eq!(s.open(TokenKind::Session, "sg1.!!!", 1000), Err(TokenError::Forged));
    }

    #[test]
    fn rotation_opens_with_old_keys_and_seals_with_the_first() {
        let old = sealer(1);
        let token = old.seal(TokenKind::Master, &claims(2000));
        let rotated = Sealer::new(&[vec![2; KEY_BYTES], vec![1; KEY_BYTES]]).unwrap();
        assert!(rotated.open(TokenKind::Master, &token, 1000).is_ok());
        let fresh = rotated.seal(TokenKind::Master, &claims(2000));
        assert_eq!(old.open(TokenKind::Master, &fresh, 1000), Err(TokenError::Forged));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Sealer::new(&[vec![0; 16]]).is_err());
        assert!(Sealer::new(&[]).is_err());
    }
}
