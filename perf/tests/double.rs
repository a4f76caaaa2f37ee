//! End-to-end tests of the Snowflake test double over real sockets: logins, renewal,
//! expiry, the query vocabulary, the SQL API, gzip, keep-alive and chunked bodies.

use serde_json::{Value, json};
use snowgate::http::Method;
use snowgate_perf::client::{Client, ClientResponse};
use snowgate_perf::keypair::{mint_keypair_jwt, mint_keypair_jwt_at};
use snowgate_perf::results::{MEDIUM_ROWS, SMALL_ROWS, luhn_valid};
use snowgate_perf::test_keys::{OTHER_PRIVATE_KEY_PEM, TEST_PRIVATE_KEY_PEM, TEST_PUBLIC_KEY_PEM};
use snowgate_perf::{EndpointKind, RunningUpstream, UpstreamConfig};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery staple";

fn config() -> UpstreamConfig {
    UpstreamConfig {
        password: Some(PASSWORD.into()),
        public_key_pem: Some(TEST_PUBLIC_KEY_PEM.into()),
        polls_before_ready: 2,
        ..UpstreamConfig::default()
    }
}

fn start() -> RunningUpstream {
    snowgate_perf::start(config()).expect("the double starts")
}

fn auth(token: &str) -> String {
    format!("Snowflake Token=\"{token}\"")
}

fn password_login_body(password: &str) -> Value {
    json!({"data": {
        "CLIENT_APP_ID": "PythonConnector",
        "CLIENT_APP_VERSION": 3,
        "ACCOUNT_NAME": "testacct",
        "LOGIN_NAME": "snowgate",
        "PASSWORD": password,
        "CLIENT_ENVIRONMENT": {"APPLICATION": "test"},
        "SESSION_PARAMETERS": {"QUERY_TAG": "t"},
    }})
}

/// Logs in with the password and returns (session token, master token).
fn login(client: &mut Client) -> (String, String) {
    let answer = client
        .post_json("/session/v1/login-request?request_id=1", &[], &password_login_body(PASSWORD), true)
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let data = &answer["data"];
    (data["token"].as_str().unwrap().to_owned(), data["masterToken"].as_str().unwrap().to_owned())
}

fn query(client: &mut Client, token: &str, body: Value) -> Value {
    let response = client
        .post_json(
            &format!("/queries/v1/query-request?requestId={}", uuid::Uuid::new_v4()),
            &[("authorization", &auth(token))],
            &body,
            true,
        )
        .unwrap();
    assert_eq!(response.status, 200);
    response.json().unwrap()
}

fn sql(client: &mut Client, token: &str, text: &str) -> Value {
    query(client, token, json!({"sqlText": text, "asyncExec": false, "sequenceId": 1, "isInternal": false}))
}

fn renew(client: &mut Client, master: &str, old_session: &str) -> Value {
    client
        .post_json(
            "/session/token-request?requestId=1",
            &[("authorization", &auth(master))],
            &json!({"oldSessionToken": old_session, "requestType": "RENEW"}),
            false,
        )
        .unwrap()
        .json()
        .unwrap()
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 4)
}

#[test]
fn nothing_is_received_before_the_first_request() {
    let double = start();
    assert_eq!(double.stats.bytes_received(), 0);
    assert_eq!(double.stats.requests_total(), 0);
    let mut client = Client::connect(double.addr).unwrap();
    client.get("/nowhere", &[]).unwrap();
    assert!(double.stats.bytes_received() > 0);
}

