//! The load generators: simulated agents (log in, a stream of queries, log out) over many
//! keep-alive connections, in two modes, plus idle connections for the memory figures.
//!
//! - **Closed loop** (max throughput): every connection sends its next query as soon as the
//!   previous answer arrived. Latency here is only indicative (it includes queueing).
//! - **Open loop** (latency): query `i` of connection `k` is due at
//!   `start + k/rate + i*connections/rate`, whatever happened before; its latency runs from that
//!   intended send time, so a stalled answer delays and charges every query queued behind it
//!   (no coordinated omission). Pacing sleeps on the runtime's millisecond timer until
//!   [`SPIN_WINDOW`] before the due time, then spins by yielding, so sends leave within a few
//!   microseconds of their due time; the load generator's CPU therefore reads as busy.
//!
//! Requests are written and answers read with the gateway's own `proxy::io::Conn`: there is
//! no second HTTP implementation. The generator runs on its own thread and monoio runtime,
//! pinned to the CPU it is given.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use serde_json::{Value, json};
use snowgate::http::{Limits, Method};
use snowgate::proxy::io::{Conn, Stream};

use super::measure::{Probe, Sample};

/// How long before a due time the open loop stops sleeping and starts spinning. The monoio
/// timer has a resolution of one millisecond and rounds up.
pub const SPIN_WINDOW: Duration = Duration::from_millis(2);
/// Longest wait for any one answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of each socket read.
const READ_BYTES: usize = 64 * 1024;
/// Largest latency the histograms hold, in nanoseconds (60 s).
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// The `requestId` every query carries (the double and the gateway only log it).
const QUERY_TARGET: &str = "/queries/v1/query-request?requestId=6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44";

/// How agents log in: as themselves through snowgate (an OIDC JWT), or with the gateway's
/// key-pair credential straight to the double (directly or through nginx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    /// `AUTHENTICATOR=OAUTH` with an OIDC JWT signed by the committed test IdP key.
    Oidc,
    /// `AUTHENTICATOR=SNOWFLAKE_JWT` with the committed upstream test key.
    KeyPair,
}

/// Where the load goes and how each agent speaks.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address connections open to.
    pub addr: SocketAddr,
    /// How agents log in.
    pub login: LoginKind,
    /// The statement of every query.
    pub sql: String,
}

/// What every agent sends, prepared once: the login request, the query body.
#[derive(Debug, Clone)]
pub struct AgentPlan {
    addr: SocketAddr,
    login_wire: Bytes,
    query_body: Bytes,
}

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

/// The OIDC token of the simulated agent, signed with the committed test IdP key the
/// harness's gateway configuration trusts.
pub fn agent_oidc_token(repo_root: &std::path::Path) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = json!({"iss": "https://idp.perf.snowgate", "aud": "snowgate-perf", "sub": "perf-agent",
        "groups": ["analysts"], "iat": now, "exp": now + 3600});
    let pem_path = repo_root.join("tests/fixtures/keys/idp-a.pem");
    let pem = std::fs::read(&pem_path).with_context(|| format!("reading {}", pem_path.display()))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("key-a".into());
    Ok(jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?)?)
}

