//! The per-endpoint flows: route, authenticate (OIDC at login and on the SQL API, sealed
//! tokens on everything else), rewrite, forward, rewrite back, and capture for the recording.
//!
//! Every refusal here is the Snowflake-shaped error drivers understand (HTTP 200,
//! `success:false`), except on the SQL API, which answers with its own status codes.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::upstream::{self, UpstreamError, UpstreamRequest, UpstreamResponse};
use super::{Core, Gateway, govern, unix_millis, unix_seconds};
use crate::http::gzip::{self, GunzipError};
use crate::http::{Headers, Method, RequestHead};
use crate::identity::{AuthError, Identity, JwksSource, RefetchPermit};
use crate::mask;
use crate::policy::Subject;
use crate::policy::parameters::{ParameterClass, parameter_class, plan_query_parameters};
use crate::record::{Decision, Frame, Principal, RequestFrame, RequestLink, ResponseFrame};
use crate::session::credential::UpstreamCredential;
use crate::session::login::{self, LoginError, SessionOwner};
use crate::session::query::AnswerSummary;
use crate::session::statements::{Owner, Plans};
use crate::session::token::{TokenClaims, TokenError, TokenKind};
use crate::session::{
    CONTROL_BYTES_MAX, Endpoint, bearer_token, case_variant_key, codes, is_query_id, query_param, refusal_body,
    set_query_param, snowflake_authorization, snowflake_token, sql_api_error_body,
};

/// What an agent is told about a statement id it may not use (whether it exists for another
/// identity is not its business).
pub(super) const STATEMENT_UNKNOWN_MESSAGE: &str = "no statement with this id was answered to this identity through snowgate \
     (or the gateway no longer keeps it)";

/// Largest JWKS document fetched.
const JWKS_BYTES_MAX: usize = 1 << 20;
/// Time allowed for a JWKS fetch.
const JWKS_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The answer to write downstream.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Upstream's fields to pass on, or `None` for the gateway's own answers.
    pub upstream_headers: Option<Headers>,
    /// Body.
    pub body: Bytes,
    /// Close the connection after writing.
    pub close: bool,
    /// The content type of the gateway's own answers; an upstream answer keeps upstream's.
    pub content_type: &'static [u8],
}

/// The content type of the gateway's own answers but chunks.
const JSON_CONTENT_TYPE: &[u8] = b"application/json";

/// The content type of a result chunk the gateway serves, as cloud storage labels them: a JSON
/// chunk is rows without enclosing brackets and an Arrow chunk is binary, so neither is a JSON
/// document, and the Node driver parses any body labelled JSON as one.
const CHUNK_CONTENT_TYPE: &[u8] = b"binary/octet-stream";

impl Answer {
    /// The gateway's own JSON answer.
    pub(super) fn own(status: u16, body: Bytes) -> Answer {
        Answer { status, upstream_headers: None, body, close: false, content_type: JSON_CONTENT_TYPE }
    }

    /// A result chunk the gateway fetched and masked.
    pub(super) fn own_chunk(body: Bytes) -> Answer {
        Answer { content_type: CHUNK_CONTENT_TYPE, ..Answer::own(200, body) }
    }

    /// An upstream answer, with upstream's fields.
    pub(super) fn upstream(status: u16, headers: Headers, body: Bytes) -> Answer {
        Answer { status, upstream_headers: Some(headers), body, close: false, content_type: JSON_CONTENT_TYPE }
    }
}

/// What a request taught the gateway, for its frames.
#[derive(Debug, Default)]
pub struct Capture {
    endpoint: &'static str,
    sub: Option<String>,
    role: Option<String>,
    groups: Vec<String>,
    session_id: Option<i64>,
    request_id: Option<String>,
    query_id: Option<String>,
    sql_text: Option<String>,
    bindings: Option<String>,
    agent_context: Option<String>,
    query_tag: Option<String>,
    refused_code: Option<String>,
    decision: Option<Decision>,
    upstream_us: u64,
    request_body: Bytes,
    started_at_unix_us: u64,
    /// Set once the request record was taken, before the request went upstream.
    admitted: Option<RequestLink>,
    /// The admitted request never reached the upstream: no connection could be made.
    pub(super) unreached: bool,
    /// An answer body (the very buffer) and what the recording keeps in its place.
    recorded_instead: Option<(Bytes, Bytes)>,
}

impl Capture {
    fn owner(&mut self, claims: &TokenClaims) {
        self.sub = Some(claims.sub.clone());
        self.role = Some(claims.role.clone());
        self.groups = claims.groups.clone();
        self.session_id = claims.session_id;
    }

    pub(super) fn owner_of(&mut self, claims: &TokenClaims) {
        self.owner(claims);
    }

    pub(super) fn set_decision(&mut self, decision: Decision) {
        self.decision = Some(decision);
    }

    pub(super) fn set_statement(&mut self, text: String, bindings: Option<String>, query_tag: Option<String>) {
        self.sql_text = Some(text);
        self.bindings = bindings;
        if query_tag.is_some() {
            self.query_tag = query_tag;
        }
    }

    pub(super) fn set_query_id(&mut self, query_id: String) {
        self.query_id = Some(query_id);
    }

    pub(super) fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    pub(super) fn sql_text(&self) -> Option<&str> {
        self.sql_text.as_deref()
    }

    pub(super) fn bindings(&self) -> Option<&str> {
        self.bindings.as_deref()
    }

    pub(super) fn agent_context(&self) -> Option<&str> {
        self.agent_context.as_deref()
    }

    pub(super) fn refuse_code(&mut self, code: &str) {
        self.refused_code = Some(code.to_owned());
    }

    pub(super) fn upstream_time(&mut self, elapsed: std::time::Duration) {
        self.upstream_us = elapsed.as_micros() as u64;
    }

    /// Whether the request came on the SQL API (whose refusals are shaped differently).
    pub fn is_sql_api(&self) -> bool {
        self.endpoint.starts_with("sql-api")
    }

    /// Whether the request was recorded before it went upstream.
    pub fn was_admitted(&self) -> bool {
        self.admitted.is_some()
    }

    fn decision(&self) -> Decision {
        match (&self.decision, &self.refused_code) {
            (Some(decision), _) => decision.clone(),
            (None, Some(code)) => Decision::Refused { code: code.clone() },
            (None, None) => Decision::Allowed,
        }
    }

