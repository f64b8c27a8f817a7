//! Cost per recommendation by calendar period: the allocated cost and the recommendations of
//! every hour, UTC day and ISO week, per component and for the platform, with whether each
//! period's bill is complete, and which period the gauges report.
//!
//! A period is complete once it has ended and every hour in it has usage data (lines of at
//! most a day) from every provider that must bill (`cost.providers`, or else every provider
//! with usage lines in the week before the period's end). The gauges report the latest
//! complete period; an incomplete one is reported instead once `cost.complete_after` has
//! passed since its end, if every such provider has usage lines in it. A period with no line at all is never reported, so no cost of 0 stands for a
//! bill not yet in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::allocate::{Allocated, HourUsage, Usage};
use super::lines::{Amount, HourCost};
use super::periods::{DAY_NANOS, HOUR_NANOS, Period};

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
    /// Providers with usage data (lines of at most a day) in it: monthly fees alone do not
    /// make a bill.
    pub providers: BTreeSet<String>,
    /// Whether it has ended and every hour in it has usage data from every provider that
    /// must bill.
    pub complete: bool,
    /// Whether it is reported though incomplete: `cost.complete_after` has passed since its
    /// end, and every provider that must bill has usage lines in it.
    pub due: bool,
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
    /// How far the usage data reaches: the end of the least advanced provider's latest usage
    /// hour (of `cost.providers`, or of every provider whose usage reaches within
    /// [`LAG_WINDOW`] of the most advanced one's).
    pub data_end: Option<i64>,
}

/// How far back a provider's usage lines make it one that must bill: a provider that
/// starts billing is not waited for before its first line, and one that stops is not waited
/// for a week after its last.
pub const ACTIVE: i64 = 7 * DAY_NANOS;

/// How far behind the most advanced provider another may be and still count for the data
/// lag: a provider that stopped billing stops counting after it.
pub const LAG_WINDOW: i64 = 35 * DAY_NANOS;

/// The hours each provider has usage data in.
type Coverage = BTreeMap<String, BTreeSet<i64>>;

/// The providers that must bill `[start, end)`: `configured` (`cost.providers`), or else
/// those with usage lines in the week before `end`.
fn required<'a>(
    configured: &'a BTreeSet<String>,
    coverage: &'a Coverage,
    start: i64,
    end: i64,
) -> Vec<&'a str> {
    if !configured.is_empty() {
        return configured.iter().map(String::as_str).collect();
    }
    let from = start.min(end - ACTIVE);
    coverage
        .iter()
        .filter(|(_, hours)| hours.range(from..end).next().is_some())
        .map(|(p, _)| p.as_str())
        .collect()
}

