//! The session layer end to end over loopback: login with an OIDC token, token swap, queries,
//! renewal, refusals and credential custody, against the Rust Snowflake double.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use snowgate::session::codes;
use snowgate_perf::{EndpointKind, RunningUpstream};

use crate::support::*;

#[test]
fn login_swaps_identity_for_the_gateway_credential_and_seals_tokens() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, master) = login_ok(&mut client);
    assert!(session.starts_with("sg1.") && master.as_deref().is_some_and(|m| m.starts_with("sg1.")));

    // What upstream saw: the gateway's account, user and key-pair JWT; the mapped role; every
    // unknown field kept with its type; no trace of the agent's OIDC token.
    let seen = upstream.stats.recorded(EndpointKind::Login);
    let login = seen.last().expect("upstream saw the login");
    let body = login.body_json().unwrap();
    assert_eq!(body["data"]["ACCOUNT_NAME"], "TESTACCT");
    assert_eq!(body["data"]["LOGIN_NAME"], "SNOWGATE");
    assert_eq!(body["data"]["AUTHENTICATOR"], "SNOWFLAKE_JWT");
    assert_eq!(body["data"]["CLIENT_APP_VERSION"], "3.12.0");
    assert_eq!(body["data"]["SVN_REVISION"], serde_json::Value::Null);
    assert_eq!(body["data"]["CLIENT_ENVIRONMENT"], login_body("x")["data"]["CLIENT_ENVIRONMENT"]);
    assert_eq!(body["data"]["SESSION_PARAMETERS"]["CLIENT_PREFETCH_THREADS"], 4);
    assert!(login.target.contains("roleName=ANALYST") && !login.target.contains("ACCOUNTADMIN"), "{}", login.target);
    assert!(!login.contains(b"agent-7"), "the agent's token reached upstream");

    // A query with the sealed token reaches upstream with the real one.
    let answer = query(&mut client, &session, "select * from small");
    let body = answer.json().unwrap();
    assert_eq!(body["success"], true, "{body}");
    assert!(body["data"]["rowset"].as_array().is_some_and(|rows| !rows.is_empty()));
    let seen = upstream.stats.recorded(EndpointKind::Query);
    let auth = seen.last().unwrap().header("authorization").unwrap().to_owned();
    assert!(auth.contains("SFTOKEN-session-"), "{auth}");
}

#[test]
fn the_agent_never_receives_credentials_or_snowflake_tokens() {
    for credential in [Credential::KeyPair, Credential::Password("CANARY-PASSWORD-5e1d".into())] {
        let password_login = matches!(credential, Credential::Password(_));
        let upstream = double(|c| {
            c.token_prefix = "CANARY-SFTOKEN-8c2b".into();
            c.password = Some("CANARY-PASSWORD-5e1d".into());
            c.session_validity_secs = 1;
        });
        let gateway = TestGateway::start(&upstream.url(), GatewayOptions { credential, ..Default::default() });
        let mut client = gateway.client();
        let mut received = Vec::new();
        let answer = login(&mut client, &agent_token(json!({})));
        received.push(format!("{answer:?}"));
        let body = answer.json().unwrap();
        assert_eq!(body["success"], true, "{body}");
        let session = body["data"]["token"].as_str().unwrap().to_owned();
        let master = body["data"]["masterToken"].as_str().unwrap().to_owned();
        for sql in ["select * from small", "select * from no_such_table", "select 1"] {
            received.push(format!("{:?}", query(&mut client, &session, sql)));
        }
        std::thread::sleep(Duration::from_millis(1100));
        let expired = query(&mut client, &session, "select 1");
        received.push(format!("{expired:?}"));
        let renewal = renew(&mut client, &master, &session);
        received.push(format!("{renewal:?}"));
        let renewed = renewal.json().unwrap()["data"]["sessionToken"].as_str().unwrap().to_owned();
        let heartbeat = client.post_json(
            "/session/heartbeat?requestId=2",
            &[("authorization", &authorization(&renewed))],
            &json!({}),
            false,
        );
        received.push(format!("{:?}", heartbeat.unwrap()));
        let logout =
            client.post_json("/session?delete=true", &[("authorization", &authorization(&renewed))], &json!({}), false);
        received.push(format!("{:?}", logout.unwrap()));
        let dir = gateway.stop();

        let received = received.join("\n");
        let logs = captured_logs();
        let recordings = recording_text(&dir.path().join("recordings"));
        let key_body = snowgate_perf::test_keys::TEST_PRIVATE_KEY_PEM.lines().nth(1).unwrap();
        for (place, text) in [("agent answers", &received), ("logs", &logs), ("recordings", &recordings)] {
            for canary in ["CANARY-SFTOKEN-8c2b", "CANARY-PASSWORD-5e1d", key_body, "SHA256:"] {
                assert!(!text.contains(canary), "{canary} found in {place}");
            }
        }
        assert!(recordings.contains("select * from small"), "the recording holds the statements");
        assert_eq!(upstream.stats.requests(EndpointKind::TokenRequest), 1);
        if password_login {
            let seen = upstream.stats.recorded(EndpointKind::Login);
            assert_eq!(seen.last().unwrap().body_json().unwrap()["data"]["AUTHENTICATOR"], "SNOWFLAKE");
        }
    }
}

#[test]
fn a_sealed_token_is_useless_against_the_upstream_itself() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let (session, _) = login_ok(&mut gateway.client());
    let mut direct = snowgate_perf::client::Client::connect(upstream.addr).unwrap();
    assert_refused(&query(&mut direct, &session, "select 1"), "390104");
}

