//! One series: its cumulative counters, its open minute and buffered late values, and the
//! sealing of minutes into minute, block and hour rows.

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::row::{
    Counted, LATENCY_BUCKETS_NANOS, Row, RowCounts, Rows, Source, Table, block_of, hour_of,
    merge_rows, push_row,
};
use crate::counts::Counts;
use crate::error::Result;
use crate::histogram;
use crate::record::SeriesKey;

/// Late values buffered per series before they are sealed into extra rows.
pub(super) const LATE_BUFFER: usize = 1024;

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

/// The open minute: the only dense histogram a series holds.
#[derive(Debug)]
pub(super) struct OpenMinute {
    pub(super) minute: u64,
    pub(super) counts: RowCounts,
    pub(super) histogram: Box<Histogram<u64>>,
    /// The encoding of `histogram` as of the last read, until the next value arrives.
    pub(super) encoded: Option<Bytes>,
}

impl OpenMinute {
    pub(super) fn row(&mut self) -> Result<Row> {
        let hdr = match &self.encoded {
            Some(b) => b.clone(),
            None => {
                let b = Bytes::from(histogram::encode(&self.histogram)?);
                self.encoded = Some(b.clone());
                b
            }
        };
        Ok(Row {
            counts: self.counts,
            hdr,
        })
    }

    /// The row's counts, with its encoding only if kept (else an empty `hdr`).
    pub(super) fn counts_row(&self) -> Row {
        Row {
            counts: self.counts,
            hdr: self.encoded.clone().unwrap_or_default(),
        }
    }
}

/// One value to count: a span's request, a histogram bucket's requests, or (with no requests)
/// a sum's recommendations.
pub(super) struct Sample<'a> {
    pub(super) key: &'a SeriesKey,
    pub(super) end_unix_nanos: u64,
    pub(super) duration_nanos: u64,
    /// Requests of this duration.
    pub(super) count: u64,
    pub(super) error: bool,
    pub(super) recommendations: u64,
    pub(super) source: Source,
}

/// A value buffered for a minute other than the open one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct LateValue {
    pub(super) minute: u64,
    /// Clamped to the histogram's range.
    pub(super) value: u64,
    /// The exact duration, nanoseconds.
    pub(super) exact: u64,
    /// Requests of this value (1 for a span).
    pub(super) count: u64,
    pub(super) error: bool,
    pub(super) recommendations: u64,
}

impl LateValue {
    fn counted(self, thresholds: &[u64]) -> Counted<'_> {
        Counted {
            error: self.error,
            recommendations: self.recommendations,
            thresholds,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct SeriesState {
    pub(super) totals: SeriesTotals,
    pub(super) source: Source,
    pub(super) open: Option<OpenMinute>,
    /// Sealed minutes of the last 3 h.
    pub(super) minutes: Rows,
    /// The same rows merged by block: one row per block, merged as its minutes seal (the open
    /// block's row holds its sealed minutes so far), and an extra row for each row that reaches
    /// a block already sealed. Rows of minutes ahead of the clock join their block once sealed.
    pub(super) blocks: Rows,
    /// Sealed hours from [`Aggregator::hours_released_before`] on.
    pub(super) hours: Rows,
    /// Values for minutes other than the open one (late or slightly future data), sealed into
    /// extra rows in bulk, so stragglers never allocate dense histograms.
    pub(super) late: Vec<LateValue>,
    /// How many series were created before this one (`Aggregator::births`).
    pub(super) born: u64,
    /// Minute and hour rows stored since the last checkpoint took them (its "newly sealed
    /// rollups"); the rows' bytes are shared with `minutes` and `hours`.
    pub(super) unsaved: Vec<(Table, u64, Row)>,
}

/// What every series needs to know to seal rows.
pub(super) struct Sealing<'a> {
    pub(super) scratch: &'a mut Histogram<u64>,
    pub(super) merge: &'a mut Counts,
    pub(super) thresholds: &'a [u64],
    /// Hours starting before this minute are sealed.
    pub(super) hours_sealed_before: u64,
    /// Minutes before this one are sealed (the open minute, once a roll has sealed the rest).
    pub(super) sealed_before: u64,
    /// Blocks starting before this minute were sealed before the current roll: rows reaching
    /// them are extra rows.
    pub(super) blocks_open_from: u64,
    /// Whether stored rows are noted for checkpoints.
    pub(super) journal: bool,
}

impl<'a> Sealing<'a> {
    /// The sealing state after a roll up to `rolled_to`, of an aggregator whose minutes were
    /// sealed before `sealed_before` until that roll (the same minute outside a roll).
    pub(super) fn new(
        scratch: &'a mut Histogram<u64>,
        merge: &'a mut Counts,
        thresholds: &'a [u64],
        journal: bool,
        sealed_before: u64,
        rolled_to: u64,
    ) -> Self {
        Self {
            scratch,
            merge,
            thresholds,
            hours_sealed_before: hour_of(sealed_before),
            sealed_before: rolled_to,
            blocks_open_from: block_of(sealed_before),
            journal,
        }
    }
}

impl SeriesState {
    /// Whether nothing from `keep_from` (3 h ago) on is held.
    pub(super) fn is_idle(&self, keep_from: u64) -> bool {
        self.open.is_none()
            && self.late.is_empty()
            && self.minutes.range((keep_from, 0)..).next().is_none()
    }