#[test]
fn password_login_issues_prefixed_tokens_and_echoes_session_info() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let answer = client
        .post_json(
            "/session/v1/login-request?request_id=1&databaseName=SALES%20DB&schemaName=PUBLIC&warehouse=WH&roleName=ANALYST",
            &[("authorization", "Snowflake Token=\"None\"")],
            &password_login_body(PASSWORD),
            false,
        )
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let data = &answer["data"];
    assert!(data["token"].as_str().unwrap().starts_with("SFTOKEN-session-"));
    assert!(data["masterToken"].as_str().unwrap().starts_with("SFTOKEN-master-"));
    assert_eq!(data["validityInSeconds"], 3600);
    assert_eq!(data["masterValidityInSeconds"], 14400);
    assert!(data["sessionId"].is_i64());
    assert_eq!(
        data["sessionInfo"],
        json!({"databaseName": "SALES DB", "schemaName": "PUBLIC", "warehouseName": "WH", "roleName": "ANALYST"})
    );
    let names: Vec<&str> = data["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"TIMEZONE") && names.contains(&"CLIENT_SESSION_KEEP_ALIVE_HEARTBEAT_FREQUENCY"));
    assert_eq!(double.stats.logins(), 1);

    // The login body is logged as received, unknown fields included.
    let logged = double.stats.last(EndpointKind::Login).unwrap().body_json().unwrap();
    assert_eq!(logged["data"]["SESSION_PARAMETERS"]["QUERY_TAG"], "t");
    assert_eq!(logged["data"]["CLIENT_APP_VERSION"], 3);
}

#[test]
fn wrong_credentials_are_refused_with_390100() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let mut wrong_account = password_login_body(PASSWORD);
    wrong_account["data"]["ACCOUNT_NAME"] = json!("otheracct");
    for body in [password_login_body("wrong"), wrong_account, json!({"data": {}})] {
        let answer = client.post_json("/session/v1/login-request", &[], &body, false).unwrap();
        assert_eq!(answer.status, 200);
        let answer = answer.json().unwrap();
        assert_eq!(answer["success"], false);
        assert_eq!(answer["code"], "390100");
        assert_eq!(answer["message"], "Incorrect username or password was specified.");
        assert!(answer["data"].is_object());
    }
    assert_eq!((double.stats.logins(), double.stats.login_refusals()), (0, 3));
}

#[test]
fn keypair_jwt_login_accepts_the_trusted_key_only() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let login_with = |client: &mut Client, authenticator: &str, token: &str| {
        let body = json!({"data": {
            "ACCOUNT_NAME": "TESTACCT", "LOGIN_NAME": "SNOWGATE",
            "AUTHENTICATOR": authenticator, "TOKEN": token,
        }});
        client.post_json("/session/v1/login-request", &[], &body, true).unwrap().json().unwrap()
    };
    let good = mint_keypair_jwt(TEST_PRIVATE_KEY_PEM, "testacct", "snowgate", 60).unwrap();
    assert_eq!(login_with(&mut client, "SNOWFLAKE_JWT", &good)["success"], true);

    let untrusted = mint_keypair_jwt(OTHER_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60).unwrap();
    assert_eq!(login_with(&mut client, "SNOWFLAKE_JWT", &untrusted)["code"], "390100");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = mint_keypair_jwt_at(TEST_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", now - 600, now - 300).unwrap();
    assert_eq!(login_with(&mut client, "SNOWFLAKE_JWT", &expired)["code"], "390100");

    // An agent's OIDC token forwarded as OAuth is refused, and the log shows it arrived.
    let oidc = "eyJhbGciOiJSUzI1NiJ9.agent-oidc-canary.sig";
    assert_eq!(login_with(&mut client, "OAUTH", oidc)["code"], "390303");
    assert!(double.stats.saw(oidc.as_bytes()));
    assert!(!double.stats.saw(b"never-sent-canary"));
    assert!(double.stats.recorded(EndpointKind::Login).iter().all(|r| r.body_was_gzip));
}

#[test]
fn renewal_replaces_the_session_token() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, master) = login(&mut client);

    let answer = renew(&mut client, &master, "not-the-current-token");
    assert_eq!(answer["code"], "390111");
    let answer = renew(&mut client, &session, &session);
    assert_eq!(answer["code"], "390115", "a session token is not a master token");

    let answer = renew(&mut client, &master, &session);
    assert_eq!(answer["success"], true, "{answer}");
    let data = &answer["data"];
    let new_session = data["sessionToken"].as_str().unwrap();
    assert!(new_session.starts_with("SFTOKEN-session-"));
    assert_ne!(new_session, session);
    assert_eq!(data["masterToken"], master.as_str());
    assert_eq!(data["validityInSecondsST"], 3600);
    assert!(data["validityInSecondsMT"].as_u64().unwrap() > 14_000);
    assert!(data["sessionId"].is_i64());
    assert_eq!(double.stats.renewals(), 1);

    assert_eq!(sql(&mut client, &session, "select 1")["code"], "390104");
    assert_eq!(sql(&mut client, new_session, "select 1")["success"], true);
}

