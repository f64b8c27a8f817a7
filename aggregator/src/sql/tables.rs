//! `latency_minutes` and `latency_hours` as DataFusion tables over the in-memory rollups. A scan
//! takes the rows it needs under the lock (shared bytes, so cheap), narrowed by any time filter
//! DataFusion pushes down, and hands them over as Arrow record batches split across the target
//! partitions.

use std::ops::RangeInclusive;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, StringBuilder, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;

use super::functions::TIME_ZONE;
use crate::clock::MINUTE_NANOS;
use crate::state::{SeriesRows, SharedState, Table, lock};

/// The columns of both rollup tables, in order: the time column (`minute` or `hour`),
/// `service`, `endpoint`, the extra dimensions, `source`, `requests`, `errors`,
/// `recommendations`, the `requests_le_*` columns, and `hdr`.
pub fn rollup_schema(table: Table, dimensions: &[String], thresholds: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new(
            time_column(table),
            DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from(TIME_ZONE))),
            false,
        ),
        Field::new("service", DataType::Utf8, false),
        Field::new("endpoint", DataType::Utf8, false),
    ];
    fields.extend(
        dimensions
            .iter()
            .map(|d| Field::new(d, DataType::Utf8, false)),
    );
    fields.push(Field::new("source", DataType::Utf8, false));
    for name in ["requests", "errors", "recommendations"] {
        fields.push(Field::new(name, DataType::UInt64, false));
    }
    fields.extend(
        thresholds
            .iter()
            .map(|t| Field::new(t, DataType::UInt64, false)),
    );
    fields.push(Field::new("hdr", DataType::Binary, false));
    Arc::new(Schema::new(fields))
}

/// The time column's name.
pub fn time_column(table: Table) -> &'static str {
    match table {
        Table::Minutes => "minute",
        Table::Hours => "hour",
    }
}

/// What a column of the rollup schema holds.
#[derive(Debug, Clone, Copy)]
enum Column {
    Time,
    Service,
    Endpoint,
    Dimension(usize),
    Source,
    Requests,
    Errors,
    Recommendations,
    Le(usize),
    Hdr,
}

fn columns(dimensions: usize, thresholds: usize) -> Vec<Column> {
    let mut out = vec![Column::Time, Column::Service, Column::Endpoint];
    out.extend((0..dimensions).map(Column::Dimension));
    out.extend([
        Column::Source,
        Column::Requests,
        Column::Errors,
        Column::Recommendations,
    ]);
    out.extend((0..thresholds).map(Column::Le));
    out.push(Column::Hdr);
    out
}

/// Builds the record batches of `rows` for the columns in `projection` (all when `None`):
/// `partitions` lists of batches of at most `batch_size` rows, series kept whole.
pub fn rollup_batches(
    schema: &SchemaRef,
    dimensions: usize,
    thresholds: usize,
    projection: Option<&[usize]>,
    rows: &[SeriesRows],
    partitions: usize,
    batch_size: usize,
) -> Result<Vec<Vec<RecordBatch>>> {
    let all = columns(dimensions, thresholds);
    let picked: Vec<usize> = match projection {
        Some(p) => p.to_vec(),
        None => (0..all.len()).collect(),
    };
    let projected = Arc::new(schema.project(&picked)?);
    let picked: Vec<Column> = picked.iter().map(|&i| all[i]).collect();
    let partitions = partitions.max(1);
    let batch_size = batch_size.max(1);
    let total: usize = rows.iter().map(|s| s.rows.len()).sum();
    let per_partition = total.div_ceil(partitions).max(1);
    let mut out = vec![Vec::new(); partitions];
    let mut partition = 0;
    let mut in_partition = 0;
    let mut pending: Vec<(&SeriesRows, usize, usize)> = Vec::new(); // (series, from, to)
    let mut pending_rows = 0;
    for series in rows {
        let mut from = 0;
        while from < series.rows.len() {
            let to = (from + batch_size - pending_rows).min(series.rows.len());
            pending.push((series, from, to));
            pending_rows += to - from;
            from = to;
            if pending_rows == batch_size {
                out[partition].push(build_batch(&projected, &picked, &pending, pending_rows)?);
                in_partition += pending_rows;
                pending.clear();
                pending_rows = 0;
            }
        }
        // Move to the next partition between series once this one has its share.
        if in_partition + pending_rows >= per_partition && partition + 1 < partitions {
            if pending_rows > 0 {
                out[partition].push(build_batch(&projected, &picked, &pending, pending_rows)?);
                pending.clear();
                pending_rows = 0;
            }
            partition += 1;
            in_partition = 0;
        }
    }
    if pending_rows > 0 {
        out[partition].push(build_batch(&projected, &picked, &pending, pending_rows)?);
    }
    Ok(out)
}

