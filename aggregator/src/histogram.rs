//! HDR latency histograms with the DESIGN bounds: nanoseconds from 1 ns to 1 h, values clamped
//! to [1 µs, 1 h] and counted, so the bucket error (≤ 0.78% at 2 significant digits) holds on
//! that whole range. Sealed minutes are stored V2-encoded.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::error::{Error, Result};

/// Highest value tracked: one hour in nanoseconds.
pub const HIGHEST_NANOS: u64 = 3_600 * 1_000_000_000;
/// Values below this (1 µs) are raised to it and counted as clamped.
pub const CLAMP_LOW_NANOS: u64 = 1_000;

pub use recmeter_core::telemetry::ClampBound;

/// Clamps a duration to [1 µs, 1 h], saying which bound applied.
pub fn clamp(nanos: u64) -> (u64, Option<ClampBound>) {
    if nanos < CLAMP_LOW_NANOS {
        (CLAMP_LOW_NANOS, Some(ClampBound::Low))
    } else if nanos > HIGHEST_NANOS {
        (HIGHEST_NANOS, Some(ClampBound::High))
    } else {
        (nanos, None)
    }
}

/// A new empty histogram with the DESIGN bounds.
pub fn new_histogram(significant_digits: u8) -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_NANOS, significant_digits)
        .map_err(|e| Error::Histogram(format!("cannot create histogram: {e:?}")))
}

/// Records one already-clamped value.
pub fn record(h: &mut Histogram<u64>, nanos: u64) {
    record_n(h, nanos, 1);
}

/// Most a bucket may count: the V2 encoding holds counts as signed 64-bit integers, so a
/// bucket past this could never be encoded again (and with it the minute, the checkpoint and
/// every query over it).
pub const MAX_BUCKET_COUNT: u64 = i64::MAX as u64;

/// Records an already-clamped value `n` times (a histogram point's bucket), saturating the
/// bucket at [`MAX_BUCKET_COUNT`].
pub fn record_n(h: &mut Histogram<u64>, nanos: u64, n: u64) {
    // A bucket holds at most the total: while the total stays below the cap, so does it.
    let n = if h.len().saturating_add(n) > MAX_BUCKET_COUNT {
        n.min(MAX_BUCKET_COUNT.saturating_sub(h.count_at(nanos)))
    } else {
        n
    };
    // The value is within the bounds the histogram was created with, so this cannot fail;
    // saturating keeps it total if it ever did.
    if n > 0 {
        h.saturating_record_n(nanos, n);
    }
}

/// V2-encodes a histogram (the compact, sparse form sealed minutes are kept in).
pub fn encode(h: &Histogram<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(h, &mut out)?;
    Ok(out)
}

/// Appends the V2 encoding of a histogram to `out`.
pub fn encode_into(h: &Histogram<u64>, out: &mut Vec<u8>) -> Result<()> {
    V2Serializer::new()
        .serialize(h, out)
        .map_err(|e| Error::Histogram(format!("cannot encode histogram: {e:?}")))?;
    Ok(())
}

/// Adds every histogram of a run of back-to-back V2 encodings (deflated or not) into `acc`.
pub fn merge_encoded(acc: &mut Histogram<u64>, mut bytes: &[u8]) -> Result<()> {
    let mut deserializer = Deserializer::new();
    while !bytes.is_empty() {
        let h: Histogram<u64> = deserializer
            .deserialize(&mut bytes)
            .map_err(|e| Error::Histogram(format!("cannot decode histogram: {e:?}")))?;
        merge(acc, &h)?;
    }
    Ok(())
}

/// V2-encodes and deflates a histogram (hour partials: kept long, read rarely).
pub fn encode_deflated(h: &Histogram<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    hdrhistogram::serialization::V2DeflateSerializer::new()
        .serialize(h, &mut out)
        .map_err(|e| Error::Histogram(format!("cannot encode histogram: {e:?}")))?;
    Ok(out)
}

/// Decodes a V2-encoded histogram, deflated or not.
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>> {
    let mut reader = bytes;
    Deserializer::new()
        .deserialize(&mut reader)
        .map_err(|e| Error::Histogram(format!("cannot decode histogram: {e:?}")))
}

