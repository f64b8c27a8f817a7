//! The read side: counters, snapshots and quantiles per window, the rows a scan visits, and
//! which minutes and hours memory holds.

use std::ops::{ControlFlow, RangeInclusive};

use super::aggregator::Aggregator;
use super::row::{MINUTES_KEPT, Row, RowVisitor, Table, block_of, hour_of};
use super::series::SeriesTotals;
use crate::clock::{MINUTE_NANOS, minute_of};
use crate::counts::Counts;
use crate::error::Result;
use crate::record::SeriesKey;
use crate::window::Window;

/// The quantiles exported for every window (DESIGN `q` label values).
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Counters of one series, as read for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesCounters {
    pub key: SeriesKey,
    pub totals: SeriesTotals,
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

impl WindowQuantiles {
    /// The quantiles of merged counts, or `None` when the window holds no request.
    pub fn from_counts(window: Window, counts: &Counts) -> Option<Self> {
        if counts.total() == 0 {
            return None;
        }
        let values = counts.quantiles_seconds(QUANTILES);
        let quantiles = std::array::from_fn(|i| (QUANTILES[i], values[i].unwrap_or(0.0)));
        Some(Self {
            window,
            count: counts.total(),
            quantiles,
        })
    }
}

/// One series as the exporter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    pub key: SeriesKey,
    pub totals: SeriesTotals,
    /// Windows with at least one request, shortest first.
    pub windows: Vec<WindowQuantiles>,
}

/// A read of every series at one clock instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at_unix_nanos: u64,
    /// Label names of the extra dimensions, in key order.
    pub dimension_labels: Vec<String>,
    /// Series sorted by key.
    pub series: Vec<SeriesSnapshot>,
}

impl Aggregator {
    /// The first minute (index since the epoch) that can still receive data at `now_nanos`:
    /// spans ending before `now − ingest.max_span_age` are refused, so rows of earlier minutes,
    /// and of hours that end before it, no longer change.
    pub fn first_open_minute(&self, now_nanos: u64) -> u64 {
        minute_of(now_nanos.saturating_sub(self.max_age_nanos))
    }

    /// The first minute whose minute rows memory holds at `now_nanos` (the last 3 h, open
    /// minute included); older minutes are read from the store, while its retention keeps them.
    pub fn first_minute_held(&self, now_nanos: u64) -> u64 {
        minute_of(now_nanos).saturating_sub(MINUTES_KEPT - 1)
    }

    /// The first hour (a minute index) of the hour rows read from memory at `now_nanos`; older
    /// ones are history, read from the store. With checkpoints (the journal kept), the hour
    /// before the 1d window's first: the 1d window is answered from memory, and its kept final
    /// hours can be moved on by the hour its start leaves behind (ADR 008); longer windows and
    /// SQL read older hours from the store (ADR 012). An hour whose rows a checkpoint may not
    /// have stored yet (checkpoints failing, or none yet) stays in memory until one has.
    /// Without a store, the 30d window's first hour: every window is answered from memory.
    pub fn first_hour_held(&self, now_nanos: u64) -> u64 {
        if self.journal {
            let day = hour_of(*Window::D1.minute_range(now_nanos).start()).saturating_sub(60);
            // Hours that can still get rows at the last checkpoint's minute are not all stored.
            // (A minute earlier: a batch checked just before a checkpoint's image can land after.)
            let first_open = self.first_open_minute(self.stored_before * MINUTE_NANOS);
            let stored = hour_of(first_open.saturating_sub(1));
            day.min(stored)
        } else {
            hour_of(*Window::D30.minute_range(now_nanos).start())
        }
    }

    /// Hours before this one have left memory: readers that split before it would miss them.
    pub fn hours_released_before(&self) -> u64 {
        self.hours_released_before
    }

    /// Series created since start-up.
    pub fn births(&self) -> u64 {
        self.births
    }

