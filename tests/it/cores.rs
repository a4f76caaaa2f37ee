//! The `snowgate` binary as operators run it: `--cores 2` serves from two runtimes, and
//! SIGTERM drains and exits cleanly.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn two_cores_serve_from_two_runtimes_and_sigterm_drains() {
    let upstream = double(|_| {});
    // Reuse the in-process setup to write a valid config, then run the real binary on it.
    let setup = TestGateway::start(&upstream.url(), GatewayOptions::default());
    let dir = setup.stop();
    let log_path = dir.path().join("snowgate.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .args(["--config", dir.path().join("snowgate.toml").to_str().unwrap(), "--cores", "2"])
        .env("SNOWGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();

    // SO_REUSEPORT spreads connections over both listeners by their 4-tuple hash: with 40
    // connections, the chance that one core gets none is 2^-39.
    for _ in 0..40 {
        let mut client = snowgate_perf::client::Client::connect(addr).unwrap();
        let answer = login(&mut client, &agent_token(json!({})));
        assert_eq!(answer.json().unwrap()["success"], true);
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "snowgate did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");

    let log = std::fs::read_to_string(&log_path).unwrap();
    for core in 0..2 {
        assert!(log.contains(&format!("Core serving. core={core}")), "{log}");
        assert!(log.contains(&format!("Core stopped. core={core}")), "{log}");
        let records = read_records(&dir.path().join("recordings"));
        let logins = records.iter().filter(|r| r.core_id == core && r.frame.endpoint() == Some("login"));
        assert!(logins.count() > 0, "core {core} served no login");
    }
    assert!(log.contains("driver=") && log.contains("snowgate stopped."), "{log}");
}
