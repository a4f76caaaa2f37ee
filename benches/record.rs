//! Recording costs: encoding a frame, handing it to the recorder thread, a core's writer
//! ingest rate (encode, CRC, BLAKE3 chain, zstd, append) at several zstd levels, and bytes on
//! disk per raw byte on a realistic corpus of query requests and JSON answers.
//!
//! Corpora: "varied" answers carry fresh random personal data per query (the realistic case:
//! no two results alike); "perf" answers are the Snowflake double's templates, identical but
//! for the query id (the perf harness's traffic). The ratios are printed before the timings.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use snowgate::record::storage::{FileSystem, SplitMix64};
use snowgate::record::{
    Decision, Durability, Frame, Principal, Recorder, RecorderConfig, RequestFrame, RequestLink, ResponseFrame,
    SealReason, SegmentReader, SegmentWriter,
};

const FIRST_NAMES: &[&str] =
    &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie"];
const LAST_NAMES: &[&str] =
    &["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman"];
const DOMAINS: &[&str] = &["example.com", "mail.test", "corp.invalid", "post.example"];
const STATEMENTS: &[&str] = &[
    "select * from sales.orders where customer_id = {} and status = 'OPEN'",
    "select id, name, email from crm.customers where region = 'EU' limit {}",
    "select count(*), sum(amount) from finance.payments where day >= dateadd(day, -{}, current_date())",
    "with recent as (select * from events where ts > current_timestamp() - interval '{} minutes') select kind, count(*) from recent group by kind",
];

fn pick<'a>(rng: &mut SplitMix64, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len() as u64) as usize]
}

fn uuid(rng: &mut SplitMix64) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// A query answer shaped like Snowflake's (the double's template) with `rows` fresh rows.
fn varied_answer(template: &serde_json::Value, rng: &mut SplitMix64, rows: usize, query_id: &str) -> Bytes {
    let mut answer = template.clone();
    let rowset: Vec<serde_json::Value> = (0..rows)
        .map(|_| {
            let (first, last) = (pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES));
            let card: String = (0..16).map(|_| char::from(b'0' + rng.below(10) as u8)).collect();
            let cents = rng.below(10_000_000);
            serde_json::json!([
                rng.below(1_000_000).to_string(),
                format!("{first} {last}"),
                format!("{}.{}{}@{}", first.to_lowercase(), last.to_lowercase(), rng.below(100), pick(rng, DOMAINS)),
                card,
                format!("{:03}-{:02}-{:04}", 100 + rng.below(800), rng.below(100), rng.below(10_000)),
                format!("{}.{:02}", cents / 100, cents % 100),
                (18_262 + rng.below(2000)).to_string(),
            ])
        })
        .collect();
    answer["data"]["rowset"] = serde_json::Value::Array(rowset);
    answer["data"]["total"] = rows.into();
    answer["data"]["returned"] = rows.into();
    answer["data"]["queryId"] = query_id.into();
    Bytes::from(serde_json::to_vec(&answer).unwrap())
}

/// Request and response frames of `n` exchanges; `varied` chooses the corpus.
fn corpus(n: usize, varied: bool) -> Vec<Frame> {
    let results = snowgate_perf::results::Results::build(1_750_000_000_000);
    let template: serde_json::Value =
        serde_json::from_slice(&results.query_medium.render("00000000-0000-4000-8000-000000000000")).unwrap();
    let mut rng = SplitMix64(0x5EED);
    let mut frames = Vec::with_capacity(2 * n);
    for i in 0..n as u64 {
        let statement = pick(&mut rng, STATEMENTS).replace("{}", &rng.below(10_000).to_string());
        let request_id = uuid(&mut rng);
        let query_id = uuid(&mut rng);
        let body = serde_json::json!({
            "sqlText": statement, "asyncExec": false, "sequenceId": i, "querySubmissionTime": 1_750_000_000_000u64 + i,
            "isInternal": false, "queryContextDTO": {"entries": [{"id": 0, "timestamp": 1_750_000_000_000u64, "priority": 0}]},
            "parameters": {"CLIENT_RESULT_CHUNK_SIZE": 160, "QUERY_TAG": "nightly-report"},
        });
        frames.push(Frame::Request(RequestFrame {
            time_unix_us: 1_750_000_000_000_000 + i * 1000,
            endpoint: Cow::Borrowed("query-request"),
            principal: Principal {
                sub: Some(format!("agent-{}", rng.below(20))),
                role: Some("ANALYST".into()),
                groups: vec!["analysts".into()],
            },
            session_id: Some(1_000_000 + rng.below(50) as i64),
            request_id: Some(request_id),
            query_id: None,
            statement: Some(statement),
            bindings: None,
            agent_context: Some(format!("trace={:016x}", rng.next_u64())),
            query_tag: Some("nightly-report".into()),
            decision: Decision::Allowed,
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
        }));
        // 70% small answers (about 1 KB), 25% medium (about 18 KB), 5% a single row.
        let roll = rng.below(100);
        let answer = if varied {
            let rows = if roll < 70 {
                10
            } else if roll < 95 {
                160
            } else {
                1
            };
            varied_answer(&template, &mut rng, rows, &query_id)
        } else if roll < 70 {
            results.query_small.render(&query_id)
        } else if roll < 95 {
            results.query_medium.render(&query_id)
        } else {
            results.query_one.render(&query_id)
        };
        frames.push(Frame::Response(ResponseFrame {
            time_unix_us: 1_750_000_000_000_000 + i * 1000 + 800,
            endpoint: Cow::Borrowed("query-request"),
            request: Some(RequestLink::to_record(2 * i)),
            query_id: Some(query_id),
            status: 200,
            code: None,
            success: Some(true),
            rows: Some(10),
            upstream_us: 700,
            total_us: 800,
            body: answer,
        }));
    }
    frames
}

