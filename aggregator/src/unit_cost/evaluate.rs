//! The cost evaluation on recmeter's clock: the lines in force read anew whenever the billing
//! ledger changes, the requests and recommendations per component per hour read from the
//! rollups (the final hours once, the open ones at every evaluation), the hourly allocation,
//! and the figures per period, published for `/metrics`, the SQL tables and the cost objective.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::allocate::{Allocated, HourUsage, Usage, allocate};
use super::config::CostConfig;
use super::lines::{Amount, HourlyCost, LINES_SQL, LineReader};
use super::periods::{DAY_NANOS, HOUR_NANOS, Period};
use super::plan::{Membership, PLATFORM, Plan};
use super::prorate::MAX_HOURS;
use super::report::{Periods, periods, unit_cost};
use crate::billing::BillingLedger;
use crate::clock::MINUTE_NANOS;
use crate::error::Result;
use crate::record::SeriesKey;
use crate::service::AggregatorHandle;
use crate::sql::{HourSink, QueryEngine};
use crate::state::RowCounts;

/// One evaluation's figures.
#[derive(Debug, Clone, Default)]
pub struct CostReport {
    /// recmeter's clock at the evaluation, UTC nanoseconds.
    pub at: i64,
    /// The components' names, in configuration order.
    pub components: Vec<String>,
    /// The hourly allocation: `cost_hourly`.
    pub allocated: Allocated,
    /// Requests and recommendations per component per hour: `usage_hourly`.
    pub usage: BTreeMap<i64, HourUsage>,
    /// Every period's figures, and which the gauges report.
    pub periods: Periods,
    /// Complete periods whose cost a later bill changed, per kind, since the start.
    pub restated: BTreeMap<Period, u64>,
    /// Lines left out, by reason.
    pub excluded: BTreeMap<&'static str, u64>,
}

impl CostReport {
    /// The name of component `c` (`None`: `unallocated`).
    pub fn name(&self, c: Option<usize>) -> &str {
        c.map_or(super::config::UNALLOCATED, |c| &self.components[c])
    }

    /// Whether the only component is the implicit `platform` (so its figures are the
    /// platform's, shown once).
    pub fn platform_only(&self) -> bool {
        self.components.len() == 1 && self.components[0] == PLATFORM
    }

    /// The platform's USD per recommendation on the latest complete day, with the day's
    /// start; `None` inside when it served no recommendation.
    pub fn latest_complete_day(&self) -> Option<(i64, Option<f64>)> {
        let start = *self.periods.latest_complete.get(&Period::Day)?;
        let p = self.periods.figures.get(&(Period::Day, start))?;
        let unit = unit_cost(
            p.platform_cost().effective,
            p.platform_usage().recommendations,
        );
        Some((start, unit.map(usd)))
    }
}

/// Units of `10^-12` USD as dollars.
pub fn usd(units: i128) -> f64 {
    units as f64 / 1e12
}

/// The latest evaluation, for `/metrics`, the tables and the cost objective.
#[derive(Debug, Default)]
pub struct CostStatus {
    latest: parking_lot::RwLock<Option<Arc<CostReport>>>,
}

impl CostStatus {
    /// The latest evaluation, if one ran.
    pub fn latest(&self) -> Option<Arc<CostReport>> {
        self.latest.read().clone()
    }

    fn set(&self, report: Arc<CostReport>) {
        *self.latest.write() = Some(report);
    }
}

/// Adds the hour rows [`QueryEngine::hour_sums`] streams into usage per component.
struct UsageSink {
    plan: Arc<Plan>,
    membership: Membership,
    hours: BTreeMap<i64, HourUsage>,
}

