//! Cost per recommendation by calendar period: the allocated cost and the recommendations of
//! every hour, UTC day and ISO week, per component and for the platform, with whether each
//! period's bill is complete, and which period the gauges report.
//!
//! A period is complete once it has ended and every hour in it has usage data (lines of at
//! most a day) from every provider that must bill (`cost.providers`, or every provider with
//! lines). The gauges report the latest complete period; an incomplete one is reported
//! instead once `cost.complete_after` has passed since its end, if every such provider has
//! lines in it. A period with no line at all is never reported, so no cost of 0 stands for a
//! bill not yet in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::allocate::{Allocated, HourUsage, Usage};
use super::lines::{Amount, HourCost};
use super::periods::{HOUR_NANOS, Period};

/// One period's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeriodFigures {
    /// Allocated cost per component ([`super::plan::Plan::components`] order).
    pub cost: Vec<Amount>,
    pub unallocated: Amount,
    /// Usage per component, and of the series no component covers.
    pub usage: Vec<Usage>,
    pub usage_unallocated: Usage,
    /// Compute's effective cost, and its `Dynamic` (spot) part.
    pub compute: i128,
    pub dynamic: i128,
    /// Whether any line falls in it.
    pub billed: bool,
    /// Providers with a line in it.
    pub providers: BTreeSet<String>,
    /// Its hours with usage data from every provider that must bill.
    pub hours_complete: u32,
    /// Whether it has ended and every hour in it is complete.
    pub complete: bool,
}

impl PeriodFigures {
    fn new(components: usize) -> Self {
        Self {
            cost: vec![Amount::default(); components],
            usage: vec![Usage::default(); components],
            ..Self::default()
        }
    }

    /// The platform's allocated cost: every component's, `unallocated` left out.
    pub fn platform_cost(&self) -> Amount {
        let mut total = Amount::default();
        for c in &self.cost {
            total.add(*c);
        }
        total
    }

    /// Every series' recommendations and requests, covered by a component or not.
    pub fn platform_usage(&self) -> Usage {
        let mut total = self.usage_unallocated;
        for u in &self.usage {
            total.add(*u);
        }
        total
    }

    /// Every line's cost, allocated or not.
    pub fn total_cost(&self) -> Amount {
        let mut total = self.platform_cost();
        total.add(self.unallocated);
        total
    }

    /// The share of compute cost priced `Dynamic`, where there is compute cost.
    pub fn dynamic_share(&self) -> Option<f64> {
        (self.compute != 0).then(|| self.dynamic as f64 / self.compute as f64)
    }
}

/// USD per recommendation, or `None` without recommendations (never 0 or infinite).
pub fn unit_cost(cost: i128, recommendations: u64) -> Option<i128> {
    (recommendations > 0).then(|| {
        // Rounded half away from zero, to the unit.
        let r = i128::from(recommendations);
        let q = cost / r;
        let rem = cost % r;
        q + if 2 * rem.abs() >= r { cost.signum() } else { 0 }
    })
}

/// The period the gauges report, per period kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub start: i64,
    pub complete: bool,
}

/// Every period's figures, and what the gauges report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Periods {
    /// By period kind, then start.
    pub figures: BTreeMap<(Period, i64), PeriodFigures>,
    /// The reported period of each kind.
    pub reported: BTreeMap<Period, Reported>,
    /// The latest complete period of each kind.
    pub latest_complete: BTreeMap<Period, i64>,
    /// The end of the latest hour with usage data from every provider that must bill.
    pub data_end: Option<i64>,
}

