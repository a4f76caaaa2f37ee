//! The load generators: simulated agents (log in, a stream of queries, log out) over many
//! keep-alive connections, in two modes, plus idle connections for the memory figures.
//!
//! - **Closed loop** (max throughput): every connection sends its next query as soon as the
//!   previous answer arrived. Latency here is only indicative (it includes queueing).
//! - **Open loop** (latency): query `i` is due at `start + i/rate`, whatever happened before;
//!   a pacer task queues it at that time and wakes an idle agent, and an agent freed later takes
//!   the oldest query still queued. Latency runs from the intended send time, so a stalled answer
//!   charges every query queued behind it (no coordinated omission); the send lag (how late
//!   queries left) is reported beside it. The pacer spins by yielding to the runtime until each
//!   due time, so sends leave within microseconds of it and the load generator's CPU reads as
//!   busy. Nothing in the open loop sleeps on the runtime's timer: monoio's timer has a
//!   resolution of one millisecond and fires only when the runtime parks, which a spinning
//!   runtime never does.
//!
//! Requests are written and answers read with the gateway's own `proxy::io::Conn`: there is
//! no second HTTP implementation. The generator runs on its own thread and monoio runtime,
//! pinned to the CPU it is given.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::net::TcpStream;
use serde_json::{Value, json};
use snowgate::http::{Limits, Method};
use snowgate::proxy::io::{Conn, Stream};

use super::measure::{Probe, Sample};

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
    conn.write_message(bytes::BytesMut::new(), wire, deadline).await?;
    let head = conn.read_response_head(Method::Post, &limits, deadline).await?;
    let body = conn.read_body(head.framing, limits.body_bytes_max, limits.body_bytes_max, deadline).await?;
    Ok((head.status, body, head.close))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect_addr(addr).await?;
    tcp.set_nodelay(true)?;
    let socket = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    Ok(Conn::new(Stream::Plain(tcp), socket, READ_BYTES))
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

/// The two wakers of a spin: the pacer's and its partner's.
///
/// A monoio task that wakes itself while it runs goes to the front of the run queue (its
/// `yield_now`), so a task spinning on its own waker would starve every other task. The pacer
/// therefore spins through a partner task: each wakes the other, and a task woken by another
/// goes to the back of the queue, behind the agents and the completion queue's wake-ups.
#[derive(Default)]
struct Spin {
    pacer: Option<Waker>,
    partner: Option<Waker>,
    stopped: bool,
}

/// The pacer's side of one spin step: pending once, having woken the partner.
struct SpinStep {
    spin: Rc<RefCell<Spin>>,
    yielded: bool,
}

impl Future for SpinStep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        let mut spin = self.spin.borrow_mut();
        spin.pacer = Some(cx.waker().clone());
        if let Some(partner) = spin.partner.take() {
            partner.wake();
        }
        Poll::Pending
    }
}

