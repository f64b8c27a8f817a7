//! `recmeter`: meters a recommendation platform's latency, reliability and cost.

mod allocator;
mod cli;
mod config;
mod demo;
mod error;
mod loadgen;
mod serve;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(args, None),
        Command::Demo(args) => serve::main(args, Some(demo::Workload)),
        Command::Validate { file } => cli::validate(&file),
        Command::Loadgen(args) => loadgen::main(args),
        Command::Verify(args) => verify::main(args),
    }
}