    /// Records a value ending in the open minute `minute`: `value` clamped to the histogram's
    /// range, `exact` as it came.
    pub(super) fn record_open(
        &mut self,
        minute: u64,
        (value, exact): (u64, u64),
        count: u64,
        (error, recommendations): (bool, u64),
        seal: &mut Sealing<'_>,
    ) {
        if self.open.as_ref().is_some_and(|o| o.minute != minute) {
            // The clock moved on without a roll (cannot happen: apply rolls first).
            self.seal_open(seal);
        }
        let open = self.open.get_or_insert_with(|| {
            let mut h = Box::new(seal.scratch.clone());
            h.reset();
            OpenMinute {
                minute,
                counts: RowCounts::default(),
                histogram: h,
                encoded: None,
            }
        });
        histogram::record_n(&mut open.histogram, value, count);
        open.counts.count(
            value,
            exact,
            count,
            Counted {
                error,
                recommendations,
                thresholds: seal.thresholds,
            },
        );
        open.encoded = None;
    }

    /// Seals the open minute into a row.
    pub(super) fn seal_open(&mut self, seal: &mut Sealing<'_>) {
        if let Some(mut open) = self.open.take() {
            match open.row() {
                Ok(row) => self.add_minute_row(open.minute, row, seal),
                Err(e) => {
                    tracing::error!(error = %e, "Cannot seal a minute; its requests are lost from quantiles.")
                }
            }
        }
    }

    /// Stores a minute or hour row, and notes it for the next checkpoint.
    pub(super) fn store(&mut self, table: Table, at: u64, row: Row, journal: bool) {
        if journal {
            self.unsaved.push((table, at, row.clone()));
        }
        let rows = match table {
            Table::Hours => &mut self.hours,
            Table::Minutes | Table::Blocks => &mut self.minutes,
        };
        push_row(rows, at, row);
    }

    /// Adds a sealed row to its minute, to its block unless the minute is still ahead of the
    /// clock, and to its hour if that hour is sealed already.
    pub(super) fn add_minute_row(&mut self, minute: u64, row: Row, seal: &mut Sealing<'_>) {
        if minute < seal.hours_sealed_before {
            self.store(Table::Hours, hour_of(minute), row.clone(), seal.journal);
        }
        if minute < seal.sealed_before {
            self.add_to_block(minute, &row, seal);
        }
        self.store(Table::Minutes, minute, row, seal.journal);
    }

    /// Adds the row of a sealed minute to its block: merged into the block's row while the block
    /// is open (or sealing in this roll), else an extra row of it.
    pub(super) fn add_to_block(&mut self, minute: u64, row: &Row, seal: &mut Sealing<'_>) {
        let block = block_of(minute);
        if block < seal.blocks_open_from {
            push_row(&mut self.blocks, block, row.clone());
            return;
        }
        match self.blocks.get_mut(&(block, 0)) {
            None => {
                self.blocks.insert((block, 0), row.clone());
            }
            Some(so_far) => match merge_rows(seal.merge, so_far, row) {
                Ok(merged) => *so_far = merged,
                // Cannot happen for rows recmeter encoded itself; the minute rows keep it.
                Err(e) => {
                    tracing::error!(error = %e, minute, "Cannot merge a minute into its block row.")
                }
            },
        }
    }

