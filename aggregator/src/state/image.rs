//! The checkpoint image: what a checkpoint takes under one hold of the lock, and the restore
//! that puts it back.

use super::aggregator::Aggregator;
use super::row::{
    Counted, MINUTES_KEPT, Row, RowCounts, Rows, Source, Table, block_of, merge_rows, push_row,
};
use super::series::{Sealing, SeriesRows, SeriesState, SeriesTotals};
use crate::clock::{MINUTE_NANOS, minute_of};
use crate::error::Result;
use crate::metrics::MetricStateImage;
use crate::record::SeriesKey;

/// One series' requests in one past hour, for [`Aggregator::seed_hours`].
#[derive(Debug, Clone)]
pub struct SeededHour {
    pub key: SeriesKey,
    /// The hour's first minute (minutes since the epoch).
    pub hour_minute: u64,
    /// Latencies in nanoseconds, each with its number of requests.
    pub latencies: Vec<(u64, u64)>,
    /// Requests that failed (at most the requests).
    pub errors: u64,
    pub recommendations: u64,
}

/// One live series in a checkpoint.
#[derive(Debug, Clone)]
pub struct SeriesImage {
    pub key: SeriesKey,
    pub source: Source,
    pub totals: SeriesTotals,
    /// The open minute and buffered late values, as minute rows: restored as rows received
    /// but not yet checkpointed.
    pub open: Vec<(u64, Row)>,
}

/// What a checkpoint takes from the state under one hold of the lock.
#[derive(Debug, Clone, Default)]
pub struct StateImage {
    /// The last WAL sequence number the image covers.
    pub wal_seq: u64,
    /// Minutes before this one are sealed.
    pub sealed_before: u64,
    /// Every live series.
    pub series: Vec<SeriesImage>,
    /// Minute and hour rows stored since the last checkpoint, of live and forgotten series.
    pub sealed: Vec<SeriesRows>,
    /// Cumulative metric streams and span-fed services, as of `wal_seq` like the rest.
    pub metrics: MetricStateImage,
    /// Each checkpoint participant's saved state, as of `wal_seq` like the rest.
    pub participants: Vec<(&'static str, serde_json::Value)>,
    /// The store sections the participants own, as of `wal_seq` like the rest.
    pub sections: Vec<crate::participant::OwnedSection>,
    /// The Kafka positions the counts cover.
    pub positions: Vec<crate::batch::Position>,
}

impl Aggregator {
    /// Seals what the clock has left behind, then takes a checkpoint's image: totals and open
    /// accumulators of every series, and the rows stored since the last image (which this
    /// takes; give them back with [`Aggregator::give_back`] if the checkpoint fails).
    pub fn checkpoint_image(&mut self) -> Result<StateImage> {
        self.roll(minute_of(self.clock.now_nanos()));
        let mut image = StateImage {
            wal_seq: self.wal_seq,
            sealed_before: self.sealed_before,
            series: Vec::with_capacity(self.series.len()),
            sealed: std::mem::take(&mut self.evicted_unsaved),
            metrics: self.metrics.image(),
            participants: Vec::new(),
            sections: Vec::new(),
            positions: self.positions(),
        };
        let saved = self
            .participants
            .iter()
            .map(|p| p.save().map(|state| (p.name(), state)))
            .collect::<Result<Vec<_>>>()
            .and_then(|saved| {
                image.participants = saved;
                image.sections = self
                    .participants
                    .iter()
                    .flat_map(|p| p.sections())
                    .collect();
                self.fill_image(&mut image)
            });
        if let Err(e) = saved {
            // Cannot happen for histograms recmeter encoded itself; keep the rows for the next.
            self.give_back(image.sealed);
            return Err(e);
        }
        Ok(image)
    }

    pub(super) fn fill_image(&mut self, image: &mut StateImage) -> Result<()> {
        for (key, state) in &mut self.series {
            let mut open = state.late_rows(&mut self.scratch, &self.thresholds, true)?;
            if let Some(o) = state.open.as_mut() {
                open.push((o.minute, o.row()?));
            }
            image.series.push(SeriesImage {
                key: key.clone(),
                source: state.source,
                totals: state.totals.clone(),
                open,
            });
            if !state.unsaved.is_empty() {
                image.sealed.push(SeriesRows {
                    key: key.clone(),
                    source: state.source,
                    rows: std::mem::take(&mut state.unsaved),
                });
            }
        }
        Ok(())
    }

    /// Returns rows a failed checkpoint took, so the next one writes them.
    pub fn give_back(&mut self, sealed: Vec<SeriesRows>) {
        for mut rows in sealed {
            match self.series.get_mut(&rows.key) {
                Some(state) => {
                    rows.rows.append(&mut state.unsaved);
                    state.unsaved = rows.rows;
                }
                None => self.evicted_unsaved.push(rows),
            }
        }
    }

