//! TLS on both sides of the gateway, end to end over loopback with the committed test
//! certificates (`tests/fixtures/tls/`): agents reaching a TLS listener, and the gateway
//! reaching an `https://` Snowflake double that it verifies against a configured CA.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConnection, StreamOwned};
use serde_json::{Value, json};
use snowgate::config::{Config, ConfigError, RuntimeSettings};
use snowgate::http::{BodyFraming, Limits, Method, parse_response_head};
use snowgate::proxy::StartError;
use snowgate::proxy::tls::TlsConfigError;
use snowgate_perf::{EndpointKind, RunningUpstream, UpstreamConfig};

use crate::support::*;

/// A committed test certificate or key.
fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/tls").join(name)
}

/// The `[listen]` body for a TLS listener on an ephemeral loopback port (the key a private
/// copy: the gateway refuses a key file others may read).
fn tls_listen(cert: &str, key: &str) -> String {
    format!(
        "address = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        fixture(cert).display(),
        private_copy(&fixture(key)).display()
    )
}

/// A gateway terminating TLS with the `localhost` certificate, in front of `upstream_url`.
fn tls_gateway(upstream_url: &str) -> TestGateway {
    TestGateway::start(
        upstream_url,
        GatewayOptions { listen: Some(tls_listen("localhost.pem", "localhost.key")), ..Default::default() },
    )
}

/// A TLS double serving `cert` (signed by the test CA unless said otherwise).
fn tls_double(cert: &str, key: &str) -> RunningUpstream {
    let config = UpstreamConfig {
        public_key_pem: Some(snowgate_perf::test_keys::TEST_PUBLIC_KEY_PEM.to_owned()),
        ..Default::default()
    };
    let cert = std::fs::read(fixture(cert)).unwrap();
    let key = std::fs::read(fixture(key)).unwrap();
    snowgate_perf::start_with_tls(config, &cert, &key).unwrap()
}

/// An agent's TLS settings: trusts only the CA in `ca_file`, offers HTTP/1.1 by ALPN.
fn agent_tls(ca_file: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(fixture(ca_file)).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The rustls error behind an I/O error from a TLS stream, if that is what it was.
fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// A blocking agent on one TLS keep-alive connection.
struct TlsAgent {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

/// One whole answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl TlsAgent {
    /// Connects to `addr` asking for `server_name`, and completes the handshake so that its
    /// failure is reported here rather than on the first request.
    fn connect(addr: SocketAddr, server_name: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsAgent> {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let connection = ClientConnection::new(config, name).unwrap();
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsAgent { stream, buf: Vec::new() })
    }

    fn request(&mut self, method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut wire = format!("{} {target} HTTP/1.1\r\nhost: localhost\r\n", method.as_str());
        for (name, value) in headers {
            wire.push_str(&format!("{name}: {value}\r\n"));
        }
        wire.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut wire = wire.into_bytes();
        wire.extend_from_slice(body);
        self.stream.write_all(&wire).unwrap();
        self.stream.flush().unwrap();
        self.read_answer(method)
    }

    fn read_answer(&mut self, method: Method) -> Answer {
        let head = loop {
            if let Some(head) = parse_response_head(&self.buf, method, &Limits::default()).unwrap() {
                break head;
            }
            self.fill();
        };
        self.buf.drain(..head.head_len);
        let length = match head.framing {
            BodyFraming::Empty => 0,
            BodyFraming::Length(n) => n as usize,
            // The gateway answers with a Content-Length, always.
            other => panic!("unexpected framing {other:?}"),
        };
        while self.buf.len() < length {
            self.fill();
        }
        let body = self.buf.drain(..length).collect();
        Answer { status: head.status, close: head.close, body }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("reading an answer over TLS");
        assert!(n > 0, "the gateway closed the connection before a whole answer");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn post_json(&mut self, target: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
        let mut all = vec![("content-type", "application/json"), ("accept", "application/json")];
        all.extend_from_slice(headers);
        self.request(Method::Post, target, &all, body.to_string().as_bytes())
    }

    fn login(&mut self, token: &str) -> Answer {
        self.post_json(LOGIN_TARGET, &[("authorization", "Snowflake Token=\"None\"")], &login_body(token))
    }

    fn query(&mut self, session: &str, sql: &str) -> Answer {
        self.post_json(QUERY_TARGET, &[("authorization", &authorization(session))], &query_body(sql))
    }
}

/// Logs in and runs one query, asserting both succeed; returns the session token.
#[track_caller]
fn login_and_query(agent: &mut TlsAgent) -> String {
    let answer = agent.login(&agent_token(json!({})));
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["success"], true, "login failed: {body}");
    let session = body["data"]["token"].as_str().unwrap().to_owned();
    assert!(session.starts_with("sg1."), "{session}");
    let answer = agent.query(&session, "select * from small");
    let body = answer.json();
    assert_eq!(body["success"], true, "{body}");
    assert!(body["data"]["rowset"].as_array().is_some_and(|rows| !rows.is_empty()), "{body}");
    session
}

/// Writes `bytes` on a plain TCP connection and reads until the peer closes it; returns what
/// came back and how long the close took.
fn plain_exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    tcp.write_all(bytes).unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tcp.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            // Closing with our request unread makes the kernel reset the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the listener neither answered nor closed: {e}"),
        }
    }
    (received, started.elapsed())
}

