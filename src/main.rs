//! `recmeter`: meters a recommendation platform's latency, reliability and cost.

// Only the allocator module may use `unsafe` (ADR 013); the rest forbid it.
mod allocator;
#[forbid(unsafe_code)]
mod billing;
#[forbid(unsafe_code)]
mod cli;
#[forbid(unsafe_code)]
mod config;
#[forbid(unsafe_code)]
mod demo;
mod demo_history;
mod demo_platform;
#[forbid(unsafe_code)]
mod error;
#[forbid(unsafe_code)]
mod kafka;
#[forbid(unsafe_code)]
mod kafka_bench;
#[forbid(unsafe_code)]
mod listen;
#[forbid(unsafe_code)]
mod loadgen;
#[forbid(unsafe_code)]
mod pagerduty;
#[forbid(unsafe_code)]
mod rules;
#[forbid(unsafe_code)]
mod serve;
#[forbid(unsafe_code)]
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
        Command::Rules(args) => rules::main(args),
        Command::Pagerduty(args) => pagerduty::main(args),
        Command::Billing(args) => billing::main(args),
        Command::Kafka(args) => kafka_bench::main(args),
    }
}
