//! Command-line interface.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// recmeter meters a recommendation platform: latency quantiles, SLO burn and cost per
/// recommendation, from OTLP traces, served to Prometheus.
#[derive(Debug, Parser)]
#[command(name = "recmeter", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: OTLP ingest on :4317 (gRPC) and :4318 (HTTP), /metrics on :9464.
    Serve(RunArgs),
    /// Run the service on embedded defaults with a built-in synthetic recommendation workload,
    /// sent through the OpenTelemetry OTLP exporter to its own ports.
    Demo(RunArgs),
    /// Check a configuration file (and RECMETER_* overrides); list every problem, exit 1 on any.
    Validate {
        /// The configuration file (recmeter.toml).
        file: PathBuf,
    },
    /// Send realistic recommendation spans to an OTLP receiver and report throughput, status
    /// counts and (with --server-pid) the server's CPU time per span.
    Loadgen(crate::loadgen::LoadgenArgs),
    /// Check the checkpoint in force in a store: every file its manifest names is present,
    /// readable and holds the rows recorded; print the totals. Exit 1, naming the file, when
    /// one does not.
    Verify(crate::verify::VerifyArgs),
    /// Print Prometheus recording and multi-window multi-burn-rate alerting rules for the
    /// configured [slo] objectives, over recmeter's exported counters, with alerts on
    /// recmeter's own health (for `promtool check rules` and a Prometheus rule_files entry).
    Rules(crate::rules::RulesArgs),
    /// PagerDuty delivery of recmeter's SLO alerts: `recmeter pagerduty test` checks the
    /// routing keys.
    Pagerduty(crate::pagerduty::PagerDutyArgs),
    /// Billing exports: `recmeter billing check FILE…` normalizes local files and prints their
    /// totals, without touching the store.
    Billing(crate::billing::BillingArgs),
    /// Kafka: `recmeter kafka bench` times how fast recmeter drains a pre-filled topic against
    /// a bare consumer that only decodes.
    Kafka(crate::kafka_bench::KafkaArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file; without it the embedded defaults apply. RECMETER_<SECTION>__<KEY>
    /// environment variables override scalar keys either way.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Once ready, write the bound addresses here as JSON
    /// ({"otlp_grpc": "...", "otlp_http": "...", "api": "..."}).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Start even when the write-ahead log is corrupt (not merely torn at its end): cut it at
    /// the corruption, drop the acknowledged records after it, log at ERROR how many, and count
    /// them in recmeter_wal_records_dropped_total. Without it such a log stops start-up,
    /// naming the segment and offset.
    #[arg(long)]
    pub wal_truncate_at_corruption: bool,
    /// Enable the /-/test/* routes (fake clock, named faults). For tests only.
    #[arg(long, hide = true)]
    pub test_hooks: bool,
    /// With --test-hooks: start the clock at this RFC 3339 instant; it then moves only through
    /// POST /-/test/clock.
    #[arg(long, hide = true, requires = "test_hooks", value_parser = parse_rfc3339)]
    pub fake_clock: Option<SystemTime>,
}

fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

/// `recmeter validate FILE`.
pub fn validate(file: &Path) -> ExitCode {
    match Config::load(Some(file), crate::config::environment()) {
        Ok(_) => {
            println!("{}: valid", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s)", file.display(), errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}
