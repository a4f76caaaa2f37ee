//! Claim checks on the raw JSON of a token whose signature has verified: types and presence of
//! `exp`, `nbf`, `iat`, `iss`, `aud` and `sub`, the token's lifetime, and extraction of the
//! groups claim into an [`Identity`].
//!
//! jsonwebtoken already checks most of this; the checks are repeated here on the raw JSON so
//! that a regression in its claim parsing (such as GHSA-h395-gr6q-cpjc, where an `exp` given as
//! a string was skipped) cannot let a token through, and because some of its rules are looser
//! than ours (it accepts an `iss` array holding our issuer, and reads `"nbf": null` as absent).

use serde::de::{self, Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{AuthError, Identity, IdentityConfig, TokenUse};
use crate::json::Unique;

/// Longest `sub` accepted, in bytes.
pub const SUB_BYTES_MAX: usize = 256;

/// Most entries the groups claim may hold.
pub const GROUPS_COUNT_MAX: usize = 64;

/// Longest group name accepted, in bytes.
pub const GROUP_BYTES_MAX: usize = 256;

/// A JSON object whose members have unique names.
///
/// serde_json keeps the last of two members with the same name, while other JWT libraries keep
/// the first; a token that says `"sub"` twice could mean different things to the IdP and to us,
/// so such a header or payload is refused outright, as is one naming a member twice in a
/// nested object.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JsonObject(pub(crate) Map<String, Value>);

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Unique member names at every depth, and none that serde_json's `Value` reads as an
        // instruction: the checks the gateway's other JSON readers make (`json::Unique`).
        match Unique::deserialize(deserializer)? {
            Unique(Value::Object(map)) => Ok(JsonObject(map)),
            Unique(_) => Err(de::Error::custom("a JSON object with unique member names")),
        }
    }
}

/// Checks the claims of a token whose signature has verified and builds its [`Identity`].
///
/// Expiry and not-before are compared with the clock by jsonwebtoken; this insists that they
/// are well-typed NumericDates, that `iat` (optional) is one and not in the future, and that
/// the token is valid for at most [`IdentityConfig::lifetime_max`] from when it was issued (or
/// from `now_unix`, without `iat` or with a later one), the leeway allowed on top: a token
/// valid for months is the static credential this gateway exists to replace.
pub(crate) fn check(
    claims: &Map<String, Value>,
    config: &IdentityConfig,
    used_for: TokenUse,
    now_unix: u64,
) -> Result<Identity, AuthError> {
    let expires_at_unix = match claims.get("exp") {
        None => return Err(AuthError::MissingClaim("exp")),
        Some(exp) => numeric_date(exp).ok_or(AuthError::InvalidClaim("exp"))?,
    };
    if let Some(nbf) = claims.get("nbf") {
        numeric_date(nbf).ok_or(AuthError::InvalidClaim("nbf"))?;
    }
    let leeway = config.leeway.as_secs();
    let issued_at_unix = match claims.get("iat") {
        None => now_unix,
        Some(iat) => {
            let iat = numeric_date(iat).ok_or(AuthError::InvalidClaim("iat"))?;
            if iat > now_unix.saturating_add(leeway) {
                return Err(AuthError::NotYetValid);
            }
            iat.min(now_unix)
        }
    };
    if expires_at_unix.saturating_sub(issued_at_unix) > config.lifetime_max.as_secs().saturating_add(leeway) {
        return Err(AuthError::LifetimeTooLong { lifetime_max_secs: config.lifetime_max.as_secs() });
    }
    match claims.get("iss") {
        None => return Err(AuthError::MissingClaim("iss")),
        // An array of issuers is not a StringOrURI (RFC 7519 §4.1.1) and would let one token
        // claim several issuers, so only a string is accepted, and only an exact match.
        Some(Value::String(iss)) if *iss == config.issuer => {}
        Some(Value::String(_)) => return Err(AuthError::WrongIssuer),
        Some(_) => return Err(AuthError::InvalidClaim("iss")),
    }
    let (accepted, other_use): (&[String], &[String]) = match used_for {
        TokenUse::Agent => (&config.audiences, &config.reviewer_audiences),
        TokenUse::Reviewer if config.reviewer_audiences.is_empty() => (&config.audiences, &[]),
        TokenUse::Reviewer => (&config.reviewer_audiences, &config.audiences),
    };
    check_audience(claims.get("aud"), accepted, other_use)?;
    let sub = match claims.get("sub") {
        None => return Err(AuthError::MissingClaim("sub")),
        Some(Value::String(sub)) if is_clean_name(sub, SUB_BYTES_MAX) => sub.clone(),
        Some(_) => return Err(AuthError::InvalidClaim("sub")),
    };
    let groups = groups(claims.get(&config.groups_claim))?;
    Ok(Identity { sub, groups, expires_at_unix })
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number, as whole seconds rounded down.
///
/// Rounding down keeps `expires_at_unix` no later than what jsonwebtoken checked.
pub(crate) fn numeric_date(value: &Value) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(seconds) = number.as_u64() {
        return Some(seconds);
    }
    // Negative integers fall through to here and fail the sign check.
    let seconds = number.as_f64()?;
    (seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64).then(|| seconds.floor() as u64)
}

