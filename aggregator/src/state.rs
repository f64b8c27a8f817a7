//! In-memory rollups: per series, cumulative counters for the Prometheus counters and histogram,
//! and per-minute HDR histograms for the quantile windows. Only a minute that is still receiving
//! data holds a dense histogram: the open minute. Once the clock leaves it, it is sealed into
//! V2-encoded bytes. Spans for any other minute (late, or slightly ahead) are buffered per
//! series and sealed in bulk as extra parts (rows) of their minute; readers merge all parts.
//! Whole hours older than 3 h are folded into deflated hour partials, kept for a day.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::clock::{Clock, MINUTE_NANOS, minute_of};
use crate::config::{AggregatorConfig, IngestConfig};
use crate::error::{Error, Result};
use crate::histogram;
use crate::record::{ApplyOutcome, RequestRecord, SeriesKey};
use crate::telemetry::Telemetry;
use crate::window::Window;

/// Upper bounds of `recs_latency_seconds`, in nanoseconds (DESIGN).
pub const LATENCY_BUCKETS_NANOS: [u64; 12] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The quantiles exported for every window (DESIGN `q` label values).
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Minutes kept in memory (DESIGN: the last 3 h).
const MINUTES_KEPT: u64 = 180;

/// Whole-hour partials kept in memory: enough for the 1d window (a day plus the up to 59
/// extra minutes of the long-window rule). At the series cap with busy series an hour partial
/// takes about 1 KB, so this keeps the whole state under 1 GiB (BENCHMARKS.md); longer
/// windows wait for history in the object store.
const HOURS_KEPT: u64 = 26;

/// Late values buffered per series before they are sealed into extra parts.
const LATE_BUFFER: usize = 1024;

/// Cumulative counters of one series since start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesTotals {
    pub ok: u64,
    pub errors: u64,
    pub recommendations: u64,
    /// Requests per `recs_latency_seconds` bucket (not cumulative); the last entry is `+Inf`.
    /// Counted on the exact duration, before clamping.
    pub bucket_counts: [u64; LATENCY_BUCKETS_NANOS.len() + 1],
    /// Sum of exact durations, nanoseconds.
    pub sum_nanos: u128,
}

impl SeriesTotals {
    /// All requests, ok and error.
    pub fn requests(&self) -> u64 {
        self.ok + self.errors
    }
}

#[derive(Debug, Default)]
struct SeriesState {
    totals: SeriesTotals,
    /// The open minute and its dense histogram; the only dense histogram a series holds.
    open: Option<(u64, Box<Histogram<u64>>)>,
    /// Sealed minutes of the last 3 h (up to 59 more until their hour is complete): one or
    /// more V2 encodings back to back (the minute as sealed, plus one per flush of late data).
    /// Shared bytes, so a reader can take them out from under the lock by reference count.
    minutes: BTreeMap<u64, Bytes>,
    /// Whole-hour partials (keyed by the hour's first minute), deflated V2.
    hours: BTreeMap<u64, Bytes>,
    /// Clamped values for minutes other than the open one (late or slightly future data),
    /// sealed into extra parts in bulk, so stragglers never allocate dense histograms.
    late: Vec<(u64, u64)>,
}

impl SeriesState {
    /// Whether nothing from `keep_from` (3 h ago) on is held.
    fn is_idle(&self, keep_from: u64) -> bool {
        self.open.is_none()
            && self.late.is_empty()
            && self.minutes.range(keep_from..).next().is_none()
    }

    /// Records a clamped value ending in `minute`, the open minute.
    fn record_open(&mut self, minute: u64, value: u64, template: &Histogram<u64>) {
        match &mut self.open {
            Some((m, h)) if *m == minute => histogram::record(h, value),
            Some((m, h)) => {
                // The clock moved on without a roll (cannot happen: apply rolls first); seal
                // the old minute and reuse its allocation.
                seal_into(self.minutes.entry(*m).or_default(), h);
                h.reset();
                *m = minute;
                histogram::record(h, value);
            }
            None => {
                let mut h = Box::new(template.clone());
                h.reset();
                histogram::record(&mut h, value);
                self.open = Some((minute, h));
            }
        }
    }

