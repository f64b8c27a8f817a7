//! What one request hands the aggregator, and what one WAL frame holds.

use crate::point::MetricPoint;
use crate::record::RequestRecord;

/// What one request hands the aggregator: request records (from spans) and metric points,
/// and for a Kafka message the position it moves its partition to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub records: Vec<RequestRecord>,
    pub points: Vec<MetricPoint>,
    /// Set for a Kafka message: the aggregator notes it in the same step as it counts the
    /// records, so a checkpoint holds exactly the messages its counts cover. Such a batch skips
    /// the log (Kafka is its log), and is applied even when it holds nothing to count. Boxed:
    /// batches from OTLP, which have none, stay small.
    pub position: Option<Box<Position>>,
}

impl Batch {
    /// Whether there is nothing to count and no position to note.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.points.is_empty() && self.position.is_none()
    }
}

/// Where a Kafka consumer stands in one partition: `offset` is the next message to read, so
/// every message before it has been counted.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl From<Vec<RequestRecord>> for Batch {
    fn from(records: Vec<RequestRecord>) -> Self {
        Self {
            records,
            ..Self::default()
        }
    }
}
