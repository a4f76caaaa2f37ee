//! The network edge, and the only network I/O in the gateway: downstream connections (TLS
//! termination, reading requests, writing answers), the per-core upstream pool, and the
//! per-endpoint flows that call into the pure `session`, `identity` and `http` modules.
//!
//! One [`Gateway`] holds what all cores share (config, keys, verifier: immutable or atomically
//! swapped). Each core owns a [`Core`]: its upstream pool and its recorder. Nothing on the
//! data path is shared across cores.

mod govern;
mod handler;
pub mod io;
mod resolve;
pub mod tls;
pub mod upstream;

pub(crate) use handler::JwksRefetch;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;
use monoio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::http::{BodyFraming, ChunkedError, HeadWriter, Headers};
use crate::identity::{JwksSource, Verifier};
use crate::mask::Scratch;
use crate::policy::approvals::Ledger;
use crate::policy::worker::{ClassifierPool, PoolConfig};
use crate::record::{Frame, RecordUnavailable, Recorder, Ticket};
use crate::session::codes;
use crate::session::logged_out::LoggedOut;
use crate::session::query::{summarize_answer, summarize_sql_api_answer};
use crate::session::statements::{IdRefused, Owner, Plans, StatementBooks};
use crate::session::token::Sealer;
use crate::session::token::TokenClaims;
use io::{Conn, ReadError, Stream};
use upstream::{Endpoint, Pool};

/// How long a core waits for room in a full recorder queue before refusing the exchange.
#[cfg(not(feature = "bench-unrecorded"))]
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(200);

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The JWKS could not be loaded.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::JwksError),
    /// A sealing key is unusable.
    #[error("tokens: {0}")]
    Keys(#[from] crate::session::token::KeyError),
    /// A TLS setting is unusable.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsConfigError),
    /// A socket or file could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Counters shared by all cores.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests being handled right now (drain waits for zero).
    pub in_flight: AtomicUsize,
    /// Requests handled.
    pub requests: AtomicU64,
    /// Requests the gateway refused itself.
    pub refusals: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Frames the recorder could not take.
    pub frames_dropped: AtomicU64,
    /// Exchanges refused because their record could not be taken or made durable.
    pub recording_refusals: AtomicU64,
    /// Statements denied by the policy.
    pub policy_denials: AtomicU64,
    /// Statements parked for review.
    pub parked: AtomicU64,
    /// Values masked in answers.
    pub values_masked: AtomicU64,
}

/// What every core shares.
pub struct Gateway {
    /// The validated configuration.
    pub config: Config,
    /// OIDC token verification.
    pub verifier: Verifier,
    /// Token sealing.
    pub sealer: Sealer,
    /// Downstream TLS, unless plaintext was configured.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Upstream TLS, for https upstreams.
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS for an https JWKS URL (system roots).
    pub jwks_tls: Option<Arc<rustls::ClientConfig>>,
    /// Counters.
    pub metrics: Metrics,
    /// Set on SIGTERM: stop accepting, finish what is in flight.
    pub draining: AtomicBool,
    /// Set on a second SIGTERM or SIGINT: the drain stops waiting for requests in flight (the
    /// recorders still close their segments).
    pub drain_abandoned: AtomicBool,
    /// SQL classification, off the cores.
    pub classifier: ClassifierPool,
    /// Statements parked for review, shared by every core and the admin listener.
    pub ledger: Arc<std::sync::Mutex<Ledger<govern::ParkedStatement>>>,
    /// TLS for fetching result chunks from cloud storage (system roots).
    pub chunk_tls: Option<Arc<rustls::ClientConfig>>,
    /// Per core, the statement ids it answered: whose each is, and the plans a SQL API
    /// statement's partitions are masked by. Each core writes its own; any core may look.
    statements: StatementBooks,
    /// The sessions agents logged out of, refused until what was issued for them expires.
    logged_out: std::sync::Mutex<LoggedOut>,
}

