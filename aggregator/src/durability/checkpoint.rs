//! Checkpoints to the object store, restore from them, and their verification.
//!
//! A checkpoint writes, in order: the minute and hour rows stored since the last one, as
//! Parquet files partitioned by day (`minutes/day=YYYY-MM-DD/<id>.parquet`, `hours/…`; added,
//! never rewritten), this checkpoint's state files (`state/<id>-series.parquet`: every series'
//! counters; `state/<id>-open.parquet`: open accumulators as minute rows;
//! `state/<id>-metric_streams.json`; one `state/<id>-<name>.json` per checkpoint participant),
//! and last the manifest (`manifests/<id>.json`) naming all of them, section by section, with
//! their row counts and the WAL sequence number covered. A crash before the manifest leaves
//! the previous one in force; the files it does not name are deleted at the next start. The
//! files' format is the store module's (`crate::store`).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::clock::MINUTE_NANOS;
use crate::error::{Error, Result};
use crate::hooks::{Hook, Hooks};
use crate::participant::{Participant, Participants};
use crate::record::SeriesKey;
use crate::state::{Aggregator, Row, SharedState, Source, StateImage, Table, lock};
use crate::store::files::{get, read_parquet, storage};
use crate::store::image::{series_file, series_rows};
use crate::store::manifest::{
    FileEntry, FileKind, HOURS_SECTION, KAFKA_SECTION, Layout, Lifetime, MINUTES_SECTION, Manifest,
    Pending, STATE_SECTION, latest_manifest, read_entry,
};
use crate::store::paths::{STATE_PREFIX, state_name, state_path};
use crate::store::rollup::{rollup_file, rollup_rows, time_column};
use crate::telemetry::Telemetry;

/// The state file name of the aggregator's metric streams, in the `state` section.
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
    /// The Kafka positions of the latest durable checkpoint.
    durable: tokio::sync::watch::Sender<std::sync::Arc<Vec<crate::batch::Position>>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

/// A JSON state file of checkpoint `id`: `state/<id>-<name>.json`.
fn json_file(id: u64, name: &str, value: &serde_json::Value) -> Result<Pending> {
    let bytes = Bytes::from(
        serde_json::to_vec(value)
            .map_err(|e| Error::Storage(format!("cannot encode the {name} state: {e}")))?,
    );
    Ok(Pending {
        entry: FileEntry {
            path: state_path(id, name, "json"),
            kind: FileKind::Extra,
            rows: 1,
            bytes: bytes.len() as u64,
            requests: 0,
            first_minute: 0,
            last_minute: 0,
            row_format: None,
        },
        bytes,
    })
}