// ---- Client-facing TLS termination ----

#[test]
fn an_agent_logs_in_and_queries_over_tls() {
    let upstream = double(|_| {});
    let gateway = tls_gateway(&upstream.url());
    // By host name and by IP address: the certificate names both.
    for server_name in ["localhost", "127.0.0.1"] {
        let mut agent = TlsAgent::connect(gateway.addr, server_name, agent_tls("ca.pem")).unwrap();
        assert_eq!(agent.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let session = login_and_query(&mut agent);
        // The connection stays usable: a second query on it.
        let answer = agent.query(&session, "select 1");
        assert_eq!(answer.json()["success"], true);
        assert!(!answer.close);
    }
    assert_eq!(upstream.stats.logins(), 2);
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 4);
}

#[test]
fn the_gateway_ends_a_tls_connection_with_close_notify() {
    let upstream = double(|_| {});
    let gateway = tls_gateway(&upstream.url());
    let mut agent = TlsAgent::connect(gateway.addr, "localhost", agent_tls("ca.pem")).unwrap();
    let answer = agent.request(Method::Get, "/no/such/endpoint", &[("connection", "close")], b"");
    assert_eq!(answer.status, 404);
    assert!(answer.close);
    // rustls reports a TCP close without close_notify as an unexpected EOF: a clean end of the
    // TLS session is Ok(0), so the agent can tell it from a truncation.
    let mut rest = Vec::new();
    let outcome = agent.stream.read_to_end(&mut rest);
    assert!(outcome.is_ok(), "the gateway closed without close_notify: {outcome:?}");
    assert!(rest.is_empty());
}

#[test]
fn plaintext_http_to_the_tls_listener_gets_no_http_answer() {
    let upstream = double(|_| {});
    let gateway = tls_gateway(&upstream.url());
    let request = format!("POST {LOGIN_TARGET} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{{}}");
    let (received, took) = plain_exchange(gateway.addr, request.as_bytes());
    assert!(!received.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&received));
    // If anything came back it is a TLS alert record (content type 21), not an HTTP answer.
    assert!(received.is_empty() || received[0] == 21, "{received:?}");
    // The handshake failed at once: the gateway did not wait for its header timeout.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
    // The listener still serves TLS agents.
    let mut agent = TlsAgent::connect(gateway.addr, "localhost", agent_tls("ca.pem")).unwrap();
    login_and_query(&mut agent);
}