impl Gateway {
    /// Builds the shared state from a validated configuration.
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let verifier = Verifier::new(config.identity.verifier.clone(), config.identity.jwks.clone())?;
        let sealer = Sealer::new(&config.seal_keys)?;
        let server_tls = config.listen.tls.as_ref().map(|(cert, key)| tls::server_config(cert, key)).transpose()?;
        let client_tls =
            if config.upstream.url.tls { Some(tls::client_config(config.upstream.ca_pem.as_deref())?) } else { None };
        let jwks_tls = match &config.identity.jwks {
            JwksSource::Url(url) if url.starts_with("https://") => Some(tls::client_config(None)?),
            _ => None,
        };
        let classifier =
            ClassifierPool::start(PoolConfig { threads: config.runtime.classifier_threads, ..PoolConfig::default() })
                .map_err(|source| StartError::Io { what: "classifier threads".into(), source })?;
        let ledger = Arc::new(std::sync::Mutex::new(Ledger::new(config.approvals.ledger)));
        // Chunks live in cloud storage, not at the upstream: they are checked against the
        // system roots, or the upstream's CA when one is configured (a private test setup).
        let chunk_tls = Some(tls::client_config(config.upstream.ca_pem.as_deref())?);
        let statements = StatementBooks::new(config.runtime.cores, config.statement_book);
        Ok(Gateway {
            classifier,
            ledger,
            statements,
            logged_out: std::sync::Mutex::new(LoggedOut::new(crate::session::logged_out::ENTRIES_MAX)),
            chunk_tls,
            config,
            verifier,
            sealer,
            server_tls,
            client_tls,
            jwks_tls,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            drain_abandoned: AtomicBool::new(false),
        })
    }

    /// Records that `core` answered statements `ids` to `owner` ([`StatementBooks::issue`]);
    /// `false` when another identity holds one of them.
    pub fn issue_statements(&self, core: usize, ids: &[String], owner: Owner<'_>) -> bool {
        let issued = self.statements.issue(core, ids, owner);
        if !issued {
            warn!(
                core,
                sub = owner.sub,
                "An upstream answer named a statement id another identity holds; refusing it."
            );
        }
        issued
    }

    /// Whether `owner` may use statement `id`, with the plans kept for it.
    pub fn statement_for(&self, core: usize, id: &str, owner: Owner<'_>) -> Result<Option<Arc<Plans>>, IdRefused> {
        self.statements.statement_for(core, id, owner)
    }

    /// Keeps the plans made from statement `id`'s row type in the book that holds it.
    pub fn keep_statement_plans(&self, core: usize, id: &str, owner: Owner<'_>, plans: Plans) {
        if !self.statements.keep_plans(core, id, owner, plans) {
            warn!(
                core,
                sub = owner.sub,
                "A statement's masking plans were not kept (the book's budget is spent); its later partitions will be withheld."
            );
        }
    }

    /// Refuses the session `claims` stand for from now on, until the identity's end: every
    /// token of the session (its master token outlives its session token and chunk URLs, and
    /// a renewal would revive a session Snowflake never ended) and every chunk URL issued for
    /// it ends then at the latest.
    pub fn log_out(&self, claims: &TokenClaims) {
        let Some(session_id) = claims.session_id else { return };
        let now = unix_millis();
        let until = claims.identity_expires_at_unix_ms;
        self.logged_out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).enter(
            &claims.sub,
            session_id,
            until,
            now,
        );
    }

    /// Whether the session `claims` stand for was logged out of.
    pub fn is_logged_out(&self, claims: &TokenClaims) -> bool {
        let Some(session_id) = claims.session_id else { return false };
        let logged_out = self.logged_out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        logged_out.contains(&claims.sub, session_id, unix_millis())
    }

    /// Whether SIGTERM asked to drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// What one core owns.
pub struct Core {
    /// The core's number.
    pub id: usize,
    /// The shared state.
    pub gateway: Arc<Gateway>,
    pool: Pool,
    recorder: Recorder,
    scratch: RefCell<Scratch>,
    open_connections: AtomicUsize,
    idle: IdleWaiters,
}

impl Core {
    /// Builds core `id`: its upstream pool and its recorder.
    pub fn new(id: usize, gateway: Arc<Gateway>) -> Result<Core, StartError> {
        let c = &gateway.config;
        let endpoint = Endpoint {
            url: c.upstream.url.clone(),
            tls: gateway.client_tls.clone(),
            connect_timeout: c.upstream.connect_timeout,
            response_timeout: c.upstream.response_timeout,
            limits: c.limits,
        };
        let pool = Pool::new(endpoint, c.runtime.upstream_pool_size, c.runtime.read_buffer_bytes);
        // Core ids are below `--cores`, at most `config::CORES_MAX`: each fits a u16.
        let recorder = c.runtime.recording.recorder_config(&c.recording_dir, id as u16, c.recording_key);
        let recorder = Recorder::start(recorder).map_err(|e| StartError::Io {
            what: format!("recording directory {}", c.recording_dir.display()),
            source: std::io::Error::other(e),
        })?;
        Ok(Core {
            id,
            gateway,
            pool,
            recorder,
            scratch: RefCell::new(Scratch::default()),
            open_connections: AtomicUsize::new(0),
            idle: IdleWaiters::default(),
        })
    }

