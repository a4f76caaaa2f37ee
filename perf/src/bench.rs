//! `snowgate-perf compare`: the same closed-loop load run directly against the Snowflake double
//! and through snowgate, side by side, reporting req/s, latency and CPU µs per request of each
//! process.
//!
//! Placement is the same in every scenario: the load generator and the double share CPU 0, the
//! gateway runs on CPU 1 (`--cores 1`). CPU time comes from `/proc/<pid>/task/*/schedstat`
//! (nanoseconds on CPU, all threads), read before and after the measured window.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use serde_json::{Value, json};
use snowgate::http::{Limits, Method};
use snowgate::proxy::io::{Conn, Stream};

/// Where the repository is (the harness reads committed test keys from it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Settings of one comparison.
#[derive(Debug, Clone)]
pub struct CompareSpec {
    /// The `snowgate` binary.
    pub gateway_bin: PathBuf,
    /// Concurrent connections of the load generator.
    pub connections: usize,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measured window per run.
    pub duration: Duration,
    /// Runs per scenario (the report gives medians).
    pub runs: usize,
    /// The SQL text of every query.
    pub sql: String,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: &'static str,
    /// Completed requests per second in the window.
    pub requests_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// CPU µs per request: double, gateway (0 when direct), load generator.
    pub upstream_cpu_us: f64,
    /// See above.
    pub gateway_cpu_us: f64,
    /// See above.
    pub loadgen_cpu_us: f64,
    /// Requests that failed (not HTTP 200 with success:true).
    pub errors: u64,
}

/// Nanoseconds process `pid` has spent on CPU, all threads.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_pinned(cpu: usize, program: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Proc, String)> {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} (is taskset installed?)", program.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).read_line(&mut line)?;
    if line.is_empty() {
        let _ = child.kill();
        bail!("{} exited before printing its address", program.display());
    }
    Ok((Proc(child), line.trim().to_owned()))
}

fn parse_addr(line: &str) -> anyhow::Result<SocketAddr> {
    line.rsplit(' ').next().unwrap_or_default().parse().with_context(|| format!("no address in {line:?}"))
}

/// What every connection sends: a login, then the same query again and again.
struct Plan {
    addr: SocketAddr,
    login_wire: Bytes,
    query_body: Vec<u8>,
    limits: Limits,
}

const QUERY_TARGET: &str = "/queries/v1/query-request?requestId=6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44";

/// A POST with a gzip JSON body, as the Python driver sends it.
fn request_wire(target: &str, host: SocketAddr, authorization: &str, body: &[u8]) -> Bytes {
    let mut wire = format!(
        "POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\naccept: application/snowflake\r\n\
         user-agent: snowgate-perf/0.1\r\nauthorization: {authorization}\r\ncontent-encoding: gzip\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(body);
    Bytes::from(wire)
}

fn gzip_json(value: &Value) -> Vec<u8> {
    snowgate::http::gzip::gzip(value.to_string().as_bytes())
}

fn plan(addr: SocketAddr, through_gateway: bool, sql: &str) -> anyhow::Result<Plan> {
    let credential = if through_gateway {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let claims = json!({"iss": "https://idp.perf.snowgate", "aud": "snowgate-perf", "sub": "perf-agent",
            "groups": ["analysts"], "iat": now, "exp": now + 3600});
        let pem = std::fs::read(repo_root().join("tests/fixtures/keys/idp-a.pem"))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("key-a".into());
        let token = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?)?;
        json!({"AUTHENTICATOR": "OAUTH", "TOKEN": token, "ACCOUNT_NAME": "perf", "LOGIN_NAME": "agent"})
    } else {
        let jwt = snowgate_perf::keypair::mint_keypair_jwt(
            snowgate_perf::test_keys::TEST_PRIVATE_KEY_PEM,
            "TESTACCT",
            "SNOWGATE",
            3600,
        )?;
        json!({"AUTHENTICATOR": "SNOWFLAKE_JWT", "TOKEN": jwt, "ACCOUNT_NAME": "TESTACCT", "LOGIN_NAME": "SNOWGATE"})
    };
    let mut login = json!({"data": {"CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12.0",
        "CLIENT_ENVIRONMENT": {"APPLICATION": "perf"}, "SESSION_PARAMETERS": {}}});
    for (k, v) in credential.as_object().into_iter().flatten() {
        login["data"][k] = v.clone();
    }
    let login_wire = request_wire(
        "/session/v1/login-request?request_id=3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        addr,
        "Snowflake Token=\"None\"",
        &gzip_json(&login),
    );
    let query = json!({"sqlText": sql, "asyncExec": false, "sequenceId": 1, "querySubmissionTime": 1,
        "isInternal": false, "describeOnly": false, "parameters": {}, "queryContextDTO": {"entries": []}});
    Ok(Plan { addr, login_wire, query_body: gzip_json(&query), limits: Limits::default() })
}

