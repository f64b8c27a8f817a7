//! Retention and compaction of the rollup files.
//!
//! Each checkpoint adds one small file per day and table. A compaction, run after a checkpoint
//! under the same lock, plans from the manifest in force alone:
//!
//! - **Retention.** Rows of minutes before the hour at or before `now − retention.minutes`
//!   (and before the checkpoint's sealed hours, so the hour rows holding them are stored),
//!   and of hours before the hour at or before `now − retention.hours`, leave the store. A file
//!   wholly before its cutoff is dropped; one that straddles it is rewritten without them.
//!   Minute rows need no merging into hours: every hour is sealed from its minutes (late rows
//!   as extra hour rows) and checkpointed like them, so the hour files already hold their
//!   counts and histograms.
//! - **Compaction.** Files under `retention.compact_target_bytes` whose rows all lie before the
//!   current hour are merged with their neighbours of the same day partition, up to that size,
//!   and extra rows of one series and minute (or hour), left by late data, become one.
//!
//! The merged files are written and made durable, then a manifest naming them instead of the
//! files they replace (the next id, the same WAL sequence number and state files). A crash
//! before that manifest leaves the old one in force, and the next start deletes the new files;
//! a crash after it leaves the new one, and the next start deletes the old files. So a file's
//! rows are named exactly once at every moment. Replaced files are deleted after
//! `retention.delete_delay`, so that queries planned over them can finish.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::time::Instant;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::checkpoint::Checkpointer;
use crate::clock::{MINUTE_NANOS, minute_of};
use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::hooks::Hook;
use crate::record::SeriesKey;
use crate::state::{Row, Source, Table, lock};
use crate::store::files::{parquet, storage};
use crate::store::manifest::read_entry;
use crate::store::manifest::{FileEntry, FileKind, Manifest};
use crate::store::paths::rollup_path;
use crate::store::rollup::{ROW_FORMAT, rollup_batch, rollup_rows, time_column};

const HOUR_MINUTES: u64 = 60;
const DAY_MINUTES: u64 = 1440;

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// The manifest it wrote (0 when there was nothing to do).
    pub id: u64,
    /// Files read and replaced, and files dropped whole by retention.
    pub replaced: usize,
    pub dropped: usize,
    /// Files written.
    pub written: usize,
    /// Rows that left the store by retention, and rows merged into others.
    pub rows_expired: u64,
    pub rows_merged: u64,
    /// Files deleted (replaced by this or earlier compactions, past `delete_delay`).
    pub deleted: usize,
}

/// Files to merge into one, and the first minute whose rows they keep.
#[derive(Debug)]
struct Group {
    kind: FileKind,
    day: u64,
    keep_from: u64,
    files: Vec<FileEntry>,
}

/// The plan of one compaction over `files` at minute `now`.
#[derive(Debug, Default)]
struct Plan {
    dropped: Vec<FileEntry>,
    groups: Vec<Group>,
}

fn floor_hour(minute: u64) -> u64 {
    minute - minute % HOUR_MINUTES
}

