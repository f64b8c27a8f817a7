//! The query engine: one DataFusion session per query over the rollup tables, with recmeter's
//! functions and clock. Queries run on their own Tokio runtimes (one for `/api/v1/sql`, one for
//! recmeter's own `/metrics` queries), so a runaway query starves neither ingest nor scrapes; each has a deadline (`sql.timeout`), a memory pool without spilling
//! (`sql.memory_limit_bytes`) and a result-size limit. `/metrics` windows go through the same
//! tables and functions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{Expr, SessionConfig, SessionContext, col, lit};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use tokio::runtime::Runtime;

use super::functions::{self, TIME_ZONE};
use super::tables::{RollupTable, time_column};
use crate::clock::MINUTE_NANOS;
use crate::config::SqlConfig;
use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::record::SeriesKey;
use crate::state::{SeriesSnapshot, SharedState, Snapshot, Table, WindowQuantiles, lock};
use crate::window::Window;

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
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(target_partitions)
                .thread_name(name)
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
            state,
            config: config.clone(),
            target_partitions,
            runtime: Some(runtime("recmeter-sql")?),
            internal_runtime: Some(runtime("recmeter-metrics")?),
            limited,
            internal: internal_env,
        })
    }

    /// A session with the rollup tables, recmeter's functions and `now()` at the clock's now.
    pub fn context(&self) -> SessionContext {
        let now = lock(&self.state).clock().now_nanos();
        self.context_with(self.limited.clone(), now)
    }

    fn context_with(&self, env: Arc<RuntimeEnv>, now: u64) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(self.target_partitions)
            .with_information_schema(true);
        config.options_mut().execution.time_zone = Some(TIME_ZONE.to_owned());
        let ctx = SessionContext::new_with_config_rt(config, env);
        functions::register(&ctx, now);
        for table in [Table::Minutes, Table::Hours] {
            let provider = RollupTable::new(table, self.state.clone());
            // Registering into a fresh session cannot collide.
            let _ = ctx.register_table(table_name(table), Arc::new(provider));
        }
        ctx
    }

    /// Runs one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) to completion.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        check_read_only(sql)?;
        let ctx = self.context();
        let sql = sql.to_owned();
        let max_bytes = self.config.max_result_bytes;
        let timeout = self.config.timeout;
        self.run(
            self.runtime.as_ref(),
            async move {
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
        )
        .await
    }

    /// Runs `work` on the query runtime under a deadline; dropping the returned future (a
    /// client that went away) cancels the query.
    async fn run<T: Send + 'static>(
        &self,
        runtime: Option<&Runtime>,
        work: impl Future<Output = Result<T>> + Send + 'static,
        timeout: Duration,
    ) -> Result<T> {
        let runtime =
            runtime.ok_or_else(|| Error::QueryInternal("the query runtime has stopped".into()))?;
        let task = runtime.spawn(async move {
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or(Err(Error::QueryTimeout(timeout)))
        });
        let _cancel = AbortOnDrop(task.abort_handle());
        task.await
            .map_err(|e| Error::QueryInternal(format!("query task failed: {e}")))?
    }

    /// Counters of every series, and each of `windows` merged from the rollup tables with
    /// `hdr_merge`, by DESIGN's window rule: minute-exact windows from `latency_minutes`,
    /// longer ones as whole hours from `latency_hours` plus the current hour's minutes from
    /// `latency_minutes`. Every window ends with the open minute at one clock reading, so
    /// future-stamped spans (within `ingest.max_future_skew`) wait for their minute.
    pub async fn snapshot(&self, windows: &[Window]) -> Result<Snapshot> {
        let (at, counters, dimension_labels) = {
            let state = lock(&self.state);
            (
                state.clock().now_nanos(),
                state.counters(),
                state.dimension_labels().to_vec(),
            )
        };
        let ctx = self.context_with(self.internal.clone(), at);
        let windows = windows.to_vec();
        let dimensions = dimension_labels.clone();
        let (windows, batches) = self
            .run(
                self.internal_runtime.as_ref(),
                async move {
                    let df = window_plan(&ctx, &windows, &dimensions, at).await?;
                    Ok((windows, df.collect().await.map_err(classify)?))
                },
                self.config.timeout,
            )
            .await?;
        let mut per_series: HashMap<SeriesKey, Vec<WindowQuantiles>> = HashMap::new();
        let mut counts = Counts::new();
        let keys = 2 + dimension_labels.len();
        for batch in batches {
            let strings: Vec<_> = (0..keys)
                .map(|i| batch.column(i).as_string::<i32>())
                .collect();
            for row in 0..batch.num_rows() {
                let key = SeriesKey {
                    service: strings[0].value(row).into(),
                    endpoint: strings[1].value(row).into(),
                    dimensions: strings[2..].iter().map(|s| s.value(row).into()).collect(),
                };
                let entry = per_series.entry(key).or_default();
                for (i, window) in windows.iter().enumerate() {
                    let blobs = batch.column(keys + i).as_binary::<i32>();
                    if blobs.is_null(row) {
                        continue;
                    }
                    counts.reset();
                    counts.add_encoded(blobs.value(row))?;
                    entry.extend(WindowQuantiles::from_counts(*window, &counts));
                }
            }
        }
        let series = counters
            .into_iter()
            .map(|c| {
                let mut windows = per_series.remove(&c.key).unwrap_or_default();
                windows.sort_by_key(|w| w.window);
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

/// The plan of `windows` at `now_nanos`, by DESIGN's window rule: `SELECT keys,
/// hdr_merge(hdr) FILTER (WHERE …) AS window … GROUP BY keys` over one union of rows. Minute-exact
/// windows merge the minutes from their start through the open minute; longer ones merge the
/// whole hours before the current one from `latency_hours` and the current hour's minutes. Each
/// minute row is read once, however many windows it falls in, and the aggregation by series is
/// one stage over the hash-partitioned scans.
async fn window_plan(
    ctx: &SessionContext,
    windows: &[Window],
    dimensions: &[String],
    now_nanos: u64,
) -> Result<datafusion::dataframe::DataFrame> {
    let at = |minute: u64| {
        lit(ScalarValue::TimestampNanosecond(
            Some((minute * MINUTE_NANOS) as i64),
            Some(Arc::from(TIME_ZONE)),
        ))
    };
    let open = now_nanos / MINUTE_NANOS;
    let current_hour = open - open % 60;
    let start = |w: &Window| *w.minute_range(now_nanos).start();
    let long = windows.iter().filter(|w| !w.is_minute_exact());
    let first_hour = long.clone().map(start).min();
    // Long windows need the current hour's minutes; minute-exact ones their own.
    let first_minute = windows
        .iter()
        .map(|w| {
            if w.is_minute_exact() {
                start(w)
            } else {
                current_hour
            }
        })
        .min()
        .unwrap_or(open);
    let mut keys: Vec<Expr> = vec![col("service"), col("endpoint")];
    keys.extend(dimensions.iter().map(|d| col(d.as_str())));
    let rows = |table: Table, from: u64, to: u64| {
        let column = time_column(table);
        let ctx = ctx.clone();
        let mut columns = keys.clone();
        columns.push(col(column).alias("t"));
        columns.push(col("hdr"));
        columns.push(lit(table == Table::Hours).alias("hourly"));
        async move {
            ctx.table(table_name(table))
                .await?
                .filter(col(column).gt_eq(at(from)).and(col(column).lt(at(to))))?
                .select(columns)
        }
    };
    let minutes = rows(Table::Minutes, first_minute, open + 1).await;
    let df = match first_hour {
        Some(first) if first < current_hour => {
            let hours = rows(Table::Hours, first, current_hour).await;
            hours.and_then(|h| minutes.and_then(|m| h.union(m)))
        }
        _ => minutes,
    }
    .map_err(classify)?;
    let merge = functions::hdr_merge();
    let aggregates = windows
        .iter()
        .map(|w| {
            let since = col("t").gt_eq(at(start(w)));
            let rows = if w.is_minute_exact() {
                since.and(datafusion::prelude::not(col("hourly")))
            } else {
                since.and(col("hourly").or(col("t").gt_eq(at(current_hour))))
            };
            merge
                .call(vec![col("hdr")])
                .filter(rows)
                .build()
                .map(|e| e.alias(w.label()))
                .map_err(classify)
        })
        .collect::<Result<Vec<_>>>()?;
    df.aggregate(keys, aggregates).map_err(classify)
}

/// The SQL name of a rollup table.
pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Minutes => "latency_minutes",
        Table::Hours => "latency_hours",
    }
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
        // Raised by the table scans: recmeter's own state, not the query.
        DataFusionError::External(_) => Error::QueryInternal(e.to_string()),
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
        let ctx = engine.context_with(engine.internal.clone(), now);
        let dimensions = ["region".to_owned()];
        let windows = [Window::M1, Window::M5, Window::H1, Window::D1];
        let plan = window_plan(&ctx, &windows, &dimensions, now)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        crate::sql::testing::assert_one_stage(plan.as_ref());
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
    }
}
