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

use std::collections::{BTreeMap, HashMap};
use std::ops::{ControlFlow, RangeInclusive};
use std::sync::Arc;

use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::{Mutex, MutexGuard};

use crate::batch::Batch;
use crate::clock::{Clock, MINUTE_NANOS, minute_of};
use crate::config::{AggregatorConfig, IngestConfig, MAX_THRESHOLDS, MetricsConfig};
use crate::counts::Counts;
use crate::error::Result;
use crate::histogram;
use crate::limits::{Place, SeriesLimits};
use crate::metrics::{Ignored, MetricPoint, MetricState, MetricStateImage};
use crate::participant::{Event, Participants};
use crate::record::{ApplyOutcome, RequestRecord, SeriesKey};
use crate::telemetry::Telemetry;
use crate::window::Window;

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

/// The quantiles exported for every window (DESIGN `q` label values).
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Minutes kept in memory (DESIGN: the last 3 h).
pub const MINUTES_KEPT: u64 = 180;

/// Late values buffered per series before they are sealed into extra rows.
const LATE_BUFFER: usize = 1024;

/// Minutes merged into one block row (a divisor of 60, so hours are whole blocks).
pub const BLOCK_MINUTES: u64 = 10;

/// Cumulative counters of one series since start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesTotals {
    pub ok: u64,
    pub errors: u64,
    pub recommendations: u64,
    /// Requests per `recs_latency_seconds` bucket (not cumulative); the last entry is `+Inf`.
    /// Counted on the exact duration, before clamping.
    pub bucket_counts: [u64; LATENCY_BUCKETS_NANOS.len() + 1],
    /// Sum of exact durations, nanoseconds.
    pub sum_nanos: u128,
}

impl SeriesTotals {
    /// All requests, ok and error.
    pub fn requests(&self) -> u64 {
        self.ok + self.errors
    }
}

/// The counts of one rollup row, beside its histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub requests: u64,
    pub errors: u64,
    pub recommendations: u64,
    /// Requests at or under each configured latency threshold, in configuration order; the
    /// entries past the configured ones stay 0.
    pub le: [u64; MAX_THRESHOLDS],
}

impl RowCounts {
    /// Counts `n` requests of `value` nanoseconds.
    fn count(&mut self, value: u64, n: u64, error: bool, recommendations: u64, thresholds: &[u64]) {
        self.requests = self.requests.saturating_add(n);
        if error {
            self.errors = self.errors.saturating_add(n);
        }
        self.recommendations = self.recommendations.saturating_add(recommendations);
        for (le, &t) in self.le.iter_mut().zip(thresholds) {
            if value <= t {
                *le = le.saturating_add(n);
            }
        }
    }

    pub(crate) fn add(&mut self, other: &RowCounts) {
        // Saturating: rows read back from the store may hold anything.
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.recommendations = self.recommendations.saturating_add(other.recommendations);
        for (a, b) in self.le.iter_mut().zip(other.le) {
            *a = a.saturating_add(b);
        }
    }
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

/// The open minute: the only dense histogram a series holds.
#[derive(Debug)]
struct OpenMinute {
    minute: u64,
    counts: RowCounts,
    histogram: Box<Histogram<u64>>,
    /// The encoding of `histogram` as of the last read, until the next value arrives.
    encoded: Option<Bytes>,
}

impl OpenMinute {
    fn row(&mut self) -> Result<Row> {
        let hdr = match &self.encoded {
            Some(b) => b.clone(),
            None => {
                let b = Bytes::from(histogram::encode(&self.histogram)?);
                self.encoded = Some(b.clone());
                b
            }
        };
        Ok(Row {
            counts: self.counts,
            hdr,
        })
    }
}

/// One value to count: a span's request, a histogram bucket's requests, or (with no requests)
/// a sum's recommendations.
struct Sample<'a> {
    key: &'a SeriesKey,
    end_unix_nanos: u64,
    duration_nanos: u64,
    /// Requests of this duration.
    count: u64,
    error: bool,
    recommendations: u64,
    source: Source,
}

/// A value buffered for a minute other than the open one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LateValue {
    minute: u64,
    value: u64,
    /// Requests of this value (1 for a span).
    count: u64,
    error: bool,
    recommendations: u64,
}

/// Rows keyed by (first minute of the minute, block or hour, row number).
type Rows = BTreeMap<(u64, u32), Row>;

fn push_row(rows: &mut Rows, at: u64, row: Row) {
    let next = rows
        .range((at, 0)..=(at, u32::MAX))
        .next_back()
        .map_or(0, |((_, n), _)| n + 1);
    rows.insert((at, next), row);
}

fn hour_of(minute: u64) -> u64 {
    minute - minute % 60
}

/// The first minute of `minute`'s block.
pub fn block_of(minute: u64) -> u64 {
    minute - minute % BLOCK_MINUTES
}

/// The row of `a` and `b` merged.
fn merge_rows(merge: &mut Counts, a: &Row, b: &Row) -> Result<Row> {
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

#[derive(Debug, Default)]
struct SeriesState {
    totals: SeriesTotals,
    source: Source,
    open: Option<OpenMinute>,
    /// Sealed minutes of the last 3 h.
    minutes: Rows,
    /// The same rows merged by block: one row per block, merged as its minutes seal (the open
    /// block's row holds its sealed minutes so far), and an extra row for each row that reaches
    /// a block already sealed. Rows of minutes ahead of the clock join their block once sealed.
    blocks: Rows,
    /// Sealed hours from [`Aggregator::hours_released_before`] on.
    hours: Rows,
    /// Values for minutes other than the open one (late or slightly future data), sealed into
    /// extra rows in bulk, so stragglers never allocate dense histograms.
    late: Vec<LateValue>,
    /// How many series were created before this one (`Aggregator::births`).
    born: u64,
    /// Minute and hour rows stored since the last checkpoint took them (its "newly sealed
    /// rollups"); the rows' bytes are shared with `minutes` and `hours`.
    unsaved: Vec<(Table, u64, Row)>,
}

/// What every series needs to know to seal rows.
struct Sealing<'a> {
    scratch: &'a mut Histogram<u64>,
    merge: &'a mut Counts,
    thresholds: &'a [u64],
    /// Hours starting before this minute are sealed.
    hours_sealed_before: u64,
    /// Minutes before this one are sealed (the open minute, once a roll has sealed the rest).
    sealed_before: u64,
    /// Blocks starting before this minute were sealed before the current roll: rows reaching
    /// them are extra rows.
    blocks_open_from: u64,
    /// Whether stored rows are noted for checkpoints.
    journal: bool,
}

impl SeriesState {
    /// Whether nothing from `keep_from` (3 h ago) on is held.
    fn is_idle(&self, keep_from: u64) -> bool {
        self.open.is_none()
            && self.late.is_empty()
            && self.minutes.range((keep_from, 0)..).next().is_none()
    }

    /// Records a clamped value ending in the open minute `minute`.
    fn record_open(
        &mut self,
        minute: u64,
        value: u64,
        count: u64,
        error: bool,
        recommendations: u64,
        seal: &mut Sealing<'_>,
    ) {
        if self.open.as_ref().is_some_and(|o| o.minute != minute) {
            // The clock moved on without a roll (cannot happen: apply rolls first).
            self.seal_open(seal);
        }
        let open = self.open.get_or_insert_with(|| {
            let mut h = Box::new(seal.scratch.clone());
            h.reset();
            OpenMinute {
                minute,
                counts: RowCounts::default(),
                histogram: h,
                encoded: None,
            }
        });
        histogram::record_n(&mut open.histogram, value, count);
        open.counts
            .count(value, count, error, recommendations, seal.thresholds);
        open.encoded = None;
    }

    /// Seals the open minute into a row.
    fn seal_open(&mut self, seal: &mut Sealing<'_>) {
        if let Some(mut open) = self.open.take() {
            match open.row() {
                Ok(row) => self.add_minute_row(open.minute, row, seal),
                Err(e) => {
                    tracing::error!(error = %e, "Cannot seal a minute; its requests are lost from quantiles.")
                }
            }
        }
    }

    /// Stores a minute or hour row, and notes it for the next checkpoint.
    fn store(&mut self, table: Table, at: u64, row: Row, journal: bool) {
        if journal {
            self.unsaved.push((table, at, row.clone()));
        }
        let rows = match table {
            Table::Hours => &mut self.hours,
            Table::Minutes | Table::Blocks => &mut self.minutes,
        };
        push_row(rows, at, row);
    }

    /// Adds a sealed row to its minute, to its block unless the minute is still ahead of the
    /// clock, and to its hour if that hour is sealed already.
    fn add_minute_row(&mut self, minute: u64, row: Row, seal: &mut Sealing<'_>) {
        if minute < seal.hours_sealed_before {
            self.store(Table::Hours, hour_of(minute), row.clone(), seal.journal);
        }
        if minute < seal.sealed_before {
            self.add_to_block(minute, &row, seal);
        }
        self.store(Table::Minutes, minute, row, seal.journal);
    }

