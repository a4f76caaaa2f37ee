//! OIDC identity: validates the JWTs that agents present against the identity provider's JWKS
//! and turns them into an [`Identity`]. Pure: the only I/O is reading a JWKS file on request;
//! fetching a JWKS URL is the proxy's job, and this module only rate-limits and ingests it.
//!
//! The [`Verifier`] fails closed. A token is refused, in this order, when:
//! - it is empty, longer than [`IdentityConfig::token_bytes_max`], or not three base64url
//!   segments (a five-segment JWE, say) — before anything is decoded;
//! - its header is not a JSON object with unique members, a string `alg` and (if any) a string
//!   `kid`, or it carries `crit` (no JWS extension is implemented, so RFC 7515 §4.1.11 says to
//!   refuse);
//! - its `alg` is `none` in any case, unknown, or not in [`IdentityConfig::algorithms`];
//! - the key set is empty or, for a URL source, older than [`IdentityConfig::cache_ttl`];
//! - no key has its `kid` (an empty `kid` never matches), the key's own `alg` or type does not
//!   fit the header `alg`, or it has no `kid` and the set holds other than one candidate key.
//!   The `jku`, `x5u`, `jwk` and `x5c` headers are never used: keys come from the JWKS only;
//! - the signature does not verify (jsonwebtoken, RustCrypto backend);
//! - `exp`, `iss`, `aud` or `sub` are missing, `exp` has passed or `nbf` or `iat` has not come
//!   (with [`IdentityConfig::leeway`], against the system clock), the token is valid for longer
//!   than [`IdentityConfig::lifetime_max`] (from its `iat`, or from now), `iss` is not the exact issuer, no
//!   `aud` is accepted for the token's use ([`TokenUse`]: an agent's or a reviewer's), or its
//!   `aud` also names the other use's audience, a NumericDate is not a non-negative JSON
//!   number, `sub` is empty, too long or holds control characters, or the groups claim is
//!   malformed.
//!
//! HMAC algorithms are refused in the configuration and symmetric JWKs are never loaded, so an
//! HS256 token "signed" with an RSA public key (as PEM, DER or modulus) cannot verify.
//!
//! Neither errors nor logs carry a token or its claims' values.

mod claims;
mod jwks;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};

pub use claims::{GROUP_BYTES_MAX, GROUPS_COUNT_MAX, SUB_BYTES_MAX};
pub use jwks::{JWKS_BYTES_MAX, JWKS_KEYS_MAX, JwksError, RSA_MODULUS_BITS_MIN};

use claims::JsonObject;
use jwks::KeySet;

/// Default clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default cap on a token's length, in bytes.
pub const DEFAULT_TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Default shortest time between two fetches of a JWKS URL.
pub const DEFAULT_REFETCH_INTERVAL_MIN: Duration = Duration::from_secs(10);
/// Default age after which keys fetched from a URL stop verifying.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60 * 60);
/// Default longest validity of a token, from its `iat` to its `exp`.
pub const DEFAULT_LIFETIME_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The claims that jsonwebtoken must find in every token.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "iss", "aud", "sub"];

/// What a token must satisfy. Build it with [`IdentityConfig::new`], which fills in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The only accepted `iss`, compared exactly (a trailing slash matters).
    pub issuer: String,
    /// Accepted audiences: the token's `aud` (a string or an array) must contain one of them.
    pub audiences: Vec<String>,
    /// The audiences of reviewers' tokens (the admin API), none of them in `audiences`. Empty:
    /// reviewers present tokens of the agents' audiences. Set: a reviewer's token must name
    /// one of these, and a token naming any of them is never an agent's, nor one naming both.
    pub reviewer_audiences: Vec<String>,
    /// Accepted signature algorithms; default `[RS256]`. HS256/384/512 are refused.
    pub algorithms: Vec<Algorithm>,
    /// The claim holding the agent's groups: an array of strings or one string, absent for none.
    pub groups_claim: String,
    /// Clock skew allowed on `exp`, `nbf`, `iat` and the lifetime, in whole seconds
    /// (fractions are dropped).
    pub leeway: Duration,
    /// Longest a token may be valid, from its `iat` (or from now, without one, or with a
    /// later one) to its `exp`, in whole seconds: longer-lived tokens are refused.
    pub lifetime_max: Duration,
    /// Longest token accepted, in bytes; longer ones are refused before any parsing.
    pub token_bytes_max: usize,
    /// For a JWKS URL: the shortest time between two fetches, successful or not.
    pub refetch_interval_min: Duration,
    /// For a JWKS URL: keys fetched longer ago than this stop verifying.
    pub cache_ttl: Duration,
}

