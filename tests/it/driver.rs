//! The acceptance test with a real, unmodified Snowflake driver: snowflake-connector-python
//! (< 5) runs the same scenario directly against the fakesnow emulator and through snowgate,
//! and every result must be equal.
//!
//! The driver and emulator come from `tests/driver/requirements.txt`, installed into `.venv`
//! by `tests/run.sh` (or point `SNOWGATE_TEST_PYTHON` at another interpreter that has them).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) fn python() -> PathBuf {
    let python =
        std::env::var_os("SNOWGATE_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run `bash tests/run.sh`, which installs the Python driver and fakesnow into .venv",
        python.display()
    );
    python
}

pub(crate) struct Fakesnow {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for Fakesnow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_fakesnow(dir: &std::path::Path) -> Fakesnow {
    // The port was free when asked for, but another test may take it before fakesnow binds
    // it: then fakesnow exits, and is started again on another.
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log_path = dir.join("fakesnow.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(python())
            .args(["-m", "fakesnow", "-s", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if child.try_wait().unwrap().is_some() {
                eprintln!("fakesnow exited at start on port {port}: {log}");
                break;
            }
            // Listening, and on its own port: uvicorn says so once it has bound it.
            if log.contains("Uvicorn running on") && TcpStream::connect(addr).is_ok() {
                return Fakesnow { child, addr };
            }
            assert!(Instant::now() < deadline, "fakesnow did not start: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("fakesnow did not start in three attempts");
}

/// Runs `tests/driver/canary.py` against `port`, returning its JSON summary.
fn canary_script(port: u16, token: &str, sleep_secs: f64) -> serde_json::Value {
    let output = Command::new(python())
        .arg(root().join("tests/driver/canary.py"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--token",
            token,
            "--sleep",
            &sleep_secs.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "canary.py failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn python_driver_renews_through_snowgate_and_never_sees_a_credential() {
    for credential in [Credential::KeyPair, Credential::Password("CANARY-PASSWORD-7a3f".into())] {
        let upstream = double(|c| {
            c.token_prefix = "CANARY-SFTOKEN-d41c".into();
            c.password = Some("CANARY-PASSWORD-7a3f".into());
            c.session_validity_secs = 2;
        });
        let gateway = TestGateway::start(&upstream.url(), GatewayOptions { credential, ..Default::default() });
        let relay = Relay::start(gateway.addr);
        let outcome = canary_script(relay.addr.port(), &agent_token(serde_json::json!({})), 2.5);
        assert_eq!(outcome["small_rows"], snowgate_perf::results::SMALL_ROWS as u64, "{outcome}");
        assert_eq!(outcome["after_renewal_rows"], snowgate_perf::results::MEDIUM_ROWS as u64, "{outcome}");
        assert_eq!(outcome["error"]["errno"], 2003, "{outcome}");
        assert_eq!(outcome["one"], 1, "{outcome}");
        assert!(upstream.stats.renewals() >= 1, "the driver did not renew through the gateway");

        let dir = gateway.stop();
        let received = relay.received();
        let logs = captured_logs();
        let recordings = recording_text(&dir.path().join("recordings"));
        let key_body = snowgate_perf::test_keys::TEST_PRIVATE_KEY_PEM.lines().nth(1).unwrap();
        for (place, text) in [("driver", &received), ("logs", &logs), ("recordings", &recordings)] {
            for canary in ["CANARY-SFTOKEN-d41c", "CANARY-PASSWORD-7a3f", key_body, "SHA256:"] {
                assert!(!text.contains(canary), "{canary} found in the {place}");
            }
        }
        assert_eq!(unsealed_tokens(&received), Vec::<String>::new());
        assert!(received.contains("\"sessionToken\":\"sg1."), "the renewal answer did not pass the relay");
    }
}

fn scenario(port: u16, token: &str, out: &std::path::Path, suffix: &str) {
    let status = Command::new(python())
        .arg(root().join("tests/driver/scenario.py"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--token", token])
        .args(["--out", out.to_str().unwrap(), "--table-suffix", suffix])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success(), "the scenario failed against port {port}");
}

#[test]
fn python_driver_through_snowgate_equals_direct() {
    let work = tempfile::tempdir().unwrap();
    let fakesnow = start_fakesnow(work.path());
    let gateway = TestGateway::start(&format!("http://{}", fakesnow.addr), GatewayOptions::default());
    // The driver reaches the gateway through a relay that keeps everything it received.
    let relay = Relay::start(gateway.addr);
    let direct = work.path().join("direct.json");
    let through = work.path().join("gateway.json");
    // Direct first, then through the gateway: fakesnow's catalog does not like concurrent DDL.
    scenario(fakesnow.addr.port(), "direct-runs-need-no-token", &direct, "direct");
    scenario(relay.addr.port(), &agent_token(serde_json::json!({})), &through, "gateway");
    let compare = Command::new(python())
        .arg(root().join("tests/driver/compare.py"))
        .args([direct.as_os_str(), through.as_os_str()])
        .status()
        .unwrap();
    assert!(compare.success(), "the driver saw different results through snowgate");

    // No Snowflake token and nothing of the gateway's key reached the driver.
    let received = relay.received();
    assert!(received.matches("\"token\":\"sg1.").count() >= 2, "the relay saw no sealed token: is it in the path?");
    assert_eq!(unsealed_tokens(&received), Vec::<String>::new(), "a Snowflake token reached the driver");
    let key_body = snowgate_perf::test_keys::TEST_PRIVATE_KEY_PEM.lines().nth(1).unwrap();
    assert!(!received.contains(key_body) && !received.contains("SHA256:"));

    // The driver really went through the gateway: its statements are in the recording.
    let dir = gateway.stop();
    let records = read_records(&dir.path().join("recordings"));
    let requests: Vec<&snowgate::record::RequestFrame> = records
        .iter()
        .filter_map(|r| match &r.frame {
            snowgate::record::Frame::Request(request) => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(requests.iter().filter(|f| f.endpoint == "login").count(), 2, "one login per connect");
    let queries = requests.iter().filter(|f| f.endpoint == "query-request").count();
    assert!(queries >= 10, "only {queries} statements recorded");
    assert!(requests.iter().all(|f| f.principal.sub.as_deref() == Some("agent-7")));
    // Logins too carry the groups the role and the masking profile came from.
    assert!(requests.iter().all(|f| f.principal.groups == ["analysts"]), "a record lacks the agent's groups");
}
