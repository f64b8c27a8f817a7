//! `[query]`: the Prometheus query API's limits and options.

use std::time::Duration;

use recmeter_aggregator::InvalidField;
use serde::{Deserialize, Serialize};

/// `[query]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// A PromQL query still evaluating after this fails with `timeout` (HTTP 503); a client's
    /// `timeout` parameter can only shorten it. Default: `"2m"`, as Prometheus.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most points per series in a range query (`end - start` over `step`), refused with
    /// `bad_data` beyond. Default: `11000`, as Prometheus.
    pub max_points: usize,
    /// Most series in one answer (and in any step of a range query), refused with `bad_data`
    /// beyond. Default: `100000`.
    pub max_series: usize,
    /// Most samples a query may read from its selectors, refused with `execution` beyond (as
    /// Prometheus's `--query.max-samples`). Default: `50000000`.
    pub max_samples: usize,
    /// How far back an instant selector looks for a sample. Default: `"5m"`, as Prometheus.
    #[serde(with = "humantime_serde")]
    pub lookback_delta: Duration,
    /// Answer `histogram_quantile(q, …recs_latency_seconds_bucket…)` from the HDR histograms
    /// of the same series and range (nearest rank, within 1%) rather than by interpolating
    /// within buckets as Prometheus does. Default: `true`.
    pub exact_histogram_quantile: bool,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_points: 11_000,
            max_series: 100_000,
            max_samples: 50_000_000,
            lookback_delta: Duration::from_secs(300),
            exact_histogram_quantile: true,
        }
    }
}

impl QueryConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.timeout < Duration::from_millis(100) {
            errors.push(InvalidField::new("query.timeout", "must be at least 100ms"));
        }
        if self.lookback_delta < Duration::from_secs(1) {
            errors.push(InvalidField::new(
                "query.lookback_delta",
                "must be at least 1s",
            ));
        }
        for (key, n) in [
            ("query.max_points", self.max_points),
            ("query.max_series", self.max_series),
            ("query.max_samples", self.max_samples),
        ] {
            if n == 0 {
                errors.push(InvalidField::new(key, "must be at least 1"));
            }
        }
        errors
    }
}
