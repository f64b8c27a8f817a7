//! Checkpoints to the object store, restore from them, and their verification.
//!
//! A checkpoint writes, in order: the minute and hour rows stored since the last one, as
//! Parquet files partitioned by day (`minutes/day=YYYY-MM-DD/<id>.parquet`, `hours/…`; added,
//! never rewritten), this checkpoint's state files (`state/<id>-series.parquet`: every series'
//! counters; `state/<id>-open.parquet`: open accumulators as minute rows; one JSON file per
//! registered [`Checkpointable`]), and last the manifest (`manifests/<id>.json`) naming all of
//! them with their row counts and the WAL sequence number covered. A crash before the manifest
//! leaves the previous one in force; the files it does not name are deleted at the next start.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, StringArray, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::clock::MINUTE_NANOS;
use crate::error::{Error, Result};
use crate::hooks::{Hook, Hooks};
use crate::record::SeriesKey;
use crate::state::{
    Aggregator, LATENCY_BUCKETS_NANOS, Row, RowCounts, SeriesTotals, SharedState, Source,
    StateImage, Table, lock,
};
use crate::store::manifest::{FileEntry, FileKind, Layout, MANIFEST_VERSION, MANIFESTS, Manifest};
use crate::store::rollup::rollup_batch;
use crate::telemetry::Telemetry;

/// State that later parts keep across restarts (metric stream state, Kafka offsets, the alert
/// outbox): saved with every checkpoint as `state/<id>-<name>.json`, restored before the WAL
/// replays. `save` runs right after the aggregator's image is taken.
pub trait Checkpointable: Send + Sync {
    /// File name part; unique, `[a-z0-9_]`.
    fn name(&self) -> &'static str;
    /// The state as JSON.
    fn save(&self) -> Result<serde_json::Value>;
    /// Puts back what `save` returned.
    fn restore(&self, saved: serde_json::Value) -> Result<()>;
}

/// The state file name of the aggregator's metric streams; no [`Checkpointable`] may take it.
const METRIC_STREAMS: &str = "metric_streams";

/// What one checkpoint wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub id: u64,
    pub wal_seq: u64,
    pub files: usize,
    pub bytes: u64,
}

/// Takes checkpoints of one aggregator, and compacts the store (`compaction.rs`). One at a
/// time.
pub struct Checkpointer {
    pub(super) store: Arc<dyn ObjectStore>,
    /// Syncs written files where the store needs it (local disk).
    pub(super) syncer: crate::store::object::Store,
    pub(super) state: SharedState,
    pub(super) layout: Layout,
    pub(super) hooks: Arc<Hooks>,
    pub(super) telemetry: Arc<Telemetry>,
    extras: Vec<Arc<dyn Checkpointable>>,
    /// The manifest in force (`None` before the first checkpoint of an empty store); held
    /// while a checkpoint or a compaction runs, so they never overlap.
    pub(super) last: tokio::sync::Mutex<Option<Manifest>>,
    pub(super) retention: super::config::RetentionConfig,
    /// Files compaction replaced, with when: deleted once `retention.delete_delay` has passed.
    pub(super) replaced: std::sync::Mutex<Vec<(std::time::Instant, Vec<Path>)>>,
    /// Where SQL finds the files of the manifest in force.
    pub(super) history: Option<Arc<crate::store::history::History>>,
    /// Called with the WAL sequence number each checkpoint covers.
    on_success: Box<dyn Fn(u64) + Send + Sync>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

pub(super) fn storage(path: &impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{path}: {e}"))
}

/// The manifest in force in `store`: the highest-numbered one. `None` for an empty store.
pub async fn latest_manifest(store: &dyn ObjectStore) -> Result<Option<Manifest>> {
    let mut ids = Vec::new();
    let mut listing = store.list(Some(&Path::from(MANIFESTS)));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| storage(&MANIFESTS, e))?;
        if let Some(id) = meta
            .location
            .filename()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    let Some(&id) = ids.iter().max() else {
        return Ok(None);
    };
    let path = Manifest::path(id);
    let bytes = get(store, &path).await?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| storage(&path, format!("not a manifest: {e}")))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(storage(
            &path,
            format!(
                "manifest version {} (this recmeter reads {MANIFEST_VERSION})",
                manifest.version
            ),
        ));
    }
    Ok(Some(manifest))
}

