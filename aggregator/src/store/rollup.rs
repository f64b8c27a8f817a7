//! The rows of the rollup tables as Arrow: the schema of `latency_minutes` and
//! `latency_hours`, and the batch builder both the SQL scans and the checkpoint files use, so a
//! row reads the same from memory and from the store.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, StringBuilder, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};

use crate::clock::MINUTE_NANOS;
use crate::record::SeriesKey;
use crate::state::{Row, RowVisitor, Source, Table};

/// The time zone of every timestamp column and value (UTC).
pub const TIME_ZONE: &str = "+00:00";

/// The columns of the rollup tables, in order: the time column (`minute` or `hour`),
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

/// Rows of `table` (`Minutes` or `Hours`) as one batch of the whole rollup schema: what
/// checkpoints write as Parquet.
pub fn rollup_batch<'a>(
    table: Table,
    dimensions: &[String],
    thresholds: &[String],
    rows: impl IntoIterator<Item = (&'a SeriesKey, Source, u64, &'a Row)>,
) -> Result<RecordBatch> {
    use datafusion::execution::memory_pool::{MemoryPool, UnboundedMemoryPool};
    let schema = rollup_schema(table, dimensions, thresholds);
    let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
    let reservation = MemoryConsumer::new("checkpoint").register(&pool);
    let picked = columns(dimensions.len(), thresholds.len());
    let mut builder = BatchBuilder::new(&picked, 1024, reservation);
    for (key, source, at, row) in rows {
        builder.push(key, source, at, row);
    }
    builder.finish(&schema)
}

/// The time column's name.
pub fn time_column(table: Table) -> &'static str {
    match table {
        Table::Minutes | Table::Blocks => "minute",
        Table::Hours => "hour",
    }
}

/// What a column of the rollup schema holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
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

/// Every column of the rollup schema, in order.
pub(crate) fn columns(dimensions: usize, thresholds: usize) -> Vec<Column> {
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

/// One column being built.
#[derive(Debug)]
enum ColumnBuilder {
    Time(Vec<i64>),
    Text(Column, StringBuilder),
    Number(Column, Vec<u64>),
    Hdr(BinaryBuilder),
}

/// Builds one record batch of the projected columns from the rows a rollup source lends it,
/// counting the bytes built against a memory reservation as they grow.
pub(crate) struct BatchBuilder {
    columns: Vec<ColumnBuilder>,
    len: usize,
    current: Option<(SeriesKey, Source)>,
    reservation: MemoryReservation,
    /// Bytes built but not yet reserved.
    unreserved: usize,
    error: Option<DataFusionError>,
}

/// Bytes built between two reservation requests.
const RESERVE_STEP: usize = 1 << 20;

impl BatchBuilder {
    pub(crate) fn new(picked: &[Column], capacity: usize, reservation: MemoryReservation) -> Self {
        let columns = picked
            .iter()
            .map(|c| match *c {
                Column::Time => ColumnBuilder::Time(Vec::with_capacity(capacity)),
                Column::Service | Column::Endpoint | Column::Dimension(_) | Column::Source => {
                    ColumnBuilder::Text(*c, StringBuilder::with_capacity(capacity, capacity * 24))
                }
                Column::Requests | Column::Errors | Column::Recommendations | Column::Le(_) => {
                    ColumnBuilder::Number(*c, Vec::with_capacity(capacity))
                }
                Column::Hdr => ColumnBuilder::Hdr(BinaryBuilder::with_capacity(capacity, 0)),
            })
            .collect();
        Self {
            columns,
            len: 0,
            current: None,
            reservation,
            unreserved: 0,
            error: None,
        }
    }

    /// Rows appended since the last batch.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the visit was stopped by an error (kept for [`BatchBuilder::finish`]).
    pub(crate) fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Gives back the memory reserved so far.
    pub(crate) fn free(&mut self) {
        self.reservation.free();
    }

    /// Appends one row; returns the bytes it added.
    pub(crate) fn push(&mut self, key: &SeriesKey, source: Source, at: u64, row: &Row) -> usize {
        let mut bytes = 0;
        for column in &mut self.columns {
            match column {
                ColumnBuilder::Time(v) => {
                    v.push((at * MINUTE_NANOS) as i64);
                    bytes += 8;
                }
                ColumnBuilder::Text(c, b) => {
                    let text = match *c {
                        Column::Service => &key.service,
                        Column::Endpoint => &key.endpoint,
                        Column::Dimension(i) => key.dimensions.get(i).map_or("", |d| d),
                        _ => source.label(),
                    };
                    b.append_value(text);
                    bytes += 4 + text.len();
                }
                ColumnBuilder::Number(c, v) => {
                    let counts = &row.counts;
                    v.push(match *c {
                        Column::Requests => counts.requests,
                        Column::Errors => counts.errors,
                        Column::Recommendations => counts.recommendations,
                        Column::Le(i) => counts.le[i],
                        _ => 0,
                    });
                    bytes += 8;
                }
                ColumnBuilder::Hdr(b) => {
                    b.append_value(&row.hdr);
                    bytes += 4 + row.hdr.len();
                }
            }
        }
        self.len += 1;
        bytes
    }

    fn reserve(&mut self) -> ControlFlow<()> {
        if let Err(e) = self.reservation.try_grow(self.unreserved) {
            self.error = Some(e);
            return ControlFlow::Break(());
        }
        self.unreserved = 0;
        ControlFlow::Continue(())
    }

    /// The rows appended so far as one batch, the builders emptied for the next one (sized like
    /// this one, so they seldom grow by copying), and the error that stopped the visit if any.
    pub(crate) fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.reserve().is_break() {
            return Err(self.error.take().unwrap_or_else(|| {
                DataFusionError::Internal("reservation failed without an error".into())
            }));
        }
        let len = self.len;
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| match c {
                ColumnBuilder::Time(v) => Arc::new(
                    TimestampNanosecondArray::from(std::mem::replace(v, Vec::with_capacity(len)))
                        .with_timezone(TIME_ZONE),
                ) as ArrayRef,
                ColumnBuilder::Text(_, b) => {
                    let a = b.finish();
                    *b = StringBuilder::with_capacity(len, a.value_data().len());
                    Arc::new(a) as ArrayRef
                }
                ColumnBuilder::Number(_, v) => Arc::new(UInt64Array::from(std::mem::replace(
                    v,
                    Vec::with_capacity(len),
                ))),
                ColumnBuilder::Hdr(b) => {
                    let a = b.finish();
                    *b = BinaryBuilder::with_capacity(len, a.value_data().len() + len * 64);
                    Arc::new(a)
                }
            })
            .collect();
        // `count(*)` projects no column at all; the row count still has to travel.
        let options = RecordBatchOptions::new().with_row_count(Some(self.len));
        self.len = 0;
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            arrays,
            &options,
        )?)
    }
}

impl RowVisitor for BatchBuilder {
    fn series(&mut self, key: &SeriesKey, source: Source) -> ControlFlow<()> {
        self.current = Some((key.clone(), source));
        ControlFlow::Continue(())
    }

    fn row(&mut self, at: u64, row: &Row) -> ControlFlow<()> {
        let Some((key, source)) = self.current.take() else {
            return ControlFlow::Continue(());
        };
        self.unreserved += self.push(&key, source, at, row);
        self.current = Some((key, source));
        if self.unreserved >= RESERVE_STEP {
            return self.reserve();
        }
        ControlFlow::Continue(())
    }
}
