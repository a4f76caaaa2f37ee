//! The Snowflake semantics of the test double: routes, logins, sessions and their tokens,
//! queries and the SQL API. Request in, response out; no I/O (the transport is
//! `server.rs`).
//!
//! Every answer on the driver endpoints is Snowflake's envelope
//! `{"data":…,"code":…,"message":…,"success":bool}`; refusals are HTTP 200 with
//! `success:false` and a numeric string code, as real Snowflake does. The SQL API answers
//! with its own bodies and real status codes (401, 422, 202). Which query gets which answer
//! is the vocabulary documented in [`crate::results`]. A query request of several statements
//! (split at `;`) is answered as Snowflake answers a multi-statement request: one row, and the
//! children's ids in `data.resultIds`, each child's result fetched with `/queries/<id>/result`.
//!
//! Codes the double uses:
//! | code | when |
//! |---|---|
//! | 390100 | login: wrong account, user, password or key-pair JWT |
//! | 390303 | login with `AUTHENTICATOR=OAUTH`; SQL API with an OAuth or PAT token type |
//! | 390104 | unknown (or logged-out, or replaced) session token |
//! | 390112 | expired session token (drivers renew on it) |
//! | 390115 | token-request with an unknown master token |
//! | 390114 | token-request with an expired master token |
//! | 390111 | token-request whose `oldSessionToken` is not the session's current token |
//! | 390001 | token-request whose `requestType` is not RENEW (the double's own code) |
//! | 333333 / 333334 | query in progress / async query accepted |
//! | 002003 | the `no_such_table` compilation error |
//! | 000605 | result requested for an unknown query id |
//! | 390144 | SQL API: missing or invalid key-pair JWT (HTTP 401) |
//! | 000709 | SQL API: unknown statement handle or partition (HTTP 422) |
//! | 000604 | SQL API: statement canceled |
//!
//! Chunk downloads (`GET /chunks/<qid>/<json|arrow>/<n>`, the URLs of a chunked result) need
//! no session, as S3's presigned URLs do not; they need the SSE-C headers instead, and are
//! refused with S3's HTTP 403 and an XML body without them.

use crate::corpus::{self, ChunkFormat, ChunkLayout, ChunkedResult};
use crate::keypair::KeyPairVerifier;
use crate::results::{self, NO_SUCH_TABLE_MESSAGE, Outcome, Results};
use crate::stats::{EndpointKind, RecordedRequest, Stats};
use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};
use snowgate::http::gzip::{gunzip_capped, gzip, is_gzip};
use snowgate::http::{Method, RequestHead};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest request body after gunzip, in bytes.
const DECOMPRESSED_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pending queries and SQL API statements kept for polling, each; the oldest are dropped.
const STORED_RESULTS_MAX: usize = 4096;
/// The version the double reports as `serverVersion`.
const SERVER_VERSION: &str = "9.99.0-snowgate-double";
/// The first `sessionId` handed out; realistic-looking 13-digit ids.
const FIRST_SESSION_ID: u64 = 4_200_000_000_001;

/// How the double behaves. Every field has a test-friendly default.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The account logins must name (compared case-insensitively, on the part before the
    /// first `.`).
    pub account: String,
    /// The user logins must name (case-insensitive).
    pub user: String,
    /// The RSA public key (SPKI or PKCS#1 PEM) trusted for key-pair JWTs, on logins and the
    /// SQL API. Without it every JWT is refused.
    pub public_key_pem: Option<String>,
    /// The password accepted by `AUTHENTICATOR=SNOWFLAKE` logins. Without it every
    /// password login is refused.
    pub password: Option<String>,
    /// Put in every token the double issues (`<prefix>-session-<n>-<random>`,
    /// `<prefix>-master-<n>-<random>`), so tests can look for it as a canary.
    pub token_prefix: String,
    /// How long a session token lives, in seconds.
    pub session_validity_secs: u64,
    /// How long a master token lives, in seconds.
    pub master_validity_secs: u64,
    /// Gzip response bodies for clients that send `Accept-Encoding: gzip`.
    pub gzip_responses: bool,
    /// How many result polls a `slow` query answers "in progress" before its result.
    pub polls_before_ready: u32,
    /// How many recent requests the stats log keeps (0 keeps none, for benchmarks).
    pub request_log_capacity: usize,
    /// The shape of the `chunked_json` and `chunked_arrow` results (inline rows, chunk count,
    /// rows per chunk).
    pub chunk_layout: ChunkLayout,
    /// Bytes of query string on every chunk URL (`X-Amz-Signature=0…`, as presigned URLs
    /// carry); 0 for none.
    pub chunk_url_query_bytes: usize,
    /// Where chunk URLs point instead of the double itself (`http://10.0.0.1:9`, say: a URL
    /// a gateway must not fetch); `None` for the double's own address.
    pub chunk_base_url: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            account: "TESTACCT".into(),
            user: "SNOWGATE".into(),
            public_key_pem: None,
            password: None,
            token_prefix: "SFTOKEN".into(),
            session_validity_secs: 3600,
            master_validity_secs: 14400,
            gzip_responses: false,
            polls_before_ready: 2,
            request_log_capacity: 1000,
            chunk_layout: ChunkLayout::default(),
            chunk_url_query_bytes: 0,
            chunk_base_url: None,
        }
    }
}

