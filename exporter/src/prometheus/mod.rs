//! Prometheus exposition of recmeter's numbers: text format 0.0.4 by default, OpenMetrics 1.0
//! when the scraper asks for it, rendered from a list of providers.

mod billing;
mod cost;
mod families;
mod kafka;
mod pagerduty;
mod provider;
mod slo;

pub use billing::BillingProvider;
pub use cost::CostProvider;
pub use families::{LatencyProvider, TelemetryProvider, latency_part, render, telemetry_part};
pub use kafka::KafkaProvider;
pub use pagerduty::PagerDutyProvider;
pub use provider::{Format, Part, Provider, ReadFuture, render_parts};
pub use slo::SloProvider;
