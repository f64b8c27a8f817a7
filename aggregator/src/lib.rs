//! recmeter's aggregator: state and math. Requests come in as [`RequestRecord`]s and are counted
//! into per-series rollup rows of minutes and hours (counts and HDR histograms), which the SQL
//! engine ([`QueryEngine`]) reads as Arrow tables for `/api/v1/sql` and the `/metrics` windows.
//! Knows nothing of wire formats.

// Only the binary's allocator module may use `unsafe` (ADR 013).
#![forbid(unsafe_code)]

pub mod billing;
pub mod config;
pub use recmeter_core::{
    auth, batch, clock, connection, cost, error, kafka, point, record, status, submit, telemetry,
};
pub mod counts;
pub mod durability;
pub mod histogram;
pub mod hooks;
mod limits;
pub mod metrics;
pub mod participant;
pub mod service;
pub mod slo;
pub mod sql;
pub mod state;
pub mod store;
pub mod unit_cost;
pub mod window;

pub use auth::BearerToken;
pub use clock::Clock;
pub use config::{
    AggregatorConfig, IngestConfig, InvalidField, LatencyMetric, MetricsConfig, SqlConfig,
};
pub use error::{Error, Result};
pub use hooks::{Hook, Hooks};
pub use metrics::{Dense, MetricPoint, PointValue};
pub use record::{ApplyOutcome, RequestRecord, SeriesKey};
pub use service::AggregatorHandle;
pub use sql::{QueryEngine, QueryOutput};
pub use state::{Aggregator, SeriesSnapshot, Snapshot};
pub use status::ErrorKind;
pub use telemetry::Telemetry;
pub use window::Window;
