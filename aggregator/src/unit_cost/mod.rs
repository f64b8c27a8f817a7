//! Cost per recommendation (issue 28): which component each bill line belongs to (`config`,
//! `[cost]`, made ready in `plan`), lines spread over the hours they cover, exactly
//! (`prorate`, `lines`), shared cost split by the hour's requests (`allocate`), the calendar
//! periods cost is reported by (`periods`, `report`), the evaluation on recmeter's clock
//! (`evaluate`), and the `cost_hourly`, `usage_hourly` and `cost_per_recommendation` tables.

pub mod allocate;
pub mod config;
pub mod evaluate;
pub mod lines;
pub mod periods;
pub mod plan;
pub mod prorate;
pub mod report;
pub mod tables;

pub use config::{CostConfig, UNALLOCATED};
pub use evaluate::{CostEvaluator, CostReport, CostStatus, usd};
pub use periods::Period;
pub use plan::PLATFORM;
pub use report::unit_cost;
pub use tables::CostTables;
