//! Every wait has a deadline, and the gateway stays up when its peers misbehave: a client that
//! stalls mid-head or mid-body is answered 408 and closed, an idle connection is closed, an
//! upstream that breaks mid-answer or never answers gives the agent a 502 or 504, and a drain
//! finishes the request in flight while serving no new connection.
//!
//! Times are measured with wide bounds: these tests prove behaviour (closed, not before the
//! timeout, not long after it), they are not benchmarks.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use snowgate::http::{BodyFraming, Limits, Method, parse_response_head};

use crate::support::*;

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
const IDLE_TIMEOUT: Duration = Duration::from_millis(500);
/// Distinct from the other two, so that a wait under the wrong deadline shows.
const BODY_TIMEOUT: Duration = Duration::from_millis(700);
/// How long after its timeout a close may come.
const SLACK: Duration = Duration::from_millis(1500);

fn timeout_limits() -> String {
    format!(
        "header_timeout_ms = {}\nidle_timeout_ms = {}\nbody_timeout_ms = {}",
        HEADER_TIMEOUT.as_millis(),
        IDLE_TIMEOUT.as_millis(),
        BODY_TIMEOUT.as_millis()
    )
}

/// A plain TCP connection to `addr`, with a read timeout that bounds every wait in a test.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// Reads until the peer closes (end of stream or reset); returns what arrived and when the
/// close came. Panics if the peer neither closes nor stops within the read timeout.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (received, Instant::now()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (received, Instant::now()),
            Err(e) => panic!("the gateway did not close the connection: {e}; received {received:?}"),
        }
    }
}

/// Asserts that a close (or an answer) came after `timeout` and within [`SLACK`] of it. The
/// gateway started its clock between `not_before` and `not_after` (taken before and after the
/// client's step that starts it), so the wait is measured from the first for the lower bound
/// and from the second for the upper one; returns the latter measure.
#[track_caller]
fn assert_after_timeout(timeout: Duration, not_before: Instant, not_after: Instant, closed_at: Instant) -> Duration {
    let (longest, shortest) = (closed_at - not_before, closed_at - not_after);
    assert!(longest >= timeout, "came after {longest:?}, before the {timeout:?} timeout");
    assert!(shortest <= timeout + SLACK, "came after {shortest:?}, long after the {timeout:?} timeout");
    shortest
}

/// Splits a whole answer into its status, its head (lowercase) and its body.
fn parse_answer(bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let head = parse_response_head(bytes, Method::Post, &Limits::default()).unwrap().expect("a complete answer head");
    let text = String::from_utf8_lossy(&bytes[..head.head_len]).to_ascii_lowercase();
    (head.status, text, bytes[head.head_len..].to_vec())
}

/// Asserts the gateway's own 408 answer, with `Connection: close`.
#[track_caller]
fn assert_408(bytes: &[u8]) {
    let (status, head, body) = parse_answer(bytes);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(bytes));
    assert!(head.contains("connection: close"), "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((body["code"].as_str(), body["success"].as_bool()), (Some("408"), Some(false)), "{body}");
}

