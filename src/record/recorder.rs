//! [`Recorder`]: a core's handle on its recorder thread. Frames go through a bounded
//! lock-free queue (crossbeam `ArrayQueue`) to the thread, which owns the core's
//! [`SegmentWriter`], batches what is queued, and fsyncs per [`Durability`]. Each submitted
//! frame gets a [`Ticket`] whose [`Ticket::durable`] future completes when its record is
//! durable per the mode; the thread wakes the future's `Waker` itself (the gateway runs
//! monoio with its `sync` feature), and parks (never sleeps in a loop) when idle.
//!
//! This file must never retry an fsync that failed: the recorder fails instead.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use tracing::{error, info, warn};

use super::format::SealReason;
use super::frame::{EventFrame, EventKind, Frame, RequestLink};
use super::limits;
use super::storage::{FileSystem, Storage};
use super::writer::RecordError;
use super::writer::{BatchItems, RecoveryReport, SegmentWriter, WriteError};

/// The time, as the recorder sees it: an input, so tests drive rotation by age.
pub trait Clock: Send + Sync {
    /// Now, in Unix microseconds.
    fn now_unix_us(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_us(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }
}

/// A clock that moves only when told, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `unix_us`.
    pub fn new(unix_us: u64) -> ManualClock {
        ManualClock(AtomicU64::new(unix_us))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// When a record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the page cache.
    None,
    /// Group commit: fsync at most every `interval`.
    Batch {
        /// The least time between two fsyncs.
        interval: Duration,
    },
    /// Fsync after every write.
    Strict,
}

impl Durability {
    /// The default group-commit interval.
    pub const BATCH_INTERVAL_DEFAULT: Duration = Duration::from_millis(2);

    /// Whether the gateway must wait for the request record to be durable before it
    /// forwards the statement (`strict`).
    pub fn hold_request_until_durable(self) -> bool {
        matches!(self, Durability::Strict)
    }

    /// Whether the gateway must wait for the response record to be durable before it
    /// releases the answer (`batch` and `strict`).
    pub fn hold_answer_until_durable(self) -> bool {
        matches!(self, Durability::Batch { .. } | Durability::Strict)
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Batch { .. } => "batch",
            Durability::Strict => "strict",
        }
    }
}

impl FromStr for Durability {
    type Err = String;

    /// `none`, `batch` (default interval), `batch:<ms>` or `strict`.
    fn from_str(text: &str) -> Result<Durability, String> {
        match text {
            "none" => Ok(Durability::None),
            "strict" => Ok(Durability::Strict),
            "batch" => Ok(Durability::Batch { interval: Durability::BATCH_INTERVAL_DEFAULT }),
            other => match other.strip_prefix("batch:").and_then(|ms| ms.parse::<u64>().ok()) {
                Some(ms) if ms <= 1000 => Ok(Durability::Batch { interval: Duration::from_millis(ms) }),
                _ => Err(format!("{other:?} is not a durability mode (none, batch, batch:<ms up to 1000>, strict)")),
            },
        }
    }
}

/// A core's recorder settings.
#[derive(Clone)]
pub struct RecorderConfig {
    /// The recording directory (shared by all cores; files are named by core).
    pub directory: PathBuf,
    /// The core.
    pub core_id: u16,
    /// Frames the queue holds before `submit` refuses.
    pub queue_depth: usize,
    /// Bytes (as frames will be encoded) the queue holds before `submit` refuses a frame,
    /// unless the queue is empty: frames carry bodies up to the answer caps, and the queue
    /// keeps each alive (answered already, in `none` mode) until it is written.
    pub queue_bytes_max: usize,
    /// Most frames per batch (one zstd frame).
    pub batch_frames_max: usize,
    /// A batch closes once its frames reach this many bytes.
    pub batch_bytes_max: usize,
    /// zstd level (negative levels are the fast ones).
    pub zstd_level: i32,
    /// A segment is sealed once it reaches this size.
    pub segment_bytes_max: u64,
    /// A segment holding records is sealed once this old.
    pub segment_age_max: Duration,
    /// When a record counts as durable.
    pub durability: Durability,
    /// How often writing is retried while the disk fails.
    pub unavailable_retry: Duration,
    /// In `none` and `batch` modes, how long the recorder, woken by a first frame, waits for
    /// more before writing: one wake-up and one batch per window instead of one per frame
    /// (a context switch per exchange was most of what recording cost a core under moderate
    /// load). Never in `strict` mode (the statement waits for its record), never past the
    /// time the next group commit is due (so not at all when one is due already), and not
    /// when a full batch is already queued.
    pub linger: Duration,
    /// The key segment footers are sealed and batches chained with (32 bytes; two keys are
    /// derived from it). A recording directory holds one key's segments: a start checks the
    /// last segment's seal (or recovers it) under this key, and verify takes one key, so a
    /// new key starts a new directory (a start under another key is refused: the footer's
    /// MAC fails, reported as corruption).
    pub sealing_key: [u8; 32],
}

impl std::fmt::Debug for RecorderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sealing key is never printed.
        f.debug_struct("RecorderConfig")
            .field("directory", &self.directory)
            .field("core_id", &self.core_id)
            .field("queue_depth", &self.queue_depth)
            .field("queue_bytes_max", &self.queue_bytes_max)
            .field("batch_frames_max", &self.batch_frames_max)
            .field("batch_bytes_max", &self.batch_bytes_max)
            .field("zstd_level", &self.zstd_level)
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("segment_age_max", &self.segment_age_max)
            .field("durability", &self.durability)
            .field("unavailable_retry", &self.unavailable_retry)
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

