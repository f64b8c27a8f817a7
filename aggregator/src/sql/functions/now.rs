//! `now()` (alias `current_timestamp`) reading recmeter's one clock, so SQL windows move with
//! the fake clock in tests exactly as `/metrics` windows do. The value is fixed per query and
//! folded into a literal at planning, so time filters reach the table scans.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::TIME_ZONE;

/// `now()` at a fixed instant: the clock's reading when the query was planned.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Now {
    signature: Signature,
    aliases: Vec<String>,
    nanos: i64,
}

impl Now {
    /// `now()` answering `nanos` since the epoch.
    pub fn new(nanos: u64) -> Self {
        Self {
            signature: Signature::nullary(Volatility::Stable),
            aliases: vec!["current_timestamp".to_owned()],
            nanos: i64::try_from(nanos).unwrap_or(i64::MAX),
        }
    }

    fn value(&self) -> ScalarValue {
        ScalarValue::TimestampNanosecond(Some(self.nanos), Some(Arc::from(TIME_ZONE)))
    }
}

impl ScalarUDFImpl for Now {
    fn name(&self) -> &str {
        "now"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            TimeUnit::Nanosecond,
            Some(Arc::from(TIME_ZONE)),
        ))
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(&[])?,
            false,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value()))
    }

    fn simplify(&self, _args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        Ok(ExprSimplifyResult::Simplified(Expr::Literal(
            self.value(),
            None,
        )))
    }
}
