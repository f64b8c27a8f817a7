//! The window planner: per series, counts and HDR quantiles over DESIGN's windows and over any
//! minute-aligned `[start, end)` range, in one DataFusion query over the rollup tables.
//!
//! Every span (a window, or a range) is a list of runs of rows (minutes, hours, ten-minute
//! blocks, kept final hours), which are cut into segments at every span's boundaries so each
//! row is read and merged once however many spans hold it; each span then adds up its
//! segments. `/metrics` asks for quantiles only, with each long window's final hours merged
//! once and kept between scrapes (ADR 008); counts (requests, errors, recommendations, every
//! `requests_le_*`) come with the quantiles when asked for, as SLO burn rates and the query
//! API need.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{Expr, SessionContext, col, lit};
use futures::StreamExt;

use super::functions::{self, TIME_ZONE};
use super::guard::Cancel;
use super::session::{Sessions, classify};
use super::tables::{PreparedRows, PreparedSeries, RollupTable, table_name};
use crate::clock::MINUTE_NANOS;
use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::record::SeriesKey;
use crate::state::{
    BLOCK_MINUTES, QUANTILES, Row, RowCounts, RowVisitor, SeriesSnapshot, Snapshot, Source, Table,
    WindowQuantiles, lock,
};
use crate::store::history::History;
use crate::store::rollup::{ExactColumns, bucket_columns, legacy_exact};
use crate::window::Window;

/// The window planner's own state: the long windows' final hours, kept between scrapes.
#[derive(Debug, Default)]
pub struct WindowPlanner {
    /// The long windows' final hours merged per series, kept between scrapes.
    pub(super) final_hours: parking_lot::Mutex<Option<Arc<FinalHours>>>,
    /// Held while the final hours are checked, merged or moved on, so a scrape and
    /// [`WindowPlanner::prepare`] at the same moment do the work once.
    pub(super) merging: tokio::sync::Mutex<()>,
}

impl WindowPlanner {
    /// Whether the kept final hours were moved on rather than merged anew (`None`: none kept).
    #[cfg(test)]
    pub(super) fn kept_hours_moved_on(&self) -> Option<bool> {
        self.final_hours.lock().as_ref().map(|k| k.advanced)
    }
}

/// The whole hours of each long window that can no longer change, merged per series by the
/// same `hdr_merge` over `latency_hours`: an hour is final once it ends before the oldest span
/// ingest still accepts (`ingest.max_span_age`). A window's merge holds the hours from its start
/// up to `end`. When `end` or a window's start moves (with whole-hour windows and the default
/// 1 h span age, the starts move at minute 59 of each hour and `end` at minute 0), the rows are
/// moved on: the hours left behind taken away, the hours become final added. A series created
/// since (a series forgotten at the cap that came back has lost its old rows) keeps none of its
/// old rows here (ADR 008).
#[derive(Debug)]
pub(super) struct FinalHours {
    /// Hours starting before this minute are merged.
    end: u64,
    /// Each long window's first hour, in window order.
    starts: Vec<u64>,
    /// `Aggregator::births` when the rows were checked against the live series.
    births: u64,
    /// One row per series and window, at the window's first hour.
    rows: Arc<PreparedRows>,
    /// Whether the rows were moved on from earlier kept rows, not merged anew.
    pub(super) advanced: bool,
}

impl FinalHours {
    fn covers(&self, starts: &[u64], end: u64) -> bool {
        self.end == end && self.starts == starts
    }

    /// Whether moving these rows on to `starts` and `end` reads fewer hours than merging them
    /// anew: the same windows, each start and the end only moved forward, no start moved past
    /// the old end, the hours a start left behind still readable (from `held_from` on: in
    /// memory, or anywhere with the store), and fewer hours left behind or become final than
    /// the windows hold.
    fn can_advance_to(&self, starts: &[u64], end: u64, held_from: u64) -> bool {
        let forward = starts.len() == self.starts.len()
            && end >= self.end
            && starts.iter().zip(&self.starts).all(|(new, old)| {
                old <= new && *new <= self.end && (old == new || *old >= held_from)
            });
        forward && {
            let moved: u64 = starts.iter().zip(&self.starts).map(|(n, o)| n - o).sum();
            let held = end - starts.iter().min().copied().unwrap_or(end);
            moved + (end - self.end) < held
        }
    }
}

impl WindowPlanner {
    /// Merges the final hours of the long windows among `windows` at the clock's reading, or
    /// moves the kept ones on, ahead of the next scrape of those windows (ADR 008). The service
    /// runs it before it reports ready and then every second, so a scrape finds them merged
    /// unless it comes within about a second of an hour becoming final or a window's first
    /// hour moving; then it waits for the one merge under way.
    pub async fn prepare(&self, sessions: &Sessions, windows: &[Window]) -> Result<()> {
        let windows = distinct(windows);
        let _merging = self.merging.lock().await;
        let (at, dimension_labels, first_open) = {
            let state = lock(&sessions.state);
            let at = state.clock().now_nanos();
            let labels = state.dimension_labels().to_vec();
            (at, labels, state.first_open_minute(at))
        };
        self.final_hours(sessions, &windows, at, first_open, &dimension_labels)
            .await
            .map(|_| ())
    }

    /// Counters of every series, and each of `windows` merged from the rollup tables with
    /// `hdr_merge`, by DESIGN's window rule: minute-exact windows from `latency_minutes` and
    /// the ten-minute blocks, longer ones as whole hours from `latency_hours` plus the current
    /// hour's blocks (see [`window_runs`]). Every window ends with the open minute at one clock
    /// reading, so future-stamped spans (within `ingest.max_future_skew`) wait for their minute.
    pub async fn snapshot(&self, sessions: &Sessions, windows: &[Window]) -> Result<Snapshot> {
        let windows = distinct(windows);
        // A series forgotten at the cap and back while the query ran would be merged with its
        // old final hours: then the snapshot is taken again (it takes a series churning at the
        // cap right at a scrape) and, the last time, without kept hours.
        let mut attempts = 0;
        let (at, counters, dimension_labels, mut per_series) = loop {
            attempts += 1;
            // The clock is read once the final hours are free, so a merge for a later minute
            // that ran meanwhile is not undone. Only long windows have final hours, and the last
            // attempt goes without them.
            let long = windows.iter().any(|w| !w.is_minute_exact());
            let merging = match (long, attempts) {
                (true, 1 | 2) => Some(self.merging.lock().await),
                _ => None,
            };
            let (at, counters, dimension_labels, first_open) = {
                let state = lock(&sessions.state);
                let at = state.clock().now_nanos();
                (
                    at,
                    state.counters(),
                    state.dimension_labels().to_vec(),
                    state.first_open_minute(at),
                )
            };
            let final_hours = match attempts {
                1 | 2 => {
                    self.final_hours(sessions, &windows, at, first_open, &dimension_labels)
                        .await?
                }
                _ => None,
            };
            drop(merging);
            let ctx = sessions.metrics_context(at);
            if let Some((rows, _)) = &final_hours {
                let table = RollupTable::new(Table::Hours, rows.clone());
                // Registering into a fresh session cannot collide.
                let _ = ctx.register_table(FINAL_HOURS, Arc::new(table));
            }
            let end = final_hours.as_ref().map(|_| final_end(at, first_open));
            let runs = window_runs(&windows, at, end);
            let per_series = self
                .merge_spans(sessions, ctx, runs, &dimension_labels, true, None)
                .await?;
            let stale = final_hours.is_some_and(|(rows, births)| {
                lock(&sessions.state)
                    .born_since(births)
                    .iter()
                    .any(|key| rows.contains(key))
            });
            if !stale {
                break (at, counters, dimension_labels, per_series);
            }
        };
        let series = counters
            .into_iter()
            .map(|c| {
                let windows = per_series
                    .remove(&c.key)
                    .unwrap_or_default()
                    .into_iter()
                    .zip(&windows)
                    .filter_map(|(merged, &window)| {
                        let m = merged?;
                        Some(WindowQuantiles {
                            window,
                            count: m.total,
                            quantiles: m.quantiles?,
                        })
                    })
                    .collect();
                SeriesSnapshot {
                    key: c.key,
                    totals: c.totals,
                    windows,
                }
            })
            .collect();
        Ok(Snapshot {
            at_unix_nanos: at,
            dimension_labels,
            series,
        })
    }
}

