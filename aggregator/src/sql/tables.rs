//! `latency_minutes` and `latency_hours` (and the blocks `/metrics` windows read) as DataFusion
//! tables over the in-memory rollups. A scan streams: each partition copies the Arrow columns it
//! needs a batch at a time, taking the state lock per batch, narrowed by any time filter
//! DataFusion pushes down, each series whole in the partition DataFusion's own hash of its key
//! picks. The scan declares that hash partitioning, so an aggregation by series runs in one
//! stage, without partial states or a repartition.

use std::collections::HashMap;
use std::ops::{ControlFlow, RangeInclusive};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::hash_utils::create_hashes;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};

use crate::clock::MINUTE_NANOS;
use crate::record::SeriesKey;
use crate::state::{Aggregator, Row, RowVisitor, Source, Table, lock};
use crate::store::history::History;
use crate::store::rollup::{BatchBuilder, Column, columns, rollup_schema, time_column};

/// The SQL name of a rollup table.
pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Minutes => "latency_minutes",
        Table::Hours => "latency_hours",
        // Registered in `/metrics` sessions only.
        Table::Blocks => "latency_blocks",
    }
}

/// Where a rollup table's rows come from: the live state, or rows prepared by a bench or test.
pub trait RollupSource: std::fmt::Debug + Send + Sync {
    /// Label names of the extra dimension columns, in key order.
    fn dimension_labels(&self) -> Vec<String>;
    /// Names of the `requests_le_*` columns.
    fn threshold_columns(&self) -> Vec<String>;
    /// Every series key, in no particular order.
    fn series_keys(&self) -> Vec<SeriesKey>;
    /// Hands `visitor` the rows of `table` in `range` (minute indexes) for the series of `keys`
    /// still held, in that order, series by series. Stops after the series that brings the rows
    /// handed over to `row_budget` or more, and returns how many keys it went through.
    fn visit_rows(
        &self,
        table: Table,
        range: RangeInclusive<u64>,
        keys: &[SeriesKey],
        row_budget: usize,
        visitor: &mut dyn RowVisitor,
    ) -> crate::error::Result<(usize, ControlFlow<()>)>;
    /// The first minute (for hours, an hour's first minute) from which this source holds
    /// every row of `table`; older rows are history, read from the store. `None`: the source
    /// holds all there is.
    fn held_from(&self, _table: Table) -> Option<u64> {
        None
    }
}

impl RollupSource for Mutex<Aggregator> {
    fn dimension_labels(&self) -> Vec<String> {
        lock(self).dimension_labels().to_vec()
    }

    fn threshold_columns(&self) -> Vec<String> {
        lock(self).threshold_columns().to_vec()
    }

    fn series_keys(&self) -> Vec<SeriesKey> {
        lock(self).series_keys()
    }

    /// Takes the lock for one chunk (one batch of a scan partition), so ingest waits for one
    /// chunk's copy (or, once a minute, the roll the chunk makes), not for a whole scan. A batch
    /// applied between chunks shows in the later chunks' series only; the time range is the
    /// same for all.
    fn visit_rows(
        &self,
        table: Table,
        range: RangeInclusive<u64>,
        keys: &[SeriesKey],
        row_budget: usize,
        visitor: &mut dyn RowVisitor,
    ) -> crate::error::Result<(usize, ControlFlow<()>)> {
        let mut guard = lock(self);
        let read = guard.visit_rows(table, range, keys, row_budget, visitor);
        // A waiting writer gets the lock before the next chunk.
        MutexGuard::unlock_fair(guard);
        read
    }

    /// What memory holds once the clock's current minute has rolled: minutes of the last 3 h,
    /// hours from `Aggregator::first_hour_held`.
    fn held_from(&self, table: Table) -> Option<u64> {
        let a = lock(self);
        let now = a.clock().now_nanos();
        Some(match table {
            Table::Hours => a.first_hour_held(now),
            Table::Minutes | Table::Blocks => {
                crate::clock::minute_of(now).saturating_sub(crate::state::MINUTES_KEPT - 1)
            }
        })
    }
}

/// A series with its rows: (first minute of the row's minute, block or hour, row).
pub type PreparedSeries = (SeriesKey, Source, Vec<(u64, Row)>);

