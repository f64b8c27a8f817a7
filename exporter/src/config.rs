//! `[api]`: the HTTP listener for `/metrics`, `/api/v1/*`, `/healthz` and `/readyz`.

use std::net::SocketAddr;

use recmeter_aggregator::InvalidField;
use serde::{Deserialize, Serialize};

/// `[api]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address; port 0 picks a free port. Default: `"127.0.0.1:9464"`.
    pub address: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl ApiConfig {
    /// Cross-field checks (none yet).
    pub fn validate(&self) -> Vec<InvalidField> {
        Vec::new()
    }
}