#[test]
fn expired_sessions_renew_through_the_master_token() {
    let upstream = double(|c| c.session_validity_secs = 1);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, master) = login_ok(&mut client);
    let master = master.unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    // The gateway itself says the session expired: drivers renew on 390112.
    assert_refused(&query(&mut client, &session, "select 1"), "390112");
    let renewal = renew(&mut client, &master, &session).json().unwrap();
    assert_eq!(renewal["success"], true, "{renewal}");
    let renewed = renewal["data"]["sessionToken"].as_str().unwrap();
    assert!(renewed.starts_with("sg1.") && renewal["data"]["masterToken"].as_str().unwrap().starts_with("sg1."));
    assert_eq!(query(&mut client, renewed, "select 1").json().unwrap()["success"], true);

    // The master token cannot stand in for a session token, nor the reverse.
    assert_refused(&query(&mut client, &master, "select 1"), "390104");
    let swapped = renew(&mut client, renewed, renewed);
    assert_refused(&swapped, "390115");
}

#[test]
fn a_session_ends_when_the_agents_oidc_token_expires() {
    // Snowflake's tokens would last an hour and four; the agent's OIDC token lasts 4 seconds
    // (no clock skew allowed here). Without the cap the session would outlive it.
    let (upstream, gateway) = short_lived_identity_gateway();
    let mut client = gateway.client();
    let exp = now_unix() + 4;
    let answer = login(&mut client, &agent_token(json!({ "exp": exp }))).json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let session = answer["data"]["token"].as_str().unwrap().to_owned();
    let master = answer["data"]["masterToken"].as_str().unwrap().to_owned();
    assert_eq!(query(&mut client, &session, "select 1").json().unwrap()["success"], true);
    let queries = upstream.stats.requests(EndpointKind::Query);

    wait_past(exp);
    // Past the identity's end: the session has expired, and renewing it asks for a new login.
    assert_refused(&query(&mut client, &session, "select 1"), "390112");
    let renewal = renew(&mut client, &master, &session);
    assert_refused(&renewal, "390114");
    assert_eq!(upstream.stats.requests(EndpointKind::Query), queries, "a query of the expired session ran");
    assert_eq!(upstream.stats.requests(EndpointKind::TokenRequest), 0, "the expired session was renewed upstream");

    // A new login with a fresh token is checked afresh and works.
    let (fresh, _) = login_ok(&mut client);
    assert_eq!(query(&mut client, &fresh, "select 1").json().unwrap()["success"], true);
}

/// A gateway (and its upstream) whose agents' tokens are checked without clock skew, for
/// sessions that end with a short-lived identity.
fn short_lived_identity_gateway() -> (RunningUpstream, TestGateway) {
    let upstream = double(|_| {});
    let gateway =
        TestGateway::start(&upstream.url(), GatewayOptions { jwks: Some(jwks_without_skew()), ..Default::default() });
    (upstream, gateway)
}

fn refused_login(token: &str, code: &str) {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let answer = login(&mut gateway.client(), token);
    assert_refused(&answer, code);
    assert_eq!(upstream.stats.requests_total(), 0, "a refused login reached upstream");
}

fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

#[test]
fn refuses_a_login_without_a_token() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut body = login_body("x");
    body["data"].as_object_mut().unwrap().remove("TOKEN");
    let answer = gateway.client().post_json(LOGIN_TARGET, &[], &body, true).unwrap();
    assert_refused(&answer, "390303");
    let mut password_login = login_body("x");
    password_login["data"]["AUTHENTICATOR"] = json!("SNOWFLAKE");
    password_login["data"]["PASSWORD"] = json!("guess");
    assert_refused(&gateway.client().post_json(LOGIN_TARGET, &[], &password_login, true).unwrap(), "260003");
    assert_eq!(upstream.stats.requests_total(), 0);
}

#[test]
fn refuses_an_expired_token() {
    let now = now_unix();
    refused_login(&agent_token(json!({"exp": now - 120, "iat": now - 720, "nbf": now - 720})), "390318");
}

#[test]
fn refuses_a_token_not_yet_valid() {
    refused_login(&agent_token(json!({"nbf": now_unix() + 600})), "390303");
}

#[test]
fn refuses_a_wrong_audience() {
    refused_login(&agent_token(json!({"aud": "someone-else"})), "390303");
}

#[test]
fn refuses_a_wrong_issuer() {
    refused_login(&agent_token(json!({"iss": "https://evil.example"})), "390303");
}

#[test]
fn refuses_alg_none() {
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent-7", "exp": now_unix() + 600});
    for alg in ["none", "None", "NONE"] {
        refused_login(&unsigned(json!({"alg": alg, "typ": "JWT", "kid": "key-a"}), claims.clone()), "390303");
    }
}

#[test]
fn refuses_hs256_keyed_with_the_rsa_public_key() {
    let public_pem = std::fs::read(key_path("idp-a.pub.pem")).unwrap();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent-7", "exp": now_unix() + 600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("key-a".into());
    let token = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(&public_pem)).unwrap();
    refused_login(&token, "390303");
}

#[test]
fn refuses_an_unknown_kid() {
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent-7", "exp": now_unix() + 600});
    refused_login(&sign_rs256("idp-b.pem", Some("key-unknown"), &claims), "390303");
    // Key b claiming key a's kid does not verify either.
    refused_login(&sign_rs256("idp-b.pem", Some("key-a"), &claims), "390303");
}

#[test]
fn refuses_an_exp_that_is_a_string() {
    refused_login(&agent_token(json!({"exp": (now_unix() + 600).to_string()})), "390303");
}

