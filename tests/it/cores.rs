//! The `snowgate` binary as operators run it: `--cores 2` serves from two runtimes, SIGTERM
//! drains and exits cleanly, a second SIGTERM ends a drain stuck on a request, SIGHUP is
//! ignored; a start that cannot finish (the admin port taken, the recording directory in use
//! by another gateway) ends before any core serves.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// `snowgate --config <config> --cores 1` expected to fail at start: its output, once it
/// exits (killed, and the test failed, if it still runs after 20 s).
fn start_expecting_failure(config: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .args(["--config", config.to_str().unwrap(), "--cores", "1", "--classifier-threads", "1"])
        .env("SNOWGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!("the gateway started and served: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Sends `signal` (by name) to `child`.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("sh").args(["-c", &format!("kill -{signal} {}", child.id())]).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_second_gateway_on_the_same_recording_directory_is_refused() {
    let upstream = double(|_| {});
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &upstream.url(), &GatewayOptions::default());
    let first = GatewayProcess::start(&config, &[], &[]);

    let second = start_expecting_failure(&config);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&second.stdout).contains("listening"), "{stderr}");
    assert!(
        stderr.contains("recording directory") && stderr.contains("in use by another snowgate process"),
        "{stderr}"
    );

    // The first serves on, and its recording is whole: the second cut nothing of it.
    let mut client = snowgate_perf::client::Client::connect(first.addr).unwrap();
    assert_eq!(login(&mut client, &agent_token(json!({}))).json().unwrap()["success"], true);
    drop(client);
    first.terminate();
    let report = crate::recording::verify_dir(&work.path().join("recordings"), false);
    assert!(report.is_ok(), "{:?}", report.problems);
    // The lock went with the process: the directory serves again.
    GatewayProcess::start(&config, &[], &[]).terminate();
}

#[test]
fn a_taken_admin_port_ends_the_start_before_any_core_serves() {
    let upstream = double(|_| {});
    let work = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = GatewayOptions {
        policy: Some(format!(
            "{PERMISSIVE_POLICY}\n[approvals]\nadmin_address = \"{}\"\nadmin_groups = [\"dba\"]\n",
            taken.local_addr().unwrap()
        )),
        ..GatewayOptions::default()
    };
    let config = write_config(work.path(), &upstream.url(), &options);
    let output = start_expecting_failure(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("admin listener"), "{stderr}");
    assert!(!stderr.contains("Core serving."), "a core served before the start failed: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "{stderr}");
}

/// An upstream that accepts connections and never answers; the connections it holds.
fn silent_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (url, accepted)
}

#[test]
fn sighup_is_ignored_and_a_second_sigterm_ends_a_stuck_drain() {
    let (url, accepted) = silent_upstream();
    let work = tempfile::tempdir().unwrap();
    let options = GatewayOptions { upstream_extra: "response_timeout_ms = 600000".into(), ..GatewayOptions::default() };
    let config = write_config(work.path(), &url, &options);
    let mut gateway = GatewayProcess::start(&config, &["--drain-timeout-secs", "600"], &[]);
    let addr = gateway.addr;
    // A login the upstream never answers: in flight until the drain gives up on it, when the
    // gateway closes the connection unanswered.
    let stuck = std::thread::spawn(move || {
        let mut client = snowgate_perf::client::Client::connect(addr).unwrap();
        let headers = [("authorization", "Snowflake Token=\"None\"")];
        client.post_json(LOGIN_TARGET, &headers, &login_body(&agent_token(json!({}))), true).err()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the login never reached the upstream");
        std::thread::sleep(Duration::from_millis(10));
    }

    signal(&gateway.child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gateway.child.try_wait().unwrap().is_none(), "SIGHUP ended the gateway");
    snowgate_perf::client::Client::connect(addr).expect("still accepting after SIGHUP");

    signal(&gateway.child, "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(gateway.child.try_wait().unwrap().is_none(), "the drain did not wait for the login in flight");
    signal(&gateway.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = gateway.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "a second SIGTERM did not end the drain");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(stuck.join().unwrap().is_some(), "the stuck login was answered");
    // The recorders were stopped in order: every segment sealed, the login's request recorded.
    let recordings = work.path().join("recordings");
    let report = crate::recording::verify_dir(&recordings, false);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(read_records(&recordings).iter().any(|r| r.frame.endpoint() == Some("login")));
}
