//! Statement governance at the proxy edge: the policy's decision on each statement, parked
//! statements and the driver's polls of them, masking of every answer that can carry rows, and
//! the sealed chunk grants that route chunk downloads through the gateway. The decisions are
//! the pure `policy` and `mask` modules'; this file wires them to requests and answers.
//!
//! - A query is classified off the core ([`crate::policy::worker::ClassifierPool`]), decided by
//!   the policy, and then refused (the rule's message), parked (code 333333 with a gateway
//!   `getResultUrl`), or forwarded with `MULTI_STATEMENT_COUNT` pinned to the statements found.
//! - A driver's poll of a parked statement is held up to `[approvals] poll_hold_ms` while it
//!   waits (drivers poll again at once, so this is what keeps them from storming), then runs
//!   it once approved, exactly as parked (text, bindings, identity), or refuses it.
//! - On the SQL API a parked statement is a gateway statement handle answered with 202: polls
//!   of it answer 202 while it waits, the first after approval runs it (with a new key-pair
//!   JWT), and later status, partition and cancel requests on it go to the statement it became.
//! - Answers are masked with every masking profile that can apply to the identity. A query
//!   answer's `chunks[].url` become gateway URLs holding a sealed grant (the original URL, its
//!   SSE-C headers, the session, an expiry, the column plan); `qrmk` and upstream
//!   `chunkHeaders` are dropped, and the answer's `chunkHeaders` make the driver present its
//!   own session token with each chunk download, which binds the grant to the session.

use std::collections::BTreeMap;
use std::sync::MutexGuard;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::handler::{
    Answer, Capture, admit, cut_at_char, pass_through, refuse, refuse_sql_api, send, session_expired, upstream_failed,
    upstream_session_headers,
};
use super::upstream::{self, UpstreamRequest, UpstreamResponse};
use super::{Core, unix_millis, unix_seconds};
use crate::http::gzip::{self, GunzipError};
use crate::http::{Method, RequestHead};
use crate::json::Unique;
use crate::mask::{AnswerOf, ColumnPlan, Envelope, MaskError, Masker, ResultFormat, rebuild_envelope};
use crate::policy::approvals::{Ledger, LedgerError, ParkRequest, PollState, RequestKey};
use crate::policy::model::Kind;
use crate::policy::parameters::plan_query_parameters;
use crate::policy::result_scan::{ScanTarget, may_scan_results};
use crate::policy::worker::{Classification, INLINE_BYTES_MAX, classify_inline};
use crate::policy::{DecidedBy, ReviewRequirement, Subject, VerdictAction};
use crate::record::{Decision, EventKind};
use crate::session::query::{parse_query_request, summarize_answer};
use crate::session::statements::Plans;
use crate::session::token::{SEALED_BYTES_MAX, TokenClaims, TokenKind};
use crate::session::{case_variant_key, codes, refusal_body, snowflake_authorization, snowflake_token};

/// Where chunk grants are served (see [`crate::session::Endpoint::Chunk`]).
pub const CHUNK_PATH: &str = "/snowgate/chunk/";
/// What chunk grants are sealed for (a session token never opens as a grant, nor the reverse).
const CHUNK_PURPOSE: &[u8] = b"snowgate-chunk-v1";
/// The longest a statement waits for the classifier pool (queue and classification).
const CLASSIFY_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often a held poll looks at the ledger.
const POLL_STEP: Duration = Duration::from_millis(50);
/// The SSE-C headers a `qrmk` becomes when fetching a chunk from cloud storage.
const SSE_C_ALGORITHM: &str = "x-amz-server-side-encryption-customer-algorithm";
const SSE_C_KEY: &str = "x-amz-server-side-encryption-customer-key";

/// The agent's session as a request presented it.
pub struct Session<'a> {
    /// The opened session token.
    pub claims: &'a TokenClaims,
    /// The sealed token itself (the agent's own; it goes back to it in `chunkHeaders`).
    pub token: &'a str,
}

/// What the gateway keeps to run a parked statement once approved: the request as it would
/// have gone upstream, minus the session's Snowflake token (taken from the approving poll).
#[derive(Debug, Clone)]
pub struct ParkedStatement {
    target: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Bytes,
    rule: String,
    profiles: Vec<String>,
    /// The Snowflake role set in `body` (SQL API statements; a driver session's is fixed).
    role: Option<String>,
}

impl ParkedStatement {
    /// Its size, counted against the ledger's `stored_bytes_max`.
    fn bytes(&self) -> usize {
        self.target.len() + self.body.len() + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }
}

/// The policy's answer for one request.
pub enum Decided {
    /// Forward it.
    Allow {
        /// Statements found (what `MULTI_STATEMENT_COUNT` is pinned to).
        statements: usize,
        /// Whether they are all `SHOW` or `DESCRIBE`, for column rules ([`AnswerOf`]).
        answer_of: AnswerOf,
    },
    /// Refuse it with this code and message.
    Refuse {
        /// The Snowflake-shaped code.
        code: &'static str,
        /// The message (the rule's, when a rule decided).
        message: String,
    },
    /// Park it for review.
    Review {
        /// Statements found.
        statements: usize,
        /// What approval needs.
        requirement: ReviewRequirement,
        /// The deciding rule.
        rule: String,
        /// The rule's message for the agent.
        message: String,
    },
}

fn rule_name(decided_by: &DecidedBy) -> String {
    match decided_by {
        DecidedBy::Rule { name, .. } => name.clone(),
        DecidedBy::Default => "default".into(),
        DecidedBy::UnknownStatement => "unclassified statement".into(),
        DecidedBy::Refusal { .. } => "unreadable request".into(),
        DecidedBy::StatementLimit { .. } => "statement limit".into(),
    }
}

fn ledger(core: &Core) -> MutexGuard<'_, Ledger<ParkedStatement>> {
    Ledger::lock(&core.gateway.ledger)
}

/// Records the parked statements that ended without a request of their agent's saying so
/// since the last report: a `review_timeout` event for each review or approval that ran out of
/// time, a `review_voided` one for each voided by another statement of its session (in this
/// core's chain), whoever caused or noticed it. The outcome is in the recording even when its
/// agent never polls again. Called as statements park or are voided, and once a second by
/// each core.
pub fn record_review_outcomes(core: &Core) {
    let outcomes = ledger(core).expire(unix_millis());
    if outcomes.is_empty() {
        return;
    }
    let recorded: Vec<bool> = outcomes
        .iter()
        .map(|outcome| {
            let detail = format!(
                "query_id={} sub={} session_id={} outcome={}",
                outcome.query_id,
                crate::record::detail_value(&outcome.key.sub),
                outcome.key.session_id,
                outcome.kind.name()
            );
            match core.recorder.submit_event(EventKind::Other(outcome.kind.event_name().into()), detail) {
                Ok(_) => true,
                Err(error) => {
                    warn!(core = core.id, query_id = %outcome.query_id, outcome = outcome.kind.name(), error = %error,
                        "A review's outcome could not be recorded; it is tried again in a second.");
                    false
                }
            }
        })
        .collect();
    let mut ledger = ledger(core);
    for (outcome, recorded) in outcomes.iter().zip(recorded) {
        ledger.outcome_recorded(&outcome.query_id, recorded);
    }
}