#[test]
fn refuses_requests_without_a_token_or_with_a_forged_one() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let logins = upstream.stats.requests_total();

    let no_token = client.post_json(QUERY_TARGET, &[], &json!({"sqlText": "select 1"}), false).unwrap();
    assert_refused(&no_token, "390103");
    let none_token = client
        .post_json(
            QUERY_TARGET,
            &[("authorization", "Snowflake Token=\"None\"")],
            &json!({"sqlText": "select 1"}),
            false,
        )
        .unwrap();
    assert_refused(&none_token, "390103");

    let mut tampered = session.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    assert_refused(&query(&mut client, std::str::from_utf8(&tampered).unwrap(), "select 1"), "390104");

    // A token sealed under another key (another gateway's) is foreign here.
    let foreign_sealer = snowgate::session::token::Sealer::new(&[vec![0x42; 32]]).unwrap();
    let foreign = foreign_sealer.seal(
        snowgate::session::token::TokenKind::Session,
        &snowgate::session::token::TokenClaims {
            upstream_token: "SFTOKEN-session-1".into(),
            sub: "agent-7".into(),
            groups: vec!["admins".into()],
            role: "SYSADMIN".into(),
            session_id: Some(1),
            expires_at_unix_ms: (now_unix() + 600) * 1000,
            identity_expires_at_unix_ms: (now_unix() + 600) * 1000,
        },
    );
    assert_refused(&query(&mut client, &foreign, "select 1"), "390104");
    assert_refused(&query(&mut client, "SFTOKEN-session-1-guess", "select 1"), "390104");
    assert_refused(&query(&mut client, &agent_token(json!({})), "select 1"), "390104");
    assert_eq!(upstream.stats.requests_total(), logins, "a refused request reached upstream");
    // The session still works after all that.
    assert_eq!(query(&mut client, &session, "select 1").json().unwrap()["success"], true);
}

#[test]
fn refuses_bad_input_with_clear_errors_and_keeps_serving() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let auth = authorization(&session);
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8]);
    let cases: [Case; 4] = [
        (&[], b"not json"),
        (&[], br#"{"sqlText": 42}"#),
        (&[("content-encoding", "gzip")], b"\x1f\x8b\x08\x00broken"),
        (&[("content-encoding", "br")], b"{}"),
    ];
    for (extra, body) in cases {
        let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        headers.extend_from_slice(extra);
        let answer = client.request(snowgate::http::Method::Post, QUERY_TARGET, &headers, body).unwrap();
        assert_refused(&answer, "260001");
    }
    assert_refused(&login(&mut client, "not-a-jwt"), "390303");
    let unknown = client.get("/console/login", &[]).unwrap();
    assert_eq!(unknown.status, 404);
    assert_eq!(query(&mut client, &session, "select 1").json().unwrap()["success"], true);
}

#[test]
fn query_flows_pass_through_polling_async_and_errors() {
    let upstream = double(|c| c.gzip_responses = true);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let auth = authorization(&session);

    let error = query(&mut client, &session, "select * from no_such_table").json().unwrap();
    assert_eq!((error["success"].clone(), error["code"].clone()), (json!(false), json!("002003")));
    assert!(error["message"].as_str().unwrap().contains("NO_SUCH_TABLE"));

    let slow = query(&mut client, &session, "select slow").json().unwrap();
    assert_eq!(slow["code"], "333333", "{slow}");
    let url = slow["data"]["getResultUrl"].as_str().unwrap().to_owned();
    let mut polls = 0;
    let result = loop {
        let poll = client.get(&url, &[("authorization", &auth), ("accept-encoding", "gzip")]).unwrap();
        assert!(!poll.was_gzip, "the gateway answers inflated bodies");
        let body = poll.json().unwrap();
        if body["code"] != "333333" {
            break body;
        }
        polls += 1;
        assert!(polls < 10);
    };
    assert_eq!(result["success"], true, "{result}");

    let body = json!({"sqlText": "select 1", "asyncExec": true});
    let asynchronous =
        client.post_json(QUERY_TARGET, &[("authorization", &auth)], &body, true).unwrap().json().unwrap();
    assert_eq!(asynchronous["code"], "333334");
    let qid = asynchronous["data"]["queryId"].as_str().unwrap().to_owned();
    let status =
        client.get(&format!("/monitoring/queries/{qid}"), &[("authorization", &auth)]).unwrap().json().unwrap();
    assert_eq!(status["data"]["queries"][0]["status"], "SUCCESS", "{status}");
    let result = client.get(&format!("/queries/{qid}/result"), &[("authorization", &auth)]).unwrap().json().unwrap();
    assert_eq!(result["success"], true, "{result}");

    let abort = client
        .post_json(
            &format!("/queries/{qid}/abort-request"),
            &[("authorization", &auth)],
            &json!({"requestId": "1"}),
            false,
        )
        .unwrap();
    assert_eq!(abort.json().unwrap()["success"], true);
    // The Python driver's cancel repeats the statement's text, which may be as long as a
    // statement (a multi-row INSERT over the control bodies' 256 KiB).
    let long = json!({"sqlText": format!("insert into t values {}", "(1),".repeat(80_000)), "requestId": "2"});
    let abort = client.post_json("/queries/v1/abort-request", &[("authorization", &auth)], &long, false).unwrap();
    assert_eq!(abort.status, 200);
    assert_eq!(abort.json().unwrap()["success"], true);
    let telemetry =
        client.post_json("/telemetry/send", &[("authorization", &auth)], &json!({"logs": []}), true).unwrap();
    assert_eq!(telemetry.json().unwrap()["success"], true);
    let heartbeat =
        client.post_json("/session/heartbeat?requestId=9", &[("authorization", &auth)], &json!({}), false).unwrap();
    assert_eq!(heartbeat.json().unwrap()["success"], true);
    let logout = client.post_json("/session?delete=true", &[("authorization", &auth)], &json!({}), false).unwrap();
    assert_eq!(logout.json().unwrap()["success"], true);
    // After logout the gateway refuses the session itself (and upstream forgot it).
    assert_refused(&query(&mut client, &session, "select 1"), "390104");
}

#[test]
fn bindings_reach_upstream_and_the_recording() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let body = json!({"sqlText": "select ?", "bindings": {"1": {"type": "TEXT", "value": "bound-value-31"}}});
    let answer = client
        .post_json(
            QUERY_TARGET,
            &[("authorization", &authorization(&session)), ("x-agent-context", "trace=abc")],
            &body,
            true,
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&answer.body).contains("bound-value-31"));
    let dir = gateway.stop();
    let records = read_records(&dir.path().join("recordings"));
    let (index, frame) = records
        .iter()
        .find_map(|r| match &r.frame {
            snowgate::record::Frame::Request(q) if q.endpoint == "query-request" => Some((r.index, q)),
            _ => None,
        })
        .unwrap();
    assert_eq!(frame.statement.as_deref(), Some("select ?"));
    assert!(frame.bindings.as_deref().unwrap().contains("bound-value-31"));
    assert_eq!(frame.agent_context.as_deref(), Some("trace=abc"));
    assert_eq!(frame.principal.sub.as_deref(), Some("agent-7"));
    assert_eq!(frame.principal.role.as_deref(), Some("ANALYST"));
    assert_eq!(frame.request_id.as_deref(), Some("6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44"));
    let answer = response_to(&records, index);
    assert!(answer.query_id.as_deref().is_some_and(|q| q.len() == 36));
}