fn raw_bytes(frames: &[Frame]) -> u64 {
    frames
        .iter()
        .map(|f| {
            let mut body = Vec::new();
            f.encode_body(0, &mut body);
            body.len() as u64
        })
        .sum()
}

/// Bytes on disk per raw byte when `frames` are written `per_batch` frames to a batch.
fn disk_ratio(frames: &[Frame], level: i32, per_batch: usize) -> f64 {
    let temp = tempfile::tempdir().unwrap();
    let mut config = RecorderConfig::new(temp.path(), 0, [1; 32]);
    config.zstd_level = level;
    config.segment_bytes_max = 1 << 30;
    let (mut writer, _) = SegmentWriter::open(Arc::new(FileSystem), &config, 1).unwrap();
    for chunk in frames.chunks(per_batch) {
        writer.append(chunk, 2).unwrap();
    }
    writer.seal(SealReason::Stopped, 3).unwrap();
    let on_disk: u64 = std::fs::read_dir(temp.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    on_disk as f64 / raw_bytes(frames) as f64
}

fn ratios() {
    println!("bytes on disk per raw byte (lower is better; goal 0.25), 2000 exchanges:");
    println!("{:<8} {:>6} {:>12} {:>12} {:>12}", "corpus", "level", "1/batch", "16/batch", "256/batch");
    for varied in [true, false] {
        let frames = corpus(2000, varied);
        for level in [-5, -1, 1, 3, 9] {
            let ratios: Vec<String> =
                [1, 16, 256].iter().map(|&per_batch| format!("{:.3}", disk_ratio(&frames, level, per_batch))).collect();
            let name = if varied { "varied" } else { "perf" };
            println!("{name:<8} {level:>6} {:>12} {:>12} {:>12}", ratios[0], ratios[1], ratios[2]);
        }
    }
}

fn encode(c: &mut Criterion) {
    ratios();
    let frames = corpus(200, true);
    let request = frames.iter().find(|f| matches!(f, Frame::Request(_))).unwrap().clone();
    let medium = frames.iter().find(|f| f.body().is_some_and(|b| b.len() > 15_000)).unwrap().clone();
    let mut group = c.benchmark_group("record/encode");
    for (name, frame) in [("query_request", request), ("answer_18KB", medium)] {
        let mut out = Vec::with_capacity(64 * 1024);
        let mut len_probe = Vec::new();
        frame.encode_body(7, &mut len_probe);
        group.throughput(Throughput::Bytes(len_probe.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                std::hint::black_box(&frame).encode_body(7, &mut out);
                std::hint::black_box(out.len())
            })
        });
    }
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let frames = corpus(512, true);
    let raw = raw_bytes(&frames);
    let mut group = c.benchmark_group("record/ingest_per_core");
    group.throughput(Throughput::Bytes(raw)).sample_size(10).measurement_time(Duration::from_secs(8));
    for level in [-5, 1, 3] {
        group.bench_function(format!("zstd_{level}/64_per_batch"), |b| {
            let temp = tempfile::tempdir().unwrap();
            let mut config = RecorderConfig::new(temp.path(), 0, [1; 32]);
            config.zstd_level = level;
            let (mut writer, _) = SegmentWriter::open(Arc::new(FileSystem), &config, 1).unwrap();
            let mut now = 2;
            b.iter(|| {
                for chunk in frames.chunks(64) {
                    writer.append(chunk, now).unwrap();
                }
                now += 1;
                if let Some(why) = writer.needs_rotation(now) {
                    writer.rotate(why, now).unwrap();
                }
            });
        });
    }
    group.finish();
}

