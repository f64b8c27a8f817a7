//! Parquet exports (FOCUS, AWS CUR 2.0): spooled to a temporary file (Parquet's index is at
//! its end), read a row group batch at a time, each column turned into the text cells a CSV
//! export would have, and each row normalized by the same code as CSV rows. Exact decimals
//! stay exact (`Decimal128` prints every digit), times are converted to UTC, and a map column
//! (`Tags`, `resource_tags`) becomes the JSON object a CSV export writes.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, MapArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::format::{Format, emit};
use super::line::Sink;
use super::row::{Defaults, FileError, Header, Row};

/// The first bytes of a Parquet file.
pub const MAGIC: &[u8] = b"PAR1";

/// Rows read at a time.
const BATCH_ROWS: usize = 8_192;

/// Temporary files of this process, so names never repeat.
static SPOOLED: AtomicU64 = AtomicU64::new(0);

/// Normalizes the Parquet export in `reader`, named `object`, into `out`.
pub fn normalize(
    mut reader: impl Read,
    object: &str,
    defaults: &Defaults,
    out: &mut impl Sink,
) -> Result<Format, FileError> {
    let path = std::env::temp_dir().join(format!(
        "recmeter-billing-{}-{}.parquet",
        std::process::id(),
        SPOOLED.fetch_add(1, Ordering::Relaxed)
    ));
    // Failing to spool (a full temporary directory) is this machine's failure, not the
    // object's: of kind `Other`, the export is read again at the next scan.
    let local = |e: std::io::Error| {
        FileError::Io(std::io::Error::other(format!(
            "cannot copy the Parquet file to {}: {e}",
            std::env::temp_dir().display()
        )))
    };
    let mut spool = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(local)?;
    // Gone from the directory at once; the open file lives until it is closed.
    let _ = std::fs::remove_file(&path);
    std::io::copy(&mut reader, &mut spool).map_err(|e| match e.kind() {
        // The reader's own failures (the bucket) are `Other` already.
        std::io::ErrorKind::Other => FileError::Io(e),
        _ => local(e),
    })?;
    spool.flush().map_err(local)?;
    // A damaged file must come back as an error naming it, even if the reader panics on it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_spooled(spool, object, defaults, out)
    }))
    .unwrap_or_else(|_| {
        Err(FileError::Parquet(
            "the Parquet reader failed on this file".into(),
        ))
    })
}

/// Reads the spooled Parquet file.
fn read_spooled(
    spool: std::fs::File,
    object: &str,
    defaults: &Defaults,
    out: &mut impl Sink,
) -> Result<Format, FileError> {
    let parquet = |e: datafusion::parquet::errors::ParquetError| FileError::Parquet(e.to_string());
    let builder = ParquetRecordBatchReaderBuilder::try_new(spool).map_err(parquet)?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let header = Header::new(&csv::StringRecord::from(names));
    let format = Format::detect(&header).ok_or(FileError::UnknownFormat)?;
    let batches = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(parquet)?;
    let mut record = csv::StringRecord::new();
    let mut row = 0u64;
    for batch in batches {
        let batch = batch.map_err(|e| FileError::Parquet(e.to_string()))?;
        let cells = text_columns(&batch);
        for i in 0..batch.num_rows() {
            row += 1;
            out.row();
            record.clear();
            for column in &cells {
                record.push_field(if column.is_null(i) {
                    ""
                } else {
                    column.value(i)
                });
            }
            let cells = Row {
                header: &header,
                record: &record,
            };
            emit(format, cells, defaults, object, row, out);
        }
    }
    Ok(format)
}

/// Every column of `batch` as text, as a CSV export writes it; a column of a type with no
/// such text (a list, a struct) reads as empty.
fn text_columns(batch: &RecordBatch) -> Vec<StringArray> {
    batch
        .columns()
        .iter()
        .map(|column| text(column).unwrap_or_else(|| StringArray::new_null(column.len())))
        .collect()
}

fn text(column: &ArrayRef) -> Option<StringArray> {
    let options = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    let column = match column.data_type() {
        DataType::Map(..) => return Some(map_json(column.as_map())),
        // In UTC, whatever zone the file wrote: the cell then ends in `Z`.
        DataType::Timestamp(_, Some(_)) => cast_with_options(
            column,
            &DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from("UTC"))),
            &options,
        )
        .ok()?,
        _ => column.clone(),
    };
    let text = cast_with_options(&column, &DataType::Utf8, &options).ok()?;
    Some(text.as_string::<i32>().clone())
}

