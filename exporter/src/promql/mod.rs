//! PromQL over recmeter's samples (issue 30): expressions parsed by `promql-parser` and
//! evaluated with Prometheus 2.42's semantics over any [`Source`] of series.
//!
//! - `value`: labels, samples, series, and what an expression evaluates to.
//! - `source`: where samples come from ([`Source`]), and series held in memory.
//! - `engine`: instant and range evaluation, and which constructs recmeter evaluates.
//! - `functions`: the operators, aggregation helpers and functions.

pub mod engine;
pub mod functions;
#[cfg(test)]
mod script;
pub mod source;
pub mod value;

pub use engine::{Error, ErrorKind, Options, instant, parse, range};
pub use source::{MemorySource, Source};
pub use value::{Element, Labels, Sample, Series, Value};

#[cfg(test)]
mod conformance {
    use std::path::Path;

    /// Cases of each of Prometheus 2.42's engine test files that pass, at least: the floor
    /// moves up as recmeter evaluates more (README, "PromQL").
    const FLOORS: &[(&str, usize)] = &[];

    #[test]
    fn prometheus_s_own_engine_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/promql-testdata");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "test"))
            .collect();
        files.sort();
        let mut report = String::new();
        let mut short = Vec::new();
        for path in files {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let outcome = super::script::run(&text);
            report.push_str(&format!(
                "{name}: {} passed, {} failed, {} skipped\n",
                outcome.passed,
                outcome.failed.len(),
                outcome.skipped.len()
            ));
            for f in &outcome.failed {
                report.push_str(&format!("  FAILED {f}\n"));
            }
            for s in &outcome.skipped {
                report.push_str(&format!("  skipped {s}\n"));
            }
            let floor = FLOORS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, f)| *f);
            if outcome.passed < floor {
                short.push(format!(
                    "{name}: {} passed, at least {floor} expected",
                    outcome.passed
                ));
            }
        }
        println!("{report}");
        assert!(short.is_empty(), "{short:?}\n{report}");
    }
}