/// Plans retention and compaction. `cutoffs` gives, per kind, the first minute whose rows stay.
fn plan(files: &[FileEntry], cutoffs: [(FileKind, u64); 2], settled: u64, target: u64) -> Plan {
    let mut plan = Plan::default();
    let mut partitions: BTreeMap<(bool, u64), (Vec<FileEntry>, Vec<FileEntry>)> = BTreeMap::new();
    for f in files {
        let Some(&(_, cutoff)) = cutoffs.iter().find(|(k, _)| *k == f.kind) else {
            continue;
        };
        let key = (f.kind == FileKind::Hours, f.first_minute / DAY_MINUTES);
        if f.last_minute < cutoff {
            plan.dropped.push(f.clone());
        } else if f.first_minute < cutoff {
            partitions.entry(key).or_default().0.push(f.clone());
        } else if f.bytes < target && f.last_minute < settled {
            partitions.entry(key).or_default().1.push(f.clone());
        }
    }
    for ((_, day), (straddling, mut small)) in partitions {
        let kind = straddling.first().or(small.first()).map(|f| f.kind.clone());
        let Some(kind) = kind else { continue };
        let keep_from = cutoffs
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |&(_, c)| c);
        for f in straddling {
            plan.groups.push(Group {
                kind: kind.clone(),
                day,
                keep_from,
                files: vec![f],
            });
        }
        small.sort_by_key(|f| (f.first_minute, f.path.clone()));
        let mut group: Vec<FileEntry> = Vec::new();
        let mut bytes = 0;
        for f in small {
            if !group.is_empty() && bytes + f.bytes > target {
                if group.len() > 1 {
                    plan.groups.push(Group {
                        kind: kind.clone(),
                        day,
                        keep_from,
                        files: std::mem::take(&mut group),
                    });
                }
                group.clear();
                bytes = 0;
            }
            bytes += f.bytes;
            group.push(f);
        }
        if group.len() > 1 {
            plan.groups.push(Group {
                kind,
                day,
                keep_from,
                files: group,
            });
        }
    }
    plan
}

impl Checkpointer {
    /// Applies retention and compacts small files (see the module docs), then deletes the files
    /// earlier compactions replaced once `retention.delete_delay` has passed. Nothing to do
    /// before the first checkpoint.
    pub async fn compact(&self) -> Result<CompactionStats> {
        let mut last = self.last.lock().await;
        let mut stats = CompactionStats::default();
        if let Some(manifest) = last.as_ref() {
            let now = minute_of(lock(&self.state).clock().now_nanos());
            let minutes = (self.retention.minutes.as_nanos() / u128::from(MINUTE_NANOS)) as u64;
            let hours = (self.retention.hours.as_nanos() / u128::from(MINUTE_NANOS)) as u64;
            let cutoffs = [
                (
                    FileKind::Minutes,
                    // Only minutes whose hours a checkpoint has stored.
                    floor_hour(now.saturating_sub(minutes))
                        .min(floor_hour(manifest.sealed_before_minute)),
                ),
                (FileKind::Hours, floor_hour(now.saturating_sub(hours))),
            ];
            let plan = plan(
                &manifest.rollup_files(),
                cutoffs,
                floor_hour(now),
                self.retention.compact_target_bytes,
            );
            if !plan.dropped.is_empty() || !plan.groups.is_empty() {
                let next = self.apply(manifest, plan, &mut stats).await?;
                self.publish(&next);
                *last = Some(next);
            }
        }
        drop(last);
        stats.deleted = self.delete_replaced(false).await;
        if stats.id != 0 {
            self.telemetry.compaction_succeeded();
        }
        Ok(stats)
    }

