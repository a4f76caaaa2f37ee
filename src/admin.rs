//! The reviewers' admin HTTP API: list the statements parked for review, approve or deny them.
//! It owns its own small blocking HTTP/1.1 server on a `std::net::TcpListener`, in its own
//! threads, apart from the cores; it decides nothing itself: every decision is the approvals
//! [`Ledger`]'s. It must not log statement text, reasons or tokens.
//!
//! # Endpoints
//!
//! Every request needs `Authorization: Bearer <token>`. The token is checked by the
//! [`Authenticate`] closure the gateway passes (its OIDC verifier), and the caller must be in one
//! of the `access_groups` given to [`start`] (an empty list lets nobody in). The ledger checks
//! on top that an approver is in the item's reviewer groups and is not the agent itself.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/approvals` | 200 `{"pending":[PendingView…]}`: the items whose reviewer groups include one of the caller's |
//! | `POST /v1/approvals/<query_id>/approve`, body `{"reason":"…"}` | 200 `{"query_id":"…","state":PollState}` |
//! | `POST /v1/approvals/<query_id>/deny`, body `{"reason":"…"}` | 200 the same shape |
//!
//! Errors are JSON `{"error":"a sentence","fault":"caller"|"server"}`: 400 (malformed request or
//! body, missing or empty reason), 401 (no or refused token), 403 (not in the access groups, not
//! a reviewer of the item, the agent reviewing itself), 404 (unknown route or id), 405, 408
//! (the request was not complete before [`AdminLimits::read_timeout`]), 409 (not pending any
//! more, or already approved by this reviewer), 411 (a body without `Content-Length`: chunked
//! bodies are refused), 413, 431, 500 (a decision took effect but its outcome could not be
//! recorded), 503 (at [`AdminLimits::connections_max`], the identity provider's keys could not
//! be fetched, or the recording could not take the decision: it was not applied).
//!
//! # How it serves
//!
//! One request per connection, answered with `Connection: close`: admin traffic is a few
//! requests a minute, and no keep-alive means no idle state to bound. A thread per connection,
//! at most [`AdminLimits::connections_max`] at once. At the cap, the oldest connection still
//! sending its request a second after it was accepted is closed to make room (idle clients cannot hold every slot and keep
//! reviewers out; a connection being answered is never cut); when none is, or twice the cap
//! are open, a connection gets 503 from the accept thread without a read. Heads go through the gateway's strict parser
//! ([`crate::http::parse_request_head`]). The accept loop polls a non-blocking listener, so
//! [`AdminHandle::stop`] (or dropping the handle) ends it within a few milliseconds; it then
//! shuts down the sockets of requests in flight and joins their threads.
//!
//! # What the gateway wires
//!
//! ```text
//! let handle = admin::start(listener, ledger.clone(), authenticate, recording, access_groups, AdminLimits::default())?;
//! …
//! handle.stop();
//! ```
//!
//! [`RecordDecisions`] is called before every approve or deny reaches the ledger (a decision it
//! cannot record is refused, 503, the ledger untouched) and after, with the ledger's answer,
//! refused ones included; never with the ledger's lock held, so it may wait for the disk.
//! Time is the system clock in Unix milliseconds, passed to the ledger.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::http::{self, BodyFraming, HeadError, Method, RequestHead};
use crate::policy::approvals::{Ledger, LedgerError, PendingView, PollState};
use crate::policy::rules::Subject;
use crate::proxy::unix_millis;

/// Checks a bearer token and returns who presented it, or why it was refused.
pub type Authenticate = Arc<dyn Fn(&str) -> Result<Subject, Refusal> + Send + Sync>;

/// Why [`Authenticate`] did not return a subject, as a sentence shown to the caller and logged
/// (so it must not contain the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller's fault: the token is malformed, expired, signed by an unknown key... (401).
    Token(String),
    /// Nobody's token is checkable now: the identity provider's keys could not be fetched
    /// or are too old (503, the server's side, worth a retry).
    ProviderUnavailable(String),
}

/// Records the reviewers' decisions. No decision reaches the ledger unless [`before`] took its
/// record, as no statement reaches the warehouse without its request record; [`after`]
/// records what the ledger made of it, and the reviewer's answer waits for it.
///
/// [`before`]: RecordDecisions::before
/// [`after`]: RecordDecisions::after
pub trait RecordDecisions: Send + Sync {
    /// Records a decision about to reach the ledger. An error (a sentence, shown to the
    /// reviewer) refuses the decision with 503 and leaves the ledger as it was.
    fn before(&self, decision: &AdminDecision) -> Result<(), String>;
    /// Records the decision's outcome: the item's state after it, or why the ledger refused
    /// it. An error answers 500: the decision stands (its record from [`before`] says who made
    /// it) but its outcome is not on record.
    ///
    /// [`before`]: RecordDecisions::before
    fn after(&self, decision: &AdminDecision, outcome: &Result<PollState, LedgerError>) -> Result<(), String>;
}

/// How often the accept loop looks for a stop request while no connection arrives.
const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long, after answering, the server keeps reading what the client still sends, so that
/// closing with unread bytes does not reset the connection before the answer is read.
const LINGER_TIME: Duration = Duration::from_millis(200);

/// The most bytes read while lingering.
const LINGER_BYTES_MAX: usize = 1 << 20;

/// The longest query id accepted in a path (ledger ids are 36-character UUIDs).
const QUERY_ID_BYTES_MAX: usize = 64;

/// Bounds on the admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once; more get 503.
    pub connections_max: usize,
    /// Longest request head, in bytes (431 beyond it). It holds the bearer token.
    pub head_bytes_max: usize,
    /// Largest request body, in bytes (413 beyond it).
    pub body_bytes_max: usize,
    /// Time from accepting a connection to having its whole request (408 beyond it).
    pub read_timeout: Duration,
    /// Time to write the whole answer, however slowly the client reads it, plus a second for
    /// each 256 KiB of it.
    pub write_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            connections_max: 32,
            head_bytes_max: 16 * 1024,
            body_bytes_max: 16 * 1024,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Approve or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    /// An approval (one of the N needed).
    Approve,
    /// A denial (one denies).
    Deny,
}

impl DecisionKind {
    /// The word in the path and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Approve => "approve",
            DecisionKind::Deny => "deny",
        }
    }
}

