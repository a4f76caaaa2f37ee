//! Masking in flight with the real Python driver: Arrow results from fakesnow (`fetchall()`
//! and `fetch_pandas_all()`), and multi-chunk JSON and Arrow results (gzip with and without a
//! header, SSE-C required) from the double. Configured columns and detected values are
//! masked, everything else is identical to a direct run, types still decode, no raw value
//! reaches the agent or the recording, and chunk URLs are bound to their session and expire.

use std::process::{Command, Stdio};
use std::time::Duration;

use aho_corasick::AhoCorasick;
use serde_json::{Value, json};
use snowgate_perf::corpus::ChunkLayout;
use snowgate_perf::results::customers;

use crate::driver::{python, start_fakesnow};
use crate::support::*;

pub(crate) const MASKING_POLICY: &str = r#"
[policy]
default = { action = "deny", message = "No snowgate rule allows this statement." }

[[policy.rules]]
name = "everything, masked"
groups = ["*"]
kinds = ["*"]
action = "allow"
masking_profile = "agents"

[masking.profiles.agents.detectors]
card = { mask = { style = "keep_last", keep = 4 } }

[masking.profiles.agents.dictionary]
words = ["Project Falcon"]
mask = { style = "token", token = "[SECRET]" }

[[masking.profiles.agents.columns]]
name = "SSN"
mask = { style = "null" }

[[masking.profiles.agents.columns]]
name = "SALARY"
mask = { style = "type_valid" }
"#;