impl WindowPlanner {
    /// Runs the plan of `runs` (one list per span) in `ctx` and merges each series' spans, on
    /// the internal runtime under `sql.timeout`. With `thresholds` (the `requests_le_*` column
    /// names) the counts are summed too.
    async fn merge_spans(
        &self,
        sessions: &Sessions,
        ctx: SessionContext,
        runs: Vec<Vec<Segment>>,
        dimensions: &[String],
        hdr: bool,
        thresholds: Option<Vec<String>>,
    ) -> Result<HashMap<SeriesKey, Vec<Option<Merged>>>> {
        let dimensions = dimensions.to_vec();
        sessions
            .run(
                sessions.internal_runtime.as_ref(),
                async move {
                    // No span reads a row (ranges wholly after the open minute, say): nothing
                    // to plan.
                    if runs.iter().all(Vec::is_empty) {
                        return Ok(HashMap::new());
                    }
                    let (df, held) =
                        window_plan(&ctx, &runs, &dimensions, hdr, thresholds.as_deref()).await?;
                    let keys = 2 + dimensions.len();
                    let merge = Arc::new(WindowMerge::new(
                        held,
                        keys,
                        hdr,
                        thresholds.as_ref().map(Vec::len),
                    ));
                    // Each output partition's series are merged into spans on its own task, as
                    // its batches come.
                    let mut tasks = tokio::task::JoinSet::new();
                    for mut stream in df.execute_stream_partitioned().await.map_err(classify)? {
                        let merge = merge.clone();
                        tasks.spawn(async move {
                            let mut scratch = merge.scratch();
                            let mut out = Vec::new();
                            while let Some(batch) = stream.next().await {
                                merge.add(&batch.map_err(classify)?, &mut scratch, &mut out)?;
                            }
                            Ok::<_, Error>(out)
                        });
                    }
                    let mut per_series = HashMap::new();
                    while let Some(done) = tasks.join_next().await {
                        let out = done.map_err(|e| {
                            Error::QueryInternal(format!("window task failed: {e}"))
                        })??;
                        per_series.extend(out);
                    }
                    Ok(per_series)
                },
                sessions.config.timeout,
                Cancel::default(),
            )
            .await
    }

    /// Per series, the counts (requests, errors, recommendations, every `requests_le_*`) and
    /// HDR quantiles of each of `spans` at one clock reading: DESIGN's windows as `/metrics`
    /// merges them (through the open minute), and minute-aligned ranges. A range is
    /// minute-exact while its minute rows are kept (memory's 3 h, and the store's minute files
    /// under `retention.minutes`); a bound older than that rounds out to its hour, read from the
    /// hour rows, and [`Covered`] says so. A range ends at the open minute at the latest.
    pub async fn counts(
        &self,
        sessions: &Sessions,
        spans: &[Span],
        quantiles: bool,
    ) -> Result<WindowCounts> {
        if spans.len() > MAX_SPANS {
            return Err(Error::Query(format!(
                "{} spans in one call; at most {MAX_SPANS} are counted at once",
                spans.len()
            )));
        }
        for span in spans {
            if let Span::Range { start, end } = span
                && start >= end
            {
                return Err(Error::Query(format!(
                    "the range [{start}, {end}) (minutes since the epoch) holds no minute"
                )));
            }
        }
        let (at, dimension_labels, threshold_columns, memory_from) = {
            let state = lock(&sessions.state);
            let at = state.clock().now_nanos();
            (
                at,
                state.dimension_labels().to_vec(),
                state.threshold_columns().to_vec(),
                state.first_minute_held(at),
            )
        };
        let stored_from = sessions.history.as_ref().and_then(|h| h.first_minute());
        let minutes_from = stored_from.map_or(memory_from, |s| s.min(memory_from));
        let open = at / MINUTE_NANOS;
        let (runs, covered): (Vec<_>, Vec<_>) = spans
            .iter()
            .map(|&span| match span {
                Span::Window(w) => {
                    let from = *w.minute_range(at).start();
                    let runs = window_runs(&[w], at, None).remove(0);
                    let covered = Covered {
                        span,
                        from,
                        to: open + 1,
                        rounded_to_hours: false,
                    };
                    (runs, covered)
                }
                Span::Range { start, end } => {
                    range_runs(span, start, end, open, minutes_from, memory_from)
                }
            })
            .unzip();
        // Counts alone of rows memory holds (an SLO evaluation's spans) are summed straight from
        // memory; anything else is planned.
        let in_memory = runs
            .iter()
            .flatten()
            .all(|r| (r.part == MINUTE || r.part == BLOCK) && r.from >= memory_from);
        let mut per_series = if !quantiles && in_memory {
            sum_in_memory(sessions, runs).await?
        } else {
            let ctx = sessions.metrics_context(at);
            self.merge_spans(
                sessions,
                ctx,
                runs,
                &dimension_labels,
                quantiles,
                Some(threshold_columns.clone()),
            )
            .await?
        };
        let mut series: Vec<(SeriesKey, Vec<Option<SpanCounts>>)> = per_series
            .drain()
            .map(|(key, merged)| {
                let spans = merged
                    .into_iter()
                    .map(|m| {
                        m.map(|m| SpanCounts {
                            counts: m.sums.unwrap_or_default(),
                            quantiles: m.quantiles,
                        })
                    })
                    .collect();
                (key, spans)
            })
            .filter(|(_, spans): &(SeriesKey, Vec<Option<SpanCounts>>)| {
                spans.iter().any(Option::is_some)
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(WindowCounts {
            at_unix_nanos: at,
            dimension_labels,
            threshold_columns,
            spans: covered,
            series,
        })
    }
}

/// The runs of rows the range `[start, end)` merges at open minute `open`, when minute rows are
/// kept from `minutes_from` on (memory's blocks from `blocks_from`), and what it covers:
/// minutes while they are kept ([`minute_runs`]); before that, whole hours (the range's first
/// hour and, for a range that ends before `minutes_from` too, its last, rounded out), then
/// minutes from the first whole hour they are kept for.
fn range_runs(
    span: Span,
    start: u64,
    end: u64,
    open: u64,
    minutes_from: u64,
    blocks_from: u64,
) -> (Vec<Segment>, Covered) {
    let run = |part, from, to| Segment { part, from, to };
    let to = end.min(open + 1);
    if start >= minutes_from || start >= to {
        let covered = Covered {
            span,
            from: start,
            to: to.max(start),
            rounded_to_hours: false,
        };
        let runs = if start < to {
            minute_runs(start, to, open, blocks_from)
        } else {
            Vec::new()
        };
        return (runs, covered);
    }
    let first_hour = start - start % 60;
    // The first hour whose minutes are all kept.
    let minutes_hour = minutes_from.next_multiple_of(60);
    if to <= minutes_hour {
        let last = to.next_multiple_of(60);
        let covered = Covered {
            span,
            from: first_hour,
            to: last,
            rounded_to_hours: first_hour != start || last != to,
        };
        return (vec![run(HOUR, first_hour, last)], covered);
    }
    let covered = Covered {
        span,
        from: first_hour,
        to,
        rounded_to_hours: first_hour != start,
    };
    let mut runs = minute_runs(minutes_hour, to, open, blocks_from);
    if first_hour < minutes_hour {
        runs.push(run(HOUR, first_hour, minutes_hour));
    }
    (runs, covered)
}

/// The runs of the minutes `[start, to)` (`to` at most `open + 1`): the whole ten-minute blocks
/// memory holds (from `blocks_from` on) as block rows, a tenth as many as their minutes (the
/// open block too, when the range runs through the open minute: it holds its minutes so far),
/// and the minutes around them as minute rows.
fn minute_runs(start: u64, to: u64, open: u64, blocks_from: u64) -> Vec<Segment> {
    let run = |part, from, to| Segment { part, from, to };
    let first_block = start.max(blocks_from).next_multiple_of(BLOCK_MINUTES);
    let last_block = if to > open {
        to
    } else {
        to - to % BLOCK_MINUTES
    };
    if first_block >= last_block || first_block > open {
        return vec![run(MINUTE, start, to)];
    }
    let mut runs = vec![run(BLOCK, first_block, last_block)];
    if start < first_block {
        runs.push(run(MINUTE, start, first_block));
    }
    if last_block < to {
        runs.push(run(MINUTE, last_block, to));
    }
    runs
}

/// The most spans one call of [`WindowPlanner::counts`] takes: each distinct stretch between
/// their bounds is one aggregate of the plan.
pub const MAX_SPANS: usize = 4096;

/// What the window planner counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Span {
    /// One of DESIGN's windows, ending with the open minute.
    Window(Window),
    /// The minutes `[start, end)`, as indexes since the epoch.
    Range { start: u64, end: u64 },
}

/// What one span was read over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covered {
    pub span: Span,
    /// The minutes read, `[from, to)`.
    pub from: u64,
    pub to: u64,
    /// Whether a bound of a range was rounded out to a whole hour, its minute rows being no
    /// longer kept.
    pub rounded_to_hours: bool,
}

