//! The submit interface: where the collector hands what it decoded. The aggregator's handle
//! implements it (logging each batch first when the write-ahead log is on); tests put a double
//! in its place.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::batch::{Batch, Position};
use crate::clock::Clock;
use crate::error::Result;
use crate::record::ApplyOutcome;
use crate::telemetry::Telemetry;

/// What [`Submit::submit_batch`] returns.
pub type Submitted<'a> = Pin<Box<dyn Future<Output = Result<ApplyOutcome>> + Send + 'a>>;

/// What [`Submit::queue`] returns once the batch is queued: its outcome, once counted.
pub type Answer = Pin<Box<dyn Future<Output = Result<ApplyOutcome>> + Send + 'static>>;

/// A shared [`Submit`], as the collector holds it.
pub type Submitter = Arc<dyn Submit>;

/// Takes decoded batches: the aggregator, through its log.
pub trait Submit: Send + Sync + std::fmt::Debug {
    /// Marks a request on its way to [`Submit::submit_batch`], so the log's group commit
    /// waits for it; hand it to `submit_batch`. See [`Arriving`].
    fn arriving(&self) -> Arriving;

    /// Counts `batch`; answers once it is counted (and, with a log, logged). Fails fast with
    /// `Error::Backpressure` when the aggregator's queue is full, before anything is logged.
    /// `arriving` is let go once the batch is logged or refused.
    fn submit_batch(&self, batch: Batch, arriving: Arriving) -> Submitted<'_>;

    /// Queues `batch` at once, skipping the log (a Kafka message: Kafka is its log), or fails
    /// with `Error::Backpressure` while the queue is full. Batches queued one after another
    /// are counted in that order. The answer comes once it is counted.
    fn queue(&self, batch: Batch) -> Result<Answer>;

    /// The self-telemetry counters.
    fn telemetry(&self) -> &Arc<Telemetry>;

    /// The process clock.
    fn clock(&self) -> &Arc<Clock>;
}

/// A request on its way to the log: its body is being received or decoded. While any exist the
/// log's group commit holds a waiting frame back for them, so they share its fsync; once none
/// is on its way it syncs at once. Take one when a request starts ([`Submit::arriving`]) and
/// hand it to [`Submit::submit_batch`], which lets go of it once the log holds the frame.
/// Dropped anywhere else (the request was refused or had nothing to log), it wakes the log's
/// writer if it was the last. Clones share one place, which ends when the last clone is
/// dropped. Without a log it does nothing.
#[derive(Debug, Clone, Default)]
pub struct Arriving {
    /// Held only to be dropped: the log's place, whose drop does the letting go.
    _place: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Arriving {
    /// A place the log counts until its last clone is dropped.
    pub fn new(place: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        Self {
            _place: Some(place),
        }
    }
}

/// What a source that keeps its own log needs of recmeter's checkpoints: a Kafka consumer
/// commits to its group only the positions a durable checkpoint holds, and takes a checkpoint
/// before it lets a partition go.
pub trait Checkpoints: Send + Sync + std::fmt::Debug {
    /// The positions counted so far (not yet durable, perhaps).
    fn applied(&self) -> Vec<Position>;

    /// Takes a checkpoint now; answers once it is durable, with the positions it holds.
    fn checkpoint_now(&self) -> Pin<Box<dyn Future<Output = Result<Vec<Position>>> + Send + '_>>;

    /// The positions of the latest durable checkpoint, updated as each one is written.
    fn durable(&self) -> tokio::sync::watch::Receiver<Arc<Vec<Position>>>;

    /// Puts the counts back where a restart would: the checkpoint in force, and the log
    /// after it. What was counted since that checkpoint without being logged goes, and the
    /// positions returned are the checkpoint's. Blocks: call it off the runtime's workers.
    fn rewind(&self) -> Result<Vec<Position>>;
}