#[test]
fn an_agent_trusting_another_ca_fails_the_handshake() {
    let upstream = double(|_| {});
    let gateway = tls_gateway(&upstream.url());
    let error =
        TlsAgent::connect(gateway.addr, "localhost", agent_tls("other-ca.pem")).err().expect("handshake failed");
    assert!(
        matches!(rustls_error(&error), Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))),
        "{error:?}"
    );
    assert_eq!(upstream.stats.bytes_received(), 0, "bytes reached upstream");
}

#[test]
fn an_agent_asking_for_another_name_fails_the_handshake() {
    let upstream = double(|_| {});
    let gateway = tls_gateway(&upstream.url());
    let error = TlsAgent::connect(gateway.addr, "other.example", agent_tls("ca.pem")).err().expect("handshake failed");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))
        ),
        "{error:?}"
    );
}

#[test]
fn a_stalled_tls_handshake_is_closed_at_the_header_timeout() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions {
            listen: Some(tls_listen("localhost.pem", "localhost.key")),
            limits: "header_timeout_ms = 300".into(),
            ..Default::default()
        },
    );
    // Connect and say nothing: no ClientHello ever comes.
    let (received, took) = plain_exchange(gateway.addr, b"");
    assert!(received.is_empty(), "{received:?}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(5), "{took:?}");
}

/// A TLS gateway on one core with short deadlines, so that a stalled agent meets them.
fn one_core_tls_gateway(upstream_url: &str, limits: &str) -> TestGateway {
    TestGateway::start(
        upstream_url,
        GatewayOptions {
            cores: 1,
            listen: Some(tls_listen("localhost.pem", "localhost.key")),
            limits: limits.into(),
            ..Default::default()
        },
    )
}

/// A TLS agent that stops mid-head is answered 408 at the header deadline, and the core serves
/// on. The read abandoned at the deadline holds the TLS stream's buffer (monoio-rustls lends it
/// to the read), and reading the stream again (the refusal's linger) panicked the core's thread,
/// taking every connection on it down.
#[test]
fn a_tls_agent_stalled_mid_head_does_not_take_its_core_down() {
    let upstream = double(|_| {});
    let gateway = one_core_tls_gateway(&upstream.url(), "header_timeout_ms = 300");
    let mut stalled = TlsAgent::connect(gateway.addr, "localhost", agent_tls("ca.pem")).unwrap();
    stalled.stream.write_all(b"GET /session HTTP/1.1\r\nhost: localhost\r\n").unwrap();
    stalled.stream.flush().unwrap();
    assert_eq!(stalled.read_answer(Method::Get).status, 408);
    // The refusal's linger reads what the agent sends next.
    let _ = stalled.stream.write_all(b"x-more: 1\r\n");
    let _ = stalled.stream.flush();
    std::thread::sleep(Duration::from_millis(300));
    let mut next = TlsAgent::connect(gateway.addr, "localhost", agent_tls("ca.pem")).unwrap();
    login_and_query(&mut next);
}

/// A TLS agent that sends requests and never reads the answers meets the answer's write
/// deadline, and the core serves on: the abandoned write held the stream's write buffer, and
/// the close_notify after it panicked the core's thread.
#[test]
fn a_tls_agent_that_stops_reading_does_not_take_its_core_down() {
    let upstream = double(|_| {});
    let gateway = one_core_tls_gateway(&upstream.url(), "body_timeout_ms = 300");
    // A small receive buffer, so the gateway's answers back up quickly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&gateway.addr.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    let mut stream = StreamOwned::new(ClientConnection::new(agent_tls("ca.pem"), name).unwrap(), tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    // Unknown paths are answered 404 at once; the writes stop when the gateway stops reading.
    let request = b"GET /nope HTTP/1.1\r\nhost: localhost\r\n\r\n".repeat(256);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20)
        && stream.write_all(&request).and_then(|()| stream.flush()).is_ok()
    {}
    std::thread::sleep(Duration::from_millis(500));
    let mut next = TlsAgent::connect(gateway.addr, "localhost", agent_tls("ca.pem")).unwrap();
    login_and_query(&mut next);
    drop(stream);
}

