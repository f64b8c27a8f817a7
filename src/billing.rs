//! `recmeter billing check FILE…`: finance's dry run. Reads and normalizes local billing
//! exports with the billing source's normalizers (its currency rates and per-prefix defaults
//! aside: totals are per currency), touches no store, and prints how many rows
//! became lines or rejects, the rejects, and the totals per day and per service, so a bill
//! can be reconciled before it is uploaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use recmeter_aggregator::store::files::civil_date;
use recmeter_collector::sources::billing::decimal::{self, Total};
use recmeter_collector::sources::billing::{CostLine, Defaults, Reject, Sink, normalize};

#[derive(Debug, Args)]
pub struct BillingArgs {
    #[command(subcommand)]
    pub command: BillingCommand,
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Normalize local billing exports (FOCUS, AWS CUR or GCP; CSV, gzip'd or not, Parquet or JSON lines) without touching the store,
    /// and print the rows read, the lines and rejects, the rejects, and BilledCost and
    /// EffectiveCost per UTC day of the charge period's start and per service, exact to 12
    /// decimals. Exit 1 when a file cannot be read or any row is rejected.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The export files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print at most this many rejects (all are counted).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub max_rejects: usize,
}

/// Entry point of `recmeter billing`.
pub fn main(args: BillingArgs) -> ExitCode {
    match args.command {
        BillingCommand::Check(args) => check(&args),
    }
}

/// Totals of one group: billed, effective, lines.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    billed: Total,
    effective: Total,
    lines: u64,
}

impl Sums {
    fn add(&mut self, line: &CostLine) -> Result<(), decimal::MoneyError> {
        self.billed.add(line.billed_cost)?;
        self.effective.add(line.effective_cost)?;
        self.lines += 1;
        Ok(())
    }
}

/// Sums lines as they come, and keeps the first rejects: memory does not grow with the file.
#[derive(Debug, Default)]
struct Summary {
    max_rejects: usize,
    rows: u64,
    lines: u64,
    rejects: u64,
    kept_rejects: Vec<Reject>,
    by_day: BTreeMap<(i64, String), Sums>,
    by_service: BTreeMap<(String, String), Sums>,
    total: BTreeMap<String, Sums>,
    overflow: Option<decimal::MoneyError>,
}

impl Sink for Summary {
    fn row(&mut self) {
        self.rows += 1;
    }

    fn line(&mut self, line: CostLine) {
        self.lines += 1;
        let currency = &line.billing_currency;
        let service = line.service_name.clone().unwrap_or_default();
        for sums in [
            self.by_day
                .entry((line.day(), currency.clone()))
                .or_default(),
            self.by_service
                .entry((service, currency.clone()))
                .or_default(),
            self.total.entry(currency.clone()).or_default(),
        ] {
            if let Err(e) = sums.add(&line) {
                self.overflow = Some(e);
            }
        }
    }

    fn reject(&mut self, reject: Reject) {
        self.rejects += 1;
        if self.kept_rejects.len() < self.max_rejects {
            self.kept_rejects.push(reject);
        }
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let mut ok = true;
    // Written at the end in one go; a reader that stops early (`| head`) ends it quietly.
    let mut report = String::new();
    let mut all = Summary {
        max_rejects: args.max_rejects,
        ..Summary::default()
    };
    for path in &args.files {
        let name = path.display().to_string();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{name}: cannot open: {e}");
                ok = false;
                continue;
            }
        };
        let before = (all.rows, all.lines, all.rejects);
        // A bar on a terminal only (indicatif draws nothing when stderr is not one).
        let bar = indicatif::ProgressBar::with_draw_target(
            file.metadata().ok().map(|m| m.len()),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.clone());
        let normalized = normalize(bar.wrap_read(file), &name, &Defaults::default(), &mut all);
        bar.finish_and_clear();
        match normalized {
            Ok(format) => {
                let _ = writeln!(
                    report,
                    "{name}: {}, {} rows: {} lines, {} rejects",
                    format.name(),
                    all.rows - before.0,
                    all.lines - before.1,
                    all.rejects - before.2
                );
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                ok = false;
                continue;
            }
        }
    }
    if let Some(e) = all.overflow {
        eprintln!("a total overflows: {e}");
        return ExitCode::FAILURE;
    }
    if all.rejects > 0 {
        ok = false;
        let _ = writeln!(report, "\nrejects ({}):", all.rejects);
        for r in &all.kept_rejects {
            let column = if r.column.is_empty() {
                "row"
            } else {
                &r.column
            };
            let _ = writeln!(
                report,
                "  {}:{} {column}: {} ({:?})",
                r.source_object, r.source_row, r.reason, r.raw
            );
        }
        let shown = all.kept_rejects.len() as u64;
        if all.rejects > shown {
            let _ = writeln!(report, "  … and {} more", all.rejects - shown);
        }
    }
    let (by_day, by_service, total) = (&all.by_day, &all.by_service, &all.total);
    let _ = writeln!(report, "\nper day (UTC date of the charge period's start):");
    let _ = writeln!(report, "day\tcurrency\tbilled_cost\teffective_cost\tlines");
    for ((day, currency), s) in by_day {
        let _ = writeln!(report, "{}\t{currency}\t{}", civil_date(*day), sums(s));
    }
    let _ = writeln!(report, "\nper service:");
    let _ = writeln!(
        report,
        "service\tcurrency\tbilled_cost\teffective_cost\tlines"
    );
    for ((service, currency), s) in by_service {
        let _ = writeln!(report, "{service}\t{currency}\t{}", sums(s));
    }
    let _ = writeln!(report, "\ntotal:");
    for (currency, s) in total {
        let _ = writeln!(report, "total\t{currency}\t{}", sums(s));
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sums(s: &Sums) -> String {
    format!(
        "{}\t{}\t{}",
        decimal::format(s.billed.0),
        decimal::format(s.effective.0),
        s.lines
    )
}