/// The partner task: whenever woken, wakes the pacer; ends once the pacer stops.
async fn spin_partner(spin: Rc<RefCell<Spin>>) {
    std::future::poll_fn(|cx| {
        let mut spin = spin.borrow_mut();
        if spin.stopped {
            return Poll::Ready(());
        }
        if let Some(pacer) = spin.pacer.take() {
            pacer.wake();
        }
        spin.partner = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Spins (letting every other task and the completion queue run between two looks at the
/// clock) until `due`.
async fn spin_until(spin: &Rc<RefCell<Spin>>, due: Instant) {
    while Instant::now() < due {
        SpinStep { spin: spin.clone(), yielded: false }.await;
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
    /// Run the generator's thread real-time (SCHED_FIFO 1). Only for the closed loop: the open
    /// loop spins, and a spinning real-time thread would be throttled by the kernel for 50 ms of
    /// every second.
    pub realtime: bool,
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
    /// Open loop only: of the queries due in the measured window, how many found every agent
    /// busy (so waited in the generator for a connection to free), and how many were due.
    pub busy_at_due: Option<(u64, u64)>,
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

/// The open loop's schedule, shared by the pacer and the agents: queries due and not yet
/// taken (oldest first), and the agents waiting for one.
#[derive(Default)]
struct Schedule {
    due: VecDeque<Instant>,
    idle_agents: Vec<Waker>,
    finished: bool,
    /// Queries due in the measured window.
    measured_due: u64,
    /// Of those, the ones that found no idle agent at their due time.
    measured_busy: u64,
}

/// Waits for the next due query: its due time, or `None` once the schedule is over and
/// drained.
struct NextDue {
    schedule: Rc<RefCell<Schedule>>,
}

impl Future for NextDue {
    type Output = Option<Instant>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        let mut schedule = self.schedule.borrow_mut();
        if let Some(due) = schedule.due.pop_front() {
            return Poll::Ready(Some(due));
        }
        if schedule.finished {
            return Poll::Ready(None);
        }
        schedule.idle_agents.push(cx.waker().clone());
        Poll::Pending
    }
}

/// The window opened: the probes' first samples and when they were taken.
type Opened = Rc<RefCell<Option<(Vec<Sample>, Instant)>>>;

/// The open loop's only spinning task: at each due time it queues the query and wakes one
/// idle agent; when the measured window opens it samples the probes. Nothing in the open loop
/// sleeps on the runtime's timer, so nothing depends on the runtime parking.
async fn pacer(
    schedule: Rc<RefCell<Schedule>>,
    rate_per_sec: f64,
    start: Instant,
    window: Window,
    probes: Rc<Vec<Probe>>,
    opened: Opened,
) {
    let spin = Rc::new(RefCell::new(Spin::default()));
    monoio::spawn(spin_partner(spin.clone()));
    let interval = Duration::from_secs_f64(1.0 / rate_per_sec);
    let mut sequence: u32 = 0;
    loop {
        let due = start + interval * sequence;
        if due >= window.stop_at {
            break;
        }
        spin_until(&spin, due).await;
        if opened.borrow().is_none() && due >= window.measure_from {
            *opened.borrow_mut() = Some((probes.iter().map(Probe::sample).collect(), Instant::now()));
        }
        let mut schedule = schedule.borrow_mut();
        schedule.due.push_back(due);
        let idle = schedule.idle_agents.pop();
        if due >= window.measure_from {
            schedule.measured_due += 1;
            schedule.measured_busy += u64::from(idle.is_none());
        }
        if let Some(agent) = idle {
            agent.wake();
        }
        sequence = sequence.saturating_add(1);
    }
    {
        let mut spin = spin.borrow_mut();
        spin.stopped = true;
        if let Some(partner) = spin.partner.take() {
            partner.wake();
        }
    }
    let mut schedule = schedule.borrow_mut();
    schedule.finished = true;
    for agent in schedule.idle_agents.drain(..) {
        agent.wake();
    }
}

/// When the agents' run starts measuring and stops.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    stop_at: Instant,
}

fn record(tally: &RefCell<Tally>, window: Window, due: Instant, sent: Instant, ok: bool) {
    let mut tally = tally.borrow_mut();
    if ok {
        tally.completed_all += 1;
    }
    if due < window.measure_from {
        return;
    }
    if !ok {
        tally.error("a query was answered without success:true".into());
        return;
    }
    tally.completed += 1;
    let latency = due.elapsed().as_nanos() as u64;
    let _ = tally.latency_ns.record(latency.clamp(1, LATENCY_NS_MAX));
    let lag = sent.saturating_duration_since(due).as_nanos() as u64;
    let _ = tally.send_lag_ns.record(lag.clamp(1, LATENCY_NS_MAX));
}

/// One agent: logs in, then sends queries (back to back in the closed loop, as the schedule
/// hands them out in the open loop), then logs out.
async fn agent_task(
    plan: Rc<AgentPlan>,
    schedule: Option<Rc<RefCell<Schedule>>>,
    window: Window,
    tally: Rc<RefCell<Tally>>,
) {
    let run = async {
        let mut agent = Agent::login(&plan).await?;
        loop {
            let due = match &schedule {
                None => Instant::now(),
                Some(schedule) => match (NextDue { schedule: schedule.clone() }).await {
                    Some(due) => due,
                    None => break,
                },
            };
            if due >= window.stop_at {
                break;
            }
            let sent = Instant::now();
            let ok = agent.query(plan.addr).await?;
            record(&tally, window, due, sent, ok);
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
    if spec.realtime && !matches!(spec.mode, Mode::OpenLoop { .. }) {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| link.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok()));
        if let Some(tid) = tid {
            super::procs::make_threads_realtime(&[tid]);
        }
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
    let ((first, window_start), busy_at_due) = runtime.block_on({
        let (plan, tally, probes) = (plan.clone(), tally.clone(), probes.clone());
        let mode = spec.mode.clone();
        let connections = spec.connections;
        async move {
            let window = Window { measure_from, stop_at };
            let opened: Opened = Rc::new(RefCell::new(None));
            let schedule = match mode {
                Mode::ClosedLoop => {
                    // No task spins in the closed loop, so the runtime's timer fires.
                    let (probes, opened) = (probes.clone(), opened.clone());
                    monoio::spawn(async move {
                        monoio::time::sleep(measure_from.saturating_duration_since(Instant::now())).await;
                        *opened.borrow_mut() = Some((probes.iter().map(Probe::sample).collect(), Instant::now()));
                    });
                    None
                }
                Mode::OpenLoop { rate_per_sec } => {
                    let schedule = Rc::new(RefCell::new(Schedule::default()));
                    let pacer = pacer(schedule.clone(), rate_per_sec, start, window, probes.clone(), opened.clone());
                    monoio::spawn(pacer);
                    Some(schedule)
                }
            };
            let handles: Vec<_> = (0..connections)
                .map(|_| monoio::spawn(agent_task(plan.clone(), schedule.clone(), window, tally.clone())))
                .collect();
            for handle in handles {
                handle.await;
            }
            let busy_at_due = schedule.map(|schedule| {
                let schedule = schedule.borrow();
                (schedule.measured_busy, schedule.measured_due)
            });
            // A window that never opened (a run shorter than its warm-up) samples now.
            let opened = opened.borrow_mut().take();
            (opened.unwrap_or_else(|| (probes.iter().map(Probe::sample).collect(), Instant::now())), busy_at_due)
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
        busy_at_due,
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
