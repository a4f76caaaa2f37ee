//! The `snowgate-perf` command: serves the Snowflake test double, and runs the side-by-side
//! comparison (direct, nginx, snowgate) that writes `perf/results/<date>-<name>.{md,svg}`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use snowgate_perf::harness::{self, Payload, RunSpec, scenario};
use snowgate_perf::{ChunkLayout, UpstreamConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "snowgate-perf", version, about = "The Snowflake test double and perf harness for snowgate.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Snowflake test double until killed; prints the bound address on one line.
    Upstream(UpstreamArgs),
    /// Run the whole comparison: max throughput (closed loop) and latency (open loop) per
    /// scenario and payload, memory per idle connection, throughput by cores; write the
    /// markdown report and the SVG plot.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The snowgate binary to measure.
    #[arg(long, env = "SNOWGATE_PERF_GATEWAY_BIN", default_value = "target/release/snowgate")]
    gateway_bin: PathBuf,
    /// The gateway's `bench-unrecorded` build, for the recording-off scenario (default: the
    /// gateway binary's path with `-unrecorded` appended).
    #[arg(long, env = "SNOWGATE_PERF_UNRECORDED_BIN")]
    unrecorded_bin: Option<PathBuf>,
    /// Run the double and the proxy at normal priority in the open loop instead of SCHED_FIFO.
    #[arg(long)]
    no_realtime: bool,
    /// Under a minute: one run each, short windows, 2,000 idle connections.
    #[arg(long, conflicts_with = "tiny")]
    quick: bool,
    /// Seconds: the smoke test's mode (proves the parts work; the figures mean nothing).
    #[arg(long)]
    tiny: bool,
    /// Scenarios to run, comma-separated (default: all; those that cannot run are skipped).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Payloads, comma-separated: small, medium, arrow_small, arrow_medium, one, or name=sql.
    #[arg(long, value_delimiter = ',')]
    payloads: Option<Vec<String>>,
    /// Closed-loop runs per scenario (medians are reported).
    #[arg(long)]
    runs: Option<usize>,
    /// Closed-loop measured seconds per run.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Open-loop measured seconds.
    #[arg(long)]
    open_duration_secs: Option<f64>,
    /// Warm-up seconds before each measured window.
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Closed-loop agents (connections).
    #[arg(long)]
    connections: Option<usize>,
    /// Open-loop agents (connections).
    #[arg(long)]
    open_connections: Option<usize>,
    /// Open-loop rate as a fraction of nginx's max rate.
    #[arg(long)]
    open_fraction: Option<f64>,
    /// Open-loop rate in requests a second, instead of a fraction of nginx's max: the same
    /// offered load for runs of two builds, whatever each run's nginx max.
    #[arg(long, conflicts_with = "open_fraction")]
    open_rate: Option<f64>,
    /// Idle connections for the memory figure (0 skips it).
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Skip the --cores 1 vs --cores 2 figure.
    #[arg(long)]
    no_cores: bool,
    /// Where the report goes.
    #[arg(long, default_value = "perf/results")]
    out_dir: PathBuf,
    /// The report's name (`<out-dir>/<date>-<name>.md` and `.svg`).
    #[arg(long, default_value = "comparison")]
    name: String,
}

#[derive(Debug, Args)]
struct UpstreamArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SNOWGATE_PERF_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// RSA public key (PEM) trusted for key-pair JWT logins and the SQL API.
    #[arg(long, env = "SNOWGATE_PERF_PUBLIC_KEY")]
    public_key: Option<PathBuf>,
    /// Name of the environment variable holding the accepted password.
    #[arg(long, env = "SNOWGATE_PERF_PASSWORD_ENV")]
    password_env: Option<String>,
    /// Runtime threads, sharing one port through SO_REUSEPORT.
    #[arg(long, env = "SNOWGATE_PERF_THREADS", default_value_t = 1)]
    threads: usize,
    /// Account logins must name.
    #[arg(long, env = "SNOWGATE_PERF_ACCOUNT", default_value = "TESTACCT")]
    account: String,
    /// User logins must name.
    #[arg(long, env = "SNOWGATE_PERF_USER", default_value = "SNOWGATE")]
    user: String,
    /// Prefix of every token issued (a canary for tests).
    #[arg(long, env = "SNOWGATE_PERF_TOKEN_PREFIX", default_value = "SFTOKEN")]
    token_prefix: String,
    /// Session token lifetime, in seconds.
    #[arg(long, env = "SNOWGATE_PERF_SESSION_VALIDITY_SECS", default_value_t = 3600)]
    session_validity_secs: u64,
    /// Master token lifetime, in seconds.
    #[arg(long, env = "SNOWGATE_PERF_MASTER_VALIDITY_SECS", default_value_t = 14400)]
    master_validity_secs: u64,
    /// Gzip responses for clients that accept it.
    #[arg(long, env = "SNOWGATE_PERF_GZIP_RESPONSES")]
    gzip_responses: bool,
    /// Result polls a `slow` query answers "in progress" before its result.
    #[arg(long, env = "SNOWGATE_PERF_POLLS_BEFORE_READY", default_value_t = 2)]
    polls_before_ready: u32,
    /// Requests kept in the in-memory log (0 for none).
    #[arg(long, env = "SNOWGATE_PERF_REQUEST_LOG_CAPACITY", default_value_t = 1000)]
    request_log_capacity: usize,
    /// Rows answered inline by `chunked_json` / `chunked_arrow`, before the chunks.
    #[arg(long, env = "SNOWGATE_PERF_CHUNK_FIRST_ROWS", default_value_t = ChunkLayout::default().first_rows)]
    chunk_first_rows: usize,
    /// Chunks of `chunked_json` / `chunked_arrow`.
    #[arg(long, env = "SNOWGATE_PERF_CHUNK_COUNT", default_value_t = ChunkLayout::default().chunk_count)]
    chunk_count: usize,
    /// Rows per chunk.
    #[arg(long, env = "SNOWGATE_PERF_CHUNK_ROWS", default_value_t = ChunkLayout::default().rows_per_chunk)]
    chunk_rows: usize,
    /// Bytes of query string on every chunk URL, as presigned URLs carry their signature (0:
    /// none).
    #[arg(long, env = "SNOWGATE_PERF_CHUNK_URL_QUERY_BYTES", default_value_t = 0)]
    chunk_url_query_bytes: usize,
}

