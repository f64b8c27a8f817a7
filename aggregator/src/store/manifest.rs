//! The manifest and the files it names: written last by a checkpoint or compaction, it is
//! what the store holds. Checkpoints, compaction, restore and verify write and read it; SQL
//! over history reads the files it names.
//!
//! A manifest has named sections, one per table or component: today `latency_minutes`,
//! `latency_hours`, `state` (the rollup image's series counters, open accumulators and metric
//! streams), and one per checkpoint participant. Each section names the prefix its files live
//! under and whether its files stay from one checkpoint to the next (`kept`, like rollup
//! files) or are written anew by each (`checkpoint`, like state). A section this recmeter does
//! not know (written by a later version, or by a component not running now) is carried into
//! every later manifest as it is, and its files are neither swept nor deleted.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{Result, clip};
use crate::store::files::{get, read_parquet, storage};
use crate::store::paths::{HOURS_PREFIX, MINUTES_PREFIX, STATE_PREFIX};

/// Version of the manifest format written: 2 has named sections. Version 1 (one list of
/// rollup files and one of state files) is still read.
pub const MANIFEST_VERSION: u32 = 2;

/// Where the manifests live: `manifests/<id, 20 digits>.json`.
pub const MANIFESTS: &str = "manifests";

/// The section of `latency_minutes`' files.
pub const MINUTES_SECTION: &str = "latency_minutes";
/// The section of `latency_hours`' files.
pub const HOURS_SECTION: &str = "latency_hours";
/// The section of the rollup state image: series counters, open accumulators, metric streams.
pub const STATE_SECTION: &str = "state";
/// The Kafka positions the state's counts cover (`state/<id>-kafka_offsets.json`), written
/// anew by each checkpoint of a state that has any.
pub const KAFKA_SECTION: &str = "kafka_offsets";

/// The prefixes of the built-in sections, which the sweep always covers.
const BUILT_IN_PREFIXES: [&str; 3] = [MINUTES_PREFIX, HOURS_PREFIX, STATE_PREFIX];

/// What a file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Rows of `latency_minutes`.
    Minutes,
    /// Rows of `latency_hours`.
    Hours,
    /// Every series' counters (this checkpoint's only).
    Series,
    /// Open accumulators as minute rows (this checkpoint's only).
    Open,
    /// JSON state: the metric streams, or a checkpoint participant's (this checkpoint's only).
    Extra,
    /// A kind this recmeter does not know, kept as written.
    #[serde(untagged)]
    Other(String),
}

/// One file a manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the store.
    pub path: String,
    pub kind: FileKind,
    /// Rows (Parquet) or 1 (JSON).
    pub rows: u64,
    pub bytes: u64,
    /// Sum of the `requests` column (rollups and open rows), or of `ok + errors` (series).
    pub requests: u64,
    /// First and last minute (index since the epoch) a rollup file's rows start in.
    #[serde(default)]
    pub first_minute: u64,
    #[serde(default)]
    pub last_minute: u64,
    /// The row format of a rollup file ([`crate::store::rollup::ROW_FORMAT`]); absent for
    /// other files and for rollup files of format 1, written before formats were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_format: Option<u32>,
}

/// A file about to be written: its manifest entry and its bytes.
#[derive(Debug)]
pub struct Pending {
    pub entry: FileEntry,
    pub bytes: Bytes,
}

/// The batches of the Parquet file `entry` names.
pub async fn read_entry(store: &dyn ObjectStore, entry: &FileEntry) -> Result<Vec<RecordBatch>> {
    let bytes = get(store, &Path::from(entry.path.as_str())).await?;
    read_parquet(bytes).map_err(|e| storage(&entry.path, e))
}

/// Whether a section's files outlive the checkpoint that wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// Files stay, checkpoint after checkpoint, until compaction or retention replaces them.
    Kept,
    /// Each checkpoint writes the section anew; the files of the one before go with it.
    Checkpoint,
}

/// One named section of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// The prefix its files live under; the sweep covers it.
    pub prefix: String,
    pub lifetime: Lifetime,
    pub files: Vec<FileEntry>,
    /// Fields this recmeter does not know, kept as written.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Section {
    /// An empty section of files under `prefix`.
    pub fn new(prefix: &str, lifetime: Lifetime) -> Self {
        Self {
            prefix: prefix.to_owned(),
            lifetime,
            files: Vec::new(),
            other: serde_json::Map::new(),
        }
    }
}

