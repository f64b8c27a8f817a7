//! DataFusion's string functions that can build a value far larger than their arguments
//! (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`, and `concat` and `concat_ws` over
//! arguments each within the bound), wrapped so that a call refuses,
//! before it allocates, to build more than `sql.max_value_bytes` over its batch of rows. The
//! memory pool cannot do this: a function's output is not reserved from it, and one call of
//! `repeat('a', 1e12)` would take the machine down before any reservation was checked.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) × n`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: every position of `s` may take a copy of `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: every position of `s` may take the
    /// replacement, each `$group` in it expanded to as much as all of `s`.
    RegexpReplace,
    /// `concat(a, b, …)`: every argument, a non-string one as at most 40 characters.
    Concat,
    /// `concat_ws(sep, a, b, …)`: every argument, and the separator between each two.
    ConcatWs,
}

impl Growth {
    const ALL: [(&'static str, Growth); 7] = [
        ("repeat", Growth::Repeat),
        ("lpad", Growth::Pad),
        ("rpad", Growth::Pad),
        ("replace", Growth::Replace),
        ("regexp_replace", Growth::RegexpReplace),
        ("concat", Growth::Concat),
        ("concat_ws", Growth::ConcatWs),
    ];

    /// The most bytes one row's value can take.
    fn row_bound(self, args: &[ColumnarValue], row: usize) -> u128 {
        let s = str_len(args.first(), row);
        match self {
            Growth::Repeat => s * int(args.get(1), row),
            Growth::Pad => 4 * int(args.get(1), row),
            Growth::Replace => s + (s + 1) * str_len(args.get(2), row),
            Growth::RegexpReplace => {
                let replacement = str_at(args.get(2), row);
                let groups = replacement.as_deref().map_or(0, |r| r.matches('$').count());
                let fixed = replacement.map_or(0, |r| r.len()) as u128;
                s + (s + 1) * (fixed + groups as u128 * s)
            }
            Growth::Concat => args.iter().map(|a| text_len(a, row)).sum(),
            Growth::ConcatWs => {
                let parts = args.len().saturating_sub(1) as u128;
                let separator = str_len(args.first(), row);
                args.iter().skip(1).map(|a| text_len(a, row)).sum::<u128>()
                    + parts.saturating_sub(1) * separator
            }
        }
    }
}

/// Replaces the growing string functions of `ctx` with bounded ones, `string_agg` included.
pub fn bound_values(ctx: &SessionContext, max_bytes: usize) {
    if let Ok(inner) = ctx.udaf("string_agg") {
        ctx.register_udaf(AggregateUDF::new_from_impl(BoundedAggregate {
            inner,
            max_bytes,
        }));
    }
    for (name, growth) in Growth::ALL {
        if let Ok(inner) = ctx.udf(name) {
            let mut signature = inner.signature().clone();
            signature.volatility = Volatility::Volatile;
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner,
                signature,
                growth,
                max_bytes,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    /// The inner function's, but volatile: a call with constant arguments is not folded into
    /// a literal while planning, where it would be checked for one row and then copied to
    /// every row of every batch unchecked.
    signature: Signature,
    growth: Growth,
    max_bytes: usize,
}

impl Bounded {
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        // Constant arguments give one value, which the batch then holds on every row.
        let rows = args.number_rows.max(1);
        let limit = self.max_bytes as u128;
        let mut total = 0u128;
        for row in 0..rows {
            total = total.saturating_add(self.growth.row_bound(&args.args, row));
            if total > limit {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() would build more than {} bytes (sql.max_value_bytes){}",
                    self.inner.name(),
                    self.max_bytes,
                    if rows > 1 {
                        format!(" over a batch of {rows} rows")
                    } else {
                        String::new()
                    }
                )));
            }
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // The inner function's own rewrites would put it back unbounded.
        let _ = info;
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

/// An aggregate building one value per group (`string_agg`, `array_agg`), refusing to hold more than
/// `max_bytes` in a group: the memory pool alone sees its string only after it has grown (and
/// its capacity doubled).
#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedAggregate {
    inner: Arc<AggregateUDF>,
    max_bytes: usize,
}

impl AggregateUDFImpl for BoundedAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = Arc::clone(self.inner.inner()).with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| {
            Arc::new(BoundedAggregate {
                inner: Arc::new(AggregateUDF::new_from_shared_impl(inner)),
                max_bytes: self.max_bytes,
            }) as Arc<dyn AggregateUDFImpl>
        }))
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }

    // Groups run on one accumulator each (no groups accumulator), each bounded.
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BoundedAccumulator {
            inner: self.inner.accumulator(args)?,
            name: self.inner.name().to_owned(),
            max_bytes: self.max_bytes,
        }))
    }
}

#[derive(Debug)]
struct BoundedAccumulator {
    inner: Box<dyn Accumulator>,
    name: String,
    max_bytes: usize,
}

