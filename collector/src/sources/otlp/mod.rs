//! OTLP source: `TraceService/Export` and `MetricsService/Export` over gRPC, `POST /v1/traces`
//! and `POST /v1/metrics` over HTTP.

mod config;
mod grpc;
mod http;
mod metrics;
pub mod synthetic;
mod traces;

pub use config::{OtlpConfig, ServeOptions};
pub use grpc::serve_grpc;
pub use http::{http_router, serve_http};
pub use metrics::{ConvertedMetrics, MetricIngest, MetricRules, convert_metrics};
pub use traces::{Converted, SpanRules, TraceIngest, convert};

use recmeter_aggregator::{AggregatorHandle, IngestConfig, MetricsConfig};

/// Both OTLP ingest paths, as the servers take them.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub traces: TraceIngest,
    pub metrics: MetricIngest,
}

impl Ingest {
    /// Ingest into `aggregator` by the `[ingest]` and `[metrics]` rules. recmeter's start, for
    /// the cumulative streams' `auto` rule, is now on the aggregator's clock.
    pub fn new(
        aggregator: AggregatorHandle,
        ingest: &IngestConfig,
        metrics: &MetricsConfig,
    ) -> Self {
        let started_at = aggregator.clock().now_nanos();
        Self {
            traces: TraceIngest::new(aggregator.clone(), SpanRules::new(ingest)),
            metrics: MetricIngest::new(aggregator, MetricRules::new(ingest, metrics, started_at)),
        }
    }
}