/// The response record answering the request record at `index`.
fn response_to(records: &[snowgate::record::Record], index: u64) -> &snowgate::record::ResponseFrame {
    records
        .iter()
        .find_map(|r| match &r.frame {
            snowgate::record::Frame::Response(a)
                if a.request.as_ref().and_then(|l| l.record_index()) == Some(index) =>
            {
                Some(a)
            }
            _ => None,
        })
        .unwrap()
}

#[test]
fn sql_api_takes_a_bearer_oidc_token_and_forwards_the_gateway_jwt() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let token = agent_token(json!({}));
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-snowflake-authorization-token-type", "OAUTH"),
        ("user-agent", "test/1"),
    ];
    let body = json!({"statement": "select * from small", "timeout": 60, "role": "ACCOUNTADMIN"});
    let answer = client.post_json("/api/v2/statements?requestId=1", &headers, &body, false).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let result = answer.json().unwrap();
    let handle = result["statementHandle"].as_str().unwrap().to_owned();
    let seen = upstream.stats.recorded(EndpointKind::SqlApiSubmit);
    let request = seen.last().unwrap();
    assert_eq!(request.header("x-snowflake-authorization-token-type"), Some("KEYPAIR_JWT"));
    assert!(!request.contains(token.as_bytes()), "the agent's token reached upstream");
    assert_eq!(request.body_json().unwrap()["role"], "ANALYST");

    let status = client.get(&format!("/api/v2/statements/{handle}?partition=0"), &headers).unwrap();
    assert_eq!(status.status, 200);
    let cancel = client.post_json(&format!("/api/v2/statements/{handle}/cancel"), &headers, &json!({}), false).unwrap();
    assert_eq!(cancel.status, 200);

    let bad = [("authorization", "Bearer not-a-token"), ("x-snowflake-authorization-token-type", "OAUTH")];
    assert_eq!(client.post_json("/api/v2/statements", &bad, &body, false).unwrap().status, 401);
    let keypair_type = [("authorization", bearer.as_str()), ("x-snowflake-authorization-token-type", "KEYPAIR_JWT")];
    assert_eq!(client.post_json("/api/v2/statements", &keypair_type, &body, false).unwrap().status, 401);
    assert_eq!(client.post_json("/api/v2/statements", &[], &body, false).unwrap().status, 401);

    // The submit's answer is recorded as what it was: a success, its code, rows and handle.
    let rows = result["resultSetMetaData"]["numRows"].as_u64().unwrap();
    let dir = gateway.stop();
    let records = read_records(&dir.path().join("recordings"));
    let index = records
        .iter()
        .find_map(|r| match &r.frame {
            snowgate::record::Frame::Request(q) if q.endpoint == "sql-api-submit" => Some(r.index),
            _ => None,
        })
        .unwrap();
    let answer = response_to(&records, index);
    assert_eq!((answer.success, answer.code.as_deref(), answer.rows), (Some(true), Some("090001"), Some(rows)));
    assert_eq!(answer.query_id.as_deref(), Some(handle.as_str()));
}

#[test]
fn query_ids_belong_to_the_identity_they_were_answered_to() {
    let upstream = double(|_| {});
    // Two cores: a poll may land on a core other than the one that answered the query.
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions { cores: 2, ..Default::default() });
    let mut client = gateway.client();
    let (own, _) = login_ok(&mut client);
    let (other, _) = login_ok_as(&mut client, "agent-8");

    // A slow statement answers 333333 with its id; its owner polls it to the end.
    let running = query(&mut client, &own, "select 1 from small slow").json().unwrap();
    assert_eq!(running["code"], "333333", "{running}");
    let qid = running["data"]["queryId"].as_str().unwrap().to_owned();
    let result_path = format!("/queries/{qid}/result");
    let monitoring_path = format!("/monitoring/queries/{qid}");

    // Another identity, and anyone asking for an id never answered here, is refused before
    // anything goes upstream.
    let polls = upstream.stats.recorded(EndpointKind::QueryResult).len();
    let monitors = upstream.stats.recorded(EndpointKind::Monitoring).len();
    let never = "/queries/01b2c3d4-0000-4000-8000-0000000000ff/result".to_owned();
    for (session, path) in [(&other, &result_path), (&other, &monitoring_path), (&own, &never)] {
        let refused = client.get(path, &[("authorization", &authorization(session))]).unwrap();
        assert_refused(&refused, "260018");
        // A refusal names the id it refused; asking again is refused again.
        let again = client.get(path, &[("authorization", &authorization(session))]).unwrap();
        assert_refused(&again, "260018");
    }
    assert_eq!(upstream.stats.recorded(EndpointKind::QueryResult).len(), polls);
    assert_eq!(upstream.stats.recorded(EndpointKind::Monitoring).len(), monitors);
    // Nor can it abort the statement by its id.
    let aborts = upstream.stats.recorded(EndpointKind::Abort).len();
    let abort_path = format!("/queries/{qid}/abort-request");
    let abort = client.post_json(&abort_path, &[("authorization", &authorization(&other))], &json!({}), true).unwrap();
    assert_refused(&abort, "260018");
    assert_eq!(upstream.stats.recorded(EndpointKind::Abort).len(), aborts);

    let mut answer = running;
    for _ in 0..10 {
        if answer["code"] != "333333" {
            break;
        }
        answer = client.get(&result_path, &[("authorization", &authorization(&own))]).unwrap().json().unwrap();
    }
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["queryId"], qid.as_str());
    // From fresh connections (either core), the owner can and the other identity cannot.
    for _ in 0..6 {
        let mut fresh = gateway.client();
        let monitored = fresh.get(&monitoring_path, &[("authorization", &authorization(&own))]).unwrap();
        assert_eq!(monitored.status, 200);
        assert_eq!(monitored.json().unwrap()["success"], true, "{monitored:?}");
        assert_refused(&fresh.get(&result_path, &[("authorization", &authorization(&other))]).unwrap(), "260018");
    }
    // The owner may abort its own statement by id.
    let abort = client.post_json(&abort_path, &[("authorization", &authorization(&own))], &json!({}), true).unwrap();
    assert_eq!(abort.status, 200);
    assert_ne!(abort.json().unwrap()["code"], "260018", "{abort:?}");
    assert_eq!(upstream.stats.recorded(EndpointKind::Abort).len(), aborts + 1);
}

