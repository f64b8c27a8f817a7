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
    /// A new connection must send its first byte within this, and on HTTP/1.1 a whole request
    /// head (a connection kept alive waiting for its next request included), or it is closed.
    /// Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: std::time::Duration,
    /// A connection with no byte either way for this long, and no request being answered, is
    /// closed. Default: `"2m"`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: std::time::Duration,
    /// Most connections open at once; at the limit the one idle longest is closed to make
    /// room, and a new one is refused (`recmeter_connections_refused_total`) only when none
    /// has been idle a second with no request in flight. 0: an eighth of what the process's
    /// open-files limit leaves after 256 (at least 16). Default: `0`.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 9464)),
            header_read_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(120),
            max_connections: 0,
        }
    }
}

impl ApiConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        for (key, value) in [
            ("api.header_read_timeout", self.header_read_timeout),
            ("api.idle_timeout", self.idle_timeout),
        ] {
            if value < std::time::Duration::from_secs(1) {
                errors.push(InvalidField::new(key, "must be at least 1s"));
            }
        }
        errors
    }
}
