//! `recmeter pagerduty test`: sends one test trigger and its resolve to each configured
//! routing key, and prints PagerDuty's answers, so an operator can check the keys before the
//! first real page. `--dry-run` prints the events (keys redacted) without sending them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use recmeter_aggregator::clock::unix_nanos;
use recmeter_exporter::pagerduty::event::test_events;
use recmeter_exporter::pagerduty::{Answer, Client, EventContext};
use serde_json::Value;

use crate::config::{Config, host_name};
use crate::error::Error;

#[derive(Debug, Args)]
pub struct PagerDutyArgs {
    #[command(subcommand)]
    pub command: PagerDutyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PagerDutyCommand {
    /// Send a test trigger (severity info, its summary saying it is a test) and then its
    /// resolve to each routing key in [pagerduty], and print PagerDuty's answers. Exit 1 when
    /// any is not accepted.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Configuration file; without it the embedded defaults and RECMETER_* overrides apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the events (routing keys redacted) and where they would go; send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Entry point of `recmeter pagerduty`.
pub fn main(args: PagerDutyArgs) -> ExitCode {
    match args.command {
        PagerDutyCommand::Test(args) => test(&args),
    }
}

fn test(args: &TestArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), crate::config::environment()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}", Error::Config(errors));
            return ExitCode::FAILURE;
        }
    };
    let routing = match config.pagerduty.routing() {
        Ok(r) if r.is_on() => r,
        Ok(_) => {
            eprintln!(
                "PagerDuty is off: set pagerduty.routing_key (or routing_key_file, or a key per \
                 severity such as page_routing_key) first."
            );
            return ExitCode::FAILURE;
        }
        Err(errors) => {
            eprintln!("{}", Error::Config(errors));
            return ExitCode::FAILURE;
        }
    };
    let context = EventContext {
        instance: config.service.instance(),
        source: config.pagerduty.source.clone().unwrap_or_else(host_name),
        links: config.pagerduty.links.clone(),
        objectives: Vec::new(),
        no_data_after: config.slo.no_data_after,
    };
    let client = match Client::new(&config.pagerduty) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}", Error::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    let now = unix_nanos(std::time::SystemTime::now());
    let mut ok = true;
    for (key, severities) in routing.distinct() {
        let labels: Vec<&str> = severities.iter().map(|s| s.label()).collect();
        let (trigger, resolve) = test_events(&context, key.expose(), &severities, now);
        println!(
            "POST {} with the routing key of {} alerts",
            client.endpoint(),
            labels.join(", ")
        );
        if args.dry_run {
            for event in [trigger, resolve] {
                println!("{}", redacted(event));
            }
            continue;
        }
        println!("dedup_key: {}", trigger["dedup_key"].as_str().unwrap_or(""));
        for event in [trigger, resolve] {
            let action = event["event_action"].as_str().unwrap_or("").to_owned();
            let answer = runtime.block_on(client.send(&event, key.expose()));
            let accepted = matches!(answer, Answer::Accepted { .. });
            match answer {
                Answer::Accepted { status, body } | Answer::Rejected { status, body } => {
                    println!("{action}: {status} {}", body.trim());
                }
                Answer::Retry { status, reason } => println!(
                    "{action}: {} {}",
                    status.map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                    reason.trim()
                ),
            }
            if !accepted {
                ok = false;
                // No resolve for a trigger PagerDuty did not take.
                break;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `event` as pretty JSON with its routing key redacted.
fn redacted(mut event: Value) -> String {
    event["routing_key"] = Value::from("[redacted]");
    serde_json::to_string_pretty(&event).unwrap_or_default()
}
