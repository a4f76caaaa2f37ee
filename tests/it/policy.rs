//! The policy with the real Python driver through the gateway to fakesnow: a blocked `DROP`
//! raises `ProgrammingError` with the rule's message and never reaches the upstream; a write
//! under review waits (the driver polling a gateway `getResultUrl`) until a reviewer approves
//! it through the admin API, then runs exactly once, or fails clearly when denied or timed
//! out; the driver does not storm (requests counted); and every step is in the recording.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use snowgate::record::{Decision, Frame};

use crate::driver::{Fakesnow, python, start_fakesnow};
use crate::support::*;

/// Writes to anything wait for a `dba`; drops are denied; the rest is allowed.
pub(crate) fn review_policy(timeout_secs: u64) -> String {
    format!(
        r#"
[policy]
default = {{ action = "deny", message = "No snowgate rule allows this statement." }}

[[policy.rules]]
name = "no destruction"
groups = ["*"]
kinds = ["drop", "truncate", "delete_all", "update_all", "create_or_replace", "undrop"]
object_types = ["database", "schema"]
action = "deny"
message = "Destructive statements are blocked for agents."

[[policy.rules]]
name = "writes need a DBA"
groups = ["*"]
kinds = ["insert", "update", "delete", "merge"]
action = "review"
approvals = 1
reviewer_groups = ["dba"]
timeout_secs = {timeout_secs}
message = "Waiting for a DBA to approve this write."

[[policy.rules]]
name = "the rest"
groups = ["*"]
kinds = ["*"]
action = "allow"

[approvals]
admin_address = "127.0.0.1:0"
admin_groups = ["dba"]
poll_hold_ms = 1000
"#
    )
}

struct Setup {
    _work: tempfile::TempDir,
    _fakesnow: Fakesnow,
    /// Between the gateway and fakesnow: what went upstream.
    upstream: Relay,
    gateway: TestGateway,
}

fn setup(review_timeout_secs: u64) -> Setup {
    let work = tempfile::tempdir().unwrap();
    let fakesnow = start_fakesnow(work.path());
    let upstream = Relay::start(fakesnow.addr);
    let gateway = TestGateway::start(
        &format!("http://{}", upstream.addr),
        GatewayOptions { policy: Some(review_policy(review_timeout_secs)), ..Default::default() },
    );
    Setup { _work: work, _fakesnow: fakesnow, upstream, gateway }
}

