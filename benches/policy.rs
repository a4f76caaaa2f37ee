//! Classification and decision cost per statement, on the benign corpus
//! (`tests/fixtures/policy/benign.sql`) under the test policy. Before the criterion runs, prints
//! the median and p99 classification time per statement across the corpus (each statement's
//! own time is the median of repeated runs).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use snowgate::policy::{Namespace, Policy, PolicySpec, Subject, classify};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy").join(name);
    std::fs::read_to_string(path).expect("fixture")
}

/// The benign corpus, as the corpus test reads it.
fn benign_queries() -> Vec<(Namespace, String)> {
    let mut queries = Vec::new();
    let mut namespace = Namespace::default();
    let mut current: Option<String> = None;
    for line in fixture("benign.sql").lines() {
        if let Some(directive) = line.strip_prefix("-- @@") {
            if let Some(query) = current.take().filter(|q| !q.trim().is_empty()) {
                queries.push((namespace.clone(), query));
            }
            if let Some((database, schema)) =
                directive.trim().strip_prefix("namespace ").and_then(|n| n.split_once('.'))
            {
                namespace = Namespace::new(Some(database.trim()), Some(schema.trim()));
            }
            current = Some(String::new());
        } else if let Some(query) = current.as_mut() {
            query.push_str(line);
            query.push('\n');
        }
    }
    if let Some(query) = current.filter(|q| !q.trim().is_empty()) {
        queries.push((namespace, query));
    }
    queries
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Median and p99 across statements of each statement's median classification time.
fn per_statement_report(policy: &Policy, queries: &[(Namespace, String)]) {
    const RUNS: usize = 31;
    let mut per_statement = Vec::with_capacity(queries.len());
    for (_, query) in queries {
        let mut runs: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                black_box(classify(black_box(query), policy.limits()));
                started.elapsed()
            })
            .collect();
        runs.sort_unstable();
        per_statement.push(runs[RUNS / 2]);
    }
    per_statement.sort_unstable();
    println!(
        "policy/classify per statement over {} benign statements: median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        per_statement.len(),
        percentile(&per_statement, 0.5).as_secs_f64() * 1e6,
        percentile(&per_statement, 0.99).as_secs_f64() * 1e6,
        per_statement.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
    );
}

fn benches(c: &mut Criterion, policy: &Policy, queries: &[(Namespace, String)]) {
    let analyst = Subject { sub: "agent-analyst".into(), groups: vec!["analysts".into()] };
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(queries.len() as u64));
    group.bench_function("classify/benign_corpus", |b| {
        b.iter(|| {
            for (_, query) in queries {
                black_box(classify(black_box(query), policy.limits()));
            }
        })
    });
    let classified: Vec<_> = queries.iter().map(|(ns, q)| (ns, classify(q, policy.limits()))).collect();
    group.bench_function("decide/benign_corpus", |b| {
        b.iter(|| {
            for (namespace, classified) in &classified {
                black_box(policy.decide_in(&analyst, namespace, classified));
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("classify/select_1", |b| b.iter(|| classify(black_box("select 1"), policy.limits())));
    let deep = format!("select {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    group
        .bench_function("classify/refuse_100k_parentheses", |b| b.iter(|| classify(black_box(&deep), policy.limits())));
    group.finish();
}

fn main() {
    let policy =
        Policy::from_spec(&PolicySpec::from_document(&fixture("policy.toml")).expect("policy")).expect("policy");
    let queries = benign_queries();
    per_statement_report(&policy, &queries);
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &policy, &queries);
    criterion.final_summary();
}