    /// Seals buffered late values into one extra part per minute.
    fn flush_late(&mut self, scratch: &mut Histogram<u64>) {
        if self.late.is_empty() {
            return;
        }
        self.late.sort_unstable();
        let mut rest = self.late.as_slice();
        while let Some(&(minute, _)) = rest.first() {
            let n = rest.iter().take_while(|(m, _)| *m == minute).count();
            scratch.reset();
            for &(_, value) in &rest[..n] {
                histogram::record(scratch, value);
            }
            seal_into(self.minutes.entry(minute).or_default(), scratch);
            rest = &rest[n..];
        }
        self.late.clear();
        self.late.shrink_to(LATE_BUFFER / 8);
    }

    /// Seals the open minute if it is before `open_minute`, folds every complete hour that
    /// ended before `keep_from` into an hour partial, and forgets hours before `hours_from`.
    fn roll(
        &mut self,
        open_minute: u64,
        keep_from: u64,
        hours_from: u64,
        scratch: &mut Histogram<u64>,
    ) -> Result<()> {
        self.flush_late(scratch);
        if let Some((m, h)) = self.open.take_if(|(m, _)| *m < open_minute) {
            seal_into(self.minutes.entry(m).or_default(), &h);
        }
        let whole_hours_before = keep_from - keep_from % 60;
        let kept = self.minutes.split_off(&whole_hours_before);
        let retiring = std::mem::replace(&mut self.minutes, kept);
        let mut retiring = retiring.into_iter().peekable();
        while let Some(&(minute, _)) = retiring.peek() {
            let hour = minute - minute % 60;
            scratch.reset();
            if let Some(existing) = self.hours.get(&hour) {
                histogram::merge_encoded(scratch, existing)?;
            }
            while let Some((_, parts)) = retiring.next_if(|(m, _)| *m < hour + 60) {
                histogram::merge_encoded(scratch, &parts)?;
            }
            if !scratch.is_empty() {
                let bytes = histogram::encode_deflated(scratch)?;
                self.hours.insert(hour, Bytes::from(bytes));
            }
        }
        self.hours = self.hours.split_off(&hours_from);
        Ok(())
    }
}

/// Appends the V2 encoding of `h` to a minute's parts.
fn seal_into(parts: &mut Bytes, h: &Histogram<u64>) {
    let mut joined = parts.to_vec();
    if let Err(e) = histogram::encode_into(h, &mut joined) {
        // Cannot happen for histograms of our own bounds; say so loudly if it ever does.
        tracing::error!(error = %e, "Cannot seal a minute; its requests are lost from quantiles.");
    }
    joined.shrink_to_fit();
    *parts = Bytes::from(joined);
}

/// Quantiles of one series over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowQuantiles {
    pub window: Window,
    /// Requests in the window.
    pub count: u64,
    /// `(q, seconds)` for each of [`QUANTILES`].
    pub quantiles: [(f64, f64); 4],
}

/// One series as the exporter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    pub key: SeriesKey,
    pub totals: SeriesTotals,
    /// Windows with at least one request, shortest first.
    pub windows: Vec<WindowQuantiles>,
}

/// A consistent read of every series at one clock instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at_unix_nanos: u64,
    /// Label names of the extra dimensions, in key order.
    pub dimension_labels: Vec<String>,
    /// Series sorted by key.
    pub series: Vec<SeriesSnapshot>,
}

/// The rollup state. Owned by one worker task; readers take the lock briefly.
#[derive(Debug)]
pub struct Aggregator {
    clock: Arc<Clock>,
    telemetry: Arc<Telemetry>,
    max_age_nanos: u64,
    max_skew_nanos: u64,
    max_series: usize,
    dimension_labels: Vec<String>,
    overflow: SeriesKey,
    series: HashMap<SeriesKey, SeriesState>,
    /// Minutes before this one have been sealed.
    sealed_before: u64,
    /// An empty histogram of the configured precision, reused for merges and as the template
    /// of new dense minutes.
    scratch: Histogram<u64>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(
        ingest: &IngestConfig,
        config: &AggregatorConfig,
        clock: Arc<Clock>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        let scratch = histogram::new_histogram(config.significant_digits)?;
        let dimension_labels = ingest.dimension_labels();
        Ok(Self {
            clock,
            telemetry,
            max_age_nanos: duration_nanos(ingest.max_span_age),
            max_skew_nanos: duration_nanos(ingest.max_future_skew),
            max_series: config.max_series,
            overflow: SeriesKey::overflow(dimension_labels.len()),
            dimension_labels,
            series: HashMap::new(),
            sealed_before: 0,
            scratch,
        })
    }

    /// Series currently held, the overflow series included.
    pub fn series_active(&self) -> usize {
        self.series.len()
    }