/// `aud` must be a string or a non-empty array of strings, one of which is `accepted` and
/// none of which is the `other_use`'s: a token that is both an agent's and a reviewer's would
/// let either act as the other.
fn check_audience(aud: Option<&Value>, accepted: &[String], other_use: &[String]) -> Result<(), AuthError> {
    let auds: Vec<&str> = match aud {
        None => return Err(AuthError::MissingClaim("aud")),
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) if !auds.is_empty() && auds.iter().all(Value::is_string) => {
            auds.iter().filter_map(Value::as_str).collect()
        }
        Some(_) => return Err(AuthError::InvalidClaim("aud")),
    };
    if !auds.iter().any(|aud| accepted.iter().any(|ours| ours == aud)) {
        return Err(AuthError::WrongAudience);
    }
    if auds.iter().any(|aud| other_use.iter().any(|theirs| theirs == aud)) {
        return Err(AuthError::MixedAudience);
    }
    Ok(())
}

/// The groups claim: absent means no groups; a string is one group; an array holds strings.
fn groups(claim: Option<&Value>) -> Result<Vec<String>, AuthError> {
    const INVALID: AuthError = AuthError::InvalidClaim("groups");
    match claim {
        None => Ok(Vec::new()),
        Some(Value::String(group)) if is_clean_name(group, GROUP_BYTES_MAX) => Ok(vec![group.clone()]),
        Some(Value::Array(entries)) if entries.len() <= GROUPS_COUNT_MAX => entries
            .iter()
            .map(|entry| match entry {
                Value::String(group) if is_clean_name(group, GROUP_BYTES_MAX) => Ok(group.clone()),
                _ => Err(INVALID),
            })
            .collect(),
        Some(_) => Err(INVALID),
    }
}