impl IdentityConfig {
    /// A configuration for this issuer and these audiences, with every other field defaulted.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> IdentityConfig {
        IdentityConfig {
            issuer: issuer.into(),
            audiences,
            reviewer_audiences: Vec::new(),
            algorithms: vec![Algorithm::RS256],
            groups_claim: "groups".to_owned(),
            leeway: DEFAULT_LEEWAY,
            lifetime_max: DEFAULT_LIFETIME_MAX,
            token_bytes_max: DEFAULT_TOKEN_BYTES_MAX,
            refetch_interval_min: DEFAULT_REFETCH_INTERVAL_MIN,
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }

    /// Checks that the configuration can be enforced; [`Verifier::new`] calls it too.
    pub fn validate(&self) -> Result<(), JwksError> {
        let fail = |reason| Err(JwksError::InvalidConfig(reason));
        if self.issuer.is_empty() {
            return fail("the issuer must not be empty");
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return fail("at least one audience is required, and none may be empty");
        }
        if self.reviewer_audiences.iter().any(String::is_empty) {
            return fail("a reviewer audience must not be empty");
        }
        if self.reviewer_audiences.iter().any(|aud| self.audiences.contains(aud)) {
            return fail("a reviewer audience must not also be an agent audience");
        }
        if self.algorithms.is_empty() {
            return fail("at least one signature algorithm must be allowed");
        }
        // Tokens are verified with the IdP's public keys only. Allowing HMAC would at best be
        // useless (no symmetric key is ever loaded) and at worst invite key confusion.
        if self.algorithms.iter().any(|alg| alg.family() == AlgorithmFamily::Hmac) {
            return fail("HS256, HS384 and HS512 are not allowed: only asymmetric signatures are");
        }
        if self.groups_claim.is_empty() {
            return fail("the groups claim name must not be empty");
        }
        if self.lifetime_max.as_secs() == 0 {
            return fail("the token lifetime limit must be at least a second");
        }
        if self.token_bytes_max == 0 {
            return fail("the token size limit must be positive");
        }
        if self.refetch_interval_min.is_zero() {
            return fail("the JWKS refetch interval must be positive");
        }
        if self.cache_ttl < self.refetch_interval_min {
            return fail("the JWKS cache TTL must not be shorter than the refetch interval");
        }
        Ok(())
    }

    /// jsonwebtoken's checks for tokens signed with `alg`.
    ///
    /// One `Validation` per algorithm, because jsonwebtoken refuses a `Validation` that lists
    /// an algorithm of another family than the key's.
    fn validation_for(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&REQUIRED_CLAIMS);
        validation.set_issuer(&[self.issuer.as_str()]);
        // Either use's audience passes here; `claims::check` tells the uses apart.
        let audiences: Vec<&str> = self.audiences.iter().chain(&self.reviewer_audiences).map(String::as_str).collect();
        validation.set_audience(&audiences);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = self.leeway.as_secs();
        validation
    }
}

/// What a token is presented for: each use has its own audiences when
/// [`IdentityConfig::reviewer_audiences`] is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// An agent logging in (drivers, the SQL API).
    Agent,
    /// A reviewer calling the admin API.
    Reviewer,
}

/// Who a verified token says the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: non-empty, at most [`SUB_BYTES_MAX`] bytes, no control characters.
    pub sub: String,
    /// The groups claim, in token order (empty when the claim is absent).
    pub groups: Vec<String>,
    /// The token's `exp`, in whole seconds since the Unix epoch (rounded down).
    pub expires_at_unix: u64,
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read when the verifier is built and on [`Verifier::reload_file`].
    File(PathBuf),
    /// A JWKS URL, fetched by the caller under [`Verifier::begin_refetch`].
    Url(String),
}