/// Encodes everything a checkpoint writes, manifest aside, each file with its section.
fn encode(id: u64, layout: &Layout, image: &StateImage) -> Result<Vec<(&'static str, Pending)>> {
    let mut files = Vec::new();
    for (table, section) in [
        (Table::Minutes, MINUTES_SECTION),
        (Table::Hours, HOURS_SECTION),
    ] {
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
            files.push((
                section,
                rollup_file(id, table, layout, day_rows, Some(day))?,
            ));
        }
    }
    files.push((STATE_SECTION, series_file(id, layout, image)?));
    let open: Vec<(&SeriesKey, Source, u64, &Row)> = image
        .series
        .iter()
        .flat_map(|s| {
            s.open
                .iter()
                .map(move |(m, row)| (&s.key, s.source, *m, row))
        })
        .collect();
    files.push((
        STATE_SECTION,
        rollup_file(id, Table::Minutes, layout, &open, None)?,
    ));
    // The metric streams are part of the aggregator's image (taken under the same hold of the
    // lock, so they match `wal_seq`), and so are the participants' states.
    let metrics = serde_json::to_value(&image.metrics)
        .map_err(|e| Error::Storage(format!("cannot save the metric streams: {e}")))?;
    files.push((STATE_SECTION, json_file(id, METRIC_STREAMS, &metrics)?));
    for (name, state) in &image.participants {
        files.push((*name, json_file(id, name, state)?));
    }
    if !image.positions.is_empty() {
        let positions = serde_json::to_value(&image.positions)
            .map_err(|e| Error::Storage(format!("cannot save the Kafka positions: {e}")))?;
        files.push((KAFKA_SECTION, json_file(id, KAFKA_SECTION, &positions)?));
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
        let positions = {
            let mut state = lock(&state);
            state.keep_journal();
            state.positions()
        };
        Self {
            store: store.objects.clone(),
            syncer: store,
            state,
            layout,
            hooks,
            telemetry,
            last: tokio::sync::Mutex::new(last),
            retention: super::config::RetentionConfig::default(),
            replaced: std::sync::Mutex::default(),
            history: None,
            on_success,
            durable: tokio::sync::watch::Sender::new(Arc::new(positions)),
        }
    }

    /// The Kafka positions of the latest durable checkpoint (those restored before the first),
    /// updated as each checkpoint's manifest is written: what a consumer group may commit.
    pub fn durable_positions(
        &self,
    ) -> tokio::sync::watch::Receiver<Arc<Vec<crate::batch::Position>>> {
        self.durable.subscribe()
    }

    /// The store it writes to.
    pub fn store(&self) -> &crate::store::object::Store {
        &self.syncer
    }

    /// Publishes the rollup files of each manifest in force to `history`, from the one
    /// restored on, before anything it no longer names is deleted.
    pub fn with_history(mut self, history: Arc<crate::store::history::History>) -> Self {
        if let Some(m) = self.last.get_mut() {
            history.publish(&m.rollup_files());
        }
        self.history = Some(history);
        self
    }

    /// Makes `manifest` the one in force for SQL over history.
    pub(super) fn publish(&self, manifest: &Manifest) {
        if let Some(h) = &self.history {
            h.publish(&manifest.rollup_files());
        }
    }

    /// Keeps history and compacts files as `retention` says (the default otherwise).
    pub fn with_retention(mut self, retention: super::config::RetentionConfig) -> Self {
        self.retention = retention;
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
                self.durable.send_replace(Arc::new(image.positions));
                self.telemetry.checkpoint_succeeded(created);
                if let Some(old) = superseded {
                    self.delete_superseded(&old, last.as_ref()).await;
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
        let pending = encode(id, &self.layout, image).map_err(|e| (e, Vec::new()))?;
        // Every section carries over but the ones this checkpoint writes anew; a section no
        // running component writes stays as it was.
        // The Kafka positions' section once there are any, and as long as the store has one.
        let kafka = !image.positions.is_empty()
            || last
                .as_ref()
                .is_some_and(|m| m.sections.contains_key(KAFKA_SECTION));
        let rewritten: Vec<&str> = std::iter::once(STATE_SECTION)
            .chain(image.participants.iter().map(|(name, _)| *name))
            .chain(kafka.then_some(KAFKA_SECTION))
            .collect();
        let mut manifest = match last {
            Some(m) => m.next(id, &rewritten),
            None => Manifest::empty(id, &self.layout),
        };
        manifest.created_unix_nanos = created;
        manifest.wal_seq = image.wal_seq;
        manifest.sealed_before_minute = image.sealed_before;
        // The sections this writes exist even when empty, so a reader knows them.
        manifest.set_rollup_files(manifest.rollup_files());
        for name in &rewritten {
            manifest.section_mut(name, STATE_PREFIX, Lifetime::Checkpoint);
        }
        // The participants' own files: as they name them at `wal_seq`.
        for owned in &image.sections {
            manifest
                .section_mut(owned.name, owned.prefix, Lifetime::Kept)
                .files
                .clone_from(&owned.files);
        }
        let mut written = Vec::new();
        let mut stats = CheckpointStats {
            id,
            wal_seq: image.wal_seq,
            ..CheckpointStats::default()
        };
        for (section, p) in pending {
            let path = Path::from(p.entry.path.as_str());
            if let Err(e) = self.store.put(&path, PutPayload::from(p.bytes)).await {
                return Err((storage(&path, e), written));
            }
            written.push(path);
            stats.files += 1;
            stats.bytes += p.entry.bytes;
            if let Some(s) = manifest.sections.get_mut(section) {
                s.files.push(p.entry);
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
        let path = Manifest::path(id);
        let json = manifest.to_json().map_err(|e| (e, Vec::new()))?;
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

    /// Deletes the manifest `new` replaced and the files it named that `new` does not: the
    /// state files of the checkpoint before at once, and the `kept` files a participant let go
    /// of (a restated bill's) once `retention.delete_delay` has passed, as compaction's, so a
    /// query that planned over them can still read them.
    async fn delete_superseded(&self, old: &Manifest, new: Option<&Manifest>) {
        let kept: HashSet<&str> = new
            .into_iter()
            .flat_map(|m| m.all_files().map(|f| f.path.as_str()))
            .collect();
        let mut later = Vec::new();
        let mut now = vec![Manifest::path(old.id)];
        for section in old.sections.values() {
            for f in section
                .files
                .iter()
                .filter(|f| !kept.contains(f.path.as_str()))
            {
                let path = Path::from(f.path.as_str());
                match section.lifetime {
                    Lifetime::Kept => later.push(path),
                    Lifetime::Checkpoint => now.push(path),
                }
            }
        }
        if !later.is_empty() {
            self.replaced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((std::time::Instant::now(), later));
        }
        for path in now {
            if let Err(e) = self.store.delete(&path).await {
                tracing::warn!(error = %e, file = %path, "Cannot delete a superseded checkpoint file; the next start will.");
            }
        }
    }
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
/// and the state of each checkpoint participant it holds (a participant the checkpoint has no
/// section for starts empty).
pub async fn restore(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    layout: &Layout,
    aggregator: &mut Aggregator,
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
    let state = manifest.files(STATE_SECTION);
    let state_file = |kind: FileKind| state.iter().find(|f| f.kind == kind);
    // Before the series, which mark span-fed services too: at the cap the saved set wins.
    if let Some(entry) = state
        .iter()
        .find(|f| f.kind == FileKind::Extra && state_name(&f.path) == Some(METRIC_STREAMS))
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
    for entry in manifest.rollup_files() {
        let entry = &entry;
        let (table, from) = match entry.kind {
            FileKind::Minutes => (Table::Minutes, keep_from),
            FileKind::Hours => (Table::Hours, hours_from),
            _ => continue,
        };
        let time = time_column(table);
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
        open = rollup_rows(&batches, layout, &entry.path, time_column(Table::Minutes))?
            .into_iter()
            .map(|(key, _, at, row)| (key, at, row))
            .collect();
        stats.files += 1;
    }
    aggregator.restore_finish(open)?;
    if let Some(entry) = manifest.files(KAFKA_SECTION).first() {
        let bytes = get(store, &Path::from(entry.path.as_str())).await?;
        let positions = serde_json::from_slice(&bytes).map_err(|e| storage(&entry.path, e))?;
        aggregator.restore_positions(positions);
        stats.files += 1;
    }
    let participants: Participants = aggregator.participants().clone();
    for (participant, value) in participant_states(store, manifest, &participants).await? {
        participant.restore(value)?;
        stats.files += 1;
    }
    Ok(stats)
}

/// The state `manifest` holds for each of `participants` that it has a section for.
pub(super) async fn participant_states(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    participants: &Participants,
) -> Result<Vec<(Arc<dyn Participant>, serde_json::Value)>> {
    let mut states = Vec::new();
    for participant in participants.iter() {
        let Some(entry) = manifest.files(participant.name()).first() else {
            continue;
        };
        let bytes = get(store, &Path::from(entry.path.as_str())).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| storage(&entry.path, e))?;
        states.push((participant.clone(), value));
    }
    Ok(states)
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
        match &entry.kind {
            FileKind::Extra => {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .map_err(|e| wrong(format!("not JSON: {e}")))?;
                continue;
            }
            // A section this recmeter does not know: present and of its size is all it checks.
            FileKind::Other(_) => continue,
            _ => {}
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
            FileKind::Extra | FileKind::Other(_) => {}
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

    /// A checkpointer of `state` over a local store in `dir`, from an empty store.
    fn local_checkpointer(
        dir: &tempfile::TempDir,
        state: &SharedState,
    ) -> (crate::store::object::Store, Checkpointer) {
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
        (store, checkpoints)
    }

    #[tokio::test]
    async fn a_participant_is_saved_at_the_image_sequence_number_and_restored() {
        use crate::participant::{Event, TestLedger};
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let participants = |ledger: &Arc<TestLedger>| {
            let mut all = Participants::default();
            all.register(ledger.clone()).unwrap();
            all
        };
        let ledger = Arc::new(TestLedger::default());
        let state = shared(aggregator(&clock).with_participants(participants(&ledger)));
        let dir = tempfile::tempdir().unwrap();
        let (store, checkpoints) = local_checkpointer(&dir, &state);
        let apply = |seq: u64, n: u64| {
            let mut s = lock(&state);
            s.apply_event(&TestLedger::event(n)).unwrap();
            s.set_wal_seq(seq);
        };
        apply(1, 10);
        apply(2, 20);
        let first = checkpoints.checkpoint().await.unwrap();
        apply(3, 30);
        let second = checkpoints.checkpoint().await.unwrap();
        assert_eq!((first.wal_seq, second.wal_seq), (2, 3));
        apply(4, 40);
        let objects = store.objects.as_ref();
        let manifest = latest_manifest(objects).await.unwrap().unwrap();
        let saved = manifest.files(TestLedger::NAME);
        assert_eq!(saved.len(), 1, "one file, this checkpoint's");
        assert!(
            saved[0]
                .path
                .starts_with(&format!("state/{:020}-", second.id))
        );
        // The first checkpoint's ledger went with its manifest.
        let mut listing = objects.list(Some(&Path::from("state")));
        let mut ledgers = 0;
        while let Some(meta) = futures::StreamExt::next(&mut listing).await {
            ledgers += usize::from(
                meta.unwrap()
                    .location
                    .as_ref()
                    .ends_with("test_ledger.json"),
            );
        }
        assert_eq!(ledgers, 1);
        // Restored: what the events up to the manifest's sequence number give, not the 40.
        let copy = Arc::new(TestLedger::default());
        let mut restored = aggregator(&clock).with_participants(participants(&copy));
        restore(objects, &manifest, &layout(), &mut restored)
            .await
            .unwrap();
        assert_eq!(copy.applied(), vec![10, 20, 30]);
        // An event of a component not running refuses, naming it.
        let e = restored
            .apply_event(&Event {
                component: "slo".into(),
                payload: vec![],
            })
            .unwrap_err();
        assert!(e.to_string().contains("`slo`"), "{e}");
    }

    #[tokio::test]
    async fn a_restored_checkpoint_holds_the_same_rows_and_counters() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let state = shared(aggregator(&clock));
        let dir = tempfile::tempdir().unwrap();
        let (store, checkpoints) = local_checkpointer(&dir, &state);
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
        restore(store.objects.as_ref(), &manifest, &layout(), &mut restored)
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

    #[tokio::test]
    async fn kafka_positions_move_with_the_counts_and_travel_in_the_checkpoint() {
        use crate::batch::{Batch, Position};
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let state = shared(aggregator(&clock));
        let dir = tempfile::tempdir().unwrap();
        let (store, checkpoints) = local_checkpointer(&dir, &state);
        let mut durable = checkpoints.durable_positions();
        assert!(durable.borrow_and_update().is_empty());
        let at = |partition: i32, offset: i64| Position {
            topic: "recs-traces".into(),
            partition,
            offset,
        };
        let now = clock.now_nanos();
        let kafka = |partition, offset, n: u64| Batch {
            records: (0..n).map(|i| record("k", now, 10 + i)).collect(),
            position: Some(Box::new(at(partition, offset))),
            ..Batch::default()
        };
        lock(&state).apply_batch(&kafka(0, 5, 3), now);
        lock(&state).apply_batch(&kafka(1, 2, 2), now);
        // A message with nothing to count still moves its partition.
        lock(&state).apply_batch(&kafka(0, 6, 0), now);
        let first = checkpoints.checkpoint().await.unwrap();
        assert!(durable.has_changed().unwrap());
        assert_eq!(
            *durable.borrow_and_update().as_ref(),
            vec![at(0, 6), at(1, 2)]
        );
        // Counted after the checkpoint: not durable yet.
        lock(&state).apply_batch(&kafka(1, 9, 4), now);
        assert_eq!(lock(&state).positions(), vec![at(0, 6), at(1, 9)]);
        assert!(!durable.has_changed().unwrap());
        let objects = store.objects.as_ref();
        let manifest = latest_manifest(objects).await.unwrap().unwrap();
        assert_eq!(manifest.id, first.id);
        let section = &manifest.sections[KAFKA_SECTION];
        assert_eq!(section.files.len(), 1);
        // Restored with the counts they cover: 5 requests, the two positions.
        let mut restored = aggregator(&clock);
        restore(objects, &manifest, &layout(), &mut restored)
            .await
            .unwrap();
        assert_eq!(restored.positions(), vec![at(0, 6), at(1, 2)]);
        let total: u64 = restored
            .counters()
            .iter()
            .map(|c| c.totals.requests())
            .sum();
        assert_eq!(total, 5);
        // The next checkpoint writes the section anew; the first one's file goes.
        checkpoints.checkpoint().await.unwrap();
        let manifest = latest_manifest(objects).await.unwrap().unwrap();
        let files = manifest.files(KAFKA_SECTION);
        assert_eq!(files.len(), 1);
        assert_ne!(files[0].path, section.files[0].path);
        assert_eq!(
            *durable.borrow_and_update().as_ref(),
            vec![at(0, 6), at(1, 9)]
        );
    }
}
