//! recmeter's exporter: the read side. Serves Prometheus exposition on `/metrics`, SQL over the
//! rollups on `/api/v1/sql`, health and readiness, recmeter's SLO alerts to PagerDuty, and (with `--test-hooks`) the `/-/test/*` routes that drive the fake clock and
//! named faults.

// Only the binary's allocator module may use `unsafe` (ADR 013).
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod error;
pub mod pagerduty;
pub mod prometheus;
pub mod promql;
pub mod sql;
pub mod state;

pub use api::api_router;
pub use config::ApiConfig;
pub use error::{ApiError, Error, Result};
pub use state::ApiState;
