//! What the double observed, for tests to assert on: atomic counters per endpoint and a
//! bounded log of the requests it received (decompressed bodies included).

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The endpoints the double tells apart; every request is counted under exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// `POST /session/v1/login-request`
    Login,
    /// `POST /session/token-request`
    TokenRequest,
    /// `POST /queries/v1/query-request`
    Query,
    /// `GET /queries/<qid>/result`
    QueryResult,
    /// `POST /session/heartbeat`
    Heartbeat,
    /// `POST /session?delete=true`
    Logout,
    /// `POST /queries/v1/abort-request` or `/queries/<qid>/abort-request`
    Abort,
    /// `POST /telemetry/send`
    Telemetry,
    /// `GET /monitoring/queries/<qid>`
    Monitoring,
    /// `POST /api/v2/statements`
    SqlApiSubmit,
    /// `GET /api/v2/statements/<handle>`
    SqlApiFetch,
    /// `POST /api/v2/statements/<handle>/cancel`
    SqlApiCancel,
    /// `GET /chunks/<qid>/<format>/<n>`: a chunk download of a chunked result.
    Chunk,
    /// Anything else (answered 404), and requests the transport could not parse.
    Other,
}

impl EndpointKind {
    /// Every kind, in declaration order.
    pub const ALL: [EndpointKind; 14] = [
        EndpointKind::Login,
        EndpointKind::TokenRequest,
        EndpointKind::Query,
        EndpointKind::QueryResult,
        EndpointKind::Heartbeat,
        EndpointKind::Logout,
        EndpointKind::Abort,
        EndpointKind::Telemetry,
        EndpointKind::Monitoring,
        EndpointKind::SqlApiSubmit,
        EndpointKind::SqlApiFetch,
        EndpointKind::SqlApiCancel,
        EndpointKind::Chunk,
        EndpointKind::Other,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Which endpoint it was routed to.
    pub kind: EndpointKind,
    /// `GET`, `POST`...
    pub method: String,
    /// The request target (`/path?query`), as sent.
    pub target: String,
    /// The header fields in order, as `(name, value)`, decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body after removing chunking and gzip.
    pub body: Bytes,
    /// Whether the body arrived gzip-compressed.
    pub body_was_gzip: bool,
}

impl RecordedRequest {
    /// The value of the first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Whether `needle` appears in the target, any header name or value, or the body.
    pub fn contains(&self, needle: &[u8]) -> bool {
        let found_in = |hay: &[u8]| !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle);
        found_in(self.target.as_bytes())
            || self.headers.iter().any(|(n, v)| found_in(n.as_bytes()) || found_in(v.as_bytes()))
            || found_in(&self.body)
    }
}

/// Counters and the request log. Shared by every runtime thread of one double.
#[derive(Debug)]
pub struct Stats {
    requests_total: AtomicU64,
    requests_by_kind: [AtomicU64; EndpointKind::ALL.len()],
    bytes_received: AtomicU64,
    connections_accepted: AtomicU64,
    logins: AtomicU64,
    login_refusals: AtomicU64,
    renewals: AtomicU64,
    log_capacity: usize,
    log: Mutex<VecDeque<RecordedRequest>>,
}

impl Stats {
    /// Empty statistics keeping the last `log_capacity` requests (0 keeps none, which
    /// spares the copies in benchmarks).
    pub fn new(log_capacity: usize) -> Stats {
        Stats {
            requests_total: AtomicU64::new(0),
            requests_by_kind: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_received: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            login_refusals: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            log_capacity,
            log: Mutex::new(VecDeque::with_capacity(log_capacity.min(1024))),
        }
    }

    /// Requests answered, of every kind.
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Requests answered for one endpoint kind.
    pub fn requests(&self, kind: EndpointKind) -> u64 {
        self.requests_by_kind[kind.index()].load(Ordering::Relaxed)
    }

    /// Bytes read from client sockets, as they were on the wire (heads, framing, bodies).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// TCP connections accepted.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Successful logins.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Refused logins (wrong account, user, password or JWT).
    pub fn login_refusals(&self) -> u64 {
        self.login_refusals.load(Ordering::Relaxed)
    }

    /// Successful session-token renewals.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// A copy of the logged requests, oldest first.
    pub fn recorded_requests(&self) -> Vec<RecordedRequest> {
        self.lock_log().iter().cloned().collect()
    }

    /// The logged requests of one kind, oldest first.
    pub fn recorded(&self, kind: EndpointKind) -> Vec<RecordedRequest> {
        self.lock_log().iter().filter(|r| r.kind == kind).cloned().collect()
    }

    /// The most recent logged request of one kind.
    pub fn last(&self, kind: EndpointKind) -> Option<RecordedRequest> {
        self.lock_log().iter().rev().find(|r| r.kind == kind).cloned()
    }

    /// Whether any logged request carried `needle` in its target, headers or decompressed
    /// body; for canaries such as "the upstream never saw the agent's OIDC token". Only the
    /// last `log_capacity` requests are searched.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.lock_log().iter().any(|r| r.contains(needle))
    }

    /// Empties the request log (the counters keep counting).
    pub fn clear_log(&self) {
        self.lock_log().clear();
    }

    pub(crate) fn add_bytes_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_connection(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_login(&self, accepted: bool) {
        let counter = if accepted { &self.logins } else { &self.login_refusals };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_renewal(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, kind: EndpointKind) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.requests_by_kind[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether requests are logged at all, so callers can skip building the record.
    pub(crate) fn logging(&self) -> bool {
        self.log_capacity > 0
    }

    pub(crate) fn log(&self, request: RecordedRequest) {
        if self.log_capacity == 0 {
            return;
        }
        let mut log = self.lock_log();
        if log.len() == self.log_capacity {
            log.pop_front();
        }
        log.push_back(request);
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, VecDeque<RecordedRequest>> {
        // A test that panicked while holding the lock leaves a usable log behind.
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new(1000)
    }
}
