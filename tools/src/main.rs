//! `snowgate-tools`: reads, searches, verifies and exports snowgate recordings (through the
//! library's `snowgate::record` API only), sets up local development, and is the reviewers'
//! client of the gateway's admin API (`approvals`).

mod approvals;
mod dev;
mod recording;
mod render;
mod terminal;

use std::process::ExitCode;

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
    /// Prints every record of a recording directory.
    Cat(recording::CatArgs),
    /// Prints the records matching every filter given.
    Search(recording::SearchArgs),
    /// Checks a recording directory is complete and untouched; exits 1 on any problem, 2 when
    /// segments could not be read and nothing else is wrong.
    Verify(recording::VerifyArgs),
    /// Writes every record as JSON lines for a SIEM (schema `snowgate.record.v1`).
    Export(recording::ExportArgs),
    /// Counts requests per identity, bytes and compression.
    Stats(recording::StatsArgs),
    /// Local development: keys, a JWKS, a config and agent tokens for a loopback setup.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Reviewers: list, approve or deny statements parked for review, through the gateway's
    /// local admin API.
    Approvals(approvals::ApprovalsArgs),
}

/// Exit status 0 on success, 1 when `verify` found a problem, 2 on any other error (usage,
/// I/O, an unreadable recording), so scripts can tell a tampered recording from a typo.
fn main() -> ExitCode {
    match run(Args::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            // Errors can quote a recording's file names or a server's message: escaped.
            eprintln!("error: {}", terminal::escape_text(&format!("{error:#}")));
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Cat(args) => recording::cat(args)?,
        Command::Search(args) => recording::search(args)?,
        Command::Verify(args) => return recording::run_verify(args),
        Command::Export(args) => recording::export(args)?,
        Command::Stats(args) => recording::stats(args)?,
        Command::Dev(command) => dev::run(command)?,
        Command::Approvals(args) => approvals::run(args)?,
    }
    Ok(true)
}