    /// Writes the merged files and the manifest that replaces `manifest`; returns the new one.
    async fn apply(
        &self,
        manifest: &Manifest,
        plan: Plan,
        stats: &mut CompactionStats,
    ) -> Result<Manifest> {
        let id = manifest.id + 1;
        let mut written: Vec<Path> = Vec::new();
        let mut added = Vec::new();
        let result = async {
            for (n, group) in plan.groups.iter().enumerate() {
                if let Some(entry) = self.merge(id, n, group, stats).await? {
                    written.push(Path::from(entry.path.as_str()));
                    added.push(entry);
                }
            }
            self.syncer
                .sync(written.iter().map(|p| p.to_string()).collect())
                .await
        }
        .await;
        if let Err(e) = result {
            // The old manifest stays in force and its files are untouched; the new ones go.
            for path in &written {
                if let Err(e) = self.store.delete(path).await {
                    tracing::warn!(error = %e, file = %path, "Cannot delete a file of a failed compaction; the next start will.");
                }
            }
            self.telemetry.compaction_failed();
            return Err(e);
        }
        if self.hooks.is_on(Hook::FailCompactionAfterFiles) {
            // As a crash would: the files stay, no manifest names them.
            tracing::warn!("Test hook fail_compaction_after_files: failing before the manifest.");
            self.telemetry.compaction_failed();
            return Err(Error::Storage(
                "test hook fail_compaction_after_files".into(),
            ));
        }
        let gone: HashSet<&str> = plan
            .dropped
            .iter()
            .chain(plan.groups.iter().flat_map(|g| &g.files))
            .map(|f| f.path.as_str())
            .collect();
        let mut files: Vec<FileEntry> = manifest
            .rollup_files()
            .into_iter()
            .filter(|f| !gone.contains(f.path.as_str()))
            .collect();
        files.extend(added);
        files.sort_by_key(|f| (f.kind == FileKind::Hours, f.first_minute, f.path.clone()));
        // Every other section, the state's included, stays as it was.
        let mut next = manifest.next(id, &[]);
        next.set_rollup_files(files);
        let path = Manifest::path(id);
        let json = next.to_json()?;
        let put = self.store.put(&path, PutPayload::from(json)).await;
        let synced = match put {
            Ok(_) => self.syncer.sync(vec![path.to_string()]).await,
            Err(e) => Err(storage(&path, e)),
        };
        if let Err(e) = synced {
            // Neither manifest can be trusted to be the one in force until a restart reads
            // the store, so nothing is deleted; the next start sorts it out.
            self.telemetry.compaction_failed();
            return Err(e);
        }
        stats.id = id;
        stats.dropped = plan.dropped.len();
        stats.replaced = plan.groups.iter().map(|g| g.files.len()).sum();
        stats.rows_expired += plan.dropped.iter().map(|f| f.rows).sum::<u64>();
        let mut doomed: Vec<Path> = gone.iter().map(|p| Path::from(*p)).collect();
        doomed.push(Manifest::path(manifest.id));
        self.replaced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((Instant::now(), doomed));
        tracing::info!(
            manifest = id,
            dropped = stats.dropped,
            replaced = stats.replaced,
            written = stats.written,
            rows_expired = stats.rows_expired,
            rows_merged = stats.rows_merged,
            "Compacted the store."
        );
        Ok(next)
    }

