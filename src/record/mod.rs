//! Statement capture: the [`Frame`] each request becomes, and the per-core recorder it is
//! handed to through a bounded lock-free queue.
//!
//! This is the minimal writer the gateway issue calls for: one JSON line of metadata per frame
//! in `core-<n>.jsonl`, written by a thread per core. The bodies travel in the frame as
//! `Bytes` handles (no copy) for the segment writer that replaces this one.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use serde::Serialize;

/// What the gateway decided about a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decision {
    /// Forwarded upstream.
    Allowed,
    /// Refused by the gateway with this code.
    Refused {
        /// The Snowflake-shaped code answered.
        code: String,
    },
}

/// One request and its answer, as they crossed the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// The core that served it.
    pub core_id: u16,
    /// The endpoint name (`query-request`, `login`...).
    pub endpoint: &'static str,
    /// When the request head was complete, in Unix microseconds.
    pub started_at_unix_us: u64,
    /// Time spent waiting on upstream.
    pub upstream_us: u64,
    /// Time from request head to answer written.
    pub total_us: u64,
    /// The agent (`sub`), once known.
    pub sub: Option<String>,
    /// The Snowflake role used.
    pub role: Option<String>,
    /// Snowflake's session id.
    pub session_id: Option<i64>,
    /// The driver's `requestId`.
    pub request_id: Option<String>,
    /// Snowflake's query id.
    pub query_id: Option<String>,
    /// The statement.
    pub sql_text: Option<String>,
    /// The bindings (raw JSON).
    pub bindings: Option<String>,
    /// The `X-Agent-Context` header, capped.
    pub agent_context: Option<String>,
    /// The `QUERY_TAG` the driver set.
    pub query_tag: Option<String>,
    /// The decision.
    pub decision: Decision,
    /// HTTP status answered.
    pub status: u16,
    /// Snowflake `code` answered.
    pub code: Option<String>,
    /// Snowflake `success` answered.
    pub success: Option<bool>,
    /// Rows in the result (`total`).
    pub rows: Option<u64>,
    /// Request body bytes as received (after gunzip).
    pub request_bytes: u64,
    /// Response body bytes as sent.
    pub response_bytes: u64,
    /// The request body as forwarded (after any rewrite); never holds a credential.
    #[serde(skip)]
    pub request_body: Bytes,
    /// The response body as sent to the agent.
    #[serde(skip)]
    pub response_body: Bytes,
}

/// The recorder refused a frame.
#[derive(Debug, thiserror::Error)]
#[error("recording unavailable: the recorder queue is full")]
pub struct QueueFull;

/// Counters a recorder keeps; read by tests and metrics.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Frames accepted into the queue.
    pub accepted: AtomicU64,
    /// Frames refused because the queue was full.
    pub refused: AtomicU64,
    /// Frames written.
    pub written: AtomicU64,
    /// Write errors.
    pub write_errors: AtomicU64,
}

/// A core's handle on its recorder.
pub struct Recorder {
    queue: Arc<ArrayQueue<Frame>>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<RecorderStats>,
}

impl Recorder {
    /// Starts the recorder thread for `core_id`, writing into `directory`.
    pub fn start(directory: &Path, core_id: usize, queue_depth: usize) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(directory)?;
        let path: PathBuf = directory.join(format!("core-{core_id}.jsonl"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let queue = Arc::new(ArrayQueue::new(queue_depth.max(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RecorderStats::default());
        let writer = {
            let (queue, stop, stats) = (queue.clone(), stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("snowgate-recorder-{core_id}"))
                .spawn(move || write_loop(&queue, &stop, &stats, BufWriter::new(file)))?
        };
        Ok(Recorder { queue, stop, writer: Some(writer), stats })
    }

    /// Hands a frame to the recorder, or refuses it when the queue is full.
    pub fn submit(&self, frame: Frame) -> Result<(), QueueFull> {
        match self.queue.push(frame) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_loop(queue: &ArrayQueue<Frame>, stop: &AtomicBool, stats: &RecorderStats, mut out: BufWriter<std::fs::File>) {
    loop {
        let mut wrote = false;
        while let Some(frame) = queue.pop() {
            wrote = true;
            let line = serde_json::to_vec(&frame).expect("a frame always serialises");
            if out.write_all(&line).and_then(|()| out.write_all(b"\n")).is_err() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.written.fetch_add(1, Ordering::Relaxed);
            }
        }
        if wrote && out.flush().is_err() {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        if stop.load(Ordering::Acquire) && queue.is_empty() {
            let _ = out.flush();
            return;
        }
        if !wrote {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sql: &str) -> Frame {
        Frame {
            core_id: 0,
            endpoint: "query-request",
            started_at_unix_us: 1,
            upstream_us: 2,
            total_us: 3,
            sub: Some("agent".into()),
            role: Some("R".into()),
            session_id: Some(1),
            request_id: Some("r".into()),
            query_id: Some("q".into()),
            sql_text: Some(sql.into()),
            bindings: None,
            agent_context: None,
            query_tag: None,
            decision: Decision::Allowed,
            status: 200,
            code: None,
            success: Some(true),
            rows: Some(1),
            request_bytes: 10,
            response_bytes: 20,
            request_body: Bytes::new(),
            response_body: Bytes::new(),
        }
    }

    #[test]
    fn writes_every_accepted_frame() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::start(dir.path(), 3, 16).unwrap();
        for i in 0..10 {
            recorder.submit(frame(&format!("select {i}"))).unwrap();
        }
        drop(recorder);
        let text = std::fs::read_to_string(dir.path().join("core-3.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[9]["sql_text"], "select 9");
        assert_eq!(lines[0]["decision"]["kind"], "allowed");
    }

    #[test]
    fn refuses_when_full() {
        let queue = Arc::new(ArrayQueue::new(1));
        let recorder = Recorder {
            queue,
            stop: Arc::new(AtomicBool::new(true)),
            writer: None,
            stats: Arc::new(RecorderStats::default()),
        };
        recorder.submit(frame("a")).unwrap();
        assert!(recorder.submit(frame("b")).is_err());
        assert_eq!(recorder.stats.refused.load(Ordering::Relaxed), 1);
    }
}
