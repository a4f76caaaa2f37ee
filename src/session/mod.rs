//! The Snowflake session protocol as the gateway speaks it: which endpoint a request is for,
//! how logins and renewals are rewritten, how tokens are sealed, and how refusals look to a
//! driver. Pure: the proxy does the I/O and calls into this module.
//!
//! Read `ARCHITECTURE.md` and the protocol brief for the endpoint list. Every refusal is what
//! drivers understand: HTTP 200, `success:false`, a numeric string `code`, a `message` and an
//! object `data`. A 4xx or 5xx would make drivers retry.

pub mod credential;
pub mod logged_out;
pub mod login;
pub mod query;
pub mod statements;
pub mod token;

use bytes::Bytes;

use crate::http::Method;

/// The endpoints the gateway understands. Anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /session/v1/login-request`
    Login,
    /// `POST /session/token-request` (renewal, with the master token).
    TokenRequest,
    /// `POST /session/heartbeat`
    Heartbeat,
    /// `POST /session?delete=true`
    Logout,
    /// `POST /queries/v1/query-request`
    QueryRequest,
    /// `GET /queries/<query id>/result` (the `getResultUrl` polled while 333333/333334).
    QueryResult(String),
    /// `GET /monitoring/queries/<query id>`
    Monitoring(String),
    /// `POST /queries/v1/abort-request` (the statement named in the body by request id)
    Abort,
    /// `POST /queries/<query id>/abort-request`
    AbortQuery(String),
    /// `POST /telemetry/send`
    Telemetry,
    /// `POST /api/v2/statements` (SQL API submit).
    SqlApiSubmit,
    /// `GET /api/v2/statements/<handle>` (status or a partition).
    SqlApiStatus(String),
    /// `POST /api/v2/statements/<handle>/cancel`
    SqlApiCancel(String),
    /// `GET /snowgate/chunk/<grant>`: a result chunk, fetched through the gateway with the
    /// sealed grant its rewritten `chunks[].url` carries.
    Chunk(String),
}

/// Largest body after gunzip of a session control request (login, renewal, heartbeat, logout,
/// aborts, cancels; the GETs have none).
pub const CONTROL_BYTES_MAX: usize = 256 * 1024;

/// Largest telemetry batch after gunzip.
pub const TELEMETRY_BYTES_MAX: usize = 1024 * 1024;

/// Whether `id` looks like a Snowflake query id or statement handle (a UUID). Anything else
/// could smuggle path segments upstream.
pub fn is_query_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether `grant` looks like a sealed chunk grant (`sg1.` and URL-safe base64, bounded).
fn is_grant(grant: &str) -> bool {
    grant.len() <= token::SEALED_BYTES_MAX
        && grant.strip_prefix(token::SEALED_PREFIX).is_some_and(|body| {
            !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Endpoint {
    /// Routes a request by method, path and query string.
    pub fn route(method: Method, path: &str, query: &str) -> Option<Endpoint> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // Ids are Snowflake's lowercase hex (and the gateway's own, for parked statements):
        // read in one case, so that an id in capitals names the same statement everywhere (the
        // statement books read ids as numbers, the approvals ledger as text).
        let id = |s: &str| is_query_id(s).then(|| s.to_ascii_lowercase());
        Some(match (method, segments.as_slice()) {
            (Method::Post, ["session", "v1", "login-request"]) => Endpoint::Login,
            (Method::Post, ["session", "token-request"]) => Endpoint::TokenRequest,
            (Method::Post, ["session", "heartbeat"]) => Endpoint::Heartbeat,
            (Method::Post, ["session"]) if is_logout(query) => Endpoint::Logout,
            (Method::Post, ["queries", "v1", "query-request"]) => Endpoint::QueryRequest,
            (Method::Get, ["queries", qid, "result"]) => Endpoint::QueryResult(id(qid)?),
            (Method::Get, ["monitoring", "queries", qid]) => Endpoint::Monitoring(id(qid)?),
            (Method::Post, ["queries", "v1", "abort-request"]) => Endpoint::Abort,
            (Method::Post, ["queries", qid, "abort-request"]) => Endpoint::AbortQuery(id(qid)?),
            (Method::Post, ["telemetry", "send"]) => Endpoint::Telemetry,
            (Method::Post, ["api", "v2", "statements"]) => Endpoint::SqlApiSubmit,
            (Method::Get, ["api", "v2", "statements", handle]) => Endpoint::SqlApiStatus(id(handle)?),
            (Method::Post, ["api", "v2", "statements", handle, "cancel"]) => Endpoint::SqlApiCancel(id(handle)?),
            (Method::Get, ["snowgate", "chunk", grant]) if is_grant(grant) => Endpoint::Chunk((*grant).to_owned()),
            _ => return None,
        })
    }

    /// A short, stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Login => "login",
            Endpoint::TokenRequest => "token-request",
            Endpoint::Heartbeat => "heartbeat",
            Endpoint::Logout => "logout",
            Endpoint::QueryRequest => "query-request",
            Endpoint::QueryResult(_) => "query-result",
            Endpoint::Monitoring(_) => "monitoring",
            Endpoint::Abort | Endpoint::AbortQuery(_) => "abort",
            Endpoint::Telemetry => "telemetry",
            Endpoint::SqlApiSubmit => "sql-api-submit",
            Endpoint::SqlApiStatus(_) => "sql-api-status",
            Endpoint::SqlApiCancel(_) => "sql-api-cancel",
            Endpoint::Chunk(_) => "chunk",
        }
    }

    /// The largest request body this endpoint accepts after gunzip. Only statements carry big
    /// bodies (their text and bindings, up to `statement_bytes_max`), and so do aborts (the
    /// Python driver's cancel repeats the statement's `sqlText`); the drivers' session control
    /// bodies are a few KiB and telemetry batches tens, and each is read into a JSON tree
    /// several times its size, before authentication in a login's case.
    pub fn request_bytes_max(&self, statement_bytes_max: usize) -> usize {
        match self {
            Endpoint::QueryRequest | Endpoint::SqlApiSubmit | Endpoint::Abort | Endpoint::AbortQuery(_) => {
                statement_bytes_max
            }
            Endpoint::Telemetry => TELEMETRY_BYTES_MAX,
            _ => CONTROL_BYTES_MAX,
        }
    }

    /// Whether this is a SQL API v2 endpoint (bearer OIDC per request, no sessions).
    pub fn is_sql_api(&self) -> bool {
        matches!(self, Endpoint::SqlApiSubmit | Endpoint::SqlApiStatus(_) | Endpoint::SqlApiCancel(_))
    }
}