/// A reviewer's approve or deny, as handed to [`RecordDecisions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminDecision {
    /// The reviewer, as the [`Authenticate`] closure returned it.
    pub reviewer: Subject,
    /// The parked statement's synthetic query id.
    pub query_id: String,
    /// Approve or deny.
    pub kind: DecisionKind,
    /// The reviewer's reason, as sent.
    pub reason: String,
    /// When, in Unix milliseconds: the time it was asked for in [`RecordDecisions::before`],
    /// the time given to the ledger in [`RecordDecisions::after`].
    pub at_unix_ms: u64,
}

/// A running admin server. Dropping it stops the server as [`AdminHandle::stop`] does.
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    /// The server's count of connections being served.
    active: Arc<AtomicUsize>,
    accept_thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections being served now.
    pub fn connections_served(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, ends the requests in flight (their sockets are shut down) and joins
    /// every thread. Returns within a few milliseconds plus the time a request already inside
    /// the ledger takes; such a request's decision stands, but its answer may be lost.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(accept_thread) = self.accept_thread.take()
            && accept_thread.join().is_err()
        {
            warn!("The admin accept thread panicked.");
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What every connection thread shares.
struct Shared<P> {
    ledger: Arc<Mutex<Ledger<P>>>,
    authenticate: Authenticate,
    recording: Arc<dyn RecordDecisions>,
    access_groups: Vec<String>,
    limits: AdminLimits,
    /// Connections being served, for the cap.
    active: Arc<AtomicUsize>,
    /// The connections being served, so a stop can shut them down and a new connection at
    /// the cap can take the place of one still sending its request.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_connection_id: AtomicU64,
}

/// Starts the admin server on `listener` (already bound; it is made non-blocking).
pub fn start<P: Send + 'static>(
    listener: TcpListener,
    ledger: Arc<Mutex<Ledger<P>>>,
    authenticate: Authenticate,
    recording: Arc<dyn RecordDecisions>,
    access_groups: Vec<String>,
    limits: AdminLimits,
) -> io::Result<AdminHandle> {
    let local_addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    if access_groups.is_empty() {
        warn!(%local_addr, "The admin API has no access groups: every request will be refused.");
    }
    let shared = Arc::new(Shared {
        ledger,
        authenticate,
        recording,
        access_groups,
        limits,
        active: Arc::new(AtomicUsize::new(0)),
        in_flight: Mutex::new(HashMap::new()),
        next_connection_id: AtomicU64::new(0),
    });
    let active = shared.active.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let accept_stopping = stopping.clone();
    let accept_thread = std::thread::Builder::new()
        .name("snowgate-admin".into())
        .spawn(move || accept_loop(listener, shared, accept_stopping))?;
    info!(%local_addr, "The admin API is listening.");
    Ok(AdminHandle { local_addr, stopping, active, accept_thread: Some(accept_thread) })
}

fn accept_loop<P: Send + 'static>(listener: TcpListener, shared: Arc<Shared<P>>, stopping: Arc<AtomicBool>) {
    let mut connection_threads: Vec<JoinHandle<()>> = Vec::new();
    let mut refused = Refused::default();
    while !stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                connection_threads.retain(|thread| !thread.is_finished());
                admit(stream, peer, &shared, &mut connection_threads, &mut refused);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                refused.drain();
                std::thread::sleep(ACCEPT_POLL_INTERVAL);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                // Out of descriptors and the like: wait rather than spin, and keep serving.
                warn!(error = %error, "The admin API could not accept a connection.");
                std::thread::sleep(ACCEPT_POLL_INTERVAL * 10);
            }
        }
    }
    // Wake every connection thread blocked on its socket, then wait for all of them.
    for connection in shared.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
        let _ = connection.stream.shutdown(Shutdown::Both);
    }
    for thread in connection_threads {
        let _ = thread.join();
    }
    info!("The admin API stopped.");
}

/// Connections refused at the cap, answered and half-closed, whose late request bytes the
/// accept thread reads (without blocking) for [`LINGER_TIME`] before closing them: closing a
/// socket with unread bytes resets it, and the reset can destroy the 503 before it is read.
#[derive(Default)]
struct Refused {
    lingering: Vec<(TcpStream, Instant)>,
}

impl Refused {
    /// The most refused connections lingering at once; beyond it they are closed at once.
    const LINGERING_MAX: usize = 64;

    /// Answers 503 on `stream` without blocking and keeps it to linger.
    fn refuse(&mut self, stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        // A short answer fits the fresh socket's send buffer, so this write does not block
        // the accept thread; if it cannot be written whole, the connection is just closed.
        let answer = Answer::error(503, Fault::Server, "the admin API is at its connection limit; retry later");
        Self::read_available(&stream);
        if (&stream).write_all(&answer.to_bytes()).is_err() || stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        if self.lingering.len() < Self::LINGERING_MAX {
            self.lingering.push((stream, Instant::now() + LINGER_TIME));
        }
    }

    /// Reads what each lingering connection sent; closes those at their end or deadline.
    fn drain(&mut self) {
        let now = Instant::now();
        self.lingering.retain(|(stream, deadline)| now < *deadline && Self::read_available(stream));
    }