/// Reads one answer off a kept-alive connection; returns its status and whether it said close.
fn read_one_answer(stream: &mut TcpStream) -> (u16, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = parse_response_head(&buf, Method::Get, &Limits::default()).unwrap() {
            let BodyFraming::Length(length) = head.framing else { panic!("the gateway answers with a length") };
            while buf.len() < head.head_len + length as usize {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the connection closed inside a body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (head.status, head.close);
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the connection closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

const PARTIAL_HEAD: &[u8] = b"POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: g\r\nContent-Type: app";

#[test]
fn a_stalled_head_is_answered_408_and_closed_after_the_header_timeout() {
    let upstream = double(|_| {});
    let gateway =
        TestGateway::start(&upstream.url(), GatewayOptions { limits: timeout_limits(), ..Default::default() });

    // Part of a head, then silence.
    let mut stream = connect(gateway.addr);
    let sending = Instant::now();
    stream.write_all(PARTIAL_HEAD).unwrap();
    let sent = Instant::now();
    let (received, closed_at) = read_until_closed(&mut stream);
    assert_408(&received);
    let stalled = assert_after_timeout(HEADER_TIMEOUT, sending, sent, closed_at);

    // A head trickled a byte at a time never completes, and the deadline counts from its first
    // byte, not from the last one.
    let mut stream = connect(gateway.addr);
    let mut writer = stream.try_clone().unwrap();
    let first_byte = Instant::now();
    let trickle = std::thread::spawn(move || {
        for byte in PARTIAL_HEAD {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (received, closed_at) = read_until_closed(&mut stream);
    assert_408(&received);
    let trickled = assert_after_timeout(HEADER_TIMEOUT, first_byte, first_byte, closed_at);
    trickle.join().unwrap();
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
    eprintln!("stalled head closed after {stalled:?}, trickled head after {trickled:?}");
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let upstream = double(|_| {});
    let gateway =
        TestGateway::start(&upstream.url(), GatewayOptions { limits: timeout_limits(), ..Default::default() });

    // A connection that never sends a byte is closed without an answer.
    let connecting = Instant::now();
    let mut silent = connect(gateway.addr);
    let connected = Instant::now();
    let (received, closed_at) = read_until_closed(&mut silent);
    assert!(received.is_empty(), "{}", String::from_utf8_lossy(&received));
    let never_spoke = assert_after_timeout(IDLE_TIMEOUT, connecting, connected, closed_at);

    // A keep-alive connection that goes quiet after an answer is closed too.
    let mut kept_alive = connect(gateway.addr);
    let asking = Instant::now();
    kept_alive.write_all(b"GET /console/login HTTP/1.1\r\nHost: g\r\n\r\n").unwrap();
    assert_eq!(read_one_answer(&mut kept_alive), (404, false));
    let answered = Instant::now();
    let (received, closed_at) = read_until_closed(&mut kept_alive);
    assert!(received.is_empty(), "{}", String::from_utf8_lossy(&received));
    let went_quiet = assert_after_timeout(IDLE_TIMEOUT, asking, answered, closed_at);
    eprintln!("silent connection closed after {never_spoke:?}, quiet keep-alive after {went_quiet:?}");
}

#[test]
fn a_short_body_is_answered_408_and_closed_after_the_body_timeout() {
    let upstream = double(|_| {});
    let gateway =
        TestGateway::start(&upstream.url(), GatewayOptions { limits: timeout_limits(), ..Default::default() });
    let mut stream = connect(gateway.addr);
    let sending = Instant::now();
    stream
        .write_all(b"POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    stream.write_all(b"{\"sqlText\"").unwrap();
    let sent = Instant::now();
    let (received, closed_at) = read_until_closed(&mut stream);
    assert_408(&received);
    let took = assert_after_timeout(BODY_TIMEOUT, sending, sent, closed_at);
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
    eprintln!("short body closed after {took:?}");
}

/// What the raw upstream does with the next request.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers a successful login after this delay.
    LoginAfter(Duration),
    /// Sends the head and a tenth of the body, then closes.
    CloseMidAnswer,
    /// Sends the head and a tenth of the body, then resets the connection.
    ResetMidAnswer,
    /// Closes without a byte.
    Hangup,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Never answers; waits for the gateway to give up.
    Silent,
    /// Answers 502 with an HTML page (a load balancer's).
    HtmlError(&'static str),
}

const LOGIN_ANSWER: &str = r#"{"data":{"token":"RAW-SESSION-TOKEN","masterToken":"RAW-MASTER-TOKEN","validityInSeconds":3600,"masterValidityInSeconds":14400,"sessionId":4242,"parameters":[]},"code":null,"message":null,"success":true}"#;

/// A hand-written Snowflake stand-in on 127.0.0.1: one thread per connection, one request per
/// connection (every answer says `Connection: close`, so the gateway never reuses one), and a
/// queue of behaviours for the next requests; a quick login answer once the queue is empty.
struct RawUpstream {
    addr: SocketAddr,
    queue: Arc<Mutex<VecDeque<Behaviour>>>,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawUpstream {
    fn start(queue: impl IntoIterator<Item = Behaviour>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let queue = Arc::new(Mutex::new(queue.into_iter().collect::<VecDeque<_>>()));
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (queue, received, stop) = (queue.clone(), received.clone(), stop.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (queue, received) = (queue.clone(), received.clone());
                    std::thread::spawn(move || Self::serve(stream, &queue, &received));
                }
            }
        });
        RawUpstream { addr, queue, received, stop, thread: Some(thread) }
    }

    fn serve(mut stream: TcpStream, queue: &Mutex<VecDeque<Behaviour>>, received: &AtomicUsize) {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if !read_request(&mut stream) {
            return;
        }
        received.fetch_add(1, Ordering::AcqRel);
        let behaviour = queue.lock().unwrap().pop_front().unwrap_or(Behaviour::LoginAfter(Duration::ZERO));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            LOGIN_ANSWER.len(),
            LOGIN_ANSWER
        );
        let partial = &answer.as_bytes()[..answer.len() - LOGIN_ANSWER.len() * 9 / 10];
        let _ = match behaviour {
            Behaviour::LoginAfter(delay) => {
                std::thread::sleep(delay);
                stream.write_all(answer.as_bytes())
            }
            Behaviour::CloseMidAnswer => stream.write_all(partial),
            Behaviour::ResetMidAnswer => {
                let _ = stream.write_all(partial);
                // A zero linger turns the close into a reset.
                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))
            }
            Behaviour::Hangup => Ok(()),
            Behaviour::Garbage => stream.write_all(b"SNOWFLAKE SAYS NO\r\n\r\n"),
            Behaviour::Silent => {
                // Returns when the gateway closes its side (or the read timeout passes).
                let _ = stream.read(&mut [0u8; 16]);
                Ok(())
            }
            Behaviour::HtmlError(page) => stream.write_all(
                format!(
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            ),
        };
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Acquire)
    }

    fn push(&self, behaviour: Behaviour) {
        self.queue.lock().unwrap().push_back(behaviour);
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (head, then a Content-Length body); false if the peer went away first.
fn read_request(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Asserts the gateway's answer to an upstream failure: `status`, and a Snowflake-shaped body.
#[track_caller]
fn assert_upstream_failure(answer: &snowgate_perf::client::ClientResponse, status: u16) {
    assert_eq!(answer.status, status, "{answer:?}");
    let body = answer.json().unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "260004", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["data"].is_object(), "{body}");
}

#[test]
fn an_upstream_that_breaks_mid_answer_gets_the_agent_a_502_and_the_gateway_keeps_serving() {
    let upstream = RawUpstream::start([]);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let token = agent_token(json!({}));
    let cases = [
        ("closed mid-answer", Behaviour::CloseMidAnswer),
        ("reset mid-answer", Behaviour::ResetMidAnswer),
        ("closed without an answer", Behaviour::Hangup),
        ("not HTTP", Behaviour::Garbage),
    ];
    for (case, behaviour) in cases {
        upstream.push(behaviour);
        let answer = login(&mut client, &token);
        assert_upstream_failure(&answer, 502);
        assert!(!answer.close, "{case}: the agent's connection need not close");
        // The same agent connection is served again, by a healthy upstream.
        let body = login(&mut client, &token).json().unwrap();
        assert_eq!(body["success"], true, "{case}: {body}");
        assert!(body["data"]["token"].as_str().unwrap().starts_with("sg1."), "{case}: {body}");
    }
    assert_eq!(upstream.received(), 2 * cases.len());
}

#[test]
fn an_upstream_failure_on_the_sql_api_is_answered_in_the_sql_apis_shape() {
    let upstream = RawUpstream::start([Behaviour::Hangup]);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let bearer = format!("Bearer {}", agent_token(json!({})));
    let answer = client
        .post_json("/api/v2/statements", &sql_api_headers(&bearer), &json!({"statement": "select 1"}), false)
        .unwrap();
    assert_eq!(answer.status, 502, "{answer:?}");
    let body = answer.json().unwrap();
    assert_eq!(body["code"], "260004", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["sqlState"].is_string() && body.get("success").is_none(), "{body}");
}

#[test]
fn an_upstream_that_never_answers_gets_the_agent_a_504_after_the_response_timeout() {
    const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
    let upstream = RawUpstream::start([Behaviour::Silent]);
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions {
            upstream_extra: format!("response_timeout_ms = {}", RESPONSE_TIMEOUT.as_millis()),
            ..Default::default()
        },
    );
    let mut client = gateway.client();
    let token = agent_token(json!({}));
    let started = Instant::now();
    let answer = login(&mut client, &token);
    let answered = Instant::now();
    assert_upstream_failure(&answer, 504);
    let took = assert_after_timeout(RESPONSE_TIMEOUT, started, started, answered);
    assert_eq!(login(&mut client, &token).json().unwrap()["success"], true);
    eprintln!("504 after {took:?}");
}

#[test]
fn a_drain_cut_short_by_its_deadline_still_seals_the_recording() {
    // A request still waiting on upstream when the drain deadline passes holds the core's state
    // in a task the runtime never finishes: the core must stop its recorder itself, so what
    // was recorded is written and the segment sealed, as after any clean stop.
    let upstream = RawUpstream::start([Behaviour::Silent]);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let addr = gateway.addr;
    let token = agent_token(json!({}));
    // Not joined: in this process the stalled task (and its socket) outlives the gateway, so the
    // client only sees its own read timeout; the real binary exits and closes it.
    std::thread::spawn(move || {
        let mut client = snowgate_perf::client::Client::connect(addr).unwrap();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| login(&mut client, &token)));
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.received() == 0 {
        assert!(Instant::now() < deadline, "the login never reached upstream");
        std::thread::sleep(Duration::from_millis(5));
    }
    let dir = gateway.stop();
    let recordings = dir.path().join("recordings");
    let report = crate::recording::verify_dir(&recordings, false);
    assert!(report.is_ok(), "the recording was left open or broken: {:?}", report.problems);
    let logins = read_records(&recordings)
        .into_iter()
        .filter(|r| matches!(&r.frame, snowgate::record::Frame::Request(_)) && r.frame.endpoint() == Some("login"))
        .count();
    assert_eq!(logins, 1, "the login in flight was recorded");
}

#[test]
fn drain_finishes_the_request_in_flight_and_serves_no_new_connection() {
    // Long enough for the drain, the late connection and the idle close to happen while the
    // login is still upstream, on a busy machine too; shorter than the drain timeout (5 s).
    const UPSTREAM_DELAY: Duration = Duration::from_millis(2500);
    let upstream = RawUpstream::start([Behaviour::LoginAfter(UPSTREAM_DELAY)]);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let addr = gateway.addr;

    // A keep-alive connection, idle when the drain begins.
    let mut idle = connect(addr);
    idle.write_all(b"GET /console/login HTTP/1.1\r\nHost: g\r\n\r\n").unwrap();
    assert_eq!(read_one_answer(&mut idle), (404, false));

    let token = agent_token(json!({}));
    let in_flight = std::thread::spawn(move || {
        let mut client = snowgate_perf::client::Client::connect(addr).unwrap();
        login(&mut client, &token)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.received() == 0 {
        assert!(Instant::now() < deadline, "the login never reached upstream");
        std::thread::sleep(Duration::from_millis(5));
    }

    gateway.drain();
    let drained_at = Instant::now();
    // A connection attempted once the drain has begun is refused, or closed without an answer.
    let login_wire = {
        let body = login_body(&agent_token(json!({}))).to_string();
        format!("POST {LOGIN_TARGET} HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    let late = match TcpStream::connect(addr) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            "refused"
        }
        Ok(mut late) => {
            late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = late.write_all(login_wire.as_bytes());
            let (received, _) = read_until_closed(&mut late);
            let received = String::from_utf8_lossy(&received);
            assert!(received.is_empty(), "a connection made during the drain was served: {received}");
            "closed unanswered"
        }
    };
    // The idle keep-alive connection is closed, unanswered, while the request is still in flight.
    let (received, idle_closed_at) = read_until_closed(&mut idle);
    assert!(received.is_empty(), "{}", String::from_utf8_lossy(&received));
    let idle_closed_after = idle_closed_at - drained_at;
    assert!(!in_flight.is_finished(), "the idle connection stayed open until the request in flight ended");

    // The request in flight gets its whole answer, and is told the connection closes.
    let answer = in_flight.join().unwrap();
    let answered_after = drained_at.elapsed();
    let body = answer.json().unwrap();
    assert_eq!((answer.status, &body["success"]), (200, &json!(true)), "{body}");
    assert!(body["data"]["token"].as_str().unwrap().starts_with("sg1."), "{body}");
    assert_eq!(body["data"]["sessionId"], 4242);
    assert!(answer.close, "an answer during the drain says Connection: close");

    // The listener is gone: new connections are refused.
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    let stopping = Instant::now();
    drop(gateway.stop());
    let stopped_after = stopping.elapsed();
    assert!(stopped_after < Duration::from_secs(2), "the drain took {stopped_after:?}");
    assert_eq!(upstream.received(), 1, "a request made during the drain reached upstream");
    eprintln!(
        "late connection {late}; idle connection closed {idle_closed_after:?} after the drain began; \
         in-flight answer after {answered_after:?}; cores stopped in {stopped_after:?}"
    );
}

/// A login Snowflake answers with an error status reaches the agent as that status with the
/// gateway's own refusal: the error page of a session endpoint is not checked for tokens, so
/// it is not passed on (here it carries a session and a master token).
#[test]
fn a_login_answered_with_an_error_status_keeps_the_status_and_drops_the_body() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if !read_request(&mut stream) {
                continue;
            }
            let body =
                r#"{"data":{"token":"LEAKED-SESSION-TOKEN","masterToken":"LEAKED-MASTER-TOKEN"},"success":false}"#;
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let gateway = TestGateway::start(&format!("http://{addr}"), GatewayOptions::default());
    let mut client = gateway.client();
    let answer = login(&mut client, &agent_token(json!({})));
    assert_eq!(answer.status, 503, "{answer:?}");
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(!text.contains("LEAKED"), "an upstream token reached the agent: {text}");
    let body = answer.json().unwrap();
    assert_eq!((&body["success"], &body["code"]), (&json!(false), &json!("260004")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("HTTP status 503"), "{body}");
}

/// A keep-alive stand-in: on each connection it answers the first request with a login answer
/// and keeps the connection; the second it reads, then closes after `close_after`. Counts the
/// requests it read.
fn keep_alive_upstream(close_after: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                if !read_request(&mut stream) {
                    return;
                }
                counter.fetch_add(1, Ordering::AcqRel);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                    LOGIN_ANSWER.len(),
                    LOGIN_ANSWER
                );
                stream.write_all(answer.as_bytes()).unwrap();
                if read_request(&mut stream) {
                    counter.fetch_add(1, Ordering::AcqRel);
                    std::thread::sleep(close_after);
                }
            });
        }
    });
    (addr, received)
}

