//! The SLO families: `recmeter_slo_burn_rate{slo,window}`,
//! `recmeter_slo_error_budget_remaining_ratio{slo}`, `recmeter_slo_objective_ratio{slo}` and
//! `recmeter_slo_alert_firing{slo,severity}`, from the latest evaluation and the alerts' state.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use recmeter_aggregator::slo::{
    Evaluation, ObjectiveKind, SLO_WINDOWS, Severity, SloAlerts, SloConfig, SloStatus,
};

use super::provider::{Part, Provider, ReadFuture};

/// The SLO exposition provider.
#[derive(Debug)]
pub struct SloProvider {
    pub config: SloConfig,
    pub status: Arc<SloStatus>,
    pub alerts: Arc<SloAlerts>,
}

impl Provider for SloProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            let families = SloFamilies {
                objectives: self
                    .config
                    .objectives
                    .iter()
                    .map(|o| {
                        (
                            o.name.clone(),
                            (o.kind != ObjectiveKind::Cost).then_some(o.objective),
                        )
                    })
                    .collect(),
                latest: self.status.latest(),
                firing: self.alerts.firing(),
            };
            let size_hint = families.objectives.len() * 1_000 + 1_000;
            Ok(Part {
                collector: Box::new(families),
                size_hint,
            })
        })
    }
}

#[derive(Debug)]
struct SloFamilies {
    /// Every configured objective's name and target (`None` for a `cost` objective, which
    /// has no ratio, burn rate or budget).
    objectives: Vec<(String, Option<f64>)>,
    latest: Option<Arc<Evaluation>>,
    firing: Vec<(String, Severity)>,
}

impl Collector for SloFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "recmeter_slo_objective_ratio",
            "The share of good requests each objective aims for.",
            None,
            MetricType::Gauge,
        )?;
        for (slo, objective) in &self.objectives {
            let Some(objective) = objective else {
                continue;
            };
            family
                .encode_family(&[("slo", slo.as_str())])?
                .encode_gauge(objective)?;
        }
        if let Some(e) = &self.latest {
            let mut family = encoder.encode_descriptor(
                "recmeter_slo_burn_rate",
                "Bad events over requests, divided by the error budget (1 - objective), per \
                 rolling window; 1 spends the budget exactly in 30 days.",
                None,
                MetricType::Gauge,
            )?;
            for o in e
                .objectives
                .iter()
                .filter(|o| o.objective.kind != ObjectiveKind::Cost)
            {
                for w in SLO_WINDOWS {
                    family
                        .encode_family(&[
                            ("slo", o.objective.name.as_str()),
                            ("window", w.label()),
                        ])?
                        .encode_gauge(&o.burn_rate(w))?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "recmeter_slo_error_budget_remaining_ratio",
                "The share of the 30-day error budget left; negative once overspent.",
                None,
                MetricType::Gauge,
            )?;
            for o in e
                .objectives
                .iter()
                .filter(|o| o.objective.kind != ObjectiveKind::Cost)
            {
                family
                    .encode_family(&[("slo", o.objective.name.as_str())])?
                    .encode_gauge(&o.budget_remaining())?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_slo_alert_firing",
            "1 while the objective's alert of that severity fires.",
            None,
            MetricType::Gauge,
        )?;
        for (slo, _) in &self.objectives {
            for severity in [Severity::Page, Severity::Ticket, Severity::NoData] {
                let on = self.firing.iter().any(|(s, v)| s == slo && *v == severity);
                family
                    .encode_family(&[("slo", slo.as_str()), ("severity", severity.label())])?
                    .encode_gauge(&i64::from(on))?;
            }
        }
        Ok(())
    }
}