/// Adds `other` into `acc`, each bucket saturating at [`MAX_BUCKET_COUNT`].
pub fn merge(acc: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<()> {
    // A bucket holds at most its histogram's total: below half the cap each, no sum can pass it.
    if acc.len() > MAX_BUCKET_COUNT / 2 || other.len() > MAX_BUCKET_COUNT / 2 {
        for v in other.iter_recorded() {
            record_n(acc, v.value_iterated_to(), v.count_at_value());
        }
        return Ok(());
    }
    acc.add(other)
        .map_err(|e| Error::Histogram(format!("cannot merge histograms: {e:?}")))
}

/// The nearest-rank quantile `sorted[ceil(q·n) − 1]`, in seconds, reported as the midpoint of
/// its HDR bucket (half the bucket width of error either way), or `None` for an empty histogram.
pub fn quantile_seconds(h: &Histogram<u64>, q: f64) -> Option<f64> {
    let n = h.len();
    if n == 0 {
        return None;
    }
    // The small epsilon keeps q·n that is an integer in exact arithmetic (0.99 × 100) from
    // rounding up to the next rank in floating point.
    let rank = ((q * n as f64) - 1e-9).ceil().clamp(1.0, n as f64) as u64;
    let mut seen = 0u64;
    for v in h.iter_recorded() {
        seen += v.count_at_value();
        if seen >= rank {
            return Some(h.median_equivalent(v.value_iterated_to()) as f64 / 1e9);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_bounds() {
        assert_eq!(clamp(0), (CLAMP_LOW_NANOS, Some(ClampBound::Low)));
        assert_eq!(clamp(999), (CLAMP_LOW_NANOS, Some(ClampBound::Low)));
        assert_eq!(clamp(1_000), (1_000, None));
        assert_eq!(clamp(HIGHEST_NANOS), (HIGHEST_NANOS, None));
        assert_eq!(
            clamp(HIGHEST_NANOS + 1),
            (HIGHEST_NANOS, Some(ClampBound::High))
        );
        assert_eq!(clamp(u64::MAX), (HIGHEST_NANOS, Some(ClampBound::High)));
    }

    #[test]
    fn bucket_error_holds_at_both_clamp_bounds() {
        let mut h = new_histogram(2).unwrap();
        for v in [CLAMP_LOW_NANOS, HIGHEST_NANOS] {
            h.reset();
            record(&mut h, v);
            let got = quantile_seconds(&h, 0.5).unwrap() * 1e9;
            let rel = (got - v as f64).abs() / v as f64;
            assert!(rel <= 0.0078, "value {v}: reported {got}, error {rel}");
        }
    }

    #[test]
    fn nearest_rank_on_exact_integers() {
        let mut h = new_histogram(3).unwrap();
        // 100 values 1..=100 ms: nearest-rank P99 is the 99th value, P50 the 50th.
        for i in 1..=100u64 {
            record(&mut h, i * 1_000_000);
        }
        let p99 = quantile_seconds(&h, 0.99).unwrap();
        assert!((p99 - 0.099).abs() / 0.099 < 0.001, "{p99}");
        let p50 = quantile_seconds(&h, 0.5).unwrap();
        assert!((p50 - 0.050).abs() / 0.050 < 0.001, "{p50}");
        assert!(quantile_seconds(&new_histogram(2).unwrap(), 0.5).is_none());
    }

    #[test]
    fn encode_decode_merge_round_trip() {
        let mut a = new_histogram(2).unwrap();
        let mut b = new_histogram(2).unwrap();
        record(&mut a, 5_000_000);
        record(&mut b, 7_000_000);
        let mut merged = decode(&encode(&a).unwrap()).unwrap();
        merge(&mut merged, &decode(&encode(&b).unwrap()).unwrap()).unwrap();
        assert_eq!(merged.len(), 2);
        assert!(decode(b"not a histogram").is_err());
        // Back-to-back encodings, one of them deflated, merge as one.
        let mut run = encode(&a).unwrap();
        run.extend(encode_deflated(&b).unwrap());
        encode_into(&a, &mut run).unwrap();
        let mut acc = new_histogram(2).unwrap();
        merge_encoded(&mut acc, &run).unwrap();
        assert_eq!(acc.len(), 3);
    }
}