const MULTI_STATEMENT_POLICY: &str = r#"
[policy]
max_statements_per_request = 2
default = { action = "allow" }
"#;

#[test]
fn a_multi_statement_answers_children_are_the_agents_to_fetch() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { policy: Some(MULTI_STATEMENT_POLICY.into()), ..Default::default() },
    );
    let mut client = gateway.client();
    let (own, _) = login_ok(&mut client);
    let (other, _) = login_ok_as(&mut client, "agent-8");
    let answer = query(&mut client, &own, "select 1 from small; select 1 from medium").json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let children: Vec<String> = answer["data"]["resultIds"].as_str().unwrap().split(',').map(str::to_owned).collect();
    assert_eq!(children.len(), 2, "{answer}");
    for (child, rows) in children.iter().zip([snowgate_perf::results::SMALL_ROWS, snowgate_perf::results::MEDIUM_ROWS])
    {
        let path = format!("/queries/{child}/result");
        let fetched = client.get(&path, &[("authorization", &authorization(&own))]).unwrap().json().unwrap();
        assert_eq!(fetched["success"], true, "{fetched}");
        assert_eq!(fetched["data"]["total"], rows as u64, "{fetched}");
        assert_refused(&client.get(&path, &[("authorization", &authorization(&other))]).unwrap(), "260018");
    }
}

#[test]
fn result_scan_reads_only_the_identitys_own_results() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (own, _) = login_ok(&mut client);
    let (other, _) = login_ok_as(&mut client, "agent-8");
    let first = query(&mut client, &own, "select 1 from small").json().unwrap();
    let qid = first["data"]["queryId"].as_str().unwrap().to_owned();
    let scan = format!("select * from table(result_scan('{qid}'))");

    let queries = upstream.stats.recorded(EndpointKind::Query).len();
    assert_refused(&query(&mut client, &other, &scan), "260018");
    assert_refused(&query(&mut client, &other, &scan.to_uppercase()), "260018");
    assert_refused(&query(&mut client, &own, "select * from table(result_scan($q))"), "260010");
    assert_eq!(upstream.stats.recorded(EndpointKind::Query).len(), queries, "a refused RESULT_SCAN went upstream");

    for allowed in [scan.as_str(), "select * from table(result_scan(last_query_id()))"] {
        let answer = query(&mut client, &own, allowed).json().unwrap();
        assert_eq!(answer["success"], true, "{allowed}: {answer}");
    }
    assert_eq!(upstream.stats.recorded(EndpointKind::Query).len(), queries + 2);

    // A statement too large to classify on the core is lexed where it is classified, so it
    // is judged the same way: another identity's id and a variable are refused, its own id and
    // LAST_QUERY_ID() are not.
    let padded = |sql: &str| format!("{sql} -- {}", "x".repeat(5000));
    assert_refused(&query(&mut client, &other, &padded(&scan)), "260018");
    assert_refused(&query(&mut client, &own, &padded("select * from table(result_scan($q))")), "260010");
    for allowed in [padded(&scan), padded("select * from table(result_scan(last_query_id()))")] {
        let answer = query(&mut client, &own, &allowed).json().unwrap();
        assert_eq!(answer["success"], true, "{answer}");
    }
    assert_eq!(upstream.stats.recorded(EndpointKind::Query).len(), queries + 4);
}

/// One agent running many statements churns its own ids, not another's: with a book of three
/// ids and a share of two, an agent's twenty queries leave the other agent's running statement
/// pollable (one shared least-recently-used order would have pushed it out).
#[test]
fn one_agents_statements_do_not_push_out_anothers_ids() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions {
            limits: "statement_ids_max = 3\nstatement_ids_per_identity_max = 2".into(),
            ..Default::default()
        },
    );
    let mut client = gateway.client();
    let (patient, _) = login_ok(&mut client);
    let (busy, _) = login_ok_as(&mut client, "agent-8");
    let running = query(&mut client, &patient, "select 1 from small slow").json().unwrap();
    assert_eq!(running["code"], "333333", "{running}");
    let qid = running["data"]["queryId"].as_str().unwrap().to_owned();
    let mut busy_ids = Vec::new();
    for _ in 0..20 {
        let answer = query(&mut client, &busy, "select 1").json().unwrap();
        assert_eq!(answer["success"], true, "{answer}");
        busy_ids.push(answer["data"]["queryId"].as_str().unwrap().to_owned());
    }
    let mut answer = running;
    for _ in 0..10 {
        if answer["code"] != "333333" {
            break;
        }
        let path = format!("/queries/{qid}/result");
        answer = client.get(&path, &[("authorization", &authorization(&patient))]).unwrap().json().unwrap();
    }
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["queryId"], qid.as_str());
    // The busy agent keeps its most recent ids; its oldest went.
    let newest = format!("/monitoring/queries/{}", busy_ids[19]);
    let kept = client.get(&newest, &[("authorization", &authorization(&busy))]).unwrap().json().unwrap();
    assert_ne!(kept["code"], "260018", "{kept}");
    let oldest = format!("/monitoring/queries/{}", busy_ids[0]);
    let gone = client.get(&oldest, &[("authorization", &authorization(&busy))]).unwrap();
    assert_refused(&gone, "260018");
}

