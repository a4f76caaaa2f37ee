//! Strict HTTP framing at the gateway: each malformed or oversized request is answered with
//! its status, the connection is closed, and not one byte reaches upstream.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

/// Sends raw bytes and returns what was answered and whether the connection then closed.
fn exchange_raw(gateway: &TestGateway, wire: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A peer that stops reading our request because it already refused it may reset the
    // connection; the write error is then expected.
    let _ = stream.write_all(wire);
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("the gateway neither answered nor closed: {e}"),
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// Sends raw bytes and returns the status answered and whether the connection then closed.
fn send_raw(gateway: &TestGateway, wire: &[u8]) -> (u16, bool) {
    let (text, closed) = exchange_raw(gateway, wire);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, closed)
}

fn check(wire: &[u8], expected_status: u16) {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { limits: "decompressed_bytes_max = 1048576".into(), ..Default::default() },
    );
    let (status, closed) = send_raw(&gateway, wire);
    assert_eq!(status, expected_status, "{}", String::from_utf8_lossy(&wire[..wire.len().min(200)]));
    assert!(closed, "the connection stayed open");
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
}

const QUERY: &str = "POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: g\r\n";

#[test]
fn rejects_content_length_with_transfer_encoding() {
    check(format!("{QUERY}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes(), 400);
    check(format!("{QUERY}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n").as_bytes(), 400);
}

#[test]
fn rejects_two_content_lengths() {
    check(format!("{QUERY}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(), 400);
    check(format!("{QUERY}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").as_bytes(), 400);
}

#[test]
fn rejects_a_bad_chunk_size() {
    check(format!("{QUERY}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").as_bytes(), 400);
    check(format!("{QUERY}Transfer-Encoding: chunked\r\n\r\n0x2\r\n{{}}\r\n0\r\n\r\n").as_bytes(), 400);
}

#[test]
fn rejects_an_oversize_head() {
    check(format!("{QUERY}X-Big: {}\r\n\r\n", "a".repeat(20_000)).as_bytes(), 431);
}

#[test]
fn rejects_an_oversize_decompressed_body() {
    // From a caller with a session: without one, the body is refused before it is inflated.
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { limits: "decompressed_bytes_max = 1048576".into(), ..Default::default() },
    );
    let (session, _) = login_ok(&mut gateway.client());
    let upstream_bytes = upstream.stats.bytes_received();
    let bomb = snowgate::http::gzip::gzip(&vec![b' '; 4 << 20]);
    let mut wire = format!(
        "{QUERY}Authorization: {}\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        authorization(&session),
        bomb.len()
    )
    .into_bytes();
    wire.extend_from_slice(&bomb);
    let (status, closed) = send_raw(&gateway, &wire);
    assert_eq!((status, closed), (413, true));
    assert_eq!(upstream.stats.bytes_received(), upstream_bytes, "bytes reached upstream");
}

#[test]
fn rejects_an_oversize_declared_body() {
    check(format!("{QUERY}Content-Length: 999999999999\r\n\r\n").as_bytes(), 413);
}

/// A body over its endpoint's cap is refused from the head alone, before a byte of it is read
/// (within the 64 MiB global cap, a login or an unknown path once made the gateway wait for
/// and hold the whole body): no token, no body, an immediate 413 naming the endpoint's cap.
/// A request its head already refuses (an unknown path, a logout without a session) is
/// answered that refusal instead, as immediately, when its announced length is over the cap.
#[test]
fn a_body_over_its_endpoints_cap_is_refused_from_the_head() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    for target in ["/session/v1/login-request?request_id=1", "/no/such/endpoint", "/session?delete=true"] {
        for framing in ["Content-Length: 8388608", "Transfer-Encoding: chunked"] {
            let mut wire = format!("POST {target} HTTP/1.1\r\nHost: g\r\n{framing}\r\n\r\n");
            if framing.starts_with("Transfer") {
                // One chunk declared larger than the cap, and none of its bytes.
                wire.push_str("800000\r\n");
            }
            let (text, closed) = exchange_raw(&gateway, wire.as_bytes());
            assert!(closed, "{target} with {framing}: the connection stayed open");
            match (target, framing.starts_with("Content-Length")) {
                ("/no/such/endpoint", true) => assert!(text.starts_with("HTTP/1.1 404 "), "{target}: {text}"),
                ("/session?delete=true", true) => {
                    assert!(text.contains(snowgate::session::codes::SESSION_MISSING), "{target}: {text}")
                }
                _ => {
                    assert!(text.starts_with("HTTP/1.1 413 "), "{target} with {framing}: {text}");
                    assert!(text.contains("262144"), "{target} with {framing}: {text}");
                }
            }
        }
    }
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
}

#[test]
fn expect_100_continue_gets_the_interim_answer_then_the_final_one() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"sqlText":"select 1"}"#;
    let head = format!("{QUERY}Content-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body).unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    // No session token: the driver-shaped refusal, after the body was read.
    assert_eq!(&answer, b"HTTP/1.1 200");
}

/// An HTTP/1.0 client knows no interim answer: its `Expect: 100-continue` is ignored, and the
/// one answer it reads is the final one.
#[test]
fn expect_100_continue_from_http_1_0_gets_no_interim_answer() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let body = r#"{"sqlText":"select 1"}"#;
    let head = QUERY.replace("HTTP/1.1", "HTTP/1.0");
    let wire = format!("{head}Content-Length: {}\r\nExpect: 100-continue\r\n\r\n{body}", body.len());
    let (text, _) = exchange_raw(&gateway, wire.as_bytes());
    assert!(!text.contains("100 Continue"), "an HTTP/1.0 client was sent an interim answer: {text}");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains(snowgate::session::codes::SESSION_MISSING), "{text}");
}

/// A body announced over what the gateway would read is not invited: the client that waits
/// for `100 Continue` gets the final answer instead, and sends nothing.
#[test]
fn expect_100_continue_over_the_cap_gets_the_final_answer_without_the_invitation() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    // No session token, and a body over the cap for callers refused from their head.
    let head = format!("{QUERY}Content-Length: {}\r\nExpect: 100-continue\r\n\r\n", 1 << 20);
    let (text, _) = exchange_raw(&gateway, head.as_bytes());
    assert!(!text.contains("100 Continue"), "the over-cap body was invited: {text}");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains(snowgate::session::codes::SESSION_MISSING), "{text}");
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
}
