//! The `snowgate` binary: flags and environment, logging, then the thread-per-core runtime.
//! The only place that uses `anyhow`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use snowgate::config::{Config, RecordingSettings, RuntimeSettings};
use snowgate::record::Durability;

/// snowgate: the governed path from AI agents to Snowflake.
///
/// Agents connect with ordinary Snowflake drivers (authenticator='oauth', token=<OIDC JWT>) or
/// the SQL API. Upstream, account, identity, keys and limits live in the TOML file; these flags
/// tune the per-core runtime.
#[derive(Debug, Parser)]
#[command(version = VERSION, about, long_about)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, env = "SNOWGATE_CONFIG")]
    config: PathBuf,

    /// Cores to run: one monoio runtime, listener, upstream pool and recorder each, at most
    /// 1024. Default: every available core.
    #[arg(long, env = "SNOWGATE_CORES")]
    cores: Option<usize>,

    /// Pin core N's thread to CPU N.
    #[arg(long, env = "SNOWGATE_PIN_CPUS")]
    pin_cpus: bool,

    /// io_uring submission queue entries per core: 1 to 32768, the kernel's limit (it rounds a
    /// count up to a power of two; fewer than 256 are raised to 256).
    #[arg(long, env = "SNOWGATE_URING_ENTRIES", default_value_t = 1024)]
    uring_entries: u32,

    /// Read buffer size per connection, in bytes: 1024 to 67108864 (64 MiB).
    #[arg(long, env = "SNOWGATE_READ_BUFFER_BYTES", default_value_t = 16 * 1024)]
    read_buffer_bytes: usize,

    /// Idle upstream keep-alive connections kept per core, at most 65536.
    #[arg(long, env = "SNOWGATE_UPSTREAM_POOL_SIZE", default_value_t = 64)]
    upstream_pool_size: usize,

    /// Open downstream connections allowed per core.
    #[arg(long, env = "SNOWGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// Seconds SIGTERM waits for in-flight requests before exiting, at most 86400 (a day).
    #[arg(long, env = "SNOWGATE_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,

    /// Classifier threads, shared by all cores, 1 to 256 (SQL classification runs off the
    /// cores, so a pathological statement cannot stall one).
    #[arg(long, env = "SNOWGATE_CLASSIFIER_THREADS", default_value_t = 2)]
    classifier_threads: usize,

    /// When a record counts as durable: `none` (page cache), `batch` (group commit; an answer
    /// is released once its record is fsynced) or `strict` (also: a statement goes upstream
    /// only once its request record is fsynced).
    #[arg(long, env = "SNOWGATE_DURABILITY", value_enum, default_value_t = DurabilityFlag::Batch)]
    durability: DurabilityFlag,

    /// In `batch` mode, the least time between two fsyncs of a core's segment.
    #[arg(long, env = "SNOWGATE_FSYNC_INTERVAL_MS", default_value_t = 2)]
    fsync_interval_ms: u64,

    /// zstd level of recording batches (negative levels are the fastest).
    #[arg(long, env = "SNOWGATE_RECORDING_ZSTD_LEVEL", default_value_t = 1, allow_negative_numbers = true)]
    recording_zstd_level: i32,

    /// Frames each core's recording queue holds; when full, statements are refused.
    #[arg(long, env = "SNOWGATE_RECORDING_QUEUE_DEPTH", default_value_t = 4096)]
    recording_queue_depth: usize,

    /// MiB of frames (bodies included) each core's recording queue holds; past it, statements
    /// are refused (a single frame larger than it is taken into an empty queue).
    #[arg(long, env = "SNOWGATE_RECORDING_QUEUE_MIB", default_value_t = 256)]
    recording_queue_mib: usize,

    /// Most frames in one zstd batch.
    #[arg(long, env = "SNOWGATE_RECORDING_BATCH_FRAMES", default_value_t = 256)]
    recording_batch_frames: usize,

    /// A segment is sealed and the next opened at this size, in MiB: 1 to 4096.
    #[arg(long, env = "SNOWGATE_RECORDING_SEGMENT_MIB", default_value_t = 64)]
    recording_segment_mib: u64,

    /// A segment holding records is sealed at this age, in seconds.
    #[arg(long, env = "SNOWGATE_RECORDING_SEGMENT_AGE_SECS", default_value_t = 600)]
    recording_segment_age_secs: u64,

    /// In `none` and `batch` modes, microseconds a woken recorder waits for more frames
    /// before writing, so that it wakes once per window rather than once per exchange (never in
    /// `strict` mode, never past a due group commit). At most 100000. The default, 2 ms, is
    /// the default group-commit interval: at 10,000 queries a second it costs the core's CPU
    /// a third of what 500 µs did (see BENCHMARKS.md).
    #[arg(long, env = "SNOWGATE_RECORDING_LINGER_US", default_value_t = 2000)]
    recording_linger_us: u64,

    /// Log format.
    #[arg(long, env = "SNOWGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Check the configuration and exit.
    #[arg(long, env = "SNOWGATE_CHECK_CONFIG")]
    check_config: bool,
}

/// `--version`; the benchmark-only build says it records nothing (the perf harness checks).
#[cfg(not(feature = "bench-unrecorded"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "bench-unrecorded")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " bench-unrecorded (records nothing)");

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityFlag {
    None,
    Batch,
    Strict,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNOWGATE_LOG").unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match args.log_format {
        LogFormat::Text => {
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init()
        }
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    let cores = args.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = RuntimeSettings {
        cores,
        pin_cpus: args.pin_cpus,
        uring_entries: args.uring_entries,
        read_buffer_bytes: args.read_buffer_bytes,
        upstream_pool_size: args.upstream_pool_size,
        max_connections: args.max_connections,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        classifier_threads: args.classifier_threads,
        recording: RecordingSettings {
            durability: match args.durability {
                DurabilityFlag::None => Durability::None,
                DurabilityFlag::Batch => Durability::Batch { interval: Duration::from_millis(args.fsync_interval_ms) },
                DurabilityFlag::Strict => Durability::Strict,
            },
            zstd_level: args.recording_zstd_level,
            queue_depth: args.recording_queue_depth,
            queue_bytes_max: args.recording_queue_mib.saturating_mul(1 << 20),
            batch_frames_max: args.recording_batch_frames,
            segment_bytes_max: args.recording_segment_mib.saturating_mul(1 << 20),
            segment_age_max: Duration::from_secs(args.recording_segment_age_secs),
            linger: Duration::from_micros(args.recording_linger_us),
            ..RecordingSettings::default()
        },
    };
    let config = Config::load(&args.config, runtime)?;
    if args.check_config {
        // Everything the start builds from the file short of sockets and threads (the sealer,
        // the verifier, the TLS settings), and the recording directory's place, so that a file
        // that passes the check also starts.
        snowgate::runtime::check_recording_dir(&config.recording_dir).context("the configuration cannot start")?;
        snowgate::proxy::Gateway::new(config).context("the configuration cannot start")?;
        println!("configuration ok: {}", args.config.display());
        return Ok(());
    }
    snowgate::runtime::run(config).context("snowgate failed to start")
}