/// The manifest: written last, it makes a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub id: u64,
    /// recmeter's clock when the checkpoint was taken, Unix nanoseconds.
    pub created_unix_nanos: u64,
    /// The last WAL sequence number whose entries the checkpoint holds.
    pub wal_seq: u64,
    /// Minutes before this one were sealed.
    pub sealed_before_minute: u64,
    pub significant_digits: u8,
    /// Extra dimension columns and `requests_le_*` columns of the rollup files.
    pub dimensions: Vec<String>,
    pub thresholds: Vec<String>,
    /// The sections by name.
    pub sections: BTreeMap<String, Section>,
}

/// A version 1 manifest: rollup files and this checkpoint's state files in two lists.
#[derive(Deserialize)]
struct ManifestV1 {
    id: u64,
    created_unix_nanos: u64,
    wal_seq: u64,
    sealed_before_minute: u64,
    significant_digits: u8,
    dimensions: Vec<String>,
    thresholds: Vec<String>,
    files: Vec<FileEntry>,
    state: Vec<FileEntry>,
}

impl Manifest {
    /// An empty manifest (no section) for checkpoint `id`, of the rollups' `layout`.
    pub fn empty(id: u64, layout: &Layout) -> Self {
        Self {
            version: MANIFEST_VERSION,
            id,
            created_unix_nanos: 0,
            wal_seq: 0,
            sealed_before_minute: 0,
            significant_digits: layout.significant_digits,
            dimensions: layout.dimensions.clone(),
            thresholds: layout.thresholds.clone(),
            sections: BTreeMap::new(),
        }
    }

    /// Where manifest `id` lives in the store.
    pub fn path(id: u64) -> Path {
        Path::from(format!("{MANIFESTS}/{id:020}.json"))
    }

    /// Reads a manifest of any version this recmeter knows; the error names `path`.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version = serde_json::from_slice::<Version>(bytes)
            .map_err(|e| storage(path, format!("not a manifest: {e}")))?
            .version;
        match version {
            1 => {
                let v1: ManifestV1 = serde_json::from_slice(bytes)
                    .map_err(|e| storage(path, format!("not a manifest: {e}")))?;
                let mut m = Self {
                    version: MANIFEST_VERSION,
                    id: v1.id,
                    created_unix_nanos: v1.created_unix_nanos,
                    wal_seq: v1.wal_seq,
                    sealed_before_minute: v1.sealed_before_minute,
                    significant_digits: v1.significant_digits,
                    dimensions: v1.dimensions,
                    thresholds: v1.thresholds,
                    sections: BTreeMap::new(),
                };
                m.set_rollup_files(v1.files);
                m.section_mut(STATE_SECTION, STATE_PREFIX, Lifetime::Checkpoint)
                    .files = v1.state;
                Ok(m)
            }
            MANIFEST_VERSION => {
                let m: Self = serde_json::from_slice(bytes)
                    .map_err(|e| storage(path, format!("not a manifest: {e}")))?;
                // The sweep deletes what the manifest does not name under each prefix: a prefix
                // of the whole store, or outside recmeter's names, would take foreign files.
                for (name, section) in &m.sections {
                    let name = clip(name, 64);
                    if let Some(f) = section
                        .files
                        .iter()
                        .find(|f| !f.path.starts_with(&format!("{}/", section.prefix)))
                    {
                        return Err(storage(
                            path,
                            format!(
                                "section `{name}` names the file {:?}, outside its prefix {:?}",
                                clip(&f.path, 128),
                                clip(&section.prefix, 64)
                            ),
                        ));
                    }
                    if !valid_prefix(&section.prefix) {
                        return Err(storage(
                            path,
                            format!(
                                "section `{name}` has the prefix {:?}; a prefix is one or more `/`-separated \
                                 names of [a-z0-9_], other than `{MANIFESTS}`, of at most 256 bytes",
                                clip(&section.prefix, 64)
                            ),
                        ));
                    }
                }
                Ok(m)
            }
            v => Err(storage(
                path,
                format!(
                    "manifest version {v} (this recmeter reads 1 to {MANIFEST_VERSION}); \
                     it was written by a newer recmeter"
                ),
            )),
        }
    }

    /// The manifest as written to the store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| crate::error::Error::Storage(format!("cannot encode the manifest: {e}")))
    }

    /// The files of section `name` (none if it has no such section).
    pub fn files(&self, name: &str) -> &[FileEntry] {
        self.sections.get(name).map_or(&[], |s| &s.files)
    }

    /// Section `name`, created empty (under `prefix`, with `lifetime`) if missing.
    pub fn section_mut(&mut self, name: &str, prefix: &str, lifetime: Lifetime) -> &mut Section {
        self.sections
            .entry(name.to_owned())
            .or_insert_with(|| Section::new(prefix, lifetime))
    }

    /// Every rollup file: `latency_minutes`' then `latency_hours'`.
    pub fn rollup_files(&self) -> Vec<FileEntry> {
        let mut files = self.files(MINUTES_SECTION).to_vec();
        files.extend_from_slice(self.files(HOURS_SECTION));
        files
    }

    /// Puts `files` (minutes and hours) in their two sections, replacing what they held.
    pub fn set_rollup_files(&mut self, files: Vec<FileEntry>) {
        let (hours, minutes): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|f| f.kind == FileKind::Hours);
        self.section_mut(MINUTES_SECTION, MINUTES_PREFIX, Lifetime::Kept)
            .files = minutes;
        self.section_mut(HOURS_SECTION, HOURS_PREFIX, Lifetime::Kept)
            .files = hours;
    }

    /// Every file it names, in every section.
    pub fn all_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.sections.values().flat_map(|s| &s.files)
    }

    /// The manifest of the next checkpoint, before it adds its own: every section carried
    /// over, except the `checkpoint`-lifetime sections named in `rewritten`, which it writes
    /// anew (emptied here).
    pub fn next(&self, id: u64, rewritten: &[&str]) -> Self {
        let mut next = self.clone();
        next.version = MANIFEST_VERSION;
        next.id = id;
        for name in rewritten {
            if let Some(s) = next.sections.get_mut(*name)
                && s.lifetime == Lifetime::Checkpoint
            {
                s.files.clear();
            }
        }
        next
    }
}

