//! The rows of the rollup tables as Arrow: the schema of `latency_minutes` and
//! `latency_hours`, and the batch builder both the SQL scans and the checkpoint files use, so a
//! row reads the same from memory and from the store.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, StringArray, StringBuilder,
    TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};

use crate::clock::MINUTE_NANOS;
use crate::counts::Counts;
use crate::error::Error;
use crate::record::SeriesKey;
use crate::state::{LATENCY_BUCKETS_NANOS, Row, RowCounts, RowVisitor, Source, Table};
use crate::store::files::{column, parquet};
use crate::store::manifest::{FileEntry, FileKind, Layout, Pending};
use crate::store::paths::{rollup_path, state_path};

/// The time zone of every timestamp column and value (UTC).
pub const TIME_ZONE: &str = "+00:00";

/// The format of the rows a rollup file holds (each file's manifest entry says): 2 added the
/// `latency_le_*` and `latency_sum_nanos` columns. Rows of format 1 files read with them
/// unknown ([`RowCounts::legacy`]; null in SQL), and readers take them from the histogram.
pub const ROW_FORMAT: u32 = 2;

/// The `latency_le_*` columns: requests at or under each `recs_latency_seconds` bound, named
/// like the `requests_le_*` ones (`latency_le_0_005` … `latency_le_10`).
pub fn bucket_columns() -> Vec<String> {
    LATENCY_BUCKETS_NANOS
        .iter()
        .map(|&b| {
            crate::config::threshold_column(b as f64 / 1e9).replacen("requests", "latency", 1)
        })
        .collect()
}

/// The columns of the rollup tables, in order: the time column (`minute` or `hour`),
/// `service`, `endpoint`, the extra dimensions, `source`, `requests`, `errors`,
/// `recommendations`, the `requests_le_*` columns, `hdr`, the `latency_le_*` columns and
/// `latency_sum_nanos` (the last ones null in rows of format 1 files).
pub fn rollup_schema(table: Table, dimensions: &[String], thresholds: &[String]) -> SchemaRef {
    let mut fields = vec![Field::new(
        time_column(table),
        DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from(TIME_ZONE))),
        false,
    )];
    fields.extend(key_fields(dimensions));
    for name in ["requests", "errors", "recommendations"] {
        fields.push(Field::new(name, DataType::UInt64, false));
    }
    fields.extend(
        thresholds
            .iter()
            .map(|t| Field::new(t, DataType::UInt64, false)),
    );
    fields.push(Field::new("hdr", DataType::Binary, false));
    fields.extend(
        bucket_columns()
            .into_iter()
            .map(|name| Field::new(name, DataType::UInt64, true)),
    );
    fields.push(Field::new("latency_sum_nanos", DataType::UInt64, true));
    Arc::new(Schema::new(fields))
}

/// The columns naming a row's series and source, which the rollup and series files share:
/// `service`, `endpoint`, the extra dimensions and `source`.
pub fn key_fields(dimensions: &[String]) -> Vec<Field> {
    let mut fields = vec![
        Field::new("service", DataType::Utf8, false),
        Field::new("endpoint", DataType::Utf8, false),
    ];
    fields.extend(
        dimensions
            .iter()
            .map(|d| Field::new(d, DataType::Utf8, false)),
    );
    fields.push(Field::new("source", DataType::Utf8, false));
    fields
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
    Bucket(usize),
    SumNanos,
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
    out.extend((0..LATENCY_BUCKETS_NANOS.len()).map(Column::Bucket));
    out.push(Column::SumNanos);
    out
}

/// One column being built.
#[derive(Debug)]
enum ColumnBuilder {
    Time(Vec<i64>),
    Text(Column, StringBuilder),
    Number(Column, Vec<u64>),
    Hdr(BinaryBuilder),
    /// `latency_le_*` and `latency_sum_nanos`: null in rows without them.
    Nullable(Column, Vec<Option<u64>>),
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
                Column::Bucket(_) | Column::SumNanos => {
                    ColumnBuilder::Nullable(*c, Vec::with_capacity(capacity))
                }
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
                ColumnBuilder::Nullable(c, v) => {
                    let counts = &row.counts;
                    let value = match *c {
                        Column::Bucket(i) => counts.buckets[i],
                        _ => counts.sum_nanos,
                    };
                    v.push((!counts.legacy).then_some(value));
                    bytes += 9;
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
                ColumnBuilder::Nullable(_, v) => Arc::new(UInt64Array::from(std::mem::replace(
                    v,
                    Vec::with_capacity(len),
                ))),
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
    fn wants_hdr(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c, ColumnBuilder::Hdr(_)))
    }

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

// The rollup files of the store: the batches above as Parquet, and back.

/// A rollup file of `rows` of `table` for checkpoint `id`: the rows of one day (`day`), or the
/// open accumulators as minute rows (`day` is `None`).
pub fn rollup_file(
    id: u64,
    table: Table,
    layout: &Layout,
    rows: &[(&SeriesKey, Source, u64, &Row)],
    day: Option<i64>,
) -> crate::error::Result<Pending> {
    let batch = rollup_batch(
        table,
        &layout.dimensions,
        &layout.thresholds,
        rows.iter().copied(),
    )
    .map_err(|e| Error::Storage(format!("cannot build rollup rows: {e}")))?;
    let bytes = parquet(&batch)?;
    let (kind, path) = match (table, day) {
        (Table::Hours, Some(day)) => (FileKind::Hours, rollup_path(table, day, id, None)),
        (_, Some(day)) => (FileKind::Minutes, rollup_path(table, day, id, None)),
        (_, None) => (FileKind::Open, state_path(id, "open", "parquet")),
    };
    Ok(Pending {
        entry: FileEntry {
            path,
            kind,
            rows: rows.len() as u64,
            bytes: bytes.len() as u64,
            requests: rows.iter().map(|(_, _, _, r)| r.counts.requests).sum(),
            first_minute: rows.iter().map(|(_, _, at, _)| *at).min().unwrap_or(0),
            last_minute: rows.iter().map(|(_, _, at, _)| *at).max().unwrap_or(0),
            row_format: Some(ROW_FORMAT),
        },
        bytes,
    })
}

