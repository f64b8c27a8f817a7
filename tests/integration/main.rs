//! recmeter's integration tests: the release binary on port-0 listeners with its own temporary
//! storage, driven by real clients (the OpenTelemetry SDK's OTLP exporters, reqwest, promtool,
//! the Python prometheus-client parser). One binary, so the suite links once.

#![forbid(unsafe_code)]
// Tests fail loudly; unwrap is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod billing;
mod billing_source;
mod cli;
mod compat;
mod demo;
mod durability;
mod exposition;
mod harness;
mod hostile;
mod kafka;
mod limits;
mod loadgen;
mod memory;
mod metrics;
mod object_double;
mod otlp;
mod pagerduty;
mod pagerduty_double;
mod participant;
mod promql_diff;
mod query_api;
mod series_limits;
mod slo;
mod spans;
mod sql;
mod unit_cost;
