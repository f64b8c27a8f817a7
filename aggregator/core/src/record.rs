//! What the collector hands the aggregator: one record per request, already keyed.

use std::sync::Arc;

/// Series identity: service, endpoint and the configured extra dimensions (in config order;
/// an absent attribute is an empty string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub service: Arc<str>,
    pub endpoint: Arc<str>,
    pub dimensions: Vec<Arc<str>>,
}

/// Name of the series that absorbs requests once the cardinality cap is reached.
pub const OVERFLOW: &str = "__overflow__";

impl SeriesKey {
    /// The overflow series for `dimension_count` extra dimensions.
    pub fn overflow(dimension_count: usize) -> Self {
        let o: Arc<str> = Arc::from(OVERFLOW);
        Self {
            service: o.clone(),
            endpoint: o.clone(),
            dimensions: vec![o; dimension_count],
        }
    }
}

/// One request (a span that matched the request rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub key: SeriesKey,
    /// End time, nanoseconds since the Unix epoch; decides the minute.
    pub end_unix_nanos: u64,
    /// Duration in nanoseconds (clamped by the aggregator, not here).
    pub duration_nanos: u64,
    /// Whether the span status was ERROR.
    pub error: bool,
    /// Recommendations served by this request.
    pub recommendations: u64,
}

/// What happened to a batch of records or metric points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Records or points counted (a point may count nothing: a stream's first, the baseline).
    pub accepted: u64,
    /// Records or points that ended longer ago than `ingest.max_span_age`.
    pub too_old: u64,
    /// Records or points that end further ahead than `ingest.max_future_skew`.
    pub future: u64,
    /// Points of services that send request spans (`reason="covered_by_spans"`).
    pub covered_by_spans: u64,
    /// Points of new cumulative streams past `metrics.max_streams` (`reason="stream_limit"`).
    pub stream_limit: u64,
}
