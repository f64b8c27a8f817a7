//! `recmeter verify`: the backup check of a disaster-recovery playbook. Opens the checkpoint in
//! force in a store and checks every file its manifest names (present, of the recorded size,
//! readable Parquet or JSON, with the recorded rows and requests), then prints the totals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use recmeter_aggregator::durability::{self, VerifyReport};

use crate::config::Config;
use crate::error::Error;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store to check: a local path, file://, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX
    /// (credentials from the standard AWS_* and GOOGLE_* variables). Default: storage.url of
    /// --config, or of the embedded defaults (./data).
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Configuration file whose storage.url to check when --storage is not given.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Entry point of `recmeter verify`: exit 0 when every file checks out, 1 (naming the file)
/// when one does not.
pub fn main(args: VerifyArgs) -> ExitCode {
    let url = match args.storage {
        Some(url) => url,
        None => match Config::load(args.config.as_deref(), crate::config::environment()) {
            Ok(config) => config.storage.url,
            Err(errors) => {
                eprintln!("{}", Error::Config(errors));
                return ExitCode::FAILURE;
            }
        },
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
    let result = runtime.block_on(async {
        let store = recmeter_aggregator::store::object::open(&url, false)?;
        durability::verify(store.objects.as_ref()).await
    });
    match result {
        Ok(report) => {
            print_report(&url, &report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("recmeter verify: {url}: FAILED\n  {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(url: &str, r: &VerifyReport) {
    let taken = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.created_unix_nanos);
    println!("recmeter verify: {url}: OK");
    println!(
        "  checkpoint {} ({}), taken {}, covers WAL sequence {}",
        r.checkpoint_id,
        r.manifest,
        humantime::format_rfc3339_seconds(taken),
        r.wal_seq
    );
    println!(
        "  {} files, {} bytes: all present, readable, with the rows and requests recorded",
        r.files, r.bytes
    );
    println!(
        "  series held: {}; requests they have counted: {}",
        r.series, r.series_requests
    );
    println!(
        "  minute rows: {} ({} requests); hour rows: {} ({} requests); open minutes: {} requests",
        r.minute_rows, r.minute_requests, r.hour_rows, r.hour_requests, r.open_requests
    );
}
