//! Checkpoints as a source with a log of its own uses them (the Kafka source, ADR 021): the
//! positions counted, a checkpoint on demand, the positions each durable checkpoint holds, and
//! a rewind to the checkpoint in force when partitions were lost with messages counted that
//! the group does not hold as read.

use std::path::PathBuf;
use std::sync::Arc;

use super::checkpoint::Checkpointer;
use crate::batch::Position;
use crate::error::Result;
use crate::state::{Aggregator, lock};

/// The store's checkpoints, for a source that keeps its own log.
pub struct SourceCheckpoints {
    checkpoints: Arc<Checkpointer>,
    /// The log a rewind reads back.
    wal_dir: PathBuf,
    /// An empty aggregator with the running one's configuration (no participants: the rewind
    /// puts the running ones back in place).
    empty: Box<dyn Fn() -> Result<Aggregator> + Send + Sync>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SourceCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCheckpoints")
            .field("wal_dir", &self.wal_dir)
            .finish_non_exhaustive()
    }
}

impl SourceCheckpoints {
    /// Over `checkpoints` and the log in `wal_dir`; `empty` makes an empty aggregator like the
    /// running one, without participants. Must be called within a Tokio runtime (a rewind reads the store on it).
    pub fn new(
        checkpoints: Arc<Checkpointer>,
        wal_dir: PathBuf,
        empty: Box<dyn Fn() -> Result<Aggregator> + Send + Sync>,
    ) -> Self {
        Self {
            checkpoints,
            wal_dir,
            empty,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl crate::submit::Checkpoints for SourceCheckpoints {
    fn applied(&self) -> Vec<Position> {
        lock(&self.checkpoints.state).positions()
    }

    fn checkpoint_now(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Position>>> + Send + '_>>
    {
        Box::pin(async move {
            let mut durable = self.checkpoints.durable_positions();
            self.checkpoints.checkpoint().await?;
            let positions = durable.borrow_and_update().as_ref().clone();
            Ok(positions)
        })
    }

    fn durable(&self) -> tokio::sync::watch::Receiver<Arc<Vec<Position>>> {
        self.checkpoints.durable_positions()
    }

    fn rewind(&self) -> Result<Vec<Position>> {
        let rewound = super::restore::rewind(
            &self.checkpoints,
            &self.wal_dir,
            (self.empty)()?,
            &self.runtime,
        )?;
        tracing::warn!(
            checkpoint = rewound.checkpoint,
            wal_entries = rewound.replayed,
            "Counts put back to the last checkpoint and the log after it."
        );
        Ok(rewound.positions)
    }
}
