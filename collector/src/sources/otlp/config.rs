//! `[otlp]`: where the OTLP listeners bind and how much they accept.

use std::net::SocketAddr;

use recmeter_aggregator::{BearerToken, InvalidField};
use serde::{Deserialize, Serialize};

/// `[otlp]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address; port 0 picks a free port. Default: `"127.0.0.1:4317"`.
    pub grpc_address: SocketAddr,
    /// OTLP/HTTP listen address; port 0 picks a free port. Default: `"127.0.0.1:4318"`.
    pub http_address: SocketAddr,
    /// Largest request accepted, in bytes, checked after decompression too.
    /// Default: `16777216` (16 MiB).
    pub max_body_bytes: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            grpc_address: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_address: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What both OTLP servers enforce on every request.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `otlp.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `auth.ingest_token`: required bearer token, if any.
    pub token: Option<BearerToken>,
}

impl OtlpConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.max_body_bytes < 1024 {
            errors.push(InvalidField::new(
                "otlp.max_body_bytes",
                "must be at least 1024 bytes",
            ));
        }
        if self.grpc_address == self.http_address && self.grpc_address.port() != 0 {
            errors.push(InvalidField::new(
                "otlp.http_address",
                "must differ from otlp.grpc_address",
            ));
        }
        errors
    }
}
