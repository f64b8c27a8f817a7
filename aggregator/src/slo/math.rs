//! The burn-rate arithmetic (DESIGN "Math"), event-weighted: bad events and requests are summed
//! over every series an objective covers before any ratio is taken, never averaged as ratios.

use super::config::{AlertRule, Objective, ObjectiveKind, SLO_WINDOWS, Severity, budget_of};
use crate::state::RowCounts;
use crate::window::Window;

/// Requests and bad events over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub bad: u64,
}

impl Tally {
    /// Adds one series' counts over a window: its bad events are its errors (availability) or
    /// its requests over the threshold (latency, `le` the threshold's `requests_le_*` column).
    pub fn add_counts(&mut self, kind: ObjectiveKind, counts: &RowCounts, le: Option<usize>) {
        let bad = match (kind, le) {
            (ObjectiveKind::Availability, _) => counts.errors,
            (ObjectiveKind::Latency, Some(i)) => counts.requests.saturating_sub(counts.le[i]),
            (ObjectiveKind::Latency, None) | (ObjectiveKind::Cost, _) => 0,
        };
        self.add(Tally {
            requests: counts.requests,
            bad,
        });
    }

    /// Adds another tally (saturating: counts may be claimed by histogram points).
    pub fn add(&mut self, other: Tally) {
        self.requests = self.requests.saturating_add(other.requests);
        self.bad = self.bad.saturating_add(other.bad);
    }

    /// Bad events over requests; 0 with no request.
    pub fn ratio(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.bad as f64 / self.requests as f64
        }
    }

    /// How many times faster than the objective allows the budget is spent: the bad ratio over
    /// `1 − objective`. A window with no request burns 0.
    pub fn burn_rate(self, objective: f64) -> f64 {
        self.ratio() / budget_of(objective)
    }

    /// The share of the budget over these requests still unspent:
    /// `1 − bad / ((1 − objective) × requests)`; negative once overspent, 1 with no request.
    pub fn budget_remaining(self, objective: f64) -> f64 {
        if self.requests == 0 {
            return 1.0;
        }
        1.0 - self.bad as f64 / (budget_of(objective) * self.requests as f64)
    }
}

/// One objective's tallies over each of [`SLO_WINDOWS`], at one evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tallies(pub [Tally; SLO_WINDOWS.len()]);

impl Tallies {
    /// The tally over `window` (one of [`SLO_WINDOWS`]).
    pub fn get(&self, window: Window) -> Tally {
        SLO_WINDOWS
            .iter()
            .position(|w| *w == window)
            .map_or_else(Tally::default, |i| self.0[i])
    }