/// Why a token was refused. Messages are fit to show the agent: they never hold the token or
/// the values of its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("OIDC token is missing")]
    Missing,
    /// The token is longer than [`IdentityConfig::token_bytes_max`].
    #[error("OIDC token is longer than {size_max_bytes} bytes")]
    TooLarge {
        /// The limit that was crossed.
        size_max_bytes: usize,
    },
    /// The token is not a well-formed signed JWT (compact JWS) this gateway can read.
    #[error("OIDC token is not a well-formed signed JWT")]
    Malformed,
    /// The header's `alg` is `none`, unknown, or not allowed.
    #[error("OIDC token signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// No key in the key set has the token's `kid`, or none fits a token without `kid`.
    #[error("OIDC token is signed with an unknown key")]
    UnknownKey,
    /// The token has no `kid` and the key set holds several keys for its algorithm.
    #[error("OIDC token has no key id and the identity provider has several keys")]
    MissingKeyId,
    /// The key named by `kid` is of another type, or pinned to another algorithm.
    #[error("OIDC token signing algorithm does not match its key")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("OIDC token signature is invalid")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("OIDC token expired")]
    Expired,
    /// `nbf` (minus leeway) has not come yet, or `iat` (minus leeway) is in the future.
    #[error("OIDC token is not valid yet")]
    NotYetValid,
    /// The token is valid for longer than [`IdentityConfig::lifetime_max`].
    #[error(
        "OIDC token is valid for longer than the {lifetime_max_secs} s this gateway accepts; the identity provider \
         must issue shorter-lived tokens"
    )]
    LifetimeTooLong {
        /// The limit that was crossed, in seconds.
        lifetime_max_secs: u64,
    },
    /// `iss` is not the configured issuer.
    #[error("OIDC token issuer is not accepted")]
    WrongIssuer,
    /// `aud` holds none of the configured audiences.
    #[error("OIDC token audience is not accepted")]
    WrongAudience,
    /// `aud` names both an agent audience and a reviewer audience.
    #[error("OIDC token audience names both agents and reviewers")]
    MixedAudience,
    /// A required claim is absent.
    #[error("OIDC token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type or an unacceptable value.
    #[error("OIDC token claim `{0}` is invalid")]
    InvalidClaim(&'static str),
    /// The JWKS URL has not been fetched successfully yet.
    #[error("OIDC signing keys are not available yet")]
    KeysUnavailable,
    /// The keys fetched from the JWKS URL are older than [`IdentityConfig::cache_ttl`].
    #[error("OIDC signing keys are out of date")]
    KeysStale,
}

impl AuthError {
    /// The Snowflake login error code to answer with: `390318` (OAuth access token expired)
    /// for an expired token, `390303` (invalid OAuth access token) for everything else. The
    /// Snowflake drivers turn both into a clean error for the agent.
    pub fn snowflake_code(&self) -> &'static str {
        match self {
            AuthError::Expired => "390318",
            _ => "390303",
        }
    }

    /// Whether the identity provider is at fault, not the token: its keys could not be
    /// fetched (yet, or lately). The token may well be valid: the client should retry later.
    pub fn provider_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable | AuthError::KeysStale)
    }

    /// Whether fetching the JWKS again might make the same token verify: its key is unknown,
    /// or the cached keys are missing or too old. The caller still needs a
    /// [`Verifier::begin_refetch`] permit, which rate-limits fetches.
    pub fn refetch_may_help(&self) -> bool {
        matches!(self, AuthError::UnknownKey | AuthError::KeysUnavailable | AuthError::KeysStale)
    }
}

/// The right to fetch a JWKS URL once, from [`Verifier::begin_refetch`].
///
/// Hand it back with [`Verifier::finish_refetch`]. Dropping it instead (a cancelled fetch)
/// also ends the fetch, so that a lost permit cannot stop refetches forever; either way the
/// attempt counts toward the rate limit.
#[derive(Debug)]
#[must_use = "a refetch permit must be handed back to Verifier::finish_refetch"]
pub struct RefetchPermit {
    state: Arc<Mutex<RefetchState>>,
}

impl Drop for RefetchPermit {
    fn drop(&mut self) {
        lock(&self.state).in_flight = false;
    }
}

/// The rate limiter and single-flight flag for JWKS URL fetches.
#[derive(Debug, Default)]
struct RefetchState {
    /// When the last permit was issued, successful or not.
    last_attempt_at: Option<Instant>,
    /// Whether a permit is outstanding.
    in_flight: bool,
}

/// The keys in force and when they were fetched.
#[derive(Debug, Default)]
struct Keys {
    set: KeySet,
    /// When a URL source's keys were fetched; `None` for a file, or a URL never fetched.
    fetched_at: Option<Instant>,
}

/// Validates OIDC JWTs against a JWKS. `Send + Sync`: build one and share it behind an `Arc`.
///
/// Verification reads the key set without locking (it is swapped whole on reload or refetch).
#[derive(Debug)]
pub struct Verifier {
    config: IdentityConfig,
    source: JwksSource,
    /// One prepared jsonwebtoken `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    keys: ArcSwap<Keys>,
    refetch: Arc<Mutex<RefetchState>>,
}