pub(super) async fn get(store: &dyn ObjectStore, path: &Path) -> Result<Bytes> {
    let result = store.get(path).await.map_err(|e| storage(path, e))?;
    result.bytes().await.map_err(|e| storage(path, e))
}

/// Days since the epoch as `YYYY-MM-DD` (proleptic Gregorian, H. Hinnant's algorithm).
pub(super) fn civil_date(days: i64) -> String {
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

pub(super) fn parquet(batch: &RecordBatch) -> Result<Bytes> {
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

/// Reads every batch of a Parquet file; the error says what is wrong with it.
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

/// A file about to be written.
struct Pending {
    entry: FileEntry,
    bytes: Bytes,
}

fn rollup_file(
    id: u64,
    table: Table,
    layout: &Layout,
    rows: &[(&SeriesKey, Source, u64, &Row)],
    day: Option<i64>,
) -> Result<Pending> {
    let batch = rollup_batch(
        table,
        &layout.dimensions,
        &layout.thresholds,
        rows.iter().copied(),
    )
    .map_err(|e| Error::Storage(format!("cannot build rollup rows: {e}")))?;
    let bytes = parquet(&batch)?;
    let (kind, path) = match (table, day) {
        (Table::Hours, Some(day)) => (
            FileKind::Hours,
            format!("hours/day={}/{id:020}.parquet", civil_date(day)),
        ),
        (_, Some(day)) => (
            FileKind::Minutes,
            format!("minutes/day={}/{id:020}.parquet", civil_date(day)),
        ),
        (_, None) => (FileKind::Open, format!("state/{id:020}-open.parquet")),
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
        },
        bytes,
    })
}

const BUCKET_COLUMNS: usize = LATENCY_BUCKETS_NANOS.len() + 1;

fn series_schema(dimensions: &[String]) -> Arc<Schema> {
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

fn series_file(id: u64, layout: &Layout, image: &StateImage) -> Result<Pending> {
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
            path: format!("state/{id:020}-series.parquet"),
            kind: FileKind::Series,
            rows: series.len() as u64,
            bytes: bytes.len() as u64,
            requests: series.iter().map(|s| s.totals.requests()).sum(),
            first_minute: 0,
            last_minute: 0,
        },
        bytes,
    })
}