    /// The first rule of `severity` in `rules` whose two windows both burn faster than its
    /// rate, each with at least `min_requests` requests.
    pub fn firing_rule<'a>(
        &self,
        objective: &Objective,
        rules: &'a [AlertRule],
        severity: Severity,
    ) -> Option<&'a AlertRule> {
        rules
            .iter()
            .filter(|r| r.severity == severity)
            .find(|r| self.holds(objective, r))
    }

    /// Whether `rule`'s two windows both burn faster than its rate, each with at least
    /// `min_requests` requests (and one).
    pub fn holds(&self, objective: &Objective, rule: &AlertRule) -> bool {
        let (long, short) = rule.windows();
        [long, short].iter().all(|&w| {
            let t = self.get(w);
            t.requests >= objective.min_requests.max(1)
                && t.burn_rate(objective.objective) > rule.burn_rate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::config::SloConfig;

    /// Tallies of `bad` in a million requests on every window, but for the overrides.
    fn tallies(bad_per_million: u64, overrides: &[(Window, u64)]) -> Tallies {
        let mut t = Tallies::default();
        for (i, w) in SLO_WINDOWS.iter().enumerate() {
            let bad = overrides
                .iter()
                .find(|(o, _)| o == w)
                .map_or(bad_per_million, |(_, b)| *b);
            t.0[i] = Tally {
                requests: 1_000_000,
                bad,
            };
        }
        t
    }

    fn availability() -> Objective {
        SloConfig::default().objectives[0].clone()
    }

    #[test]
    fn errors_of_0_8_percent_at_99_95_burn_16_and_page() {
        let o = availability();
        // 0.8% errors on 1h and 5m, nothing elsewhere: 0.008 / 0.0005 = 16.
        let t = tallies(0, &[(Window::H1, 8_000), (Window::M5, 8_000)]);
        let burn = t.get(Window::H1).burn_rate(o.objective);
        assert!((burn - 16.0).abs() < 1e-9, "{burn}");
        let rule = t.firing_rule(&o, &o.alerts, Severity::Page).unwrap();
        assert_eq!((rule.long.as_str(), rule.short.as_str()), ("1h", "5m"));
        assert!(t.firing_rule(&o, &o.alerts, Severity::Ticket).is_none());
    }

    #[test]
    fn a_steady_0_2_percent_burns_4_everywhere_a_ticket_and_no_page() {
        let o = availability();
        let t = tallies(2_000, &[]);
        for w in SLO_WINDOWS {
            let burn = t.get(w).burn_rate(o.objective);
            assert!((burn - 4.0).abs() < 1e-9, "{w}: {burn}");
        }
        assert!(t.firing_rule(&o, &o.alerts, Severity::Page).is_none());
        let rule = t.firing_rule(&o, &o.alerts, Severity::Ticket).unwrap();
        assert_eq!((rule.long.as_str(), rule.short.as_str()), ("1d", "2h"));
    }

    #[test]
    fn one_day_at_4_two_hours_at_2_six_hours_at_0_9_is_no_ticket() {
        let o = availability();
        // Burn 4 is 2 000 bad per million at 99.95%; 2 is 1 000; 0.9 is 450.
        let t = tallies(2_000, &[(Window::H2, 1_000), (Window::H6, 450)]);
        assert!((t.get(Window::H6).burn_rate(o.objective) - 0.9).abs() < 1e-9);
        assert!(t.firing_rule(&o, &o.alerts, Severity::Ticket).is_none());
        assert!(t.firing_rule(&o, &o.alerts, Severity::Page).is_none());
    }

    #[test]
    fn events_are_weighted_not_ratios_averaged() {
        let mut busy = RowCounts {
            requests: 1_000_000,
            errors: 100,
            ..RowCounts::default()
        };
        let quiet = RowCounts {
            requests: 100,
            errors: 50,
            ..RowCounts::default()
        };
        let mut t = Tally::default();
        t.add_counts(ObjectiveKind::Availability, &busy, None);
        t.add_counts(ObjectiveKind::Availability, &quiet, None);
        // 150 bad in 1 000 100 requests, not the mean of 0.0001 and 0.5.
        assert_eq!(
            t,
            Tally {
                requests: 1_000_100,
                bad: 150
            }
        );
        assert_eq!(t.ratio(), 150.0 / 1_000_100.0);
        // Latency: bad are the requests over the threshold's column.
        busy.le[0] = 999_000;
        let mut l = Tally::default();
        l.add_counts(ObjectiveKind::Latency, &busy, Some(0));
        assert_eq!(
            l,
            Tally {
                requests: 1_000_000,
                bad: 1_000
            }
        );
    }

    #[test]
    fn budgets_are_the_decimal_difference() {
        assert_eq!(budget_of(0.9995), 0.0005);
        assert_eq!(budget_of(0.99), 0.01);
        assert_eq!(budget_of(0.999), 0.001);
        assert_eq!(budget_of(0.5), 0.5);
        // A ratio exactly at the budget burns exactly 1.
        let t = Tally {
            requests: 3_160_000,
            bad: 1_580,
        };
        assert_eq!(t.burn_rate(0.9995), 1.0);
    }

    #[test]
    fn budget_and_quiet_windows() {
        let o = availability();
        let spent_half = Tally {
            requests: 1_000_000,
            bad: 250,
        };
        assert!((spent_half.budget_remaining(o.objective) - 0.5).abs() < 1e-9);
        let overspent = Tally {
            requests: 1_000_000,
            bad: 1_000,
        };
        assert!((overspent.budget_remaining(o.objective) + 1.0).abs() < 1e-9);
        assert_eq!(Tally::default().burn_rate(o.objective), 0.0);
        assert_eq!(Tally::default().budget_remaining(o.objective), 1.0);
        // min_requests: a quiet service's handful of failures never fires.
        let mut quiet = o.clone();
        quiet.min_requests = 100;
        let mut t = Tallies::default();
        for tally in &mut t.0 {
            *tally = Tally {
                requests: 10,
                bad: 5,
            };
        }
        assert!(
            t.firing_rule(&quiet, &quiet.alerts, Severity::Page)
                .is_none()
        );
        assert!(t.firing_rule(&o, &o.alerts, Severity::Page).is_some());
    }
}
