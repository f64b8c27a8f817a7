//! The cost tables, registered through the catalog, over the latest cost evaluation:
//! `cost_hourly` (allocated cost per hour, component, provider and service), `usage_hourly`
//! (requests and recommendations per hour and component, one row each, so sums never repeat)
//! and `cost_per_recommendation` (per hour, UTC day and ISO week, per component, for the
//! platform and for `unallocated`). Money is `Decimal128(38, 12)` USD, as in `cost_lines`.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Decimal128Builder, StringBuilder, TimestampNanosecondBuilder,
    UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;

use super::evaluate::{CostReport, CostStatus};
use super::lines::Amount;
use super::plan::PLATFORM;
use super::report::unit_cost;
use crate::sql::catalog::{CatalogTable, Source, memory_table, timestamp};
use crate::store::history::History;
use crate::store::rollup::TIME_ZONE;

/// The three cost tables over `status`.
#[derive(Debug)]
pub struct CostTables;

impl CostTables {
    pub fn all(status: &Arc<CostStatus>) -> [Arc<dyn CatalogTable>; 3] {
        [Kind::Hourly, Kind::Usage, Kind::PerRecommendation].map(|kind| {
            Arc::new(CostTable {
                kind,
                status: status.clone(),
            }) as Arc<dyn CatalogTable>
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Hourly,
    Usage,
    PerRecommendation,
}

#[derive(Debug)]
struct CostTable {
    kind: Kind,
    status: Arc<CostStatus>,
}

fn money(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Decimal128(38, 12), nullable)
}

fn money_builder() -> Decimal128Builder {
    Decimal128Builder::new().with_data_type(DataType::Decimal128(38, 12))
}

fn time_builder() -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::new().with_timezone(TIME_ZONE)
}

impl CatalogTable for CostTable {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Hourly => "cost_hourly",
            Kind::Usage => "usage_hourly",
            Kind::PerRecommendation => "cost_per_recommendation",
        }
    }

    fn source(&self) -> Source {
        Source::Memory
    }

    fn provider(&self, _: Option<&Arc<History>>) -> Arc<dyn TableProvider> {
        let report = self.status.latest().unwrap_or_default();
        let (schema, columns) = match self.kind {
            Kind::Hourly => hourly(&report),
            Kind::Usage => usage(&report),
            Kind::PerRecommendation => per_recommendation(&report),
        };
        memory_table(schema, columns)
    }
}

/// `cost_hourly`: hour, component, provider, service_name, effective_cost, billed_cost.
fn hourly(report: &CostReport) -> (SchemaRef, Vec<ArrayRef>) {
    let schema = Arc::new(Schema::new(vec![
        timestamp("hour"),
        Field::new("component", DataType::Utf8, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("service_name", DataType::Utf8, true),
        money("effective_cost", false),
        money("billed_cost", false),
    ]));
    let mut hour = time_builder();
    let mut component = StringBuilder::new();
    let mut provider = StringBuilder::new();
    let mut service = StringBuilder::new();
    let mut effective = money_builder();
    let mut billed = money_builder();
    for ((h, c, p, s), amount) in &report.allocated {
        hour.append_value(*h);
        component.append_value(report.name(*c));
        provider.append_value(p);
        service.append_option((!s.is_empty()).then_some(s));
        effective.append_value(amount.effective);
        billed.append_value(amount.billed);
    }
    (
        schema,
        vec![
            Arc::new(hour.finish()),
            Arc::new(component.finish()),
            Arc::new(provider.finish()),
            Arc::new(service.finish()),
            Arc::new(effective.finish()),
            Arc::new(billed.finish()),
        ],
    )
}

/// `usage_hourly`: hour, component, requests, recommendations; no row for a component without
/// a request or recommendation in the hour.
fn usage(report: &CostReport) -> (SchemaRef, Vec<ArrayRef>) {
    let schema = Arc::new(Schema::new(vec![
        timestamp("hour"),
        Field::new("component", DataType::Utf8, false),
        Field::new("requests", DataType::UInt64, false),
        Field::new("recommendations", DataType::UInt64, false),
    ]));
    let mut hour = time_builder();
    let mut component = StringBuilder::new();
    let mut requests = UInt64Builder::new();
    let mut recommendations = UInt64Builder::new();
    for (h, u) in &report.usage {
        let each = u
            .components
            .iter()
            .enumerate()
            .map(|(c, u)| (Some(c), u))
            .chain([(None, &u.unallocated)]);
        for (c, u) in each {
            if u.requests == 0 && u.recommendations == 0 {
                continue;
            }
            hour.append_value(*h);
            component.append_value(report.name(c));
            requests.append_value(u.requests);
            recommendations.append_value(u.recommendations);
        }
    }
    (
        schema,
        vec![
            Arc::new(hour.finish()),
            Arc::new(component.finish()),
            Arc::new(requests.finish()),
            Arc::new(recommendations.finish()),
        ],
    )
}

/// `cost_per_recommendation`: period, period_start, component, effective_cost, billed_cost,
/// recommendations, cost_per_recommendation, complete. The cost is null for a period with no
/// bill line at all, and the unit cost null where either is missing (never 0 or infinite);
/// `unallocated` has no unit cost.
fn per_recommendation(report: &CostReport) -> (SchemaRef, Vec<ArrayRef>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("period", DataType::Utf8, false),
        timestamp("period_start"),
        Field::new("component", DataType::Utf8, false),
        money("effective_cost", true),
        money("billed_cost", true),
        Field::new("recommendations", DataType::UInt64, false),
        money("cost_per_recommendation", true),
        Field::new("complete", DataType::Boolean, false),
    ]));
    let mut period = StringBuilder::new();
    let mut start = time_builder();
    let mut component = StringBuilder::new();
    let mut effective = money_builder();
    let mut billed = money_builder();
    let mut recommendations = UInt64Builder::new();
    let mut unit = money_builder();
    let mut complete = BooleanBuilder::new();
    for ((kind, s), p) in &report.periods.figures {
        let mut rows: Vec<(&str, Amount, u64, bool)> = Vec::new();
        if !report.platform_only() {
            for (c, name) in report.components.iter().enumerate() {
                rows.push((name, p.cost[c], p.usage[c].recommendations, true));
            }
        }
        rows.push((
            PLATFORM,
            p.platform_cost(),
            p.platform_usage().recommendations,
            true,
        ));
        rows.push((
            super::config::UNALLOCATED,
            p.unallocated,
            p.usage_unallocated.recommendations,
            false,
        ));
        for (name, cost, recs, priced) in rows {
            period.append_value(kind.label());
            start.append_value(*s);
            component.append_value(name);
            let billed_period = p.billed;
            effective.append_option(billed_period.then_some(cost.effective));
            billed.append_option(billed_period.then_some(cost.billed));
            recommendations.append_value(recs);
            unit.append_option(
                (billed_period && priced)
                    .then(|| unit_cost(cost.effective, recs))
                    .flatten(),
            );
            complete.append_value(p.complete);
        }
    }
    (
        schema,
        vec![
            Arc::new(period.finish()),
            Arc::new(start.finish()),
            Arc::new(component.finish()),
            Arc::new(effective.finish()),
            Arc::new(billed.finish()),
            Arc::new(recommendations.finish()),
            Arc::new(unit.finish()),
            Arc::new(complete.finish()),
        ],
    )
}
