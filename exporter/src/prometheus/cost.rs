//! The cost families, from the latest cost evaluation, for the period of each kind the
//! evaluation reports (the latest complete one, or an incomplete one past
//! `cost.complete_after`): `recmeter_cost_usd{period,component}`,
//! `recmeter_cost_per_recommendation_usd{period,component}`,
//! `recmeter_cost_period_start_timestamp_seconds{period}`,
//! `recmeter_cost_period_complete{period}`, `recmeter_cost_dynamic_share_ratio{period}`,
//! `recmeter_cost_data_lag_seconds`, `recmeter_cost_restated_total{period}` and
//! `recmeter_cost_lines_excluded{reason}`. A period kind with no period to report has no
//! series: never a cost of 0 for a bill not in yet.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use recmeter_aggregator::unit_cost::{
    CostReport, CostStatus, PLATFORM, Period, UNALLOCATED, unit_cost, usd,
};

use super::provider::{Part, Provider, ReadFuture};

/// The cost exposition provider.
#[derive(Debug)]
pub struct CostProvider {
    pub status: Arc<CostStatus>,
}

impl Provider for CostProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            let latest = self.status.latest();
            let size_hint = 3_000 + latest.as_ref().map_or(0, |r| r.components.len() * 600);
            Ok(Part {
                collector: Box::new(CostFamilies { latest }),
                size_hint,
            })
        })
    }
}

#[derive(Debug)]
struct CostFamilies {
    latest: Option<Arc<CostReport>>,
}

/// One reported period's figures per component: (component, USD, USD per recommendation).
type Rows<'a> = Vec<(&'a str, f64, Option<f64>)>;

fn rows(report: &CostReport, kind: Period) -> Option<(i64, bool, Rows<'_>)> {
    let reported = report.periods.reported.get(&kind)?;
    let p = report.periods.figures.get(&(kind, reported.start))?;
    let mut rows = Vec::new();
    if !report.platform_only() {
        for (c, name) in report.components.iter().enumerate() {
            let unit = unit_cost(p.cost[c].effective, p.usage[c].recommendations);
            rows.push((name.as_str(), usd(p.cost[c].effective), unit.map(usd)));
        }
    }
    let platform = p.platform_cost().effective;
    let unit = unit_cost(platform, p.platform_usage().recommendations);
    rows.push((PLATFORM, usd(platform), unit.map(usd)));
    rows.push((UNALLOCATED, usd(p.unallocated.effective), None));
    Some((reported.start, reported.complete, rows))
}

impl Collector for CostFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(report) = &self.latest else {
            return Ok(());
        };
        let reported: Vec<(Period, (i64, bool, Rows<'_>))> = Period::ALL
            .iter()
            .filter_map(|k| Some((*k, rows(report, *k)?)))
            .collect();
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_usd",
            "Allocated effective cost of the reported period (the latest complete hour, UTC \
             day and ISO week) per component; `platform` is the sum of the components, \
             `unallocated` the lines no rule takes.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, (_, _, rows)) in &reported {
            for (component, cost, _) in rows {
                family
                    .encode_family(&[("period", kind.label()), ("component", component)])?
                    .encode_gauge(cost)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_per_recommendation_usd",
            "Allocated effective cost per recommendation served in the reported period; absent \
             for a component that served none.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, (_, _, rows)) in &reported {
            for (component, _, unit) in rows {
                if let Some(unit) = unit {
                    family
                        .encode_family(&[("period", kind.label()), ("component", component)])?
                        .encode_gauge(unit)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_period_start_timestamp_seconds",
            "The start of the period the cost gauges report, per period kind.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, (start, _, _)) in &reported {
            family
                .encode_family(&[("period", kind.label())])?
                .encode_gauge(&(*start as f64 / 1e9))?;
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_period_complete",
            "1 when the reported period has billing data for every hour from every provider; 0 \
             when it is reported incomplete, past cost.complete_after.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, (_, complete, _)) in &reported {
            family
                .encode_family(&[("period", kind.label())])?
                .encode_gauge(&i64::from(*complete))?;
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_dynamic_share_ratio",
            "The share of the reported period's compute cost priced Dynamic (spot).",
            None,
            MetricType::Gauge,
        )?;
        for (kind, (start, _, _)) in &reported {
            if let Some(share) = report
                .periods
                .figures
                .get(&(*kind, *start))
                .and_then(|p| p.dynamic_share())
            {
                family
                    .encode_family(&[("period", kind.label())])?
                    .encode_gauge(&share)?;
            }
        }
        if let Some(end) = report.periods.data_end {
            encoder
                .encode_descriptor(
                    "recmeter_cost_data_lag_seconds",
                    "How far the billing data is behind: now minus the end of the least \
                     advanced provider's latest usage hour.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&((report.at - end) as f64 / 1e9))?;
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_restated",
            "Complete periods whose cost a later bill changed, since the start.",
            None,
            MetricType::Counter,
        )?;
        for kind in Period::ALL {
            family
                .encode_family(&[("period", kind.label())])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                &report.restated.get(&kind).copied().unwrap_or(0),
                None,
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_cost_lines_excluded",
            "Cost lines in force left out of cost per recommendation, by reason (`currency`: \
             no rate in billing.usd_rates; `period`: a charge period that cannot be prorated).",
            None,
            MetricType::Gauge,
        )?;
        for reason in ["currency", "period"] {
            family
                .encode_family(&[("reason", reason)])?
                .encode_gauge(&report.excluded.get(reason).copied().map_or(0, |n| n as i64))?;
        }
        Ok(())
    }
}
