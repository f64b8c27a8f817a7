//! Configuration of ingest rules (`[ingest]`) and metric streams (`[metrics]`), which the
//! collector and the aggregator share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One configuration problem, named by its key (`section.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// Dotted key, such as `ingest.max_span_age`.
    pub key: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl InvalidField {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for InvalidField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// OTLP span kinds, by their lower-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKindName {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKindName {
    /// The OTLP `Span.SpanKind` enum value.
    pub const fn otlp_value(self) -> i32 {
        match self {
            SpanKindName::Internal => 1,
            SpanKindName::Server => 2,
            SpanKindName::Client => 3,
            SpanKindName::Producer => 4,
            SpanKindName::Consumer => 5,
        }
    }
}

/// Label and rollup column names recmeter itself uses; extra dimensions may not take them (nor
/// names starting with `requests_le_` or `latency_le_`).
pub const RESERVED_LABELS: [&str; 14] = [
    "service",
    "endpoint",
    "status",
    "window",
    "q",
    "le",
    "source",
    "minute",
    "hour",
    "requests",
    "errors",
    "recommendations",
    "hdr",
    "latency_sum_nanos",
];

/// Longest `ingest.max_span_age`: late data must land in a minute still held in memory.
pub const MAX_SPAN_AGE_LIMIT: Duration = Duration::from_secs(3 * 3_600);

/// `[ingest]`: which spans are requests, how they are keyed, and which times are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Spans that ended longer ago than this are dropped (`reason="too_old"`). Default: `"1h"`.
    #[serde(with = "humantime_serde")]
    pub max_span_age: Duration,
    /// Spans that end further ahead of the clock than this are dropped (`reason="future"`).
    /// Default: `"5m"`.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Span kinds that count as requests; other spans are accepted and ignored.
    /// Default: `["server"]`.
    pub request_span_kinds: Vec<SpanKindName>,
    /// Span or resource attributes added to the series key (span attributes win). Each becomes a
    /// label named after the attribute with characters outside `[a-z0-9_]` turned into `_`.
    /// Default: `[]`.
    pub dimensions: Vec<String>,
    /// Span names (endpoints) whose requests count one recommendation when the span has no
    /// recommendations attribute. Default: unset, meaning every request span.
    pub recommendation_endpoints: Option<Vec<String>>,
    /// Integer span attribute holding the number of recommendations a request served.
    /// Default: `"recs.count"`.
    pub recommendations_attribute: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_span_age: Duration::from_secs(3_600),
            max_future_skew: Duration::from_secs(300),
            request_span_kinds: vec![SpanKindName::Server],
            dimensions: Vec::new(),
            recommendation_endpoints: None,
            recommendations_attribute: "recs.count".to_owned(),
        }
    }
}

impl IngestConfig {
    /// Label names of the extra dimensions, in configuration order.
    pub fn dimension_labels(&self) -> Vec<String> {
        self.dimensions.iter().map(|d| label_name(d)).collect()
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.max_span_age.is_zero() || self.max_span_age > MAX_SPAN_AGE_LIMIT {
            errors.push(InvalidField::new(
                "ingest.max_span_age",
                "must be longer than 0s and at most 3h (the minutes recmeter keeps in memory)",
            ));
        }
        if self.request_span_kinds.is_empty() {
            errors.push(InvalidField::new(
                "ingest.request_span_kinds",
                "must name at least one span kind, or no span would count",
            ));
        }
        let labels = self.dimension_labels();
        for (i, (dim, label)) in self.dimensions.iter().zip(&labels).enumerate() {
            if dim.is_empty() {
                errors.push(InvalidField::new(
                    "ingest.dimensions",
                    "contains an empty name",
                ));
            } else if label.starts_with("__") {
                errors.push(InvalidField::new(
                    "ingest.dimensions",
                    format!(
                        "`{dim}` would become label `{label}`; names starting with __ are reserved"
                    ),
                ));
            } else if RESERVED_LABELS.contains(&label.as_str())
                || label.starts_with("requests_le_")
                || label.starts_with("latency_le_")
            {
                errors.push(InvalidField::new(
                    "ingest.dimensions",
                    format!("`{dim}` would become label `{label}`, which recmeter uses itself"),
                ));
            } else if labels[..i].contains(label) {
                errors.push(InvalidField::new(
                    "ingest.dimensions",
                    format!("`{dim}` becomes label `{label}`, the same as an earlier dimension"),
                ));
            }
        }
        if self.recommendations_attribute.is_empty() {
            errors.push(InvalidField::new(
                "ingest.recommendations_attribute",
                "must not be empty",
            ));
        }
        errors
    }
}