/// Encodes everything a checkpoint writes, manifest aside.
fn encode(
    id: u64,
    layout: &Layout,
    image: &StateImage,
    extras: Vec<(&'static str, serde_json::Value)>,
) -> Result<Vec<Pending>> {
    let mut files = Vec::new();
    for table in [Table::Minutes, Table::Hours] {
        let mut rows: Vec<(&SeriesKey, Source, u64, &Row)> = image
            .sealed
            .iter()
            .flat_map(|s| {
                s.rows
                    .iter()
                    .filter(move |(t, _, _)| *t == table)
                    .map(move |(_, at, row)| (&s.key, s.source, *at, row))
            })
            .collect();
        rows.sort_by_key(|(_, _, at, _)| *at);
        for day_rows in rows.chunk_by(|a, b| a.2 / 1440 == b.2 / 1440) {
            let day = (day_rows[0].2 / 1440) as i64;
            files.push(rollup_file(id, table, layout, day_rows, Some(day))?);
        }
    }
    files.push(series_file(id, layout, image)?);
    let open: Vec<(&SeriesKey, Source, u64, &Row)> = image
        .series
        .iter()
        .flat_map(|s| {
            s.open
                .iter()
                .map(move |(m, row)| (&s.key, s.source, *m, row))
        })
        .collect();
    files.push(rollup_file(id, Table::Minutes, layout, &open, None)?);
    for (name, value) in extras {
        let bytes = Bytes::from(
            serde_json::to_vec(&value)
                .map_err(|e| Error::Storage(format!("cannot encode {name} state: {e}")))?,
        );
        files.push(Pending {
            entry: FileEntry {
                path: format!("state/{id:020}-{name}.json"),
                kind: FileKind::Extra,
                rows: 1,
                bytes: bytes.len() as u64,
                requests: 0,
                first_minute: 0,
                last_minute: 0,
            },
            bytes,
        });
    }
    Ok(files)
}

impl Checkpointer {
    /// A checkpointer over `store`, continuing from `last` (the manifest restored, if any).
    /// `on_success` gets the WAL sequence number each checkpoint covers (to truncate the WAL).
    pub fn new(
        store: crate::store::object::Store,
        state: SharedState,
        layout: Layout,
        hooks: Arc<Hooks>,
        telemetry: Arc<Telemetry>,
        last: Option<Manifest>,
        on_success: Box<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        lock(&state).keep_journal();
        Self {
            store: store.objects.clone(),
            syncer: store,
            state,
            layout,
            hooks,
            telemetry,
            extras: Vec::new(),
            last: tokio::sync::Mutex::new(last),
            retention: super::config::RetentionConfig::default(),
            replaced: std::sync::Mutex::default(),
            history: None,
            on_success,
        }
    }

    /// Publishes the rollup files of each manifest in force to `history`, from the one
    /// restored on, before anything it no longer names is deleted.
    pub fn with_history(mut self, history: Arc<crate::store::history::History>) -> Self {
        if let Some(m) = self.last.get_mut() {
            history.publish(&m.files);
        }
        self.history = Some(history);
        self
    }

    /// Makes `manifest` the one in force for SQL over history.
    pub(super) fn publish(&self, manifest: &Manifest) {
        if let Some(h) = &self.history {
            h.publish(&manifest.files);
        }
    }

    /// Keeps history and compacts files as `retention` says (the default otherwise).
    pub fn with_retention(mut self, retention: super::config::RetentionConfig) -> Self {
        self.retention = retention;
        self
    }

    /// Saves `extras` with every checkpoint (the same ones [`super::open`] restored).
    pub fn with_extras(mut self, extras: Vec<Arc<dyn Checkpointable>>) -> Self {
        self.extras = extras;
        self
    }

    /// Takes a checkpoint. On failure the rows it took go back to the state for the next one,
    /// and the files it wrote are deleted (what a crash leaves is deleted at the next start).
    pub async fn checkpoint(&self) -> Result<CheckpointStats> {
        let mut last = self.last.lock().await;
        let image = lock(&self.state).checkpoint_image()?;
        let created = lock(&self.state).clock().now_nanos();
        let result = self.write(&last, &image, created).await;
        match result {
            Ok((manifest, stats)) => {
                self.publish(&manifest);
                lock(&self.state).set_stored_before(manifest.sealed_before_minute);
                let superseded = last.replace(manifest);
                (self.on_success)(stats.wal_seq);
                self.telemetry.checkpoint_succeeded(created);
                if let Some(old) = superseded {
                    self.delete_superseded(&old).await;
                }
                Ok(stats)
            }
            Err((e, written)) => {
                lock(&self.state).give_back(image.sealed);
                for path in written {
                    if let Err(e) = self.store.delete(&path).await {
                        tracing::warn!(error = %e, file = %path, "Cannot delete a file of a failed checkpoint; the next start will.");
                    }
                }
                Err(e)
            }
        }
    }

    async fn write(
        &self,
        last: &Option<Manifest>,
        image: &StateImage,
        created: u64,
    ) -> std::result::Result<(Manifest, CheckpointStats), (Error, Vec<Path>)> {
        let id = last.as_ref().map_or(1, |m| m.id + 1);
        let mut extras = Vec::with_capacity(self.extras.len() + 1);
        // The metric streams are part of the aggregator's image (taken under the same hold of
        // the lock, so they match `wal_seq`), saved like a registered state.
        let metrics = serde_json::to_value(&image.metrics).map_err(|e| {
            (
                Error::Storage(format!("cannot save the metric streams: {e}")),
                Vec::new(),
            )
        })?;
        extras.push((METRIC_STREAMS, metrics));
        for e in &self.extras {
            extras.push((e.name(), e.save().map_err(|e| (e, Vec::new()))?));
        }
        let pending = encode(id, &self.layout, image, extras).map_err(|e| (e, Vec::new()))?;
        let mut written = Vec::new();
        let mut files = last.as_ref().map(|m| m.files.clone()).unwrap_or_default();
        let mut state = Vec::new();
        let mut stats = CheckpointStats {
            id,
            wal_seq: image.wal_seq,
            ..CheckpointStats::default()
        };
        for p in pending {
            let path = Path::from(p.entry.path.as_str());
            if let Err(e) = self.store.put(&path, PutPayload::from(p.bytes)).await {
                return Err((storage(&path, e), written));
            }
            written.push(path);
            stats.files += 1;
            stats.bytes += p.entry.bytes;
            match p.entry.kind {
                FileKind::Minutes | FileKind::Hours => files.push(p.entry),
                FileKind::Series | FileKind::Open | FileKind::Extra => state.push(p.entry),
            }
        }
        // The files are durable before the manifest that names them.
        let paths = written.iter().map(|p| p.to_string()).collect();
        if let Err(e) = self.syncer.sync(paths).await {
            return Err((e, written));
        }
        if self.hooks.is_on(Hook::FailCheckpointAfterFiles) {
            tracing::warn!("Test hook fail_checkpoint_after_files: failing before the manifest.");
            // As a crash would: the files stay, no manifest names them.
            return Err((
                Error::Storage("test hook fail_checkpoint_after_files".into()),
                Vec::new(),
            ));
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            id,
            created_unix_nanos: created,
            wal_seq: image.wal_seq,
            sealed_before_minute: image.sealed_before,
            significant_digits: self.layout.significant_digits,
            dimensions: self.layout.dimensions.clone(),
            thresholds: self.layout.thresholds.clone(),
            files,
            state,
        };
        let path = Manifest::path(id);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            (
                Error::Storage(format!("cannot encode the manifest: {e}")),
                Vec::new(),
            )
        })?;
        if let Err(e) = self.store.put(&path, PutPayload::from(json)).await {
            return Err((storage(&path, e), written));
        }
        // And the manifest before the WAL behind it goes.
        if let Err(e) = self.syncer.sync(vec![path.to_string()]).await {
            // The manifest goes first, so no manifest is left naming deleted files.
            written.insert(0, path);
            return Err((e, written));
        }
        Ok((manifest, stats))
    }

    /// Deletes the manifest a new one replaced and its state files.
    async fn delete_superseded(&self, old: &Manifest) {
        let paths = old
            .state
            .iter()
            .map(|f| Path::from(f.path.as_str()))
            .chain([Manifest::path(old.id)]);
        for path in paths {
            if let Err(e) = self.store.delete(&path).await {
                tracing::warn!(error = %e, file = %path, "Cannot delete a superseded checkpoint file; the next start will.");
            }
        }
    }
}