/// Works out every period's figures at `now` (UTC nanoseconds).
pub fn periods(
    components: usize,
    hours: &BTreeMap<i64, HourCost>,
    allocated: &Allocated,
    usage: &BTreeMap<i64, HourUsage>,
    required: &BTreeSet<String>,
    now: i64,
    complete_after: Duration,
) -> Periods {
    let mut out = Periods::default();
    let mut each = |hour: i64, f: &mut dyn FnMut(&mut PeriodFigures)| {
        for kind in Period::ALL {
            f(out
                .figures
                .entry((kind, kind.start(hour)))
                .or_insert_with(|| PeriodFigures::new(components)));
        }
    };
    for ((hour, c, _, _), amount) in allocated {
        each(*hour, &mut |p| match c {
            Some(c) => p.cost[*c].add(*amount),
            None => p.unallocated.add(*amount),
        });
    }
    for (&hour, u) in usage {
        each(hour, &mut |p| {
            for (slot, v) in p.usage.iter_mut().zip(&u.components) {
                slot.add(*v);
            }
            p.usage_unallocated.add(u.unallocated);
        });
    }
    for (&hour, cost) in hours {
        let complete = !required.is_empty() && required.is_subset(&cost.covered);
        if complete {
            // In order: the latest so far.
            out.data_end = Some(hour);
        }
        each(hour, &mut |p| {
            p.billed = true;
            p.providers.extend(cost.providers.iter().cloned());
            p.compute += cost.compute;
            p.dynamic += cost.dynamic;
            p.hours_complete += u32::from(complete);
        });
    }
    out.data_end = out.data_end.map(|h| h + HOUR_NANOS);
    let complete_after = i64::try_from(complete_after.as_nanos()).unwrap_or(i64::MAX);
    for ((kind, start), p) in &mut out.figures {
        let end = kind.next(*start);
        let hours = (end - *start) / HOUR_NANOS;
        p.complete = end <= now && i64::from(p.hours_complete) == hours;
    }
    for ((kind, start), p) in out.figures.iter().rev() {
        let end = kind.next(*start);
        if p.complete {
            out.latest_complete.entry(*kind).or_insert(*start);
        }
        let due = end <= now
            && now - end >= complete_after
            && p.billed
            && required.is_subset(&p.providers);
        if p.complete || due {
            out.reported.entry(*kind).or_insert(Reported {
                start: *start,
                complete: p.complete,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit_cost::periods::DAY_NANOS;

    /// $1 in units.
    const USD: i128 = 1_000_000_000_000;

    #[test]
    fn a_day_of_1_200_000_recommendations_and_1080_dollars_costs_0_0009_each() {
        let cost = 1_080 * USD;
        assert_eq!(unit_cost(cost, 1_200_000), Some(USD * 9 / 10_000));
        assert_eq!(unit_cost(cost, 0), None);
        // Rounded half away from zero: 2 / 3 of a unit is 1; −5 / 2 is −3.
        assert_eq!(unit_cost(2, 3), Some(1));
        assert_eq!(unit_cost(-5, 2), Some(-3));
    }

    /// An hour of `usd` on `component` 0 with `providers`' usage data.
    fn hour(providers: &[&str]) -> HourCost {
        HourCost {
            covered: providers.iter().map(|p| (*p).to_owned()).collect(),
            providers: providers.iter().map(|p| (*p).to_owned()).collect(),
            ..HourCost::default()
        }
    }

    #[test]
    fn a_day_is_reported_once_complete_and_an_incomplete_one_only_past_due() {
        // Days 10 and 11 fully billed by AWS and GCP; day 12 by AWS only so far.
        let required: BTreeSet<String> = ["AWS", "GCP"].map(String::from).into();
        let mut hours = BTreeMap::new();
        for h in 0..72 {
            let at = 10 * DAY_NANOS + h * HOUR_NANOS;
            let providers: &[&str] = if h < 48 { &["AWS", "GCP"] } else { &["AWS"] };
            hours.insert(at, hour(providers));
        }
        let figures = |hours: &BTreeMap<i64, HourCost>, now: i64, after: u64| {
            periods(
                1,
                hours,
                &Allocated::new(),
                &BTreeMap::new(),
                &required,
                now,
                Duration::from_secs(after * 3_600),
            )
        };
        // On day 13: day 12 lacks GCP, so day 11 is reported, complete; the data reaches the
        // end of day 11.
        let p = figures(&hours, 13 * DAY_NANOS + HOUR_NANOS, 48);
        assert_eq!(
            p.reported[&Period::Day],
            Reported {
                start: 11 * DAY_NANOS,
                complete: true
            }
        );
        assert_eq!(p.data_end, Some(12 * DAY_NANOS));
        assert!(!p.figures[&(Period::Day, 12 * DAY_NANOS)].complete);
        // Past `complete_after`, day 12 would be reported incomplete, but GCP has no line in it:
        // still day 11.
        let p = figures(&hours, 15 * DAY_NANOS, 48);
        assert_eq!(p.reported[&Period::Day].start, 11 * DAY_NANOS);
        // With GCP's lines for part of day 12, it is reported past due, incomplete.
        hours
            .get_mut(&(12 * DAY_NANOS))
            .unwrap()
            .providers
            .insert("GCP".into());
        let p = figures(&hours, 15 * DAY_NANOS, 48);
        assert_eq!(
            p.reported[&Period::Day],
            Reported {
                start: 12 * DAY_NANOS,
                complete: false
            }
        );
        assert_eq!(p.latest_complete[&Period::Day], 11 * DAY_NANOS);
        // The open day is never reported, however billed.
        let p = figures(&hours, 11 * DAY_NANOS + 5 * HOUR_NANOS, 48);
        assert_eq!(p.reported[&Period::Day].start, 10 * DAY_NANOS);
        assert_eq!(
            p.reported[&Period::Hour].start,
            11 * DAY_NANOS + 4 * HOUR_NANOS
        );
    }
}