/// One series over one span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanCounts {
    /// Requests, errors, recommendations and `requests_le_*` (in [`WindowCounts`]'
    /// `threshold_columns` order).
    pub counts: RowCounts,
    /// `(q, seconds)` for each of [`QUANTILES`], from the merged HDR histogram; `None` when
    /// the span holds no latency sample (only recommendations, say).
    pub quantiles: Option<[(f64, f64); 4]>,
}

/// The window planner's answer: per series, each span's counts and quantiles.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCounts {
    pub at_unix_nanos: u64,
    /// Label names of the extra dimensions, in key order.
    pub dimension_labels: Vec<String>,
    /// The `requests_le_*` columns, in the order of [`RowCounts::le`].
    pub threshold_columns: Vec<String>,
    /// What each span covered, in the order asked.
    pub spans: Vec<Covered>,
    /// The series with a request in at least one span, sorted by key; one entry per span
    /// (`None`: no request in it).
    pub series: Vec<(SeriesKey, Vec<Option<SpanCounts>>)>,
}

/// The series key of each row of `batch`, whose first `keys` columns are service, endpoint and
/// the extra dimensions (as every window query groups them).
fn series_keys(batch: &RecordBatch, keys: usize) -> Vec<SeriesKey> {
    let strings: Vec<_> = (0..keys)
        .map(|i| batch.column(i).as_string::<i32>())
        .collect();
    (0..batch.num_rows())
        .map(|row| SeriesKey {
            service: strings[0].value(row).into(),
            endpoint: strings[1].value(row).into(),
            dimensions: strings[2..].iter().map(|s| s.value(row).into()).collect(),
        })
        .collect()
}

/// One series over one span, as merged from its segments.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Merged {
    /// Requests the merged histogram holds.
    total: u64,
    /// `(q, seconds)` for each of [`QUANTILES`]; `None` when the histogram is empty.
    quantiles: Option<[(f64, f64); 4]>,
    /// The summed counts, when the query asked for them.
    sums: Option<RowCounts>,
}

/// Merges a window query's segment columns into each span's histogram (and counts), per
/// series.
struct WindowMerge {
    /// Per span, the segments it merges.
    held: Vec<Vec<usize>>,
    /// Spans by how many segments they hold.
    order: Vec<usize>,
    /// Key columns before the segment columns.
    keys: usize,
    /// Whether each segment has its merged histogram (for quantiles).
    hdr: bool,
    /// With counts: how many `requests_le_*` columns each segment has.
    thresholds: Option<usize>,
}

/// What a [`WindowMerge`] task reuses from row to row: each segment's counts, and a span's.
struct MergeScratch {
    segments: Vec<Counts>,
    sums: Vec<RowCounts>,
    window: Counts,
}

impl WindowMerge {
    fn new(held: Vec<Vec<usize>>, keys: usize, hdr: bool, thresholds: Option<usize>) -> Self {
        let mut order: Vec<usize> = (0..held.len()).collect();
        order.sort_by_key(|&w| held[w].len());
        Self {
            held,
            order,
            keys,
            hdr,
            thresholds,
        }
    }

    /// Columns per segment: the histogram (unless counts only), then with counts the
    /// requests, errors, recommendations and each `requests_le_*`.
    fn stride(&self) -> usize {
        usize::from(self.hdr) + self.thresholds.map_or(0, |t| 3 + t)
    }

    fn scratch(&self) -> MergeScratch {
        let segments = self.held.iter().flatten().max().map_or(0, |m| m + 1);
        MergeScratch {
            segments: vec![Counts::new(); segments],
            sums: vec![RowCounts::default(); segments],
            window: Counts::new(),
        }
    }

    /// Adds each series of `batch` (keys, then each segment's columns) to `out`, with what each
    /// span merged (`None`: no request in it).
    fn add(
        &self,
        batch: &RecordBatch,
        scratch: &mut MergeScratch,
        out: &mut Vec<(SeriesKey, Vec<Option<Merged>>)>,
    ) -> Result<()> {
        let MergeScratch {
            segments,
            sums,
            window,
        } = scratch;
        let stride = self.stride();
        let number = |column: usize, row: usize| -> Result<u64> {
            let values = batch
                .column(column)
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| Error::QueryInternal("a count column is not UInt64".into()))?;
            Ok(if values.is_null(row) {
                0
            } else {
                values.value(row)
            })
        };
        for (row, key) in series_keys(batch, self.keys).into_iter().enumerate() {
            // Each segment decoded once, then added into every span that holds it.
            for (i, segment) in segments.iter_mut().enumerate() {
                let mut at = self.keys + i * stride;
                segment.reset();
                if self.hdr {
                    let blobs = batch.column(at).as_binary::<i32>();
                    if !blobs.is_null(row) {
                        segment.add_encoded(blobs.value(row))?;
                    }
                    at += 1;
                }
                if let Some(thresholds) = self.thresholds {
                    let s = &mut sums[i];
                    s.requests = number(at, row)?;
                    s.errors = number(at + 1, row)?;
                    s.recommendations = number(at + 2, row)?;
                    for t in 0..thresholds {
                        s.le[t] = number(at + 3 + t, row)?;
                    }
                }
            }
            // Each span starts from the one before when it holds all of that one's segments
            // (1m within 5m when both read minutes), else from nothing.
            let mut merged = vec![None; self.held.len()];
            let mut summed: &[usize] = &[];
            window.reset();
            for &w in &self.order {
                let held = &self.held[w];
                if !summed.iter().all(|i| held.contains(i)) {
                    window.reset();
                    summed = &[];
                }
                for &i in held.iter().filter(|i| !summed.contains(i)) {
                    window.merge(&segments[i])?;
                }
                summed = held;
                let span_sums = self.thresholds.map(|_| {
                    let mut total = RowCounts::default();
                    for &i in held {
                        total.add(&sums[i]);
                    }
                    total
                });
                // A span with counts but no latency sample (recommendations of a histogram-fed
                // series in a minute without requests) is still counted, without quantiles.
                let counted = span_sums.is_some_and(|s| s != RowCounts::default());
                if window.total() == 0 && !counted {
                    continue;
                }
                let quantiles = (window.total() > 0).then(|| {
                    let values = window.quantiles_seconds(QUANTILES);
                    std::array::from_fn(|i| (QUANTILES[i], values[i].unwrap_or(0.0)))
                });
                merged[w] = Some(Merged {
                    total: window.total(),
                    quantiles,
                    sums: span_sums,
                });
            }
            out.push((key, merged));
        }
        Ok(())
    }
}

