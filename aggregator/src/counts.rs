//! Dense HDR counts read straight from V2 encodings: the merge kernel behind `hdr_merge`,
//! `hdr_quantile` and every window. Decoding a V2 blob into one counts array skips building a
//! `Histogram` per blob, which is most of the cost of merging many small minutes (ADR 007).
//!
//! The index layout is HdrHistogram's for a lowest discernible value of 1 (DESIGN), so blobs
//! written by any HdrHistogram library with those bounds read back exactly.

use crate::error::{Error, Result};
use crate::histogram::HIGHEST_NANOS;

/// Cookie of an uncompressed V2 encoding.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
/// Cookie of a deflated V2 encoding.
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// Bytes before the counts in a V2 encoding.
const V2_HEADER: usize = 40;
/// Indexes added beyond the one needed when the counts grow.
const GROW_SLACK: usize = 32;

/// Where each value lands in the counts array, for lowest discernible value 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    significant_digits: u8,
    sub_bucket_half_count_magnitude: u32,
    sub_bucket_half_count: u64,
    sub_bucket_mask: u64,
    leading_zero_count_base: u32,
    /// Index of the highest trackable value (1 h).
    last_index: usize,
}

impl Layout {
    fn new(significant_digits: u8) -> Result<Self> {
        if !(1..=5).contains(&significant_digits) {
            return Err(Error::Histogram(format!(
                "HDR histogram with {significant_digits} significant digits; 1 to 5 are supported"
            )));
        }
        let largest = 2 * 10u64.pow(u32::from(significant_digits));
        // ceil(log2(largest)), as HdrHistogram computes it.
        let sub_bucket_count_magnitude = 64 - (largest - 1).leading_zeros();
        let sub_bucket_count = 1u64 << sub_bucket_count_magnitude;
        let mut layout = Self {
            significant_digits,
            sub_bucket_half_count_magnitude: sub_bucket_count_magnitude - 1,
            sub_bucket_half_count: sub_bucket_count / 2,
            sub_bucket_mask: sub_bucket_count - 1,
            leading_zero_count_base: 64 - sub_bucket_count_magnitude,
            last_index: 0,
        };
        layout.last_index = layout.index_for(HIGHEST_NANOS);
        Ok(layout)
    }

    fn bucket_for(&self, value: u64) -> u32 {
        self.leading_zero_count_base - (value | self.sub_bucket_mask).leading_zeros()
    }

    fn index_for(&self, value: u64) -> usize {
        let bucket = self.bucket_for(value);
        let sub_bucket = value >> bucket;
        (((u64::from(bucket) + 1) << self.sub_bucket_half_count_magnitude) + sub_bucket
            - self.sub_bucket_half_count) as usize
    }

    /// The lowest value counted at `index`.
    fn value_for(&self, index: usize) -> u64 {
        let index = index as u64;
        let bucket = (index >> self.sub_bucket_half_count_magnitude) as i64 - 1;
        let sub_bucket = (index & (self.sub_bucket_half_count - 1)) + self.sub_bucket_half_count;
        if bucket < 0 {
            sub_bucket - self.sub_bucket_half_count
        } else {
            sub_bucket << bucket
        }
    }

    /// The middle of the values counted at `index` (HdrHistogram's `median_equivalent`).
    fn median_for(&self, index: usize) -> u64 {
        let low = self.value_for(index);
        low + ((1u64 << self.bucket_for(low)) >> 1)
    }
}

/// A dense run of HDR counts, grown to cover the indexes seen so far. The precision is taken
/// from the first encoding added unless given up front.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    layout: Option<Layout>,
    /// Index of `counts[0]`.
    offset: usize,
    counts: Vec<u64>,
    total: u64,
    /// Scratch space for inflating deflated encodings.
    inflated: Vec<u8>,
}

