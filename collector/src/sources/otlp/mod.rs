//! OTLP source: `TraceService/Export` over gRPC and `POST /v1/traces` over HTTP.

mod config;
mod grpc;
mod http;
pub mod synthetic;
mod traces;

pub use config::{OtlpConfig, ServeOptions};
pub use grpc::serve_grpc;
pub use http::{http_router, serve_http};
pub use traces::{Converted, SpanRules, TraceIngest, convert};