/// Each window once, in order: the kept final hours are told apart by their window's first hour.
fn distinct(windows: &[Window]) -> Vec<Window> {
    let mut windows = windows.to_vec();
    windows.sort_unstable();
    windows.dedup();
    windows
}

/// The internal table of merged final hours in a `/metrics` session.
const FINAL_HOURS: &str = "final_hours";

/// The end (exclusive, a minute index) of the final hours at `now_nanos`: hours before the
/// current one that end at or before `first_open`, the first minute that can still get data.
fn final_end(now_nanos: u64, first_open: u64) -> u64 {
    let open = now_nanos / MINUTE_NANOS;
    let current_hour = open - open % 60;
    (first_open - first_open % 60).min(current_hour)
}

impl WindowPlanner {
    /// The merged final hours of the long windows among `windows` at `now_nanos`, and the
    /// `Aggregator::births` they were checked at: the kept ones while they still cover them
    /// (without any series created since they were merged), else the kept ones moved on when
    /// that reads less (see [`FinalHours::can_advance_to`]), else merged anew from
    /// `latency_hours`; kept either way. `None` when no long window starts before the final hours end.
    /// Callers with long windows among `windows` hold `merging`.
    async fn final_hours(
        &self,
        sessions: &Sessions,
        windows: &[Window],
        now_nanos: u64,
        first_open: u64,
        dimensions: &[String],
    ) -> Result<Option<(Arc<PreparedRows>, u64)>> {
        let end = final_end(now_nanos, first_open);
        let starts: Vec<u64> = windows
            .iter()
            .filter(|w| !w.is_minute_exact())
            .map(|w| *w.minute_range(now_nanos).start())
            .filter(|start| *start < end)
            .collect();
        if starts.is_empty() {
            return Ok(None);
        }
        let kept = self.final_hours.lock().clone();
        if let Some(kept) = kept.clone().filter(|k| k.covers(&starts, end)) {
            let (born, births) = {
                let state = lock(&sessions.state);
                (state.born_since(kept.births), state.births())
            };
            if born.is_empty() {
                return Ok(Some((kept.rows.clone(), kept.births)));
            }
            // Checked up to `births` from now on, so the next check walks only newer series.
            let reborn: HashSet<SeriesKey> =
                born.into_iter().filter(|k| kept.rows.contains(k)).collect();
            let rows = if reborn.is_empty() {
                kept.rows.clone()
            } else {
                Arc::new(kept.rows.without(&reborn))
            };
            *self.final_hours.lock() = Some(Arc::new(FinalHours {
                end,
                starts,
                births,
                rows: rows.clone(),
                advanced: kept.advanced,
            }));
            return Ok(Some((rows, births)));
        }
        let held_from = lock(&sessions.state).first_hour_held(now_nanos);
        // With the store, hours memory no longer holds are read from it.
        let readable_from = if sessions.history.is_some() {
            0
        } else {
            held_from
        };
        if let Some(kept) = kept.filter(|k| k.can_advance_to(&starts, end, readable_from)) {
            match self
                .advance(sessions, &kept, &starts, end, held_from, dimensions)
                .await
            {
                Ok(moved) => {
                    let (rows, births) = (moved.rows.clone(), moved.births);
                    *self.final_hours.lock() = Some(Arc::new(moved));
                    return Ok(Some((rows, births)));
                }
                // A bug (a subtraction below zero), the state or the deadline: the rows merged
                // anew are right either way.
                Err(e) => tracing::warn!(
                    error = %e,
                    "Cannot move the kept final hours on; merging them anew."
                ),
            }
        }
        let ctx = sessions.context_with(
            sessions.internal.clone(),
            now_nanos,
            sessions.history.clone(),
            None,
        );
        let keys = 2 + dimensions.len();
        let (births, threshold_columns) = {
            let state = lock(&sessions.state);
            (state.births(), state.threshold_columns().to_vec())
        };
        let dims = dimensions.to_vec();
        let plan_starts = starts.clone();
        let rows = sessions
            .run(
                sessions.internal_runtime.as_ref(),
                async move {
                    let df = final_hours_plan(&ctx, &plan_starts, &dims, end).await?;
                    let batches = df.collect().await.map_err(classify)?;
                    let series = kept_series(&batches, keys, &plan_starts);
                    Ok(Arc::new(PreparedRows::new(dims, threshold_columns, series)))
                },
                sessions.config.timeout,
                Cancel::default(),
            )
            .await?;
        *self.final_hours.lock() = Some(Arc::new(FinalHours {
            end,
            starts,
            births,
            rows: rows.clone(),
            advanced: false,
        }));
        Ok(Some((rows, births)))
    }