/// One answer: a status, a body, its content type, and whether the body is announced as
/// gzip-compressed.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON before compression, except chunk downloads and S3-style errors).
    pub body: Bytes,
    /// Whether `body` is sent with `Content-Encoding: gzip`.
    pub gzip: bool,
    /// The `Content-Type`.
    pub content_type: &'static str,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Response {
        Response { status, body: body.into(), gzip: false, content_type: "application/json" }
    }

    fn value(status: u16, body: &Value) -> Response {
        Response::json(status, body.to_string())
    }

    /// A success envelope around `data`.
    fn ok(data: Value) -> Response {
        Response::value(200, &json!({"data": data, "code": null, "message": null, "success": true}))
    }

    /// A refusal envelope: HTTP 200, `success:false`, a numeric string code.
    fn refusal(code: &str, message: &str, data: Value) -> Response {
        Response::value(200, &json!({"data": data, "code": code, "message": message, "success": false}))
    }

    /// The body parsed as JSON (after gunzip), for tests.
    pub fn body_json(&self) -> anyhow::Result<Value> {
        let plain =
            if self.gzip { gunzip_capped(&self.body, DECOMPRESSED_BODY_BYTES_MAX)?.into() } else { self.body.clone() };
        serde_json::from_slice(&plain).context("response body is not JSON")
    }
}