/// Rows prepared up front: the merged final hours `/metrics` keeps between scrapes, and the rows
/// of benches and tests. Either table reads the same rows.
#[derive(Debug, Default)]
pub struct PreparedRows {
    dimension_labels: Vec<String>,
    threshold_columns: Vec<String>,
    series: Vec<PreparedSeries>,
    /// Position of each key in `series`.
    index: HashMap<SeriesKey, usize>,
}

impl PreparedRows {
    /// Rows of a table with these extra dimensions and threshold columns; a key given twice
    /// keeps its last rows.
    pub fn new(
        dimension_labels: Vec<String>,
        threshold_columns: Vec<String>,
        series: Vec<PreparedSeries>,
    ) -> Self {
        let index = series
            .iter()
            .enumerate()
            .map(|(i, (key, ..))| (key.clone(), i))
            .collect();
        Self {
            dimension_labels,
            threshold_columns,
            series,
            index,
        }
    }

    /// The series and their rows.
    pub fn series(&self) -> &[PreparedSeries] {
        &self.series
    }

    /// Whether `key` has rows here.
    pub fn contains(&self, key: &SeriesKey) -> bool {
        self.index.contains_key(key)
    }

    /// The rows of `key`, if it has any here.
    pub fn get(&self, key: &SeriesKey) -> Option<&[(u64, Row)]> {
        self.index.get(key).map(|&i| self.series[i].2.as_slice())
    }

    /// The same rows without the series of `keys`.
    pub fn without(&self, keys: &std::collections::HashSet<SeriesKey>) -> Self {
        let series = self
            .series
            .iter()
            .filter(|(key, ..)| !keys.contains(key))
            .cloned()
            .collect();
        Self::new(
            self.dimension_labels.clone(),
            self.threshold_columns.clone(),
            series,
        )
    }
}

impl RollupSource for PreparedRows {
    fn dimension_labels(&self) -> Vec<String> {
        self.dimension_labels.clone()
    }

    fn threshold_columns(&self) -> Vec<String> {
        self.threshold_columns.clone()
    }

    fn series_keys(&self) -> Vec<SeriesKey> {
        self.index.keys().cloned().collect()
    }

    fn visit_rows(
        &self,
        _: Table,
        range: RangeInclusive<u64>,
        keys: &[SeriesKey],
        row_budget: usize,
        visitor: &mut dyn RowVisitor,
    ) -> crate::error::Result<(usize, ControlFlow<()>)> {
        let mut handed = 0;
        for (done, key) in keys.iter().enumerate() {
            if handed >= row_budget {
                return Ok((done, ControlFlow::Continue(())));
            }
            let Some((_, source, rows)) = self.index.get(key).map(|&i| &self.series[i]) else {
                continue;
            };
            let mut rows = rows.iter().filter(|(at, _)| range.contains(at)).peekable();
            if rows.peek().is_some() && visitor.series(key, *source).is_break() {
                return Ok((done + 1, ControlFlow::Break(())));
            }
            for (at, row) in rows {
                handed += 1;
                if visitor.row(*at, row).is_break() {
                    return Ok((done + 1, ControlFlow::Break(())));
                }
            }
        }
        Ok((keys.len(), ControlFlow::Continue(())))
    }
}

/// Splits `keys` among `partitions` as DataFusion's `RepartitionExec` would: by its hash of the
/// key columns (service, endpoint and `dimensions` extra dimensions, as the columns hold them)
/// modulo the partition count. Each partition's keys stay in the order given.
fn partition_keys(
    keys: Vec<SeriesKey>,
    dimensions: usize,
    partitions: usize,
) -> Result<Vec<Vec<SeriesKey>>> {
    let partitions = partitions.max(1);
    let column = |text: &dyn Fn(&SeriesKey) -> &str| {
        Arc::new(StringArray::from_iter_values(keys.iter().map(text))) as ArrayRef
    };
    let mut arrays = vec![column(&|k| &k.service), column(&|k| &k.endpoint)];
    arrays.extend((0..dimensions).map(|i| column(&move |k| k.dimensions.get(i).map_or("", |d| d))));
    let mut hashes = vec![0u64; keys.len()];
    create_hashes(
        &arrays,
        REPARTITION_RANDOM_STATE.random_state(),
        &mut hashes,
    )?;
    let mut out: Vec<Vec<SeriesKey>> = vec![Vec::new(); partitions];
    for (key, hash) in keys.into_iter().zip(hashes) {
        out[(hash % partitions as u64) as usize].push(key);
    }
    Ok(out)
}

