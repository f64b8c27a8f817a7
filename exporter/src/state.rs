//! What the API handlers share.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use recmeter_aggregator::{AggregatorHandle, BearerToken, QueryEngine, Window};

use crate::prometheus::{LatencyProvider, Provider, TelemetryProvider};

/// Windows exposed on `/metrics` (the rest are for SQL and SLO work).
pub const METRICS_WINDOWS: [Window; 4] = [Window::M1, Window::M5, Window::H1, Window::D1];

/// What the API handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub aggregator: AggregatorHandle,
    /// SQL over the rollups; `/metrics` windows come from it too.
    pub engine: Arc<QueryEngine>,
    /// Set once every listener is bound and state is restored.
    pub ready: Arc<AtomicBool>,
    /// Whether the `/-/test/*` routes exist.
    pub test_hooks: bool,
    /// `auth.api_token`: required for everything but health and readiness.
    pub token: Option<BearerToken>,
    /// What `/metrics` shows, in order ([`default_providers`], then any a capability adds).
    pub providers: Arc<[Arc<dyn Provider>]>,
    /// The Prometheus query API's sources and limits.
    pub query: Arc<crate::promql::QueryApi>,
}

/// The built-in exposition providers: the latency families of [`METRICS_WINDOWS`], then
/// recmeter's self-telemetry.
pub fn default_providers(
    aggregator: &AggregatorHandle,
    engine: &Arc<QueryEngine>,
) -> Arc<[Arc<dyn Provider>]> {
    Arc::new([
        Arc::new(LatencyProvider {
            engine: engine.clone(),
            windows: METRICS_WINDOWS.to_vec(),
        }),
        Arc::new(TelemetryProvider {
            aggregator: aggregator.clone(),
        }),
    ])
}
