//! recmeter's SQL functions, registered through one explicit list: `hdr_merge` (aggregate),
//! `hdr_quantile` (scalar) and `now()` on recmeter's clock; and, for clients' queries,
//! DataFusion's growing string functions bounded by `sql.max_value_bytes`.

mod bounded;
mod hdr_merge;
mod hdr_quantile;
mod now;

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use bounded::bound_values;
pub use hdr_merge::HdrMerge;
pub use hdr_quantile::HdrQuantile;
pub use now::Now;

/// Registers every recmeter function on `ctx`; `now_nanos` is what `now()` answers.
pub fn register(ctx: &SessionContext, now_nanos: u64) {
    for udaf in aggregates() {
        ctx.register_udaf(udaf);
    }
    for udf in scalars(now_nanos) {
        ctx.register_udf(udf);
    }
}

/// The aggregate functions.
pub fn aggregates() -> Vec<AggregateUDF> {
    vec![AggregateUDF::from(HdrMerge::new())]
}

/// The scalar functions; `now()` replaces DataFusion's own.
pub fn scalars(now_nanos: u64) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(HdrQuantile::new()),
        ScalarUDF::from(Now::new(now_nanos)),
    ]
}

/// `hdr_merge` as an expression builder, for plans built without SQL text.
pub fn hdr_merge() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(HdrMerge::new()))
}

/// Timestamp columns and `now()` are UTC.
pub use crate::store::rollup::TIME_ZONE;