/// A map column as JSON objects, its keys and values as text.
fn map_json(map: &MapArray) -> StringArray {
    let keys = text(map.keys());
    let values = text(map.values());
    let (Some(keys), Some(values)) = (keys, values) else {
        return StringArray::new_null(map.len());
    };
    let offsets = map.value_offsets();
    (0..map.len())
        .map(|i| {
            if map.is_null(i) {
                return None;
            }
            let entries: serde_json::Map<String, serde_json::Value> = (offsets[i]..offsets[i + 1])
                .filter_map(|j| {
                    let j = usize::try_from(j).ok()?;
                    (!keys.is_null(j)).then(|| {
                        let value = if values.is_null(j) {
                            serde_json::Value::Null
                        } else {
                            serde_json::Value::String(values.value(j).to_owned())
                        };
                        (keys.value(j).to_owned(), value)
                    })
                })
                .collect();
            Some(serde_json::Value::Object(entries).to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::billing::Normalized;
    use datafusion::arrow::array::{
        Decimal128Array, MapBuilder, StringBuilder, TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;

    /// A FOCUS file as Parquet: decimal costs, times with a zone, tags as a map.
    fn focus_parquet(billed: &[i128]) -> Vec<u8> {
        let n = billed.len();
        let mut tags = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for i in 0..n {
            tags.keys().append_value("component");
            tags.values().append_value(format!("c{i}"));
            tags.append(true).unwrap();
        }
        let hour = 1_726_696_800_000i64; // 2024-09-18T22:00:00Z
        let zone = |a: TimestampMillisecondArray| a.with_timezone("+02:00");
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "BilledCost",
                Arc::new(
                    Decimal128Array::from(billed.to_vec())
                        .with_precision_and_scale(38, 12)
                        .unwrap(),
                ),
            ),
            (
                "EffectiveCost",
                Arc::new(
                    Decimal128Array::from(billed.to_vec())
                        .with_precision_and_scale(38, 12)
                        .unwrap(),
                ),
            ),
            (
                "ChargePeriodStart",
                Arc::new(zone(TimestampMillisecondArray::from(vec![hour; n]))),
            ),
            (
                "ChargePeriodEnd",
                Arc::new(zone(TimestampMillisecondArray::from(vec![
                    hour + 3_600_000;
                    n
                ]))),
            ),
            ("ProviderName", Arc::new(StringArray::from(vec!["AWS"; n]))),
            (
                "BillingAccountId",
                Arc::new(StringArray::from(vec!["1"; n])),
            ),
            (
                "BillingCurrency",
                Arc::new(StringArray::from(vec!["USD"; n])),
            ),
            (
                "ServiceName",
                Arc::new(StringArray::from(
                    [Some("EC2"), None].repeat(n)[..n].to_vec(),
                )),
            ),
            ("Tags", Arc::new(tags.finish())),
        ];
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(
            schema.clone(),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        out
    }

    #[test]
    fn parquet_rows_read_as_their_csv_would() {
        // 1.5, 0.000000000001 and -2 with every decimal kept.
        let file = focus_parquet(&[1_500_000_000_000, 1, -2_000_000_000_000]);
        let mut got = Normalized::default();
        let format =
            super::super::normalize(&file[..], "f.parquet", &Defaults::default(), &mut got)
                .unwrap();
        assert_eq!(format, Format::Focus);
        assert!(got.rejects.is_empty(), "{:?}", got.rejects);
        assert_eq!(got.rows, 3);
        let billed: Vec<i128> = got.lines.iter().map(|l| l.billed_cost).collect();
        assert_eq!(billed, [1_500_000_000_000, 1, -2_000_000_000_000]);
        let line = &got.lines[0];
        // 22:00 UTC, whatever zone the file wrote it in.
        assert_eq!(line.charge_period_start, 1_726_696_800_000_000_000);
        assert_eq!(line.tags["component"], "c0");
        assert_eq!(line.service_name.as_deref(), Some("EC2"));
        assert_eq!(got.lines[1].service_name, None);
        assert_eq!(
            (line.source_object.as_str(), line.source_row),
            ("f.parquet", 1)
        );
    }

    #[test]
    fn a_broken_parquet_file_is_an_error_naming_parquet() {
        let mut file = focus_parquet(&[1]);
        let cut = file.len() - 20;
        file.truncate(cut);
        let e = super::super::normalize(
            &file[..],
            "f.parquet",
            &Defaults::default(),
            &mut Normalized::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a Parquet file"), "{e}");
    }
}
