//! recmeter's aggregator: state and math. Requests come in as [`RequestRecord`]s, are counted
//! into per-series, per-minute HDR histograms, and are read back as [`Snapshot`]s of counters
//! and window quantiles. Knows nothing of wire formats.

pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod histogram;
pub mod hooks;
pub mod record;
pub mod service;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod window;

pub use auth::BearerToken;
pub use clock::Clock;
pub use config::{AggregatorConfig, IngestConfig, InvalidField};
pub use error::{Error, Result};
pub use hooks::{Hook, Hooks};
pub use record::{ApplyOutcome, RequestRecord, SeriesKey};
pub use service::AggregatorHandle;
pub use state::{Aggregator, SeriesSnapshot, Snapshot};
pub use status::ErrorKind;
pub use telemetry::Telemetry;
pub use window::Window;