/// A key of `object` that equals one of `names` but for case (`SQLTEXT` beside or instead of
/// `sqlText`), if any: the gateway reads the exact spelling, and a server matching keys without
/// regard to case could read the other.
pub fn case_variant_key<'o>(object: &'o serde_json::Map<String, serde_json::Value>, names: &[&str]) -> Option<&'o str> {
    object.keys().map(String::as_str).find(|key| names.iter().any(|name| name.eq_ignore_ascii_case(key) && name != key))
}

/// The first value of `name` in a query string, undecoded.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Whether a `POST /session` query asks for a logout: `delete=true`, and nothing else a
/// server could read as `delete` (a second `delete=false` that Snowflake might read instead,
/// `DELETE=…`, `del%65te=…`). The target goes upstream as the agent sent it, so the gateway
/// ends the session only when what Snowflake reads is a logout too; anything unclear is not
/// routed, and refused.
fn is_logout(query: &str) -> bool {
    let mut delete = query.split('&').filter(|pair| could_name(pair, "delete"));
    delete.next() == Some("delete=true") && delete.next().is_none()
}

/// Returns `target` with query parameter `name` set to `value` (added if absent). The value is
/// percent-encoded; other parameters are kept byte for byte. Any pair that could be read
/// upstream as `name` is dropped: one naming it in another case, or percent-encoded
/// (`role%4Eame`), or with it after a `;` (a separator some servers accept).
pub fn set_query_param(target: &str, name: &str, value: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let ours = format!("{name}={}", percent_encode(value));
    let mut parts: Vec<&str> = Vec::new();
    let mut placed = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if !could_name(pair, name) {
            parts.push(pair);
        } else if !placed {
            // A repeated parameter could be read differently upstream: keep only ours.
            parts.push(&ours);
            placed = true;
        }
    }
    if !placed {
        parts.push(&ours);
    }
    format!("{path}?{}", parts.join("&"))
}

