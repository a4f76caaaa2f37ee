//! `snowgate-tools approvals` against the library's real admin server (`snowgate::admin::start`)
//! over a real ledger on 127.0.0.1: the list table and its JSON, approve and deny as seen in the
//! ledger afterwards, and the error paths (the server's message, non-zero exit).

use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snowgate::admin::{AdminDecision, AdminHandle, AdminLimits, RecordDecisions, Refusal};
use snowgate::policy::approvals::{Ledger, LedgerError, LedgerLimits, ParkRequest, PollState, RequestKey};
use snowgate::policy::rules::{ReviewRequirement, Subject};

type TestLedger = Arc<Mutex<Ledger<()>>>;

/// Keeps the decisions whose outcome was recorded.
struct Outcomes(Arc<Mutex<Vec<AdminDecision>>>);

impl RecordDecisions for Outcomes {
    fn before(&self, _: &AdminDecision) -> Result<(), String> {
        Ok(())
    }

    fn after(&self, decision: &AdminDecision, _: &Result<PollState, LedgerError>) -> Result<(), String> {
        self.0.lock().unwrap().push(decision.clone());
        Ok(())
    }
}

struct Server {
    handle: AdminHandle,
    ledger: TestLedger,
    decisions: Arc<Mutex<Vec<AdminDecision>>>,
}

fn now_unix_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Fixed tokens: `alice` and `bob` review for `dba`; `eve` may use the API but reviews nothing.
fn subject_for(token: &str) -> Result<Subject, Refusal> {
    let (sub, groups): (&str, &[&str]) = match token {
        "token-alice" => ("alice", &["reviewers", "dba"]),
        "token-bob" => ("bob", &["reviewers", "dba"]),
        "token-eve" => ("eve", &["reviewers"]),
        _ => return Err(Refusal::Token("the token is not one of the test tokens".into())),
    };
    Ok(Subject { sub: sub.into(), groups: groups.iter().map(|g| (*g).to_owned()).collect() })
}

fn start_server() -> Server {
    let ledger: TestLedger = Arc::new(Mutex::new(Ledger::new(LedgerLimits::default())));
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Outcomes(decisions.clone()));
    let handle = snowgate::admin::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        ledger.clone(),
        Arc::new(subject_for),
        seen,
        vec!["reviewers".into()],
        AdminLimits::default(),
    )
    .unwrap();
    Server { handle, ledger, decisions }
}