/// Deletes what the manifest in force does not name: files of a checkpoint that crashed
/// before its manifest, and superseded ones left by a crash. Returns how many went.
pub async fn delete_unreferenced(
    store: &dyn ObjectStore,
    manifest: Option<&Manifest>,
) -> Result<usize> {
    let named: HashSet<&str> = manifest
        .map(|m| m.all_files().map(|f| f.path.as_str()).collect())
        .unwrap_or_default();
    let keep_manifest = manifest.map(|m| Manifest::path(m.id));
    let mut doomed = Vec::new();
    for prefix in ["minutes", "hours", "state", MANIFESTS] {
        let mut listing = store.list(Some(&Path::from(prefix)));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| storage(&prefix, e))?;
            let loc = meta.location;
            if !named.contains(loc.as_ref()) && Some(&loc) != keep_manifest.as_ref() {
                // Without a manifest, only the first checkpoint's files can be a checkpoint
                // cut short; later ones mean the manifests went missing, and deleting the
                // history they hold is not recmeter's call.
                let id = loc
                    .filename()
                    .and_then(|n| n.get(..20))
                    .and_then(|n| n.parse::<u64>().ok());
                if manifest.is_none() && id != Some(1) {
                    return Err(storage(
                        &loc,
                        "checkpoint files but no manifest in manifests/; restore the manifests \
                         or point storage.url at an empty location",
                    ));
                }
                doomed.push(loc);
            }
        }
    }
    for path in &doomed {
        store.delete(path).await.map_err(|e| storage(path, e))?;
    }
    Ok(doomed.len())
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, file: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            Error::Storage(format!(
                "{file}: column `{name}` is missing or of the wrong type"
            ))
        })
}

/// The series key of each row of `b` (its `service`, `endpoint` and dimension columns).
fn keys(b: &RecordBatch, layout: &Layout, file: &str) -> Result<Vec<SeriesKey>> {
    let service = column::<StringArray>(b, "service", file)?;
    let endpoint = column::<StringArray>(b, "endpoint", file)?;
    let dims = layout
        .dimensions
        .iter()
        .map(|d| column::<StringArray>(b, d, file))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..b.num_rows())
        .map(|i| SeriesKey {
            service: Arc::from(service.value(i)),
            endpoint: Arc::from(endpoint.value(i)),
            dimensions: dims.iter().map(|d| Arc::from(d.value(i))).collect(),
        })
        .collect())
}

