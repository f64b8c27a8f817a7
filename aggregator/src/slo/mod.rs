//! Service level objectives: the `[slo]` configuration, the event-weighted burn-rate
//! arithmetic over recmeter's counts per window, their evaluation on recmeter's clock, the
//! alerts' state as a checkpoint participant, and the `slo_status` and `slo_alerts` tables.

pub mod alerts;
pub mod config;
pub mod evaluate;
pub mod math;
pub mod tables;

pub use alerts::{CostReading, SloAlerts, Transition};
pub use config::{AlertRule, Objective, ObjectiveKind, SLO_WINDOWS, Severity, SloConfig};
pub use evaluate::{Evaluation, ObjectiveStatus, SloEvaluator, SloStatus};
pub use math::{Tallies, Tally};
pub use tables::{SloAlertsTable, SloStatusTable};
