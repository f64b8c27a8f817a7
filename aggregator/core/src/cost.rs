//! Cost lines: one row of a cloud bill normalized to FOCUS's shape (the `cost_lines` table),
//! and a source row that could not be (`cost_rejects`). The collector's billing normalizers
//! make them; the store writes them.

use std::collections::BTreeMap;

/// Nanoseconds in a day.
const DAY_NANOS: i64 = 86_400_000_000_000;

/// A row of `cost_lines`. Money is in units of `10^-12` of `billing_currency`
/// (`Decimal128(38, 12)`); times are UTC nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostLine {
    pub charge_period_start: i64,
    pub charge_period_end: i64,
    pub provider: String,
    pub billing_account_id: String,
    pub billing_period_start: Option<i64>,
    pub sub_account_id: Option<String>,
    pub service_name: Option<String>,
    pub service_category: Option<String>,
    pub resource_id: Option<String>,
    pub resource_name: Option<String>,
    pub region: Option<String>,
    pub charge_category: Option<String>,
    pub charge_class: Option<String>,
    /// FOCUS `Standard`, `Dynamic` (spot), `Committed` or `Other`.
    pub pricing_category: Option<String>,
    pub pricing_quantity: Option<f64>,
    pub pricing_unit: Option<String>,
    pub consumed_quantity: Option<f64>,
    pub consumed_unit: Option<String>,
    pub billed_cost: i128,
    pub effective_cost: i128,
    pub list_cost: Option<i128>,
    pub billing_currency: String,
    pub tags: BTreeMap<String, String>,
    /// The object (or file) the row came from, and its row number there (the first data row
    /// is 1).
    pub source_object: String,
    pub source_row: u64,
}

impl CostLine {
    /// The UTC day (days since the epoch) of the charge period's start.
    pub fn day(&self) -> i64 {
        self.charge_period_start.div_euclid(DAY_NANOS)
    }
}

/// A row of `cost_rejects`: a source row that is not a cost line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub source_object: String,
    pub source_row: u64,
    /// The column at fault (the export's own name), or empty for the row as a whole.
    pub column: String,
    pub reason: String,
    /// The cell as it was, clipped to 1 KiB.
    pub raw: String,
}
