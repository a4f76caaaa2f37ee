//! Login and renewal rewriting: the agent's OIDC login becomes the gateway's own login, and
//! Snowflake's tokens become sealed tokens on the way back. No I/O.
//!
//! JSON is rewritten leniently (Teleport issue #14974): every field the gateway does not own is
//! kept with its type, in order; only the credential fields are overwritten and every other
//! secret field is removed.

use serde_json::{Map, Value};

use super::case_variant_key;
use super::credential::UpstreamCredential;
use super::token::{Sealer, TokenClaims, TokenError, TokenKind};
use crate::json::{Unique, UniqueError};

/// Login fields that carry secrets or widen the login; the gateway removes them all before
/// writing its own credential. `SECONDARY_ROLES` would let an agent act with every role the
/// gateway's user holds.
pub const SECRET_LOGIN_FIELDS: [&str; 11] = [
    "PASSWORD",
    "TOKEN",
    "PASSCODE",
    "PASSCODE_IN_PASSWORD",
    "EXT_AUTHN_DUO_METHOD",
    "PROOF_KEY",
    "RAW_SAML_RESPONSE",
    "PROVIDER",
    "CHOSEN_NEW_PASSWORD",
    "SECONDARY_ROLES",
    "BROWSER_MODE_REDIRECT_PORT",
];

/// Drops from an upstream login or renewal answer's `data` every member that names a token
/// (`idToken`, `mfaToken`, `remMeToken`, their validities, whatever comes next), but the
/// `sealed` ones, which the caller seals or removes: no upstream credential reaches the agent
/// because a list of them was short.
fn drop_credentials(data: &mut Map<String, Value>, sealed: [&str; 2]) {
    data.retain(|key, _| sealed.contains(&key.as_str()) || !key.to_ascii_lowercase().contains("token"));
}

/// Why a login or renewal body was refused, or an upstream answer could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The client's body is not the JSON object the endpoint takes.
    #[error("the request body is not a JSON object with a `data` object")]
    BadShape,
    /// The client's body could be read two ways: a member named twice, or a key the gateway
    /// reads or sets spelled in another case (the warehouse may read either).
    #[error("the request body is ambiguous: {0}")]
    Ambiguous(String),
    /// The client used another authenticator than OAUTH with an OIDC token.
    #[error("log in with authenticator='oauth' and your OIDC token as token")]
    WrongAuthenticator,
    /// The client sent no token.
    #[error("the login carries no OIDC token")]
    MissingToken,
    /// A sealed token in the body was refused.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The old session token belongs to another session than the master token.
    #[error("the session token does not belong to this master token's session")]
    SessionMismatch,
    /// A token request other than a renewal (drivers also know `CLONE` and `ISSUE`, whose
    /// answers the gateway does not know how to seal).
    #[error("only token renewals (requestType RENEW) pass through snowgate")]
    NotRenewal,
    /// Upstream answered success without the tokens it must carry.
    #[error("the upstream answered a successful login without tokens")]
    UpstreamWithoutTokens,
}

/// A parsed login request, holding the client's document until it is rewritten. Its `Debug`
/// shows neither the document nor the token.
pub struct LoginRequest {
    document: Map<String, Value>,
    /// The OIDC token the agent presented.
    pub oidc_token: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest").field("oidc_token", &"(redacted)").finish_non_exhaustive()
    }
}

/// The login `data` keys the gateway reads or sets, besides the secret fields it removes in
/// any case.
const LOGIN_DATA_KEYS: &[&str] = &["AUTHENTICATOR", "ACCOUNT_NAME", "LOGIN_NAME", "SESSION_PARAMETERS"];

/// An agent's login or renewal body: an object whose members are named once at every depth,
/// with `data` (when it has one) spelled as the drivers spell it.
fn read_client_document(body: &[u8]) -> Result<Map<String, Value>, LoginError> {
    let document = Unique::object(body).map_err(|e| match e {
        UniqueError::DuplicateMember => LoginError::Ambiguous(e.to_string()),
        _ => LoginError::BadShape,
    })?;
    if let Some(key) = case_variant_key(&document, &["data", "requestType", "oldSessionToken"]) {
        return Err(LoginError::Ambiguous(format!("the key {key:?} is spelled unlike the driver's")));
    }
    Ok(document)
}

fn data_object(document: &mut Map<String, Value>) -> Result<&mut Map<String, Value>, LoginError> {
    document.get_mut("data").and_then(Value::as_object_mut).ok_or(LoginError::BadShape)
}