fn run_script(port: u16, args: &[&str]) -> Value {
    let output = Command::new(python())
        .arg(root().join("tests/driver/masking.py"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--token", &agent_token(json!({}))])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "the masking script failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn text(cell: &Value) -> &str {
    cell[1].as_str().unwrap_or_else(|| panic!("not a value: {cell}"))
}

const SETUP: &str = "CREATE DATABASE IF NOT EXISTS MASKDB;; CREATE SCHEMA IF NOT EXISTS MASKDB.S;; USE SCHEMA MASKDB.S;; \
    CREATE OR REPLACE TABLE CUSTOMERS (ID INT, NAME VARCHAR, EMAIL VARCHAR, CARD VARCHAR, SSN VARCHAR, NOTE VARCHAR, \
    SALARY NUMBER(10,2), BORN DATE);; \
    INSERT INTO CUSTOMERS VALUES \
    (1, 'Ada Lovelace', 'ada@example.com', '4111111111111111', '123-45-6789', 'met about Project Falcon', 1200.50, '1990-01-02'), \
    (2, 'Alan Turing', 'alan.t@corp.example.org', '5500005555555559', NULL, 'nothing to see', 99.99, '1985-06-23'), \
    (3, 'Grace Hopper', 'grace@navy.example', 'n/a', '987-65-4321', 'card 4012888888881881 on file', 0.01, '1970-12-09')";
const SELECT: &str = "SELECT ID, NAME, EMAIL, CARD, SSN, NOTE, SALARY, BORN FROM MASKDB.S.CUSTOMERS ORDER BY ID";
const RAW: [&str; 8] = [
    "ada@example.com",
    "alan.t@corp.example.org",
    "grace@navy.example",
    "4111111111111111",
    "5500005555555559",
    "123-45-6789",
    "987-65-4321",
    "Project Falcon",
];

/// Checks one masked row against the clear one, column by column.
fn assert_masked_customer(clear: &[Value], masked: &[Value], source: &str) {
    let context = format!("{source}: clear {clear:?}, masked {masked:?}");
    for column in [0, 1, 7] {
        assert_eq!(clear[column], masked[column], "ID, NAME and BORN must be untouched; {context}");
    }
    assert_eq!(text(&masked[2]), "*".repeat(text(&clear[2]).len()), "{context}");
    let card = text(&clear[3]);
    if card == "n/a" {
        assert_eq!(masked[3], clear[3], "{context}");
    } else {
        assert_eq!(text(&masked[3]), format!("{}{}", "*".repeat(card.len() - 4), &card[card.len() - 4..]), "{context}");
    }
    assert_eq!(masked[4], Value::Null, "SSN must be NULL; {context}");
    let note = text(&masked[5]);
    match text(&clear[5]) {
        "met about Project Falcon" => assert!(note.starts_with("met about [SECRET]") && note.len() == 24, "{context}"),
        "card 4012888888881881 on file" => assert_eq!(note, "card ************1881 on file", "{context}"),
        other => assert_eq!(note, other, "{context}"),
    }
    assert_eq!(masked[6][0], clear[6][0], "SALARY must keep its type; {context}");
    assert_eq!(text(&masked[6]).parse::<f64>().unwrap(), 0.0, "{context}");
}

#[test]
fn python_driver_gets_masked_arrow_results_from_fakesnow() {
    let work = tempfile::tempdir().unwrap();
    let fakesnow = start_fakesnow(work.path());
    let direct = run_script(fakesnow.addr.port(), &["--setup", SETUP, "--query", SELECT, "--pandas"]);
    let gateway = TestGateway::start(
        &format!("http://{}", fakesnow.addr),
        GatewayOptions { policy: Some(MASKING_POLICY.into()), ..Default::default() },
    );
    let relay = Relay::start(gateway.addr);
    let masked = run_script(relay.addr.port(), &["--query", SELECT, "--pandas"]);
    for (kind, clear_rows, masked_rows) in [
        ("fetchall", &direct[0]["rows"], &masked[0]["rows"]),
        ("fetch_pandas_all", &direct[0]["pandas"], &masked[0]["pandas"]),
    ] {
        let (clear_rows, masked_rows) = (clear_rows.as_array().unwrap(), masked_rows.as_array().unwrap());
        assert_eq!(clear_rows.len(), 3, "{kind}: {clear_rows:?}");
        assert_eq!(masked_rows.len(), 3, "{kind}: {masked_rows:?}");
        for (clear, row) in clear_rows.iter().zip(masked_rows) {
            assert_masked_customer(clear.as_array().unwrap(), row.as_array().unwrap(), kind);
        }
    }
    let received = relay.received();
    assert!(received.contains("rowsetBase64"), "fakesnow did not answer in Arrow");
    let dir = gateway.stop();
    let recording = recording_text(&dir.path().join("recordings"));
    for raw in RAW {
        assert!(!received.contains(raw), "{raw} reached the driver");
        assert!(!recording.contains(raw), "{raw} reached the recording");
    }
}

/// The double's chunked table as the driver should see it.
pub(crate) fn chunked_rows() -> Vec<Vec<Option<String>>> {
    customers("CHUNKED", ChunkLayout::default().total_rows()).rows
}

#[test]
fn python_driver_gets_every_chunk_masked_through_the_gateway() {
    let upstream = double(|_| {});
    let gateway = masking_gateway(&upstream, String::new());
    let relay = Relay::start(gateway.addr);
    let json_result = run_script(relay.addr.port(), &["--query", "select * from chunked_json"]);
    let arrow_result = run_script(relay.addr.port(), &["--query", "select * from chunked_arrow", "--pandas"]);
    let raw = chunked_rows();
    assert!(raw.len() >= 30_000, "the chunked corpus shrank");
    for (kind, rows) in [
        ("JSON fetchall", &json_result[0]["rows"]),
        ("Arrow fetchall", &arrow_result[0]["rows"]),
        ("Arrow fetch_pandas_all", &arrow_result[0]["pandas"]),
    ] {
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), raw.len(), "{kind}: every row must arrive");
        for (clear, row) in raw.iter().zip(rows) {
            let context = format!("{kind}: clear {clear:?}, masked {row}");
            assert_eq!(text(&row[0]), clear[0].as_deref().unwrap(), "{context}");
            assert_eq!(text(&row[1]), clear[1].as_deref().unwrap(), "{context}");
            let email = clear[2].as_deref().unwrap();
            assert_eq!(text(&row[2]), "*".repeat(email.len()), "{context}");
            let card = clear[3].as_deref().unwrap();
            assert_eq!(
                text(&row[3]),
                format!("{}{}", "*".repeat(card.len() - 4), &card[card.len() - 4..]),
                "{context}"
            );
            assert_eq!(row[4], Value::Null, "{context}");
        }
    }
    // Every chunk came through the gateway (three reads of twelve chunks: JSON, Arrow, Arrow
    // again for pandas).
    assert_chunks_kept_from_the_agent(&upstream, &relay, 3 * ChunkLayout::default().chunk_count);
    assert_no_raw_card_or_email(&raw, &relay, gateway);
}

/// Upstream saw `downloads` chunk downloads, each by the gateway with the SSE-C headers and
/// without the agent's session token; the upstream's chunk URLs and key never reached the
/// driver behind `relay`.
pub(crate) fn assert_chunks_kept_from_the_agent(
    upstream: &snowgate_perf::RunningUpstream,
    relay: &Relay,
    downloads: usize,
) {
    let chunk_downloads = upstream.stats.recorded(snowgate_perf::EndpointKind::Chunk);
    assert_eq!(chunk_downloads.len(), downloads, "chunk downloads seen upstream");
    for download in &chunk_downloads {
        let has = |name: &str| download.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        assert!(has(snowgate_perf::corpus::SSE_C_KEY_HEADER) && has(snowgate_perf::corpus::SSE_C_ALGORITHM_HEADER));
        assert!(!has("authorization"), "the agent's session token was sent to cloud storage");
    }
    let received = relay.received();
    assert!(!received.contains(snowgate_perf::corpus::QRMK), "the qrmk reached the driver");
    assert!(!received.contains(&format!("{}/chunks/", upstream.url())), "an upstream chunk URL reached the driver");
}

/// No e-mail or card number of the `raw` customer rows reached the driver behind `relay`, nor
/// the recording of `gateway` (stopped here).
pub(crate) fn assert_no_raw_card_or_email(raw: &[Vec<Option<String>>], relay: &Relay, gateway: TestGateway) {
    let received = relay.received();
    let dir = gateway.stop();
    let recording = recording_text(&dir.path().join("recordings"));
    let canaries: Vec<&str> = raw.iter().flat_map(|r| [r[2].as_deref().unwrap(), r[3].as_deref().unwrap()]).collect();
    let searcher = AhoCorasick::new(&canaries).unwrap();
    assert_eq!(
        searcher.find(&received).map(|m| canaries[m.pattern().as_usize()]),
        None,
        "a raw value reached the driver"
    );
    assert_eq!(searcher.find(&recording).map(|m| canaries[m.pattern().as_usize()]), None, "a raw value was recorded");
}

fn chunk_path(answer: &Value, index: usize) -> String {
    let url = answer["data"]["chunks"][index]["url"].as_str().unwrap();
    let after_scheme = url.split_once("://").unwrap().1;
    after_scheme[after_scheme.find('/').unwrap()..].to_owned()
}

#[test]
fn chunk_urls_are_bound_to_their_session_and_expire() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions {
            policy: Some(MASKING_POLICY.into()),
            limits: "chunk_url_ttl_secs = 2".into(),
            ..Default::default()
        },
    );
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let answer = query(&mut client, &session, "select * from chunked_json").json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert!(answer["data"].get("qrmk").is_none(), "{answer}");
    assert_eq!(answer["data"]["chunkHeaders"], json!({"Authorization": authorization(&session)}));
    let path = chunk_path(&answer, 0);
    assert!(path.starts_with("/snowgate/chunk/sg1."), "{path}");

    let own = client.get(&path, &[("authorization", &authorization(&session))]).unwrap();
    assert_eq!(own.status, 200);
    assert!(!String::from_utf8_lossy(&own.body).contains('@'), "an e-mail address in a masked chunk");

    let mut other = gateway.client();
    let (other_session, _) = login_ok(&mut other);
    let stolen = other.get(&path, &[("authorization", &authorization(&other_session))]).unwrap();
    assert_eq!(stolen.status, 403, "another session fetched the chunk");
    let anonymous = other.get(&path, &[]).unwrap();
    assert_eq!(anonymous.status, 403, "a chunk was fetched without a session");
    let mut forged = path.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged =
        client.get(std::str::from_utf8(&forged).unwrap(), &[("authorization", &authorization(&session))]).unwrap();
    assert_eq!(forged.status, 403, "a tampered grant was honoured");

    std::thread::sleep(Duration::from_millis(2500));
    let expired = client.get(&path, &[("authorization", &authorization(&session))]).unwrap();
    assert_eq!(expired.status, 403, "an expired chunk URL was honoured");
    assert!(String::from_utf8_lossy(&expired.body).contains("expired"));

    // The recording keeps the answer with its chunk URLs, but not the session token the
    // agent was told to present with them (a bearer credential).
    let dir = gateway.stop();
    let recording = recording_text(&dir.path().join("recordings"));
    assert!(recording.contains(&path["/snowgate/chunk/".len()..]), "the answer's chunk URLs were not recorded");
    assert!(recording.contains(r#""chunkHeaders":{"Authorization":"[redacted]"}"#), "{recording}");
    for token in [&session, &other_session] {
        assert!(!recording.contains(token.as_str()), "a session token was recorded");
    }
}

/// A logout ends the session at the gateway too: its chunk URLs, which the gateway serves
/// from storage by their sealed grants for up to an hour and past the session token's
/// expiry, are refused at once, and so are its session and master tokens, without asking
/// Snowflake.
#[test]
fn a_logout_ends_the_session_and_its_chunk_urls_at_the_gateway() {
    use snowgate_perf::EndpointKind;
    let upstream = double(|_| {});
    let gateway = masking_gateway(&upstream, String::new());
    let mut client = gateway.client();
    let (session, master) = login_ok(&mut client);
    let auth = authorization(&session);
    let answer = query(&mut client, &session, "select * from chunked_json").json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let path = chunk_path(&answer, 0);
    assert_eq!(client.get(&path, &[("authorization", &auth)]).unwrap().status, 200);
    let logout = client.post_json("/session?delete=true", &[("authorization", &auth)], &json!({}), false).unwrap();
    assert_eq!(logout.json().unwrap()["success"], true);
    assert_eq!(upstream.stats.requests(EndpointKind::Logout), 1);

    let (chunks, queries) =
        (upstream.stats.requests(EndpointKind::Chunk), upstream.stats.requests(EndpointKind::Query));
    let late = client.get(&path, &[("authorization", &auth)]).unwrap();
    assert_eq!(late.status, 403, "a chunk was served after its session was logged out of");
    assert!(String::from_utf8_lossy(&late.body).contains("logged out"), "{late:?}");
    assert_refused(&query(&mut client, &session, "select 1"), "390104");
    let renewals = upstream.stats.requests(EndpointKind::TokenRequest);
    assert_refused(&renew(&mut client, &master.unwrap(), &session), "390115");
    assert_eq!(upstream.stats.requests(EndpointKind::TokenRequest), renewals);
    assert_eq!(upstream.stats.requests(EndpointKind::Chunk), chunks);
    assert_eq!(upstream.stats.requests(EndpointKind::Query), queries);
    // A logout sent again (one that failed upstream, say) still goes to Snowflake.
    client.post_json("/session?delete=true", &[("authorization", &auth)], &json!({}), false).unwrap();
    assert_eq!(upstream.stats.requests(EndpointKind::Logout), 2);
    // Another session of the same identity is not touched.
    let (other, _) = login_ok(&mut client);
    assert_eq!(query(&mut client, &other, "select 1").json().unwrap()["success"], true);
}

#[test]
fn a_chunk_url_ends_with_the_agents_oidc_token() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { policy: Some(MASKING_POLICY.into()), jwks: Some(jwks_without_skew()), ..Default::default() },
    );
    let mut client = gateway.client();
    let exp = now_unix() + 4;
    let login = login(&mut client, &agent_token(json!({ "exp": exp }))).json().unwrap();
    let session = login["data"]["token"].as_str().unwrap().to_owned();
    let answer = query(&mut client, &session, "select * from chunked_json").json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let path = chunk_path(&answer, 0);
    assert_eq!(client.get(&path, &[("authorization", &authorization(&session))]).unwrap().status, 200);

    wait_past(exp);
    // The grant itself would last an hour (the default); the identity it was issued for did not.
    let late = client.get(&path, &[("authorization", &authorization(&session))]).unwrap();
    assert_eq!(late.status, 403, "a chunk was served after the agent's OIDC token expired");
    assert!(String::from_utf8_lossy(&late.body).contains("log in again"));
}