// ---- Listener configuration ----

/// Writes a complete configuration with this `[listen]` body into `dir` and loads it.
fn load_config(dir: &Path, listen: &str, upstream_url: &str, max_connections: usize) -> Result<Config, ConfigError> {
    write_private(&dir.join("seal.key"), "ab".repeat(32));
    write_private(&dir.join("recording.key"), RECORDING_KEY_HEX);
    write_private(&dir.join("password"), "not-a-real-password");
    let text = format!(
        r#"
[listen]
{listen}

[upstream]
account = "TESTACCT"
url = "{upstream_url}"
user = "SNOWGATE"
password_file = "password"

[identity]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
jwks_file = "{jwks}"
default_role = "ANALYST"

[tokens]
seal_key_file = "seal.key"

[recording]
directory = "recordings"
key_file = "recording.key"

{PERMISSIVE_POLICY}
"#,
        jwks = key_path("jwks.json").display(),
    );
    let path = dir.join("snowgate.toml");
    std::fs::write(&path, text).unwrap();
    let runtime = RuntimeSettings {
        cores: 1,
        pin_cpus: false,
        uring_entries: 256,
        read_buffer_bytes: 16 * 1024,
        upstream_pool_size: 8,
        max_connections,
        drain_timeout: Duration::from_secs(5),
        classifier_threads: 1,
        recording: Default::default(),
    };
    Config::load(&path, runtime)
}

#[test]
fn the_listener_needs_tls_files_or_explicit_plaintext_but_not_both() {
    let dir = tempfile::tempdir().unwrap();
    let cert = format!("tls_cert_file = \"{}\"", fixture("localhost.pem").display());
    let key = format!("tls_key_file = \"{}\"", private_copy(&fixture("localhost.key")).display());
    let cases = [
        (format!("{cert}\n{key}\nplaintext = true"), "listen.plaintext"),
        (format!("{cert}\nplaintext = true"), "listen.plaintext"),
        (format!("{key}\nplaintext = true"), "listen.plaintext"),
        (String::new(), "listen.tls_cert_file"),
        ("plaintext = false".to_owned(), "listen.tls_cert_file"),
        (cert.clone(), "listen.tls_cert_file"),
        (key.clone(), "listen.tls_cert_file"),
        (format!("tls_cert_file = \"{}\"\n{key}", dir.path().join("missing.pem").display()), "listen.tls_cert_file"),
        (format!("{cert}\ntls_key_file = \"{}\"", dir.path().join("missing.key").display()), "listen.tls_key_file"),
    ];
    for (listen, expected_key) in cases {
        let listen = format!("address = \"127.0.0.1:0\"\n{listen}");
        let error = load_config(dir.path(), &listen, "http://127.0.0.1:9", 1000).expect_err(&listen);
        assert_eq!(error.key, expected_key, "{listen}: {error}");
        assert!(error.to_string().starts_with(&format!("config: {expected_key}: ")), "{error}");
    }
    // And the two valid shapes load.
    let tls = load_config(dir.path(), &format!("address = \"127.0.0.1:0\"\n{cert}\n{key}"), "http://127.0.0.1:9", 1000);
    assert!(tls.unwrap().listen.tls.is_some());
    let plain = load_config(dir.path(), "address = \"127.0.0.1:0\"\nplaintext = true", "http://127.0.0.1:9", 1000);
    assert!(plain.unwrap().listen.tls.is_none());
}

#[test]
fn unusable_tls_files_stop_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |cert: &str, key: &str| {
        let config = load_config(dir.path(), &tls_listen(cert, key), "http://127.0.0.1:9", 1000).unwrap();
        snowgate::runtime::start(config).err().expect("the gateway must not start")
    };
    // A key where the certificate should be, and the other way round.
    assert!(matches!(start("localhost.key", "localhost.key"), StartError::Tls(TlsConfigError::NoCertificate)));
    assert!(matches!(start("localhost.pem", "localhost.pem"), StartError::Tls(TlsConfigError::NoKey)));
    // A key that does not belong to the certificate is caught now, not at the first handshake.
    assert!(matches!(start("localhost.pem", "other-name.key"), StartError::Tls(TlsConfigError::Rustls(_))));
}