fn park(ledger: &TestLedger, request_id: &str, statement_text: &str, approvals: u32) -> String {
    let request = ParkRequest {
        key: RequestKey { sub: "agent-7".into(), session_id: 42, request_id: request_id.into() },
        agent_groups: vec!["analysts".into()],
        statement_text: statement_text.into(),
        bindings: Some(r#"{"1":{"type":"TEXT","value":"EU"}}"#.into()),
        settings: [("role", "ANALYST"), ("database", "SALES_DB"), ("schema", "PUBLIC")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        agent_context: None,
        requirement: ReviewRequirement {
            approvals,
            reviewer_groups: vec!["dba".into()],
            timeout: Duration::from_secs(600),
        },
        rule_name: Some("deletes need a dba".into()),
        payload: (),
        payload_bytes: 0,
    };
    ledger.lock().unwrap().park(request, now_unix_ms() - 65_000).unwrap().query_id
}

/// Runs `snowgate-tools approvals ARGS` against `server` with `token` in the environment.
fn approvals(server: &Server, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_snowgate-tools"));
    command
        .arg("approvals")
        .args(args)
        .env("SNOWGATE_ADMIN_URL", format!("http://{}", server.handle.local_addr()))
        .env_remove("SNOWGATE_ADMIN_TOKEN")
        .env_remove("SNOWGATE_ADMIN_TOKEN_FILE")
        .env_remove("SNOWGATE_ADMIN_TIMEOUT_SECS");
    if let Some(token) = token {
        command.env("SNOWGATE_ADMIN_TOKEN", token);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn poll(server: &Server, query_id: &str) -> PollState {
    server.ledger.lock().unwrap().poll(query_id, "agent-7", 42, now_unix_ms()).unwrap()
}

#[test]
fn list_prints_a_table_and_the_raw_json() {
    let server = start_server();
    let long = format!("delete from sales.orders\n  where region = '\u{1b}[31mEU' and id in ({})", "1, ".repeat(40));
    let id = park(&server.ledger, "r1", &long, 1);
    let output = approvals(&server, Some("token-alice"), &["list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("QUERY ID"), "{table}");
    for expected in [
        id.as_str(),
        "1m0",
        "agent-7",
        "deletes need a dba",
        "0/1",
        "ANALYST in SALES_DB.PUBLIC",
        r#"{"1":{"type":"TEXT","value":"EU"}}"#,
        "delete from sales.orders where",
    ] {
        assert!(lines[1].contains(expected), "missing {expected:?} in {table}");
    }
    // The statement is cut, flattened, and its terminal escape defused.
    assert!(lines[1].ends_with('…'), "{table}");
    assert!(!table.contains('\u{1b}'), "{table}");

    let output = approvals(&server, Some("token-alice"), &["list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["pending"][0]["query_id"], id.as_str());
    assert_eq!(json["pending"][0]["statement_text"], long.as_str());
    assert_eq!(json["pending"][0]["bindings"], r#"{"1":{"type":"TEXT","value":"EU"}}"#);
    assert_eq!(json["pending"][0]["settings"]["database"], "SALES_DB");

    // Text an agent chose reaches the terminal with its control and bidi characters escaped
    // (`\uXXXX`), still JSON of the same strings.
    let hostile = "delete from t \u{202E}1=1 erehw\u{202C} \u{2066}\u{200E}\u{9B}2J\u{85}\u{7F}\u{FEFF}";
    let hostile_id = park(&server.ledger, "r2", hostile, 1);
    let output = approvals(&server, Some("token-alice"), &["list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for raw in ['\u{202E}', '\u{202C}', '\u{2066}', '\u{200E}', '\u{9B}', '\u{85}', '\u{7F}', '\u{FEFF}', '\u{1b}'] {
        assert!(!text.contains(raw), "raw {raw:?} in {text}");
    }
    assert!(text.contains(r"\u202e") && text.contains(r"\u009b"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pending = json["pending"].as_array().unwrap();
    let parked = pending.iter().find(|p| p["query_id"] == hostile_id.as_str()).unwrap();
    assert_eq!(parked["statement_text"], hostile);
    let output = approvals(&server, Some("token-alice"), &["list"]);
    assert!(!stdout(&output).contains(['\u{202E}', '\u{9B}', '\u{7F}']), "{}", stdout(&output));

    // A caller who reviews nothing sees nothing.
    let output = approvals(&server, Some("token-eve"), &["list"]);
    assert_eq!(stdout(&output), "No statements are waiting for your review.\n");
}

#[test]
fn show_prints_one_statement_whole() {
    let server = start_server();
    // What `list` cuts off is what a reviewer must see: here, the clause that widens a delete.
    let padding = "x".repeat(80);
    let statement = format!("delete from t\r\n where id = 42 /* {padding} */\n   or 1=1 \u{202E}");
    let id = park(&server.ledger, "r1", &statement, 1);
    let listed = stdout(&approvals(&server, Some("token-alice"), &["list"]));
    assert!(!listed.contains("or 1=1"), "{listed}");
    let output = approvals(&server, Some("token-alice"), &["show", &id]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    for expected in [
        format!("Query id:   {id}"),
        "Agent:      agent-7 (groups: analysts)".to_owned(),
        "Rule:       deletes need a dba".to_owned(),
        "Approvals:  0 of 1 (); reviewers: dba".to_owned(),
        "Runs as:    database=SALES_DB, role=ANALYST, schema=PUBLIC".to_owned(),
        r#"Bindings:   {"1":{"type":"TEXT","value":"EU"}}"#.to_owned(),
        "Statement:\n  delete from t\\r\n   where id = 42".to_owned(),
        format!("{padding} */\n     or 1=1 \\u{{202e}}\n"),
    ] {
        assert!(shown.contains(&expected), "missing {expected:?} in {shown}");
    }
    assert!(!shown.contains(['\u{202E}', '\r']), "{shown}");

    let output = approvals(&server, Some("token-alice"), &["show", &id, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["statement_text"], statement.as_str());

    // Not waiting, or not this reviewer's to see: an error, non-zero.
    for (token, query_id) in [("token-alice", "01-not-parked"), ("token-eve", id.as_str())] {
        let output = approvals(&server, Some(token), &["show", query_id]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("is waiting for your review"), "{}", stderr(&output));
    }
}

#[test]
fn approve_and_deny_reach_the_ledger() {
    let server = start_server();
    let approve_me = park(&server.ledger, "r1", "delete from t where id = 1", 2);
    let deny_me = park(&server.ledger, "r2", "delete from t", 1);

    let output = approvals(&server, Some("token-alice"), &["approve", &approve_me, "--reason", "checked the ids"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("Approved {approve_me}: 1 of 2 approvals so far; still pending.\n"));
    // The global flags also work after the subcommand, and --json prints the answer as is.
    let output =
        approvals(&server, None, &["approve", &approve_me, "--reason", "fine", "--token", "token-bob", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json, serde_json::json!({"query_id": approve_me, "state": {"state": "approved"}}));
    assert_eq!(poll(&server, &approve_me), PollState::Approved);

    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "token-bob\n").unwrap();
    let output = approvals(
        &server,
        None,
        &["deny", &deny_me, "--reason", "no unbounded deletes", "--token-file", token_file.path().to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with(&format!("Denied {deny_me}: denied")), "{}", stdout(&output));
    assert_eq!(poll(&server, &deny_me), PollState::Denied { reason: "no unbounded deletes".into() });

    let decisions = server.decisions.lock().unwrap();
    let seen: Vec<(&str, &str)> = decisions.iter().map(|d| (d.reviewer.sub.as_str(), d.reason.as_str())).collect();
    assert_eq!(seen, [("alice", "checked the ids"), ("bob", "fine"), ("bob", "no unbounded deletes")]);
}

#[test]
fn errors_exit_non_zero_with_the_servers_message() {
    let server = start_server();
    let id = park(&server.ledger, "r1", "delete from t", 1);

    let output = approvals(&server, Some("token-eve"), &["approve", &id, "--reason", "ok"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).trim(),
        "error: the admin API answered HTTP 403 (the request's fault): the reviewer is not in a reviewer group for this statement"
    );

    let output = approvals(&server, Some("token-forged"), &["list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("HTTP 401"), "{}", stderr(&output));
    assert!(stderr(&output).contains("the token is not one of the test tokens"), "{}", stderr(&output));

    let unknown = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f";
    let output = approvals(&server, Some("token-alice"), &["deny", unknown, "--reason", "no"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("HTTP 404"), "{}", stderr(&output));

    approvals(&server, Some("token-alice"), &["deny", &id, "--reason", "no"]);
    let output = approvals(&server, Some("token-bob"), &["deny", &id, "--reason", "me neither"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("HTTP 409"), "{}", stderr(&output));

    let output = approvals(&server, None, &["list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("needs the reviewer's token"), "{}", stderr(&output));

    let output = approvals(&server, Some("token-alice"), &["list", "--admin-url", "https://127.0.0.1:8444"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("https admin URLs are not supported"), "{}", stderr(&output));

    // A timeout past what the clock can hold is refused as a usage error, not a panic.
    for timeout in ["18446744073709551615", "0", "3601"] {
        let output = approvals(&server, Some("token-alice"), &["list", "--timeout-secs", timeout]);
        assert_eq!(output.status.code(), Some(2), "{timeout}: {}", stderr(&output));
        assert!(stderr(&output).contains("--timeout-secs"), "{timeout}: {}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"), "{timeout}: {}", stderr(&output));
    }
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate-tools"))
        .args(["approvals", "list"])
        .env("SNOWGATE_ADMIN_URL", format!("http://{}", server.handle.local_addr()))
        .env("SNOWGATE_ADMIN_TOKEN", "token-alice")
        .env("SNOWGATE_ADMIN_TIMEOUT_SECS", "18446744073709551615")
        .env_remove("SNOWGATE_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    let output = approvals(&server, Some("token-alice"), &["list", "--timeout-secs", "3600"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let output = approvals(&server, Some("token-alice"), &["approve", "../../etc", "--reason", "ok"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("letters, digits and dashes"), "{}", stderr(&output));

    // Nothing listens once the server is stopped.
    let addr = server.handle.local_addr();
    let Server { handle, .. } = server;
    handle.stop();
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate-tools"))
        .args(["approvals", "list", "--admin-url", &format!("http://{addr}"), "--token", "token-alice"])
        .env_remove("SNOWGATE_ADMIN_TOKEN")
        .env_remove("SNOWGATE_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("connecting to the admin API"), "{}", stderr(&output));
}