/// Chunks are fetched with the result's decryption key (`qrmk`, `chunkHeaders`): from an
/// https URL, or plain http only to this machine (a local emulator). An answer listing chunks
/// at a plain http URL elsewhere is withheld, and nothing is fetched from it.
#[test]
fn chunks_at_a_plain_http_url_off_this_machine_are_not_fetched() {
    let upstream = double(|c| c.chunk_base_url = Some("http://10.255.255.1:9".into()));
    let gateway = masking_gateway(&upstream, String::new());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    for table in ["chunked_json", "chunked_arrow"] {
        let answer = query(&mut client, &session, &format!("select * from {table}")).json().unwrap();
        assert_eq!(answer["success"], false, "{table}: {answer}");
        assert!(!answer.to_string().contains("10.255.255.1"), "{table}: {answer}");
    }
}

#[test]
fn sql_api_partitions_are_masked_and_handles_belong_to_their_identity() {
    let upstream = double(|_| {});
    let gateway = masking_gateway(&upstream, String::new());
    let mut client = gateway.client();
    let owner = format!("Bearer {}", agent_token(json!({})));
    let other = format!("Bearer {}", agent_token(json!({"sub": "agent-8"})));
    // The same `sub` with other groups: another policy, other masking profiles.
    let regrouped = format!("Bearer {}", agent_token(json!({"groups": ["admins"]})));
    let clear = customers("MEDIUM", snowgate_perf::results::MEDIUM_ROWS).rows;

    // Answered at once, and answered later (202, polled): either way partition 0's row type
    // masks the later partitions.
    let mut handles = Vec::new();
    for (target, statement) in
        [("/api/v2/statements", "select * from medium"), ("/api/v2/statements?async=true", "select * from medium slow")]
    {
        let body = json!({"statement": statement, "timeout": 60});
        let answer = client.post_json(target, &sql_api_headers(&owner), &body, false).unwrap();
        let handle = answer.json().unwrap()["statementHandle"].as_str().unwrap().to_owned();
        let answer = sql_api_poll(&mut client, &owner, &handle, answer);
        assert_eq!(answer.status, 200, "{statement}: {answer:?}");
        let first = answer.json().unwrap();
        assert!(first["resultSetMetaData"]["partitionInfo"].as_array().unwrap().len() >= 2, "{first}");
        let rows = sql_api_rows(&mut client, &owner, &first);
        assert_customers_masked(statement, &clear, &rows);
        handles.push(handle);
    }

    // Another identity cannot read, page through or cancel the statement, and nothing of
    // what it asked reached the upstream; nor can anyone use a handle never issued here.
    let fetches = upstream.stats.recorded(snowgate_perf::EndpointKind::SqlApiFetch).len();
    let cancels = upstream.stats.recorded(snowgate_perf::EndpointKind::SqlApiCancel).len();
    let handle = &handles[0];
    let foreign = "01b2c3d4-0000-4000-8000-0000000000ff";
    for (bearer, path) in [
        (&other, format!("/api/v2/statements/{handle}")),
        (&other, format!("/api/v2/statements/{handle}?partition=1")),
        (&regrouped, format!("/api/v2/statements/{handle}")),
        (&regrouped, format!("/api/v2/statements/{handle}?partition=1")),
        (&owner, format!("/api/v2/statements/{foreign}")),
    ] {
        let refused = client.get(&path, &sql_api_headers(bearer)).unwrap();
        assert_eq!(refused.status, 422, "{path}: {refused:?}");
        let refused = refused.json().unwrap();
        assert_eq!(refused["code"], "260018", "{refused}");
        assert!(refused["data"].is_null(), "rows in a refusal: {refused}");
    }
    for bearer in [&other, &regrouped] {
        let cancel = client
            .post_json(&format!("/api/v2/statements/{handle}/cancel"), &sql_api_headers(bearer), &json!({}), false)
            .unwrap();
        assert_eq!(cancel.status, 422, "{cancel:?}");
    }
    assert_eq!(upstream.stats.recorded(snowgate_perf::EndpointKind::SqlApiFetch).len(), fetches);
    assert_eq!(upstream.stats.recorded(snowgate_perf::EndpointKind::SqlApiCancel).len(), cancels);
    // The owner still can.
    let own = client
        .post_json(&format!("/api/v2/statements/{handle}/cancel"), &sql_api_headers(&owner), &json!({}), false)
        .unwrap();
    assert_eq!(own.status, 200, "{own:?}");

    let dir = gateway.stop();
    let recording = recording_text(&dir.path().join("recordings"));
    let canaries: Vec<&str> = clear.iter().flat_map(|r| [r[2].as_deref().unwrap(), r[3].as_deref().unwrap()]).collect();
    let searcher = AhoCorasick::new(&canaries).unwrap();
    assert_eq!(searcher.find(&recording).map(|m| canaries[m.pattern().as_usize()]), None, "a raw value was recorded");
    // Each submit is recorded under its statement handle, so a search by handle finds it.
    let records = read_records(&dir.path().join("recordings"));
    for handle in &handles {
        let submitted = records.iter().any(|r| {
            matches!(&r.frame, snowgate::record::Frame::Response(a)
                if a.endpoint == "sql-api-submit" && a.query_id.as_deref() == Some(handle.as_str()))
        });
        assert!(submitted, "the submit of {handle} is not recorded under its handle");
    }
}