fn build_batch(
    schema: &SchemaRef,
    columns: &[Column],
    slices: &[(&SeriesRows, usize, usize)],
    len: usize,
) -> Result<RecordBatch> {
    let rows = || {
        slices
            .iter()
            .flat_map(|(s, from, to)| s.rows[*from..*to].iter().map(move |r| (*s, r)))
    };
    let strings = |f: &dyn Fn(&SeriesRows) -> &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(len, len * 16);
        for (s, from, to) in slices {
            let v = f(s);
            for _ in *from..*to {
                b.append_value(v);
            }
        }
        Arc::new(b.finish())
    };
    let numbers = |f: &dyn Fn(&crate::state::RowCounts) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(
            rows().map(|(_, (_, r))| f(&r.counts)),
        ))
    };
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|c| match *c {
            Column::Time => Arc::new(
                TimestampNanosecondArray::from_iter_values(
                    rows().map(|(_, (m, _))| (*m * MINUTE_NANOS) as i64),
                )
                .with_timezone(TIME_ZONE),
            ) as ArrayRef,
            Column::Service => strings(&|s| &s.key.service),
            Column::Endpoint => strings(&|s| &s.key.endpoint),
            Column::Dimension(i) => strings(&move |s| s.key.dimensions.get(i).map_or("", |d| d)),
            Column::Source => strings(&|s| s.source.label()),
            Column::Requests => numbers(&|c| c.requests),
            Column::Errors => numbers(&|c| c.errors),
            Column::Recommendations => numbers(&|c| c.recommendations),
            Column::Le(i) => numbers(&move |c| c.le[i]),
            Column::Hdr => {
                let bytes = rows().map(|(_, (_, r))| r.hdr.len()).sum();
                let mut b = BinaryBuilder::with_capacity(len, bytes);
                for (_, (_, r)) in rows() {
                    b.append_value(&r.hdr);
                }
                Arc::new(b.finish())
            }
        })
        .collect();
    // `count(*)` projects no column at all; the row count still has to travel.
    let options = RecordBatchOptions::new().with_row_count(Some(len));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &options,
    )?)
}

/// One rollup table over the live state.
#[derive(Debug)]
pub struct RollupTable {
    table: Table,
    state: SharedState,
    schema: SchemaRef,
    dimensions: usize,
    thresholds: usize,
}

impl RollupTable {
    pub fn new(table: Table, state: SharedState) -> Self {
        let (dimensions, thresholds) = {
            let guard = lock(&state);
            (
                guard.dimension_labels().to_vec(),
                guard.threshold_columns().to_vec(),
            )
        };
        Self {
            table,
            schema: rollup_schema(table, &dimensions, &thresholds),
            dimensions: dimensions.len(),
            thresholds: thresholds.len(),
            state,
        }
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
        let range = time_range(filters, time_column(self.table));
        let rows = lock(&self.state)
            .rows(self.table, range)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // The batches are built before the query runs, outside DataFusion's operators: check
        // them against the memory pool first, so a scan larger than `sql.memory_limit_bytes`
        // is refused before it is built.
        let estimate: usize = rows
            .iter()
            .map(|s| {
                let key = s.key.service.len()
                    + s.key.endpoint.len()
                    + s.key.dimensions.iter().map(|d| d.len()).sum::<usize>();
                s.rows
                    .iter()
                    .map(|(_, r)| r.hdr.len() + key + 8 * (6 + self.thresholds))
                    .sum::<usize>()
            })
            .sum();
        let reservation = MemoryConsumer::new(format!("{} scan", time_column(self.table)))
            .register(&state.runtime_env().memory_pool);
        reservation.try_grow(estimate)?;
        drop(reservation);
        let options = state.config_options();
        let batches = rollup_batches(
            &self.schema,
            self.dimensions,
            self.thresholds,
            projection.map(|p| p.as_slice()),
            &rows,
            options.execution.target_partitions,
            options.execution.batch_size,
        )?;
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(MemorySourceConfig::try_new_exec(&batches, projected, None)?)
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
    use datafusion::prelude::{col, lit};

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
