//! Thread-per-core: one monoio runtime per core, each with its own SO_REUSEPORT listener,
//! upstream pool and recorder; signals; draining on SIGTERM.
//!
//! The listeners are bound here, before the threads start, so that a port of 0 is resolved
//! once and every core listens on the same port. Draining: stop accepting (a connection accepted
//! as the drain begins is closed unserved), let in-flight requests finish up to the deadline,
//! close keep-alive connections after their current answer and idle ones at once.

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, error, info, warn};

use crate::admin::{self, AdminHandle};
use crate::config::Config;
use crate::identity::TokenUse;
use crate::policy::Subject;
use crate::proxy::{Core, Gateway, StartError};
use crate::record::{EventKind, Recorder};

/// A connection's task, whose panic ends that connection only. monoio does not catch a task's
/// panic: it unwinds out of the core's runtime and takes the thread, its listener and every
/// connection on it down. A panic is a bug, and is printed as one; the core serves on (the
/// request it cut short leaves the in-flight count as its guard unwinds: `proxy::Counted`).
struct Contained<F> {
    core: usize,
    task: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = ()>> Contained<F> {
    fn new(core: usize, task: F) -> Contained<F> {
        Contained { core, task: Some(Box::pin(task)) }
    }
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(task) = self.task.as_mut() else { return Poll::Ready(()) };
        match catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                // Dropped here, its connection closes.
                self.task = None;
                error!(
                    core = self.core,
                    "A connection's task panicked; the connection was closed, the core serves on."
                );
                Poll::Ready(())
            }
        }
    }
}

/// Which io driver a core runs.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() { "io_uring" } else { "epoll (io_uring unavailable)" }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A running gateway: its cores and the address they listen on.
pub struct Running {
    /// The address every core listens on (the port resolved if 0 was asked).
    pub local_addr: SocketAddr,
    /// The shared state (for draining and counters).
    pub gateway: Arc<Gateway>,
    /// Where the reviewers' admin API listens, when configured.
    pub admin_addr: Option<SocketAddr>,
    cores: Vec<JoinHandle<()>>,
    admin: Option<(AdminHandle, Arc<Recorder>)>,
    /// Held until the recorders have stopped ([`lock_recording_dir`]).
    _recording_lock: std::fs::File,
}

impl Running {
    /// Starts draining: stop accepting, finish in-flight requests, then return from
    /// [`Running::join`].
    pub fn drain(&self) {
        self.gateway.draining.store(true, Ordering::Release);
    }

    /// Waits for every core to finish, then stops the admin listener and its recorder.
    pub fn join(self) {
        join_cores(self.cores);
        if let Some(admin) = self.admin {
            stop_admin(admin);
        }
    }
}

fn join_cores(cores: Vec<JoinHandle<()>>) {
    for core in cores {
        if core.join().is_err() {
            error!("A core thread panicked.");
        }
    }
}

fn stop_admin((admin, recorder): (AdminHandle, Arc<Recorder>)) {
    admin.stop();
    if let Ok(recorder) = Arc::try_unwrap(recorder)
        && let Err(e) = recorder.stop()
    {
        error!(error = %e, "The admin recorder did not stop cleanly.");
    }
}

/// Takes the recording directory for this process (creating it if need be): an advisory lock
/// on the directory itself, released when the process ends, however it ends. A second gateway
/// on the same directory would take this one's open segments for a crash's, cut what it took
/// for a torn tail and seal them under this one's feet; it is refused before it listens.
fn lock_recording_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use crate::record::storage::{FileSystem, Storage};
    let what = || format!("recording directory {}", dir.display());
    let io_error = |source| StartError::Io { what: what(), source };
    FileSystem.create_dir_all(dir).map_err(io_error)?;
    let handle = std::fs::File::open(dir).map_err(io_error)?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => Err(io_error(std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            "in use by another snowgate process (each gateway needs a recording directory of its own)",
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(io_error(source)),
    }
}