    /// Adds the row of a sealed minute to its block: merged into the block's row while the block
    /// is open (or sealing in this roll), else an extra row of it.
    fn add_to_block(&mut self, minute: u64, row: &Row, seal: &mut Sealing<'_>) {
        let block = block_of(minute);
        if block < seal.blocks_open_from {
            push_row(&mut self.blocks, block, row.clone());
            return;
        }
        match self.blocks.get_mut(&(block, 0)) {
            None => {
                self.blocks.insert((block, 0), row.clone());
            }
            Some(so_far) => match merge_rows(seal.merge, so_far, row) {
                Ok(merged) => *so_far = merged,
                // Cannot happen for rows recmeter encoded itself; the minute rows keep it.
                Err(e) => {
                    tracing::error!(error = %e, minute, "Cannot merge a minute into its block row.")
                }
            },
        }
    }

    /// Seals buffered late values into one extra row per minute.
    fn flush_late(&mut self, seal: &mut Sealing<'_>) {
        if self.late.is_empty() {
            return;
        }
        let mut late = std::mem::take(&mut self.late);
        late.sort_unstable();
        for group in late.chunk_by(|a, b| a.minute == b.minute) {
            seal.scratch.reset();
            let mut counts = RowCounts::default();
            for v in group {
                histogram::record_n(seal.scratch, v.value, v.count);
                counts.count(
                    v.value,
                    v.count,
                    v.error,
                    v.recommendations,
                    seal.thresholds,
                );
            }
            match histogram::encode(seal.scratch) {
                Ok(hdr) => {
                    let row = Row {
                        counts,
                        hdr: Bytes::from(hdr),
                    };
                    self.add_minute_row(group[0].minute, row, seal);
                }
                Err(e) => {
                    tracing::error!(error = %e, "Cannot seal late data; its requests are lost from quantiles.")
                }
            }
        }
        late.clear();
        late.shrink_to(LATE_BUFFER / 8);
        self.late = late;
    }

    /// Seals the minutes in `newly_sealed` (through the open minute if it is among them) into
    /// their blocks, seals the hours starting in `new_hours` from their blocks, and forgets
    /// minutes and blocks before `keep_from` and hours before `hours_from`.
    fn roll(
        &mut self,
        newly_sealed: std::ops::Range<u64>,
        new_hours: std::ops::Range<u64>,
        keep_from: u64,
        hours_from: u64,
        seal: &mut Sealing<'_>,
    ) {
        // Rows of minutes that were ahead of the clock when they came join their blocks now.
        let ahead: Vec<(u64, Row)> = self
            .minutes
            .range((newly_sealed.start, 0)..(newly_sealed.end, 0))
            .map(|((m, _), row)| (*m, row.clone()))
            .collect();
        for (minute, row) in &ahead {
            self.add_to_block(*minute, row, seal);
        }
        self.flush_late(seal);
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.minute < newly_sealed.end)
        {
            self.seal_open(seal);
        }
        if !new_hours.is_empty() {
            let mut rows = self
                .blocks
                .range((new_hours.start, 0)..(new_hours.end, 0))
                .peekable();
            let mut sealed = Vec::new();
            while let Some(((minute, _), _)) = rows.peek() {
                let hour = hour_of(*minute);
                seal.merge.clear();
                let mut counts = RowCounts::default();
                let mut failed = None;
                while let Some((_, row)) = rows.next_if(|((m, _), _)| *m < hour + 60) {
                    if let Err(e) = seal.merge.add_encoded(&row.hdr) {
                        failed = Some(e);
                    }
                    counts.add(&row.counts);
                }
                if let Some(e) = failed {
                    // Cannot happen for rows recmeter encoded itself; keep the rest of the hour.
                    tracing::error!(error = %e, hour, "Cannot merge a block into its hour row.");
                }
                sealed.push((
                    hour,
                    Row {
                        counts,
                        hdr: Bytes::from(seal.merge.encode()),
                    },
                ));
            }
            for (hour, row) in sealed {
                self.store(Table::Hours, hour, row, seal.journal);
            }
        }
        self.minutes = self.minutes.split_off(&(keep_from, 0));
        self.blocks = self.blocks.split_off(&(block_of(keep_from), 0));
        self.hours = self.hours.split_off(&(hours_from, 0));
    }

    /// The buffered late values as rows (one per minute), for readers: encoded on the fly and
    /// not stored, so reading often does not multiply a minute's rows.
    fn late_rows(
        &self,
        scratch: &mut Histogram<u64>,
        thresholds: &[u64],
    ) -> Result<Vec<(u64, Row)>> {
        let mut late = self.late.clone();
        late.sort_unstable();
        let mut out = Vec::new();
        for group in late.chunk_by(|a, b| a.minute == b.minute) {
            scratch.reset();
            let mut counts = RowCounts::default();
            for v in group {
                histogram::record_n(scratch, v.value, v.count);
                counts.count(v.value, v.count, v.error, v.recommendations, thresholds);
            }
            let hdr = Bytes::from(histogram::encode(scratch)?);
            out.push((group[0].minute, Row { counts, hdr }));
        }
        Ok(out)
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

/// Counters of one series, as read for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesCounters {
    pub key: SeriesKey,
    pub totals: SeriesTotals,
}

/// Quantiles of one series over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowQuantiles {
    pub window: Window,
    /// Requests in the window.
    pub count: u64,
    /// `(q, seconds)` for each of [`QUANTILES`].
    pub quantiles: [(f64, f64); 4],
}

impl WindowQuantiles {
    /// The quantiles of merged counts, or `None` when the window holds no request.
    pub fn from_counts(window: Window, counts: &Counts) -> Option<Self> {
        if counts.total() == 0 {
            return None;
        }
        let values = counts.quantiles_seconds(QUANTILES);
        let quantiles = std::array::from_fn(|i| (QUANTILES[i], values[i].unwrap_or(0.0)));
        Some(Self {
            window,
            count: counts.total(),
            quantiles,
        })
    }
}

/// One series as the exporter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    pub key: SeriesKey,
    pub totals: SeriesTotals,
    /// Windows with at least one request, shortest first.
    pub windows: Vec<WindowQuantiles>,
}

/// A read of every series at one clock instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at_unix_nanos: u64,
    /// Label names of the extra dimensions, in key order.
    pub dimension_labels: Vec<String>,
    /// Series sorted by key.
    pub series: Vec<SeriesSnapshot>,
}

/// The rollup state, shared by the worker that writes it and the readers (tables, `/metrics`).
/// `parking_lot`'s mutex, so a reader that takes it chunk after chunk can hand it over fairly
/// to a waiting writer between chunks.
pub type SharedState = Arc<Mutex<Aggregator>>;

/// Wraps an aggregator for sharing.
pub fn shared(aggregator: Aggregator) -> SharedState {
    Arc::new(Mutex::new(aggregator))
}

/// Locks the shared state. A panic while counting leaves counts that are still consistent per
/// record; the lock does not poison.
pub fn lock(state: &Mutex<Aggregator>) -> MutexGuard<'_, Aggregator> {
    state.lock()
}

/// The rollup state. Owned by one worker task; readers take the lock briefly.
#[derive(Debug)]
pub struct Aggregator {
    clock: Arc<Clock>,
    telemetry: Arc<Telemetry>,
    max_age_nanos: u64,
    max_skew_nanos: u64,
    /// The global cap, the limit per service and the series each service holds.
    limits: SeriesLimits,
    dimension_labels: Vec<String>,
    /// Latency thresholds of the `requests_le_*` columns, nanoseconds.
    thresholds: Vec<u64>,
    /// Their column names.
    threshold_columns: Vec<String>,
    overflow: SeriesKey,
    series: HashMap<SeriesKey, SeriesState>,
    /// Minutes before this one have been sealed.
    sealed_before: u64,
    /// An empty histogram of the configured precision, the template of new dense minutes.
    scratch: Histogram<u64>,
    /// Merge space for sealing blocks and hours.
    merge: Counts,
    /// Series created since start-up; each series holds its number (`SeriesState::born`).
    births: u64,
    /// The last WAL sequence number applied: a checkpoint of this state covers it.
    wal_seq: u64,
    /// Rows not yet checkpointed of series forgotten at the cap.
    evicted_unsaved: Vec<SeriesRows>,
    /// Whether stored rows are noted for checkpoints (only when something takes them).
    journal: bool,
    /// Rows sealed before this minute are in the store (the last checkpoint's
    /// `sealed_before_minute`).
    stored_before: u64,
    /// [`Aggregator::first_hour_held`] at the last roll: the next roll lets hours before it go.
    hours_served_from: u64,
    /// Hours before this one have left memory.
    hours_released_before: u64,
    /// Cumulative metric streams and the services that send spans.
    metrics: MetricState,
    /// Components whose state the log and checkpoints keep with the counts.
    participants: Participants,
}

/// Rows of one series, as a checkpoint writes them.
#[derive(Debug, Clone)]
pub struct SeriesRows {
    pub key: SeriesKey,
    pub source: Source,
    /// `(table, first minute of the minute or hour, row)`; the table is `Minutes` or `Hours`.
    pub rows: Vec<(Table, u64, Row)>,
}