/// A login's SESSION_PARAMETERS set the session as ALTER SESSION would: they pass the same
/// gate as a query request's parameters (a driver's own CLIENT_* settings excepted), and the
/// secret fields are stripped whatever their case.
#[test]
fn login_session_parameters_pass_the_parameter_gate() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let token = agent_token(json!({}));
    let login_with = |client: &mut snowgate_perf::client::Client, data: serde_json::Value| {
        let mut body = login_body(&token);
        for (key, value) in data.as_object().unwrap() {
            body["data"][key] = value.clone();
        }
        client.post_json(LOGIN_TARGET, &[("authorization", "Snowflake Token=\"None\"")], &body, true).unwrap()
    };
    for refused in [
        json!({"QUOTED_IDENTIFIERS_IGNORE_CASE": true}),
        json!({"SEARCH_PATH": "attacker.public"}),
        json!({"PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "csv"}),
        json!({"TIMEZONE": "UTC", "timezone": "UTC"}),
        // Not a driver's CLIENT_ setting, and its 7th byte is inside a character.
        json!({"CLIENT\u{e9}": 1}),
    ] {
        let answer = login_with(&mut client, json!({ "SESSION_PARAMETERS": refused.clone() }));
        assert_refused(&answer, snowgate::session::codes::BAD_REQUEST);
        let message = answer.json().unwrap()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("SESSION_PARAMETERS"), "{refused}: {message}");
    }
    assert_eq!(upstream.stats.requests(EndpointKind::Login), 0, "a refused login went upstream");

    let answer = login_with(
        &mut client,
        json!({
            "SESSION_PARAMETERS": {"CLIENT_SOMETHING_NEW": true, "TIMEZONE": "UTC", "MULTI_STATEMENT_COUNT": 0,
                "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "json"},
            "secondary_roles": ["ALL"], "Passcode": "123456"
        }),
    );
    assert_eq!(answer.json().unwrap()["success"], true);
    let body = upstream.stats.recorded(EndpointKind::Login).last().unwrap().body_json().unwrap();
    let parameters = &body["data"]["SESSION_PARAMETERS"];
    assert_eq!(
        parameters,
        &json!({"CLIENT_SOMETHING_NEW": true, "TIMEZONE": "UTC", "MULTI_STATEMENT_COUNT": 1,
            "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "json"})
    );
    let data = body["data"].as_object().unwrap();
    assert!(
        !data.keys().any(|k| k.eq_ignore_ascii_case("secondary_roles") || k.eq_ignore_ascii_case("passcode")),
        "{body}"
    );
}

/// A body key spelled like one the gateway reads but for case (`SQLTEXT` beside `sqlText`) is
/// refused: the gateway classifies the exact spelling, and a server matching keys without
/// regard to case could run the other.
#[test]
fn case_variant_keys_are_refused() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let auth = authorization(&session);
    for variant in [json!({"SQLTEXT": "drop database analytics"}), json!({"Parameters": {"MULTI_STATEMENT_COUNT": 0}})]
    {
        let mut body = query_body("select 1");
        for (key, value) in variant.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = client.post_json(QUERY_TARGET, &[("authorization", &auth)], &body, true).unwrap();
        assert_refused(&answer, snowgate::session::codes::POLICY_DENIED);
        assert!(answer.json().unwrap()["message"].as_str().unwrap().contains("spelled unlike"), "{answer:?}");
    }
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 0);

    let bearer = format!("Bearer {}", agent_token(json!({})));
    let body = json!({"statement": "select 1", "ROLE": "ACCOUNTADMIN", "timeout": 60});
    let answer = client.post_json("/api/v2/statements", &sql_api_headers(&bearer), &body, false).unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(String::from_utf8_lossy(&answer.body).contains("spelled unlike"));
    assert_eq!(query(&mut client, &session, "select 1").json().unwrap()["success"], true);
}

/// A body the gateway rewrites and forwards must mean one thing: a member named twice at any
/// depth, or a key the gateway reads spelled in another case, is refused before anything goes
/// upstream (serde keeps the last duplicate, the recording and reviewers read the agent's text),
/// and so are bind values read from a stage, which nobody could check, review or record.
#[test]
fn ambiguous_bodies_and_stage_bindings_are_refused_before_the_upstream() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let post = |client: &mut snowgate_perf::client::Client, target: &str, auth: &str, body: &str| {
        let headers = [("content-type", "application/json"), ("authorization", auth)];
        client.request(snowgate::http::Method::Post, target, &headers, body.as_bytes()).unwrap()
    };
    let token = agent_token(json!({}));

    // Logins: a lowercase SESSION_PARAMETERS would pass unchecked if the warehouse reads it.
    let mut lower = login_body(&token);
    lower["data"]["session_parameters"] = json!({"SEARCH_PATH": "attacker.public"});
    let twice = login_body(&token).to_string().replacen(
        r#""AUTHENTICATOR":"OAUTH""#,
        r#""AUTHENTICATOR":"OAUTH","AUTHENTICATOR":"SNOWFLAKE""#,
        1,
    );
    assert!(twice.contains("SNOWFLAKE"));
    for body in [lower.to_string(), twice] {
        assert_refused(&post(&mut client, LOGIN_TARGET, "Snowflake Token=\"None\"", &body), codes::BAD_REQUEST);
    }
    assert_eq!(upstream.stats.requests(EndpointKind::Login), 0, "an ambiguous login went upstream");

    let (session, _) = login_ok(&mut client);
    let auth = authorization(&session);
    let with = |key: &str, value: serde_json::Value| {
        let mut body = query_body("insert into t values (?)");
        body[key] = value;
        body.to_string()
    };
    let bindings = r#"{"1":{"type":"TEXT","value":"42"},"1":{"type":"TEXT","value":"43"}}"#;
    let twice =
        query_body("select ?").to_string().replacen(r#""sqlText""#, &format!(r#""bindings":{bindings},"sqlText""#), 1);
    for (body, code) in [
        (twice, codes::BAD_REQUEST),
        (with("bindStage", json!("@FIN.SECRETS.STG/x")), codes::POLICY_DENIED),
        (with("BINDINGS", json!({"1": {"type": "TEXT", "value": "1"}})), codes::POLICY_DENIED),
    ] {
        assert_refused(&post(&mut client, QUERY_TARGET, &auth, &body), code);
    }
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 0, "an ambiguous query went upstream");
    // What drivers send, a null bindStage and one binding per position, runs.
    let fine = with("bindStage", serde_json::Value::Null);
    let mut fine: serde_json::Value = serde_json::from_str(&fine).unwrap();
    fine["sqlText"] = json!("select ?");
    fine["bindings"] = json!({"1": {"type": "TEXT", "value": "42"}});
    let answer = post(&mut client, QUERY_TARGET, &auth, &fine.to_string()).json().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(upstream.stats.requests(EndpointKind::Query), 1);

    // The SQL API's body too.
    let bearer = format!("Bearer {token}");
    let headers = sql_api_headers(&bearer);
    let body =
        r#"{"statement":"select ?","bindings":{"1":{"type":"TEXT","value":"a"},"1":{"type":"TEXT","value":"b"}}}"#;
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(&headers);
    let answer = client.request(snowgate::http::Method::Post, "/api/v2/statements", &all, body.as_bytes()).unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(upstream.stats.requests(EndpointKind::SqlApiSubmit), 0);
}