/// The series key of each row of `b` (its `service`, `endpoint` and dimension columns).
pub fn keys(b: &RecordBatch, layout: &Layout, file: &str) -> crate::error::Result<Vec<SeriesKey>> {
    let service = column::<StringArray>(b, "service", file)?;
    let endpoint = column::<StringArray>(b, "endpoint", file)?;
    let dims = layout
        .dimensions
        .iter()
        .map(|d| column::<StringArray>(b, d, file))
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok((0..b.num_rows())
        .map(|i| SeriesKey {
            service: Arc::from(service.value(i)),
            endpoint: Arc::from(endpoint.value(i)),
            dimensions: dims.iter().map(|d| Arc::from(d.value(i))).collect(),
        })
        .collect())
}

/// Rows of a rollup (or open) file, with each row's source.
pub fn rollup_rows(
    batches: &[RecordBatch],
    layout: &Layout,
    file: &str,
    time: &str,
) -> crate::error::Result<Vec<(SeriesKey, Source, u64, Row)>> {
    let mut out = Vec::new();
    for b in batches {
        let at = column::<TimestampNanosecondArray>(b, time, file)?;
        let keys = keys(b, layout, file)?;
        let source = column::<StringArray>(b, "source", file)?;
        let requests = column::<UInt64Array>(b, "requests", file)?;
        let errors = column::<UInt64Array>(b, "errors", file)?;
        let recs = column::<UInt64Array>(b, "recommendations", file)?;
        let le = layout
            .thresholds
            .iter()
            .map(|t| column::<UInt64Array>(b, t, file))
            .collect::<crate::error::Result<Vec<_>>>()?;
        let hdr = column::<BinaryArray>(b, "hdr", file)?;
        let exact = ExactColumns::of(b, file)?;
        for (i, key) in keys.into_iter().enumerate() {
            let mut counts = RowCounts {
                requests: requests.value(i),
                errors: errors.value(i),
                recommendations: recs.value(i),
                ..RowCounts::default()
            };
            for (slot, col) in counts.le.iter_mut().zip(&le) {
                *slot = col.value(i);
            }
            exact.fill(i, &mut counts);
            let nanos = u64::try_from(at.value(i))
                .map_err(|_| Error::Storage(format!("{file}: a row starts before 1970")))?;
            let source = Source::from_label(source.value(i)).ok_or_else(|| {
                Error::Storage(format!("{file}: unknown source `{}`", source.value(i)))
            })?;
            out.push((
                key,
                source,
                nanos / MINUTE_NANOS,
                Row {
                    counts,
                    hdr: Bytes::copy_from_slice(hdr.value(i)),
                },
            ));
        }
    }
    Ok(out)
}

/// The `latency_le_*` and `latency_sum_nanos` columns of a batch, where it has them (row
/// format 2 on).
pub struct ExactColumns<'a> {
    buckets: Vec<&'a UInt64Array>,
    sum: Option<&'a UInt64Array>,
}

impl<'a> ExactColumns<'a> {
    /// The columns of `b`, by name; a batch of a format 1 file has none.
    pub fn of(b: &'a RecordBatch, file: &str) -> crate::error::Result<Self> {
        let get = |name: &str| -> crate::error::Result<Option<&'a UInt64Array>> {
            b.column_by_name(name)
                .map(|c| {
                    c.as_primitive_opt::<UInt64Type>().ok_or_else(|| {
                        Error::Storage(format!("{file}: column `{name}` is not uint64"))
                    })
                })
                .transpose()
        };
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_NANOS.len());
        for name in bucket_columns() {
            match get(&name)? {
                Some(c) => buckets.push(c),
                None => {
                    return Ok(Self {
                        buckets: Vec::new(),
                        sum: None,
                    });
                }
            }
        }
        Ok(Self {
            buckets,
            sum: get("latency_sum_nanos")?,
        })
    }

    /// Sets row `i`'s bucket counts and sum in `counts`, or marks them unknown
    /// ([`RowCounts::legacy`]) where the row has none.
    pub fn fill(&self, i: usize, counts: &mut RowCounts) {
        match self.sum {
            Some(sum) if sum.is_valid(i) && self.buckets.iter().all(|b| b.is_valid(i)) => {
                for (slot, column) in counts.buckets.iter_mut().zip(&self.buckets) {
                    *slot = column.value(i);
                }
                counts.sum_nanos = sum.value(i);
                counts.legacy = false;
            }
            _ => counts.legacy = true,
        }
    }
}

/// The bucket counts and the sum of a legacy row (`counts.legacy`), from its histogram `hdr`
/// (within its precision; a row whose histogram cannot be read keeps zeros). `scratch` is
/// cleared and reused.
pub fn legacy_exact(counts: &mut RowCounts, hdr: &[u8], scratch: &mut Counts) {
    scratch.clear();
    if !hdr.is_empty() && scratch.add_encoded(hdr).is_ok() {
        let (le, sum) = scratch.cumulative_at(&LATENCY_BUCKETS_NANOS);
        counts.buckets.copy_from_slice(&le);
        counts.sum_nanos = sum as u64;
    }
}
