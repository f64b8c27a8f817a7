//! Start-up: lock the WAL directory, restore the checkpoint in force, replay the WAL after it
//! (request records to the counts, component events to their checkpoint participants), sweep
//! the store of files nothing names, start the WAL writer.

use std::sync::Arc;

use std::path::Path;

use super::checkpoint::{self, Checkpointer, RestoreStats};
use super::config::{StorageConfig, WalConfig};
use super::wal::{Entry, ReplayStats, Wal, WalDir, read_back};
use crate::batch::Position;
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::participant::OwnedSection;
use crate::state::Aggregator;
use crate::state::lock;
use crate::store::manifest::{Layout, Manifest, delete_unreferenced, latest_manifest};
use crate::store::object as store;
use crate::telemetry::Telemetry;

/// An aggregator brought back to where it stood, and what keeps it durable from here on.
#[derive(Debug)]
pub struct Opened {
    /// Restored from the latest checkpoint, with the WAL after it applied.
    pub aggregator: Aggregator,
    /// The log's writer: appended to with `durability = "wal"`, truncated behind checkpoints
    /// either way.
    pub wal: Arc<Wal>,
    pub store: store::Store,
    /// The manifest in force, if the store had one.
    pub manifest: Option<Manifest>,
    pub restored: RestoreStats,
    pub replayed: ReplayStats,
    /// Files no manifest named (a checkpoint cut short), deleted.
    pub deleted: usize,
}

/// How start-up treats the WAL and the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// `--wal-truncate-at-corruption`: cut a corrupt WAL at the corruption, dropping (and
    /// counting) the acknowledged records after it, instead of refusing to start.
    pub truncate_at_corruption: bool,
    /// Prefixes of the store that running components write files under, which the sweep covers
    /// besides the built-in ones and every section of the manifest in force: a component's
    /// files written before any manifest named its section are then deleted too.
    pub swept_prefixes: &'static [&'static str],
}

/// Locks `wal.dir`, opens `storage.url`, restores the latest checkpoint into `aggregator` (which
/// must be empty, with its checkpoint participants registered), replays the WAL after it, and
/// starts the WAL writer.
pub async fn open(
    wal_config: &WalConfig,
    storage_config: &StorageConfig,
    layout: &Layout,
    mut aggregator: Aggregator,
    hooks: Arc<Hooks>,
    telemetry: Arc<Telemetry>,
    options: OpenOptions,
) -> Result<Opened> {
    let mut dir = WalDir::lock(&wal_config.dir)?;
    // Rows the restore and the replay store (open minutes, replayed records) are new to
    // storage: the next checkpoint must write them.
    aggregator.keep_journal();
    let store = store::open(&storage_config.url, true)?;
    let objects = store.objects.as_ref();
    // Storage errors name the store as configured (they name the file within it already).
    let at_url = |e: Error| match e {
        Error::Storage(m) => Error::Storage(format!("storage.url `{}`: {m}", storage_config.url)),
        other => other,
    };
    let manifest = latest_manifest(objects).await.map_err(at_url)?;
    let restored = match &manifest {
        Some(m) => checkpoint::restore(objects, m, layout, &mut aggregator)
            .await
            .map_err(at_url)?,
        None => RestoreStats::default(),
    };
    let after = manifest.as_ref().map_or(0, |m| m.wal_seq);
    let replayed = dir.replay(after, options.truncate_at_corruption, |entry| {
        apply_logged(&mut aggregator, &entry, &wal_config.dir)
    })?;
    telemetry.add_wal_records_dropped(replayed.dropped_records);
    // After the replay: a participant's files are named by its logged events before any
    // manifest names them. Its state sections live under `state/`, which the sweep always
    // covers; the sections of files it owns are registered here.
    let owned: Vec<OwnedSection> = aggregator
        .participants()
        .iter()
        .flat_map(|p| p.sections())
        .collect();
    let mut prefixes: Vec<&str> = options.swept_prefixes.to_vec();
    prefixes.extend(owned.iter().map(|s| s.prefix));
    let also_named = owned
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.path.as_str()))
        .collect();
    let deleted = delete_unreferenced(objects, manifest.as_ref(), &prefixes, &also_named)
        .await
        .map_err(at_url)?;
    let next_seq = replayed.last_seq.max(after) + 1;
    let wal = Arc::new(dir.start(next_seq, wal_config.fsync_interval, hooks, telemetry)?);
    Ok(Opened {
        aggregator,
        wal,
        store,
        manifest,
        restored,
        replayed,
        deleted,
    })
}

