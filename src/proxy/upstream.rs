//! The upstream side of one core: its keep-alive connection pool to Snowflake and the
//! exchange of one request for one whole answer. Also a one-shot GET for the JWKS URL.
//!
//! An upstream connection is reused only after a cleanly framed answer that did not ask to
//! close and left no stray bytes behind: an answer with both Content-Length and
//! Transfer-Encoding, or any other framing doubt, ends the connection.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::net::TcpStream;
use monoio::time::Instant;
use rustls::pki_types::ServerName;

use super::io::{Conn, ReadError, Stream};
use crate::config::UpstreamUrl;
use crate::http::gzip::{self, GunzipError};
use crate::http::{HeadWriter, Headers, Limits, Method};

/// A request to send upstream; `Host` and `Content-Length` are added here. Its `Debug` shows
/// the header names only (one carries the Snowflake token) and the body's length.
pub struct UpstreamRequest {
    /// Method.
    pub method: Method,
    /// Target in origin form.
    pub target: String,
    /// Other fields, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body (sent as is, with Content-Length).
    pub body: Bytes,
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<std::borrow::Cow<'_, str>> =
            self.headers.iter().map(|(name, _)| String::from_utf8_lossy(name)).collect();
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("header_names", &names)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// A whole upstream answer, its body inflated if it was gzip.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// Status.
    pub status: u16,
    /// Fields as received.
    pub headers: Headers,
    /// Body, inflated.
    pub body: Bytes,
}

/// What went wrong upstream. All of these are the upstream's (or the network's) fault.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect (TCP or TLS).
    #[error("cannot connect upstream: {0}")]
    Connect(io::Error),
    /// No answer in time.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The connection failed mid-exchange.
    #[error("the upstream connection failed: {0}")]
    Io(io::Error),
    /// The answer broke framing rules or limits, or its gzip is broken.
    #[error("the upstream answer is invalid: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// The status the gateway answers the agent with: 504 for a timeout, else 502.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Timeout => 504,
            _ => 502,
        }
    }
}

/// Outcome of one exchange on one connection, telling whether a retry is safe.
enum Exchange {
    Done(UpstreamResponse, bool),
    /// A reused connection failed before the request can have run upstream (it was closed
    /// while idle): sending it again on a new connection is safe.
    StaleConnection(UpstreamError),
    Failed(UpstreamError),
}

/// How to reach one upstream, with TLS settings and limits.
pub struct Endpoint {
    /// Where.
    pub url: UpstreamUrl,
    /// TLS client settings (for https).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Answer timeout.
    pub response_timeout: Duration,
    /// Size limits for answers.
    pub limits: Limits,
}

