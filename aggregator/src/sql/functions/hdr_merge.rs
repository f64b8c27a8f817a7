//! `hdr_merge(hdr) → binary`: merges V2-encoded HDR histograms into one V2 encoding. Its
//! state is the same encoding, so DataFusion can aggregate in partial and final steps across
//! partitions. Blobs are decoded straight into one dense counts array (ADR 007).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, TypeSignature, Volatility,
};

use crate::counts::{Counts, is_plain_v2};

/// The `hdr_merge` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HdrMerge {
    signature: Signature,
}

impl HdrMerge {
    pub fn new() -> Self {
        Self {
            signature: binary_signature(1, &[]),
        }
    }
}

impl Default for HdrMerge {
    fn default() -> Self {
        Self::new()
    }
}

/// A signature taking any binary type first (tables hold `Binary`; Parquet may read back
/// `BinaryView`), then `rest`.
pub(super) fn binary_signature(_arity: usize, rest: &[DataType]) -> Signature {
    let variants = [
        DataType::Binary,
        DataType::LargeBinary,
        DataType::BinaryView,
    ]
    .into_iter()
    .map(|b| {
        let mut args = vec![b];
        args.extend_from_slice(rest);
        TypeSignature::Exact(args)
    })
    .collect();
    Signature::one_of(variants, Volatility::Immutable)
}

impl AggregateUDFImpl for HdrMerge {
    fn name(&self) -> &str {
        "hdr_merge"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "hdr"),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(HdrMergeAccumulator::default()))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(HdrMergeGroups::default()))
    }
}

/// Merged counts of many groups at once: each group keeps its blobs back to back and decodes
/// them at emit into one shared counts array, so a query grouping by series holds the blobs'
/// bytes, not a dense array per group (`/metrics` merges about 50 000 groups per render).
#[derive(Debug, Default)]
struct HdrMergeGroups {
    groups: Vec<Merged>,
    /// Where each group's blobs are decoded, one group at a time.
    scratch: Counts,
}

impl HdrMergeGroups {
    fn add(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if self.groups.len() < total_num_groups {
            self.groups.resize_with(total_num_groups, Merged::default);
        }
        let Some(array) = values.first() else {
            return exec_err!("hdr_merge takes one argument");
        };
        let passes = |row: usize| opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        let mut add = |row: usize, blob: Option<&[u8]>| -> Result<()> {
            let (Some(blob), true) = (blob, passes(row)) else {
                return Ok(());
            };
            let Some(group) = group_indices.get(row).and_then(|g| self.groups.get_mut(*g)) else {
                return exec_err!("hdr_merge: group index out of range");
            };
            group.add(blob, &mut self.scratch)
        };
        for (row, blob) in blobs(array, "hdr_merge")?.enumerate() {
            add(row, blob)?;
        }
        Ok(())
    }

    fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = emit_to.take_needed(&mut self.groups);
        let mut out = BinaryBuilder::with_capacity(groups.len(), groups.len() * 256);
        let mut blob = Vec::new();
        for g in groups {
            if g.seen() {
                blob.clear();
                g.encode_into(&mut blob, &mut self.scratch)?;
                out.append_value(&blob);
            } else {
                out.append_null();
            }
        }
        Ok(Arc::new(out.finish()))
    }
}

impl GroupsAccumulator for HdrMergeGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.add(values, group_indices, opt_filter, total_num_groups)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.add(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)?])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.scratch.heap_size()
            + self
                .groups
                .iter()
                .map(|g| std::mem::size_of::<Merged>() + g.heap_size())
                .sum::<usize>()
    }
}

/// Bytes of blobs a group takes in before it merges them with what it holds into one
/// encoding.
const FOLD_BYTES: usize = 32 * 1024;

/// What one group has merged: its blobs back to back (V2 encodings, plain or deflated, as
/// `Counts::add_encoded` reads them), merged into one encoding whenever [`FOLD_BYTES`] more
/// have come since the last merge. A group with no encoding saw only NULLs (a NULL result),
/// unlike an empty histogram. A blob's framing (whole encodings) is checked as it comes; its counts are decoded at a
/// merge or at emit, which is where bad counts are an error. Each blob is decoded once, a
/// merged encoding once per merge it takes part in. A group that ends with one plain V2
/// encoding gives it back as it came, once it decodes: most `/metrics` segments are one row per
/// series (a block, an hour, the open minute).
#[derive(Debug, Default)]
struct Merged {
    blobs: Vec<u8>,
    /// Encodings in `blobs`.
    count: usize,
    /// Length of the merged encoding `blobs` starts with (0 before the first merge).
    merged: usize,
}