    /// Series counted against the cap: all but the overflow series.
    fn regular_series(&self) -> usize {
        self.series.len() - usize::from(self.series.contains_key(&self.overflow))
    }

    /// Counts a batch of requests.
    pub fn apply(&mut self, records: &[RequestRecord]) -> ApplyOutcome {
        let now = self.clock.now_nanos();
        let open_minute = minute_of(now);
        self.roll(open_minute);
        let oldest = now.saturating_sub(self.max_age_nanos);
        let newest = now.saturating_add(self.max_skew_nanos);
        let mut outcome = ApplyOutcome::default();
        let mut overflowed = 0;
        for record in records {
            if record.end_unix_nanos < oldest {
                outcome.too_old += 1;
                continue;
            }
            if record.end_unix_nanos > newest {
                outcome.future += 1;
                continue;
            }
            let key = if self.series.contains_key(&record.key)
                || self.regular_series() < self.max_series
            {
                &record.key
            } else {
                overflowed += 1;
                &self.overflow
            };
            if !self.series.contains_key(key) {
                self.series.insert(key.clone(), SeriesState::default());
            }
            let Some(series) = self.series.get_mut(key) else {
                continue;
            };
            let (clamped, bound) = histogram::clamp(record.duration_nanos);
            if let Some(bound) = bound {
                self.telemetry.add_clamped(bound);
            }
            let totals = &mut series.totals;
            if record.error {
                totals.errors += 1;
            } else {
                totals.ok += 1;
            }
            totals.recommendations = totals
                .recommendations
                .saturating_add(record.recommendations);
            let bucket = LATENCY_BUCKETS_NANOS
                .iter()
                .position(|&le| record.duration_nanos <= le)
                .unwrap_or(LATENCY_BUCKETS_NANOS.len());
            totals.bucket_counts[bucket] += 1;
            totals.sum_nanos += u128::from(record.duration_nanos);
            outcome.accepted += 1;
            let minute = minute_of(record.end_unix_nanos);
            if minute != open_minute {
                series.late.push((minute, clamped));
                if series.late.len() >= LATE_BUFFER {
                    series.flush_late(&mut self.scratch);
                }
                continue;
            }
            series.record_open(minute, clamped, &self.scratch);
        }
        if overflowed > 0 {
            self.telemetry.add_series_overflow(overflowed);
        }
        outcome
    }

    /// Once per minute: seals the minutes before `open_minute`, folds whole hours older than
    /// 3 h into hour partials and forgets hours older than [`HOURS_KEPT`]. At the series cap, series
    /// with nothing from the last 3 h are forgotten too, so new series can take their place
    /// instead of folding into the overflow series for good. Below the cap idle series are
    /// kept: dropping a counter that returns later would hide its first increments from
    /// Prometheus `increase()`.
    fn roll(&mut self, open_minute: u64) {
        if open_minute <= self.sealed_before {
            return;
        }
        let keep_from = open_minute.saturating_sub(MINUTES_KEPT - 1);
        let hours_from = open_minute.saturating_sub(HOURS_KEPT * 60);
        let hours_from = hours_from - hours_from % 60;
        for series in self.series.values_mut() {
            if let Err(e) = series.roll(open_minute, keep_from, hours_from, &mut self.scratch) {
                tracing::error!(error = %e, "Cannot roll a series' minutes into hours.");
            }
        }
        if self.regular_series() >= self.max_series {
            let before = self.series.len();
            let overflow = &self.overflow;
            self.series
                .retain(|key, series| key == overflow || !series.is_idle(keep_from));
            let evicted = before - self.series.len();
            if evicted > 0 {
                tracing::info!(evicted, "Series cap reached: forgot series idle for 3 h.");
            }
        }
        self.sealed_before = open_minute;
    }

    /// Counters and window quantiles of every series at the clock's now.
    pub fn snapshot(&mut self, windows: &[Window]) -> Result<Snapshot> {
        self.capture(windows)?.compute()
    }