async fn exchange(conn: &mut Conn, wire: Bytes, limits: &Limits) -> anyhow::Result<(u16, Bytes)> {
    let deadline = monoio::time::Instant::now() + Duration::from_secs(10);
    let (result, _) = conn.stream.write_all(wire).await;
    result?;
    let head = conn.read_response_head(Method::Post, limits, deadline).await?;
    let body = conn.read_body(head.framing, limits.body_bytes_max, deadline).await?;
    Ok((head.status, body))
}

#[derive(Default)]
struct Tally {
    completed: u64,
    errors: u64,
    histogram: Option<Histogram<u64>>,
}

async fn connection(
    addr: SocketAddr,
    plan: Rc<Plan>,
    measure_from: Instant,
    stop_at: Instant,
    tally: Rc<RefCell<Tally>>,
) {
    let run = async {
        let tcp = TcpStream::connect_addr(addr).await?;
        tcp.set_nodelay(true)?;
        let mut conn = Conn::new(Stream::Plain(tcp), 64 * 1024);
        let (status, body) = exchange(&mut conn, plan.login_wire.clone(), &plan.limits).await?;
        let login: Value = serde_json::from_slice(&body)?;
        let token = login["data"]["token"]
            .as_str()
            .ok_or_else(|| anyhow!("login failed ({status}): {}", String::from_utf8_lossy(&body)))?;
        let wire = request_wire(QUERY_TARGET, plan.addr, &format!("Snowflake Token=\"{token}\""), &plan.query_body);
        loop {
            let started = Instant::now();
            if started >= stop_at {
                return Ok::<_, anyhow::Error>(());
            }
            let (status, body) = exchange(&mut conn, wire.clone(), &plan.limits).await?;
            let ok = status == 200 && memchr::memmem::find(&body, b"\"success\":true").is_some();
            if started >= measure_from {
                let mut tally = tally.borrow_mut();
                if ok {
                    tally.completed += 1;
                    let us = started.elapsed().as_micros() as u64;
                    if let Some(h) = tally.histogram.as_mut() {
                        let _ = h.record(us.max(1));
                    }
                } else {
                    tally.errors += 1;
                }
            }
        }
    };
    if let Err(e) = run.await {
        eprintln!("snowgate-perf: a connection failed: {e:#}");
        tally.borrow_mut().errors += 1;
    }
}

/// Runs the closed-loop load against `addr` on this thread (pinned to CPU 0).
fn drive(addr: SocketAddr, plan: Plan, spec: &CompareSpec, pids: [Option<u32>; 3]) -> anyhow::Result<RunResult> {
    let _ = monoio::utils::bind_to_cpu_set([0]);
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    let plan = Rc::new(plan);
    let tally = Rc::new(RefCell::new(Tally {
        histogram: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..Default::default()
    }));
    let measure_from = Instant::now() + spec.warmup;
    let stop_at = measure_from + spec.duration;
    let cpu_before = Rc::new(RefCell::new([0u64; 3]));
    runtime.block_on({
        let (plan, tally, cpu_before) = (plan.clone(), tally.clone(), cpu_before.clone());
        let connections = spec.connections;
        async move {
            let mut handles = Vec::new();
            for _ in 0..connections {
                handles.push(monoio::spawn(connection(addr, plan.clone(), measure_from, stop_at, tally.clone())));
            }
            monoio::time::sleep(measure_from.saturating_duration_since(Instant::now())).await;
            *cpu_before.borrow_mut() = pids.map(|p| p.map_or(0, process_cpu_ns));
            for handle in handles {
                handle.await;
            }
        }
    });
    let cpu_after = pids.map(|p| p.map_or(0, process_cpu_ns));
    let tally = tally.borrow();
    let n = tally.completed.max(1) as f64;
    let cpu_us = |i: usize| (cpu_after[i].saturating_sub(cpu_before.borrow()[i])) as f64 / 1000.0 / n;
    let histogram = tally.histogram.as_ref().ok_or_else(|| anyhow!("no histogram"))?;
    Ok(RunResult {
        scenario: "",
        requests_per_sec: tally.completed as f64 / spec.duration.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.50) as f64,
        p99_us: histogram.value_at_quantile(0.99) as f64,
        upstream_cpu_us: cpu_us(0),
        gateway_cpu_us: if pids[1].is_some() { cpu_us(1) } else { 0.0 },
        loadgen_cpu_us: cpu_us(2),
        errors: tally.errors,
    })
}

