//! Billing exports: FOCUS, AWS CUR and GCP's BigQuery export normalized into
//! FOCUS-shaped cost lines with exact decimal money, each bad row a reject of its own.

pub mod config;
pub mod cur;
pub mod decimal;
pub mod focus;
pub mod format;
pub mod gcp;
pub mod line;
pub mod parquet;
pub mod read;
pub mod row;
pub mod source;

pub use config::BillingConfig;
pub use line::{CostLine, Normalized, Reject, Sink};
pub use read::{Defaults, FileError, Format, normalize};
pub use source::{BillingSource, RowCounter, ScanStats, SourceConfig};
