//! Configuration of ingest rules (`[ingest]`) and of the aggregator itself (`[aggregator]`).

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
/// names starting with `requests_le_`).
pub const RESERVED_LABELS: [&str; 13] = [
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
            } else if RESERVED_LABELS.contains(&label.as_str()) || label.starts_with("requests_le_")
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

/// `[aggregator]`: limits and precision of the in-memory rollups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Most distinct series kept, the memory bound; requests of further series fold into the
    /// `__overflow__` series. The last `max_series / max_series_per_service` of them (at least
    /// 1 but never more than half) are kept for services that have no series yet (README,
    /// ADR 015).
    /// Default: `10000`.
    pub max_series: usize,
    /// Most series of one service (its own overflow series aside); requests of its further
    /// endpoints fold into `service="<service>", endpoint="__overflow__"`. Default: `1000`.
    pub max_series_per_service: usize,
    /// HDR significant digits: 2 (≤ 0.78% bucket error) or 3 (≤ 0.1%, more memory).
    /// Default: `2`.
    pub significant_digits: u8,
    /// Requests that may wait for the aggregator before senders are told to retry.
    /// Default: `256`.
    pub queue_capacity: usize,
    /// Latency thresholds in seconds, each counted exactly at ingest into a
    /// `requests_le_<threshold>` rollup column (0.2 → `requests_le_0_2`). At least 1 µs and
    /// under 1 h (the clamp bounds, so the count is exact), at most 4. Default: `[0.2]`.
    pub latency_thresholds: Vec<f64>,
}

/// Most latency thresholds (`requests_le_*` columns).
pub const MAX_THRESHOLDS: usize = 4;

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            max_series: 10_000,
            max_series_per_service: 1_000,
            significant_digits: 2,
            queue_capacity: 256,
            latency_thresholds: vec![0.2],
        }
    }
}

impl AggregatorConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.max_series == 0 {
            errors.push(InvalidField::new(
                "aggregator.max_series",
                "must be at least 1",
            ));
        }
        if self.max_series_per_service == 0 {
            errors.push(InvalidField::new(
                "aggregator.max_series_per_service",
                "must be at least 1",
            ));
        }
        if !(2..=3).contains(&self.significant_digits) {
            errors.push(InvalidField::new(
                "aggregator.significant_digits",
                format!("must be 2 or 3, not {}", self.significant_digits),
            ));
        }
        if self.queue_capacity == 0 {
            errors.push(InvalidField::new(
                "aggregator.queue_capacity",
                "must be at least 1",
            ));
        }
        if self.latency_thresholds.len() > MAX_THRESHOLDS {
            errors.push(InvalidField::new(
                "aggregator.latency_thresholds",
                format!(
                    "has {} entries; at most {MAX_THRESHOLDS}",
                    self.latency_thresholds.len()
                ),
            ));
        }
        for &t in &self.latency_thresholds {
            if !(1e-6..3_600.0).contains(&t) {
                errors.push(InvalidField::new(
                    "aggregator.latency_thresholds",
                    format!("{t} is not at least 0.000001 (1 µs) and under 3600 (1 h) seconds"),
                ));
            }
        }
        let columns = self.threshold_columns();
        if (1..columns.len()).any(|i| columns[..i].contains(&columns[i])) {
            errors.push(InvalidField::new(
                "aggregator.latency_thresholds",
                "lists the same threshold twice",
            ));
        }
        errors
    }

    /// Series slots kept for the first series of services that have none yet:
    /// `max_series / max_series_per_service`, at least 1 but never more than half of `max_series`
    /// (so none at `max_series = 1`).
    pub fn series_reserve(&self) -> usize {
        (self.max_series / self.max_series_per_service.max(1))
            .max(1)
            .min(self.max_series / 2)
    }

    /// The latency thresholds in nanoseconds, in configuration order.
    pub fn threshold_nanos(&self) -> Vec<u64> {
        self.latency_thresholds
            .iter()
            .map(|t| (t * 1e9).round() as u64)
            .collect()
    }

    /// The `requests_le_*` column names, in configuration order.
    pub fn threshold_columns(&self) -> Vec<String> {
        self.latency_thresholds
            .iter()
            .map(|t| format!("requests_le_{}", t.to_string().replace('.', "_")))
            .collect()
    }
}