impl Merged {
    /// Whether any blob came (not only NULLs).
    fn seen(&self) -> bool {
        self.count > 0
    }

    fn add(&mut self, blob: &[u8], scratch: &mut Counts) -> Result<()> {
        if let Err(e) = Counts::check_framing(blob) {
            return exec_err!("hdr_merge: {e}");
        }
        self.blobs.extend_from_slice(blob);
        self.count += 1;
        if self.blobs.len() - self.merged > FOLD_BYTES && self.count > 1 {
            let mut folded = Vec::new();
            self.encode_into(&mut folded, scratch)?;
            self.merged = folded.len();
            self.blobs = folded;
            self.count = 1;
        }
        Ok(())
    }

    /// Appends the merged encoding to `out`, decoding the blobs into `scratch`.
    fn encode_into(&self, out: &mut Vec<u8>, scratch: &mut Counts) -> Result<()> {
        scratch.reset();
        add_blob(scratch, &self.blobs, "hdr_merge")?;
        if self.count == 1 && is_plain_v2(&self.blobs) {
            out.extend_from_slice(&self.blobs);
        } else {
            scratch.encode_into(out);
        }
        Ok(())
    }

    fn heap_size(&self) -> usize {
        self.blobs.capacity()
    }
}

/// The plain accumulator: one group.
#[derive(Debug, Default)]
struct HdrMergeAccumulator {
    merged: Merged,
    scratch: Counts,
}

impl HdrMergeAccumulator {
    fn add_array(&mut self, array: &ArrayRef) -> Result<()> {
        for blob in blobs(array, "hdr_merge")?.flatten() {
            self.merged.add(blob, &mut self.scratch)?;
        }
        Ok(())
    }
}

/// The blobs of a binary column of any binary type (tables hold `Binary`; Parquet may read back
/// `BinaryView`), NULL as `None`.
pub(super) fn blobs<'a>(
    array: &'a ArrayRef,
    function: &str,
) -> Result<Box<dyn Iterator<Item = Option<&'a [u8]>> + 'a>> {
    Ok(match array.data_type() {
        DataType::Binary => Box::new(array.as_binary::<i32>().iter()),
        DataType::LargeBinary => Box::new(array.as_binary::<i64>().iter()),
        DataType::BinaryView => Box::new(array.as_binary_view().iter()),
        other => return exec_err!("{function} takes a binary HDR histogram, not {other}"),
    })
}

/// Adds one encoded histogram, naming the function in the error.
pub(super) fn add_blob(counts: &mut Counts, blob: &[u8], function: &str) -> Result<()> {
    match counts.add_encoded(blob) {
        Ok(()) => Ok(()),
        Err(e) => exec_err!("{function}: {e}"),
    }
}