/// Parses a login body (already gunzipped): it must use `AUTHENTICATOR=OAUTH` and a `TOKEN`.
pub fn parse_login_request(body: &[u8]) -> Result<LoginRequest, LoginError> {
    let mut document = read_client_document(body)?;
    let data = data_object(&mut document)?;
    if let Some(key) = case_variant_key(data, LOGIN_DATA_KEYS) {
        return Err(LoginError::Ambiguous(format!("the key {key:?} is spelled unlike the driver's")));
    }
    let authenticator = data.get("AUTHENTICATOR").and_then(Value::as_str).unwrap_or("");
    if !authenticator.eq_ignore_ascii_case("OAUTH") {
        return Err(LoginError::WrongAuthenticator);
    }
    let oidc_token = match data.get("TOKEN") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(LoginError::MissingToken),
    };
    Ok(LoginRequest { document, oidc_token })
}

impl LoginRequest {
    /// The login's `SESSION_PARAMETERS`, to be checked (and rewritten) before it goes upstream:
    /// they set the session's parameters as `ALTER SESSION` would.
    pub fn session_parameters_mut(&mut self) -> Option<&mut Value> {
        data_object(&mut self.document).expect("checked when parsed").get_mut("SESSION_PARAMETERS")
    }

    /// The body sent upstream: the gateway's account, user and credential, no client secret.
    pub fn into_upstream_body(
        mut self,
        account: &str,
        user: &str,
        credential: &UpstreamCredential,
        now_unix: u64,
    ) -> Vec<u8> {
        let data = data_object(&mut self.document).expect("checked when parsed");
        data.retain(|key, _| !SECRET_LOGIN_FIELDS.iter().any(|field| field.eq_ignore_ascii_case(key)));
        data.insert("ACCOUNT_NAME".into(), Value::String(account.into()));
        data.insert("LOGIN_NAME".into(), Value::String(user.into()));
        match credential {
            UpstreamCredential::KeyPair(key_pair) => {
                data.insert("AUTHENTICATOR".into(), Value::String("SNOWFLAKE_JWT".into()));
                data.insert("TOKEN".into(), Value::String(key_pair.jwt(now_unix).expose().into()));
            }
            UpstreamCredential::Password(password) => {
                data.insert("AUTHENTICATOR".into(), Value::String("SNOWFLAKE".into()));
                data.insert("PASSWORD".into(), Value::String(password.expose().into()));
            }
        }
        serde_json::to_vec(&self.document).expect("a JSON map always serialises")
    }
}

/// Who a session belongs to, as sealed into its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    /// The agent's `sub`.
    pub sub: String,
    /// The agent's groups.
    pub groups: Vec<String>,
    /// The Snowflake role the gateway logged in with.
    pub role: String,
    /// When the agent's OIDC token expires (`exp` plus the allowed clock skew), in Unix
    /// milliseconds: no sealed token of the session outlives it.
    pub identity_expires_at_unix_ms: u64,
}

/// What the gateway learnt from a login or renewal answer, for the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedAnswer {
    /// The body to send the agent.
    pub body: Vec<u8>,
    /// Whether upstream said success.
    pub success: bool,
    /// Snowflake's session id, if given.
    pub session_id: Option<i64>,
}

/// When a session opened at `now_unix_ms` by an identity whose OIDC token has `exp` (Unix
/// seconds) ends, in Unix milliseconds: with the token (the clock skew the check allowed
/// counts, so a token accepted at login is not expired at once), or `session_max_ms` after the
/// login, whichever is first.
pub fn identity_end_unix_ms(exp_unix: u64, leeway_secs: u64, now_unix_ms: u64, session_max_ms: u64) -> u64 {
    exp_unix.saturating_add(leeway_secs).saturating_mul(1000).min(now_unix_ms.saturating_add(session_max_ms))
}

/// When a validity of `field` seconds (or `default` when absent) that starts at `now_unix_ms`
/// ends, in Unix milliseconds. Saturates: upstream's numbers are not trusted to be sane.
fn expiry_ms(now_unix_ms: u64, data: &Map<String, Value>, field: &str, default: u64) -> u64 {
    let seconds = data.get(field).and_then(Value::as_u64).unwrap_or(default);
    now_unix_ms.saturating_add(seconds.saturating_mul(1000))
}

/// Tells the agent how long the sealed token it gets lasts, in the validity field upstream
/// filled in (when it did): the seal caps a token at the identity's end, and a driver told
/// Snowflake's longer validity would plan its heartbeats by it.
fn advertise_validity(data: &mut Map<String, Value>, field: &str, claims: &TokenClaims, now_unix_ms: u64) {
    if let Some(advertised) = data.get_mut(field)
        && let Some(upstream_secs) = advertised.as_u64()
    {
        let lasts_secs = claims.expires_at_unix_ms.saturating_sub(now_unix_ms) / 1000;
        *advertised = Value::from(upstream_secs.min(lasts_secs.max(1)));
    }
}

