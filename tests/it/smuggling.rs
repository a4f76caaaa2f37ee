//! The request-smuggling corpus: every vector is answered 400/413/431 with the connection
//! closed, and not one byte reaches the upstream (a counting upstream proves it). Upstream
//! answers with ambiguous framing are refused and their connection is never reused.
//!
//! Sources of the vectors: RFC 9112 §6 and §7, defparam/smuggler's Transfer-Encoding
//! obfuscations, and the http-garden trophies (reliability brief A12–A17), ported as data.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

const LINE: &str = "POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: gateway\r\n";

/// Transfer-Encoding values and header spellings that some peer reads as `chunked` and another
/// does not (smuggler's mutations), or that are simply not exactly `chunked`.
const TE_OBFUSCATIONS: [&str; 34] = [
    "Transfer-Encoding: chunked",
    "Transfer-Encoding:  chunked",
    "Transfer-Encoding: chunked ",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: Chunked",
    "Transfer-Encoding: CHUNKED",
    "transfer-encoding: chunked",
    "TRANSFER-ENCODING: chunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding: chunked,chunked",
    "Transfer-Encoding: ,chunked",
    "Transfer-Encoding: chunked,",
    "Transfer-Encoding: \"chunked\"",
    "Transfer-Encoding: 'chunked'",
    "Transfer-Encoding: x-chunked",
    "Transfer-Encoding: chunk",
    "Transfer-Encoding: chunkedx",
    "Transfer-Encoding: ch unked",
    "Transfer-Encoding: chunked;q=1",
    "Transfer-Encoding: identity",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding: cow",
    "Transfer-Encoding:",
    "Transfer-Encoding: \u{0b}chunked",
    "Transfer-Encoding: \u{0c}chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
    "Transfer_Encoding: chunked",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding\t: chunked",
];

/// Content-Length spellings that are not exactly 1–18 digits, once.
const BAD_CONTENT_LENGTHS: [&str; 17] = [
    "Content-Length: 5\r\nContent-Length: 5",
    "Content-Length: 5\r\nContent-Length: 6",
    "Content-Length: 5, 5",
    "Content-Length: 5,5",
    "Content-Length: +5",
    "Content-Length: -5",
    "Content-Length: 0x5",
    "Content-Length: 5.0",
    "Content-Length: 5 5",
    "Content-Length: 5a",
    "Content-Length: 1e1",
    "Content-Length:",
    "Content-Length: \u{0665}",
    "Content-Length: 99999999999999999999",
    "Content_Length: 5",
    "Content-Length : 5",
    "Content-Length: 5\r\n content-length: 5",
];

/// Malformed chunked bodies (after a valid `Transfer-Encoding: chunked`).
const BAD_CHUNKS: [&str; 16] = [
    "0x5\r\nhello\r\n0\r\n\r\n",
    "+5\r\nhello\r\n0\r\n\r\n",
    "-5\r\nhello\r\n0\r\n\r\n",
    " 5\r\nhello\r\n0\r\n\r\n",
    "5 \r\nhello\r\n0\r\n\r\n",
    "5\nhello\r\n0\r\n\r\n",
    "5\r\nhello\n0\r\n\r\n",
    "5\r\nhelloXX0\r\n\r\n",
    "5;\r\nhello\r\n0\r\n\r\n",
    "5;a\rb\r\nhello\r\n0\r\n\r\n",
    "5;a=\"unterminated\r\nhello\r\n0\r\n\r\n",
    "\r\nhello\r\n0\r\n\r\n",
    "g\r\nhello\r\n0\r\n\r\n",
    "11111111111111111\r\n",
    "5_0\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
];

/// Whole requests with broken lines, bytes or request lines.
const BAD_HEADS: [&str; 22] = [
    "POST /queries/v1/query-request HTTP/1.1\nHost: gateway\nContent-Length: 2\n\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\rContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gate\0way\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHo\0st: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\tx\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\n Host: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST http://upstream/queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST * HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.2\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/2.0\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.0\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "post /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "CONNECT gateway:443 HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "POST  /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 2\r\n\r\n{}",
    "GET /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nhost_: x\r\nX Y: z\r\nContent-Length: 2\r\n\r\n{}",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gateway\r\nConnection_: x\r\n:\r\nContent-Length: 2\r\n\r\n{}",
];