/// Applies one logged entry to `aggregator`, as it was applied when it was logged.
fn apply_logged(aggregator: &mut Aggregator, entry: &Entry, dir: &Path) -> Result<()> {
    if let Some(event) = &entry.event {
        // A participant that cannot apply its own logged event: its state would not be
        // what the log says, so the start stops here, before the log is changed.
        aggregator.apply_event(event).map_err(|e| {
            Error::Participant(format!(
                "the write-ahead log in {}, entry {}: {e}",
                dir.display(),
                entry.seq
            ))
        })?;
    } else {
        aggregator.apply_checked(&entry.records, entry.checked_at);
        if !entry.points.is_empty() {
            aggregator.apply_points(&entry.points, entry.checked_at);
        }
    }
    aggregator.set_wal_seq(entry.seq);
    Ok(())
}

/// What [`rewind`] put back.
#[derive(Debug, Clone, Default)]
pub struct Rewound {
    /// The checkpoint restored.
    pub checkpoint: u64,
    /// Log entries applied after it.
    pub replayed: u64,
    /// The Kafka positions the state now holds: the checkpoint's.
    pub positions: Vec<Position>,
}

/// Puts the running state back where a restart would: the checkpoint in force, then the log's
/// entries after it, up to the last one the state applied. What was counted without being
/// logged since that checkpoint (Kafka messages; requests under `wal.durability =
/// "checkpoint"`) goes. `empty` is an empty aggregator with the running one's configuration and
/// no participants: the running participants (shared with the components that use them) are
/// put back in place. Holds checkpoints back throughout. The checkpoint is read from the store
/// first, holding no other lock; then, under the state's lock, the participants are put back,
/// the log is read and the state swapped, so nothing is counted meanwhile. If any step fails the
/// running state and participants stay as they were. Blocks: call it off the runtime's workers
/// (`runtime` runs the store reads). The caller makes sure nothing it queued is still waiting
/// to be counted.
pub fn rewind(
    checkpoints: &Checkpointer,
    wal_dir: &Path,
    mut empty: Aggregator,
    runtime: &tokio::runtime::Handle,
) -> Result<Rewound> {
    let last = checkpoints.last.blocking_lock();
    // The participants are the running ones: only a checkpoint's sections put them back;
    // without one, the log's events would be applied to them twice.
    let Some(m) = last.as_ref() else {
        return Err(Error::Storage(
            "no checkpoint to go back to: the store holds none yet".into(),
        ));
    };
    let participants = lock(&checkpoints.state).participants().clone();
    empty.keep_journal();
    let store = checkpoints.store.as_ref();
    let saved = runtime.block_on(async {
        checkpoint::restore(store, m, &checkpoints.layout, &mut empty).await?;
        checkpoint::participant_states(store, m, &participants).await
    })?;
    // A participant the checkpoint has no section for would keep its running state and meet
    // the log's events a second time.
    if saved.len() != participants.iter().count() {
        return Err(Error::Storage(format!(
            "the checkpoint in force ({}) holds no state for some of the checkpoint participants \
             ({participants:?})",
            m.id
        )));
    }
    let mut state = lock(&checkpoints.state);
    let upto = state.wal_seq();
    let before = participants
        .iter()
        .map(|p| p.save().map(|v| (p.clone(), v)))
        .collect::<Result<Vec<_>>>()?;
    let mut empty = empty.with_participants(participants);
    let replayed = saved
        .into_iter()
        .try_for_each(|(p, value)| p.restore(value))
        .and_then(|()| {
            read_back(wal_dir, m.wal_seq, upto, |entry| {
                apply_logged(&mut empty, &entry, wal_dir)
            })
        });
    let replayed = match replayed {
        Ok(replayed) => replayed,
        Err(e) => {
            for (p, value) in before {
                if let Err(e) = p.restore(value) {
                    tracing::error!(participant = p.name(), error = %e, "Cannot put a checkpoint participant back after a failed rewind.");
                }
            }
            return Err(e);
        }
    };
    empty.set_wal_seq(upto.max(m.wal_seq));
    *state = empty;
    Ok(Rewound {
        checkpoint: m.id,
        replayed,
        positions: state.positions(),
    })
}
