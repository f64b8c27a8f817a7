//! `[otlp]`: where the OTLP listeners bind and how much they accept.

use std::net::SocketAddr;

use recmeter_core::{BearerToken, InvalidField};
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
    /// Most spans one trace request may hold, counted on the wire before it is decoded
    /// (HTTP 413 / gRPC `RESOURCE_EXHAUSTED` beyond). Default: `65536`.
    pub max_spans_per_request: u64,
    /// Most data points one metrics request may hold, counted the same way.
    /// Default: `65536`.
    pub max_points_per_request: u64,
    /// A new connection must send its first byte within this, and on HTTP/1.1 a whole request
    /// head (a connection kept alive waiting for its next request included), or it is closed.
    /// Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: std::time::Duration,
    /// A connection with no byte either way for this long, and no request being answered, is
    /// closed. Default: `"2m"`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: std::time::Duration,
    /// Most connections open at once on each OTLP listener; at the limit the one idle longest
    /// is closed to make room, and a new one is refused (`recmeter_connections_refused_total`)
    /// only when none has been idle a second with no request in flight. 0: three eighths of
    /// what the process's open-files limit leaves after 256 (at least 16). Default: `0`.
    pub max_connections: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            grpc_address: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_address: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_body_bytes: 16 * 1024 * 1024,
            max_spans_per_request: 65_536,
            max_points_per_request: 65_536,
            header_read_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(120),
            max_connections: 0,
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
    /// `otlp.max_spans_per_request`.
    pub max_spans_per_request: u64,
    /// `otlp.max_points_per_request`.
    pub max_points_per_request: u64,
    /// Longest a request's body may take to arrive once its headers have (`otlp.idle_timeout`):
    /// a stalled body would hold its connection, which is answering a request, forever.
    pub body_timeout: std::time::Duration,
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
        for (key, value) in [
            ("otlp.header_read_timeout", self.header_read_timeout),
            ("otlp.idle_timeout", self.idle_timeout),
        ] {
            if value < std::time::Duration::from_secs(1) {
                errors.push(InvalidField::new(key, "must be at least 1s"));
            }
        }
        for (key, value) in [
            ("otlp.max_spans_per_request", self.max_spans_per_request),
            ("otlp.max_points_per_request", self.max_points_per_request),
        ] {
            if value == 0 {
                errors.push(InvalidField::new(key, "must be at least 1"));
            }
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
