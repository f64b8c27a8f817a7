//! The manifest and the files it names: written last by a checkpoint or compaction, it is
//! what the store holds. Checkpoints, compaction, restore and verify write and read it; SQL
//! over history reads the files it names.

use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

pub const MANIFESTS: &str = "manifests";

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A registered checkpoint participant's JSON (this checkpoint's only).
    Extra,
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
}

/// The manifest: written last, it makes a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub id: u64,
    /// recmeter's clock when the checkpoint was taken, Unix nanoseconds.
    pub created_unix_nanos: u64,
    /// The last WAL sequence number whose records the checkpoint holds.
    pub wal_seq: u64,
    /// Minutes before this one were sealed.
    pub sealed_before_minute: u64,
    pub significant_digits: u8,
    /// Extra dimension columns and `requests_le_*` columns of the rollup files.
    pub dimensions: Vec<String>,
    pub thresholds: Vec<String>,
    /// Every rollup file, older checkpoints' included.
    pub files: Vec<FileEntry>,
    /// This checkpoint's state files.
    pub state: Vec<FileEntry>,
}

impl Manifest {
    pub fn path(id: u64) -> Path {
        Path::from(format!("{MANIFESTS}/{id:020}.json"))
    }

    /// Every file it names.
    pub fn all_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().chain(&self.state)
    }
}

/// The shape of the rollups, which a store must match.
#[derive(Debug, Clone)]
pub struct Layout {
    pub significant_digits: u8,
    pub dimensions: Vec<String>,
    pub thresholds: Vec<String>,
}