impl Verifier {
    /// Builds a verifier. A file source is read now (errors name the file) and must hold a
    /// usable key; a URL source starts empty, and every token is refused with
    /// [`AuthError::KeysUnavailable`] until a [`Verifier::finish_refetch`] succeeds.
    pub fn new(config: IdentityConfig, source: JwksSource) -> Result<Verifier, JwksError> {
        config.validate()?;
        install_crypto_provider();
        let keys = match &source {
            JwksSource::File(path) => Keys { set: jwks::load_file(path)?, fetched_at: None },
            JwksSource::Url(_) => Keys::default(),
        };
        let validations = config.algorithms.iter().map(|&alg| (alg, config.validation_for(alg))).collect();
        Ok(Verifier { config, source, validations, keys: ArcSwap::from_pointee(keys), refetch: Arc::default() })
    }

    /// The configuration the verifier enforces.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// Where the keys come from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// Verifies an agent's token (the bare compact JWT, without `Bearer `) and returns who it
    /// names: [`Verifier::verify_for`] with [`TokenUse::Agent`].
    pub fn verify(&self, token: &str, now: Instant) -> Result<Identity, AuthError> {
        self.verify_for(token, now, TokenUse::Agent)
    }

    /// Verifies a token presented for `used_for` and returns who it names.
    ///
    /// `now` only ages a URL source's keys; `exp` and `nbf` are compared with the system
    /// clock by jsonwebtoken. Nothing is logged: the caller logs the error it gets.
    pub fn verify_for(&self, token: &str, now: Instant, used_for: TokenUse) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > self.config.token_bytes_max {
            return Err(AuthError::TooLarge { size_max_bytes: self.config.token_bytes_max });
        }
        let [header, payload, _signature] = split_compact(token)?;
        let header = Header::parse(header)?;
        // jsonwebtoken parses the header again, more strictly (extra members must be strings).
        // Doing it here, before any key work, means that a JSON error out of `decode` below can
        // only come from the claims, which it parses after the signature has verified.
        jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let validation = self
            .validations
            .iter()
            .find_map(|(alg, validation)| (*alg == header.alg).then_some(validation))
            .ok_or(AuthError::AlgorithmNotAllowed)?;

        let keys = self.keys.load();
        if let JwksSource::Url(_) = self.source {
            match keys.fetched_at {
                None => return Err(AuthError::KeysUnavailable),
                Some(at) if now.saturating_duration_since(at) > self.config.cache_ttl => {
                    return Err(AuthError::KeysStale);
                }
                Some(_) => {}
            }
        }
        let key = keys.set.select(header.kid.as_deref(), header.alg)?;

        match jsonwebtoken::decode::<JsonObject>(token, &key.decoding, validation) {
            Ok(data) => claims::check(&data.claims.0, &self.config, used_for, unix_now()),
            Err(error) => {
                let refused = map_jwt_error(error.kind());
                // jsonwebtoken checks claims only after the signature, so in these cases the
                // payload is the IdP's own, and our checks can say which claim is wrong (it
                // reports an `exp` string as missing, and an `exp` array as bad JSON). Were
                // that ordering ever to change, this could only turn one refusal into another.
                let claims_stage = matches!(
                    error.kind(),
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_)
                );
                if claims_stage
                    && let Ok(claims) = decode_json_segment(payload)
                    && let Err(precise) = claims::check(&claims.0, &self.config, used_for, unix_now())
                {
                    return Err(precise);
                }
                Err(refused)
            }
        }
    }

    /// For a URL source: whether the caller may fetch the JWKS now. At most one permit is
    /// issued per [`IdentityConfig::refetch_interval_min`] (counted from the previous permit,
    /// whatever its fetch's outcome) and never while another is outstanding, across all
    /// threads. Always `None` for a file source.
    pub fn begin_refetch(&self, now: Instant) -> Option<RefetchPermit> {
        if !matches!(self.source, JwksSource::Url(_)) {
            return None;
        }
        let mut state = lock(&self.refetch);
        if state.in_flight {
            return None;
        }
        // A `now` earlier than the last attempt (threads race to the lock with instants read
        // before it) counts as no time elapsed.
        if let Some(last) = state.last_attempt_at
            && now.saturating_duration_since(last) < self.config.refetch_interval_min
        {
            return None;
        }
        state.in_flight = true;
        state.last_attempt_at = Some(now);
        Some(RefetchPermit { state: Arc::clone(&self.refetch) })
    }

    /// Ends a fetch: `body` is the JWKS document, or why the fetch failed. On success the new
    /// keys replace the old ones at once (so a key the IdP removed stops verifying) and are
    /// dated `now`. On failure, including a document without usable keys, the old keys stay
    /// until they age out.
    pub fn finish_refetch(
        &self,
        permit: RefetchPermit,
        body: Result<&[u8], String>,
        now: Instant,
    ) -> Result<(), JwksError> {
        if !Arc::ptr_eq(&permit.state, &self.refetch) {
            return Err(JwksError::ForeignPermit);
        }
        let set = jwks::parse_jwks_nonempty(body.map_err(JwksError::Fetch)?)?;
        tracing::info!(keys = set.len(), "JWKS fetched");
        self.keys.store(Arc::new(Keys { set, fetched_at: Some(now) }));
        drop(permit);
        Ok(())
    }

    /// For a file source: reads the file again and, if it holds usable keys, swaps them in.
    /// On error the old keys stay and the error names the file.
    pub fn reload_file(&self) -> Result<(), JwksError> {
        let JwksSource::File(path) = &self.source else {
            return Err(JwksError::NotAFile);
        };
        let set = jwks::load_file(path)?;
        tracing::info!(keys = set.len(), path = %path.display(), "JWKS file reloaded");
        self.keys.store(Arc::new(Keys { set, fetched_at: None }));
        Ok(())
    }
}