    /// Takes what a snapshot needs, cheaply: counters, the open minute encoded, and the
    /// sealed parts in the longest window by reference count. The merging happens in
    /// [`Capture::compute`], after the caller has let go of the lock, so a scrape of many
    /// series does not stall ingest.
    pub fn capture(&mut self, windows: &[Window]) -> Result<Capture> {
        let now = self.clock.now_nanos();
        let open_minute = minute_of(now);
        self.roll(open_minute);
        if let Some(w) = windows
            .iter()
            .find(|w| w.minute_range(now).count() as u64 > HOURS_KEPT * 60)
        {
            return Err(Error::WindowUnavailable(w.label()));
        }
        let mut windows: Vec<(Window, u64)> = windows
            .iter()
            .map(|w| (*w, *w.minute_range(now).start()))
            .collect();
        // Longer windows start earlier: shortest first, so `compute` can walk newest first.
        windows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let from = windows.last().map_or(open_minute + 1, |(_, start)| *start);
        let mut series = Vec::with_capacity(self.series.len());
        for (key, state) in &mut self.series {
            state.flush_late(&mut self.scratch);
            // Newest first. Hour partials only hold minutes no longer in `minutes`, so nothing
            // is taken twice.
            let mut parts = Vec::new();
            if let Some((m, h)) = state
                .open
                .as_ref()
                .filter(|(m, _)| (from..=open_minute).contains(m))
            {
                parts.push((*m, Bytes::from(histogram::encode(h)?)));
            }
            parts.extend(
                state
                    .minutes
                    .range(from..=open_minute)
                    .rev()
                    .map(|(m, b)| (*m, b.clone())),
            );
            parts.extend(
                state
                    .hours
                    .range(from..)
                    .rev()
                    .map(|(h, b)| (*h, b.clone())),
            );
            series.push((key.clone(), state.totals.clone(), parts));
        }
        Ok(Capture {
            at_unix_nanos: now,
            dimension_labels: self.dimension_labels.clone(),
            windows,
            template: self.scratch.clone(),
            series,
        })
    }
}

/// What [`Aggregator::capture`] took; [`Capture::compute`] turns it into a [`Snapshot`].
#[derive(Debug)]
pub struct Capture {
    at_unix_nanos: u64,
    dimension_labels: Vec<String>,
    /// (window, first minute), shortest window first.
    windows: Vec<(Window, u64)>,
    /// An empty histogram of the configured precision.
    template: Histogram<u64>,
    series: Vec<CapturedSeries>,
}

/// One series as captured: key, counters, and (start minute, encoded parts), newest first.
type CapturedSeries = (SeriesKey, SeriesTotals, Vec<(u64, Bytes)>);