#[test]
fn expired_session_answers_390112_and_renewal_recovers() {
    let double = snowgate_perf::start(UpstreamConfig { session_validity_secs: 1, ..config() }).unwrap();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, master) = login(&mut client);
    assert_eq!(sql(&mut client, &session, "select 1")["success"], true);
    std::thread::sleep(Duration::from_millis(1100));
    let expired = sql(&mut client, &session, "select 1");
    assert_eq!((expired["success"].as_bool(), expired["code"].as_str()), (Some(false), Some("390112")));
    assert_eq!(expired["message"], "Session token expired.");
    let renewed = renew(&mut client, &master, &session);
    let new_session = renewed["data"]["sessionToken"].as_str().unwrap();
    assert_eq!(sql(&mut client, new_session, "select 1")["success"], true);

    // The hooks do the same without sleeping, for master tokens too.
    double.upstream().expire_master_tokens();
    assert_eq!(renew(&mut client, &master, new_session)["code"], "390114");
    assert_eq!(sql(&mut client, "SFTOKEN-session-0-unknown", "select 1")["code"], "390104");
}

#[test]
fn small_and_medium_results() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);

    let small = sql(&mut client, &session, "SELECT * FROM small");
    let data = &small["data"];
    assert_eq!(small["success"], true);
    assert_eq!(data["queryResultFormat"], "json");
    assert_eq!(data["total"], SMALL_ROWS);
    assert_eq!(data["returned"], SMALL_ROWS);
    let columns: Vec<&str> = data["rowtype"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["ID", "NAME", "EMAIL", "CARD", "SSN", "AMOUNT", "CREATED"]);
    for key in
        ["database", "schema", "table", "type", "scale", "precision", "length", "byteLength", "nullable", "collation"]
    {
        assert!(data["rowtype"][0].get(key).is_some(), "rowtype lacks {key}");
    }
    let rows = data["rowset"].as_array().unwrap();
    assert_eq!(rows.len(), SMALL_ROWS);
    for row in rows {
        assert!(row[2].as_str().unwrap().contains('@'));
        assert!(luhn_valid(row[3].as_str().unwrap()));
    }
    let first_id = data["queryId"].as_str().unwrap().to_owned();
    assert!(is_uuid(&first_id));

    let again = sql(&mut client, &session, "select * from small");
    assert_ne!(again["data"]["queryId"].as_str().unwrap(), first_id, "query ids are unique");
    assert_eq!(again["data"]["rowset"], small["data"]["rowset"], "rows are deterministic");

    let medium = client
        .post_json(
            "/queries/v1/query-request?requestId=2",
            &[("authorization", &auth(&session))],
            &json!({"sqlText": "select * from medium"}),
            false,
        )
        .unwrap();
    assert!((15_000..22_000).contains(&medium.body.len()), "MEDIUM is {} bytes", medium.body.len());
    assert_eq!(medium.json().unwrap()["data"]["rowset"].as_array().unwrap().len(), MEDIUM_ROWS);
}

#[test]
fn sql_errors_and_the_one_row_answer() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);

    let error = sql(&mut client, &session, "select * from no_such_table");
    assert_eq!(error["success"], false);
    assert_eq!(error["code"], "002003");
    assert_eq!(error["message"], "SQL compilation error:\nObject 'NO_SUCH_TABLE' does not exist or not authorized.");
    assert_eq!(error["data"]["sqlState"], "42S02");
    assert!(is_uuid(error["data"]["queryId"].as_str().unwrap()));

    let one = sql(&mut client, &session, "select current_version()");
    assert_eq!(one["data"]["rowtype"][0]["name"], "1");
    assert_eq!(one["data"]["rowtype"][0]["type"], "fixed");
    assert_eq!(one["data"]["rowset"], json!([["1"]]));

    let bound = query(
        &mut client,
        &session,
        json!({"sqlText": "select ?, ?", "bindings": {"1": {"type": "FIXED", "value": "42"}, "2": {"type": "TEXT", "value": "hello"}}}),
    );
    assert_eq!(bound["data"]["rowset"], json!([["42", "hello"]]));
    assert_eq!(bound["data"]["rowtype"][1]["type"], "text");
}

