//! The test double's transport: listeners, runtime threads, and the HTTP/1.1 connection
//! loop (read a request, hand it to [`Upstream::handle`], write the response). The framing
//! is snowgate's own `http` module; nothing Snowflake-specific lives here.

use crate::stats::{EndpointKind, Stats};
use crate::upstream::{Response, Upstream, UpstreamConfig};
use anyhow::{Context, anyhow};
use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Canceller};
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

/// A double serving on its own threads. Dropping it (or [`RunningUpstream::shutdown`])
/// stops the threads and closes every connection.
#[derive(Debug)]
pub struct RunningUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub stats: Arc<Stats>,
    upstream: Arc<Upstream>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningUpstream {
    /// The Snowflake semantics behind the listener, for hooks such as
    /// [`Upstream::expire_session_tokens`].
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// `http://<addr>`, the base URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
    let upstream = Arc::new(Upstream::new(config)?);
    let threads = threads.max(1);
    let reuse_port = threads > 1;
    let first = bind(listen, reuse_port).with_context(|| format!("binding {listen}"))?;
    let addr = first.local_addr()?;
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
        let handle = std::thread::Builder::new()
            .name(format!("snowflake-double-{i}"))
            .spawn(move || run_thread(listener, upstream, stop, ready))
            .context("spawning a runtime thread")?;
        handles.push(handle);
    }
    drop(ready_tx);
    let running = RunningUpstream { addr, stats: upstream.stats().clone(), upstream, stop, threads: handles };
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
        serve(listener, upstream, stop).await;
    });
}

/// Accepts until asked to stop, then cancels every pending read so connections close.
async fn serve(listener: monoio::net::TcpListener, upstream: Arc<Upstream>, stop: Arc<AtomicBool>) {
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
                let cancel = cancel.clone();
                let live = live_connections.clone();
                live.set(live.get() + 1);
                monoio::spawn(async move {
                    connection(stream, &upstream, &cancel).await;
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

/// Reads more bytes into the spare capacity of `buf`. False at EOF, error or cancellation.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut, cancel: &CancelHandle, stats: &Stats) -> bool {
    if buf.capacity() - buf.len() < READ_BYTES / 4 {
        buf.reserve(READ_BYTES);
    }
    let owned = std::mem::take(buf);
    let (len, capacity) = (owned.len(), owned.capacity());
    // Reading into a BytesMut directly would write at its start; the slice appends.
    let (result, slice) = stream.cancelable_read(owned.slice_mut(len..capacity), cancel.clone()).await;
    *buf = slice.into_inner();
    match result {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            stats.add_bytes_received(n);
            true
        }
    }
}

async fn write(stream: &mut TcpStream, bytes: BytesMut) -> bool {
    let (result, _) = stream.write_all(bytes).await;
    result.is_ok()
}

fn encode(response: &Response, close: bool) -> BytesMut {
    let mut head = HeadWriter::response(response.status);
    head.field(b"content-type", b"application/json");
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
async fn refuse(stream: &mut TcpStream, stats: &Stats, status: u16, message: &str) {
    stats.count(EndpointKind::Other);
    let body = serde_json::json!({"code": status.to_string(), "message": message, "success": false});
    let response = Response { status, body: body.to_string().into(), gzip: false };
    write(stream, encode(&response, true)).await;
}

/// Serves one keep-alive connection until the client closes it, asks to, or errs.
async fn connection(mut stream: TcpStream, upstream: &Upstream, cancel: &CancelHandle) {
    let limits = Limits::default();
    let stats = upstream.stats().clone();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    loop {
        let head = loop {
            match parse_request_head(&buf, &limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    if !read_more(&mut stream, &mut buf, cancel, &stats).await {
                        return;
                    }
                }
                Err(e) => return refuse(&mut stream, &stats, e.status(), &e.to_string()).await,
            }
        };
        buf.advance(head.head_len);
        let expects_continue = head.headers.get_str("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue && !write(&mut stream, BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])).await {
            return;
        }
        let body = match head.framing {
            BodyFraming::Empty | BodyFraming::UntilClose => BytesMut::new(),
            BodyFraming::Length(n) => {
                // parse_request_head has already refused lengths beyond the body limit.
                let n = n as usize;
                while buf.len() < n {
                    if !read_more(&mut stream, &mut buf, cancel, &stats).await {
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
                            if !read_more(&mut stream, &mut buf, cancel, &stats).await {
                                return;
                            }
                        }
                        Err(e) => return refuse(&mut stream, &stats, 400, &e.to_string()).await,
                    }
                }
            }
        };
        let response = upstream.handle(&head, &body);
        if !write(&mut stream, encode(&response, head.close)).await || head.close {
            return;
        }
    }
}
