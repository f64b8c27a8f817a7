//! Ingest and the cap: counting request records and metric points into their series (new
//! series placed by the series limits), and the once-a-minute roll that seals, forgets and
//! evicts.

use super::aggregator::Aggregator;
use super::row::{LATENCY_BUCKETS_NANOS, MINUTES_KEPT, Source, hour_of};
use super::series::{LATE_BUFFER, LateValue, Sample, Sealing, SeriesRows, SeriesState};
use crate::batch::{Batch, Position};
use crate::clock::{MINUTE_NANOS, minute_of};
use crate::histogram;
use crate::limits::Place;
use crate::metrics::{Ignored, MetricPoint};
use crate::record::{ApplyOutcome, RequestRecord};

impl Aggregator {
    /// Counts a batch of requests, checking their age against the clock.
    pub fn apply(&mut self, records: &[RequestRecord]) -> ApplyOutcome {
        self.apply_checked(records, self.clock.now_nanos())
    }

    /// Counts a batch of requests whose age and skew are checked against `checked_at` (the
    /// clock when they were logged, so a WAL replay decides as the first apply did).
    pub fn apply_checked(&mut self, records: &[RequestRecord], checked_at: u64) -> ApplyOutcome {
        let open_minute = minute_of(self.clock.now_nanos());
        self.roll(open_minute);
        let mut outcome = ApplyOutcome::default();
        for record in records {
            if !self.in_time(record.end_unix_nanos, checked_at, &mut outcome) {
                continue;
            }
            outcome.accepted += 1;
            self.count_sample(
                &Sample {
                    key: &record.key,
                    end_unix_nanos: record.end_unix_nanos,
                    duration_nanos: record.duration_nanos,
                    count: 1,
                    error: record.error,
                    recommendations: record.recommendations,
                    source: Source::Span,
                },
                open_minute,
            );
        }
        self.limits.flush(&self.telemetry);
        outcome
    }

    /// Notes where a Kafka partition stands: every message before `position` is applied.
    pub fn note_position(&mut self, position: &Position) {
        self.positions.insert(
            (position.topic.clone(), position.partition),
            position.offset,
        );
    }

    /// Counts a request's records and metric points ([`Aggregator::apply_checked`],
    /// [`Aggregator::apply_points`]).
    pub fn apply_batch(&mut self, batch: &Batch, checked_at: u64) -> ApplyOutcome {
        if let Some(p) = &batch.position {
            self.note_position(p);
        }
        let mut outcome = self.apply_checked(&batch.records, checked_at);
        if !batch.points.is_empty() {
            let points = self.apply_points(&batch.points, checked_at);
            outcome.accepted += points.accepted;
            outcome.too_old += points.too_old;
            outcome.future += points.future;
            outcome.covered_by_spans += points.covered_by_spans;
            outcome.stream_limit += points.stream_limit;
        }
        outcome
    }

    /// Counts a batch of metric points (checked against `checked_at` as
    /// [`Aggregator::apply_checked`] checks spans): cumulative points become deltas against
    /// their stream, and a delta's buckets become requests with `source = "histogram"`.
    pub fn apply_points(&mut self, points: &[MetricPoint], checked_at: u64) -> ApplyOutcome {
        let now = self.clock.now_nanos();
        let open_minute = minute_of(now);
        self.roll(open_minute);
        let mut outcome = ApplyOutcome::default();
        for point in points {
            if !self.in_time(point.time_unix_nanos, checked_at, &mut outcome) {
                continue;
            }
            let delta = match self.metrics.delta(point, checked_at) {
                Ok(Some(delta)) => delta,
                Ok(None) => {
                    outcome.accepted += 1;
                    continue;
                }
                Err(Ignored::CoveredBySpans) => {
                    outcome.covered_by_spans += 1;
                    continue;
                }
                Err(Ignored::StreamLimit) => {
                    outcome.stream_limit += 1;
                    continue;
                }
            };
            outcome.accepted += 1;
            let mut sample = Sample {
                key: &point.key,
                end_unix_nanos: point.time_unix_nanos,
                duration_nanos: 0,
                count: 0,
                error: point.error,
                recommendations: delta.recommendations(),
                source: Source::Histogram,
            };
            if sample.recommendations > 0 {
                self.count_sample(&sample, open_minute);
            }
            sample.recommendations = 0;
            for (duration_nanos, count) in delta.requests(point.nanos_per_unit) {
                sample.duration_nanos = duration_nanos;
                sample.count = count;
                self.count_sample(&sample, open_minute);
            }
        }
        self.limits.flush(&self.telemetry);
        self.telemetry
            .set_metric_streams_active(self.metrics.streams_active());
        outcome
    }

    /// Whether something ending at `end` is within `ingest.max_span_age` before and
    /// `ingest.max_future_skew` after `checked_at`; counted in `outcome` if not.
    pub(super) fn in_time(&self, end: u64, checked_at: u64, outcome: &mut ApplyOutcome) -> bool {
        if end < checked_at.saturating_sub(self.max_age_nanos) {
            outcome.too_old += 1;
            false
        } else if end > checked_at.saturating_add(self.max_skew_nanos) {
            outcome.future += 1;
            false
        } else {
            true
        }
    }

