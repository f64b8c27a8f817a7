//! Sources of telemetry, one folder each.

pub mod billing;
pub mod kafka;
pub mod otlp;