/// An error may quote what failed ("Numeric value '…' is not recognized"): answers without
/// rows are masked too, driver answers and SQL API error statuses alike. Under a profile with
/// column rules every quoted part goes (the double's error quotes a table name).
#[test]
fn error_answers_are_masked_like_results() {
    let upstream = double(|_| {});
    let gateway = masking_gateway(&upstream, String::new());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let error = query(&mut client, &session, "select * from no_such_table").json().unwrap();
    assert_eq!((&error["success"], &error["code"]), (&json!(false), &json!("002003")), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Object '*************' does not exist"), "{message}");

    // An asynchronous statement's failure is read from its monitoring status too (the Python
    // driver's get_query_status_throw_if_error raises its errorMessage).
    let auth = authorization(&session);
    let body = json!({"sqlText": "select * from no_such_table", "asyncExec": true});
    let started = client.post_json(QUERY_TARGET, &[("authorization", &auth)], &body, true).unwrap().json().unwrap();
    assert_eq!(started["code"], "333334", "{started}");
    let qid = started["data"]["queryId"].as_str().unwrap();
    let status = client.get(&format!("/monitoring/queries/{qid}"), &[("authorization", &auth)]).unwrap();
    let status = status.json().unwrap();
    assert_eq!(status["data"]["queries"][0]["status"], "FAILED_WITH_ERROR", "{status}");
    let message = status["data"]["queries"][0]["errorMessage"].as_str().unwrap();
    assert!(message.contains("Object '*************' does not exist"), "{message}");

    let bearer = format!("Bearer {}", agent_token(json!({})));
    let body = json!({"statement": "select * from no_such_table", "timeout": 60});
    let answer = client.post_json("/api/v2/statements", &sql_api_headers(&bearer), &body, false).unwrap();
    assert_eq!(answer.status, 422);
    let error = answer.json().unwrap();
    assert_eq!(error["code"], "002003", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Object '*************' does not exist"), "{message}");
}

/// A `GET` answer sends the driver to the stage itself, with temporary cloud credentials and
/// the stage's key: files fetched so would pass neither the masker nor the recording. Under
/// masking the answer is withheld, saying why, and neither the agent nor the recording gets
/// the credentials; queries go on as before.
#[test]
fn stage_access_is_withheld_from_an_agent_under_masking() {
    let upstream = double(|_| {});
    let gateway = masking_gateway(&upstream, String::new());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let refused = query(&mut client, &session, "GET @my_stage/x.csv file:///tmp/");
    assert_refused(&refused, snowgate::session::codes::MASKING_FAILED);
    let message = refused.json().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("direct access to a stage"), "{message}");
    let canaries = ["ASIASTAGECANARY", "stage-secret-canary", "c3RhZ2Uta2V5LWNhbmFyeQ=="];
    let body = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(canaries.iter().all(|c| !body.contains(c)), "{body}");
    assert_eq!(query(&mut client, &session, "select * from small").json().unwrap()["success"], true);
    drop(client);
    let dir = gateway.stop();
    let recording = recording_text(&dir.path().join("recordings"));
    assert!(recording.contains("GET @my_stage/x.csv"), "the statement was not recorded");
    assert!(canaries.iter().all(|c| !recording.contains(c)), "a stage credential was recorded");
}

/// A gateway masking with [`MASKING_POLICY`] in front of `upstream`, with `limits` (lines of
/// its `[limits]` table).
fn masking_gateway(upstream: &snowgate_perf::RunningUpstream, limits: String) -> TestGateway {
    TestGateway::start(
        &upstream.url(),
        GatewayOptions { policy: Some(MASKING_POLICY.into()), limits, ..Default::default() },
    )
}

/// Chunk URLs carry sealed grants, and a driver fetches them in request heads the gateway caps
/// (`[limits] head_bytes_max`): an answer whose chunk fetches would not fit is refused with the
/// reason when it is answered, not left to fail every chunk download with a bare 431.
#[test]
fn chunk_urls_that_would_not_fit_a_request_head_are_refused_with_the_reason() {
    let upstream = double(|_| {});
    let start = |limits: String| masking_gateway(&upstream, limits);
    // How long this result's chunk URL and Authorization are.
    let gateway = start(String::new());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let answer = query(&mut client, &session, "select * from chunked_json").json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let needed = answer["data"]["chunks"][0]["url"].as_str().unwrap().len() + authorization(&session).len() + 1024;
    drop(gateway);

    // A cap a little under what the fetches need: the answer is refused, saying why.
    let gateway = start(format!("head_bytes_max = {}", needed - 100));
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let refused = query(&mut client, &session, "select * from chunked_json");
    assert_refused(&refused, snowgate::session::codes::MASKING_FAILED);
    let message = refused.json().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("head_bytes_max"), "{message}");
    // Answers without chunks are served as before.
    assert_eq!(query(&mut client, &session, "select * from medium").json().unwrap()["success"], true);
    drop(gateway);

    // A cap a little over: the answer is served and its chunks are fetched.
    let gateway = start(format!("head_bytes_max = {}", needed + 100));
    fetch_chunked_json(&gateway);
}