/// Classifies `text` off the core and decides it. A denial is noted in `capture`.
pub async fn decide(core: &Core, subject: &Subject, text: String, capture: &mut Capture) -> Decided {
    let policy = &core.gateway.config.policy;
    // What a statement that may read earlier results reads is found by its tokens, where it is
    // classified (the lexer tells LAST_QUERY_ID() from a variable).
    let reads_results = may_scan_results(&text);
    let classification = if text.len() <= INLINE_BYTES_MAX {
        classify_inline(&text, policy.limits(), reads_results)
    } else {
        // Bounded like every wait: behind a queue of large statements, it is refused instead.
        let classifying = core.gateway.classifier.classify(text, *policy.limits(), reads_results);
        match monoio::time::timeout(CLASSIFY_WAIT_MAX, classifying).await {
            Ok(classification) => classification,
            Err(_) => {
                warn!(core = core.id, "Classification did not finish in time; refusing the statement.");
                return Decided::Refuse {
                    code: codes::OVERLOADED,
                    message: "snowgate could not classify it in time (the classifier is busy); retry later".into(),
                };
            }
        }
    };
    let Classification { classified, results_read } = match classification {
        Ok(classification) => classification,
        Err(e) => {
            warn!(core = core.id, error = %e, "Classification failed; refusing the statement.");
            return Decided::Refuse {
                code: codes::OVERLOADED,
                message: format!("snowgate could not classify it: {e}"),
            };
        }
    };
    // A request the lexer refuses is refused by the classifier too, with its reason.
    if let Some(Ok(targets)) = results_read
        && let Some(refused) = check_result_targets(core, subject, targets)
    {
        capture.set_decision(Decision::Blocked { rule: "RESULT_SCAN of another identity's query".into() });
        return refused;
    }
    let verdict = policy.decide(subject, &classified);
    let rule = rule_name(&verdict.decided_by);
    let statements = classified.statement_count().max(1);
    let metadata_only = !classified.statements.is_empty()
        && classified.statements.iter().all(|statement| matches!(statement.kind, Kind::Show | Kind::Describe));
    let answer_of = if metadata_only { AnswerOf::Metadata } else { AnswerOf::Query };
    match verdict.action {
        VerdictAction::Allow => Decided::Allow { statements, answer_of },
        VerdictAction::Deny => {
            core.gateway.metrics.policy_denials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(core = core.id, sub = %subject.sub, rule = %rule, "Statement denied by policy.");
            capture.set_decision(Decision::Blocked { rule });
            Decided::Refuse { code: codes::POLICY_DENIED, message: verdict.agent_message().to_owned() }
        }
        VerdictAction::Review => match verdict.review.clone() {
            Some(requirement) => {
                Decided::Review { statements, requirement, rule, message: verdict.agent_message().to_owned() }
            }
            None => {
                capture.set_decision(Decision::Blocked { rule });
                Decided::Refuse { code: codes::POLICY_DENIED, message: verdict.agent_message().to_owned() }
            }
        },
    }
}

/// Refuses unless every result read (`RESULT_SCAN(…)`, `DESCRIBE RESULT …`) is this
/// identity's own or its session's last: every agent is the gateway's one Snowflake user, which
/// may read any of its queries' results, and a result that cannot be known before the
/// statement runs is refused.
fn check_result_targets(core: &Core, subject: &Subject, targets: Vec<ScanTarget>) -> Option<Decided> {
    let refuse = |code: &'static str, message: &str| Some(Decided::Refuse { code, message: message.to_owned() });
    for target in targets {
        match target {
            ScanTarget::LastQueryId => {}
            ScanTarget::QueryId(id) => {
                if core.gateway.statement_for(core.id, &id, subject.owner()).is_err() {
                    info!(core = core.id, sub = %subject.sub, "RESULT_SCAN of a query not answered to this identity.");
                    return refuse(
                        codes::STATEMENT_UNKNOWN,
                        "RESULT_SCAN of a query not answered to this identity through snowgate",
                    );
                }
            }
            ScanTarget::Unknown => {
                return refuse(
                    codes::POLICY_DENIED,
                    "RESULT_SCAN must name its query by id (a string) or LAST_QUERY_ID(): snowgate cannot tell whose result anything else reads",
                );
            }
        }
    }
    None
}

/// The query request keys whose meaning the gateway reads or sets.
const QUERY_REQUEST_KEYS: &[&str] =
    &["sqlText", "parameters", "bindings", "bindStage", "asyncExec", "describeOnly", "queryContextDTO"];

/// Why a query request's body is refused before the policy reads its statement.
struct BodyRefusal {
    code: &'static str,
    /// The rule recorded as the decision, when the refusal is the policy's.
    rule: Option<&'static str>,
    message: String,
}

/// The query request's body as the object it is forwarded from. Refused: a body the gateway
/// could read otherwise than the warehouse (a member named twice at any depth, a key it reads
/// spelled in another case), and bind values read from a stage (`bindStage`, the drivers' bulk
/// binding), which the gateway cannot classify, show reviewers or record.
fn read_query_object(body: &[u8]) -> Result<Map<String, Value>, BodyRefusal> {
    let request = Unique::object(body).map_err(|e| BodyRefusal {
        code: codes::BAD_REQUEST,
        rule: None,
        message: format!("the query request is refused: {e}"),
    })?;
    if let Some(key) = case_variant_key(&request, QUERY_REQUEST_KEYS) {
        return Err(BodyRefusal {
            code: codes::POLICY_DENIED,
            rule: Some("session parameters"),
            message: format!("the query request has a key {key:?} spelled unlike the driver's (the agent's request)"),
        });
    }
    if request.get("bindStage").is_some_and(|stage| !stage.is_null()) {
        return Err(BodyRefusal {
            code: codes::POLICY_DENIED,
            rule: Some("bind stage"),
            message: "bind values read from a stage (bindStage) do not pass through snowgate: it cannot check, \
                      show a reviewer or record them; bind the values in the request"
                .to_owned(),
        });
    }
    Ok(request)
}

/// Pins `MULTI_STATEMENT_COUNT` (and checks every other session parameter) in a query request
/// read by [`read_query_object`], and writes the body sent upstream.
fn pin_parameters(mut request: Map<String, Value>, statements: usize) -> Result<Bytes, String> {
    let plan = plan_query_parameters(request.get("parameters"), statements).map_err(|e| e.to_string())?;
    match request.entry("parameters").or_insert_with(|| Value::Object(Map::new())) {
        Value::Object(parameters) => plan.apply(parameters),
        _ => return Err("the query request's parameters are not an object".into()),
    }
    Ok(Bytes::from(serde_json::to_vec(&request).expect("a JSON map always serialises")))
}

/// The masking profiles for this session's answers.
pub fn profiles_for(core: &Core, claims: &TokenClaims) -> Vec<String> {
    let subject = Subject { sub: claims.sub.clone(), groups: claims.groups.clone() };
    core.gateway.config.policy.masking_profiles_for(&subject)
}

/// `POST /queries/v1/query-request`: decide, then refuse, park or forward and mask.
pub async fn query_request(
    core: &Core,
    head: &RequestHead,
    body: Bytes,
    capture: &mut Capture,
    session: &Session<'_>,
) -> Answer {
    let query = match parse_query_request(&body) {
        Ok(query) => query,
        Err(e) => return refuse(capture, codes::BAD_REQUEST, &e.to_string()),
    };
    capture.set_statement(query.sql_text.clone(), query.bindings.clone(), query.query_tag.clone());
    let request = match read_query_object(&body) {
        Ok(request) => request,
        Err(refusal) => {
            if let Some(rule) = refusal.rule {
                capture.set_decision(Decision::Blocked { rule: rule.into() });
            }
            return refuse(capture, refusal.code, &refusal.message);
        }
    };
    let claims = session.claims;
    let subject = Subject { sub: claims.sub.clone(), groups: claims.groups.clone() };
    let decided = decide(core, &subject, query.sql_text.clone(), capture).await;
    let statements = match &decided {
        Decided::Allow { statements, .. } | Decided::Review { statements, .. } => *statements,
        Decided::Refuse { code, message } => return refuse(capture, code, message),
    };
    let rewritten = match pin_parameters(request, statements) {
        Ok(rewritten) => rewritten,
        Err(message) => {
            capture.set_decision(Decision::Blocked { rule: "session parameters".into() });
            return refuse(capture, codes::POLICY_DENIED, &message);
        }
    };
    let answer_of = match &decided {
        Decided::Allow { answer_of, .. } => *answer_of,
        _ => AnswerOf::Query,
    };
    if let Decided::Review { requirement, rule, message, .. } = decided {
        let payload = ParkedStatement {
            target: head.target.clone(),
            headers: upstream::forwarded_headers(&head.headers, Vec::new()),
            body: rewritten,
            rule: rule.clone(),
            profiles: profiles_for(core, claims),
            role: None,
        };
        return park(core, capture, session, &query, payload, requirement, rule, &message);
    }
    // A describe-only request runs nothing.
    if !query.describe_only {
        void_parked_in_session(core, claims, None);
    }
    let forwarded = UpstreamRequest {
        method: Method::Post,
        target: head.target.clone(),
        headers: upstream_session_headers(head, claims),
        body: rewritten.clone(),
    };
    match send(core, &forwarded, rewritten, capture).await {
        Ok(response) => masked_answer(core, head, response, capture, session, &profiles_for(core, claims), answer_of),
        Err(answer) => answer,
    }
}