/// One live series in a checkpoint.
#[derive(Debug, Clone)]
pub struct SeriesImage {
    pub key: SeriesKey,
    pub source: Source,
    pub totals: SeriesTotals,
    /// The open minute and buffered late values, as minute rows: restored as rows received
    /// but not yet checkpointed.
    pub open: Vec<(u64, Row)>,
}

/// What a checkpoint takes from the state under one hold of the lock.
#[derive(Debug, Clone, Default)]
pub struct StateImage {
    /// The last WAL sequence number the image covers.
    pub wal_seq: u64,
    /// Minutes before this one are sealed.
    pub sealed_before: u64,
    /// Every live series.
    pub series: Vec<SeriesImage>,
    /// Minute and hour rows stored since the last checkpoint, of live and forgotten series.
    pub sealed: Vec<SeriesRows>,
    /// Cumulative metric streams and span-fed services, as of `wal_seq` like the rest.
    pub metrics: MetricStateImage,
    /// Each checkpoint participant's saved state, as of `wal_seq` like the rest.
    pub participants: Vec<(&'static str, serde_json::Value)>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(
        ingest: &IngestConfig,
        config: &AggregatorConfig,
        clock: Arc<Clock>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        let scratch = histogram::new_histogram(config.significant_digits)?;
        let dimension_labels = ingest.dimension_labels();
        telemetry.set_series_limits(config.max_series, config.max_series_per_service);
        Ok(Self {
            clock,
            telemetry,
            max_age_nanos: duration_nanos(ingest.max_span_age),
            max_skew_nanos: duration_nanos(ingest.max_future_skew),
            limits: SeriesLimits::new(config, SeriesKey::overflow(dimension_labels.len())),
            overflow: SeriesKey::overflow(dimension_labels.len()),
            dimension_labels,
            thresholds: config.threshold_nanos(),
            threshold_columns: config.threshold_columns(),
            series: HashMap::new(),
            sealed_before: 0,
            scratch,
            merge: Counts::with_precision(config.significant_digits)?,
            births: 0,
            wal_seq: 0,
            evicted_unsaved: Vec::new(),
            journal: false,
            stored_before: 0,
            hours_served_from: 0,
            hours_released_before: 0,
            metrics: MetricState::from_config(&MetricsConfig::default()),
            participants: Participants::default(),
        })
    }

    /// Keeps `participants`' state with the counts: their events are applied here, in log
    /// order, and their state saved in every checkpoint image.
    #[must_use]
    pub fn with_participants(mut self, participants: Participants) -> Self {
        self.participants = participants;
        self
    }

    /// The checkpoint participants.
    pub fn participants(&self) -> &Participants {
        &self.participants
    }

    /// Applies a logged component event to its participant.
    pub fn apply_event(&mut self, event: &Event) -> Result<()> {
        self.participants.apply(event)
    }

    /// Sets the metric stream limits (`[metrics]`; defaults otherwise).
    #[must_use]
    pub fn with_metrics(mut self, config: &MetricsConfig) -> Self {
        self.metrics = MetricState::from_config(config);
        self
    }

    /// Notes rows as they are stored, for [`Aggregator::checkpoint_image`] to take. Off by
    /// default: without checkpoints the notes would keep every row alive.
    pub fn keep_journal(&mut self) {
        self.journal = true;
    }

    /// Notes that the WAL frame `seq` has been applied.
    pub fn set_wal_seq(&mut self, seq: u64) {
        self.wal_seq = self.wal_seq.max(seq);
    }

    /// Seals what the clock has left behind, then takes a checkpoint's image: totals and open
    /// accumulators of every series, and the rows stored since the last image (which this
    /// takes; give them back with [`Aggregator::give_back`] if the checkpoint fails).
    pub fn checkpoint_image(&mut self) -> Result<StateImage> {
        self.roll(minute_of(self.clock.now_nanos()));
        let mut image = StateImage {
            wal_seq: self.wal_seq,
            sealed_before: self.sealed_before,
            series: Vec::with_capacity(self.series.len()),
            sealed: std::mem::take(&mut self.evicted_unsaved),
            metrics: self.metrics.image(),
            participants: Vec::new(),
        };
        let saved = self
            .participants
            .iter()
            .map(|p| p.save().map(|state| (p.name(), state)))
            .collect::<Result<Vec<_>>>()
            .and_then(|saved| {
                image.participants = saved;
                self.fill_image(&mut image)
            });
        if let Err(e) = saved {
            // Cannot happen for histograms recmeter encoded itself; keep the rows for the next.
            self.give_back(image.sealed);
            return Err(e);
        }
        Ok(image)
    }

    fn fill_image(&mut self, image: &mut StateImage) -> Result<()> {
        for (key, state) in &mut self.series {
            let mut open = state.late_rows(&mut self.scratch, &self.thresholds)?;
            if let Some(o) = state.open.as_mut() {
                open.push((o.minute, o.row()?));
            }
            image.series.push(SeriesImage {
                key: key.clone(),
                source: state.source,
                totals: state.totals.clone(),
                open,
            });
            if !state.unsaved.is_empty() {
                image.sealed.push(SeriesRows {
                    key: key.clone(),
                    source: state.source,
                    rows: std::mem::take(&mut state.unsaved),
                });
            }
        }
        Ok(())
    }

    /// Returns rows a failed checkpoint took, so the next one writes them.
    pub fn give_back(&mut self, sealed: Vec<SeriesRows>) {
        for mut rows in sealed {
            match self.series.get_mut(&rows.key) {
                Some(state) => {
                    rows.rows.append(&mut state.unsaved);
                    state.unsaved = rows.rows;
                }
                None => self.evicted_unsaved.push(rows),
            }
        }
    }

    /// Starts a restore into this empty aggregator: minutes before `sealed_before` were
    /// sealed when the checkpoint was taken, and the WAL is applied from after `wal_seq`.
    pub fn restore_begin(&mut self, sealed_before: u64, wal_seq: u64) {
        self.sealed_before = sealed_before;
        self.stored_before = sealed_before;
        self.wal_seq = wal_seq;
    }

    /// Restores the metric streams and span-fed services a checkpoint saved.
    pub fn restore_metrics(&mut self, image: MetricStateImage) {
        self.metrics.restore(image);
        self.telemetry
            .set_metric_streams_active(self.metrics.streams_active());
    }

    /// Restores one series' counters.
    pub fn restore_series(&mut self, key: SeriesKey, source: Source, totals: SeriesTotals) {
        if source == Source::Span {
            self.metrics.span_service(&key.service);
        }
        let state = SeriesState {
            born: self.births,
            source,
            totals,
            ..SeriesState::default()
        };
        self.births += 1;
        self.limits.note(&key, true);
        self.series.insert(key, state);
    }

    /// Restores a checkpointed minute or hour row of a restored series, when memory still
    /// holds its minute or hour; the rest stays in storage only.
    pub fn restore_row(&mut self, key: &SeriesKey, table: Table, at: u64, row: Row) {
        let keep_from = self.sealed_before.saturating_sub(MINUTES_KEPT - 1);
        let hours_from = self.first_hour_held(self.sealed_before * MINUTE_NANOS);
        let Some(state) = self.series.get_mut(key) else {
            return; // forgotten at the cap before the checkpoint
        };
        match table {
            Table::Minutes if at >= keep_from => push_row(&mut state.minutes, at, row),
            Table::Hours if at >= hours_from => push_row(&mut state.hours, at, row),
            _ => {}
        }
    }

    /// Rebuilds the blocks from the restored minutes (one row per block), then adds the
    /// checkpoint's open accumulators as rows received since it, which the next checkpoint
    /// stores.
    pub fn restore_finish(&mut self, open: Vec<(SeriesKey, u64, Row)>) -> Result<()> {
        for state in self.series.values_mut() {
            let mut blocks = Rows::new();
            for ((minute, _), row) in state.minutes.range(..(self.sealed_before, 0)) {
                let block = block_of(*minute);
                let merged = match blocks.get(&(block, 0)) {
                    None => row.clone(),
                    Some(so_far) => merge_rows(&mut self.merge, so_far, row)?,
                };
                blocks.insert((block, 0), merged);
            }
            state.blocks = blocks;
        }
        let mut seal = Sealing {
            scratch: &mut self.scratch,
            merge: &mut self.merge,
            thresholds: &self.thresholds,
            hours_sealed_before: hour_of(self.sealed_before),
            sealed_before: self.sealed_before,
            blocks_open_from: block_of(self.sealed_before),
            journal: self.journal,
        };
        for (key, minute, row) in open {
            if let Some(state) = self.series.get_mut(&key) {
                state.add_minute_row(minute, row, &mut seal);
            }
        }
        Ok(())
    }

    /// The process clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The ingest self-telemetry counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Label and column names of the extra dimensions, in key order.
    pub fn dimension_labels(&self) -> &[String] {
        &self.dimension_labels
    }

    /// Names of the `requests_le_*` columns, in configuration order.
    pub fn threshold_columns(&self) -> &[String] {
        &self.threshold_columns
    }

    /// Series currently held, the overflow series included.
    pub fn series_active(&self) -> usize {
        self.series.len()
    }

