//! Configuration of the aggregator itself (`[aggregator]`) and of SQL (`[sql]`); the ingest
//! rules it shares with the collector are recmeter-core's.

use serde::{Deserialize, Serialize};

pub use recmeter_core::config::*;

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
            .map(|t| threshold_column(*t))
            .collect()
    }
}

/// The `requests_le_*` column of a latency threshold in seconds (0.2 → `requests_le_0_2`).
pub fn threshold_column(seconds: f64) -> String {
    format!("requests_le_{}", seconds.to_string().replace('.', "_"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
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