/// Units a latency metric may carry, and the nanoseconds in one of each.
pub const LATENCY_UNITS: [(&str, f64); 4] = [("s", 1e9), ("ms", 1e6), ("us", 1e3), ("ns", 1.0)];

/// The nanoseconds in one `unit` of a latency metric, if it is one.
pub fn nanos_per_unit(unit: &str) -> Option<f64> {
    LATENCY_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, n)| *n)
}

/// One `[[metrics.latency]]` entry: a histogram metric that carries request latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyMetric {
    /// The metric name, exactly as sent.
    pub name: String,
    /// Unit of the values (`s`, `ms`, `us` or `ns`), overriding the metric's own. Default:
    /// unset, the metric's unit is used.
    pub unit: Option<String>,
}

/// `[metrics]`: which OTLP metrics count requests and recommendations, for services that send no
/// request spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Histogram metrics (explicit or exponential buckets) that carry request latency. Without
    /// a `unit` the metric's unit must be `s`, `ms`, `us` or `ns`, or empty on a name ending
    /// `_seconds`. Default: `recs.latency` and `recs_latency_seconds`.
    pub latency: Vec<LatencyMetric>,
    /// Point attributes naming the endpoint, the first present wins; else the metric name.
    /// Default: `["http.route", "rpc.method"]`.
    pub endpoint_attributes: Vec<String>,
    /// Monotonic sums that count recommendations served. Default: `["recs.count"]`.
    pub recommendation_metrics: Vec<String>,
    /// Most cumulative streams held; points of further new streams are ignored
    /// (`reason="stream_limit"`). Default: `100000`.
    pub max_streams: usize,
    /// A cumulative stream without a point for this long is forgotten. Default: `"1h"`.
    #[serde(with = "humantime_serde")]
    pub stream_staleness: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            latency: ["recs.latency", "recs_latency_seconds"]
                .into_iter()
                .map(|name| LatencyMetric {
                    name: name.to_owned(),
                    unit: None,
                })
                .collect(),
            endpoint_attributes: vec!["http.route".to_owned(), "rpc.method".to_owned()],
            recommendation_metrics: vec!["recs.count".to_owned()],
            max_streams: 100_000,
            stream_staleness: Duration::from_secs(3_600),
        }
    }
}

impl MetricsConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        for (i, m) in self.latency.iter().enumerate() {
            if m.name.is_empty() {
                errors.push(InvalidField::new(
                    "metrics.latency",
                    "contains an empty name",
                ));
            } else if self.latency[..i].iter().any(|o| o.name == m.name) {
                errors.push(InvalidField::new(
                    "metrics.latency",
                    format!("names `{}` twice", m.name),
                ));
            } else if self.recommendation_metrics.contains(&m.name) {
                errors.push(InvalidField::new(
                    "metrics.latency",
                    format!("`{}` is also in metrics.recommendation_metrics", m.name),
                ));
            }
            if let Some(unit) = &m.unit
                && nanos_per_unit(unit).is_none()
            {
                errors.push(InvalidField::new(
                    "metrics.latency",
                    format!("`{}` has unit `{unit}`; use one of s, ms, us, ns", m.name),
                ));
            }
        }
        if self.endpoint_attributes.iter().any(String::is_empty) {
            errors.push(InvalidField::new(
                "metrics.endpoint_attributes",
                "contains an empty name",
            ));
        }
        if self.recommendation_metrics.iter().any(String::is_empty) {
            errors.push(InvalidField::new(
                "metrics.recommendation_metrics",
                "contains an empty name",
            ));
        }
        if self.max_streams == 0 {
            errors.push(InvalidField::new(
                "metrics.max_streams",
                "must be at least 1",
            ));
        }
        if self.stream_staleness.is_zero() {
            errors.push(InvalidField::new(
                "metrics.stream_staleness",
                "must be longer than 0s",
            ));
        }
        errors
    }
}

/// An attribute name as a Prometheus label / column name (DESIGN): characters outside
/// `[a-z0-9_]` turned into `_`, and a leading digit prefixed with `_` (labels cannot start with
/// one).
pub fn label_name(attribute: &str) -> String {
    let mut out: String = attribute
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names() {
        assert_eq!(
            label_name("deployment.environment"),
            "deployment_environment"
        );
        assert_eq!(label_name("Region-name"), "_egion_name");
        assert_eq!(label_name("2xx"), "_2xx");
    }

    #[test]
    fn dimensions_may_not_collide() {
        let config = IngestConfig {
            dimensions: vec!["a.b".into(), "a_b".into(), "status".into(), "..x".into()],
            ..IngestConfig::default()
        };
        let errors = config.validate();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn defaults_are_valid() {
        assert!(IngestConfig::default().validate().is_empty());
        assert!(MetricsConfig::default().validate().is_empty());
    }
}