impl Accumulator for HdrMergeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match values.first() {
            Some(array) => self.add_array(array),
            None => exec_err!("hdr_merge takes one argument"),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if !self.merged.seen() {
            return Ok(ScalarValue::Binary(None));
        }
        let mut blob = Vec::new();
        self.merged.encode_into(&mut blob, &mut self.scratch)?;
        Ok(ScalarValue::Binary(Some(blob)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.merged.heap_size() + self.scratch.heap_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram;
    use crate::state::QUANTILES;
    use datafusion::arrow::array::BinaryArray;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// Heavy-tailed durations in [1 µs, 1 h]: log-normal with a random median and spread,
    /// mixed with a Pareto tail of random weight and shape.
    fn durations(
        rng: &mut StdRng,
        n: usize,
        median: f64,
        sigma: f64,
        tail: f64,
        alpha: f64,
    ) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let seconds = if rng.random::<f64>() < tail {
                    median * 4.0 / rng.random::<f64>().max(1e-12).powf(1.0 / alpha)
                } else {
                    let u1: f64 = rng.random::<f64>().max(1e-300);
                    let z = (-2.0 * u1.ln()).sqrt()
                        * (std::f64::consts::TAU * rng.random::<f64>()).cos();
                    median * (sigma * z).exp()
                };
                ((seconds * 1e9) as u64).clamp(histogram::CLAMP_LOW_NANOS, histogram::HIGHEST_NANOS)
            })
            .collect()
    }

    fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
        let n = sorted.len() as f64;
        let rank = ((q * n) - 1e-9).ceil().clamp(1.0, n) as usize;
        sorted[rank - 1]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Values spread over minutes; a random window of minutes merged through the UDAF in a
        /// random order and a random split into partial states: every quantile within 1% of
        /// the nearest rank of the raw values in the window.
        #[test]
        fn merged_quantiles_stay_within_one_percent(
            seed in any::<u64>(),
            minutes in 1usize..120,
            per_minute in 1usize..400,
            median_exp in -5.0f64..2.0,
            sigma in 0.1f64..3.0,
            tail in 0.0f64..0.2,
            alpha in 0.5f64..3.0,
            digits in 2u8..=3,
            window in (0usize..120, 1usize..120),
            partials in 1usize..6,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let median = 10f64.powf(median_exp);
            let per_minute_values: Vec<Vec<u64>> = (0..minutes)
                .map(|_| {
                    let n = rng.random_range(1..=per_minute);
                    durations(&mut rng, n, median, sigma, tail, alpha)
                })
                .collect();
            let first = window.0 % minutes;
            let last = (first + window.1).min(minutes);
            let mut blobs: Vec<Vec<u8>> = per_minute_values[first..last]
                .iter()
                .map(|values| {
                    let mut h = histogram::new_histogram(digits).unwrap();
                    for &v in values {
                        histogram::record(&mut h, v);
                    }
                    histogram::encode(&h).unwrap()
                })
                .collect();
            blobs.shuffle(&mut rng);
            // Partial aggregation over random chunks, then a final merge of their states.
            let chunk = blobs.len().div_ceil(partials).max(1);
            let mut states = Vec::new();
            for part in blobs.chunks(chunk) {
                let mut acc = HdrMergeAccumulator::default();
                let array: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(part.iter()));
                acc.update_batch(&[array]).unwrap();
                states.push(acc.state().unwrap().remove(0));
            }
            states.shuffle(&mut rng);
            let mut last_acc = HdrMergeAccumulator::default();
            let state_array = ScalarValue::iter_to_array(states).unwrap();
            last_acc.merge_batch(&[state_array]).unwrap();
            let ScalarValue::Binary(Some(merged)) = last_acc.evaluate().unwrap() else {
                panic!("hdr_merge gave no histogram");
            };
            let mut counts = Counts::new();
            counts.add_encoded(&merged).unwrap();
            let mut raw: Vec<u64> = per_minute_values[first..last].concat();
            raw.sort_unstable();
            prop_assert_eq!(counts.total(), raw.len() as u64);
            for q in QUANTILES.into_iter().chain([0.0, 0.25, 0.75, 1.0]) {
                let got = counts.quantile_seconds(q).unwrap() * 1e9;
                let exact = nearest_rank(&raw, q) as f64;
                let rel = (got - exact).abs() / exact;
                prop_assert!(rel <= 0.01, "q {} reported {} exact {} error {}", q, got, exact, rel);
            }
        }
    }

    #[test]
    fn groups_accumulator_agrees_with_the_plain_one() {
        let blob = |ms: u64| {
            let mut h = histogram::new_histogram(2).unwrap();
            histogram::record(&mut h, ms * 1_000_000);
            histogram::encode(&h).unwrap()
        };
        let blobs: Vec<Vec<u8>> = (1..=6).map(blob).collect();
        let array: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(blobs.iter()));
        // Rows 0..6 into groups 0, 1, 0, 1, 2, 0; the filter drops row 2; group 3 gets nothing.
        let groups = [0, 1, 0, 1, 2, 0];
        let filter = BooleanArray::from(vec![true, true, false, true, true, true]);
        let mut acc = HdrMergeGroups::default();
        acc.update_batch(&[array], &groups, Some(&filter), 4)
            .unwrap();
        let state = acc.state(EmitTo::All).unwrap();
        let mut merged = HdrMergeGroups::default();
        merged.merge_batch(&state, &[0, 1, 2, 3], None, 4).unwrap();
        let out = merged.evaluate(EmitTo::All).unwrap();
        let out = out.as_binary::<i32>();
        let total = |i: usize| {
            let mut c = Counts::new();
            c.add_encoded(out.value(i)).unwrap();
            c.total()
        };
        assert_eq!((total(0), total(1), total(2)), (2, 2, 1));
        assert!(out.is_null(3));
        // A group of one blob gives it back as it came.
        assert_eq!(out.value(2), blobs[4].as_slice());
    }

    #[test]
    fn a_lone_blob_is_still_checked() {
        let mut h = histogram::new_histogram(2).unwrap();
        histogram::record(&mut h, 5_000_000);
        let good = histogram::encode(&h).unwrap();
        // Cut short, and whole but with a lowest discernible value of 2.
        let short = good[..20].to_vec();
        let mut foreign = good.clone();
        foreign[23] = 2;
        for blob in [short, foreign] {
            let array: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values([&blob]));
            let mut groups = HdrMergeGroups::default();
            // Blobs are decoded at emit: the error comes from there.
            let e = groups
                .update_batch(std::slice::from_ref(&array), &[0], None, 1)
                .and_then(|()| groups.evaluate(EmitTo::All))
                .unwrap_err();
            assert!(e.to_string().contains("hdr_merge"), "{e}");
            let mut plain = HdrMergeAccumulator::default();
            assert!(
                plain
                    .update_batch(&[array])
                    .and_then(|()| plain.evaluate())
                    .is_err()
            );
        }
    }

    /// One group takes in several times `FOLD_BYTES` of blobs, in batches, between the rows of
    /// another group: its counts and quantiles are the raw values' (nearest rank, as the middle
    /// of its HDR bucket by the `hdrhistogram` crate).
    #[test]
    fn a_group_past_the_fold_keeps_every_count() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut raw = [Vec::new(), Vec::new()];
        let mut acc = HdrMergeGroups::default();
        for _ in 0..40 {
            let mut blobs = Vec::new();
            let mut groups = Vec::new();
            for _ in 0..10 {
                let group = usize::from(rng.random_range(0..4) == 0);
                let values = durations(&mut rng, 200, 0.05, 2.0, 0.05, 1.0);
                let mut h = histogram::new_histogram(3).unwrap();
                for &v in &values {
                    histogram::record(&mut h, v);
                }
                blobs.push(histogram::encode(&h).unwrap());
                raw[group].extend(values);
                groups.push(group);
            }
            let array: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(blobs.iter()));
            acc.update_batch(&[array], &groups, None, 2).unwrap();
        }
        assert!(acc.groups[0].merged > 0, "the group never merged its blobs");
        // Merged again only after another `FOLD_BYTES` of blobs, not at the next one.
        let merged = acc.groups[0].merged;
        let count = acc.groups[0].count;
        let small = {
            let mut h = histogram::new_histogram(3).unwrap();
            histogram::record(&mut h, 7_000_000);
            histogram::encode(&h).unwrap()
        };
        raw[0].push(7_000_000);
        let array: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values([&small]));
        acc.update_batch(&[array], &[0], None, 2).unwrap();
        assert_eq!(
            (acc.groups[0].merged, acc.groups[0].count),
            (merged, count + 1)
        );
        let out = acc.evaluate(EmitTo::All).unwrap();
        let out = out.as_binary::<i32>();
        let crate_h = histogram::new_histogram(3).unwrap();
        for (group, values) in raw.iter_mut().enumerate() {
            values.sort_unstable();
            let mut counts = Counts::new();
            counts.add_encoded(out.value(group)).unwrap();
            assert_eq!(counts.total(), values.len() as u64, "group {group}");
            for q in QUANTILES {
                let exact = nearest_rank(values, q);
                let want = crate_h.median_equivalent(exact) as f64 / 1e9;
                assert_eq!(
                    counts.quantile_seconds(q),
                    Some(want),
                    "group {group} q {q}"
                );
            }
        }
    }

    #[test]
    fn a_bad_blob_among_good_ones_is_an_error() {
        let mut h = histogram::new_histogram(2).unwrap();
        histogram::record(&mut h, 5_000_000);
        let good = histogram::encode(&h).unwrap();
        let mut foreign = good.clone();
        foreign[23] = 2;
        // Cut short: refused as it comes, before it can run into the next blob.
        let short = good[..good.len() - 1].to_vec();
        for (bad, at_update) in [(short, true), (foreign, false)] {
            let array: ArrayRef =
                std::sync::Arc::new(BinaryArray::from_iter_values([&good, &bad, &good]));
            let mut groups = HdrMergeGroups::default();
            let added = groups.update_batch(&[array], &[0, 0, 0], None, 1);
            assert_eq!(added.is_err(), at_update);
            let e = added
                .and_then(|()| groups.evaluate(EmitTo::All))
                .unwrap_err();
            assert!(e.to_string().contains("hdr_merge"), "{e}");
        }
    }

    #[test]
    fn all_null_input_gives_null() {
        let mut acc = HdrMergeAccumulator::default();
        let array: ArrayRef = std::sync::Arc::new(BinaryArray::from(vec![None::<&[u8]>]));
        acc.update_batch(&[array]).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Binary(None));
    }
}
