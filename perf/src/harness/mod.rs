//! The perf harness: the whole comparison in one call ([`run`]), from a [`RunSpec`] to a
//! [`Report`] (a markdown table and an SVG plot, see [`report`]).
//!
//! For each payload (the ~1 KB and ~18 KB results by default):
//! 1. **Max throughput**, closed loop: each scenario `runs` times, alternating, each run on a
//!    freshly started proxy. Placement: load generator and double on CPU 0, the proxy on CPU 1
//!    (snowgate `--cores 1`, nginx one worker), so the proxy has a core of its own.
//! 2. **Latency**, open loop at `open_fraction` of nginx's max rate (of the fastest proxy when
//!    nginx is absent), the same rate for every scenario. Placement: the load generator alone on
//!    CPU 0 (it spins to pace precisely), double and proxy on CPU 1. Added latency is the
//!    scenario's percentile minus direct's at the same rate.
//!
//! Then the scale figures: gateway memory per idle connection (plain and TLS, RSS delta over
//! `idle_connections` connections; nginx plain for comparison) and max throughput with
//! `--cores 1` against `--cores 2` (nginx with one and two workers beside it).
//!
//! The double and the load generator run in this process on pinned threads; snowgate and
//! nginx are child processes. CPU µs per request of each comes from `/proc` schedstat.

pub mod loadgen;
pub mod measure;
pub mod procs;
pub mod report;
pub mod scenario;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::stats::EndpointKind;
use crate::{RunningUpstream, UpstreamConfig};
use loadgen::{AgentPlan, LoadResult, LoadSpec, Mode, Target};
use measure::Probe;
use procs::{Listener, ProxyPlacement};
use scenario::{Environment, Scenario};

/// Thread-name prefix of the in-process double's runtime threads.
const DOUBLE_THREADS: &str = "snowflake-doubl";
/// Thread-name prefix of the load generator.
const LOAD_THREADS: &str = "sgperf-load";

/// A result the agents ask for, by the double's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Its name in tables (`1KB`).
    pub name: String,
    /// The statement.
    pub sql: String,
}

impl Payload {
    /// The default payloads: the ~1 KB (SMALL) and ~18 KB (MEDIUM) JSON results.
    pub fn defaults() -> Vec<Payload> {
        vec![
            Payload { name: "1KB".into(), sql: "select * from small".into() },
            Payload { name: "18KB".into(), sql: "select * from medium".into() },
        ]
    }

    /// Parses `name=sql` or one of the vocabulary's short names (`small`, `medium`,
    /// `arrow_small`, `arrow_medium`, `one`).
    pub fn parse(text: &str) -> anyhow::Result<Payload> {
        if let Some((name, sql)) = text.split_once('=') {
            return Ok(Payload { name: name.into(), sql: sql.into() });
        }
        let (name, sql) = match text {
            "small" | "1KB" => ("1KB", "select * from small"),
            "medium" | "18KB" => ("18KB", "select * from medium"),
            "arrow_small" => ("arrow-1KB", "select * from arrow_small"),
            "arrow_medium" => ("arrow-18KB", "select * from arrow_medium"),
            "one" => ("one-row", "select 1"),
            other => anyhow::bail!(
                "unknown payload {other:?}: use small, medium, arrow_small, arrow_medium, one or name=sql"
            ),
        };
        Ok(Payload { name: name.into(), sql: sql.into() })
    }
}

/// Everything one comparison runs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The snowgate binary.
    pub gateway_bin: PathBuf,
    /// Its `bench-unrecorded` build (the recording-off scenario).
    pub unrecorded_bin: PathBuf,
    /// Scenarios to run (those that cannot run here are skipped and reported).
    pub scenarios: Vec<Scenario>,
    /// Payloads.
    pub payloads: Vec<Payload>,
    /// Agents (connections) of the closed loop.
    pub closed_connections: usize,
    /// Agents (connections) of the open loop.
    pub open_connections: usize,
    /// Closed-loop runs per scenario.
    pub runs: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Closed-loop measured window.
    pub closed_duration: Duration,
    /// Open-loop measured window.
    pub open_duration: Duration,
    /// The open-loop rate as a fraction of nginx's max rate.
    pub open_fraction: f64,
    /// The open-loop rate in requests a second, when set (instead of the fraction).
    pub open_rate: Option<f64>,
    /// Idle connections for the memory figure (0 skips it).
    pub idle_connections: usize,
    /// Whether to measure `--cores 1` against `--cores 2`.
    pub cores_comparison: bool,
    /// Whether the open loop runs the double and the proxy real-time (SCHED_FIFO 1) when
    /// permitted, so neighbours' work cannot delay their wake-ups (see
    /// [`procs::realtime_allowed`]).
    pub realtime: bool,
}