    /// Reads a group's files and writes their rows from `keep_from` on as one file, extra rows
    /// of a series and minute merged. `None` when no row is kept.
    async fn merge(
        &self,
        id: u64,
        n: usize,
        group: &Group,
        stats: &mut CompactionStats,
    ) -> Result<Option<FileEntry>> {
        let table = match &group.kind {
            FileKind::Hours => Table::Hours,
            _ => Table::Minutes,
        };
        let time = time_column(table);
        let mut rows: BTreeMap<(u64, SeriesKey), (Source, Row)> = BTreeMap::new();
        // One dense array for every merge of duplicate rows.
        let mut counts = Counts::with_precision(self.layout.significant_digits)?;
        for entry in &group.files {
            let batches = read_entry(self.store.as_ref(), entry).await?;
            for (key, source, at, row) in rollup_rows(&batches, &self.layout, &entry.path, time)? {
                if at < group.keep_from {
                    stats.rows_expired += 1;
                    continue;
                }
                match rows.entry((at, key)) {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert((source, row));
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        let (kept_source, kept) = o.get_mut();
                        counts.reset();
                        counts.add_encoded(&kept.hdr)?;
                        counts.add_encoded(&row.hdr)?;
                        kept.hdr = counts.encode().into();
                        kept.counts.add(&row.counts);
                        *kept_source = source;
                        stats.rows_merged += 1;
                    }
                }
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = rollup_batch(
            table,
            &self.layout.dimensions,
            &self.layout.thresholds,
            rows.iter()
                .map(|((at, key), (source, row))| (key, *source, *at, row)),
        )
        .map_err(|e| Error::Storage(format!("cannot build rollup rows: {e}")))?;
        let bytes = parquet(&batch)?;
        let path = rollup_path(table, group.day as i64, id, Some(n));
        let entry = FileEntry {
            path,
            kind: group.kind.clone(),
            rows: rows.len() as u64,
            bytes: bytes.len() as u64,
            requests: rows
                .values()
                .fold(0u64, |n, (_, r)| n.saturating_add(r.counts.requests)),
            first_minute: rows.keys().next().map_or(0, |(at, _)| *at),
            last_minute: rows.keys().next_back().map_or(0, |(at, _)| *at),
            row_format: Some(ROW_FORMAT),
        };
        let put = self
            .store
            .put(&Path::from(entry.path.as_str()), PutPayload::from(bytes))
            .await;
        put.map_err(|e| storage(&entry.path, e))?;
        stats.written += 1;
        Ok(Some(entry))
    }

    /// Deletes the files compactions replaced more than `retention.delete_delay` ago (all of
    /// them with `all`). Returns how many went; failures are left for the next start.
    pub(super) async fn delete_replaced(&self, all: bool) -> usize {
        let due: Vec<Path> = {
            let mut replaced = self
                .replaced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let delay = self.retention.delete_delay;
            let (due, wait): (Vec<_>, Vec<_>) = replaced
                .drain(..)
                .partition(|(at, _)| all || at.elapsed() >= delay);
            *replaced = wait;
            due.into_iter().flat_map(|(_, paths)| paths).collect()
        };
        let mut deleted = 0;
        for path in due {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    tracing::warn!(error = %e, file = %path, "Cannot delete a file compaction replaced; the next start will.");
                }
            }
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use futures::StreamExt;
    use object_store::ObjectStore;

    use super::*;
    use crate::clock::Clock;
    use crate::config::SqlConfig;
    use crate::durability::checkpoint;
    use crate::durability::checkpoint::tests::{aggregator, layout};
    use crate::durability::config::RetentionConfig;
    use crate::hooks::Hooks;
    use crate::record::RequestRecord;
    use crate::sql::QueryEngine;
    use crate::state::{SharedState, shared};
    use crate::store::history::History;
    use crate::store::manifest::read_entry;
    use crate::store::manifest::{delete_unreferenced, latest_manifest};
    use crate::store::object as store;
    use crate::store::rollup::rollup_rows;
    use crate::window::Window;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, UInt64Type};

    /// Midnight UTC, 30 s in: day 20 600 since the epoch.
    const START_SECS: u64 = 20_600 * 86_400 + 30;

    fn checkpointer(
        store: &store::Store,
        state: &SharedState,
        hooks: &Arc<Hooks>,
        last: Option<Manifest>,
        history: &Arc<History>,
    ) -> Checkpointer {
        Checkpointer::new(
            store.clone(),
            state.clone(),
            layout(),
            hooks.clone(),
            Arc::default(),
            last,
            Box::new(|_| {}),
        )
        .with_retention(RetentionConfig {
            // Small enough that the 4 days' minute files are merged in several groups.
            compact_target_bytes: 1 << 20,
            // Replaced files stay until the test deletes them, as a crash before the delete
            // would leave them.
            delete_delay: Duration::from_secs(3600),
            ..RetentionConfig::default()
        })
        .with_history(history.clone())
    }

    /// A restart: what the store holds, restored into a fresh aggregator, the files no
    /// manifest names deleted.
    async fn restart(
        clock: &Arc<Clock>,
        store: &store::Store,
        hooks: &Arc<Hooks>,
        history: &Arc<History>,
    ) -> (SharedState, Checkpointer, usize) {
        let objects = store.objects.as_ref();
        let manifest = latest_manifest(objects).await.unwrap().unwrap();
        let deleted = delete_unreferenced(objects, Some(&manifest), &[], &Default::default())
            .await
            .unwrap();
        let mut restored = aggregator(clock);
        restored.keep_journal();
        checkpoint::restore(objects, &manifest, &layout(), &mut restored)
            .await
            .unwrap();
        let state = shared(restored);
        history.publish(&manifest.rollup_files());
        let checkpoints = checkpointer(store, &state, hooks, Some(manifest), history);
        (state, checkpoints, deleted)
    }

