//! The recording end to end, with the gateway as its own process: kill -9 at random moments
//! loses nothing a client saw answered and always leaves a recording `verify` accepts; a full
//! disk (RLIMIT_FSIZE) refuses statements with a clear error instead of running them
//! unrecorded, and service resumes when space returns; the real driver's statements are found
//! with their identity and context by `snowgate-tools search`, and `snowgate-tools verify`
//! passes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use snowgate::record::{Frame, Recording, VerifyOptions, verify};
use snowgate_perf::client::Client;
use snowgate_perf::{EndpointKind, RunningUpstream};

use crate::driver::{python, start_fakesnow};
use crate::support::*;

fn recording_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&RECORDING_KEY_HEX[2 * i..2 * i + 2], 16).unwrap();
    }
    key
}

pub(crate) fn verify_dir(dir: &Path, allow_open: bool) -> snowgate::record::VerifyReport {
    let recording = Recording::open(dir).unwrap();
    verify(&recording, &recording_key(), &VerifyOptions { allow_open, ..Default::default() }, &mut |_| {})
}

/// Request ids of every request record in `dir`, and of the requests that have a response.
fn recorded_request_ids(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let records = read_records(dir);
    let mut by_index = std::collections::HashMap::new();
    let mut requests = BTreeSet::new();
    for record in &records {
        if let Frame::Request(request) = &record.frame
            && let Some(id) = &request.request_id
        {
            by_index.insert((record.core_id, record.index), id.clone());
            requests.insert(id.clone());
        }
    }
    let mut answered = BTreeSet::new();
    for record in &records {
        if let Frame::Response(response) = &record.frame
            && let Some(index) = response.request.as_ref().and_then(|link| link.record_index())
            && let Some(id) = by_index.get(&(record.core_id, index))
        {
            answered.insert(id.clone());
        }
    }
    (requests, answered)
}

fn query_with_id(client: &mut Client, session: &str, request_id: &str, sql: &str) -> Option<Value> {
    let target = format!("/queries/v1/query-request?requestId={request_id}");
    let answer =
        client.post_json(&target, &[("authorization", &authorization(session))], &query_body(sql), false).ok()?;
    answer.json().ok()
}

/// Logs in and sends queries until the connection breaks; returns the request ids answered
/// with success.
fn query_until_killed(
    addr: std::net::SocketAddr,
    cycle: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut answered = Vec::new();
    let Ok(mut client) = Client::connect(addr) else { return answered };
    let Ok(login) = client.post_json(
        LOGIN_TARGET,
        &[("authorization", "Snowflake Token=\"None\"")],
        &login_body(&agent_token(json!({}))),
        false,
    ) else {
        return answered;
    };
    let Some(session) = login.json().ok().and_then(|b| b["data"]["token"].as_str().map(str::to_owned)) else {
        return answered;
    };
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let request_id = format!("{:08x}-0000-4000-8000-{:012x}", cycle, n);
        match query_with_id(&mut client, &session, &request_id, "select * from small") {
            Some(body) if body["success"] == true => {
                answered.push(request_id);
                count.fetch_add(1, Ordering::SeqCst);
            }
            _ => break,
        }
    }
    answered
}