    /// `kept` moved on to `starts` and `end` (see [`FinalHours::can_advance_to`]): per series
    /// and window, the kept row with the hours its window's start left behind taken away and
    /// the hours become final added, by exact arithmetic on the counts. The hour rows memory
    /// holds (from `held_from` on) are read in one short hold of the state lock, older ones
    /// left behind from the store before it (they no longer change); series gone since are
    /// dropped, series created since `kept.births` (forgotten at the cap and back: their old
    /// rows went) keep only their new hours, and the rows are checked up to the births at that
    /// hold.
    async fn advance(
        &self,
        sessions: &Sessions,
        kept: &Arc<FinalHours>,
        starts: &[u64],
        end: u64,
        held_from: u64,
        dimensions: &[String],
    ) -> Result<FinalHours> {
        let mut stored = Vec::with_capacity(starts.len());
        for (&old, &new) in kept.starts.iter().zip(starts) {
            let hours = old..new.min(held_from);
            stored.push(match &sessions.history {
                Some(history) if !hours.is_empty() => {
                    self.stored_hour_rows(sessions, history, hours, dimensions)
                        .await?
                }
                _ => HourRows::default(),
            });
        }
        let (births, born, live, threshold_columns, removed, added) = {
            let mut state = lock(&sessions.state);
            let keys = state.series_keys();
            let mut read = |hours: std::ops::Range<u64>| -> Result<HourRows> {
                let mut rows = HourRows::default();
                if !hours.is_empty() {
                    let range = hours.start..=hours.end - 1;
                    // Without a row budget, and `rows` never stops the visit.
                    let _ = state.visit_rows(Table::Hours, range, &keys, usize::MAX, &mut rows)?;
                }
                Ok(rows)
            };
            // Per window, only the hours its start left behind.
            let removed = (kept.starts.iter().zip(starts).zip(stored))
                .map(|((&old, &new), mut rows)| {
                    rows.extend(read(old.max(held_from)..new)?);
                    Ok(rows)
                })
                .collect::<Result<Vec<_>>>()?;
            let added = read(kept.end..end)?;
            // Memory lets hours go only below an earlier split, so this takes a move that
            // waited over a minute since `held_from` was read: then the rows are merged anew.
            if state.hours_released_before() > held_from {
                return Err(Error::QueryInternal(
                    "memory let hours go while the kept hours were moved on".into(),
                ));
            }
            (
                state.births(),
                state.born_since(kept.births),
                keys,
                state.threshold_columns().to_vec(),
                removed,
                added,
            )
        };
        let (kept, starts, dims) = (kept.clone(), starts.to_vec(), dimensions.to_vec());
        let threads = sessions.target_partitions;
        sessions
            .run(
                sessions.internal_runtime.as_ref(),
                async move {
                    let moved = Arc::new(Moved {
                        live,
                        reborn: born.into_iter().collect(),
                        removed,
                        added,
                    });
                    // The series split in one run per query thread.
                    let chunk = moved.live.len().div_ceil(threads).max(1);
                    let mut tasks = tokio::task::JoinSet::new();
                    for (part, from) in (0..moved.live.len()).step_by(chunk).enumerate() {
                        let (moved, kept, starts) = (moved.clone(), kept.clone(), starts.clone());
                        let to = (from + chunk).min(moved.live.len());
                        tasks.spawn(async move {
                            let series = moved.series(&moved.live[from..to], &kept, &starts);
                            series.map(|s| (part, s))
                        });
                    }
                    let mut parts = Vec::new();
                    while let Some(done) = tasks.join_next().await {
                        parts.push(done.map_err(|e| {
                            Error::QueryInternal(format!("moving the kept hours on failed: {e}"))
                        })??);
                    }
                    parts.sort_unstable_by_key(|(part, _)| *part);
                    let series = parts.into_iter().flat_map(|(_, s)| s).collect();
                    Ok(FinalHours {
                        end,
                        starts,
                        births,
                        rows: Arc::new(PreparedRows::new(dims, threshold_columns, series)),
                        advanced: true,
                    })
                },
                sessions.config.timeout,
                Cancel::default(),
            )
            .await
    }

    /// The rows of `hours` (before what memory holds) per series, from the store's hour files.
    async fn stored_hour_rows(
        &self,
        sessions: &Sessions,
        history: &Arc<History>,
        hours: std::ops::Range<u64>,
        dimensions: &[String],
    ) -> Result<HourRows> {
        let now = lock(&sessions.state).clock().now_nanos();
        let ctx =
            sessions.context_with(sessions.internal.clone(), now, Some(history.clone()), None);
        let mut columns = key_columns(dimensions);
        columns.extend([col("hour"), col("hdr")]);
        let keys = 2 + dimensions.len();
        sessions
            .run(
                sessions.internal_runtime.as_ref(),
                async move {
                    let batches = hour_rows(&ctx, hours, columns)
                        .await?
                        .collect()
                        .await
                        .map_err(classify)?;
                    HourRows::from_batches(&batches, keys)
                },
                sessions.config.timeout,
                Cancel::default(),
            )
            .await
    }
}

impl WindowPlanner {
    /// Hands `sink` the counts of every hour row of `hours` (minute indexes, whole hours),
    /// memory's and the store's alike, as the rows stream from one scan of `latency_hours`
    /// (no grouping: a series' hour may come as more than one row, to be added up), and gives
    /// `sink` back. What the SLO evaluation reads the final hours of 30 days with after a
    /// start (720 hours at the series cap: 7.2 million rows), where one span per hour would be
    /// an aggregate per hour.
    pub async fn hour_sums<S: HourSink>(
        &self,
        sessions: &Sessions,
        hours: std::ops::Range<u64>,
        sink: S,
    ) -> Result<S> {
        let HourSums(sink) = self
            .rollup_rows(sessions, Table::Hours, hours, false, HourSums(sink))
            .await?;
        Ok(sink)
    }

    /// Hands `sink` every row of `table` (`Minutes` or `Hours`) whose minute or hour starts in
    /// `range` (minute indexes), memory's and the store's alike, as they stream from one scan
    /// (a series' minute or hour may come as more than one row), with their V2 encodings when
    /// `hdr` (and their bucket counts and sum if the sink [wants them](RollupSink::wants_buckets));
    /// gives `sink` back.
    pub async fn rollup_rows<S: RollupSink>(
        &self,
        sessions: &Sessions,
        table: Table,
        range: std::ops::Range<u64>,
        hdr: bool,
        mut sink: S,
    ) -> Result<S> {
        if range.is_empty() {
            return Ok(sink);
        }
        let (now, dimensions, threshold_columns) = {
            let state = lock(&sessions.state);
            (
                state.clock().now_nanos(),
                state.dimension_labels().to_vec(),
                state.threshold_columns().to_vec(),
            )
        };
        let ctx = sessions.context_with(
            sessions.internal.clone(),
            now,
            sessions.history.clone(),
            None,
        );
        let keys = 2 + dimensions.len();
        let time = crate::store::rollup::time_column(table);
        let mut columns = key_columns(&dimensions);
        columns.push(col(time));
        columns.extend(
            ["requests", "errors", "recommendations"]
                .into_iter()
                .chain(threshold_columns.iter().map(String::as_str))
                .map(col),
        );
        let buckets = hdr && sink.wants_buckets();
        if hdr {
            columns.push(col("hdr"));
        }
        if buckets {
            columns.extend(
                bucket_columns()
                    .iter()
                    .chain(["latency_sum_nanos".to_owned()].iter())
                    .map(|c| col(c.as_str())),
            );
        }
        let thresholds = threshold_columns.len();
        sessions
            .run(
                sessions.internal_runtime.as_ref(),
                async move {
                    let range = col(time)
                        .gt_eq(minute_lit(range.start))
                        .and(col(time).lt(minute_lit(range.end)));
                    let mut stream = ctx
                        .table(table_name(table))
                        .await
                        .and_then(|df| df.filter(range))
                        .and_then(|df| df.select(columns))
                        .map_err(classify)?
                        .execute_stream()
                        .await
                        .map_err(classify)?;
                    while let Some(batch) = stream.next().await {
                        let batch = batch.map_err(classify)?;
                        rollup_batch_rows(&batch, keys, thresholds, (hdr, buckets), &mut sink)?;
                    }
                    Ok(sink)
                },
                sessions.config.timeout,
                Cancel::default(),
            )
            .await
    }
}

/// Takes the hour rows of [`WindowPlanner::hour_sums`], one at a time.
pub trait HourSink: Send + 'static {
    /// One hour row of `key`: the hour's first minute, and its counts (requests, errors,
    /// recommendations, and `requests_le_*` in the aggregator's threshold order).
    fn add(&mut self, key: &SeriesKey, hour: u64, counts: &RowCounts);
}

/// Takes the rows of [`WindowPlanner::rollup_rows`], one at a time.
pub trait RollupSink: Send + 'static {
    /// One row of `key`: the first minute of its minute or hour, its counts (`requests_le_*` in
    /// the aggregator's threshold order) and its V2 encoding (empty unless asked for). The
    /// bucket counts and sum are zero unless [`RollupSink::wants_buckets`]; then a row of a
    /// format 1 file has them taken from its encoding, and says so ([`RowCounts::legacy`]).
    fn add(&mut self, key: &SeriesKey, at: u64, counts: &RowCounts, hdr: &[u8]);

    /// Whether the rows' bucket counts and sum are wanted (read with the encoding).
    fn wants_buckets(&self) -> bool {
        false
    }
}