/// `[sql]`: the SQL engine behind `/api/v1/sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Longest a query may run before it is cancelled (HTTP 503, `errorType: "timeout"`).
    /// Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// Memory all running queries may hold for sorts, joins and aggregations; a query that
    /// needs more fails with HTTP 422 (`errorType: "resources_exhausted"`). Nothing spills to
    /// disk. Default: `536870912` (512 MiB).
    pub memory_limit_bytes: usize,
    /// Largest result a query may return, in Arrow bytes (HTTP 422 beyond it).
    /// Default: `268435456` (256 MiB).
    pub max_result_bytes: usize,
    /// Partitions a query is split into, which is also the number of threads of each of the
    /// two query runtimes (`/api/v1/sql`, and recmeter's own `/metrics` queries); 0 means one
    /// per CPU core, at most 64. Default: `0`.
    pub target_partitions: usize,
    /// How deeply a query may nest or chain operators, keywords and brackets, counted on its
    /// text before it is parsed (HTTP 400 beyond); the query threads' stacks are sized for it.
    /// At most 10000. Default: `1000`.
    pub max_expression_depth: usize,
    /// Most bytes a string function (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`,
    /// `concat`, `concat_ws`) may build in one call over a batch of rows, and `string_agg` or
    /// `array_agg` in one group (HTTP 422 beyond). Default: `67108864` (64 MiB).
    pub max_value_bytes: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(30),
            memory_limit_bytes: 512 << 20,
            max_result_bytes: 256 << 20,
            target_partitions: 0,
            max_expression_depth: 1_000,
            max_value_bytes: 64 << 20,
        }
    }
}

impl SqlConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.timeout.is_zero() {
            errors.push(InvalidField::new("sql.timeout", "must be longer than 0s"));
        }
        if self.memory_limit_bytes < 1 << 20 {
            errors.push(InvalidField::new(
                "sql.memory_limit_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.target_partitions > 64 {
            errors.push(InvalidField::new(
                "sql.target_partitions",
                format!("{} is more than 64", self.target_partitions),
            ));
        }
        if self.max_result_bytes == 0 {
            errors.push(InvalidField::new(
                "sql.max_result_bytes",
                "must be at least 1",
            ));
        }
        if !(10..=10_000).contains(&self.max_expression_depth) {
            errors.push(InvalidField::new(
                "sql.max_expression_depth",
                format!("{} is not between 10 and 10000", self.max_expression_depth),
            ));
        }
        if self.max_value_bytes < 1024 {
            errors.push(InvalidField::new(
                "sql.max_value_bytes",
                "must be at least 1024",
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
        assert!(AggregatorConfig::default().validate().is_empty());
        assert!(SqlConfig::default().validate().is_empty());
        assert_eq!(
            AggregatorConfig::default().threshold_columns(),
            ["requests_le_0_2"]
        );
    }

    #[test]
    fn thresholds_are_checked() {
        let config = AggregatorConfig {
            latency_thresholds: vec![0.2, 0.2, 0.0, 3600.0, 1.0],
            ..AggregatorConfig::default()
        };
        let errors = config.validate();
        assert_eq!(errors.len(), 4, "{errors:?}");
        let ok = AggregatorConfig {
            latency_thresholds: vec![0.005, 1.0, 2.5],
            ..AggregatorConfig::default()
        };
        assert!(ok.validate().is_empty());
        assert_eq!(
            ok.threshold_columns(),
            ["requests_le_0_005", "requests_le_1", "requests_le_2_5"]
        );
        assert_eq!(
            ok.threshold_nanos(),
            [5_000_000, 1_000_000_000, 2_500_000_000]
        );
    }
}
