//! Sources of telemetry, one folder each.

pub mod otlp;