    /// Keys of the series created after the first `births` ones: new series, and series
    /// forgotten at the cap that came back (their old rows went when they were forgotten).
    pub fn born_since(&self, births: u64) -> Vec<SeriesKey> {
        self.series
            .iter()
            .filter(|(_, state)| state.born >= births)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Cumulative counters of every series, sorted by key.
    pub fn counters(&self) -> Vec<SeriesCounters> {
        let mut out: Vec<_> = self
            .series
            .iter()
            .map(|(key, state)| SeriesCounters {
                key: key.clone(),
                totals: state.totals.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Every series key, in no particular order.
    pub fn series_keys(&self) -> Vec<SeriesKey> {
        self.series.keys().cloned().collect()
    }

    /// Hands `visitor` the rows of `table` whose minute (or hour) start lies in `range` (minute
    /// indexes since the epoch), for the series of `keys` still held, in that order, after
    /// sealing whatever the clock has left behind. Stops after the series that brings the rows
    /// handed over to `row_budget` or more, and returns how many keys it went through, so a
    /// reader can take the series in chunks and keep each hold of the lock short. Rows are
    /// lent, not cloned: the visitor copies what it keeps. The open minute's encoding is kept
    /// until it changes; buffered late values are encoded on the fly and not stored, so
    /// reading often does not multiply a minute's rows.
    pub fn visit_rows(
        &mut self,
        table: Table,
        range: RangeInclusive<u64>,
        keys: &[SeriesKey],
        row_budget: usize,
        visitor: &mut dyn RowVisitor,
    ) -> Result<(usize, ControlFlow<()>)> {
        let open_minute = minute_of(self.clock.now_nanos());
        self.roll(open_minute);
        let current_hour = hour_of(open_minute);
        // Minute rows from here on are not in blocks yet (it is the open minute unless the clock
        // stepped back).
        let unsealed_from = self.sealed_before;
        // The last minute a blocks read takes rows of the open block from: the range's end, so
        // a read started after the clock passed it does not take the next minute's rows.
        let through = open_minute.min(*range.end());
        let wanted = |minute: u64| match table {
            Table::Minutes => range.contains(&minute),
            Table::Hours => range.contains(&hour_of(minute)),
            Table::Blocks => range.contains(&block_of(minute)) && minute <= through,
        };
        let wants_hdr = visitor.wants_hdr();
        let mut late = Vec::new();
        let mut rows = 0;
        for (done, key) in keys.iter().enumerate() {
            if rows >= row_budget {
                return Ok((done, ControlFlow::Continue(())));
            }
            let Some(state) = self.series.get_mut(key) else {
                continue;
            };
            late.clear();
            if !state.late.is_empty() {
                late = state.late_rows(&mut self.scratch, &self.thresholds, wants_hdr)?;
            }
            let open = match state.open.as_mut().filter(|o| wanted(o.minute)) {
                Some(o) if wants_hdr => Some((o.minute, o.row()?)),
                Some(o) => Some((o.minute, o.counts_row())),
                None => None,
            };
            let mut announced = false;
            let mut emit = |at: u64, row: &Row| -> ControlFlow<()> {
                if !announced {
                    announced = true;
                    visitor.series(key, state.source)?;
                }
                rows += 1;
                visitor.row(at, row)
            };
            let flow = match table {
                Table::Minutes => state
                    .minutes
                    .range((*range.start(), 0)..)
                    .take_while(|((m, _), _)| m <= range.end())
                    .map(|((m, _), row)| (*m, row))
                    .chain(open.iter().map(|(m, row)| (*m, row)))
                    .chain(late.iter().map(|(m, row)| (*m, row)))
                    .filter(|(m, _)| range.contains(m))
                    .try_for_each(|(m, row)| emit(m, row)),
                // Hours not sealed yet (the current one, and any a future-stamped span reached)
                // are the rows of their blocks, of the open minute and of minutes ahead of the
                // clock; late values of a sealed hour are extra rows of it, as they will be once
                // flushed.
                Table::Hours => state
                    .hours
                    .range((*range.start(), 0)..)
                    .take_while(|((h, _), _)| h <= range.end())
                    .map(|((h, _), row)| (*h, row))
                    .chain(
                        state
                            .blocks
                            .range((current_hour, 0)..)
                            .chain(state.minutes.range((unsealed_from, 0)..))
                            .map(|((m, _), row)| (*m, row))
                            .chain(open.iter().map(|(m, row)| (*m, row)))
                            .chain(late.iter().map(|(m, row)| (*m, row)))
                            .map(|(m, row)| (hour_of(m), row))
                            .filter(|(h, _)| range.contains(h)),
                    )
                    .try_for_each(|(h, row)| emit(h, row)),
                // Minutes ahead of the clock are left out, as minute-exact windows end with the
                // open minute; rows the open minute got while it was ahead are in.
                Table::Blocks => state
                    .blocks
                    .range((*range.start(), 0)..)
                    .take_while(|((b, _), _)| b <= range.end())
                    .chain(
                        state
                            .minutes
                            .range((unsealed_from.min(through + 1), 0)..(through + 1, 0)),
                    )
                    .map(|((m, _), row)| (*m, row))
                    .chain(open.iter().map(|(m, row)| (*m, row)))
                    .chain(
                        late.iter()
                            .filter(|(m, _)| *m <= through)
                            .map(|(m, row)| (*m, row)),
                    )
                    .map(|(m, row)| (block_of(m), row))
                    .filter(|(b, _)| range.contains(b))
                    .try_for_each(|(b, row)| emit(b, row)),
            };
            if flow.is_break() {
                return Ok((done + 1, flow));
            }
        }
        Ok((keys.len(), ControlFlow::Continue(())))
    }
}
