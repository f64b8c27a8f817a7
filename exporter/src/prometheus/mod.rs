//! Prometheus exposition of recmeter's numbers: text format 0.0.4 by default, OpenMetrics 1.0
//! when the scraper asks for it.

mod families;

pub use families::{Format, render};
