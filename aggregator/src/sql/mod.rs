//! SQL over the rollups (DataFusion): the `latency_minutes` and `latency_hours` tables, the
//! `hdr_merge` and `hdr_quantile` functions, and the engine that runs queries for
//! `/api/v1/sql` and the `/metrics` windows alike.

pub mod catalog;
mod engine;
pub mod functions;
pub mod guard;
mod session;
pub mod tables;
pub mod windows;

pub use catalog::{Catalog, CatalogTable};
pub use engine::{BatchSink, QueryEngine, QueryOutput, check_read_only};
pub use tables::table_name;
pub use windows::{Covered, HourSink, RollupSink, Span, SpanCounts, WindowCounts, WindowPlanner};

#[cfg(test)]
mod testing;