    /// Stops the core's recorder once its drain has ended: what it accepted is written and its
    /// segment sealed even while a request that outlived the drain still holds the core.
    pub fn stop_recording(&self) {
        if let Err(e) = self.recorder.stop_in_place() {
            error!(core = self.id, error = %e, "The recorder did not stop cleanly.");
        }
    }

    /// Records the reviews that timed out or were voided since the last report
    /// ([`govern::record_review_outcomes`]).
    pub fn record_review_outcomes(&self) {
        govern::record_review_outcomes(self);
    }

    /// Serves one accepted TCP connection until it closes, times out or the gateway drains.
    pub async fn serve(self: Rc<Core>, tcp: TcpStream, peer: SocketAddr) {
        let gateway = &self.gateway;
        gateway.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let read_size = gateway.config.runtime.read_buffer_bytes;
        let socket = tcp.as_raw_fd();
        if self.open_connections.load(Ordering::Acquire) >= gateway.config.runtime.max_connections {
            warn!(core = self.id, %peer, "Connection refused: the core is at its connection limit.");
            // On a TLS listener the refusal goes inside a TLS session: clear bytes would reach
            // the agent's TLS stack as a corrupt record, not as an answer it can act on. The
            // handshake shares the refusal's short deadline, so a full core spends little on it.
            let deadline = Instant::now() + Duration::from_secs(1);
            if let Some(stream) = self.secure(tcp, peer, deadline).await {
                let mut conn = Conn::new(stream, socket, read_size);
                let body = Bytes::from_static(
                    br#"{"code":"260006","message":"the gateway is at its connection limit","success":false}"#,
                );
                let _ = conn.write_message(error_head(503, body.len()), body, deadline).await;
                // Not lingered on: connections refused here are not counted against the cap,
                // so each must cost the full core next to nothing.
                close(&mut conn, Ending::Done).await;
            }
            return;
        }
        let _open = Counted::enter(&self.open_connections);
        if let Some(stream) = self.secure(tcp, peer, Instant::now() + gateway.config.timeouts.header).await {
            let mut conn = Conn::new(stream, socket, read_size);
            let ending = self.serve_requests(&mut conn, peer).await;
            close(&mut conn, ending).await;
        }
    }