/// A SQL API submit whose body cannot be read (an encoding the gateway does not take, broken
/// gzip) is refused with a 400 in the SQL API's shape: a 200 would read, to a SQL API
/// client, as a statement that ran.
#[test]
fn a_sql_api_body_the_gateway_cannot_read_is_a_400() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let bearer = format!("Bearer {}", agent_token(json!({})));
    for (encoding, body) in [("br", &b"{\"statement\": \"select 1\"}"[..]), ("gzip", &b"\x1f\x8b\x08\x00broken"[..])] {
        let mut headers = vec![("content-type", "application/json"), ("content-encoding", encoding)];
        headers.extend(sql_api_headers(&bearer));
        let answer =
            gateway.client().request(snowgate::http::Method::Post, "/api/v2/statements", &headers, body).unwrap();
        assert_eq!(answer.status, 400, "{encoding}: {answer:?}");
        let body = answer.json().unwrap();
        assert_eq!(body["code"], codes::BAD_REQUEST, "{encoding}: {body}");
        assert!(body.get("success").is_none() && body["message"].is_string(), "{encoding}: {body}");
    }
    assert_eq!(upstream.stats.requests(EndpointKind::SqlApiSubmit), 0);
}

#[test]
fn a_sql_api_request_id_goes_upstream_as_one_only_its_identity_makes() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let agent_id = "6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44";
    let submit = |client: &mut snowgate_perf::client::Client, sub: &str, target: &str| {
        let bearer = format!("Bearer {}", agent_token(json!({ "sub": sub })));
        let answer = client.post_json(target, &sql_api_headers(&bearer), &json!({"statement": "select 1"}), false);
        assert_eq!(answer.unwrap().status, 200);
        let sent = upstream.stats.last(EndpointKind::SqlApiSubmit).unwrap().target;
        let ids: Vec<&str> = sent.split(['?', '&']).filter_map(|pair| pair.strip_prefix("requestId=")).collect();
        assert_eq!(ids.len(), 1, "{sent}");
        assert!(!sent.to_ascii_lowercase().contains("requestid=6d2b8a56"), "the agent's id went upstream: {sent}");
        uuid::Uuid::parse_str(ids[0]).unwrap()
    };
    let target = format!("/api/v2/statements?requestId={agent_id}&retry=true");
    let mine = submit(&mut client, "agent-7", &target);
    // The same identity retrying gets the same upstream id (Snowflake's deduplication holds)...
    assert_eq!(submit(&mut client, "agent-7", &target), mine);
    // ...another naming the same id does not reach the first one's statement...
    assert_ne!(submit(&mut client, "agent-8", &target), mine);
    // ...nor by spelling the parameter otherwise, which is dropped for an id of the gateway's.
    let sneaky = format!("/api/v2/statements?REQUESTID={agent_id}&request%49d={agent_id}");
    let fresh = submit(&mut client, "agent-8", &sneaky);
    assert_ne!(fresh, mine);
}

#[test]
fn a_body_is_inflated_only_for_a_caller_who_proved_who_it_is() {
    let upstream = double(|_| {});
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    // About 17 KiB of gzip that inflates past the statement cap (16 MiB).
    let bomb = json!({ "sqlText": format!("select '{}'", "x".repeat(17 << 20)) });
    // Authenticated: inflated, and refused for its size.
    let answer = client.post_json(QUERY_TARGET, &[("authorization", &authorization(&session))], &bomb, true).unwrap();
    assert_eq!(answer.status, 413, "{answer:?}");
    // Without a session, or with a forged one, or on the SQL API without a verified bearer: refused
    // for that before any inflating (the refusal would be the 413 otherwise).
    for (target, authorization, code) in [
        (QUERY_TARGET, None, codes::SESSION_MISSING),
        (QUERY_TARGET, Some("Snowflake Token=\"sg1.AAAA\""), codes::SESSION_INVALID),
        ("/api/v2/statements", None, codes::OIDC_INVALID),
        ("/api/v2/statements", Some("Bearer not-a-jwt"), "390303"),
    ] {
        let mut client = gateway.client();
        let headers: Vec<(&str, &str)> = authorization.map(|a| ("authorization", a)).into_iter().collect();
        let answer = client.post_json(target, &headers, &bomb, true).unwrap();
        assert_ne!(answer.status, 413, "{target}: the body was inflated before the caller was known");
        let body = answer.json().unwrap();
        assert_eq!(body["code"], code, "{target}: {body}");
    }
    assert_eq!(upstream.stats.recorded(EndpointKind::Query).len(), 0);
}

