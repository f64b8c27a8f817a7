//! The table catalog: every table SQL serves is registered here, naming where its rows come
//! from. The SQL engine builds each session's tables from it, so a later capability (cost
//! lines, SLO state) adds a table by registering it, not by editing the engine.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

use super::tables::{RollupTable, table_name};
use crate::error::{Error, Result};
use crate::state::{SharedState, Table};
use crate::store::history::History;
use crate::store::rollup::TIME_ZONE;

/// Where a table's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Memory only.
    Memory,
    /// The store's files only.
    History,
    /// Memory for what it holds, the store for older rows.
    MemoryAndHistory,
}

/// A table the SQL engine serves.
pub trait CatalogTable: std::fmt::Debug + Send + Sync {
    /// Its SQL name: unique, lower case.
    fn name(&self) -> &str;
    /// Where its rows come from.
    fn source(&self) -> Source;
    /// Its provider for one session. `history` is the store's files when the engine has a store
    /// (a table that reads the store and gets `None` serves what memory holds).
    fn provider(&self, history: Option<&Arc<History>>) -> Arc<dyn TableProvider>;
}

/// The registered tables, in registration order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tables: Vec<Arc<dyn CatalogTable>>,
}

impl Catalog {
    /// The built-in tables: `latency_minutes` and `latency_hours` over `state` and the store.
    pub fn with_rollups(state: &SharedState) -> Self {
        let mut catalog = Self::default();
        for table in [Table::Minutes, Table::Hours] {
            catalog.tables.push(Arc::new(RollupCatalogTable {
                table,
                state: state.clone(),
            }));
        }
        catalog
    }

    /// Adds `table`; a name taken already, or kept for recmeter's own sessions
    /// (`latency_blocks`, `final_hours`), is an error.
    pub fn register(&mut self, table: Arc<dyn CatalogTable>) -> Result<()> {
        let reserved = [table_name(Table::Blocks), "final_hours"];
        if reserved
            .iter()
            .any(|r| r.eq_ignore_ascii_case(table.name()))
            || self.tables.iter().any(|t| t.name() == table.name())
        {
            return Err(Error::QueryInternal(format!(
                "a table named {} is registered already",
                table.name()
            )));
        }
        self.tables.push(table);
        Ok(())
    }

    /// Every table, in registration order.
    pub fn tables(&self) -> &[Arc<dyn CatalogTable>] {
        &self.tables
    }
}

/// `latency_minutes` or `latency_hours`: memory, then the store's files for older rows.
#[derive(Debug)]
struct RollupCatalogTable {
    table: Table,
    state: SharedState,
}

impl CatalogTable for RollupCatalogTable {
    fn name(&self) -> &str {
        table_name(self.table)
    }

    fn source(&self) -> Source {
        Source::MemoryAndHistory
    }

    fn provider(&self, history: Option<&Arc<History>>) -> Arc<dyn TableProvider> {
        Arc::new(RollupTable::new(self.table, self.state.clone()).with_history(history.cloned()))
    }
}

/// A non-null UTC timestamp column of nanoseconds, as every table's times.
pub(crate) fn timestamp(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from(TIME_ZONE))),
        false,
    )
}

/// A table over `batch`; an empty one when it cannot be built (it never fails to, as the
/// columns are built to the schema).
pub(crate) fn memory_table(schema: SchemaRef, columns: Vec<ArrayRef>) -> Arc<dyn TableProvider> {
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()));
    match MemTable::try_new(schema.clone(), vec![vec![batch]]) {
        Ok(t) => Arc::new(t),
        Err(_) => Arc::new(datafusion::datasource::empty::EmptyTable::new(schema)),
    }
}