#[test]
fn slow_queries_poll_until_ready() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);
    let token = auth(&session);

    let first = sql(&mut client, &session, "select * from small where slow = 1");
    assert_eq!((first["success"].as_bool(), first["code"].as_str()), (Some(true), Some("333333")));
    let qid = first["data"]["queryId"].as_str().unwrap().to_owned();
    let url = first["data"]["getResultUrl"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("/queries/{qid}/result"));

    let status = |client: &mut Client| {
        let answer = client.get(&format!("/monitoring/queries/{qid}"), &[("authorization", &token)]).unwrap();
        answer.json().unwrap()["data"]["queries"][0]["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status(&mut client), "RUNNING");
    for _ in 0..2 {
        let poll = client.get(&url, &[("authorization", &token)]).unwrap().json().unwrap();
        assert_eq!(poll["code"], "333333");
    }
    let done = client.get(&url, &[("authorization", &token)]).unwrap().json().unwrap();
    assert_eq!(done["success"], true);
    assert_eq!(done["data"]["queryId"], qid.as_str());
    assert_eq!(done["data"]["rowset"].as_array().unwrap().len(), SMALL_ROWS);
    assert_eq!(status(&mut client), "SUCCESS");
    assert_eq!(double.stats.requests(EndpointKind::QueryResult), 3);
}

#[test]
fn async_queries_answer_333334_then_the_result() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);
    let token = auth(&session);

    let submitted = query(&mut client, &session, json!({"sqlText": "select * from medium", "asyncExec": true}));
    assert_eq!(submitted["code"], "333334");
    let url = submitted["data"]["getResultUrl"].as_str().unwrap();
    let result = client.get(url, &[("authorization", &token)]).unwrap().json().unwrap();
    assert_eq!(result["data"]["total"], MEDIUM_ROWS);
    assert_eq!(result["data"]["queryId"], submitted["data"]["queryId"]);

    let unknown = client
        .get(&format!("/queries/{}/result", uuid::Uuid::new_v4()), &[("authorization", &token)])
        .unwrap()
        .json()
        .unwrap();
    assert_eq!((unknown["success"].as_bool(), unknown["code"].as_str()), (Some(false), Some("000605")));
    let no_token = client.get(url, &[]).unwrap().json().unwrap();
    assert_eq!(no_token["code"], "390104");
}

#[test]
fn session_housekeeping_endpoints() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);
    let token = auth(&session);
    let headers = [("authorization", token.as_str())];
    let ok = |r: ClientResponse| r.status == 200 && r.json().unwrap()["success"] == true;
    assert!(ok(client.request(Method::Post, "/session/heartbeat?requestId=1", &headers, b"").unwrap()));
    assert!(ok(client.post_json("/queries/v1/abort-request", &headers, &json!({"requestId": "x"}), true).unwrap()));
    assert!(ok(client.post_json("/telemetry/send", &headers, &json!({"logs": []}), true).unwrap()));
    assert!(ok(client.post_json("/session?delete=true", &headers, &json!({}), false).unwrap()));
    assert_eq!(double.upstream().session_count(), 0);
    assert_eq!(sql(&mut client, &session, "select 1")["code"], "390104");
    for kind in [EndpointKind::Heartbeat, EndpointKind::Abort, EndpointKind::Telemetry, EndpointKind::Logout] {
        assert_eq!(double.stats.requests(kind), 1, "{kind:?}");
    }
}

fn bearer(jwt: &str) -> String {
    format!("Bearer {jwt}")
}