fn take_string(data: &mut Map<String, Value>, field: &str) -> Option<String> {
    match data.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn claims_for(
    owner: &SessionOwner,
    upstream_token: String,
    session_id: Option<i64>,
    expires_at_unix_ms: u64,
) -> TokenClaims {
    TokenClaims {
        upstream_token,
        sub: owner.sub.clone(),
        groups: owner.groups.clone(),
        role: owner.role.clone(),
        session_id,
        expires_at_unix_ms: expires_at_unix_ms.min(owner.identity_expires_at_unix_ms),
        identity_expires_at_unix_ms: owner.identity_expires_at_unix_ms,
    }
}

/// A session id for a session whose upstream named none (emulators do not): negative, so
/// never one of Snowflake's (positive) nor the SQL API's (-1), and random, so that each such
/// session is its own for what is bound to a session (parked statements, chunk URLs) and in
/// the recording.
fn gateway_session_id() -> i64 {
    let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
    -((high >> 2) as i64) - 2
}

/// Replaces the tokens in an upstream login answer with sealed ones. A failed login is passed
/// on as is, minus any credential field.
pub fn seal_login_response(
    body: &[u8],
    sealer: &Sealer,
    owner: &SessionOwner,
    now_unix_ms: u64,
) -> Result<SealedAnswer, LoginError> {
    let mut document: Map<String, Value> = serde_json::from_slice(body).map_err(|_| LoginError::BadShape)?;
    let success = document.get("success").and_then(Value::as_bool).unwrap_or(false);
    let Some(data) = document.get_mut("data").and_then(Value::as_object_mut) else {
        if success {
            return Err(LoginError::UpstreamWithoutTokens);
        }
        return Ok(SealedAnswer { body: body.to_vec(), success, session_id: None });
    };
    drop_credentials(data, ["token", "masterToken"]);
    // Snowflake's session ids are positive; any other is not taken (it could be the SQL API's).
    let session_id =
        data.get("sessionId").and_then(Value::as_i64).filter(|&id| id > 0).or_else(|| success.then(gateway_session_id));
    if success {
        let session_token = take_string(data, "token").ok_or(LoginError::UpstreamWithoutTokens)?;
        let session_expiry = expiry_ms(now_unix_ms, data, "validityInSeconds", 3600);
        let session = claims_for(owner, session_token, session_id, session_expiry);
        advertise_validity(data, "validityInSeconds", &session, now_unix_ms);
        data.insert("token".into(), Value::String(sealer.seal(TokenKind::Session, &session)));
        // Some emulators issue no master token; the agent then gets none either, as it would
        // from them directly. Any other value in the field is never passed on.
        match take_string(data, "masterToken") {
            Some(master_token) => {
                let master_expiry = expiry_ms(now_unix_ms, data, "masterValidityInSeconds", 14400);
                let master = claims_for(owner, master_token, session_id, master_expiry);
                advertise_validity(data, "masterValidityInSeconds", &master, now_unix_ms);
                data.insert("masterToken".into(), Value::String(sealer.seal(TokenKind::Master, &master)));
            }
            None => {
                data.remove("masterToken");
            }
        }
    } else {
        data.remove("token");
        data.remove("masterToken");
    }
    let body = serde_json::to_vec(&document).expect("a JSON map always serialises");
    Ok(SealedAnswer { body, success, session_id })
}

/// The spellings drivers give a renewal's request type.
const REQUEST_TYPE_KEYS: [&str; 2] = ["requestType", "REQUEST_TYPE"];

/// Whether `key` could be read as the request type: `requesttype` in any case, with any `_`.
fn names_request_type(key: &str) -> bool {
    key.bytes().filter(|&b| b != b'_').map(|b| b.to_ascii_lowercase()).eq("requesttype".bytes())
}

/// Rewrites a renewal body: the sealed `oldSessionToken` becomes the real one. The old session
/// token may have expired (that is why the driver renews) but must belong to `master`'s session.
pub fn rewrite_renew_request(body: &[u8], sealer: &Sealer, master: &TokenClaims) -> Result<Vec<u8>, LoginError> {
    let mut document = read_client_document(body)?;
    // Drivers name the request type `requestType` (Python, Go, JDBC, .NET) or `REQUEST_TYPE`
    // (Node), and the warehouse reads either: exactly one key that could name it, or the
    // warehouse might read another than this check did.
    let mut kinds = document.iter().filter(|(key, _)| names_request_type(key));
    let (key, kind) = match (kinds.next(), kinds.next()) {
        (Some((key, kind)), None) => (key.clone(), kind.clone()),
        (None, _) => return Err(LoginError::NotRenewal),
        (Some(_), Some(_)) => return Err(LoginError::Ambiguous("the request type is named more than once".into())),
    };
    if !REQUEST_TYPE_KEYS.contains(&key.as_str()) {
        return Err(LoginError::Ambiguous(format!("the key {key:?} is spelled unlike the drivers'")));
    }
    if kind.as_str() != Some("RENEW") {
        return Err(LoginError::NotRenewal);
    }
    // Upstream gets one spelling, whichever the driver used.
    document.remove(&key);
    document.insert("requestType".into(), Value::String("RENEW".into()));
    let old = match document.get("oldSessionToken") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(LoginError::BadShape),
    };
    let old_claims = sealer.open_ignoring_expiry(TokenKind::Session, &old)?;
    if old_claims.sub != master.sub || old_claims.session_id != master.session_id {
        return Err(LoginError::SessionMismatch);
    }
    document.insert("oldSessionToken".into(), Value::String(old_claims.upstream_token));
    Ok(serde_json::to_vec(&document).expect("a JSON map always serialises"))
}