    /// Series counted against the cap: all but the overflow series.
    fn regular_series(&self) -> usize {
        self.series.len() - usize::from(self.series.contains_key(&self.overflow))
    }

    /// Counts a batch of requests, checking their age against the clock.
    pub fn apply(&mut self, records: &[RequestRecord]) -> ApplyOutcome {
        self.apply_checked(records, self.clock.now_nanos())
    }

    /// Counts a batch of requests whose age and skew are checked against `checked_at` (the
    /// clock when they were logged, so a WAL replay decides as the first apply did).
    pub fn apply_checked(&mut self, records: &[RequestRecord], checked_at: u64) -> ApplyOutcome {
        let open_minute = minute_of(self.clock.now_nanos());
        self.roll(open_minute);
        let mut outcome = ApplyOutcome::default();
        for record in records {
            if !self.in_time(record.end_unix_nanos, checked_at, &mut outcome) {
                continue;
            }
            outcome.accepted += 1;
            self.count_sample(
                &Sample {
                    key: &record.key,
                    end_unix_nanos: record.end_unix_nanos,
                    duration_nanos: record.duration_nanos,
                    count: 1,
                    error: record.error,
                    recommendations: record.recommendations,
                    source: Source::Span,
                },
                open_minute,
            );
        }
        self.limits.flush(&self.telemetry);
        outcome
    }

    /// Counts a request's records and metric points ([`Aggregator::apply_checked`],
    /// [`Aggregator::apply_points`]).
    pub fn apply_batch(&mut self, batch: &Batch, checked_at: u64) -> ApplyOutcome {
        let mut outcome = self.apply_checked(&batch.records, checked_at);
        if !batch.points.is_empty() {
            let points = self.apply_points(&batch.points, checked_at);
            outcome.accepted += points.accepted;
            outcome.too_old += points.too_old;
            outcome.future += points.future;
            outcome.covered_by_spans += points.covered_by_spans;
            outcome.stream_limit += points.stream_limit;
        }
        outcome
    }

    /// Counts a batch of metric points (checked against `checked_at` as
    /// [`Aggregator::apply_checked`] checks spans): cumulative points become deltas against
    /// their stream, and a delta's buckets become requests with `source = "histogram"`.
    pub fn apply_points(&mut self, points: &[MetricPoint], checked_at: u64) -> ApplyOutcome {
        let now = self.clock.now_nanos();
        let open_minute = minute_of(now);
        self.roll(open_minute);
        let mut outcome = ApplyOutcome::default();
        for point in points {
            if !self.in_time(point.time_unix_nanos, checked_at, &mut outcome) {
                continue;
            }
            let delta = match self.metrics.delta(point, checked_at) {
                Ok(Some(delta)) => delta,
                Ok(None) => {
                    outcome.accepted += 1;
                    continue;
                }
                Err(Ignored::CoveredBySpans) => {
                    outcome.covered_by_spans += 1;
                    continue;
                }
                Err(Ignored::StreamLimit) => {
                    outcome.stream_limit += 1;
                    continue;
                }
            };
            outcome.accepted += 1;
            let mut sample = Sample {
                key: &point.key,
                end_unix_nanos: point.time_unix_nanos,
                duration_nanos: 0,
                count: 0,
                error: point.error,
                recommendations: delta.recommendations(),
                source: Source::Histogram,
            };
            if sample.recommendations > 0 {
                self.count_sample(&sample, open_minute);
            }
            sample.recommendations = 0;
            for (duration_nanos, count) in delta.requests(point.nanos_per_unit) {
                sample.duration_nanos = duration_nanos;
                sample.count = count;
                self.count_sample(&sample, open_minute);
            }
        }
        self.limits.flush(&self.telemetry);
        self.telemetry
            .set_metric_streams_active(self.metrics.streams_active());
        outcome
    }

    /// Whether something ending at `end` is within `ingest.max_span_age` before and
    /// `ingest.max_future_skew` after `checked_at`; counted in `outcome` if not.
    fn in_time(&self, end: u64, checked_at: u64, outcome: &mut ApplyOutcome) -> bool {
        if end < checked_at.saturating_sub(self.max_age_nanos) {
            outcome.too_old += 1;
            false
        } else if end > checked_at.saturating_add(self.max_skew_nanos) {
            outcome.future += 1;
            false
        } else {
            true
        }
    }