impl HourSink for UsageSink {
    fn add(&mut self, key: &SeriesKey, hour: u64, counts: &RowCounts) {
        let c = self.membership.of(&self.plan, key);
        let start = i64::try_from(hour.saturating_mul(MINUTE_NANOS)).unwrap_or(i64::MAX);
        self.hours
            .entry(start)
            .or_insert_with(|| HourUsage::new(self.plan.components.len()))
            .add(
                c,
                Usage {
                    requests: counts.requests,
                    recommendations: counts.recommendations,
                },
            );
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// The ledger's generation the lines were read at.
    generation: Option<u64>,
    cost: Arc<HourlyCost>,
    /// The final hours' usage, read once each.
    final_usage: BTreeMap<i64, HourUsage>,
    /// The hours `[start, end)` read into `final_usage`.
    read: Option<(i64, i64)>,
    membership: Membership,
    /// Each complete period's total cost at the last evaluation.
    complete_totals: BTreeMap<(Period, i64), Amount>,
    restated: BTreeMap<Period, u64>,
}

/// Works out cost per recommendation (see the module's documentation).
#[derive(Debug)]
pub struct CostEvaluator {
    config: CostConfig,
    plan: Arc<Plan>,
    rates: Arc<BTreeMap<String, i128>>,
    engine: Arc<QueryEngine>,
    aggregator: AggregatorHandle,
    ledger: Arc<BillingLedger>,
    status: Arc<CostStatus>,
    /// How long ago a span may have ended and still be counted (`ingest.max_span_age`).
    max_age_nanos: i64,
    inner: tokio::sync::Mutex<Inner>,
}

/// How far back usage is read at least: the last full ISO week and the one before.
const USAGE_WEEKS: i64 = 2;

impl CostEvaluator {
    /// An evaluator of `config` (validated), pricing other currencies at `rates` (USD per
    /// unit, in units of `10^-12`).
    pub fn new(
        config: &CostConfig,
        rates: BTreeMap<String, i128>,
        engine: Arc<QueryEngine>,
        aggregator: AggregatorHandle,
        ledger: Arc<BillingLedger>,
        status: Arc<CostStatus>,
        max_span_age: std::time::Duration,
    ) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            plan: Arc::new(Plan::new(config)?),
            rates: Arc::new(rates),
            engine,
            aggregator,
            ledger,
            status,
            max_age_nanos: i64::try_from(max_span_age.as_nanos()).unwrap_or(i64::MAX),
            inner: tokio::sync::Mutex::new(Inner::default()),
        })
    }

    /// Requests and recommendations per component of the hours `[start, end)` (UTC
    /// nanoseconds, whole hours), from `latency_hours`.
    async fn usage(
        &self,
        membership: &mut Membership,
        start: i64,
        end: i64,
    ) -> Result<BTreeMap<i64, HourUsage>> {
        let minutes = |t: i64| u64::try_from(t / MINUTE_NANOS as i64).unwrap_or(0);
        let sink = UsageSink {
            plan: self.plan.clone(),
            membership: std::mem::take(membership),
            hours: BTreeMap::new(),
        };
        let sink = self
            .engine
            .hour_sums(minutes(start)..minutes(end), sink)
            .await?;
        *membership = sink.membership;
        Ok(sink.hours)
    }

    /// Evaluates at the clock's reading and publishes the result.
    pub async fn evaluate(&self) -> Result<Arc<CostReport>> {
        let now = i64::try_from(self.aggregator.clock().now_nanos()).unwrap_or(i64::MAX);
        let mut inner = self.inner.lock().await;
        let generation = self.ledger.generation();
        if inner.generation != Some(generation) {
            let reader = LineReader::new(self.plan.clone(), self.rates.clone());
            let reader = self.engine.internal_batches(LINES_SQL, reader).await?;
            let cost = reader.finish();
            if !cost.excluded.is_empty() {
                tracing::warn!(
                    excluded = ?cost.excluded,
                    "Cost lines left out of cost per recommendation: a currency without a rate \
                     in billing.usd_rates, or a charge period that cannot be prorated."
                );
            }
            inner.cost = Arc::new(cost);
            inner.generation = Some(generation);
        }
        let cost = inner.cost.clone();
        // Usage from the first hour billed, or two weeks back at least, to now.
        let open_hour = Period::Hour.start(now);
        let week = Period::Week.start(now);
        let first = cost
            .hours
            .keys()
            .next()
            .map_or(week, |h| (*h).min(week))
            .min(week - (USAGE_WEEKS - 1) * 7 * DAY_NANOS)
            .max(open_hour - MAX_HOURS * HOUR_NANOS)
            .max(0);
        // Hours before `final_end` can no longer change.
        let final_end = Period::Hour
            .start(now.saturating_sub(self.max_age_nanos))
            .min(open_hour);
        let mut missing = Vec::new();
        match inner.read {
            None => missing.push((first, final_end)),
            Some((lo, hi)) => {
                missing.push((first, lo.min(final_end)));
                missing.push((hi.max(first), final_end));
            }
        }
        missing.retain(|(a, b)| a < b);
        for (start, end) in missing {
            let hours = self.usage(&mut inner.membership, start, end).await?;
            inner.final_usage.extend(hours);
        }
        inner.read = Some(match inner.read {
            None => (first, final_end),
            Some((lo, hi)) => (lo.min(first), hi.max(final_end)),
        });
        // The open hours (their rows so far: `latency_hours` holds the current hour's too),
        // at every evaluation.
        let mut usage = inner.final_usage.clone();
        let open = self
            .usage(&mut inner.membership, final_end, open_hour + HOUR_NANOS)
            .await?;
        usage.extend(open);
        let allocated = allocate(&self.plan, &cost.hours, &usage);
        let configured: BTreeSet<String> = self.config.providers.iter().cloned().collect();
        let periods = periods(
            self.plan.components.len(),
            &cost.hours,
            &allocated,
            &usage,
            &configured,
            now,
            self.config.complete_after,
        );
        // A complete period whose cost changed since the last evaluation was restated.
        let totals: BTreeMap<(Period, i64), Amount> = periods
            .figures
            .iter()
            .filter(|(_, p)| p.complete)
            .map(|(k, p)| (*k, p.total_cost()))
            .collect();
        let inner = &mut *inner;
        for (key, before) in &inner.complete_totals {
            let after = periods
                .figures
                .get(key)
                .map_or_else(Amount::default, |p| p.total_cost());
            if after != *before {
                *inner.restated.entry(key.0).or_default() += 1;
                tracing::info!(
                    period = key.0.label(),
                    start = key.1,
                    before = usd(before.effective),
                    after = usd(after.effective),
                    "A complete period's cost was restated by a later bill."
                );
            }
        }
        inner.complete_totals = totals;
        let report = Arc::new(CostReport {
            at: now,
            components: self
                .plan
                .components
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            allocated,
            usage,
            periods,
            restated: inner.restated.clone(),
            excluded: cost.excluded.clone(),
        });
        self.status.set(report.clone());
        Ok(report)
    }
}
