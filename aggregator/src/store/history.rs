//! History beyond memory: the rollup files of the manifest in force, read as Parquet from the
//! object store by DataFusion. `latency_minutes` and `latency_hours` take from here the rows
//! older than what memory holds (minutes of the last 3 h, hours of about a day), so SQL
//! reaches back as far as retention keeps files: 3 days of minutes, 400 days of hours.
//!
//! The files come from the manifest, never from listing the store, so a scan reads exactly one
//! copy of every row, whatever checkpoint or compaction is half done. Checkpoints and
//! compactions publish each new manifest's files here before they delete anything.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use object_store::ObjectStore;
use parking_lot::RwLock;

use crate::clock::MINUTE_NANOS;
use crate::state::Table;
use crate::store::manifest::{FileEntry, FileKind};
use crate::store::rollup::{TIME_ZONE, time_column};

/// Where DataFusion finds the store (registered in each session's runtime).
const STORE_URL: &str = "recmeter-store://history";

/// The rollup files of the manifest in force, and the store that holds them.
#[derive(Debug)]
pub struct History {
    objects: Arc<dyn ObjectStore>,
    files: RwLock<Arc<[FileEntry]>>,
    /// Files the scans planned so far read, one per file and scan.
    files_read: AtomicU64,
}

impl History {
    /// History over the store `objects`, with no files until a manifest is published.
    pub fn new(objects: Arc<dyn ObjectStore>) -> Self {
        Self {
            objects,
            files: RwLock::new(Arc::from(Vec::new())),
            files_read: AtomicU64::new(0),
        }
    }

    /// How many store files the scans planned so far read (a file read by two scans counts
    /// twice): what shows that a query, or an SLO evaluation, was answered from memory.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Makes `files` (a manifest's rollup files) the ones scans read.
    pub fn publish(&self, files: &[FileEntry]) {
        *self.files.write() = Arc::from(files.to_vec());
    }

    /// The first minute the store's minute files hold rows of, if it has any.
    pub fn first_minute(&self) -> Option<u64> {
        let files = self.files.read().clone();
        files
            .iter()
            .filter(|f| f.kind == FileKind::Minutes)
            .map(|f| f.first_minute)
            .min()
    }

    /// The files of `table` with rows in `range` (minute indexes).
    fn files(&self, table: Table, range: &RangeInclusive<u64>) -> Vec<FileEntry> {
        let kind = match table {
            Table::Hours => FileKind::Hours,
            Table::Minutes | Table::Blocks => FileKind::Minutes,
        };
        let files = self.files.read().clone();
        files
            .iter()
            .filter(|f| {
                f.kind == kind && f.first_minute <= *range.end() && f.last_minute >= *range.start()
            })
            .cloned()
            .collect()
    }

    /// A plan reading the whole of `files` (Parquet files of the store whose schema is
    /// `schema`), with the columns `projection` picks: the files of a table a component owns,
    /// such as `cost_lines`.
    pub fn scan_files(
        &self,
        state: &dyn Session,
        schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        files: Vec<FileEntry>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.files_read
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        self.read_files(state, ParquetSource::new(schema.clone()), projection, files)
    }

    /// A plan reading `files` through `source`, with the columns `projection` picks, the
    /// files spread over the session's partitions by size.
    fn read_files(
        &self,
        state: &dyn Session,
        source: ParquetSource,
        projection: &[usize],
        mut files: Vec<FileEntry>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        state
            .runtime_env()
            .register_object_store(url.as_ref(), self.objects.clone());
        // Largest first, each to the partition with the fewest bytes so far.
        let partitions = state.config_options().execution.target_partitions.max(1);
        files.sort_by_key(|f| std::cmp::Reverse(f.bytes));
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); partitions];
        for f in files {
            if let Some(slot) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
                slot.0 += f.bytes;
                slot.1.push(PartitionedFile::new(f.path, f.bytes));
            }
        }
        let groups: Vec<FileGroup> = groups
            .into_iter()
            .filter(|(_, g)| !g.is_empty())
            .map(|(_, g)| FileGroup::new(g))
            .collect();
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_projection_indices(Some(projection.to_vec()))?
            .with_file_groups(groups)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// A plan reading the rows of `table` in `range` (minute indexes) from the store, with
    /// the columns `projection` picks of `schema` (the table's whole schema). `None` when no
    /// file holds such rows.
    pub(crate) fn scan(
        &self,
        state: &dyn Session,
        table: Table,
        schema: &SchemaRef,
        projection: &[usize],
        range: RangeInclusive<u64>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let files = self.files(table, &range);
        if files.is_empty() || range.is_empty() {
            return Ok(None);
        }
        self.files_read
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        // The time column is read to filter by, then dropped if the query did not ask for it.
        let with_time: Vec<usize> = if projection.contains(&0) {
            projection.to_vec()
        } else {
            std::iter::once(0)
                .chain(projection.iter().copied())
                .collect()
        };
        let nanos = |minute: u64| {
            lit(ScalarValue::TimestampNanosecond(
                Some(i64::try_from(minute.saturating_mul(MINUTE_NANOS)).unwrap_or(i64::MAX)),
                Some(Arc::from(TIME_ZONE)),
            ))
        };
        let time = col(time_column(table));
        let predicate: Expr = time
            .clone()
            .gt_eq(nanos(*range.start()))
            .and(time.lt(nanos(range.end().saturating_add(1))));
        let whole = DFSchema::try_from(schema.as_ref().clone())?;
        let pruning = state.create_physical_expr(predicate.clone(), &whole)?;
        let source = ParquetSource::new(schema.clone()).with_predicate(pruning);
        let read = self.read_files(state, source, &with_time, files)?;
        let read_schema = DFSchema::try_from(read.schema().as_ref().clone())?;
        let filter = state.create_physical_expr(predicate, &read_schema)?;
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(filter, read)?);
        if with_time.len() == projection.len() {
            return Ok(Some(filtered));
        }
        let out = filtered.schema();
        let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = (1..out.fields().len())
            .map(|i| {
                let name = out.field(i).name().clone();
                (
                    Arc::new(PhysicalColumn::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Some(Arc::new(ProjectionExec::try_new(columns, filtered)?)))
    }
}