impl RecorderConfig {
    /// Defaults for everything but the directory, core and key.
    pub fn new(directory: impl Into<PathBuf>, core_id: u16, sealing_key: [u8; 32]) -> RecorderConfig {
        RecorderConfig {
            directory: directory.into(),
            core_id,
            queue_depth: 4096,
            queue_bytes_max: 256 << 20,
            batch_frames_max: 256,
            batch_bytes_max: 1024 * 1024,
            zstd_level: 1,
            segment_bytes_max: 64 * 1024 * 1024,
            segment_age_max: Duration::from_secs(600),
            durability: Durability::Batch { interval: Durability::BATCH_INTERVAL_DEFAULT },
            unavailable_retry: Duration::from_millis(500),
            linger: Duration::from_micros(2000),
            sealing_key,
        }
    }

    /// Checks every value against its limit.
    pub fn validate(&self) -> Result<(), RecordError> {
        let problem = |what: &str| Err(RecordError::Config(what.to_owned()));
        if !(1..=limits::QUEUE_DEPTH_MAX).contains(&self.queue_depth) {
            return problem("queue depth must be 1 to 1Mi frames");
        }
        if !((1 << 20)..=limits::QUEUE_BYTES_CONFIG_MAX).contains(&self.queue_bytes_max) {
            return problem("queue bytes must be 1 MiB to 64 GiB");
        }
        if !(1..=limits::BATCH_FRAMES_MAX).contains(&self.batch_frames_max) {
            return problem("batch frames must be 1 to 4096");
        }
        if !(1..=limits::BATCH_BYTES_CONFIG_MAX).contains(&self.batch_bytes_max) {
            return problem("batch bytes must be 1 B to 64 MiB");
        }
        if !zstd::compression_level_range().contains(&self.zstd_level) {
            return problem("zstd level is out of zstd's range");
        }
        if !(4096..=limits::SEGMENT_BYTES_CONFIG_MAX).contains(&self.segment_bytes_max) {
            return problem("segment size must be 4 KiB to 4 GiB");
        }
        if self.segment_age_max < Duration::from_millis(1) || self.segment_age_max > Duration::from_secs(7 * 86_400) {
            return problem("segment age must be 1 ms to 7 days");
        }
        if let Durability::Batch { interval } = self.durability
            && interval > Duration::from_secs(1)
        {
            return problem("the group-commit interval must be at most 1 s");
        }
        if self.unavailable_retry < Duration::from_millis(1) || self.unavailable_retry > Duration::from_secs(60) {
            return problem("the write retry interval must be 1 ms to 60 s");
        }
        if self.linger > limits::LINGER_MAX {
            return problem("the recorder's linger must be at most 100 ms");
        }
        Ok(())
    }
}

/// Why a frame was not taken, or its record not made durable. Each is a reason to refuse the
/// statement with "recording unavailable".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordUnavailable {
    /// The queue is full: the recorder cannot keep up.
    #[error("recording unavailable: the recorder queue is full")]
    QueueFull,
    /// Writing fails (a full or failing disk); retried, service resumes once a write succeeds.
    #[error("recording unavailable: the recorder cannot write to disk")]
    Unavailable,
    /// An fsync failed: the recorder stopped writing and must be restarted.
    #[error("recording unavailable: the recorder failed and must be restarted")]
    Failed,
    /// The recorder is stopping.
    #[error("recording unavailable: the recorder is stopped")]
    Stopped,
    /// A field of the frame is over the format's limit.
    #[error("recording unavailable: the frame's {0} is over the recording limit")]
    TooLarge(&'static str),
    /// This record's batch could not be written.
    #[error("recording unavailable: the record could not be written")]
    WriteFailed,
}

/// Counters; read by metrics and tests.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Frames accepted into the queue.
    pub accepted: AtomicU64,
    /// Frames refused: the queue was full.
    pub refused_queue_full: AtomicU64,
    /// Frames refused: the recorder was unavailable, failed or stopped.
    pub refused_unavailable: AtomicU64,
    /// Frames refused: a field over its limit.
    pub refused_too_large: AtomicU64,
    /// Records written.
    pub records_written: AtomicU64,
    /// Accepted records that could not be written.
    pub records_lost: AtomicU64,
    /// Batches written.
    pub batches_written: AtomicU64,
    /// Bytes of records written, uncompressed.
    pub bytes_uncompressed: AtomicU64,
    /// Bytes of batches appended to segment files.
    pub bytes_on_disk: AtomicU64,
    /// Successful fsyncs of batches.
    pub syncs: AtomicU64,
    /// Failed writes (each makes the recorder unavailable until a write succeeds).
    pub write_errors: AtomicU64,
    /// Segments sealed.
    pub segments_sealed: AtomicU64,
}

impl RecorderStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The recorder's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecorderHealth {
    /// Taking frames.
    Running,
    /// Writing fails; frames are refused while it retries.
    Unavailable,
    /// An fsync failed; frames are refused until a restart.
    Failed,
    /// Stopped.
    Stopped,
}

const RUNNING: u8 = 0;
const UNAVAILABLE: u8 = 1;
const FAILED: u8 = 2;
const STOPPED: u8 = 3;

const TICKET_PENDING: u8 = 0;
const TICKET_WRITTEN: u8 = 1;
const TICKET_DURABLE: u8 = 2;
const TICKET_WRITE_FAILED: u8 = 3;
const TICKET_FAILED: u8 = 4;
const TICKET_STOPPED: u8 = 5;
const TICKET_UNAVAILABLE: u8 = 6;