    /// Every row the manifest in force names, per (minute or hour, service): requests and
    /// merged counts.
    async fn stored(
        objects: &dyn ObjectStore,
        kind: FileKind,
    ) -> BTreeMap<(u64, String), (u64, Counts)> {
        let manifest = latest_manifest(objects).await.unwrap().unwrap();
        let time = if kind == FileKind::Hours {
            "hour"
        } else {
            "minute"
        };
        let mut out: BTreeMap<(u64, String), (u64, Counts)> = BTreeMap::new();
        for entry in manifest.rollup_files().iter().filter(|f| f.kind == kind) {
            let batches = read_entry(objects, entry).await.unwrap();
            for (key, _, at, row) in rollup_rows(&batches, &layout(), &entry.path, time).unwrap() {
                let slot = out
                    .entry((at, key.service.to_string()))
                    .or_insert_with(|| (0, Counts::with_precision(2).unwrap()));
                slot.0 += row.counts.requests;
                slot.1.add_encoded(&row.hdr).unwrap();
            }
        }
        out
    }

    async fn listed(objects: &dyn ObjectStore, prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = objects
            .list(Some(&Path::from(prefix)))
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        out.sort();
        out
    }

    fn nearest_rank(sorted: &[u64], q: f64) -> f64 {
        let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
        sorted[rank - 1] as f64 / 1e9
    }