impl BoundedAccumulator {
    fn check(&self) -> Result<()> {
        if self.inner.size() > self.max_bytes {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would build a value of more than {} bytes (sql.max_value_bytes)",
                self.name, self.max_bytes
            )));
        }
        Ok(())
    }
}

impl Accumulator for BoundedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(values)?;
        self.check()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.inner.evaluate()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)?;
        self.check()
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

/// The string argument's value at `row`, if it is a string.
fn str_at(arg: Option<&ColumnarValue>, row: usize) -> Option<String> {
    match arg? {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => s.clone(),
        ColumnarValue::Scalar(_) => None,
        ColumnarValue::Array(a) => string_value(a.as_ref(), row).map(str::to_owned),
    }
}

/// The byte length of an argument at `row` as text: a string's own, at most 40 for anything
/// else (a number, a date).
fn text_len(arg: &ColumnarValue, row: usize) -> u128 {
    let is_string = matches!(
        arg.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    if is_string {
        str_len(Some(arg), row)
    } else {
        40
    }
}

/// The byte length of the string argument at `row` (0 for null or not a string).
fn str_len(arg: Option<&ColumnarValue>, row: usize) -> u128 {
    match arg {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        )) => s.as_ref().map_or(0, |s| s.len() as u128),
        Some(ColumnarValue::Array(a)) => {
            string_value(a.as_ref(), row).map_or(0, |s| s.len()) as u128
        }
        _ => 0,
    }
}

fn string_value(array: &dyn Array, row: usize) -> Option<&str> {
    if row >= array.len() || array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(array.as_string_view().value(row)),
        _ => None,
    }
}

/// The integer argument at `row`, negatives and nulls as 0.
fn int(arg: Option<&ColumnarValue>, row: usize) -> u128 {
    let value = match arg {
        Some(ColumnarValue::Scalar(s)) => match s {
            ScalarValue::Int64(v) => v.unwrap_or(0),
            ScalarValue::Int32(v) => i64::from(v.unwrap_or(0)),
            other => other
                .cast_to(&DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    ScalarValue::Int64(v) => v,
                    _ => None,
                })
                .unwrap_or(0),
        },
        Some(ColumnarValue::Array(a)) if row < a.len() && !a.is_null(row) => match a.data_type() {
            DataType::Int64 => a.as_primitive::<Int64Type>().value(row),
            _ => datafusion::arrow::compute::cast(&a.slice(row, 1), &DataType::Int64)
                .ok()
                .map_or(0, |c| c.as_primitive::<Int64Type>().value(0)),
        },
        _ => 0,
    };
    value.max(0) as u128
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<()> {
        ctx.sql(sql).await?.collect().await.map(|_| ())
    }

    #[tokio::test]
    async fn growing_functions_refuse_before_they_allocate() {
        let ctx = SessionContext::new();
        bound_values(&ctx, 1 << 20);
        for sql in [
            "SELECT length(repeat('a', 1000000000000))",
            "SELECT length(repeat(arrow_cast('a', 'LargeUtf8'), 1000000000000))",
            "SELECT length(lpad('a', 1000000000))",
            "SELECT length(rpad('a', 1000000000, 'xy'))",
            "SELECT length(replace(repeat('a', 100000), 'a', repeat('b', 100)))",
            "SELECT length(regexp_replace(repeat('a', 100000), '', repeat('b', 100), 'g'))",
            "SELECT length(repeat('ab', v)) FROM (VALUES (400000), (400000)) AS t(v)",
            // A constant value the batch repeats on each of its rows.
            "SELECT length(repeat('x', 100000)) FROM generate_series(1, 20)",
            // Each batch within the bound, the aggregate's value past it.
            "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 3000)",
            "SELECT a IS NULL FROM (SELECT array_agg(repeat('x', 1000)) AS a FROM generate_series(1, 3000))",
            "SELECT length(concat(repeat('a', 600000), repeat('b', 600000)))",
            "SELECT length(concat_ws(repeat(',', 300000), 'a', 'b', 'c', 'd', 'e'))",
        ] {
            let e = run(&ctx, sql).await.unwrap_err();
            assert!(e.to_string().contains("sql.max_value_bytes"), "{sql}: {e}");
        }
        for sql in [
            "SELECT repeat('a', 1000), lpad('x', 10), rpad('x', 10, 'ab')",
            "SELECT replace('checkout', 'out', 'in'), regexp_replace('a1b2', '[0-9]', '#', 'g')",
            "SELECT repeat(s, 3) FROM (VALUES ('a'), (NULL)) AS t(s)",
            "SELECT concat('a', 1, NULL, now()), concat_ws('-', 'a', 'b')",
            "SELECT array_agg(v ORDER BY v DESC) FROM (VALUES (1), (2)) AS t(v)",
        ] {
            run(&ctx, sql).await.unwrap();
        }
    }
}