/// Seals the tokens in an upstream renewal answer. Without a new master token upstream keeps
/// the old one, and so does the agent: its master token is sealed again.
pub fn seal_renew_response(
    body: &[u8],
    sealer: &Sealer,
    master: &TokenClaims,
    now_unix_ms: u64,
) -> Result<SealedAnswer, LoginError> {
    let mut document: Map<String, Value> = serde_json::from_slice(body).map_err(|_| LoginError::BadShape)?;
    let success = document.get("success").and_then(Value::as_bool).unwrap_or(false);
    let owner = SessionOwner {
        sub: master.sub.clone(),
        groups: master.groups.clone(),
        role: master.role.clone(),
        identity_expires_at_unix_ms: master.identity_expires_at_unix_ms,
    };
    let Some(data) = document.get_mut("data").and_then(Value::as_object_mut) else {
        if success {
            return Err(LoginError::UpstreamWithoutTokens);
        }
        return Ok(SealedAnswer { body: body.to_vec(), success, session_id: None });
    };
    drop_credentials(data, ["sessionToken", "masterToken"]);
    let session_id = data.get("sessionId").and_then(Value::as_i64).filter(|&id| id > 0).or(master.session_id);
    if success {
        let session_token = take_string(data, "sessionToken").ok_or(LoginError::UpstreamWithoutTokens)?;
        let session_expiry = expiry_ms(now_unix_ms, data, "validityInSecondsST", 3600);
        let session = claims_for(&owner, session_token, session_id, session_expiry);
        advertise_validity(data, "validityInSecondsST", &session, now_unix_ms);
        let sealed_session = sealer.seal(TokenKind::Session, &session);
        let sealed_master = match take_string(data, "masterToken") {
            Some(master_token) => {
                let master_expiry = expiry_ms(now_unix_ms, data, "validityInSecondsMT", 14400);
                let renewed = claims_for(&owner, master_token, session_id, master_expiry);
                advertise_validity(data, "validityInSecondsMT", &renewed, now_unix_ms);
                sealer.seal(TokenKind::Master, &renewed)
            }
            None => {
                advertise_validity(data, "validityInSecondsMT", master, now_unix_ms);
                sealer.seal(TokenKind::Master, master)
            }
        };
        data.insert("sessionToken".into(), Value::String(sealed_session));
        data.insert("masterToken".into(), Value::String(sealed_master));
    } else {
        data.remove("sessionToken");
        data.remove("masterToken");
    }
    let body = serde_json::to_vec(&document).expect("a JSON map always serialises");
    Ok(SealedAnswer { body, success, session_id })
}

#[cfg(test)]
mod tests {
    use super::super::credential::Secret;
    use super::super::token::KEY_BYTES;
    use super::*;
    use serde_json::json;

    fn sealer() -> Sealer {
        Sealer::new(&[vec![7; KEY_BYTES]]).unwrap()
    }

    fn owner() -> SessionOwner {
        SessionOwner {
            sub: "agent-1".into(),
            groups: vec!["g".into()],
            role: "ANALYST".into(),
            identity_expires_at_unix_ms: u64::MAX,
        }
    }

