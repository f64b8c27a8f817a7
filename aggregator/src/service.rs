//! The aggregator as a running service: a bounded queue in front of one worker task that owns
//! the writes. Senders get a retryable [`Error::Backpressure`] when the queue is full, never a
//! silent drop; each batch is answered once it has been counted.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{AggregatorConfig, IngestConfig};
use crate::error::{Error, Result};
use crate::hooks::{Hook, Hooks};
use crate::record::{ApplyOutcome, RequestRecord};
use crate::state::{Aggregator, SharedState, lock};
use crate::telemetry::Telemetry;

struct Job {
    records: Vec<RequestRecord>,
    reply: oneshot::Sender<ApplyOutcome>,
}

/// Cloneable handle to the running aggregator.
#[derive(Clone)]
pub struct AggregatorHandle {
    tx: mpsc::Sender<Job>,
    state: SharedState,
    clock: Arc<Clock>,
    telemetry: Arc<Telemetry>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for AggregatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorHandle").finish_non_exhaustive()
    }
}

impl AggregatorHandle {
    /// Starts the worker on the current Tokio runtime. The worker ends once every handle is
    /// dropped and the queue is drained.
    pub fn start(
        ingest: &IngestConfig,
        config: &AggregatorConfig,
        clock: Arc<Clock>,
        telemetry: Arc<Telemetry>,
        hooks: Arc<Hooks>,
    ) -> Result<(Self, JoinHandle<()>)> {
        let state = crate::state::shared(Aggregator::new(
            ingest,
            config,
            clock.clone(),
            telemetry.clone(),
        )?);
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let worker = tokio::spawn(run(rx, state.clone(), hooks.clone()));
        Ok((
            Self {
                tx,
                state,
                clock,
                telemetry,
                hooks,
            },
            worker,
        ))
    }

    /// Counts a batch; answers once it is counted. Fails fast with [`Error::Backpressure`]
    /// when the queue is full.
    pub async fn submit(&self, records: Vec<RequestRecord>) -> Result<ApplyOutcome> {
        if records.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => Error::Backpressure,
            mpsc::error::TrySendError::Closed(()) => Error::Stopped,
        })?;
        let (reply, answer) = oneshot::channel();
        permit.send(Job { records, reply });
        answer.await.map_err(|_| Error::Stopped)
    }

    /// Cumulative counters of every series, sorted by key.
    pub fn counters(&self) -> Vec<crate::state::SeriesCounters> {
        lock(&self.state).counters()
    }

    /// The rollup state, for the query engine's tables.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Series currently held, the overflow series included.
    pub fn series_active(&self) -> usize {
        lock(&self.state).series_active()
    }

    /// The process clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The test hooks.
    pub fn hooks(&self) -> &Arc<Hooks> {
        &self.hooks
    }

    /// The ingest self-telemetry counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, state: SharedState, hooks: Arc<Hooks>) {
    loop {
        hooks.released(Hook::StallAggregator).await;
        // Arming the stall while waiting leaves the next job in the queue.
        let job = tokio::select! {
            biased;
            () = hooks.armed(Hook::StallAggregator) => continue,
            job = rx.recv() => job,
        };
        let Some(job) = job else { break };
        let outcome = lock(&state).apply(&job.records);
        // The sender may have gone away (client timeout); the records are counted regardless.
        let _ = job.reply.send(outcome);
    }
    tracing::debug!("Aggregator queue drained; worker stopping.");
}