/// A statement is about to run in a session, and may change it (`USE`, `SET`, `ALTER
/// SESSION`, a temporary table, a procedure; even a `SELECT` changes `LAST_QUERY_ID()`): the
/// session's parked statements but `running` (the approved statement that is this one),
/// reviewed as the session was, will not run in it as it becomes ([`Ledger::void_session`]).
/// Costs nothing while no statement has been parked since the start.
fn void_parked_in_session(core: &Core, claims: &TokenClaims, running: Option<&str>) {
    let Some(session_id) = claims.session_id else { return };
    // Counted before an item enters the ledger (`enter_ledger`): never 0 while one is there.
    if core.gateway.metrics.parked.load(std::sync::atomic::Ordering::Acquire) == 0 {
        return;
    }
    let voided = ledger(core).void_session(&claims.sub, session_id, running, unix_millis());
    if voided > 0 {
        info!(core = core.id, sub = %claims.sub, voided, "Parked statements voided: their session changed.");
        record_review_outcomes(core);
    }
}

#[allow(clippy::too_many_arguments)]
fn park(
    core: &Core,
    capture: &mut Capture,
    session: &Session<'_>,
    query: &crate::session::query::QueryRequest,
    payload: ParkedStatement,
    requirement: ReviewRequirement,
    rule: String,
    message: &str,
) -> Answer {
    let claims = session.claims;
    // Parked, an asynchronous statement could never run: drivers follow it through its
    // monitoring status and read it with RESULT_SCAN, and Snowflake knows neither id.
    if query.async_exec {
        return refuse(
            capture,
            codes::REVIEW_UNSUPPORTED,
            "this statement needs a reviewer's approval, which asynchronous execution (asyncExec) cannot wait \
             for: run it synchronously, and the driver waits for the decision",
        );
    }
    let Some(request_id) = capture.request_id().map(str::to_owned) else {
        return refuse(capture, codes::BAD_REQUEST, "a statement that needs review must carry the driver's requestId");
    };
    // A parked statement is bound to its session: without Snowflake's id for it, every such
    // session of the agent would share one, and any of them could run the statement.
    let Some(session_id) = claims.session_id else {
        return refuse(
            capture,
            codes::REVIEW_UNSUPPORTED,
            "this statement needs a reviewer's approval, which the gateway can only bind to a Snowflake session \
             with an id (Snowflake's login answer gave none)",
        );
    };
    let key = RequestKey { sub: claims.sub.clone(), session_id, request_id };
    let subject = Subject { sub: claims.sub.clone(), groups: claims.groups.clone() };
    let statement = ForReview {
        text: query.sql_text.clone(),
        bindings: query.bindings.clone(),
        settings: query_request_settings(&payload.body, &claims.role),
    };
    match enter_ledger(core, capture, key, &subject, statement, requirement, rule, payload) {
        Ok(query_id) => in_progress(&query_id, query.async_exec, message),
        Err(e @ (LedgerError::RequestIdReused | LedgerError::BadRequestId)) => {
            refuse(capture, codes::BAD_REQUEST, &e.to_string())
        }
        Err(e) => refuse(capture, codes::REVIEW_FULL, &e.to_string()),
    }
}

/// What reviewers see of a statement besides its rule and its agent.
struct ForReview {
    text: String,
    bindings: Option<String>,
    /// The Snowflake role it runs as, and what else its request sets ([`sql_api_settings`]).
    settings: BTreeMap<String, String>,
}

/// The longest setting shown to reviewers, in bytes (a longer one is cut, marked `…`).
const SETTING_BYTES_MAX: usize = 256;

/// The most query parameters shown to reviewers one by one; past them, how many more.
const SHOWN_PARAMETERS_MAX: usize = 32;

/// A setting's value as reviewers see it: strings as they are, other JSON as written, cut
/// by [`cut_setting`].
fn shown_setting(value: &Value) -> String {
    match value {
        Value::String(text) => cut_setting(text),
        other => cut_setting(&other.to_string()),
    }
}

/// `text` cut at [`SETTING_BYTES_MAX`], marked `…` when it was.
fn cut_setting(text: &str) -> String {
    if text.len() > SETTING_BYTES_MAX {
        format!("{}…", cut_at_char(text, SETTING_BYTES_MAX))
    } else {
        text.to_owned()
    }
}

/// What a driver's query request (as it would go upstream, its parameters pinned) sets besides
/// its text, for reviewers: the role it runs as, and each of its `parameters` (`QUERY_TAG`,
/// `MULTI_STATEMENT_COUNT`, formats, time zones...) as `parameters.NAME`.
fn query_request_settings(body: &[u8], role: &str) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::from([("role".to_owned(), role.to_owned())]);
    if let Ok(document) = serde_json::from_slice::<Map<String, Value>>(body) {
        insert_parameters(&mut settings, &document);
    }
    settings
}

/// Adds a request body's `parameters` members to `settings`, as `parameters.NAME`.
fn insert_parameters(settings: &mut BTreeMap<String, String>, document: &Map<String, Value>) {
    let Some(Value::Object(parameters)) = document.get("parameters") else { return };
    for (name, value) in parameters.iter().take(SHOWN_PARAMETERS_MAX) {
        settings.insert(format!("parameters.{}", cut_setting(name)), shown_setting(value));
    }
    if parameters.len() > SHOWN_PARAMETERS_MAX {
        settings.insert("parameters.…".to_owned(), format!("{} more", parameters.len() - SHOWN_PARAMETERS_MAX));
    }
}

/// What a SQL API body (as it would go upstream) sets besides its text, for reviewers: the
/// role it runs as, the body's database, schema, warehouse and timeout when given, and its
/// `parameters`.
fn sql_api_settings(body: &[u8], role: &str) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::from([("role".to_owned(), role.to_owned())]);
    let Ok(document) = serde_json::from_slice::<Map<String, Value>>(body) else { return settings };
    for field in ["database", "schema", "warehouse", "timeout"] {
        let value = match document.get(field) {
            Some(value @ (Value::String(_) | Value::Number(_))) => shown_setting(value),
            _ => continue,
        };
        settings.insert(field.to_owned(), value);
    }
    insert_parameters(&mut settings, &document);
    settings
}

