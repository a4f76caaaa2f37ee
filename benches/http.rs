//! Request-head parsing, body framing and the statement book: fixed costs every request
//! pays at the gateway.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use snowgate::http::{ChunkedDecoder, Limits, parse_request_head};

/// A Python driver's query request head, as captured through the gateway.
const PYTHON_QUERY_HEAD: &[u8] = b"POST /queries/v1/query-request?requestId=6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44&request_guid=0b8b5b7e-2a8f-4c1e-9f55-8f0f1c9b2d31 HTTP/1.1\r\n\
Host: snowgate.internal:8443\r\nUser-Agent: PythonConnector/4.8.1 (Linux-6.18-x86_64-with-glibc2.36) CPython/3.11.7\r\n\
Accept-Encoding: gzip, deflate\r\nAccept: application/snowflake\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n\
Authorization: Snowflake Token=\"sg1.Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4\"\r\n\
Content-Encoding: gzip\r\nContent-Length: 312\r\n\r\n";

fn head(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Bytes(PYTHON_QUERY_HEAD.len() as u64));
    group.bench_function("parse_request_head/python_query", |b| {
        b.iter(|| parse_request_head(std::hint::black_box(PYTHON_QUERY_HEAD), &limits).unwrap().unwrap())
    });
    let body: Vec<u8> = (0..64)
        .flat_map(|_| b"400\r\n".iter().copied().chain([b'x'; 1024]).chain(*b"\r\n"))
        .chain(*b"0\r\n\r\n")
        .collect();
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chunked_decode/64x1KiB", |b| {
        b.iter(|| {
            let mut decoder = ChunkedDecoder::new(1 << 20);
            let mut input = BytesMut::from(&body[..]);
            let mut out = BytesMut::with_capacity(64 * 1024);
            assert!(decoder.decode(&mut input, &mut out).unwrap());
            out
        })
    });
    group.finish();
}

/// What entering a query id in a core's statement book costs (every driver answer does), with
/// the book full (four agents, each at its share of 50,000) so that each entry also evicts the
/// agent's own least recently used; and a poll's check.
fn statement_book(c: &mut Criterion) {
    use snowgate::session::statements::{BookLimits, StatementBook};
    use std::time::{Duration, Instant};
    let ids_max = 200_000;
    let limits = BookLimits { ids_max, ids_per_identity_max: 50_000, idle_ttl: Duration::from_secs(86_400) };
    let now = Instant::now();
    let mut book = StatementBook::new(limits, now);
    let id = |n: u64| format!("01b2c3d4-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff);
    for n in 0..ids_max as u64 {
        book.issue(&id(n), &format!("agent-{}", n % 4), now);
    }
    let mut group = c.benchmark_group("session/statement_book");
    // A new id each time (made outside the timed part): an insert and an eviction.
    let mut next = ids_max as u64;
    group.bench_function("issue_new_full_200k", |b| {
        b.iter_batched(
            || {
                next += 1;
                id(next)
            },
            |new| book.issue(&new, "agent-7", now),
            criterion::BatchSize::SmallInput,
        )
    });
    let held = id(next);
    group.bench_function("check_own", |b| b.iter(|| book.check(std::hint::black_box(&held), "agent-7", now)));
    group.finish();
}

criterion_group!(benches, head, statement_book);
criterion_main!(benches);
