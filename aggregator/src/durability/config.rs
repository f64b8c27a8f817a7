//! `[wal]` and `[storage]` configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::InvalidField;

/// When an OTLP request is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After its records are in the write-ahead log and fsynced: a 200 survives `kill -9` and
    /// power loss.
    Wal,
    /// Request records skip the log: a crash loses what was accepted since the last checkpoint
    /// (at most `storage.checkpoint_interval`), for lower latency and less disk I/O.
    /// Components' own events are logged and fsynced either way.
    Checkpoint,
}

/// `[wal]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Directory of the write-ahead log, locked by one recmeter process. Relative paths are
    /// resolved against the working directory. Default: `"./data/wal"`.
    pub dir: PathBuf,
    /// `"wal"` or `"checkpoint"` (see [`Durability`]). Default: `"wal"`.
    pub durability: Durability,
    /// Longest wait for a group commit: a logged request waits for the requests still being
    /// received or decoded (see [`super::wal::Arriving`]), never longer than this after the
    /// last fsync, and shares their fsync. Default: `"10ms"`.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/wal"),
            durability: Durability::Wal,
            fsync_interval: Duration::from_millis(10),
        }
    }
}

impl WalConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.dir.as_os_str().is_empty() {
            errors.push(InvalidField::new("wal.dir", "must not be empty"));
        }
        if self.fsync_interval > Duration::from_secs(1) {
            errors.push(InvalidField::new(
                "wal.fsync_interval",
                "must be at most 1s: every acknowledgement waits for it",
            ));
        }
        errors
    }
}

/// `[storage]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where checkpoints go: a plain path (resolved against the working directory), a
    /// `file://` URL, `s3://BUCKET[/PREFIX]` or `gs://BUCKET[/PREFIX]` (credentials from the
    /// standard `AWS_*` and `GOOGLE_*` variables). Default: `"./data"`.
    pub url: String,
    /// Time between checkpoints; one is also taken at shutdown. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "./data".to_owned(),
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

impl StorageConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if let Err(e) = crate::store::object::parse_url(&self.url) {
            errors.push(InvalidField::new("storage.url", e.to_string()));
        }
        if self.checkpoint_interval < Duration::from_secs(1) {
            errors.push(InvalidField::new(
                "storage.checkpoint_interval",
                "must be at least 1s",
            ));
        }
        errors
    }
}

/// `[retention]` configuration: how long the store keeps history, and how its files are
/// compacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Minute rows older than this leave the store; the hour rows, sealed from the same
    /// minutes, keep their counts and histograms. Default: `"3d"`.
    #[serde(with = "humantime_serde")]
    pub minutes: Duration,
    /// Hour rows older than this leave the store. Default: `"400d"`.
    #[serde(with = "humantime_serde")]
    pub hours: Duration,
    /// Rollup files smaller than this are merged with their neighbours of the same day once
    /// the hour they end in is over. Default: 32 MiB.
    pub compact_target_bytes: u64,
    /// Files that compaction replaced are deleted this long after the manifest that replaced
    /// them. Meanwhile a reader that globs the directories instead of reading the manifest sees
    /// both; a longer delay lets long queries planned over the old files finish. Default:
    /// `"0s"`.
    #[serde(with = "humantime_serde")]
    pub delete_delay: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            minutes: Duration::from_secs(3 * 86_400),
            hours: Duration::from_secs(400 * 86_400),
            compact_target_bytes: 32 << 20,
            delete_delay: Duration::ZERO,
        }
    }
}

impl RetentionConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        // A restart reads memory's 3 h of minutes back from the store, and the 30d window reads
        // its hours from it, so the store must hold at least as much.
        if self.minutes < Duration::from_secs(3 * 3600) {
            errors.push(InvalidField::new(
                "retention.minutes",
                "must be at least 3h: memory holds the last 3 h of minutes and a restart reads \
                 them back from the store",
            ));
        }
        if self.hours < Duration::from_secs(30 * 86_400) {
            errors.push(InvalidField::new(
                "retention.hours",
                "must be at least 30d: the 30d windows and error budgets read 30 days of hours",
            ));
        }
        if self.hours < self.minutes {
            errors.push(InvalidField::new(
                "retention.hours",
                "must be at least retention.minutes: hours outlive the minutes they hold",
            ));
        }
        if self.compact_target_bytes < 1 << 20 {
            errors.push(InvalidField::new(
                "retention.compact_target_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        errors
    }
}