/// Parks a statement (either protocol) and notes it in `capture`; returns its gateway id.
/// The id is the gateway's own, made for this agent: it is entered in the statement books,
/// so the agent's polls, monitoring, abort and cancel requests may name it.
#[allow(clippy::too_many_arguments)]
fn enter_ledger(
    core: &Core,
    capture: &mut Capture,
    key: RequestKey,
    subject: &Subject,
    statement: ForReview,
    requirement: ReviewRequirement,
    rule: String,
    payload: ParkedStatement,
) -> Result<String, LedgerError> {
    let request = ParkRequest {
        key,
        agent_groups: subject.groups.clone(),
        statement_text: statement.text,
        bindings: statement.bindings,
        settings: statement.settings,
        agent_context: capture.agent_context().map(str::to_owned),
        requirement,
        rule_name: Some(rule.clone()),
        payload_bytes: payload.bytes(),
        payload,
    };
    record_review_outcomes(core);
    // Counted before the item is in the ledger, so a statement of its session running on
    // another core meanwhile sees it (`void_parked_in_session`); taken back if none was made.
    let parked_count = &core.gateway.metrics.parked;
    parked_count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let parked = ledger(core).park(request, unix_millis());
    if !parked.as_ref().is_ok_and(|parked| parked.created) {
        parked_count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
    let parked = parked?;
    capture.set_decision(Decision::Parked { rule: rule.clone() });
    capture.set_query_id(parked.query_id.clone());
    core.gateway.issue_statements(core.id, std::slice::from_ref(&parked.query_id), subject.owner());
    if parked.created {
        info!(core = core.id, sub = %subject.sub, rule = %rule, query_id = %parked.query_id, "Statement parked for review.");
    }
    Ok(parked.query_id)
}

/// The "still running" answer drivers poll on: 333333 (333334 for `asyncExec`).
fn in_progress(query_id: &str, async_exec: bool, message: &str) -> Answer {
    let code = if async_exec { codes::QUERY_IN_PROGRESS_ASYNC } else { codes::QUERY_IN_PROGRESS };
    let body = serde_json::json!({
        "data": {
            "queryId": query_id,
            "getResultUrl": format!("/queries/{query_id}/result"),
            "queryAbortsAfterSecs": 300,
            "progressDesc": null,
        },
        "code": code,
        "message": message,
        "success": true,
        "headers": null,
    });
    Answer::own(200, Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises")))
}

/// A poll of `query_id`: `None` when it is not a statement parked by this session (the poll
/// then goes to Snowflake), else the answer: still waiting (after holding the poll), the
/// approved statement's result, or the refusal. An approval that comes while the poll is held
/// answers "still running" at once: the statement runs on the driver's next poll, which shows
/// the driver is still there (a held poll does not watch its connection, and a driver that
/// gave up may be gone).
pub async fn poll_parked(
    core: &Core,
    head: &RequestHead,
    query_id: &str,
    capture: &mut Capture,
    session: &Session<'_>,
) -> Option<Answer> {
    let claims = session.claims;
    // Statements are parked only on sessions with an id (`park`).
    let session_id = claims.session_id?;
    let hold_until = std::time::Instant::now() + core.gateway.config.approvals.poll_hold;
    let mut held = false;
    loop {
        // The session may expire while the poll is held: nothing runs or answers past it.
        let now = unix_millis();
        if claims.expires_at_unix_ms <= now {
            return Some(session_expired(capture));
        }
        let state = ledger(core).poll(query_id, &claims.sub, session_id, now);
        return Some(match state {
            Err(LedgerError::NotFound) => return None,
            Err(e) => refuse(capture, codes::BAD_REQUEST, &e.to_string()),
            Ok(PollState::Pending { .. } | PollState::Running) => {
                if std::time::Instant::now() < hold_until && !core.gateway.is_draining() {
                    monoio::time::sleep(POLL_STEP).await;
                    held = true;
                    continue;
                }
                in_progress(query_id, false, "This statement is waiting for a reviewer's approval.")
            }
            Ok(PollState::Approved) if held => in_progress(query_id, false, "This statement was approved."),
            Ok(PollState::Approved) => run_approved(core, head, query_id, capture, session).await,
            Ok(PollState::Finished { upstream_query_id: Some(upstream_id) }) => {
                let forwarded = UpstreamRequest {
                    method: Method::Get,
                    target: format!("/queries/{upstream_id}/result"),
                    headers: upstream_session_headers(head, claims),
                    body: Bytes::new(),
                };
                match send(core, &forwarded, Bytes::new(), capture).await {
                    Ok(response) => masked_answer(
                        core,
                        head,
                        response,
                        capture,
                        session,
                        &profiles_for(core, claims),
                        AnswerOf::Query,
                    ),
                    Err(answer) => answer,
                }
            }
            Ok(PollState::Finished { upstream_query_id: None }) => refuse(
                capture,
                codes::UPSTREAM_INVALID,
                "the approved statement was sent to Snowflake, which gave no query id to fetch its result by \
                 (it may have run)",
            ),
            Ok(PollState::Denied { reason }) => {
                capture.set_decision(Decision::Blocked { rule: "review".into() });
                refuse(capture, codes::REVIEW_DENIED, &format!("A reviewer denied this statement: {reason}"))
            }
            Ok(PollState::TimedOut) => {
                capture.set_decision(Decision::Blocked { rule: "review".into() });
                refuse(capture, codes::REVIEW_TIMED_OUT, REVIEW_TIMED_OUT_MESSAGE)
            }
            Ok(PollState::Withdrawn) => refuse(capture, codes::QUERY_CANCELLED, WITHDRAWN_MESSAGE),
            Ok(PollState::Voided) => {
                capture.set_decision(Decision::Blocked { rule: "review".into() });
                refuse(capture, codes::POLICY_DENIED, VOIDED_MESSAGE)
            }
        });
    }
}

const REVIEW_TIMED_OUT_MESSAGE: &str = "The review of this statement timed out (no approval in time, or an approval not taken up in time); it was not run.";

const WITHDRAWN_MESSAGE: &str = "SQL execution canceled";

const VOIDED_MESSAGE: &str = "Another statement (which may change the session: USE, SET, ALTER SESSION, even \
     LAST_QUERY_ID) ran in this session after this one was parked, so it did not run: its review covered the session \
     as it was. Send it again to have it reviewed as the session is now.";

/// What becomes of a driver's abort of a statement parked by its session.
pub enum ParkedAbort {
    /// Answered here: withdrawn before it ran, or refused.
    Answered(Answer),
    /// The approved statement ran under `upstream_id`, Snowflake's id for it, which the abort
    /// names upstream instead of the gateway's.
    Upstream {
        /// Snowflake's query id.
        upstream_id: String,
    },
}

/// A driver's abort of a statement parked by this session, named by the gateway's id
/// (`query_id`, from `POST /queries/<id>/abort-request`) or by the driver's `requestId` in the
/// body (`POST /queries/v1/abort-request`): a statement not yet run is withdrawn, and will not
/// run whatever the reviewers do. `None` when no such statement is parked, or, named by its
/// `requestId`, it is already on its way to Snowflake (the abort goes upstream, where the
/// `requestId` names it too). Named by the gateway's id once approved, it is aborted upstream
/// by Snowflake's id, or refused while that id is not known yet (Snowflake knows nothing of the
/// gateway's: forwarded as it is, the abort would stop nothing).
pub fn abort_parked(
    core: &Core,
    query_id: Option<&str>,
    body: &[u8],
    capture: &mut Capture,
    session: &Session<'_>,
) -> Option<ParkedAbort> {
    let by_gateway_id = query_id.is_some();
    let claims = session.claims;
    let session_id = claims.session_id?;
    let now = unix_millis();
    let (query_id, state) = match query_id {
        Some(query_id) => {
            let state = ledger(core).withdraw(query_id, &claims.sub, session_id, now).ok()?;
            (query_id.to_owned(), state)
        }
        None => {
            // Read for its one member: the others are skipped, not built (an inflated body may
            // be a statement's size, and a tree of it many times that).
            #[derive(serde::Deserialize)]
            struct AbortRequest<'a> {
                #[serde(rename = "requestId", borrow)]
                request_id: Option<std::borrow::Cow<'a, str>>,
            }
            let request_id = serde_json::from_slice::<AbortRequest<'_>>(body).ok()?.request_id?.into_owned();
            let key = RequestKey { sub: claims.sub.clone(), session_id, request_id };
            ledger(core).withdraw_request(&key, now)?
        }
    };
    match state {
        PollState::Running | PollState::Finished { .. } if !by_gateway_id => return None,
        PollState::Finished { upstream_query_id: Some(upstream_id) } if crate::session::is_query_id(&upstream_id) => {
            return Some(ParkedAbort::Upstream { upstream_id });
        }
        PollState::Finished { .. } => {
            let message = "the approved statement was sent to Snowflake, which gave no query id to abort it by \
                           (abort it by its requestId)";
            return Some(ParkedAbort::Answered(refuse(capture, codes::UPSTREAM_INVALID, message)));
        }
        PollState::Running => {
            let message = "the approved statement is on its way to Snowflake, which has not named it yet: abort it \
                           again in a moment, or by its requestId";
            return Some(ParkedAbort::Answered(refuse(capture, codes::REVIEW_UNSUPPORTED, message)));
        }
        _ => {}
    }
    capture.set_query_id(query_id.clone());
    if state == PollState::Withdrawn {
        info!(core = core.id, sub = %claims.sub, query_id = %query_id, "Parked statement withdrawn by its agent.");
    }
    let body = serde_json::json!({"data": {}, "code": null, "message": null, "success": true});
    Some(ParkedAbort::Answered(Answer::own(
        200,
        Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises")),
    )))
}

/// Snowflake's id for a statement this session parked, once it ran: a status asked for by the
/// gateway's id is asked for upstream by Snowflake's. `None` when `query_id` is not one this
/// session parked, or it has not run (Snowflake knows nothing of it then either).
pub fn parked_upstream_id(core: &Core, query_id: &str, session: &Session<'_>) -> Option<String> {
    let claims = session.claims;
    let session_id = claims.session_id?;
    match ledger(core).poll(query_id, &claims.sub, session_id, unix_millis()) {
        Ok(PollState::Finished { upstream_query_id: Some(id) }) if crate::session::is_query_id(&id) => Some(id),
        _ => None,
    }
}

/// Runs an approved statement exactly as it was parked, with this session's Snowflake token.
async fn run_approved(
    core: &Core,
    head: &RequestHead,
    query_id: &str,
    capture: &mut Capture,
    session: &Session<'_>,
) -> Answer {
    let claims = session.claims;
    let taken = ledger(core).take_approved(query_id, &claims.sub, claims.session_id.unwrap_or(0), unix_millis());
    let approved = match taken {
        Ok(approved) => approved,
        // Another poll took it a moment ago and is running it.
        Err(LedgerError::NotApproved(_)) => {
            return in_progress(query_id, false, "This statement was approved and is running.");
        }
        Err(e) => return refuse(capture, codes::BAD_REQUEST, &e.to_string()),
    };
    // It runs in the session now: what else the session parked was reviewed as it was.
    void_parked_in_session(core, claims, Some(query_id));
    let approvers: Vec<&str> = approved.approvals.iter().map(|a| a.reviewer.as_str()).collect();
    let payload = approved.payload;
    capture.set_statement(approved.statement_text.clone(), approved.bindings.clone(), None);
    capture.set_decision(Decision::Approved { rule: payload.rule.clone(), approver: approvers.join(",") });
    info!(core = core.id, sub = %claims.sub, query_id, approvers = %approvers.join(","), "Approved statement running.");
    let mut headers = payload.headers.clone();
    headers.push((b"authorization".to_vec(), snowflake_authorization(&claims.upstream_token).into_bytes()));
    let forwarded =
        UpstreamRequest { method: Method::Post, target: payload.target.clone(), headers, body: payload.body.clone() };
    let result = send(core, &forwarded, payload.body.clone(), capture).await;
    let summary = result.as_ref().ok().and_then(|r| summarize_answer(&r.body));
    // Snowflake runs nothing on an expired session token: the driver renews on this answer
    // and polls again, and the statement runs then.
    let expired = summary.as_ref().is_some_and(|s| !s.success && s.code.as_deref() == Some(codes::SESSION_EXPIRED));
    // Spliced into the paths its result and abort are asked for by: only an id of Snowflake's shape.
    let upstream_id = summary.and_then(|s| s.query_id).filter(|id| crate::session::is_query_id(id));
    end_run(core, query_id, capture, &payload, upstream_id, expired);
    match result {
        Ok(response) => masked_answer(core, head, response, capture, session, &payload.profiles, AnswerOf::Query),
        Err(answer) => answer,
    }
}

/// Ends the run of an approved statement in the ledger: when it did not run (its request could
/// not be recorded, no connection to the upstream could be made, or the upstream `refused` it
/// unrun) it is handed back, approved, for the next poll; else it is finished, with the
/// statement's id upstream when the answer named one.
fn end_run(
    core: &Core,
    query_id: &str,
    capture: &Capture,
    payload: &ParkedStatement,
    upstream_id: Option<String>,
    refused: bool,
) {
    let mut ledger = ledger(core);
    let ended = if capture.was_admitted() && !capture.unreached && !refused {
        ledger.finish(query_id, upstream_id, unix_millis())
    } else {
        ledger.unrun(query_id, payload.clone(), unix_millis())
    };
    if let Err(e) = ended {
        warn!(core = core.id, query_id, error = %e, "The ledger did not take the approved statement's end.");
    }
}

/// The ledger's session for statements parked through the SQL API, which has no Snowflake
/// session (driver sessions are Snowflake's, positive, or the gateway's own, below -1): a
/// driver session never polls one, nor the reverse.
const SQL_API_SESSION: i64 = -1;

/// Parks a SQL API statement that needs review: `body` is the statement as it would go
/// upstream (parameters pinned, `role` set), `headers` the request's forwarded headers. The
/// agent gets the SQL API's 202 with a gateway statement handle to poll.
#[allow(clippy::too_many_arguments)]
pub fn park_sql_api(
    core: &Core,
    target: &str,
    capture: &mut Capture,
    subject: &Subject,
    role: &str,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Bytes,
    review: (ReviewRequirement, String, String),
) -> Answer {
    let (requirement, rule, message) = review;
    // The SQL API's `requestId` makes a retried submit find its parked statement again;
    // without one, every submit is a statement of its own.
    let request_id = capture.request_id().map_or_else(|| uuid::Uuid::new_v4().hyphenated().to_string(), str::to_owned);
    let statement = ForReview {
        text: capture.sql_text().unwrap_or_default().to_owned(),
        bindings: capture.bindings().map(str::to_owned),
        settings: sql_api_settings(&body, role),
    };
    let payload = ParkedStatement {
        target: target.to_owned(),
        headers,
        body,
        rule: rule.clone(),
        profiles: core.gateway.config.policy.masking_profiles_for(subject),
        role: Some(role.to_owned()),
    };
    let key = RequestKey { sub: subject.sub.clone(), session_id: SQL_API_SESSION, request_id };
    match enter_ledger(core, capture, key, subject, statement, requirement, rule, payload) {
        Ok(handle) => sql_api_in_progress(&handle, &message),
        Err(e @ (LedgerError::RequestIdReused | LedgerError::BadRequestId)) => {
            refuse_sql_api(capture, 422, codes::BAD_REQUEST, &e.to_string())
        }
        Err(e) => refuse_sql_api(capture, 429, codes::REVIEW_FULL, &e.to_string()),
    }
}

/// The SQL API's 202 QueryStatus for a statement still waiting (or running).
fn sql_api_in_progress(handle: &str, message: &str) -> Answer {
    let body = serde_json::json!({
        "code": codes::QUERY_IN_PROGRESS_ASYNC,
        "message": message,
        "statementHandle": handle,
        "statementStatusUrl": format!("/api/v2/statements/{handle}"),
    });
    Answer::own(202, Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises")))
}

const APPROVED_AND_RUNNING: &str = "This statement was approved and is running.";

/// What a SQL API status or cancel request naming a handle found in the ledger.
pub enum ParkedSqlApi {
    /// Not a statement parked for this identity: the handle is Snowflake's (or unknown).
    NotParked,
    /// The answer: still waiting, the approved statement's first answer, or the refusal.
    Answer(Answer),
    /// Approved and run: the request is about Snowflake's statement with this handle.
    Ran(String),
}

/// Who asks about a parked SQL API statement, as the request's token says now.
pub struct SqlApiAsker<'a> {
    /// The identity.
    pub subject: &'a Subject,
    /// The role its groups map to.
    pub role: &'a str,
    /// The masking profiles that apply to it.
    pub profiles: &'a [String],
}

/// A SQL API status poll (`cancel` false) or cancel of `handle`, when it is a statement parked
/// for this identity. The first poll after approval runs it, exactly as parked, with a new
/// key-pair JWT; later requests are about the statement it became.
pub async fn parked_sql_api(
    core: &Core,
    handle: &str,
    cancel: bool,
    capture: &mut Capture,
    asker: &SqlApiAsker<'_>,
    jwt: impl FnOnce() -> String,
) -> ParkedSqlApi {
    let state = if cancel {
        // A statement not yet run is withdrawn, and answered as cancelled.
        ledger(core).withdraw(handle, &asker.subject.sub, SQL_API_SESSION, unix_millis())
    } else {
        ledger(core).poll(handle, &asker.subject.sub, SQL_API_SESSION, unix_millis())
    };
    let answer = match state {
        Err(LedgerError::NotFound) => return ParkedSqlApi::NotParked,
        Err(e) => refuse_sql_api(capture, 422, codes::BAD_REQUEST, &e.to_string()),
        Ok(PollState::Finished { upstream_query_id: Some(upstream) }) => return ParkedSqlApi::Ran(upstream),
        Ok(PollState::Withdrawn) if cancel => {
            info!(core = core.id, sub = %asker.subject.sub, query_id = handle, "Parked statement withdrawn by its agent.");
            let body = serde_json::json!({
                "code": codes::QUERY_CANCELLED,
                "sqlState": "57014",
                "message": WITHDRAWN_MESSAGE,
                "statementHandle": handle,
                "statementStatusUrl": format!("/api/v2/statements/{handle}"),
            });
            Answer::own(200, Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises")))
        }
        Ok(PollState::Withdrawn) => refuse_sql_api(capture, 422, codes::QUERY_CANCELLED, WITHDRAWN_MESSAGE),
        Ok(PollState::Voided) => refuse_sql_api(capture, 422, codes::POLICY_DENIED, VOIDED_MESSAGE),
        Ok(PollState::Running) if cancel => refuse_sql_api(
            capture,
            422,
            codes::REVIEW_UNSUPPORTED,
            "this approved statement is on its way to Snowflake and cannot be cancelled until it has a handle \
             there: poll it, then cancel that",
        ),
        Ok(PollState::Pending { .. }) => {
            sql_api_in_progress(handle, "This statement is waiting for a reviewer's approval.")
        }
        Ok(PollState::Running) => sql_api_in_progress(handle, APPROVED_AND_RUNNING),
        Ok(PollState::Approved) => {
            return ParkedSqlApi::Answer(run_approved_sql_api(core, handle, capture, asker, jwt).await);
        }
        Ok(PollState::Finished { upstream_query_id: None }) => refuse_sql_api(
            capture,
            422,
            codes::UPSTREAM_INVALID,
            "the approved statement was sent to Snowflake, but no answer naming its statement came back \
             (it may have run); submit it again to have it reviewed again",
        ),
        Ok(PollState::Denied { reason }) => {
            capture.set_decision(Decision::Blocked { rule: "review".into() });
            refuse_sql_api(capture, 422, codes::REVIEW_DENIED, &format!("A reviewer denied this statement: {reason}"))
        }
        Ok(PollState::TimedOut) => {
            capture.set_decision(Decision::Blocked { rule: "review".into() });
            refuse_sql_api(capture, 422, codes::REVIEW_TIMED_OUT, REVIEW_TIMED_OUT_MESSAGE)
        }
    };
    ParkedSqlApi::Answer(answer)
}

/// Runs an approved SQL API statement exactly as it was parked and answers with Snowflake's
/// answer, masked with the profiles of the time it was parked. It runs only while the asker's
/// role and masking profiles are still those it was parked with (a SQL API identity is read
/// from each request's token, and may have changed since).
async fn run_approved_sql_api(
    core: &Core,
    handle: &str,
    capture: &mut Capture,
    asker: &SqlApiAsker<'_>,
    jwt: impl FnOnce() -> String,
) -> Answer {
    let sub = &asker.subject.sub;
    let taken = ledger(core).take_approved(handle, sub, SQL_API_SESSION, unix_millis());
    let approved = match taken {
        Ok(approved) => approved,
        // Another poll took it a moment ago and is running it.
        Err(LedgerError::NotApproved(_)) => return sql_api_in_progress(handle, APPROVED_AND_RUNNING),
        Err(e) => return refuse_sql_api(capture, 422, codes::BAD_REQUEST, &e.to_string()),
    };
    let payload = approved.payload;
    if payload.role.as_deref() != Some(asker.role) || payload.profiles != asker.profiles {
        if let Err(e) = ledger(core).unrun(handle, payload, unix_millis()) {
            warn!(core = core.id, query_id = handle, error = %e, "The ledger did not take back an approved statement.");
        }
        return refuse_sql_api(
            capture,
            422,
            codes::POLICY_DENIED,
            "this identity's Snowflake role or masking profiles changed since the statement was parked; \
             it runs only as it was reviewed (submit it again to have it reviewed as you are now)",
        );
    }
    let approvers: Vec<&str> = approved.approvals.iter().map(|a| a.reviewer.as_str()).collect();
    capture.set_statement(approved.statement_text.clone(), approved.bindings.clone(), None);
    capture.set_decision(Decision::Approved { rule: payload.rule.clone(), approver: approvers.join(",") });
    info!(core = core.id, sub = %sub, query_id = handle, approvers = %approvers.join(","), "Approved SQL API statement running.");
    let mut headers = payload.headers.clone();
    headers.push((b"authorization".to_vec(), format!("Bearer {}", jwt()).into_bytes()));
    let forwarded =
        UpstreamRequest { method: Method::Post, target: payload.target.clone(), headers, body: payload.body.clone() };
    let result = send(core, &forwarded, payload.body.clone(), capture).await;
    let upstream_handle = result
        .as_ref()
        .ok()
        .and_then(|r| crate::mask::statement_handles(&r.body).ok())
        .and_then(|handles| handles.into_iter().next())
        .filter(|h| crate::session::is_query_id(h));
    end_run(core, handle, capture, &payload, upstream_handle, false);
    match result {
        Ok(response) => {
            super::handler::sql_api_answer(core, response, capture, asker.subject, &payload.profiles, None, false)
        }
        Err(answer) => answer,
    }
}

/// Why an answer is withheld from the agent.
enum Withheld {
    /// The masker could not read or rewrite it; the reason is logged, not told.
    Unmaskable(String),
    /// For a reason the agent is told: its chunks could not be fetched through the gateway,
    /// it would give the agent a stage's files unmasked.
    Told(String),
}

impl From<String> for Withheld {
    fn from(reason: String) -> Withheld {
        Withheld::Unmaskable(reason)
    }
}

/// What the `chunkHeaders` member [`rebuild_envelope`] adds takes besides its `Authorization`
/// value: the key, the field's name, quotes, braces and commas.
const CHUNK_HEADERS_MEMBER_BYTES: usize = 64;

/// What an agent under masking is told of a `GET` or `PUT` whose answer was withheld.
const STAGE_ACCESS_MESSAGE: &str = "snowgate withheld this answer: it would give direct access to a stage (GET, PUT), \
     whose files would move between the driver and the cloud without being masked or recorded";

/// An answer withheld, as a refusal in the shape of the API asked.
fn withhold(core: &Core, capture: &mut Capture, withheld: Withheld) -> Answer {
    match withheld {
        Withheld::Unmaskable(reason) => masking_failed(core, capture, &reason),
        Withheld::Told(message) => {
            warn!(core = core.id, reason = %message, "Withholding an answer the agent is told about.");
            withheld_answer(capture, &message)
        }
    }
}

/// An answer the masker could not read, withheld: a refusal in the shape of the API asked.
fn masking_failed(core: &Core, capture: &mut Capture, reason: &str) -> Answer {
    warn!(core = core.id, reason, sql_api = capture.is_sql_api(), "An answer could not be masked; withholding it.");
    withheld_answer(capture, "snowgate could not mask this answer, so it withheld it")
}

/// The refusal standing for a withheld answer, in the shape of the API asked.
fn withheld_answer(capture: &mut Capture, message: &str) -> Answer {
    if capture.is_sql_api() {
        refuse_sql_api(capture, 502, codes::MASKING_FAILED, message)
    } else {
        refuse(capture, codes::MASKING_FAILED, message)
    }
}

/// A query answer or result poll, masked, its chunks routed through the gateway.
pub fn masked_answer(
    core: &Core,
    head: &RequestHead,
    response: UpstreamResponse,
    capture: &mut Capture,
    session: &Session<'_>,
    profiles: &[String],
    answer_of: AnswerOf,
) -> Answer {
    // A success other than 200 (a 206 of part of a body, say) is not an answer the masker
    // can read whole: withheld, never passed on.
    if !profiles.is_empty() && (200..300).contains(&response.status) && response.status != 200 {
        return masking_failed(core, capture, &format!("an answer with status {}", response.status));
    }
    if profiles.is_empty() || (response.status != 200 && response.body.trim_ascii().is_empty()) {
        return pass_through(response);
    }
    if response.status != 200 && !json_object(&response.body) {
        let status = response.status;
        capture.refuse_code(codes::UPSTREAM_INVALID);
        return Answer::own(status, refusal_body(codes::UPSTREAM_INVALID, &unreadable_error_message(status)));
    }
    if response.status != 200 {
        return masked_error(core, response, capture, profiles);
    }
    match mask_result(core, response.body.clone(), profiles, &[], Some((head, session)), answer_of) {
        Ok(Masked { body, recorded, .. }) => {
            if let Some(recorded) = recorded {
                capture.record_in_place_of(&body, recorded);
            }
            Answer::upstream(response.status, response.headers, body)
        }
        Err(withheld) => withhold(core, capture, withheld),
    }
}

/// A SQL API answer, masked, and the plans made from its row type (none without one). A later
/// partition has no row type: it is masked by `known`, the plans kept from its partition 0,
/// and withheld when there are none.
pub fn masked_sql_api(
    core: &Core,
    response: UpstreamResponse,
    capture: &mut Capture,
    profiles: &[String],
    known: &[(String, ColumnPlan)],
) -> (Answer, Plans) {
    let error = !(200..300).contains(&response.status);
    if profiles.is_empty() || (error && response.body.trim_ascii().is_empty()) {
        return (pass_through(response), Vec::new());
    }
    if error && !json_object(&response.body) {
        let status = response.status;
        return (
            refuse_sql_api(capture, status, codes::UPSTREAM_INVALID, &unreadable_error_message(status)),
            Vec::new(),
        );
    }
    if !(200..300).contains(&response.status) {
        return (masked_error(core, response, capture, profiles), Vec::new());
    }
    match mask_result(core, response.body.clone(), profiles, known, None, AnswerOf::Query) {
        Ok(Masked { body, plans, .. }) => {
            let answer = Answer::upstream(response.status, response.headers, body);
            (answer, plans)
        }
        Err(withheld) => (withhold(core, capture, withheld), Vec::new()),
    }
}

/// What the agent is told of an error answer whose body the masker cannot read (not JSON: a
/// load balancer's page, say): under masking its status reaches the agent, its body does not.
fn unreadable_error_message(status: u16) -> String {
    format!(
        "Snowflake answered with HTTP status {status} and a body that is not JSON; under masking snowgate does not pass it on"
    )
}

/// Whether `body` starts like a JSON object (an error answer the masker reads), rather than a
/// load balancer's page or nothing.
fn json_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

/// An error answer (a status other than success) in JSON: its message may quote a value
/// ("Numeric value '…' is not recognized"), so it is masked like any answer; one the masker
/// cannot read is withheld, as any answer would be.
fn masked_error(core: &Core, response: UpstreamResponse, capture: &mut Capture, profiles: &[String]) -> Answer {
    match mask_result(core, response.body.clone(), profiles, &[], None, AnswerOf::Query) {
        Ok(Masked { body, .. }) => Answer::upstream(response.status, response.headers, body),
        Err(withheld) => withhold(core, capture, withheld),
    }
}

fn mutable(body: Bytes) -> BytesMut {
    body.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

/// Masks `body` in place with every profile of `profiles` (merged into one when there are
/// several, named by `Masker::set_name`; by the plan in `given` under that name where the body
/// has no row type); rewrites chunk URLs when `chunks` gives the request and session to bind
/// them to (without it, an answer with chunks is refused). Returns the body and the plan, under
/// the set's name.
fn mask_result(
    core: &Core,
    body: Bytes,
    profiles: &[String],
    given: &[(String, ColumnPlan)],
    chunks: Option<(&RequestHead, &Session<'_>)>,
    answer_of: AnswerOf,
) -> Result<Masked, Withheld> {
    let mut buffer = mutable(body);
    let masker = &core.gateway.config.masker;
    let mut plans: Vec<(String, ColumnPlan)> = Vec::with_capacity(1);
    let mut envelope: Option<Envelope> = None;
    // One pass with every profile at once (merged when there are several): a pass per profile
    // would let one hide from the next what that one masks more strongly.
    if !profiles.is_empty() {
        let name = Masker::set_name(profiles);
        let profile = masker.profile(&name).ok_or_else(|| format!("no masking profile {name:?}"))?;
        let plan = given.iter().find(|(of, _)| *of == name).map(|(_, plan)| plan);
        let masked = masker.mask_answer_of(profile, &mut buffer, plan, &mut core.scratch.borrow_mut(), answer_of);
        let masked = masked.map_err(|e| match e {
            MaskError::StageAccess => Withheld::Told(STAGE_ACCESS_MESSAGE.into()),
            other => Withheld::Unmaskable(other.to_string()),
        })?;
        let values_masked = masked.report.values_masked;
        core.gateway.metrics.values_masked.fetch_add(values_masked, std::sync::atomic::Ordering::Relaxed);
        plans.extend(masked.plan.map(|plan| (name, plan)));
        envelope = masked.envelope;
    }
    let Some(envelope) = envelope.filter(|e| !e.chunks.is_empty() || e.qrmk.is_some() || !e.chunk_headers.is_empty())
    else {
        return Ok(Masked { body: buffer.freeze(), plans, recorded: None });
    };
    let Some((head, session)) = chunks else {
        return Err(Withheld::Unmaskable("an answer with chunks where none are expected".into()));
    };
    let encoded: Vec<(String, String)> =
        plans.iter().map(|(name, plan)| (name.clone(), BASE64.encode(plan.encode()))).collect();
    let authorization = format!("Snowflake Token=\"{}\"", session.token);
    // A driver fetches each chunk with its URL and these headers: a head the gateway would
    // refuse (431) is refused now, with the reason, instead of failing every chunk fetch.
    let head_bytes_max = core.gateway.config.limits.head_bytes_max;
    // Each chunk's URL is longer than the upstream's (a sealed grant carrying the plan): the
    // answer rebuilt with them is held to the cap of a decompressed body, counted as the URLs
    // are made, so a result of very many chunks is refused before it takes that much memory.
    let answer_bytes_max = core.gateway.config.limits.decompressed_bytes_max;
    // Counted with the upstream's URLs and keys still in (which the rebuild drops), plus the
    // `chunkHeaders` it adds: never under the answer's size.
    let mut answer_bytes = buffer.len() + authorization.len() + CHUNK_HEADERS_MEMBER_BYTES;
    let urls = envelope
        .chunks
        .iter()
        .map(|chunk| {
            let url = grant_url(core, head, &chunk.url, &envelope, session, &encoded)?;
            let fetch_head = url.len() + authorization.len() + CHUNK_FETCH_HEAD_ROOM;
            if fetch_head > head_bytes_max {
                return Err(Withheld::Told(format!(
                    "the result's chunk downloads would need request heads of about {fetch_head} bytes, more than \
                     [limits] head_bytes_max ({head_bytes_max}) lets through; select fewer columns or raise it"
                )));
            }
            answer_bytes = answer_bytes.saturating_add(url.len());
            if answer_bytes > answer_bytes_max {
                return Err(Withheld::Told(format!(
                    "the answer listing the result's {} chunks would be over [limits] decompressed_bytes_max \
                     ({answer_bytes_max} bytes) with the gateway's chunk URLs; select fewer rows or columns, or raise it",
                    envelope.chunks.len()
                )));
            }
            Ok(url)
        })
        .collect::<Result<Vec<String>, Withheld>>()?;
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let own_headers = [("Authorization", authorization.as_str())];
    let body = rebuild_envelope(&buffer, &envelope, &urls, Some(&own_headers)).map_err(|e| e.to_string())?;
    // The recording keeps the answer without the agent's session token, a bearer credential.
    let redacted_headers = [("Authorization", REDACTED)];
    let recorded = rebuild_envelope(&buffer, &envelope, &urls, Some(&redacted_headers)).map_err(|e| e.to_string())?;
    Ok(Masked { body: Bytes::from(body), plans, recorded: Some(Bytes::from(recorded)) })
}

/// Room in a chunk download's request head for all but its URL and Authorization: the request
/// line's method and version, Host, and the driver's own headers (user agent, accept...).
const CHUNK_FETCH_HEAD_ROOM: usize = 1024;

/// What stands in a recorded answer for the session token its `chunkHeaders` carry.
const REDACTED: &str = "[redacted]";

/// A masked answer: the body for the agent, each profile's plan, and the body to record in
/// its place when the two differ (a credential the agent needs and the recording must not
/// keep).
struct Masked {
    body: Bytes,
    plans: Plans,
    recorded: Option<Bytes>,
}

/// What a chunk URL's grant holds (sealed: the agent can neither read nor change it).
#[derive(Serialize, Deserialize)]
struct ChunkGrant {
    /// The chunk's URL in cloud storage.
    #[serde(rename = "u")]
    url: String,
    /// The headers cloud storage requires (SSE-C key and algorithm).
    #[serde(rename = "h")]
    headers: Vec<(String, String)>,
    /// The agent.
    #[serde(rename = "s")]
    sub: String,
    /// Snowflake's session id.
    #[serde(rename = "i")]
    session_id: Option<i64>,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    expires_at_unix: u64,
    /// Each masking profile and its column plan (`ColumnPlan::encode`, base64).
    #[serde(rename = "p")]
    plans: Vec<(String, String)>,
}

fn valid_host(host: &str) -> bool {
    !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn grant_url(
    core: &Core,
    head: &RequestHead,
    url: &str,
    envelope: &Envelope,
    session: &Session<'_>,
    plans: &[(String, String)],
) -> Result<String, Withheld> {
    let headers = if !envelope.chunk_headers.is_empty() {
        envelope.chunk_headers.clone()
    } else if let Some(qrmk) = &envelope.qrmk {
        vec![(SSE_C_ALGORITHM.to_owned(), "AES256".to_owned()), (SSE_C_KEY.to_owned(), qrmk.clone())]
    } else {
        Vec::new()
    };
    // The chunk is fetched with the result's decryption key: never in plaintext, except to
    // this machine (a local emulator or test double, as the upstream itself may be).
    if !(url.starts_with("https://") || crate::config::loopback_http(url)) {
        return Err(Withheld::Unmaskable("a chunk URL that is neither https nor to this machine".into()));
    }
    // They are sent as they are in the fetch's request head: one holding a line break would
    // add fields of the upstream's choosing.
    if !headers.iter().all(|(name, value)| crate::http::is_field(name.as_bytes(), value.as_bytes())) {
        return Err(Withheld::Unmaskable("the answer's chunkHeaders or qrmk cannot be sent as header fields".into()));
    }
    let grant = ChunkGrant {
        url: url.to_owned(),
        headers,
        sub: session.claims.sub.clone(),
        session_id: session.claims.session_id,
        expires_at_unix: unix_seconds() + core.gateway.config.chunk_url_ttl.as_secs(),
        plans: plans.to_vec(),
    };
    let sealed =
        core.gateway.sealer.seal_bytes(CHUNK_PURPOSE, &serde_json::to_vec(&grant).expect("a grant always serialises"));
    // The gateway opens no grant longer than this: a URL it could not open would fail every
    // chunk download with a bare 404, so the answer is refused now, with the reason.
    if sealed.len() > SEALED_BYTES_MAX {
        return Err(Withheld::Told(format!(
            "the result's chunk URLs would carry grants of {} bytes, more than the {SEALED_BYTES_MAX} the gateway \
             opens (a long storage URL, or many columns to mask); select fewer columns",
            sealed.len()
        )));
    }
    let host = head
        .headers
        .get_str("host")
        .map(str::trim)
        .filter(|h| valid_host(h))
        .ok_or_else(|| Withheld::Told("the request has no usable Host header to build chunk URLs with".into()))?;
    let scheme = if core.gateway.server_tls.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{host}{CHUNK_PATH}{sealed}"))
}

/// `GET /snowgate/chunk/<grant>`: checks the grant and the session presenting it, fetches the
/// chunk from cloud storage with its SSE-C headers, inflates it (capped), masks it and answers.
pub async fn chunk(core: &Core, head: &RequestHead, grant: &str, capture: &mut Capture) -> Answer {
    let gateway = &core.gateway;
    let forbidden = |capture: &mut Capture, message: &str| {
        capture.refuse_code(codes::SESSION_INVALID);
        info!(core = core.id, reason = message, "Chunk download refused.");
        Answer::own(403, refusal_body(codes::SESSION_INVALID, message))
    };
    let grant: ChunkGrant = match gateway
        .sealer
        .open_bytes(CHUNK_PURPOSE, grant)
        .ok()
        .and_then(|plain| serde_json::from_slice(&plain).ok())
    {
        Some(grant) => grant,
        None => return forbidden(capture, "this chunk URL was not issued by this gateway"),
    };
    let presented = head
        .headers
        .get_str("authorization")
        .and_then(snowflake_token)
        .and_then(|token| gateway.sealer.open_ignoring_expiry(TokenKind::Session, token).ok());
    let Some(claims) = presented.filter(|c| c.sub == grant.sub && c.session_id == grant.session_id) else {
        return forbidden(capture, "this chunk URL belongs to another session");
    };
    capture.owner_of(&claims);
    if gateway.is_logged_out(&claims) {
        return forbidden(capture, "this chunk URL's session was logged out of; log in again");
    }
    if grant.expires_at_unix <= unix_seconds() {
        return forbidden(capture, "this chunk URL has expired; run the query again");
    }
    // The session token may have expired (drivers fetch chunks without renewing), but not the
    // identity the session was opened for.
    if claims.identity_expires_at_unix_ms <= unix_millis() {
        return forbidden(capture, "the session's OIDC token has expired; log in again");
    }
    if let Err(answer) = admit(core, capture).await {
        return answer;
    }
    let limit = gateway.config.limits.decompressed_bytes_max;
    let started = std::time::Instant::now();
    let headers: Vec<(&str, &str)> = grant.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let fetched = upstream::fetch_with(
        &grant.url,
        &headers,
        gateway.chunk_tls.clone(),
        gateway.config.upstream.response_timeout,
        limit,
    )
    .await;
    capture.upstream_time(started.elapsed());
    let body = match fetched {
        Ok(body) => body,
        Err(e) => return upstream_failed(capture, &e),
    };
    let body = if gzip::is_gzip(&body) {
        match gzip::gunzip_capped(&body, limit) {
            Ok(inflated) => Bytes::from(inflated),
            Err(GunzipError::TooLarge { limit }) => {
                return masking_failed(core, capture, &format!("the chunk inflates past {limit} bytes"));
            }
            Err(GunzipError::Invalid(_)) => return masking_failed(core, capture, "the chunk is broken gzip"),
        }
    } else {
        body
    };
    let mut buffer = mutable(body);
    let masker = &gateway.config.masker;
    let mut values_masked = 0;
    {
        let mut scratch = core.scratch.borrow_mut();
        if grant.plans.is_empty() {
            // Grants are made only for masked answers, each with its plans; fail closed anyway.
            drop(scratch);
            return masking_failed(core, capture, "the chunk's grant carries no masking plan");
        }
        for (name, plan) in &grant.plans {
            let plan = BASE64.decode(plan).ok().and_then(|bytes| ColumnPlan::decode(&bytes).ok());
            let (Some(profile), Some(plan)) = (masker.profile(name), plan) else {
                drop(scratch);
                return masking_failed(core, capture, "the chunk's masking plan no longer applies");
            };
            match masker.mask(profile, &mut buffer, Some(&plan), &mut scratch) {
                // A chunk is rows: anything else (a JSON object the masker reads as an answer
                // without rows) was not masked as rows and is withheld.
                Ok(masked)
                    if matches!(
                        masked.format,
                        ResultFormat::JsonChunk | ResultFormat::ArrowChunk | ResultFormat::Empty
                    ) =>
                {
                    values_masked += masked.report.values_masked
                }
                Ok(masked) => {
                    drop(scratch);
                    return masking_failed(core, capture, &format!("the chunk is not rows but {:?}", masked.format));
                }
                Err(e) => {
                    drop(scratch);
                    return masking_failed(core, capture, &e.to_string());
                }
            }
        }
    }
    gateway.metrics.values_masked.fetch_add(values_masked, std::sync::atomic::Ordering::Relaxed);
    Answer::own_chunk(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviewers_see_what_a_sql_api_body_sets() {
        let body = serde_json::json!({"statement": "delete from t", "database": "PROD", "schema": "SALES",
            "warehouse": "WH", "timeout": 60, "role": "IGNORED", "parameters": {"x": 1}, "bindings": null});
        let settings = sql_api_settings(body.to_string().as_bytes(), "ANALYST");
        let expected: BTreeMap<String, String> = [
            ("role", "ANALYST"),
            ("database", "PROD"),
            ("schema", "SALES"),
            ("warehouse", "WH"),
            ("timeout", "60"),
            ("parameters.x", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(settings, expected);
        // Long values are cut on a character boundary, and say so.
        let long = serde_json::json!({"database": "é".repeat(200)});
        let cut = &sql_api_settings(long.to_string().as_bytes(), "R")["database"];
        assert!(cut.ends_with('…') && cut.len() <= SETTING_BYTES_MAX + '…'.len_utf8(), "{cut}");
        // Objects, arrays, booleans and broken bodies show the role only.
        let odd = serde_json::json!({"database": ["a"], "schema": {"a": 1}, "warehouse": true});
        assert_eq!(sql_api_settings(odd.to_string().as_bytes(), "R").len(), 1);
        assert_eq!(sql_api_settings(b"not json", "R"), BTreeMap::from([("role".to_owned(), "R".to_owned())]));
    }

    #[test]
    fn reviewers_see_a_driver_requests_parameters() {
        let body = serde_json::json!({"sqlText": "delete from t", "sequenceId": 3,
            "parameters": {"QUERY_TAG": "trace-9", "MULTI_STATEMENT_COUNT": 1, "X": {"a": [1]}, "Y": "y".repeat(300)}});
        let settings = query_request_settings(body.to_string().as_bytes(), "ANALYST");
        assert_eq!(settings["role"], "ANALYST");
        assert_eq!(settings["parameters.QUERY_TAG"], "trace-9");
        assert_eq!(settings["parameters.MULTI_STATEMENT_COUNT"], "1");
        assert_eq!(settings["parameters.X"], r#"{"a":[1]}"#);
        assert!(settings["parameters.Y"].ends_with('…') && settings["parameters.Y"].len() <= SETTING_BYTES_MAX + 3);
        assert_eq!(settings.len(), 5, "{settings:?}");
        // Many parameters: the first ones, then how many more.
        let many: Map<String, Value> = (0..40).map(|i| (format!("P{i:02}"), Value::from(i))).collect();
        let body = serde_json::json!({"sqlText": "x", "parameters": many});
        let settings = query_request_settings(body.to_string().as_bytes(), "R");
        assert_eq!(settings.len(), 1 + SHOWN_PARAMETERS_MAX + 1);
        assert_eq!(settings["parameters.…"], "8 more");
        // No parameters, or a broken body: the role only.
        let role_only = BTreeMap::from([("role".to_owned(), "R".to_owned())]);
        assert_eq!(query_request_settings(br#"{"sqlText":"x"}"#, "R"), role_only);
        assert_eq!(query_request_settings(br#"{"sqlText":"x","parameters":[1]}"#, "R"), role_only);
        assert_eq!(query_request_settings(b"{", "R"), role_only);
    }
}