fn queue(c: &mut Criterion) {
    let frames = corpus(64, true);
    let mut group = c.benchmark_group("record/queue");
    group.throughput(Throughput::Elements(1));
    // The lock-free queue alone: one push and one pop on the same thread.
    let queue: ArrayQueue<Frame> = ArrayQueue::new(4096);
    group.bench_function("push_pop_same_thread", |b| {
        b.iter_batched(
            || frames[0].clone(),
            |frame| {
                queue.push(frame).unwrap();
                queue.pop().unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    // The full hand-off: `submit` on a core, the writer thread draining it (durability
    // `none`: the cost on the core, not the disk's).
    let temp = tempfile::tempdir().unwrap();
    let mut config = RecorderConfig::new(temp.path(), 0, [1; 32]);
    config.durability = Durability::None;
    config.queue_depth = 1 << 16;
    let recorder = Recorder::start(config).unwrap();
    group.bench_function("submit_to_writer_thread", |b| {
        b.iter_batched(
            || frames[0].clone(),
            |frame| {
                let mut frame = frame;
                loop {
                    match recorder.submit(frame) {
                        Ok(ticket) => return ticket,
                        Err(_) => {
                            // Full: the writer is behind; let it drain (back-pressure).
                            std::thread::yield_now();
                            frame = frames[0].clone();
                        }
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    recorder.stop().unwrap();
}

/// The `n`th of a stream of body-less query requests from 20 identities, with fresh request
/// and query ids: what fills a footer's index fastest.
fn index_only_request(rng: &mut SplitMix64, n: u64) -> Frame {
    Frame::Request(RequestFrame {
        time_unix_us: 1_750_000_000_000_000 + n,
        endpoint: Cow::Borrowed("query-request"),
        principal: Principal { sub: Some(format!("agent-{}", rng.below(20))), role: None, groups: vec![] },
        session_id: Some(7),
        request_id: Some(uuid(rng)),
        query_id: Some(uuid(rng)),
        statement: Some("select 1".into()),
        bindings: None,
        agent_context: None,
        query_tag: None,
        decision: Decision::Allowed,
        body: Bytes::new(),
    })
}

/// Sealing a segment whose index holds `n` queries (a query id and a request id each, and a
/// few identities): the footer is built, sorted, encoded, authenticated and written. This runs
/// on the recorder thread, so it is a pause in recording (and, on a CPU a core shares, in
/// serving). On tmpfs when there is one (`/dev/shm`): the CPU's part, not the disk's.
fn seal(c: &mut Criterion) {
    let shm = std::path::Path::new("/dev/shm");
    let memory_dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let mut group = c.benchmark_group("record/seal");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in [10_000usize, 100_000] {
        let mut rng = SplitMix64(0xF007);
        let frames: Vec<Frame> = (0..n as u64).map(|i| index_only_request(&mut rng, i)).collect();
        group.bench_function(format!("{n}_queries"), |b| {
            b.iter_batched(
                || {
                    let temp = tempfile::tempdir_in(&memory_dir).unwrap();
                    let mut config = RecorderConfig::new(temp.path(), 0, [1; 32]);
                    config.segment_bytes_max = 1 << 32;
                    let (mut writer, _) = SegmentWriter::open(Arc::new(FileSystem), &config, 1).unwrap();
                    for chunk in frames.chunks(64) {
                        writer.append(chunk, 2).unwrap();
                    }
                    (writer, temp)
                },
                |(mut writer, temp)| {
                    writer.seal(SealReason::Stopped, 3).unwrap();
                    (writer, temp)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Opening a sealed segment full of small batches, as an open loop's linger windows write
/// them (16 queries a batch), until the writer would rotate it (by the default 64 MiB, the
/// format's most batches a segment, or its footer's size): [`SegmentReader::open`] walks
/// every batch header from the segment header to the footer before trusting the seal, then
/// reads the footer. Every `snowgate-tools` command pays this per segment, and recovery for
/// the last one. From the page cache (tmpfs when there is one): the CPU's and the system
/// calls' part, not the disk's.
fn open_sealed(c: &mut Criterion) {
    let shm = std::path::Path::new("/dev/shm");
    let memory_dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let temp = tempfile::tempdir_in(&memory_dir).unwrap();
    let config = RecorderConfig::new(temp.path(), 0, [1; 32]);
    let (mut writer, _) = SegmentWriter::open(Arc::new(FileSystem), &config, 1).unwrap();
    let path = writer.current_path().unwrap().to_owned();
    let mut rng = SplitMix64(0x0BE7);
    let mut batches = 0u64;
    let rotation = loop {
        if let Some(why) = writer.needs_rotation(2) {
            break why;
        }
        let frames: Vec<Frame> = (0..16).map(|i| index_only_request(&mut rng, batches * 16 + i)).collect();
        writer.append(&frames, 2).unwrap();
        assert_eq!(writer.current_path(), Some(path.as_path()), "the writer rotated");
        batches += 1;
    };
    writer.seal(SealReason::Stopped, 3).unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!("record/open_sealed: {batches} batches, {bytes} bytes, full by {rotation}");
    let mut group = c.benchmark_group("record/open_sealed");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function(format!("{batches}_batches"), |b| {
        b.iter(|| {
            let reader = SegmentReader::open(&path).unwrap();
            assert!(reader.sealed().is_some());
            reader
        })
    });
    group.finish();
}

criterion_group!(benches, encode, ingest, queue, seal, open_sealed);
criterion_main!(benches);