#[test]
fn a_tls_listener_at_its_connection_limit_answers_503_over_tls() {
    let upstream = double(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let config = load_config(dir.path(), &tls_listen("localhost.pem", "localhost.key"), &upstream.url(), 1).unwrap();
    let running = snowgate::runtime::start(config).unwrap();
    // The first agent holds the core's only connection slot.
    let _first = TlsAgent::connect(running.local_addr, "localhost", agent_tls("ca.pem")).unwrap();
    // The second is told, over TLS, that the gateway is full: not sent clear bytes that its
    // TLS stack can only report as a corrupt record.
    let mut second = TlsAgent::connect(running.local_addr, "localhost", agent_tls("ca.pem")).unwrap();
    let answer = second.read_answer(Method::Get);
    assert_eq!(answer.status, 503);
    assert!(answer.close);
    assert_eq!(answer.json()["code"], "260006");
    running.drain();
    running.join();
}

// ---- Upstream over TLS ----

#[test]
fn the_gateway_logs_in_and_queries_through_an_https_upstream() {
    let upstream = tls_double("localhost.pem", "localhost.key");
    // By host name (SNI and a DNS name check) and by IP address (an IP address check).
    for host in ["localhost", "127.0.0.1"] {
        let connections_before = upstream.stats.connections_accepted();
        let gateway = TestGateway::start(
            &format!("https://{host}:{}", upstream.addr.port()),
            GatewayOptions {
                upstream_extra: format!("ca_file = \"{}\"", fixture("ca.pem").display()),
                ..Default::default()
            },
        );
        let mut client = gateway.client();
        let (session, _) = login_ok(&mut client);
        for _ in 0..3 {
            let answer = query(&mut client, &session, "select * from small");
            assert_eq!(answer.json().unwrap()["success"], true);
        }
        // The double saw the rewritten login over TLS, with the Host it was asked for.
        let login = upstream.stats.last(EndpointKind::Login).unwrap();
        assert_eq!(login.body_json().unwrap()["data"]["LOGIN_NAME"], "SNOWGATE");
        assert_eq!(login.header("host"), Some(format!("{host}:{}", upstream.addr.port()).as_str()));
        // One TLS connection, kept alive across the login and the queries.
        assert_eq!(upstream.stats.connections_accepted() - connections_before, 1);
    }
    assert_eq!(upstream.stats.logins(), 2);
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 6);
}

#[test]
fn the_gateway_and_the_agent_both_speak_tls() {
    let upstream = tls_double("localhost.pem", "localhost.key");
    let gateway = TestGateway::start(
        &format!("https://localhost:{}", upstream.addr.port()),
        GatewayOptions {
            listen: Some(tls_listen("localhost.pem", "localhost.key")),
            upstream_extra: format!("ca_file = \"{}\"", fixture("ca.pem").display()),
            ..Default::default()
        },
    );
    let mut agent = TlsAgent::connect(gateway.addr, "localhost", agent_tls("ca.pem")).unwrap();
    login_and_query(&mut agent);
    assert_eq!(upstream.stats.logins(), 1);
}

/// Logs in through a gateway whose upstream TLS check must fail, and asserts the failure is
/// the gateway's 502 with nothing sent in clear and nothing leaked to the agent.
#[track_caller]
fn assert_upstream_tls_refused(upstream: &RunningUpstream, gateway: &TestGateway, why: &str) {
    let token = agent_token(json!({}));
    let mut client = gateway.client();
    for _ in 0..2 {
        let answer = login(&mut client, &token);
        assert_eq!(answer.status, 502, "{answer:?}");
        let body = answer.json().unwrap();
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["code"], snowgate::session::codes::UPSTREAM_INVALID, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        let text = String::from_utf8_lossy(&answer.body);
        assert!(!text.contains(&token) && !text.contains("SNOWGATE") && !text.contains("PRIVATE KEY"), "{text}");
    }
    // The gateway did try (so the refusal is the certificate's doing), but no byte of HTTP,
    // and so not the login body with the gateway's credential, reached the double.
    assert!(upstream.stats.connections_accepted() >= 1);
    assert_eq!(upstream.stats.bytes_received(), 0);
    assert_eq!(upstream.stats.requests_total(), 0);
    assert!(!captured_logs().contains(&token), "the agent's token was logged");
}

