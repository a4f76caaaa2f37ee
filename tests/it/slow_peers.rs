//! Slow and hostile peers: 500 slowloris clients are all closed within the header timeout plus
//! a second while a normal client keeps its latency; a gzip bomb is refused at the cap with
//! bounded memory (the gateway's peak RSS, measured); the per-core connection cap holds.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use snowgate::config::RecordingSettings;
use snowgate::record::Durability;

use crate::support::*;

/// Sequential query latencies of one keep-alive client, in microseconds, sorted.
fn latencies(gateway: &TestGateway, session: &str, n: usize) -> Vec<u64> {
    let mut client = gateway.client();
    let mut out: Vec<u64> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let answer = query(&mut client, session, "select 1");
            assert_eq!(answer.status, 200);
            started.elapsed().as_micros() as u64
        })
        .collect();
    out.sort_unstable();
    out
}

fn p99(sorted: &[u64]) -> u64 {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[test]
fn five_hundred_slowloris_clients_are_closed_in_time_and_a_normal_client_keeps_its_latency() {
    const SLOW_CLIENTS: usize = 500;
    const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
    let _exclusive = exclusive_section();
    let upstream = double(|c| c.request_log_capacity = 0);
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions {
            limits: "header_timeout_ms = 1000\nidle_timeout_ms = 30000".into(),
            exclusive: true,
            // What is measured is the event loop under attack; group-commit fsyncs (the
            // default `batch` mode holds each answer for one) would only add disk noise.
            recording: RecordingSettings { durability: Durability::None, ..Default::default() },
            ..Default::default()
        },
    );
    let (session, _) = login_ok(&mut gateway.client());
    // Warm up, then the baseline: the same client, the same queries, no attack.
    latencies(&gateway, &session, 500);
    let baseline = latencies(&gateway, &session, 2000);

    // The slow clients arrive over the first second, as independent attackers do, each sending
    // a request line at once and then one header byte a second (slowloris pace), never
    // finishing its head. The attacker polls every 10 ms: a busier loop would steal the very
    // CPU the normal client's latency is measured on.
    struct Slow {
        stream: TcpStream,
        opened: Instant,
        next_byte: Instant,
        closed: Option<Instant>,
    }
    let attack_started = Instant::now();
    let mut slow: Vec<Slow> = Vec::with_capacity(SLOW_CLIENTS);
    let attacking = std::sync::atomic::AtomicBool::new(true);
    let attacked = std::thread::scope(|scope| {
        let measure = scope.spawn(|| {
            let mut client = gateway.client();
            let mut samples = Vec::new();
            while attacking.load(std::sync::atomic::Ordering::Acquire) {
                let started = Instant::now();
                assert_eq!(query(&mut client, &session, "select 1").status, 200);
                samples.push(started.elapsed().as_micros() as u64);
            }
            samples.sort_unstable();
            samples
        });
        let deadline = attack_started + Duration::from_secs(1) + HEADER_TIMEOUT + Duration::from_millis(2500);
        let mut buf = [0u8; 1024];
        while (slow.len() < SLOW_CLIENTS || slow.iter().any(|c| c.closed.is_none())) && Instant::now() < deadline {
            let due = (attack_started.elapsed().as_millis() as usize * SLOW_CLIENTS / 1000).min(SLOW_CLIENTS);
            while slow.len() < due {
                let mut stream = TcpStream::connect(gateway.addr).unwrap();
                stream.write_all(b"POST /queries/v1/query-request HTTP/1.1\r\nX-Slow: ").unwrap();
                stream.set_nonblocking(true).unwrap();
                let opened = Instant::now();
                slow.push(Slow { stream, opened, next_byte: opened + Duration::from_secs(1), closed: None });
            }
            let now = Instant::now();
            for client in slow.iter_mut().filter(|c| c.closed.is_none()) {
                if now >= client.next_byte {
                    let _ = client.stream.write_all(b"a");
                    client.next_byte += Duration::from_secs(1);
                }
                // The gateway answers 408, then closes: read until the end of the stream.
                loop {
                    match client.stream.read(&mut buf) {
                        Ok(0) => {
                            client.closed = Some(Instant::now());
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            client.closed = Some(Instant::now());
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        attacking.store(false, std::sync::atomic::Ordering::Release);
        measure.join().unwrap()
    });

    assert_eq!(slow.len(), SLOW_CLIENTS);
    let late: Vec<String> = slow
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c.closed {
            Some(at) if at.duration_since(c.opened) <= HEADER_TIMEOUT + Duration::from_secs(1) => None,
            Some(at) => Some(format!("client {i} closed after {:?}", at.duration_since(c.opened))),
            None => Some(format!("client {i} never closed")),
        })
        .collect();
    assert!(late.is_empty(), "{} slow clients not closed in time: {:?}", late.len(), &late[..late.len().min(5)]);
    let earliest = slow.iter().filter_map(|c| c.closed.map(|at| at.duration_since(c.opened))).min();
    assert!(earliest.unwrap() >= HEADER_TIMEOUT - Duration::from_millis(50), "closed before the timeout");
    // The baseline again, now that every slow client is gone: the no-attack latency is the
    // p99 of both windows together, so that one unusually quiet (or busy) stretch of a shared
    // machine before the attack does not decide the comparison on its own.
    let after = latencies(&gateway, &session, 2000);
    let (first, second) = (p99(&baseline), p99(&after));
    let mut no_attack = [baseline, after].concat();
    no_attack.sort_unstable();
    let (before, during) = (p99(&no_attack), p99(&attacked));
    println!(
        "slowloris: {SLOW_CLIENTS} clients closed; normal client p99 {before} µs without the attack ({first} before, \
         {second} after), {during} µs during ({} samples)",
        attacked.len()
    );
    assert!(attacked.len() >= 1000, "too few samples during the attack: {}", attacked.len());
    // Starved, the normal client would wait out timeouts (seconds); what a shared 2-CPU machine
    // adds by itself (other tests' processes, a preempted thread) is a few milliseconds, so
    // within those the doubling is not held against the gateway.
    assert!(during <= (2 * before).max(before + 5_000), "the normal client's p99 went from {before} µs to {during} µs");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_gzip_bomb_is_refused_at_the_cap_with_bounded_memory() {
    const CAP: usize = 8 << 20;
    const INFLATED: usize = 512 << 20;
    let upstream = double(|_| {});
    let setup = TestGateway::start(
        &upstream.url(),
        GatewayOptions { limits: format!("decompressed_bytes_max = {CAP}"), ..Default::default() },
    );
    let dir = setup.stop();
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .args(["--config", dir.path().join("snowgate.toml").to_str().unwrap(), "--cores", "1"])
        .env("SNOWGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    // Warm the process up with one normal login so the baseline includes its working set.
    let mut client = snowgate_perf::client::Client::connect(addr).unwrap();
    let logged_in = login(&mut client, &agent_token(json!({}))).json().unwrap();
    assert_eq!(logged_in["success"], true);
    // The bomb comes from a caller with a session: without one it is refused before inflating.
    let session = logged_in["data"]["token"].as_str().unwrap().to_owned();
    let before = peak_rss_kib(child.id());

    // 512 MiB of spaces inflates from about half a megabyte of gzip.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b' '; 1 << 20];
    for _ in 0..INFLATED >> 20 {
        encoder.write_all(&block).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: g\r\nAuthorization: {}\r\n\
         Content-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        authorization(&session),
        bomb.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&bomb).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let after = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let growth_kib = after.saturating_sub(before);
    println!(
        "gzip bomb: {} KiB of gzip for {} MiB; peak RSS {before} KiB before, {after} KiB after",
        bomb.len() >> 10,
        INFLATED >> 20
    );
    // The inflated buffer is bounded by the cap; allow the cap twice over (a growing Vec may
    // double) plus the wire body and a margin, far below the bomb's 512 MiB.
    let bound_kib = ((2 * CAP + bomb.len()) >> 10) as u64 + 16 * 1024;
    assert!(growth_kib <= bound_kib, "peak RSS grew by {growth_kib} KiB (bound {bound_kib} KiB)");
    assert_eq!(upstream.stats.requests(snowgate_perf::EndpointKind::Query), 0);
}

#[test]
fn the_connection_cap_answers_503_and_frees_a_place_when_a_connection_closes() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions { max_connections: 4, ..Default::default() });
    // Four connections, each proven open by a request.
    let mut open: Vec<_> = (0..4).map(|_| gateway.client()).collect();
    for client in &mut open {
        assert_eq!(client.get("/console/login", &[]).unwrap().status, 404);
    }
    let mut fifth = TcpStream::connect(gateway.addr).unwrap();
    fifth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = fifth.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("260006"), "{answer}");
    // The four still work; closing one lets a new one in.
    assert_eq!(open[0].get("/console/login", &[]).unwrap().status, 404);
    drop(open.pop());
    // The core frees the place once it has seen the close: until then a newcomer gets 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut newcomer = loop {
        let mut client = gateway.client();
        match client.get("/console/login", &[]) {
            Ok(answer) if answer.status == 503 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(answer) => {
                assert_eq!(answer.status, 404, "the place was not freed");
                break client;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => panic!("no place freed: {error}"),
        }
    };
    let (session, _) = login_ok(&mut newcomer);
    assert!(session.starts_with("sg1."));
}

/// A login body whose JSON tree would be many times its size: `[0,0,0,…]` padding beside the
/// credential, `inflated` bytes after gunzip.
fn padded_login(token: &str, inflated: usize) -> Vec<u8> {
    let mut body = login_body(token);
    body["data"]["PADDING"] = json!([]);
    let text = body.to_string();
    let (head, tail) = text.split_at(text.find("[]").unwrap() + 1);
    let mut padded = head.as_bytes().to_vec();
    while padded.len() + tail.len() + 2 < inflated {
        padded.extend_from_slice(b"0,");
    }
    padded.push(b'0');
    padded.extend_from_slice(tail.as_bytes());
    padded
}

#[test]
fn each_endpoint_caps_its_request_body_before_reading_it() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { limits: "statement_request_bytes_max = 2097152".into(), ..Default::default() },
    );
    let token = agent_token(json!({}));
    let post = |target: &str, authorization: &str, body: &[u8], gzipped: bool| {
        let mut client = gateway.client();
        let mut headers = vec![("content-type", "application/json"), ("authorization", authorization)];
        let wire = if gzipped {
            headers.push(("content-encoding", "gzip"));
            snowgate::http::gzip::gzip(body)
        } else {
            body.to_vec()
        };
        client.request(snowgate::http::Method::Post, target, &headers, &wire).unwrap()
    };
    // A login padded to 1 MiB (a driver's is a few KiB): refused before the token is looked at,
    // gzipped or not, and nothing reaches the upstream.
    for gzipped in [true, false] {
        let answer = post(LOGIN_TARGET, "Snowflake Token=\"None\"", &padded_login(&token, 1 << 20), gzipped);
        assert_eq!(answer.status, 413, "gzipped {gzipped}: {}", String::from_utf8_lossy(&answer.body));
        assert!(String::from_utf8_lossy(&answer.body).contains("262144"), "{}", String::from_utf8_lossy(&answer.body));
    }
    assert_eq!(upstream.stats.requests(snowgate_perf::EndpointKind::Login), 0);
    // Under the control cap a padded login is served.
    let answer = post(LOGIN_TARGET, "Snowflake Token=\"None\"", &padded_login(&token, 200 * 1024), true);
    assert_eq!(answer.json().unwrap()["success"], true, "{}", String::from_utf8_lossy(&answer.body));
    let session = answer.json().unwrap()["data"]["token"].as_str().unwrap().to_owned();

    // A statement may be larger than a control body (its text is capped at 1 MiB by the
    // policy; its bindings are not), up to its own configured cap.
    let auth = authorization(&session);
    let statement = |bytes: usize| {
        let mut body = query_body("select 1");
        body["sqlText"] = json!(format!("select 1 -- {}", "x".repeat(bytes)));
        body.to_string().into_bytes()
    };
    let answer = post(QUERY_TARGET, &auth, &statement(512 << 10), true);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json().unwrap()["success"], true, "{}", String::from_utf8_lossy(&answer.body));
    let answer = post(QUERY_TARGET, &auth, &statement(3 << 20), true);
    assert_eq!(answer.status, 413, "{}", String::from_utf8_lossy(&answer.body));
    assert!(String::from_utf8_lossy(&answer.body).contains("2097152"));
    // Logout and heartbeat have the control cap too.
    let answer = post("/session?delete=true", &auth, &vec![b' '; 300 * 1024], false);
    assert_eq!(answer.status, 413);
}

#[test]
fn a_refused_body_still_being_sent_gets_its_refusal_not_a_reset() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    // 24 MiB in clear to the login endpoint (capped at 256 KiB): far more than the socket
    // buffers hold, so the client is still writing when the gateway refuses. An HTTP client
    // writes its whole request before it reads; it must then read the 413, not lose it to a
    // reset of a connection closed with its bytes unread.
    for _ in 0..3 {
        let mut client = gateway.client();
        let headers = [("content-type", "application/json"), ("authorization", "Snowflake Token=\"None\"")];
        let answer = client
            .request(snowgate::http::Method::Post, LOGIN_TARGET, &headers, &vec![b' '; 24 << 20])
            .expect("the whole request is taken and the refusal read");
        assert_eq!(answer.status, 413, "{}", String::from_utf8_lossy(&answer.body));
        assert!(String::from_utf8_lossy(&answer.body).contains("262144"), "{}", String::from_utf8_lossy(&answer.body));
    }
    assert_eq!(upstream.stats.bytes_received(), 0);
}
