//! The test double's transport: listeners, runtime threads, optional TLS termination, and the
//! HTTP/1.1 connection loop (read a request, hand it to [`Upstream::handle`], write the
//! response). The framing is snowgate's own `http` module and the TLS setup is the gateway's
//! own `proxy::tls`; nothing Snowflake-specific lives here.

use crate::stats::{EndpointKind, Stats};
use crate::upstream::{Response, Upstream, UpstreamConfig};
use anyhow::{Context, anyhow};
use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use snowgate::http::{BodyFraming, ChunkedDecoder, HeadWriter, Limits, parse_request_head};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 16 * 1024;
/// How often each runtime checks whether it was asked to stop.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a stopping runtime waits for its connections to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Listen backlog per listener.
const BACKLOG: i32 = 1024;
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a connection (sending TLS close_notify) may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// A double serving on its own threads. Dropping it (or [`RunningUpstream::shutdown`])
/// stops the threads and closes every connection.
#[derive(Debug)]
pub struct RunningUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub stats: Arc<Stats>,
    upstream: Arc<Upstream>,
    tls: bool,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningUpstream {
    /// The Snowflake semantics behind the listener, for hooks such as
    /// [`Upstream::expire_session_tokens`].
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// `http://<addr>`, or `https://<addr>` when serving TLS: the base URL clients use.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Whether the double serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Stops serving and waits for the threads to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Serves until the process is killed (for the binary).
    pub fn wait(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningUpstream {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts a double on 127.0.0.1 with an ephemeral port and one runtime thread.
pub fn start(config: UpstreamConfig) -> anyhow::Result<RunningUpstream> {
    start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)), 1)
}

/// Starts a double on `listen` with `threads` runtime threads (at least one). With more
/// than one, each thread has its own listener on the same port (SO_REUSEPORT) and the
/// kernel spreads connections among them.
pub fn start_with(config: UpstreamConfig, listen: SocketAddr, threads: usize) -> anyhow::Result<RunningUpstream> {
    start_serving(config, listen, threads, None, &[])
}

/// Like [`start_with`], with runtime thread `i` pinned to CPU `cpus[i % cpus.len()]` (no
/// pinning when `cpus` is empty), so that benchmarks place the double the same way each run.
pub fn start_pinned(
    config: UpstreamConfig,
    listen: SocketAddr,
    threads: usize,
    cpus: &[usize],
) -> anyhow::Result<RunningUpstream> {
    start_serving(config, listen, threads, None, cpus)
}

/// Like [`start_with_tls`], with the runtime thread pinned to `cpus` (see [`start_pinned`]).
pub fn start_with_tls_pinned(
    config: UpstreamConfig,
    cert_pem: &[u8],
    key_pem: &[u8],
    cpus: &[usize],
) -> anyhow::Result<RunningUpstream> {
    let tls = snowgate::proxy::tls::server_config(cert_pem, key_pem).context("the double's TLS settings")?;
    start_serving(config, SocketAddr::from(([127, 0, 0, 1], 0)), 1, Some(tls), cpus)
}

/// Starts a double on 127.0.0.1 with an ephemeral port and one runtime thread, serving TLS
/// with `cert_pem` (the certificate chain, leaf first) and `key_pem` (its private key), so
/// that the gateway's `https://` upstream path and its certificate checks can be tested.
pub fn start_with_tls(config: UpstreamConfig, cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<RunningUpstream> {
    // The gateway's own server-side settings (ring provider, safe protocol versions, ALPN
    // http/1.1), so the double negotiates what a TLS-terminating Snowflake would.
    let tls = snowgate::proxy::tls::server_config(cert_pem, key_pem).context("the double's TLS settings")?;
    start_serving(config, SocketAddr::from(([127, 0, 0, 1], 0)), 1, Some(tls), &[])
}

fn start_serving(
    config: UpstreamConfig,
    listen: SocketAddr,
    threads: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    cpus: &[usize],
) -> anyhow::Result<RunningUpstream> {
    let upstream = Arc::new(Upstream::new(config)?);
    let threads = threads.max(1);
    let reuse_port = threads > 1;
    let first = bind(listen, reuse_port).with_context(|| format!("binding {listen}"))?;
    let addr = first.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    upstream.set_base_url(format!("{scheme}://{addr}"));
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(bind(addr, reuse_port).with_context(|| format!("binding another listener on {addr}"))?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(threads);
    for (i, listener) in listeners.into_iter().enumerate() {
        let upstream = upstream.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let tls = tls.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("snowflake-double-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    // A failed pin leaves the thread unpinned; the harness reports placement.
                    let _ = monoio::utils::bind_to_cpu_set([cpu]);
                }
                run_thread(listener, upstream, tls, stop, ready)
            })
            .context("spawning a runtime thread")?;
        handles.push(handle);
    }
    drop(ready_tx);
    let running =
        RunningUpstream { addr, stats: upstream.stats().clone(), upstream, tls: tls.is_some(), stop, threads: handles };
    // Report a runtime that failed to start here, rather than as a hang in the first test.
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow!("a runtime thread failed to start: {e}")),
            Err(_) => return Err(anyhow!("a runtime thread ended before it started")),
        }
    }
    Ok(running)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn run_thread(
    listener: std::net::TcpListener,
    upstream: Arc<Upstream>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut runtime = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        // The monoio listener must be made inside the runtime, which owns its driver.
        let listener = match monoio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        serve(listener, upstream, tls, stop).await;
    });
}