impl Counts {
    /// Empty counts that take their precision from the first encoding added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty counts of the given precision.
    pub fn with_precision(significant_digits: u8) -> Result<Self> {
        Ok(Self {
            layout: Some(Layout::new(significant_digits)?),
            ..Self::default()
        })
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets every count, keeping the precision and the allocation.
    pub fn clear(&mut self) {
        self.counts.clear();
        self.offset = 0;
        self.total = 0;
    }

    /// Forgets every count and the precision, keeping the allocation.
    pub fn reset(&mut self) {
        self.clear();
        self.layout = None;
    }

    /// Bytes held, for memory accounting.
    pub fn heap_size(&self) -> usize {
        self.counts.capacity() * 8 + self.inflated.capacity()
    }

    /// Counts one value (already clamped to [1 µs, 1 h]) `n` times; the precision must be set.
    pub fn record_n(&mut self, value: u64, n: u64) -> Result<()> {
        let layout = self
            .layout
            .ok_or_else(|| Error::Histogram("counts without a precision".into()))?;
        let index = layout.index_for(value.clamp(1, HIGHEST_NANOS));
        self.add_at(index, n);
        Ok(())
    }

    fn layout_or(&mut self, significant_digits: u8) -> Result<Layout> {
        match self.layout {
            Some(l) => Ok(l),
            None => {
                let l = Layout::new(significant_digits)?;
                self.layout = Some(l);
                Ok(l)
            }
        }
    }

    fn add_at(&mut self, index: usize, n: u64) {
        if n == 0 {
            return;
        }
        let slot = self.slot(index);
        self.counts[slot] = self.counts[slot].saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// The position of `index` in `counts`, growing it to cover `index` if needed.
    #[inline]
    fn slot(&mut self, index: usize) -> usize {
        let rel = index.wrapping_sub(self.offset);
        if rel < self.counts.len() {
            rel
        } else {
            self.grow_to(index)
        }
    }

    /// Grows `counts` to cover `index`, with room to spare on the side it grew, so a histogram
    /// filled a few values at a time is reallocated a few times, not once per new index.
    #[cold]
    fn grow_to(&mut self, index: usize) -> usize {
        if self.counts.is_empty() {
            self.offset = index.saturating_sub(GROW_SLACK);
            self.counts.resize(index - self.offset + GROW_SLACK, 0);
        } else if index >= self.offset {
            let len = index - self.offset + 1;
            let spare = (len / 4).max(GROW_SLACK);
            self.counts.resize(len + spare, 0);
        } else {
            // Shifted up in place, so counts reused from row to row keep their allocation.
            let spare = (self.counts.len() / 4).max(GROW_SLACK);
            let offset = index.saturating_sub(spare);
            let (shift, len) = (self.offset - offset, self.counts.len());
            self.counts.resize(len + shift, 0);
            self.counts.copy_within(..len, shift);
            self.counts[..shift].fill(0);
            self.offset = offset;
        }
        index - self.offset
    }

    /// Adds everything counted in `other` (same precision).
    pub fn merge(&mut self, other: &Counts) -> Result<()> {
        if other.total == 0 {
            return Ok(());
        }
        match (self.layout, other.layout) {
            (Some(a), Some(b)) if a != b => {
                return Err(precision_mismatch(
                    a.significant_digits,
                    b.significant_digits,
                ));
            }
            (None, b) => self.layout = b,
            _ => {}
        }
        let (Some(first), Some(last)) = (
            other.counts.iter().position(|&c| c > 0),
            other.counts.iter().rposition(|&c| c > 0),
        ) else {
            return Ok(());
        };
        // Grown once to cover both ends, then added slice to slice.
        self.slot(other.offset + last);
        self.slot(other.offset + first);
        let at = other.offset + first - self.offset;
        let theirs = &other.counts[first..=last];
        for (mine, &c) in self.counts[at..at + theirs.len()].iter_mut().zip(theirs) {
            *mine = mine.saturating_add(c);
        }
        self.total = self.total.saturating_add(other.total);
        Ok(())
    }

    /// Takes away everything counted in `other` (same precision), which must have been added
    /// before. A count that would go below zero is an error, and leaves these counts unchanged.
    pub fn subtract(&mut self, other: &Counts) -> Result<()> {
        if other.total == 0 {
            return Ok(());
        }
        if let (Some(a), Some(b)) = (self.layout, other.layout)
            && a != b
        {
            return Err(precision_mismatch(
                a.significant_digits,
                b.significant_digits,
            ));
        }
        let below_zero = || Error::Histogram("subtracting counts that were never added".into());
        if self.total < other.total {
            return Err(below_zero());
        }
        let slots = |i: usize| (other.offset + i).wrapping_sub(self.offset);
        let fits = other
            .counts
            .iter()
            .enumerate()
            .all(|(i, &c)| c == 0 || self.counts.get(slots(i)).is_some_and(|&have| have >= c));
        if !fits {
            return Err(below_zero());
        }
        for (i, &c) in other.counts.iter().enumerate() {
            if c > 0 {
                let slot = slots(i);
                self.counts[slot] -= c;
            }
        }
        self.total -= other.total;
        Ok(())
    }

    /// Checks that `bytes` is a run of whole back-to-back V2 encodings, deflated or not, by
    /// their headers alone (the counts are checked when they are added).
    pub fn check_framing(mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let (header, len) = match read_u32(bytes, 0)? {
                V2_COOKIE => (V2_HEADER, read_u32(bytes, 4)?),
                V2_DEFLATE_COOKIE => (8, read_u32(bytes, 4)?),
                other => {
                    return Err(corrupt(&format!(
                        "not an HdrHistogram V2 encoding (cookie {other:#010x})"
                    )));
                }
            };
            let end = header
                .checked_add(len as usize)
                .filter(|end| *end <= bytes.len())
                .ok_or_else(|| corrupt("the encoding runs past the end"))?;
            bytes = &bytes[end..];
        }
        Ok(())
    }

    /// Adds every histogram of a run of back-to-back V2 encodings, deflated or not.
    pub fn add_encoded(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let cookie = read_u32(bytes, 0)?;
            match cookie {
                V2_COOKIE => {
                    let used = self.add_v2(bytes)?;
                    bytes = &bytes[used..];
                }
                V2_DEFLATE_COOKIE => {
                    let len = read_u32(bytes, 4)? as usize;
                    let end = 8usize
                        .checked_add(len)
                        .filter(|end| *end <= bytes.len())
                        .ok_or_else(|| corrupt("deflated payload runs past the end"))?;
                    let mut inflated = std::mem::take(&mut self.inflated);
                    inflated.clear();
                    // Inside is exactly one plain encoding: no deflate within deflate, so a
                    // hostile blob cannot recurse.
                    let result = inflate(&bytes[8..end], &mut inflated).and_then(|()| {
                        match read_u32(&inflated, 0)? {
                            V2_COOKIE => self.add_v2(&inflated).map(|_| ()),
                            _ => Err(corrupt(
                                "a deflated encoding must hold one plain V2 encoding",
                            )),
                        }
                    });
                    self.inflated = inflated;
                    result?;
                    bytes = &bytes[end..];
                }
                other => {
                    return Err(corrupt(&format!(
                        "not an HdrHistogram V2 encoding (cookie {other:#010x})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Adds one uncompressed V2 encoding at the start of `bytes`; returns its length.
    fn add_v2(&mut self, bytes: &[u8]) -> Result<usize> {
        if bytes.len() < V2_HEADER {
            return Err(corrupt("shorter than the V2 header"));
        }
        let payload = read_u32(bytes, 4)? as usize;
        let end = V2_HEADER
            .checked_add(payload)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| corrupt("counts run past the end"))?;
        if read_u32(bytes, 8)? != 0 {
            return Err(corrupt("normalizing index offsets are not supported"));
        }
        let digits = u8::try_from(read_u32(bytes, 12)?)
            .map_err(|_| corrupt("significant digits out of range"))?;
        let lowest = read_u64(bytes, 16)?;
        if lowest != 1 {
            return Err(Error::Histogram(format!(
                "HDR histogram with lowest discernible value {lowest}; recmeter's are 1 (nanoseconds)"
            )));
        }
        if read_u64(bytes, 32)? != 1f64.to_bits() {
            return Err(corrupt(
                "integer-to-double ratios other than 1 are not supported",
            ));
        }
        let layout = match self.layout {
            Some(l) if l.significant_digits != digits => {
                return Err(precision_mismatch(l.significant_digits, digits));
            }
            Some(l) => l,
            None => self.layout_or(digits)?,
        };
        let mut index = 0usize;
        let mut pos = V2_HEADER;
        let mut added = 0u64;
        // Counts added before an error stay counted in `total` too.
        let mut result = Ok(end);
        while pos < end {
            // Most entries (zero runs and counts under 64) are one byte.
            let zz = match bytes[pos] {
                b if b < 0x80 => {
                    pos += 1;
                    u64::from(b)
                }
                _ => match read_varint(&bytes[pos..end]) {
                    Ok((zz, used)) => {
                        pos += used;
                        zz
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            let n = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            if n < 0 {
                index = index.saturating_add(n.unsigned_abs() as usize);
                continue;
            }
            if n > 0 {
                if index > layout.last_index {
                    result = Err(corrupt("a count lies beyond 1 hour"));
                    break;
                }
                let n = n as u64;
                let slot = self.slot(index);
                self.counts[slot] = self.counts[slot].saturating_add(n);
                added = added.saturating_add(n);
            }
            index = index.saturating_add(1);
        }
        self.total = self.total.saturating_add(added);
        result
    }

    /// The V2 encoding (uncompressed) of these counts; any HdrHistogram library reads it. Sized
    /// exactly: sealed rows keep their encodings for hours.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = 0;
        self.for_each_entry(|v| payload += varint_len(v));
        let mut out = Vec::with_capacity(V2_HEADER + payload);
        self.encode_into(&mut out);
        debug_assert_eq!(out.len(), V2_HEADER + payload);
        out
    }

    /// Appends the V2 encoding of these counts to `out`, in one pass.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let digits = self.layout.map_or(2, |l| l.significant_digits);
        let start = out.len();
        out.extend_from_slice(&V2_COOKIE.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // payload length, set below
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&u32::from(digits).to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&HIGHEST_NANOS.to_be_bytes());
        out.extend_from_slice(&1f64.to_bits().to_be_bytes());
        self.for_each_entry(|v| write_varint(out, v));
        let payload = (out.len() - start - V2_HEADER) as u32;
        out[start + 4..start + 8].copy_from_slice(&payload.to_be_bytes());
    }

    /// The zig-zagged entries of the V2 encoding of the counts, in order: a count, or a run of
    /// zero counts (one 0, or the negated run length).
    fn for_each_entry(&self, mut f: impl FnMut(u64)) {
        let Some(last) = self.counts.iter().rposition(|&c| c > 0) else {
            f(0);
            return;
        };
        let mut zeros = self.offset as u64;
        for &c in &self.counts[..=last] {
            if c == 0 {
                zeros += 1;
                continue;
            }
            match zeros {
                0 => {}
                1 => f(0),
                z => f(zig_zag(-(z.min(i64::MAX as u64) as i64))),
            }
            zeros = 0;
            f(zig_zag(c.min(i64::MAX as u64) as i64));
        }
    }

    /// How many values lie at or under each of `bounds` (nanoseconds, ascending), and the sum of
    /// every value, each value taken as the middle of its HDR bucket: within the histogram's
    /// precision of the exact counts, and not exact for values close to a bound.
    pub fn cumulative_at(&self, bounds: &[u64]) -> (Vec<u64>, f64) {
        let mut below = vec![0u64; bounds.len()];
        let mut sum = 0.0;
        let Some(layout) = self.layout else {
            return (below, sum);
        };
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let value = layout.median_for(self.offset + i);
            sum += value as f64 * count as f64;
            let first = bounds.partition_point(|&b| b < value);
            for b in &mut below[first..] {
                *b = b.saturating_add(count);
            }
        }
        (below, sum)
    }

    /// The nearest-rank quantile `sorted[ceil(q·n) − 1]` in seconds, reported as the middle of
    /// its HDR bucket; `None` when nothing is counted.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        self.quantiles_seconds([q])[0]
    }

    /// [`Counts::quantile_seconds`] of each of `qs`, in one pass over the counts.
    pub fn quantiles_seconds<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let mut out = [None; N];
        let (Some(layout), n) = (self.layout, self.total) else {
            return out;
        };
        if n == 0 {
            return out;
        }
        // The epsilon keeps q·n that is an integer in exact arithmetic (0.99 × 100) from
        // rounding up to the next rank in floating point; relative, so it holds for large n.
        let rank = |q: f64| {
            let qn = q * n as f64;
            (qn - 1e-9f64.max(qn * 1e-12)).ceil().clamp(1.0, n as f64) as u64
        };
        let mut order: [(u64, usize); N] = std::array::from_fn(|i| (rank(qs[i]), i));
        order.sort_unstable();
        let mut next = order.iter().peekable();
        let mut seen = 0u64;
        // Whole chunks short of the next rank are summed and skipped: most of a window's
        // counts lie below its first quantile.
        const CHUNK: usize = 64;
        for (c, chunk) in self.counts.chunks(CHUNK).enumerate() {
            let Some(&&(rank, _)) = next.peek() else {
                break;
            };
            // Below a saturated total no sum of counts overflows, and a plain sum vectorizes.
            let sum = if self.total < u64::MAX {
                chunk.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            } else {
                chunk.iter().fold(0u64, |a, &b| a.saturating_add(b))
            };
            if seen.saturating_add(sum) < rank {
                seen = seen.saturating_add(sum);
                continue;
            }
            for (i, &count) in chunk.iter().enumerate() {
                seen = seen.saturating_add(count);
                while let Some((_, slot)) = next.next_if(|(rank, _)| seen >= *rank) {
                    let index = self.offset + c * CHUNK + i;
                    out[*slot] = Some(layout.median_for(index) as f64 / 1e9);
                }
            }
        }
        out
    }
}

/// Bytes `write_varint` takes for `v`.
fn varint_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).clamp(1, 9)
}

fn zig_zag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// LEB128-64b9B: seven bits per byte for eight bytes, then one whole byte.
fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8]) -> Result<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(9) {
        if i == 8 {
            return Ok((v | (u64::from(b) << 56), 9));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((v, i + 1));
        }
    }
    Err(corrupt("a count is cut short"))
}