    /// Stores hour rows made outside ingest (the demo's history, for hours long past
    /// `ingest.max_span_age`): each hour's latencies `(nanoseconds, requests)`, errors and
    /// recommendations become one hour row in the rollups' format. Memory keeps the ones of
    /// the hours it holds, and the next checkpoint writes them all to the store, like sealed
    /// rows. A series not held yet is added with no counters (its Prometheus counters count
    /// live requests only). Returns the rows made.
    pub fn seed_hours(&mut self, hours: Vec<SeededHour>) -> Result<usize> {
        let hours_from = self.first_hour_held(self.clock.now_nanos());
        let mut made = 0;
        for hour in hours {
            self.merge.clear();
            let mut counts = RowCounts::default();
            for &(nanos, n) in &hour.latencies {
                self.merge.record_n(nanos, n)?;
                counts.count(
                    nanos,
                    nanos,
                    n,
                    Counted {
                        error: false,
                        recommendations: 0,
                        thresholds: &self.thresholds,
                    },
                );
            }
            counts.errors = hour.errors.min(counts.requests);
            counts.recommendations = hour.recommendations;
            let row = Row {
                counts,
                hdr: bytes::Bytes::from(self.merge.encode()),
            };
            if !self.series.contains_key(&hour.key) {
                self.restore_series(hour.key.clone(), Source::Span, SeriesTotals::default());
            }
            let Some(state) = self.series.get_mut(&hour.key) else {
                continue;
            };
            let at = hour.hour_minute - hour.hour_minute % 60;
            if at >= hours_from {
                push_row(&mut state.hours, at, row.clone());
            }
            state.unsaved.push((Table::Hours, at, row));
            made += 1;
        }
        self.merge.clear();
        Ok(made)
    }

    /// Starts a restore into this empty aggregator: minutes before `sealed_before` were
    /// sealed when the checkpoint was taken, and the WAL is applied from after `wal_seq`.
    pub fn restore_begin(&mut self, sealed_before: u64, wal_seq: u64) {
        self.sealed_before = sealed_before;
        self.stored_before = sealed_before;
        self.wal_seq = wal_seq;
    }

    /// Restores the metric streams and span-fed services a checkpoint saved.
    pub fn restore_metrics(&mut self, image: MetricStateImage) {
        self.metrics.restore(image);
        self.telemetry
            .set_metric_streams_active(self.metrics.streams_active());
    }

    /// Restores one series' counters.
    pub fn restore_series(&mut self, key: SeriesKey, source: Source, totals: SeriesTotals) {
        if source == Source::Span {
            self.metrics.span_service(&key.service);
        }
        let state = SeriesState {
            born: self.births,
            source,
            totals,
            ..SeriesState::default()
        };
        self.births += 1;
        self.limits.note(&key, true);
        self.series.insert(key, state);
    }

    /// Restores a checkpointed minute or hour row of a restored series, when memory still
    /// holds its minute or hour; the rest stays in storage only.
    pub fn restore_row(&mut self, key: &SeriesKey, table: Table, at: u64, row: Row) {
        let keep_from = self.sealed_before.saturating_sub(MINUTES_KEPT - 1);
        let hours_from = self.first_hour_held(self.sealed_before * MINUTE_NANOS);
        let Some(state) = self.series.get_mut(key) else {
            return; // forgotten at the cap before the checkpoint
        };
        match table {
            Table::Minutes if at >= keep_from => push_row(&mut state.minutes, at, row),
            Table::Hours if at >= hours_from => push_row(&mut state.hours, at, row),
            _ => {}
        }
    }

    /// Rebuilds the blocks from the restored minutes (one row per block), then adds the
    /// checkpoint's open accumulators as rows received since it, which the next checkpoint
    /// stores.
    pub fn restore_finish(&mut self, open: Vec<(SeriesKey, u64, Row)>) -> Result<()> {
        for state in self.series.values_mut() {
            let mut blocks = Rows::new();
            for ((minute, _), row) in state.minutes.range(..(self.sealed_before, 0)) {
                let block = block_of(*minute);
                let merged = match blocks.get(&(block, 0)) {
                    None => row.clone(),
                    Some(so_far) => merge_rows(&mut self.merge, so_far, row)?,
                };
                blocks.insert((block, 0), merged);
            }
            state.blocks = blocks;
        }
        let mut seal = Sealing::new(
            &mut self.scratch,
            &mut self.merge,
            &self.thresholds,
            self.journal,
            self.sealed_before,
            self.sealed_before,
        );
        for (key, minute, row) in open {
            if let Some(state) = self.series.get_mut(&key) {
                state.add_minute_row(minute, row, &mut seal);
            }
        }
        Ok(())
    }

    /// Notes that a checkpoint stored every row sealed before `minute`.
    pub fn set_stored_before(&mut self, minute: u64) {
        self.stored_before = self.stored_before.max(minute);
    }
}