    /// Reads what is available without blocking; false once the peer closed or failed.
    fn read_available(stream: &TcpStream) -> bool {
        let mut scratch = [0u8; 4096];
        for _ in 0..16 {
            match (&*stream).read(&mut scratch) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Serves `stream` on a new thread, or answers 503 at the connection cap.
fn admit<P: Send + 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared<P>>,
    connection_threads: &mut Vec<JoinHandle<()>>,
    refused: &mut Refused,
) {
    if shared.active.load(Ordering::SeqCst) >= shared.limits.connections_max && !evict_one_reading(shared) {
        warn!(%peer, "Admin connection refused: at the connection limit.");
        refused.refuse(stream);
        return;
    }
    // Accepted sockets do not inherit the listener's non-blocking mode on every platform.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(registered) = stream.try_clone() else { return };
    let connection_id = shared.next_connection_id.fetch_add(1, Ordering::SeqCst);
    shared.active.fetch_add(1, Ordering::SeqCst);
    let reading = Arc::new(AtomicBool::new(true));
    let connection = InFlight { stream: registered, reading: reading.clone(), accepted: Instant::now() };
    shared.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(connection_id, connection);
    let guard = ConnectionGuard { shared: shared.clone(), connection_id };
    let spawned = std::thread::Builder::new().name("snowgate-admin-conn".into()).spawn(move || {
        let guard = guard;
        serve(stream, peer, &guard.shared, &reading);
    });
    match spawned {
        Ok(thread) => connection_threads.push(thread),
        // The closure, and with it the guard, was dropped: the slot is released.
        Err(error) => warn!(%peer, error = %error, "The admin API could not start a connection thread."),
    }
}

/// A connection being served: a clone of its socket, and whether it is still sending its
/// request (until its thread has read it whole, or it was closed to make room).
struct InFlight {
    stream: TcpStream,
    reading: Arc<AtomicBool>,
    accepted: Instant,
}

/// How long a connection may take to send its request before, at the cap, it may be closed
/// to make room: a reviewer's client sends its request at once, and one just accepted whose
/// thread has not read it yet is not cut.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// At the connection cap, closes the oldest connection still sending its request after
/// [`EVICTABLE_AFTER`] (its thread then ends and frees the slot) so the new one can be served:
/// clients that connect and send nothing cannot hold the slots for the whole read timeout,
/// and a connection being answered is never cut. `false` when no connection is so, or twice
/// the cap are open (closed ones not yet gone).
fn evict_one_reading<P>(shared: &Shared<P>) -> bool {
    if shared.active.load(Ordering::SeqCst) >= shared.limits.connections_max.saturating_mul(2) {
        return false;
    }
    let in_flight = shared.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut oldest_first: Vec<(&u64, &InFlight)> = in_flight.iter().collect();
    oldest_first.sort_unstable_by_key(|(id, _)| **id);
    for (id, connection) in oldest_first.into_iter().filter(|(_, c)| c.accepted.elapsed() >= EVICTABLE_AFTER) {
        // Whoever takes the flag first wins: its thread, having read the request, or this.
        if connection.reading.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            let _ = connection.stream.shutdown(Shutdown::Both);
            info!(
                connection = id,
                "At the admin connection limit: closed the oldest connection still sending its request."
            );
            return true;
        }
    }
    false
}

/// Releases a connection's slot and registration when its thread ends, however it ends.
struct ConnectionGuard<P> {
    shared: Arc<Shared<P>>,
    connection_id: u64,
}

impl<P> Drop for ConnectionGuard<P> {
    fn drop(&mut self) {
        self.shared.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.connection_id);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whose fault a refusal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Fault {
    Caller,
    Server,
}

/// An answer to write: a status and a JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// Extra header fields (constants only).
    fields: Vec<(&'static str, &'static str)>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    fault: Fault,
}

impl Answer {
    fn json<T: Serialize>(status: u16, value: &T) -> Answer {
        match serde_json::to_vec(value) {
            Ok(body) => Answer { status, body, fields: Vec::new() },
            Err(_) => Answer::error(500, Fault::Server, "the answer could not be serialised"),
        }
    }

    fn error(status: u16, fault: Fault, error: &str) -> Answer {
        let body = serde_json::to_vec(&ErrorBody { error, fault }).unwrap_or_default();
        Answer { status, body, fields: Vec::new() }
    }

    fn with_field(mut self, name: &'static str, value: &'static str) -> Answer {
        self.fields.push((name, value));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            self.body.len()
        )
        .into_bytes();
        for (name, value) in &self.fields {
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        409 => "Conflict",
        411 => "Length Required",
        other => http::reason(other),
    }
}

/// A whole request as read from the socket.
struct Request {
    head: RequestHead,
    body: Vec<u8>,
}

/// Serves one request on `stream`, then closes it.
fn serve<P>(mut stream: TcpStream, peer: SocketAddr, shared: &Shared<P>, reading: &AtomicBool) {
    let limits = shared.limits;
    let read = read_request(&mut stream, &limits);
    // Closed to make room while it was reading: nothing of it is handled.
    if reading.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return;
    }
    let answer = match read {
        Ok(Some(request)) => handle(&request, shared),
        // The peer closed (or a stop shut the socket down) before a whole request: nothing
        // to answer.
        Ok(None) => return,
        Err(answer) => {
            info!(%peer, status = answer.status, "Admin request refused before routing.");
            answer
        }
    };
    let bytes = answer.to_bytes();
    if write_all_by(&stream, &bytes, Instant::now() + write_time(limits.write_timeout, bytes.len())).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    linger(&mut stream);
}

/// The slowest a client may read an answer, past the write timeout: a long pending list
/// through an SSH tunnel still arrives, and a client reading a few bytes at a time is still
/// cut off.
const WRITE_BYTES_PER_SECOND_MIN: usize = 256 * 1024;

/// The time to write an answer of `bytes`: the write timeout, and more for a long one.
fn write_time(timeout: Duration, bytes: usize) -> Duration {
    timeout + Duration::from_millis((bytes as u64).saturating_mul(1000) / WRITE_BYTES_PER_SECOND_MIN as u64)
}

/// Writes all of `bytes` by `deadline`: a socket's write timeout bounds each write, so a peer
/// reading a few bytes at a time could otherwise hold the thread (and a connection slot) for as
/// long as it likes.
fn write_all_by(stream: &TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads what the client still sends, briefly and boundedly, so the close does not turn into a
/// reset that could destroy the answer before the client reads it.
fn linger(stream: &mut TcpStream) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut scratch = [0u8; 8192];
    let mut read_bytes = 0;
    while read_bytes < LINGER_BYTES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => read_bytes += n,
        }
    }
}

