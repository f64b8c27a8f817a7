//! OTLP metric points as the collector hands them to the aggregator: latency histograms
//! (explicit or exponential buckets) and recommendation sums, cumulative or delta, and the
//! arithmetic on their values (the part of a cumulative value that is new, the requests a
//! histogram's buckets hold).

use serde::{Deserialize, Serialize};

use crate::record::SeriesKey;

/// Contiguous bucket counts of one side of an exponential histogram: bucket `offset + i` holds
/// `counts[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dense {
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// A stream identity: a 128-bit SipHash-1-3 of the resource, scope, metric name and point
/// attributes (see the collector), so its size does not depend on what the sender puts there.
pub type StreamId = u128;

/// f64 values stored by their bits, so a checkpoint gives back exactly what was saved (JSON
/// text can come back one unit in the last place off, which would read as other bounds).
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        v.to_bits().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }

    pub mod vec {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
            v.iter()
                .map(|f| f.to_bits())
                .collect::<Vec<_>>()
                .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Vec::<u64>::deserialize(d).map(|v| v.into_iter().map(f64::from_bits).collect())
        }
    }
}

/// What a point holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PointValue {
    /// Explicit bounds, ascending, in the metric's unit; `counts` has one more entry than
    /// `bounds` (the last bucket is above the last bound).
    Explicit {
        #[serde(with = "f64_bits::vec")]
        bounds: Vec<f64>,
        counts: Vec<u64>,
    },
    /// Base-2 exponential buckets: bucket `i` is `(base^i, base^(i+1)]` with
    /// `base = 2^(2^-scale)`.
    Exponential {
        scale: i32,
        zero_count: u64,
        positive: Dense,
        negative: Dense,
    },
    /// A monotonic sum: recommendations served.
    Sum {
        #[serde(with = "f64_bits")]
        value: f64,
    },
}

/// One metric point, decoded and checked by the collector.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// Stream identity: resource, scope, metric name and point attributes.
    pub stream: StreamId,
    pub key: SeriesKey,
    /// Whether the point's requests failed (`error.type`, or an HTTP status of 500 or more).
    pub error: bool,
    pub start_unix_nanos: u64,
    pub time_unix_nanos: u64,
    /// Cumulative (else delta) temporality.
    pub cumulative: bool,
    /// For a cumulative point of a stream recmeter holds nothing of: count its whole value
    /// rather than take it as the baseline (the `auto` rule: the stream started after
    /// recmeter did). Decided when the point arrived, so a replay decides the same.
    pub whole_if_new: bool,
    /// Nanoseconds in one unit of the histogram's values (1e9 for seconds); 0 for sums.
    pub nanos_per_unit: f64,
    pub value: PointValue,
}

impl PointValue {
    /// The part of `self` not already in `previous`, or `None` when `self` is a reset (another
    /// layout or bounds, a higher scale, or a count that went down).
    pub fn subtract(&self, previous: &PointValue) -> Option<PointValue> {
        match (self, previous) {
            (
                PointValue::Explicit { bounds, counts },
                PointValue::Explicit {
                    bounds: old_bounds,
                    counts: old_counts,
                },
            ) => {
                let same_bounds = bounds.len() == old_bounds.len()
                    && bounds
                        .iter()
                        .zip(old_bounds)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                if !same_bounds || counts.len() != old_counts.len() {
                    return None;
                }
                let counts = counts
                    .iter()
                    .zip(old_counts)
                    .map(|(c, o)| c.checked_sub(*o))
                    .collect::<Option<Vec<_>>>()?;
                Some(PointValue::Explicit {
                    bounds: bounds.clone(),
                    counts,
                })
            }
            (
                PointValue::Exponential {
                    scale,
                    zero_count,
                    positive,
                    negative,
                },
                PointValue::Exponential {
                    scale: old_scale,
                    zero_count: old_zero,
                    positive: old_positive,
                    negative: old_negative,
                },
            ) => {
                // A lower scale is the sender merging buckets, not a reset.
                let by = u32::try_from(old_scale.checked_sub(*scale)?).ok()?;
                Some(PointValue::Exponential {
                    scale: *scale,
                    zero_count: zero_count.checked_sub(*old_zero)?,
                    positive: positive.subtract(&old_positive.downscale(by))?,
                    negative: negative.subtract(&old_negative.downscale(by))?,
                })
            }
            (PointValue::Sum { value }, PointValue::Sum { value: old }) => {
                (value >= old).then(|| PointValue::Sum { value: value - old })
            }
            _ => None,
        }
    }

