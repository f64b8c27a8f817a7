//! Cost lines and rejects as Arrow, the shape of the `cost_lines` and `cost_rejects` tables
//! and of their Parquet files: money `Decimal128(38, 12)`, times UTC nanoseconds, tags a map
//! of strings.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Decimal128Builder, Float64Builder, MapBuilder, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::cost::{CostLine, Reject};
use crate::error::{Error, Result};
use crate::store::rollup::TIME_ZONE;

/// Money's precision and scale.
pub const MONEY_PRECISION: u8 = 38;
pub const MONEY_SCALE: i8 = 12;

fn time() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from(TIME_ZONE)))
}

fn money() -> DataType {
    DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE)
}

/// The tags column: a map of string keys to string values.
fn tags_field() -> Field {
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
            ]
            .into(),
        ),
        false,
    );
    Field::new("tags", DataType::Map(Arc::new(entries), false), false)
}

/// The columns of `cost_lines`, FOCUS's names in snake_case.
pub fn cost_lines_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("charge_period_start", time(), false),
        Field::new("charge_period_end", time(), false),
        text("provider", false),
        text("billing_account_id", false),
        Field::new("billing_period_start", time(), true),
        text("sub_account_id", true),
        text("service_name", true),
        text("service_category", true),
        text("resource_id", true),
        text("resource_name", true),
        text("region", true),
        text("charge_category", true),
        text("charge_class", true),
        text("pricing_category", true),
        Field::new("pricing_quantity", DataType::Float64, true),
        text("pricing_unit", true),
        Field::new("consumed_quantity", DataType::Float64, true),
        text("consumed_unit", true),
        Field::new("billed_cost", money(), false),
        Field::new("effective_cost", money(), false),
        Field::new("list_cost", money(), true),
        text("billing_currency", false),
        tags_field(),
        text("source_object", false),
        Field::new("source_row", DataType::UInt64, false),
    ]))
}

/// The columns of `cost_rejects`.
pub fn cost_rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source_object", DataType::Utf8, false),
        Field::new("source_row", DataType::UInt64, false),
        Field::new("column", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

fn arrow(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("cannot build a cost batch: {e}"))
}

/// `lines` as one batch of `cost_lines`.
pub fn cost_lines_batch(lines: &[CostLine]) -> Result<RecordBatch> {
    let n = lines.len();
    let times = || TimestampNanosecondBuilder::with_capacity(n).with_timezone(TIME_ZONE);
    let texts = || StringBuilder::with_capacity(n, n * 16);
    let moneys = || {
        Decimal128Builder::with_capacity(n)
            .with_precision_and_scale(MONEY_PRECISION, MONEY_SCALE)
            .map_err(arrow)
    };
    let (mut start, mut end, mut period) = (times(), times(), times());
    let mut strings: Vec<StringBuilder> = (0..14).map(|_| texts()).collect();
    let (mut pricing_quantity, mut consumed_quantity) = (
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
    );
    let (mut billed, mut effective, mut list) = (moneys()?, moneys()?, moneys()?);
    let mut tags = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut source_object = texts();
    let mut source_row = UInt64Builder::with_capacity(n);
    for l in lines {
        start.append_value(l.charge_period_start);
        end.append_value(l.charge_period_end);
        period.append_option(l.billing_period_start);
        let cells: [Option<&str>; 14] = [
            Some(&l.provider),
            Some(&l.billing_account_id),
            l.sub_account_id.as_deref(),
            l.service_name.as_deref(),
            l.service_category.as_deref(),
            l.resource_id.as_deref(),
            l.resource_name.as_deref(),
            l.region.as_deref(),
            l.charge_category.as_deref(),
            l.charge_class.as_deref(),
            l.pricing_category.as_deref(),
            l.pricing_unit.as_deref(),
            l.consumed_unit.as_deref(),
            Some(&l.billing_currency),
        ];
        for (builder, cell) in strings.iter_mut().zip(cells) {
            builder.append_option(cell);
        }
        pricing_quantity.append_option(l.pricing_quantity);
        consumed_quantity.append_option(l.consumed_quantity);
        billed.append_value(l.billed_cost);
        effective.append_value(l.effective_cost);
        list.append_option(l.list_cost);
        for (k, v) in &l.tags {
            tags.keys().append_value(k);
            tags.values().append_value(v);
        }
        tags.append(true).map_err(arrow)?;
        source_object.append_value(&l.source_object);
        source_row.append_value(l.source_row);
    }
    let mut s = strings
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next = || s.next().ok_or_else(|| arrow("a text column is missing"));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        next()?, // provider
        next()?, // billing_account_id
        Arc::new(period.finish()),
        next()?, // sub_account_id
        next()?, // service_name
        next()?, // service_category
        next()?, // resource_id
        next()?, // resource_name
        next()?, // region
        next()?, // charge_category
        next()?, // charge_class
        next()?, // pricing_category
        Arc::new(pricing_quantity.finish()),
        next()?, // pricing_unit
        Arc::new(consumed_quantity.finish()),
        next()?, // consumed_unit
        Arc::new(billed.finish()),
        Arc::new(effective.finish()),
        Arc::new(list.finish()),
        next()?, // billing_currency
        Arc::new(tags.finish()),
        Arc::new(source_object.finish()),
        Arc::new(source_row.finish()),
    ];
    RecordBatch::try_new(cost_lines_schema(), columns).map_err(arrow)
}