/// A subject or group name is non-empty, bounded and free of control characters, because it
/// flows into logs, policy decisions and upstream requests, where a newline or NUL could forge
/// a line or truncate a value.
fn is_clean_name(name: &str, bytes_max: usize) -> bool {
    !name.is_empty() && name.len() <= bytes_max && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn config() -> IdentityConfig {
        IdentityConfig::new("https://idp.test/", vec!["snowgate".to_owned(), "other".to_owned()])
    }

    /// The clock the tests check against: a day before the claims' `exp`.
    const NOW: u64 = 2_000_000_000 - 86_400;

    /// An agent's token: what most tests check.
    fn check(claims: &Map<String, Value>, config: &IdentityConfig) -> Result<Identity, AuthError> {
        super::check(claims, config, TokenUse::Agent, NOW)
    }

    fn claims() -> Map<String, Value> {
        let Value::Object(map) = json!({
            "iss": "https://idp.test/",
            "aud": "snowgate",
            "sub": "agent-1",
            "exp": 2_000_000_000u64,
            "groups": ["a", "b"],
        }) else {
            unreachable!()
        };
        map
    }

    fn with(name: &str, value: Value) -> Map<String, Value> {
        let mut map = claims();
        map.insert(name.to_owned(), value);
        map
    }

    fn without(name: &str) -> Map<String, Value> {
        let mut map = claims();
        map.remove(name);
        map
    }

    #[test]
    fn good_claims_make_an_identity() {
        let identity = check(&claims(), &config()).unwrap();
        assert_eq!(identity.sub, "agent-1");
        assert_eq!(identity.groups, ["a", "b"]);
        assert_eq!(identity.expires_at_unix, 2_000_000_000);
    }

    #[test]
    fn numeric_dates_must_be_non_negative_numbers() {
        assert_eq!(numeric_date(&json!(5)), Some(5));
        assert_eq!(numeric_date(&json!(5.9)), Some(5));
        assert_eq!(numeric_date(&json!(0)), Some(0));
        for bad in [
            json!("5"),
            json!("9999999999.5"),
            json!(-1),
            json!(-0.5),
            json!(1e300),
            json!(null),
            json!(true),
            json!([5]),
            json!({"v": 5}),
        ] {
            assert_eq!(numeric_date(&bad), None, "{bad}");
        }
    }

    #[test]
    fn exp_and_nbf_types_are_checked() {
        assert_eq!(check(&without("exp"), &config()), Err(AuthError::MissingClaim("exp")));
        assert_eq!(check(&with("exp", json!("9999999999")), &config()), Err(AuthError::InvalidClaim("exp")));
        assert_eq!(check(&with("nbf", json!("0")), &config()), Err(AuthError::InvalidClaim("nbf")));
        assert!(check(&with("nbf", json!(0)), &config()).is_ok());
    }

    #[test]
    fn iat_must_be_a_numeric_date_not_in_the_future() {
        assert!(check(&with("iat", json!(NOW - 10)), &config()).is_ok());
        assert!(check(&with("iat", json!(NOW + 30)), &config()).is_ok(), "within the leeway");
        assert_eq!(check(&with("iat", json!(NOW + 31)), &config()), Err(AuthError::NotYetValid));
        assert_eq!(check(&with("iat", json!(u64::MAX as f64)), &config()), Err(AuthError::InvalidClaim("iat")));
        for bad in [json!("1"), json!(-1), json!(null), json!([NOW])] {
            assert_eq!(check(&with("iat", bad.clone()), &config()), Err(AuthError::InvalidClaim("iat")), "{bad}");
        }
    }

    #[test]
    fn tokens_valid_for_longer_than_the_lifetime_max_are_refused() {
        let too_long = Err(AuthError::LifetimeTooLong { lifetime_max_secs: 86_400 });
        let exp = 2_000_000_000;
        // Without `iat`, what is left of the token's life counts: a day, and the leeway.
        assert!(check(&claims(), &config()).is_ok());
        let one_hour = IdentityConfig { lifetime_max: Duration::from_secs(3600), ..config() };
        assert_eq!(check(&claims(), &one_hour), Err(AuthError::LifetimeTooLong { lifetime_max_secs: 3600 }));
        assert!(check(&with("exp", json!(exp + 30)), &config()).is_ok(), "within the leeway");
        assert_eq!(check(&with("exp", json!(exp + 31)), &config()), too_long);
        // With `iat`, the whole life the identity provider gave it, however little is left.
        let mut issued_early = claims();
        issued_early.insert("iat".into(), json!(NOW - 3600));
        assert_eq!(check(&issued_early, &config()), too_long);
        let mut issued_late = claims();
        issued_late.insert("iat".into(), json!(NOW + 20));
        assert!(check(&issued_late, &config()).is_ok(), "an iat ahead of the clock does not shorten the count");
        let mut a_hundred_years = claims();
        a_hundred_years.insert("exp".into(), json!(NOW + 100 * 365 * 86_400));
        assert_eq!(check(&a_hundred_years, &config()), too_long);
    }

    #[test]
    fn issuer_must_be_the_exact_string() {
        assert_eq!(check(&without("iss"), &config()), Err(AuthError::MissingClaim("iss")));
        assert_eq!(check(&with("iss", json!("https://idp.test")), &config()), Err(AuthError::WrongIssuer));
        assert_eq!(check(&with("iss", json!(["https://idp.test/"])), &config()), Err(AuthError::InvalidClaim("iss")));
    }

    #[test]
    fn audience_forms() {
        assert!(check(&with("aud", json!(["x", "other"])), &config()).is_ok());
        assert_eq!(check(&with("aud", json!(["x"])), &config()), Err(AuthError::WrongAudience));
        assert_eq!(check(&with("aud", json!("x")), &config()), Err(AuthError::WrongAudience));
        assert_eq!(check(&with("aud", json!([])), &config()), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(check(&with("aud", json!(["snowgate", 1])), &config()), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(check(&with("aud", json!(1)), &config()), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(check(&without("aud"), &config()), Err(AuthError::MissingClaim("aud")));
    }

    #[test]
    fn reviewer_audiences_keep_the_two_uses_apart() {
        let aud = |value: Value| with("aud", value);
        let agent =
            |claims: &Map<String, Value>, config: &IdentityConfig| super::check(claims, config, TokenUse::Agent, NOW);
        let reviewer = |claims: &Map<String, Value>, config: &IdentityConfig| {
            super::check(claims, config, TokenUse::Reviewer, NOW)
        };
        // Without reviewer audiences, reviewers present agents' tokens.
        assert!(reviewer(&claims(), &config()).is_ok());
        let split = IdentityConfig { reviewer_audiences: vec!["snowgate-review".to_owned()], ..config() };
        assert!(split.validate().is_ok());
        assert!(agent(&claims(), &split).is_ok());
        assert_eq!(reviewer(&claims(), &split), Err(AuthError::WrongAudience));
        assert!(reviewer(&aud(json!("snowgate-review")), &split).is_ok());
        assert!(reviewer(&aud(json!(["x", "snowgate-review"])), &split).is_ok());
        assert_eq!(agent(&aud(json!("snowgate-review")), &split), Err(AuthError::WrongAudience));
        // A token for both uses is refused in both.
        for both in [json!(["snowgate", "snowgate-review"]), json!(["snowgate-review", "other"])] {
            assert_eq!(agent(&aud(both.clone()), &split), Err(AuthError::MixedAudience), "{both}");
            assert_eq!(reviewer(&aud(both.clone()), &split), Err(AuthError::MixedAudience), "{both}");
        }
        // Malformed audiences stay malformed whatever the use.
        assert_eq!(reviewer(&aud(json!([])), &split), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(reviewer(&without("aud"), &split), Err(AuthError::MissingClaim("aud")));
        // The two lists must not share an audience, and none may be empty.
        let shared = IdentityConfig { reviewer_audiences: vec!["other".to_owned()], ..config() };
        assert!(shared.validate().is_err());
        let empty = IdentityConfig { reviewer_audiences: vec![String::new()], ..config() };
        assert!(empty.validate().is_err());
    }

    #[test]
    fn subject_rules() {
        assert_eq!(check(&without("sub"), &config()), Err(AuthError::MissingClaim("sub")));
        for bad in [json!(""), json!(1), json!(null), json!("a\nb"), json!("x".repeat(SUB_BYTES_MAX + 1))] {
            assert_eq!(check(&with("sub", bad.clone()), &config()), Err(AuthError::InvalidClaim("sub")), "{bad}");
        }
        assert!(check(&with("sub", json!("x".repeat(SUB_BYTES_MAX))), &config()).is_ok());
    }

    #[test]
    fn groups_forms_and_caps() {
        assert_eq!(check(&without("groups"), &config()).unwrap().groups, Vec::<String>::new());
        assert_eq!(check(&with("groups", json!("solo")), &config()).unwrap().groups, ["solo"]);
        assert_eq!(check(&with("groups", json!([])), &config()).unwrap().groups, Vec::<String>::new());
        let full: Vec<String> = (0..GROUPS_COUNT_MAX).map(|i| format!("g{i}")).collect();
        assert_eq!(check(&with("groups", json!(full)), &config()).unwrap().groups.len(), GROUPS_COUNT_MAX);

        let too_many: Vec<String> = (0..=GROUPS_COUNT_MAX).map(|i| format!("g{i}")).collect();
        for bad in [
            json!(too_many),
            json!(["ok", 1]),
            json!([["nested"]]),
            json!(["g".repeat(GROUP_BYTES_MAX + 1)]),
            json!([""]),
            json!("tab\there"),
            json!(null),
            json!(7),
            json!({"g": true}),
        ] {
            assert_eq!(check(&with("groups", bad.clone()), &config()), Err(AuthError::InvalidClaim("groups")), "{bad}");
        }
    }

    #[test]
    fn configured_groups_claim_name_is_used() {
        let mut config = config();
        config.groups_claim = "roles".to_owned();
        let identity = check(&with("roles", json!(["r"])), &config).unwrap();
        assert_eq!(identity.groups, ["r"]);
    }

    #[test]
    fn duplicate_members_are_refused() {
        assert!(serde_json::from_str::<JsonObject>(r#"{"sub": "a", "sub": "b"}"#).is_err());
        assert!(serde_json::from_str::<JsonObject>(r#"{"sub": "a", "exp": 1}"#).is_ok());
        assert!(serde_json::from_str::<JsonObject>("[]").is_err());
        assert!(serde_json::from_str::<JsonObject>("\"s\"").is_err());
        let error = serde_json::from_str::<JsonObject>(r#"{"secret-name": 1, "secret-name": 2}"#).unwrap_err();
        assert!(!error.to_string().contains("secret-name"), "{error}");
        // At any depth, and names serde_json's Value would read as instructions.
        for refused in [
            r#"{"sub": "a", "ctx": {"tenant": "x", "tenant": "y"}}"#,
            r#"{"sub": "a", "act": [{"sub": "b", "sub": "c"}]}"#,
            r#"{"sub": "a", "x": {"$serde_json::private::RawValue": "{}"}}"#,
        ] {
            assert!(serde_json::from_str::<JsonObject>(refused).is_err(), "{refused}");
        }
        assert!(serde_json::from_str::<JsonObject>(r#"{"a": {"x": 1}, "b": {"x": 1}}"#).is_ok());
    }
}
