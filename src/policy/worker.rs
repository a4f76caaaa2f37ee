//! Classification off the cores: a small pool of classifier threads with large stacks, a
//! bounded queue, and a future a monoio core awaits for the result.
//!
//! A pathological statement must not stall or crash a core. The classifier caps size, tokens
//! and nesting before it parses and runs sqlparser with a recursion limit, so it should never
//! overflow its stack; should it ever do so anyway, a stack overflow aborts the process, so it
//! runs here on threads with an 8 MiB stack rather than on a core, and a panic is caught and
//! reported as [`ClassifyError::Panicked`]. The queue is bounded: when it is full,
//! [`ClassifierPool::classify`] fails at once ([`ClassifyError::QueueFull`]) and the caller
//! refuses the statement (fail closed). The caller applies its own timeout around the future.
//!
//! The future is a [`crate::oneshot`]: a classifier thread that dies unanswered answers
//! [`ClassifyError::WorkerGone`].
//!
//! Asked to, the same thread also lexes the text for the earlier results it reads
//! ([`scan_targets`]), so a large statement is judged on what its tokens say (`LAST_QUERY_ID()`
//! apart from a variable), like a small one, without a second pass on the core.

use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use super::classify::classify;
use super::model::{Classified, Limits, Refusal};
use super::result_scan::{ScanTarget, scan_targets};
use crate::oneshot;

/// Why a classification did not produce a result. None of these is the agent's fault alone;
/// the caller refuses the statement in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The queue is full: the gateway is overloaded.
    #[error("the classifier queue is full (gateway overloaded)")]
    QueueFull,
    /// The pool shut down before answering.
    #[error("the classifier pool is shut down")]
    WorkerGone,
    /// The classifier panicked on this input (a gateway bug).
    #[error("the classifier failed on this statement (gateway bug)")]
    Panicked,
}

/// How the pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Classifier threads.
    pub threads: usize,
    /// Statements waiting at most.
    pub queue_capacity: usize,
    /// Stack of each thread, in bytes.
    pub stack_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig { threads: 2, queue_capacity: 1024, stack_bytes: 8 << 20 }
    }
}

/// A statement's classification and, when asked for, the earlier results it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// What [`classify`] made of the text.
    pub classified: Classified,
    /// [`scan_targets`] of the text, when the caller asked (the text may read earlier results).
    pub results_read: Option<Result<Vec<ScanTarget>, Refusal>>,
}

impl Classification {
    /// Classifies `text`, and reads which earlier results it reads when `results_read` is set.
    pub fn of(text: &str, limits: &Limits, results_read: bool) -> Classification {
        let classified = classify(text, limits);
        let results_read = results_read.then(|| scan_targets(text, limits, &classified));
        Classification { classified, results_read }
    }
}

type Outcome = Result<Classification, ClassifyError>;

/// The sending half: answers once; if dropped unanswered, answers `WorkerGone`.
type Reply = oneshot::Sender<Outcome>;

fn worker_gone() -> Outcome {
    Err(ClassifyError::WorkerGone)
}

/// The result of [`ClassifierPool::classify`], to await.
pub struct ClassifyFuture {
    reply: oneshot::Receiver<Outcome>,
}

impl Future for ClassifyFuture {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.reply).poll(cx)
    }
}

struct Job {
    text: String,
    limits: Limits,
    results_read: bool,
    reply: Reply,
}

/// The classifier threads.
pub struct ClassifierPool {
    sender: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl ClassifierPool {
    /// Starts the threads.
    pub fn start(config: PoolConfig) -> io::Result<ClassifierPool> {
        let (sender, receiver) = sync_channel::<Job>(config.queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(config.threads.max(1));
        for thread_idx in 0..config.threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let handle = std::thread::Builder::new()
                .name(format!("snowgate-classify-{thread_idx}"))
                .stack_size(config.stack_bytes)
                .spawn(move || worker_loop(&receiver))?;
            threads.push(handle);
        }
        Ok(ClassifierPool { sender: Some(sender), threads })
    }

    /// Queues `text` for classification under `limits` (the policy's, [`super::Policy::limits`],
    /// so a reloaded policy's limits apply at once), and for [`scan_targets`] when
    /// `results_read`. Never blocks: a full queue resolves the future at once with
    /// [`ClassifyError::QueueFull`].
    pub fn classify(&self, text: String, limits: Limits, results_read: bool) -> ClassifyFuture {
        let (reply, answer) = oneshot::channel(worker_gone);
        let job = Job { text, limits, results_read, reply };
        match &self.sender {
            Some(sender) => match sender.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => job.reply.send(Err(ClassifyError::QueueFull)),
                Err(TrySendError::Disconnected(job)) => job.reply.send(Err(ClassifyError::WorkerGone)),
            },
            None => job.reply.send(Err(ClassifyError::WorkerGone)),
        }
        ClassifyFuture { reply: answer }
    }