/// Rows of a rollup (or open) file, with each row's source.
pub(super) fn rollup_rows(
    batches: &[RecordBatch],
    layout: &Layout,
    file: &str,
    time: &str,
) -> Result<Vec<(SeriesKey, Source, u64, Row)>> {
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
            .collect::<Result<Vec<_>>>()?;
        let hdr = column::<BinaryArray>(b, "hdr", file)?;
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

fn series_rows(
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

pub(super) async fn read_entry(
    store: &dyn ObjectStore,
    entry: &FileEntry,
) -> Result<Vec<RecordBatch>> {
    let bytes = get(store, &Path::from(entry.path.as_str())).await?;
    read_parquet(bytes).map_err(|e| storage(&entry.path, e))
}

/// What a restore read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub series: usize,
    pub rows: usize,
    pub files: usize,
}

/// Restores `manifest` into the empty `aggregator`: counters, the rows memory holds (minutes
/// of the last 3 h, hours from `Aggregator::first_hour_held`), blocks, open accumulators,
/// registered state.
pub async fn restore(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    layout: &Layout,
    aggregator: &mut Aggregator,
    extras: &[Arc<dyn Checkpointable>],
) -> Result<RestoreStats> {
    let path = Manifest::path(manifest.id);
    if manifest.dimensions != layout.dimensions
        || manifest.thresholds != layout.thresholds
        || manifest.significant_digits != layout.significant_digits
    {
        return Err(storage(
            &path,
            format!(
                "the checkpoint was written with dimensions {:?}, latency thresholds {:?} and {} \
                 significant digits; the configuration has {:?}, {:?} and {}. Restore that \
                 configuration or point storage.url and wal.dir at new locations",
                manifest.dimensions,
                manifest.thresholds,
                manifest.significant_digits,
                layout.dimensions,
                layout.thresholds,
                layout.significant_digits
            ),
        ));
    }
    aggregator.restore_begin(manifest.sealed_before_minute, manifest.wal_seq);
    let mut stats = RestoreStats::default();
    let state_file = |kind: FileKind| manifest.state.iter().find(|f| f.kind == kind);
    // Before the series, which mark span-fed services too: at the cap the saved set wins.
    if let Some(entry) = manifest
        .state
        .iter()
        .find(|f| f.kind == FileKind::Extra && f.path.ends_with(&format!("-{METRIC_STREAMS}.json")))
    {
        let bytes = get(store, &Path::from(entry.path.as_str())).await?;
        let image = serde_json::from_slice(&bytes).map_err(|e| storage(&entry.path, e))?;
        aggregator.restore_metrics(image);
        stats.files += 1;
    }
    if let Some(entry) = state_file(FileKind::Series) {
        let batches = read_entry(store, entry).await?;
        for (key, source, totals) in series_rows(&batches, layout, &entry.path)? {
            aggregator.restore_series(key, source, totals);
            stats.series += 1;
        }
        stats.files += 1;
    }
    let keep_from = manifest
        .sealed_before_minute
        .saturating_sub(crate::state::MINUTES_KEPT);
    let hours_from = aggregator.first_hour_held(manifest.sealed_before_minute * MINUTE_NANOS);
    for entry in &manifest.files {
        let (table, time, from) = match entry.kind {
            FileKind::Minutes => (Table::Minutes, "minute", keep_from),
            FileKind::Hours => (Table::Hours, "hour", hours_from),
            _ => continue,
        };
        if entry.last_minute < from {
            continue;
        }
        let batches = read_entry(store, entry).await?;
        for (key, _, at, row) in rollup_rows(&batches, layout, &entry.path, time)? {
            aggregator.restore_row(&key, table, at, row);
            stats.rows += 1;
        }
        stats.files += 1;
    }
    let mut open = Vec::new();
    if let Some(entry) = state_file(FileKind::Open) {
        let batches = read_entry(store, entry).await?;
        open = rollup_rows(&batches, layout, &entry.path, "minute")?
            .into_iter()
            .map(|(key, _, at, row)| (key, at, row))
            .collect();
        stats.files += 1;
    }
    aggregator.restore_finish(open)?;
    for extra in extras {
        let Some(entry) = manifest.state.iter().find(|f| {
            f.kind == FileKind::Extra && f.path.ends_with(&format!("-{}.json", extra.name()))
        }) else {
            continue;
        };
        let bytes = get(store, &Path::from(entry.path.as_str())).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| storage(&entry.path, e))?;
        extra.restore(value)?;
        stats.files += 1;
    }
    Ok(stats)
}

