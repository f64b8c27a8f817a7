//! DataFusion's string functions that can build a value far larger than their arguments
//! (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`), wrapped so that a call refuses,
//! before it allocates, to build more than `sql.max_value_bytes` over its batch of rows. The
//! memory pool cannot do this: a function's output is not reserved from it, and one call of
//! `repeat('a', 1e12)` would take the machine down before any reservation was checked.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
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
}

impl Growth {
    const ALL: [(&'static str, Growth); 5] = [
        ("repeat", Growth::Repeat),
        ("lpad", Growth::Pad),
        ("rpad", Growth::Pad),
        ("replace", Growth::Replace),
        ("regexp_replace", Growth::RegexpReplace),
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
        }
    }
}

/// Replaces the growing string functions of `ctx` with bounded ones.
pub fn bound_values(ctx: &SessionContext, max_bytes: usize) {
    for (name, growth) in Growth::ALL {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner,
                growth,
                max_bytes,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_bytes: usize,
}

impl Bounded {
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
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
        self.inner.signature()
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
        ] {
            let e = run(&ctx, sql).await.unwrap_err();
            assert!(e.to_string().contains("sql.max_value_bytes"), "{sql}: {e}");
        }
        for sql in [
            "SELECT repeat('a', 1000), lpad('x', 10), rpad('x', 10, 'ab')",
            "SELECT replace('checkout', 'out', 'in'), regexp_replace('a1b2', '[0-9]', '#', 'g')",
            "SELECT repeat(s, 3) FROM (VALUES ('a'), (NULL)) AS t(s)",
        ] {
            run(&ctx, sql).await.unwrap();
        }
    }
}
