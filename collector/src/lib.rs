//! recmeter's collector: sources that take in telemetry (OTLP over gRPC and HTTP today),
//! decode and validate it, and hand requests to the aggregator through its bounded queue.
//! Knows wire formats; knows nothing of SLOs.

// Only the binary's allocator module may use `unsafe` (ADR 013).
#![forbid(unsafe_code)]

pub mod error;
pub mod sources;

pub use error::{Error, Result};