/// Whether `bytes` is exactly one uncompressed V2 encoding: not deflated, nothing after it.
pub fn is_plain_v2(bytes: &[u8]) -> bool {
    read_u32(bytes, 0).is_ok_and(|cookie| cookie == V2_COOKIE)
        && read_u32(bytes, 4)
            .is_ok_and(|payload| V2_HEADER.checked_add(payload as usize) == Some(bytes.len()))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("cut short in the header"))
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("cut short in the header"))
}

fn inflate(compressed: &[u8], out: &mut Vec<u8>) -> Result<()> {
    use std::io::Read;
    // A deflated histogram of recmeter's bounds inflates to well under this.
    const LIMIT: u64 = 64 << 20;
    flate2::read::ZlibDecoder::new(compressed)
        .take(LIMIT)
        .read_to_end(out)
        .map_err(|e| corrupt(&format!("cannot inflate: {e}")))?;
    Ok(())
}

fn corrupt(what: &str) -> Error {
    Error::Histogram(format!("invalid HDR histogram: {what}"))
}

fn precision_mismatch(a: u8, b: u8) -> Error {
    Error::Histogram(format!(
        "cannot merge HDR histograms of {a} and {b} significant digits"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram;
    use hdrhistogram::Histogram;
    use rand::{Rng, SeedableRng};

    fn random_values(seed: u64, n: usize) -> Vec<u64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let exp: f64 = rng.random_range(3.0..12.5);
                histogram::clamp(10f64.powf(exp) as u64).0
            })
            .collect()
    }

    fn crate_histogram(values: &[u64], digits: u8) -> Histogram<u64> {
        let mut h = histogram::new_histogram(digits).unwrap();
        for &v in values {
            histogram::record(&mut h, v);
        }
        h
    }

    #[test]
    fn layout_matches_the_hdrhistogram_crate() {
        for digits in [2, 3] {
            let layout = Layout::new(digits).unwrap();
            let h = histogram::new_histogram(digits).unwrap();
            for v in random_values(u64::from(digits), 20_000).into_iter().chain([
                1,
                2,
                255,
                256,
                1_000,
                HIGHEST_NANOS,
            ]) {
                let i = layout.index_for(v);
                assert_eq!(layout.value_for(i), h.lowest_equivalent(v), "value {v}");
                assert_eq!(layout.median_for(i), h.median_equivalent(v), "value {v}");
            }
        }
    }

    #[test]
    fn quantiles_are_the_nearest_rank_bucket_of_the_raw_values() {
        let qs = [0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];
        for (seed, n) in [(1, 1), (2, 7), (3, 64), (4, 1_000), (5, 30_000)] {
            let mut values = random_values(seed, n);
            // Counts grown down as well as up.
            let mut counts = Counts::with_precision(3).unwrap();
            for &v in &values {
                counts.record_n(v, 1).unwrap();
            }
            values.sort_unstable();
            let layout = Layout::new(3).unwrap();
            for (q, got) in qs.into_iter().zip(counts.quantiles_seconds(qs)) {
                let rank = ((q * n as f64) - 1e-9).ceil().clamp(1.0, n as f64) as usize;
                let exact = values[rank - 1];
                let want = layout.median_for(layout.index_for(exact)) as f64 / 1e9;
                assert_eq!(got, Some(want), "n {n}, q {q}");
            }
        }
    }

    #[test]
    fn framing_takes_whole_encodings_only() {
        let mut h = histogram::new_histogram(2).unwrap();
        histogram::record(&mut h, 5_000_000);
        let plain = histogram::encode(&h).unwrap();
        let deflated = histogram::encode_deflated(&h).unwrap();
        let both = [plain.clone(), deflated.clone(), plain.clone()].concat();
        for ok in [&[][..], &plain, &deflated, &both] {
            assert!(Counts::check_framing(ok).is_ok());
        }
        let mut huge = plain.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut trailing = plain.clone();
        trailing.push(0);
        let bad = [
            plain[..1].to_vec(),
            plain[..7].to_vec(),
            plain[..plain.len() - 1].to_vec(),
            deflated[..deflated.len() - 1].to_vec(),
            [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0].to_vec(),
            huge,
            trailing,
        ];
        for (i, blob) in bad.iter().enumerate() {
            assert!(Counts::check_framing(blob).is_err(), "case {i}");
        }
    }

    #[test]
    fn decodes_crate_encodings_and_encodes_identically() {
        for digits in [2, 3] {
            let values = random_values(7, 5_000);
            let h = crate_histogram(&values, digits);
            let blob = histogram::encode(&h).unwrap();
            let mut counts = Counts::new();
            counts.add_encoded(&blob).unwrap();
            assert_eq!(counts.total(), values.len() as u64);
            let encoded = counts.encode();
            assert_eq!(encoded, blob, "re-encoding is byte-identical");
            assert_eq!(encoded.capacity(), encoded.len(), "sized exactly");
            for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    counts.quantile_seconds(q),
                    histogram::quantile_seconds(&h, q),
                    "q {q}"
                );
            }
            // Several at once, asked in any order, in one pass.
            let qs = [0.999, 0.5, 1.0, 0.0, 0.9, 0.5];
            for (q, got) in qs.iter().zip(counts.quantiles_seconds(qs)) {
                assert_eq!(got, histogram::quantile_seconds(&h, *q), "q {q}");
            }
            // Deflated, and several encodings back to back.
            let mut run = histogram::encode_deflated(&h).unwrap();
            run.extend(&blob);
            let mut twice = Counts::new();
            twice.add_encoded(&run).unwrap();
            assert_eq!(twice.total(), 2 * values.len() as u64);
        }
    }

    #[test]
    fn counts_of_every_varint_width_encode_exactly_sized() {
        // Counts of 1 to 9 varint bytes, at indexes with short and long zero runs between.
        let mut counts = Counts::with_precision(2).unwrap();
        let mut h = histogram::new_histogram(2).unwrap();
        for (i, shift) in (0..64).step_by(7).enumerate() {
            let n = (1u64 << shift).min(i64::MAX as u64 / 16);
            let value = 1_000 * (i as u64 * 37 + 1).pow(3);
            counts.record_n(value, n).unwrap();
            h.record_n(value, n).unwrap();
        }
        let encoded = counts.encode();
        assert_eq!(encoded.capacity(), encoded.len());
        assert_eq!(encoded, histogram::encode(&h).unwrap());
    }

    #[test]
    fn empty_counts_encode_like_an_empty_histogram() {
        let h = histogram::new_histogram(2).unwrap();
        let empty = Counts::with_precision(2).unwrap();
        assert_eq!(empty.encode(), histogram::encode(&h).unwrap());
        assert!(empty.quantile_seconds(0.5).is_none());
    }

    #[test]
    fn merges_in_any_order_and_grows_both_ways() {
        let mut a = Counts::with_precision(2).unwrap();
        a.record_n(5_000_000, 3).unwrap();
        let mut b = Counts::with_precision(2).unwrap();
        b.record_n(1_000, 1).unwrap();
        b.record_n(HIGHEST_NANOS, 1).unwrap();
        a.merge(&b).unwrap();
        let mut c = Counts::new();
        c.add_encoded(&a.encode()).unwrap();
        assert_eq!(c.total(), 5);
        let p100 = c.quantile_seconds(1.0).unwrap();
        assert!((p100 - 3_600.0).abs() / 3_600.0 < 0.0078, "{p100}");
        let p0 = c.quantile_seconds(0.0).unwrap();
        assert!((p0 - 1e-6).abs() / 1e-6 < 0.0078, "{p0}");
    }

    #[test]
    fn subtracting_undoes_a_merge_and_refuses_what_was_never_added() {
        let a = {
            let mut c = Counts::with_precision(2).unwrap();
            c.record_n(5_000_000, 3).unwrap();
            c.record_n(40_000_000, 2).unwrap();
            c
        };
        let mut b = Counts::with_precision(2).unwrap();
        b.record_n(1_000, 1).unwrap();
        b.record_n(5_000_000, 1).unwrap();
        let mut sum = a.clone();
        sum.merge(&b).unwrap();
        sum.subtract(&b).unwrap();
        assert_eq!(sum.total(), 5);
        assert_eq!(sum.encode(), a.encode());
        // More than was added, or a value never added: refused, nothing changed.
        for extra in [(5_000_000, 4), (7_000_000, 1), (HIGHEST_NANOS, 1)] {
            let mut c = Counts::with_precision(2).unwrap();
            c.record_n(extra.0, extra.1).unwrap();
            assert!(sum.subtract(&c).is_err(), "{extra:?}");
            assert_eq!(sum.encode(), a.encode());
        }
        let mut other = Counts::with_precision(3).unwrap();
        other.record_n(5_000_000, 1).unwrap();
        assert!(sum.subtract(&other).is_err());
    }

    #[test]
    fn hostile_encodings_are_errors_not_panics() {
        let blob = histogram::encode(&crate_histogram(&random_values(1, 100), 2)).unwrap();
        let mut counts = Counts::new();
        for cut in [0, 3, 10, 39, 41, blob.len() - 1] {
            assert!(
                counts.add_encoded(&blob[..cut]).is_err() || cut == 0,
                "cut {cut}"
            );
        }
        assert!(counts.add_encoded(b"not a histogram at all, no").is_err());
        let mut wrong_digits = blob.clone();
        wrong_digits[15] = 3;
        counts.add_encoded(&blob).unwrap();
        assert!(counts.add_encoded(&wrong_digits).is_err());
        let mut beyond = Counts::encode(&Counts::with_precision(2).unwrap());
        beyond.truncate(V2_HEADER);
        // A zero run to far past 1 h, then a count.
        write_varint(&mut beyond, zig_zag(-1_000_000));
        write_varint(&mut beyond, zig_zag(5));
        let payload = (beyond.len() - V2_HEADER) as u32;
        beyond[4..8].copy_from_slice(&payload.to_be_bytes());
        assert!(Counts::new().add_encoded(&beyond).is_err());
        // A deflated encoding inside a deflated one is refused, not recursed into.
        let inner = histogram::encode_deflated(&crate_histogram(&random_values(2, 10), 2)).unwrap();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &inner).unwrap();
        let z = z.finish().unwrap();
        let mut nested = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        nested.extend((z.len() as u32).to_be_bytes());
        nested.extend(z);
        assert!(Counts::new().add_encoded(&nested).is_err());
        // A zero run to the end of the index space, then more counts: an error, no overflow.
        let mut huge = Counts::encode(&Counts::with_precision(2).unwrap());
        huge.truncate(V2_HEADER);
        write_varint(&mut huge, zig_zag(i64::MIN + 1));
        write_varint(&mut huge, zig_zag(0));
        write_varint(&mut huge, zig_zag(3));
        let payload = (huge.len() - V2_HEADER) as u32;
        huge[4..8].copy_from_slice(&payload.to_be_bytes());
        assert!(Counts::new().add_encoded(&huge).is_err());
        let mut bomb = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        bomb.extend(u32::MAX.to_be_bytes());
        assert!(Counts::new().add_encoded(&bomb).is_err());
    }
}
