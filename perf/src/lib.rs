//! snowgate-perf: the Snowflake test double (a fast, in-process fake Snowflake HTTP server
//! for snowgate's integration tests and benchmarks) and the perf harness.
//!
//! # Layout
//! - [`upstream`]: the Snowflake semantics (routes, logins, sessions, queries, SQL API);
//!   request in, response out.
//! - [`results`]: the SQL vocabulary, the fake tables and the precomputed result bodies.
//! - [`corpus`]: Arrow IPC encodings and the chunked results (gzip chunks, SSE-C keys).
//! - [`harness`]: the perf harness: load generators, scenarios (direct, nginx, snowgate),
//!   process measurements and the report.
//! - [`keypair`]: key-pair JWT fingerprints, minting and verification.
//! - [`stats`]: counters and the request log tests assert on.
//! - [`server`]: the transport: listeners, runtime threads, optional TLS, the connection loop.
//! - [`client`]: a small blocking HTTP/1.1 client for tests.
//! - [`test_keys`]: test-only RSA key pairs.
//!
//! ```no_run
//! let double = snowgate_perf::start(snowgate_perf::UpstreamConfig {
//!     password: Some("hunter2".into()),
//!     ..Default::default()
//! })?;
//! println!("fake Snowflake at {}", double.url());
//! # Ok::<(), anyhow::Error>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod corpus;
pub mod harness;
pub mod keypair;
pub mod results;
pub mod server;
pub mod stats;
pub mod test_keys;
pub mod upstream;

pub use corpus::{ChunkFormat, ChunkLayout};
pub use server::{RunningUpstream, start, start_pinned, start_with, start_with_tls, start_with_tls_pinned};
pub use stats::{EndpointKind, RecordedRequest, Stats};
pub use upstream::{Response, Upstream, UpstreamConfig};