    /// Requests this (delta) value stands for, as `(duration in nanoseconds, count)`: an
    /// explicit bucket's count at its midpoint (the first bucket's at half its bound, the last
    /// one's at its lower bound), an exponential bucket's at its geometric midpoint, the zero
    /// bucket's at 0 (which the aggregator clamps to 1 µs). Sums stand for none.
    pub fn requests(&self, nanos_per_unit: f64) -> Vec<(u64, u64)> {
        // `as` saturates: a value past u64 is clamped to 1 h by the aggregator like any other.
        let nanos = |v: f64| (v.max(0.0) * nanos_per_unit).round() as u64;
        let mut out = Vec::new();
        match self {
            PointValue::Explicit { bounds, counts } => {
                for (i, &count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
                    let lower = i.checked_sub(1).and_then(|j| bounds.get(j)).copied();
                    let value = match (lower, bounds.get(i)) {
                        (None, Some(&upper)) => upper / 2.0,
                        (Some(lower), Some(&upper)) => (lower.max(0.0) + upper) / 2.0,
                        (Some(lower), None) => lower,
                        (None, None) => 0.0,
                    };
                    out.push((nanos(value), count));
                }
            }
            PointValue::Exponential {
                scale,
                zero_count,
                positive,
                ..
            } => {
                if *zero_count > 0 {
                    out.push((0, *zero_count));
                }
                let exponent_per_index = (-f64::from(*scale)).exp2();
                for (i, &count) in positive.counts.iter().enumerate() {
                    if count > 0 {
                        let index = f64::from(positive.offset) + i as f64;
                        let value = ((index + 0.5) * exponent_per_index).exp2();
                        out.push((nanos(value), count));
                    }
                }
            }
            PointValue::Sum { .. } => {}
        }
        out
    }

    /// Recommendations this (delta) value adds: a sum's value, rounded.
    pub fn recommendations(&self) -> u64 {
        match self {
            PointValue::Sum { value } => value.max(0.0).round() as u64,
            _ => 0,
        }
    }
}

impl Dense {
    /// The same counts at a scale `by` lower: every `2^by` neighbouring buckets become one.
    pub fn downscale(&self, by: u32) -> Dense {
        if by == 0 || self.counts.is_empty() {
            return self.clone();
        }
        let by = by.min(31);
        let offset = self.offset >> by;
        let mut counts: Vec<u64> = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            let index = (i64::from(self.offset) + i as i64) >> by;
            let slot = (index - i64::from(offset)) as usize;
            if counts.len() <= slot {
                counts.resize(slot + 1, 0);
            }
            counts[slot] = counts[slot].saturating_add(c);
        }
        Dense { offset, counts }
    }

    /// `self - previous` bucket by bucket, or `None` if any bucket went down.
    fn subtract(&self, previous: &Dense) -> Option<Dense> {
        let mut counts = self.counts.clone();
        for (i, &p) in previous.counts.iter().enumerate() {
            if p == 0 {
                continue;
            }
            let index = i64::from(previous.offset) + i as i64 - i64::from(self.offset);
            let slot = usize::try_from(index).ok()?;
            let c = counts.get_mut(slot)?;
            *c = c.checked_sub(p)?;
        }
        Some(Dense {
            offset: self.offset,
            counts,
        })
    }
}
