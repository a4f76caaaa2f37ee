//! `snowgate-tools`: developer utilities now; recording commands (cat, search, verify, export,
//! stats) arrive with the recording format. Reads recordings only through `snowgate::record`.

mod dev;

use clap::{Parser, Subcommand};

/// Tools for snowgate operators and developers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Local development: keys, a JWKS, a config and agent tokens for a loopback setup.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Dev(command) => dev::run(command),
    }
}