/// Works out every period's figures at `now` (UTC nanoseconds). `configured` is
/// `cost.providers` (empty: the providers with usage lines in the week before each period's
/// end).
pub fn periods(
    components: usize,
    hours: &BTreeMap<i64, HourCost>,
    allocated: &Allocated,
    usage: &BTreeMap<i64, HourUsage>,
    configured: &BTreeSet<String>,
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
    let mut coverage = Coverage::new();
    for (&hour, cost) in hours {
        for provider in &cost.covered {
            coverage.entry(provider.clone()).or_default().insert(hour);
        }
        each(hour, &mut |p| {
            p.billed = true;
            p.providers.extend(cost.covered.iter().cloned());
            p.compute = p.compute.saturating_add(cost.compute);
            p.dynamic = p.dynamic.saturating_add(cost.dynamic);
        });
    }
    // The data reaches as far as the least advanced provider's latest usage hour (none dated
    // ahead of the clock): of the configured providers, or of every provider whose usage
    // reaches within `LAG_WINDOW` of the most advanced one's, however late the bill.
    let latest = |p: &str| {
        coverage
            .get(p)
            .and_then(|h| h.range(..=now - HOUR_NANOS).next_back())
            .copied()
    };
    let front = coverage.keys().filter_map(|p| latest(p)).max();
    let every: Vec<&str> = if configured.is_empty() {
        coverage
            .keys()
            .map(String::as_str)
            .filter(|p| {
                latest(p)
                    .zip(front)
                    .is_some_and(|(l, f)| f - l <= LAG_WINDOW)
            })
            .collect()
    } else {
        configured.iter().map(String::as_str).collect()
    };
    out.data_end = every
        .iter()
        .map(|p| {
            coverage
                .get(*p)
                .and_then(|h| h.range(..=now - HOUR_NANOS).next_back())
                .map(|h| h + HOUR_NANOS)
        })
        .min()
        .flatten();
    let complete_after = i64::try_from(complete_after.as_nanos()).unwrap_or(i64::MAX);
    for ((kind, start), p) in &mut out.figures {
        let end = kind.next(*start);
        let must = required(configured, &coverage, *start, end);
        let hours = usize::try_from((end - *start) / HOUR_NANOS).unwrap_or(usize::MAX);
        // Every hour covered by every provider that must bill.
        let covered = |p: &str| {
            coverage
                .get(p)
                .is_some_and(|h| h.range(*start..end).count() == hours)
        };
        p.complete = end <= now && !must.is_empty() && must.iter().all(|p| covered(p));
        p.due = end <= now
            && now - end >= complete_after
            && !must.is_empty()
            && p.billed
            && must.iter().all(|m| p.providers.contains(*m));
    }
    for ((kind, start), p) in out.figures.iter().rev() {
        if p.complete {
            out.latest_complete.entry(*kind).or_insert(*start);
        }
        if p.complete || p.due {
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

    /// $1 in units.
    const USD: i128 = 1_000_000_000_000;

    #[test]
    fn without_cost_providers_a_provider_must_bill_from_its_first_line_until_a_week_after_its_last()
    {
        // AWS bills days 0 to 20; GCP starts on day 5 and stops after day 9.
        let mut hours = BTreeMap::new();
        for h in 0..21 * 24 {
            let day = h / 24;
            let providers: &[&str] = if (5..10).contains(&day) {
                &["AWS", "GCP"]
            } else {
                &["AWS"]
            };
            hours.insert(h * HOUR_NANOS, hour(providers));
        }
        // GCP's day 7 comes late: hours 0 to 11 only.
        for h in 7 * 24 + 12..8 * 24 {
            hours
                .get_mut(&(h * HOUR_NANOS))
                .unwrap()
                .covered
                .remove("GCP");
        }
        let p = periods(
            1,
            &hours,
            &Allocated::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
            21 * DAY_NANOS + HOUR_NANOS,
            Duration::from_secs(48 * 3_600),
        );
        let complete = |day: i64| p.figures[&(Period::Day, day * DAY_NANOS)].complete;
        // Before GCP's first line, AWS alone makes a day complete.
        assert!(complete(0) && complete(4));
        // GCP's late day 7 is incomplete; its other days are complete.
        assert!(complete(5) && complete(6) && !complete(7) && complete(8) && complete(9));
        // GCP is waited for while its last line (day 9) is within the week before a day's
        // end: to day 15. From day 16 on, AWS alone completes a day.
        assert!(!complete(10) && !complete(15));
        assert!(complete(16) && complete(20));
        assert_eq!(p.reported[&Period::Day].start, 20 * DAY_NANOS);
        // The lag still counts GCP, 11 days behind AWS (within 35 days).
        assert_eq!(p.data_end, Some(10 * DAY_NANOS));
        // With no usage line at all, a period is never due, whatever its monthly fees.
        let mut fees = BTreeMap::new();
        for h in 0..3 * 24 {
            let mut cost = HourCost::default();
            cost.providers.insert("AWS".into());
            fees.insert(h * HOUR_NANOS, cost);
        }
        let p = periods(
            1,
            &fees,
            &Allocated::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
            30 * DAY_NANOS,
            Duration::from_secs(48 * 3_600),
        );
        assert!(p.reported.is_empty(), "{:?}", p.reported);
        assert_eq!(p.data_end, None);
    }

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
        // GCP's monthly fee covers day 12 too, but says nothing of its usage: still day 11.
        for h in 48..72 {
            let at = 10 * DAY_NANOS + h * HOUR_NANOS;
            hours.get_mut(&at).unwrap().providers.insert("GCP".into());
        }
        let p = figures(&hours, 15 * DAY_NANOS, 48);
        assert_eq!(p.reported[&Period::Day].start, 11 * DAY_NANOS);
        // With GCP's usage lines for part of day 12, it is reported past due, incomplete.
        hours
            .get_mut(&(12 * DAY_NANOS))
            .unwrap()
            .covered
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