    /// Every long window at the clock's reading (whole hours, memory holding about a day of
    /// them), from `engine`, whose final hours have been moved on hour by hour with the hours
    /// left behind read from the store, and from a fresh engine, which merges them anew from
    /// the store and memory: each service's count is that of the raw requests in the window's
    /// minutes, its P50 and P99 within 1% of their nearest rank.
    async fn check_long_windows(
        engine: &QueryEngine,
        state: &SharedState,
        history: &Arc<History>,
        sent: &BTreeMap<(u64, String), Vec<u64>>,
    ) {
        let fresh = QueryEngine::new(state.clone(), &SqlConfig::default())
            .unwrap()
            .with_history(history.clone());
        let windows = [Window::D1, Window::D3, Window::D7, Window::D30];
        for engine in [engine, &fresh] {
            let snapshot = engine.snapshot(&windows).await.unwrap();
            assert_eq!(snapshot.series.len(), 3);
            for series in &snapshot.series {
                assert_eq!(series.windows.len(), windows.len());
                for w in &series.windows {
                    let range = w.window.minute_range(snapshot.at_unix_nanos);
                    let mut values: Vec<u64> = sent
                        .iter()
                        .filter(|((m, s), _)| range.contains(m) && **s == *series.key.service)
                        .flat_map(|(_, v)| v.iter().copied())
                        .collect();
                    values.sort_unstable();
                    let what = format!("{} {}", series.key.service, w.window.label());
                    assert_eq!(w.count, values.len() as u64, "{what}");
                    for (q, got) in w
                        .quantiles
                        .into_iter()
                        .filter(|(q, _)| [0.5, 0.99].contains(q))
                    {
                        let exact = nearest_rank(&values, q);
                        assert!(
                            (got - exact).abs() <= 0.01 * exact,
                            "{what} q{q}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    /// Four days of history under the fake clock, checkpointed and compacted every hour, with a
    /// crash during one compaction (before its manifest) and after another (before it deleted
    /// what it replaced). Checked against the raw values sent. From the second day on, the
    /// long windows are checked every hour, their first hours read from the store.
    #[tokio::test]
    async fn four_days_keep_three_days_of_minutes_and_every_hour() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let dir = tempfile::tempdir().unwrap();
        let store = store::open(dir.path().to_str().unwrap(), true).unwrap();
        let hooks = Arc::new(Hooks::default());
        let history = Arc::new(History::new(store.objects.clone()));
        let mut state = shared(aggregator(&clock));
        let mut checkpoints = checkpointer(&store, &state, &hooks, None, &history);
        let engine = |state: &SharedState| {
            QueryEngine::new(state.clone(), &SqlConfig::default())
                .unwrap()
                .with_history(history.clone())
        };
        let mut windows = engine(&state);
        let mut moved_on = 0;
        // Raw latencies (nanoseconds) per (minute, service).
        let mut sent: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut crashed = [false; 2];
        let steps = 4 * 24 * 6;
        for step in 0..steps {
            let now = clock.now_nanos();
            let mut batch = Vec::new();
            for j in 0..24u64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Spread over the last 10 minutes, one in six 40 minutes late.
                let back = if j % 6 == 5 { 40 * 60 } else { seed % 600 };
                let end = now - back * 1_000_000_000;
                let service = ["checkout", "home", "search"][(j % 3) as usize];
                let duration = 1_000_000 + seed % 2_000_000_000;
                batch.push(RequestRecord {
                    key: crate::record::SeriesKey {
                        service: Arc::from(service),
                        endpoint: Arc::from("GET /r"),
                        dimensions: Vec::new(),
                    },
                    end_unix_nanos: end,
                    duration_nanos: duration,
                    error: j % 7 == 0,
                    recommendations: 1,
                });
                sent.entry((minute_of(end), service.to_owned()))
                    .or_default()
                    .push(duration);
            }
            assert_eq!(lock(&state).apply(&batch).accepted, 24);
            clock.advance(Duration::from_secs(600));
            if step % 6 != 5 {
                continue;
            }
            checkpoints.checkpoint().await.unwrap();
            let hour = step / 6;
            if hour == 80 && !crashed[0] {
                // A crash while compacting: its files are written, its manifest is not.
                crashed[0] = true;
                hooks.set(Hook::FailCompactionAfterFiles, true);
                assert!(checkpoints.compact().await.is_err());
                hooks.set(Hook::FailCompactionAfterFiles, false);
                let (s, c, deleted) = restart(&clock, &store, &hooks, &history).await;
                assert!(deleted > 0, "the crashed compaction's files are deleted");
                (state, checkpoints) = (s, c);
                windows = engine(&state);
                continue;
            }
            let stats = checkpoints.compact().await.unwrap();
            if hour == 90 && !crashed[1] {
                // A crash after the manifest, before the replaced files are deleted.
                crashed[1] = true;
                assert!(stats.replaced + stats.dropped > 0, "{stats:?}");
                let (s, c, deleted) = restart(&clock, &store, &hooks, &history).await;
                assert!(
                    deleted >= stats.replaced + stats.dropped,
                    "{deleted} {stats:?}"
                );
                (state, checkpoints) = (s, c);
                windows = engine(&state);
                continue;
            }
            checkpoints.delete_replaced(true).await;
            // Every hour from the second day, but every third hour on the third day, so the
            // kept hours also move on by several hours at once, some of those the 1d window
            // leaves behind read from the store and some from memory.
            if hour >= 24 && (!(48..72).contains(&hour) || hour % 3 == 0) {
                check_long_windows(&windows, &state, &history, &sent).await;
                moved_on += usize::from(windows.kept_hours_moved_on() == Some(true));
            }
        }
        assert_eq!(crashed, [true, true]);
        // At every check the kept final hours moved on, but the first and the first after each
        // restart: 24 + 8 + 24 checks, less the two restarts, less three first merges.
        assert_eq!(moved_on, 51);
        // Past the last minute, then a checkpoint and a compaction.
        clock.advance(Duration::from_secs(3600));
        checkpoints.checkpoint().await.unwrap();
        checkpoints.compact().await.unwrap();
        checkpoints.delete_replaced(true).await;

        let objects = store.objects.as_ref();
        let now = minute_of(clock.now_nanos());
        let cutoff = floor_hour(now - 3 * DAY_MINUTES);
        let total: usize = sent.values().map(Vec::len).sum();
        assert_eq!(total, steps as usize * 24);
        // Counted once, across both restarts.
        let counted: u64 = lock(&state)
            .counters()
            .iter()
            .map(|c| c.totals.requests())
            .sum();
        assert_eq!(counted, total as u64);

        // Minutes: exactly the raw requests of the minutes from the cutoff on; none before.
        let minutes = stored(objects, FileKind::Minutes).await;
        assert!(minutes.keys().all(|(m, _)| *m >= cutoff));
        for ((minute, service), values) in sent.range((cutoff, String::new())..) {
            let (n, _) = &minutes[&(*minute, service.clone())];
            assert_eq!(*n, values.len() as u64, "minute {minute} {service}");
        }
        assert_eq!(
            minutes.values().map(|(n, _)| n).sum::<u64>(),
            sent.range((cutoff, String::new())..)
                .map(|(_, v)| v.len() as u64)
                .sum::<u64>()
        );
        // The minute files on disk are the ones the manifest names, after the cutoff.
        let manifest = latest_manifest(objects).await.unwrap().unwrap();
        for (kind, prefix) in [(FileKind::Minutes, "minutes"), (FileKind::Hours, "hours")] {
            let mut named: Vec<String> = manifest
                .rollup_files()
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| f.path.clone())
                .collect();
            named.sort();
            assert_eq!(listed(objects, prefix).await, named);
        }
        assert!(
            manifest
                .rollup_files()
                .iter()
                .all(|f| f.kind != FileKind::Minutes || f.first_minute >= cutoff)
        );
        // Far fewer files than the 96 checkpoints wrote.
        let files = manifest.rollup_files().len();
        assert!(files < 40, "{files}");

        // Hours: every hour of the 4 days, its requests and quantiles those of its raw values.
        let hours = stored(objects, FileKind::Hours).await;
        let mut per_hour: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
        for ((minute, service), values) in &sent {
            per_hour
                .entry((floor_hour(*minute), service.clone()))
                .or_default()
                .extend(values);
        }
        assert_eq!(
            hours.keys().collect::<Vec<_>>(),
            per_hour.keys().collect::<Vec<_>>()
        );
        for (key, values) in &mut per_hour {
            values.sort_unstable();
            let (n, counts) = &hours[key];
            assert_eq!(*n, values.len() as u64, "{key:?}");
            assert_eq!(counts.total(), values.len() as u64, "{key:?}");
            for q in [0.5, 0.9, 0.99] {
                let exact = nearest_rank(values, q);
                let got = counts.quantile_seconds(q).unwrap();
                assert!(
                    (got - exact).abs() <= 0.01 * exact,
                    "{key:?} q{q}: {got} vs exact {exact}"
                );
            }
        }

        // SQL over history. Memory holds the last 3 h of minutes and about a day of hours; the
        // rest come from the files.
        let minutes_kept: u64 = sent
            .range((cutoff, String::new())..)
            .map(|(_, v)| v.len() as u64)
            .sum();
        let live = QueryEngine::new(state.clone(), &SqlConfig::default())
            .unwrap()
            .with_history(history.clone());
        assert_eq!(
            sum(&live, "SELECT sum(requests) FROM latency_minutes").await,
            minutes_kept
        );
        // Memory's hours start inside the 4 days: the first hours come from the files, the
        // rest from memory, each once.
        let split = lock(&state).first_hour_held(clock.now_nanos());
        assert!(
            split > per_hour.keys().next().unwrap().0 && split < now,
            "{split}"
        );
        assert_eq!(
            sum(&live, "SELECT sum(requests) FROM latency_hours").await,
            total as u64
        );
        // 40 days on, with nothing in memory: hours and minutes all come from the files.
        let later = Arc::new(Clock::fake(
            UNIX_EPOCH + Duration::from_nanos(clock.now_nanos()) + Duration::from_secs(40 * 86_400),
        ));
        let empty = QueryEngine::new(shared(aggregator(&later)), &SqlConfig::default())
            .unwrap()
            .with_history(history);
        assert_eq!(
            sum(&empty, "SELECT sum(requests) FROM latency_hours").await,
            total as u64
        );
        assert_eq!(
            sum(&empty, "SELECT sum(requests) FROM latency_minutes").await,
            minutes_kept
        );
        let first = (per_hour.keys().next().unwrap().0 * MINUTE_NANOS) as i64;
        let out = empty
            .query(&format!(
                "SELECT service, sum(requests), hdr_quantile(hdr_merge(hdr), 0.99) \
                 FROM latency_hours WHERE hour = to_timestamp_nanos({first}) \
                 GROUP BY service ORDER BY service"
            ))
            .await
            .unwrap();
        let batch = &out.batches[0];
        assert_eq!(batch.num_rows(), 3);
        for i in 0..3 {
            let service = batch.column(0).as_string::<i32>().value(i);
            let values = &per_hour[&(first as u64 / MINUTE_NANOS, service.to_owned())];
            let n = batch.column(1).as_primitive::<UInt64Type>().value(i);
            assert_eq!(n, values.len() as u64);
            let p99 = batch.column(2).as_primitive::<Float64Type>().value(i);
            let exact = nearest_rank(values, 0.99);
            assert!(
                (p99 - exact).abs() <= 0.01 * exact,
                "{service}: {p99} vs {exact}"
            );
        }
    }

    async fn sum(engine: &QueryEngine, sql: &str) -> u64 {
        let out = engine.query(sql).await.unwrap();
        out.batches[0]
            .column(0)
            .as_primitive::<UInt64Type>()
            .value(0)
    }

    fn file(kind: FileKind, path: &str, first: u64, last: u64, bytes: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            rows: 10,
            bytes,
            requests: 10,
            first_minute: first,
            last_minute: last,
            row_format: None,
        }
    }

    #[test]
    fn plans_drop_straddle_and_merge_by_day() {
        let day = DAY_MINUTES;
        let files = vec![
            // Wholly before the minute cutoff (day 10, hour 6): dropped.
            file(FileKind::Minutes, "m/a", 10 * day, 10 * day + 300, 100),
            // Straddling it: rewritten alone.
            file(
                FileKind::Minutes,
                "m/b",
                10 * day + 300,
                10 * day + 420,
                100,
            ),
            // Small and settled, same day: merged; the big one is left.
            file(FileKind::Minutes, "m/c", 11 * day, 11 * day + 10, 100),
            file(FileKind::Minutes, "m/d", 11 * day + 11, 11 * day + 20, 100),
            file(
                FileKind::Minutes,
                "m/big",
                11 * day + 21,
                11 * day + 30,
                1000,
            ),
            // In the current hour: not yet.
            file(FileKind::Minutes, "m/e", 12 * day + 65, 12 * day + 66, 100),
            file(FileKind::Minutes, "m/f", 12 * day + 66, 12 * day + 67, 100),
            // Hours: one alone in its day stays.
            file(FileKind::Hours, "h/a", 10 * day, 10 * day + 60, 100),
        ];
        let plan = plan(
            &files,
            [(FileKind::Minutes, 10 * day + 360), (FileKind::Hours, 0)],
            12 * day + 60,
            500,
        );
        let dropped: Vec<_> = plan.dropped.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(dropped, ["m/a"]);
        let groups: Vec<Vec<&str>> = plan
            .groups
            .iter()
            .map(|g| g.files.iter().map(|f| f.path.as_str()).collect())
            .collect();
        assert_eq!(groups, [vec!["m/b"], vec!["m/c", "m/d"]]);
        assert_eq!(plan.groups[0].keep_from, 10 * day + 360);
        assert_eq!(plan.groups[1].day, 11);
    }

    #[test]
    fn groups_stop_at_the_target_size() {
        let files: Vec<_> = (0..7)
            .map(|i| file(FileKind::Hours, &format!("h/{i}"), i * 60, i * 60 + 59, 40))
            .collect();
        let plan = plan(
            &files,
            [(FileKind::Minutes, 0), (FileKind::Hours, 0)],
            DAY_MINUTES,
            100,
        );
        let sizes: Vec<usize> = plan.groups.iter().map(|g| g.files.len()).collect();
        // 40 + 40 fit under 100, a third would not; the last one is alone and stays.
        assert_eq!(sizes, [2, 2, 2]);
    }
}