/// What a request asks for, decided from the method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Login,
    TokenRequest,
    Query,
    QueryResult(&'a str),
    Heartbeat,
    Logout,
    Abort,
    Telemetry,
    Monitoring(&'a str),
    SqlApiSubmit,
    SqlApiFetch(&'a str),
    SqlApiCancel(&'a str),
    Chunk(ChunkFormat, usize),
    NotFound,
}

impl Route<'_> {
    fn of(head: &RequestHead) -> Route<'_> {
        let segments: Vec<&str> = head.path().trim_start_matches('/').split('/').collect();
        match (head.method, segments.as_slice()) {
            (Method::Post, ["session", "v1", "login-request"]) => Route::Login,
            (Method::Post, ["session", "token-request"]) => Route::TokenRequest,
            (Method::Post, ["session", "heartbeat"]) => Route::Heartbeat,
            (Method::Post, ["session"]) if query_param(head.query(), "delete").as_deref() == Some("true") => {
                Route::Logout
            }
            (Method::Post, ["queries", "v1", "query-request"]) => Route::Query,
            (Method::Post, ["queries", "v1", "abort-request"] | ["queries", _, "abort-request"]) => Route::Abort,
            (Method::Get, ["queries", qid, "result"]) => Route::QueryResult(qid),
            (Method::Post, ["telemetry", "send"]) => Route::Telemetry,
            (Method::Get, ["monitoring", "queries", qid]) => Route::Monitoring(qid),
            (Method::Post, ["api", "v2", "statements"]) => Route::SqlApiSubmit,
            (Method::Get, ["api", "v2", "statements", handle]) => Route::SqlApiFetch(handle),
            (Method::Post, ["api", "v2", "statements", handle, "cancel"]) => Route::SqlApiCancel(handle),
            (Method::Get, ["chunks", _qid, format, index]) => match (ChunkFormat::parse(format), index.parse()) {
                (Some(format), Ok(index)) => Route::Chunk(format, index),
                _ => Route::NotFound,
            },
            _ => Route::NotFound,
        }
    }

    fn kind(self) -> EndpointKind {
        match self {
            Route::Login => EndpointKind::Login,
            Route::TokenRequest => EndpointKind::TokenRequest,
            Route::Query => EndpointKind::Query,
            Route::QueryResult(_) => EndpointKind::QueryResult,
            Route::Heartbeat => EndpointKind::Heartbeat,
            Route::Logout => EndpointKind::Logout,
            Route::Abort => EndpointKind::Abort,
            Route::Telemetry => EndpointKind::Telemetry,
            Route::Monitoring(_) => EndpointKind::Monitoring,
            Route::SqlApiSubmit => EndpointKind::SqlApiSubmit,
            Route::SqlApiFetch(_) => EndpointKind::SqlApiFetch,
            Route::SqlApiCancel(_) => EndpointKind::SqlApiCancel,
            Route::Chunk(..) => EndpointKind::Chunk,
            Route::NotFound => EndpointKind::Other,
        }
    }
}

/// Decodes `%XX` escapes and `+` in a query-string component; invalid escapes stay as
/// they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded value of the first `name=` parameter in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

/// The token of `Authorization: Snowflake Token="<token>"`.
fn snowflake_token(head: &RequestHead) -> Option<&str> {
    let value = head.headers.get_str("authorization")?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Snowflake") {
        return None;
    }
    let (key, token) = rest.trim().split_once('=')?;
    key.trim().eq_ignore_ascii_case("Token").then(|| token.trim().trim_matches('"'))
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(head: &RequestHead) -> Option<&str> {
    let (scheme, token) = head.headers.get_str("authorization")?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A map that forgets its oldest entries beyond a capacity, so polling state stays bounded
/// however long a benchmark runs.
#[derive(Debug)]
struct BoundedMap<K, V> {
    entries: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    fn new(capacity: usize) -> Self {
        BoundedMap { entries: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn insert(&mut self, key: K, value: V) {
        if self.entries.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key)
    }
}

/// One logged-in session and its two tokens.
#[derive(Debug)]
struct Session {
    id: u64,
    session_token: String,
    session_expires: Instant,
    master_token: String,
    master_expires: Instant,
}

/// A query answered "in progress": how many more polls say so, then the final body.
#[derive(Debug)]
struct PendingQuery {
    polls_left: u32,
    body: Bytes,
    /// The error message the query ends with, which its monitoring status quotes too.
    error_message: Option<&'static str>,
}

/// A SQL API statement: how many more polls answer 202, then its status and partitions.
#[derive(Debug)]
struct StoredStatement {
    polls_left: u32,
    status: u16,
    first: Bytes,
    later_partitions: Vec<Bytes>,
}

#[derive(Debug)]
struct State {
    sessions: HashMap<u64, Session>,
    by_session_token: HashMap<String, u64>,
    by_master_token: HashMap<String, u64>,
    queries: BoundedMap<String, PendingQuery>,
    statements: BoundedMap<String, StoredStatement>,
}

/// Why a session token was refused.
enum TokenRefusal {
    Unknown,
    Expired,
}

/// The chunked results, built on first use (they take tens of milliseconds and most tests
/// never ask for them) with the double's own address in their chunk URLs.
#[derive(Debug)]
struct Chunked {
    json: ChunkedResult,
    arrow: ChunkedResult,
    json_body: results::Template,
    arrow_body: results::Template,
}

/// The fake Snowflake: configuration, precomputed results, sessions and statistics.
/// Shared by every runtime thread; the session state sits behind one mutex held briefly.
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    verifier: Option<KeyPairVerifier>,
    results: Results,
    base_url: OnceLock<String>,
    chunked: OnceLock<Chunked>,
    created_on_ms: u64,
    serial: AtomicU64,
    state: Mutex<State>,
    stats: Arc<Stats>,
}

impl Upstream {
    /// Builds the double: parses the public key and precomputes every result body.
    pub fn new(config: UpstreamConfig) -> anyhow::Result<Upstream> {
        let verifier = config
            .public_key_pem
            .as_deref()
            .map(|pem| KeyPairVerifier::new(pem, &config.account, &config.user))
            .transpose()
            .context("loading the public key for key-pair JWTs")?;
        let created_on_ms = epoch_ms();
        Ok(Upstream {
            stats: Arc::new(Stats::new(config.request_log_capacity)),
            config,
            verifier,
            results: Results::build(created_on_ms),
            base_url: OnceLock::new(),
            chunked: OnceLock::new(),
            created_on_ms,
            serial: AtomicU64::new(1),
            state: Mutex::new(State {
                sessions: HashMap::new(),
                by_session_token: HashMap::new(),
                by_master_token: HashMap::new(),
                queries: BoundedMap::new(STORED_RESULTS_MAX),
                statements: BoundedMap::new(STORED_RESULTS_MAX),
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Sets the base URL (`http://127.0.0.1:port`) chunk URLs point at; the transport calls
    /// it once it knows its address. Later calls are ignored.
    pub fn set_base_url(&self, url: String) {
        let _ = self.base_url.set(url);
    }

    /// The base URL of chunk downloads.
    pub fn base_url(&self) -> &str {
        if let Some(url) = &self.config.chunk_base_url {
            return url;
        }
        self.base_url.get().map_or("http://snowflake-double.invalid", String::as_str)
    }

    fn chunked(&self) -> &Chunked {
        self.chunked.get_or_init(|| {
            let layout = self.config.chunk_layout;
            let table = results::customers("CHUNKED", layout.total_rows());
            let json = ChunkedResult::build(&table, layout, ChunkFormat::Json);
            let arrow = ChunkedResult::build(&table, layout, ChunkFormat::Arrow);
            let signature = "X-Amz-Signature=";
            let query = match self.config.chunk_url_query_bytes {
                0 => String::new(),
                n => format!("{signature}{}", "0".repeat(n.saturating_sub(signature.len()))),
            };
            let json_body = results::chunked_query_body(&json, ChunkFormat::Json, self.base_url(), &query);
            let arrow_body = results::chunked_query_body(&arrow, ChunkFormat::Arrow, self.base_url(), &query);
            Chunked { json, arrow, json_body, arrow_body }
        })
    }

    /// The chunk bodies of a chunked result, gzip-compressed, as downloads answer them.
    pub fn chunk_bodies(&self, format: ChunkFormat) -> Vec<Bytes> {
        let chunked = self.chunked();
        let result = if format == ChunkFormat::Json { &chunked.json } else { &chunked.arrow };
        result.chunks.iter().map(|c| c.gzip_body.clone()).collect()
    }

    /// Its statistics and request log.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Sessions logged in and not logged out.
    pub fn session_count(&self) -> usize {
        self.lock_state().sessions.len()
    }

    /// Makes every current session token expire now (the next use answers 390112), so
    /// renewal tests need not sleep.
    pub fn expire_session_tokens(&self) {
        let now = Instant::now();
        self.lock_state().sessions.values_mut().for_each(|s| s.session_expires = now);
    }

    /// Makes every master token expire now (the next renewal answers 390114).
    pub fn expire_master_tokens(&self) {
        let now = Instant::now();
        self.lock_state().sessions.values_mut().for_each(|s| s.master_expires = now);
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // State stays consistent between statements, so a panicked holder leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request. `wire_body` is the body with chunking removed but content
    /// coding intact: gzip is detected by its magic bytes, as drivers do not always say.
    pub fn handle(&self, head: &RequestHead, wire_body: &[u8]) -> Response {
        let route = Route::of(head);
        self.stats.count(route.kind());
        let was_gzip = is_gzip(wire_body);
        let body: Bytes = if was_gzip {
            match gunzip_capped(wire_body, DECOMPRESSED_BODY_BYTES_MAX) {
                Ok(plain) => plain.into(),
                Err(e) => {
                    return Response::value(400, &json!({"code": "400", "message": e.to_string(), "success": false}));
                }
            }
        } else {
            Bytes::copy_from_slice(wire_body)
        };
        if self.stats.logging() {
            self.stats.log(RecordedRequest {
                kind: route.kind(),
                method: head.method.as_str().into(),
                target: head.target.clone(),
                headers: head
                    .headers
                    .iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
                body: body.clone(),
                body_was_gzip: was_gzip,
            });
        }
        let response = match route {
            Route::Login => self.login(head, &body),
            Route::TokenRequest => self.token_request(head, &body),
            Route::Query => self.query(head, &body),
            Route::QueryResult(qid) => self.query_result(head, qid),
            Route::Heartbeat | Route::Abort | Route::Telemetry => self.with_session(head, |_| Response::ok(json!({}))),
            Route::Logout => self.logout(head),
            Route::Monitoring(qid) => self.monitoring(head, qid),
            Route::SqlApiSubmit => self.statement_submit(head, &body),
            Route::SqlApiFetch(handle) => self.statement_fetch(head, handle),
            Route::SqlApiCancel(handle) => self.statement_cancel(head, handle),
            // A chunk is already gzip: it is never compressed again.
            Route::Chunk(format, index) => return self.chunk(head, format, index),
            Route::NotFound => Response::value(
                404,
                &json!({
                    "code": "404",
                    "message": format!("the Snowflake test double has no {} {}", head.method.as_str(), head.path()),
                    "success": false,
                }),
            ),
        };
        self.maybe_gzip(head, response)
    }

    fn maybe_gzip(&self, head: &RequestHead, response: Response) -> Response {
        if self.config.gzip_responses && !response.body.is_empty() && head.headers.has_token("accept-encoding", "gzip")
        {
            Response { body: gzip(&response.body).into(), gzip: true, ..response }
        } else {
            response
        }
    }

    // ---- Login and tokens ----

    fn login(&self, head: &RequestHead, body: &[u8]) -> Response {
        let refuse = |code: &str, message: &str| {
            self.stats.add_login(false);
            Response::refusal(code, message, json!({"nextAction": "RETRY_LOGIN", "authnMethod": "PASSWORD"}))
        };
        let bad_credentials = || refuse("390100", "Incorrect username or password was specified.");
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the login body is not JSON");
        };
        let data = &request["data"];
        let field = |name: &str| data.get(name).and_then(Value::as_str);
        let account_segment = |a: &str| a.split('.').next().unwrap_or(a).to_ascii_uppercase();
        let account_ok =
            field("ACCOUNT_NAME").is_some_and(|a| account_segment(a) == account_segment(&self.config.account));
        let user_ok = field("LOGIN_NAME").is_some_and(|u| u.eq_ignore_ascii_case(&self.config.user));
        if !account_ok || !user_ok {
            return bad_credentials();
        }
        let authenticator = field("AUTHENTICATOR").unwrap_or("SNOWFLAKE").to_ascii_uppercase();
        let accepted = match authenticator.as_str() {
            "SNOWFLAKE_JWT" => match (&self.verifier, field("TOKEN")) {
                (Some(verifier), Some(token)) => verifier.verify(token).is_ok(),
                _ => false,
            },
            "SNOWFLAKE" => match (&self.config.password, field("PASSWORD")) {
                (Some(expected), Some(given)) => expected == given,
                _ => false,
            },
            "OAUTH" => return refuse("390303", "Invalid OAuth access token. "),
            _ => false,
        };
        if !accepted {
            return bad_credentials();
        }
        self.stats.add_login(true);

        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let session = Session {
            id: FIRST_SESSION_ID + serial,
            session_token: self.new_token("session", serial),
            session_expires: now + Duration::from_secs(self.config.session_validity_secs),
            master_token: self.new_token("master", serial),
            master_expires: now + Duration::from_secs(self.config.master_validity_secs),
        };
        let query = head.query();
        let from_url = |name: &str| query_param(query, name);
        let answer = json!({
            "masterToken": session.master_token,
            "token": session.session_token,
            "validityInSeconds": self.config.session_validity_secs,
            "masterValidityInSeconds": self.config.master_validity_secs,
            "displayUserName": self.config.user,
            "serverVersion": SERVER_VERSION,
            "firstLogin": false,
            "remMeToken": null,
            "remMeValidityInSeconds": 0,
            "healthCheckInterval": 45,
            "newClientForUpgrade": null,
            "sessionId": session.id,
            "parameters": [
                {"name": "TIMEZONE", "value": "America/Los_Angeles"},
                {"name": "AUTOCOMMIT", "value": true},
                {"name": "CLIENT_SESSION_KEEP_ALIVE", "value": false},
                {"name": "CLIENT_SESSION_KEEP_ALIVE_HEARTBEAT_FREQUENCY", "value": 3600},
                {"name": "CLIENT_PREFETCH_THREADS", "value": 4},
                {"name": "CLIENT_RESULT_CHUNK_SIZE", "value": 160},
            ],
            "sessionInfo": {
                "databaseName": from_url("databaseName"),
                "schemaName": from_url("schemaName"),
                "warehouseName": from_url("warehouse"),
                "roleName": from_url("roleName"),
            },
            "idToken": null,
            "idTokenValidityInSeconds": 0,
            "responseData": null,
            "mfaToken": null,
            "mfaTokenValidityInSeconds": 0,
        });
        let mut state = self.lock_state();
        state.by_session_token.insert(session.session_token.clone(), session.id);
        state.by_master_token.insert(session.master_token.clone(), session.id);
        state.sessions.insert(session.id, session);
        drop(state);
        Response::ok(answer)
    }

    fn new_token(&self, kind: &str, serial: u64) -> String {
        format!("{}-{kind}-{serial}-{}", self.config.token_prefix, uuid::Uuid::new_v4().simple())
    }

    fn token_request(&self, head: &RequestHead, body: &[u8]) -> Response {
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the token-request body is not JSON");
        };
        let invalid_master = || Response::refusal("390115", "Master token is invalid.", json!({}));
        let Some(master) = snowflake_token(head) else {
            return invalid_master();
        };
        // Drivers spell it `requestType`, or `REQUEST_TYPE` (Node); Snowflake reads either.
        let request_type =
            request.get("requestType").or_else(|| request.get("REQUEST_TYPE")).and_then(Value::as_str).unwrap_or("");
        let old_session_token = request.get("oldSessionToken").and_then(Value::as_str).unwrap_or("");

        let mut state = self.lock_state();
        let Some(&id) = state.by_master_token.get(master) else {
            return invalid_master();
        };
        let now = Instant::now();
        let new_token = self.new_token("session", self.serial.fetch_add(1, Ordering::Relaxed));
        let Some(session) = state.sessions.get_mut(&id) else {
            return invalid_master();
        };
        if now >= session.master_expires {
            return Response::refusal(
                "390114",
                "Authentication token has expired.  The user must authenticate again.",
                json!({}),
            );
        }
        if !request_type.eq_ignore_ascii_case("RENEW") {
            return Response::refusal("390001", "Unsupported token requestType; only RENEW is.", json!({}));
        }
        if old_session_token != session.session_token {
            return Response::refusal(
                "390111",
                "Session no longer exists.  New login required to access the service.",
                json!({}),
            );
        }
        let old = std::mem::replace(&mut session.session_token, new_token.clone());
        session.session_expires = now + Duration::from_secs(self.config.session_validity_secs);
        let answer = json!({
            "sessionToken": new_token,
            "validityInSecondsST": self.config.session_validity_secs,
            "masterToken": session.master_token,
            "validityInSecondsMT": session.master_expires.saturating_duration_since(now).as_secs(),
            "sessionId": session.id,
        });
        state.by_session_token.remove(&old);
        state.by_session_token.insert(new_token, id);
        drop(state);
        self.stats.add_renewal();
        Response::ok(answer)
    }

    /// Runs `answer` with the id of the session whose token the request carries, or
    /// refuses with 390104 (unknown) or 390112 (expired).
    fn with_session(&self, head: &RequestHead, answer: impl FnOnce(u64) -> Response) -> Response {
        match self.session_of(head) {
            Ok(id) => answer(id),
            Err(TokenRefusal::Unknown) => {
                Response::refusal("390104", "User must login again to access the service.", json!({}))
            }
            Err(TokenRefusal::Expired) => Response::refusal("390112", "Session token expired.", json!({})),
        }
    }

    fn session_of(&self, head: &RequestHead) -> Result<u64, TokenRefusal> {
        let token = snowflake_token(head).ok_or(TokenRefusal::Unknown)?;
        let state = self.lock_state();
        let id = *state.by_session_token.get(token).ok_or(TokenRefusal::Unknown)?;
        let session = state.sessions.get(&id).ok_or(TokenRefusal::Unknown)?;
        if Instant::now() >= session.session_expires {
            return Err(TokenRefusal::Expired);
        }
        Ok(id)
    }

    fn logout(&self, head: &RequestHead) -> Response {
        self.with_session(head, |id| {
            let mut state = self.lock_state();
            if let Some(session) = state.sessions.remove(&id) {
                state.by_session_token.remove(&session.session_token);
                state.by_master_token.remove(&session.master_token);
            }
            Response::ok(json!({}))
        })
    }

    // ---- Queries (the driver protocol) ----

    fn query(&self, head: &RequestHead, body: &[u8]) -> Response {
        self.with_session(head, |_| {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return bad_request("the query-request body is not JSON");
            };
            let Some(sql) = request.get("sqlText").and_then(Value::as_str) else {
                return Response::refusal("000900", "Empty SQL statement.", json!({}));
            };
            let asynchronous = request.get("asyncExec").and_then(Value::as_bool).unwrap_or(false);
            let bindings = request.get("bindings").and_then(Value::as_object);
            let plan = results::plan(sql);
            let qid = new_id();
            // Several statements (the gateway pins MULTI_STATEMENT_COUNT): Snowflake answers with
            // the children's ids in `resultIds`, and drivers fetch each by id.
            let statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
            if statements.len() > 1 {
                let children: Vec<String> = statements.iter().map(|_| new_id()).collect();
                let mut state = self.lock_state();
                for (child, statement) in children.iter().zip(&statements) {
                    let body = self.results.query_body(results::plan(statement).outcome, None, child);
                    state.queries.insert(child.clone(), PendingQuery { polls_left: 0, body, error_message: None });
                }
                return Response::value(200, &multi_statement_body(&qid, &children));
            }
            let final_body = match plan.outcome {
                Outcome::NoSuchTable => no_such_table_body(&qid),
                Outcome::StageDownload => stage_download_body(&qid),
                Outcome::ChunkedJson => self.chunked().json_body.render(&qid),
                Outcome::ChunkedArrow => self.chunked().arrow_body.render(&qid),
                outcome => self.results.query_body(outcome, bindings, &qid),
            };
            if !(asynchronous || plan.slow) {
                return Response::json(200, final_body);
            }
            let polls_left = if plan.slow { self.config.polls_before_ready } else { 0 };
            let error_message = (plan.outcome == Outcome::NoSuchTable).then_some(results::NO_SUCH_TABLE_MESSAGE);
            self.lock_state().queries.insert(qid.clone(), PendingQuery { polls_left, body: final_body, error_message });
            if asynchronous { in_progress_body("333334", &qid) } else { in_progress_body("333333", &qid) }
        })
    }

    fn query_result(&self, head: &RequestHead, qid: &str) -> Response {
        self.with_session(head, |_| {
            let mut state = self.lock_state();
            let Some(pending) = state.queries.get_mut(&qid.to_owned()) else {
                return Response::refusal(
                    "000605",
                    "Identified SQL statement is not currently executing.",
                    json!({"queryId": qid}),
                );
            };
            if pending.polls_left > 0 {
                pending.polls_left -= 1;
                return in_progress_body("333333", qid);
            }
            Response::json(200, pending.body.clone())
        })
    }

    fn monitoring(&self, head: &RequestHead, qid: &str) -> Response {
        self.with_session(head, |_| {
            // Synchronous queries are not stored, so an unknown id is reported as done. A failed
            // query's status quotes its error, as Snowflake's does.
            let mut state = self.lock_state();
            let query = state.queries.get_mut(&qid.to_owned());
            match query {
                Some(p) if p.polls_left > 0 => Response::ok(json!({"queries": [{"id": qid, "status": "RUNNING"}]})),
                Some(PendingQuery { error_message: Some(message), .. }) => Response::ok(json!({"queries": [{
                    "id": qid, "status": "FAILED_WITH_ERROR", "errorCode": "002003", "errorMessage": message,
                }]})),
                _ => Response::ok(json!({"queries": [{"id": qid, "status": "SUCCESS"}]})),
            }
        })
    }

    /// A chunk download: the SSE-C headers must carry the result's key, as S3 demands.
    fn chunk(&self, head: &RequestHead, format: ChunkFormat, index: usize) -> Response {
        let header = |name: &str| head.headers.get_str(name).map(str::trim);
        let keyed = header(corpus::SSE_C_ALGORITHM_HEADER) == Some(corpus::SSE_C_AES)
            && header(corpus::SSE_C_KEY_HEADER) == Some(corpus::QRMK);
        if !keyed {
            return s3_error(
                403,
                "InvalidRequest",
                "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
            );
        }
        let chunked = self.chunked();
        let result = if format == ChunkFormat::Json { &chunked.json } else { &chunked.arrow };
        match result.chunks.get(index) {
            Some(chunk) => Response {
                status: 200,
                body: chunk.gzip_body.clone(),
                gzip: chunk.content_encoding_gzip,
                content_type: "binary/octet-stream",
            },
            None => s3_error(404, "NoSuchKey", "The specified key does not exist."),
        }
    }

    // ---- SQL API v2 ----

    /// Checks the SQL API's `Authorization: Bearer <key-pair JWT>`; refusals are HTTP 401
    /// with the API's own body, not the driver envelope.
    fn statement_auth(&self, head: &RequestHead) -> Result<(), Response> {
        let invalid_jwt = || Response::value(401, &json!({"code": "390144", "message": "JWT token is invalid."}));
        let token_type = head.headers.get_str("x-snowflake-authorization-token-type").unwrap_or("KEYPAIR_JWT");
        if !token_type.trim().eq_ignore_ascii_case("KEYPAIR_JWT") {
            return Err(Response::value(401, &json!({"code": "390303", "message": "Invalid OAuth access token. "})));
        }
        match (&self.verifier, bearer_token(head)) {
            (Some(verifier), Some(token)) if verifier.verify(token).is_ok() => Ok(()),
            _ => Err(invalid_jwt()),
        }
    }

    fn statement_submit(&self, head: &RequestHead, body: &[u8]) -> Response {
        if let Err(refusal) = self.statement_auth(head) {
            return refusal;
        }
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the statement body is not JSON");
        };
        let Some(sql) = request.get("statement").and_then(Value::as_str) else {
            return Response::value(
                422,
                &json!({"code": "000900", "message": "Empty SQL statement.", "sqlState": "42000"}),
            );
        };
        let asynchronous = query_param(head.query(), "async").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let plan = results::plan(sql);
        let handle = new_id();
        let (status, first, later_partitions) = match plan.outcome {
            Outcome::NoSuchTable => {
                let error = json!({
                    "code": "002003",
                    "sqlState": "42S02",
                    "message": NO_SUCH_TABLE_MESSAGE,
                    "statementHandle": handle,
                    "statementStatusUrl": statement_url(&handle),
                    "createdOn": epoch_ms(),
                });
                (422, Bytes::from(error.to_string()), Vec::new())
            }
            outcome => {
                let bindings = request.get("bindings").and_then(Value::as_object);
                let (first, later) = self.results.statement(outcome, bindings, self.created_on_ms, &handle);
                (200, first, later)
            }
        };
        let polls_left = if plan.slow { self.config.polls_before_ready } else { 0 };
        let deferred = asynchronous || plan.slow;
        let answer = if deferred { statement_in_progress(&handle) } else { Response::json(status, first.clone()) };
        // Every statement is kept, bounded, because clients may GET any handle afterwards.
        self.lock_state().statements.insert(handle, StoredStatement { polls_left, status, first, later_partitions });
        answer
    }

    fn statement_fetch(&self, head: &RequestHead, handle: &str) -> Response {
        if let Err(refusal) = self.statement_auth(head) {
            return refusal;
        }
        let partition: usize = query_param(head.query(), "partition").and_then(|p| p.parse().ok()).unwrap_or(0);
        let mut state = self.lock_state();
        let Some(statement) = state.statements.get_mut(&handle.to_owned()) else {
            return statement_not_found(handle);
        };
        if statement.polls_left > 0 {
            statement.polls_left -= 1;
            return statement_in_progress(handle);
        }
        match partition {
            0 => Response::json(statement.status, statement.first.clone()),
            n => match statement.later_partitions.get(n - 1) {
                Some(body) => Response::json(200, body.clone()),
                None => Response::value(
                    422,
                    &json!({"code": "000709", "message": format!("Partition {n} is out of range."), "statementHandle": handle}),
                ),
            },
        }
    }

    fn statement_cancel(&self, head: &RequestHead, handle: &str) -> Response {
        if let Err(refusal) = self.statement_auth(head) {
            return refusal;
        }
        let canceled = json!({
            "code": "000604",
            "sqlState": "57014",
            "message": "SQL execution canceled",
            "statementHandle": handle,
            "statementStatusUrl": statement_url(handle),
        });
        let mut state = self.lock_state();
        let Some(statement) = state.statements.get_mut(&handle.to_owned()) else {
            return statement_not_found(handle);
        };
        // Later fetches of a canceled statement report the cancellation, as Snowflake does.
        *statement = StoredStatement {
            polls_left: 0,
            status: 422,
            first: canceled.to_string().into(),
            later_partitions: Vec::new(),
        };
        Response::value(200, &canceled)
    }
}

/// A multi-statement answer: one row saying so, and the children's ids.
fn multi_statement_body(qid: &str, children: &[String]) -> Value {
    json!({
        "data": {
            "parameters": [],
            "rowtype": [{"name": "multiple statement execution", "database": "", "schema": "", "table": "",
                "type": "text", "nullable": false, "length": 16777216, "byteLength": 16777216,
                "scale": null, "precision": null, "collation": null}],
            "rowset": [["Multiple statements executed successfully."]],
            "total": 1,
            "returned": 1,
            "queryId": qid,
            "resultIds": children.join(","),
            "resultTypes": vec!["4096"; children.len()].join(","),
            "queryResultFormat": "json",
            "statementTypeId": 4096,
        },
        "code": null,
        "message": null,
        "success": true,
    })
}

/// An S3-style error: a status and an XML body.
fn s3_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    Response { status, body: body.into(), gzip: false, content_type: "application/xml" }
}

fn bad_request(message: &str) -> Response {
    Response::value(400, &json!({"code": "400", "message": message, "success": false}))
}

/// A `GET`'s answer, shaped as Snowflake's: the files to fetch and, in `stageInfo`, the stage's
/// location with temporary cloud credentials, which the driver then uses itself.
fn stage_download_body(qid: &str) -> Bytes {
    let body = json!({
        "data": {
            "command": "DOWNLOAD",
            "src_locations": ["x.csv.gz"],
            "localLocation": "/tmp/",
            "queryId": qid,
            "stageInfo": {
                "locationType": "S3",
                "location": "stage-bucket/user/",
                "region": "us-west-2",
                "creds": {"AWS_KEY_ID": "ASIASTAGECANARY", "AWS_SECRET_KEY": "stage-secret-canary", "AWS_TOKEN": "t"},
            },
            "encryptionMaterial": [{"queryStageMasterKey": "c3RhZ2Uta2V5LWNhbmFyeQ==", "queryId": qid, "smkId": 1}],
            "parallel": 10,
        },
        "code": null,
        "message": null,
        "success": true,
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serialises"))
}

fn no_such_table_body(qid: &str) -> Bytes {
    let body = json!({
        "data": {
            "internalError": false,
            "errorCode": "002003",
            "age": 0,
            "sqlState": "42S02",
            "queryId": qid,
            "line": -1,
            "pos": -1,
            "type": "COMPILATION",
        },
        "code": "002003",
        "message": NO_SUCH_TABLE_MESSAGE,
        "success": false,
    });
    body.to_string().into()
}

/// The 333333 ("in progress") or 333334 ("async accepted") answer for a query.
fn in_progress_body(code: &str, qid: &str) -> Response {
    let message = if code == "333334" {
        "Asynchronous execution in progress. Use provided query id to perform query monitoring and management."
    } else {
        "Query execution in progress."
    };
    let data = json!({
        "queryId": qid,
        "getResultUrl": format!("/queries/{qid}/result"),
        "queryAbortsAfterSecs": 300,
        "progressDesc": null,
    });
    Response::value(200, &json!({"data": data, "code": code, "message": message, "success": true}))
}

fn statement_url(handle: &str) -> String {
    format!("/api/v2/statements/{handle}")
}

/// The SQL API's 202 QueryStatus.
fn statement_in_progress(handle: &str) -> Response {
    Response::value(
        202,
        &json!({
            "code": "333334",
            "message": "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
            "statementHandle": handle,
            "statementStatusUrl": statement_url(handle),
        }),
    )
}

fn statement_not_found(handle: &str) -> Response {
    Response::value(
        422,
        &json!({
            "code": "000709",
            "message": format!("Statement {handle} not found."),
            "sqlState": "02000",
            "statementHandle": handle,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::mint_keypair_jwt;
    use crate::test_keys::{TEST_PRIVATE_KEY_PEM, TEST_PUBLIC_KEY_PEM};
    use snowgate::http::{Limits, parse_request_head};

    fn double() -> Upstream {
        Upstream::new(UpstreamConfig {
            password: Some("hunter2".into()),
            public_key_pem: Some(TEST_PUBLIC_KEY_PEM.into()),
            polls_before_ready: 1,
            ..UpstreamConfig::default()
        })
        .unwrap()
    }

    fn call(up: &Upstream, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Value {
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let head = parse_request_head(raw.as_bytes(), &Limits::default()).unwrap().unwrap();
        let response = up.handle(&head, body);
        let mut value = response.body_json().unwrap();
        value["_status"] = json!(response.status);
        value
    }

    fn login(up: &Upstream) -> (String, String) {
        let body = json!({"data": {"ACCOUNT_NAME": "testacct", "LOGIN_NAME": "snowgate", "PASSWORD": "hunter2"}});
        let answer = call(up, "POST", "/session/v1/login-request?warehouse=WH", &[], body.to_string().as_bytes());
        assert_eq!(answer["success"], true, "{answer}");
        (answer["data"]["token"].as_str().unwrap().into(), answer["data"]["masterToken"].as_str().unwrap().into())
    }

    fn auth(token: &str) -> String {
        format!("Snowflake Token=\"{token}\"")
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("a=1&databaseName=MY%20DB&x", "databaseName").as_deref(), Some("MY DB"));
        assert_eq!(query_param("delete=true", "delete").as_deref(), Some("true"));
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=b", "c"), None);
    }

    #[test]
    fn login_query_renew_and_logout() {
        let up = double();
        let (session, master) = login(&up);
        assert!(session.starts_with("SFTOKEN-session-"));
        let sql = json!({"sqlText": "select 1"}).to_string();
        let answer =
            call(&up, "POST", "/queries/v1/query-request", &[("Authorization", &auth(&session))], sql.as_bytes());
        assert_eq!(answer["data"]["rowset"], json!([["1"]]));

        let renew = json!({"oldSessionToken": session, "requestType": "RENEW"}).to_string();
        let renewed =
            call(&up, "POST", "/session/token-request", &[("Authorization", &auth(&master))], renew.as_bytes());
        let new_session = renewed["data"]["sessionToken"].as_str().unwrap().to_owned();
        assert_ne!(new_session, session);
        let old = call(&up, "POST", "/queries/v1/query-request", &[("Authorization", &auth(&session))], sql.as_bytes());
        assert_eq!(old["code"], "390104");

        let bye = call(&up, "POST", "/session?delete=true", &[("Authorization", &auth(&new_session))], b"{}");
        assert_eq!(bye["success"], true);
        assert_eq!(up.session_count(), 0);
        let gone = call(&up, "POST", "/session/heartbeat", &[("Authorization", &auth(&new_session))], b"");
        assert_eq!(gone["code"], "390104");
    }

    #[test]
    fn expiry_hooks_drive_the_refusal_codes() {
        let up = double();
        let (session, master) = login(&up);
        up.expire_session_tokens();
        let beat = call(&up, "POST", "/session/heartbeat", &[("Authorization", &auth(&session))], b"");
        assert_eq!(beat["code"], "390112");
        up.expire_master_tokens();
        let renew = json!({"oldSessionToken": session, "requestType": "RENEW"}).to_string();
        let refused =
            call(&up, "POST", "/session/token-request", &[("Authorization", &auth(&master))], renew.as_bytes());
        assert_eq!(refused["code"], "390114");
        let unknown =
            call(&up, "POST", "/session/token-request", &[("Authorization", &auth("nope"))], renew.as_bytes());
        assert_eq!(unknown["code"], "390115");
    }

    #[test]
    fn slow_query_polls_then_answers() {
        let up = double();
        let (session, _) = login(&up);
        let sql = json!({"sqlText": "select * from small -- slow"}).to_string();
        let a = auth(&session);
        let first = call(&up, "POST", "/queries/v1/query-request", &[("Authorization", &a)], sql.as_bytes());
        assert_eq!(first["code"], "333333");
        let url = first["data"]["getResultUrl"].as_str().unwrap().to_owned();
        assert_eq!(call(&up, "GET", &url, &[("Authorization", &a)], b"")["code"], "333333");
        let done = call(&up, "GET", &url, &[("Authorization", &a)], b"");
        assert_eq!(done["data"]["queryId"], first["data"]["queryId"]);
        assert_eq!(done["data"]["returned"], results::SMALL_ROWS);
    }

    #[test]
    fn sql_api_refuses_without_a_good_jwt() {
        let up = double();
        let body = json!({"statement": "select 1"}).to_string();
        let none = call(&up, "POST", "/api/v2/statements", &[], body.as_bytes());
        assert_eq!((none["_status"].as_u64(), none["code"].as_str()), (Some(401), Some("390144")));
        let jwt = mint_keypair_jwt(TEST_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60).unwrap();
        let bearer = format!("Bearer {jwt}");
        let ok = call(&up, "POST", "/api/v2/statements", &[("Authorization", &bearer)], body.as_bytes());
        assert_eq!(ok["_status"], 200);
        assert_eq!(ok["data"], json!([["1"]]));
    }

    #[test]
    fn unknown_routes_are_404() {
        let up = double();
        assert_eq!(call(&up, "GET", "/nope", &[], b"")["_status"], 404);
        assert_eq!(up.stats().requests(EndpointKind::Other), 1);
    }
}