/// What `--check-config` can tell of the recording directory without creating or locking it
/// (a gateway may be running on it): it is a directory, or the nearest part of its path that
/// exists is one, in which the start creates the rest.
pub fn check_recording_dir(dir: &std::path::Path) -> Result<(), StartError> {
    let existing = dir.ancestors().find(|path| path.as_os_str().is_empty() || path.exists()).unwrap_or(dir);
    let existing = if existing.as_os_str().is_empty() { std::path::Path::new(".") } else { existing };
    let problem = |why: String| StartError::Io {
        what: format!("recording directory {}", dir.display()),
        source: std::io::Error::new(std::io::ErrorKind::NotADirectory, why),
    };
    let metadata = std::fs::metadata(existing)
        .map_err(|source| StartError::Io { what: format!("recording directory {}", dir.display()), source })?;
    if !metadata.is_dir() {
        return Err(if existing == dir {
            problem("it is not a directory".into())
        } else {
            problem(format!("{} is not a directory", existing.display()))
        });
    }
    Ok(())
}

/// Starts one runtime per configured core and returns once all serve. Everything that can
/// fail comes first (the recording directory, the listeners, the admin API and its recorder,
/// each core's runtime and recorder); the cores accept only once all of it stands, so a start
/// that fails has answered no agent, and it stops what it started before returning.
pub fn start(config: Config) -> Result<Running, StartError> {
    let gateway = Arc::new(Gateway::new(config)?);
    let settings = gateway.config.runtime.clone();
    let recording_lock = lock_recording_dir(&gateway.config.recording_dir)?;
    let io_error = |what: String| move |source| StartError::Io { what, source };
    let first = bind_reuseport(gateway.config.listen.address)
        .map_err(io_error(format!("listen on {}", gateway.config.listen.address)))?;
    let local_addr = first.local_addr().map_err(io_error("listener address".into()))?;
    let mut listeners = vec![first];
    for _ in 1..settings.cores {
        listeners.push(bind_reuseport(local_addr).map_err(io_error(format!("listen on {local_addr}")))?);
    }
    // Probing for io_uring sets up a ring, and the kernel's teardown of it later interrupts the
    // probing thread's blocking system calls (EINTR, with no signal to show for it). The probe
    // runs on a thread of its own, so that the caller (a program embedding the gateway, a test
    // reading from a socket) is never interrupted.
    let driver = std::thread::scope(|scope| scope.spawn(driver_name).join()).unwrap_or("unknown");
    info!(
        cores = settings.cores,
        %local_addr,
        driver,
        tls = gateway.server_tls.is_some(),
        upstream = %gateway.config.upstream.url.host_header(),
        "snowgate starting."
    );
    #[cfg(feature = "bench-unrecorded")]
    tracing::warn!(
        "This is a bench-unrecorded build: NOTHING IS RECORDED. It exists only to measure what recording costs."
    );
    let admin = match gateway.config.approvals.admin_address {
        Some(address) => Some(start_admin(&gateway, address)?),
        None => None,
    };
    let n_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StartError>>();
    let mut cores = Vec::with_capacity(settings.cores);
    let mut go = Vec::with_capacity(settings.cores);
    let mut failed = None;
    for (core_id, listener) in listeners.into_iter().enumerate() {
        let gateway = gateway.clone();
        let ready = ready_tx.clone();
        let settings = settings.clone();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name(format!("snowgate-core-{core_id}")).spawn(move || {
            if settings.pin_cpus {
                let cpu = core_id % n_cpus;
                if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                    warn!(core = core_id, cpu, error = ?e, "CPU pinning failed; running unpinned.");
                }
            }
            let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(settings.uring_entries)
                .enable_timer()
                .build();
            let mut runtime = match runtime {
                Ok(runtime) => runtime,
                Err(source) => {
                    let _ = ready.send(Err(StartError::Io { what: format!("core {core_id} runtime"), source }));
                    return;
                }
            };
            runtime.block_on(run_core(core_id, driver, gateway, listener, ready, go_rx));
        });
        match thread {
            Ok(thread) => {
                cores.push(thread);
                go.push(go_tx);
            }
            Err(source) => {
                failed = Some(StartError::Io { what: format!("core {core_id} thread"), source });
                break;
            }
        }
    }
    drop(ready_tx);
    for _ in 0..cores.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert(StartError::Io {
                    what: "core start".into(),
                    source: std::io::Error::other("a core thread died"),
                });
                break;
            }
        }
    }
    if let Some(e) = failed {
        // The cores that started see their go signal dropped: they stop their recorders and
        // end without having accepted.
        gateway.draining.store(true, Ordering::Release);
        drop(go);
        join_cores(cores);
        if let Some(admin) = admin {
            stop_admin(admin);
        }
        return Err(e);
    }
    for go in go {
        let _ = go.send(());
    }
    let admin_addr = admin.as_ref().map(|(handle, _)| handle.local_addr());
    Ok(Running { local_addr, gateway, admin_addr, cores, admin, _recording_lock: recording_lock })
}