/// One vector: the bytes on the wire and the statuses that are a correct refusal.
struct Vector {
    name: String,
    wire: Vec<u8>,
    statuses: &'static [u16],
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for (i, te) in TE_OBFUSCATIONS.iter().enumerate() {
        // CL.TE: the front end uses Content-Length, the back end chunks.
        out.push(Vector {
            name: format!("CL.TE #{i}: {te:?}"),
            wire: format!("{LINE}Content-Length: 6\r\n{te}\r\n\r\n0\r\n\r\nG").into_bytes(),
            statuses: &[400],
        });
        // TE.CL: the opposite order.
        out.push(Vector {
            name: format!("TE.CL #{i}: {te:?}"),
            wire: format!("{LINE}{te}\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n").into_bytes(),
            statuses: &[400],
        });
    }
    // Transfer-Encoding alone that is not exactly `chunked` once (the first eight are exactly
    // chunked, up to optional whitespace and case, legitimately, and so are not vectors alone).
    for (i, te) in TE_OBFUSCATIONS.iter().enumerate().skip(8) {
        out.push(Vector {
            name: format!("TE only #{i}: {te:?}"),
            wire: format!("{LINE}{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes(),
            statuses: &[400],
        });
    }
    for (i, cl) in BAD_CONTENT_LENGTHS.iter().enumerate() {
        out.push(Vector {
            name: format!("bad Content-Length #{i}: {cl:?}"),
            wire: format!("{LINE}{cl}\r\n\r\nhello").into_bytes(),
            statuses: &[400],
        });
    }
    for (i, chunks) in BAD_CHUNKS.iter().enumerate() {
        out.push(Vector {
            name: format!("bad chunk #{i}: {chunks:?}"),
            wire: format!("{LINE}Transfer-Encoding: chunked\r\n\r\n{chunks}").into_bytes(),
            statuses: &[400],
        });
    }
    for (i, head) in BAD_HEADS.iter().enumerate() {
        out.push(Vector { name: format!("bad head #{i}: {head:?}"), wire: head.as_bytes().to_vec(), statuses: &[400] });
    }
    out.push(Vector {
        name: "oversize head".into(),
        wire: format!("{LINE}X-Pad: {}\r\nContent-Length: 2\r\n\r\n{{}}", "a".repeat(64 * 1024)).into_bytes(),
        statuses: &[431],
    });
    out.push(Vector {
        name: "too many header fields".into(),
        wire: format!("{LINE}{}Content-Length: 2\r\n\r\n{{}}", "X-A: b\r\n".repeat(100)).into_bytes(),
        statuses: &[431],
    });
    out.push(Vector {
        name: "oversize declared body".into(),
        wire: format!("{LINE}Content-Length: 999999999999\r\n\r\n{{}}").into_bytes(),
        statuses: &[413],
    });
    out
}

/// Sends `wire` on a fresh connection; returns the status answered and whether the gateway
/// then closed the connection.
fn send(addr: SocketAddr, wire: &[u8]) -> (u16, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The gateway may close before reading everything we sent; a reset is then expected.
    let _ = stream.write_all(wire);
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("neither answered nor closed: {e}"),
        }
    };
    let text = String::from_utf8_lossy(&received);
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Exactly one answer: nothing after the first response (no second, smuggled, answer).
    assert!(text.matches("HTTP/1.1 ").count() <= 1, "more than one answer to {text:?}");
    (status, closed)
}

