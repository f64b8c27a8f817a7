//! The SQL tables of the SLO state, registered through the catalog: `slo_status` (the latest
//! evaluation: one row per objective and window, equal to the `recmeter_slo_*` gauges) and
//! `slo_alerts` (every transition kept, with the burn rates that made it).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;

use super::alerts::SloAlerts;
use super::config::{ObjectiveKind, SLO_WINDOWS};
use super::evaluate::SloStatus;
use crate::sql::catalog::{CatalogTable, Source, memory_table as table, timestamp};
use crate::store::history::History;
use crate::store::rollup::TIME_ZONE;

/// `slo_status`: slo, window, requests, bad, ratio, burn_rate, evaluated_at.
#[derive(Debug)]
pub struct SloStatusTable(pub Arc<SloStatus>);

impl CatalogTable for SloStatusTable {
    fn name(&self) -> &str {
        "slo_status"
    }

    fn source(&self) -> Source {
        Source::Memory
    }

    fn provider(&self, _: Option<&Arc<History>>) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("slo", DataType::Utf8, false),
            Field::new("window", DataType::Utf8, false),
            Field::new("requests", DataType::UInt64, false),
            Field::new("bad", DataType::UInt64, false),
            Field::new("ratio", DataType::Float64, false),
            Field::new("burn_rate", DataType::Float64, false),
            timestamp("evaluated_at"),
        ]));
        let mut slo = StringBuilder::new();
        let mut window = StringBuilder::new();
        let mut requests = UInt64Builder::new();
        let mut bad = UInt64Builder::new();
        let mut ratio = Float64Builder::new();
        let mut burn = Float64Builder::new();
        let mut at = TimestampNanosecondBuilder::new().with_timezone(TIME_ZONE);
        if let Some(e) = self.0.latest() {
            // A `cost` objective has no events, so no windows.
            let counted = e
                .objectives
                .iter()
                .filter(|o| o.objective.kind != ObjectiveKind::Cost);
            for o in counted {
                for w in SLO_WINDOWS {
                    let t = o.tallies.get(w);
                    slo.append_value(&o.objective.name);
                    window.append_value(w.label());
                    requests.append_value(t.requests);
                    bad.append_value(t.bad);
                    ratio.append_value(t.ratio());
                    burn.append_value(o.burn_rate(w));
                    at.append_value(i64::try_from(e.at_unix_nanos).unwrap_or(i64::MAX));
                }
            }
        }
        table(
            schema,
            vec![
                Arc::new(slo.finish()),
                Arc::new(window.finish()),
                Arc::new(requests.finish()),
                Arc::new(bad.finish()),
                Arc::new(ratio.finish()),
                Arc::new(burn.finish()),
                Arc::new(at.finish()),
            ],
        )
    }
}

/// `slo_alerts`: at, slo, severity, state (`firing` or `resolved`), budget_remaining and one
/// `burn_rate_<window>` column per burn-rate window.
#[derive(Debug)]
pub struct SloAlertsTable(pub Arc<SloAlerts>);

impl CatalogTable for SloAlertsTable {
    fn name(&self) -> &str {
        "slo_alerts"
    }

    fn source(&self) -> Source {
        Source::Memory
    }

    fn provider(&self, _: Option<&Arc<History>>) -> Arc<dyn TableProvider> {
        let mut fields = vec![
            timestamp("at"),
            Field::new("slo", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("budget_remaining", DataType::Float64, false),
        ];
        fields.extend(
            SLO_WINDOWS
                .iter()
                .map(|w| Field::new(format!("burn_rate_{w}"), DataType::Float64, true)),
        );
        let schema = Arc::new(Schema::new(fields));
        let transitions = self.0.transitions();
        let mut at = TimestampNanosecondBuilder::new().with_timezone(TIME_ZONE);
        let mut slo = StringBuilder::new();
        let mut severity = StringBuilder::new();
        let mut state = StringBuilder::new();
        let mut budget = Float64Builder::new();
        let mut burns: Vec<Float64Builder> =
            SLO_WINDOWS.iter().map(|_| Float64Builder::new()).collect();
        for t in &transitions {
            at.append_value(i64::try_from(t.at_unix_nanos).unwrap_or(i64::MAX));
            slo.append_value(&t.slo);
            severity.append_value(t.severity.label());
            state.append_value(if t.firing { "firing" } else { "resolved" });
            budget.append_value(t.budget_remaining);
            for (b, w) in burns.iter_mut().zip(SLO_WINDOWS) {
                b.append_option(t.burn_rates.get(w.label()).copied());
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(at.finish()),
            Arc::new(slo.finish()),
            Arc::new(severity.finish()),
            Arc::new(state.finish()),
            Arc::new(budget.finish()),
        ];
        columns.extend(burns.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        table(schema, columns)
    }
}