    /// The connection's stream: plain, or TLS once the handshake completes by `deadline`.
    /// `None` when the handshake fails or times out; the connection is then dropped unanswered.
    async fn secure(&self, tcp: TcpStream, peer: SocketAddr, deadline: Instant) -> Option<Stream> {
        let Some(config) = &self.gateway.server_tls else {
            return Some(Stream::Plain(tcp));
        };
        let acceptor = monoio_rustls::TlsAcceptor::from(config.clone());
        match monoio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Some(Stream::ServerTls(Box::new(tls))),
            Ok(Err(e)) => {
                // monoio-rustls's own error prints only "io error"; the io::Error inside it
                // carries rustls's reason (an unknown CA, a plaintext request, ...).
                let e = std::io::Error::from(e);
                debug!(core = self.id, %peer, error = %e, "TLS handshake failed.");
                None
            }
            Err(_) => {
                debug!(core = self.id, %peer, "TLS handshake timed out.");
                None
            }
        }
    }

    async fn serve_requests(&self, conn: &mut Conn, peer: SocketAddr) -> Ending {
        let gateway = &self.gateway;
        let limits = gateway.config.limits;
        let timeouts = gateway.config.timeouts;
        loop {
            match self.next_message(conn, timeouts.idle).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Ending::Done,
            }
            let head = match conn.read_request_head(&limits, Instant::now() + timeouts.header).await {
                Ok(head) => head,
                Err(e) => return self.reject(conn, peer, &e).await,
            };
            let endpoint = crate::session::Endpoint::route(head.method, head.path(), head.query());
            let authenticated = handler::authenticate(self, &head, endpoint).await;
            // A caller refused from its head has its body read under the control cap at most
            // (nothing in it would change the refusal, and no one the gateway does not know
            // may make it read or hold a statement's worth); one announced larger is answered
            // unread, and the connection ends (what is still coming is read and dropped,
            // bounded, so the refusal is not lost to a reset).
            let refused = authenticated.is_refused();
            let (wire_max, bytes_max) = handler::body_caps(self, authenticated.endpoint(), refused);
            let announced_over = matches!(head.framing, BodyFraming::Length(n) if n > wire_max as u64);
            let unread = refused && announced_over;
            // An HTTP/1.0 client knows no interim answer (RFC 9110 §10.1.1): it would take the
            // 100 for the answer, and the answer for its body.
            if !announced_over
                && head.minor_version >= 1
                && head.framing != BodyFraming::Empty
                && head.headers.has_token("expect", "100-continue")
            {
                // Bounded like every write: a client that stopped reading cannot hold the slot.
                let interim = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
                if conn.write_message(interim, Bytes::new(), Instant::now() + timeouts.header).await.is_err() {
                    return Ending::Done;
                }
            }
            let deadline = Instant::now() + timeouts.body;
            let body = if unread {
                Bytes::new()
            } else {
                match conn.read_body(head.framing, wire_max, AGENT_BODY_RESERVE_MAX, deadline).await {
                    Ok(body) => body,
                    Err(ReadError::BodyTooLarge { .. } | ReadError::Chunked(ChunkedError::TooLarge { .. })) => {
                        return self.reject(conn, peer, &ReadError::BodyTooLarge { limit: bytes_max }).await;
                    }
                    Err(e) => return self.reject(conn, peer, &e).await,
                }
            };

            let in_flight = Counted::enter(&gateway.metrics.in_flight);
            gateway.metrics.requests.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let started_at_unix_us = unix_micros();
            let (answer, capture) = handler::handle(self, &head, authenticated, body, started_at_unix_us).await;
            let total_us = started.elapsed().as_micros() as u64;
            let answer = self.record(capture, answer, total_us).await;
            let close = head.close || answer.close || gateway.is_draining() || unread;
            let head_bytes = answer_head(&answer, close);
            let written = conn.write_message(head_bytes, answer.body, Instant::now() + timeouts.body).await;
            drop(in_flight);
            if written.is_ok() && unread {
                return Ending::Refused;
            }
            if written.is_err() || close {
                return Ending::Done;
            }
        }
    }

    /// Answers a request that could not be read (when it deserves an answer); the connection
    /// then closes. Nothing of it was sent upstream.
    async fn reject(&self, conn: &mut Conn, peer: SocketAddr, error: &ReadError) -> Ending {
        self.gateway.metrics.refusals.fetch_add(1, Ordering::Relaxed);
        info!(core = self.id, %peer, error = %error, "Request rejected before routing; closing the connection.");
        let Some(status) = error.status() else { return Ending::Done };
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "code": status.to_string(), "message": error.to_string(), "success": false
            }))
            .expect("a JSON value always serialises"),
        );
        match conn.write_message(error_head(status, body.len()), body, Instant::now() + Duration::from_secs(1)).await {
            // The answer is on its way: keep it from being destroyed by a reset.
            Ok(()) => Ending::Refused,
            Err(_) => Ending::Done,
        }
    }

    /// Records the answer (and the request, when it was not recorded before going upstream).
    /// In `batch` and `strict` modes an exchange that went upstream is answered only once its
    /// response record is durable; if it cannot be, the agent gets "recording unavailable"
    /// instead of an answer nobody could audit.
    async fn record(
        &self,
        mut capture: handler::Capture,
        mut answer: handler::Answer,
        total_us: u64,
    ) -> handler::Answer {
        let admitted = capture.was_admitted();
        let sql_api = capture.is_sql_api();
        // The statement ids an upstream driver answer names become the agent's before it can
        // see them; an answer naming an id another identity holds is refused instead.
        // The answer is read once, for the books and the frame.
        let summarize = |answer: &handler::Answer| {
            if sql_api {
                summarize_sql_api_answer(answer.status, &answer.body).unwrap_or_default()
            } else {
                summarize_answer(&answer.body).unwrap_or_default()
            }
        };
        let mut summary = summarize(&answer);
        if let Some((owner, ids)) = capture.answered_statement_ids(&answer, &summary)
            && !self.gateway.issue_statements(self.id, &ids, owner)
        {
            answer = handler::refuse(&mut capture, codes::STATEMENT_UNKNOWN, handler::STATEMENT_UNKNOWN_MESSAGE);
            summary = summarize(&answer);
        }
        let (request, mut response) = capture.into_frames(&answer, summary, unix_micros(), total_us);
        let ticket = match request {
            Some(request) => match self.submit(Frame::Request(request)).await {
                Ok(ticket) => {
                    response.request = Some(ticket.link());
                    self.submit(Frame::Response(response)).await
                }
                Err(e) => Err(e),
            },
            None => self.submit(Frame::Response(response)).await,
        };
        let outcome = match ticket {
            Ok(ticket) if admitted && self.recorder.durability().hold_answer_until_durable() => {
                self.durable(ticket).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => answer,
            Err(reason) => {
                self.gateway.metrics.frames_dropped.fetch_add(1, Ordering::Relaxed);
                warn!(core = self.id, reason = %reason, admitted, "An answer was not recorded.");
                if admitted {
                    self.gateway.metrics.recording_refusals.fetch_add(1, Ordering::Relaxed);
                    handler::recording_unavailable_answer(sql_api)
                } else {
                    answer
                }
            }
        }
    }

    /// The `bench-unrecorded` build: nothing is recorded (see `Cargo.toml`).
    #[cfg(feature = "bench-unrecorded")]
    pub(crate) async fn submit(&self, frame: Frame) -> Result<Ticket, RecordUnavailable> {
        drop(frame);
        Ok(Ticket::unrecorded())
    }

    /// Hands a frame to the recorder. A full queue is backpressure, not yet a failure: the
    /// core waits for room (yielding the CPU, which the recorder thread may share) up to
    /// [`QUEUE_FULL_WAIT`], and only then refuses.
    #[cfg(not(feature = "bench-unrecorded"))]
    pub(crate) async fn submit(&self, frame: Frame) -> Result<Ticket, RecordUnavailable> {
        let deadline = std::time::Instant::now() + QUEUE_FULL_WAIT;
        // Only this core's tasks push to its queue and no await separates the check from the
        // push, so room seen here is room the push finds.
        let bytes = frame.encoded_len_estimate();
        while self.recorder.queue_is_full(bytes) && std::time::Instant::now() < deadline {
            self.recorder.wake();
            monoio::time::sleep(Duration::from_micros(500)).await;
        }
        self.recorder.submit(frame)
    }

    /// Waits (bounded) until `ticket`'s record is durable.
    async fn durable(&self, ticket: Ticket) -> Result<(), String> {
        let timeout = self.gateway.config.runtime.recording.durable_timeout;
        match monoio::time::timeout(timeout, ticket.durable()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not durable within {} ms", timeout.as_millis())),
        }
    }
}

