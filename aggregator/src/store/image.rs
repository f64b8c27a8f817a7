//! The state image's files: every series' counters (`state/<id>-series.parquet`), written by
//! each checkpoint and read back by restore and verify. The open accumulators go as rollup
//! rows (`rollup::rollup_file`), and the metric streams and participants' states as JSON.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};
use crate::record::SeriesKey;
use crate::state::{LATENCY_BUCKETS_NANOS, SeriesTotals, Source, StateImage};
use crate::store::files::{column, parquet};
use crate::store::manifest::{FileEntry, FileKind, Layout, Pending};
use crate::store::paths::state_path;
use crate::store::rollup::{key_fields, keys};

const BUCKET_COLUMNS: usize = LATENCY_BUCKETS_NANOS.len() + 1;

fn series_schema(dimensions: &[String]) -> Arc<Schema> {
    let mut fields = key_fields(dimensions);
    for name in [
        "ok",
        "errors",
        "recommendations",
        "sum_nanos_high",
        "sum_nanos_low",
    ] {
        fields.push(Field::new(name, DataType::UInt64, false));
    }
    fields.extend(
        (0..BUCKET_COLUMNS).map(|i| Field::new(format!("bucket_{i}"), DataType::UInt64, false)),
    );
    Arc::new(Schema::new(fields))
}

/// The series file of checkpoint `id`.
pub fn series_file(id: u64, layout: &Layout, image: &StateImage) -> Result<Pending> {
    let series = &image.series;
    let text = |f: &dyn Fn(&crate::state::SeriesImage) -> &str| -> ArrayRef {
        Arc::new(series.iter().map(|s| Some(f(s))).collect::<StringArray>())
    };
    let number = |f: &dyn Fn(&SeriesTotals) -> u64| -> ArrayRef {
        Arc::new(series.iter().map(|s| f(&s.totals)).collect::<UInt64Array>())
    };
    let mut columns = vec![text(&|s| &s.key.service), text(&|s| &s.key.endpoint)];
    for i in 0..layout.dimensions.len() {
        columns.push(text(&|s| s.key.dimensions.get(i).map_or("", |d| d)));
    }
    columns.push(text(&|s| s.source.label()));
    columns.push(number(&|t| t.ok));
    columns.push(number(&|t| t.errors));
    columns.push(number(&|t| t.recommendations));
    columns.push(number(&|t| (t.sum_nanos >> 64) as u64));
    columns.push(number(&|t| t.sum_nanos as u64));
    for i in 0..BUCKET_COLUMNS {
        columns.push(number(&|t| t.bucket_counts[i]));
    }
    let batch = RecordBatch::try_new(series_schema(&layout.dimensions), columns)
        .map_err(|e| Error::Storage(format!("cannot build the series file: {e}")))?;
    let bytes = parquet(&batch)?;
    Ok(Pending {
        entry: FileEntry {
            path: state_path(id, "series", "parquet"),
            kind: FileKind::Series,
            rows: series.len() as u64,
            bytes: bytes.len() as u64,
            requests: series.iter().map(|s| s.totals.requests()).sum(),
            first_minute: 0,
            last_minute: 0,
            row_format: None,
        },
        bytes,
    })
}

/// The rows of a series file: key, source and counters.
pub fn series_rows(
    batches: &[RecordBatch],
    layout: &Layout,
    file: &str,
) -> Result<Vec<(SeriesKey, Source, SeriesTotals)>> {
    let mut out = Vec::new();
    for b in batches {
        let keys = keys(b, layout, file)?;
        let source = column::<StringArray>(b, "source", file)?;
        let n = |name: &str| column::<UInt64Array>(b, name, file);
        let (ok, errors, recs, hi, lo) = (
            n("ok")?,
            n("errors")?,
            n("recommendations")?,
            n("sum_nanos_high")?,
            n("sum_nanos_low")?,
        );
        let buckets = (0..BUCKET_COLUMNS)
            .map(|i| n(&format!("bucket_{i}")))
            .collect::<Result<Vec<_>>>()?;
        for (i, key) in keys.into_iter().enumerate() {
            let source = Source::from_label(source.value(i)).ok_or_else(|| {
                Error::Storage(format!("{file}: unknown source `{}`", source.value(i)))
            })?;
            let totals = SeriesTotals {
                ok: ok.value(i),
                errors: errors.value(i),
                recommendations: recs.value(i),
                bucket_counts: std::array::from_fn(|j| buckets[j].value(i)),
                sum_nanos: (u128::from(hi.value(i)) << 64) | u128::from(lo.value(i)),
            };
            out.push((key, source, totals));
        }
    }
    Ok(out)
}