impl RunSpec {
    /// The full comparison: a few minutes.
    pub fn full(gateway_bin: PathBuf) -> RunSpec {
        RunSpec {
            unrecorded_bin: unrecorded_beside(&gateway_bin),
            gateway_bin,
            scenarios: scenario::SCENARIOS.to_vec(),
            payloads: Payload::defaults(),
            closed_connections: 32,
            open_connections: 32,
            runs: 3,
            warmup: Duration::from_secs(1),
            closed_duration: Duration::from_secs(5),
            open_duration: Duration::from_secs(10),
            open_fraction: 0.5,
            open_rate: None,
            idle_connections: 10_000,
            cores_comparison: true,
            realtime: true,
        }
    }

    /// Under a minute: one run each, short windows, 2,000 idle connections.
    pub fn quick(gateway_bin: PathBuf) -> RunSpec {
        RunSpec {
            runs: 1,
            warmup: Duration::from_millis(500),
            closed_duration: Duration::from_secs(2),
            open_duration: Duration::from_secs(3),
            idle_connections: 2_000,
            ..RunSpec::full(gateway_bin)
        }
    }

    /// Seconds: the smoke test's mode, which only proves every part still works.
    pub fn tiny(gateway_bin: PathBuf) -> RunSpec {
        RunSpec {
            payloads: vec![Payload::parse("small").unwrap_or_else(|_| Payload::defaults().remove(0))],
            closed_connections: 4,
            open_connections: 4,
            runs: 1,
            warmup: Duration::from_millis(200),
            closed_duration: Duration::from_millis(500),
            open_duration: Duration::from_millis(500),
            idle_connections: 50,
            ..RunSpec::full(gateway_bin)
        }
    }
}

/// Where `perf/run.sh` puts the `bench-unrecorded` build: beside the gateway binary, named
/// `<name>-unrecorded`.
pub fn unrecorded_beside(gateway_bin: &std::path::Path) -> PathBuf {
    let mut name = gateway_bin.file_name().unwrap_or_default().to_os_string();
    name.push("-unrecorded");
    gateway_bin.with_file_name(name)
}

/// One closed-loop run of one scenario.
#[derive(Debug, Clone, Default)]
pub struct ClosedRun {
    /// Successful queries per second.
    pub requests_per_sec: f64,
    /// Closed-loop latency percentiles, µs (indicative only).
    pub p50_us: f64,
    /// See above.
    pub p99_us: f64,
    /// CPU µs per request: the double.
    pub upstream_cpu_us: f64,
    /// CPU µs per request: the proxy (0 when direct).
    pub proxy_cpu_us: f64,
    /// CPU µs per request: the load generator.
    pub loadgen_cpu_us: f64,
    /// The proxy's resident memory at the end of the run, bytes.
    pub proxy_rss_bytes: u64,
    /// Recording bytes on disk per query the double answered (snowgate only).
    pub recording_bytes_per_query: Option<f64>,
    /// Raw bytes per query (request + response body as the gateway sees them).
    pub raw_bytes_per_query: f64,
    /// Errors (failed queries or connections).
    pub errors: u64,
    /// Queries the double answered during the run against those the agents completed: a
    /// proxy must not answer on its own (the hop really happens).
    pub hop_ratio: f64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

/// The open-loop run of one scenario.
#[derive(Debug, Clone, Default)]
pub struct OpenRun {
    /// The target rate.
    pub target_rate: f64,
    /// Successful queries per second achieved.
    pub achieved_rate: f64,
    /// Latency from the intended send time, µs.
    pub p50_us: f64,
    /// See above.
    pub p99_us: f64,
    /// See above.
    pub p999_us: f64,
    /// See above.
    pub max_us: f64,
    /// How late sends left, 99th percentile, µs (pacing precision).
    pub send_lag_p99_us: f64,
    /// The share of the window's queries that found all the generator's agents busy at their
    /// due time (0 to 1): see [`OpenRun::saturated`].
    pub busy_at_due: f64,
    /// CPU µs per request: the double, the proxy, the load generator.
    pub upstream_cpu_us: f64,
    /// See above.
    pub proxy_cpu_us: f64,
    /// See above.
    pub loadgen_cpu_us: f64,
    /// The proxy's resident memory at the end, bytes.
    pub proxy_rss_bytes: u64,
    /// Recording bytes on disk per query the double answered (snowgate only). The open loop's
    /// batches are small (one linger window's frames), so this is the worse case for
    /// compression; the closed loop's full batches are the better one.
    pub recording_bytes_per_query: Option<f64>,
    /// Raw bytes per query (request + response body as the gateway sees them).
    pub raw_bytes_per_query: f64,
    /// Errors.
    pub errors: u64,
}

impl OpenRun {
    /// More than 1% of the queries found every agent (connection) busy at their due time and
    /// waited in the generator for one to free. With agents enough for several milliseconds of
    /// answers in flight, that happens only when the scenario fell behind the load; the p99 is
    /// then the queue in the load generator, which grows without bound while the overload
    /// lasts, and a ratio of two such p99s says nothing about the gateway.
    pub fn saturated(&self) -> bool {
        self.busy_at_due > 0.01
    }