/// Accepts until asked to stop, then cancels every pending read so connections close.
async fn serve(
    listener: monoio::net::TcpListener,
    upstream: Arc<Upstream>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<AtomicBool>,
) {
    // A Canceller belongs to one runtime thread, so the stop flag is polled here rather
    // than the canceller being triggered from the thread that calls shutdown().
    let canceller = Canceller::new();
    let cancel = canceller.handle();
    let stopping = stop.clone();
    monoio::spawn(async move {
        while !stopping.load(Ordering::Relaxed) {
            monoio::time::sleep(STOP_POLL_INTERVAL).await;
        }
        canceller.cancel();
    });

    let live_connections = Rc::new(Cell::new(0usize));
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, _peer)) => {
                upstream.stats().add_connection();
                // Small request/response exchanges: do not let Nagle delay the answers.
                let _ = stream.set_nodelay(true);
                let upstream = upstream.clone();
                let stream = CancelableTcp { tcp: stream, cancel: cancel.clone() };
                let tls = tls.clone();
                let live = live_connections.clone();
                live.set(live.get() + 1);
                monoio::spawn(async move {
                    match tls {
                        None => connection(stream, &upstream).await,
                        Some(config) => {
                            let acceptor = monoio_rustls::TlsAcceptor::from(config);
                            // A failed handshake (a client that does not trust the certificate,
                            // or that speaks plain HTTP) just closes the connection, as a TLS
                            // server does; nothing reaches Upstream::handle.
                            if let Ok(Ok(stream)) =
                                monoio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                            {
                                connection(stream, &upstream).await;
                            }
                        }
                    }
                    live.set(live.get() - 1);
                });
            }
            Err(_) if stop.load(Ordering::Relaxed) => break,
            // Out of file descriptors and the like: back off briefly rather than spin.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while live_connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP stream whose reads end when the double stops, so that idle keep-alive connections
/// (and TLS handshakes, which read through it) do not hold a stopping runtime open.
struct CancelableTcp {
    tcp: TcpStream,
    cancel: CancelHandle,
}

impl AsyncReadRent for CancelableTcp {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        self.tcp.cancelable_read(buf, self.cancel.clone()).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        self.tcp.cancelable_readv(buf, self.cancel.clone()).await
    }
}

impl AsyncWriteRent for CancelableTcp {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        self.tcp.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        self.tcp.writev(buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.tcp.shutdown().await
    }
}

/// Reads more bytes into the spare capacity of `buf`. False at EOF, error or cancellation.
async fn read_more<S: AsyncReadRent>(stream: &mut S, buf: &mut BytesMut, stats: &Stats) -> bool {
    if buf.capacity() - buf.len() < READ_BYTES / 4 {
        buf.reserve(READ_BYTES);
    }
    let owned = std::mem::take(buf);
    let (len, capacity) = (owned.len(), owned.capacity());
    // Reading into a BytesMut directly would write at its start; the slice appends.
    let (result, slice) = stream.read(owned.slice_mut(len..capacity)).await;
    *buf = slice.into_inner();
    match result {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            stats.add_bytes_received(n);
            true
        }
    }
}

async fn write<S: AsyncWriteRent>(stream: &mut S, bytes: BytesMut) -> bool {
    let (result, _) = stream.write_all(bytes).await;
    // Under TLS, flushing pushes out whatever rustls still buffers; on plain TCP it is free.
    result.is_ok() && stream.flush().await.is_ok()
}

fn encode(response: &Response, close: bool) -> BytesMut {
    let mut head = HeadWriter::response(response.status);
    head.field(b"content-type", response.content_type.as_bytes());
    if response.gzip {
        head.field(b"content-encoding", b"gzip");
    }
    if close {
        head.field(b"connection", b"close");
    }
    head.content_length(response.body.len());
    let mut out = head.finish();
    out.extend_from_slice(&response.body);
    out
}

