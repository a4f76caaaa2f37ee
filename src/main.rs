//! The `snowgate` binary: flags and environment, logging, then the thread-per-core runtime.
//! The only place that uses `anyhow`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use snowgate::config::{Config, RuntimeSettings};

/// snowgate: the governed path from AI agents to Snowflake.
///
/// Agents connect with ordinary Snowflake drivers (authenticator='oauth', token=<OIDC JWT>) or
/// the SQL API. Upstream, account, identity, keys and limits live in the TOML file; these flags
/// tune the per-core runtime.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, env = "SNOWGATE_CONFIG")]
    config: PathBuf,

    /// Cores to run: one monoio runtime, listener, upstream pool and recorder each.
    /// Default: every available core.
    #[arg(long, env = "SNOWGATE_CORES")]
    cores: Option<usize>,

    /// Pin core N's thread to CPU N.
    #[arg(long, env = "SNOWGATE_PIN_CPUS")]
    pin_cpus: bool,

    /// io_uring submission queue entries per core.
    #[arg(long, env = "SNOWGATE_URING_ENTRIES", default_value_t = 1024)]
    uring_entries: u32,

    /// Read buffer size per connection, in bytes.
    #[arg(long, env = "SNOWGATE_READ_BUFFER_BYTES", default_value_t = 16 * 1024)]
    read_buffer_bytes: usize,

    /// Idle upstream keep-alive connections kept per core.
    #[arg(long, env = "SNOWGATE_UPSTREAM_POOL_SIZE", default_value_t = 64)]
    upstream_pool_size: usize,

    /// Open downstream connections allowed per core.
    #[arg(long, env = "SNOWGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// Seconds SIGTERM waits for in-flight requests before exiting.
    #[arg(long, env = "SNOWGATE_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,

    /// Log format.
    #[arg(long, env = "SNOWGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Check the configuration and exit.
    #[arg(long, env = "SNOWGATE_CHECK_CONFIG")]
    check_config: bool,
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
    };
    let config = Config::load(&args.config, runtime)?;
    if args.check_config {
        // Everything the start builds from the file short of sockets and threads (the sealer,
        // the verifier, the TLS settings), so that a file that passes the check also starts.
        snowgate::proxy::Gateway::new(config).context("the configuration cannot start")?;
        println!("configuration ok: {}", args.config.display());
        return Ok(());
    }
    snowgate::runtime::run(config).context("snowgate failed to start")
}