/// The shape of the rollups, which a store must match.
#[derive(Debug, Clone)]
pub struct Layout {
    pub significant_digits: u8,
    pub dimensions: Vec<String>,
    pub thresholds: Vec<String>,
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
    Manifest::from_json(&bytes, &path).map(Some)
}

/// Whether `prefix` may be a section's: `/`-separated names of `[a-z0-9_]`, not the manifests',
/// at most 256 bytes (object stores cap a whole name at 1024).
fn valid_prefix(prefix: &str) -> bool {
    prefix != MANIFESTS
        && prefix.len() <= 256
        && prefix.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// The sweep: deletes what neither the manifest in force nor `also_named` (the files the
/// running components name after the replay) names under the prefixes of every section (its
/// own, the built-in ones and `registered`, those of the sections the running components
/// write): files of a checkpoint that crashed before its manifest, files a component wrote
/// before a crash kept it from logging them, and superseded ones left by a crash. Returns how
/// many went.
pub async fn delete_unreferenced(
    store: &dyn ObjectStore,
    manifest: Option<&Manifest>,
    registered: &[&str],
    also_named: &HashSet<&str>,
) -> Result<usize> {
    let mut named: HashSet<&str> = manifest
        .map(|m| m.all_files().map(|f| f.path.as_str()).collect())
        .unwrap_or_default();
    named.extend(also_named);
    let keep_manifest = manifest.map(|m| Manifest::path(m.id));
    if let Some(bad) = registered.iter().find(|p| !valid_prefix(p)) {
        return Err(crate::error::Error::Storage(format!(
            "a component registered the store prefix {bad:?} for the sweep; a prefix is \
             `/`-separated names of [a-z0-9_] other than `{MANIFESTS}`"
        )));
    }
    let mut prefixes: Vec<&str> = BUILT_IN_PREFIXES.to_vec();
    prefixes.extend_from_slice(registered);
    if let Some(m) = manifest {
        prefixes.extend(m.sections.values().map(|s| s.prefix.as_str()));
    }
    prefixes.push(MANIFESTS);
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut doomed = Vec::new();
    for prefix in prefixes {
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
                // Files under a registered prefix are a running component's, which names every
                // file it still holds.
                let registered_file = registered
                    .iter()
                    .any(|p| loc.as_ref().starts_with(&format!("{p}/")));
                if manifest.is_none() && id != Some(1) && !registered_file {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: FileKind) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            rows: 1,
            bytes: 10,
            requests: 1,
            first_minute: 0,
            last_minute: 0,
            row_format: None,
        }
    }

    #[test]
    fn a_version_1_manifest_reads_into_sections() {
        let v1 = serde_json::json!({
            "version": 1, "id": 7, "created_unix_nanos": 5, "wal_seq": 9,
            "sealed_before_minute": 3, "significant_digits": 3,
            "dimensions": ["env"], "thresholds": ["requests_le_200ms"],
            "files": [entry("minutes/day=2026-03-02/00000000000000000001.parquet", FileKind::Minutes),
                      entry("hours/day=2026-03-02/00000000000000000001.parquet", FileKind::Hours)],
            "state": [entry("state/00000000000000000007-series.parquet", FileKind::Series)],
        });
        let m = Manifest::from_json(&serde_json::to_vec(&v1).unwrap(), &Manifest::path(7)).unwrap();
        assert_eq!(m.version, MANIFEST_VERSION);
        assert_eq!(m.files(MINUTES_SECTION).len(), 1);
        assert_eq!(m.files(HOURS_SECTION).len(), 1);
        assert_eq!(m.files(STATE_SECTION)[0].kind, FileKind::Series);
        assert_eq!(m.all_files().count(), 3);
        assert_eq!((m.id, m.wal_seq, m.sealed_before_minute), (7, 9, 3));
    }

    #[test]
    fn an_unknown_section_is_kept_as_it_is() {
        let mut m = Manifest::empty(
            1,
            &Layout {
                significant_digits: 3,
                dimensions: vec![],
                thresholds: vec![],
            },
        );
        m.set_rollup_files(vec![entry("minutes/a.parquet", FileKind::Minutes)]);
        let mut json: serde_json::Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        let unknown = serde_json::json!({
            "prefix": "cost_lines", "lifetime": "kept", "watermark": {"a": 1},
            "files": [{"path": "cost_lines/x.parquet", "kind": "cost_lines", "rows": 4,
                       "bytes": 99, "requests": 0}],
        });
        json["sections"]["cost_lines"] = unknown.clone();
        let read =
            Manifest::from_json(&serde_json::to_vec(&json).unwrap(), &Manifest::path(1)).unwrap();
        assert_eq!(
            read.files("cost_lines")[0].kind,
            FileKind::Other("cost_lines".into())
        );
        // Carried into the next checkpoint's manifest, and written back as it was read.
        let next = read.next(2, &[STATE_SECTION, "cost_lines"]);
        let written: serde_json::Value = serde_json::from_slice(&next.to_json().unwrap()).unwrap();
        let mut expected = unknown;
        expected["files"][0]["first_minute"] = 0.into();
        expected["files"][0]["last_minute"] = 0.into();
        assert_eq!(written["sections"]["cost_lines"], expected);
        assert_eq!(next.all_files().count(), 2);
    }

    #[test]
    fn hostile_sections_are_refused_or_carried_whole() {
        let layout = Layout {
            significant_digits: 3,
            dimensions: vec![],
            thresholds: vec![],
        };
        let base: serde_json::Value =
            serde_json::from_slice(&Manifest::empty(1, &layout).to_json().unwrap()).unwrap();
        let with = |section: serde_json::Value| {
            let mut json = base.clone();
            json["sections"]["other"] = section;
            serde_json::to_vec(&json).unwrap()
        };
        // A prefix the sweep could take foreign files under is refused, and named.
        let long = "x".repeat(100_000);
        for prefix in [
            "",
            "/",
            "manifests",
            "../up",
            "a//b",
            "Cost",
            "a/",
            long.as_str(),
        ] {
            let bytes =
                with(serde_json::json!({"prefix": prefix, "lifetime": "kept", "files": []}));
            let e = Manifest::from_json(&bytes, &Manifest::path(1))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("section `other` has the prefix"),
                "{prefix:?}: {e}"
            );
            assert!(e.len() < 400, "{} bytes", e.len());
        }
        // A large section of a later recmeter reads and is carried whole.
        let files: Vec<_> = (0..50_000)
            .map(|i| {
                entry(
                    &format!("cost_lines/day=2026-03-02/{i:020}.parquet"),
                    FileKind::Other("cost".into()),
                )
            })
            .collect();
        let bytes = with(
            serde_json::json!({"prefix": "cost_lines", "lifetime": "kept",
                                            "files": files, "blob": long}),
        );
        let read = Manifest::from_json(&bytes, &Manifest::path(1)).unwrap();
        let next = read.next(2, &[STATE_SECTION]);
        assert_eq!(next.files("other").len(), 50_000);
        assert_eq!(
            next.sections["other"].other["blob"].as_str().unwrap().len(),
            100_000
        );
        // A file outside its section's prefix is refused: the sweep and the deletion of
        // superseded files would reach it.
        let bytes = with(
            serde_json::json!({"prefix": "cost_lines", "lifetime": "checkpoint",
            "files": [entry("state/00000000000000000001-series.parquet", FileKind::Series)]}),
        );
        let e = Manifest::from_json(&bytes, &Manifest::path(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside its prefix"), "{e}");
        // A section missing its prefix or lifetime is not a manifest.
        let bytes = with(serde_json::json!({"files": []}));
        let e = Manifest::from_json(&bytes, &Manifest::path(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a manifest"), "{e}");
    }

    #[test]
    fn a_newer_manifest_is_refused_naming_its_version() {
        let e = Manifest::from_json(br#"{"version": 3}"#, &Manifest::path(4)).unwrap_err();
        assert!(e.to_string().contains("manifest version 3"), "{e}");
        assert!(e.to_string().contains("00000000000000000004.json"), "{e}");
    }
}
