//! OTLP source: `TraceService/Export` over gRPC and `POST /v1/traces` over HTTP.

mod config;
mod grpc;
mod http;
mod traces;

pub use config::{OtlpConfig, ServeOptions};
pub use grpc::serve_grpc;
pub use http::{http_router, serve_http};
pub use traces::{SpanRules, TraceIngest};

#[cfg(test)]
pub(crate) use traces::convert;
