//! Criterion benchmarks for the mask module: masking throughput per core on the perf corpus
//! (the test double's MEDIUM answer, ~18 KB, and a multi-MB result of the same rows) for JSON
//! and Arrow, with every detector on and dictionaries of 1, 16 and 256 words.
//!
//! The corpus rows hold a name, an e-mail and a Luhn-valid card number each, an SSN (NULL in
//! every seventh row), an amount and a date: every row has several values to mask, which is
//! the dense, worst case for detectors. Each dictionary holds a few of the corpus' last names
//! (so about a quarter of the NAME values match) and made-up secrets that never match.
//!
//! Run: `cargo bench --bench mask`. Figures are bytes of result per second on one core.
//! On a shared, loaded machine wall-clock figures understate a core's speed; with
//! `MASK_CPU_SECONDS=3 cargo bench --bench mask` each input is instead masked in a loop for
//! that much CPU time of this thread (from `/proc/thread-self/schedstat`), and bytes per
//! CPU-second are printed: what one core does when it is not preempted.
//!
//! Knobs for exploring, in that mode: `MASK_CONFIG=n` runs only the n-th configuration of the
//! breakdown (for a profiler), `MASK_ROWS` sets the big result's rows (default 40,000) and
//! `MASK_COPY_BYTES` how many bytes of fresh copies are masked between CPU-time reads
//! (default 64 MiB; smaller keeps them in cache).

use std::hint::black_box;
use std::sync::Arc;