    /// Counts one sample into its series, or the overflow series [`Aggregator::place`] picks
    /// for a new series past a limit (counted in `recmeter_series_overflow_total`).
    pub(super) fn count_sample(&mut self, sample: &Sample<'_>, open_minute: u64) {
        let spans = sample.source == Source::Span;
        let folded_key;
        let key = if self.series.contains_key(sample.key) {
            sample.key
        } else {
            let place = self.limits.place(sample.key, self.regular_series());
            let (key, at_limit) = match place {
                Place::Own => (sample.key, false),
                Place::ServiceOverflow { at_limit } => {
                    folded_key = self.limits.service_overflow(&sample.key.service);
                    (&folded_key, at_limit)
                }
                Place::Global { at_limit } => {
                    if spans {
                        self.metrics.span_service(&sample.key.service);
                    }
                    (&self.overflow, at_limit)
                }
            };
            if place != Place::Own && sample.count > 0 {
                self.limits.count_folded(
                    &sample.key.service,
                    at_limit,
                    sample.count,
                    &self.telemetry,
                );
            }
            key
        };
        if !self.series.contains_key(key) {
            // A service is marked as span-fed when one of its series is born of a span or
            // turns to spans, so the hot path does not look the service up per span.
            if spans {
                self.metrics.span_service(&key.service);
            }
            let state = SeriesState {
                born: self.births,
                source: sample.source,
                ..SeriesState::default()
            };
            self.births += 1;
            self.limits.note(key, true);
            self.series.insert(key.clone(), state);
        }
        let Some(series) = self.series.get_mut(key) else {
            return;
        };
        if spans && series.source != Source::Span {
            // A series first fed by histogram points is fed by spans from the first span on.
            series.source = Source::Span;
            self.metrics.span_service(&key.service);
        }
        let (clamped, bound) = histogram::clamp(sample.duration_nanos);
        if let Some(bound) = bound.filter(|_| sample.count > 0) {
            self.telemetry.add_clamped_n(bound, sample.count);
        }
        // Saturating: a histogram point may claim any count.
        let totals = &mut series.totals;
        if sample.error {
            totals.errors = totals.errors.saturating_add(sample.count);
        } else {
            totals.ok = totals.ok.saturating_add(sample.count);
        }
        totals.recommendations = totals
            .recommendations
            .saturating_add(sample.recommendations);
        let bucket = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|&le| sample.duration_nanos <= le)
            .unwrap_or(LATENCY_BUCKETS_NANOS.len());
        totals.bucket_counts[bucket] = totals.bucket_counts[bucket].saturating_add(sample.count);
        totals.sum_nanos = totals
            .sum_nanos
            .saturating_add(u128::from(sample.duration_nanos) * u128::from(sample.count));
        let minute = minute_of(sample.end_unix_nanos);
        let mut seal = Sealing::new(
            &mut self.scratch,
            &mut self.merge,
            &self.thresholds,
            self.journal,
            self.sealed_before,
            self.sealed_before,
        );
        if minute != open_minute {
            series.late.push(LateValue {
                minute,
                value: clamped,
                exact: sample.duration_nanos,
                count: sample.count,
                error: sample.error,
                recommendations: sample.recommendations,
            });
            if series.late.len() >= LATE_BUFFER {
                series.flush_late(&mut seal);
            }
            return;
        }
        series.record_open(
            minute,
            (clamped, sample.duration_nanos),
            sample.count,
            (sample.error, sample.recommendations),
            &mut seal,
        );
    }

    /// Once per minute: seals the minutes before `open_minute` and every hour that ended,
    /// forgets minutes older than 3 h and hours before the first one held. Where new series
    /// are refused (the slots open to any series are full, or among the endpoint series of a
    /// service at its limit), series with nothing from the last 3 h are forgotten too, so new
    /// series can take their place instead of folding into an overflow series for good.
    /// Elsewhere idle series are kept: dropping a counter that returns later would hide its
    /// first increments from Prometheus `increase()`.
    pub(super) fn roll(&mut self, open_minute: u64) {
        if open_minute <= self.sealed_before {
            return;
        }
        let keep_from = open_minute.saturating_sub(MINUTES_KEPT - 1);
        // Hours go only below where readers split before this roll, so a query planned since
        // the last roll (within `sql.timeout`, under a minute) finds every hour it reads from
        // memory, however far the split moves now (the clock, or a checkpoint after an outage).
        let hours_from = self.hours_served_from;
        self.hours_served_from = self.first_hour_held(open_minute * MINUTE_NANOS);
        self.hours_released_before = self.hours_released_before.max(hours_from);
        let new_hours = hour_of(self.sealed_before)..hour_of(open_minute);
        let mut seal = Sealing::new(
            &mut self.scratch,
            &mut self.merge,
            &self.thresholds,
            self.journal,
            self.sealed_before,
            open_minute,
        );
        for series in self.series.values_mut() {
            series.roll(
                self.sealed_before..open_minute,
                new_hours.clone(),
                keep_from,
                hours_from,
                &mut seal,
            );
        }
        // A service's endpoints that went out of use (an old route template) do not keep its
        // new ones folded for good.
        let open = self.limits.open(self.regular_series());
        if !open || self.limits.any_service_at_limit() {
            let overflow = &self.overflow;
            let limits = &self.limits;
            let evicted_unsaved = &mut self.evicted_unsaved;
            let mut evicted = Vec::new();
            self.series.retain(|key, series| {
                let keep =
                    key == overflow || !limits.crowded(key, open) || !series.is_idle(keep_from);
                if !keep {
                    if !series.unsaved.is_empty() {
                        evicted_unsaved.push(SeriesRows {
                            key: key.clone(),
                            source: series.source,
                            rows: std::mem::take(&mut series.unsaved),
                        });
                    }
                    evicted.push(key.clone());
                }
                keep
            });
            for key in &evicted {
                self.limits.note(key, false);
            }
            if !evicted.is_empty() {
                tracing::info!(
                    evicted = evicted.len(),
                    "Series limit reached: forgot series idle for 3 h."
                );
            }
        }
        self.sealed_before = open_minute;
    }
}