/// Reads one whole request within [`AdminLimits::read_timeout`]. `Ok(None)` when the peer
/// closed first; `Err` is the refusal to answer.
fn read_request(stream: &mut TcpStream, limits: &AdminLimits) -> Result<Option<Request>, Answer> {
    let deadline = Instant::now() + limits.read_timeout;
    let http_limits = http::Limits {
        head_bytes_max: limits.head_bytes_max,
        body_bytes_max: limits.body_bytes_max,
        ..http::Limits::default()
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut scan = http::HeadScan::default();
    let head = loop {
        // Parsed a few times however the head is cut (`HeadScan`), and once past the limit.
        if scan.worth_parsing(&buf) || buf.len() > limits.head_bytes_max {
            match http::parse_request_head(&buf, &http_limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(error) => return Err(head_refusal(&error)),
            }
        }
        // One byte past the limit is enough for the parser to say the head is too large.
        let want = (limits.head_bytes_max + 1).saturating_sub(buf.len()).clamp(1, 8192);
        if read_some(stream, &mut buf, want, deadline)? == 0 {
            return Ok(None);
        }
    };
    let body_len = match head.framing {
        BodyFraming::Empty => 0,
        // The parser already refused a length over the limit.
        BodyFraming::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
        BodyFraming::Chunked | BodyFraming::UntilClose => {
            return Err(Answer::error(
                411,
                Fault::Caller,
                "a request body needs Content-Length; chunked bodies are refused",
            ));
        }
    };
    let mut body = buf.split_off(head.head_len.min(buf.len()));
    // Not to HTTP/1.0, which knows no interim answer (RFC 9110 §10.1.1).
    if body.len() < body_len
        && head.minor_version >= 1
        && head.headers.has_token("expect", "100-continue")
        && write_all_by(stream, b"HTTP/1.1 100 Continue\r\n\r\n", Instant::now() + limits.write_timeout).is_err()
    {
        return Ok(None);
    }
    while body.len() < body_len {
        let want = (body_len - body.len()).min(8192);
        if read_some(stream, &mut body, want, deadline)? == 0 {
            return Ok(None);
        }
    }
    // Bytes after the body (a pipelined request) are ignored: the connection closes after the
    // answer.
    body.truncate(body_len);
    Ok(Some(Request { head, body }))
}

/// Reads up to `want` bytes onto `buf` before `deadline`. Returns how many (0: the peer closed).
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize, deadline: Instant) -> Result<usize, Answer> {
    let timed_out = || Answer::error(408, Fault::Caller, "the request was not complete in time");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Ok(0);
        }
        let start = buf.len();
        buf.resize(start + want, 0);
        let result = stream.read(&mut buf[start..]);
        buf.truncate(start + result.as_ref().map_or(0, |n| *n));
        match result {
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(_) => return Ok(0),
        }
    }
}

fn head_refusal(error: &HeadError) -> Answer {
    let message = match error {
        HeadError::TooLarge { .. } => "the request head is too large",
        HeadError::BodyTooLarge { .. } => "the request body is too large",
        HeadError::Syntax(_) => "the request head is malformed",
        HeadError::Framing(_) => "the request's framing is ambiguous or forbidden",
    };
    Answer::error(error.status(), Fault::Caller, message)
}

/// The route a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    List,
    Decide { query_id: &'a str, kind: DecisionKind },
}

/// Routes by path; `Err` is the refusal (404 or 405).
fn route(method: Method, path: &str) -> Result<Route<'_>, Answer> {
    let not_found = || Answer::error(404, Fault::Caller, "no such admin endpoint");
    let rest = path.strip_prefix("/v1/approvals").ok_or_else(not_found)?;
    if rest.is_empty() {
        return if method == Method::Get {
            Ok(Route::List)
        } else {
            Err(Answer::error(405, Fault::Caller, "use GET to list pending approvals").with_field("allow", "GET"))
        };
    }
    let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
    let (query_id, action) = rest.split_once('/').ok_or_else(not_found)?;
    let kind = match action {
        "approve" => DecisionKind::Approve,
        "deny" => DecisionKind::Deny,
        _ => return Err(not_found()),
    };
    if query_id.is_empty()
        || query_id.len() > QUERY_ID_BYTES_MAX
        || !query_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Answer::error(404, Fault::Caller, "no parked statement with this id"));
    }
    if method != Method::Post {
        return Err(Answer::error(405, Fault::Caller, "use POST to approve or deny").with_field("allow", "POST"));
    }
    Ok(Route::Decide { query_id, kind })
}

/// Answers one whole request.
fn handle<P>(request: &Request, shared: &Shared<P>) -> Answer {
    let reviewer = match authenticate(&request.head, shared) {
        Ok(reviewer) => reviewer,
        Err(answer) => return answer,
    };
    match route(request.head.method, request.head.path()) {
        Ok(Route::List) => list(&reviewer, shared),
        Ok(Route::Decide { query_id, kind }) => decide(&reviewer, query_id, kind, &request.body, shared),
        Err(answer) => answer,
    }
}

/// Checks the bearer token and the access groups.
fn authenticate<P>(head: &RequestHead, shared: &Shared<P>) -> Result<Subject, Answer> {
    let unauthorized =
        |message: &str| Answer::error(401, Fault::Caller, message).with_field("www-authenticate", "Bearer");
    if head.headers.count("authorization") != 1 {
        return Err(unauthorized("send exactly one Authorization: Bearer <token> header"));
    }
    let value = head.headers.get_str("authorization").unwrap_or_default();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
        _ => return Err(unauthorized("send exactly one Authorization: Bearer <token> header")),
    };
    let subject = match (shared.authenticate)(token) {
        Ok(subject) => subject,
        Err(Refusal::Token(why)) => {
            info!(why = %why, "Admin request refused: the bearer token was not accepted.");
            return Err(unauthorized(&format!("the bearer token was not accepted: {why}")));
        }
        Err(Refusal::ProviderUnavailable(why)) => {
            warn!(why = %why, "Admin request refused: the identity provider's keys are unavailable.");
            let message = format!("{why}: the identity provider's keys could not be fetched; retry later");
            return Err(Answer::error(503, Fault::Server, &message));
        }
    };
    if !subject.groups.iter().any(|group| shared.access_groups.contains(group)) {
        info!(sub = %subject.sub, "Admin request refused: the caller is in none of the admin access groups.");
        return Err(Answer::error(403, Fault::Caller, "the caller is in none of the admin API's access groups"));
    }
    Ok(subject)
}

#[derive(Serialize)]
struct ListBody {
    pending: Vec<PendingView>,
}

fn list<P>(reviewer: &Subject, shared: &Shared<P>) -> Answer {
    let now = unix_millis();
    let mut pending = Ledger::lock(&shared.ledger).list_pending(now);
    pending.retain(|item| item.reviewer_groups.iter().any(|group| reviewer.groups.contains(group)));
    info!(sub = %reviewer.sub, n_pending = pending.len(), "Listed pending approvals.");
    Answer::json(200, &ListBody { pending })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionRequest {
    reason: String,
}

#[derive(Serialize)]
struct DecisionBody<'a> {
    query_id: &'a str,
    state: &'a PollState,
}