/// Starts the reviewers' admin API. Reviewers present their own OIDC token (verified like an
/// agent's, against the keys already loaded); every decision is recorded before it takes
/// effect ([`DecisionRecording`]), in a chain of its own (core number = the number of cores),
/// and logged.
/// Whose fault a refused reviewer token is: the provider's when its keys are missing or stale.
fn refusal(error: crate::identity::AuthError) -> admin::Refusal {
    if error.provider_unavailable() {
        admin::Refusal::ProviderUnavailable(error.to_string())
    } else {
        admin::Refusal::Token(error.to_string())
    }
}

fn start_admin(gateway: &Arc<Gateway>, address: SocketAddr) -> Result<(AdminHandle, Arc<Recorder>), StartError> {
    let config = &gateway.config;
    let io_error = |what: String| move |source| StartError::Io { what, source };
    let listener = StdListener::bind(address).map_err(io_error(format!("admin listener on {address}")))?;
    // The chain after the last core's: `--cores` is at most `CORES_MAX`, so this fits a u16.
    let recording = config.runtime.recording.recorder_config(
        &config.recording_dir,
        config.runtime.cores as u16,
        config.recording_key,
    );
    let recorder = Arc::new(Recorder::start(recording).map_err(|e| StartError::Io {
        what: format!("admin recording in {}", config.recording_dir.display()),
        source: std::io::Error::other(e),
    })?);
    let verifying = gateway.clone();
    let authenticate: admin::Authenticate = Arc::new(move |token: &str| {
        let verifier = &verifying.verifier;
        let verified = match verifier.verify_for(token, std::time::Instant::now(), TokenUse::Reviewer) {
            // A rotated key, or keys past their cache TTL (no agent logged in for an hour while a
            // statement waited for review): fetch, as the cores do, on this thread.
            Err(e) if e.refetch_may_help() => {
                // The permit first: a caller refused one (too soon) costs no runtime.
                let Some(refetch) = crate::proxy::JwksRefetch::begin(&verifying) else { return Err(refusal(e)) };
                let fetched = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|mut runtime| runtime.block_on(refetch.run(&verifying)));
                if let Err(error) = fetched {
                    warn!(error = %error, "JWKS refetch for the admin API failed; keeping the keys in force.");
                }
                verifier.verify_for(token, std::time::Instant::now(), TokenUse::Reviewer)
            }
            other => other,
        };
        verified.map(|identity| Subject { sub: identity.sub, groups: identity.groups }).map_err(refusal)
    });
    let recording = Arc::new(DecisionRecording {
        recorder: recorder.clone(),
        durable_timeout: config.runtime.recording.durable_timeout,
    });
    let handle = admin::start(
        listener,
        gateway.ledger.clone(),
        authenticate,
        recording,
        config.approvals.admin_groups.clone(),
        admin::AdminLimits::default(),
    )
    .map_err(io_error(format!("admin listener on {address}")))?;
    info!(address = %handle.local_addr(), "Admin API listening.");
    if config.identity.verifier.reviewer_audiences.is_empty() {
        warn!(
            "Reviewers present tokens of the agents' audience, so a token naming a reviewer group is also an \
             agent's: set [approvals] reviewer_audience to keep the two apart."
        );
    }
    Ok((handle, recorder))
}