    /// Seals buffered late values into one extra row per minute.
    pub(super) fn flush_late(&mut self, seal: &mut Sealing<'_>) {
        if self.late.is_empty() {
            return;
        }
        let mut late = std::mem::take(&mut self.late);
        late.sort_unstable();
        for group in late.chunk_by(|a, b| a.minute == b.minute) {
            seal.scratch.reset();
            let mut counts = RowCounts::default();
            for v in group {
                histogram::record_n(seal.scratch, v.value, v.count);
                counts.count(v.value, v.exact, v.count, v.counted(seal.thresholds));
            }
            match histogram::encode(seal.scratch) {
                Ok(hdr) => {
                    let row = Row {
                        counts,
                        hdr: Bytes::from(hdr),
                    };
                    self.add_minute_row(group[0].minute, row, seal);
                }
                Err(e) => {
                    tracing::error!(error = %e, "Cannot seal late data; its requests are lost from quantiles.")
                }
            }
        }
        late.clear();
        late.shrink_to(LATE_BUFFER / 8);
        self.late = late;
    }

    /// Seals the minutes in `newly_sealed` (through the open minute if it is among them) into
    /// their blocks, seals the hours starting in `new_hours` from their blocks, and forgets
    /// minutes and blocks before `keep_from` and hours before `hours_from`.
    pub(super) fn roll(
        &mut self,
        newly_sealed: std::ops::Range<u64>,
        new_hours: std::ops::Range<u64>,
        keep_from: u64,
        hours_from: u64,
        seal: &mut Sealing<'_>,
    ) {
        // Rows of minutes that were ahead of the clock when they came join their blocks now.
        let ahead: Vec<(u64, Row)> = self
            .minutes
            .range((newly_sealed.start, 0)..(newly_sealed.end, 0))
            .map(|((m, _), row)| (*m, row.clone()))
            .collect();
        for (minute, row) in &ahead {
            self.add_to_block(*minute, row, seal);
        }
        self.flush_late(seal);
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.minute < newly_sealed.end)
        {
            self.seal_open(seal);
        }
        if !new_hours.is_empty() {
            let mut rows = self
                .blocks
                .range((new_hours.start, 0)..(new_hours.end, 0))
                .peekable();
            let mut sealed = Vec::new();
            while let Some(((minute, _), _)) = rows.peek() {
                let hour = hour_of(*minute);
                seal.merge.clear();
                let mut counts = RowCounts::default();
                let mut failed = None;
                while let Some((_, row)) = rows.next_if(|((m, _), _)| *m < hour + 60) {
                    if let Err(e) = seal.merge.add_encoded(&row.hdr) {
                        failed = Some(e);
                    }
                    counts.add(&row.counts);
                }
                if let Some(e) = failed {
                    // Cannot happen for rows recmeter encoded itself; keep the rest of the hour.
                    tracing::error!(error = %e, hour, "Cannot merge a block into its hour row.");
                }
                sealed.push((
                    hour,
                    Row {
                        counts,
                        hdr: Bytes::from(seal.merge.encode()),
                    },
                ));
            }
            for (hour, row) in sealed {
                self.store(Table::Hours, hour, row, seal.journal);
            }
        }
        self.minutes = self.minutes.split_off(&(keep_from, 0));
        self.blocks = self.blocks.split_off(&(block_of(keep_from), 0));
        self.hours = self.hours.split_off(&(hours_from, 0));
    }

    /// The buffered late values as rows (one per minute), for readers: encoded on the fly and
    /// not stored, so reading often does not multiply a minute's rows.
    pub(super) fn late_rows(
        &self,
        scratch: &mut Histogram<u64>,
        thresholds: &[u64],
        hdr: bool,
    ) -> Result<Vec<(u64, Row)>> {
        let mut late = self.late.clone();
        late.sort_unstable();
        let mut out = Vec::new();
        for group in late.chunk_by(|a, b| a.minute == b.minute) {
            scratch.reset();
            let mut counts = RowCounts::default();
            for v in group {
                histogram::record_n(scratch, v.value, v.count);
                counts.count(v.value, v.exact, v.count, v.counted(thresholds));
            }
            let hdr = if hdr {
                Bytes::from(histogram::encode(scratch)?)
            } else {
                Bytes::new()
            };
            out.push((group[0].minute, Row { counts, hdr }));
        }
        Ok(out)
    }
}

/// Rows of one series, as a checkpoint writes them.
#[derive(Debug, Clone)]
pub struct SeriesRows {
    pub key: SeriesKey,
    pub source: Source,
    /// `(table, first minute of the minute or hour, row)`; the table is `Minutes` or `Hours`.
    pub rows: Vec<(Table, u64, Row)>,
}
