//! What recmeter's collector and aggregator share, without the query engine: request records
//! and metric points, cost lines, the batch one request hands over, the submit interface, self-telemetry,
//! recmeter's clock, bearer tokens, errors and their HTTP and gRPC status mapping, the ingest
//! configuration, and connection accounting. The collector depends on this crate alone, so it
//! links no DataFusion.

#![forbid(unsafe_code)]

pub mod auth;
pub mod batch;
pub mod clock;
pub mod config;
pub mod connection;
pub mod cost;
pub mod error;
pub mod kafka;
pub mod point;
pub mod record;
pub mod status;
pub mod submit;
pub mod telemetry;

pub use auth::BearerToken;
pub use batch::{Batch, Position};
pub use clock::Clock;
pub use config::{IngestConfig, InvalidField, LatencyMetric, MetricsConfig};
pub use error::{Error, Result};
pub use point::{Dense, MetricPoint, PointValue};
pub use record::{ApplyOutcome, RequestRecord, SeriesKey};
pub use status::ErrorKind;
pub use submit::{Answer, Arriving, Checkpoints, Submit, Submitter};
pub use telemetry::Telemetry;