/// The gateway's chunk URLs are longer than the upstream's (sealed grants carrying the plan):
/// the answer listing them is held to `[limits] decompressed_bytes_max` like any body, and one
/// over it is refused with the reason before it is built, not grown without bound.
#[test]
fn an_answer_whose_chunk_urls_would_be_over_the_body_cap_is_refused_with_the_reason() {
    let upstream = double(|_| {});
    let start = |limits: String| masking_gateway(&upstream, limits);
    let gateway = start(String::new());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let answer = query(&mut client, &session, "select * from chunked_json");
    assert_eq!(answer.json().unwrap()["success"], true);
    let answer_bytes = answer.body.len();
    drop(gateway);

    let gateway = start(format!("body_bytes_max = {0}\ndecompressed_bytes_max = {0}", answer_bytes - 1));
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let refused = query(&mut client, &session, "select * from chunked_json");
    assert_refused(&refused, snowgate::session::codes::MASKING_FAILED);
    let message = refused.json().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("decompressed_bytes_max") && message.contains("chunks"), "{message}");
    assert_eq!(query(&mut client, &session, "select * from small").json().unwrap()["success"], true);
}

/// Logs in to `gateway`, queries `chunked_json` and fetches every chunk of it, each a 200.
fn fetch_chunked_json(gateway: &TestGateway) {
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let answer = query(&mut client, &session, "select * from chunked_json").json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    for index in 0..answer["data"]["chunks"].as_array().unwrap().len() {
        let chunk = client.get(&chunk_path(&answer, index), &[("authorization", &authorization(&session))]).unwrap();
        assert_eq!(chunk.status, 200, "chunk {index}: {}", String::from_utf8_lossy(&chunk.body));
    }
}