    /// Stops taking work, lets the threads finish what is queued, and joins them.
    pub fn shutdown(mut self) {
        self.sender.take();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for ClassifierPool {
    fn drop(&mut self) {
        // Dropping the sender ends the threads once the queue drains; they are not joined
        // here so that dropping the pool never blocks a core.
        self.sender.take();
    }
}

/// Statements up to this size are classified on the calling core ([`classify_inline`]): with
/// the size and nesting limits checked before parsing, they cannot take long, and a hop to a
/// classifier thread (two wake-ups and context switches) costs more than classifying them.
/// Larger ones go to the pool, where a slow one stalls a classifier thread, not a core.
pub const INLINE_BYTES_MAX: usize = 4096;

/// [`Classification::of`] on the calling thread, a panic becoming [`ClassifyError::Panicked`].
/// For statements up to [`INLINE_BYTES_MAX`]; larger ones belong on the pool.
pub fn classify_inline(text: &str, limits: &Limits, results_read: bool) -> Outcome {
    catch_unwind(AssertUnwindSafe(|| Classification::of(text, limits, results_read)))
        .map_err(|_| ClassifyError::Panicked)
}

fn worker_loop(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let receiver = receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            receiver.recv()
        };
        let Ok(job) = job else { return };
        // A caller that gave up (its wait timed out, its connection closed) reads no answer:
        // under overload, classifying for it would only make the next callers wait longer.
        if job.reply.is_abandoned() {
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| Classification::of(&job.text, &job.limits, job.results_read)));
        job.reply.send(outcome.map_err(|_| ClassifyError::Panicked));
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn inline_classification_equals_the_pools() {
        let pool = ClassifierPool::start(PoolConfig { threads: 1, ..PoolConfig::default() }).unwrap();
        let limits = Limits::default();
        let texts = ["select 1", "drop table t; select 2", "grant role r to user u", "select ((((1"];
        let scans = ["select * from table(result_scan(last_query_id()))", "describe result $q", "select ((((1"];
        for (text, results_read) in texts.iter().map(|t| (t, false)).chain(scans.iter().map(|t| (t, true))) {
            let pooled = futures_lite_block_on(pool.classify((*text).to_owned(), limits, results_read));
            assert_eq!(classify_inline(text, &limits, results_read), pooled, "{text}");
            assert_eq!(pooled.unwrap().results_read.is_some(), results_read, "{text}");
        }
        pool.shutdown();
    }

    fn futures_lite_block_on<F: Future>(future: F) -> F::Output {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    use crate::policy::model::{Kind, Refusal};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    struct ThreadWaker {
        thread: std::thread::Thread,
        woken: AtomicBool,
    }

    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.woken.store(true, Ordering::SeqCst);
            self.thread.unpark();
        }
    }

    /// A minimal executor: polls, parks until woken (from another thread).
    fn block_on<F: Future>(future: F) -> F::Output {
        let waker_state = Arc::new(ThreadWaker { thread: std::thread::current(), woken: AtomicBool::new(false) });
        let waker = Waker::from(Arc::clone(&waker_state));
        let mut cx = Context::from_waker(&waker);
        let mut future = Box::pin(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            while !waker_state.woken.swap(false, Ordering::SeqCst) {
                std::thread::park();
            }
        }
    }

    #[test]
    fn classifies_on_a_worker_thread() {
        let pool = ClassifierPool::start(PoolConfig::default()).unwrap();
        let classified = block_on(pool.classify("drop table t".into(), Limits::default(), false)).unwrap().classified;
        assert_eq!(classified.statements[0].kind, Kind::Drop);
        let deep = format!("select {}1{}", "(".repeat(100_000), ")".repeat(100_000));
        let refused = block_on(pool.classify(deep, Limits::default(), false)).unwrap().classified;
        assert_eq!(refused.refusal, Some(Refusal::TooDeep));
        // A large statement's results are read on the worker, by its tokens.
        let scan = format!("select * from table(result_scan(last_query_id())) -- {}", "x".repeat(5000));
        let read = block_on(pool.classify(scan, Limits::default(), true)).unwrap().results_read;
        assert_eq!(read, Some(Ok(vec![crate::policy::result_scan::ScanTarget::LastQueryId])));
        pool.shutdown();
    }

    #[test]
    fn a_full_queue_fails_at_once() {
        // One thread kept busy, a queue of one: the third request cannot wait.
        let config = PoolConfig { threads: 1, queue_capacity: 1, ..PoolConfig::default() };
        let pool = ClassifierPool::start(config).unwrap();
        let big = format!("select {}", vec!["1"; 60_000].join(" + "));
        let futures: Vec<ClassifyFuture> =
            (0..8).map(|_| pool.classify(big.clone(), Limits::default(), false)).collect();
        let outcomes: Vec<Outcome> = futures.into_iter().map(block_on).collect();
        assert!(outcomes.iter().any(|o| o == &Err(ClassifyError::QueueFull)));
        assert!(outcomes.iter().any(|o| o.is_ok()));
        pool.shutdown();
    }

    #[test]
    fn a_shut_down_pool_answers_worker_gone() {
        let mut pool = ClassifierPool::start(PoolConfig { threads: 1, ..PoolConfig::default() }).unwrap();
        pool.sender.take();
        assert_eq!(
            block_on(pool.classify("select 1".into(), Limits::default(), false)),
            Err(ClassifyError::WorkerGone)
        );
        let (reply, answer) = oneshot::channel(worker_gone);
        drop(reply);
        assert_eq!(block_on(ClassifyFuture { reply: answer }), Err(ClassifyError::WorkerGone));
    }

    #[test]
    fn a_monoio_core_can_await_it() {
        let pool = ClassifierPool::start(PoolConfig::default()).unwrap();
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        let kind = runtime.block_on(async {
            let future = pool.classify("select * from t".into(), Limits::default(), false);
            let classification = monoio::time::timeout(std::time::Duration::from_secs(10), future).await.unwrap();
            classification.unwrap().classified.statements[0].kind
        });
        assert_eq!(kind, Kind::Select);
        pool.shutdown();
    }
}