/// Whether `pair`, percent-decoded, holds `name` in any case where a key could start (at its
/// start, or after anything but a letter, digit, `_`, `-` or `=`: a separator, space or `+`,
/// a control or non-ASCII byte a server might trim), so as a key however a server splits,
/// decodes or trims it. A value that merely holds the word (`schemaName=ROLENAMES`) is not.
fn could_name(pair: &str, name: &str) -> bool {
    let mut decoded = Vec::with_capacity(pair.len());
    let bytes = pair.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.windows(name.len()).enumerate().any(|(at, w)| {
        w.eq_ignore_ascii_case(name.as_bytes())
            && (at == 0 || !(decoded[at - 1].is_ascii_alphanumeric() || matches!(decoded[at - 1], b'_' | b'-' | b'=')))
    })
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Codes the gateway answers with. Snowflake's own codes where drivers act on them, so the
/// driver does the right thing (renew, re-login, raise); `2600xx` for the gateway's own.
pub mod codes {
    /// The session token expired: drivers renew with the master token and retry.
    pub const SESSION_EXPIRED: &str = "390112";
    /// The master token expired: drivers must log in again.
    pub const MASTER_EXPIRED: &str = "390114";
    /// The master token is not valid.
    pub const MASTER_INVALID: &str = "390115";
    /// The session token is not one the gateway issued.
    pub const SESSION_INVALID: &str = "390104";
    /// No session token was sent.
    pub const SESSION_MISSING: &str = "390103";
    /// The OIDC token expired.
    pub const OIDC_EXPIRED: &str = "390318";
    /// The OIDC token is not valid.
    pub const OIDC_INVALID: &str = "390303";
    /// The request body is not what the endpoint takes.
    pub const BAD_REQUEST: &str = "260001";
    /// The identity has no Snowflake role mapped to it.
    pub const NO_ROLE: &str = "260002";
    /// The authenticator the client asked for is not the one the gateway accepts.
    pub const WRONG_AUTHENTICATOR: &str = "260003";
    /// The upstream answered something the gateway cannot safely pass on.
    pub const UPSTREAM_INVALID: &str = "260004";
    /// The endpoint is not one the gateway serves.
    pub const UNKNOWN_ENDPOINT: &str = "260005";
    /// A policy rule denied the statement (the message is the rule's).
    pub const POLICY_DENIED: &str = "260010";
    /// A reviewer denied the parked statement.
    pub const REVIEW_DENIED: &str = "260011";
    /// Nobody decided on the parked statement before its timeout.
    pub const REVIEW_TIMED_OUT: &str = "260012";
    /// The exchange could not be recorded, so it was not run (or not answered).
    pub const RECORDING_UNAVAILABLE: &str = "260013";
    /// The gateway is overloaded (the classifier queue is full); retry later.
    pub const OVERLOADED: &str = "260014";
    /// The answer could not be masked, so it was withheld.
    pub const MASKING_FAILED: &str = "260015";
    /// What review cannot do: cancel an approved statement already on its way to Snowflake
    /// under the gateway's id, run one asynchronously, or park one without a Snowflake session.
    pub const REVIEW_UNSUPPORTED: &str = "260016";
    /// The parked statements are at their limit (for this identity or in all).
    pub const REVIEW_FULL: &str = "260017";
    /// A statement id (query id, SQL API handle) this identity may not use: not answered to it
    /// through this gateway, or idle longer than the gateway keeps ids.
    pub const STATEMENT_UNKNOWN: &str = "260018";
    /// The identity provider's signing keys cannot be had (its JWKS URL is down, or serves no
    /// usable key): the provider's fault, not the token's; answered with HTTP 503 so that
    /// clients retry.
    pub const IDENTITY_PROVIDER_UNAVAILABLE: &str = "260019";
    /// The statement was cancelled (Snowflake's "SQL execution canceled"): a parked statement
    /// its agent withdrew.
    pub const QUERY_CANCELLED: &str = "000604";
    /// Snowflake is running the statement (drivers poll `getResultUrl`).
    pub const QUERY_IN_PROGRESS: &str = "333333";
    /// Snowflake is running an `asyncExec` statement.
    pub const QUERY_IN_PROGRESS_ASYNC: &str = "333334";
}

/// A Snowflake-shaped refusal body: `success:false`, a numeric string code, a message, an
/// object `data`. Sent with HTTP 200 so that drivers raise instead of retrying.
pub fn refusal_body(code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({
        "data": {"errorCode": code, "internalError": false},
        "code": code,
        "message": message,
        "success": false,
        "headers": null,
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises"))
}

/// A SQL API v2 error body (`{code, message, sqlState}`), sent with the status the API uses.
pub fn sql_api_error_body(code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({"code": code, "message": message, "sqlState": "08004"});
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises"))
}

/// Extracts the token from `Authorization: Snowflake Token="<token>"`. `None` when absent
/// or in another scheme. Python sends `Token="None"` before login; that is treated as absent.
pub fn snowflake_token(authorization: &str) -> Option<&str> {
    let rest = authorization.trim().strip_prefix("Snowflake")?.trim_start();
    let token = rest.strip_prefix("Token=\"")?.strip_suffix('"')?;
    (!token.is_empty() && token != "None").then_some(token)
}

/// Extracts the token from `Authorization: Bearer <token>`.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// Builds `Snowflake Token="<token>"`.
pub fn snowflake_authorization(token: &str) -> String {
    format!("Snowflake Token=\"{token}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const QID: &str = "01b2c3d4-0000-4000-8000-000000000001";

    #[test]
    fn routes_driver_endpoints() {
        let r = |m, p: &str, q: &str| Endpoint::route(m, p, q);
        assert_eq!(r(Method::Post, "/session/v1/login-request", "request_id=1"), Some(Endpoint::Login));
        assert_eq!(r(Method::Post, "/session", "delete=true"), Some(Endpoint::Logout));
        assert_eq!(r(Method::Post, "/session", ""), None);
        assert_eq!(r(Method::Post, "/session", "request_id=1&delete=true"), Some(Endpoint::Logout));
        // A logout only when every spelling a server could read as `delete` says so, once.
        for unclear in [
            "delete=true&delete=false",
            "delete=false&delete=true",
            "delete=true&DELETE=false",
            "delete=true&del%65te=",
            "delete=TRUE",
            "delete=true;delete=false",
        ] {
            assert_eq!(r(Method::Post, "/session", unclear), None, "{unclear}");
        }
        assert_eq!(r(Method::Get, &format!("/queries/{QID}/result"), ""), Some(Endpoint::QueryResult(QID.into())));
        assert_eq!(r(Method::Get, "/queries/../../etc/result", ""), None);
        let upper = QID.to_ascii_uppercase();
        assert_eq!(r(Method::Get, &format!("/queries/{upper}/result"), ""), Some(Endpoint::QueryResult(QID.into())));
        assert_eq!(r(Method::Get, "/queries/not-a-uuid/result", ""), None);
        assert_eq!(
            r(Method::Post, &format!("/queries/{QID}/abort-request"), ""),
            Some(Endpoint::AbortQuery(QID.into()))
        );
        assert_eq!(
            r(Method::Post, &format!("/api/v2/statements/{QID}/cancel"), ""),
            Some(Endpoint::SqlApiCancel(QID.into()))
        );
        assert_eq!(r(Method::Get, "/session/v1/login-request", ""), None);
        assert_eq!(r(Method::Post, "/console/login", ""), None);
    }

    #[test]
    fn case_variant_keys_are_found() {
        let object = |text: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).unwrap();
        let names = ["sqlText", "parameters"];
        assert_eq!(case_variant_key(&object(r#"{"sqlText":"a","parameters":{}}"#), &names), None);
        assert_eq!(case_variant_key(&object(r#"{"sqlText":"a","SQLTEXT":"b"}"#), &names), Some("SQLTEXT"));
        assert_eq!(case_variant_key(&object(r#"{"Parameters":{}}"#), &names), Some("Parameters"));
        assert_eq!(case_variant_key(&object(r#"{"other":1}"#), &names), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&delete=true", "delete"), Some("true"));
        assert_eq!(set_query_param("/x?roleName=PUBLIC&b=2", "roleName", "ANALYST"), "/x?roleName=ANALYST&b=2");
        assert_eq!(set_query_param("/x", "roleName", "A B"), "/x?roleName=A%20B");
        assert_eq!(set_query_param("/x?b=2", "roleName", "R"), "/x?b=2&roleName=R");
        assert_eq!(set_query_param("/x?roleName=a&roleName=b&c=1", "roleName", "R"), "/x?roleName=R&c=1");
        // Spellings a server could decode to `roleName` never reach it beside ours.
        for sneaky in [
            "role%4Eame=ADMIN",
            "ROLENAME=ADMIN",
            "%72%6f%6c%65%6e%61%6d%65=ADMIN",
            "a=1;roleName=ADMIN",
            "a=1%26roleName=ADMIN",
            "%20roleName=ADMIN",
            "+roleName=ADMIN",
            "%0BroleName=ADMIN",
            "%C2%A0roleName=ADMIN",
        ] {
            assert_eq!(set_query_param(&format!("/x?{sneaky}&c=1"), "roleName", "R"), "/x?roleName=R&c=1", "{sneaky}");
            assert_eq!(set_query_param(&format!("/x?c=1&{sneaky}"), "roleName", "R"), "/x?c=1&roleName=R", "{sneaky}");
        }
        // A value that holds the word is another parameter's, kept.
        for kept in ["schemaName=ROLENAMES_AUDIT", "warehouse=WH_ROLENAME", "databaseName=x%20y_rolename"] {
            assert_eq!(
                set_query_param(&format!("/x?{kept}&roleName=A"), "roleName", "R"),
                format!("/x?{kept}&roleName=R"),
                "{kept}"
            );
        }
        // Broken escapes and multi-byte text are kept as they are.
        assert_eq!(set_query_param("/x?a=%zz%4&b=%C3%A9", "roleName", "R"), "/x?a=%zz%4&b=%C3%A9&roleName=R");
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(snowflake_token("Snowflake Token=\"abc\""), Some("abc"));
        assert_eq!(snowflake_token("Snowflake Token=\"None\""), None);
        assert_eq!(snowflake_token("Bearer abc"), None);
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn refusals_are_driver_shaped() {
        let body: serde_json::Value = serde_json::from_slice(&refusal_body("390104", "no")).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["code"], "390104");
        assert!(body["data"].is_object());
        assert_eq!(body["message"], "no");
    }
}