impl Capture {
    /// Merges each series' parts, emitting each window as the walk passes its start.
    pub fn compute(self) -> Result<Snapshot> {
        let windows = &self.windows;
        let mut acc = self.template;
        let mut out = Vec::with_capacity(self.series.len());
        for (key, totals, parts) in self.series {
            acc.reset();
            let mut per_window = Vec::with_capacity(windows.len());
            let mut next = 0;
            for (start, bytes) in &parts {
                while next < windows.len() && *start < windows[next].1 {
                    push_window(&mut per_window, windows[next].0, &acc);
                    next += 1;
                }
                if next == windows.len() {
                    break;
                }
                histogram::merge_encoded(&mut acc, bytes)?;
            }
            while next < windows.len() {
                push_window(&mut per_window, windows[next].0, &acc);
                next += 1;
            }
            per_window.sort_by_key(|w| w.window);
            out.push(SeriesSnapshot {
                key,
                totals,
                windows: per_window,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Snapshot {
            at_unix_nanos: self.at_unix_nanos,
            dimension_labels: self.dimension_labels,
            series: out,
        })
    }
}

fn push_window(out: &mut Vec<WindowQuantiles>, window: Window, acc: &Histogram<u64>) {
    if acc.is_empty() {
        return;
    }
    let mut quantiles = [(0.0, 0.0); 4];
    for (slot, q) in quantiles.iter_mut().zip(QUANTILES) {
        *slot = (q, histogram::quantile_seconds(acc, q).unwrap_or(0.0));
    }
    out.push(WindowQuantiles {
        window,
        count: acc.len(),
        quantiles,
    });
}

fn duration_nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The first nanosecond of `minute`.
pub fn minute_start_nanos(minute: u64) -> u64 {
    minute * MINUTE_NANOS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OVERFLOW;
    use crate::telemetry::Telemetry;
    use std::time::{Duration, UNIX_EPOCH};

    const START_SECS: u64 = 1_800_000_000; // a minute boundary

    fn aggregator(max_series: usize) -> (Aggregator, Arc<Clock>, Arc<Telemetry>) {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
        let telemetry = Arc::new(Telemetry::default());
        let config = AggregatorConfig {
            max_series,
            ..AggregatorConfig::default()
        };
        let agg = Aggregator::new(
            &IngestConfig::default(),
            &config,
            clock.clone(),
            telemetry.clone(),
        )
        .unwrap();
        (agg, clock, telemetry)
    }

    fn key(service: &str, endpoint: &str) -> SeriesKey {
        SeriesKey {
            service: service.into(),
            endpoint: endpoint.into(),
            dimensions: Vec::new(),
        }
    }

    fn request(key: SeriesKey, end: u64, millis: u64) -> RequestRecord {
        RequestRecord {
            key,
            end_unix_nanos: end,
            duration_nanos: millis * 1_000_000,
            error: false,
            recommendations: 1,
        }
    }

    fn window(s: &SeriesSnapshot, w: Window) -> Option<&WindowQuantiles> {
        s.windows.iter().find(|x| x.window == w)
    }

    #[test]
    fn overflow_series_absorbs_requests_past_the_cap() {
        let (mut agg, clock, telemetry) = aggregator(2);
        let now = clock.now_nanos();
        let batch: Vec<_> = (0..5)
            .map(|i| request(key("svc", &format!("e{i}")), now, 10))
            .collect();
        let outcome = agg.apply(&batch);
        assert_eq!(outcome.accepted, 5);
        assert_eq!(
            agg.series_active(),
            3,
            "two series plus the overflow series"
        );
        assert_eq!(telemetry.series_overflow(), 3);
        // A series seen before the cap keeps counting as itself.
        agg.apply(&[request(key("svc", "e0"), now, 10)]);
        let snap = agg.snapshot(&[Window::M1]).unwrap();
        let e0 = snap
            .series
            .iter()
            .find(|s| &*s.key.endpoint == "e0")
            .unwrap();
        assert_eq!(e0.totals.ok, 2);
        let overflow = snap
            .series
            .iter()
            .find(|s| &*s.key.service == OVERFLOW)
            .unwrap();
        assert_eq!(&*overflow.key.endpoint, OVERFLOW);
        assert_eq!(overflow.totals.ok, 3);
    }

    #[test]
    fn at_the_cap_idle_series_make_room() {
        let (mut agg, clock, _) = aggregator(1);
        agg.apply(&[request(key("svc", "old"), clock.now_nanos(), 10)]);
        clock.advance(Duration::from_secs(3 * 3_600));
        let outcome = agg.apply(&[request(key("svc", "new"), clock.now_nanos(), 10)]);
        assert_eq!(outcome.accepted, 1);
        let snap = agg.snapshot(&[Window::M1]).unwrap();
        let names: Vec<_> = snap.series.iter().map(|s| &*s.key.endpoint).collect();
        assert_eq!(
            names,
            ["new"],
            "the idle series made room; nothing overflowed"
        );
    }

    #[test]
    fn old_minutes_fold_into_hour_partials_that_long_windows_read() {
        let (mut agg, clock, _) = aggregator(10);
        let k = key("svc", "get");
        let t0 = clock.now_nanos(); // an hour boundary
        // One request per minute for 5 hours, each 10 ms longer than the last.
        for i in 0..300u64 {
            agg.apply(&[request(k.clone(), clock.now_nanos(), 10 * (i + 1))]);
            clock.advance(Duration::from_secs(60));
        }
        let snap = agg
            .snapshot(&[Window::M5, Window::H1, Window::H2, Window::H6, Window::D1])
            .unwrap();
        assert!(matches!(
            agg.snapshot(&[Window::D3]),
            Err(Error::WindowUnavailable("3d"))
        ));
        let s = &snap.series[0];
        // Now: minute 300 (open, empty). 1h: minutes 241..=299; 2h: 181..=299.
        assert_eq!(window(s, Window::M5).unwrap().count, 4);
        assert_eq!(window(s, Window::H1).unwrap().count, 59);
        assert_eq!(window(s, Window::H2).unwrap().count, 119);
        // 6h reaches back past t0: every request, though hours 0 and 1 are partials now.
        let h6 = window(s, Window::H6).unwrap();
        assert_eq!(h6.count, 300);
        let p50 = h6.quantiles[0].1; // nearest rank 150 → 1.5 s
        assert!((p50 - 1.5).abs() / 1.5 < 0.01, "{p50}");
        let state = agg.series.values().next().unwrap();
        assert_eq!(
            state.hours.keys().copied().collect::<Vec<_>>(),
            [minute_of(t0), minute_of(t0) + 60]
        );
        assert!(state.minutes.keys().all(|m| *m >= minute_of(t0) + 120));
    }

    #[test]
    fn late_spans_are_buffered_not_dense() {
        let (mut agg, clock, _) = aggregator(10);
        let k = key("svc", "get");
        let now = clock.now_nanos();
        let late: Vec<_> = (1..=30u64)
            .map(|m| request(k.clone(), now - m * MINUTE_NANOS, m))
            .collect();
        agg.apply(&late);
        let state = agg.series.values().next().unwrap();
        assert!(state.open.is_none(), "no dense histogram for late minutes");
        assert_eq!(state.late.len(), 30);
        let snap = agg.snapshot(&[Window::H1]).unwrap();
        assert_eq!(window(&snap.series[0], Window::H1).unwrap().count, 30);
    }

    #[test]
    fn windows_include_the_open_minute_and_respect_boundaries() {
        let (mut agg, clock, _) = aggregator(10);
        let k = key("svc", "get");
        let t0 = clock.now_nanos();
        // Minute m-5 (outside 5m, inside 1h), m-4 (inside 5m), and the open minute m.
        agg.apply(&[
            request(k.clone(), t0 - 5 * MINUTE_NANOS, 1),
            request(k.clone(), t0 - 4 * MINUTE_NANOS, 2),
            request(k.clone(), t0, 3),
        ]);
        let snap = agg.snapshot(&[Window::M1, Window::M5, Window::H1]).unwrap();
        let s = &snap.series[0];
        assert_eq!(window(s, Window::M1).unwrap().count, 1);
        assert_eq!(window(s, Window::M5).unwrap().count, 2);
        assert_eq!(window(s, Window::H1).unwrap().count, 3);
        // One minute later the open minute is empty: the 1m window has no data.
        clock.advance(Duration::from_secs(60));
        let snap = agg.snapshot(&[Window::M1, Window::M5, Window::H1]).unwrap();
        let s = &snap.series[0];
        assert!(window(s, Window::M1).is_none());
        assert_eq!(window(s, Window::M5).unwrap().count, 1);
        assert_eq!(window(s, Window::H1).unwrap().count, 3);
    }

    #[test]
    fn late_data_for_a_sealed_minute_is_merged() {
        let (mut agg, clock, _) = aggregator(10);
        let k = key("svc", "get");
        let t0 = clock.now_nanos();
        agg.apply(&[request(k.clone(), t0, 100)]);
        clock.advance(Duration::from_secs(120));
        agg.apply(&[request(k.clone(), t0 + 1, 300)]); // minute t0 is sealed by now
        let snap = agg.snapshot(&[Window::M5]).unwrap();
        let w = window(&snap.series[0], Window::M5).unwrap();
        assert_eq!(w.count, 2);
        let p99 = w.quantiles[2].1;
        assert!((p99 - 0.3).abs() / 0.3 < 0.01, "{p99}");
    }

    #[test]
    fn too_old_and_future_spans_are_refused() {
        let (mut agg, clock, _) = aggregator(10);
        let k = key("svc", "get");
        let now = clock.now_nanos();
        let hour = 3_600 * 1_000_000_000;
        let outcome = agg.apply(&[
            request(k.clone(), now - hour, 1), // exactly at the age limit: kept
            request(k.clone(), now - hour - 1, 1), // too old
            request(k.clone(), now + 300 * 1_000_000_000, 1), // exactly at the skew limit: kept
            request(k.clone(), now + 300 * 1_000_000_000 + 1, 1), // future
        ]);
        assert_eq!(
            outcome,
            ApplyOutcome {
                accepted: 2,
                too_old: 1,
                future: 1
            }
        );
    }

    #[test]
    fn buckets_count_exact_durations_and_clamps_are_counted() {
        let (mut agg, clock, telemetry) = aggregator(10);
        let k = key("svc", "get");
        let now = clock.now_nanos();
        let mut r = request(k.clone(), now, 0);
        r.duration_nanos = 200_000_000; // exactly 0.2 s: in le="0.2"
        let mut tiny = r.clone();
        tiny.duration_nanos = 10;
        let mut huge = r.clone();
        huge.duration_nanos = 7_200 * 1_000_000_000;
        agg.apply(&[r, tiny, huge]);
        let snap = agg.snapshot(&[]).unwrap();
        let b = &snap.series[0].totals.bucket_counts;
        assert_eq!(b[0], 1, "10 ns is in le=0.005");
        assert_eq!(b[5], 1, "0.2 s is in le=0.2");
        assert_eq!(b[12], 1, "2 h is in +Inf");
        assert_eq!(telemetry.clamped(crate::histogram::ClampBound::Low), 1);
        assert_eq!(telemetry.clamped(crate::histogram::ClampBound::High), 1);
    }
}