/// The parts of a JOSE header the verifier reads itself.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

impl Header {
    /// Reads `alg` and `kid` from the encoded header, refusing `none` and `crit`.
    ///
    /// jsonwebtoken parses the header again when it verifies; reading it here first lets `alg`
    /// and `kid` pick the key, and refuses what jsonwebtoken would let through (`crit`,
    /// duplicate members). Key-carrying headers (`jku`, `x5u`, `jwk`, `x5c`) are never used.
    fn parse(encoded: &str) -> Result<Header, AuthError> {
        let JsonObject(header) = decode_json_segment(encoded)?;
        let alg = match header.get("alg") {
            Some(serde_json::Value::String(alg)) => alg,
            _ => return Err(AuthError::Malformed),
        };
        // `none` is not an Algorithm jsonwebtoken knows, so it would be refused below anyway;
        // it is named here so that no future version's spelling of it can slip through.
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let alg = alg.parse::<Algorithm>().map_err(|_| AuthError::AlgorithmNotAllowed)?;
        if header.contains_key("crit") {
            return Err(AuthError::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(AuthError::Malformed),
        };
        Ok(Header { alg, kid })
    }
}

/// Splits a compact JWS into its three segments, checking they only hold base64url characters
/// and that the header and payload are not empty. The signature may be empty here; it then
/// fails verification.
fn split_compact(token: &str) -> Result<[&str; 3], AuthError> {
    let is_base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !token.bytes().all(|b| is_base64url(b) || b == b'.') {
        return Err(AuthError::Malformed);
    }
    let mut segments = token.split('.');
    match (segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some(header), Some(payload), Some(signature), None) if !header.is_empty() && !payload.is_empty() => {
            Ok([header, payload, signature])
        }
        _ => Err(AuthError::Malformed),
    }
}

/// Decodes a base64url segment holding a JSON object with unique member names.
fn decode_json_segment(segment: &str) -> Result<JsonObject, AuthError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Maps a jsonwebtoken error to ours, failing closed on kinds it may add later.
fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        // Keys are checked when loaded, so a key error here means the key cannot verify this
        // token; to the agent that is a bad signature.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Signing(_)
        | ErrorKind::Provider(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::InvalidClaim("sub"),
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim_name(claim)),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(claim_name(claim)),
        _ => AuthError::Malformed,
    }
}

/// Seconds since the Unix epoch by the system clock, the one jsonwebtoken checks `exp` and
/// `nbf` against (0 for a clock before 1970, which then refuses every `iat`).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The static name of a registered claim jsonwebtoken reports on.
fn claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}

/// Makes jsonwebtoken use its RustCrypto backend for the whole process.
///
/// jsonwebtoken picks a backend from its crate features and panics at the first verification
/// if both `rust_crypto` and `aws_lc_rs` are enabled, which feature unification in the
/// workspace could do behind our back. Installing one explicitly removes that trap; if some
/// other code installed a provider first, that deliberate choice is kept.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

/// Locks the refetch state. A panic while holding the lock cannot leave the state
/// inconsistent (every update is a single assignment), so a poisoned lock is used as is.
fn lock(state: &Mutex<RefetchState>) -> MutexGuard<'_, RefetchState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