/// Answers a request the transport could not frame, and closes.
async fn refuse<S: AsyncWriteRent>(stream: &mut S, stats: &Stats, status: u16, message: &str) {
    stats.count(EndpointKind::Other);
    let body = serde_json::json!({"code": status.to_string(), "message": message, "success": false});
    let response = Response::json(status, body.to_string());
    write(stream, encode(&response, true)).await;
}

/// Serves one keep-alive connection until the client closes it, asks to, or errs, then closes
/// it (with a TLS close_notify when under TLS).
async fn connection<S: AsyncReadRent + AsyncWriteRent>(mut stream: S, upstream: &Upstream) {
    serve_requests(&mut stream, upstream).await;
    let _ = monoio::time::timeout(SHUTDOWN_TIMEOUT, stream.shutdown()).await;
}

async fn serve_requests<S: AsyncReadRent + AsyncWriteRent>(stream: &mut S, upstream: &Upstream) {
    let limits = Limits::default();
    let stats = upstream.stats().clone();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    loop {
        let head = loop {
            match parse_request_head(&buf, &limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    if !read_more(stream, &mut buf, &stats).await {
                        return;
                    }
                }
                Err(e) => return refuse(stream, &stats, e.status(), &e.to_string()).await,
            }
        };
        buf.advance(head.head_len);
        let expects_continue = head.headers.get_str("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue && !write(stream, BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])).await {
            return;
        }
        let body = match head.framing {
            BodyFraming::Empty | BodyFraming::UntilClose => BytesMut::new(),
            BodyFraming::Length(n) => {
                // parse_request_head has already refused lengths beyond the body limit.
                let n = n as usize;
                while buf.len() < n {
                    if !read_more(stream, &mut buf, &stats).await {
                        return;
                    }
                }
                buf.split_to(n)
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(limits.body_bytes_max);
                let mut out = BytesMut::new();
                loop {
                    match decoder.decode(&mut buf, &mut out) {
                        Ok(true) => break out,
                        Ok(false) => {
                            if !read_more(stream, &mut buf, &stats).await {
                                return;
                            }
                        }
                        Err(e) => return refuse(stream, &stats, 400, &e.to_string()).await,
                    }
                }
            }
        };
        let response = upstream.handle(&head, &body);
        if !write(stream, encode(&response, head.close)).await || head.close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn tls_double() -> RunningUpstream {
        let config = UpstreamConfig { password: Some("hunter2".into()), ..UpstreamConfig::default() };
        start_with_tls(config, &fixture("localhost.pem"), &fixture("localhost.key")).unwrap()
    }

    /// A blocking TLS client that trusts the test CA only.
    fn tls_connect(addr: SocketAddr) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = fixture("ca.pem");
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        rustls::StreamOwned::new(connection, tcp)
    }

    #[test]
    fn serves_a_login_over_tls_and_closes_with_close_notify() {
        let double = tls_double();
        assert!(double.is_tls());
        assert_eq!(double.url(), format!("https://{}", double.addr));
        let mut stream = tls_connect(double.addr);
        let body = r#"{"data":{"ACCOUNT_NAME":"testacct","LOGIN_NAME":"snowgate","PASSWORD":"hunter2"}}"#;
        let request = format!(
            "POST /session/v1/login-request?request_id=1 HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        // read_to_end succeeds only if the double ended the TLS session with close_notify: a
        // bare TCP close is an unexpected EOF to rustls.
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains(r#""success":true"#), "{answer}");
        assert_eq!(double.stats.logins(), 1);
    }

    #[test]
    fn plaintext_http_to_the_tls_double_gets_no_http_answer() {
        let double = tls_double();
        let mut tcp = std::net::TcpStream::connect(double.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(b"GET /session/heartbeat HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
        let mut received = Vec::new();
        // A reset is as good as a close here: the double dropped the connection after a TLS alert.
        let _ = tcp.read_to_end(&mut received);
        assert!(!received.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&received));
        assert_eq!(double.stats.requests_total(), 0);
        assert_eq!(double.stats.connections_accepted(), 1);
    }

    #[test]
    fn shuts_down_promptly_with_an_idle_tls_connection_and_a_stalled_handshake() {
        let double = tls_double();
        let mut idle = tls_connect(double.addr);
        // Completing the handshake proves the connection is live and then idle in a read.
        while idle.conn.is_handshaking() {
            idle.conn.complete_io(&mut idle.sock).unwrap();
        }
        let _stalled = std::net::TcpStream::connect(double.addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        double.shutdown();
        assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    }
}
