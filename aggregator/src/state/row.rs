//! The row model: a rollup row's counts and histogram, the tables and sources rows belong to,
//! the ordered row maps, and the minute, block and hour arithmetic they are keyed by.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use bytes::Bytes;

use crate::clock::MINUTE_NANOS;
use crate::config::MAX_THRESHOLDS;
use crate::counts::Counts;
use crate::error::Result;
use crate::record::SeriesKey;

/// Minutes kept in memory (DESIGN: the last 3 h).
pub const MINUTES_KEPT: u64 = 180;

/// Minutes merged into one block row (a divisor of 60, so hours are whole blocks).
pub const BLOCK_MINUTES: u64 = 10;

/// Upper bounds of `recs_latency_seconds`, in nanoseconds (DESIGN).
pub const LATENCY_BUCKETS_NANOS: [u64; 12] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The counts of one rollup row, beside its histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub requests: u64,
    pub errors: u64,
    pub recommendations: u64,
    /// Requests at or under each configured latency threshold, in configuration order; the
    /// entries past the configured ones stay 0.
    pub le: [u64; MAX_THRESHOLDS],
    /// Requests at or under each `recs_latency_seconds` bound ([`LATENCY_BUCKETS_NANOS`]),
    /// cumulative like Prometheus's `le` buckets: what `/metrics` adds to its buckets.
    pub buckets: [u64; LATENCY_BUCKETS_NANOS.len()],
    /// Sum of the requests' exact durations (before clamping), nanoseconds: what `/metrics`
    /// adds to `recs_latency_seconds_sum`.
    pub sum_nanos: u64,
    /// Whether `buckets` and `sum_nanos` are unknown: the row (or one merged into it) was
    /// written before rows kept them (row format 1). Readers take them from the histogram.
    pub legacy: bool,
}

impl RowCounts {
    /// Counts `n` requests of `value` nanoseconds (clamped to the histogram's range) whose
    /// exact duration is `exact` nanoseconds.
    pub(super) fn count(&mut self, value: u64, exact: u64, n: u64, kind: Counted<'_>) {
        self.requests = self.requests.saturating_add(n);
        if kind.error {
            self.errors = self.errors.saturating_add(n);
        }
        self.recommendations = self.recommendations.saturating_add(kind.recommendations);
        for (le, &t) in self.le.iter_mut().zip(kind.thresholds) {
            if value <= t {
                *le = le.saturating_add(n);
            }
        }
        // Counted on the exact duration, as the series' totals are.
        for (le, &b) in self.buckets.iter_mut().zip(&LATENCY_BUCKETS_NANOS) {
            if exact <= b {
                *le = le.saturating_add(n);
            }
        }
        self.sum_nanos = self.sum_nanos.saturating_add(exact.saturating_mul(n));
    }

    pub(crate) fn add(&mut self, other: &RowCounts) {
        // Saturating: rows read back from the store may hold anything.
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.recommendations = self.recommendations.saturating_add(other.recommendations);
        for (a, b) in self.le.iter_mut().zip(other.le) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a = a.saturating_add(b);
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
        self.legacy |= other.legacy;
    }
}

/// What a counted value is besides its duration and count.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counted<'a> {
    pub(super) error: bool,
    pub(super) recommendations: u64,
    /// The configured latency thresholds, nanoseconds.
    pub(super) thresholds: &'a [u64],
}

/// One rollup row: counts and the V2 encoding of its histogram. A minute or hour that received
/// late data has more than one row; readers merge them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub counts: RowCounts,
    pub hdr: Bytes,
}

/// Where a series' requests come from (the `source` column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// Request spans: quantiles within 1% of the raw values.
    #[default]
    Span,
    /// OTLP histogram points: quantiles bounded by the sender's buckets (README).
    Histogram,
}

impl Source {
    /// The column value.
    pub const fn label(self) -> &'static str {
        match self {
            Source::Span => "span",
            Source::Histogram => "histogram",
        }
    }

    /// The source a column value names.
    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            "span" => Some(Source::Span),
            "histogram" => Some(Source::Histogram),
            _ => None,
        }
    }
}

/// The rollup tables, and the blocks `/metrics` windows read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `latency_minutes`: one row per series and minute (more for late data), the open minute
    /// included.
    Minutes,
    /// `latency_hours`: one row per series and sealed hour (more for late data), and the
    /// current hour as the rows of its blocks so far, of the open minute and of minutes ahead of
    /// the clock.
    Hours,
    /// The ten-minute blocks `/metrics` windows read instead of most of their minutes (not a
    /// SQL table): the rows of each block through the open minute, keyed by its first minute.
    /// The open block is its sealed minutes so far (one row) and the rows of the open minute,
    /// taken only through the read range's end (the open minute of the window query).
    Blocks,
}

/// Rows keyed by (first minute of the minute, block or hour, row number).
pub(super) type Rows = BTreeMap<(u64, u32), Row>;

pub(super) fn push_row(rows: &mut Rows, at: u64, row: Row) {
    let next = rows
        .range((at, 0)..=(at, u32::MAX))
        .next_back()
        .map_or(0, |((_, n), _)| n + 1);
    rows.insert((at, next), row);
}

pub(super) fn hour_of(minute: u64) -> u64 {
    minute - minute % 60
}

/// The first minute of `minute`'s block.
pub fn block_of(minute: u64) -> u64 {
    minute - minute % BLOCK_MINUTES
}

/// The row of `a` and `b` merged.
pub(super) fn merge_rows(merge: &mut Counts, a: &Row, b: &Row) -> Result<Row> {
    merge.clear();
    merge.add_encoded(&a.hdr)?;
    merge.add_encoded(&b.hdr)?;
    let mut counts = a.counts;
    counts.add(&b.counts);
    Ok(Row {
        counts,
        hdr: Bytes::from(merge.encode()),
    })
}

/// What reads the rollup rows: [`Aggregator::visit_rows`] calls `series` before the first row
/// of each series that has rows in the range, then `row` for each of them. Either may stop the
/// visit with `ControlFlow::Break` (and keep its own reason why).
pub trait RowVisitor {
    /// The series the next rows belong to.
    fn series(&mut self, key: &SeriesKey, source: Source) -> ControlFlow<()>;
    /// One row: the first minute of its minute, block or hour, its counts and its V2 encoding.
    fn row(&mut self, at: u64, row: &Row) -> ControlFlow<()>;
    /// Whether the visitor reads the rows' histograms. When not, rows whose encoding is not
    /// kept (the open minute's once it changed, late values) come with an empty `hdr` rather
    /// than being encoded for nothing: a counts-only scan at the series cap would otherwise
    /// encode every open minute.
    fn wants_hdr(&self) -> bool {
        true
    }
}

/// The first nanosecond of `minute`.
pub fn minute_start_nanos(minute: u64) -> u64 {
    minute * MINUTE_NANOS
}
