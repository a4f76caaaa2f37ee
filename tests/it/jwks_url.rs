//! The identity provider's keys fetched from a JWKS URL: fetched once on first need and cached,
//! fetched again when a token names a key the cache lacks (rotation), at most once per refetch
//! interval however many unknown keys arrive, and a provider that is down or answers garbage
//! makes logins fail fast with a driver-shaped refusal while cached keys keep working.
//!
//! The provider is a tiny HTTP/1.1 server on 127.0.0.1 whose answer a test can swap at runtime
//! and which counts the requests it answers.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use snowgate::config::RecordingSettings;
use snowgate::record::Durability;

use crate::support::*;

/// The refetch interval configured for these tests: long enough for a few logins on a busy
/// machine to fit in it.
const REFETCH_INTERVAL: Duration = Duration::from_secs(2);
/// A wait that is safely past the refetch interval.
const PAST_THE_INTERVAL: Duration = Duration::from_millis(2100);

/// What the test provider answers a JWKS request with.
#[derive(Debug, Clone)]
enum Reply {
    /// `200 OK` with this JSON body.
    Jwks(Vec<u8>),
    /// This status with this body.
    Status(u16, &'static str),
    /// The connection is closed without a byte of answer.
    Hangup,
}

/// A JWKS server on 127.0.0.1 answering every request with the current [`Reply`].
struct Idp {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    fetches: Arc<AtomicUsize>,
    request_lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Idp {
    fn start(reply: Reply) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let fetches = Arc::new(AtomicUsize::new(0));
        let request_lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (reply, fetches, request_lines, stop) =
                (reply.clone(), fetches.clone(), request_lines.clone(), stop.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let Some(head) = read_head(&mut stream) else { continue };
                    request_lines.lock().unwrap().push(head.lines().next().unwrap_or_default().to_owned());
                    // Counted before answering, so a login that used the answer sees the count.
                    fetches.fetch_add(1, Ordering::AcqRel);
                    let reply = reply.lock().unwrap().clone();
                    let (status, body) = match reply {
                        Reply::Jwks(body) => (200, body),
                        Reply::Status(status, body) => (status, body.as_bytes().to_vec()),
                        Reply::Hangup => continue,
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
                }
            }
        });
        Idp { addr, reply, fetches, request_lines, stop, thread: Some(thread) }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::Acquire)
    }

    /// The gateway's `[identity]` lines for this provider.
    fn jwks_settings(&self) -> String {
        format!(
            "jwks_url = \"http://{}/jwks.json\"\nrefetch_interval_min_secs = {}\ncache_ttl_secs = 3600",
            self.addr,
            REFETCH_INTERVAL.as_secs()
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads a request head (up to the blank line); `None` if the peer went away first.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An RSA JWK for a committed public key, as an IdP publishes it.
fn rsa_jwk(public_pem_file: &str, kid: &str) -> Value {
    let pem = std::fs::read_to_string(key_path(public_pem_file)).unwrap();
    let key = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
    json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

/// A JWKS document holding these keys.
fn jwks(keys: &[Value]) -> Reply {
    Reply::Jwks(serde_json::to_vec(&json!({ "keys": keys })).unwrap())
}

/// The committed fixture JWKS: key `key-a` (and an EC key).
fn jwks_a() -> Reply {
    Reply::Jwks(std::fs::read(key_path("jwks.json")).unwrap())
}

/// The fixture JWKS plus key `key-b`, as an IdP publishes it while rotating.
fn jwks_a_and_b() -> Reply {
    let fixture: Value = serde_json::from_slice(&std::fs::read(key_path("jwks.json")).unwrap()).unwrap();
    let mut keys = fixture["keys"].as_array().unwrap().clone();
    keys.push(rsa_jwk("idp-b.pub.pem", "key-b"));
    jwks(&keys)
}

/// A valid agent token signed with `key_file` under `kid`.
fn token(key_file: &str, kid: &str) -> String {
    token_of("agent-7", "analysts", key_file, kid)
}

/// A valid token for `sub` in `group`, signed with `key_file` under `kid`.
fn token_of(sub: &str, group: &str, key_file: &str, kid: &str) -> String {
    let now = now_unix();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": [group],
        "iat": now, "nbf": now - 5, "exp": now + 600,
    });
    sign_rs256(key_file, Some(kid), &claims)
}

fn start_gateway(idp: &Idp, upstream_url: &str) -> TestGateway {
    TestGateway::start(
        upstream_url,
        GatewayOptions { jwks: Some(idp.jwks_settings()), recording: unsynced(), ..Default::default() },
    )
}

/// Recording without fsync: a login here waits for no disk, so the refetch intervals these
/// tests count in hold their logins even on a slow one.
fn unsynced() -> RecordingSettings {
    RecordingSettings { durability: Durability::None, ..RecordingSettings::default() }
}

/// Asserts a login refused because the token could not be verified (code 390303).
#[track_caller]
/// A gateway whose admin API lets the `dba` group in, on `idp`'s JWKS URL.
fn start_gateway_with_admin(idp: &Idp, upstream_url: &str) -> TestGateway {
    let policy =
        format!("{PERMISSIVE_POLICY}\n[approvals]\nadmin_address = \"127.0.0.1:0\"\nadmin_groups = [\"dba\"]\n");
    TestGateway::start(
        upstream_url,
        GatewayOptions {
            jwks: Some(idp.jwks_settings()),
            policy: Some(policy),
            recording: unsynced(),
            ..Default::default()
        },
    )
}

/// A reviewer's (`dba-1`, group `dba`) token signed by `key_file` under `kid`.
fn reviewer_token(key_file: &str, kid: &str) -> String {
    token_of("dba-1", "dba", key_file, kid)
}

fn assert_login_refused(gateway: &TestGateway, token: &str) -> Value {
    let answer = login(&mut gateway.client(), token);
    assert_refused(&answer, "390303");
    answer.json().unwrap()
}

/// Asserts that a login is refused because the identity provider's keys cannot be had: the
/// provider's fault, not the token's, so HTTP 503 (clients retry) and the gateway's own code.
fn assert_login_unavailable(gateway: &TestGateway, token: &str) -> Value {
    let answer = login(&mut gateway.client(), token);
    assert_eq!(answer.status, 503, "{answer:?}");
    let body = answer.json().unwrap();
    assert_eq!((&body["success"], &body["code"]), (&json!(false), &json!("260019")), "{body}");
    body
}

/// Asserts that `started` (taken before the last fetch) is still within the refetch interval,
/// so that a "no fetch happened" assertion made now means what it says.
#[track_caller]
fn assert_within_interval(started: Instant) {
    assert!(started.elapsed() < REFETCH_INTERVAL, "the test ran past the refetch interval: {:?}", started.elapsed());
}

#[test]
fn the_first_login_fetches_the_jwks_once_and_later_logins_use_the_cache() {
    let idp = Idp::start(jwks_a());
    let upstream = double(|_| {});
    let gateway = start_gateway(&idp, &upstream.url());
    assert_eq!(idp.fetches(), 0, "nothing is fetched before a token needs keys");

    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    assert!(session.starts_with("sg1."));
    assert_eq!(idp.fetches(), 1, "the first login fetches the JWKS exactly once");
    assert_eq!(idp.request_lines.lock().unwrap().as_slice(), ["GET /jwks.json HTTP/1.1"]);

    for _ in 0..5 {
        login_ok(&mut client);
        login_ok(&mut gateway.client());
    }
    // Even past the refetch interval, a known key needs no fetch.
    std::thread::sleep(PAST_THE_INTERVAL);
    login_ok(&mut client);
    assert_eq!(idp.fetches(), 1, "logins with a cached key fetched the JWKS again");
}

#[test]
fn a_rotated_key_is_fetched_once_and_a_removed_key_stops_verifying() {
    let idp = Idp::start(jwks_a());
    let upstream = double(|_| {});
    let gateway = start_gateway(&idp, &upstream.url());
    let first_fetch = Instant::now();
    login_ok(&mut gateway.client());
    assert_eq!(idp.fetches(), 1);

    // The IdP publishes key b. Within the refetch interval a token signed with it is refused
    // without a fetch; past it, exactly one fetch lets it in.
    idp.set(jwks_a_and_b());
    let token_b = token("idp-b.pem", "key-b");
    assert_login_refused(&gateway, &token_b);
    assert_within_interval(first_fetch);
    assert_eq!(idp.fetches(), 1);
    std::thread::sleep(PAST_THE_INTERVAL);
    let second_fetch = Instant::now();
    let answer = login(&mut gateway.client(), &token_b).json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(idp.fetches(), 2, "the rotated key took exactly one more fetch");
    login_ok(&mut gateway.client());
    assert_eq!(login(&mut gateway.client(), &token_b).json().unwrap()["success"], true);
    assert_within_interval(second_fetch);
    assert_eq!(idp.fetches(), 2, "both keys are now cached");

    // The IdP drops key a. The next fetch (caused by an unknown kid) replaces the whole set,
    // so key a stops verifying at once, and its refusal does not fetch again.
    idp.set(jwks(&[rsa_jwk("idp-b.pub.pem", "key-b")]));
    std::thread::sleep(PAST_THE_INTERVAL);
    let third_fetch = Instant::now();
    assert_login_refused(&gateway, &token("idp-b.pem", "key-unknown"));
    assert_eq!(idp.fetches(), 3);
    assert_login_refused(&gateway, &token("idp-a.pem", "key-a"));
    assert_eq!(login(&mut gateway.client(), &token_b).json().unwrap()["success"], true);
    assert_within_interval(third_fetch);
    assert_eq!(idp.fetches(), 3);
    assert_eq!(upstream.stats.requests_total(), 5, "only the accepted logins reached upstream");
}

#[test]
fn the_admin_api_fetches_a_rotated_key_itself() {
    // Reviewers may act while no agent logs in (a statement parked for hours): the admin API
    // must not depend on an agent's login to learn the IdP's new key.
    let idp = Idp::start(jwks_a());
    let upstream = double(|_| {});
    let gateway = start_gateway_with_admin(&idp, &upstream.url());
    let (status, body) =
        admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &reviewer_token("idp-a.pem", "key-a"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.fetches(), 1, "the admin API fetched the keys it had never loaded");

    idp.set(jwks_a_and_b());
    std::thread::sleep(PAST_THE_INTERVAL);
    let (status, body) =
        admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &reviewer_token("idp-b.pem", "key-b"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.fetches(), 2, "the rotated key took exactly one fetch");
    // Within the interval an unknown key is refused without a fetch, as for agents.
    let (status, _) =
        admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &reviewer_token("attacker.pem", "key-x"), None);
    assert_eq!(status, 401);
    assert_eq!(idp.fetches(), 2);
}

