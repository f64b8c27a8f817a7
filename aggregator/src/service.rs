//! The aggregator as a running service: a bounded queue in front of one worker task that owns
//! the writes. Senders get a retryable [`Error::Backpressure`] when the queue is full, never a
//! silent drop; each batch is answered once it has been counted. With a write-ahead log, a
//! batch takes its queue slot first, then is logged and fsynced, then counted: the log's
//! writer hands batches to the queue in sequence order, so the state's WAL sequence number
//! always covers exactly what it has counted.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::batch::Batch;
use crate::clock::Clock;
use crate::config::{AggregatorConfig, IngestConfig};
use crate::durability::{Arriving, Wal};
use crate::error::{Error, Result};
use crate::hooks::{Hook, Hooks};
use crate::record::{ApplyOutcome, RequestRecord};
use crate::state::{Aggregator, SharedState, lock};
use crate::telemetry::Telemetry;

struct Job {
    batch: Batch,
    /// The clock reading the age checks use (taken before the WAL append).
    checked_at: u64,
    /// The WAL frame holding the records, when logged.
    seq: Option<u64>,
    reply: oneshot::Sender<Result<ApplyOutcome>>,
}

/// Cloneable handle to the running aggregator.
#[derive(Clone)]
pub struct AggregatorHandle {
    tx: mpsc::Sender<Job>,
    state: SharedState,
    clock: Arc<Clock>,
    telemetry: Arc<Telemetry>,
    hooks: Arc<Hooks>,
    /// Set with `durability = "wal"`: batches are logged before they are counted.
    wal: Option<Arc<Wal>>,
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
        let aggregator = Aggregator::new(ingest, config, clock, telemetry)?;
        Ok(Self::spawn(aggregator, config.queue_capacity, hooks, None))
    }

    /// Starts the worker over `aggregator` (restored, perhaps) on the current Tokio runtime;
    /// with `wal`, every batch is logged before it is counted.
    pub fn spawn(
        aggregator: Aggregator,
        queue_capacity: usize,
        hooks: Arc<Hooks>,
        wal: Option<Arc<Wal>>,
    ) -> (Self, JoinHandle<()>) {
        let clock = aggregator.clock().clone();
        let telemetry = aggregator.telemetry().clone();
        let state = crate::state::shared(aggregator);
        let (tx, rx) = mpsc::channel(queue_capacity);
        let worker = tokio::spawn(run(rx, state.clone(), hooks.clone()));
        (
            Self {
                tx,
                state,
                clock,
                telemetry,
                hooks,
                wal,
            },
            worker,
        )
    }

    /// Marks a request on its way to [`AggregatorHandle::submit`], so the WAL's group commit
    /// waits for it; hand it to `submit`. See [`Arriving`].
    pub fn arriving(&self) -> Arriving {
        self.wal.as_ref().map(|w| w.arriving()).unwrap_or_default()
    }

    /// Counts a batch; answers once it is counted (and, with a WAL, logged). Fails fast with
    /// [`Error::Backpressure`] when the queue is full, before anything is logged.
    /// `arriving` is the request's place among those on their way to the WAL (from
    /// [`AggregatorHandle::arriving`], or `Arriving::default()`); it is let go once the batch
    /// is logged or refused.
    pub async fn submit(
        &self,
        records: Vec<RequestRecord>,
        arriving: Arriving,
    ) -> Result<ApplyOutcome> {
        self.submit_batch(records.into(), arriving).await
    }

    /// [`AggregatorHandle::submit`] for request records and metric points together.
    pub async fn submit_batch(&self, batch: Batch, arriving: Arriving) -> Result<ApplyOutcome> {
        if batch.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let permit = self.tx.clone().try_reserve_owned().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Backpressure,
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })?;
        let checked_at = self.clock.now_nanos();
        let (reply, answer) = oneshot::channel();
        match &self.wal {
            None => {
                permit.send(Job {
                    batch,
                    checked_at,
                    seq: None,
                    reply,
                });
            }
            Some(wal) => wal.append(
                batch,
                checked_at,
                arriving,
                Box::new(move |logged, batch| match logged {
                    Ok(seq) => {
                        permit.send(Job {
                            batch,
                            checked_at,
                            seq: Some(seq),
                            reply,
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }),
            ),
        }
        answer.await.map_err(|_| Error::Stopped)?
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
        let outcome = {
            let mut state = lock(&state);
            let outcome = state.apply_batch(&job.batch, job.checked_at);
            if let Some(seq) = job.seq {
                state.set_wal_seq(seq);
            }
            outcome
        };
        // The sender may have gone away (client timeout); the records are counted regardless.
        let _ = job.reply.send(Ok(outcome));
    }
    tracing::debug!("Aggregator queue drained; worker stopping.");
}