fn write_gateway_config(dir: &Path, upstream: SocketAddr) -> anyhow::Result<PathBuf> {
    let root = repo_root();
    std::fs::write(dir.join("seal.key"), "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")?;
    let config = format!(
        r#"[listen]
address = "127.0.0.1:0"
plaintext = true

[upstream]
account = "TESTACCT"
url = "http://{upstream}"
user = "SNOWGATE"
private_key_file = "{key}"

[identity]
issuer = "https://idp.perf.snowgate"
audience = ["snowgate-perf"]
jwks_file = "{jwks}"
roles = [{{ group = "analysts", role = "ANALYST" }}]

[tokens]
seal_key_file = "seal.key"

[recording]
directory = "recordings"
"#,
        key = root.join("perf/tests/fixtures/test_key.p8").display(),
        jwks = root.join("tests/fixtures/keys/jwks.json").display(),
    );
    let path = dir.join("snowgate.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Runs every scenario `spec.runs` times, alternating, and returns all results.
pub fn compare(spec: &CompareSpec) -> anyhow::Result<Vec<RunResult>> {
    let me = std::env::current_exe()?;
    let public_key = repo_root().join("perf/tests/fixtures/test_key.pub");
    let public_key = public_key.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let (upstream, line) =
        spawn_pinned(0, &me, &["upstream", "--public-key", public_key, "--request-log-capacity", "0"], &[])?;
    let upstream_addr = parse_addr(&line)?;
    let dir = std::env::temp_dir().join(format!("snowgate-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = write_gateway_config(&dir, upstream_addr)?;
    let config = config.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let (gateway, line) =
        spawn_pinned(1, &spec.gateway_bin, &["--config", config, "--cores", "1"], &[("SNOWGATE_LOG", "warn")])?;
    let gateway_addr = parse_addr(&line)?;
    let me_pid = std::process::id();
    let mut results = Vec::new();
    for _ in 0..spec.runs {
        let mut direct = drive(
            upstream_addr,
            plan(upstream_addr, false, &spec.sql)?,
            spec,
            [Some(upstream.0.id()), None, Some(me_pid)],
        )?;
        direct.scenario = "direct";
        results.push(direct);
        let mut through = drive(
            gateway_addr,
            plan(gateway_addr, true, &spec.sql)?,
            spec,
            [Some(upstream.0.id()), Some(gateway.0.id()), Some(me_pid)],
        )?;
        through.scenario = "snowgate";
        results.push(through);
    }
    drop(gateway);
    drop(upstream);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The markdown table of medians per scenario, with the spread of req/s.
pub fn report(results: &[RunResult]) -> String {
    let mut out = String::from(
        "| scenario | req/s (median) | req/s min–max | p50 µs | p99 µs | upstream CPU µs/req | gateway CPU µs/req | load generator CPU µs/req | errors |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for scenario in ["direct", "snowgate"] {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.scenario == scenario).collect();
        if runs.is_empty() {
            continue;
        }
        let pick = |f: fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let rps: Vec<f64> = runs.iter().map(|r| r.requests_per_sec).collect();
        let (lo, hi) = (rps.iter().copied().fold(f64::MAX, f64::min), rps.iter().copied().fold(0.0, f64::max));
        out.push_str(&format!(
            "| {scenario} | {:.0} | {lo:.0}–{hi:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            pick(|r| r.requests_per_sec),
            pick(|r| r.p50_us),
            pick(|r| r.p99_us),
            pick(|r| r.upstream_cpu_us),
            pick(|r| r.gateway_cpu_us),
            pick(|r| r.loadgen_cpu_us),
            runs.iter().map(|r| r.errors).sum::<u64>(),
        ));
    }
    out
}