#[test]
fn every_request_smuggling_vector_is_refused_with_nothing_sent_upstream() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let vectors = vectors();
    assert!(vectors.len() >= 100, "the corpus has only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for vector in &vectors {
        let (status, closed) = send(gateway.addr, &vector.wire);
        if !vector.statuses.contains(&status) || !closed {
            failures.push(format!("{}: status {status}, closed {closed}", vector.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors not refused:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
    assert_eq!(upstream.stats.connections_accepted(), 0, "the gateway even connected upstream");
    // The gateway still serves a well-formed request afterwards.
    let (session, _) = login_ok(&mut gateway.client());
    assert_eq!(query(&mut gateway.client(), &session, "select 1").json().unwrap()["success"], true);
    println!("smuggling corpus: {} request vectors refused", vectors.len());
}

/// A raw upstream that answers every request on a connection with the next canned answer
/// (keep-alive), and counts connections and requests.
struct CannedUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

fn read_one_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return true;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl CannedUpstream {
    fn start(answer: &'static str) -> CannedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, Ordering::AcqRel);
                let r = r.clone();
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = Vec::new();
                    while read_one_request(&mut stream, &mut buf) {
                        r.fetch_add(1, Ordering::AcqRel);
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CannedUpstream { addr, connections, requests }
    }
}

const BODY: &str = r#"{"data":{"token":"t","masterToken":"m","validityInSeconds":3600},"success":true}"#;

/// Upstream answers whose framing is ambiguous or broken.
const BAD_ANSWERS: [&str; 8] = [
    "HTTP/1.1 200 OK\r\nContent-Length: 80\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n{BODY}\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 80\r\n\r\n50\r\n{BODY}\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 80\r\nContent-Length: 81\r\n\r\n{BODY}",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{BODY}",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x50\r\n{BODY}\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 80\r\nX-A: b\r\n c\r\n\r\n{BODY}",
    "HTTP/1.1 200 OK\nContent-Length: 80\n\n{BODY}",
    "HTTP/1.1 200 OK\r\nContent-Length: +80\r\n\r\n{BODY}",
];

/// A login Snowflake answers with a status that carries no body is refused with one that
/// does (the refusal's body under a 204 would be read as the start of the next answer), and
/// the agent's connection serves its next request.
#[test]
fn a_bodiless_status_to_a_login_is_refused_with_a_status_that_has_a_body() {
    for answer in ["HTTP/1.1 204 No Content\r\n\r\n", "HTTP/1.1 304 Not Modified\r\n\r\n"] {
        let upstream = CannedUpstream::start(answer);
        let gateway = TestGateway::start(&format!("http://{}", upstream.addr), GatewayOptions::default());
        let mut client = gateway.client();
        for attempt in 0..2 {
            let refused = login(&mut client, &agent_token(json!({})));
            assert_eq!(refused.status, 502, "{answer:?}, attempt {attempt}: {refused:?}");
            assert_eq!(refused.json().unwrap()["code"], "260004", "{answer:?}");
        }
    }
}

#[test]
fn ambiguous_upstream_answers_are_refused_and_their_connection_is_not_reused() {
    assert_eq!(BODY.len(), 80, "the canned answers declare 80 bytes");
    for (i, template) in BAD_ANSWERS.iter().enumerate() {
        let answer: &'static str = Box::leak(template.replace("{BODY}", BODY).into_boxed_str());
        let upstream = CannedUpstream::start(answer);
        let gateway = TestGateway::start(&format!("http://{}", upstream.addr), GatewayOptions::default());
        let mut client = gateway.client();
        for attempt in 0..2 {
            let answer = login(&mut client, &agent_token(json!({})));
            assert_eq!(answer.status, 502, "answer #{i}, attempt {attempt}: {answer:?}");
            let body = answer.json().unwrap();
            assert_eq!(body["code"], "260004", "answer #{i}: {body}");
            assert!(!String::from_utf8_lossy(&answer.body).contains("\"token\":\"t\""), "answer #{i} leaked");
        }
        let requests = upstream.requests.load(Ordering::Acquire);
        let connections = upstream.connections.load(Ordering::Acquire);
        assert_eq!(requests, 2, "answer #{i}");
        assert_eq!(connections, 2, "answer #{i}: an upstream connection with a refused answer was reused");
    }
}

#[test]
fn a_clean_upstream_connection_is_reused() {
    let answer: &'static str =
        Box::leak(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{BODY}", BODY.len()).into_boxed_str());
    let upstream = CannedUpstream::start(answer);
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr), GatewayOptions::default());
    let mut client = gateway.client();
    for _ in 0..3 {
        assert_eq!(login(&mut client, &agent_token(json!({}))).json().unwrap()["success"], true);
    }
    assert_eq!(upstream.requests.load(Ordering::Acquire), 3);
    assert_eq!(upstream.connections.load(Ordering::Acquire), 1, "keep-alive reuse is what makes refusal meaningful");
}