    #[test]
    fn login_numbers_keep_their_value_through_the_rewrite() {
        // Found by the `login_rewrite` fuzz target: a number past f64's exact range came back
        // as a different double, because the parse rounded it inexactly.
        let body = br#"{"data": {"CLIENT_APP_VERSION": 20000000000008715506534846329287, "X": 0.1000000000000000055511151231257827, "AUTHENTICATOR": "OAUTH", "TOKEN": "t"}}"#;
        let request = parse_login_request(body).unwrap();
        assert_eq!(format!("{request:?}"), r#"LoginRequest { oidc_token: "(redacted)", .. }"#);
        let credential = UpstreamCredential::Password(Secret::new("gw".into()));
        let out: Value = serde_json::from_slice(&request.into_upstream_body("A", "U", &credential, 0)).unwrap();
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(out["data"]["CLIENT_APP_VERSION"], sent["data"]["CLIENT_APP_VERSION"]);
        assert_eq!(out["data"]["X"], sent["data"]["X"]);
    }

    #[test]
    fn login_keeps_unknown_fields_and_types_and_swaps_the_credential() {
        let body = json!({"data": {
            "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": 3.12,
            "ACCOUNT_NAME": "agentacct", "LOGIN_NAME": "agent",
            "AUTHENTICATOR": "OAUTH", "TOKEN": "eyJ.oidc.jwt", "PASSCODE": "123456",
            "SECONDARY_ROLES": "ALL",
            "CLIENT_ENVIRONMENT": {"OS": "Linux", "LOGIN_TIMEOUT": null, "TRACING": 30},
            "SESSION_PARAMETERS": {"QUERY_TAG": "t", "AUTOCOMMIT": true}},
            "inFlightCtx": [1, "x"]});
        let request = parse_login_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.oidc_token, "eyJ.oidc.jwt");
        let credential = UpstreamCredential::Password(Secret::new("gw-secret".into()));
        let out: Value =
            serde_json::from_slice(&request.into_upstream_body("GWACCT", "GWUSER", &credential, 0)).unwrap();
        let data = &out["data"];
        assert_eq!(data["ACCOUNT_NAME"], "GWACCT");
        assert_eq!(data["LOGIN_NAME"], "GWUSER");
        assert_eq!(data["AUTHENTICATOR"], "SNOWFLAKE");
        assert_eq!(data["PASSWORD"], "gw-secret");
        assert!(data.get("TOKEN").is_none() && data.get("PASSCODE").is_none() && data.get("SECONDARY_ROLES").is_none());
        assert_eq!(data["CLIENT_APP_VERSION"], json!(3.12));
        assert_eq!(data["CLIENT_ENVIRONMENT"], body["data"]["CLIENT_ENVIRONMENT"]);
        assert_eq!(data["SESSION_PARAMETERS"], body["data"]["SESSION_PARAMETERS"]);
        assert_eq!(out["inFlightCtx"], json!([1, "x"]));
    }