/// A POST (a statement, a login) is never sent twice: on a reused upstream connection that
/// ends before any answer byte, at once or later, it may have run, so the agent gets a 502
/// (its driver retries with its own request id) and upstream saw it once. It goes only on
/// connections idle for less than the time an upstream may close them for idleness: past
/// that, a fresh connection carries it.
#[test]
fn a_post_is_never_sent_twice_and_avoids_connections_idle_long_enough_to_be_closed() {
    for close_after in [Duration::ZERO, Duration::from_millis(1500)] {
        let (addr, received) = keep_alive_upstream(close_after);
        let gateway = TestGateway::start(&format!("http://{addr}"), GatewayOptions::default());
        let mut client = gateway.client();
        assert_eq!(login(&mut client, &agent_token(json!({}))).json().unwrap()["success"], true);
        assert_eq!(received.load(Ordering::Acquire), 1);
        // The second login goes on the kept connection, which ends without an answer.
        let answer = login(&mut client, &agent_token(json!({})));
        assert_upstream_failure(&answer, 502);
        assert_eq!(received.load(Ordering::Acquire), 2, "a POST was sent twice (closed after {close_after:?})");
    }
    // Idle past the limit, the kept connection is not used for a POST: a fresh one is.
    let (addr, received) = keep_alive_upstream(Duration::ZERO);
    let gateway = TestGateway::start(&format!("http://{addr}"), GatewayOptions::default());
    let mut client = gateway.client();
    assert_eq!(login(&mut client, &agent_token(json!({}))).json().unwrap()["success"], true);
    std::thread::sleep(Duration::from_millis(2300));
    let answer = login(&mut client, &agent_token(json!({})));
    assert_eq!(answer.json().unwrap()["success"], true, "{answer:?}");
    assert_eq!(received.load(Ordering::Acquire), 2, "one request on each connection");
}

/// Under masking, an error answer whose body the masker cannot read (an HTML page) keeps its
/// status and loses its body: nothing unread reaches the agent.
#[test]
fn under_masking_an_error_page_that_is_not_json_reaches_the_agent_as_its_status_only() {
    const PAGE: &str = "<html>upstream trace: ada.lovelace@example.com</html>";
    let upstream = RawUpstream::start([Behaviour::LoginAfter(Duration::ZERO), Behaviour::HtmlError(PAGE)]);
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { policy: Some(crate::masking::MASKING_POLICY.into()), ..Default::default() },
    );
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let answer = query(&mut client, &session, "select 1");
    assert_eq!(answer.status, 502, "{answer:?}");
    let body = String::from_utf8_lossy(&answer.body);
    assert!(!body.contains("ada.lovelace") && !body.contains("<html>"), "{body}");
    assert_eq!(answer.json().unwrap()["code"], snowgate::session::codes::UPSTREAM_INVALID, "{body}");
}
