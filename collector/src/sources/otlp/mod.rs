//! OTLP source: `TraceService/Export` and `MetricsService/Export` over gRPC, `POST /v1/traces`
//! and `POST /v1/metrics` over HTTP.

pub mod body;
mod config;
mod grpc;
mod grpc_prescan;
mod http;
mod ingest;
mod metrics;
pub mod prescan;
pub mod synthetic;
mod traces;

pub use config::{OtlpConfig, ServeOptions};
pub use grpc::serve_grpc;
pub use http::http_router;
pub use ingest::Ingest;
pub use metrics::{ConvertedMetrics, MetricIngest, MetricRules, convert_metrics};
pub use traces::{Converted, IngestError, SpanRules, TraceIngest, convert};
