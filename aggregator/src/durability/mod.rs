//! Durability: what "accepted" means across crashes and restarts. The write-ahead log holds
//! each acknowledged request's records until a checkpoint in the object store holds their
//! counts; a restart restores the latest checkpoint and replays the log after it (ADR 010).

pub mod checkpoint;
pub mod compaction;
pub mod config;
pub mod restore;
pub mod source;
pub mod wal;

pub use crate::store::manifest::{Layout, Manifest};
pub use crate::submit::Arriving;
pub use checkpoint::{CheckpointStats, Checkpointer, RestoreStats, VerifyReport, verify};
pub use compaction::CompactionStats;
pub use config::{Durability, RetentionConfig, StorageConfig, WalConfig};
pub use restore::{OpenOptions, Opened, Rewound, open, rewind};
pub use source::SourceCheckpoints;
pub use wal::{Logged, ReplayStats, Wal, WalDir};