/// What `recmeter verify` found in a good store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub manifest: String,
    pub checkpoint_id: u64,
    pub created_unix_nanos: u64,
    pub wal_seq: u64,
    pub files: usize,
    pub bytes: u64,
    pub minute_rows: u64,
    pub minute_requests: u64,
    pub hour_rows: u64,
    pub hour_requests: u64,
    pub series: u64,
    /// Requests the series held have counted (their counters; series forgotten at the cap
    /// are not among them).
    pub series_requests: u64,
    pub open_requests: u64,
}

/// Checks every file the manifest in force names: present, of the recorded size, readable,
/// with the recorded rows and requests. The error names the first file that is not.
pub async fn verify(store: &dyn ObjectStore) -> Result<VerifyReport> {
    let manifest = latest_manifest(store)
        .await?
        .ok_or_else(|| Error::Storage("no checkpoint manifest found".into()))?;
    let layout = Layout {
        significant_digits: manifest.significant_digits,
        dimensions: manifest.dimensions.clone(),
        thresholds: manifest.thresholds.clone(),
    };
    let mut report = VerifyReport {
        manifest: Manifest::path(manifest.id).to_string(),
        checkpoint_id: manifest.id,
        created_unix_nanos: manifest.created_unix_nanos,
        wal_seq: manifest.wal_seq,
        ..VerifyReport::default()
    };
    for entry in manifest.all_files() {
        let bytes = get(store, &Path::from(entry.path.as_str())).await?;
        let wrong = |what: String| Error::Storage(format!("{}: {what}", entry.path));
        if bytes.len() as u64 != entry.bytes {
            return Err(wrong(format!(
                "{} bytes, the manifest recorded {}",
                bytes.len(),
                entry.bytes
            )));
        }
        report.files += 1;
        report.bytes += entry.bytes;
        if entry.kind == FileKind::Extra {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| wrong(format!("not JSON: {e}")))?;
            continue;
        }
        let batches = read_parquet(bytes).map_err(|e| wrong(format!("unreadable Parquet: {e}")))?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows != entry.rows {
            return Err(wrong(format!(
                "{rows} rows, the manifest recorded {}",
                entry.rows
            )));
        }
        let requests: u64 = match entry.kind {
            FileKind::Series => series_rows(&batches, &layout, &entry.path)?
                .iter()
                .map(|(_, _, t)| t.requests())
                .sum(),
            FileKind::Hours => rollup_rows(&batches, &layout, &entry.path, "hour")?
                .iter()
                .map(|(_, _, _, r)| r.counts.requests)
                .sum(),
            _ => rollup_rows(&batches, &layout, &entry.path, "minute")?
                .iter()
                .map(|(_, _, _, r)| r.counts.requests)
                .sum(),
        };
        if requests != entry.requests {
            return Err(wrong(format!(
                "{requests} requests, the manifest recorded {}",
                entry.requests
            )));
        }
        match entry.kind {
            FileKind::Minutes => {
                report.minute_rows += rows;
                report.minute_requests += requests;
            }
            FileKind::Hours => {
                report.hour_rows += rows;
                report.hour_requests += requests;
            }
            FileKind::Series => {
                report.series += rows;
                report.series_requests += requests;
            }
            FileKind::Open => report.open_requests += requests,
            FileKind::Extra => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;
    use std::ops::ControlFlow;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::clock::Clock;
    use crate::config::{AggregatorConfig, IngestConfig};
    use crate::counts::Counts;
    use crate::record::RequestRecord;
    use crate::state::{RowVisitor, shared};

    /// 30 s into an hour (and a minute).
    const START_SECS: u64 = 1_800_000_030;

    /// The default rollup layout: no dimensions, 2 significant digits.
    pub(in crate::durability) fn layout() -> Layout {
        Layout {
            significant_digits: 2,
            dimensions: Vec::new(),
            thresholds: AggregatorConfig::default().threshold_columns(),
        }
    }

    /// An empty aggregator of the default configuration on `clock`.
    pub(in crate::durability) fn aggregator(clock: &Arc<Clock>) -> Aggregator {
        Aggregator::new(
            &IngestConfig::default(),
            &AggregatorConfig::default(),
            clock.clone(),
            Arc::default(),
        )
        .unwrap()
    }

    struct Collect {
        current: Option<SeriesKey>,
        rows: BTreeMap<(SeriesKey, u64), (u64, Counts)>,
    }

    impl RowVisitor for Collect {
        fn series(&mut self, key: &SeriesKey, _: Source) -> ControlFlow<()> {
            self.current = Some(key.clone());
            ControlFlow::Continue(())
        }

        fn row(&mut self, at: u64, row: &Row) -> ControlFlow<()> {
            let key = self.current.clone().unwrap();
            let entry = self
                .rows
                .entry((key, at))
                .or_insert_with(|| (0, Counts::with_precision(2).unwrap()));
            entry.0 += row.counts.requests;
            entry.1.add_encoded(&row.hdr).unwrap();
            ControlFlow::Continue(())
        }
    }

    /// Per series and minute (or hour): requests, histogram count and P99, rows merged.
    fn rows(a: &mut Aggregator, table: Table) -> Vec<(SeriesKey, u64, u64, u64, Option<f64>)> {
        let keys = a.series_keys();
        let mut c = Collect {
            current: None,
            rows: BTreeMap::new(),
        };
        let (_, flow) = a
            .visit_rows(table, 0..=u64::MAX / 2, &keys, usize::MAX, &mut c)
            .unwrap();
        assert!(flow.is_continue());
        c.rows
            .into_iter()
            .map(|((k, at), (n, counts))| (k, at, n, counts.total(), counts.quantile_seconds(0.99)))
            .collect()
    }

    fn record(service: &str, end_nanos: u64, millis: u64) -> RequestRecord {
        RequestRecord {
            key: SeriesKey {
                service: Arc::from(service),
                endpoint: Arc::from("GET /r"),
                dimensions: Vec::new(),
            },
            end_unix_nanos: end_nanos,
            duration_nanos: millis * 1_000_000,
            error: millis.is_multiple_of(7),
            recommendations: 1,
        }
    }

    #[tokio::test]
    async fn a_restored_checkpoint_holds_the_same_rows_and_counters() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let state = shared(aggregator(&clock));
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::object::open(dir.path().to_str().unwrap(), true).unwrap();
        let checkpoints = Checkpointer::new(
            store.clone(),
            state.clone(),
            layout(),
            Arc::default(),
            Arc::default(),
            None,
            Box::new(|_| {}),
        );
        let mut sent = 0u64;
        // The open minute, minutes of this hour, and minutes of the hour before (sealed at the
        // first roll, so they become extra hour rows); a checkpoint half way.
        for (i, minutes_ago) in [0u64, 0, 3, 7, 12, 45, 50, 59].into_iter().enumerate() {
            let now = clock.now_nanos();
            let batch: Vec<_> = (0..50)
                .map(|j| {
                    let service = if j % 3 == 0 { "a" } else { "b" };
                    record(
                        service,
                        now - minutes_ago * 60_000_000_000,
                        1 + (i as u64 * 50 + j) * 3,
                    )
                })
                .collect();
            sent += lock(&state).apply(&batch).accepted;
            clock.advance(Duration::from_secs(20));
            if i == 3 {
                checkpoints.checkpoint().await.unwrap();
            }
        }
        assert_eq!(sent, 400);
        checkpoints.checkpoint().await.unwrap();
        let manifest = latest_manifest(store.objects.as_ref())
            .await
            .unwrap()
            .unwrap();
        let mut restored = aggregator(&clock);
        restore(
            store.objects.as_ref(),
            &manifest,
            &layout(),
            &mut restored,
            &[],
        )
        .await
        .unwrap();
        let mut original = lock(&state);
        assert_eq!(restored.counters(), original.counters());
        let total: u64 = restored
            .counters()
            .iter()
            .map(|c| c.totals.requests())
            .sum();
        assert_eq!(total, sent);
        for table in [Table::Minutes, Table::Hours] {
            assert_eq!(
                rows(&mut restored, table),
                rows(&mut original, table),
                "{table:?}"
            );
        }
        // Across the next hour boundary both seal the same hour rows from their blocks.
        clock.advance(Duration::from_secs(3600));
        assert_eq!(
            rows(&mut restored, Table::Hours),
            rows(&mut original, Table::Hours)
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_514), "2026-03-02");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(-1), "1969-12-31");
    }
}