/// The reviewers' decisions in the admin chain: a `review_request` event before a decision
/// reaches the ledger, a `review_decision` event with its outcome after. The durability mode
/// applies as it does to statements: the request record is accepted (durable in `strict`)
/// before the decision takes effect, and the reviewer's answer waits for the outcome record
/// to be durable in `batch` and `strict`. `admin::decide` logs each decision and any failure.
struct DecisionRecording {
    recorder: Arc<Recorder>,
    durable_timeout: Duration,
}

impl DecisionRecording {
    fn record(&self, kind: &str, detail: String, wait: bool) -> Result<(), String> {
        let ticket = self.recorder.submit_event(EventKind::Other(kind.into()), detail).map_err(|e| e.to_string())?;
        if !wait {
            return Ok(());
        }
        match ticket.wait_durable(self.durable_timeout) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("not durable within {} ms", self.durable_timeout.as_millis())),
        }
    }

    /// The record's text; the reason, free text from the reviewer, comes last so that nothing
    /// it says can pass for a field.
    fn detail(decision: &admin::AdminDecision, outcome: Option<&str>) -> String {
        let outcome = outcome.map(|outcome| format!(" outcome={outcome}")).unwrap_or_default();
        format!(
            "reviewer={} query_id={} decision={} at_unix_ms={}{outcome} reason={}",
            crate::record::detail_value(&decision.reviewer.sub),
            decision.query_id,
            decision.kind.as_str(),
            decision.at_unix_ms,
            decision.reason
        )
    }
}

impl admin::RecordDecisions for DecisionRecording {
    fn before(&self, decision: &admin::AdminDecision) -> Result<(), String> {
        let wait = self.recorder.durability().hold_request_until_durable();
        self.record("review_request", Self::detail(decision, None), wait)
    }

