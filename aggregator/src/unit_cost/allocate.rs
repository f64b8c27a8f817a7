//! The hourly allocation: each hour's cost by component, shared cost split by the
//! components' requests in that hour (or by their fixed ratios). Splits are exact like
//! proration: every share but the last is rounded toward zero, and the last component with a
//! share takes the remainder, so the shares sum back to the cost. A shared hour with no
//! requests goes to `unallocated`.

use std::collections::BTreeMap;

use super::lines::{Amount, HourCost};
use super::plan::{Plan, Target};

/// Requests and recommendations of one component in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub recommendations: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.recommendations = self.recommendations.saturating_add(other.recommendations);
    }
}

/// One hour's usage: per component (in [`Plan::components`] order), and of the series no
/// component covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourUsage {
    pub components: Vec<Usage>,
    pub unallocated: Usage,
}

impl HourUsage {
    pub fn new(components: usize) -> Self {
        Self {
            components: vec![Usage::default(); components],
            unallocated: Usage::default(),
        }
    }

    /// Adds `usage` to component `c` (`None`: no component).
    pub fn add(&mut self, c: Option<usize>, usage: Usage) {
        match c.and_then(|c| self.components.get_mut(c)) {
            Some(u) => u.add(usage),
            None => self.unallocated.add(usage),
        }
    }

    /// Every series' usage, covered or not.
    pub fn total(&self) -> Usage {
        let mut t = self.unallocated;
        for u in &self.components {
            t.add(*u);
        }
        t
    }
}

/// `cost` split by `weights`: each share `cost × weight / Σweights` rounded toward zero, the
/// last non-zero weight taking the remainder. `None` when the weights sum to 0.
pub fn split(cost: i128, weights: &[u128]) -> Option<Vec<i128>> {
    // Weights whose sum reaches 2^64 (no hour has that many requests) are halved together
    // until it does not, so every product below fits in a u128: integers throughout.
    let mut weights = weights.to_vec();
    while weights.iter().fold(0u128, |a, w| a.saturating_add(*w)) >= 1 << 64 {
        weights.iter_mut().for_each(|w| *w >>= 1);
    }
    let total: u128 = weights.iter().sum();
    let last = weights.iter().rposition(|w| *w > 0)?;
    let (negative, magnitude) = (cost < 0, cost.unsigned_abs());
    // cost × w / total without overflow, as in proration: (q·total + r) × w / total, where
    // q × w ≤ cost and r × w < 2^128.
    let (q, r) = (magnitude / total, magnitude % total);
    let mut shares: Vec<i128> = weights
        .iter()
        .map(|&w| {
            let share = i128::try_from(q * w + r * w / total).unwrap_or(i128::MAX);
            if negative { -share } else { share }
        })
        .collect();
    // Each share is at most its part of `cost`, so neither the sum nor the remainder overflows.
    let given: i128 = shares.iter().sum();
    shares[last] += cost - given;
    Some(shares)
}

/// Allocated cost, by hour, component (`None`: `unallocated`), provider and service name.
pub type Allocated = BTreeMap<(i64, Option<usize>, String, String), Amount>;