#[test]
fn kill_9_at_random_moments_loses_nothing_answered_and_verify_passes() {
    let cycles: usize = std::env::var("SNOWGATE_KILL_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let upstream = double(|_| {});
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &upstream.url(), &GatewayOptions::default());
    let recordings = work.path().join("recordings");
    let mut answered = Vec::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let started = Instant::now();
    for cycle in 0..cycles {
        let gateway = GatewayProcess::start(&config, &["--durability", "batch"], &[]);
        // The gateway recovered the previous cycle's torn segment before listening.
        let report = verify_dir(&recordings, true);
        assert!(report.is_ok(), "cycle {cycle}: verify failed after restart: {:?}", report.problems);
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let client = {
            let (addr, stop, count) = (gateway.addr, stop.clone(), count.clone());
            std::thread::spawn(move || query_until_killed(addr, cycle, stop, count))
        };
        // Every other cycle kills only once a query was answered, so that a slow machine (a
        // login waiting for its group commit) still kills mid-query; the others kill wherever
        // the clock says, login and start-up included.
        if cycle % 2 == 1 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while count.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 40_000));
        gateway.kill9();
        stop.store(true, Ordering::Relaxed);
        answered.extend(client.join().unwrap());
    }
    let gateway = GatewayProcess::start(&config, &[], &[]);
    gateway.terminate();
    let report = verify_dir(&recordings, false);
    assert!(report.is_ok(), "verify failed at the end: {:?}", report.problems);
    let (requests, responses) = recorded_request_ids(&recordings);
    let missing: Vec<&String> = answered.iter().filter(|id| !responses.contains(*id)).collect();
    assert!(missing.is_empty(), "answered but not recorded: {missing:?}");
    assert!(answered.iter().all(|id| requests.contains(id)));
    assert!(answered.len() >= cycles / 2, "too few queries answered to mean anything: {}", answered.len());
    eprintln!(
        "kill -9: {cycles} cycles, {} queries answered and recorded, {:.1} s",
        answered.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_full_disk_refuses_statements_until_space_returns() {
    let upstream = double(|_| {});
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &upstream.url(), &GatewayOptions::default());
    let recordings = work.path().join("recordings");
    // Files may grow to 256 KiB: the first segment fills up after a few dozen exchanges.
    let gateway = GatewayProcess::start(&config, &["--durability", "strict"], &["prlimit", "--fsize=262144:unlimited"]);
    let mut client = Client::connect(gateway.addr).unwrap();
    let (session, _) = login_ok(&mut client);
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    for n in 0..2000 {
        let request_id = format!("00000000-0000-4000-8000-{n:012x}");
        let body = query_with_id(&mut client, &session, &request_id, "select * from medium").unwrap();
        if body["success"] == true {
            answered.push(request_id);
            continue;
        }
        assert_eq!(body["code"], "260013", "{body}");
        assert!(body["message"].as_str().unwrap().contains("recording unavailable"), "{body}");
        refused.push(request_id);
        if refused.len() == 5 {
            break;
        }
    }
    assert_eq!(refused.len(), 5, "the file-size limit was never reached");
    // The upstream saw every statement answered and at most one refused: the one whose answer's
    // record hit the limit, when it is the answer's (its request record was durable before it
    // was forwarded; its answer is withheld, since it cannot be recorded). Once a write has
    // failed, every later statement is refused before it is forwarded. Below, the recording
    // must hold a request record for everything the upstream saw.
    let seen_upstream = upstream_query_ids(&upstream);
    let refused_upstream: Vec<&String> = seen_upstream.iter().filter(|id| refused.contains(id)).collect();
    assert!(refused_upstream.len() <= 1, "refused statements reached the upstream: {refused_upstream:?}");
    assert_eq!(
        seen_upstream.len(),
        answered.len() + refused_upstream.len(),
        "the upstream saw a statement that was neither answered nor refused"
    );
    eprintln!(
        "full disk: {} answered, {} refused ({} after forwarding: the answer's record hit the limit)",
        answered.len(),
        refused.len(),
        refused_upstream.len()
    );

    // Space returns: the recorder's retry succeeds and statements run again.
    let status = Command::new("prlimit")
        .args(["--pid", &gateway.child.id().to_string(), "--fsize=unlimited:unlimited"])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut resumed = false;
    for n in 0.. {
        let request_id = format!("00000001-0000-4000-8000-{n:012x}");
        let body = query_with_id(&mut client, &session, &request_id, "select * from medium").unwrap();
        if body["success"] == true {
            answered.push(request_id);
            resumed = true;
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(resumed);
    gateway.terminate();
    let report = verify_dir(&recordings, false);
    assert!(report.is_ok(), "{:?}", report.problems);
    let (requests, responses) = recorded_request_ids(&recordings);
    let upstream_ids = upstream_query_ids(&upstream);
    assert_eq!(upstream_ids.len(), answered.len() + refused_upstream.len());
    for id in &upstream_ids {
        assert!(requests.contains(id), "{id} reached the upstream without a request record");
    }
    for id in &answered {
        assert!(responses.contains(id), "{id} was answered without a response record");
    }
    for &id in &refused_upstream {
        assert!(!responses.contains(id), "{id} was refused, yet its answer is recorded");
    }
}

/// The request ids of the statements the upstream double received, in order.
fn upstream_query_ids(upstream: &RunningUpstream) -> Vec<String> {
    upstream
        .stats
        .recorded(EndpointKind::Query)
        .iter()
        .filter_map(|r| r.target.split("requestId=").nth(1).map(|id| id.split('&').next().unwrap().to_owned()))
        .collect()
}

#[test]
fn snowgate_tools_finds_every_driver_statement_with_identity_and_context() {
    let work = tempfile::tempdir().unwrap();
    let fakesnow = start_fakesnow(work.path());
    let gateway = TestGateway::start(&format!("http://{}", fakesnow.addr), GatewayOptions::default());
    let statements = [
        "CREATE DATABASE IF NOT EXISTS TOOLSDB",
        "CREATE SCHEMA IF NOT EXISTS TOOLSDB.S",
        "CREATE TABLE IF NOT EXISTS TOOLSDB.S.T (ID INT)",
        "INSERT INTO TOOLSDB.S.T VALUES (42)",
    ];
    let query = "SELECT ID FROM TOOLSDB.S.T";
    let output = Command::new(python())
        .arg(root().join("tests/driver/masking.py"))
        .args(["--host", "127.0.0.1", "--port", &gateway.addr.port().to_string(), "--token"])
        .arg(agent_token(json!({"sub": "agent-tools-1"})))
        .args(["--setup", &statements.join(";;"), "--query", query, "--query-tag", "trace-7f3a"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let dir = gateway.stop();
    let recordings = dir.path().join("recordings");
    let search = Command::new(tools_binary())
        .arg("search")
        .arg(&recordings)
        .args(["--sub", "agent-tools-1", "--json"])
        .output()
        .unwrap();
    assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
    let found: Vec<Value> = String::from_utf8(search.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|record: &Value| record["kind"] == "request")
        .collect();
    for statement in statements.iter().chain([&query]) {
        let hit = found
            .iter()
            .find(|r| r["statement"] == *statement)
            .unwrap_or_else(|| panic!("{statement} not found by snowgate-tools search"));
        assert_eq!(hit["sub"], "agent-tools-1");
        assert_eq!(hit["query_tag"], "trace-7f3a", "{hit}");
        assert_eq!(hit["decision"], "allowed", "{hit}");
    }
    let key_file = dir.path().join("recording.key");
    let verified = Command::new(tools_binary())
        .arg("verify")
        .arg(&recordings)
        .arg("--key-file")
        .arg(&key_file)
        .args(["--cores", "1"])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
}