/// An [`HourSink`] as a [`RollupSink`].
struct HourSums<S>(S);

impl<S: HourSink> RollupSink for HourSums<S> {
    fn add(&mut self, key: &SeriesKey, at: u64, counts: &RowCounts, _hdr: &[u8]) {
        self.0.add(key, at, counts);
    }
}

/// Hands the rows of a `SELECT keys, time, requests, errors, recommendations,
/// requests_le_*… [, hdr [, latency_le_*…, latency_sum_nanos]]` batch to `sink`.
fn rollup_batch_rows(
    batch: &RecordBatch,
    keys: usize,
    thresholds: usize,
    (hdr, buckets): (bool, bool),
    sink: &mut impl RollupSink,
) -> Result<()> {
    let times = batch
        .column(keys)
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| Error::QueryInternal("the time column is not a timestamp".into()))?;
    let counts = (keys + 1..keys + 4 + thresholds)
        .map(|i| {
            batch
                .column(i)
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| Error::QueryInternal("a count column is not UInt64".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let blobs = if hdr {
        Some(
            batch
                .column(keys + 4 + thresholds)
                .as_binary_opt::<i32>()
                .ok_or_else(|| Error::QueryInternal("the hdr column is not binary".into()))?,
        )
    } else {
        None
    };
    let exact = if buckets {
        Some(
            ExactColumns::of(batch, "latency rows")
                .map_err(|e| Error::QueryInternal(e.to_string()))?,
        )
    } else {
        None
    };
    let mut scratch = Counts::new();
    let value = |c: usize, row: usize| {
        if counts[c].is_null(row) {
            0
        } else {
            counts[c].value(row)
        }
    };
    let strings: Vec<_> = (0..keys)
        .map(|i| batch.column(i).as_string::<i32>())
        .collect();
    // Rows come grouped by series (memory's and each file's): a key is made once per run of
    // rows, not per row.
    let mut current: Option<SeriesKey> = None;
    for row in 0..batch.num_rows() {
        let key = match current.take() {
            Some(k)
                if *k.service == *strings[0].value(row)
                    && *k.endpoint == *strings[1].value(row)
                    && k.dimensions
                        .iter()
                        .zip(&strings[2..])
                        .all(|(d, s)| **d == *s.value(row)) =>
            {
                current.insert(k)
            }
            _ => current.insert(SeriesKey {
                service: strings[0].value(row).into(),
                endpoint: strings[1].value(row).into(),
                dimensions: strings[2..].iter().map(|s| s.value(row).into()).collect(),
            }),
        };
        let at = u64::try_from(times.value(row))
            .map_err(|_| Error::QueryInternal("a rollup row starts before 1970".into()))?
            / MINUTE_NANOS;
        let mut sums = RowCounts {
            requests: value(0, row),
            errors: value(1, row),
            recommendations: value(2, row),
            ..RowCounts::default()
        };
        for (t, le) in sums.le.iter_mut().take(thresholds).enumerate() {
            *le = value(3 + t, row);
        }
        let blob = match blobs {
            Some(b) if !b.is_null(row) => b.value(row),
            _ => &[],
        };
        if let Some(exact) = &exact {
            exact.fill(row, &mut sums);
            if sums.legacy {
                legacy_exact(&mut sums, blob, &mut scratch);
            }
        }
        sink.add(key, at, &sums, blob);
    }
    Ok(())
}

/// The `columns` of `latency_hours`' rows of `hours` (minute indexes), memory's and the
/// store's alike.
async fn hour_rows(
    ctx: &SessionContext,
    hours: std::ops::Range<u64>,
    columns: Vec<Expr>,
) -> Result<datafusion::dataframe::DataFrame> {
    let range = col("hour")
        .gt_eq(minute_lit(hours.start))
        .and(col("hour").lt(minute_lit(hours.end)));
    ctx.table(table_name(Table::Hours))
        .await
        .and_then(|df| df.filter(range))
        .and_then(|df| df.select(columns))
        .map_err(classify)
}

/// Hour rows per series, as `Aggregator::visit_rows` hands them over, or as read from the store.
#[derive(Debug, Default)]
struct HourRows {
    rows: HashMap<SeriesKey, Vec<(u64, Bytes)>>,
    current: Option<SeriesKey>,
}

impl HourRows {
    fn of(&self, key: &SeriesKey) -> &[(u64, Bytes)] {
        self.rows.get(key).map_or(&[], Vec::as_slice)
    }

    fn extend(&mut self, other: HourRows) {
        for (key, rows) in other.rows {
            self.rows.entry(key).or_default().extend(rows);
        }
    }

    /// The rows of `SELECT keys, hour, hdr` batches (`keys` key columns first).
    fn from_batches(batches: &[RecordBatch], keys: usize) -> Result<Self> {
        let mut out = Self::default();
        for batch in batches {
            let hours = batch
                .column(keys)
                .as_primitive_opt::<TimestampNanosecondType>()
                .ok_or_else(|| Error::QueryInternal("the hour column is not a timestamp".into()))?;
            let blobs = batch
                .column(keys + 1)
                .as_binary_opt::<i32>()
                .ok_or_else(|| Error::QueryInternal("the hdr column is not binary".into()))?;
            for (i, key) in series_keys(batch, keys).into_iter().enumerate() {
                let hour = u64::try_from(hours.value(i)).map_err(|_| {
                    Error::QueryInternal("a stored hour row starts before 1970".into())
                })? / MINUTE_NANOS;
                let hdr = Bytes::copy_from_slice(blobs.value(i));
                out.rows.entry(key).or_default().push((hour, hdr));
            }
        }
        Ok(out)
    }
}

impl RowVisitor for HourRows {
    fn series(&mut self, key: &SeriesKey, _: Source) -> ControlFlow<()> {
        self.current = Some(key.clone());
        ControlFlow::Continue(())
    }

    fn row(&mut self, at: u64, row: &Row) -> ControlFlow<()> {
        if let Some(key) = &self.current {
            let rows = self.rows.entry(key.clone()).or_default();
            rows.push((at, row.hdr.clone()));
        }
        ControlFlow::Continue(())
    }
}

/// What moving kept rows on reads from the state, in one hold of its lock.
struct Moved {
    /// Every series held.
    live: Vec<SeriesKey>,
    /// Series created since the kept rows were checked: their kept rows are old.
    reborn: HashSet<SeriesKey>,
    /// Per window, the hours its start left behind.
    removed: Vec<HourRows>,
    /// The hours become final.
    added: HourRows,
}

impl Moved {
    /// The rows of `kept` moved on to `starts`: for each of `live` and each window, the kept row
    /// (unless the series is reborn) minus the window's rows `removed`, plus the rows `added`
    /// from its new start on; a row with nothing to take away or add is kept as it is. A window
    /// left with nothing counted gets no row.
    fn series(
        &self,
        live: &[SeriesKey],
        kept: &FinalHours,
        starts: &[u64],
    ) -> Result<Vec<PreparedSeries>> {
        let (mut counts, mut minus) = (Counts::new(), Counts::new());
        let mut out = Vec::new();
        for key in live {
            let old = kept.rows.get(key).filter(|_| !self.reborn.contains(key));
            let mut rows = Vec::new();
            for (i, (&start, &old_start)) in starts.iter().zip(&kept.starts).enumerate() {
                let old_row = old.into_iter().flatten().find(|(at, _)| *at == old_start);
                let left = self.removed[i].of(key);
                let left = left.iter().filter(|(h, _)| (old_start..start).contains(h));
                let new = self.added.of(key).iter().filter(|(h, _)| *h >= start);
                if let Some((_, row)) = old_row
                    && left.clone().next().is_none()
                    && new.clone().next().is_none()
                {
                    rows.push((start, row.clone()));
                    continue;
                }
                counts.reset();
                if let Some((_, row)) = old_row {
                    counts.add_encoded(&row.hdr)?;
                    for (_, hdr) in left {
                        minus.reset();
                        minus.add_encoded(hdr)?;
                        counts.subtract(&minus)?;
                    }
                }
                for (_, hdr) in new {
                    counts.add_encoded(hdr)?;
                }
                if counts.total() > 0 {
                    let hdr = Bytes::from(counts.encode());
                    let counts = RowCounts::default();
                    rows.push((start, Row { counts, hdr }));
                }
            }
            if !rows.is_empty() {
                out.push((key.clone(), Source::default(), rows));
            }
        }
        Ok(out)
    }
}

/// The rows of the final hours query (keys, then one merged column per window of `starts`) as
/// kept rows: per series, one row per window at the window's first hour. Only the histogram is
/// read from them.
fn kept_series(batches: &[RecordBatch], keys: usize, starts: &[u64]) -> Vec<PreparedSeries> {
    let mut series = Vec::new();
    for batch in batches {
        for (row, key) in series_keys(batch, keys).into_iter().enumerate() {
            let merged = starts
                .iter()
                .enumerate()
                .filter_map(|(i, &start)| {
                    let blobs = batch.column(keys + i).as_binary::<i32>();
                    (!blobs.is_null(row)).then(|| {
                        let hdr = Bytes::copy_from_slice(blobs.value(row));
                        let counts = RowCounts::default();
                        (start, Row { counts, hdr })
                    })
                })
                .collect();
            series.push((key, Source::default(), merged));
        }
    }
    series
}

/// `SELECT keys, hdr_merge(hdr) FILTER (WHERE hour >= start) … FROM latency_hours WHERE hour <
/// end GROUP BY keys`: each window's final hours merged per series.
async fn final_hours_plan(
    ctx: &SessionContext,
    starts: &[u64],
    dimensions: &[String],
    end: u64,
) -> Result<datafusion::dataframe::DataFrame> {
    let keys = key_columns(dimensions);
    let first = starts.iter().copied().min().unwrap_or(end);
    let merge = functions::hdr_merge();
    let aggregates = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            merge
                .call(vec![col("hdr")])
                .filter(col("hour").gt_eq(minute_lit(start)))
                .build()
                .map(|e| e.alias(format!("w{i}")))
                .map_err(classify)
        })
        .collect::<Result<Vec<_>>>()?;
    ctx.table(table_name(Table::Hours))
        .await
        .and_then(|df| {
            df.filter(
                col("hour")
                    .gt_eq(minute_lit(first))
                    .and(col("hour").lt(minute_lit(end))),
            )
        })
        .and_then(|df| df.aggregate(keys, aggregates))
        .map_err(classify)
}