impl Endpoint {
    /// Resolves the host (off the core, within the connect timeout) and connects, with TLS when
    /// the URL says so.
    async fn connect(&self, read_buffer_bytes: usize) -> Result<Conn, UpstreamError> {
        let addrs = super::resolve::resolve(&self.url.host, self.url.port, self.connect_timeout)
            .await
            .map_err(UpstreamError::Connect)?;
        let connect = async {
            let tcp = connect_any(&addrs).await?;
            tcp.set_nodelay(true)?;
            let socket = tcp.as_raw_fd();
            let stream = match &self.tls {
                None => Stream::Plain(tcp),
                Some(config) => {
                    let name = ServerName::try_from(self.url.host.clone())
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid TLS server name"))?;
                    let connector = monoio_rustls::TlsConnector::from(config.clone());
                    // monoio-rustls's own error prints only "io error"; the io::Error inside
                    // it carries rustls's reason (an unknown issuer, a name mismatch), which
                    // the operator needs in the log and the agent in the 502.
                    let tls = connector.connect(name, tcp).await.map_err(|e| {
                        let e = io::Error::from(e);
                        io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))
                    })?;
                    Stream::ClientTls(Box::new(tls))
                }
            };
            Ok::<_, io::Error>(Conn::new(stream, socket, read_buffer_bytes))
        };
        match monoio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(UpstreamError::Connect(e)),
            Err(_) => Err(UpstreamError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
        }
    }

    async fn exchange(&self, conn: &mut Conn, request: &UpstreamRequest, reused: bool) -> Exchange {
        let mut head = HeadWriter::request(request.method, &request.target);
        head.field(b"host", self.url.host_header().as_bytes());
        for (name, value) in &request.headers {
            head.field(name, value);
        }
        if !request.body.is_empty() || request.method == Method::Post || request.method == Method::Put {
            head.content_length(request.body.len());
        }
        let deadline = Instant::now() + self.response_timeout;
        if let Err(e) = conn.write_message(head.finish(), request.body.clone(), deadline).await {
            return if reused {
                Exchange::StaleConnection(UpstreamError::Io(e))
            } else {
                Exchange::Failed(UpstreamError::Io(e))
            };
        }
        let bytes_before = conn.bytes_read;
        let head = match conn.read_response_head(request.method, &self.limits, deadline).await {
            Ok(head) => head,
            Err(e) => {
                let nothing_back = conn.bytes_read == bytes_before;
                // A peer that had closed the idle connection ends it without an answer; but so
                // may one that read the request, ran it and failed, and a POST (a statement) is
                // never sent twice: the driver retries it with its own request id, which
                // Snowflake recognises. (The pool keeps POSTs off connections idle long enough
                // to be closed by now: see `POST_REUSE_IDLE_MAX`.)
                let error = read_error(e);
                let resendable = request.method != Method::Post && !matches!(error, UpstreamError::Timeout);
                return if reused && nothing_back && resendable {
                    Exchange::StaleConnection(error)
                } else {
                    Exchange::Failed(error)
                };
            }
        };
        // Upstream's declared length is reserved whole (it is capped by the limit).
        let limit = self.limits.body_bytes_max;
        let body = match conn.read_body(head.framing, limit, limit, deadline).await {
            Ok(body) => body,
            Err(e) => return Exchange::Failed(read_error(e)),
        };
        // Gzip (declared, or sniffed without a declaration: cloud storage serves chunks so) is
        // inflated; any other encoding is refused, never passed on as bytes nobody masked.
        // Named twice, the encodings apply in turn: one may hide the other.
        if head.headers.count("content-encoding") > 1 {
            return Exchange::Failed(UpstreamError::Invalid("the answer names its content-encoding twice".into()));
        }
        let gzipped = match head.headers.get("content-encoding").map(<[u8]>::trim_ascii) {
            None => gzip::is_gzip(&body),
            Some(e) if e.eq_ignore_ascii_case(b"gzip") => true,
            Some(e) if e.is_empty() || e.eq_ignore_ascii_case(b"identity") => false,
            Some(_) => {
                return Exchange::Failed(UpstreamError::Invalid(
                    "the answer's content-encoding is neither gzip nor identity".into(),
                ));
            }
        };
        let body = if gzipped {
            match gzip::gunzip_capped(&body, self.limits.decompressed_bytes_max) {
                Ok(inflated) => Bytes::from(inflated),
                Err(GunzipError::TooLarge { limit }) => {
                    return Exchange::Failed(UpstreamError::Invalid(format!("answer inflates past {limit} bytes")));
                }
                Err(GunzipError::Invalid(why)) => return Exchange::Failed(UpstreamError::Invalid(why)),
            }
        } else {
            body
        };
        let reusable = !head.close && !conn.has_buffered();
        Exchange::Done(UpstreamResponse { status: head.status, headers: head.headers, body }, reusable)
    }
}

/// The longest a pooled connection may have been idle to carry a POST. A POST that fails on
/// a reused connection is not sent again (it may have run), so it goes only on connections
/// the upstream cannot have closed for idleness yet: servers close idle keep-alive
/// connections after 5 s or more (uvicorn and Node 5 s, nginx 75 s). Older ones are dropped.
const POST_REUSE_IDLE_MAX: Duration = Duration::from_secs(2);

fn read_error(e: ReadError) -> UpstreamError {
    match e {
        ReadError::Timeout => UpstreamError::Timeout,
        ReadError::Io(e) => UpstreamError::Io(e),
        ReadError::Closed => UpstreamError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-answer")),
        other => UpstreamError::Invalid(other.to_string()),
    }
}

