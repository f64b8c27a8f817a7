//! Prometheus exposition of recmeter's numbers: text format 0.0.4 by default, OpenMetrics 1.0
//! when the scraper asks for it, rendered from a list of providers.

mod families;
mod provider;

pub use families::{latency_part, render, telemetry_part};
pub use provider::{
    Format, LatencyProvider, Part, Provider, ReadFuture, TelemetryProvider, render_parts,
};
