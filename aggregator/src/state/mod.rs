//! In-memory rollups: per series, cumulative counters for the Prometheus counters and histogram,
//! and rollup rows (counts plus a V2-encoded HDR histogram) per minute and per hour, which the
//! `latency_minutes` and `latency_hours` tables read. Only the open minute holds a dense
//! histogram; the clock leaving it seals it into a row. Spans for any other minute (late, or
//! slightly ahead) are buffered per series and sealed in bulk as extra rows of their minute;
//! readers merge all rows. Sealed minutes are also merged by aligned ten-minute block, as each
//! seals: the open block's row is its sealed minutes so far, and late rows of a sealed block become
//! extra rows of it. Windows read blocks instead of most of their minutes. Each complete hour is
//! sealed into an hour row from its blocks as soon as it ends; late rows of a sealed hour become
//! extra rows of that hour too. Minutes and blocks are kept for 3 h; hours for the 1d window and an
//! hour more when checkpoints store the older ones (ADR 012), else for the 30d window.
//!
//! By job: the row model (`row`), per-series sealing (`series`), the aggregator and its lock
//! (`aggregator`), ingest and the cap (`ingest`), the checkpoint image (`image`), and the read
//! side (`read`).

mod aggregator;
mod image;
mod ingest;
mod read;
mod row;
mod series;
#[cfg(test)]
mod tests;

pub use aggregator::{Aggregator, SharedState, lock, shared};
pub use image::{SeededHour, SeriesImage, StateImage};
pub use read::{QUANTILES, SeriesCounters, SeriesSnapshot, Snapshot, WindowQuantiles};
pub use row::{
    BLOCK_MINUTES, LATENCY_BUCKETS_NANOS, MINUTES_KEPT, Row, RowCounts, RowVisitor, Source, Table,
    block_of, minute_start_nanos,
};
pub use series::{SeriesRows, SeriesTotals};