fn statement(client: &mut Client, jwt: &str, target: &str, text: &str) -> ClientResponse {
    let auth = bearer(jwt);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-snowflake-authorization-token-type", "KEYPAIR_JWT"),
        ("user-agent", "snowgate-tests/1"),
    ];
    let body = json!({"statement": text, "timeout": 60, "database": "TESTDB", "schema": "PUBLIC", "warehouse": "WH", "role": "R"});
    client.post_json(target, &headers, &body, false).unwrap()
}

#[test]
fn sql_api_with_a_keypair_jwt() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let jwt = mint_keypair_jwt(TEST_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60).unwrap();
    let auth = bearer(&jwt);
    let headers = [("authorization", auth.as_str()), ("x-snowflake-authorization-token-type", "KEYPAIR_JWT")];

    let small = statement(&mut client, &jwt, "/api/v2/statements?requestId=1", "select * from small");
    assert_eq!(small.status, 200);
    let small = small.json().unwrap();
    assert_eq!((small["code"].as_str(), small["sqlState"].as_str()), (Some("090001"), Some("00000")));
    assert_eq!(small["message"], "Statement executed successfully.");
    let handle = small["statementHandle"].as_str().unwrap().to_owned();
    assert!(is_uuid(&handle));
    assert_eq!(small["statementStatusUrl"], format!("/api/v2/statements/{handle}"));
    assert_eq!(small["resultSetMetaData"]["format"], "jsonv2");
    assert_eq!(small["resultSetMetaData"]["numRows"], SMALL_ROWS);
    assert_eq!(small["data"].as_array().unwrap().len(), SMALL_ROWS);
    assert!(small["createdOn"].is_u64());
    let again = client.get(&format!("/api/v2/statements/{handle}"), &headers).unwrap().json().unwrap();
    assert_eq!(again["data"], small["data"]);

    // MEDIUM comes in two partitions; the second is fetched separately.
    let medium = statement(&mut client, &jwt, "/api/v2/statements", "select * from medium").json().unwrap();
    let partitions = medium["resultSetMetaData"]["partitionInfo"].as_array().unwrap().clone();
    assert_eq!(partitions.len(), 2);
    let handle = medium["statementHandle"].as_str().unwrap();
    let second = client.get(&format!("/api/v2/statements/{handle}?partition=1"), &headers).unwrap().json().unwrap();
    let rows = medium["data"].as_array().unwrap().len() + second["data"].as_array().unwrap().len();
    assert_eq!(rows, MEDIUM_ROWS);
    assert_eq!(second["data"].as_array().unwrap().len() as u64, partitions[1]["rowCount"].as_u64().unwrap());
    let beyond = client.get(&format!("/api/v2/statements/{handle}?partition=2"), &headers).unwrap();
    assert_eq!(beyond.status, 422);

    let error = statement(&mut client, &jwt, "/api/v2/statements", "select * from no_such_table");
    assert_eq!(error.status, 422);
    assert_eq!(error.json().unwrap()["code"], "002003");

    // Asynchronous: 202 first, then the result; cancel answers 000604.
    let pending = statement(&mut client, &jwt, "/api/v2/statements?async=true", "select 1");
    assert_eq!(pending.status, 202);
    let pending = pending.json().unwrap();
    assert_eq!(pending["code"], "333334");
    let url = pending["statementStatusUrl"].as_str().unwrap();
    let done = client.get(url, &headers).unwrap();
    assert_eq!(done.status, 200);
    assert_eq!(done.json().unwrap()["data"], json!([["1"]]));
    let handle = pending["statementHandle"].as_str().unwrap();
    let cancel = client.request(Method::Post, &format!("/api/v2/statements/{handle}/cancel"), &headers, b"").unwrap();
    assert_eq!(cancel.status, 200);
    assert_eq!(cancel.json().unwrap()["code"], "000604");

    // Slow: 202 for polls_before_ready polls.
    let slow = statement(&mut client, &jwt, "/api/v2/statements", "select 'slow'");
    assert_eq!(slow.status, 202);
    let url = slow.json().unwrap()["statementStatusUrl"].as_str().unwrap().to_owned();
    assert_eq!(client.get(&url, &headers).unwrap().status, 202);
    assert_eq!(client.get(&url, &headers).unwrap().status, 202);
    assert_eq!(client.get(&url, &headers).unwrap().status, 200);
    assert_eq!(double.stats.requests(EndpointKind::SqlApiSubmit), 5);
}