fn decide<P>(reviewer: &Subject, query_id: &str, kind: DecisionKind, body: &[u8], shared: &Shared<P>) -> Answer {
    let reason = match serde_json::from_slice::<crate::json::Object<DecisionRequest>>(body).map(|o| o.0) {
        Ok(request) if !request.reason.trim().is_empty() => request.reason,
        Ok(_) => return Answer::error(400, Fault::Caller, "the reason must not be empty"),
        Err(_) => return Answer::error(400, Fault::Caller, r#"the body must be a JSON object {"reason":"..."}"#),
    };
    let mut decision = AdminDecision {
        reviewer: reviewer.clone(),
        query_id: query_id.to_owned(),
        kind,
        reason,
        at_unix_ms: unix_millis(),
    };
    if let Err(error) = shared.recording.before(&decision) {
        warn!(sub = %reviewer.sub, query_id, action = kind.as_str(), error = %error, "A reviewer's decision was refused: it could not be recorded.");
        return Answer::error(
            503,
            Fault::Server,
            &format!("recording unavailable, the decision was not applied: {error}"),
        );
    }
    // The ledger decides at the time it is told, not when the recording was asked (which may
    // have waited for the disk): a deadline passed meanwhile has passed.
    decision.at_unix_ms = unix_millis();
    let mut ledger = Ledger::lock(&shared.ledger);
    let outcome = match kind {
        DecisionKind::Approve => ledger.approve(query_id, reviewer, &decision.reason, decision.at_unix_ms),
        DecisionKind::Deny => ledger.deny(query_id, reviewer, &decision.reason, decision.at_unix_ms),
    };
    drop(ledger);
    let recorded = shared.recording.after(&decision, &outcome);
    match (&outcome, recorded) {
        (Ok(state), Ok(())) => {
            // The state's name only: a denial's reason is free text, kept out of the log.
            info!(sub = %reviewer.sub, query_id, action = kind.as_str(), state = state.name(), "Recorded a reviewer's decision.");
            Answer::json(200, &DecisionBody { query_id, state })
        }
        (Ok(_), Err(error)) => {
            warn!(sub = %reviewer.sub, query_id, action = kind.as_str(), error = %error, "A reviewer's decision took effect but its outcome was not recorded.");
            Answer::error(
                500,
                Fault::Server,
                &format!("the decision took effect (it is on record) but recording its outcome failed: {error}"),
            )
        }
        (Err(error), recorded) => {
            info!(sub = %reviewer.sub, query_id, action = kind.as_str(), error = %error, "The ledger refused a reviewer's decision.");
            if let Err(record_error) = recorded {
                warn!(sub = %reviewer.sub, query_id, error = %record_error, "The outcome of a refused decision was not recorded.");
            }
            let (status, fault) = match error {
                LedgerError::NotFound => (404, Fault::Caller),
                LedgerError::NotPending(_) | LedgerError::AlreadyApproved => (409, Fault::Caller),
                LedgerError::NotAReviewer | LedgerError::SelfReview => (403, Fault::Caller),
                LedgerError::BadReason(_) => (400, Fault::Caller),
                // Parking and hand-over errors cannot come from a decision.
                LedgerError::RequestIdReused
                | LedgerError::BadRequestId
                | LedgerError::TooManyPending
                | LedgerError::SubjectFull
                | LedgerError::Full
                | LedgerError::NotApproved(_) => (500, Fault::Server),
            };
            Answer::error(status, fault, &error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::approvals::{LedgerLimits, ParkRequest, RequestKey};
    use crate::policy::rules::ReviewRequirement;

    type TestLedger = Arc<Mutex<Ledger<u32>>>;

    struct Server {
        handle: AdminHandle,
        ledger: TestLedger,
        recording: Arc<TestRecording>,
    }

    type Outcome = Result<PollState, LedgerError>;

    /// What the recording saw, in order: `before` entries have no outcome. It refuses what
    /// its switches say.
    #[derive(Default)]
    struct TestRecording {
        entries: Mutex<Vec<(AdminDecision, Option<Outcome>)>>,
        refuse_before: AtomicBool,
        refuse_after: AtomicBool,
        /// How long `before` takes (a strict recording waiting for the disk).
        before_takes: Mutex<Duration>,
        /// How many `before` calls have started.
        befores_started: AtomicUsize,
    }

    impl RecordDecisions for TestRecording {
        fn before(&self, decision: &AdminDecision) -> Result<(), String> {
            if self.refuse_before.load(Ordering::SeqCst) {
                return Err("the disk is full".into());
            }
            self.befores_started.fetch_add(1, Ordering::SeqCst);
            let takes = *self.before_takes.lock().unwrap();
            std::thread::sleep(takes);
            self.entries.lock().unwrap().push((decision.clone(), None));
            Ok(())
        }

        fn after(&self, decision: &AdminDecision, outcome: &Outcome) -> Result<(), String> {
            if self.refuse_after.load(Ordering::SeqCst) {
                return Err("the disk is full".into());
            }
            self.entries.lock().unwrap().push((decision.clone(), Some(outcome.clone())));
            Ok(())
        }
    }

    impl Server {
        /// The outcomes recorded, each after its decision's `before` entry.
        fn decisions(&self) -> Vec<(AdminDecision, Outcome)> {
            let entries = self.recording.entries.lock().unwrap();
            let mut done = Vec::new();
            for (i, (decision, outcome)) in entries.iter().enumerate() {
                if let Some(outcome) = outcome {
                    let same = |d: &AdminDecision| {
                        (&d.reviewer, &d.query_id, d.kind, &d.reason)
                            == (&decision.reviewer, &decision.query_id, decision.kind, &decision.reason)
                            && d.at_unix_ms <= decision.at_unix_ms
                    };
                    assert!(entries[..i].iter().any(|(d, o)| o.is_none() && same(d)), "no record before {decision:?}");
                    done.push((decision.clone(), outcome.clone()));
                }
            }
            done
        }
    }

    /// Tokens are fixed strings: `alice` and `bob` review for `dba`, `eve` has admin access but
    /// reviews nothing, `agent` is the agent that parked the statements (and a dba), `outsider`
    /// has no admin access.
    fn subject_for(token: &str) -> Result<Subject, Refusal> {
        let (sub, groups): (&str, &[&str]) = match token {
            "token-alice" => ("alice", &["reviewers", "dba"]),
            "token-bob" => ("bob", &["reviewers", "dba"]),
            "token-eve" => ("eve", &["reviewers", "finance"]),
            "token-agent" => ("agent", &["reviewers", "dba"]),
            "token-outsider" => ("mallory", &["analysts", "dba"]),
            "token-idp-down" => return Err(Refusal::ProviderUnavailable("OIDC signing keys are stale".into())),
            _ => return Err(Refusal::Token("unknown test token".into())),
        };
        Ok(Subject { sub: sub.into(), groups: groups.iter().map(|g| (*g).to_owned()).collect() })
    }

    fn start_server(limits: AdminLimits) -> Server {
        let ledger: TestLedger = Arc::new(Mutex::new(Ledger::new(LedgerLimits::default())));
        let recording = Arc::new(TestRecording::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handle =
            start(listener, ledger.clone(), Arc::new(subject_for), recording.clone(), vec!["reviewers".into()], limits)
                .unwrap();
        Server { handle, ledger, recording }
    }

    fn park(ledger: &TestLedger, request_id: &str, reviewer_group: &str, approvals: u32) -> String {
        park_for(ledger, request_id, reviewer_group, approvals, Duration::from_secs(600))
    }

    fn park_for(
        ledger: &TestLedger,
        request_id: &str,
        reviewer_group: &str,
        approvals: u32,
        timeout: Duration,
    ) -> String {
        let request = ParkRequest {
            key: RequestKey { sub: "agent".into(), session_id: 7, request_id: request_id.into() },
            agent_groups: vec!["analysts".into()],
            statement_text: format!("delete from t where id = '{request_id}'"),
            bindings: None,
            settings: std::collections::BTreeMap::from([("role".to_owned(), "ANALYST".to_owned())]),
            agent_context: Some("trace-1".into()),
            requirement: ReviewRequirement { approvals, reviewer_groups: vec![reviewer_group.into()], timeout },
            rule_name: Some("writes need review".into()),
            payload: 1,
            payload_bytes: 8,
        };
        ledger.lock().unwrap().park(request, unix_millis()).unwrap().query_id
    }

    /// Sends raw bytes, reads the whole answer, returns (status, JSON body).
    fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(raw).unwrap();
        read_answer(&mut stream)
    }

    fn read_answer(stream: &mut TcpStream) -> (u16, serde_json::Value) {
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap())
    }

    fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
        exchange(addr, format!("GET {path} HTTP/1.1\r\nhost: admin\r\n{auth}\r\n").as_bytes())
    }

    fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        exchange(addr, raw.as_bytes())
    }

    fn decide_path(query_id: &str, action: &str) -> String {
        format!("/v1/approvals/{query_id}/{action}")
    }

    #[test]
    fn lists_only_the_items_the_caller_reviews() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let for_dba = park(&server.ledger, "r1", "dba", 1);
        park(&server.ledger, "r2", "security", 1);
        let (status, body) = get(addr, "/v1/approvals", Some("token-alice"));
        assert_eq!(status, 200);
        let pending = body["pending"].as_array().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0]["query_id"], for_dba.as_str());
        assert_eq!(pending[0]["sub"], "agent");
        assert_eq!(pending[0]["statement_text"], "delete from t where id = 'r1'");
        assert_eq!(pending[0]["rule_name"], "writes need review");
        assert_eq!(pending[0]["settings"], serde_json::json!({"role": "ANALYST"}));
        assert_eq!(pending[0]["bindings"], serde_json::Value::Null);
        let (status, body) = get(addr, "/v1/approvals", Some("token-eve"));
        assert_eq!((status, body["pending"].as_array().unwrap().len()), (200, 0));
    }

    #[test]
    fn approvals_count_until_the_statement_is_approved() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 2);
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-alice", r#"{"reason":"checked"}"#);
        assert_eq!(status, 200);
        assert_eq!(body["query_id"], id.as_str());
        assert_eq!(body["state"]["state"], "pending");
        assert_eq!(
            (body["state"]["approvals"].as_u64(), body["state"]["approvals_required"].as_u64()),
            (Some(1), Some(2))
        );
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-alice", r#"{"reason":"again"}"#);
        assert_eq!((status, body["fault"].as_str()), (409, Some("caller")));
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-bob", r#"{"reason":"fine"}"#);
        assert_eq!((status, body["state"]["state"].as_str()), (200, Some("approved")));
        let approved = server.ledger.lock().unwrap().take_approved(&id, "agent", 7, unix_millis()).unwrap();
        assert_eq!(approved.approvals.iter().map(|a| a.reviewer.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        let decisions = server.decisions();
        assert_eq!(decisions.len(), 3);
        assert_eq!(decisions[0].0.reviewer.sub, "alice");
        assert_eq!(decisions[0].0.kind, DecisionKind::Approve);
        assert_eq!(decisions[0].0.reason, "checked");
        assert_eq!(decisions[1].1, Err(LedgerError::AlreadyApproved));
        assert_eq!(decisions[2].1, Ok(PollState::Approved));
    }

    #[test]
    fn a_decision_the_recording_cannot_take_is_not_applied() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        server.recording.refuse_before.store(true, Ordering::SeqCst);
        for action in ["approve", "deny"] {
            let (status, body) = post(addr, &decide_path(&id, action), "token-alice", r#"{"reason":"ok"}"#);
            assert_eq!((status, body["fault"].as_str()), (503, Some("server")), "{body}");
            assert!(body["error"].as_str().unwrap().contains("not applied"), "{body}");
        }
        // The ledger is as it was: still pending, with no approval.
        assert_eq!(server.ledger.lock().unwrap().poll(&id, "agent", 7, unix_millis()).unwrap().name(), "pending");
        assert!(server.recording.entries.lock().unwrap().is_empty());
        // Once the recording takes it, the same decision goes through.
        server.recording.refuse_before.store(false, Ordering::SeqCst);
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-alice", r#"{"reason":"ok"}"#);
        assert_eq!((status, body["state"]["state"].as_str()), (200, Some("approved")), "{body}");
    }

    #[test]
    fn a_decision_takes_effect_at_the_time_the_ledger_is_told() {
        // The recording takes longer than the item has left: the approval arrives after its
        // deadline and must not count, though it was asked for before.
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park_for(&server.ledger, "r1", "dba", 1, Duration::from_millis(300));
        *server.recording.before_takes.lock().unwrap() = Duration::from_millis(600);
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-alice", r#"{"reason":"ok"}"#);
        assert_ne!(body["state"]["state"], "approved", "{status} {body}");
        assert_ne!(
            server.ledger.lock().unwrap().poll(&id, "agent", 7, unix_millis()).map(|state| state.name()),
            Ok("approved")
        );
    }

    /// A panic elsewhere while holding the ledger's lock does not stop reviewers: the ledger is
    /// consistent, so a decision is applied and its request and outcome are both on record.
    #[test]
    fn a_poisoned_ledger_lock_still_takes_decisions_with_both_records() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        let ledger = Arc::clone(&server.ledger);
        let panicked = std::thread::spawn(move || {
            let _held = ledger.lock().unwrap();
            panic!("a panic while the ledger is locked");
        })
        .join();
        assert!(panicked.is_err() && server.ledger.is_poisoned());
        let (status, body) = get(addr, "/v1/approvals", Some("token-alice"));
        assert_eq!((status, body["pending"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-alice", r#"{"reason":"ok"}"#);
        assert_eq!((status, body["state"]["state"].as_str()), (200, Some("approved")), "{body}");
        let decisions: Vec<_> = server.recording.entries.lock().unwrap().iter().map(|e| e.1.clone()).collect();
        assert_eq!(decisions, [None, Some(Ok(PollState::Approved))]);
    }

    #[test]
    fn a_decision_whose_outcome_is_not_recorded_says_so() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        server.recording.refuse_after.store(true, Ordering::SeqCst);
        let (status, body) = post(addr, &decide_path(&id, "deny"), "token-alice", r#"{"reason":"no"}"#);
        assert_eq!((status, body["fault"].as_str()), (500, Some("server")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("took effect"), "{body}");
        // It took effect, and its record from before names who made it.
        assert_eq!(
            server.ledger.lock().unwrap().poll(&id, "agent", 7, unix_millis()).unwrap(),
            PollState::Denied { reason: "no".into() }
        );
        let entries = server.recording.entries.lock().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].0.reviewer.sub.as_str(), entries[0].0.kind, &entries[0].1),
            ("alice", DecisionKind::Deny, &None)
        );
    }

    #[test]
    fn a_denial_denies_and_a_second_one_conflicts() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 2);
        let (status, body) = post(addr, &decide_path(&id, "deny"), "token-bob", r#"{"reason":"not on a Friday"}"#);
        assert_eq!(status, 200);
        assert_eq!(body["state"], serde_json::json!({"state": "denied", "reason": "not on a Friday"}));
        let (status, body) = post(addr, &decide_path(&id, "deny"), "token-alice", r#"{"reason":"me too"}"#);
        assert_eq!(status, 409);
        assert_eq!(body["error"], "the parked statement is no longer waiting for a decision (it is denied)");
        assert_eq!(
            server.ledger.lock().unwrap().poll(&id, "agent", 7, unix_millis()).unwrap(),
            PollState::Denied { reason: "not on a Friday".into() }
        );
    }

    #[test]
    fn a_deny_needs_a_reason_and_a_json_body() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        for body in ["", "{}", r#"{"reason":"  "}"#, r#"{"reason":"x","extra":1}"#, "not json", r#"["by position"]"#] {
            let (status, answer) = post(addr, &decide_path(&id, "deny"), "token-alice", body);
            assert_eq!((status, answer["fault"].as_str()), (400, Some("caller")), "body {body:?}");
        }
        // Nothing reached the ledger.
        assert!(server.recording.entries.lock().unwrap().is_empty());
        assert_eq!(server.ledger.lock().unwrap().list_pending(unix_millis()).len(), 1);
    }

    #[test]
    fn tokens_are_required_and_checked() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let (status, body) = get(addr, "/v1/approvals", None);
        assert_eq!((status, body["fault"].as_str()), (401, Some("caller")));
        let (status, body) = get(addr, "/v1/approvals", Some("token-unknown"));
        assert_eq!(status, 401);
        assert_eq!(body["error"], "the bearer token was not accepted: unknown test token");
        // An identity provider that cannot vouch for anyone is the server's side, not the token's.
        let (status, body) = get(addr, "/v1/approvals", Some("token-idp-down"));
        assert_eq!((status, body["fault"].as_str()), (503, Some("server")), "{body}");
        assert!(body["error"].as_str().unwrap().ends_with("retry later"), "{body}");
        let (status, _) =
            exchange(addr, b"GET /v1/approvals HTTP/1.1\r\nhost: a\r\nauthorization: Basic YWxpY2U6eA==\r\n\r\n");
        assert_eq!(status, 401);
        let (status, _) = exchange(
            addr,
            b"GET /v1/approvals HTTP/1.1\r\nhost: a\r\nauthorization: Bearer token-alice\r\nauthorization: Bearer token-bob\r\n\r\n",
        );
        assert_eq!(status, 401);
    }

    #[test]
    fn callers_outside_the_access_or_reviewer_groups_are_forbidden() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        // In `dba` but not in the admin access group.
        let (status, _) = get(addr, "/v1/approvals", Some("token-outsider"));
        assert_eq!(status, 403);
        let (status, _) = post(addr, &decide_path(&id, "approve"), "token-outsider", r#"{"reason":"ok"}"#);
        assert_eq!(status, 403);
        // Admin access but not a reviewer of the item.
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-eve", r#"{"reason":"ok"}"#);
        assert_eq!(status, 403);
        assert_eq!(body["error"], "the reviewer is not in a reviewer group for this statement");
        // The agent itself.
        let (status, body) = post(addr, &decide_path(&id, "approve"), "token-agent", r#"{"reason":"ok"}"#);
        assert_eq!(status, 403);
        assert_eq!(body["error"], "an agent cannot review its own statement");
        assert!(matches!(
            server.ledger.lock().unwrap().poll(&id, "agent", 7, unix_millis()).unwrap(),
            PollState::Pending { approvals: 0, .. }
        ));
    }

    #[test]
    fn unknown_ids_routes_and_methods() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let unknown = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f";
        let (status, body) = post(addr, &decide_path(unknown, "approve"), "token-alice", r#"{"reason":"ok"}"#);
        assert_eq!((status, body["error"].as_str()), (404, Some("no parked statement with this id for this caller")));
        assert_eq!(post(addr, &decide_path("../etc", "approve"), "token-alice", r#"{"reason":"ok"}"#).0, 404);
        assert_eq!(post(addr, &decide_path(unknown, "escalate"), "token-alice", r#"{"reason":"ok"}"#).0, 404);
        assert_eq!(get(addr, "/v1/other", Some("token-alice")).0, 404);
        assert_eq!(get(addr, "/v1/approvalsx", Some("token-alice")).0, 404);
        assert_eq!(get(addr, &decide_path(unknown, "deny"), Some("token-alice")).0, 405);
        assert_eq!(post(addr, "/v1/approvals", "token-alice", "{}").0, 405);
    }

    #[test]
    fn oversize_and_unframed_requests_are_refused() {
        let limits = AdminLimits { body_bytes_max: 1024, head_bytes_max: 2048, ..AdminLimits::default() };
        let server = start_server(limits);
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        let long_reason = format!(r#"{{"reason":"{}"}}"#, "x".repeat(2000));
        let (status, body) = post(addr, &decide_path(&id, "deny"), "token-alice", &long_reason);
        assert_eq!((status, body["error"].as_str()), (413, Some("the request body is too large")));
        let big_head = format!("GET /v1/approvals HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\n\r\n", "p".repeat(3000));
        assert_eq!(exchange(addr, big_head.as_bytes()).0, 431);
        let chunked = format!(
            "POST {} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer token-alice\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            decide_path(&id, "deny")
        );
        assert_eq!(exchange(addr, chunked.as_bytes()).0, 411);
        assert_eq!(exchange(addr, b"GET /v1/approvals HTTP/1.1\nhost: a\n\n").0, 400);
        assert_eq!(server.ledger.lock().unwrap().list_pending(unix_millis()).len(), 1);
    }

    #[test]
    fn slow_clients_get_408() {
        let limits = AdminLimits { read_timeout: Duration::from_millis(200), ..AdminLimits::default() };
        let server = start_server(limits);
        let mut stream = TcpStream::connect(server.handle.local_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET /v1/approvals HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let (status, _) = read_answer(&mut stream);
        assert_eq!(status, 408);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Connections being answered (decisions waiting for a slow recording) hold their slots:
    /// past the cap a new connection gets 503, and once they are done it is served.
    #[test]
    fn the_connection_cap_answers_503_and_frees_slots() {
        let limits = AdminLimits { connections_max: 2, ..AdminLimits::default() };
        let server = start_server(limits);
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 2);
        *server.recording.before_takes.lock().unwrap() = Duration::from_secs(2);
        let deciding: Vec<_> = ["token-alice", "token-bob"]
            .into_iter()
            .map(|token| {
                let path = decide_path(&id, "approve");
                std::thread::spawn(move || post(addr, &path, token, r#"{"reason":"ok"}"#))
            })
            .collect();
        // Both decisions are being answered (each waiting for its record) before the probe.
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.recording.befores_started.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.recording.befores_started.load(Ordering::SeqCst), 2);
        let (status, body) = get(addr, "/v1/approvals", Some("token-alice"));
        assert_eq!((status, body["fault"].as_str()), (503, Some("server")));
        for decided in deciding {
            assert_eq!(decided.join().unwrap().0, 200);
        }
        // Their threads end once their clients have read the answers; then a slot is free.
        let deadline = Instant::now() + Duration::from_secs(5);
        let served = loop {
            let status = get(addr, "/v1/approvals", Some("token-alice")).0;
            if status != 503 || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(served, 200);
    }

    /// Clients that connect and send nothing cannot keep reviewers out: at the cap, the oldest
    /// connection still sending its request is closed and the new one served.
    #[test]
    fn idle_connections_at_the_cap_make_room_for_a_request() {
        let limits = AdminLimits { connections_max: 2, ..AdminLimits::default() };
        let server = start_server(limits);
        let addr = server.handle.local_addr();
        let mut first = TcpStream::connect(addr).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        second.write_all(b"GET /v1/appr").unwrap();
        wait_for_connections(&server, 2);
        // Just accepted, they are not cut (their requests may be on the way)...
        let probed = Instant::now();
        let (status, _) = get(addr, "/v1/approvals", Some("token-alice"));
        if probed.elapsed() < EVICTABLE_AFTER / 2 {
            assert_eq!(status, 503);
        }
        // ...but past EVICTABLE_AFTER, a newcomer takes the place of the oldest.
        std::thread::sleep(EVICTABLE_AFTER + Duration::from_millis(200));
        assert_eq!(get(addr, "/v1/approvals", Some("token-alice")).0, 200);
        assert_closed(&mut first);
        // The second is now the oldest: with a young third filling the cap, the next newcomer
        // takes the second's place, not the third's.
        wait_for_connections(&server, 1);
        let mut third = TcpStream::connect(addr).unwrap();
        wait_for_connections(&server, 2);
        assert_eq!(get(addr, "/v1/approvals", Some("token-alice")).0, 200);
        assert_closed(&mut second);
        third.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut byte = [0u8; 1];
        let error = third.read(&mut byte).expect_err("the young connection was closed");
        assert!(matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{error}");
    }

    /// Waits (5 s at most) until the server is serving exactly `n` connections.
    fn wait_for_connections(server: &Server, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.handle.connections_served() != n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.handle.connections_served(), n);
    }

    /// The server closed `stream` without an answer.
    fn assert_closed(stream: &mut TcpStream) {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection kept its slot: {other:?}"),
        }
    }

    #[test]
    fn stop_returns_promptly_and_closes_connections_in_flight() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        assert_eq!(get(addr, "/v1/approvals", Some("token-alice")).0, 200);
        wait_for_connections(&server, 0);
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /v1/appr").unwrap();
        // Let the server accept it and block reading the rest.
        wait_for_connections(&server, 1);
        let started = Instant::now();
        server.handle.stop();
        assert!(started.elapsed() < Duration::from_secs(2), "stop took {:?}", started.elapsed());
        idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);
        // Nothing listens any more.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    /// A reader taking a few bytes at a time keeps each write within its timeout; the answer
    /// as a whole still ends at its deadline.
    #[test]
    fn a_slow_reader_cannot_hold_an_answer_past_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (writer, _) = listener.accept().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let trickle = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut scratch = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) && reader.read(&mut scratch).is_ok_and(|n| n > 0) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let started = Instant::now();
        let answer = vec![b'x'; 64 << 20];
        let written = write_all_by(&writer, &answer, Instant::now() + Duration::from_millis(500));
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        drop(writer);
        trickle.join().unwrap();
        // Past the deadline between writes, or within the last one (EAGAIN on Linux).
        let kind = written.expect_err("the deadline passed").kind();
        assert!(matches!(kind, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock), "{kind:?}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn long_answers_get_time_to_cross_a_slow_link() {
        let timeout = Duration::from_secs(10);
        assert_eq!(write_time(timeout, 0), timeout);
        assert_eq!(write_time(timeout, 16 * 1024), timeout + Duration::from_millis(62));
        // A 64 MiB list (the ledger's most) at 256 KiB a second.
        assert_eq!(write_time(timeout, 64 << 20), timeout + Duration::from_secs(256));
    }

    #[test]
    fn expect_continue_is_answered() {
        let server = start_server(AdminLimits::default());
        let addr = server.handle.local_addr();
        let id = park(&server.ledger, "r1", "dba", 1);
        let body = r#"{"reason":"ok"}"#;
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer token-alice\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            decide_path(&id, "approve"),
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(body.as_bytes()).unwrap();
        let (status, answer) = read_answer(&mut stream);
        assert_eq!((status, answer["state"]["state"].as_str()), (200, Some("approved")));
    }
}