impl AgentPlan {
    /// Prepares the requests for `target`.
    pub fn new(target: &Target, repo_root: &std::path::Path) -> anyhow::Result<AgentPlan> {
        let credential = match target.login {
            LoginKind::Oidc => json!({"AUTHENTICATOR": "OAUTH", "TOKEN": agent_oidc_token(repo_root)?,
                "ACCOUNT_NAME": "perf", "LOGIN_NAME": "agent"}),
            LoginKind::KeyPair => {
                let jwt = crate::keypair::mint_keypair_jwt(
                    crate::test_keys::TEST_PRIVATE_KEY_PEM,
                    "TESTACCT",
                    "SNOWGATE",
                    3600,
                )?;
                json!({"AUTHENTICATOR": "SNOWFLAKE_JWT", "TOKEN": jwt, "ACCOUNT_NAME": "TESTACCT", "LOGIN_NAME": "SNOWGATE"})
            }
        };
        let mut login = json!({"data": {"CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12.0",
            "CLIENT_ENVIRONMENT": {"APPLICATION": "snowgate-perf"}, "SESSION_PARAMETERS": {}}});
        for (k, v) in credential.as_object().into_iter().flatten() {
            login["data"][k] = v.clone();
        }
        let login_wire = request_wire(
            "/session/v1/login-request?request_id=3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            target.addr,
            "Snowflake Token=\"None\"",
            &gzip_json(&login),
        );
        let query = json!({"sqlText": target.sql, "asyncExec": false, "sequenceId": 1, "querySubmissionTime": 1,
            "isInternal": false, "describeOnly": false, "parameters": {}, "queryContextDTO": {"entries": []}});
        Ok(AgentPlan { addr: target.addr, login_wire, query_body: Bytes::from(gzip_json(&query)) })
    }
}

/// One logged-in agent on one keep-alive connection.
struct Agent {
    conn: Conn,
    query_wire: Bytes,
    logout_wire: Bytes,
}

async fn exchange(conn: &mut Conn, wire: Bytes) -> anyhow::Result<(u16, Bytes, bool)> {
    let limits = Limits::default();
    let deadline = monoio::time::Instant::now() + EXCHANGE_TIMEOUT;
    let (result, _) = conn.stream.write_all(wire).await;
    result?;
    let head = conn.read_response_head(Method::Post, &limits, deadline).await?;
    let body = conn.read_body(head.framing, limits.body_bytes_max, deadline).await?;
    Ok((head.status, body, head.close))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect_addr(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(Conn::new(Stream::Plain(tcp), READ_BYTES))
}

impl Agent {
    async fn login(plan: &AgentPlan) -> anyhow::Result<Agent> {
        let mut conn = connect(plan.addr).await?;
        let (status, body, _) = exchange(&mut conn, plan.login_wire.clone()).await?;
        let login: Value = serde_json::from_slice(&body).with_context(|| format!("login answer ({status})"))?;
        let Some(token) = login["data"]["token"].as_str() else {
            bail!("login refused ({status}): {}", String::from_utf8_lossy(&body));
        };
        let authorization = format!("Snowflake Token=\"{token}\"");
        Ok(Agent {
            conn,
            query_wire: request_wire(QUERY_TARGET, plan.addr, &authorization, &plan.query_body),
            logout_wire: request_wire("/session?delete=true", plan.addr, &authorization, &gzip_json(&json!({}))),
        })
    }

    /// Sends the query and reads its answer; true when it succeeded. A proxy that closes the
    /// connection after an answer (a keep-alive request limit) gets a new connection; the
    /// session token stays valid.
    async fn query(&mut self, addr: SocketAddr) -> anyhow::Result<bool> {
        let (status, body, close) = exchange(&mut self.conn, self.query_wire.clone()).await?;
        if close {
            self.conn = connect(addr).await?;
        }
        Ok(status == 200 && memchr::memmem::find(&body, b"\"success\":true").is_some())
    }

    async fn logout(mut self) {
        let _ = exchange(&mut self.conn, self.logout_wire.clone()).await;
    }
}

/// A future that is pending once, so other tasks (and the completion queue) run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Waits until `due`: the coarse timer while far, spinning (yielding) within [`SPIN_WINDOW`].
async fn pace_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > SPIN_WINDOW {
            monoio::time::sleep(left - SPIN_WINDOW).await;
        } else {
            YieldNow(false).await;
        }
    }
}

/// The load of one measured run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Back-to-back queries on every connection.
    ClosedLoop,
    /// Queries due at `rate_per_sec` in total, spread evenly over the connections.
    OpenLoop {
        /// Target rate, queries per second, all connections together.
        rate_per_sec: f64,
    },
}