fn upstream(args: UpstreamArgs) -> anyhow::Result<()> {
    let public_key_pem = args
        .public_key
        .as_ref()
        .map(|path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())))
        .transpose()?;
    let password = args
        .password_env
        .as_ref()
        .map(|var| std::env::var(var).with_context(|| format!("the password variable {var} is not set")))
        .transpose()?;
    let config = UpstreamConfig {
        account: args.account,
        user: args.user,
        public_key_pem,
        password,
        token_prefix: args.token_prefix,
        session_validity_secs: args.session_validity_secs,
        master_validity_secs: args.master_validity_secs,
        gzip_responses: args.gzip_responses,
        polls_before_ready: args.polls_before_ready,
        request_log_capacity: args.request_log_capacity,
        chunk_layout: ChunkLayout {
            first_rows: args.chunk_first_rows,
            chunk_count: args.chunk_count,
            rows_per_chunk: args.chunk_rows,
        },
        chunk_url_query_bytes: args.chunk_url_query_bytes,
        chunk_base_url: None,
    };
    let running = snowgate_perf::start_with(config, args.listen, args.threads)?;
    // Scripts read this one line to learn the port.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", running.addr)?;
    stdout.flush()?;
    running.wait();
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut spec = if args.tiny {
        RunSpec::tiny(args.gateway_bin.clone())
    } else if args.quick {
        RunSpec::quick(args.gateway_bin.clone())
    } else {
        RunSpec::full(args.gateway_bin.clone())
    };
    spec.scenarios = scenario::select(args.scenarios.as_deref())?;
    if let Some(payloads) = &args.payloads {
        spec.payloads = payloads.iter().map(|p| Payload::parse(p)).collect::<anyhow::Result<_>>()?;
    }
    let secs = std::time::Duration::from_secs_f64;
    spec.runs = args.runs.unwrap_or(spec.runs).max(1);
    spec.closed_duration = args.duration_secs.map_or(spec.closed_duration, secs);
    spec.open_duration = args.open_duration_secs.map_or(spec.open_duration, secs);
    spec.warmup = args.warmup_secs.map_or(spec.warmup, secs);
    spec.closed_connections = args.connections.unwrap_or(spec.closed_connections).max(1);
    spec.open_connections = args.open_connections.unwrap_or(spec.open_connections).max(1);
    spec.open_fraction = args.open_fraction.unwrap_or(spec.open_fraction);
    spec.open_rate = args.open_rate.map(|rate| rate.max(10.0));
    spec.idle_connections = args.idle_connections.unwrap_or(spec.idle_connections);
    spec.cores_comparison = !args.no_cores;
    spec.realtime = !args.no_realtime;
    if let Some(bin) = &args.unrecorded_bin {
        spec.unrecorded_bin = bin.clone();
    }
    let command = std::env::args().map(|a| if a.contains(' ') { format!("'{a}'") } else { a }).collect::<Vec<_>>();
    let command = format!("snowgate-perf {}", command.get(1..).unwrap_or_default().join(" "));
    let report = harness::run(&spec, &command)?;
    let path = harness::report::write(&report, spec.runs, &args.out_dir, &args.name)?;
    print!("{}", harness::report::markdown(&report, spec.runs, &format!("{}-{}.svg", report.date, args.name)));
    eprintln!("snowgate-perf: wrote {} and its .svg", path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream(args) => upstream(args),
        Command::Run(args) => run(args),
    }
}
