//! `hdr_quantile(hdr, q) → float64`: the nearest-rank quantile `sorted[ceil(q·n) − 1]` of a
//! V2-encoded HDR histogram of nanoseconds, in seconds, reported as the middle of its bucket
//! (ADR 001). NULL for a NULL or empty histogram.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Float64Builder};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature};

use super::hdr_merge::{add_blob, binary_signature, blobs};
use crate::counts::Counts;

/// The `hdr_quantile` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HdrQuantile {
    signature: Signature,
}

impl HdrQuantile {
    pub fn new() -> Self {
        Self {
            signature: binary_signature(2, &[DataType::Float64]),
        }
    }
}

impl Default for HdrQuantile {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for HdrQuantile {
    fn name(&self) -> &str {
        "hdr_quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [hdr, q] = arrays.as_slice() else {
            return exec_err!("hdr_quantile takes two arguments: (hdr, q)");
        };
        let q = q.as_primitive::<Float64Type>();
        let out = quantiles(blobs(hdr, "hdr_quantile")?, q)?;
        Ok(ColumnarValue::Array(std::sync::Arc::new(out) as ArrayRef))
    }
}

fn quantiles<'a>(
    blobs: impl Iterator<Item = Option<&'a [u8]>>,
    q: &Float64Array,
) -> Result<Float64Array> {
    let mut out = Float64Builder::with_capacity(q.len());
    let mut counts = Counts::new();
    for (i, blob) in blobs.enumerate() {
        let (Some(blob), false) = (blob, q.is_null(i)) else {
            out.append_null();
            continue;
        };
        let q = q.value(i);
        if !(0.0..=1.0).contains(&q) {
            return exec_err!("hdr_quantile: q must be between 0 and 1, not {q}");
        }
        counts.reset();
        add_blob(&mut counts, blob, "hdr_quantile")?;
        out.append_option(counts.quantile_seconds(q));
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram;
    use datafusion::arrow::array::BinaryArray;

    #[test]
    fn quantiles_nulls_and_bad_q() {
        let mut h = histogram::new_histogram(2).unwrap();
        for ms in 1..=100u64 {
            histogram::record(&mut h, ms * 1_000_000);
        }
        let blob = histogram::encode(&h).unwrap();
        let blobs = BinaryArray::from(vec![Some(blob.as_slice()), None, Some(blob.as_slice())]);
        let q = Float64Array::from(vec![Some(0.99), Some(0.5), None]);
        let out = quantiles(blobs.iter(), &q).unwrap();
        assert!(
            (out.value(0) - 0.099).abs() / 0.099 < 0.004,
            "{}",
            out.value(0)
        );
        assert!(out.is_null(1) && out.is_null(2));
        let bad = Float64Array::from(vec![Some(1.5)]);
        let one = BinaryArray::from(vec![Some(blob.as_slice())]);
        assert!(quantiles(one.iter(), &bad).is_err());
        let junk = BinaryArray::from(vec![Some(&b"junk"[..])]);
        let e = quantiles(junk.iter(), &Float64Array::from(vec![0.5])).unwrap_err();
        assert!(e.to_string().contains("hdr_quantile"), "{e}");
    }
}