impl Core {
    /// Waits up to `idle` for the first byte of the next request, like
    /// [`Conn::wait_for_message`], but also ends the wait when draining begins: an idle
    /// keep-alive connection is owed no answer, so it is closed then (`Ok(false)`, as if the
    /// agent had closed) rather than kept open until the core stops and abandons it.
    async fn next_message(&self, conn: &mut Conn, idle: Duration) -> Result<bool, ReadError> {
        let id = self.idle.next_id.get();
        self.idle.next_id.set(id.wrapping_add(1));
        let mut drained = pin!(Drained { core: self, id });
        let waited = {
            let mut message = pin!(conn.wait_for_message(idle));
            std::future::poll_fn(|cx| {
                // A request already arriving wins over the drain: it is served, with Connection: close.
                if let Poll::Ready(result) = message.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                drained.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        waited.unwrap_or_else(|| {
            // The wait's read was dropped mid-flight.
            conn.read_was_abandoned();
            Ok(false)
        })
    }

    /// Wakes every connection waiting idle for its next request, so that it sees the drain and
    /// closes. The runtime calls this once draining has begun.
    pub fn close_idle_connections(&self) {
        let wakers: Vec<Waker> = self.idle.wakers.borrow_mut().drain().map(|(_, waker)| waker).collect();
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The wakers of one core's connections that wait, idle, for their next request.
#[derive(Default)]
struct IdleWaiters {
    next_id: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

/// Resolves once the gateway drains. While pending, its waker is registered with its core, so
/// that [`Core::close_idle_connections`] can wake it; dropping it unregisters it.
struct Drained<'a> {
    core: &'a Core,
    id: u64,
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.core.gateway.is_draining() {
            return Poll::Ready(());
        }
        let mut wakers = self.core.idle.wakers.borrow_mut();
        match wakers.get_mut(&self.id) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                wakers.insert(self.id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        self.core.idle.wakers.borrow_mut().remove(&self.id);
    }
}

/// How a connection's last exchange ended, which decides how it is closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    /// Every request read was whole, or nothing was answered that a reset could destroy.
    Done,
    /// The gateway answered a refusal to a request it had not read whole (too large,
    /// malformed, too slow): the rest of it may still be on its way.
    Refused,
}

/// How long, and how many bytes, a refused peer's remaining request is read and dropped for.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Ends a connection the gateway is done with: a TLS close_notify first (so the agent can tell
/// a clean end from a truncation, as TLS requires), then our end's shutdown, under a short
/// deadline. After a refusal what the peer still sends is read and dropped for a bounded
/// while first: closing a socket with unread bytes resets the connection, and the reset can
/// destroy the refusal (a 413, say) before the agent has read it, leaving it a bare
/// "connection reset" instead of the reason.
async fn close(conn: &mut Conn, ending: Ending) {
    let _ = conn.shutdown(Instant::now() + Duration::from_secs(1)).await;
    if ending == Ending::Refused {
        conn.discard_until_closed(LINGER_BYTES_MAX, Instant::now() + LINGER).await;
    }
}

/// Most bytes reserved for an agent's request body before they arrive.
const AGENT_BODY_RESERVE_MAX: usize = 256 * 1024;

fn error_head(status: u16, body_len: usize) -> BytesMut {
    let mut w = HeadWriter::response(status);
    w.field(b"content-type", b"application/json").content_length(body_len).field(b"connection", b"close");
    w.finish()
}

/// The head of an answer: upstream's fields minus hop-by-hop and encoding fields (bodies go
/// to agents inflated), or the content type of the gateway's own answer.
fn answer_head(answer: &handler::Answer, close: bool) -> BytesMut {
    let mut w = HeadWriter::response(answer.status);
    match &answer.upstream_headers {
        Some(headers) => copy_end_to_end(&mut w, headers),
        None => {
            w.field(b"content-type", answer.content_type);
        }
    }
    w.content_length(answer.body.len());
    if close {
        w.field(b"connection", b"close");
    }
    w.finish()
}

/// One more in a count until this is dropped: a request in flight until its answer is written,
/// a connection open until it closes, or until its task ends early (a panic the runtime
/// contains, a connection dropped mid-request). So a drain never waits out its deadline for a
/// request that is gone, and a core's connection limit is not used up by connections that are.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn enter(counter: &'a AtomicUsize) -> Counted<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Upstream's fields for the agent: all but hop-by-hop and encoding fields (bodies go to
/// agents inflated) and cookies (the gateway's upstream connections and Snowflake user are
/// every agent's: a cookie set in one agent's answer is not that agent's to keep).
fn copy_end_to_end(w: &mut HeadWriter, headers: &Headers) {
    const DROPPED: [&str; 3] = ["content-encoding", "set-cookie", "set-cookie2"];
    for (name, value) in headers.iter() {
        if !headers.is_hop_field(name) && !DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d.as_bytes())) {
            w.field(name, value);
        }
    }
}

/// Now, in Unix seconds (sealed token expiries are wall-clock, shared across instances).
pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The wall clock in Unix milliseconds (sealed-token expiry, approval ledger).
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream answer reaches the agent without its cookies (nor its hop-by-hop and
    /// encoding fields), with everything else it said.
    #[test]
    fn an_answer_reaches_the_agent_without_upstreams_cookies() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: lb=node-7; Path=/\r\n\
                     set-cookie2: x=1\r\nX-Request-Id: r1\r\nContent-Encoding: gzip\r\nConnection: close\r\n\
                     Content-Length: 2\r\n\r\n{}";
        let head =
            crate::http::parse_response_head(wire, crate::http::Method::Post, &Default::default()).unwrap().unwrap();
        let answer = handler::Answer::upstream(200, head.headers, Bytes::from_static(b"{}"));
        let written = String::from_utf8(answer_head(&answer, false).to_vec()).unwrap().to_ascii_lowercase();
        assert!(!written.contains("cookie") && !written.contains("gzip"), "{written}");
        assert!(
            written.contains("x-request-id: r1") && written.contains("content-type: application/json"),
            "{written}"
        );
    }

    /// A request's task that panics (the runtime contains it and ends the connection) is no
    /// longer counted in flight: a drain would otherwise wait out its whole deadline for it.
    #[test]
    fn a_request_that_panics_leaves_the_in_flight_count() {
        let counter = AtomicUsize::new(0);
        let answered = Counted::enter(&counter);
        let panicked = std::panic::catch_unwind(|| {
            let _in_flight = Counted::enter(&counter);
            assert_eq!(counter.load(Ordering::Acquire), 2);
            panic!("a handler's bug");
        });
        assert!(panicked.is_err());
        assert_eq!(counter.load(Ordering::Acquire), 1);
        drop(answered);
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }
}