    fn endpoint_name(&self) -> &'static str {
        if self.endpoint.is_empty() { "unknown" } else { self.endpoint }
    }

    fn request_frame(&self) -> RequestFrame {
        RequestFrame {
            time_unix_us: self.started_at_unix_us,
            endpoint: self.endpoint_name().into(),
            principal: Principal { sub: self.sub.clone(), role: self.role.clone(), groups: self.groups.clone() },
            session_id: self.session_id,
            request_id: self.request_id.clone(),
            query_id: self.query_id.clone(),
            statement: self.sql_text.clone(),
            bindings: self.bindings.clone(),
            agent_context: self.agent_context.clone(),
            query_tag: self.query_tag.clone(),
            decision: self.decision(),
            body: self.request_body.clone(),
        }
    }

    /// Records `recorded` in place of the answer body `sent`, if that is the body answered
    /// (an answer replaced later, a refusal, is recorded as it is).
    pub(super) fn record_in_place_of(&mut self, sent: &Bytes, recorded: Bytes) {
        self.recorded_instead = Some((sent.clone(), recorded));
    }

    /// The frames still to record once the answer is known (`summary` is the answer's): the
    /// request's (unless it was recorded before going upstream) and the response's, linked to
    /// it.
    pub fn into_frames(
        mut self,
        answer: &Answer,
        summary: AnswerSummary,
        answered_at_unix_us: u64,
        total_us: u64,
    ) -> (Option<RequestFrame>, ResponseFrame) {
        let request = if self.admitted.is_none() { Some(self.request_frame()) } else { None };
        let body = match self.recorded_instead.take() {
            Some((sent, recorded)) if sent.as_ptr() == answer.body.as_ptr() && sent.len() == answer.body.len() => {
                recorded
            }
            _ => answer.body.clone(),
        };
        let response = ResponseFrame {
            time_unix_us: answered_at_unix_us,
            endpoint: self.endpoint_name().into(),
            request: self.admitted,
            query_id: self.query_id.or(summary.query_id),
            status: answer.status,
            code: summary.code,
            success: Some(summary.success),
            rows: summary.total_rows,
            upstream_us: self.upstream_us,
            total_us,
            body,
        };
        (request, response)
    }

    /// The statement ids an upstream driver answer to a query request or result poll names,
    /// for the agent it goes to: the id polled or answered, the answer's own (an approved
    /// statement's real one) and a multi-statement answer's children. None for the gateway's
    /// own answers (a refusal names the id it refused), nor for the SQL API (its handles are
    /// entered by its own flow).
    pub fn answered_statement_ids(&self, answer: &Answer, summary: &AnswerSummary) -> Option<(Owner<'_>, Vec<String>)> {
        if !matches!(self.endpoint, "query-request" | "query-result")
            || answer.status != 200
            || answer.upstream_headers.is_none()
        {
            return None;
        }
        let sub = self.sub.as_deref()?;
        let mut ids: Vec<String> = self.query_id.iter().chain(&summary.query_id).cloned().collect();
        ids.extend(summary.result_ids.iter().cloned());
        ids.dedup();
        Some((Owner { sub, groups: &self.groups }, ids))
    }
}

/// The answer to an exchange whose record could not be taken or made durable: the driver
/// protocol's refusal, or on the SQL API a 503.
pub fn recording_unavailable_answer(sql_api: bool) -> Answer {
    const MESSAGE: &str =
        "recording unavailable: snowgate cannot record this exchange, so it was not run or not answered; retry later";
    if sql_api {
        Answer::own(503, sql_api_error_body(codes::RECORDING_UNAVAILABLE, MESSAGE))
    } else {
        Answer::own(200, refusal_body(codes::RECORDING_UNAVAILABLE, MESSAGE))
    }
}

/// A request whose caller was checked from its head, before its body is read.
pub struct Authenticated<'h> {
    capture: Capture,
    endpoint: Option<Endpoint>,
    /// The caller (none for logins, renewals and chunks), or the refusal that answers it.
    caller: Result<Option<Caller<'h>>, Answer>,
}

impl Authenticated<'_> {
    /// Whether the request is refused whatever its body holds (an unknown endpoint, a
    /// credential missing, forged, expired or logged out of).
    pub fn is_refused(&self) -> bool {
        self.caller.is_err()
    }

    /// The endpoint routed from the head.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }
}

/// Checks who sends the request from its head alone (the sealed session token, or the SQL
/// API's OIDC token), before its body is read.
pub async fn authenticate<'h>(core: &Core, head: &'h RequestHead, endpoint: Option<Endpoint>) -> Authenticated<'h> {
    let mut capture = Capture::default();
    let caller = caller_of(core, head, endpoint.as_ref(), &mut capture).await;
    Authenticated { capture, endpoint, caller }
}

/// Handles one complete request. Never fails: every problem becomes an answer.
pub async fn handle(
    core: &Core,
    head: &RequestHead,
    authenticated: Authenticated<'_>,
    body: Bytes,
    started_at_unix_us: u64,
) -> (Answer, Capture) {
    let Authenticated { mut capture, endpoint, caller, .. } = authenticated;
    capture.started_at_unix_us = started_at_unix_us;
    let answer = match (caller, endpoint) {
        (Ok(caller), Some(endpoint)) => route(core, head, endpoint, caller, body, &mut capture).await,
        (Err(answer), _) => answer,
        (Ok(_), None) => unreachable!("a request to no endpoint is refused by caller_of"),
    };
    if capture.refused_code.is_some() {
        core.gateway.metrics.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    debug!(
        core = core.id,
        endpoint = capture.endpoint,
        status = answer.status,
        refused = capture.refused_code.as_deref().unwrap_or(""),
        upstream_us = capture.upstream_us,
        "Request handled."
    );
    (answer, capture)
}

/// What a refusal's log line says of it: its message, except a reviewer's free-text reason,
/// which goes to the agent and the recording only.
fn logged_reason<'m>(code: &str, message: &'m str) -> &'m str {
    if code == codes::REVIEW_DENIED { "a reviewer denied the statement" } else { message }
}

pub(super) fn refuse(capture: &mut Capture, code: &str, message: &str) -> Answer {
    info!(
        endpoint = capture.endpoint,
        code,
        reason = logged_reason(code, message),
        sub = capture.sub.as_deref().unwrap_or(""),
        "Request refused."
    );
    capture.refused_code = Some(code.to_owned());
    Answer::own(200, refusal_body(code, message))
}