/// What a ticket shares with the recorder thread: a one-shot outcome and its waker.
pub(crate) struct TicketShared {
    /// The record's index once written (`u64::MAX` before).
    pub(crate) record_index: AtomicU64,
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl TicketShared {
    fn new() -> TicketShared {
        TicketShared {
            record_index: AtomicU64::new(u64::MAX),
            state: AtomicU8::new(TICKET_PENDING),
            waker: Mutex::new(None),
        }
    }

    fn complete(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether this record will never be on disk (its write failed, or it was dropped).
    pub(super) fn failed(&self) -> bool {
        !matches!(self.state.load(Ordering::Acquire), TICKET_PENDING | TICKET_WRITTEN | TICKET_DURABLE)
    }

    fn outcome(&self) -> Option<Result<(), RecordUnavailable>> {
        match self.state.load(Ordering::Acquire) {
            TICKET_PENDING | TICKET_WRITTEN => None,
            TICKET_DURABLE => Some(Ok(())),
            TICKET_WRITE_FAILED => Some(Err(RecordUnavailable::WriteFailed)),
            TICKET_STOPPED => Some(Err(RecordUnavailable::Stopped)),
            TICKET_UNAVAILABLE => Some(Err(RecordUnavailable::Unavailable)),
            _ => Some(Err(RecordUnavailable::Failed)),
        }
    }

    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Result<(), RecordUnavailable>> {
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        {
            let mut slot = self.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !slot.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        // The thread stores the outcome before taking the waker: checking again after
        // storing ours closes the gap between the first check and the store.
        match self.outcome() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

/// A submitted frame's claim on its record.
pub struct Ticket {
    shared: Arc<TicketShared>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("record_index", &self.record_index()).finish()
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl Ticket {
    /// A ticket for a frame that was not recorded at all, already "durable": only in the
    /// `bench-unrecorded` build, which measures what recording costs.
    #[cfg(feature = "bench-unrecorded")]
    pub fn unrecorded() -> Ticket {
        let shared = TicketShared::new();
        shared.state.store(TICKET_DURABLE, Ordering::Release);
        Ticket { shared: Arc::new(shared) }
    }

    /// The link a response frame carries to this (request) record.
    pub fn link(&self) -> RequestLink {
        RequestLink::from_ticket(self.shared.clone())
    }

    /// The record's index, once written.
    pub fn record_index(&self) -> Option<u64> {
        match self.shared.record_index.load(Ordering::Acquire) {
            u64::MAX => None,
            index => Some(index),
        }
    }

    /// Completes when the record is durable per the recorder's mode, or cannot be.
    pub fn durable(self) -> Durable {
        Durable { shared: self.shared }
    }

    /// Blocks the calling thread (never a core's) until the record is durable, or for at
    /// most `timeout` (`None` then).
    pub fn wait_durable(self, timeout: Duration) -> Option<Result<(), RecordUnavailable>> {
        let deadline = Instant::now() + timeout;
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(outcome) = self.shared.poll_outcome(&mut cx) {
                return Some(outcome);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

/// The future [`Ticket::durable`] returns.
pub struct Durable {
    shared: Arc<TicketShared>,
}

impl Future for Durable {
    type Output = Result<(), RecordUnavailable>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.shared.poll_outcome(cx)
    }
}

/// A queued frame and its ticket.
pub(super) struct Submission {
    frame: Frame,
    ticket: Arc<TicketShared>,
    /// Its share of the queue's byte budget.
    bytes: usize,
}

impl BatchItems for [Submission] {
    fn n_items(&self) -> usize {
        self.len()
    }

    fn frame(&self, item_idx: usize) -> &Frame {
        &self[item_idx].frame
    }

    fn assign(&self, item_idx: usize, record_index: u64) {
        self[item_idx].ticket.record_index.store(record_index, Ordering::Release);
    }
}

struct Shared {
    queue: ArrayQueue<Submission>,
    /// The queued frames' bytes (their encoded length estimates).
    queued_bytes: AtomicUsize,
    queue_bytes_max: usize,
    health: AtomicU8,
    stop: AtomicBool,
    stats: RecorderStats,
}

impl Shared {
    fn health(&self) -> u8 {
        self.health.load(Ordering::Acquire)
    }

    /// Whether a frame of `bytes` fits the queue's byte budget now (any frame fits an empty
    /// queue: a frame's own size is capped by the frame limits).
    fn has_room_for(&self, bytes: usize) -> bool {
        let queued = self.queued_bytes.load(Ordering::Acquire);
        queued == 0 || queued.saturating_add(bytes) <= self.queue_bytes_max
    }

    /// Fails every queued frame's ticket with `state`, counting each as lost.
    fn fail_queued(&self, state: u8) {
        while let Some(item) = self.pop() {
            RecorderStats::add(&self.stats.records_lost, 1);
            item.ticket.complete(state);
        }
    }

    /// The next queued frame, its bytes taken off the budget.
    fn pop(&self) -> Option<Submission> {
        let submission = self.queue.pop()?;
        self.queued_bytes.fetch_sub(submission.bytes, Ordering::AcqRel);
        Some(submission)
    }
}

/// A core's recorder.
pub struct Recorder {
    shared: Arc<Shared>,
    thread: Thread,
    /// Taken by the first stop.
    join: Mutex<Option<JoinHandle<Result<(), WriteError>>>>,
    clock: Arc<dyn Clock>,
    core_id: u16,
    durability: Durability,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("core_id", &self.core_id)
            .field("durability", &self.durability)
            .field("health", &self.health())
            .finish()
    }
}

impl Recorder {
    /// Recovers the core's last segment, opens the next and starts the recorder thread.
    pub fn start(config: RecorderConfig) -> Result<Recorder, RecordError> {
        Recorder::start_with(config, Arc::new(FileSystem), Arc::new(SystemClock))
    }

    /// [`Recorder::start`] over another storage and clock (tests).
    pub fn start_with(
        config: RecorderConfig,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Recorder, RecordError> {
        let now = clock.now_unix_us();
        let (mut writer, recovery) = SegmentWriter::open(storage, &config, now)?;
        if recovery.performed() {
            let detail = recovery.describe();
            if recovery.found_damage() {
                error!(core = config.core_id, detail = %detail, "Recording damaged: run snowgate-tools verify.");
            } else {
                warn!(core = config.core_id, detail = %detail, "Recording recovered after a crash.");
            }
            writer.append_event(EventKind::RecoveryPerformed, detail, now)?;
            writer.sync()?;
        }
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(config.queue_depth),
            queued_bytes: AtomicUsize::new(0),
            queue_bytes_max: config.queue_bytes_max,
            health: AtomicU8::new(RUNNING),
            stop: AtomicBool::new(false),
            stats: RecorderStats::default(),
        });
        let mut writer_loop = WriterLoop {
            seals_noted: writer.segments_sealed(),
            writer,
            shared: shared.clone(),
            clock: clock.clone(),
            core_id: config.core_id,
            durability: config.durability,
            batch_frames_max: config.batch_frames_max,
            batch_bytes_max: config.batch_bytes_max,
            unavailable_retry: config.unavailable_retry,
            linger: config.linger,
            items: Vec::with_capacity(config.batch_frames_max),
            pending: Vec::new(),
            last_sync: None,
            lost_records: 0,
            last_error: String::new(),
            next_retry: None,
            priority: Priority::default(),
        };
        let join = std::thread::Builder::new()
            .name(format!("snowgate-recorder-{}", config.core_id))
            .spawn(move || {
                let _unwind = FailClosedOnUnwind { shared: writer_loop.shared.clone(), core_id: writer_loop.core_id };
                if writer_loop.durability == Durability::None {
                    writer_loop.priority = Priority::below_real_time(writer_loop.core_id);
                }
                writer_loop.run()
            })
            .map_err(|source| RecordError::Io { path: config.directory.clone(), source })?;
        Ok(Recorder {
            shared,
            thread: join.thread().clone(),
            join: Mutex::new(Some(join)),
            clock,
            core_id: config.core_id,
            durability: config.durability,
            recovery,
        })
    }

    /// Hands a frame to the recorder thread. Never blocks. `Err` means the record will not
    /// exist: the statement must be refused.
    pub fn submit(&self, frame: Frame) -> Result<Ticket, RecordUnavailable> {
        let stats = &self.shared.stats;
        let refused = match self.shared.health() {
            RUNNING => None,
            UNAVAILABLE => Some(RecordUnavailable::Unavailable),
            FAILED => Some(RecordUnavailable::Failed),
            _ => Some(RecordUnavailable::Stopped),
        };
        if let Some(reason) = refused {
            RecorderStats::add(&stats.refused_unavailable, 1);
            return Err(reason);
        }
        if let Err(exceeded) = frame.check_limits() {
            RecorderStats::add(&stats.refused_too_large, 1);
            return Err(RecordUnavailable::TooLarge(exceeded.field));
        }
        let bytes = frame.encoded_len_estimate();
        if !self.shared.has_room_for(bytes) {
            RecorderStats::add(&stats.refused_queue_full, 1);
            return Err(RecordUnavailable::QueueFull);
        }
        let ticket = Arc::new(TicketShared::new());
        // Counted before the push, so the thread never takes off what was not added.
        self.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        match self.shared.queue.push(Submission { frame, ticket: ticket.clone(), bytes }) {
            Ok(()) => {
                RecorderStats::add(&stats.accepted, 1);
                self.thread.unpark();
                Ok(Ticket { shared: ticket })
            }
            Err(_) => {
                self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                RecorderStats::add(&stats.refused_queue_full, 1);
                Err(RecordUnavailable::QueueFull)
            }
        }
    }

    /// Submits an event record, timed now.
    pub fn submit_event(&self, kind: EventKind, detail: impl Into<String>) -> Result<Ticket, RecordUnavailable> {
        let frame = Frame::Event(EventFrame { time_unix_us: self.clock.now_unix_us(), kind, detail: detail.into() });
        self.submit(frame)
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The core.
    pub fn core_id(&self) -> u16 {
        self.core_id
    }

    /// What recovery found at start.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Counters.
    pub fn stats(&self) -> &RecorderStats {
        &self.shared.stats
    }

    /// Whether the queue is full right now for a frame of `bytes` (its encoded length
    /// estimate): a submit would be refused with `QueueFull`. Lets a caller wait for room
    /// instead of losing the frame it would have submitted.
    pub fn queue_is_full(&self, bytes: usize) -> bool {
        self.shared.queue.is_full() || !self.shared.has_room_for(bytes)
    }

    /// The recorder's state.
    pub fn health(&self) -> RecorderHealth {
        match self.shared.health() {
            RUNNING => RecorderHealth::Running,
            UNAVAILABLE => RecorderHealth::Unavailable,
            FAILED => RecorderHealth::Failed,
            _ => RecorderHealth::Stopped,
        }
    }

    /// Wakes the thread to look at the clock again (rotation by age under a manual clock).
    pub fn wake(&self) {
        self.thread.unpark();
    }

    /// Writes what is queued, seals the segment (`stopped`) and ends the thread.
    pub fn stop(self) -> Result<(), RecordError> {
        self.stop_in_place()
    }

    /// [`Recorder::stop`] through a shared reference, for an owner others may still hold (a
    /// core whose requests outlived the drain hold it in tasks that never finish). Later
    /// submits are refused (`Stopped`); a frame that raced the stop into the queue is failed
    /// (its ticket says `Stopped`), never left as if it would be written. Stopping again does
    /// nothing.
    pub fn stop_in_place(&self) -> Result<(), RecordError> {
        self.stop_within(limits::STOP_TIMEOUT)
    }

    /// [`Recorder::stop_in_place`], waiting at most `timeout` for the thread to finish: past
    /// it (a write or fsync that does not return) the thread is left behind, every frame still
    /// queued is failed, and the error says so.
    pub fn stop_within(&self, timeout: Duration) -> Result<(), RecordError> {
        let Some(join) = self.join.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::Release);
        self.thread.unpark();
        // A timeout past what the clock can hold is no timeout.
        let deadline = Instant::now().checked_add(timeout);
        while !join.is_finished() && deadline.is_none_or(|deadline| Instant::now() < deadline) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let stopped = if join.is_finished() {
            match join.join() {
                Ok(result) => result.map_err(RecordError::from),
                Err(_) => Err(RecordError::Config("the recorder thread panicked".into())),
            }
        } else {
            // Left behind, stuck in the disk.
            Err(RecordError::StopTimedOut(timeout))
        };
        if matches!(self.shared.health(), RUNNING | UNAVAILABLE) {
            self.shared.health.store(STOPPED, Ordering::Release);
        }
        self.shared.fail_queued(TICKET_STOPPED);
        stopped
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Err(e) = self.stop_in_place() {
            error!(core = self.core_id, error = %e, "The recorder did not stop cleanly.");
        }
    }
}

/// Fails the core's recording closed when its thread unwinds (a bug; the writer's `expect`s
/// say what it relies on): without it, health stayed `RUNNING` and submits kept queueing
/// frames no one would write, while the statements went upstream. Like a failed fsync: every
/// submit is refused from then on, and what is queued, or comes in before a submit sees the
/// failure, is failed until the recorder is stopped.
struct FailClosedOnUnwind {
    shared: Arc<Shared>,
    core_id: u16,
}

impl Drop for FailClosedOnUnwind {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.shared.health.store(FAILED, Ordering::Release);
        error!(core = self.core_id, "The recorder thread panicked; every statement is refused until a restart.");
        loop {
            self.shared.fail_queued(TICKET_FAILED);
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for WriterLoop {
    /// Tickets written but not yet durable are failed, not left to their waiters' timeouts,
    /// however the loop ends (every normal end has settled them already).
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Before any waiter hears of it, as when a write fails for good.
            self.shared.health.store(FAILED, Ordering::Release);
        }
        for ticket in self.pending.drain(..) {
            ticket.complete(TICKET_FAILED);
        }
        self.fail_items(TICKET_FAILED);
    }
}

/// Batches written between two fsyncs at most, so a flood cannot hold back durability.
const BATCHES_PER_SYNC_MAX: usize = 8;

struct WriterLoop {
    writer: SegmentWriter,
    /// The writer's seal count already added to the stats.
    seals_noted: u64,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    core_id: u16,
    durability: Durability,
    batch_frames_max: usize,
    batch_bytes_max: usize,
    unavailable_retry: Duration,
    linger: Duration,
    items: Vec<Submission>,
    /// Written, waiting for an fsync.
    pending: Vec<Arc<TicketShared>>,
    last_sync: Option<Instant>,
    lost_records: u64,
    last_error: String,
    next_retry: Option<Instant>,
    priority: Priority,
}

/// The recorder thread's scheduling against its core's. A gateway started under `chrt -f`
/// runs its cores in real time, and a recorder at the same priority cannot be preempted: a
/// request arriving during a batch (tens of µs of zstd) waits for it. So in `none` mode,
/// where nothing waits for the recorder, it leaves the real-time policy it inherited and runs
/// when its core is idle, which is most of the time short of overload. Should it fall behind
/// (its queue an eighth full), it takes the inherited policy back until the queue is down to
/// a sixty-fourth, so it cannot starve. In `batch` and `strict` modes answers or statements
/// wait for it, so it keeps its core's priority.
#[derive(Debug, Default)]
struct Priority {
    /// The real-time policy and priority inherited, while the recorder may move in and out.
    inherited: Option<(libc::c_int, libc::c_int)>,
    /// Whether it is back in the inherited policy now.
    raised: bool,
}

impl Priority {
    /// Leaves an inherited real-time policy; a thread not in one is left as it is.
    fn below_real_time(core_id: u16) -> Priority {
        let policy = current_policy();
        if policy != libc::SCHED_FIFO && policy != libc::SCHED_RR {
            return Priority::default();
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is an initialised sched_param the call writes into and that outlives
        // it; thread id 0 is the calling thread.
        #[allow(unsafe_code)]
        let read = unsafe { libc::sched_getparam(0, &mut param) };
        if read < 0 {
            return Priority::default();
        }
        match set_policy(libc::SCHED_OTHER, 0) {
            Ok(()) => {
                info!(core = core_id, "The recorder runs below its core's real-time priority while it keeps up.");
                Priority { inherited: Some((policy, param.sched_priority)), raised: false }
            }
            Err(error) => {
                warn!(core = core_id, error = %error, "The recorder could not leave the real-time policy.");
                Priority::default()
            }
        }
    }

    /// Moves in or out of the inherited policy by how full the queue is.
    fn follow(&mut self, queued: usize, capacity: usize) {
        if self.inherited.is_none() {
            return;
        }
        let raise = raised_at(self.raised, queued, capacity);
        if raise != self.raised {
            match self.set(raise) {
                Ok(()) => self.raised = raise,
                // A policy it cannot change any more: stay as it is, and stop trying.
                Err(_) => self.inherited = None,
            }
        }
    }

    /// Whether it is in real time now (tests).
    #[cfg(test)]
    fn is_raised(&self) -> bool {
        self.raised
    }

    fn set(&self, raised: bool) -> std::io::Result<()> {
        match (raised, self.inherited) {
            (true, Some((policy, priority))) => set_policy(policy, priority),
            _ => set_policy(libc::SCHED_OTHER, 0),
        }
    }
}

/// The calling thread's scheduling policy (without `SCHED_RESET_ON_FORK`); negative if it
/// cannot be read.
fn current_policy() -> libc::c_int {
    // SAFETY: sched_getscheduler takes a thread id (0: the calling thread) and touches no
    // memory.
    #[allow(unsafe_code)]
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 { policy } else { policy & !libc::SCHED_RESET_ON_FORK }
}

/// Puts the calling thread in `policy` at `priority`.
fn set_policy(policy: libc::c_int, priority: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is an initialised sched_param that outlives the call, which only reads
    // it; thread id 0 is the calling thread.
    #[allow(unsafe_code)]
    let changed = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if changed < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether a recorder below its core should be back in real time, from whether it is now
/// and how full its queue is: in at an eighth, out at a sixty-fourth (the gap keeps it from
/// switching at every frame).
fn raised_at(raised: bool, queued: usize, capacity: usize) -> bool {
    if raised { queued > capacity / 64 } else { queued >= capacity / 8 }
}

impl WriterLoop {
    fn run(mut self) -> Result<(), WriteError> {
        loop {
            self.priority.follow(self.shared.queue.len(), self.shared.queue.capacity());
            let stopping = self.shared.stop.load(Ordering::Acquire);
            let worked = match self.step(stopping) {
                Ok(worked) => worked,
                Err(fatal) => return self.fail(fatal),
            };
            if stopping && self.shared.queue.is_empty() {
                return self.finish();
            }
            if !worked {
                self.park();
            }
            // One batch a linger window, after a batch as after a wake-up: frames that came
            // while a batch was written (a long while when the core preempted it) wait for
            // more rather than going out as a small batch, whose zstd tables cost the same.
            self.linger();
        }
    }

    fn fill_items(&mut self) {
        let mut bytes = 0usize;
        while self.items.len() < self.batch_frames_max && bytes < self.batch_bytes_max {
            match self.shared.pop() {
                Some(submission) => {
                    bytes += submission.frame.encoded_len_estimate();
                    self.items.push(submission);
                }
                None => break,
            }
        }
    }

    /// Fails, unwritten, each response whose request record was lost (a failed write of an
    /// earlier batch, after which the recorder resumed): where answers wait for their record,
    /// that answer is then withheld, so none reaches an agent with its statement missing from
    /// the recording. Counted in `records_lost` (the outage's event already counted the
    /// request).
    fn withhold_orphan_responses(&mut self) {
        let before = self.items.len();
        self.items.retain(|item| {
            let orphan = matches!(&item.frame, Frame::Response(r) if r.request.as_ref().is_some_and(RequestLink::lost));
            if orphan {
                item.ticket.complete(TICKET_UNAVAILABLE);
            }
            !orphan
        });
        RecorderStats::add(&self.shared.stats.records_lost, (before - self.items.len()) as u64);
    }

    fn fail_items(&mut self, state: u8) {
        for item in self.items.drain(..) {
            item.ticket.complete(state);
        }
    }

    /// One round: write what is queued, fsync if due, rotate if due, retry if unavailable.
    /// `Err` only for a fatal error.
    fn step(&mut self, stopping: bool) -> Result<bool, WriteError> {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let mut worked = false;
        for _ in 0..BATCHES_PER_SYNC_MAX {
            self.fill_items();
            if self.items.is_empty() {
                break;
            }
            worked = true;
            if self.shared.health() != RUNNING {
                // Accepted before the disk failed: these records are lost, and counted.
                self.lost_records += self.items.len() as u64;
                RecorderStats::add(&stats.records_lost, self.items.len() as u64);
                self.fail_items(TICKET_UNAVAILABLE);
                continue;
            }
            if self.durability != Durability::None {
                self.withhold_orphan_responses();
                if self.items.is_empty() {
                    continue;
                }
            }
            let now = self.clock.now_unix_us();
            match self.writer.append_items(self.items.as_slice(), now) {
                Ok(appended) => {
                    RecorderStats::add(&stats.records_written, u64::from(appended.n_records));
                    RecorderStats::add(&stats.batches_written, 1);
                    RecorderStats::add(&stats.bytes_uncompressed, appended.bytes_uncompressed);
                    RecorderStats::add(&stats.bytes_on_disk, appended.bytes_on_disk);
                    for item in self.items.drain(..) {
                        if self.durability == Durability::None {
                            item.ticket.complete(TICKET_DURABLE);
                        } else {
                            item.ticket.state.store(TICKET_WRITTEN, Ordering::Release);
                            self.pending.push(item.ticket);
                        }
                    }
                    // Frames that came while this batch was written wait for the linger
                    // (see `run`) unless a whole batch is waiting already.
                    if self.lingers() && !stopping && self.shared.queue.len() < self.batch_frames_max {
                        break;
                    }
                }
                Err(e) if e.is_fatal() => {
                    // The state changes before any waiter hears of the failure.
                    self.shared.health.store(FAILED, Ordering::Release);
                    self.fail_items(TICKET_FAILED);
                    return Err(e);
                }
                Err(e) => {
                    self.lost_records += self.items.len() as u64;
                    RecorderStats::add(&stats.records_lost, self.items.len() as u64);
                    self.enter_unavailable(&e);
                    self.fail_items(TICKET_WRITE_FAILED);
                }
            }
        }
        if !self.pending.is_empty() && self.sync_due(stopping) {
            if let Err(e) = self.writer.sync() {
                self.shared.health.store(FAILED, Ordering::Release);
                return Err(e);
            }
            self.synced();
        }
        let now = self.clock.now_unix_us();
        if self.shared.health() == RUNNING
            && let Some(why) = self.writer.needs_rotation(now)
        {
            match self.writer.rotate(why, now) {
                Ok(()) => {
                    // The seal's fsync covered every batch written before it.
                    self.synced();
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => self.enter_unavailable(&e),
            }
        }
        if self.shared.health() == UNAVAILABLE && self.next_retry.is_none_or(|at| Instant::now() >= at) {
            self.try_resume()?;
        }
        self.note_seals();
        Ok(worked)
    }

    fn sync_due(&self, stopping: bool) -> bool {
        match self.durability {
            Durability::Batch { .. } => stopping || self.next_commit_in() == Some(Duration::ZERO),
            Durability::Strict | Durability::None => true,
        }
    }

    /// Counts the segments the writer sealed since the last look: rotations happen inside
    /// appends too (a full segment), and a rotation whose event then failed sealed all the same.
    fn note_seals(&mut self) {
        let sealed = self.writer.segments_sealed();
        RecorderStats::add(&self.shared.stats.segments_sealed, sealed - self.seals_noted);
        self.seals_noted = sealed;
    }

    fn synced(&mut self) {
        self.last_sync = Some(Instant::now());
        if !self.pending.is_empty() {
            RecorderStats::add(&self.shared.stats.syncs, 1);
        }
        for ticket in self.pending.drain(..) {
            ticket.complete(TICKET_DURABLE);
        }
    }

    fn enter_unavailable(&mut self, e: &WriteError) {
        RecorderStats::add(&self.shared.stats.write_errors, 1);
        self.last_error = e.to_string();
        self.next_retry = Some(Instant::now() + self.unavailable_retry);
        if self.shared.health.swap(UNAVAILABLE, Ordering::AcqRel) == RUNNING {
            error!(core = self.core_id, error = %e, "Recording write failed; refusing statements until a write succeeds.");
        }
    }

    /// Writes a `recorder_error` event; once it is written (and durable, unless `none`),
    /// frames are taken again.
    fn try_resume(&mut self) -> Result<(), WriteError> {
        let now = self.clock.now_unix_us();
        let detail = format!(
            "writing failed ({}); {} accepted records were not recorded; recording resumed",
            self.last_error, self.lost_records
        );
        match self.writer.append_event(EventKind::RecorderError, detail, now) {
            Ok(_) => {
                if self.durability != Durability::None {
                    self.writer.sync()?;
                }
                self.synced();
                self.lost_records = 0;
                self.next_retry = None;
                self.shared.health.store(RUNNING, Ordering::Release);
                info!(core = self.core_id, "Recording resumed.");
                Ok(())
            }
            Err(e) if e.is_fatal() => Err(e),
            Err(_) => {
                self.next_retry = Some(Instant::now() + self.unavailable_retry);
                Ok(())
            }
        }
    }

    /// Whether frames wait for a linger window at all (not in `strict` mode, where each
    /// statement waits for its record).
    fn lingers(&self) -> bool {
        !self.linger.is_zero() && self.durability != Durability::Strict
    }

    /// Woken with frames queued: waits up to the linger for more (see
    /// [`RecorderConfig::linger`]).
    fn linger(&self) {
        if !self.lingers() {
            return;
        }
        let queued = self.shared.queue.len();
        if queued == 0 || queued >= self.batch_frames_max || self.shared.stop.load(Ordering::Acquire) {
            return;
        }
        // In `batch` mode the answers wait for the next fsync anyway: gather frames until it is
        // due, and not at all when it is due already (the first frame after a quiet spell).
        let wait = self.next_commit_in().map_or(self.linger, |due| due.min(self.linger));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// In `batch` mode, how long until the next group commit may be made: zero once an
    /// interval has passed since the last one (or before the first).
    fn next_commit_in(&self) -> Option<Duration> {
        match self.durability {
            Durability::Batch { interval } => {
                Some(interval.saturating_sub(self.last_sync.map_or(interval, |at| at.elapsed())))
            }
            Durability::Strict | Durability::None => None,
        }
    }

    /// In `batch` mode with records written and waiting for an fsync, how long until that
    /// group commit is due.
    fn group_commit_due_in(&self) -> Option<Duration> {
        self.next_commit_in().filter(|_| !self.pending.is_empty())
    }

    fn park(&self) {
        let mut timeout: Option<Duration> = None;
        let mut consider = |wait: Duration| timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        if let Some(due) = self.group_commit_due_in() {
            consider(due);
        }
        if let Some(at) = self.next_retry {
            consider(at.saturating_duration_since(Instant::now()));
        }
        if let Some(deadline) = self.writer.age_deadline_unix_us() {
            consider(Duration::from_micros(deadline.saturating_sub(self.clock.now_unix_us())));
        }
        match timeout {
            Some(wait) => std::thread::park_timeout(wait),
            None => std::thread::park(),
        }
    }

    fn fail(mut self, error: WriteError) -> Result<(), WriteError> {
        self.shared.health.store(FAILED, Ordering::Release);
        error!(core = self.core_id, error = %error, "Recording failed; every statement is refused until a restart.");
        for ticket in self.pending.drain(..) {
            ticket.complete(TICKET_FAILED);
        }
        loop {
            self.fill_items();
            if !self.items.is_empty() {
                self.fail_items(TICKET_FAILED);
                continue;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return Err(error);
            }
            std::thread::park();
        }
    }

    fn finish(mut self) -> Result<(), WriteError> {
        self.shared.health.store(STOPPED, Ordering::Release);
        let now = self.clock.now_unix_us();
        // Stopped before resuming (which records it): the records lost are counted in the
        // recording still, or the stop would leave a recording that verifies without a trace
        // of statements that were sent.
        if self.lost_records > 0 {
            let detail = format!(
                "writing failed ({}); {} accepted records were not recorded; recording stopped",
                self.last_error, self.lost_records
            );
            if let Err(e) = self.writer.append_event(EventKind::RecorderError, detail, now) {
                // Not sealed as a clean stop, which would verify without a trace of the loss:
                // left open, the segment fails verify until the next start recovers it (and
                // records that it did).
                for ticket in self.pending.drain(..) {
                    ticket.complete(TICKET_FAILED);
                }
                error!(
                    core = self.core_id,
                    lost_records = self.lost_records,
                    error = %e,
                    "Records were lost and the count of them could not be recorded; the last segment is left open."
                );
                return Err(e);
            }
        }
        match self.writer.seal(SealReason::Stopped, now) {
            Ok(()) => {
                self.note_seals();
                self.synced();
                Ok(())
            }
            Err(e) => {
                for ticket in self.pending.drain(..) {
                    ticket.complete(TICKET_FAILED);
                }
                error!(core = self.core_id, error = %e, "Sealing the last segment failed; the next start recovers it.");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_modes_parse_and_say_what_to_hold() {
        assert_eq!("none".parse(), Ok(Durability::None));
        assert_eq!("strict".parse(), Ok(Durability::Strict));
        assert_eq!("batch:5".parse(), Ok(Durability::Batch { interval: Duration::from_millis(5) }));
        assert!("batch:5000".parse::<Durability>().is_err());
        assert!("fast".parse::<Durability>().is_err());
        assert!(Durability::Strict.hold_request_until_durable());
        assert!(!Durability::Batch { interval: Duration::ZERO }.hold_request_until_durable());
        assert!(Durability::Batch { interval: Duration::ZERO }.hold_answer_until_durable());
        assert!(!Durability::None.hold_answer_until_durable());
    }

    #[test]
    fn config_limits_are_checked() {
        let mut config = RecorderConfig::new("/tmp/x", 0, [0; 32]);
        assert!(config.validate().is_ok());
        config.queue_depth = 0;
        assert!(matches!(config.validate(), Err(RecordError::Config(_))));
        let mut config = RecorderConfig::new("/tmp/x", 0, [0; 32]);
        config.batch_frames_max = limits::BATCH_FRAMES_MAX + 1;
        assert!(config.validate().is_err());
        let mut config = RecorderConfig::new("/tmp/x", 0, [0; 32]);
        config.linger = limits::LINGER_MAX;
        assert!(config.validate().is_ok());
        config.linger = limits::LINGER_MAX + Duration::from_micros(1);
        assert!(config.validate().is_err());
        assert!(!format!("{config:?}").contains("sealing_key"));
    }

    #[test]
    fn a_ticket_wakes_its_waiter_across_threads() {
        let shared = Arc::new(TicketShared::new());
        let ticket = Ticket { shared: shared.clone() };
        let completer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            shared.complete(TICKET_DURABLE);
        });
        assert_eq!(ticket.wait_durable(Duration::from_secs(5)), Some(Ok(())));
        completer.join().unwrap();
    }

    #[test]
    fn a_recorder_below_its_core_goes_back_to_real_time_only_when_behind() {
        let capacity = 4096;
        assert!(!raised_at(false, 0, capacity));
        assert!(!raised_at(false, capacity / 8 - 1, capacity));
        assert!(raised_at(false, capacity / 8, capacity));
        assert!(raised_at(true, capacity / 64 + 1, capacity), "it stays up until well drained");
        assert!(!raised_at(true, capacity / 64, capacity));
    }

    /// On a real thread: one in real time leaves it, comes back when its queue is behind, and
    /// leaves again once drained; a thread not in real time is left alone. Needs the right to
    /// use real time (root or CAP_SYS_NICE); without it there is nothing to leave.
    #[test]
    fn the_recorders_thread_leaves_real_time_and_comes_back_when_behind() {
        let policy = current_policy;
        std::thread::spawn(move || {
            let normal = Priority::below_real_time(0);
            assert!(normal.inherited.is_none() && policy() == libc::SCHED_OTHER);
            if set_policy(libc::SCHED_FIFO, 1).is_err() {
                eprintln!("skipped: this test may not use real-time scheduling here");
                return;
            }
            let mut priority = Priority::below_real_time(0);
            assert_eq!(priority.inherited, Some((libc::SCHED_FIFO, 1)));
            assert!(!priority.is_raised() && policy() == libc::SCHED_OTHER);
            priority.follow(600, 4096);
            assert!(priority.is_raised() && policy() == libc::SCHED_FIFO);
            priority.follow(10, 4096);
            assert!(!priority.is_raised() && policy() == libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