#[test]
fn sql_api_refuses_a_bad_jwt_with_401() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let untrusted = mint_keypair_jwt(OTHER_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60).unwrap();
    let wrong_user = mint_keypair_jwt(TEST_PRIVATE_KEY_PEM, "TESTACCT", "INTRUDER", 60).unwrap();
    for jwt in [untrusted.as_str(), wrong_user.as_str(), "garbage"] {
        let refused = statement(&mut client, jwt, "/api/v2/statements", "select 1");
        assert_eq!(refused.status, 401);
        assert_eq!(refused.json().unwrap(), json!({"code": "390144", "message": "JWT token is invalid."}));
    }
    let unknown = client.get(&format!("/api/v2/statements/{}", uuid::Uuid::new_v4()), &[]).unwrap();
    assert_eq!(unknown.status, 401);
}

#[test]
fn gzip_request_bodies_are_logged_decompressed_and_responses_gzipped_on_request() {
    let double = snowgate_perf::start(UpstreamConfig { gzip_responses: true, ..config() }).unwrap();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);
    let query = double.stats.last(EndpointKind::Login).unwrap();
    assert!(query.body_was_gzip);
    assert_eq!(query.header("content-encoding"), Some("gzip"));

    let token = auth(&session);
    let plain = client
        .post_json("/queries/v1/query-request", &[("authorization", &token)], &json!({"sqlText": "select 1"}), true)
        .unwrap();
    assert!(!plain.was_gzip, "no Accept-Encoding, no gzip");
    let zipped = client
        .post_json(
            "/queries/v1/query-request",
            &[("authorization", &token), ("accept-encoding", "gzip, deflate")],
            &json!({"sqlText": "select * from medium"}),
            true,
        )
        .unwrap();
    assert!(zipped.was_gzip);
    assert_eq!(zipped.json().unwrap()["data"]["total"], MEDIUM_ROWS);
    let logged = double.stats.last(EndpointKind::Query).unwrap();
    assert_eq!(logged.body_json().unwrap()["sqlText"], "select * from medium");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (session, _) = login(&mut client);
    for _ in 0..3 {
        assert_eq!(sql(&mut client, &session, "select 1")["success"], true);
    }
    assert_eq!(double.stats.connections_accepted(), 1);
    assert_eq!(double.stats.requests_total(), 4);

    // Two pipelined requests in one write are answered in order.
    let token = auth(&session);
    let body = r#"{"sqlText":"select * from small"}"#;
    let one = format!(
        "POST /queries/v1/query-request HTTP/1.1\r\nhost: x\r\nauthorization: {token}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send_raw(format!("{one}{one}").as_bytes()).unwrap();
    for _ in 0..2 {
        let answer = client.read_response(Method::Post).unwrap().json().unwrap();
        assert_eq!(answer["data"]["total"], SMALL_ROWS);
    }
}

#[test]
fn chunked_request_bodies_are_accepted() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let body = password_login_body(PASSWORD).to_string();
    let (a, b) = body.split_at(body.len() / 2);
    let wire = format!(
        "POST /session/v1/login-request HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    client.send_raw(wire.as_bytes()).unwrap();
    let answer = client.read_response(Method::Post).unwrap().json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(double.stats.last(EndpointKind::Login).unwrap().body, body.as_bytes());
}

#[test]
fn unknown_routes_are_404_and_malformed_requests_400() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let missing = client.get("/session/v2/whatever", &[]).unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json().unwrap()["success"], false);

    client.send_raw(b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
    let refused = client.read_response(Method::Post).unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.close);
}