pub(super) fn refuse_sql_api(capture: &mut Capture, status: u16, code: &str, message: &str) -> Answer {
    info!(endpoint = capture.endpoint, code, status, reason = logged_reason(code, message), "SQL API request refused.");
    capture.refused_code = Some(code.to_owned());
    Answer::own(status, sql_api_error_body(code, message))
}

/// The refusal drivers renew their session on (390112).
pub(super) fn session_expired(capture: &mut Capture) -> Answer {
    refuse(capture, codes::SESSION_EXPIRED, "Session token expired.")
}

pub(super) fn upstream_failed(capture: &mut Capture, error: &UpstreamError) -> Answer {
    warn!(endpoint = capture.endpoint, error = %error, "Upstream exchange failed.");
    capture.refused_code = Some(codes::UPSTREAM_INVALID.to_owned());
    if capture.is_sql_api() {
        return Answer::own(error.status(), sql_api_error_body(codes::UPSTREAM_INVALID, &error.to_string()));
    }
    let body = serde_json::json!({"code": codes::UPSTREAM_INVALID, "message": error.to_string(), "success": false, "data": {}});
    Answer::own(error.status(), Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises")))
}

/// Who sends a request to `endpoint`, from its head: `None` for the endpoints that carry
/// their credential in the body or the URL (logins, renewals, chunks). A request to no
/// endpoint is refused here.
async fn caller_of<'h>(
    core: &Core,
    head: &'h RequestHead,
    endpoint: Option<&Endpoint>,
    capture: &mut Capture,
) -> Result<Option<Caller<'h>>, Answer> {
    let Some(endpoint) = endpoint else {
        capture.refused_code = Some(codes::UNKNOWN_ENDPOINT.to_owned());
        return Err(Answer::own(404, refusal_body(codes::UNKNOWN_ENDPOINT, "snowgate does not serve this endpoint")));
    };
    capture.endpoint = endpoint.name();
    capture.request_id =
        query_param(head.query(), "requestId").or_else(|| query_param(head.query(), "request_id")).map(str::to_owned);
    capture.agent_context = agent_context(head, core.gateway.config.agent_context_bytes_max);
    // Who asks is known before the body is read: a gzip body of a few KiB inflates to a
    // statement's cap, and a plain one is a statement's cap, work and memory no one
    // unauthenticated may make a core spend. (Logins and renewals carry their credential in
    // the body, under the control cap.)
    match endpoint {
        Endpoint::Login | Endpoint::TokenRequest | Endpoint::Chunk(_) => Ok(None),
        e if e.is_sql_api() => Ok(Some(Caller::Bearer(sql_api_identity(core, head, capture).await?))),
        // A logout closes the Snowflake session even after the gateway's token expired (the
        // identity's end caps it before Snowflake's own does): otherwise it stays open upstream.
        Endpoint::Logout => {
            let (claims, token) = open_session(core, head, capture, Expiry::Ignored)?;
            Ok(Some(Caller::Session(claims, token)))
        }
        _ => {
            let (claims, token) = open_session(core, head, capture, Expiry::Checked)?;
            Ok(Some(Caller::Session(claims, token)))
        }
    }
}