/// A chunk URL's grant holds the storage URL, and the gateway opens no grant longer than
/// `SEALED_BYTES_MAX`: with a head cap that would let such URLs through, an answer whose storage
/// URLs are long (presigned signatures) is refused with the reason, instead of handing out
/// chunk URLs that every download would find unknown.
#[test]
fn chunk_grants_the_gateway_could_not_open_are_refused_with_the_reason() {
    let start = |upstream: &snowgate_perf::RunningUpstream| masking_gateway(upstream, "head_bytes_max = 131072".into());
    let long = double(|c| c.chunk_url_query_bytes = snowgate::session::token::SEALED_BYTES_MAX);
    let gateway = start(&long);
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let refused = query(&mut client, &session, "select * from chunked_json");
    assert_refused(&refused, snowgate::session::codes::MASKING_FAILED);
    let message = refused.json().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("grants of"), "{message}");
    drop(gateway);

    // Storage URLs a few KB long (a real presigned URL's size) still go through.
    let usual = double(|c| c.chunk_url_query_bytes = 4096);
    fetch_chunked_json(&start(&usual));
}

/// A table-scoped column rule masks a query's column of its name that comes with no table
/// (computed, or read through `RESULT_SCAN`: no one can tell it is not the rule's table's),
/// and leaves a `SHOW` answer's columns, which are no table's, alone. The double answers both
/// with one text column named `1` (the binding echoed) and an empty `table`.
#[test]
fn a_querys_column_without_a_table_is_masked_by_a_table_scoped_rule_and_a_shows_is_not() {
    // The usual policy (whose rules and detectors leave `clear-value-77` alone), and a rule
    // for column `1` of one table.
    let policy = format!(
        "{MASKING_POLICY}\n[[masking.profiles.agents.columns]]\nname = \"1\"\ntable = \"CUSTOMERS\"\nmask = {{ style = \"full\" }}\n"
    );
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions { policy: Some(policy), ..Default::default() });
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let mut first_cell = |sql: &str| {
        let body = json!({"sqlText": sql, "bindings": {"1": {"type": "TEXT", "value": "clear-value-77"}}});
        let answer =
            client.post_json(QUERY_TARGET, &[("authorization", &authorization(&session))], &body, true).unwrap();
        let answer = answer.json().unwrap();
        assert_eq!(answer["success"], true, "{answer}");
        assert_eq!(answer["data"]["rowtype"][0]["table"], "", "{answer}");
        answer["data"]["rowset"][0][0].as_str().unwrap().to_owned()
    };
    let masked = first_cell("select ?");
    assert_eq!(masked.len(), "clear-value-77".len());
    assert!(!masked.contains("clear-value"), "a computed column escaped its table-scoped rule: {masked}");
    assert_eq!(first_cell("show tables like ?"), "clear-value-77");
}