#[test]
fn many_threads_share_one_port() {
    let double = snowgate_perf::start_with(config(), "127.0.0.1:0".parse().unwrap(), 4).unwrap();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let addr = double.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                let (session, _) = login(&mut client);
                for _ in 0..20 {
                    assert_eq!(sql(&mut client, &session, "select * from small")["success"], true);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(double.stats.requests(EndpointKind::Query), 160);
    assert_eq!(double.stats.logins(), 8);
}

#[test]
fn shutdown_closes_open_connections() {
    let double = start();
    let addr = double.addr;
    let mut client = Client::connect(addr).unwrap();
    login(&mut client);
    let started = std::time::Instant::now();
    double.shutdown();
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
    // The idle keep-alive connection was closed by the double: the next exchange fails.
    assert!(client.get("/", &[]).is_err());
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is gone");
}

#[test]
fn the_request_log_is_bounded() {
    let double = snowgate_perf::start(UpstreamConfig { request_log_capacity: 3, ..config() }).unwrap();
    let mut client = Client::connect(double.addr).unwrap();
    for i in 0..5 {
        client.get(&format!("/missing/{i}"), &[]).unwrap();
    }
    let targets: Vec<String> = double.stats.recorded_requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/missing/2", "/missing/3", "/missing/4"]);
    assert_eq!(double.stats.requests(EndpointKind::Other), 5);
}

fn sse_c_headers(key: &str) -> [(&'static str, String); 2] {
    [
        (snowgate_perf::corpus::SSE_C_ALGORITHM_HEADER, "AES256".to_owned()),
        (snowgate_perf::corpus::SSE_C_KEY_HEADER, key.to_owned()),
    ]
}

/// Downloads a chunk from its absolute URL on the double, with `headers`.
fn download(double: &RunningUpstream, url: &str, headers: &[(&str, String)]) -> ClientResponse {
    let prefix = double.url();
    let path = url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{url} does not point at the double {prefix}"));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    Client::connect(double.addr).unwrap().get(path, &headers).unwrap()
}

/// The chunk's bytes inflated, whether or not the double announced the gzip.
fn chunk_plain(response: &ClientResponse) -> Vec<u8> {
    if response.was_gzip {
        response.body.to_vec()
    } else {
        assert!(response.body.starts_with(&[0x1f, 0x8b]), "a chunk without Content-Encoding is still raw gzip");
        snowgate::http::gzip::gunzip_capped(&response.body, 64 << 20).unwrap()
    }
}

fn arrow_batches(bytes: &[u8]) -> Vec<arrow_array::RecordBatch> {
    arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn chunked_json_result_is_several_mb_in_chunks_served_only_under_sse_c() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (token, _) = login(&mut client);
    let answer = sql(&mut client, &token, "select * from chunked_json");
    let data = &answer["data"];
    let layout = snowgate_perf::ChunkLayout::default();
    assert_eq!(data["queryResultFormat"], "json");
    assert_eq!(data["rowset"].as_array().unwrap().len(), layout.first_rows);
    assert_eq!(data["total"], layout.total_rows());
    let qrmk = data["qrmk"].as_str().unwrap();
    assert_eq!(data["chunkHeaders"][snowgate_perf::corpus::SSE_C_KEY_HEADER], qrmk);
    let chunks = data["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());
    let uncompressed: u64 = chunks.iter().map(|c| c["uncompressedSize"].as_u64().unwrap()).sum();
    assert!(uncompressed > 3_000_000, "{uncompressed} bytes in chunks");
    let query_id = data["queryId"].as_str().unwrap();
    assert!(chunks[0]["url"].as_str().unwrap().contains(query_id), "chunk URLs carry the query id");

    let first_url = chunks[0]["url"].as_str().unwrap();
    assert_eq!(download(&double, first_url, &[]).status, 403, "no SSE-C headers");
    assert_eq!(download(&double, first_url, &sse_c_headers("wrong-key")).status, 403, "the wrong key");

    let mut rows = data["rowset"].as_array().unwrap().len();
    let mut seen_encodings = (false, false);
    for chunk in chunks {
        let response = download(&double, chunk["url"].as_str().unwrap(), &sse_c_headers(qrmk));
        assert_eq!(response.status, 200);
        if response.was_gzip {
            seen_encodings.0 = true
        } else {
            seen_encodings.1 = true
        }
        assert_eq!(
            response.body.len() as u64,
            if response.was_gzip {
                chunk["uncompressedSize"].as_u64().unwrap()
            } else {
                chunk["compressedSize"].as_u64().unwrap()
            }
        );
        let plain = chunk_plain(&response);
        assert_eq!(plain.first(), Some(&b'['), "rows without an enclosing bracket start with a row");
        let wrapped: Value = serde_json::from_slice(&[b"[".as_slice(), &plain, b"]"].concat()).unwrap();
        let chunk_rows = wrapped.as_array().unwrap();
        assert_eq!(chunk_rows.len() as u64, chunk["rowCount"].as_u64().unwrap());
        assert!(luhn_valid(chunk_rows[0][3].as_str().unwrap()), "chunk rows carry card numbers");
        rows += chunk_rows.len();
    }
    assert_eq!(seen_encodings, (true, true), "some chunks with Content-Encoding: gzip, some without");
    assert_eq!(rows, layout.total_rows());
    assert_eq!(double.stats.requests(EndpointKind::Chunk), chunks.len() as u64 + 2);
}

#[test]
fn chunked_arrow_result_streams_ipc_chunks_keyed_by_qrmk_alone() {
    let layout = snowgate_perf::ChunkLayout { first_rows: 7, chunk_count: 10, rows_per_chunk: 40 };
    let double = snowgate_perf::start(UpstreamConfig { chunk_layout: layout, ..config() }).unwrap();
    let mut client = Client::connect(double.addr).unwrap();
    let (token, _) = login(&mut client);
    let answer = sql(&mut client, &token, "SELECT * FROM CHUNKED_ARROW");
    let data = &answer["data"];
    assert_eq!(data["queryResultFormat"], "arrow");
    assert!(data.get("chunkHeaders").is_none(), "drivers must build the SSE-C headers from qrmk");
    let first =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data["rowsetBase64"].as_str().unwrap())
            .unwrap();
    assert_eq!(arrow_batches(&first)[0].num_rows(), 7);
    let chunks = data["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 10);
    let qrmk = data["qrmk"].as_str().unwrap();
    for chunk in chunks {
        let response = download(&double, chunk["url"].as_str().unwrap(), &sse_c_headers(qrmk));
        assert_eq!(response.status, 200);
        let batches = arrow_batches(&chunk_plain(&response));
        assert_eq!(batches[0].num_rows(), 40);
        let schema = batches[0].schema();
        assert_eq!(schema.field_with_name("AMOUNT").unwrap().metadata()["scale"], "2");
    }
    let missing =
        download(&double, &chunks[0]["url"].as_str().unwrap().replace("/arrow/0", "/arrow/10"), &sse_c_headers(qrmk));
    assert_eq!(missing.status, 404);
}

#[test]
fn arrow_small_is_an_arrow_result_with_snowflake_metadata() {
    let double = start();
    let mut client = Client::connect(double.addr).unwrap();
    let (token, _) = login(&mut client);
    let data = sql(&mut client, &token, "select * from arrow_small")["data"].clone();
    assert_eq!(data["queryResultFormat"], "arrow");
    assert!(data.get("rowset").is_none());
    assert_eq!(data["rowtype"].as_array().unwrap().len(), 7);
    let stream =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data["rowsetBase64"].as_str().unwrap())
            .unwrap();
    let batches = arrow_batches(&stream);
    assert_eq!(batches[0].num_rows(), SMALL_ROWS);
    let schema = batches[0].schema();
    let card = schema.field_with_name("CARD").unwrap();
    assert_eq!(card.metadata()["logicalType"], "TEXT");
    assert_eq!(card.metadata()["charLength"], "19");
    assert_eq!(schema.field_with_name("ID").unwrap().metadata()["logicalType"], "FIXED");
    let medium = sql(&mut client, &token, "select * from arrow_medium")["data"]["rowsetBase64"].clone();
    let stream = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, medium.as_str().unwrap()).unwrap();
    assert_eq!(arrow_batches(&stream)[0].num_rows(), MEDIUM_ROWS);
}
