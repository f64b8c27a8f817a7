//! The aggregator: every series, the clock, limits and configuration, its checkpoint
//! participants, and the lock it is shared under.

use std::collections::HashMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::{Mutex, MutexGuard};

use super::series::{SeriesRows, SeriesState};
use crate::clock::Clock;
use crate::config::{AggregatorConfig, IngestConfig, MetricsConfig};
use crate::counts::Counts;
use crate::error::Result;
use crate::histogram;
use crate::limits::SeriesLimits;
use crate::metrics::MetricState;
use crate::participant::{Event, Participants};
use crate::record::SeriesKey;
use crate::telemetry::Telemetry;

/// The rollup state, shared by the worker that writes it and the readers (tables, `/metrics`).
/// `parking_lot`'s mutex, so a reader that takes it chunk after chunk can hand it over fairly
/// to a waiting writer between chunks.
pub type SharedState = Arc<Mutex<Aggregator>>;

/// Wraps an aggregator for sharing.
pub fn shared(aggregator: Aggregator) -> SharedState {
    Arc::new(Mutex::new(aggregator))
}

/// Locks the shared state. A panic while counting leaves counts that are still consistent per
/// record; the lock does not poison.
pub fn lock(state: &Mutex<Aggregator>) -> MutexGuard<'_, Aggregator> {
    state.lock()
}

/// The rollup state. Owned by one worker task; readers take the lock briefly.
#[derive(Debug)]
pub struct Aggregator {
    pub(super) clock: Arc<Clock>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) max_age_nanos: u64,
    pub(super) max_skew_nanos: u64,
    /// The global cap, the limit per service and the series each service holds.
    pub(super) limits: SeriesLimits,
    pub(super) dimension_labels: Vec<String>,
    /// Latency thresholds of the `requests_le_*` columns, nanoseconds.
    pub(super) thresholds: Vec<u64>,
    /// Their column names.
    pub(super) threshold_columns: Vec<String>,
    pub(super) overflow: SeriesKey,
    pub(super) series: HashMap<SeriesKey, SeriesState>,
    /// Minutes before this one have been sealed.
    pub(super) sealed_before: u64,
    /// An empty histogram of the configured precision, the template of new dense minutes.
    pub(super) scratch: Histogram<u64>,
    /// Merge space for sealing blocks and hours.
    pub(super) merge: Counts,
    /// Series created since start-up; each series holds its number (`SeriesState::born`).
    pub(super) births: u64,
    /// The last WAL sequence number applied: a checkpoint of this state covers it.
    pub(super) wal_seq: u64,
    /// Rows not yet checkpointed of series forgotten at the cap.
    pub(super) evicted_unsaved: Vec<SeriesRows>,
    /// Whether stored rows are noted for checkpoints (only when something takes them).
    pub(super) journal: bool,
    /// Rows sealed before this minute are in the store (the last checkpoint's
    /// `sealed_before_minute`).
    pub(super) stored_before: u64,
    /// [`Aggregator::first_hour_held`] at the last roll: the next roll lets hours before it go.
    pub(super) hours_served_from: u64,
    /// Hours before this one have left memory.
    pub(super) hours_released_before: u64,
    /// Cumulative metric streams and the services that send spans.
    pub(super) metrics: MetricState,
    /// Components whose state the log and checkpoints keep with the counts.
    pub(super) participants: Participants,
    /// Each Kafka partition's position, `(topic, partition)` to the next offset: moved in the
    /// same step as the counts of the message before it.
    pub(super) positions: std::collections::BTreeMap<(String, i32), i64>,
}

pub(super) fn duration_nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Aggregator {
    /// The Kafka positions counted so far, by topic and partition.
    pub fn positions(&self) -> Vec<crate::batch::Position> {
        self.positions
            .iter()
            .map(|((topic, partition), offset)| crate::batch::Position {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect()
    }

    /// Puts back the Kafka positions a checkpoint holds.
    pub fn restore_positions(&mut self, positions: Vec<crate::batch::Position>) {
        self.positions = positions
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.offset))
            .collect();
    }

    /// An empty aggregator.
    pub fn new(
        ingest: &IngestConfig,
        config: &AggregatorConfig,
        clock: Arc<Clock>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        let scratch = histogram::new_histogram(config.significant_digits)?;
        let dimension_labels = ingest.dimension_labels();
        telemetry.set_series_limits(config.max_series, config.max_series_per_service);
        Ok(Self {
            clock,
            telemetry,
            max_age_nanos: duration_nanos(ingest.max_span_age),
            max_skew_nanos: duration_nanos(ingest.max_future_skew),
            limits: SeriesLimits::new(config, SeriesKey::overflow(dimension_labels.len())),
            overflow: SeriesKey::overflow(dimension_labels.len()),
            dimension_labels,
            thresholds: config.threshold_nanos(),
            threshold_columns: config.threshold_columns(),
            series: HashMap::new(),
            sealed_before: 0,
            scratch,
            merge: Counts::with_precision(config.significant_digits)?,
            births: 0,
            wal_seq: 0,
            evicted_unsaved: Vec::new(),
            journal: false,
            stored_before: 0,
            hours_served_from: 0,
            hours_released_before: 0,
            metrics: MetricState::from_config(&MetricsConfig::default()),
            participants: Participants::default(),
            positions: std::collections::BTreeMap::new(),
        })
    }

    /// Keeps `participants`' state with the counts: their events are applied here, in log
    /// order, and their state saved in every checkpoint image.
    #[must_use]
    pub fn with_participants(mut self, participants: Participants) -> Self {
        self.participants = participants;
        self
    }

    /// The checkpoint participants.
    pub fn participants(&self) -> &Participants {
        &self.participants
    }

    /// Applies a logged component event to its participant.
    pub fn apply_event(&mut self, event: &Event) -> Result<()> {
        self.participants.apply(event)
    }

    /// Sets the metric stream limits (`[metrics]`; defaults otherwise).
    #[must_use]
    pub fn with_metrics(mut self, config: &MetricsConfig) -> Self {
        self.metrics = MetricState::from_config(config);
        self
    }

    /// Notes rows as they are stored, for [`Aggregator::checkpoint_image`] to take. Off by
    /// default: without checkpoints the notes would keep every row alive.
    pub fn keep_journal(&mut self) {
        self.journal = true;
    }

    /// The last WAL sequence number applied.
    pub fn wal_seq(&self) -> u64 {
        self.wal_seq
    }

    /// Notes that the WAL frame `seq` has been applied.
    pub fn set_wal_seq(&mut self, seq: u64) {
        self.wal_seq = self.wal_seq.max(seq);
    }

    /// The process clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The ingest self-telemetry counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Label and column names of the extra dimensions, in key order.
    pub fn dimension_labels(&self) -> &[String] {
        &self.dimension_labels
    }

    /// Names of the `requests_le_*` columns, in configuration order.
    pub fn threshold_columns(&self) -> &[String] {
        &self.threshold_columns
    }

    /// Series currently held, the overflow series included.
    pub fn series_active(&self) -> usize {
        self.series.len()
    }

    /// Series counted against the cap: all but the overflow series.
    pub(super) fn regular_series(&self) -> usize {
        self.series.len() - usize::from(self.series.contains_key(&self.overflow))
    }
}