/// A scan of a rollup table. Its partitions split the series by DataFusion's own repartitioning
/// hash of their keys, each series whole in one partition, so it declares `Partitioning::Hash`
/// when every key column is projected and an aggregation by series runs in one stage. Each
/// partition streams: a batch at a time is copied from the source (one hold of the state lock)
/// and counted against the query's memory pool while it is built, so a scan costs one batch of
/// memory per partition however many rows it reads, and a `LIMIT` stops it early.
#[derive(Debug)]
pub struct RollupScanExec {
    table: Table,
    source: Arc<dyn RollupSource>,
    range: RangeInclusive<u64>,
    schema: SchemaRef,
    picked: Vec<Column>,
    /// The series of each partition, in key order.
    partitions: Vec<Arc<[SeriesKey]>>,
    batch_size: usize,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for RollupScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let series: Vec<usize> = self.partitions.iter().map(|p| p.len()).collect();
        write!(
            f,
            "RollupScanExec: table={}, {}=[{}, {}], series={series:?}, partitioning={}",
            table_name(self.table),
            time_column(self.table),
            self.range.start(),
            self.range.end(),
            self.properties.partitioning
        )
    }
}

impl ExecutionPlan for RollupScanExec {
    fn name(&self) -> &'static str {
        "RollupScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let keys = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "RollupScanExec has {} partitions, not {partition}",
                self.partitions.len()
            ))
        })?;
        let reservation =
            MemoryConsumer::new(format!("{} scan[{partition}]", table_name(self.table)))
                .register(context.memory_pool());
        let capacity = self.batch_size.min(1024);
        let read = ScanPartition {
            table: self.table,
            source: self.source.clone(),
            range: self.range.clone(),
            schema: self.schema.clone(),
            keys,
            next: 0,
            batch_size: self.batch_size,
            builder: BatchBuilder::new(&self.picked, capacity, reservation),
        };
        let batches = futures::stream::unfold(read, |mut read| async move {
            let batch = read.next_batch().transpose()?;
            Some((batch, read))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

/// One partition of a scan being read.
struct ScanPartition {
    table: Table,
    source: Arc<dyn RollupSource>,
    range: RangeInclusive<u64>,
    schema: SchemaRef,
    keys: Arc<[SeriesKey]>,
    /// Index in `keys` of the next series to read.
    next: usize,
    batch_size: usize,
    builder: BatchBuilder,
}

impl ScanPartition {
    /// The next batch of about `batch_size` rows (whole series), or `None` at the end.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        // The batch handed out last is the consumer's now.
        self.builder.free();
        while self.next < self.keys.len() {
            let read = self.source.visit_rows(
                self.table,
                self.range.clone(),
                &self.keys[self.next..],
                self.batch_size,
                &mut self.builder,
            );
            match &read {
                Ok((done, _)) if !self.builder.failed() => self.next += (*done).max(1),
                // Nothing more after an error.
                _ => self.next = self.keys.len(),
            }
            if let Err(e) = read {
                return Err(DataFusionError::External(Box::new(e)));
            }
            if self.builder.failed() || self.builder.len() > 0 {
                return self.builder.finish(&self.schema).map(Some);
            }
        }
        Ok(None)
    }
}
/// One rollup table over a [`RollupSource`], the live state in the service.
#[derive(Debug)]
pub struct RollupTable {
    table: Table,
    source: Arc<dyn RollupSource>,
    schema: SchemaRef,
    dimensions: usize,
    thresholds: usize,
    /// Rows older than the source holds, from the store.
    history: Option<Arc<History>>,
}

impl RollupTable {
    pub fn new(table: Table, source: Arc<dyn RollupSource>) -> Self {
        let (dimensions, thresholds) = (source.dimension_labels(), source.threshold_columns());
        Self {
            table,
            schema: rollup_schema(table, &dimensions, &thresholds),
            dimensions: dimensions.len(),
            thresholds: thresholds.len(),
            source,
            history: None,
        }
    }

    /// Reads the rows older than the source holds from `history` (minutes and hours only).
    pub fn with_history(mut self, history: Option<Arc<History>>) -> Self {
        if self.table != Table::Blocks {
            self.history = history;
        }
        self
    }
}

#[async_trait]
impl TableProvider for RollupTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let column = time_column(self.table);
        Ok(filters
            .iter()
            .map(|f| {
                if time_bound(f, column).is_some() {
                    // The scan narrows by minute; DataFusion still applies the exact filter.
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut range = time_range(filters, time_column(self.table));
        let all = columns(self.dimensions, self.thresholds);
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..all.len()).collect(),
        };
        // Rows before what memory holds come from the store; memory gives the rest.
        let mut stored = None;
        if let Some(history) = &self.history
            && let Some(from) = self.source.held_from(self.table)
            && *range.start() < from
        {
            let older = *range.start()..=(*range.end()).min(from - 1);
            stored = history.scan(state, self.table, &self.schema, &projection, older)?;
            range = from..=*range.end();
        }
        let schema = Arc::new(self.schema.project(&projection)?);
        let picked: Vec<Column> = projection.iter().map(|&i| all[i]).collect();
        let options = state.config_options();
        let mut keys = self.source.series_keys();
        keys.sort_unstable();
        let partitions =
            partition_keys(keys, self.dimensions, options.execution.target_partitions)?;
        let count = partitions.len();
        let key_columns: Option<Vec<Arc<dyn PhysicalExpr>>> = [Column::Service, Column::Endpoint]
            .into_iter()
            .chain((0..self.dimensions).map(Column::Dimension))
            .map(|key| {
                picked
                    .iter()
                    .position(|c| *c == key)
                    .map(|i| -> Arc<dyn PhysicalExpr> {
                        Arc::new(PhysicalColumn::new(schema.field(i).name(), i))
                    })
            })
            .collect();
        let partitioning = match key_columns {
            Some(exprs) => Partitioning::Hash(exprs, count),
            None => Partitioning::UnknownPartitioning(count),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let memory: Arc<dyn ExecutionPlan> = Arc::new(RollupScanExec {
            table: self.table,
            source: self.source.clone(),
            range,
            schema,
            picked,
            partitions: partitions.into_iter().map(Arc::from).collect(),
            batch_size: options.execution.batch_size.max(1),
            properties: Arc::new(properties),
        });
        match stored {
            Some(stored) => UnionExec::try_new(vec![memory, stored]),
            None => Ok(memory),
        }
    }
}

/// The minutes (indexes since the epoch) the time filters among `filters` allow.
pub fn time_range(filters: &[Expr], column: &str) -> RangeInclusive<u64> {
    let mut range = 0..=u64::MAX;
    for f in filters {
        if let Some(r) = time_bound(f, column) {
            range = (*range.start()).max(*r.start())..=(*range.end()).min(*r.end());
        }
    }
    range
}

/// The minutes a filter `column <op> timestamp` (either way round, or BETWEEN) allows.
fn time_bound(filter: &Expr, column: &str) -> Option<RangeInclusive<u64>> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, nanos) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) if c.name == column => (*op, nanos(v)?),
                (Expr::Literal(v, _), Expr::Column(c)) if c.name == column => {
                    (op.swap()?, nanos(v)?)
                }
                (l, r) if *op == Operator::And => {
                    let (a, b) = (time_bound(l, column), time_bound(r, column));
                    return match (a, b) {
                        (Some(a), Some(b)) => {
                            Some((*a.start()).max(*b.start())..=(*a.end()).min(*b.end()))
                        }
                        (Some(x), None) | (None, Some(x)) => Some(x),
                        (None, None) => None,
                    };
                }
                _ => return None,
            };
            // A row's time is its minute's first nanosecond: minute m passes `time >= t` when
            // m·60 s >= t, and so on.
            let m = i128::from(MINUTE_NANOS);
            let floor = nanos.div_euclid(m);
            let ceil = floor + i128::from(nanos.rem_euclid(m) != 0);
            let clamp = |v: i128| v.clamp(0, i128::from(u64::MAX)) as u64;
            match op {
                Operator::GtEq => Some(clamp(ceil)..=u64::MAX),
                Operator::Gt => Some(clamp(floor + 1)..=u64::MAX),
                Operator::LtEq => Some(0..=clamp(floor)),
                Operator::Lt => Some(0..=clamp(ceil - 1)),
                // Equal to an instant inside a minute matches no row; DataFusion's own filter
                // says so, the scan need not.
                Operator::Eq if ceil == floor => Some(clamp(floor)..=clamp(floor)),
                _ => None,
            }
        }
        Expr::Between(b) if !b.negated => {
            match (b.expr.as_ref(), b.low.as_ref(), b.high.as_ref()) {
                (Expr::Column(c), Expr::Literal(low, _), Expr::Literal(high, _))
                    if c.name == column =>
                {
                    let low = Expr::Column(c.clone()).gt_eq(Expr::Literal(low.clone(), None));
                    let high = Expr::Column(c.clone()).lt_eq(Expr::Literal(high.clone(), None));
                    time_bound(&low.and(high), column)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A timestamp literal in nanoseconds since the epoch.
fn nanos(v: &ScalarValue) -> Option<i128> {
    let (n, scale) = match v {
        ScalarValue::TimestampNanosecond(Some(n), _) => (*n, 1),
        ScalarValue::TimestampMicrosecond(Some(n), _) => (*n, 1_000),
        ScalarValue::TimestampMillisecond(Some(n), _) => (*n, 1_000_000),
        ScalarValue::TimestampSecond(Some(n), _) => (*n, 1_000_000_000),
        _ => return None,
    };
    Some(i128::from(n) * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram;
    use crate::sql::functions;
    use crate::state::RowCounts;
    use crate::store::rollup::TIME_ZONE;
    use bytes::Bytes;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::{collect, collect_partitioned};
    use datafusion::prelude::{SessionConfig, SessionContext, col, lit};

    /// 40 series over 3 services and 2 regions, 5 rows each of known latencies.
    fn prepared() -> Arc<PreparedRows> {
        let series = (0..40u64)
            .map(|i| {
                let key = SeriesKey {
                    service: format!("svc-{}", i % 3).as_str().into(),
                    endpoint: format!("GET /e/{i}").as_str().into(),
                    dimensions: vec![if i % 2 == 0 { "eu" } else { "us" }.into()],
                };
                let rows = (0..5u64)
                    .map(|m| {
                        let mut h = histogram::new_histogram(2).unwrap();
                        let n = i + m + 1;
                        for v in 1..=n {
                            histogram::record(&mut h, v * 1_000_000);
                        }
                        let row = Row {
                            counts: RowCounts {
                                requests: n,
                                ..RowCounts::default()
                            },
                            hdr: Bytes::from(histogram::encode(&h).unwrap()),
                        };
                        (1_000 + m * 60, row)
                    })
                    .collect();
                (key, Source::Span, rows)
            })
            .collect();
        Arc::new(PreparedRows::new(
            vec!["region".into()],
            vec!["requests_le_0_2".into()],
            series,
        ))
    }

    fn context(rows: &Arc<PreparedRows>, partitions: usize) -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(partitions);
        config.options_mut().execution.time_zone = Some(TIME_ZONE.to_owned());
        let ctx = SessionContext::new_with_config(config);
        functions::register(&ctx, 2_000 * MINUTE_NANOS);
        for (table, name) in [
            (Table::Minutes, "latency_minutes"),
            (Table::Hours, "latency_hours"),
        ] {
            let provider = RollupTable::new(table, rows.clone());
            ctx.register_table(name, Arc::new(provider)).unwrap();
        }
        ctx
    }

    #[tokio::test]
    async fn each_series_sits_in_the_partition_datafusion_hashes_it_to() {
        let rows = prepared();
        let ctx = context(&rows, 4);
        let provider = RollupTable::new(Table::Minutes, rows.clone());
        let plan = provider.scan(&ctx.state(), None, &[], None).await.unwrap();
        match plan.properties().partitioning.clone() {
            Partitioning::Hash(exprs, 4) => {
                let names: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                assert_eq!(names, ["service@1", "endpoint@2", "region@3"]);
            }
            other => panic!("expected hash partitioning by series, got {other}"),
        }
        let partitions = collect_partitioned(plan, ctx.task_ctx()).await.unwrap();
        let mut total = 0;
        for (i, batches) in partitions.iter().enumerate() {
            assert!(!batches.is_empty(), "partition {i} is empty");
            for batch in batches {
                let keys: Vec<ArrayRef> = (1..=3).map(|c| batch.column(c).clone()).collect();
                let mut hashes = vec![0; batch.num_rows()];
                create_hashes(&keys, REPARTITION_RANDOM_STATE.random_state(), &mut hashes).unwrap();
                assert!(hashes.iter().all(|h| h % 4 == i as u64), "partition {i}");
                total += batch.num_rows();
            }
        }
        assert_eq!(total, 200);
        // Without every key column the scan promises nothing about where series sit.
        let plan = provider
            .scan(&ctx.state(), Some(&vec![1, 5]), &[], None)
            .await
            .unwrap();
        assert!(matches!(
            plan.properties().partitioning,
            Partitioning::UnknownPartitioning(4)
        ));
    }

    #[tokio::test]
    async fn the_live_state_is_read_whole_across_lock_chunks() {
        use crate::config::{AggregatorConfig, IngestConfig};
        use crate::record::RequestRecord;
        use crate::{Clock, Telemetry};
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        use std::time::{Duration, UNIX_EPOCH};

        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let mut aggregator = Aggregator::new(
            &IngestConfig::default(),
            &AggregatorConfig::default(),
            clock.clone(),
            Arc::new(Telemetry::default()),
        )
        .unwrap();
        // 300 series × 60 minutes: many batches, each one hold of the lock.
        let keys: Vec<SeriesKey> = (0..300)
            .map(|i| SeriesKey {
                service: "svc".into(),
                endpoint: format!("GET /e/{i}").as_str().into(),
                dimensions: Vec::new(),
            })
            .collect();
        for _ in 0..60 {
            let now = clock.now_nanos();
            let records: Vec<RequestRecord> = keys
                .iter()
                .map(|key| RequestRecord {
                    key: key.clone(),
                    end_unix_nanos: now,
                    duration_nanos: 5_000_000,
                    error: false,
                    recommendations: 1,
                })
                .collect();
            aggregator.apply(&records);
            clock.advance(Duration::from_secs(60));
        }
        let state = crate::state::shared(aggregator);
        // Batches of 1 000 rows: each partition takes the lock about 9 times.
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(1_000);
        config.options_mut().execution.time_zone = Some(TIME_ZONE.to_owned());
        let ctx = SessionContext::new_with_config(config);
        functions::register(&ctx, clock.now_nanos());
        let provider = RollupTable::new(Table::Minutes, state);
        ctx.register_table("latency_minutes", Arc::new(provider))
            .unwrap();
        let batches = ctx
            .sql(
                "SELECT count(*), CAST(sum(requests) AS BIGINT), count(DISTINCT endpoint) \
                 FROM latency_minutes",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let value = |c: usize| batches[0].column(c).as_primitive::<Int64Type>().value(0);
        assert_eq!((value(0), value(1), value(2)), (18_000, 18_000, 300));
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_memory_pool_is_refused() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;

        let rows = prepared();
        let env = RuntimeEnvBuilder::new()
            .with_memory_limit(4 * 1024, 1.0)
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), env);
        let provider = RollupTable::new(Table::Minutes, rows);
        let plan = provider.scan(&ctx.state(), None, &[], None).await.unwrap();
        let e = collect(plan, ctx.task_ctx()).await.unwrap_err();
        assert!(
            matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)),
            "{e}"
        );
    }

    #[tokio::test]
    async fn scans_stream_batches_of_whole_series() {
        let rows = prepared();
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(12);
        config.options_mut().execution.time_zone = Some(TIME_ZONE.to_owned());
        let ctx = SessionContext::new_with_config(config);
        let provider = RollupTable::new(Table::Minutes, rows);
        let plan = provider.scan(&ctx.state(), None, &[], None).await.unwrap();
        let partitions = collect_partitioned(plan, ctx.task_ctx()).await.unwrap();
        let mut total = 0;
        for batches in &partitions {
            // 5 rows a series: a batch stops after the series that reaches 12 rows.
            assert!(batches.len() > 1);
            for batch in batches {
                assert!(batch.num_rows() <= 15 && batch.num_rows() % 5 == 0);
                total += batch.num_rows();
            }
        }
        assert_eq!(total, 200);
        // A LIMIT stops reading early, and the partial result is still well formed.
        let ctx = context(&prepared(), 2);
        let batches = ctx
            .sql("SELECT hdr FROM latency_minutes LIMIT 3")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    }

    #[tokio::test]
    async fn queries_on_hash_partitioned_scans_equal_one_partition() {
        let rows = prepared();
        let (one, four) = (context(&rows, 1), context(&rows, 4));
        let by_series = "SELECT service, endpoint, region, sum(requests) AS n, \
            hdr_quantile(hdr_merge(hdr), 0.99) AS p99 FROM latency_minutes \
            WHERE minute >= now() - INTERVAL '1 day' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";
        // Aggregating by series needs no repartition and no partial states.
        crate::sql::testing::assert_one_stage(four.sql(by_series).await.unwrap()).await;
        for sql in [
            by_series,
            "SELECT service, sum(requests) AS n, hdr_quantile(hdr_merge(hdr), 0.5) AS p50 \
             FROM latency_minutes GROUP BY 1 ORDER BY 1",
            "SELECT region, endpoint, count(*) AS c FROM latency_minutes GROUP BY 1, 2 \
             ORDER BY 1, 2",
            "SELECT m.service, m.endpoint, m.region, sum(m.requests) AS n, count(*) AS c \
             FROM latency_minutes m JOIN latency_hours h ON m.service = h.service \
             AND m.endpoint = h.endpoint AND m.region = h.region AND m.minute = h.hour \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ] {
            let mut out = Vec::new();
            for ctx in [&one, &four] {
                let plan = ctx
                    .sql(sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                let batches = collect(plan, ctx.task_ctx()).await.unwrap();
                out.push(pretty_format_batches(&batches).unwrap().to_string());
            }
            assert_eq!(out[0], out[1], "{sql}");
            assert!(out[0].lines().count() > 4, "{sql}: {}", out[0]);
        }
    }

    fn ts(minute: i64, extra_nanos: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(minute * MINUTE_NANOS as i64 + extra_nanos),
            Some(Arc::from(TIME_ZONE)),
        ))
    }

    #[test]
    fn time_filters_become_minute_ranges() {
        let m = || col("minute");
        assert_eq!(time_range(&[m().gt_eq(ts(10, 0))], "minute"), 10..=u64::MAX);
        assert_eq!(time_range(&[m().gt_eq(ts(10, 1))], "minute"), 11..=u64::MAX);
        assert_eq!(time_range(&[m().gt(ts(10, 0))], "minute"), 11..=u64::MAX);
        assert_eq!(time_range(&[m().lt(ts(10, 0))], "minute"), 0..=9);
        assert_eq!(time_range(&[m().lt(ts(10, 1))], "minute"), 0..=10);
        assert_eq!(time_range(&[m().lt_eq(ts(10, 1))], "minute"), 0..=10);
        assert_eq!(time_range(&[ts(10, 0).lt_eq(m())], "minute"), 10..=u64::MAX);
        assert_eq!(
            time_range(&[m().gt_eq(ts(10, 0)).and(m().lt(ts(20, 0)))], "minute"),
            10..=19
        );
        assert_eq!(
            time_range(&[m().between(ts(10, 0), ts(20, 0))], "minute"),
            10..=20
        );
        assert_eq!(time_range(&[m().gt_eq(ts(-5, 0))], "minute"), 0..=u64::MAX);
        // Other columns and shapes are left to DataFusion.
        assert_eq!(
            time_range(&[col("hour").gt_eq(ts(10, 0))], "minute"),
            0..=u64::MAX
        );
        assert_eq!(
            time_range(&[m().gt_eq(ts(10, 0)).or(m().lt(ts(5, 0)))], "minute"),
            0..=u64::MAX
        );
    }
}
