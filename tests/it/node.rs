//! The real Node driver (snowflake-sdk, pinned in `tests/driver/node/package.json`) through
//! the gateway to the Rust double: Node asks for JSON results, so this is the driver path for
//! JSON rowsets and JSON chunks, fetched through the gateway's chunk URLs. Every row arrives,
//! masked, with its types decoding; errors and refusals reach it as Snowflake errors; no raw
//! value, upstream chunk URL, `qrmk` or Snowflake token reaches it or the recording; a write
//! under review waits, polled, until a reviewer approves it.
//!
//! `tests/run.sh` installs the driver with `npm ci` (Node.js 20 or later); `SNOWGATE_TEST_NODE`
//! names another `node` binary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use snowgate_perf::corpus::ChunkLayout;

use snowgate_perf::harness::report::date_from_days;

use crate::masking::{MASKING_POLICY, assert_chunks_kept_from_the_agent, assert_no_raw_card_or_email, chunked_rows};
use crate::policy::{decide, review_policy, wait_for_pending};
use crate::support::*;

fn node() -> PathBuf {
    let node = std::env::var_os("SNOWGATE_TEST_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let modules = root().join("tests/driver/node/node_modules/snowflake-sdk");
    assert!(
        modules.exists(),
        "{} not found: run `bash tests/run.sh`, which installs the Node driver with npm ci",
        modules.display()
    );
    node
}

/// The Node driver running `tests/driver/node/query.js` through a gateway.
struct NodeRun {
    child: Child,
    queries: usize,
    _logs: tempfile::TempDir,
}

impl NodeRun {
    /// Starts the queries through `port`.
    fn start(port: u16, queries: &[&str]) -> NodeRun {
        let steps: Vec<Step> = queries.iter().map(|&query| Step::Query(query)).collect();
        NodeRun::start_steps(port, &steps)
    }

    /// Starts the queries and pauses through `port`.
    fn start_steps(port: u16, steps: &[Step]) -> NodeRun {
        let logs = tempfile::tempdir().unwrap();
        let mut command = Command::new(node());
        command.arg(root().join("tests/driver/node/query.js")).args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            &agent_token(json!({})),
        ]);
        for step in steps {
            match step {
                Step::Query(query) => command.args(["--query", query]),
                Step::Pause(pause) => command.args(["--pause", &pause.as_millis().to_string()]),
            };
        }
        let child = command
            .current_dir(logs.path())
            .env("SNOWGATE_NODE_LOG_DIR", logs.path())
            .env("NODE_NO_WARNINGS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (Node.js 20 or later; SNOWGATE_TEST_NODE names it): {e}"));
        let queries = steps.iter().filter(|step| matches!(step, Step::Query(_))).count();
        NodeRun { child, queries, _logs: logs }
    }

    /// One result (rows or error) per query.
    fn results(self) -> Vec<Value> {
        let output = self.child.wait_with_output().unwrap();
        assert!(output.status.success(), "the Node driver script failed");
        let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(results.len(), self.queries);
        results
    }
}

/// What the Node script does next: run a query, or wait.
enum Step<'q> {
    Query(&'q str),
    Pause(Duration),
}

/// Runs the queries through `port`: one result (rows or error) per query.
fn run_node(port: u16, queries: &[&str]) -> Vec<Value> {
    NodeRun::start(port, queries).results()
}

