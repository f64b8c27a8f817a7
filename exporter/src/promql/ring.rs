//! recmeter's own families over time, for the query API: once a minute the exposition
//! providers that are not answered from the rollups (self-telemetry, SLO, cost, billing,
//! Kafka, PagerDuty) are rendered as a scrape would see them, and their samples kept in memory
//! for 24 hours. The ring starts empty at every start-up (README, "Query API").

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use promql_parser::label::Matcher;
use recmeter_aggregator::Clock;
use recmeter_aggregator::clock::Ticks;

use super::source::{MemorySource, Source};
use super::value::{Labels, METRIC_NAME, Sample, Series};
use crate::prometheus::{Format, Provider, render_parts};

/// How long the ring keeps samples (milliseconds).
pub const KEEP_MS: i64 = 24 * 3_600_000;

/// A family's metadata, as its `# TYPE` and `# HELP` lines give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub kind: String,
    pub help: String,
}

/// Samples of the sampled families, and their metadata.
#[derive(Debug, Default)]
pub struct Ring {
    series: RwLock<MemorySource>,
    metadata: RwLock<BTreeMap<String, Metadata>>,
}

impl Ring {
    /// Adds every sample of `text` (Prometheus text format 0.0.4) at `t` (milliseconds), and
    /// forgets samples older than 24 hours before it. Returns how many lines could not be read
    /// (none unless an exposition provider writes what the format does not allow).
    pub fn record(&self, text: &str, t: i64) -> usize {
        let exposition = parse(text);
        let mut series = self.series.write();
        for (labels, v) in exposition.samples {
            series.add(labels, [Sample { t, v }]);
        }
        series.forget_before(t - KEEP_MS);
        drop(series);
        self.metadata.write().extend(exposition.metadata);
        exposition.unreadable
    }

    /// Every family's metadata, by name.
    pub fn metadata(&self) -> BTreeMap<String, Metadata> {
        self.metadata.read().clone()
    }
}

impl Source for Ring {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Series>, String> {
        self.series.read().select(matchers, start, end)
    }
}

/// Samples the providers that are [`Provider::sampled`] into `ring` now, then at every tick
/// of `ticks` (a minute on recmeter's clock), until the task is dropped. A provider that
/// cannot be read leaves its families out of that minute, with a warning.
pub async fn keep_sampling(
    ring: Arc<Ring>,
    providers: Arc<[Arc<dyn Provider>]>,
    clock: Arc<Clock>,
    mut ticks: Ticks,
) {
    let mut now = clock.now_nanos();
    loop {
        let mut parts = Vec::new();
        for p in providers.iter().filter(|p| p.sampled()) {
            match p.read().await {
                Ok(part) => parts.push(part),
                Err(e) => {
                    tracing::warn!(error = %e.message, "Cannot sample a family for the query API.")
                }
            }
        }
        match render_parts(parts, Format::Text004) {
            Ok(text) => {
                let unreadable = ring.record(&text, (now / 1_000_000) as i64);
                if unreadable > 0 {
                    tracing::warn!(
                        lines = unreadable,
                        "Exposition lines the query API's ring could not read."
                    );
                }
            }
            Err(_) => tracing::warn!("Cannot render the families the query API samples."),
        }
        now = ticks.tick().await;
    }
}

/// What one exposition holds.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<(Labels, f64)>,
    pub metadata: BTreeMap<String, Metadata>,
    /// Lines that are neither a comment nor a sample.
    pub unreadable: usize,
}

/// Reads Prometheus text format 0.0.4: `# HELP`, `# TYPE` and sample lines (a timestamp after
/// the value is ignored).
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    out.metadata.entry(name.to_owned()).or_default().kind = kind.trim().to_owned();
                }
                (Some("HELP"), Some(name), help) => {
                    out.metadata.entry(name.to_owned()).or_default().help =
                        unescape(help.unwrap_or_default(), false);
                }
                _ => {}
            }
            continue;
        }
        match sample(line) {
            Some(s) => out.samples.push(s),
            None => out.unreadable += 1,
        }
    }
    out
}

/// One sample line: `name{label="value",…} value [timestamp]`.
fn sample(line: &str) -> Option<(Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut pairs = vec![(METRIC_NAME.to_owned(), name.to_owned())];
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let label = rest[..eq].trim().to_owned();
            let quoted = rest[eq + 1..].trim_start().strip_prefix('"')?;
            // The value ends at the first quote not escaped.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            pairs.push((label, unescape(&quoted[..end], true)));
            rest = &quoted[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let v = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other.parse().ok()?,
    };
    Some((Labels::new(pairs), v))
}

/// A label value (`quotes`) or help text with its escapes undone.
fn unescape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quotes => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposition_reads_as_samples_and_metadata() {
        let text = "# HELP recmeter_x_total Things \\\\ counted.\n\
                    # TYPE recmeter_x_total counter\n\
                    recmeter_x_total{reason=\"a \\\"b\\\"\",transport=\"http\"} 3\n\
                    recmeter_up 1 1700000000000\n\
                    recmeter_inf{le=\"+Inf\"} +Inf\n\
                    garbage{\n";
        let e = parse(text);
        assert_eq!(e.unreadable, 1);
        assert_eq!(e.samples.len(), 3);
        assert_eq!(
            e.samples[0].0.to_string(),
            r#"recmeter_x_total{reason="a \"b\"", transport="http"}"#
        );
        assert_eq!(e.samples[0].1, 3.0);
        assert_eq!(e.samples[1].1, 1.0);
        assert!(e.samples[2].1.is_infinite());
        let m = &e.metadata["recmeter_x_total"];
        assert_eq!(m.kind, "counter");
        assert_eq!(m.help, "Things \\ counted.");
    }

    #[test]
    fn the_ring_keeps_a_day() {
        let ring = Ring::default();
        ring.record("recmeter_up 1\n", 0);
        ring.record("recmeter_up 2\n", KEEP_MS);
        ring.record("recmeter_up 3\n", KEEP_MS + 60_000);
        let all = ring
            .select(
                &[Matcher::new(
                    promql_parser::label::MatchOp::Equal,
                    METRIC_NAME,
                    "recmeter_up",
                )],
                0,
                i64::MAX,
            )
            .unwrap();
        assert_eq!(all.len(), 1);
        let values: Vec<f64> = all[0].samples.iter().map(|s| s.v).collect();
        assert_eq!(values, [2.0, 3.0]);
    }
}