/// `rejects` as one batch of `cost_rejects`.
pub fn cost_rejects_batch(rejects: &[Reject]) -> Result<RecordBatch> {
    let n = rejects.len();
    let texts = || StringBuilder::with_capacity(n, n * 32);
    let (mut object, mut column, mut reason, mut raw) = (texts(), texts(), texts(), texts());
    let mut row = UInt64Builder::with_capacity(n);
    for r in rejects {
        object.append_value(&r.source_object);
        row.append_value(r.source_row);
        column.append_value(&r.column);
        reason.append_value(&r.reason);
        raw.append_value(&r.raw);
    }
    RecordBatch::try_new(
        cost_rejects_schema(),
        vec![
            Arc::new(object.finish()),
            Arc::new(row.finish()),
            Arc::new(column.finish()),
            Arc::new(reason.finish()),
            Arc::new(raw.finish()),
        ],
    )
    .map_err(arrow)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Decimal128Array, MapArray, StringArray};

    use super::*;
    use crate::store::files::{parquet, read_parquet};

    #[test]
    fn lines_and_rejects_round_trip_through_parquet_exactly() {
        let line = CostLine {
            charge_period_start: 1_726_696_800_000_000_000,
            charge_period_end: 1_726_700_400_000_000_000,
            provider: "AWS".into(),
            billing_account_id: "1".into(),
            service_name: Some("AmazonS3".into()),
            billed_cost: 99_999_999_999_999_999_999_999_999_999_999_999_999,
            effective_cost: -1,
            billing_currency: "USD".into(),
            tags: [("team".to_owned(), "recs".to_owned())].into(),
            source_object: "bills/a.csv".into(),
            source_row: 7,
            ..CostLine::default()
        };
        let batch = cost_lines_batch(&[line.clone(), CostLine::default()]).unwrap();
        let back = read_parquet(parquet(&batch).unwrap()).unwrap();
        let b = &back[0];
        assert_eq!(b.schema(), cost_lines_schema());
        let billed = b
            .column_by_name("billed_cost")
            .unwrap()
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(billed.value(0), line.billed_cost);
        assert_eq!(
            billed.value_as_string(0),
            "99999999999999999999999999.999999999999"
        );
        let tags = b
            .column_by_name("tags")
            .unwrap()
            .as_any()
            .downcast_ref::<MapArray>()
            .unwrap();
        let first = tags.value(0);
        let keys = first
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(keys.value(0), "team");
        assert!(b.column_by_name("service_name").unwrap().is_null(1));

        let rejects = cost_rejects_batch(&[Reject {
            source_object: "bills/a.csv".into(),
            source_row: 3,
            column: "BilledCost".into(),
            reason: "not a decimal number".into(),
            raw: "1,5".into(),
        }])
        .unwrap();
        assert_eq!(rejects.num_rows(), 1);
        assert_eq!(rejects.schema(), cost_rejects_schema());
    }
}
