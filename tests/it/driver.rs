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

fn python() -> PathBuf {
    let python =
        std::env::var_os("SNOWGATE_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run `bash tests/run.sh`, which installs the Python driver and fakesnow into .venv",
        python.display()
    );
    python
}

struct Fakesnow {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Fakesnow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_fakesnow(dir: &std::path::Path) -> Fakesnow {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(dir.join("fakesnow.log")).unwrap();
    let child = Command::new(python())
        .args(["-m", "fakesnow", "-s", "-p", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "fakesnow did not start: {}",
            std::fs::read_to_string(dir.join("fakesnow.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Fakesnow { child, addr }
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
    let direct = work.path().join("direct.json");
    let through = work.path().join("gateway.json");
    // Direct first, then through the gateway: fakesnow's catalog does not like concurrent DDL.
    scenario(fakesnow.addr.port(), "direct-runs-need-no-token", &direct, "direct");
    scenario(gateway.addr.port(), &agent_token(serde_json::json!({})), &through, "gateway");
    let compare = Command::new(python())
        .arg(root().join("tests/driver/compare.py"))
        .args([direct.as_os_str(), through.as_os_str()])
        .status()
        .unwrap();
    assert!(compare.success(), "the driver saw different results through snowgate");

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
}