/// Allocates `hours`' cost with `usage` (by hour start) under `plan`.
pub fn allocate(
    plan: &Plan,
    hours: &BTreeMap<i64, HourCost>,
    usage: &BTreeMap<i64, HourUsage>,
) -> Allocated {
    let mut out = Allocated::new();
    let by_ratio = plan.by_ratio();
    let ratios: Vec<u128> = plan
        .components
        .iter()
        .map(|c| c.ratio.unwrap_or(0).unsigned_abs())
        .collect();
    for (&hour, cost) in hours {
        let weights: Vec<u128> = if by_ratio {
            ratios.clone()
        } else {
            usage.get(&hour).map_or_else(Vec::new, |u| {
                u.components
                    .iter()
                    .map(|c| u128::from(c.requests))
                    .collect()
            })
        };
        for ((target, provider, service), amount) in &cost.pieces {
            let mut put = |c: Option<usize>, a: Amount| {
                out.entry((hour, c, provider.clone(), service.clone()))
                    .or_default()
                    .add(a);
            };
            match target {
                Target::Component(c) => put(Some(*c), *amount),
                Target::Unallocated => put(None, *amount),
                Target::Shared => {
                    match (
                        split(amount.effective, &weights),
                        split(amount.billed, &weights),
                    ) {
                        (Some(effective), Some(billed)) => {
                            for (c, (e, b)) in effective.into_iter().zip(billed).enumerate() {
                                if e != 0 || b != 0 {
                                    put(
                                        Some(c),
                                        Amount {
                                            effective: e,
                                            billed: b,
                                        },
                                    );
                                }
                            }
                        }
                        _ => put(None, *amount),
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit_cost::config::CostConfig;
    use crate::unit_cost::lines::HourCost;

    /// $1 in units.
    const USD: i128 = 1_000_000_000_000;

    #[test]
    fn splits_sum_back_and_the_last_share_takes_the_remainder() {
        assert_eq!(split(10, &[1, 1, 1]), Some(vec![3, 3, 4]));
        assert_eq!(split(10, &[1, 1, 0]), Some(vec![5, 5, 0]));
        assert_eq!(split(-10, &[1, 2]), Some(vec![-3, -7]));
        assert_eq!(split(10, &[0, 0]), None);
        assert_eq!(split(10, &[]), None);
        let big = i128::MAX / 3;
        let shares = split(big, &[u128::from(u64::MAX), 7, u128::from(u64::MAX)]).unwrap();
        assert_eq!(shares.iter().sum::<i128>(), big);
    }

    /// Two components, `ranker` (service `ranker`) and `front` (service `front*`).
    fn plan() -> Plan {
        let config: CostConfig = serde_json::from_str(
            r#"{"components": [{"name": "ranker", "services": ["ranker"]},
                               {"name": "front", "services": ["front*"]}],
                "allocation": [{"service": "Storage", "shared": true},
                               {"service": "Compute", "component": "ranker"}]}"#,
        )
        .unwrap();
        Plan::new(&config).unwrap()
    }

    #[test]
    fn shared_cost_follows_the_hours_requests() {
        let plan = plan();
        // Hour 0: $100 of shared storage, 3 000 requests of `ranker` and 1 000 of `front`:
        // $75 and $25. Hour 1: $10 shared and no request at all: unallocated. Compute goes
        // to `ranker` whatever the requests.
        let mut hours = BTreeMap::new();
        let mut h0 = HourCost::default();
        h0.pieces.insert(
            (Target::Shared, "AWS".into(), "Storage".into()),
            Amount {
                effective: 100 * USD,
                billed: 120 * USD,
            },
        );
        h0.pieces.insert(
            (Target::Component(0), "AWS".into(), "Compute".into()),
            Amount {
                effective: 7 * USD,
                billed: 7 * USD,
            },
        );
        hours.insert(0, h0);
        let mut h1 = HourCost::default();
        h1.pieces.insert(
            (Target::Shared, "AWS".into(), "Storage".into()),
            Amount {
                effective: 10 * USD,
                billed: 10 * USD,
            },
        );
        hours.insert(3_600, h1);
        let mut u0 = HourUsage::new(2);
        u0.add(
            Some(0),
            Usage {
                requests: 3_000,
                recommendations: 30_000,
            },
        );
        u0.add(
            Some(1),
            Usage {
                requests: 1_000,
                recommendations: 0,
            },
        );
        let usage = BTreeMap::from([(0, u0)]);
        let out = allocate(&plan, &hours, &usage);
        let get = |hour: i64, c: Option<usize>, service: &str| {
            out[&(hour, c, "AWS".to_owned(), service.to_owned())]
        };
        assert_eq!(
            get(0, Some(0), "Storage"),
            Amount {
                effective: 75 * USD,
                billed: 90 * USD
            }
        );
        assert_eq!(
            get(0, Some(1), "Storage"),
            Amount {
                effective: 25 * USD,
                billed: 30 * USD
            }
        );
        assert_eq!(get(0, Some(0), "Compute").effective, 7 * USD);
        assert_eq!(get(3_600, None, "Storage").effective, 10 * USD);
        assert_eq!(out.len(), 4);
    }
}