/// A caller refused from its head is answered without its body being read: without a
/// session, with a forged or expired one, on the SQL API without a verified bearer. The body
/// would change nothing, and no one the gateway does not know may make it read or hold a
/// statement's worth (16 MiB) for the body timeout. Here the body is announced and never
/// sent: the refusal comes at once, and the connection ends (what follows is dropped).
#[test]
fn a_caller_refused_from_its_head_is_answered_without_its_body_being_read() {
    use std::io::{Read as _, Write as _};
    let upstream = double(|c| c.session_validity_secs = 2);
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let (session, _) = login_ok(&mut client);
    let announced = |target: &str, authorization: Option<&str>| -> (String, serde_json::Value) {
        let mut stream = std::net::TcpStream::connect(gateway.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let authorization = authorization.map(|a| format!("authorization: {a}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {target} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{authorization}\
             content-length: 16000000\r\n\r\n{{\"sqlText\": \"select '"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body) = loop {
            let n = stream.read(&mut chunk).expect("an answer before the body was sent");
            assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Ok(body) = serde_json::from_str::<serde_json::Value>(body)
            {
                break (head.to_ascii_lowercase(), body);
            }
        };
        assert!(head.contains("connection: close"), "{head}");
        (head, body)
    };
    for (target, authorization, status, code) in [
        (QUERY_TARGET, None, "200", codes::SESSION_MISSING),
        (QUERY_TARGET, Some("Snowflake Token=\"sg1.AAAA\""), "200", codes::SESSION_INVALID),
        ("/api/v2/statements", None, "401", codes::OIDC_INVALID),
        ("/api/v2/statements", Some("Bearer not-a-jwt"), "401", "390303"),
        ("/no/such/endpoint", None, "404", codes::UNKNOWN_ENDPOINT),
    ] {
        let (head, body) = announced(target, authorization);
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{target}: {head}");
        assert_eq!(body["code"], code, "{target}: {body}");
    }
    // A caller the gateway knows has its statement read and run: 512 KiB, over the control
    // cap, under the statement text's.
    let big = json!({ "sqlText": format!("select '{}'", "x".repeat(512 << 10)) });
    let answer = client.post_json(QUERY_TARGET, &[("authorization", &authorization(&session))], &big, false).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json().unwrap();
    assert_eq!(body["success"], true, "{body}");
    // Once its session token expired, it is answered 390112 (drivers renew on it) unread.
    std::thread::sleep(Duration::from_millis(2100));
    let (_, body) = announced(QUERY_TARGET, Some(&authorization(&session)));
    assert_eq!(body["code"], "390112", "{body}");
    assert_eq!(upstream.stats.recorded(EndpointKind::Query).len(), 1);
}

/// A session whose gateway token expired with the agent's OIDC token (before Snowflake's own
/// session token would have) can still be logged out of: the delete reaches Snowflake, which
/// would otherwise keep the session open until it expired there.
#[test]
fn a_session_past_its_identitys_end_can_still_log_out() {
    let (upstream, gateway) = short_lived_identity_gateway();
    let mut client = gateway.client();
    let exp = now_unix() + 2;
    let login = login(&mut client, &agent_token(json!({ "exp": exp }))).json().unwrap();
    assert_eq!(login["success"], true, "{login}");
    let auth = authorization(login["data"]["token"].as_str().unwrap());
    wait_past(exp);
    assert_refused(&query(&mut client, login["data"]["token"].as_str().unwrap(), "select 1"), "390112");
    let logout = client.post_json("/session?delete=true", &[("authorization", &auth)], &json!({}), false).unwrap();
    assert_eq!(logout.json().unwrap()["success"], true, "{logout:?}");
    assert_eq!(upstream.stats.requests(EndpointKind::Logout), 1);
    // A forged token is still refused, expired or not.
    let forged = client.post_json(
        "/session?delete=true",
        &[("authorization", "Snowflake Token=\"sg1.AAAA\"")],
        &json!({}),
        false,
    );
    assert_refused(&forged.unwrap(), "390104");
}

/// A logout holds for as long as any token of the session could: its master token outlives
/// its session token and its chunk URLs, and it is refused too, without asking Snowflake,
/// when those have ended (a logout that Snowflake never carried out must not be undone by a
/// renewal later).
#[test]
fn a_logged_out_sessions_master_token_stays_refused_after_its_session_token_ends() {
    let upstream = double(|c| c.session_validity_secs = 2);
    let gateway = TestGateway::start(
        &upstream.url(),
        GatewayOptions { limits: "chunk_url_ttl_secs = 1".into(), ..Default::default() },
    );
    let mut client = gateway.client();
    let (session, master) = login_ok(&mut client);
    let logout = client
        .post_json("/session?delete=true", &[("authorization", &authorization(&session))], &json!({}), false)
        .unwrap();
    assert_eq!(logout.json().unwrap()["success"], true);
    // Past the session token's end and the chunk URLs' (the master token lasts hours).
    wait_past(now_unix() + 3);
    let renewal = renew(&mut client, &master.unwrap(), &session);
    assert_refused(&renewal, codes::MASTER_INVALID);
    assert_eq!(upstream.stats.requests(EndpointKind::TokenRequest), 0, "a logged-out session was renewed upstream");
}

/// When Snowflake refuses the gateway's own login (its key not registered, another user),
/// the agent is told that its token was accepted and the gateway's login was refused, with
/// Snowflake's code; before, Snowflake's answer passed as it was ("Incorrect username or
/// password"), as if the agent's token were at fault.
#[test]
fn a_refused_upstream_login_is_told_as_the_gateways_not_the_agents() {
    let upstream = double(|c| c.user = "SOMEONE_ELSE".into());
    let gateway = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let mut client = gateway.client();
    let answer = login(&mut client, &agent_token(json!({}))).json().unwrap();
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["code"], "390100", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("snowgate's own login") && message.contains("Your token was accepted"), "{message}");
    assert!(message.contains("Incorrect username or password"), "{message}");
}
