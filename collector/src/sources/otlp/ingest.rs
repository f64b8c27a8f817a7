//! Both OTLP ingest paths, built from the configuration, as the gRPC and HTTP servers take
//! them.

use recmeter_core::{IngestConfig, MetricsConfig, Submitter};

use super::{MetricIngest, MetricRules, SpanRules, TraceIngest};

/// Both OTLP ingest paths, as the servers take them.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub traces: TraceIngest,
    pub metrics: MetricIngest,
}

impl Ingest {
    /// Ingest into `aggregator` by the `[ingest]` and `[metrics]` rules. recmeter's start, for
    /// the cumulative streams' `auto` rule, is now on the aggregator's clock.
    pub fn new(aggregator: Submitter, ingest: &IngestConfig, metrics: &MetricsConfig) -> Self {
        let started_at = aggregator.clock().now_nanos();
        Self {
            traces: TraceIngest::new(aggregator.clone(), SpanRules::new(ingest)),
            metrics: MetricIngest::new(aggregator, MetricRules::new(ingest, metrics, started_at)),
        }
    }
}