    fn after(
        &self,
        decision: &admin::AdminDecision,
        outcome: &Result<crate::policy::approvals::PollState, crate::policy::approvals::LedgerError>,
    ) -> Result<(), String> {
        let outcome = match outcome {
            Ok(state) => state.name().to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        let wait = self.recorder.durability().hold_answer_until_durable();
        self.record("review_decision", Self::detail(decision, Some(&outcome)), wait)
    }
}

async fn run_core(
    core_id: usize,
    driver: &'static str,
    gateway: Arc<Gateway>,
    listener: StdListener,
    ready: std::sync::mpsc::Sender<Result<(), StartError>>,
    go: std::sync::mpsc::Receiver<()>,
) {
    let setup = (|| {
        let listener = monoio::net::TcpListener::from_std(listener)
            .map_err(|source| StartError::Io { what: format!("core {core_id} listener"), source })?;
        let core = Core::new(core_id, gateway.clone())?;
        Ok::<_, StartError>((listener, Rc::new(core)))
    })();
    let (listener, core) = match setup {
        Ok(parts) => {
            let _ = ready.send(Ok(()));
            parts
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Let go of the sender at once: `start` learns that a core died before reporting from
    // every sender being gone, which a core waiting below must not prevent.
    drop(ready);
    // Blocking the thread is fine here: nothing runs on this core's runtime yet. A dropped
    // signal means another part of the start failed: nothing was accepted, nothing is owed.
    if go.recv().is_err() {
        core.stop_recording();
        return;
    }
    info!(core = core_id, driver, "Core serving.");

    // Accepting is cancelled (not dropped mid-flight, which can lose an accepted socket under
    // io_uring) when draining begins: a watcher task owns the canceller. It also wakes the idle
    // keep-alive connections then, which close: no answer is owed to them.
    let canceller = monoio::io::Canceller::new();
    let cancel_handle = canceller.handle();
    monoio::spawn({
        let core = core.clone();
        async move {
            let mut ticks = 0u32;
            while !core.gateway.is_draining() {
                monoio::time::sleep(Duration::from_millis(50)).await;
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(20) {
                    core.record_review_outcomes();
                }
            }
            drop(canceller.cancel());
            core.close_idle_connections();
        }
    });
    loop {
        match listener.cancelable_accept(cancel_handle.clone()).await {
            // The watcher cancels accepting only on its next tick, so a connection can still be
            // accepted after draining began. It is closed unserved, as it would have been
            // refused had the listener closed a moment sooner.
            Ok((tcp, peer)) if gateway.is_draining() => {
                debug!(core = core_id, %peer, "Connection closed unserved: the gateway is draining.");
                drop(tcp);
                break;
            }
            Ok((tcp, peer)) => {
                monoio::spawn(Contained::new(core_id, core.clone().serve(tcp, peer)));
            }
            Err(_) if gateway.is_draining() => break,
            Err(e) => {
                warn!(core = core_id, error = %e, "Accept failed.");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);

    // `--drain-timeout-secs` is at most a day (config), so this cannot overflow.
    let deadline = std::time::Instant::now() + gateway.config.runtime.drain_timeout;
    while gateway.metrics.in_flight.load(Ordering::Acquire) > 0
        && std::time::Instant::now() < deadline
        && !gateway.drain_abandoned.load(Ordering::Acquire)
    {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = gateway.metrics.in_flight.load(Ordering::Acquire);
    if left > 0 {
        warn!(core = core_id, in_flight = left, "Drain ended with requests in flight; they are not answered.");
    }
    core.record_review_outcomes();
    core.stop_recording();
    info!(core = core_id, "Core stopped.");
}

/// Runs the gateway until SIGTERM or SIGINT, then drains; a second SIGTERM or SIGINT ends the
/// wait for requests in flight (the recorders still stop in order, which a hung disk can hold
/// up to `record::limits::STOP_TIMEOUT`), and a third exits at once (status 1; the next start
/// recovers the segments left open). SIGHUP (a closed terminal, a service manager's reload) is
/// logged and ignored: the configuration is read once, at start.
pub fn run(config: Config) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| StartError::Io { what: "signal handlers".into(), source })?;
    // A file-size limit (RLIMIT_FSIZE) must fail the recorder's write with EFBIG, which it
    // handles (statements are refused until writing works again), not kill the gateway.
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, Arc::new(std::sync::atomic::AtomicBool::new(false)))
        .map_err(|source| StartError::Io { what: "SIGXFSZ handler".into(), source })?;
    let running = start(config)?;
    println!("snowgate listening on {}", running.local_addr);
    let hangup = || {
        warn!("SIGHUP ignored: snowgate reads its configuration once; restart it (SIGTERM drains) to apply a change.")
    };
    for signal in signals.forever() {
        if signal == SIGHUP {
            hangup();
            continue;
        }
        info!(signal, "Signal received: draining.");
        break;
    }
    running.drain();
    let gateway = running.gateway.clone();
    /// Ends the signal loop below when the drain ends, however it ends (a panic included).
    struct CloseOnDrop(signal_hook::iterator::Handle);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let closer = CloseOnDrop(signals.handle());
    let joining = std::thread::Builder::new()
        .name("snowgate-drain".into())
        .spawn(move || {
            let _closer = closer;
            running.join();
        })
        .map_err(|source| StartError::Io { what: "drain thread".into(), source })?;
    // Until the drain ends.
    for signal in signals.forever() {
        if signal == SIGHUP {
            hangup();
        } else if !gateway.drain_abandoned.swap(true, Ordering::AcqRel) {
            warn!(signal, "Second signal: the drain stops waiting for requests in flight; the recordings are closed.");
        } else {
            error!(signal, "Third signal: exiting now; the next start recovers the segments left open.");
            std::process::exit(1);
        }
    }
    if joining.join().is_err() {
        error!("The drain panicked.");
    }
    info!("snowgate stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task that panics ends alone: the core's runtime and its other tasks go on.
    #[test]
    fn a_panicking_connection_task_ends_alone() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        let served = runtime.block_on(async {
            let served = Rc::new(std::cell::Cell::new(false));
            let panicking = monoio::spawn(Contained::new(0, async {
                monoio::time::sleep(Duration::from_millis(1)).await;
                panic!("a bug in one connection");
            }));
            let other = monoio::spawn(Contained::new(0, {
                let served = served.clone();
                async move {
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    served.set(true);
                }
            }));
            panicking.await;
            other.await;
            served.get()
        });
        assert!(served);
    }
}