    /// Counts one sample into its series, or the overflow series [`Aggregator::place`] picks
    /// for a new series past a limit (counted in `recmeter_series_overflow_total`).
    fn count_sample(&mut self, sample: &Sample<'_>, open_minute: u64) {
        let spans = sample.source == Source::Span;
        let folded_key;
        let key = if self.series.contains_key(sample.key) {
            sample.key
        } else {
            let place = self.limits.place(sample.key, self.regular_series());
            let (key, at_limit) = match place {
                Place::Own => (sample.key, false),
                Place::ServiceOverflow { at_limit } => {
                    folded_key = self.limits.service_overflow(&sample.key.service);
                    (&folded_key, at_limit)
                }
                Place::Global { at_limit } => {
                    if spans {
                        self.metrics.span_service(&sample.key.service);
                    }
                    (&self.overflow, at_limit)
                }
            };
            if place != Place::Own && sample.count > 0 {
                self.limits.count_folded(
                    &sample.key.service,
                    at_limit,
                    sample.count,
                    &self.telemetry,
                );
            }
            key
        };
        if !self.series.contains_key(key) {
            // A service is marked as span-fed when one of its series is born of a span or
            // turns to spans, so the hot path does not look the service up per span.
            if spans {
                self.metrics.span_service(&key.service);
            }
            let state = SeriesState {
                born: self.births,
                source: sample.source,
                ..SeriesState::default()
            };
            self.births += 1;
            self.limits.note(key, true);
            self.series.insert(key.clone(), state);
        }
        let Some(series) = self.series.get_mut(key) else {
            return;
        };
        if spans && series.source != Source::Span {
            // A series first fed by histogram points is fed by spans from the first span on.
            series.source = Source::Span;
            self.metrics.span_service(&key.service);
        }
        let (clamped, bound) = histogram::clamp(sample.duration_nanos);
        if let Some(bound) = bound.filter(|_| sample.count > 0) {
            self.telemetry.add_clamped_n(bound, sample.count);
        }
        // Saturating: a histogram point may claim any count.
        let totals = &mut series.totals;
        if sample.error {
            totals.errors = totals.errors.saturating_add(sample.count);
        } else {
            totals.ok = totals.ok.saturating_add(sample.count);
        }
        totals.recommendations = totals
            .recommendations
            .saturating_add(sample.recommendations);
        let bucket = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|&le| sample.duration_nanos <= le)
            .unwrap_or(LATENCY_BUCKETS_NANOS.len());
        totals.bucket_counts[bucket] = totals.bucket_counts[bucket].saturating_add(sample.count);
        totals.sum_nanos = totals
            .sum_nanos
            .saturating_add(u128::from(sample.duration_nanos) * u128::from(sample.count));
        let minute = minute_of(sample.end_unix_nanos);
        let mut seal = Sealing {
            scratch: &mut self.scratch,
            merge: &mut self.merge,
            thresholds: &self.thresholds,
            hours_sealed_before: hour_of(self.sealed_before),
            sealed_before: self.sealed_before,
            blocks_open_from: block_of(self.sealed_before),
            journal: self.journal,
        };
        if minute != open_minute {
            series.late.push(LateValue {
                minute,
                value: clamped,
                count: sample.count,
                error: sample.error,
                recommendations: sample.recommendations,
            });
            if series.late.len() >= LATE_BUFFER {
                series.flush_late(&mut seal);
            }
            return;
        }
        series.record_open(
            minute,
            clamped,
            sample.count,
            sample.error,
            sample.recommendations,
            &mut seal,
        );
    }

    /// Once per minute: seals the minutes before `open_minute` and every hour that ended,
    /// forgets minutes older than 3 h and hours before the first one held. Where new series
    /// are refused (the slots open to any series are full, or among the endpoint series of a
    /// service at its limit), series with nothing from the last 3 h are forgotten too, so new
    /// series can take their place instead of folding into an overflow series for good.
    /// Elsewhere idle series are kept: dropping a counter that returns later would hide its
    /// first increments from Prometheus `increase()`.
    fn roll(&mut self, open_minute: u64) {
        if open_minute <= self.sealed_before {
            return;
        }
        let keep_from = open_minute.saturating_sub(MINUTES_KEPT - 1);
        // Hours go only below where readers split before this roll, so a query planned since
        // the last roll (within `sql.timeout`, under a minute) finds every hour it reads from
        // memory, however far the split moves now (the clock, or a checkpoint after an outage).
        let hours_from = self.hours_served_from;
        self.hours_served_from = self.first_hour_held(open_minute * MINUTE_NANOS);
        self.hours_released_before = self.hours_released_before.max(hours_from);
        let new_hours = hour_of(self.sealed_before)..hour_of(open_minute);
        let mut seal = Sealing {
            scratch: &mut self.scratch,
            merge: &mut self.merge,
            thresholds: &self.thresholds,
            hours_sealed_before: hour_of(self.sealed_before),
            sealed_before: open_minute,
            blocks_open_from: block_of(self.sealed_before),
            journal: self.journal,
        };
        for series in self.series.values_mut() {
            series.roll(
                self.sealed_before..open_minute,
                new_hours.clone(),
                keep_from,
                hours_from,
                &mut seal,
            );
        }
        // A service's endpoints that went out of use (an old route template) do not keep its
        // new ones folded for good.
        let open = self.limits.open(self.regular_series());
        if !open || self.limits.any_service_at_limit() {
            let overflow = &self.overflow;
            let limits = &self.limits;
            let evicted_unsaved = &mut self.evicted_unsaved;
            let mut evicted = Vec::new();
            self.series.retain(|key, series| {
                let keep =
                    key == overflow || !limits.crowded(key, open) || !series.is_idle(keep_from);
                if !keep {
                    if !series.unsaved.is_empty() {
                        evicted_unsaved.push(SeriesRows {
                            key: key.clone(),
                            source: series.source,
                            rows: std::mem::take(&mut series.unsaved),
                        });
                    }
                    evicted.push(key.clone());
                }
                keep
            });
            for key in &evicted {
                self.limits.note(key, false);
            }
            if !evicted.is_empty() {
                tracing::info!(
                    evicted = evicted.len(),
                    "Series limit reached: forgot series idle for 3 h."
                );
            }
        }
        self.sealed_before = open_minute;
    }

    /// The first minute (index since the epoch) that can still receive data at `now_nanos`:
    /// spans ending before `now − ingest.max_span_age` are refused, so rows of earlier minutes,
    /// and of hours that end before it, no longer change.
    pub fn first_open_minute(&self, now_nanos: u64) -> u64 {
        minute_of(now_nanos.saturating_sub(self.max_age_nanos))
    }

    /// The first minute whose minute rows memory holds at `now_nanos` (the last 3 h, open
    /// minute included); older minutes are read from the store, while its retention keeps them.
    pub fn first_minute_held(&self, now_nanos: u64) -> u64 {
        minute_of(now_nanos).saturating_sub(MINUTES_KEPT - 1)
    }

    /// Notes that a checkpoint stored every row sealed before `minute`.
    pub fn set_stored_before(&mut self, minute: u64) {
        self.stored_before = self.stored_before.max(minute);
    }

    /// The first hour (a minute index) of the hour rows read from memory at `now_nanos`; older
    /// ones are history, read from the store. With checkpoints (the journal kept), the hour
    /// before the 1d window's first: the 1d window is answered from memory, and its kept final
    /// hours can be moved on by the hour its start leaves behind (ADR 008); longer windows and
    /// SQL read older hours from the store (ADR 012). An hour whose rows a checkpoint may not
    /// have stored yet (checkpoints failing, or none yet) stays in memory until one has.
    /// Without a store, the 30d window's first hour: every window is answered from memory.
    pub fn first_hour_held(&self, now_nanos: u64) -> u64 {
        if self.journal {
            let day = hour_of(*Window::D1.minute_range(now_nanos).start()).saturating_sub(60);
            // Hours that can still get rows at the last checkpoint's minute are not all stored.
            // (A minute earlier: a batch checked just before a checkpoint's image can land after.)
            let first_open = self.first_open_minute(self.stored_before * MINUTE_NANOS);
            let stored = hour_of(first_open.saturating_sub(1));
            day.min(stored)
        } else {
            hour_of(*Window::D30.minute_range(now_nanos).start())
        }
    }

    /// Hours before this one have left memory: readers that split before it would miss them.
    pub fn hours_released_before(&self) -> u64 {
        self.hours_released_before
    }

    /// Series created since start-up.
    pub fn births(&self) -> u64 {
        self.births
    }

    /// Keys of the series created after the first `births` ones: new series, and series
    /// forgotten at the cap that came back (their old rows went when they were forgotten).
    pub fn born_since(&self, births: u64) -> Vec<SeriesKey> {
        self.series
            .iter()
            .filter(|(_, state)| state.born >= births)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Cumulative counters of every series, sorted by key.
    pub fn counters(&self) -> Vec<SeriesCounters> {
        let mut out: Vec<_> = self
            .series
            .iter()
            .map(|(key, state)| SeriesCounters {
                key: key.clone(),
                totals: state.totals.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Every series key, in no particular order.
    pub fn series_keys(&self) -> Vec<SeriesKey> {
        self.series.keys().cloned().collect()
    }

    /// Hands `visitor` the rows of `table` whose minute (or hour) start lies in `range` (minute
    /// indexes since the epoch), for the series of `keys` still held, in that order, after
    /// sealing whatever the clock has left behind. Stops after the series that brings the rows
    /// handed over to `row_budget` or more, and returns how many keys it went through, so a
    /// reader can take the series in chunks and keep each hold of the lock short. Rows are
    /// lent, not cloned: the visitor copies what it keeps. The open minute's encoding is kept
    /// until it changes; buffered late values are encoded on the fly and not stored, so
    /// reading often does not multiply a minute's rows.
    pub fn visit_rows(
        &mut self,
        table: Table,
        range: RangeInclusive<u64>,
        keys: &[SeriesKey],
        row_budget: usize,
        visitor: &mut dyn RowVisitor,
    ) -> Result<(usize, ControlFlow<()>)> {
        let open_minute = minute_of(self.clock.now_nanos());
        self.roll(open_minute);
        let current_hour = hour_of(open_minute);
        // Minute rows from here on are not in blocks yet (it is the open minute unless the clock
        // stepped back).
        let unsealed_from = self.sealed_before;
        // The last minute a blocks read takes rows of the open block from: the range's end, so
        // a read started after the clock passed it does not take the next minute's rows.
        let through = open_minute.min(*range.end());
        let wanted = |minute: u64| match table {
            Table::Minutes => range.contains(&minute),
            Table::Hours => range.contains(&hour_of(minute)),
            Table::Blocks => range.contains(&block_of(minute)) && minute <= through,
        };
        let mut late = Vec::new();
        let mut rows = 0;
        for (done, key) in keys.iter().enumerate() {
            if rows >= row_budget {
                return Ok((done, ControlFlow::Continue(())));
            }
            let Some(state) = self.series.get_mut(key) else {
                continue;
            };
            late.clear();
            if !state.late.is_empty() {
                late = state.late_rows(&mut self.scratch, &self.thresholds)?;
            }
            let open = match state.open.as_mut().filter(|o| wanted(o.minute)) {
                Some(o) => Some((o.minute, o.row()?)),
                None => None,
            };
            let mut announced = false;
            let mut emit = |at: u64, row: &Row| -> ControlFlow<()> {
                if !announced {
                    announced = true;
                    visitor.series(key, state.source)?;
                }
                rows += 1;
                visitor.row(at, row)
            };
            let flow = match table {
                Table::Minutes => state
                    .minutes
                    .range((*range.start(), 0)..)
                    .take_while(|((m, _), _)| m <= range.end())
                    .map(|((m, _), row)| (*m, row))
                    .chain(open.iter().map(|(m, row)| (*m, row)))
                    .chain(late.iter().map(|(m, row)| (*m, row)))
                    .filter(|(m, _)| range.contains(m))
                    .try_for_each(|(m, row)| emit(m, row)),
                // Hours not sealed yet (the current one, and any a future-stamped span reached)
                // are the rows of their blocks, of the open minute and of minutes ahead of the
                // clock; late values of a sealed hour are extra rows of it, as they will be once
                // flushed.
                Table::Hours => state
                    .hours
                    .range((*range.start(), 0)..)
                    .take_while(|((h, _), _)| h <= range.end())
                    .map(|((h, _), row)| (*h, row))
                    .chain(
                        state
                            .blocks
                            .range((current_hour, 0)..)
                            .chain(state.minutes.range((unsealed_from, 0)..))
                            .map(|((m, _), row)| (*m, row))
                            .chain(open.iter().map(|(m, row)| (*m, row)))
                            .chain(late.iter().map(|(m, row)| (*m, row)))
                            .map(|(m, row)| (hour_of(m), row))
                            .filter(|(h, _)| range.contains(h)),
                    )
                    .try_for_each(|(h, row)| emit(h, row)),
                // Minutes ahead of the clock are left out, as minute-exact windows end with the
                // open minute; rows the open minute got while it was ahead are in.
                Table::Blocks => state
                    .blocks
                    .range((*range.start(), 0)..)
                    .take_while(|((b, _), _)| b <= range.end())
                    .chain(
                        state
                            .minutes
                            .range((unsealed_from.min(through + 1), 0)..(through + 1, 0)),
                    )
                    .map(|((m, _), row)| (*m, row))
                    .chain(open.iter().map(|(m, row)| (*m, row)))
                    .chain(
                        late.iter()
                            .filter(|(m, _)| *m <= through)
                            .map(|(m, row)| (*m, row)),
                    )
                    .map(|(m, row)| (block_of(m), row))
                    .filter(|(b, _)| range.contains(b))
                    .try_for_each(|(b, row)| emit(b, row)),
            };
            if flow.is_break() {
                return Ok((done + 1, flow));
            }
        }
        Ok((keys.len(), ControlFlow::Continue(())))
    }
}

/// What reads the rollup rows: [`Aggregator::visit_rows`] calls `series` before the first row
/// of each series that has rows in the range, then `row` for each of them. Either may stop the
/// visit with `ControlFlow::Break` (and keep its own reason why).
pub trait RowVisitor {
    /// The series the next rows belong to.
    fn series(&mut self, key: &SeriesKey, source: Source) -> ControlFlow<()>;
    /// One row: the first minute of its minute, block or hour, its counts and its V2 encoding.
    fn row(&mut self, at: u64, row: &Row) -> ControlFlow<()>;
}

fn duration_nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The first nanosecond of `minute`.
pub fn minute_start_nanos(minute: u64) -> u64 {
    minute * MINUTE_NANOS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqlConfig;
    use crate::record::OVERFLOW;
    use crate::sql::QueryEngine;
    use crate::telemetry::Telemetry;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, UInt64Type};
    use std::time::{Duration, UNIX_EPOCH};

    const START_SECS: u64 = 1_800_000_000; // a minute boundary

    struct Fixture {
        state: SharedState,
        clock: Arc<Clock>,
        telemetry: Arc<Telemetry>,
        engine: QueryEngine,
    }

    fn fixture(max_series: usize) -> Fixture {
        fixture_with(max_series, max_series)
    }

    fn fixture_with(max_series: usize, max_series_per_service: usize) -> Fixture {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let telemetry = Arc::new(Telemetry::default());
        let config = AggregatorConfig {
            max_series,
            max_series_per_service,
            latency_thresholds: vec![0.2, 1.0],
            ..AggregatorConfig::default()
        };
        let agg = Aggregator::new(
            &IngestConfig::default(),
            &config,
            clock.clone(),
            telemetry.clone(),
        )
        .unwrap();
        let state = shared(agg);
        let engine = QueryEngine::new(state.clone(), &SqlConfig::default()).unwrap();
        Fixture {
            state,
            clock,
            telemetry,
            engine,
        }
    }

    impl Fixture {
        fn apply(&self, records: &[RequestRecord]) -> ApplyOutcome {
            lock(&self.state).apply(records)
        }

        async fn snapshot(&self, windows: &[Window]) -> Snapshot {
            self.engine.snapshot(windows).await.unwrap()
        }

        /// One u64 per row of a query's first column.
        async fn numbers(&self, sql: &str) -> Vec<u64> {
            let out = self.engine.query(sql).await.unwrap();
            out.batches
                .iter()
                .flat_map(|b| {
                    let column = cast(b.column(0), &DataType::UInt64).unwrap();
                    column.as_primitive::<UInt64Type>().values().to_vec()
                })
                .collect()
        }
    }

    /// With checkpoints, an hour leaves memory only once a checkpoint has stored every row it
    /// can get, and only below where readers split before the roll: 30 hours without a
    /// checkpoint keep all 30; once one has stored them, the next roll moves the split and the
    /// roll after it lets the older hours go.
    #[test]
    fn hours_leave_memory_once_stored_and_a_roll_after_the_split() {
        let f = fixture(10);
        lock(&f.state).keep_journal();
        let k = key("svc", "get");
        let t0 = f.clock.now_nanos();
        for _ in 0..30 * 60 {
            f.apply(&[request(k.clone(), f.clock.now_nanos(), 5)]);
            f.clock.advance(Duration::from_secs(60));
        }
        f.apply(&[]);
        let hours = |state: &SharedState| {
            let state = lock(state);
            let series = state.series.values().next().unwrap();
            series.hours.keys().map(|(h, _)| *h).collect::<Vec<_>>()
        };
        let first = minute_of(t0) - minute_of(t0) % 60;
        assert_eq!(hours(&f.state).len(), 30, "nothing stored: every hour kept");
        assert_eq!(lock(&f.state).first_hour_held(f.clock.now_nanos()), 0);
        // A checkpoint stores everything sealed so far; the split moves at the next roll, the
        // hours go at the one after.
        let now = f.clock.now_nanos();
        lock(&f.state).set_stored_before(minute_of(now));
        let split = lock(&f.state).first_hour_held(now);
        assert_eq!(split, hour_of(*Window::D1.minute_range(now).start()) - 60);
        assert!(split > first);
        f.clock.advance(Duration::from_secs(60));
        f.apply(&[]);
        assert_eq!(hours(&f.state)[0], first, "the first roll keeps them");
        f.clock.advance(Duration::from_secs(60));
        f.apply(&[]);
        assert_eq!(hours(&f.state)[0], split);
        assert_eq!(lock(&f.state).hours_released_before(), split);
    }

    fn key(service: &str, endpoint: &str) -> SeriesKey {
        SeriesKey {
            service: service.into(),
            endpoint: endpoint.into(),
            dimensions: Vec::new(),
        }
    }

    fn request(key: SeriesKey, end: u64, millis: u64) -> RequestRecord {
        RequestRecord {
            key,
            end_unix_nanos: end,
            duration_nanos: millis * 1_000_000,
            error: false,
            recommendations: 1,
        }
    }

    fn window(s: &SeriesSnapshot, w: Window) -> Option<&WindowQuantiles> {
        s.windows.iter().find(|x| x.window == w)
    }

    /// Requests of `service` per endpoint in `snap`, the overflow series as `__overflow__`.
    fn requests_of(snap: &Snapshot, service: &str) -> BTreeMap<String, u64> {
        snap.series
            .iter()
            .filter(|s| &*s.key.service == service)
            .map(|s| (s.key.endpoint.to_string(), s.totals.requests()))
            .collect()
    }

    #[tokio::test]
    async fn overflow_series_absorbs_requests_past_the_cap() {
        // Three slots, one of them kept for new services: two endpoint series.
        let f = fixture(3);
        let now = f.clock.now_nanos();
        let batch: Vec<_> = (0..5)
            .map(|i| request(key("svc", &format!("e{i}")), now, 10))
            .collect();
        let outcome = f.apply(&batch);
        assert_eq!(outcome.accepted, 5);
        assert_eq!(
            lock(&f.state).series_active(),
            3,
            "two series plus the overflow series"
        );
        assert_eq!(f.telemetry.series_overflow_total(), 3);
        assert_eq!(
            f.telemetry.series_overflow(),
            [("__other__".to_owned(), 3)],
            "svc is not at its own limit"
        );
        // A series seen before the cap keeps counting as itself.
        f.apply(&[request(key("svc", "e0"), now, 10)]);
        let snap = f.snapshot(&[Window::M1]).await;
        let e0 = snap
            .series
            .iter()
            .find(|s| &*s.key.endpoint == "e0")
            .unwrap();
        assert_eq!(e0.totals.ok, 2);
        assert_eq!(window(e0, Window::M1).unwrap().count, 2);
        let overflow = snap
            .series
            .iter()
            .find(|s| &*s.key.service == OVERFLOW)
            .unwrap();
        assert_eq!(&*overflow.key.endpoint, OVERFLOW);
        assert_eq!(overflow.totals.ok, 3);
        assert_eq!(window(overflow, Window::M1).unwrap().count, 3);
    }

    /// Past its own limit a service's new endpoints fold into its overflow series, with exact
    /// totals and quantiles over them; other services are untouched.
    #[tokio::test]
    async fn a_service_past_its_limit_folds_into_its_own_overflow_series() {
        let f = fixture_with(100, 3);
        let now = f.clock.now_nanos();
        let a: Vec<_> = (0..10u64)
            .map(|i| request(key("a", &format!("e{i}")), now, 10 + i))
            .collect();
        f.apply(&a);
        f.apply(&[
            request(key("b", "x"), now, 5),
            request(key("b", "y"), now, 5),
        ]);
        let snap = f.snapshot(&[Window::M1]).await;
        let expected: BTreeMap<String, u64> = [("e0", 1), ("e1", 1), ("e2", 1), (OVERFLOW, 7)]
            .into_iter()
            .map(|(e, n)| (e.to_owned(), n))
            .collect();
        assert_eq!(requests_of(&snap, "a"), expected);
        assert_eq!(requests_of(&snap, "b").len(), 2);
        let folded = snap
            .series
            .iter()
            .find(|s| &*s.key.service == "a" && &*s.key.endpoint == OVERFLOW)
            .unwrap();
        // e3..e9 lasted 13..19 ms: the median of seven is 16 ms.
        let p50 = window(folded, Window::M1).unwrap().quantiles[0].1;
        assert!((p50 - 0.016).abs() / 0.016 < 0.01, "p50 {p50}");
        assert_eq!(
            f.telemetry.series_overflow(),
            [("a".to_owned(), 7), ("__other__".to_owned(), 0)]
        );
        assert_eq!(lock(&f.state).series_active(), 6);
    }

    /// Near the global cap, the slots kept in reserve go to services with no series yet, one
    /// each (their overflow series); past the cap, to the global overflow series.
    #[tokio::test]
    async fn the_reserve_gives_new_services_a_series_of_their_own() {
        // max 10, 5 per service: 2 slots kept, 8 for endpoints.
        let f = fixture_with(10, 5);
        let now = f.clock.now_nanos();
        let many = |service: &str, n: u64| -> Vec<RequestRecord> {
            (0..n)
                .map(|i| request(key(service, &format!("e{i}")), now, 10))
                .collect()
        };
        f.apply(&many("a", 5));
        f.apply(&many("b", 5)); // 3 series, then the cap's open part is full
        f.apply(&many("c", 4)); // no series yet: its overflow series, with all four
        f.apply(&many("d", 2)); // the last reserved slot
        f.apply(&many("e", 3)); // nothing left: the global overflow series
        let snap = f.snapshot(&[Window::M1]).await;
        assert_eq!(requests_of(&snap, "a").len(), 5);
        assert_eq!(requests_of(&snap, "b").len(), 3);
        let only_overflow = |n: u64| -> BTreeMap<String, u64> { [(OVERFLOW.to_owned(), n)].into() };
        assert_eq!(requests_of(&snap, "c"), only_overflow(4));
        assert_eq!(requests_of(&snap, "d"), only_overflow(2));
        assert_eq!(requests_of(&snap, "e"), BTreeMap::new());
        assert_eq!(requests_of(&snap, OVERFLOW), only_overflow(2 + 3));
        assert_eq!(lock(&f.state).series_active(), 11);
        // c keeps its series, and new endpoints of c keep folding into it.
        f.apply(&many("c", 6));
        let snap = f.snapshot(&[Window::M1]).await;
        assert_eq!(requests_of(&snap, "c"), only_overflow(10));
        assert_eq!(f.telemetry.series_overflow_total(), 2 + 4 + 2 + 3 + 6);
    }

    /// Metric points go through the same limits as spans.
    #[tokio::test]
    async fn metric_points_fold_past_the_limit_as_spans_do() {
        use crate::metrics::{MetricPoint, PointValue};
        let f = fixture_with(100, 2);
        let now = f.clock.now_nanos();
        let points: Vec<MetricPoint> = (0..5u64)
            .map(|i| MetricPoint {
                stream: u128::from(i),
                key: key("m", &format!("e{i}")),
                error: false,
                start_unix_nanos: now - 60_000_000_000,
                time_unix_nanos: now,
                cumulative: false,
                whole_if_new: false,
                nanos_per_unit: 1e9,
                value: PointValue::Explicit {
                    bounds: vec![0.1],
                    counts: vec![3, 1],
                },
            })
            .collect();
        let outcome = lock(&f.state).apply_points(&points, now);
        assert_eq!(outcome.accepted, 5);
        let snap = f.snapshot(&[Window::M1]).await;
        let expected: BTreeMap<String, u64> = [("e0", 4), ("e1", 4), (OVERFLOW, 12)]
            .into_iter()
            .map(|(e, n)| (e.to_owned(), n))
            .collect();
        assert_eq!(requests_of(&snap, "m"), expected);
        assert_eq!(
            f.telemetry.series_overflow(),
            [("m".to_owned(), 12), ("__other__".to_owned(), 0)]
        );
    }

    /// A restored state folds the endpoints it folded before: the services' counts come back
    /// with their series.
    #[tokio::test]
    async fn folding_survives_a_restore() {
        let f = fixture_with(100, 2);
        let now = f.clock.now_nanos();
        let a: Vec<_> = (0..4)
            .map(|i| request(key("a", &format!("e{i}")), now, 10))
            .collect();
        f.apply(&a);
        let image = lock(&f.state).checkpoint_image().unwrap();
        let g = fixture_with(100, 2);
        {
            let mut state = lock(&g.state);
            state.restore_begin(image.sealed_before, image.wal_seq);
            for s in image.series {
                state.restore_series(s.key, s.source, s.totals);
            }
            state.restore_finish(Vec::new()).unwrap();
        }
        g.apply(&[
            request(key("a", "e3"), now, 10),
            request(key("a", "e9"), now, 10),
        ]);
        let snap = g.snapshot(&[Window::M1]).await;
        let expected: BTreeMap<String, u64> = [("e0", 1), ("e1", 1), (OVERFLOW, 4)]
            .into_iter()
            .map(|(e, n)| (e.to_owned(), n))
            .collect();
        assert_eq!(requests_of(&snap, "a"), expected);
    }

    /// A service at its limit forgets endpoints idle for 3 h, so new ones get series again.
    #[tokio::test]
    async fn a_service_at_its_limit_forgets_idle_endpoints() {
        let f = fixture_with(100, 2);
        f.apply(&[
            request(key("a", "old"), f.clock.now_nanos(), 10),
            request(key("a", "busy"), f.clock.now_nanos(), 10),
            request(key("b", "quiet"), f.clock.now_nanos(), 10),
        ]);
        for _ in 0..180 {
            f.clock.advance(Duration::from_secs(60));
            f.apply(&[request(key("a", "busy"), f.clock.now_nanos(), 10)]);
        }
        f.apply(&[request(key("a", "new"), f.clock.now_nanos(), 10)]);
        let snap = f.snapshot(&[Window::M1]).await;
        let endpoints: Vec<_> = requests_of(&snap, "a").into_keys().collect();
        assert_eq!(endpoints, ["busy", "new"]);
        assert_eq!(requests_of(&snap, "b").len(), 1, "b is under its limit");
    }

    #[tokio::test]
    async fn at_the_cap_idle_series_make_room() {
        let f = fixture(1);
        f.apply(&[request(key("svc", "old"), f.clock.now_nanos(), 10)]);
        f.clock.advance(Duration::from_secs(3 * 3_600));
        let outcome = f.apply(&[request(key("svc", "new"), f.clock.now_nanos(), 10)]);
        assert_eq!(outcome.accepted, 1);
        let snap = f.snapshot(&[Window::M1]).await;
        let names: Vec<_> = snap.series.iter().map(|s| &*s.key.endpoint).collect();
        assert_eq!(
            names,
            ["new"],
            "the idle series made room; nothing overflowed"
        );
    }

    #[tokio::test]
    async fn hours_are_sealed_and_long_windows_read_them() {
        let f = fixture(10);
        let k = key("svc", "get");
        let t0 = f.clock.now_nanos(); // an hour boundary
        assert_eq!(minute_of(t0) % 60, 0);
        // One request per minute for 5 hours, each 10 ms longer than the last.
        for i in 0..300u64 {
            f.apply(&[request(k.clone(), f.clock.now_nanos(), 10 * (i + 1))]);
            f.clock.advance(Duration::from_secs(60));
        }
        let windows = [
            Window::M5,
            Window::H1,
            Window::H2,
            Window::H6,
            Window::D1,
            Window::D30,
        ];
        let snap = f.snapshot(&windows).await;
        let s = &snap.series[0];
        // Now: minute 300 (open, empty). 1h: minutes 241..=299; 2h: 181..=299.
        assert_eq!(window(s, Window::M5).unwrap().count, 4);
        assert_eq!(window(s, Window::H1).unwrap().count, 59);
        assert_eq!(window(s, Window::H2).unwrap().count, 119);
        // 6h, 1d and 30d reach back past t0: every request, the first hours from hour rows.
        for w in [Window::H6, Window::D1, Window::D30] {
            let q = window(s, w).unwrap();
            assert_eq!(q.count, 300, "{w}");
            let p50 = q.quantiles[0].1; // nearest rank 150 → 1.5 s
            assert!((p50 - 1.5).abs() / 1.5 < 0.01, "{w}: {p50}");
        }
        let state = lock(&f.state);
        let series = state.series.values().next().unwrap();
        let hours: Vec<u64> = series.hours.keys().map(|(h, _)| *h).collect();
        let m0 = minute_of(t0);
        assert_eq!(hours, [m0, m0 + 60, m0 + 120, m0 + 180, m0 + 240]);
        assert!(series.minutes.keys().all(|(m, _)| *m >= m0 + 300 - 179));
    }

    #[tokio::test]
    async fn hour_rows_hold_the_same_counts_and_quantiles_as_their_minutes() {
        let f = fixture(10);
        let k = key("svc", "get");
        let t0 = f.clock.now_nanos();
        // 2 hours of varied requests, some errors, some late by a few minutes.
        for i in 0..120u64 {
            let now = f.clock.now_nanos();
            let mut batch: Vec<_> = (0..20)
                .map(|j| {
                    let mut r = request(k.clone(), now, 1 + (i * 37 + j * 101) % 1_500);
                    r.error = j % 7 == 0;
                    r.recommendations = j;
                    r
                })
                .collect();
            batch.push(request(
                k.clone(),
                now.saturating_sub(5 * MINUTE_NANOS),
                900,
            ));
            f.apply(&batch);
            f.clock.advance(Duration::from_secs(60));
        }
        let sums = |t: &str, c: &str| {
            format!(
                "SELECT sum({c}) FROM {t} WHERE {} < arrow_cast({}, 'Timestamp(Nanosecond, Some(\"+00:00\"))')",
                if t == "latency_minutes" {
                    "minute"
                } else {
                    "hour"
                },
                t0 + 120 * MINUTE_NANOS
            )
        };
        for c in [
            "requests",
            "errors",
            "recommendations",
            "requests_le_0_2",
            "requests_le_1",
        ] {
            let minutes = f.numbers(&sums("latency_minutes", c)).await;
            let hours = f.numbers(&sums("latency_hours", c)).await;
            assert_eq!(minutes, hours, "{c}");
            assert!(minutes[0] > 0, "{c}");
        }
        let requests = f.numbers(&sums("latency_hours", "requests")).await[0];
        assert_eq!(requests, 120 * 21);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let sql = |t: &str, c: &str| {
                format!(
                    "SELECT hdr_quantile(hdr_merge(hdr), {q}) FROM {t} WHERE {c} < arrow_cast({}, 'Timestamp(Nanosecond, Some(\"+00:00\"))')",
                    t0 + 120 * MINUTE_NANOS
                )
            };
            let a = f
                .engine
                .query(&sql("latency_minutes", "minute"))
                .await
                .unwrap();
            let b = f.engine.query(&sql("latency_hours", "hour")).await.unwrap();
            let value = |o: &crate::sql::QueryOutput| {
                o.batches[0]
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                    .value(0)
            };
            assert_eq!(value(&a), value(&b), "q {q}");
        }
        // The requests 5 minutes late at minutes 60 to 64 landed in the first hour after it was
        // sealed: five extra rows of that hour.
        let rows = f
            .numbers(&format!(
                "SELECT count(*) FROM latency_hours WHERE hour = arrow_cast({t0}, 'Timestamp(Nanosecond, Some(\"+00:00\"))')"
            ))
            .await;
        assert_eq!(rows, [6]);
    }

    #[tokio::test]
    async fn late_spans_are_buffered_not_dense() {
        let f = fixture(10);
        let k = key("svc", "get");
        let now = f.clock.now_nanos();
        let late: Vec<_> = (1..=30u64)
            .map(|m| request(k.clone(), now - m * MINUTE_NANOS, m))
            .collect();
        f.apply(&late);
        {
            let state = lock(&f.state);
            let series = state.series.values().next().unwrap();
            assert!(series.open.is_none(), "no dense histogram for late minutes");
            assert_eq!(series.late.len(), 30);
        }
        let snap = f.snapshot(&[Window::H1]).await;
        assert_eq!(window(&snap.series[0], Window::H1).unwrap().count, 30);
    }

    #[tokio::test]
    async fn windows_include_the_open_minute_and_respect_boundaries() {
        let f = fixture(10);
        let k = key("svc", "get");
        let t0 = f.clock.now_nanos();
        // Minute m-5 (outside 5m, inside 1h), m-4 (inside 5m), and the open minute m.
        f.apply(&[
            request(k.clone(), t0 - 5 * MINUTE_NANOS, 1),
            request(k.clone(), t0 - 4 * MINUTE_NANOS, 2),
            request(k.clone(), t0, 3),
        ]);
        let windows = [Window::M1, Window::M5, Window::H1];
        let snap = f.snapshot(&windows).await;
        let s = &snap.series[0];
        assert_eq!(window(s, Window::M1).unwrap().count, 1);
        assert_eq!(window(s, Window::M5).unwrap().count, 2);
        assert_eq!(window(s, Window::H1).unwrap().count, 3);
        // One minute later the open minute is empty: the 1m window has no data.
        f.clock.advance(Duration::from_secs(60));
        let snap = f.snapshot(&windows).await;
        let s = &snap.series[0];
        assert!(window(s, Window::M1).is_none());
        assert_eq!(window(s, Window::M5).unwrap().count, 1);
        assert_eq!(window(s, Window::H1).unwrap().count, 3);
    }

    #[tokio::test]
    async fn late_data_for_a_sealed_minute_is_merged() {
        let f = fixture(10);
        let k = key("svc", "get");
        let t0 = f.clock.now_nanos();
        f.apply(&[request(k.clone(), t0, 100)]);
        f.clock.advance(Duration::from_secs(120));
        f.apply(&[request(k.clone(), t0 + 1, 300)]); // minute t0 is sealed by now
        let snap = f.snapshot(&[Window::M5]).await;
        let w = window(&snap.series[0], Window::M5).unwrap();
        assert_eq!(w.count, 2);
        let p99 = w.quantiles[2].1;
        assert!((p99 - 0.3).abs() / 0.3 < 0.01, "{p99}");
        assert_eq!(
            f.numbers("SELECT count(*) FROM latency_minutes").await,
            [2],
            "the late request is a second row of its minute"
        );
    }

    #[test]
    fn too_old_and_future_spans_are_refused() {
        let f = fixture(10);
        let k = key("svc", "get");
        let now = f.clock.now_nanos();
        let hour = 3_600 * 1_000_000_000;
        let outcome = f.apply(&[
            request(k.clone(), now - hour, 1), // exactly at the age limit: kept
            request(k.clone(), now - hour - 1, 1), // too old
            request(k.clone(), now + 300 * 1_000_000_000, 1), // exactly at the skew limit: kept
            request(k.clone(), now + 300 * 1_000_000_000 + 1, 1), // future
        ]);
        assert_eq!(
            outcome,
            ApplyOutcome {
                accepted: 2,
                too_old: 1,
                future: 1,
                ..ApplyOutcome::default()
            }
        );
    }

    #[tokio::test]
    async fn buckets_count_exact_durations_and_clamps_are_counted() {
        let f = fixture(10);
        let k = key("svc", "get");
        let now = f.clock.now_nanos();
        let mut r = request(k.clone(), now, 0);
        r.duration_nanos = 200_000_000; // exactly 0.2 s: in le="0.2"
        let mut tiny = r.clone();
        tiny.duration_nanos = 10;
        let mut huge = r.clone();
        huge.duration_nanos = 7_200 * 1_000_000_000;
        f.apply(&[r, tiny, huge]);
        let snap = f.snapshot(&[]).await;
        let b = &snap.series[0].totals.bucket_counts;
        assert_eq!(b[0], 1, "10 ns is in le=0.005");
        assert_eq!(b[5], 1, "0.2 s is in le=0.2");
        assert_eq!(b[12], 1, "2 h is in +Inf");
        assert_eq!(f.telemetry.clamped(crate::histogram::ClampBound::Low), 1);
        assert_eq!(f.telemetry.clamped(crate::histogram::ClampBound::High), 1);
        // The rollup's threshold columns agree with the buckets.
        assert_eq!(
            f.numbers("SELECT requests_le_0_2 FROM latency_minutes")
                .await,
            [2]
        );
        assert_eq!(
            f.numbers("SELECT requests_le_1 FROM latency_minutes").await,
            [2]
        );
    }

    /// Counts at the ends of the range, in explicit and exponential points, delta and
    /// cumulative, applied in any order: the state stays encodable (every minute and the
    /// checkpoint image), whatever reached the aggregator.
    mod extreme_counts {
        use super::*;
        use crate::metrics::{Dense, PointValue};
        use proptest::prelude::*;

        fn count() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(u64::MAX),
                Just(1 << 63),
                Just(1 << 62),
                Just((1 << 62) + 1),
                Just(i64::MAX as u64),
                0..1_000u64,
                any::<u64>(),
            ]
        }

        fn value() -> impl Strategy<Value = PointValue> {
            prop_oneof![
                (
                    prop::collection::vec(count(), 3),
                    prop::sample::select(vec![1e-9, 0.05, 1e6])
                )
                    .prop_map(|(counts, b)| PointValue::Explicit {
                        bounds: vec![b, b * 4.0],
                        counts,
                    }),
                (
                    count(),
                    prop::collection::vec(count(), 1..4),
                    -10..20i32,
                    -200..200i32
                )
                    .prop_map(|(zero_count, counts, scale, offset)| {
                        PointValue::Exponential {
                            scale,
                            zero_count,
                            positive: Dense { offset, counts },
                            negative: Dense::default(),
                        }
                    }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn the_state_stays_encodable(
                points in prop::collection::vec((value(), any::<bool>(), 0..3u64), 1..12)
            ) {
                let f = fixture(100);
                let now = START_SECS * 1_000_000_000;
                let mut agg = lock(&f.state);
                for (i, (value, cumulative, stream)) in points.into_iter().enumerate() {
                    let point = MetricPoint {
                        stream: u128::from(stream),
                        key: SeriesKey {
                            service: Arc::from("svc"),
                            endpoint: Arc::from("/recs"),
                            dimensions: Vec::new(),
                        },
                        error: i % 2 == 0,
                        start_unix_nanos: now - 120_000_000_000,
                        time_unix_nanos: now - 60_000_000_000 + i as u64,
                        cumulative,
                        whole_if_new: true,
                        nanos_per_unit: 1e9,
                        value,
                    };
                    agg.apply_points(&[point], now);
                }
                f.clock.advance(Duration::from_secs(120));
                prop_assert!(agg.checkpoint_image().is_ok());
                drop(agg);
                // What scrapes and queries encode and decode works too.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let windows = [Window::M1, Window::M5, Window::H1];
                prop_assert!(rt.block_on(f.engine.snapshot(&windows)).is_ok());
                let quantile = "SELECT hdr_quantile(hdr_merge(hdr), 0.99) FROM latency_minutes";
                prop_assert!(rt.block_on(f.engine.query(quantile)).is_ok());
            }
        }
    }
}
