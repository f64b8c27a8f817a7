//! The query engine: one DataFusion session per query over the rollup tables, with recmeter's
//! functions and clock. Queries run on their own Tokio runtimes (one for `/api/v1/sql`, one for
//! recmeter's own `/metrics` queries), so a runaway query starves neither ingest nor scrapes; each has a deadline (`sql.timeout`), a memory pool without spilling
//! (`sql.memory_limit_bytes`) and a result-size limit. `/metrics` windows go through the same
//! tables and functions, in one query; each long window's final hours (which no span can reach
//! any more) are merged once with `hdr_merge` and kept between scrapes (ADR 008).

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{SchemaRef, TimestampNanosecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{Expr, SessionConfig, SessionContext, col, lit};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use tokio::runtime::Runtime;

use super::catalog::{Catalog, CatalogTable};
use super::functions::{self, TIME_ZONE};
use super::guard::{self, Cancel, CancelOnDrop};
use super::tables::{PreparedRows, PreparedSeries, RollupTable, table_name};
use crate::clock::MINUTE_NANOS;
use crate::config::SqlConfig;
use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::record::SeriesKey;
use crate::state::{
    BLOCK_MINUTES, Row, RowCounts, RowVisitor, SeriesSnapshot, SharedState, Snapshot, Source,
    Table, WindowQuantiles, lock,
};
use crate::store::history::History;
use crate::window::Window;
use bytes::Bytes;

/// A query's answer: its schema and record batches.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Runs SQL over the rollups.
pub struct QueryEngine {
    state: SharedState,
    config: SqlConfig,
    target_partitions: usize,
    /// The runtime of `/api/v1/sql` queries; taken out only to shut it down.
    runtime: Option<Runtime>,
    /// The runtime of recmeter's own queries (`/metrics`).
    internal_runtime: Option<Runtime>,
    /// For `/api/v1/sql`: the memory limit, no disk.
    limited: Arc<RuntimeEnv>,
    /// For recmeter's own queries (`/metrics`): no limit, no disk.
    internal: Arc<RuntimeEnv>,
    /// The long windows' final hours merged per series, kept between scrapes.
    final_hours: parking_lot::Mutex<Option<Arc<FinalHours>>>,
    /// Held while the final hours are checked, merged or moved on, so a scrape and
    /// [`QueryEngine::prepare`] at the same moment do the work once.
    merging: tokio::sync::Mutex<()>,
    /// The store's rollup files, for what memory no longer holds: SQL over history, and the
    /// hours of windows longer than memory's (ADR 012).
    history: Option<Arc<History>>,
    /// The tables every session serves.
    catalog: parking_lot::RwLock<Catalog>,
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
struct FinalHours {
    /// Hours starting before this minute are merged.
    end: u64,
    /// Each long window's first hour, in window order.
    starts: Vec<u64>,
    /// `Aggregator::births` when the rows were checked against the live series.
    births: u64,
    /// One row per series and window, at the window's first hour.
    rows: Arc<PreparedRows>,
    /// Whether the rows were moved on from earlier kept rows, not merged anew.
    advanced: bool,
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

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        // Dropping a runtime from async code would block; let its threads wind down instead.
        for runtime in [self.runtime.take(), self.internal_runtime.take()]
            .into_iter()
            .flatten()
        {
            runtime.shutdown_background();
        }
    }
}

impl QueryEngine {
    /// An engine over `state`, with its two runtimes of one thread per target partition.
    pub fn new(state: SharedState, config: &SqlConfig) -> Result<Self> {
        let target_partitions = match config.target_partitions {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        // The client runtime's threads plan and run queries as deep as the nesting limit
        // allows; recmeter's own queries are shallow.
        let runtime = |name: &str, stack: usize| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(target_partitions)
                .thread_name(name)
                .thread_stack_size(stack)
                .enable_all()
                .build()
                .map_err(|e| Error::QueryInternal(format!("cannot start the query runtime: {e}")))
        };
        let no_disk = || DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
        let limited = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit_bytes, 1.0)
            .with_disk_manager_builder(no_disk())
            .build_arc()
            .map_err(internal)?;
        let internal_env = RuntimeEnvBuilder::new()
            .with_disk_manager_builder(no_disk())
            .build_arc()
            .map_err(internal)?;
        Ok(Self {
            config: config.clone(),
            target_partitions,
            runtime: Some(runtime(
                "recmeter-sql",
                guard::stack_bytes(config.max_expression_depth),
            )?),
            internal_runtime: Some(runtime("recmeter-metrics", 8 << 20)?),
            limited,
            internal: internal_env,
            final_hours: parking_lot::Mutex::new(None),
            merging: tokio::sync::Mutex::new(()),
            history: None,
            catalog: parking_lot::RwLock::new(Catalog::with_rollups(&state)),
            state,
        })
    }

    /// Lets `latency_minutes` and `latency_hours` read what memory no longer holds from the
    /// store's files.
    pub fn with_history(mut self, history: Arc<History>) -> Self {
        self.history = Some(history);
        self
    }

    /// Whether the kept final hours were moved on rather than merged anew (`None`: none kept).
    #[cfg(test)]
    pub(crate) fn kept_hours_moved_on(&self) -> Option<bool> {
        self.final_hours.lock().as_ref().map(|k| k.advanced)
    }

    /// A session for a client's query: the rollup tables, recmeter's functions, `now()` at the
    /// clock's now, the value-size bound on string functions, and `cancel` checked above every
    /// operator.
    pub fn context(&self, cancel: &Cancel) -> SessionContext {
        let now = lock(&self.state).clock().now_nanos();
        self.context_with(
            self.limited.clone(),
            now,
            self.history.clone(),
            Some(cancel),
        )
    }

    fn context_with(
        &self,
        env: Arc<RuntimeEnv>,
        now: u64,
        history: Option<Arc<History>>,
        cancel: Option<&Cancel>,
    ) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(self.target_partitions)
            .with_information_schema(true);
        config.options_mut().execution.time_zone = Some(TIME_ZONE.to_owned());
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(env)
            .with_default_features();
        if let Some(cancel) = cancel {
            builder = builder.with_physical_optimizer_rule(cancel.rule());
        }
        let ctx = SessionContext::new_with_state(builder.build());
        functions::register(&ctx, now);
        if cancel.is_some() {
            functions::bound_values(&ctx, self.config.max_value_bytes);
        }
        for table in self.catalog.read().tables() {
            // Registering into a fresh session cannot collide (the catalog's names are unique).
            let _ = ctx.register_table(table.name(), table.provider(history.as_ref()));
        }
        ctx
    }

    /// Registers a table every later session serves (the catalog's built-in tables are
    /// `latency_minutes` and `latency_hours`).
    pub fn register_table(&self, table: Arc<dyn CatalogTable>) -> Result<()> {
        self.catalog.write().register(table)
    }

    /// A session for `/metrics` windows: the rollup tables (over the store too) and the
    /// blocks, on the internal runtime.
    fn metrics_context(&self, now: u64) -> SessionContext {
        let ctx = self.context_with(self.internal.clone(), now, self.history.clone(), None);
        let blocks = RollupTable::new(Table::Blocks, self.state.clone());
        // Registering into a fresh session cannot collide.
        let _ = ctx.register_table(table_name(Table::Blocks), Arc::new(blocks));
        ctx
    }

    /// Runs one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) to completion.
    ///
    /// The nesting limit is checked on the text first, so nothing recursive ever sees a query
    /// deeper than the query threads' stacks allow; parsing and planning then run on those
    /// threads. Cancelling (the deadline, or a client gone) stops its operators within a batch.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        guard::check_depth(sql, self.config.max_expression_depth)?;
        let cancel = Cancel::default();
        let ctx = self.context(&cancel);
        let sql = sql.to_owned();
        let max_bytes = self.config.max_result_bytes;
        let timeout = self.config.timeout;
        self.run(
            self.runtime.as_ref(),
            async move {
                // Parsed here, on a thread whose stack the nesting limit was sized for.
                check_read_only(&sql)?;
                let options = datafusion::execution::context::SQLOptions::new()
                    .with_allow_ddl(false)
                    .with_allow_dml(false)
                    .with_allow_statements(false);
                let df = ctx
                    .sql_with_options(&sql, options)
                    .await
                    .map_err(classify)?;
                let schema = Arc::new(df.schema().as_arrow().clone());
                let mut stream = df.execute_stream().await.map_err(classify)?;
                let mut batches = Vec::new();
                let mut bytes = 0usize;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(classify)?;
                    bytes += batch.get_array_memory_size();
                    if bytes > max_bytes {
                        return Err(Error::ResourcesExhausted(format!(
                            "the result is larger than {max_bytes} bytes (sql.max_result_bytes); \
                         aggregate or add a LIMIT"
                        )));
                    }
                    batches.push(batch);
                }
                Ok(QueryOutput { schema, batches })
            },
            timeout,
            cancel,
        )
        .await
    }

    /// Runs `work` on the query runtime under a deadline; dropping the returned future (a
    /// client that went away) cancels the query. Either way `cancel` is set, which stops the
    /// operators of a plan built with it even where they never wait.
    async fn run<T: Send + 'static>(
        &self,
        runtime: Option<&Runtime>,
        work: impl Future<Output = Result<T>> + Send + 'static,
        timeout: Duration,
        cancel: Cancel,
    ) -> Result<T> {
        let runtime =
            runtime.ok_or_else(|| Error::QueryInternal("the query runtime has stopped".into()))?;
        let _stop = CancelOnDrop(cancel.clone());
        let task = runtime.spawn(async move {
            let _stop = CancelOnDrop(cancel);
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or(Err(Error::QueryTimeout(timeout)))
        });
        let _abort = AbortOnDrop(task.abort_handle());
        task.await
            .map_err(|e| Error::QueryInternal(format!("query task failed: {e}")))?
    }

    /// Merges the final hours of the long windows among `windows` at the clock's reading, or
    /// moves the kept ones on, ahead of the next scrape of those windows (ADR 008). The service
    /// runs it before it reports ready and then every second, so a scrape finds them merged
    /// unless it comes within about a second of an hour becoming final or a window's first
    /// hour moving; then it waits for the one merge under way.
    pub async fn prepare(&self, windows: &[Window]) -> Result<()> {
        let windows = distinct(windows);
        let _merging = self.merging.lock().await;
        let (at, dimension_labels, first_open) = {
            let state = lock(&self.state);
            let at = state.clock().now_nanos();
            let labels = state.dimension_labels().to_vec();
            (at, labels, state.first_open_minute(at))
        };
        self.final_hours(&windows, at, first_open, &dimension_labels)
            .await
            .map(|_| ())
    }

    /// Counters of every series, and each of `windows` merged from the rollup tables with
    /// `hdr_merge`, by DESIGN's window rule: minute-exact windows from `latency_minutes` and
    /// the ten-minute blocks, longer ones as whole hours from `latency_hours` plus the current
    /// hour's blocks (see [`window_runs`]). Every window ends with the open minute at one clock
    /// reading, so future-stamped spans (within `ingest.max_future_skew`) wait for their minute.
    pub async fn snapshot(&self, windows: &[Window]) -> Result<Snapshot> {
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
                let state = lock(&self.state);
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
                    self.final_hours(&windows, at, first_open, &dimension_labels)
                        .await?
                }
                _ => None,
            };
            drop(merging);
            let ctx = self.metrics_context(at);
            if let Some((rows, _)) = &final_hours {
                let table = RollupTable::new(Table::Hours, rows.clone());
                // Registering into a fresh session cannot collide.
                let _ = ctx.register_table(FINAL_HOURS, Arc::new(table));
            }
            let end = final_hours.as_ref().map(|_| final_end(at, first_open));
            let (plan_windows, dimensions) = (windows.clone(), dimension_labels.clone());
            let per_series = self
                .run(
                    self.internal_runtime.as_ref(),
                    async move {
                        if plan_windows.is_empty() {
                            return Ok(HashMap::new());
                        }
                        let (df, held) =
                            window_plan(&ctx, &plan_windows, &dimensions, at, end).await?;
                        let keys = 2 + dimensions.len();
                        let merge = Arc::new(WindowMerge::new(plan_windows, held, keys));
                        // Each output partition's series are merged into windows on its own
                        // task, as its batches come.
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
                    self.config.timeout,
                    Cancel::default(),
                )
                .await?;
            let stale = final_hours.is_some_and(|(rows, births)| {
                lock(&self.state)
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
                let windows = per_series.remove(&c.key).unwrap_or_default();
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

/// Merges a window query's segment columns into each window's quantiles, per series.
struct WindowMerge {
    windows: Vec<Window>,
    /// Per window, the segments it merges.
    held: Vec<Vec<usize>>,
    /// Windows by how many segments they hold.
    order: Vec<usize>,
    /// Key columns before the segment columns.
    keys: usize,
}

/// What a [`WindowMerge`] task reuses from row to row: each segment's counts, and a window's.
struct MergeScratch {
    segments: Vec<Counts>,
    window: Counts,
}

impl WindowMerge {
    fn new(windows: Vec<Window>, held: Vec<Vec<usize>>, keys: usize) -> Self {
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&w| held[w].len());
        Self {
            windows,
            held,
            order,
            keys,
        }
    }

    fn scratch(&self) -> MergeScratch {
        let segments = self.held.iter().flatten().max().map_or(0, |m| m + 1);
        MergeScratch {
            segments: vec![Counts::new(); segments],
            window: Counts::new(),
        }
    }

    /// Adds each series of `batch` (keys, then one merged column per segment) to `out` with its
    /// windows' quantiles.
    fn add(
        &self,
        batch: &RecordBatch,
        scratch: &mut MergeScratch,
        out: &mut Vec<(SeriesKey, Vec<WindowQuantiles>)>,
    ) -> Result<()> {
        let MergeScratch { segments, window } = scratch;
        for (row, key) in series_keys(batch, self.keys).into_iter().enumerate() {
            // Each segment decoded once, then added into every window that holds it.
            for (i, segment) in segments.iter_mut().enumerate() {
                segment.reset();
                let blobs = batch.column(self.keys + i).as_binary::<i32>();
                if !blobs.is_null(row) {
                    segment.add_encoded(blobs.value(row))?;
                }
            }
            // Each window starts from the one before when it holds all of that one's
            // segments (1m within 5m when both read minutes), else from nothing.
            let mut quantiles = Vec::with_capacity(self.windows.len());
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
                quantiles.extend(WindowQuantiles::from_counts(self.windows[w], window));
            }
            quantiles.sort_by_key(|w| w.window);
            out.push((key, quantiles));
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

impl QueryEngine {
    /// The merged final hours of the long windows among `windows` at `now_nanos`, and the
    /// `Aggregator::births` they were checked at: the kept ones while they still cover them
    /// (without any series created since they were merged), else the kept ones moved on when
    /// that reads less (see [`FinalHours::can_advance_to`]), else merged anew from
    /// `latency_hours`; kept either way. `None` when no long window starts before the final hours end.
    /// Callers with long windows among `windows` hold `merging`.
    async fn final_hours(
        &self,
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
                let state = lock(&self.state);
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
        let held_from = lock(&self.state).first_hour_held(now_nanos);
        // With the store, hours memory no longer holds are read from it.
        let readable_from = if self.history.is_some() { 0 } else { held_from };
        if let Some(kept) = kept.filter(|k| k.can_advance_to(&starts, end, readable_from)) {
            match self
                .advance(&kept, &starts, end, held_from, dimensions)
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
        let ctx = self.context_with(self.internal.clone(), now_nanos, self.history.clone(), None);
        let keys = 2 + dimensions.len();
        let (births, threshold_columns) = {
            let state = lock(&self.state);
            (state.births(), state.threshold_columns().to_vec())
        };
        let dims = dimensions.to_vec();
        let plan_starts = starts.clone();
        let rows = self
            .run(
                self.internal_runtime.as_ref(),
                async move {
                    let df = final_hours_plan(&ctx, &plan_starts, &dims, end).await?;
                    let batches = df.collect().await.map_err(classify)?;
                    let series = kept_series(&batches, keys, &plan_starts);
                    Ok(Arc::new(PreparedRows::new(dims, threshold_columns, series)))
                },
                self.config.timeout,
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
        kept: &Arc<FinalHours>,
        starts: &[u64],
        end: u64,
        held_from: u64,
        dimensions: &[String],
    ) -> Result<FinalHours> {
        let mut stored = Vec::with_capacity(starts.len());
        for (&old, &new) in kept.starts.iter().zip(starts) {
            let hours = old..new.min(held_from);
            stored.push(match &self.history {
                Some(history) if !hours.is_empty() => {
                    self.stored_hour_rows(history, hours, dimensions).await?
                }
                _ => HourRows::default(),
            });
        }
        let (births, born, live, threshold_columns, removed, added) = {
            let mut state = lock(&self.state);
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
        let threads = self.target_partitions;
        self.run(
            self.internal_runtime.as_ref(),
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
            self.config.timeout,
            Cancel::default(),
        )
        .await
    }

    /// The rows of `hours` (before what memory holds) per series, from the store's hour files.
    async fn stored_hour_rows(
        &self,
        history: &Arc<History>,
        hours: std::ops::Range<u64>,
        dimensions: &[String],
    ) -> Result<HourRows> {
        let now = lock(&self.state).clock().now_nanos();
        let ctx = self.context_with(self.internal.clone(), now, Some(history.clone()), None);
        let mut columns = key_columns(dimensions);
        columns.extend([col("hour"), col("hdr")]);
        let keys = 2 + dimensions.len();
        self.run(
            self.internal_runtime.as_ref(),
            async move {
                let range = col("hour")
                    .gt_eq(minute_lit(hours.start))
                    .and(col("hour").lt(minute_lit(hours.end)));
                let batches = ctx
                    .table(table_name(Table::Hours))
                    .await
                    .and_then(|df| df.filter(range))
                    .and_then(|df| df.select(columns))
                    .map_err(classify)?
                    .collect()
                    .await
                    .map_err(classify)?;
                HourRows::from_batches(&batches, keys)
            },
            self.config.timeout,
            Cancel::default(),
        )
        .await
    }
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

/// The segments of `windows` at `now_nanos` (see [`window_runs`]), and, per window, the
/// segments it merges. The segments split each part's rows at every window's boundaries, so each
/// row lies in one segment, however many windows hold it.
fn segments(
    windows: &[Window],
    now_nanos: u64,
    final_end: Option<u64>,
) -> (Vec<Segment>, Vec<Vec<usize>>) {
    let runs = window_runs(windows, now_nanos, final_end);
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

/// The plan of `windows` at `now_nanos`: `SELECT keys, hdr_merge(hdr) FILTER (WHERE …) …
/// GROUP BY keys` over one union of rows, a column per [`segments`] segment, and the segments
/// each window merges. Each run of adjacent segments is one scan. With `final_end`, the
/// session's `final_hours` table holds the long windows' kept final hours, and only the hours
/// from `final_end` on are read from `latency_hours`. Each row is read and merged once (the open
/// minute's rows twice when windows read it both as minutes and in its block), and the
/// aggregation by series is one stage over the hash-partitioned scans.
async fn window_plan(
    ctx: &SessionContext,
    windows: &[Window],
    dimensions: &[String],
    now_nanos: u64,
    final_end: Option<u64>,
) -> Result<(datafusion::dataframe::DataFrame, Vec<Vec<usize>>)> {
    let (segments, held) = segments(windows, now_nanos, final_end);
    let keys = key_columns(dimensions);
    // Adjacent segments of a part are read together.
    let mut reads: Vec<Segment> = Vec::new();
    for s in &segments {
        match reads.last_mut() {
            Some(r) if r.part == s.part && r.to == s.from => r.to = s.to,
            _ => reads.push(*s),
        }
    }
    let mut union: Option<datafusion::dataframe::DataFrame> = None;
    for read in reads {
        let (name, column) = match read.part {
            MINUTE => (table_name(Table::Minutes), "minute"),
            HOUR => (table_name(Table::Hours), "hour"),
            BLOCK => (table_name(Table::Blocks), "minute"),
            _ => (FINAL_HOURS, "hour"),
        };
        let mut columns = keys.clone();
        columns.push(col(column).alias("t"));
        columns.push(col("hdr"));
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
        return Err(Error::QueryInternal(
            "a window query without windows".into(),
        ));
    };
    let merge = functions::hdr_merge();
    let aggregates = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let rows = col("part").eq(lit(s.part)).and(
                col("t")
                    .gt_eq(minute_lit(s.from))
                    .and(col("t").lt(minute_lit(s.to))),
            );
            merge
                .call(vec![col("hdr")])
                .filter(rows)
                .build()
                .map(|e| e.alias(format!("__segment_{i}")))
                .map_err(classify)
        })
        .collect::<Result<Vec<_>>>()?;
    let df = df.aggregate(keys, aggregates).map_err(classify)?;
    Ok((df, held))
}

/// Accepts exactly one SELECT, WITH, SHOW, DESCRIBE or EXPLAIN (of one of those).
pub fn check_read_only(sql: &str) -> Result<()> {
    let statements = DFParser::parse_sql(sql).map_err(|e| Error::Query(e.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::NotReadOnly(format!(
            "send exactly one statement, not {}",
            statements.len()
        )));
    }
    if statements.iter().all(is_read_only) {
        Ok(())
    } else {
        let verb = sql
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_uppercase();
        Err(Error::NotReadOnly(format!(
            "the SQL API is read-only: SELECT, WITH, SHOW, DESCRIBE and EXPLAIN only, not {verb}"
        )))
    }
}

fn is_read_only(statement: &DfStatement) -> bool {
    match statement {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_)
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ExplainTable { .. } => true,
            Statement::Explain { statement, .. } => {
                is_read_only(&DfStatement::Statement(statement.clone()))
            }
            _ => false,
        },
        DfStatement::Explain(e) => is_read_only(&e.statement),
        _ => false,
    }
}

/// Sorts DataFusion's errors into what the client did and what recmeter did.
fn classify(e: DataFusionError) -> Error {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(m) => Error::ResourcesExhausted(format!(
            "the query needs more memory than sql.memory_limit_bytes allows: {m}"
        )),
        DataFusionError::Internal(_) | DataFusionError::IoError(_) => {
            Error::QueryInternal(e.to_string())
        }
        // Raised by the table scans: recmeter's own state, not the query. Other external
        // errors come from what the query asked for (a regular expression that does not
        // compile).
        DataFusionError::External(inner) if inner.is::<Error>() => {
            Error::QueryInternal(e.to_string())
        }
        _ => Error::Query(e.to_string()),
    }
}

fn internal(e: DataFusionError) -> Error {
    Error::QueryInternal(e.to_string())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    #[test]
    fn only_reading_statements_pass_the_check() {
        for ok in [
            "SELECT 1",
            "with t as (select 1) select * from t",
            "SHOW TABLES",
            "SHOW COLUMNS FROM latency_minutes",
            "DESCRIBE latency_hours",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
        ] {
            assert!(check_read_only(ok).is_ok(), "{ok}");
        }
        for refused in [
            "CREATE TABLE t (a INT)",
            "INSERT INTO t VALUES (1)",
            "DROP TABLE latency_minutes",
            "SET datafusion.execution.batch_size = 1",
            "COPY (SELECT 1) TO 'x.csv'",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "EXPLAIN COPY (SELECT 1) TO 'x.csv'",
            "SELECT 1; SELECT 2",
            "",
        ] {
            let e = check_read_only(refused).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::BadRequest, "{refused}");
        }
        assert!(matches!(check_read_only("SELEC 1"), Err(Error::Query(_))));
    }

    #[tokio::test]
    async fn metrics_windows_merge_in_one_stage() {
        use crate::config::{AggregatorConfig, IngestConfig};
        use crate::{Aggregator, Clock, Telemetry};
        use std::time::UNIX_EPOCH;

        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let aggregator = Aggregator::new(
            &IngestConfig {
                dimensions: vec!["region".into()],
                ..IngestConfig::default()
            },
            &AggregatorConfig::default(),
            clock.clone(),
            Arc::new(Telemetry::default()),
        )
        .unwrap();
        let config = SqlConfig {
            target_partitions: 2,
            ..SqlConfig::default()
        };
        let engine = QueryEngine::new(crate::state::shared(aggregator), &config).unwrap();
        let now = clock.now_nanos();
        let ctx = engine.metrics_context(now);
        let dimensions = ["region".to_owned()];
        let windows = [Window::M1, Window::M5, Window::H1, Window::D1];
        // With and without kept final hours (a third input to the union).
        let kept = PreparedRows::new(dimensions.to_vec(), vec!["requests_le_0_2".into()], vec![]);
        let table = RollupTable::new(Table::Hours, Arc::new(kept));
        ctx.register_table(FINAL_HOURS, Arc::new(table)).unwrap();
        let end = final_end(now, now / MINUTE_NANOS - 60);
        assert!(*Window::D1.minute_range(now).start() < end);
        for final_end in [None, Some(end)] {
            let plan = window_plan(&ctx, &windows, &dimensions, now, final_end)
                .await
                .unwrap()
                .0
                .create_physical_plan()
                .await
                .unwrap();
            crate::sql::testing::assert_one_stage(plan.as_ref());
        }
    }

    /// An engine over an empty aggregator with a fake clock on an hour boundary.
    fn engine(max_series: usize) -> (QueryEngine, SharedState, Arc<crate::Clock>) {
        use crate::config::{AggregatorConfig, IngestConfig};
        use crate::{Aggregator, Clock};
        use std::time::UNIX_EPOCH;

        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let aggregator = Aggregator::new(
            &IngestConfig::default(),
            &AggregatorConfig {
                max_series,
                ..AggregatorConfig::default()
            },
            clock.clone(),
            Arc::new(crate::Telemetry::default()),
        )
        .unwrap();
        let state = crate::state::shared(aggregator);
        let config = SqlConfig {
            target_partitions: 2,
            ..SqlConfig::default()
        };
        (
            QueryEngine::new(state.clone(), &config).unwrap(),
            state,
            clock,
        )
    }

    /// A scrape of long windows waits while the final hours are being merged (here: the lock
    /// held), and goes on once they are; a scrape of minute-exact windows only does not wait.
    #[tokio::test]
    async fn only_scrapes_of_long_windows_wait_for_a_merge_under_way() {
        let (engine, state, clock) = engine(10);
        let now = clock.now_nanos();
        lock(&state).apply(&[request("a", now, 5_000_000)]);
        let waiting = Duration::from_millis(300);
        let merge = engine.merging.lock().await;
        let short = tokio::time::timeout(waiting, engine.snapshot(&[Window::M1, Window::H1]));
        assert_eq!(short.await.unwrap().unwrap().series.len(), 1);
        let long = tokio::time::timeout(waiting, engine.snapshot(&[Window::M1, Window::D1]));
        assert!(
            long.await.is_err(),
            "a long-window scrape went past a merge under way"
        );
        drop(merge);
        let snapshot = engine.snapshot(&[Window::M1, Window::D1]).await.unwrap();
        assert_eq!(snapshot.series[0].windows.len(), 2);
    }

    fn request(endpoint: &str, end: u64, nanos: u64) -> crate::RequestRecord {
        crate::RequestRecord {
            key: SeriesKey {
                service: "svc".into(),
                endpoint: endpoint.into(),
                dimensions: Vec::new(),
            },
            end_unix_nanos: end,
            duration_nanos: nanos,
            error: false,
            recommendations: 1,
        }
    }

    /// 27 hours of traffic on two series, with spans up to an hour late; scraped every few
    /// minutes through hours 25 to 27 and at minutes 58, 59, 0 and 1 of each hour, so the final
    /// hours are kept, reused and moved on as windows' starts move and hours become final.
    /// Every window's count equals the raw values in its minutes (DESIGN's rule, worked out
    /// here from the raw minutes), its P50 and P99 lie within 1% of their nearest rank, and a
    /// fresh engine, which merges its kept hours from the tables at that instant, gives the same
    /// snapshot.
    #[tokio::test]
    async fn long_windows_over_kept_final_hours_stay_exact() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        let (engine, state, clock) = engine(10);
        let mut rng = StdRng::seed_from_u64(7);
        // (endpoint, minute, nanoseconds) of every request sent.
        let mut raw: Vec<(&str, u64, u64)> = Vec::new();
        let windows = [Window::M5, Window::H1, Window::D1, Window::D3];
        let (mut scrapes, mut reused) = (0, 0);
        let mut last_kept: Option<Arc<FinalHours>> = None;
        let (mut covers, mut advanced) = (BTreeSet::new(), BTreeSet::new());
        for minute in 0..27 * 60u64 {
            let now = clock.now_nanos();
            let mut batch = Vec::new();
            for endpoint in ["a", "b"] {
                for _ in 0..rng.random_range(1..6) {
                    let nanos = (rng.random::<f64>().powi(3) * 2e9) as u64 + 1_000_000;
                    // One span in eight ended up to an hour ago (the oldest ingest accepts).
                    let late = if rng.random_range(0..8) == 0 {
                        rng.random_range(0..=60) * MINUTE_NANOS
                    } else {
                        0
                    };
                    let end = now - late;
                    batch.push(request(endpoint, end, nanos));
                    raw.push((endpoint, end / MINUTE_NANOS, nanos));
                }
            }
            assert_eq!(lock(&state).apply(&batch).accepted, batch.len() as u64);
            if minute >= 25 * 60 && (minute % 7 < 2 || matches!(minute % 60, 58 | 59 | 0 | 1)) {
                scrapes += 1;
                // When an hour becomes final, the service's `prepare` moves the kept hours on
                // ahead of the scrape, which then reads them as they are.
                let prepared = if minute % 60 == 0 {
                    engine.prepare(&windows).await.unwrap();
                    engine.final_hours.lock().clone()
                } else {
                    None
                };
                // When a window's first hour moves, a scrape races the service's `prepare`: one
                // of them moves the kept hours on, the other reads them.
                let snapshot = if minute % 60 == 59 {
                    let (prepared, snapshot) =
                        tokio::join!(engine.prepare(&windows), engine.snapshot(&windows));
                    prepared.unwrap();
                    snapshot.unwrap()
                } else {
                    engine.snapshot(&windows).await.unwrap()
                };
                let at = snapshot.at_unix_nanos;
                let kept = engine.final_hours.lock().clone();
                let kept = kept.unwrap_or_else(|| panic!("none kept at minute {minute}"));
                if let Some(prepared) = prepared {
                    // Merged anew at the first scrape, moved on after.
                    assert_eq!(prepared.advanced, minute > 25 * 60, "minute {minute}");
                    assert!(Arc::ptr_eq(&prepared.rows, &kept.rows), "minute {minute}");
                }
                if let Some(last) = last_kept.replace(kept.clone())
                    && last.covers(&kept.starts, kept.end)
                {
                    assert!(Arc::ptr_eq(&last.rows, &kept.rows), "minute {minute}");
                    reused += 1;
                }
                covers.insert((kept.end, kept.starts.clone()));
                if kept.advanced {
                    advanced.insert((kept.end, kept.starts.clone()));
                }
                // Merged anew from the tables by a fresh engine: the same snapshot.
                let fresh = QueryEngine::new(state.clone(), &engine.config).unwrap();
                assert_eq!(
                    fresh.snapshot(&windows).await.unwrap(),
                    snapshot,
                    "minute {minute}"
                );
                for series in &snapshot.series {
                    assert_eq!(series.windows.len(), windows.len());
                    for w in &series.windows {
                        let range = w.window.minute_range(at);
                        let mut values: Vec<u64> = raw
                            .iter()
                            .filter(|(e, m, _)| *e == &*series.key.endpoint && range.contains(m))
                            .map(|(.., v)| *v)
                            .collect();
                        values.sort_unstable();
                        let label =
                            format!("{} {} at minute {minute}", series.key.endpoint, w.window);
                        assert_eq!(w.count, values.len() as u64, "{label}");
                        for (q, got) in [w.quantiles[0], w.quantiles[2]] {
                            let rank = ((q * values.len() as f64 - 1e-9).ceil() as usize).max(1);
                            let exact = values[rank - 1] as f64 / 1e9;
                            assert!(
                                (got - exact).abs() / exact <= 0.01,
                                "{label} q{q}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
            clock.advance(Duration::from_secs(60));
        }
        assert!(
            scrapes > 30 && reused > 20,
            "{scrapes} scrapes, {reused} reused"
        );
        // Merged at the first scrape (minute 1500), then moved on as windows' starts moved
        // (minutes 1559 and 1619) and an hour became final (minute 1560, by `prepare`).
        assert_eq!(covers.len(), 4);
        assert_eq!(advanced.len(), 3);
    }

    /// Three and a half hours of traffic on one series, applied every 20 s, with one span in six
    /// up to an hour late and one in ten up to 290 s ahead of the clock, bursts of late spans
    /// that fill the late buffer (sealed while applied), and a 7-minute jump of the clock with
    /// spans ahead of it pending; scraped 20 s into each minute of the last hour, with late values
    /// still buffered. Every window reads its minutes
    /// through blocks (the open block's sealed minutes so far as one row), so each window's count
    /// equals the raw values in its minutes and its P99 lies within 1% of the nearest rank;
    /// spans ahead of the clock stay out of the windows but are in `latency_hours`' current hour.
    #[tokio::test]
    async fn windows_over_blocks_stay_exact_with_late_and_early_spans() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        let (engine, state, clock) = engine(10);
        let mut rng = StdRng::seed_from_u64(11);
        // (minute, nanoseconds) of every request sent.
        let mut raw: Vec<(u64, u64)> = Vec::new();
        // 1m to 6h.
        let windows = &Window::ALL[..6];
        let mut scrapes = 0;
        for step in 0..210 * 3u64 {
            let now = clock.now_nanos();
            let burst = if step % 61 == 5 { 1_100 } else { 0 };
            let batch: Vec<_> = (0..rng.random_range(1..5) + burst)
                .map(|i| {
                    let nanos = (rng.random::<f64>().powi(3) * 2e9) as u64 + 1_000_000;
                    let end = match rng.random_range(0..30) {
                        _ if i < burst => now - rng.random_range(60..=3_600) * 1_000_000_000,
                        0..5 => now - rng.random_range(0..=3_600) * 1_000_000_000,
                        5..8 => now + rng.random_range(0..=290) * 1_000_000_000,
                        _ => now,
                    };
                    raw.push((end / MINUTE_NANOS, nanos));
                    request("a", end, nanos)
                })
                .collect();
            assert_eq!(lock(&state).apply(&batch).accepted, batch.len() as u64);
            if step >= 150 * 3 && step % 3 == 1 {
                scrapes += 1;
                let snapshot = engine.snapshot(windows).await.unwrap();
                let at = snapshot.at_unix_nanos;
                let open = at / MINUTE_NANOS;
                let series = &snapshot.series[0];
                for &window in windows {
                    let range = window.minute_range(at);
                    let mut values: Vec<u64> = raw
                        .iter()
                        .filter(|(m, _)| range.contains(m))
                        .map(|(_, v)| *v)
                        .collect();
                    values.sort_unstable();
                    let label = format!("{window} at minute {}", open % 60);
                    // A window without requests is left out.
                    let Some(w) = series.windows.iter().find(|w| w.window == window) else {
                        assert!(values.is_empty(), "{label}");
                        continue;
                    };
                    assert_eq!(w.count, values.len() as u64, "{label}");
                    let rank = ((0.99 * values.len() as f64 - 1e-9).ceil() as usize).max(1);
                    let exact = values[rank - 1] as f64 / 1e9;
                    let got = w.quantiles[2].1;
                    assert!(
                        (got - exact).abs() / exact <= 0.01,
                        "{label}: {got} vs {exact}"
                    );
                }
                // The current hour in SQL holds the spans ahead of the clock too.
                let hour = open - open % 60;
                let sql = format!(
                    "SELECT CAST(sum(requests) AS BIGINT) FROM latency_hours \
                     WHERE hour >= to_timestamp_seconds({})",
                    hour * 60
                );
                let out = engine.query(&sql).await.unwrap();
                let got = out.batches[0]
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .value(0);
                let want = raw.iter().filter(|(m, _)| *m >= hour).count();
                assert_eq!(got as usize, want, "current hour at minute {}", open % 60);
            }
            clock.advance(Duration::from_secs(if step == 300 { 7 * 60 } else { 20 }));
        }
        assert_eq!(scrapes, 60);
    }

    /// A minute boundary passing while the window query runs changes no window: the query
    /// planned 20 s into minute 23 and run after the clock moved to minute 24, with spans in
    /// minute 24 and spans sent for it while it was ahead, gives each window the raw values of
    /// its minutes at minute 23 (the 5m window reads block 20 as the clock seals minute 23 into
    /// it).
    #[tokio::test]
    async fn a_minute_passing_mid_query_changes_no_window() {
        let (engine, state, clock) = engine(10);
        let mut raw: Vec<u64> = Vec::new();
        let send = |clock: &crate::Clock, raw: &mut Vec<u64>| {
            let now = clock.now_nanos();
            let batch = [now, now + 50_000_000_000].map(|end| {
                raw.push(end / MINUTE_NANOS);
                request("a", end, 5_000_000)
            });
            assert_eq!(lock(&state).apply(&batch).accepted, 2);
        };
        for _ in 0..23 * 3 + 1 {
            send(&clock, &mut raw);
            clock.advance(Duration::from_secs(20));
        }
        let at = clock.now_nanos();
        assert_eq!(at / MINUTE_NANOS % 60, 23);
        let windows = [Window::M1, Window::M5, Window::M30];
        let ctx = engine.metrics_context(at);
        let (df, held) = window_plan(&ctx, &windows, &[], at, None).await.unwrap();
        clock.advance(Duration::from_secs(60));
        send(&clock, &mut raw);
        let batches = df.collect().await.unwrap();
        for (w, segments) in windows.iter().zip(&held) {
            let mut counts = Counts::new();
            for batch in &batches {
                for &i in segments {
                    let blobs = batch.column(2 + i).as_binary::<i32>();
                    for row in (0..batch.num_rows()).filter(|&r| !blobs.is_null(r)) {
                        counts.add_encoded(blobs.value(row)).unwrap();
                    }
                }
            }
            let range = w.minute_range(at);
            let want = raw.iter().filter(|m| range.contains(m)).count();
            assert_eq!(counts.total(), want as u64, "{w}");
        }
    }

    /// A series forgotten at the cap and back within the hour starts afresh in the long windows
    /// too: the kept final hours lose its old rows, whether a scrape finds it back before they
    /// move on (same hours) or only when they move on.
    #[tokio::test]
    async fn a_forgotten_series_leaves_no_kept_hours_behind() {
        for scrape_before_moving_on in [true, false] {
            let (engine, state, clock) = engine(1);
            let m0 = clock.now_nanos() / MINUTE_NANOS;
            // One request a minute for 100 minutes, then nothing: idle for 3 h at minute 279.
            for _ in 0..100 {
                lock(&state).apply(&[request("a", clock.now_nanos(), 5_000_000)]);
                clock.advance(Duration::from_secs(60));
            }
            clock.advance(Duration::from_secs(60 * 178));
            assert_eq!(clock.now_nanos() / MINUTE_NANOS, m0 + 278);
            let before = engine.snapshot(&[Window::D1]).await.unwrap();
            assert_eq!(before.series[0].windows[0].count, 100);
            assert!(engine.final_hours.lock().is_some());
            // Minute 280, same hour and same final hours: the roll into minute 280 forgets the
            // series (idle since minute 100), and the request creates it again.
            clock.advance(Duration::from_secs(120));
            lock(&state).apply(&[request("a", clock.now_nanos(), 5_000_000)]);
            assert_eq!(lock(&state).births(), 2);
            if scrape_before_moving_on {
                let after = engine.snapshot(&[Window::D1]).await.unwrap();
                assert_eq!(after.series.len(), 1);
                assert_eq!(after.series[0].totals.requests(), 1);
                assert_eq!(after.series[0].windows[0].count, 1);
            }
            // On past minute 300, where the hour before minute 240 becomes final and the kept
            // hours move on: still only the requests since it came back.
            for _ in 0..21 {
                clock.advance(Duration::from_secs(60));
                lock(&state).apply(&[request("a", clock.now_nanos(), 5_000_000)]);
            }
            assert_eq!(clock.now_nanos() / MINUTE_NANOS, m0 + 301);
            let moved = engine.snapshot(&[Window::D1]).await.unwrap();
            let kept = engine.final_hours.lock().clone().unwrap();
            assert!(kept.advanced && kept.end == m0 + 240, "{kept:?}");
            assert_eq!(moved.series[0].windows[0].count, 22);
        }
    }

    /// The 30d window's oldest hours leave memory as it moves on, so its kept hours cannot be
    /// moved on by taking them away: they are merged anew, and its count stays that of the
    /// raw requests in it.
    #[tokio::test]
    async fn the_30d_window_moves_on_past_hours_no_longer_held() {
        let (engine, state, clock) = engine(10);
        let mut minutes = Vec::new();
        // A request at minute 30 of every hour for 31 days, then on to minute 58.
        clock.advance(Duration::from_secs(30 * 60));
        for _ in 0..31 * 24 {
            let now = clock.now_nanos();
            lock(&state).apply(&[request("a", now, 5_000_000)]);
            minutes.push(now / MINUTE_NANOS);
            clock.advance(Duration::from_secs(3_600));
        }
        clock.advance(Duration::from_secs(28 * 60));
        // Minute 58, then minute 59, where the window's first hour moves.
        for _ in 0..2 {
            let snapshot = engine.snapshot(&[Window::D30]).await.unwrap();
            let range = Window::D30.minute_range(snapshot.at_unix_nanos);
            let raw = minutes.iter().filter(|m| range.contains(m)).count() as u64;
            assert_eq!(snapshot.series[0].windows[0].count, raw);
            clock.advance(Duration::from_secs(60));
        }
        assert!(!engine.final_hours.lock().clone().unwrap().advanced);
    }

    #[test]
    fn errors_are_sorted_by_whose_fault() {
        let exhausted = classify(DataFusionError::ResourcesExhausted("sort".into()));
        assert_eq!(exhausted.kind(), crate::ErrorKind::Unprocessable);
        let plan = classify(DataFusionError::Plan("no such table".into()));
        assert_eq!(plan.kind(), crate::ErrorKind::BadRequest);
        let scan = classify(DataFusionError::External(Box::new(Error::Histogram(
            "x".into(),
        ))));
        assert_eq!(scan.kind(), crate::ErrorKind::Internal);
        // Another crate's error, such as a regular expression that does not compile.
        let pattern = classify(DataFusionError::External(Box::new(std::fmt::Error)));
        assert_eq!(pattern.kind(), crate::ErrorKind::BadRequest);
    }
}