#[test]
fn node_driver_gets_every_chunk_masked_through_the_gateway() {
    let upstream = double(|_| {});
    let rule = "[[policy.rules]]\nname = \"everything, masked\"";
    assert!(MASKING_POLICY.contains(rule));
    let policy = MASKING_POLICY.replacen(
        rule,
        &format!(
            "[[policy.rules]]\nname = \"no drops\"\ngroups = [\"*\"]\nkinds = [\"drop\"]\naction = \"deny\"\n\
             message = \"Agents may not drop objects.\"\n\n{rule}"
        ),
        1,
    );
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions { policy: Some(policy), ..Default::default() });
    let relay = Relay::start(gateway.addr);
    let results = run_node(
        relay.addr.port(),
        &["select * from chunked_json", "select * from no_such_table", "drop table customers"],
    );

    let raw = chunked_rows();
    let result = &results[0];
    let columns: Vec<&str> = result["columns"].as_array().unwrap().iter().map(|c| c[1].as_str().unwrap()).collect();
    assert_eq!(columns, ["fixed", "text", "text", "text", "text", "fixed", "date"], "{}", result["columns"]);
    let rows = result["rows"].as_array().unwrap_or_else(|| panic!("no rows: {}", results[0]));
    assert_eq!(rows.len(), raw.len(), "every row must arrive");
    for (clear, row) in raw.iter().zip(rows) {
        let context = format!("clear {clear:?}, received {row}");
        let cell = |i: usize| row[i].as_str().unwrap_or_else(|| panic!("column {i} is not a value: {context}"));
        assert_eq!(cell(0), clear[0].as_deref().unwrap(), "{context}");
        assert_eq!(cell(1), clear[1].as_deref().unwrap(), "{context}");
        let email = clear[2].as_deref().unwrap();
        assert_eq!(cell(2), "*".repeat(email.len()), "{context}");
        let card = clear[3].as_deref().unwrap();
        assert_eq!(cell(3), format!("{}{}", "*".repeat(card.len() - 4), &card[card.len() - 4..]), "{context}");
        assert_eq!(row[4], Value::Null, "{context}");
        assert_eq!(cell(5), clear[5].as_deref().unwrap(), "{context}");
        assert_eq!(cell(6), date_from_days(clear[6].as_deref().unwrap().parse().unwrap()), "{context}");
    }

    let error = &results[1]["error"];
    assert_eq!(error["code"], "002003", "{}", results[1]);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Object '*************' does not exist"), "{message}");
    let refusal = &results[2]["error"];
    assert_eq!(refusal["message"], "Agents may not drop objects.", "{}", results[2]);

    // Every chunk came through the gateway, once; nothing raw or secret reached the driver.
    assert_chunks_kept_from_the_agent(&upstream, &relay, ChunkLayout::default().chunk_count);
    assert_eq!(unsealed_tokens(&relay.received()), Vec::<String>::new(), "a Snowflake token reached the driver");
    assert_no_raw_card_or_email(&raw, &relay, gateway);
}

/// The Node driver renews its session through the gateway when the session token expires.
/// (This version says `requestType`, as the other drivers do; older ones said `REQUEST_TYPE`,
/// which `session::login`'s unit tests cover.)
#[test]
fn node_driver_renews_its_session_through_the_gateway() {
    let upstream = double(|c| c.session_validity_secs = 2);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let relay = Relay::start(gateway.addr);
    let steps = [Step::Query("select * from small"), Step::Pause(Duration::from_millis(2500)), Step::Query("select 1")];
    let results = NodeRun::start_steps(relay.addr.port(), &steps).results();
    let small = results[0]["rows"].as_array().unwrap_or_else(|| panic!("no rows: {}", results[0]));
    assert_eq!(small.len(), snowgate_perf::results::SMALL_ROWS);
    assert_eq!(results[1]["rows"], json!([["1"]]), "after the session token expired: {}", results[1]);
    assert!(upstream.stats.renewals() >= 1, "the driver did not renew through the gateway");
    assert_eq!(unsealed_tokens(&relay.received()), Vec::<String>::new(), "a Snowflake token reached the driver");
}

/// A write under a review rule: the Node driver polls the parked statement (`333333` and its
/// `getResultUrl`, each poll held by the gateway) until a reviewer approves, then gets the
/// answer; the write reached the upstream once, after the approval.
#[test]
fn node_driver_waits_for_a_reviewed_write_and_gets_its_answer() {
    let upstream = double(|_| {});
    let gateway =
        TestGateway::start(&upstream.url(), GatewayOptions { policy: Some(review_policy(60)), ..Default::default() });
    let run = NodeRun::start(gateway.addr.port(), &["insert into orders values (1)"]);
    let item = wait_for_pending(&gateway);
    assert_eq!(item["statement_text"], "insert into orders values (1)", "{item}");
    let inserts = || {
        upstream
            .stats
            .recorded(snowgate_perf::EndpointKind::Query)
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("insert into orders"))
            .count()
    };
    // Parked for a while, the driver polling: nothing went upstream.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(inserts(), 0, "the write ran before approval");
    let query_id = item["query_id"].as_str().unwrap();
    decide(&gateway, query_id, "approve", "a Node driver test write");
    let results = run.results();
    assert_eq!(results[0]["rows"], json!([["1"]]), "{}", results[0]);
    assert_eq!(inserts(), 1, "the write did not run exactly once");
}