#[test]
fn an_https_upstream_signed_by_another_ca_is_a_502() {
    let upstream = tls_double("localhost.pem", "localhost.key");
    let gateway = TestGateway::start(
        &format!("https://localhost:{}", upstream.addr.port()),
        GatewayOptions {
            upstream_extra: format!("ca_file = \"{}\"", fixture("other-ca.pem").display()),
            ..Default::default()
        },
    );
    assert_upstream_tls_refused(&upstream, &gateway, "UnknownIssuer");
}

#[test]
fn an_https_upstream_with_a_certificate_for_another_name_is_a_502() {
    let upstream = tls_double("other-name.pem", "other-name.key");
    for host in ["localhost", "127.0.0.1"] {
        let gateway = TestGateway::start(
            &format!("https://{host}:{}", upstream.addr.port()),
            GatewayOptions {
                upstream_extra: format!("ca_file = \"{}\"", fixture("ca.pem").display()),
                ..Default::default()
            },
        );
        assert_upstream_tls_refused(&upstream, &gateway, "not valid for name");
    }
}

#[test]
fn an_https_upstream_that_speaks_plain_http_is_a_502() {
    // The gateway must not fall back to clear text when the upstream does not speak TLS.
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &format!("https://localhost:{}", upstream.addr.port()),
        GatewayOptions {
            upstream_extra: format!("ca_file = \"{}\"", fixture("ca.pem").display()),
            ..Default::default()
        },
    );
    let answer = login(&mut gateway.client(), &agent_token(json!({})));
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(answer.json().unwrap()["code"], snowgate::session::codes::UPSTREAM_INVALID);
    // The double saw a ClientHello it could not parse, and no login.
    assert_eq!(upstream.stats.logins(), 0);
    assert!(!upstream.stats.saw(b"SNOWGATE"));
}

/// A configuration printed with `{:?}` (a panic, a future debug log) shows no key: not the
/// listener's private key, the sealing keys (they would forge tokens and chunk grants), the
/// recording key (it would forge seals) or the upstream password.
#[test]
fn a_printed_configuration_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        load_config(dir.path(), &tls_listen("localhost.pem", "localhost.key"), "http://127.0.0.1:9", 1000).unwrap();
    let printed = format!("{config:?} {config:#?}");
    let seal_key = config.seal_keys[0].clone();
    let private_key = String::from_utf8(config.listen.tls.as_ref().unwrap().1.clone()).unwrap();
    let key_body = private_key.lines().nth(1).unwrap().to_owned();
    for (what, needle) in [
        ("the sealing key's bytes", format!("{seal_key:?}")),
        ("the sealing key's first bytes", format!("{:?}", &seal_key[..4]).trim_end_matches(']').to_owned()),
        ("the sealing key's hex", "ab".repeat(32)),
        ("the recording key's bytes", format!("{:?}", config.recording_key).trim_end_matches(']').to_owned()),
        ("the recording key's hex", RECORDING_KEY_HEX.to_owned()),
        ("the private key", key_body),
        ("the private key's bytes", format!("{:?}", &private_key.as_bytes()[..16]).trim_end_matches(']').to_owned()),
        ("the password", "not-a-real-password".to_owned()),
    ] {
        assert!(!printed.contains(&needle), "{what} is in the printed configuration");
    }
    // It still says what matters.
    assert!(printed.contains("127.0.0.1") && printed.contains("TESTACCT"), "{printed}");
}