use arrow_array::{ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use snowgate::mask::{Column, ColumnPlan, Masker, MaskingSpec, ProfileId, Scratch};
use snowgate_perf::results::{Results, Table, customers};

/// Rows in the multi-MB result (about 4.5 MB of JSON rows).
const BIG_ROWS: usize = 40_000;
/// Rows per Arrow record batch in the multi-MB stream.
const ARROW_BATCH_ROWS: usize = 4_096;
const QUERY_ID: &str = "01b2c3d4-0000-4000-8000-000000000001";

/// Every detector the policy file knows, for [`masker_with`].
const DETECTORS: [&str; 10] = [
    "card",
    "email",
    "ssn",
    "iban",
    "aws_access_key",
    "gcp_api_key",
    "github_token",
    "slack_token",
    "jwt",
    "pem_private_key",
];

/// A policy with every detector on, an SSN rule, and a dictionary of `words` words.
fn masker(words: usize) -> (Masker, ProfileId) {
    masker_with(words, &DETECTORS)
}

/// A policy with a dictionary of `words` words, the SSN rule, and the `detectors` named on
/// (the card detector keeps the last four digits; the others mask in full).
fn masker_with(words: usize, detectors: &[&str]) -> (Masker, ProfileId) {
    let matching = ["Lovelace", "Hopper", "Turing", "Knuth"];
    let mut list: Vec<String> = matching.iter().take(words).map(|w| w.to_string()).collect();
    let mut i = 0;
    while list.len() < words {
        list.push(format!("codename-{i:03}-secret"));
        i += 1;
    }
    let quoted: Vec<String> = list.iter().map(|w| format!("{w:?}")).collect();
    let switches: String = DETECTORS
        .iter()
        .map(|&d| match (d, detectors.contains(&d)) {
            ("card", true) => r#"card = { mask = { style = "keep_last", keep = 4 } }"#.to_string() + "\n",
            (d, on) => format!("{d} = {on}\n"),
        })
        .collect();
    let text = format!(
        r#"
[masking.profiles.bench.detectors]
{switches}
[masking.profiles.bench.dictionary]
words = [{}]
mask = {{ style = "token", token = "[NAME]" }}

[[masking.profiles.bench.columns]]
name = "SSN"
mask = {{ style = "null" }}
"#,
        quoted.join(", ")
    );
    #[derive(serde::Deserialize)]
    struct File {
        masking: MaskingSpec,
    }
    let file: File = toml::from_str(&text).expect("bench policy");
    let masker = Masker::new(&file.masking).expect("bench policy compiles");
    let profile = masker.profile("bench").expect("bench profile");
    (masker, profile)
}

fn rowtype(table: &Table) -> Value {
    Value::Array(
        table
            .columns
            .iter()
            .map(|c| {
                json!({"name": c.name, "database": "TESTDB", "schema": "PUBLIC", "table": table.name,
                       "type": c.type_name, "scale": c.scale, "precision": c.precision, "length": c.length,
                       "nullable": c.nullable})
            })
            .collect(),
    )
}

fn columns(table: &Table) -> Vec<Column> {
    Column::from_rowtype_json(&serde_json::to_vec(&rowtype(table)).expect("rowtype")).expect("columns")
}

/// The rows as a JSON chunk: rows separated by commas, no enclosing brackets.
fn json_chunk(table: &Table) -> Vec<u8> {
    let rows: Vec<String> = table.rows.iter().map(|r| serde_json::to_string(r).expect("row")).collect();
    rows.join(",").into_bytes()
}

/// The rows as an Arrow IPC stream shaped like Snowflake's (field metadata, scaled integers).
fn arrow_stream(table: &Table, batch_rows: usize) -> Vec<u8> {
    let meta = |logical: &str, scale: u32| {
        [
            ("logicalType", logical.to_string()),
            ("scale", scale.to_string()),
            ("precision", "38".into()),
            ("charLength", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect::<std::collections::HashMap<String, String>>()
    };
    let fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| match c.type_name {
            "fixed" => {
                Field::new(&c.name, DataType::Int64, c.nullable).with_metadata(meta("FIXED", c.scale.unwrap_or(0)))
            }
            "date" => Field::new(&c.name, DataType::Date32, c.nullable).with_metadata(meta("DATE", 0)),
            _ => Field::new(&c.name, DataType::Utf8, c.nullable).with_metadata(meta("TEXT", 0)),
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).expect("writer");
    for rows in table.rows.chunks(batch_rows) {
        let arrays: Vec<ArrayRef> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| -> ArrayRef {
                let cells = rows.iter().map(|r| r[i].as_deref());
                match c.type_name {
                    "fixed" => Arc::new(Int64Array::from_iter(
                        cells.map(|v| v.map(|v| v.replace('.', "").parse::<i64>().expect("fixed"))),
                    )),
                    "date" => {
                        Arc::new(Date32Array::from_iter(cells.map(|v| v.map(|v| v.parse::<i32>().expect("date")))))
                    }
                    _ => Arc::new(StringArray::from_iter(cells)),
                }
            })
            .collect();
        writer.write(&RecordBatch::try_new(schema.clone(), arrays).expect("batch")).expect("write");
    }
    writer.finish().expect("finish");
    drop(writer);
    out
}

struct Input {
    name: &'static str,
    body: Vec<u8>,
    plan: Option<ColumnPlan>,
}

/// This thread's time on a CPU, in nanoseconds (Linux).
fn thread_cpu_nanos() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Masks `input` in a loop for `seconds` of CPU time; returns bytes per CPU-second.
fn cpu_throughput(masker: &Masker, profile: ProfileId, input: &Input, seconds: f64) -> Option<f64> {
    let mut scratch = Scratch::default();
    let mut copies: Vec<Vec<u8>> = Vec::new();
    let (mut spent, mut bytes) = (0u64, 0u64);
    while (spent as f64) < seconds * 1e9 {
        // Fresh copies outside the timed region: masking an already-masked body is another workload.
        copies.clear();
        let copy_bytes: usize = std::env::var("MASK_COPY_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(64 << 20);
        copies.extend((0..copy_bytes / input.body.len().max(1) + 1).map(|_| input.body.clone()));
        let start = thread_cpu_nanos()?;
        for body in &mut copies {
            let masked = masker.mask(profile, body, input.plan.as_ref(), &mut scratch).expect("masks");
            black_box(masked.report.values_masked);
            bytes += body.len() as u64;
        }
        spent += thread_cpu_nanos()? - start;
    }
    Some(bytes as f64 / (spent as f64 / 1e9))
}

/// Bytes per CPU-second of `work` over `body`, repeated for `seconds` of CPU time.
fn cpu_rate(body: &[u8], seconds: f64, mut work: impl FnMut(&[u8]) -> usize) -> Option<f64> {
    let (mut spent, mut bytes) = (0u64, 0u64);
    while (spent as f64) < seconds * 1e9 {
        let start = thread_cpu_nanos()?;
        for _ in 0..16 {
            black_box(work(black_box(body)));
            bytes += body.len() as u64;
        }
        spent += thread_cpu_nanos()? - start;
    }
    Some(bytes as f64 / (spent as f64 / 1e9))
}

/// Reference points on the same bytes and machine: what a bare memchr count and a bare Teddy
/// search over the 16 dictionary words and the detector anchors cost.
fn calibrate(body: &[u8], seconds: f64) {
    let mut patterns: Vec<String> = ["Lovelace", "Hopper", "Turing", "Knuth"].iter().map(|w| w.to_string()).collect();
    patterns.extend((0..12).map(|i| format!("codename-{i:03}-secret")));
    patterns.extend(
        ["AKIA", "ASIA", "AIza", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "eyJ", "-----BEGIN"]
            .map(String::from),
    );
    let teddy = aho_corasick::packed::Config::new()
        .match_kind(aho_corasick::packed::MatchKind::LeftmostLongest)
        .builder()
        .extend(&patterns)
        .build()
        .expect("teddy");
    let count = cpu_rate(body, seconds, |b| memchr::memchr_iter(b'"', b).count());
    let search = cpu_rate(body, seconds, |b| teddy.find_iter(b).count());
    if let (Some(count), Some(search)) = (count, search) {
        eprintln!(
            "reference on json_chunk_4m: memchr count of '\"' {:.2} GB/s, Teddy over 28 patterns {:.2} GB/s",
            count / 1e9,
            search / 1e9
        );
    }
}

fn bench(c: &mut Criterion) {
    let cpu_seconds: Option<f64> = std::env::var("MASK_CPU_SECONDS").ok().and_then(|s| s.parse().ok());
    let medium_answer = Results::build(1_700_000_000_000).query_medium.render(QUERY_ID).to_vec();
    let medium = customers("MEDIUM", 160);
    let big = customers("BIG", std::env::var("MASK_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(BIG_ROWS));
    if let Some(seconds) = std::env::var("MASK_CPU_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()) {
        if std::env::var("MASK_CONFIG").is_err() {
            calibrate(&json_chunk(&big), seconds);
        }
        // Where the time goes: the walk alone, then with the dictionary, then with detectors
        // (the corpus' e-mail and card detectors alone, then all of them, then the goal's case:
        // 16 words and every detector).
        // `MASK_CONFIG=n` keeps only the n-th of these (for a profiler).
        let none: &[&str] = &[];
        let configs =
            [(0, none), (16, none), (0, &["email"][..]), (0, &["card"][..]), (0, &DETECTORS[..]), (16, &DETECTORS[..])];
        let config: Option<usize> = std::env::var("MASK_CONFIG").ok().and_then(|s| s.parse().ok());
        for (_, &(words, detectors)) in configs.iter().enumerate().filter(|(i, _)| config.is_none_or(|c| c == *i)) {
            let (masker, profile) = masker_with(words, detectors);
            let detectors = if detectors.len() == DETECTORS.len() { "all".to_string() } else { detectors.join(",") };
            let input = Input {
                name: "json_chunk_4m",
                body: json_chunk(&big),
                plan: Some(masker.plan(profile, &columns(&big))),
            };
            let arrow =
                Input { name: "arrow_chunk_4m", body: arrow_stream(&big, ARROW_BATCH_ROWS), plan: input.plan.clone() };
            let only = std::env::var("MASK_ONLY").ok();
            for input in [&input, &arrow].into_iter().filter(|i| only.as_deref().is_none_or(|o| i.name.contains(o))) {
                if let Some(rate) = cpu_throughput(&masker, profile, input, seconds) {
                    eprintln!("  {words:>3} words, detectors {detectors:<5}: {} {:.2} GB/s", input.name, rate / 1e9);
                }
            }
        }
    }
    if std::env::var("MASK_CONFIG").is_ok() {
        return;
    }
    for words in [1, 16, 256] {
        let (masker, profile) = masker(words);
        let mut group = c.benchmark_group(format!("mask/{words}_words+detectors"));
        let inputs = [
            Input { name: "json_answer_18k", body: medium_answer.clone(), plan: None },
            Input { name: "json_chunk_4m", body: json_chunk(&big), plan: Some(masker.plan(profile, &columns(&big))) },
            Input {
                name: "arrow_chunk_18k",
                body: arrow_stream(&medium, ARROW_BATCH_ROWS),
                plan: Some(masker.plan(profile, &columns(&medium))),
            },
            Input {
                name: "arrow_chunk_4m",
                body: arrow_stream(&big, ARROW_BATCH_ROWS),
                plan: Some(masker.plan(profile, &columns(&big))),
            },
        ];
        eprintln!("{words} words: searcher {}", masker.searcher_kind(profile).name());
        if let Some(seconds) = cpu_seconds {
            let only = std::env::var("MASK_ONLY").ok();
            for input in inputs.iter().filter(|i| only.as_deref().is_none_or(|o| i.name.contains(o))) {
                if let Some(rate) = cpu_throughput(&masker, profile, input, seconds) {
                    eprintln!(
                        "  {:<16} {:>8} bytes  {:>6.2} GB/s per CPU-second",
                        input.name,
                        input.body.len(),
                        rate / 1e9
                    );
                }
            }
            continue;
        }
        for input in &inputs {
            group.throughput(Throughput::Bytes(input.body.len() as u64));
            let size = if input.body.len() > 1 << 20 { BatchSize::LargeInput } else { BatchSize::SmallInput };
            let mut scratch = Scratch::default();
            group.bench_function(input.name, |b| {
                b.iter_batched_ref(
                    || input.body.clone(),
                    |body| {
                        let masked = masker.mask(profile, body, input.plan.as_ref(), &mut scratch).expect("masks");
                        black_box(masked.report.values_masked)
                    },
                    size,
                )
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