#[test]
fn the_admin_api_says_the_identity_provider_is_unavailable_when_its_keys_cannot_be_fetched() {
    // A reviewer's valid token must not read as refused (401) while the IdP is down: that is the
    // server's side, and worth a retry.
    let idp = Idp::start(Reply::Status(500, r#"{"error":"internal"}"#));
    let upstream = double(|_| {});
    let gateway = start_gateway_with_admin(&idp, &upstream.url());
    let token = reviewer_token("idp-a.pem", "key-a");
    let (status, body) = admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &token, None);
    assert_eq!((status, &body["fault"]), (503, &json!("server")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("retry later"), "{body}");
    assert_eq!(idp.fetches(), 1);

    // Once the provider answers again (past the refetch interval), the same token is served.
    idp.set(jwks_a());
    std::thread::sleep(PAST_THE_INTERVAL);
    let (status, body) = admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &token, None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    const LOGINS: usize = 200;
    const THREADS: usize = 8;
    let idp = Idp::start(jwks_a());
    let upstream = double(|_| {});
    // Two cores share one verifier, so the single flight and the rate limit hold across cores.
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { cores: 2, jwks: Some(idp.jwks_settings()), recording: unsynced(), ..Default::default() },
    );
    login_ok(&mut gateway.client());
    assert_eq!(idp.fetches(), 1);
    // Signed up front, so that the flood itself is fast.
    let tokens: Vec<String> = (0..LOGINS).map(|i| token("attacker.pem", &format!("unknown-{i}"))).collect();
    std::thread::sleep(PAST_THE_INTERVAL);

    let flood_started = Instant::now();
    std::thread::scope(|scope| {
        for batch in tokens.chunks(LOGINS / THREADS) {
            let gateway = &gateway;
            scope.spawn(move || {
                let mut client = gateway.client();
                for token in batch {
                    let answer = login(&mut client, token);
                    assert_refused(&answer, "390303");
                    let message = answer.json().unwrap()["message"].as_str().unwrap().to_owned();
                    assert!(message.contains("unknown key"), "{message}");
                }
            });
        }
    });
    let flood_took = flood_started.elapsed();
    assert_within_interval(flood_started);
    assert_eq!(idp.fetches(), 2, "{LOGINS} unknown kids in {flood_took:?} caused other than exactly one fetch");
    // Valid tokens are still served, from the cache.
    let mut client = gateway.client();
    login_ok(&mut client);
    assert_eq!(idp.fetches(), 2);
    assert_eq!(upstream.stats.requests_total(), 2, "a refused login reached upstream");

    // Past the interval, an unknown kid may fetch again, once.
    std::thread::sleep(PAST_THE_INTERVAL);
    assert_login_refused(&gateway, &tokens[0]);
    assert_login_refused(&gateway, &tokens[1]);
    assert_eq!(idp.fetches(), 3);
    login_ok(&mut client);
    eprintln!("{LOGINS} refused logins took {flood_took:?}");
}

#[test]
fn a_down_or_broken_jwks_server_refuses_logins_fast() {
    // A loopback address no test listens on: another test cannot take the port meanwhile.
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        SocketAddr::from(([127, 0, 0, 254], listener.local_addr().unwrap().port()))
    };
    let cases: [(&str, Option<Reply>); 5] = [
        ("nothing listening", None),
        ("a hang-up without an answer", Some(Reply::Hangup)),
        ("garbage", Some(Reply::Jwks(b"<html>502 Bad Gateway</html>".to_vec()))),
        ("an HTTP 500", Some(Reply::Status(500, r#"{"error":"internal"}"#))),
        ("a JWKS without usable keys", Some(Reply::Jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.to_vec()))),
    ];
    let upstream = double(|_| {});
    for (case, reply) in cases {
        let idp = reply.map(Idp::start);
        let jwks = match &idp {
            Some(idp) => idp.jwks_settings(),
            None => format!("jwks_url = \"http://{closed_port}/jwks.json\"\nrefetch_interval_min_secs = 1"),
        };
        let gateway = TestGateway::start(&upstream.url(), GatewayOptions { jwks: Some(jwks), ..Default::default() });
        let started = Instant::now();
        let body = assert_login_unavailable(&gateway, &token("idp-a.pem", "key-a"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{case}: the refusal took {took:?}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("OIDC signing keys are not available yet"), "{case}: {body}");
        assert!(message.contains("retry later"), "{case}: {body}");
        // The failed fetch counts toward the rate limit: a second login does not fetch again.
        assert_login_unavailable(&gateway, &token("idp-a.pem", "key-a"));
        // The SQL API says the same: 503, the provider's fault, not a 401 for the token.
        let bearer = format!("Bearer {}", token("idp-a.pem", "key-a"));
        let body = json!({"statement": "select 1", "timeout": 60});
        let answer = gateway.client().post_json("/api/v2/statements", &sql_api_headers(&bearer), &body, false).unwrap();
        assert_eq!(answer.status, 503, "{case}: {answer:?}");
        assert_eq!(answer.json().unwrap()["code"], "260019", "{case}");
        if let Some(idp) = &idp {
            assert_within_interval(started);
            assert_eq!(idp.fetches(), 1, "{case}");
        }
        eprintln!("{case}: refused in {took:?}");
    }
    assert_eq!(upstream.stats.requests_total(), 0, "a refused login reached upstream");
}

#[test]
fn the_gateway_recovers_when_the_jwks_server_does() {
    let idp = Idp::start(Reply::Status(503, "unavailable"));
    let upstream = double(|_| {});
    let gateway = start_gateway(&idp, &upstream.url());
    assert_login_unavailable(&gateway, &token("idp-a.pem", "key-a"));
    assert_eq!(idp.fetches(), 1);

    idp.set(jwks_a());
    std::thread::sleep(PAST_THE_INTERVAL);
    login_ok(&mut gateway.client());
    assert_eq!(idp.fetches(), 2);

    // Once keys are cached, a provider gone bad does not take them away: an unknown kid's
    // fetch fails, and key a keeps verifying.
    idp.set(Reply::Jwks(b"not json".to_vec()));
    std::thread::sleep(PAST_THE_INTERVAL);
    assert_login_refused(&gateway, &token("idp-b.pem", "key-b"));
    assert_eq!(idp.fetches(), 3);
    login_ok(&mut gateway.client());
    assert_eq!(idp.fetches(), 3);
}
