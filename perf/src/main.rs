//! The `snowgate-perf` command: serves the Snowflake test double, and runs the side-by-side
//! comparison of direct and through-snowgate load.

mod bench;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use snowgate_perf::UpstreamConfig;
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
    /// Run the same closed-loop load directly against the double and through snowgate, and
    /// print a markdown table of medians (req/s, latency, CPU µs per request per process).
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The snowgate binary to measure.
    #[arg(long, env = "SNOWGATE_PERF_GATEWAY_BIN", default_value = "target/release/snowgate")]
    gateway_bin: PathBuf,
    /// Concurrent connections.
    #[arg(long, env = "SNOWGATE_PERF_CONNECTIONS", default_value_t = 32)]
    connections: usize,
    /// Warm-up seconds before each measured window.
    #[arg(long, env = "SNOWGATE_PERF_WARMUP_SECS", default_value_t = 2.0)]
    warmup_secs: f64,
    /// Measured seconds per run.
    #[arg(long, env = "SNOWGATE_PERF_DURATION_SECS", default_value_t = 10.0)]
    duration_secs: f64,
    /// Runs per scenario, alternating; the table gives medians.
    #[arg(long, env = "SNOWGATE_PERF_RUNS", default_value_t = 5)]
    runs: usize,
    /// The statement every query sends (see the double's vocabulary).
    #[arg(long, env = "SNOWGATE_PERF_SQL", default_value = "select 1")]
    sql: String,
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
    };
    let running = snowgate_perf::start_with(config, args.listen, args.threads)?;
    // Scripts read this one line to learn the port.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", running.addr)?;
    stdout.flush()?;
    running.wait();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream(args) => upstream(args),
        Command::Compare(args) => {
            let spec = bench::CompareSpec {
                gateway_bin: args.gateway_bin,
                connections: args.connections,
                warmup: std::time::Duration::from_secs_f64(args.warmup_secs),
                duration: std::time::Duration::from_secs_f64(args.duration_secs),
                runs: args.runs,
                sql: args.sql,
            };
            let results = bench::compare(&spec)?;
            println!("{}", bench::report(&results));
            Ok(())
        }
    }
}
