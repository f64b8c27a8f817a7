//! What one request hands the aggregator, and what one WAL frame holds.

use crate::point::MetricPoint;
use crate::record::RequestRecord;

/// What one request hands the aggregator: request records (from spans) and metric points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub records: Vec<RequestRecord>,
    pub points: Vec<MetricPoint>,
}

impl Batch {
    /// Whether there is nothing to count.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.points.is_empty()
    }
}

impl From<Vec<RequestRecord>> for Batch {
    fn from(records: Vec<RequestRecord>) -> Self {
        Self {
            records,
            points: Vec::new(),
        }
    }
}
