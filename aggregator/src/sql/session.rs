//! The makings of every query session: the two query runtimes (one for `/api/v1/sql`, one
//! for recmeter's own queries), their environments (a memory pool without spilling for
//! clients, none for recmeter), the table catalog and the store's history, and running work on
//! a runtime under a deadline. The engine (`engine.rs`) and the window planner (`windows.rs`)
//! both build their sessions here.

use std::sync::Arc;
use std::time::Duration;

use datafusion::common::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio::runtime::Runtime;

use super::catalog::{Catalog, CatalogTable};
use super::functions::{self, TIME_ZONE};
use super::guard::{self, Cancel, CancelOnDrop};
use super::tables::{RollupTable, table_name};
use crate::config::SqlConfig;
use crate::error::{Error, Result};
use crate::state::{SharedState, Table, lock};
use crate::store::history::History;

/// What every query session is made of: the state, the configuration, the two query runtimes
/// and their environments, the store's history and the table catalog.
pub struct Sessions {
    pub(super) state: SharedState,
    pub(super) config: SqlConfig,
    pub(super) target_partitions: usize,
    /// The runtime of `/api/v1/sql` queries; taken out only to shut it down.
    pub(super) runtime: Option<Runtime>,
    /// The runtime of recmeter's own queries (`/metrics`).
    pub(super) internal_runtime: Option<Runtime>,
    /// For `/api/v1/sql`: the memory limit, no disk.
    pub(super) limited: Arc<RuntimeEnv>,
    /// For recmeter's own queries (`/metrics`): no limit, no disk.
    pub(super) internal: Arc<RuntimeEnv>,
    /// The store's rollup files, for what memory no longer holds: SQL over history, and the
    /// hours of windows longer than memory's (ADR 012).
    pub(super) history: Option<Arc<History>>,
    /// The tables every session serves.
    catalog: parking_lot::RwLock<Catalog>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Sessions {
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

impl Sessions {
    /// Sessions over `state`, with two runtimes of one thread per target partition.
    pub(super) fn new(state: SharedState, config: &SqlConfig) -> Result<Self> {
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
            history: None,
            catalog: parking_lot::RwLock::new(Catalog::with_rollups(&state)),
            state,
        })
    }

    /// Lets `latency_minutes` and `latency_hours` read what memory no longer holds from the
    /// store's files.
    pub(super) fn set_history(&mut self, history: Arc<History>) {
        self.history = Some(history);
    }

    /// A session for a client's query: the rollup tables, recmeter's functions, `now()` at the
    /// clock's now, the value-size bound on string functions, and `cancel` checked above every
    /// operator.
    pub(super) fn context(&self, cancel: &Cancel) -> SessionContext {
        let now = lock(&self.state).clock().now_nanos();
        self.context_with(
            self.limited.clone(),
            now,
            self.history.clone(),
            Some(cancel),
        )
    }

    pub(super) fn context_with(
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
    pub(super) fn register_table(&self, table: Arc<dyn CatalogTable>) -> Result<()> {
        self.catalog.write().register(table)
    }

    /// A session for `/metrics` windows: the rollup tables (over the store too) and the
    /// blocks, on the internal runtime.
    pub(super) fn metrics_context(&self, now: u64) -> SessionContext {
        let ctx = self.context_with(self.internal.clone(), now, self.history.clone(), None);
        let blocks = RollupTable::new(Table::Blocks, self.state.clone());
        // Registering into a fresh session cannot collide.
        let _ = ctx.register_table(table_name(Table::Blocks), Arc::new(blocks));
        ctx
    }

    /// Runs `work` on the query runtime under a deadline; dropping the returned future (a
    /// client that went away) cancels the query. Either way `cancel` is set, which stops the
    /// operators of a plan built with it even where they never wait.
    pub(super) async fn run<T: Send + 'static>(
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
}

/// Sorts DataFusion's errors into what the client did and what recmeter did.
pub(super) fn classify(e: DataFusionError) -> Error {
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
