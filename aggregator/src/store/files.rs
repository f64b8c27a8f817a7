//! Reading and writing the store's files: objects, Parquet, and the errors that name them.

use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};

/// A storage error naming the file (or prefix) it concerns.
pub fn storage(path: &impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{path}: {e}"))
}

/// The bytes of the object at `path`.
pub async fn get(store: &dyn ObjectStore, path: &Path) -> Result<Bytes> {
    let result = store.get(path).await.map_err(|e| storage(path, e))?;
    result.bytes().await.map_err(|e| storage(path, e))
}

/// Days since the epoch as `YYYY-MM-DD` (proleptic Gregorian, H. Hinnant's algorithm).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `batch` as a Parquet file (Snappy).
pub fn parquet(batch: &RecordBatch) -> Result<Bytes> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
        .map_err(|e| Error::Storage(format!("cannot encode Parquet: {e}")))?;
    writer
        .write(batch)
        .and_then(|()| writer.close().map(drop))
        .map_err(|e| Error::Storage(format!("cannot encode Parquet: {e}")))?;
    Ok(Bytes::from(out))
}

pub fn read_parquet(bytes: Bytes) -> std::result::Result<Vec<RecordBatch>, String> {
    // A damaged file must come back as an error naming it, even if the reader panics on it.
    let read = std::panic::catch_unwind(move || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    });
    read.unwrap_or_else(|_| Err("the Parquet reader failed on this file".into()))
}

/// Column `name` of `batch` as an array of type `T`; the error names the file.
pub fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, file: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            Error::Storage(format!(
                "{file}: column `{name}` is missing or of the wrong type"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_514), "2026-03-02");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(-1), "1969-12-31");
    }
}