fn spawn_script(gateway: &TestGateway, mode: &str, suffix: &str) -> std::process::Child {
    Command::new(python())
        .arg(root().join("tests/driver/policy.py"))
        .args(["--host", "127.0.0.1", "--port", &gateway.addr.port().to_string()])
        .args(["--token", &agent_token(json!({})), "--mode", mode, "--suffix", suffix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn outcome(child: std::process::Child) -> Value {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the policy script failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn reviewer_token() -> String {
    agent_token(json!({"sub": "dba-1", "groups": ["dba"]}))
}

/// Waits until the admin API lists one pending statement, and returns its query id.
pub(crate) fn wait_for_pending(gateway: &TestGateway) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &reviewer_token(), None);
        assert_eq!(status, 200, "{body}");
        if let Some(item) = body["pending"].as_array().and_then(|items| items.first()) {
            return item.clone();
        }
        assert!(Instant::now() < deadline, "nothing was parked");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_blocked_drop_raises_the_rules_message_and_never_reaches_the_upstream() {
    let setup = setup(60);
    let out = outcome(spawn_script(&setup.gateway, "drop", "DROP1"));
    assert_eq!(out["error"]["errno"], 260010, "{out}");
    assert!(out["error"]["msg"].as_str().unwrap().contains("Destructive statements are blocked for agents."), "{out}");
    assert!(out["databases"].as_array().unwrap().iter().any(|d| d == "POLICY_DROP1"), "{out}");
    let upstream = setup.upstream.sent();
    assert!(count(&upstream, "CREATE DATABASE IF NOT EXISTS POLICY_DROP1") == 1, "the setup did not reach fakesnow");
    assert_eq!(count(&upstream.to_ascii_uppercase(), "DROP DATABASE"), 0, "the DROP reached the upstream");

    let dir = setup.gateway.stop();
    let blocked: Vec<_> = read_records(&dir.path().join("recordings"))
        .into_iter()
        .filter_map(|r| match r.frame {
            Frame::Request(request) => Some(request),
            _ => None,
        })
        .filter(|r| matches!(&r.decision, Decision::Blocked { rule } if rule == "no destruction"))
        .collect();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].statement.as_deref(), Some("DROP DATABASE POLICY_DROP1"));
    assert_eq!(blocked[0].principal.sub.as_deref(), Some("agent-7"));
}

#[test]
fn a_reviewed_write_waits_for_approval_then_runs_once() {
    let setup = setup(60);
    let child = spawn_script(&setup.gateway, "review", "APPROVE1");
    let item = wait_for_pending(&setup.gateway);
    assert_eq!(item["statement_text"], "INSERT INTO REVIEWED VALUES (1, 'approved-row')", "{item}");
    assert_eq!(item["sub"], "agent-7");
    assert_eq!(item["rule_name"], "writes need a DBA");
    // The role it runs as, and the request's parameters as they would go upstream (the
    // statement count pinned by the gateway among them).
    assert_eq!(item["settings"]["role"], "ANALYST", "{item}");
    assert_eq!(item["settings"]["parameters.MULTI_STATEMENT_COUNT"], "1", "{item}");
    let settings = item["settings"].as_object().unwrap();
    assert!(settings.keys().all(|k| k == "role" || k.starts_with("parameters.")), "{item}");
    assert_eq!(item["bindings"], Value::Null, "{item}");
    assert_eq!(count(&setup.upstream.sent(), "INSERT INTO REVIEWED"), 0, "the write ran before approval");
    // Parked for a while: the driver keeps polling, held by the gateway, without storming.
    std::thread::sleep(Duration::from_secs(3));
    let requests_while_parked = setup.gateway.metrics().requests.load(std::sync::atomic::Ordering::Relaxed);
    let query_id = item["query_id"].as_str().unwrap();
    decide(&setup.gateway, query_id, "approve", "a one-row test write");
    let out = outcome(child);
    assert_eq!(out["rowcount"], 1, "{out}");
    assert_eq!(out["rows"], json!([[1, "approved-row"]]), "{out}");
    assert!(out["waited_secs"].as_f64().unwrap() >= 3.0, "{out}");
    assert_eq!(count(&setup.upstream.sent(), "INSERT INTO REVIEWED"), 1, "the write did not run exactly once");
    // Setup (4 statements) and login came before; over three seconds parked, with each poll
    // held for a second, the driver polled a handful of times, not a storm.
    assert!(requests_while_parked <= 6 + 3 + 3, "{requests_while_parked} requests while parked");

    let dir = setup.gateway.stop();
    let records = read_records(&dir.path().join("recordings"));
    let decisions: Vec<Decision> = records
        .iter()
        .filter_map(|r| match &r.frame {
            Frame::Request(request)
                if request.statement.as_deref() == Some("INSERT INTO REVIEWED VALUES (1, 'approved-row')") =>
            {
                Some(request.decision.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            Decision::Parked { rule: "writes need a DBA".into() },
            Decision::Approved { rule: "writes need a DBA".into(), approver: "dba-1".into() }
        ]
    );
    // The decision was on record before it took effect, its outcome after.
    let review_events: Vec<(&str, &str)> = records
        .iter()
        .filter_map(|r| match &r.frame {
            Frame::Event(e) if e.kind.name().starts_with("review_") && e.detail.contains("reviewer=dba-1") => {
                Some((e.kind.name(), e.detail.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(review_events.len(), 2, "{review_events:?}");
    assert_eq!(review_events[0].0, "review_request");
    assert!(!review_events[0].1.contains("outcome="), "{review_events:?}");
    assert_eq!(review_events[1].0, "review_decision");
    assert!(review_events[1].1.contains("outcome=approved"), "{review_events:?}");
}

#[test]
fn a_denied_write_fails_with_the_reviewers_reason_and_never_runs() {
    let setup = setup(60);
    let child = spawn_script(&setup.gateway, "review", "DENY1");
    let item = wait_for_pending(&setup.gateway);
    let query_id = item["query_id"].as_str().unwrap();
    decide(&setup.gateway, query_id, "deny", "not during the freeze");
    let out = outcome(child);
    assert_eq!(out["error"]["errno"], 260011, "{out}");
    assert!(out["error"]["msg"].as_str().unwrap().contains("not during the freeze"), "{out}");
    assert_eq!(out["rows"], json!([]), "{out}");
    assert_eq!(count(&setup.upstream.sent(), "INSERT INTO REVIEWED"), 0);
}

#[test]
fn an_undecided_write_times_out_denied() {
    let setup = setup(2);
    let out = outcome(spawn_script(&setup.gateway, "review", "TIMEOUT1"));
    assert_eq!(out["error"]["errno"], 260012, "{out}");
    assert!(out["error"]["msg"].as_str().unwrap().contains("timed out"), "{out}");
    assert!(out["waited_secs"].as_f64().unwrap() >= 2.0, "{out}");
    assert_eq!(out["rows"], json!([]), "{out}");
    assert_eq!(count(&setup.upstream.sent(), "INSERT INTO REVIEWED"), 0);

    // The timeout is in the recording as an event of its own, once, though the driver's poll
    // noticed it first.
    let (parked, timeouts) = parked_and_events(setup, "review_timeout");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    assert!(timeouts[0].contains(&format!("query_id={} ", parked[0])), "{timeouts:?}");
    assert!(timeouts[0].contains("sub=agent-7") && timeouts[0].ends_with("outcome=timed_out"), "{timeouts:?}");
}

/// Stops the gateway; the query ids of the parked requests in its recording, and the details
/// of its events named `event`.
fn parked_and_events(setup: Setup, event: &str) -> (Vec<String>, Vec<String>) {
    let dir = setup.gateway.stop();
    let records = read_records(&dir.path().join("recordings"));
    let parked = records
        .iter()
        .filter_map(|r| match &r.frame {
            Frame::Request(request) if matches!(request.decision, Decision::Parked { .. }) => request.query_id.clone(),
            _ => None,
        })
        .collect();
    let events = records
        .iter()
        .filter_map(|r| match &r.frame {
            Frame::Event(e) if e.kind.name() == event => Some(e.detail.clone()),
            _ => None,
        })
        .collect();
    (parked, events)
}

/// Reviewers no longer see `query_id`, and approving it is refused (409).
fn assert_no_longer_reviewable(gateway: &TestGateway, query_id: &str) {
    let (status, body) = admin_request(gateway.admin_addr(), "GET", "/v1/approvals", &reviewer_token(), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"], json!([]), "{body}");
    let (status, body) = admin_request(
        gateway.admin_addr(),
        "POST",
        &format!("/v1/approvals/{query_id}/approve"),
        &reviewer_token(),
        Some(&json!({ "reason": "too late" })),
    );
    assert_eq!(status, 409, "{body}");
}

/// A driver that gives up on a parked write (its `execute` timeout) cancels it, naming its
/// `requestId`: the gateway withdraws it, the driver gets Snowflake's "canceled" error, and the
/// write never runs, whatever a reviewer does afterwards (before, it stayed parked, and ran on
/// an approval with nobody waiting for it).
#[test]
fn a_write_the_driver_gives_up_on_is_withdrawn_and_never_runs() {
    let setup = setup(60);
    let child = spawn_script(&setup.gateway, "give-up", "GIVEUP1");
    let item = wait_for_pending(&setup.gateway);
    let query_id = item["query_id"].as_str().unwrap().to_owned();
    let out = outcome(child);
    assert_eq!(out["error"]["errno"], 604, "{out}");
    assert_eq!(out["rows"], json!([]), "{out}");
    assert_no_longer_reviewable(&setup.gateway, &query_id);
    let sent = setup.upstream.sent();
    assert_eq!(count(&sent, "INSERT INTO REVIEWED"), 0, "a withdrawn write ran");
    assert_eq!(count(&sent, "abort-request"), 0, "the abort of a parked statement went upstream");
}

/// A parked write is reviewed in its session as it was: another cursor changing the session
/// meanwhile (`USE SCHEMA`, allowed) voids it, the driver gets the reason, and it never runs,
/// whatever a reviewer does then.
#[test]
fn a_write_whose_session_changed_while_parked_never_runs() {
    let setup = setup(60);
    let mut child = spawn_script(&setup.gateway, "change-session", "CHANGED1");
    let item = wait_for_pending(&setup.gateway);
    let query_id = item["query_id"].as_str().unwrap().to_owned();
    // Parked: now the script's other cursor changes the session.
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"change\n").unwrap();
    let out = outcome(child);
    assert_eq!(out["error"]["errno"], 260010, "{out}");
    assert!(out["error"]["msg"].as_str().unwrap().contains("ran in this session after this one was parked"), "{out}");
    assert_no_longer_reviewable(&setup.gateway, &query_id);
    assert_eq!(count(&setup.upstream.sent(), "INSERT INTO REVIEWED"), 0, "a voided write ran");
    // The void is in the recording as an event of its own, once.
    let (parked, voids) = parked_and_events(setup, "review_voided");
    assert_eq!(parked, std::slice::from_ref(&query_id));
    assert_eq!(voids.len(), 1, "{voids:?}");
    assert!(voids[0].starts_with(&format!("query_id={query_id} ")), "{voids:?}");
    assert!(voids[0].ends_with("outcome=voided"), "{voids:?}");
}

/// The driver's `execute_async` of a write that needs review is refused at once, with the
/// reason: parked, it could never run (the driver then polls the query's monitoring status and
/// reads its result with RESULT_SCAN, and Snowflake knows neither the gateway's id), and a
/// reviewer's approval would be lost on it.
#[test]
fn an_asynchronous_write_that_needs_review_is_refused_with_the_reason() {
    let setup = setup(60);
    let out = outcome(spawn_script(&setup.gateway, "async-review", "ASYNC1"));
    assert_eq!(out["error"]["errno"], 260016, "{out}");
    assert!(out["error"]["msg"].as_str().unwrap().contains("synchronously"), "{out}");
    assert_eq!(out["rows"], json!([]), "{out}");
    assert_eq!(count(&setup.upstream.sent(), "INSERT INTO REVIEWED"), 0);
    let (status, body) = admin_request(setup.gateway.admin_addr(), "GET", "/v1/approvals", &reviewer_token(), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"], json!([]), "{body}");
}

#[test]
fn the_admin_api_refuses_agents_and_strangers() {
    let setup = setup(60);
    let addr = setup.gateway.admin_addr();
    let (status, _) = admin_request(addr, "GET", "/v1/approvals", &agent_token(json!({})), None);
    assert_eq!(status, 403, "an agent outside the admin groups listed approvals");
    let (status, _) = admin_request(addr, "GET", "/v1/approvals", "not-a-token", None);
    assert_eq!(status, 401);
    let forged = sign_rs256("attacker.pem", Some("key-a"), &json!({"sub": "dba-9", "groups": ["dba"]}));
    let (status, _) = admin_request(addr, "GET", "/v1/approvals", &forged, None);
    assert_eq!(status, 401, "a token signed by an unknown key was accepted");
}

#[test]
fn with_a_reviewer_audience_agent_and_reviewer_tokens_are_not_interchangeable() {
    let upstream = double(|_| {});
    let policy = format!("{}reviewer_audience = [\"snowgate-review\"]\n", review_policy(60));
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions { policy: Some(policy), ..Default::default() });
    let addr = gateway.admin_addr();
    let reviewer = |aud: Value| agent_token(json!({"sub": "dba-1", "groups": ["dba"], "aud": aud}));
    // A DBA's token of the agents' audience no longer opens the admin API...
    let (status, body) = admin_request(addr, "GET", "/v1/approvals", &reviewer_token(), None);
    assert_eq!(status, 401, "{body}");
    // ...one of the reviewers' audience does...
    let (status, body) = admin_request(addr, "GET", "/v1/approvals", &reviewer(json!("snowgate-review")), None);
    assert_eq!((status, &body["pending"]), (200, &json!([])), "{body}");
    // ...but not as an agent, nor does a token naming both audiences anywhere.
    let both = reviewer(json!([AUDIENCE, "snowgate-review"]));
    let (status, body) = admin_request(addr, "GET", "/v1/approvals", &both, None);
    assert_eq!(status, 401, "{body}");
    let mut client = gateway.client();
    for token in [reviewer(json!("snowgate-review")), both] {
        let answer = login(&mut client, &token).json().unwrap();
        assert_eq!((&answer["success"], &answer["code"]), (&json!(false), &json!("390303")), "{answer}");
    }
    assert_eq!(upstream.stats.recorded(snowgate_perf::EndpointKind::Login).len(), 0, "a reviewer logged in upstream");
    // Agents log in as before.
    login_ok(&mut client);
}

#[test]
fn a_hundred_thousand_nested_parentheses_are_denied_and_the_core_survives() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let deep = format!("select {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let answer = query(&mut client, &session, &deep);
    assert_refused(&answer, "260010");
    // The same core answers the next statement at once.
    let started = Instant::now();
    let next = query(&mut client, &session, "select 1").json().unwrap();
    assert_eq!(next["success"], true, "{next}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let seen = upstream.stats.recorded(snowgate_perf::EndpointKind::Query);
    assert_eq!(seen.len(), 1, "the deep statement reached the upstream");
}

/// A gateway in front of `upstream` under `policy` (`SQL_API_REVIEW_POLICY` or a variant).
fn read_review_gateway(upstream: &snowgate_perf::RunningUpstream, policy: &str) -> TestGateway {
    TestGateway::start(&upstream.url(), GatewayOptions { policy: Some(policy.into()), ..Default::default() })
}

/// Reads of `MEDIUM` wait for a DBA; everything is masked like the masking tests' profile.
const SQL_API_REVIEW_POLICY: &str = r#"
[policy]
default = { action = "deny", message = "No snowgate rule allows this statement." }

[[policy.rules]]
name = "customer reads need a DBA"
groups = ["*"]
kinds = ["select"]
objects = ["MEDIUM"]
action = "review"
approvals = 1
reviewer_groups = ["dba"]
timeout_secs = 60
message = "Waiting for a DBA to approve this read."

[[policy.rules]]
name = "the rest, masked"
groups = ["*"]
kinds = ["*"]
action = "allow"
masking_profile = "agents"

[masking.profiles.agents.detectors]
card = { mask = { style = "keep_last", keep = 4 } }

[[masking.profiles.agents.columns]]
name = "SSN"
mask = { style = "null" }

[approvals]
admin_address = "127.0.0.1:0"
admin_groups = ["dba"]
poll_hold_ms = 1000
"#;

pub(crate) fn decide(gateway: &TestGateway, query_id: &str, verdict: &str, reason: &str) {
    let (status, body) = admin_request(
        gateway.admin_addr(),
        "POST",
        &format!("/v1/approvals/{query_id}/{verdict}"),
        &reviewer_token(),
        Some(&json!({ "reason": reason })),
    );
    assert_eq!(status, 200, "{body}");
}

/// A driver's poll held while a statement waits for review does not outlive its session: an
/// approval that lands after the session expired runs nothing on that poll (390112), and the
/// statement runs once the driver has renewed the session.
#[test]
fn an_approval_after_the_session_expired_waits_for_the_renewal() {
    use snowgate_perf::EndpointKind;
    let upstream = double(|c| c.session_validity_secs = 2);
    let policy = SQL_API_REVIEW_POLICY.replace("poll_hold_ms = 1000", "poll_hold_ms = 6000");
    let gateway = read_review_gateway(&upstream, &policy);
    let mut client = gateway.client();
    let (session, master) = login_ok(&mut client);
    let parked = query(&mut client, &session, "select * from medium").json().unwrap();
    assert_eq!(parked["code"], "333333", "{parked}");
    let query_id = parked["data"]["queryId"].as_str().unwrap().to_owned();
    let result = format!("/queries/{query_id}/result");

    // Held from before the session expires (2 s) until after the approval (3 s).
    let mut poller = gateway.client();
    let (target, auth) = (result.clone(), authorization(&session));
    let held = std::thread::spawn(move || poller.get(&target, &[("authorization", &auth)]).unwrap());
    std::thread::sleep(Duration::from_secs(3));
    decide(&gateway, &query_id, "approve", "a read for the test");
    let held = held.join().unwrap();
    assert_refused(&held, "390112");
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 0, "the statement ran for an expired session");

    let renewal = renew(&mut client, &master.unwrap(), &session).json().unwrap();
    let renewed = renewal["data"]["sessionToken"].as_str().unwrap();
    let answer = client.get(&result, &[("authorization", &authorization(renewed))]).unwrap().json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 1);
}

/// An approval that lands while a poll is held answers "still running" on that poll (a held
/// poll does not watch its connection: its driver may have given up), and the driver's next
/// poll runs the statement, which an abort or a status naming the gateway's id then names
/// upstream by Snowflake's. A driver's abort naming the gateway's id of another parked statement
/// withdraws it: it never runs, and its polls answer 000604.
#[test]
fn an_approval_runs_on_a_fresh_poll_and_an_abort_by_id_withdraws() {
    use snowgate_perf::EndpointKind;
    let upstream = double(|_| {});
    let policy = SQL_API_REVIEW_POLICY.replace("poll_hold_ms = 1000", "poll_hold_ms = 5000");
    let gateway = read_review_gateway(&upstream, &policy);
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let auth = authorization(&session);
    let parked = query(&mut client, &session, "select * from medium").json().unwrap();
    assert_eq!(parked["code"], "333333", "{parked}");
    let result = format!("/queries/{}/result", parked["data"]["queryId"].as_str().unwrap());
    let mut poller = gateway.client();
    let (target, held_auth) = (result.clone(), auth.clone());
    let held = std::thread::spawn(move || poller.get(&target, &[("authorization", &held_auth)]).unwrap());
    // The poll is in the gateway (then a moment for it to start its hold), however slowly its
    // thread was scheduled.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gateway.metrics().in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    decide(&gateway, parked["data"]["queryId"].as_str().unwrap(), "approve", "a read for the test");
    let held = held.join().unwrap().json().unwrap();
    assert_eq!(held["code"], "333333", "{held}");
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 0, "the statement ran on a poll held before its approval");
    let answer = client.get(&result, &[("authorization", &auth)]).unwrap().json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 1);
    // Aborted by the gateway's id once it ran, it is aborted upstream by Snowflake's (which
    // knows nothing of the gateway's).
    let (gateway_id, upstream_id) =
        (parked["data"]["queryId"].as_str().unwrap(), answer["data"]["queryId"].as_str().unwrap());
    assert_ne!(gateway_id, upstream_id);
    let abort = format!("/queries/{gateway_id}/abort-request");
    let aborted = client.post_json(&abort, &[("authorization", &auth)], &json!({}), false).unwrap();
    assert_eq!(aborted.json().unwrap()["success"], true, "{aborted:?}");
    let aborts = upstream.stats.recorded(EndpointKind::Abort);
    assert_eq!(aborts.len(), 1, "{aborts:?}");
    assert!(aborts[0].target.starts_with(&format!("/queries/{upstream_id}/abort-request")), "{}", aborts[0].target);
    // So is its status.
    let status = client.get(&format!("/monitoring/queries/{gateway_id}"), &[("authorization", &auth)]).unwrap();
    assert_eq!(status.json().unwrap()["success"], true, "{status:?}");
    let asked = upstream.stats.recorded(EndpointKind::Monitoring);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].target, format!("/monitoring/queries/{upstream_id}"));

    let target = "/queries/v1/query-request?requestId=6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b45";
    let body = query_body("select * from medium where id = 2");
    let parked = client.post_json(target, &[("authorization", &auth)], &body, true).unwrap().json().unwrap();
    assert_eq!(parked["code"], "333333", "{parked}");
    let query_id = parked["data"]["queryId"].as_str().unwrap().to_owned();
    let abort = format!("/queries/{query_id}/abort-request");
    let aborted = client.post_json(&abort, &[("authorization", &auth)], &json!({}), false).unwrap().json().unwrap();
    assert_eq!(aborted["success"], true, "{aborted}");
    let polled = client.get(&format!("/queries/{query_id}/result"), &[("authorization", &auth)]).unwrap();
    assert_refused(&polled, "000604");
    assert_no_longer_reviewable(&gateway, &query_id);
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 1, "a withdrawn statement ran");
    assert_eq!(upstream.stats.requests(EndpointKind::Abort), 1, "the abort of a parked statement went upstream");
}

/// An approved statement that Snowflake refused unrun, its session having expired upstream
/// (a session policy shorter than the gateway knows, or idle while under review), is not
/// finished: the driver gets 390112, renews, and its next poll runs the statement. Before, the
/// approval was spent and the driver told the statement ran without an id.
#[test]
fn an_approved_statement_refused_for_an_expired_session_runs_after_the_renewal() {
    let upstream = double(|_| {});
    let gateway = read_review_gateway(&upstream, SQL_API_REVIEW_POLICY);
    let mut client = gateway.client();
    let (session, master) = login_ok(&mut client);
    let parked = query(&mut client, &session, "select * from medium").json().unwrap();
    assert_eq!(parked["code"], "333333", "{parked}");
    let result = format!("/queries/{}/result", parked["data"]["queryId"].as_str().unwrap());
    decide(&gateway, parked["data"]["queryId"].as_str().unwrap(), "approve", "a read for the test");
    upstream.upstream().expire_session_tokens();
    let refused = client.get(&result, &[("authorization", &authorization(&session))]).unwrap();
    assert_refused(&refused, "390112");

    let renewal = renew(&mut client, &master.unwrap(), &session).json().unwrap();
    let renewed = renewal["data"]["sessionToken"].as_str().unwrap();
    let answer = client.get(&result, &[("authorization", &authorization(renewed))]).unwrap().json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert!(answer["data"]["rowset"].as_array().is_some_and(|rows| !rows.is_empty()), "{answer}");
}

/// The SQL API parks a statement under review too: the agent gets a 202 with a gateway
/// statement handle, polls it until a reviewer decides, and then gets the statement's answer
/// (run exactly once, masked, every partition through either handle) or the refusal; no other
/// identity can poll it, and nothing reaches Snowflake before approval.
#[test]
fn a_sql_api_statement_under_review_waits_for_approval_then_runs_once_masked() {
    use snowgate_perf::EndpointKind;
    let upstream = double(|_| {});
    let gateway = read_review_gateway(&upstream, SQL_API_REVIEW_POLICY);
    let mut client = gateway.client();
    let owner = format!("Bearer {}", agent_token(json!({})));
    let other = format!("Bearer {}", agent_token(json!({"sub": "agent-8"})));
    let clear = snowgate_perf::results::customers("MEDIUM", snowgate_perf::results::MEDIUM_ROWS).rows;
    let submits = || upstream.stats.requests(EndpointKind::SqlApiSubmit);

    // Answered at once, and answered later (202, polled), once approved.
    let mut runs = 0;
    for (n, (query, statement)) in
        [("", "select * from medium"), ("&async=true", "select * from medium slow")].into_iter().enumerate()
    {
        let target = format!("/api/v2/statements?requestId=00000000-0000-4000-8000-00000000000{n}{query}");
        let body = json!({"statement": statement, "timeout": 60, "database": "TESTDB", "warehouse": "WH_AGENTS"});
        let parked = client.post_json(&target, &sql_api_headers(&owner), &body, false).unwrap();
        assert_eq!(parked.status, 202, "{parked:?}");
        let parked = parked.json().unwrap();
        assert_eq!(parked["code"], "333334", "{parked}");
        assert_eq!(parked["message"], "Waiting for a DBA to approve this read.", "{parked}");
        let handle = parked["statementHandle"].as_str().unwrap().to_owned();
        assert_eq!(parked["statementStatusUrl"], format!("/api/v2/statements/{handle}"));
        // A retry with the same requestId finds the same statement.
        let again = client.post_json(&target, &sql_api_headers(&owner), &body, false).unwrap();
        assert_eq!(again.json().unwrap()["statementHandle"], handle.as_str());

        let item = wait_for_pending(&gateway);
        assert_eq!(item["query_id"], handle.as_str(), "{item}");
        assert_eq!(item["statement_text"], statement, "{item}");
        assert_eq!(item["rule_name"], "customer reads need a DBA", "{item}");
        // Reviewers see where it would run: the role the gateway sets, and what the body sets
        // (its parameters as they would go upstream, the statement count pinned).
        let settings = json!({"role": "ANALYST", "database": "TESTDB", "warehouse": "WH_AGENTS", "timeout": "60",
            "parameters.MULTI_STATEMENT_COUNT": "1"});
        assert_eq!(item["settings"], settings, "{item}");
        let waiting = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(&owner)).unwrap();
        assert_eq!(waiting.status, 202, "{waiting:?}");
        for (bearer, path) in [
            (&other, format!("/api/v2/statements/{handle}")),
            (&other, format!("/api/v2/statements/{handle}?partition=1")),
        ] {
            let refused = client.get(&path, &sql_api_headers(bearer)).unwrap();
            assert_eq!(refused.status, 422, "{path}: {refused:?}");
            assert_eq!(refused.json().unwrap()["code"], "260018");
        }
        assert_eq!(submits(), runs, "{statement} reached Snowflake before approval");

        decide(&gateway, &handle, "approve", "a read for the test");
        // The same agent, now mapped to another role, cannot run what was reviewed as ANALYST;
        // the approval stands for it as it was.
        let promoted = format!("Bearer {}", agent_token(json!({"groups": ["admins"]})));
        let drifted = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(&promoted)).unwrap();
        assert_eq!(drifted.status, 422, "{drifted:?}");
        assert!(drifted.json().unwrap()["message"].as_str().unwrap().contains("changed since"), "{drifted:?}");
        assert_eq!(submits(), runs, "{statement} ran as another role");
        let answer = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(&owner)).unwrap();
        let answer = sql_api_poll(&mut client, &owner, &handle, answer);
        assert_eq!(answer.status, 200, "{statement}: {answer:?}");
        runs += 1;
        assert_eq!(submits(), runs, "{statement} did not run exactly once");
        let first = answer.json().unwrap();
        let real = first["statementHandle"].as_str().unwrap().to_owned();
        assert_ne!(real, handle, "the answer names Snowflake's statement");
        // Every partition, through Snowflake's handle, masked.
        let rows = sql_api_rows(&mut client, &owner, &first);
        assert_customers_masked(statement, &clear, &rows);
        // The gateway's handle reaches the same statement, masked the same, without running it again.
        let via_parked =
            client.get(&format!("/api/v2/statements/{handle}?partition=1"), &sql_api_headers(&owner)).unwrap();
        let via_real = client.get(&format!("/api/v2/statements/{real}?partition=1"), &sql_api_headers(&owner)).unwrap();
        assert_eq!(via_parked.status, 200, "{via_parked:?}");
        assert_eq!(via_parked.json().unwrap()["data"], via_real.json().unwrap()["data"]);
        let polled = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(&owner)).unwrap();
        assert_eq!(polled.status, 200, "{polled:?}");
        assert_eq!(polled.json().unwrap()["statementHandle"], real.as_str());
        assert_eq!(submits(), runs, "a poll after the run ran the statement again");
        let refused = client.get(&format!("/api/v2/statements/{real}"), &sql_api_headers(&other)).unwrap();
        assert_eq!(refused.status, 422, "{refused:?}");
    }

    // Denied: the agent gets the reviewer's reason, and the statement never runs.
    let body = json!({"statement": "select * from medium where id = 1", "timeout": 60});
    let parked = client.post_json("/api/v2/statements", &sql_api_headers(&owner), &body, false).unwrap();
    assert_eq!(parked.status, 202, "{parked:?}");
    let handle = parked.json().unwrap()["statementHandle"].as_str().unwrap().to_owned();
    decide(&gateway, &handle, "deny", "not during the freeze");
    let denied = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(&owner)).unwrap();
    assert_eq!(denied.status, 422, "{denied:?}");
    let denied = denied.json().unwrap();
    assert_eq!(denied["code"], "260011", "{denied}");
    assert!(denied["message"].as_str().unwrap().contains("not during the freeze"), "{denied}");
    assert_eq!(submits(), runs);

    // Cancelled by its agent before it ran: answered as cancelled, and never run, whatever a
    // reviewer does then. Another identity's cancel does not reach it.
    for approved_first in [false, true] {
        let body = json!({"statement": format!("select * from medium where id = {}", 2 + u8::from(approved_first)), "timeout": 60});
        let parked = client.post_json("/api/v2/statements", &sql_api_headers(&owner), &body, false).unwrap();
        let handle = parked.json().unwrap()["statementHandle"].as_str().unwrap().to_owned();
        if approved_first {
            decide(&gateway, &handle, "approve", "fine");
        }
        let cancel_path = format!("/api/v2/statements/{handle}/cancel");
        let refused = client.post_json(&cancel_path, &sql_api_headers(&other), &json!({}), false).unwrap();
        assert_eq!(refused.status, 422, "{refused:?}");
        assert_eq!(refused.json().unwrap()["code"], "260018");
        let cancel = client.post_json(&cancel_path, &sql_api_headers(&owner), &json!({}), false).unwrap();
        assert_eq!(cancel.status, 200, "{cancel:?}");
        let cancel = cancel.json().unwrap();
        assert_eq!(
            (cancel["code"].as_str(), cancel["statementHandle"].as_str()),
            (Some("000604"), Some(handle.as_str()))
        );
        assert_no_longer_reviewable(&gateway, &handle);
        let polled = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(&owner)).unwrap();
        assert_eq!(polled.status, 422, "{polled:?}");
        assert_eq!(polled.json().unwrap()["code"], "000604", "{polled:?}");
        assert_eq!(submits(), runs, "a cancelled statement ran");
    }

    let dir = gateway.stop();
    let decisions: Vec<Decision> = read_records(&dir.path().join("recordings"))
        .iter()
        .filter_map(|r| match &r.frame {
            Frame::Request(request) if request.statement.as_deref() == Some("select * from medium") => {
                Some(request.decision.clone())
            }
            _ => None,
        })
        .collect();
    let parked = Decision::Parked { rule: "customer reads need a DBA".into() };
    let approved = Decision::Approved { rule: "customer reads need a DBA".into(), approver: "dba-1".into() };
    assert_eq!(decisions, vec![parked.clone(), parked, approved]);
}