async fn route(
    core: &Core,
    head: &RequestHead,
    endpoint: Endpoint,
    caller: Option<Caller<'_>>,
    body: Bytes,
    capture: &mut Capture,
) -> Answer {
    let bytes_max = endpoint.request_bytes_max(core.gateway.config.statement_request_bytes_max);
    let body = match inflate_request(core, head, body, bytes_max, capture) {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    match (endpoint, caller) {
        (Endpoint::Login, _) => login(core, head, body, capture).await,
        (Endpoint::TokenRequest, _) => renew(core, head, body, capture).await,
        (Endpoint::Chunk(grant), _) => govern::chunk(core, head, &grant, capture).await,
        (e, Some(Caller::Bearer(identity))) => sql_api(core, &e, head, identity, body, capture).await,
        (e, Some(Caller::Session(claims, token))) => {
            // Logged out of while this request's body was arriving.
            if e != Endpoint::Logout && core.gateway.is_logged_out(&claims) {
                return logged_out(capture, codes::SESSION_INVALID);
            }
            let session = govern::Session { claims: &claims, token };
            session_request(core, &e, head, &session, body, capture).await
        }
        (_, None) => unreachable!("every endpoint but logins, renewals and chunks has a caller"),
    }
}

enum Caller<'h> {
    /// A driver's sealed session token, opened, and the token as sent.
    Session(TokenClaims, &'h str),
    /// A SQL API request's OIDC token, verified.
    Bearer(Identity),
}

/// The caps on a request's body, known from its head (its endpoint, routed once, and whether
/// its caller was refused): the most bytes to read off the wire, and the cap to report. A
/// body is capped before it is read, so a login, an unknown path or a caller refused from
/// its head ([`Authenticated::is_refused`]) cannot make the gateway buffer a statement's
/// worth; the wire cap leaves room for gzip's framing over the inflated cap.
pub(super) fn body_caps(core: &Core, endpoint: Option<&Endpoint>, refused: bool) -> (usize, usize) {
    let statement_bytes_max = core.gateway.config.statement_request_bytes_max;
    let cap = match endpoint {
        Some(endpoint) if !refused => endpoint.request_bytes_max(statement_bytes_max),
        _ => CONTROL_BYTES_MAX,
    };
    let wire = cap.saturating_add(cap / 1024 + 1024).min(core.gateway.config.limits.body_bytes_max);
    (wire, cap)
}

/// The `X-Agent-Context` header, cut at the configured size on a character boundary.
fn agent_context(head: &RequestHead, bytes_max: usize) -> Option<String> {
    let value = head.headers.get("x-agent-context")?;
    let text = String::from_utf8_lossy(value);
    Some(cut_at_char(&text, bytes_max).to_owned())
}

/// The longest start of `text` of at most `bytes_max` bytes that ends on a character boundary
/// (`str::floor_char_boundary`, which needs a newer Rust than the project's minimum).
pub(super) fn cut_at_char(text: &str, bytes_max: usize) -> &str {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Inflates a gzip request body (by header or by magic bytes), capped at `bytes_max` (and at
/// the configured decompressed limit). A body over the cap, sent or inflated, is a 413 that
/// closes the connection; broken gzip is a driver-shaped refusal.
fn inflate_request(
    core: &Core,
    head: &RequestHead,
    body: Bytes,
    bytes_max: usize,
    capture: &mut Capture,
) -> Result<Bytes, Answer> {
    let limit = bytes_max.min(core.gateway.config.limits.decompressed_bytes_max);
    let too_large = |capture: &mut Capture| {
        capture.refused_code = Some("413".into());
        info!(
            endpoint = capture.endpoint,
            limit, "Request body is larger than the endpoint allows; closing the connection."
        );
        let message =
            format!("the request body is larger than {limit} bytes (after gunzip), the most this endpoint accepts");
        // Shaped as the protocol's other refusals, so that drivers read the reason.
        let body =
            if capture.is_sql_api() { sql_api_error_body("413", &message) } else { refusal_body("413", &message) };
        let mut answer = Answer::own(413, body);
        answer.close = true;
        answer
    };
    if body.len() > limit {
        return Err(too_large(capture));
    }
    // A SQL API client reads an HTTP 200 as a statement that ran: its refusals are a 400.
    let bad_request = |capture: &mut Capture, message: &str| {
        if capture.is_sql_api() {
            refuse_sql_api(capture, 400, codes::BAD_REQUEST, message)
        } else {
            refuse(capture, codes::BAD_REQUEST, message)
        }
    };
    let encoding = head.headers.get("content-encoding").map(<[u8]>::trim_ascii);
    let declared_gzip = match encoding {
        None => false,
        Some(e) if e.eq_ignore_ascii_case(b"gzip") => true,
        Some(e) if e.eq_ignore_ascii_case(b"identity") => false,
        Some(_) => return Err(bad_request(capture, "unsupported Content-Encoding: use gzip or none")),
    };
    if !declared_gzip && !gzip::is_gzip(&body) {
        return Ok(body);
    }
    match gzip::gunzip_capped(&body, limit) {
        Ok(inflated) => Ok(Bytes::from(inflated)),
        Err(GunzipError::TooLarge { .. }) => Err(too_large(capture)),
        Err(GunzipError::Invalid(_)) => Err(bad_request(capture, "the request body is not valid gzip")),
    }
}

/// Verifies an OIDC token, fetching the JWKS once (rate limited) when that may help.
async fn verify_oidc(core: &Core, token: &str) -> Result<Identity, AuthError> {
    let verifier = &core.gateway.verifier;
    match verifier.verify(token, std::time::Instant::now()) {
        Err(e) if e.refetch_may_help() => {
            let Some(refetch) = JwksRefetch::begin(&core.gateway) else { return Err(e) };
            if let Err(error) = refetch.run(&core.gateway).await {
                warn!(core = core.id, error = %error, "JWKS refetch failed; keeping the keys in force.");
            }
            verifier.verify(token, std::time::Instant::now())
        }
        other => other,
    }
}

/// A JWKS fetch the verifier allowed (one at a time across the gateway, at most one per
/// refetch interval). The cores await [`JwksRefetch::run`]; the admin listener, on threads of
/// its own, blocks on it, and only once it holds one.
pub(crate) struct JwksRefetch {
    url: String,
    permit: RefetchPermit,
}

impl JwksRefetch {
    /// The right to fetch now; `None` for a file source or when it is too soon.
    pub(crate) fn begin(gateway: &Gateway) -> Option<JwksRefetch> {
        let verifier = &gateway.verifier;
        let JwksSource::Url(url) = verifier.source() else { return None };
        let permit = verifier.begin_refetch(std::time::Instant::now())?;
        Some(JwksRefetch { url: url.clone(), permit })
    }

    /// Fetches and puts the new keys in force; on failure the keys in force stay.
    pub(crate) async fn run(self, gateway: &Gateway) -> Result<(), String> {
        let fetched = upstream::fetch(&self.url, gateway.jwks_tls.clone(), JWKS_FETCH_TIMEOUT, JWKS_BYTES_MAX).await;
        gateway
            .verifier
            .finish_refetch(self.permit, fetched.as_deref().map_err(ToString::to_string), std::time::Instant::now())
            .map_err(|e| e.to_string())
    }
}

/// Sends a request upstream, timing the exchange, once its request record is taken (and in
/// `strict` mode durable): nothing goes upstream unrecorded. `recorded_body` is what the
/// recording keeps of the request body (empty where the forwarded body holds a secret).
/// A refusal comes back as the answer to give.
pub(super) async fn send(
    core: &Core,
    request: &UpstreamRequest,
    recorded_body: Bytes,
    capture: &mut Capture,
) -> Result<UpstreamResponse, Answer> {
    capture.request_body = recorded_body;
    admit(core, capture).await?;
    let started = std::time::Instant::now();
    let result = core.pool.send(request).await;
    capture.upstream_us = started.elapsed().as_micros() as u64;
    result.map_err(|e| {
        capture.unreached = matches!(e, UpstreamError::Connect(_));
        upstream_failed(capture, &e)
    })
}

/// Records the request before it goes upstream.
pub(super) async fn admit(core: &Core, capture: &mut Capture) -> Result<(), Answer> {
    let refused = |capture: &mut Capture, reason: &str| {
        core.gateway.metrics.recording_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(core = core.id, endpoint = capture.endpoint, reason, "Request refused: it could not be recorded.");
        capture.refused_code = Some(codes::RECORDING_UNAVAILABLE.to_owned());
        recording_unavailable_answer(capture.is_sql_api())
    };
    let ticket = match core.submit(Frame::Request(capture.request_frame())).await {
        Ok(ticket) => ticket,
        Err(e) => return Err(refused(capture, &e.to_string())),
    };
    let link = ticket.link();
    if core.recorder.durability().hold_request_until_durable()
        && let Err(reason) = core.durable(ticket).await
    {
        return Err(refused(capture, &reason));
    }
    capture.admitted = Some(link);
    Ok(())
}

pub(super) fn pass_through(response: UpstreamResponse) -> Answer {
    Answer::upstream(response.status, response.headers, response.body)
}

/// A login or renewal Snowflake answered with another status than 200: the status reaches the
/// agent (drivers retry a 5xx, give up on a 4xx), the body does not. Only a 200's body is read,
/// and its tokens sealed or dropped; an error page of these endpoints is not checked for them.
fn session_answer_withheld(core: &Core, capture: &mut Capture, response: &UpstreamResponse, what: &str) -> Answer {
    let status = response.status;
    warn!(core = core.id, status, endpoint = what, "Snowflake answered a session request with an error status.");
    capture.refused_code = Some(codes::UPSTREAM_INVALID.to_owned());
    let message =
        format!("Snowflake answered the {what} with HTTP status {status}; snowgate does not pass that body on");
    // A status that carries no body (1xx, 204, 304) cannot carry the refusal: the agent would
    // read the refusal as the start of its next answer.
    let status = if matches!(status, 100..=199 | 204 | 304) { 502 } else { status };
    Answer::own(status, refusal_body(codes::UPSTREAM_INVALID, &message))
}

pub(super) fn with_body(response: UpstreamResponse, body: Vec<u8>) -> Answer {
    Answer::upstream(response.status, response.headers, Bytes::from(body))
}

fn login_error_code(error: &LoginError) -> &'static str {
    match error {
        LoginError::WrongAuthenticator => codes::WRONG_AUTHENTICATOR,
        LoginError::MissingToken => codes::OIDC_INVALID,
        _ => codes::BAD_REQUEST,
    }
}

/// The SQL API body keys whose meaning the gateway reads or sets.
const SQL_API_KEYS: &[&str] =
    &["statement", "parameters", "bindings", "role", "database", "schema", "warehouse", "timeout"];

/// A login's `SESSION_PARAMETERS` set the session as `ALTER SESSION` would, so they pass the
/// gate a query request's `parameters` do (result formats ARROW or JSON only, the statement
/// count pinned), except that a driver's own `CLIENT_*` settings are let through: drivers send
/// ones the gateway does not list, and they change the driver's side, not what a statement
/// reads. Anything else the policy does not know as harmless is refused.
fn gate_login_parameters(parameters: Option<&mut Value>) -> Result<(), String> {
    let Some(parameters) = parameters else { return Ok(()) };
    let Value::Object(object) = parameters else {
        return match parameters {
            Value::Null => Ok(()),
            _ => Err("the login's SESSION_PARAMETERS is not a JSON object".to_owned()),
        };
    };
    let checked: Map<String, Value> = object
        .iter()
        .filter(|(key, _)| {
            let driver_setting = key.len() > 7 && key.as_bytes()[..7].eq_ignore_ascii_case(b"CLIENT_");
            !driver_setting || parameter_class(key) != ParameterClass::Sensitive
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let plan = plan_query_parameters(Some(&Value::Object(checked)), 1)
        .map_err(|r| format!("the login's SESSION_PARAMETERS set {}, which {}", r.parameter, r.reason))?;
    plan.apply(object);
    Ok(())
}

async fn login(core: &Core, head: &RequestHead, body: Bytes, capture: &mut Capture) -> Answer {
    let gateway = &core.gateway;
    let mut request = match login::parse_login_request(&body) {
        Ok(request) => request,
        Err(e) => return refuse(capture, login_error_code(&e), &e.to_string()),
    };
    if let Err(message) = gate_login_parameters(request.session_parameters_mut()) {
        return refuse(capture, codes::BAD_REQUEST, &message);
    }
    let identity = match verify_oidc(core, &request.oidc_token).await {
        Ok(identity) => identity,
        Err(e) if e.provider_unavailable() => return identity_provider_unavailable(capture, &e),
        Err(e) => return refuse(capture, e.snowflake_code(), &e.to_string()),
    };
    capture.sub = Some(identity.sub.clone());
    capture.groups = identity.groups.clone();
    let Some(role) = gateway.config.identity.role_for(&identity.groups) else {
        return refuse(capture, codes::NO_ROLE, "no Snowflake role is mapped to this identity's groups");
    };
    capture.role = Some(role.to_owned());
    let upstream_config = &gateway.config.upstream;
    let upstream_body = request.into_upstream_body(
        &upstream_config.account,
        &upstream_config.user,
        &upstream_config.credential,
        unix_seconds(),
    );
    let forwarded = UpstreamRequest {
        method: Method::Post,
        target: set_query_param(&head.target, "roleName", role),
        headers: upstream::forwarded_headers(&head.headers, Vec::new()),
        body: Bytes::from(upstream_body),
    };
    // The forwarded login body holds the gateway's credential: it is never recorded.
    let response = match send(core, &forwarded, Bytes::new(), capture).await {
        Ok(response) => response,
        Err(answer) => return answer,
    };
    if response.status != 200 {
        return session_answer_withheld(core, capture, &response, "login");
    }
    // The session ends with the OIDC token (the allowed skew on `exp` counts, as at the check),
    // or `session_max` after the login, whichever comes first.
    let identity_expires_at_unix_ms = login::identity_end_unix_ms(
        identity.expires_at_unix,
        gateway.config.identity.verifier.leeway.as_secs(),
        unix_millis(),
        u64::try_from(gateway.config.identity.session_max.as_millis()).unwrap_or(u64::MAX),
    );
    let owner =
        SessionOwner { sub: identity.sub, groups: identity.groups, role: role.to_owned(), identity_expires_at_unix_ms };
    match login::seal_login_response(&response.body, &gateway.sealer, &owner, unix_millis()) {
        Ok(answer) if !answer.success => {
            let refused: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            let code = refused["code"].as_str().map(str::to_owned);
            warn!(core = core.id, sub = %owner.sub, role = %owner.role, upstream_code = code.as_deref().unwrap_or("none"),
                "Snowflake refused the gateway's login for an agent.");
            // Refusals of what the agent chose (a database, a warehouse) pass as they are.
            let Some(code) = code.filter(|code| GATEWAY_LOGIN_REFUSALS.contains(&code.as_str())) else {
                return with_body(response, answer.body);
            };
            // The agent's token was accepted; what Snowflake refused is the gateway's own login
            // (its key, user or role mapping): said so, to the agent as to the operator.
            let said = refused["message"].as_str().unwrap_or("no message");
            capture.refused_code = Some(code.clone());
            let message = format!(
                "Snowflake refused snowgate's own login for this session ({code}: {said}). Your token was accepted; \
                 if this persists, snowgate's operator must check its Snowflake credential and role mapping."
            );
            with_body(response, refusal_body(&code, &message).to_vec())
        }
        Ok(answer) => {
            capture.session_id = answer.session_id;
            info!(core = core.id, sub = %owner.sub, role = %owner.role, success = answer.success, "Login.");
            with_body(response, answer.body)
        }
        Err(e) => {
            warn!(core = core.id, error = %e, "Upstream login answer unusable.");
            capture.refused_code = Some(codes::UPSTREAM_INVALID.to_owned());
            Answer::own(502, refusal_body(codes::UPSTREAM_INVALID, "the upstream login answer could not be used"))
        }
    }
}

/// Snowflake's login refusals that concern the gateway's own credential, user or role mapping:
/// incorrect credentials, a locked or disabled user, an invalid key-pair JWT, a role not granted.
const GATEWAY_LOGIN_REFUSALS: &[&str] = &["390100", "390101", "390102", "390144", "390189"];

async fn renew(core: &Core, head: &RequestHead, body: Bytes, capture: &mut Capture) -> Answer {
    let gateway = &core.gateway;
    let Some(token) = head.headers.get_str("authorization").and_then(snowflake_token) else {
        return refuse(capture, codes::MASTER_INVALID, "the renewal carries no master token");
    };
    let master = match gateway.sealer.open(TokenKind::Master, token, unix_millis()) {
        Ok(claims) => claims,
        Err(TokenError::Expired) => {
            return refuse(capture, codes::MASTER_EXPIRED, "the master token has expired; log in again");
        }
        Err(e) => return refuse(capture, codes::MASTER_INVALID, &format!("master token refused: {e}")),
    };
    capture.owner(&master);
    if gateway.is_logged_out(&master) {
        return logged_out(capture, codes::MASTER_INVALID);
    }
    let rewritten = match login::rewrite_renew_request(&body, &gateway.sealer, &master) {
        Ok(body) => body,
        Err(e) => return refuse(capture, codes::SESSION_INVALID, &format!("renewal refused: {e}")),
    };
    let forwarded = UpstreamRequest {
        method: Method::Post,
        target: head.target.clone(),
        headers: upstream::forwarded_headers(
            &head.headers,
            vec![(b"authorization".to_vec(), snowflake_authorization(&master.upstream_token).into_bytes())],
        ),
        body: Bytes::from(rewritten),
    };
    // The forwarded renewal body holds Snowflake's tokens: it is never recorded.
    let response = match send(core, &forwarded, Bytes::new(), capture).await {
        Ok(response) => response,
        Err(answer) => return answer,
    };
    if response.status != 200 {
        return session_answer_withheld(core, capture, &response, "renewal");
    }
    match login::seal_renew_response(&response.body, &gateway.sealer, &master, unix_millis()) {
        Ok(answer) => {
            info!(core = core.id, sub = %master.sub, success = answer.success, "Session renewed.");
            with_body(response, answer.body)
        }
        Err(e) => {
            warn!(core = core.id, error = %e, "Upstream renewal answer unusable.");
            capture.refused_code = Some(codes::UPSTREAM_INVALID.to_owned());
            Answer::own(502, refusal_body(codes::UPSTREAM_INVALID, "the upstream renewal answer could not be used"))
        }
    }
}

/// The refusal (with `code`) of a session or master token whose session its agent logged
/// out of.
fn logged_out(capture: &mut Capture, code: &str) -> Answer {
    refuse(capture, code, "this session was logged out of; log in again")
}

/// Whether a session token is refused once expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Checked,
    /// For a logout only: ending a session harms no one.
    Ignored,
}

/// Opens the sealed session token a driver's request carries; returns its claims and the token.
fn open_session<'h>(
    core: &Core,
    head: &'h RequestHead,
    capture: &mut Capture,
    expiry: Expiry,
) -> Result<(TokenClaims, &'h str), Answer> {
    let Some(token) = head.headers.get_str("authorization").and_then(snowflake_token) else {
        return Err(refuse(
            capture,
            codes::SESSION_MISSING,
            "the request carries no session token; log in through snowgate",
        ));
    };
    let sealer = &core.gateway.sealer;
    let opened = match expiry {
        Expiry::Checked => sealer.open(TokenKind::Session, token, unix_millis()),
        Expiry::Ignored => sealer.open_ignoring_expiry(TokenKind::Session, token),
    };
    let claims = match opened {
        Ok(claims) => claims,
        Err(TokenError::Expired) => return Err(session_expired(capture)),
        Err(e) => return Err(refuse(capture, codes::SESSION_INVALID, &format!("session token refused: {e}"))),
    };
    capture.owner(&claims);
    // A logout may be sent again (one that failed upstream, say): it goes on to Snowflake.
    if expiry == Expiry::Checked && core.gateway.is_logged_out(&claims) {
        return Err(logged_out(capture, codes::SESSION_INVALID));
    }
    Ok((claims, token))
}

async fn session_request(
    core: &Core,
    endpoint: &Endpoint,
    head: &RequestHead,
    session: &govern::Session<'_>,
    body: Bytes,
    capture: &mut Capture,
) -> Answer {
    let claims = session.claims;
    let mut target = head.target.clone();
    match endpoint {
        Endpoint::QueryRequest => return govern::query_request(core, head, body, capture, session).await,
        Endpoint::QueryResult(qid) => {
            capture.query_id = Some(qid.clone());
            if let Some(answer) = govern::poll_parked(core, head, qid, capture, session).await {
                return answer;
            }
            if let Err(refusal) = own_query(core, qid, claims.owner(), capture) {
                return refusal;
            }
        }
        Endpoint::AbortQuery(qid) => {
            capture.query_id = Some(qid.clone());
            match govern::abort_parked(core, Some(qid), &body, capture, session) {
                Some(govern::ParkedAbort::Answered(answer)) => return answer,
                Some(govern::ParkedAbort::Upstream { upstream_id }) => {
                    target = with_path(&head.target, &format!("/queries/{upstream_id}/abort-request"));
                }
                None => {}
            }
            if let Err(refusal) = own_query(core, qid, claims.owner(), capture) {
                return refusal;
            }
        }
        Endpoint::Abort => match govern::abort_parked(core, None, &body, capture, session) {
            Some(govern::ParkedAbort::Answered(answer)) => return answer,
            // Named by its `requestId`, which Snowflake knows too: not rewritten.
            Some(govern::ParkedAbort::Upstream { .. }) | None => {}
        },
        // Refused from now on, whatever Snowflake answers: the agent is done with it.
        Endpoint::Logout => core.gateway.log_out(claims),
        Endpoint::Monitoring(qid) => {
            capture.query_id = Some(qid.clone());
            if let Err(refusal) = own_query(core, qid, claims.owner(), capture) {
                return refusal;
            }
            if let Some(upstream_id) = govern::parked_upstream_id(core, qid, session) {
                target = with_path(&head.target, &format!("/monitoring/queries/{upstream_id}"));
            }
        }
        _ => {}
    }
    let forwarded = UpstreamRequest {
        method: head.method,
        target,
        headers: upstream_session_headers(head, claims),
        body: body.clone(),
    };
    let response = match send(core, &forwarded, body, capture).await {
        Ok(response) => response,
        Err(answer) => return answer,
    };
    match endpoint {
        // A result poll carries rows like the query answer it continues; a query's status
        // quotes its error, which may quote the value that failed.
        Endpoint::QueryResult(_) | Endpoint::Monitoring(_) => {
            let profiles = govern::profiles_for(core, claims);
            govern::masked_answer(core, head, response, capture, session, &profiles, crate::mask::AnswerOf::Query)
        }
        _ => pass_through(response),
    }
}

/// `target` with its path replaced by `path`, its query string kept.
fn with_path(target: &str, path: &str) -> String {
    match target.split_once('?') {
        Some((_, query)) if !query.is_empty() => format!("{path}?{query}"),
        _ => path.to_owned(),
    }
}

/// Refuses a query id that was not answered to `owner` through this gateway (or that it no
/// longer keeps): all agents share the gateway's Snowflake user, which would let one read
/// another's results by id.
fn own_query(core: &Core, qid: &str, owner: Owner<'_>, capture: &mut Capture) -> Result<(), Answer> {
    match core.gateway.statement_for(core.id, qid, owner) {
        Ok(_) => Ok(()),
        Err(refused) => {
            warn!(core = core.id, sub = owner.sub, reason = %refused, "A query id was refused.");
            Err(refuse(capture, codes::STATEMENT_UNKNOWN, STATEMENT_UNKNOWN_MESSAGE))
        }
    }
}

/// The agent's fields, with the session's real Snowflake token.
pub(super) fn upstream_session_headers(head: &RequestHead, claims: &TokenClaims) -> Vec<(Vec<u8>, Vec<u8>)> {
    upstream::forwarded_headers(
        &head.headers,
        vec![(b"authorization".to_vec(), snowflake_authorization(&claims.upstream_token).into_bytes())],
    )
}

/// Verifies the OIDC token a SQL API request carries as its bearer.
async fn sql_api_identity(core: &Core, head: &RequestHead, capture: &mut Capture) -> Result<Identity, Answer> {
    let Some(token) = head.headers.get_str("authorization").and_then(bearer_token) else {
        return Err(refuse_sql_api(capture, 401, codes::OIDC_INVALID, "send your OIDC token as Authorization: Bearer"));
    };
    if let Some(kind) = head.headers.get_str("x-snowflake-authorization-token-type")
        && !kind.trim().eq_ignore_ascii_case("OAUTH")
    {
        return Err(refuse_sql_api(
            capture,
            401,
            codes::WRONG_AUTHENTICATOR,
            "X-Snowflake-Authorization-Token-Type must be OAUTH",
        ));
    }
    verify_oidc(core, token).await.map_err(|e| {
        if e.provider_unavailable() {
            identity_provider_unavailable(capture, &e)
        } else {
            refuse_sql_api(capture, 401, e.snowflake_code(), &e.to_string())
        }
    })
}

/// The refusal when the identity provider's keys cannot be had: HTTP 503, so that drivers and
/// SQL API clients retry (a 200 refusal or a 401 would tell them the token is bad).
fn identity_provider_unavailable(capture: &mut Capture, error: &crate::identity::AuthError) -> Answer {
    warn!(endpoint = capture.endpoint, error = %error, "Refused: the identity provider's keys are unavailable.");
    let code = codes::IDENTITY_PROVIDER_UNAVAILABLE;
    capture.refused_code = Some(code.to_owned());
    let message = format!("{error}: the identity provider's keys could not be fetched; retry later");
    let body = if capture.is_sql_api() { sql_api_error_body(code, &message) } else { refusal_body(code, &message) };
    Answer::own(503, body)
}

async fn sql_api(
    core: &Core,
    endpoint: &Endpoint,
    head: &RequestHead,
    identity: Identity,
    body: Bytes,
    capture: &mut Capture,
) -> Answer {
    let gateway = &core.gateway;
    capture.sub = Some(identity.sub.clone());
    capture.groups = identity.groups.clone();
    let Some(role) = gateway.config.identity.role_for(&identity.groups) else {
        return refuse_sql_api(capture, 403, codes::NO_ROLE, "no Snowflake role is mapped to this identity's groups");
    };
    capture.role = Some(role.to_owned());
    let UpstreamCredential::KeyPair(key_pair) = &gateway.config.upstream.credential else {
        return refuse_sql_api(
            capture,
            501,
            codes::BAD_REQUEST,
            "the SQL API needs the gateway to hold a key-pair credential",
        );
    };
    let subject = Subject { sub: identity.sub, groups: identity.groups };
    // The plans kept from the statement's partition 0, for masking a later partition.
    let mut known: Option<Arc<Plans>> = None;
    let mut target = head.target.clone();
    // Snowflake answers a submit whose `requestId` it has seen with that statement, and every
    // agent is the gateway's one user: upstream, the id is one only this identity can make
    // (a fresh one without the agent's; any other spelling of the parameter is dropped).
    if *endpoint == Endpoint::SqlApiSubmit {
        let ours = match query_param(head.query(), "requestId") {
            Some(request_id) => gateway.sealer.keyed_id("sql api requestId", &subject.sub, request_id),
            None => uuid::Uuid::new_v4(),
        };
        target = set_query_param(&target, "requestId", &ours.hyphenated().to_string());
    }
    let body = match endpoint {
        Endpoint::SqlApiSubmit => {
            let mut statement = match crate::json::Unique::object(&body) {
                Ok(statement) => statement,
                Err(e) => {
                    let message = format!("the body must be a JSON object with a statement: {e}");
                    return refuse_sql_api(capture, 400, codes::BAD_REQUEST, &message);
                }
            };
            if let Some(key) = case_variant_key(&statement, SQL_API_KEYS) {
                let message = format!("the body has a key {key:?} spelled unlike the SQL API's");
                return refuse_sql_api(capture, 400, codes::BAD_REQUEST, &message);
            }
            let Some(Value::String(text)) = statement.get("statement") else {
                return refuse_sql_api(capture, 400, codes::BAD_REQUEST, "the body must carry a string statement");
            };
            capture.sql_text = Some(text.clone());
            capture.bindings = statement.get("bindings").map(Value::to_string);
            let text = text.clone();
            let (statements, review) = match govern::decide(core, &subject, text, capture).await {
                govern::Decided::Allow { statements, .. } => (statements, None),
                // A busy classifier is a 503 a SQL API client retries; a 422 is a final SQL error.
                govern::Decided::Refuse { code: codes::OVERLOADED, message } => {
                    return refuse_sql_api(capture, 503, codes::OVERLOADED, &message);
                }
                govern::Decided::Refuse { code, message } => return refuse_sql_api(capture, 422, code, &message),
                govern::Decided::Review { statements, requirement, rule, message } => {
                    (statements, Some((requirement, rule, message)))
                }
            };
            match plan_query_parameters(statement.get("parameters"), statements) {
                Ok(plan) => {
                    let parameters = statement.entry("parameters").or_insert_with(|| Value::Object(Default::default()));
                    match parameters {
                        Value::Object(map) => plan.apply(map),
                        _ => return refuse_sql_api(capture, 400, codes::BAD_REQUEST, "parameters must be an object"),
                    }
                }
                Err(refusal) => {
                    return refuse_sql_api(
                        capture,
                        422,
                        codes::POLICY_DENIED,
                        &format!("parameter refused: {refusal}"),
                    );
                }
            }
            // The role comes from the identity, never from the agent.
            statement.insert("role".into(), Value::String(role.to_owned()));
            let body = Bytes::from(serde_json::to_vec(&statement).expect("a JSON map always serialises"));
            if let Some(review) = review {
                // Kept without the credential: the approving poll signs a new JWT.
                let headers = upstream::forwarded_headers(&head.headers, vec![sql_api_token_type()]);
                return govern::park_sql_api(core, &target, capture, &subject, role, headers, body, review);
            }
            body
        }
        Endpoint::SqlApiStatus(handle) | Endpoint::SqlApiCancel(handle) => {
            capture.query_id = Some(handle.clone());
            let refused = |capture: &mut Capture, reason: &dyn std::fmt::Display| {
                warn!(core = core.id, sub = %subject.sub, reason = %reason, "A SQL API statement handle was refused.");
                refuse_sql_api(capture, 422, codes::STATEMENT_UNKNOWN, STATEMENT_UNKNOWN_MESSAGE)
            };
            // A statement parked for this identity first (the ledger checks whose it is).
            let cancel = matches!(endpoint, Endpoint::SqlApiCancel(_));
            let profiles = gateway.config.policy.masking_profiles_for(&subject);
            let asker = govern::SqlApiAsker { subject: &subject, role, profiles: &profiles };
            let jwt = || key_pair.jwt(unix_seconds()).expose().to_owned();
            let about = match govern::parked_sql_api(core, handle, cancel, capture, &asker, jwt).await {
                govern::ParkedSqlApi::NotParked => handle.clone(),
                govern::ParkedSqlApi::Answer(answer) => return answer,
                govern::ParkedSqlApi::Ran(upstream) => {
                    // Parked here and since run: the request is about the statement it became.
                    let query = match head.query() {
                        "" => String::new(),
                        q => format!("?{q}"),
                    };
                    let action = if cancel { "/cancel" } else { "" };
                    target = format!("/api/v2/statements/{upstream}{action}{query}");
                    upstream
                }
            };
            match gateway.statement_for(core.id, &about, subject.owner()) {
                Ok(plans) => known = plans,
                Err(reason) => return refused(capture, &reason),
            }
            body
        }
        _ => body,
    };
    let jwt = key_pair.jwt(unix_seconds());
    let forwarded = UpstreamRequest {
        method: head.method,
        target,
        headers: upstream::forwarded_headers(
            &head.headers,
            vec![(b"authorization".to_vec(), format!("Bearer {}", jwt.expose()).into_bytes()), sql_api_token_type()],
        ),
        body: body.clone(),
    };
    let response = match send(core, &forwarded, body, capture).await {
        Ok(response) => response,
        Err(answer) => return answer,
    };
    let profiles = core.gateway.config.policy.masking_profiles_for(&subject);
    sql_api_answer(core, response, capture, &subject, &profiles, known, *endpoint == Endpoint::SqlApiSubmit)
}

fn sql_api_token_type() -> (Vec<u8>, Vec<u8>) {
    (b"x-snowflake-authorization-token-type".to_vec(), b"KEYPAIR_JWT".to_vec())
}

/// A SQL API answer for the agent: the handles it names become the agent's (failed
/// statements carry one too, which a client may ask about again; a status answer names a
/// multi-statement's children), and its rows are masked with `profiles` (a later partition
/// with `known`, the plans kept from partition 0), whose plans are kept with the statement.
pub(super) fn sql_api_answer(
    core: &Core,
    response: UpstreamResponse,
    capture: &mut Capture,
    subject: &Subject,
    profiles: &[String],
    known: Option<Arc<Plans>>,
    submit: bool,
) -> Answer {
    let own = match issue_statement_handles(core, &response.body, subject.owner()) {
        Ok(own) => own,
        Err(()) => return refuse_sql_api(capture, 422, codes::STATEMENT_UNKNOWN, STATEMENT_UNKNOWN_MESSAGE),
    };
    if submit && let Some(handle) = &own {
        // Recorded as the exchange's query id, so `snowgate-tools search` finds it by handle.
        capture.set_query_id(handle.clone());
    }
    let known = known.as_deref().map_or(&[][..], Vec::as_slice);
    let (answer, plans) = govern::masked_sql_api(core, response, capture, profiles, known);
    // Kept under the statement's own handle: the one asked about, or (for a parked statement)
    // the one it became.
    if let (Some(handle), false) = (own.as_deref().or(capture.query_id.as_deref()), plans.is_empty()) {
        core.gateway.keep_statement_plans(core.id, handle, subject.owner(), plans);
    }
    answer
}

/// Enters the handles a SQL API answer names into the statement books, as `sub`'s, and
/// returns the statement's own handle; `Err` when another identity holds one of them (the
/// answer must not reach this agent). A handle not shaped like one is not entered (the agent
/// could not use it through the gateway anyway).
fn issue_statement_handles(core: &Core, body: &[u8], owner: Owner<'_>) -> Result<Option<String>, ()> {
    let handles = match mask::statement_handles(body) {
        Ok(handles) => handles,
        Err(e) => {
            warn!(core = core.id, error = %e, "A SQL API answer's statement handles could not be read.");
            return Ok(None);
        }
    };
    if !core.gateway.issue_statements(core.id, &handles, owner) {
        return Err(());
    }
    Ok(handles.into_iter().next().filter(|h| is_query_id(h)))
}