    #[test]
    fn login_requires_oauth_and_a_token() {
        let wrong = json!({"data": {"AUTHENTICATOR": "SNOWFLAKE", "PASSWORD": "x"}}).to_string();
        assert!(matches!(parse_login_request(wrong.as_bytes()), Err(LoginError::WrongAuthenticator)));
        let missing = json!({"data": {"AUTHENTICATOR": "oauth"}}).to_string();
        assert!(matches!(parse_login_request(missing.as_bytes()), Err(LoginError::MissingToken)));
        let not_string = json!({"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": 5}}).to_string();
        assert!(matches!(parse_login_request(not_string.as_bytes()), Err(LoginError::MissingToken)));
        assert!(matches!(parse_login_request(b"[1]"), Err(LoginError::BadShape)));
        assert!(matches!(parse_login_request(b"{\"data\": 1}"), Err(LoginError::BadShape)));
        assert!(matches!(parse_login_request(b"not json"), Err(LoginError::BadShape)));
    }

    #[test]
    fn an_ambiguous_login_or_renewal_is_refused() {
        // Keys the gateway reads or sets, in another case: the warehouse might read them.
        for body in [
            json!({"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t", "session_parameters": {"SEARCH_PATH": "x"}}}),
            json!({"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t", "Authenticator": "SNOWFLAKE"}}),
            json!({"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t", "account_name": "OTHER"}}),
            json!({"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t"}, "DATA": {"AUTHENTICATOR": "SNOWFLAKE"}}),
        ] {
            let refused = parse_login_request(body.to_string().as_bytes());
            assert!(matches!(refused, Err(LoginError::Ambiguous(_))), "{body}: {refused:?}");
        }
        // A member named twice, at any depth.
        for body in [
            r#"{"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t", "AUTHENTICATOR": "SNOWFLAKE"}}"#,
            r#"{"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t", "SESSION_PARAMETERS": {"A": 1, "A": 2}}}"#,
        ] {
            assert!(matches!(parse_login_request(body.as_bytes()), Err(LoginError::Ambiguous(_))), "{body}");
        }
        // The drivers' own spelling passes, with their other keys in any case.
        let fine =
            json!({"data": {"AUTHENTICATOR": "OAUTH", "TOKEN": "t", "SESSION_PARAMETERS": {}, "Client_Thing": 1}});
        assert!(parse_login_request(fine.to_string().as_bytes()).is_ok());

        let s = sealer();
        let master = claims_for(&owner(), "REAL-M".into(), Some(9), 10_000);
        let old = s.seal(TokenKind::Session, &claims_for(&owner(), "REAL-S1".into(), Some(9), 100));
        let twice = format!(r#"{{"oldSessionToken":"{old}","requestType":"RENEW","requestType":"ISSUE"}}"#);
        assert!(matches!(rewrite_renew_request(twice.as_bytes(), &s, &master), Err(LoginError::Ambiguous(_))));
        let cased = json!({"oldSessionToken": old, "requestType": "RENEW", "REQUESTTYPE": "ISSUE"}).to_string();
        assert!(matches!(rewrite_renew_request(cased.as_bytes(), &s, &master), Err(LoginError::Ambiguous(_))));
    }

    #[test]
    fn login_response_tokens_are_sealed() {
        // Every token but the two sealed ones is dropped, named in any case (`remMeToken` is
        // one Snowflake sends that no list named), and a `sessionToken` the login does not seal.
        let upstream = json!({"data": {"token": "REAL-S", "masterToken": "REAL-M", "idToken": "REAL-ID",
            "remMeToken": "REAL-R", "MFA_TOKEN": "REAL-MFA", "sessionToken": "REAL-ST",
            "validityInSeconds": 100, "masterValidityInSeconds": 1000, "sessionId": 99,
            "parameters": [{"name": "TIMEZONE", "value": "UTC"}]}, "success": true});
        let s = sealer();
        let answer = seal_login_response(upstream.to_string().as_bytes(), &s, &owner(), 5_000_000).unwrap();
        let text = String::from_utf8(answer.body.clone()).unwrap();
        assert!(!text.contains("REAL-"), "{text}");
        assert_eq!((answer.success, answer.session_id), (true, Some(99)));
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let session = s.open(TokenKind::Session, out["data"]["token"].as_str().unwrap(), 5_000_000).unwrap();
        assert_eq!((session.upstream_token.as_str(), session.expires_at_unix_ms), ("REAL-S", 5_100_000));
        let master = s.open(TokenKind::Master, out["data"]["masterToken"].as_str().unwrap(), 5_000_000).unwrap();
        assert_eq!((master.upstream_token.as_str(), master.expires_at_unix_ms), ("REAL-M", 6_000_000));
        assert_eq!(out["data"]["parameters"], upstream["data"]["parameters"]);
    }

    /// An upstream that names no session (fakesnow) still gets each session an id of its own,
    /// negative: what is bound to a session is not shared by all of an agent's sessions.
    #[test]
    fn a_session_upstream_names_no_id_for_gets_one_of_its_own() {
        let upstream = json!({"data": {"token": "REAL-S"}, "success": true}).to_string();
        let s = sealer();
        let ids: Vec<i64> = (0..2)
            .map(|_| seal_login_response(upstream.as_bytes(), &s, &owner(), 5_000_000).unwrap().session_id.unwrap())
            .collect();
        assert!(ids.iter().all(|&id| id < -1), "{ids:?}");
        assert_ne!(ids[0], ids[1]);
        let answer = seal_login_response(upstream.as_bytes(), &s, &owner(), 5_000_000).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let session = s.open(TokenKind::Session, out["data"]["token"].as_str().unwrap(), 5_000_000).unwrap();
        assert_eq!(session.session_id, answer.session_id);
        assert!(out["data"].get("sessionId").is_none(), "{out}");
        // Nor is an id Snowflake never gives taken: -1 is the SQL API's in the ledger.
        let odd = json!({"data": {"token": "REAL-S", "sessionId": -1}, "success": true}).to_string();
        let id = seal_login_response(odd.as_bytes(), &s, &owner(), 5_000_000).unwrap().session_id.unwrap();
        assert!(id < -1, "{id}");
    }

    #[test]
    fn a_short_validity_lasts_its_full_length_whatever_the_millisecond() {
        // Issued 1 ms before a whole second: in whole seconds, this session would have ended
        // 1 ms later instead of a second later.
        let upstream = json!({"data": {"token": "REAL-S", "validityInSeconds": 1}, "success": true});
        let s = sealer();
        let answer = seal_login_response(upstream.to_string().as_bytes(), &s, &owner(), 5_000_999).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let token = out["data"]["token"].as_str().unwrap();
        assert!(s.open(TokenKind::Session, token, 5_001_500).is_ok());
        assert_eq!(s.open(TokenKind::Session, token, 5_001_999), Err(crate::session::token::TokenError::Expired));
        // Upstream's numbers are not trusted: a huge validity saturates instead of wrapping.
        let huge = json!({"data": {"token": "REAL-S", "validityInSeconds": u64::MAX}, "success": true});
        let answer = seal_login_response(huge.to_string().as_bytes(), &s, &owner(), 5_000_999).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let claims = s.open(TokenKind::Session, out["data"]["token"].as_str().unwrap(), 5_001_500).unwrap();
        assert_eq!(claims.expires_at_unix_ms, u64::MAX);
    }

    #[test]
    fn no_token_outlives_the_identity_it_was_issued_for() {
        // The agent's OIDC token expires at 5_050_000 ms: before the session token (100 s) and
        // the master token (1000 s) Snowflake gave.
        let owner = SessionOwner { identity_expires_at_unix_ms: 5_050_000, ..owner() };
        let upstream = json!({"data": {"token": "REAL-S", "masterToken": "REAL-M", "validityInSeconds": 100,
            "masterValidityInSeconds": 1000, "sessionId": 9}, "success": true});
        let s = sealer();
        let answer = seal_login_response(upstream.to_string().as_bytes(), &s, &owner, 5_000_000).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let (session, master) = (out["data"]["token"].as_str().unwrap(), out["data"]["masterToken"].as_str().unwrap());
        // The agent is told so, where Snowflake said 100 and 1000 seconds.
        assert_eq!(
            (&out["data"]["validityInSeconds"], &out["data"]["masterValidityInSeconds"]),
            (&json!(50), &json!(50))
        );
        assert!(s.open(TokenKind::Session, session, 5_049_999).is_ok());
        assert_eq!(s.open(TokenKind::Session, session, 5_050_000), Err(crate::session::token::TokenError::Expired));
        assert_eq!(s.open(TokenKind::Master, master, 5_050_000), Err(crate::session::token::TokenError::Expired));
        let master = s.open(TokenKind::Master, master, 5_049_999).unwrap();
        assert_eq!(master.identity_expires_at_unix_ms, 5_050_000);

        // A renewal before then, even with a new master token, keeps the identity's end.
        let renewed = json!({"data": {"sessionToken": "REAL-S2", "validityInSecondsST": 3600,
            "masterToken": "REAL-M2", "validityInSecondsMT": 14400, "sessionId": 9}, "success": true});
        let answer = seal_renew_response(renewed.to_string().as_bytes(), &s, &master, 5_040_000).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        for (kind, field) in [(TokenKind::Session, "sessionToken"), (TokenKind::Master, "masterToken")] {
            let claims = s.open_ignoring_expiry(kind, out["data"][field].as_str().unwrap()).unwrap();
            assert_eq!((claims.expires_at_unix_ms, claims.identity_expires_at_unix_ms), (5_050_000, 5_050_000));
        }
        assert_eq!(
            (&out["data"]["validityInSecondsST"], &out["data"]["validityInSecondsMT"]),
            (&json!(10), &json!(10))
        );

        // An identity that outlives Snowflake's tokens changes nothing.
        let owner = SessionOwner { identity_expires_at_unix_ms: 9_000_000, ..owner };
        let answer = seal_login_response(upstream.to_string().as_bytes(), &s, &owner, 5_000_000).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let claims = s.open(TokenKind::Session, out["data"]["token"].as_str().unwrap(), 5_000_000).unwrap();
        assert_eq!(claims.expires_at_unix_ms, 5_100_000);
        assert_eq!(
            (&out["data"]["validityInSeconds"], &out["data"]["masterValidityInSeconds"]),
            (&json!(100), &json!(1000))
        );
    }

    #[test]
    fn the_identity_ends_at_exp_plus_the_allowed_skew_in_milliseconds() {
        const NOW: u64 = 1_699_999_000_000;
        const DAY_MS: u64 = 86_400_000;
        assert_eq!(identity_end_unix_ms(1_700_000_000, 60, NOW, DAY_MS), 1_700_000_060_000);
        assert_eq!(identity_end_unix_ms(1_700_000_000, 0, NOW, DAY_MS), 1_700_000_000_000);
        assert_eq!(identity_end_unix_ms(u64::MAX - 5, 60, u64::MAX - 1, u64::MAX), u64::MAX);
        // A token good for 30 days opens a session of at most `session_max`.
        assert_eq!(identity_end_unix_ms(NOW / 1000 + 30 * 86_400, 60, NOW, DAY_MS), NOW + DAY_MS);
        // A token sealed with an end beyond its expiry opens until the end only.
        let claims =
            TokenClaims { identity_expires_at_unix_ms: 1_000, ..claims_for(&owner(), "S".into(), None, 5_000) };
        let s = sealer();
        let token = s.seal(TokenKind::Session, &claims);
        assert!(s.open(TokenKind::Session, &token, 999).is_ok());
        assert_eq!(s.open(TokenKind::Session, &token, 1_000), Err(crate::session::token::TokenError::Expired));
    }

    #[test]
    fn failed_login_passes_without_tokens() {
        let upstream = json!({"data": {"token": "REAL-S"}, "code": "390100", "message": "bad", "success": false});
        let answer = seal_login_response(upstream.to_string().as_bytes(), &sealer(), &owner(), 0).unwrap();
        assert!(!String::from_utf8(answer.body).unwrap().contains("REAL-S"));
        let no_master = json!({"data": {"token": "REAL-S"}, "success": true}).to_string();
        let answer = seal_login_response(no_master.as_bytes(), &sealer(), &owner(), 0).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        assert!(out["data"].get("masterToken").is_none());
        assert!(out["data"]["token"].as_str().unwrap().starts_with("sg1."));
        let bad = json!({"data": {}, "success": true}).to_string();
        assert!(matches!(
            seal_login_response(bad.as_bytes(), &sealer(), &owner(), 0),
            Err(LoginError::UpstreamWithoutTokens)
        ));
    }

    #[test]
    fn renewal_maps_tokens_both_ways() {
        let s = sealer();
        let master = claims_for(&owner(), "REAL-M".into(), Some(9), 10_000);
        let expired_session = s.seal(TokenKind::Session, &claims_for(&owner(), "REAL-S1".into(), Some(9), 100));
        let body = json!({"oldSessionToken": expired_session, "requestType": "RENEW"}).to_string();
        let out: Value = serde_json::from_slice(&rewrite_renew_request(body.as_bytes(), &s, &master).unwrap()).unwrap();
        assert_eq!(out["oldSessionToken"], "REAL-S1");
        assert_eq!(out["requestType"], "RENEW");

        let other = s.seal(TokenKind::Session, &claims_for(&owner(), "REAL-X".into(), Some(10), 100));
        let body = json!({"oldSessionToken": other, "requestType": "RENEW"}).to_string();
        assert!(matches!(rewrite_renew_request(body.as_bytes(), &s, &master), Err(LoginError::SessionMismatch)));
        // Only renewals: a CLONE or ISSUE request, or none, is refused before its token is read.
        for kind in [json!("CLONE"), json!("ISSUE"), json!("renew"), json!(null)] {
            let body = json!({"oldSessionToken": expired_session, "requestType": kind}).to_string();
            assert!(
                matches!(rewrite_renew_request(body.as_bytes(), &s, &master), Err(LoginError::NotRenewal)),
                "{kind}"
            );
        }
        let body = json!({"oldSessionToken": expired_session}).to_string();
        assert!(matches!(rewrite_renew_request(body.as_bytes(), &s, &master), Err(LoginError::NotRenewal)));
        // The Node driver's spelling renews, and goes upstream in the others'.
        let body = json!({"REQUEST_TYPE": "RENEW", "oldSessionToken": expired_session}).to_string();
        let out: Value = serde_json::from_slice(&rewrite_renew_request(body.as_bytes(), &s, &master).unwrap()).unwrap();
        assert_eq!(out, json!({"requestType": "RENEW", "oldSessionToken": "REAL-S1"}));
        let body = json!({"REQUEST_TYPE": "ISSUE", "oldSessionToken": expired_session}).to_string();
        assert!(matches!(rewrite_renew_request(body.as_bytes(), &s, &master), Err(LoginError::NotRenewal)));
        // Two keys the warehouse could read as the type, or another spelling: refused.
        for body in [
            json!({"requestType": "RENEW", "REQUEST_TYPE": "ISSUE", "oldSessionToken": expired_session}),
            json!({"REQUEST_TYPE": "RENEW", "request_type": "CLONE", "oldSessionToken": expired_session}),
            json!({"Request_Type": "RENEW", "oldSessionToken": expired_session}),
        ] {
            let refused = rewrite_renew_request(body.to_string().as_bytes(), &s, &master);
            assert!(matches!(refused, Err(LoginError::Ambiguous(_))), "{body}: {refused:?}");
        }

        let upstream =
            json!({"data": {"sessionToken": "REAL-S2", "validityInSecondsST": 60, "sessionId": 9}, "success": true});
        let answer = seal_renew_response(upstream.to_string().as_bytes(), &s, &master, 1000).unwrap();
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        let session = s.open(TokenKind::Session, out["data"]["sessionToken"].as_str().unwrap(), 1000).unwrap();
        assert_eq!((session.upstream_token.as_str(), session.expires_at_unix_ms), ("REAL-S2", 61_000));
        let resealed = s.open(TokenKind::Master, out["data"]["masterToken"].as_str().unwrap(), 1000).unwrap();
        assert_eq!(resealed, master);
        // No other token passes, nor a `token` the renewal does not seal.
        let upstream = json!({"data": {"sessionToken": "REAL-S3", "token": "REAL-T", "remMeToken": "REAL-R",
            "idToken": "REAL-ID", "sessionId": 9}, "success": true});
        let answer = seal_renew_response(upstream.to_string().as_bytes(), &s, &master, 1000).unwrap();
        let text = String::from_utf8(answer.body).unwrap();
        assert!(!text.contains("REAL-"), "{text}");
    }
}