/// The series key columns: service, endpoint and the extra dimensions.
fn key_columns(dimensions: &[String]) -> Vec<Expr> {
    let mut keys = vec![col("service"), col("endpoint")];
    keys.extend(dimensions.iter().map(|d| col(d.as_str())));
    keys
}

/// The first nanosecond of `minute` as a timestamp literal in recmeter's time zone.
fn minute_lit(minute: u64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some((minute * MINUTE_NANOS) as i64),
        Some(Arc::from(TIME_ZONE)),
    ))
}

/// A run of rows a window query merges once per series: the rows of one part of the union
/// whose time lies in `from..to` (minute indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Segment {
    part: i32,
    from: u64,
    to: u64,
}

impl Segment {
    /// Whether `s` lies within this run of rows.
    fn holds(&self, s: &Segment) -> bool {
        self.part == s.part && self.from <= s.from && s.to <= self.to
    }
}

// What a row of a window query's union is (its `part` column): a minute row, an hour row, a
// kept row of merged final hours, or a block row.
const MINUTE: i32 = 0;
const HOUR: i32 = 1;
const MERGED: i32 = 2;
const BLOCK: i32 = 3;

/// The runs of rows each of `windows` merges at `now_nanos`, by DESIGN's window rule, as
/// (part, from, to). A minute-exact window merges its minutes through the open minute: those
/// before its first whole block as minutes, the rest as blocks (the open block holds its sealed
/// minutes as one row). A window starting in the open block merges minutes only. Longer windows
/// merge the whole hours before the current one and the current hour's blocks, and, with
/// `final_end`, their kept final hours (a row per series at the window's first hour) before that
/// instead of the hours. Block runs end after the open minute: a blocks read takes the open
/// block's minutes through it only, so a read the clock's next minute overtakes stays exact.
fn window_runs(windows: &[Window], now_nanos: u64, final_end: Option<u64>) -> Vec<Vec<Segment>> {
    let open = now_nanos / MINUTE_NANOS;
    let current_hour = open - open % 60;
    let run = |part, from, to| Segment { part, from, to };
    windows
        .iter()
        .map(|w| {
            let start = *w.minute_range(now_nanos).start();
            if w.is_minute_exact() {
                let first_block = start.next_multiple_of(BLOCK_MINUTES);
                if first_block > open {
                    return vec![run(MINUTE, start, open + 1)];
                }
                let mut runs = vec![run(BLOCK, first_block, open + 1)];
                if start < first_block {
                    runs.push(run(MINUTE, start, first_block));
                }
                return runs;
            }
            let mut runs = vec![run(BLOCK, current_hour, open + 1)];
            let merged = final_end.filter(|end| start < *end);
            let hours_from = merged.unwrap_or(start);
            if hours_from < current_hour {
                runs.push(run(HOUR, hours_from, current_hour));
            }
            if merged.is_some() {
                runs.push(run(MERGED, start, start + 1));
            }
            runs
        })
        .collect()
}

/// The segments of `runs` (per span, the runs of rows it merges: see [`window_runs`] and
/// [`range_runs`]), and, per span, the segments it merges. The segments split each part's rows
/// at every span's boundaries, so each row lies in one segment, however many spans hold it.
fn segments(runs: &[Vec<Segment>]) -> (Vec<Segment>, Vec<Vec<usize>>) {
    let covered = |s: &Segment| runs.iter().flatten().any(|r| r.holds(s));
    let mut segments = Vec::new();
    for part in [MINUTE, HOUR, MERGED, BLOCK] {
        let mut cuts: Vec<u64> = runs
            .iter()
            .flatten()
            .filter(|r| r.part == part)
            .flat_map(|r| [r.from, r.to])
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        segments.extend(
            cuts.windows(2)
                .map(|c| Segment {
                    part,
                    from: c[0],
                    to: c[1],
                })
                .filter(|s| covered(s)),
        );
    }
    let held = runs
        .iter()
        .map(|runs| {
            (0..segments.len())
                .filter(|&i| runs.iter().any(|r| r.holds(&segments[i])))
                .collect()
        })
        .collect();
    (segments, held)
}

/// The reads of `segments`: adjacent segments of a part are read together.
fn reads(segments: &[Segment]) -> Vec<Segment> {
    let mut reads: Vec<Segment> = Vec::new();
    for s in segments {
        match reads.last_mut() {
            Some(r) if r.part == s.part && r.to == s.from => r.to = s.to,
            _ => reads.push(*s),
        }
    }
    reads
}

/// Series whose rows one hold of the state lock visits in [`sum_in_memory`].
const SUM_CHUNK: usize = 1024;