/// Connects to the first of `addrs` that accepts, in the resolver's order, as HTTP clients do:
/// a name with several addresses stays reachable when one refuses, and `localhost` resolving
/// to ::1 first still reaches a service listening on 127.0.0.1 only. The caller's connect
/// deadline bounds the whole walk.
async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the upstream host has no address");
    for &addr in addrs {
        match TcpStream::connect_addr(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// One core's pool of idle keep-alive connections to the upstream.
pub struct Pool {
    endpoint: Endpoint,
    /// Each with the time it went idle.
    idle: RefCell<Vec<(Conn, Instant)>>,
    idle_max: usize,
    read_buffer_bytes: usize,
}

impl Pool {
    /// A pool keeping at most `idle_max` idle connections.
    pub fn new(endpoint: Endpoint, idle_max: usize, read_buffer_bytes: usize) -> Pool {
        Pool { endpoint, idle: RefCell::new(Vec::with_capacity(idle_max)), idle_max, read_buffer_bytes }
    }

    /// Sends a request and reads the whole answer. A connection that turns out to have been
    /// closed while idle is replaced once (a POST only if it failed before it was sent whole);
    /// any other failure is returned.
    pub async fn send(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        // An idle connection the upstream sent anything on since its last answer (stray bytes
        // would answer this request; an end would fail it) is dropped, not used; so is one
        // idle too long to carry a POST, for a POST.
        let usable = |(conn, since): &(Conn, Instant)| {
            !conn.peer_sent_more() && (request.method != Method::Post || since.elapsed() <= POST_REUSE_IDLE_MAX)
        };
        let pooled = std::iter::from_fn(|| self.idle.borrow_mut().pop()).find(usable);
        let (mut conn, reused) = match pooled {
            Some((conn, _)) => (conn, true),
            None => (self.endpoint.connect(self.read_buffer_bytes).await?, false),
        };
        let outcome = match self.endpoint.exchange(&mut conn, request, reused).await {
            Exchange::StaleConnection(_) => {
                conn = self.endpoint.connect(self.read_buffer_bytes).await?;
                self.endpoint.exchange(&mut conn, request, false).await
            }
            other => other,
        };
        match outcome {
            Exchange::Done(response, reusable) => {
                let mut idle = self.idle.borrow_mut();
                if reusable && idle.len() < self.idle_max {
                    idle.push((conn, Instant::now()));
                }
                Ok(response)
            }
            Exchange::StaleConnection(e) | Exchange::Failed(e) => Err(e),
        }
    }
}

/// Splits `http(s)://host[:port]/path` into the endpoint URL and the path.
pub fn split_url(url: &str) -> Option<(UpstreamUrl, String)> {
    let scheme_end = url.find("://")? + 3;
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let base = UpstreamUrl::parse(&url[..path_start])?;
    let path = if path_start == url.len() { "/".to_owned() } else { url[path_start..].to_owned() };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return None;
    }
    Some((base, path))
}

/// Fetches `url` with one GET on a fresh connection (for the JWKS), at most `limit` bytes.
pub async fn fetch(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    fetch_with(url, &[], tls, timeout, limit).await
}

/// Like [`fetch`], sending `headers` too (a result chunk's SSE-C headers). The body is
/// returned as sent (a chunk may be raw gzip without a Content-Encoding).
pub async fn fetch_with(
    url: &str,
    headers: &[(&str, &str)],
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    let (base, path) = split_url(url).ok_or_else(|| UpstreamError::Invalid("unusable URL".into()))?;
    let endpoint = Endpoint {
        tls: if base.tls { tls } else { None },
        url: base,
        connect_timeout: timeout,
        response_timeout: timeout,
        limits: Limits { body_bytes_max: limit, decompressed_bytes_max: limit, ..Limits::default() },
    };
    let mut conn = endpoint.connect(8192).await?;
    let request = UpstreamRequest {
        method: Method::Get,
        target: path,
        headers: [(&b"accept"[..], &b"*/*"[..]), (b"connection", b"close")]
            .into_iter()
            .chain(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
        body: Bytes::new(),
    };
    match endpoint.exchange(&mut conn, &request, false).await {
        Exchange::Done(response, _) if response.status == 200 => Ok(response.body),
        Exchange::Done(response, _) => Err(UpstreamError::Invalid(format!("HTTP status {}", response.status))),
        Exchange::StaleConnection(e) | Exchange::Failed(e) => Err(e),
    }
}

/// Builds the request fields forwarded upstream from the agent's: hop-by-hop fields (and those
/// its `Connection` lists), `Host`,
/// `Authorization`, `Content-Encoding` (bodies go upstream inflated) and the gateway's own
/// `X-Agent-Context` are dropped; `extra` fields are appended. The agent's `Accept-Encoding` is
/// replaced by gzip, the one encoding the gateway inflates and masks: an answer in another
/// encoding would be bytes the masker cannot read. Its `Content-Type` is replaced by
/// `application/json` (every body Snowflake takes is JSON): the gateway reads bodies as UTF-8,
/// and a charset the warehouse honoured (Shift_JIS, whose lead bytes swallow a `\`) could
/// make it read a string's end, and so another `sqlText`, where the gateway did not. `Range`
/// and `If-Range` are dropped too: part of a body (a 206) starts anywhere in it, where the
/// masker could not tell a value from the JSON around it. So are cookies (every agent shares
/// the gateway's upstream connections and user), the fields proxies add to say whom they
/// forward for (an agent could name any address to Snowflake's network policies and logs),
/// and method overrides (the gateway routes by the method it reads). Each is dropped in any
/// case and with `_` for `-` too (`X_Forwarded_For`), as servers that map fields to variables
/// read it.
pub fn forwarded_headers(from: &Headers, mut extra: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    const DROPPED: [&str; 23] = [
        "content-type",
        "host",
        "authorization",
        "content-encoding",
        "accept-encoding",
        "x-agent-context",
        "x-snowflake-authorization-token-type",
        "expect",
        "range",
        "if-range",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "via",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    extra.push((b"content-type".to_vec(), b"application/json".to_vec()));
    extra.push((b"accept-encoding".to_vec(), b"gzip".to_vec()));
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = from
        .iter()
        .filter(|(name, _)| !from.is_hop_field(name) && !DROPPED.iter().any(|d| same_field_name(name, d.as_bytes())))
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    out.extend(extra);
    out
}

/// Whether a field's name is `lower` (lowercase, with dashes) in any case, with `_` for `-`.
fn same_field_name(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name.iter().zip(lower).all(|(&b, &l)| if b == b'_' { l == b'-' } else { b.to_ascii_lowercase() == l })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_header_names_not_values() {
        let request = UpstreamRequest {
            method: Method::Post,
            target: "/queries/v1/query-request".into(),
            headers: vec![(b"authorization".to_vec(), b"Snowflake Token=\"SF-REAL-TOKEN\"".to_vec())],
            body: Bytes::from_static(b"{\"sqlText\":\"select 'secret'\"}"),
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains("SF-REAL") && !shown.contains("secret"), "{shown}");
        assert!(shown.contains("authorization"), "{shown}");
    }

    #[test]
    fn connects_to_the_first_address_that_accepts() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open_addr = open.local_addr().unwrap();
        // A port that was just free, on a loopback address no test listens on: connecting is
        // refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused_addr = std::net::SocketAddr::from(([127, 0, 0, 254], port));
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        runtime.block_on(async {
            let tcp = connect_any(&[refused_addr, open_addr]).await.unwrap();
            assert_eq!(tcp.peer_addr().unwrap(), open_addr);
            let error = connect_any(&[refused_addr]).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        });
    }

    #[test]
    fn upstream_is_asked_for_gzip_whatever_the_agent_accepts_and_for_whole_bodies() {
        // A field the agent's Connection names is its hop's alone, and stays there.
        let wire = b"GET / HTTP/1.1\r\nAccept-Encoding: br, zstd\r\nX-Agent-Context: t\r\nAccept: */*\r\n\
                     Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                     Content-Type: application/json; charset=Shift_JIS\r\n\
                     Range: bytes=60-\r\nIf-Range: \"e1\"\r\nCookie: s=other-agents\r\n\
                     X-Forwarded-For: 10.9.9.9\r\nForwarded: for=10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\n\
                     Via: 1.1 elsewhere\r\nX-HTTP-Method-Override: DELETE\r\n\
                     X_Forwarded_For: 10.9.9.9\r\nx_real_ip: 10.9.9.9\r\nTrue-Client-IP: 10.9.9.9\r\n\
                     X_Snowflake_Authorization_Token_Type: OAUTH\r\nX_HTTP_Method_Override: DELETE\r\n\r\n";
        let head = crate::http::parse_request_head(wire, &Limits::default()).unwrap().unwrap();
        let headers = head.headers;
        let forwarded = forwarded_headers(&headers, vec![(b"x-extra".to_vec(), b"1".to_vec())]);
        let text: Vec<(String, String)> = forwarded
            .iter()
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let pairs: Vec<(&str, &str)> = text.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [("Accept", "*/*"), ("x-extra", "1"), ("content-type", "application/json"), ("accept-encoding", "gzip")]
        );
    }

    /// Serves one HTTP answer with `encoding` as its Content-Encoding and returns what
    /// `fetch_with` made of it.
    fn fetch_encoded(encoding: Option<&str>, body: &[u8]) -> Result<Bytes, UpstreamError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/chunk", listener.local_addr().unwrap());
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n", body.len()).into_bytes();
        if let Some(encoding) = encoding {
            answer.extend_from_slice(format!("content-encoding: {encoding}\r\n").as_bytes());
        }
        answer.extend_from_slice(b"\r\n");
        answer.extend_from_slice(body);
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = io::Read::read(&mut socket, &mut request);
            io::Write::write_all(&mut socket, &answer).unwrap();
        });
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        let fetched = runtime.block_on(fetch_with(&url, &[], None, Duration::from_secs(5), 1 << 20));
        server.join().unwrap();
        fetched
    }

    #[test]
    fn answers_in_encodings_other_than_gzip_are_refused() {
        let plain = br#"{"message":"Numeric value '123-45-6789' is not recognized"}"#;
        let gzipped = crate::http::gzip::gzip(plain);
        assert_eq!(fetch_encoded(Some("gzip"), &gzipped).unwrap(), &plain[..]);
        // Cloud storage may serve a gzip chunk without declaring it.
        assert_eq!(fetch_encoded(None, &gzipped).unwrap(), &plain[..]);
        assert_eq!(fetch_encoded(None, plain).unwrap(), &plain[..]);
        assert_eq!(fetch_encoded(Some("identity"), plain).unwrap(), &plain[..]);
        // Named twice, an identity first hides the br after it.
        for encoding in ["br", "deflate", "zstd", "gzip, br", "identity\r\ncontent-encoding: br"] {
            match fetch_encoded(Some(encoding), plain) {
                Err(UpstreamError::Invalid(why)) => assert!(why.contains("content-encoding"), "{encoding}: {why}"),
                other => panic!("{encoding}: {other:?}"),
            }
        }
    }

    /// An upstream that answers a connection's first request with "hi" and, 50 ms later, sends
    /// a second answer nobody asked for (the test waits until it has): the pool must not hand that connection to the next
    /// request, which gets a fresh connection's "fresh" instead of the stray bytes.
    #[test]
    fn a_pooled_connection_with_stray_bytes_is_not_reused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stray_sent, stray_was_sent) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let mut kept = Vec::new();
            for (i, socket) in listener.incoming().take(2).enumerate() {
                let mut socket = socket.unwrap();
                let mut request = [0u8; 4096];
                let _ = io::Read::read(&mut socket, &mut request);
                if i == 0 {
                    io::Write::write_all(&mut socket, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                    io::Write::write_all(&mut socket, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray").unwrap();
                    stray_sent.send(()).unwrap();
                } else {
                    io::Write::write_all(&mut socket, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh").unwrap();
                }
                kept.push(socket);
            }
        });
        let endpoint = Endpoint {
            tls: None,
            url: UpstreamUrl::parse(&format!("http://{addr}")).unwrap(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            limits: Limits::default(),
        };
        let pool = Pool::new(endpoint, 4, 8192);
        let request = UpstreamRequest {
            method: Method::Get,
            target: "/".into(),
            headers: vec![(b"host".to_vec(), b"u".to_vec())],
            body: Bytes::new(),
        };
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        runtime.block_on(async {
            assert_eq!(pool.send(&request).await.unwrap().body, &b"hi"[..]);
            // Written on loopback, the stray bytes are in the pooled socket once this returns.
            stray_was_sent.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(pool.send(&request).await.unwrap().body, &b"fresh"[..]);
        });
        server.join().unwrap();
    }

    #[test]
    fn splits_urls() {
        let (base, path) = split_url("https://idp.example.com/.well-known/jwks.json").unwrap();
        assert_eq!((base.host.as_str(), base.port, path.as_str()), ("idp.example.com", 443, "/.well-known/jwks.json"));
        let (base, path) = split_url("http://127.0.0.1:9000").unwrap();
        assert_eq!((base.port, path.as_str()), (9000, "/"));
        assert!(split_url("http://h/a b").is_none());
        assert!(split_url("file:///etc/passwd").is_none());
    }
}
