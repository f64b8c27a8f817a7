//! The aggregator as a running service: a bounded queue in front of one worker task that owns
//! the writes. Senders get a retryable [`Error::Backpressure`] when the queue is full, never a
//! silent drop; each batch is answered once it has been counted. With a write-ahead log, a
//! batch takes its queue slot first, then is logged and fsynced, then counted: the log's
//! writer hands batches to the queue in sequence order, so the state's WAL sequence number
//! always covers exactly what it has counted. Component events (`log_event`) take the same
//! path through the log in both durability modes, so a participant's state and the counts are
//! always of the same log sequence number.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::batch::{Batch, Position};
use crate::clock::Clock;
use crate::config::{AggregatorConfig, IngestConfig};
use crate::durability::{Logged, Wal};
use crate::error::{Error, Result, clip};
use crate::hooks::{Hook, Hooks};
use crate::participant::Event;
use crate::record::{ApplyOutcome, RequestRecord};
use crate::state::{Aggregator, SharedState, lock};
use crate::submit::{Arriving, Submit, Submitted};
use crate::telemetry::Telemetry;

/// How long [`AggregatorHandle::log_event`] waits for room in the queue.
const EVENT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

struct Job {
    /// A batch, with the clock reading the age checks use (taken before the WAL append), or a
    /// component event.
    entry: Logged,
    /// The WAL frame holding it, when logged.
    seq: Option<u64>,
    /// For an unlogged event from a source with a log of its own (cost lines from Kafka):
    /// the position noted with it, in the same step.
    position: Option<Position>,
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
    /// The log: component events are logged before they are applied, and with
    /// `durability = "wal"` (`log_batches`) batches before they are counted.
    wal: Option<Arc<Wal>>,
    log_batches: bool,
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
        Ok(Self::spawn(
            aggregator,
            config.queue_capacity,
            hooks,
            None,
            false,
        ))
    }

    /// Starts the worker over `aggregator` (restored, perhaps) on the current Tokio runtime.
    /// With `wal`, component events are logged before they are applied, and with
    /// `log_batches` every batch is logged before it is counted too.
    pub fn spawn(
        aggregator: Aggregator,
        queue_capacity: usize,
        hooks: Arc<Hooks>,
        wal: Option<Arc<Wal>>,
        log_batches: bool,
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
                log_batches,
            },
            worker,
        )
    }

    /// Marks a request on its way to [`AggregatorHandle::submit`], so the WAL's group commit
    /// waits for it; hand it to `submit`. See [`Arriving`].
    pub fn arriving(&self) -> Arriving {
        self.batch_log().map(|w| w.arriving()).unwrap_or_default()
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
        // A Kafka message skips the log: Kafka is its log, and the checkpoint holds its
        // position with its counts.
        let log = match batch.position {
            Some(_) => None,
            None => self.batch_log(),
        };
        let entry = Logged::Batch { batch, checked_at };
        self.enqueue(permit, entry, log, arriving).await
    }

    /// [`Submit::queue`]: queues `batch` at once, unlogged, or fails with
    /// [`Error::Backpressure`] while the queue is full.
    pub fn queue(&self, batch: Batch) -> Result<crate::submit::Answer> {
        let entry = Logged::Batch {
            batch,
            checked_at: self.clock.now_nanos(),
        };
        self.queue_job(entry, None)
    }

    /// Queues `event` at once, unlogged, to be applied to its participant in the same step
    /// as `position` is noted (cost lines from a Kafka topic: Kafka is their log, and a
    /// checkpoint holds the participant's state and the position together). Fails with
    /// [`Error::Backpressure`] while the queue is full, and with [`Error::Participant`] if the
    /// participant refuses the event.
    pub fn queue_event(&self, event: Event, position: Position) -> Result<crate::submit::Answer> {
        self.check_event(&event)?;
        self.queue_job(Logged::Event(event), Some(position))
    }

    /// Queues `entry` at once, unlogged (with `position` noted in the same step), or fails with
    /// [`Error::Backpressure`] while the queue is full; the answer comes once it is applied.
    fn queue_job(
        &self,
        entry: Logged,
        position: Option<Position>,
    ) -> Result<crate::submit::Answer> {
        let permit = self.tx.clone().try_reserve_owned().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Backpressure,
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })?;
        let (reply, answer) = oneshot::channel();
        permit.send(Job {
            entry,
            seq: None,
            position,
            reply,
        });
        Ok(Box::pin(async move {
            answer.await.map_err(|_| Error::Stopped)?
        }))
    }

    /// Whether `event`'s participant is registered and takes it.
    fn check_event(&self, event: &Event) -> Result<()> {
        match lock(&self.state).participants().get(&event.component) {
            Some(participant) => participant.check(&event.payload),
            None => Err(Error::Participant(format!(
                "no checkpoint participant `{}` is registered",
                clip(&event.component, 64)
            ))),
        }
    }

    /// Logs `event` (fsynced, in either durability mode), then applies it to its checkpoint
    /// participant in log order; answers once it is applied. Without a log (no durability at
    /// all) it is only applied.
    pub async fn log_event(&self, event: Event) -> Result<()> {
        if event.payload.len() > crate::participant::MAX_EVENT_BYTES {
            return Err(Error::Participant(format!(
                "an event of {} bytes for `{}` (at most {} bytes)",
                event.payload.len(),
                clip(&event.component, 64),
                crate::participant::MAX_EVENT_BYTES
            )));
        }
        // Checked before it is logged: a logged event that its participant refused would stop
        // the next start at its replay.
        self.check_event(&event)?;
        // Waits for room rather than failing at once (an event is a component's own record,
        // not load), but not for ever.
        let permit = tokio::time::timeout(EVENT_QUEUE_WAIT, self.tx.clone().reserve_owned())
            .await
            .map_err(|_| Error::Backpressure)?
            .map_err(|_| Error::Stopped)?;
        self.enqueue(
            permit,
            Logged::Event(event),
            self.wal.as_ref(),
            Arriving::default(),
        )
        .await
        .map(drop)
    }

    /// The log batches go through, if they are logged.
    fn batch_log(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref().filter(|_| self.log_batches)
    }

    /// Logs `entry` with `wal`, if any, then queues it on `permit`; answers once applied.
    async fn enqueue(
        &self,
        permit: mpsc::OwnedPermit<Job>,
        entry: Logged,
        wal: Option<&Arc<Wal>>,
        arriving: Arriving,
    ) -> Result<ApplyOutcome> {
        let (reply, answer) = oneshot::channel();
        match wal {
            None => {
                permit.send(Job {
                    entry,
                    seq: None,
                    position: None,
                    reply,
                });
            }
            Some(wal) => wal.append(
                entry,
                arriving,
                Box::new(move |logged, entry| match logged {
                    Ok(seq) => {
                        permit.send(Job {
                            entry,
                            seq: Some(seq),
                            position: None,
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

    /// What the checkpoint participant `name` would save now; `None` if none is registered.
    pub fn participant_state(&self, name: &str) -> Option<Result<serde_json::Value>> {
        let state = lock(&self.state);
        state.participants().get(name).map(|p| p.save())
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

impl Submit for AggregatorHandle {
    fn arriving(&self) -> Arriving {
        AggregatorHandle::arriving(self)
    }

    fn submit_batch(&self, batch: Batch, arriving: Arriving) -> Submitted<'_> {
        Box::pin(AggregatorHandle::submit_batch(self, batch, arriving))
    }

    fn queue(&self, batch: Batch) -> Result<crate::submit::Answer> {
        AggregatorHandle::queue(self, batch)
    }

    fn telemetry(&self) -> &Arc<Telemetry> {
        AggregatorHandle::telemetry(self)
    }

    fn clock(&self) -> &Arc<Clock> {
        AggregatorHandle::clock(self)
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
            let outcome = match &job.entry {
                Logged::Batch { batch, checked_at } => Ok(state.apply_batch(batch, *checked_at)),
                Logged::Event(event) => state.apply_event(event).map(|()| ApplyOutcome::default()),
            };
            if let Some(seq) = job.seq {
                state.set_wal_seq(seq);
            }
            if let (Some(position), Ok(_)) = (&job.position, &outcome) {
                state.note_position(position);
            }
            outcome
        };
        if let Err(e) = &outcome {
            // Logged, so the replay meets it again and refuses the start: said now as well.
            tracing::error!(error = %e, "A checkpoint participant refused its own logged event.");
        }
        // The sender may have gone away (client timeout); the records are counted regardless.
        let _ = job.reply.send(outcome);
    }
    tracing::debug!("Aggregator queue drained; worker stopping.");
}
