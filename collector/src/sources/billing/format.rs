//! The tabular export formats (CSV or Parquet): which one a header has, and one of its rows
//! normalized into a line or a reject.

use super::line::{CellError, CostLine, Sink};
use super::row::{Defaults, Header, Row};
use super::{cur, focus, gcp};

/// The export formats recmeter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// FOCUS 1.0 to 1.2 (any provider's FOCUS export).
    Focus,
    /// AWS Cost and Usage Report, legacy (`lineItem/UnblendedCost`).
    AwsCur,
    /// AWS CUR 2.0 (`line_item_unblended_cost`).
    AwsCur2,
    /// Google Cloud's BigQuery billing export as CSV (`cost`, `usage_start_time`).
    GcpCsv,
    /// Google Cloud's BigQuery billing export as newline-delimited JSON.
    GcpJson,
}

impl Format {
    /// Its name, as `billing check` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Focus => "FOCUS",
            Format::AwsCur => "AWS CUR",
            Format::AwsCur2 => "AWS CUR 2.0",
            Format::GcpCsv => "GCP billing export (CSV)",
            Format::GcpJson => "GCP billing export (JSON)",
        }
    }

    /// The format whose columns `header` has.
    pub fn detect(header: &Header) -> Option<Self> {
        if header.has("BilledCost") && header.has("ChargePeriodStart") {
            Some(Format::Focus)
        } else if header.has("lineItem/UnblendedCost") {
            Some(Format::AwsCur)
        } else if header.has("line_item_unblended_cost") {
            Some(Format::AwsCur2)
        } else if header.has("cost") && header.has("usage_start_time") {
            Some(Format::GcpCsv)
        } else {
            None
        }
    }
}

/// Normalizes one row of a tabular export (CSV or Parquet) of `format` into `out`: a line, or
/// a reject naming `object` and `row`.
pub(super) fn emit(
    format: Format,
    cells: Row<'_>,
    defaults: &Defaults,
    object: &str,
    row: u64,
    out: &mut impl Sink,
) {
    let normalized: Result<CostLine, CellError> = match format {
        Format::Focus => focus::line(cells, defaults),
        Format::AwsCur | Format::AwsCur2 => cur::line(cells, defaults),
        Format::GcpCsv => gcp::csv_line(cells, defaults),
        Format::GcpJson => Err(CellError::new("", "a JSON export read as a table", "")),
    };
    match normalized {
        Ok(mut line) => {
            line.source_object = object.to_owned();
            line.source_row = row;
            out.line(line);
        }
        Err(e) => out.reject(e.at(object, row)),
    }
}