/// Settings of one measured run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Closed or open loop.
    pub mode: Mode,
    /// Agents (one connection each).
    pub connections: usize,
    /// Time before measuring (answers then are not recorded).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// The CPU the generator's thread is pinned to.
    pub cpu: Option<usize>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Successful queries completed in the window, per second.
    pub requests_per_sec: f64,
    /// Successful queries in the window.
    pub completed: u64,
    /// Successful queries over the whole run, warm-up included (to check that the upstream
    /// answered each: the hop really happened).
    pub completed_all: u64,
    /// Failed queries and failed connections, whole run.
    pub errors: u64,
    /// Latency in nanoseconds: from the intended send time (open loop) or the actual send
    /// time (closed loop) to the whole answer read.
    pub latency_ns: Histogram<u64>,
    /// How late sends left against their due time (open loop only), nanoseconds.
    pub send_lag_ns: Histogram<u64>,
    /// The probes sampled at the start and the end of the window.
    pub samples: Vec<(Sample, Sample)>,
    /// The window actually measured.
    pub window: Duration,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

struct Tally {
    completed: u64,
    completed_all: u64,
    errors: u64,
    latency_ns: Histogram<u64>,
    send_lag_ns: Histogram<u64>,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn agent_task(
    index: usize,
    plan: Rc<AgentPlan>,
    mode: Mode,
    connections: usize,
    start: Instant,
    measure_from: Instant,
    stop_at: Instant,
    tally: Rc<RefCell<Tally>>,
) {
    let run = async {
        let mut agent = Agent::login(&plan).await?;
        let mut sequence: u64 = 0;
        loop {
            let (due, sent) = match &mode {
                Mode::ClosedLoop => {
                    let now = Instant::now();
                    (now, now)
                }
                Mode::OpenLoop { rate_per_sec } => {
                    let interval_secs = connections as f64 / rate_per_sec;
                    let offset_secs = index as f64 / rate_per_sec + sequence as f64 * interval_secs;
                    let due = start + Duration::from_secs_f64(offset_secs);
                    if due < stop_at {
                        pace_until(due).await;
                    }
                    (due, Instant::now())
                }
            };
            sequence += 1;
            if due >= stop_at {
                break;
            }
            let ok = agent.query(plan.addr).await?;
            if ok {
                tally.borrow_mut().completed_all += 1;
            }
            if due >= measure_from {
                let mut tally = tally.borrow_mut();
                if ok {
                    tally.completed += 1;
                    let latency = due.elapsed().as_nanos() as u64;
                    let _ = tally.latency_ns.record(latency.clamp(1, LATENCY_NS_MAX));
                    let lag = sent.saturating_duration_since(due).as_nanos() as u64;
                    let _ = tally.send_lag_ns.record(lag.clamp(1, LATENCY_NS_MAX));
                } else {
                    tally.error("a query was answered without success:true".into());
                }
            }
        }
        agent.logout().await;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = run.await {
        tally.borrow_mut().error(format!("{e:#}"));
    }
}

/// Runs one measured load against `plan`'s address on a new thread (pinned to `spec.cpu`),
/// sampling `probes` at the start and the end of the measured window.
pub fn run(plan: &AgentPlan, spec: &LoadSpec, probes: Vec<Probe>) -> anyhow::Result<LoadResult> {
    let plan = plan.clone();
    let spec = spec.clone();
    std::thread::Builder::new()
        .name("sgperf-load".into())
        .spawn(move || run_here(plan, spec, probes))
        .context("spawning the load generator thread")?
        .join()
        .map_err(|_| anyhow!("the load generator panicked"))?
}

fn run_here(plan: AgentPlan, spec: LoadSpec, probes: Vec<Probe>) -> anyhow::Result<LoadResult> {
    if let Some(cpu) = spec.cpu {
        monoio::utils::bind_to_cpu_set([cpu]).map_err(|e| anyhow!("pinning the load generator to CPU {cpu}: {e:?}"))?;
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    let tally = Rc::new(RefCell::new(Tally {
        completed: 0,
        completed_all: 0,
        errors: 0,
        latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)?,
        send_lag_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)?,
        first_error: None,
    }));
    let plan = Rc::new(plan);
    // Logins happen before the schedule starts, so they never delay the first due queries.
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + spec.warmup;
    let stop_at = measure_from + spec.duration;
    let probes = Rc::new(probes);
    let (first, window_start) = runtime.block_on({
        let (plan, tally, probes) = (plan.clone(), tally.clone(), probes.clone());
        let mode = spec.mode.clone();
        let connections = spec.connections;
        async move {
            let mut handles = Vec::with_capacity(connections);
            for index in 0..connections {
                handles.push(monoio::spawn(agent_task(
                    index,
                    plan.clone(),
                    mode.clone(),
                    connections,
                    start,
                    measure_from,
                    stop_at,
                    tally.clone(),
                )));
            }
            monoio::time::sleep(measure_from.saturating_duration_since(Instant::now())).await;
            let first: Vec<Sample> = probes.iter().map(Probe::sample).collect();
            let window_start = Instant::now();
            for handle in handles {
                handle.await;
            }
            (first, window_start)
        }
    });
    let last: Vec<Sample> = probes.iter().map(Probe::sample).collect();
    let window = window_start.elapsed().min(spec.duration.max(Duration::from_millis(1)));
    let tally = Rc::try_unwrap(tally).map_err(|_| anyhow!("a load task outlived the run"))?.into_inner();
    Ok(LoadResult {
        requests_per_sec: tally.completed as f64 / spec.duration.as_secs_f64(),
        completed: tally.completed,
        completed_all: tally.completed_all,
        errors: tally.errors,
        latency_ns: tally.latency_ns,
        send_lag_ns: tally.send_lag_ns,
        samples: first.into_iter().zip(last).collect(),
        window,
        first_error: tally.first_error,
    })
}

/// Opens `count` connections to `addr` (TLS handshakes completed when `tls` is given) and
/// keeps them idle until `hold` returns; for the memory-per-connection figure. Returns how
/// many connections were established.
pub fn hold_idle_connections(
    addr: SocketAddr,
    count: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    cpu: Option<usize>,
    hold: impl FnOnce(usize) + Send + 'static,
) -> anyhow::Result<usize> {
    std::thread::Builder::new()
        .name("sgperf-idle".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                let _ = monoio::utils::bind_to_cpu_set([cpu]);
            }
            let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
            runtime.block_on(async move {
                let opened = Rc::new(RefCell::new(Vec::with_capacity(count)));
                let failures = Rc::new(RefCell::new(0usize));
                // A bounded number of handshakes in flight, so the listener's backlog never
                // overflows and the figure does not depend on SYN retries.
                const IN_FLIGHT_MAX: usize = 64;
                let mut next = 0;
                while next < count {
                    let batch_end = (next + IN_FLIGHT_MAX).min(count);
                    let mut handles = Vec::with_capacity(batch_end - next);
                    for _ in next..batch_end {
                        let (opened, failures, tls) = (opened.clone(), failures.clone(), tls.clone());
                        handles.push(monoio::spawn(async move {
                            match open_idle(addr, tls).await {
                                Ok(stream) => opened.borrow_mut().push(stream),
                                Err(_) => *failures.borrow_mut() += 1,
                            }
                        }));
                    }
                    for handle in handles {
                        handle.await;
                    }
                    next = batch_end;
                }
                let established = opened.borrow().len();
                // Let the gateway settle (its per-connection state is allocated on accept and
                // on the first wait for a request).
                monoio::time::sleep(Duration::from_millis(500)).await;
                hold(established);
                drop(opened);
                Ok::<_, anyhow::Error>(established)
            })
        })
        .context("spawning the idle connection thread")?
        .join()
        .map_err(|_| anyhow!("the idle connection thread panicked"))?
}

async fn open_idle(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Stream> {
    let tcp = TcpStream::connect_addr(addr).await?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(config) => {
            let connector = monoio_rustls::TlsConnector::from(config);
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = connector.connect(name, tcp).await.map_err(std::io::Error::from)?;
            Ok(Stream::ClientTls(Box::new(stream)))
        }
    }
}