/// Per series, the counts of each span of `runs`, all of them minute and block rows memory
/// holds: each read of [`segments`] visits memory's rows (as the rollup tables' scans do, the
/// open minute and late values included, but with no histogram encoded and no batch built),
/// adding each row's counts into its segment, [`SUM_CHUNK`] series per hold of the state lock;
/// then each span adds up its segments. What `counts` without quantiles gives, at a fraction of
/// the cost of a plan: an SLO evaluation every 30 s at the series cap.
async fn sum_in_memory(
    sessions: &Sessions,
    runs: Vec<Vec<Segment>>,
) -> Result<HashMap<SeriesKey, Vec<Option<Merged>>>> {
    let state = sessions.state.clone();
    sessions
        .run(
            sessions.internal_runtime.as_ref(),
            async move {
                let (segments, held) = segments(&runs);
                let reads = reads(&segments);
                let keys = lock(&state).series_keys();
                let mut sums = SegmentSums {
                    segments: &segments,
                    first: 0,
                    part: &[],
                    sums: HashMap::new(),
                    current: None,
                };
                for chunk in keys.chunks(SUM_CHUNK) {
                    let mut guard = lock(&state);
                    for read in &reads {
                        let table = if read.part == MINUTE {
                            Table::Minutes
                        } else {
                            Table::Blocks
                        };
                        let first =
                            segments.partition_point(|s| (s.part, s.from) < (read.part, read.from));
                        let last =
                            segments.partition_point(|s| (s.part, s.from) < (read.part, read.to));
                        sums.first = first;
                        sums.part = &segments[first..last];
                        let visited = guard.visit_rows(
                            table,
                            read.from..=read.to - 1,
                            chunk,
                            usize::MAX,
                            &mut sums,
                        );
                        sums.flush();
                        // The visitor never stops a visit.
                        let _ = visited?;
                    }
                    parking_lot::MutexGuard::unlock_fair(guard);
                }
                Ok(sums
                    .sums
                    .into_iter()
                    .filter_map(|(key, per_segment)| {
                        let spans: Vec<Option<Merged>> = held
                            .iter()
                            .map(|held| {
                                let mut total = RowCounts::default();
                                for &i in held {
                                    total.add(&per_segment[i]);
                                }
                                (total != RowCounts::default()).then_some(Merged {
                                    total: 0,
                                    quantiles: None,
                                    sums: Some(total),
                                })
                            })
                            .collect();
                        spans.iter().any(Option::is_some).then_some((key, spans))
                    })
                    .collect())
            },
            sessions.config.timeout,
            Cancel::default(),
        )
        .await
}

/// Adds the rows one read of [`sum_in_memory`] visits into their segments' counts, per series.
struct SegmentSums<'a> {
    segments: &'a [Segment],
    /// The segments of the read being visited (sorted, of one part), from `segments[first]`.
    first: usize,
    part: &'a [Segment],
    /// Per series, per segment of `segments`.
    sums: HashMap<SeriesKey, Vec<RowCounts>>,
    /// The series being visited, with its rows' counts per segment of `part` so far.
    current: Option<(SeriesKey, Vec<RowCounts>)>,
}

impl SegmentSums<'_> {
    /// Adds the series being visited into `sums`.
    fn flush(&mut self) {
        if let Some((key, counts)) = self.current.take() {
            let all = self
                .sums
                .entry(key)
                .or_insert_with(|| vec![RowCounts::default(); self.segments.len()]);
            for (i, c) in counts.iter().enumerate() {
                all[self.first + i].add(c);
            }
        }
    }
}

impl RowVisitor for SegmentSums<'_> {
    fn series(&mut self, key: &SeriesKey, _: Source) -> ControlFlow<()> {
        self.flush();
        self.current = Some((key.clone(), vec![RowCounts::default(); self.part.len()]));
        ControlFlow::Continue(())
    }

    fn row(&mut self, at: u64, row: &Row) -> ControlFlow<()> {
        if let Some((_, counts)) = &mut self.current {
            let i = self.part.partition_point(|s| s.to <= at);
            if let Some(segment) = self.part.get(i)
                && segment.from <= at
            {
                counts[i].add(&row.counts);
            }
        }
        ControlFlow::Continue(())
    }

    fn wants_hdr(&self) -> bool {
        false
    }
}

/// The plan of `runs` (per span, the runs of rows it merges): `SELECT keys, hdr_merge(hdr)
/// FILTER (WHERE …) … GROUP BY keys` over one union of rows, a column per [`segments`] segment
/// (with `thresholds`, the `requests_le_*` column names, also `sum(requests)`, `sum(errors)`,
/// `sum(recommendations)` and each `sum(requests_le_*)` per segment), and the segments each
/// span merges. Each run of adjacent segments is one scan. Kept final hours (`MERGED` runs) come
/// from the session's `final_hours` table. Each row is read and merged once (the open minute's
/// rows twice when spans read it both as minutes and in its block), and the aggregation by
/// series is one stage over the hash-partitioned scans.
async fn window_plan(
    ctx: &SessionContext,
    runs: &[Vec<Segment>],
    dimensions: &[String],
    hdr: bool,
    thresholds: Option<&[String]>,
) -> Result<(datafusion::dataframe::DataFrame, Vec<Vec<usize>>)> {
    let (segments, held) = segments(runs);
    let keys = key_columns(dimensions);
    let mut counted = vec!["requests", "errors", "recommendations"];
    counted.extend(thresholds.unwrap_or(&[]).iter().map(String::as_str));
    let counted = if thresholds.is_some() {
        counted
    } else {
        Vec::new()
    };
    let mut union: Option<datafusion::dataframe::DataFrame> = None;
    for read in reads(&segments) {
        let (name, column) = match read.part {
            MINUTE => (table_name(Table::Minutes), "minute"),
            HOUR => (table_name(Table::Hours), "hour"),
            BLOCK => (table_name(Table::Blocks), "minute"),
            _ => (FINAL_HOURS, "hour"),
        };
        let mut columns = keys.clone();
        columns.push(col(column).alias("t"));
        if hdr {
            columns.push(col("hdr"));
        }
        columns.extend(counted.iter().map(|c| col(*c)));
        columns.push(lit(read.part).alias("part"));
        let df = ctx
            .table(name)
            .await
            .and_then(|df| {
                df.filter(
                    col(column)
                        .gt_eq(minute_lit(read.from))
                        .and(col(column).lt(minute_lit(read.to))),
                )?
                .select(columns)
            })
            .map_err(classify)?;
        union = Some(match union {
            Some(u) => u.union(df).map_err(classify)?,
            None => df,
        });
    }
    let Some(df) = union else {
        return Err(Error::QueryInternal("a window query without spans".into()));
    };
    let merge = functions::hdr_merge();
    let mut aggregates = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let rows = col("part").eq(lit(s.part)).and(
            col("t")
                .gt_eq(minute_lit(s.from))
                .and(col("t").lt(minute_lit(s.to))),
        );
        if hdr {
            aggregates.push(
                merge
                    .call(vec![col("hdr")])
                    .filter(rows.clone())
                    .build()
                    .map(|e| e.alias(format!("__segment_{i}")))
                    .map_err(classify)?,
            );
        }
        for c in &counted {
            aggregates.push(
                datafusion::functions_aggregate::sum::sum(col(*c))
                    .filter(rows.clone())
                    .build()
                    .map(|e| e.alias(format!("__segment_{i}_{c}")))
                    .map_err(classify)?,
            );
        }
    }
    let df = df.aggregate(keys, aggregates).map_err(classify)?;
    Ok((df, held))
}

#[cfg(test)]
mod tests;
