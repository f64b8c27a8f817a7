//! The query engine: one DataFusion session per query over the rollup tables, with recmeter's
//! functions and clock (sessions in `session.rs`, `/metrics` windows and counts per span in
//! `windows.rs`). Queries run on their own Tokio runtimes (one for `/api/v1/sql`, one for
//! recmeter's own `/metrics` queries), so a runaway query starves neither ingest nor scrapes; each has a deadline (`sql.timeout`), a memory pool without spilling
//! (`sql.memory_limit_bytes`) and a result-size limit. `/metrics` windows go through the same
//! tables and functions, in one query; each long window's final hours (which no span can reach
//! any more) are merged once with `hdr_merge` and kept between scrapes (ADR 008).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;

use super::catalog::CatalogTable;
use super::guard::{self, Cancel};
use super::session::{Sessions, classify};
use super::windows::{HourSink, RollupSink, Span, WindowCounts, WindowPlanner};
use crate::config::SqlConfig;
use crate::error::{Error, Result};
use crate::state::{SharedState, Snapshot, lock};
use crate::store::history::History;
use crate::window::Window;

/// Takes the batches of [`QueryEngine::internal_batches`], one at a time.
pub trait BatchSink: Send + 'static {
    /// One batch of the answer; an error stops the query.
    fn add(&mut self, batch: &RecordBatch) -> Result<()>;
}

/// A query's answer: its schema and record batches.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Runs SQL over the rollups, and the `/metrics` windows and counts per span.
#[derive(Debug)]
pub struct QueryEngine {
    pub(super) sessions: Sessions,
    pub(super) windows: WindowPlanner,
}

impl QueryEngine {
    /// An engine over `state`, with its two runtimes of one thread per target partition.
    pub fn new(state: SharedState, config: &SqlConfig) -> Result<Self> {
        Ok(Self {
            sessions: Sessions::new(state, config)?,
            windows: WindowPlanner::default(),
        })
    }

    /// Lets `latency_minutes` and `latency_hours` read what memory no longer holds from the
    /// store's files.
    pub fn with_history(mut self, history: Arc<History>) -> Self {
        self.sessions.set_history(history);
        self
    }

    /// A session for a client's query: the rollup tables, recmeter's functions, `now()` at the
    /// clock's now, the value-size bound on string functions, and `cancel` checked above every
    /// operator.
    pub fn context(&self, cancel: &Cancel) -> datafusion::prelude::SessionContext {
        self.sessions.context(cancel)
    }

    /// Registers a table every later session serves (the catalog's built-in tables are
    /// `latency_minutes` and `latency_hours`).
    pub fn register_table(&self, table: Arc<dyn CatalogTable>) -> Result<()> {
        self.sessions.register_table(table)
    }

    /// See [`WindowPlanner::prepare`].
    pub async fn prepare(&self, windows: &[Window]) -> Result<()> {
        self.windows.prepare(&self.sessions, windows).await
    }

    /// See [`WindowPlanner::snapshot`].
    pub async fn snapshot(&self, windows: &[Window]) -> Result<Snapshot> {
        self.windows.snapshot(&self.sessions, windows).await
    }

    /// See [`WindowPlanner::counts`]: the counts and HDR quantiles of each span.
    pub async fn counts(&self, spans: &[Span]) -> Result<WindowCounts> {
        self.windows.counts(&self.sessions, spans, true).await
    }

    /// The counts of each span without quantiles (no histogram is read or merged): what burn
    /// rates and unit costs need, at a fraction of the cost.
    pub async fn sums(&self, spans: &[Span]) -> Result<WindowCounts> {
        self.windows.counts(&self.sessions, spans, false).await
    }

    /// See [`WindowPlanner::hour_sums`]: hands `sink` the counts of every hour row of `hours`
    /// (minute indexes, whole hours), and gives it back.
    pub async fn hour_sums<S: HourSink>(&self, hours: std::ops::Range<u64>, sink: S) -> Result<S> {
        self.windows.hour_sums(&self.sessions, hours, sink).await
    }

    /// See [`WindowPlanner::rollup_rows`]: hands `sink` every row of `table` (`Minutes` or
    /// `Hours`) starting in `range` (minute indexes), with its V2 encoding when `hdr`.
    pub async fn rollup_rows<S: RollupSink>(
        &self,
        table: crate::state::Table,
        range: std::ops::Range<u64>,
        hdr: bool,
        sink: S,
    ) -> Result<S> {
        self.windows
            .rollup_rows(&self.sessions, table, range, hdr, sink)
            .await
    }

    /// The first minute `latency_minutes` holds rows of: the store's oldest minute file, or
    /// the first minute memory holds when the store has none.
    pub fn first_minute_kept(&self) -> u64 {
        let held = {
            let state = lock(&self.sessions.state);
            state.first_minute_held(state.clock().now_nanos())
        };
        self.sessions
            .history
            .as_ref()
            .and_then(|h| h.first_minute())
            .map_or(held, |m| m.min(held))
    }

    /// Runs `work`, CPU-bound work of a client's query (PromQL evaluation), on the query
    /// runtime, so it starves neither ingest nor scrapes; it must watch its own deadline, as
    /// it is not cut off at `sql.timeout`.
    pub async fn run_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.sessions
            .run(
                self.sessions.runtime.as_ref(),
                async move { Ok(work()) },
                // The work checks its own deadline; this bounds only a wait for the runtime.
                std::time::Duration::from_secs(24 * 3600),
                Cancel::default(),
            )
            .await
    }

    /// Runs `sql`, recmeter's own statement, over the catalog's tables on the internal runtime
    /// (no result-size limit: `sink` takes each batch as it comes), and gives `sink` back.
    pub async fn internal_batches<S: BatchSink>(&self, sql: &str, sink: S) -> Result<S> {
        let sessions = &self.sessions;
        let now = lock(&sessions.state).clock().now_nanos();
        let ctx = sessions.context_with(
            sessions.internal.clone(),
            now,
            sessions.history.clone(),
            None,
        );
        let sql = sql.to_owned();
        sessions
            .run(
                sessions.internal_runtime.as_ref(),
                async move {
                    let mut sink = sink;
                    let mut stream = ctx
                        .sql(&sql)
                        .await
                        .map_err(classify)?
                        .execute_stream()
                        .await
                        .map_err(classify)?;
                    while let Some(batch) = stream.next().await {
                        sink.add(&batch.map_err(classify)?)?;
                    }
                    Ok(sink)
                },
                sessions.config.timeout,
                Cancel::default(),
            )
            .await
    }

    /// Whether the kept final hours were moved on rather than merged anew (`None`: none kept).
    #[cfg(test)]
    pub(crate) fn kept_hours_moved_on(&self) -> Option<bool> {
        self.windows.kept_hours_moved_on()
    }

    /// Runs one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) to completion.
    ///
    /// The nesting limit is checked on the text first, so nothing recursive ever sees a query
    /// deeper than the query threads' stacks allow; parsing and planning then run on those
    /// threads. Cancelling (the deadline, or a client gone) stops its operators within a batch.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        guard::check_depth(sql, self.sessions.config.max_expression_depth)?;
        let cancel = Cancel::default();
        let ctx = self.sessions.context(&cancel);
        let sql = sql.to_owned();
        let max_bytes = self.sessions.config.max_result_bytes;
        let timeout = self.sessions.config.timeout;
        self.sessions.run(
            self.sessions.runtime.as_ref(),
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
}