    /// Recording bytes on disk per raw byte.
    pub fn recording_ratio(&self) -> Option<f64> {
        self.recording_bytes_per_query.map(|on_disk| on_disk / self.raw_bytes_per_query.max(1.0))
    }
}

/// Everything measured for one payload.
#[derive(Debug, Clone, Default)]
pub struct PayloadReport {
    /// The payload.
    pub name: String,
    /// Its statement.
    pub sql: String,
    /// Bytes of the query answer body.
    pub answer_bytes: usize,
    /// Closed-loop runs per scenario, in scenario order.
    pub closed: Vec<(&'static str, Vec<ClosedRun>)>,
    /// The open-loop rate used.
    pub open_rate: f64,
    /// Open-loop run per scenario.
    pub open: Vec<(&'static str, OpenRun)>,
}

/// Memory per idle connection.
#[derive(Debug, Clone, Default)]
pub struct IdleMemory {
    /// What was measured (`snowgate plain`, `snowgate TLS`, `nginx plain`).
    pub what: String,
    /// Connections established.
    pub connections: usize,
    /// RSS before, bytes.
    pub rss_before_bytes: u64,
    /// RSS with the connections open, bytes.
    pub rss_with_bytes: u64,
}

impl IdleMemory {
    /// RSS growth per connection, bytes.
    pub fn bytes_per_connection(&self) -> f64 {
        self.rss_with_bytes.saturating_sub(self.rss_before_bytes) as f64 / self.connections.max(1) as f64
    }
}

/// Max throughput by cores.
#[derive(Debug, Clone, Default)]
pub struct CoresFigure {
    /// `snowgate --cores 1`, `nginx 2 workers`...
    pub what: String,
    /// Successful queries per second (median of the runs).
    pub requests_per_sec: f64,
    /// Proxy CPU µs per request.
    pub proxy_cpu_us: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// UTC date of the run (`2026-11-22`).
    pub date: String,
    /// The commit measured (`git rev-parse --short HEAD`), when known.
    pub commit: String,
    /// Load average before and after.
    pub load_before: String,
    /// See above.
    pub load_after: String,
    /// The command line, for the record.
    pub command: String,
    /// Settings, for the record.
    pub settings: String,
    /// Per payload.
    pub payloads: Vec<PayloadReport>,
    /// Scenarios that could not run, and why.
    pub skipped: Vec<(String, String)>,
    /// Memory per idle connection.
    pub idle_memory: Vec<IdleMemory>,
    /// Throughput by cores.
    pub cores: Vec<CoresFigure>,
    /// Wall-clock time of the whole comparison.
    pub elapsed: Duration,
}

/// The CPUs of the placements: with two or more CPUs, 0 and 1; with one, 0 for everything.
fn cpus() -> (usize, usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n >= 2 { (0, 1) } else { (0, 0) }
}

fn double_config() -> UpstreamConfig {
    UpstreamConfig {
        public_key_pem: Some(crate::test_keys::TEST_PUBLIC_KEY_PEM.into()),
        request_log_capacity: 0,
        ..UpstreamConfig::default()
    }
}

fn start_double(cpu: usize) -> anyhow::Result<RunningUpstream> {
    crate::start_pinned(double_config(), SocketAddr::from(([127, 0, 0, 1], 0)), 1, &[cpu])
}

/// The probes of a run, in order: double, proxy (if any), load generator.
fn probes(proxy: Option<Probe>) -> Vec<Probe> {
    let mut probes = vec![Probe::Threads(DOUBLE_THREADS)];
    probes.extend(proxy);
    probes.push(Probe::Threads(LOAD_THREADS));
    probes
}

/// CPU µs per request of (double, proxy, load generator) from a result sampled with [`probes`].
fn cpu_split(result: &LoadResult, has_proxy: bool) -> (f64, f64, f64, u64) {
    let per =
        |i: usize| result.samples.get(i).map_or(0.0, |(a, b)| measure::cpu_us_per_request(a, b, result.completed));
    let rss = |i: usize| result.samples.get(i).map_or(0, |(_, b)| b.rss_bytes);
    if has_proxy { (per(0), per(1), per(2), rss(1)) } else { (per(0), 0.0, per(1), 0) }
}

fn percentile_us(result: &LoadResult, q: f64) -> f64 {
    result.latency_ns.value_at_quantile(q) as f64 / 1000.0
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The answer body size of a statement, asked of a double (for the report).
fn answer_bytes(double: &RunningUpstream, sql: &str) -> usize {
    let run = || -> anyhow::Result<usize> {
        let mut client = crate::client::Client::connect(double.addr)?;
        let jwt = crate::keypair::mint_keypair_jwt(crate::test_keys::TEST_PRIVATE_KEY_PEM, "TESTACCT", "SNOWGATE", 60)?;
        let login = serde_json::json!({"data": {"AUTHENTICATOR": "SNOWFLAKE_JWT", "TOKEN": jwt,
            "ACCOUNT_NAME": "TESTACCT", "LOGIN_NAME": "SNOWGATE"}});
        let answer = client.post_json("/session/v1/login-request", &[], &login, false)?.json()?;
        let token = answer["data"]["token"].as_str().unwrap_or_default().to_owned();
        let auth = format!("Snowflake Token=\"{token}\"");
        let body = serde_json::json!({"sqlText": sql});
        Ok(client.post_json("/queries/v1/query-request", &[("authorization", &auth)], &body, false)?.body.len())
    };
    run().unwrap_or(0)
}

/// Runs the whole comparison. Progress goes to stderr.
pub fn run(spec: &RunSpec, command: &str) -> anyhow::Result<Report> {
    let started = Instant::now();
    let repo_root = scenario::repo_root();
    let scratch = std::env::temp_dir().join(format!("snowgate-perf-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let env = Environment {
        gateway_bin: spec.gateway_bin.clone(),
        unrecorded_bin: spec.unrecorded_bin.clone(),
        nginx_bin: procs::find_nginx(),
        repo_root: repo_root.clone(),
        scratch: scratch.clone(),
    };
    let nofile = procs::raise_open_files_limit(spec.idle_connections as u64 * 2 + 4096);
    // Before any thread or child starts, so that all inherit it.
    let nice = procs::raise_priority();
    let mut report = Report {
        date: report::utc_date(std::time::SystemTime::now()),
        commit: report::git_commit(&repo_root),
        load_before: measure::load_average(),
        command: command.to_owned(),
        ..Report::default()
    };
    let mut runnable: Vec<Scenario> = Vec::new();
    for scenario in &spec.scenarios {
        match scenario::check(&env, scenario) {
            Ok(()) => runnable.push(*scenario),
            Err(reason) => {
                eprintln!("snowgate-perf: skipping {}: {reason}", scenario.name);
                report.skipped.push((scenario.name.to_owned(), reason));
            }
        }
    }
    let (cpu_a, cpu_b) = cpus();
    let realtime = if !spec.realtime {
        "off"
    } else if procs::realtime_allowed() {
        "on"
    } else {
        "not permitted here"
    };
    report.settings = format!(
        "closed loop: {} agents, {} run(s) × {:?} after {:?} warm-up; open loop: {} agents, {:?}, at {}; \
         placement: closed loop = load generator + double on CPU {cpu_a}, proxy on CPU {cpu_b}; open loop = load generator \
         on CPU {cpu_a}, double + proxy on CPU {cpu_b}; nice {nice} for all of them; real-time (SCHED_FIFO 1) {realtime} for the double, the proxy \
         and the closed-loop load generator (the open-loop one spins and stays at nice {nice}); open files limit {nofile}",
        spec.closed_connections,
        spec.runs,
        spec.closed_duration,
        spec.warmup,
        spec.open_connections,
        spec.open_duration,
        spec.open_rate.map_or_else(
            || format!("{:.0}% of nginx's max", spec.open_fraction * 100.0),
            |rate| format!("{rate:.0} req/s")
        )
    );
    for payload in &spec.payloads {
        report.payloads.push(run_payload(spec, &env, &runnable, payload)?);
    }
    if spec.idle_connections > 0 {
        report.idle_memory = idle_memory(spec, &env, &runnable)?;
    }
    if spec.cores_comparison {
        report.cores = cores_comparison(spec, &env, &runnable)?;
    }
    report.load_after = measure::load_average();
    report.elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(report)
}

/// Where a closed-loop run places its processes.
#[derive(Debug, Clone)]
struct Placement {
    /// The load generator's CPU.
    loadgen_cpu: usize,
    /// The proxy's.
    proxy: ProxyPlacement,
}

fn closed_run(
    spec: &RunSpec,
    env: &Environment,
    scenario: &Scenario,
    double: &RunningUpstream,
    sql: &str,
    tag: &str,
    placement: &Placement,
) -> anyhow::Result<ClosedRun> {
    let running = scenario::start(env, scenario, tag, double.addr, &placement.proxy, Listener::Plain)
        .with_context(|| format!("starting {}", scenario.name))?;
    let plan =
        AgentPlan::new(&Target { addr: running.addr, login: scenario.login(), sql: sql.into() }, &env.repo_root)?;
    let queries_before = double.stats.requests(EndpointKind::Query);
    let bytes_before = double.stats.bytes_received();
    let load = LoadSpec {
        mode: Mode::ClosedLoop,
        connections: spec.closed_connections,
        warmup: spec.warmup,
        duration: spec.closed_duration,
        cpu: Some(placement.loadgen_cpu),
        realtime: placement.proxy.realtime,
    };
    let result = loadgen::run(&plan, &load, probes(running.probe()))?;
    let answered = double.stats.requests(EndpointKind::Query) - queries_before;
    let (upstream_cpu_us, proxy_cpu_us, loadgen_cpu_us, proxy_rss_bytes) =
        cpu_split(&result, running.process.is_some());
    let (recording_bytes_per_query, raw_bytes_per_query) =
        bytes_per_query(&running, double, sql, answered, bytes_before);
    drop(running);
    Ok(ClosedRun {
        requests_per_sec: result.requests_per_sec,
        p50_us: percentile_us(&result, 0.50),
        p99_us: percentile_us(&result, 0.99),
        upstream_cpu_us,
        proxy_cpu_us,
        loadgen_cpu_us,
        proxy_rss_bytes,
        recording_bytes_per_query,
        raw_bytes_per_query,
        errors: result.errors,
        hop_ratio: answered as f64 / result.completed_all.max(1) as f64,
        first_error: result.first_error,
    })
}

/// Recording bytes on disk and raw bytes (answer body and request as the double saw them),
/// per query the double answered since `bytes_before` was read.
fn bytes_per_query(
    running: &scenario::Running,
    double: &RunningUpstream,
    sql: &str,
    answered: u64,
    bytes_before: u64,
) -> (Option<f64>, f64) {
    // Frames reach the disk from the recorder thread shortly after their answers.
    let recording = running.recordings.as_ref().map(|dir| {
        std::thread::sleep(Duration::from_millis(100));
        measure::directory_bytes(dir) as f64 / answered.max(1) as f64
    });
    let answer_len = answer_bytes(double, sql) as f64;
    let request_len = (double.stats.bytes_received() - bytes_before) as f64 / answered.max(1) as f64;
    (recording, answer_len + request_len)
}

fn run_payload(
    spec: &RunSpec,
    env: &Environment,
    scenarios: &[Scenario],
    payload: &Payload,
) -> anyhow::Result<PayloadReport> {
    let (cpu_a, cpu_b) = cpus();
    let mut out = PayloadReport { name: payload.name.clone(), sql: payload.sql.clone(), ..PayloadReport::default() };
    let mut closed: BTreeMap<&'static str, Vec<ClosedRun>> = BTreeMap::new();
    {
        let double = start_double(cpu_a)?;
        let realtime = spec.realtime && procs::realtime_allowed();
        if realtime {
            procs::make_threads_realtime(&measure::thread_ids(DOUBLE_THREADS));
        }
        out.answer_bytes = answer_bytes(&double, &payload.sql);
        for run_index in 0..spec.runs {
            for scenario in scenarios {
                eprintln!(
                    "snowgate-perf: {} closed loop, {} run {}/{}",
                    payload.name,
                    scenario.name,
                    run_index + 1,
                    spec.runs
                );
                let tag = format!("{}-closed-{run_index}", payload.name);
                let proxy = ProxyPlacement { cpus: vec![cpu_b], cores: 1, realtime };
                let placement = Placement { loadgen_cpu: cpu_a, proxy };
                let run = closed_run(spec, env, scenario, &double, &payload.sql, &tag, &placement)?;
                closed.entry(scenario.name).or_default().push(run);
            }
        }
    }
    out.closed = scenarios.iter().filter_map(|s| closed.remove(s.name).map(|runs| (s.name, runs))).collect();
    let max_of = |name: &str| {
        out.closed.iter().find(|(n, _)| *n == name).map(|(_, runs)| median(runs.iter().map(|r| r.requests_per_sec)))
    };
    let reference = max_of("nginx").or_else(|| {
        out.closed
            .iter()
            .filter(|(n, _)| *n != "direct")
            .map(|(_, runs)| median(runs.iter().map(|r| r.requests_per_sec)))
            .reduce(f64::max)
    });
    let rate = spec
        .open_rate
        .unwrap_or_else(|| (reference.or_else(|| max_of("direct")).unwrap_or(1000.0) * spec.open_fraction).max(10.0));
    out.open_rate = rate;
    let double = start_double(cpu_b)?;
    let realtime = spec.realtime && procs::realtime_allowed();
    if realtime {
        procs::make_threads_realtime(&measure::thread_ids(DOUBLE_THREADS));
    }
    let proxy = ProxyPlacement { cpus: vec![cpu_b], cores: 1, realtime };
    for scenario in scenarios {
        eprintln!("snowgate-perf: {} open loop at {rate:.0}/s, {}", payload.name, scenario.name);
        let tag = format!("{}-open", payload.name);
        let running = scenario::start(env, scenario, &tag, double.addr, &proxy, Listener::Plain)
            .with_context(|| format!("starting {}", scenario.name))?;
        let plan = AgentPlan::new(
            &Target { addr: running.addr, login: scenario.login(), sql: payload.sql.clone() },
            &env.repo_root,
        )?;
        let load = LoadSpec {
            mode: Mode::OpenLoop { rate_per_sec: rate },
            connections: spec.open_connections,
            warmup: spec.warmup,
            duration: spec.open_duration,
            cpu: Some(cpu_a),
            realtime: false,
        };
        let queries_before = double.stats.requests(EndpointKind::Query);
        let bytes_before = double.stats.bytes_received();
        let result = loadgen::run(&plan, &load, probes(running.probe()))?;
        let answered = double.stats.requests(EndpointKind::Query) - queries_before;
        let (upstream_cpu_us, proxy_cpu_us, loadgen_cpu_us, proxy_rss_bytes) =
            cpu_split(&result, running.process.is_some());
        let (recording_bytes_per_query, raw_bytes_per_query) =
            bytes_per_query(&running, &double, &payload.sql, answered, bytes_before);
        out.open.push((
            scenario.name,
            OpenRun {
                target_rate: rate,
                achieved_rate: result.requests_per_sec,
                p50_us: percentile_us(&result, 0.50),
                p99_us: percentile_us(&result, 0.99),
                p999_us: percentile_us(&result, 0.999),
                max_us: result.latency_ns.max() as f64 / 1000.0,
                send_lag_p99_us: result.send_lag_ns.value_at_quantile(0.99) as f64 / 1000.0,
                busy_at_due: result.busy_at_due.map_or(0.0, |(busy, due)| busy as f64 / due.max(1) as f64),
                upstream_cpu_us,
                proxy_cpu_us,
                loadgen_cpu_us,
                proxy_rss_bytes,
                recording_bytes_per_query,
                raw_bytes_per_query,
                errors: result.errors,
            },
        ));
    }
    Ok(out)
}

fn idle_memory(spec: &RunSpec, env: &Environment, scenarios: &[Scenario]) -> anyhow::Result<Vec<IdleMemory>> {
    let (cpu_a, cpu_b) = cpus();
    let double = start_double(cpu_a)?;
    let mut figures = Vec::new();
    let gateway = scenarios.iter().find(|s| s.name == "snowgate-forward");
    let nginx = scenarios.iter().find(|s| s.name == "nginx");
    let mut cases: Vec<(String, &Scenario, Listener)> = Vec::new();
    if let Some(g) = gateway {
        cases.push(("snowgate, plain".into(), g, Listener::Plain));
        cases.push(("snowgate, TLS".into(), g, Listener::Tls));
    }
    if let Some(n) = nginx {
        cases.push(("nginx, plain".into(), n, Listener::Plain));
    }
    let ca = std::fs::read(env.repo_root.join("tests/fixtures/tls/ca.pem")).context("reading the test CA")?;
    let client_tls = snowgate::proxy::tls::client_config(Some(&ca)).context("the harness's TLS client")?;
    for (what, scenario, listener) in cases {
        eprintln!("snowgate-perf: {} idle connections to {what}", spec.idle_connections);
        let proxy = ProxyPlacement { cpus: vec![cpu_b], cores: 1, realtime: false };
        let running = scenario::start(env, scenario, "idle", double.addr, &proxy, listener)?;
        let pid = running.process.as_ref().map(|p| p.pid()).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(200));
        let rss_before_bytes = Probe::Process(pid).sample().rss_bytes;
        let rss_with = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tls = (listener == Listener::Tls).then(|| client_tls.clone());
        let connections = loadgen::hold_idle_connections(running.addr, spec.idle_connections, tls, Some(cpu_a), {
            let rss_with = rss_with.clone();
            move |_| rss_with.store(Probe::Process(pid).sample().rss_bytes, std::sync::atomic::Ordering::Relaxed)
        })?;
        drop(running);
        figures.push(IdleMemory {
            what,
            connections,
            rss_before_bytes,
            rss_with_bytes: rss_with.load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    Ok(figures)
}

fn cores_comparison(spec: &RunSpec, env: &Environment, scenarios: &[Scenario]) -> anyhow::Result<Vec<CoresFigure>> {
    let (cpu_a, cpu_b) = cpus();
    let payload = spec.payloads.first().cloned().unwrap_or_else(|| Payload::defaults().remove(0));
    let double = start_double(cpu_a)?;
    let realtime = spec.realtime && procs::realtime_allowed();
    if realtime {
        procs::make_threads_realtime(&measure::thread_ids(DOUBLE_THREADS));
    }
    let mut figures = Vec::new();
    for name in ["snowgate-forward", "nginx"] {
        let Some(scenario) = scenarios.iter().find(|s| s.name == name) else { continue };
        for cores in [1usize, 2] {
            // One core: the proxy on CPU 1, as in the comparison. Two: both CPUs, shared with
            // the load generator and the double.
            let proxy_cpus: Vec<usize> = if cores == 1 { vec![cpu_b] } else { vec![cpu_a, cpu_b] };
            let mut runs = Vec::new();
            for run_index in 0..spec.runs {
                eprintln!("snowgate-perf: {name} with {cores} core(s), run {}/{}", run_index + 1, spec.runs);
                let tag = format!("cores-{cores}-{run_index}");
                let proxy = ProxyPlacement { cpus: proxy_cpus.clone(), cores, realtime };
                let placement = Placement { loadgen_cpu: cpu_a, proxy };
                runs.push(closed_run(spec, env, scenario, &double, &payload.sql, &tag, &placement)?);
            }
            let unit = if scenario.is_snowgate() { format!("--cores {cores}") } else { format!("{cores} worker(s)") };
            figures.push(CoresFigure {
                what: format!("{name} {unit}, {}", payload.name),
                requests_per_sec: median(runs.iter().map(|r| r.requests_per_sec)),
                proxy_cpu_us: median(runs.iter().map(|r| r.proxy_cpu_us)),
            });
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(Payload::parse("small").unwrap().sql, "select * from small");
        assert_eq!(Payload::parse("x=select 2").unwrap(), Payload { name: "x".into(), sql: "select 2".into() });
        assert!(Payload::parse("bogus").is_err());
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn modes_are_ordered_by_cost() {
        let full = RunSpec::full("g".into());
        let quick = RunSpec::quick("g".into());
        let tiny = RunSpec::tiny("g".into());
        assert!(tiny.closed_duration < quick.closed_duration && quick.closed_duration <= full.closed_duration);
        assert!(tiny.idle_connections < quick.idle_connections && quick.idle_connections < full.idle_connections);
        assert_eq!(full.idle_connections, 10_000);
    }
}
