//! `[slo]`: the service level objectives recmeter tracks, and the multi-window multi-burn-rate
//! alert table each one is evaluated against.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AggregatorConfig, InvalidField};
use crate::state::LATENCY_BUCKETS_NANOS;
use crate::window::Window;

/// The windows burn rates are computed over, shortest first.
pub const SLO_WINDOWS: [Window; 8] = [
    Window::M5,
    Window::M30,
    Window::H1,
    Window::H2,
    Window::H6,
    Window::D1,
    Window::D3,
    Window::D30,
];

/// Most objectives, and most alert rules per objective: an evaluation costs series × objectives.
pub const MAX_OBJECTIVES: usize = 100;
pub const MAX_ALERT_RULES: usize = 16;

/// A `cost` objective's threshold by default: the platform's target, USD per recommendation.
pub const DEFAULT_COST_THRESHOLD: f64 = 0.001;

/// The window the error budget is counted over.
pub const BUDGET_WINDOW: Window = Window::D30;

/// `[slo]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// How often the objectives are evaluated, on recmeter's clock. Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// An objective whose series got no request for this long fires its `no_data` alert.
    /// Default: `"10m"`.
    #[serde(with = "humantime_serde")]
    pub no_data_after: Duration,
    /// The objectives. Listing any replaces the defaults (the platform's targets:
    /// `availability` 0.9995 and `latency` 0.99 of requests within 0.2 s, over every series).
    pub objectives: Vec<Objective>,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self {
            evaluation_interval: Duration::from_secs(30),
            no_data_after: Duration::from_secs(600),
            objectives: vec![
                Objective::new("availability", ObjectiveKind::Availability, 0.9995, None),
                Objective::new("latency", ObjectiveKind::Latency, 0.99, Some(0.2)),
            ],
        }
    }
}

/// What an objective counts as a bad event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// A request that failed.
    Availability,
    /// A request slower than the objective's `threshold`.
    Latency,
    /// No events: a threshold on the platform's cost per recommendation on the latest
    /// complete UTC day (`threshold`, USD, default 0.001), with no burn rate. It fires as a
    /// `ticket`.
    Cost,
}

impl ObjectiveKind {
    /// The label value (`availability`, `latency`).
    pub const fn label(self) -> &'static str {
        match self {
            ObjectiveKind::Availability => "availability",
            ObjectiveKind::Latency => "latency",
            ObjectiveKind::Cost => "cost",
        }
    }
}

/// One `[[slo.objectives]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// Its name: the `slo` label, `[a-zA-Z_][a-zA-Z0-9_]*`, unique.
    pub name: String,
    pub kind: ObjectiveKind,
    /// The share of good requests aimed for, e.g. 0.9995 (not for `cost`).
    #[serde(default)]
    pub objective: f64,
    /// For `latency`: the bound in seconds a good request ends within. It must be one of
    /// `aggregator.latency_thresholds` (counted exactly) and one of `recs_latency_seconds`'
    /// bucket bounds (so the Prometheus rules can express it). For `cost`: USD per
    /// recommendation, default 0.001.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Services it covers (globs, `*` and `?`). Default: every one.
    #[serde(default = "every")]
    pub services: Vec<String>,
    /// Endpoints it covers (globs). Default: every one.
    #[serde(default = "every")]
    pub endpoints: Vec<String>,
    /// A window with fewer requests than this never fires. Default: 0.
    #[serde(default)]
    pub min_requests: u64,
    /// Its alert table. Default: [`default_alerts`].
    #[serde(default = "default_alerts")]
    pub alerts: Vec<AlertRule>,
}

fn every() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Objective {
    /// An objective over every series, with no `min_requests` and the default alert table.
    pub fn new(name: &str, kind: ObjectiveKind, objective: f64, threshold: Option<f64>) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            objective,
            threshold,
            services: every(),
            endpoints: every(),
            min_requests: 0,
            alerts: default_alerts(),
        }
    }

    /// A `cost` objective's threshold, USD per recommendation.
    pub fn cost_threshold(&self) -> f64 {
        self.threshold.unwrap_or(DEFAULT_COST_THRESHOLD)
    }

    /// The error budget: the share of requests that may be bad.
    pub fn budget(&self) -> f64 {
        budget_of(self.objective)
    }
}

/// The error budget `1 − objective`, worked out on the objective's decimal digits: for
/// 0.9995 the double nearest 0.0005, not the 0.000499999999999945 of a float subtraction, so
/// a burn of exactly 1 (or 14.4) compares as such.
pub fn budget_of(objective: f64) -> f64 {
    let shown = objective.to_string();
    if let Some(fraction) = shown.strip_prefix("0.")
        && !fraction.is_empty()
        && fraction.len() <= 18
        && let Ok(digits) = fraction.parse::<u64>()
    {
        let scale = 10u64.pow(fraction.len() as u32);
        let rest = scale - digits;
        let text = format!("0.{rest:0width$}", width = fraction.len());
        if let Ok(budget) = text.parse::<f64>() {
            return budget;
        }
    }
    1.0 - objective
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wake someone: the budget goes within hours.
    Page,
    /// Look during working hours: the budget goes within days.
    Ticket,
    /// The objective's series got no request for `slo.no_data_after`.
    NoData,
}

impl Severity {
    /// The label value (`page`, `ticket`, `no_data`).
    pub const fn label(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
            Severity::NoData => "no_data",
        }
    }
}

/// One row of an alert table: fires when the burn rate is over `burn_rate` on both windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// `page` or `ticket`.
    pub severity: Severity,
    /// The long window (e.g. `1h`), which says the burn is real.
    pub long: String,
    /// The short window (e.g. `5m`), which says it is still going on.
    pub short: String,
    /// The burn rate both windows must exceed.
    pub burn_rate: f64,
    /// How long the condition must hold before the alert fires. Default: at once.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Option<Duration>,
}

impl AlertRule {
    /// The rule's windows, once checked by [`SloConfig::validate`].
    pub fn windows(&self) -> (Window, Window) {
        (
            self.long.parse().unwrap_or(Window::D30),
            self.short.parse().unwrap_or(Window::D30),
        )
    }
}

/// The alert table of the Google SRE workbook: page on 2% of the 30-day budget in 1 h or 5% in
/// 6 h, ticket on 10% in 3 days (as 1d/2h at 3 and 3d/6h at 1).
pub fn default_alerts() -> Vec<AlertRule> {
    [
        (Severity::Page, "1h", "5m", 14.4),
        (Severity::Page, "6h", "30m", 6.0),
        (Severity::Ticket, "1d", "2h", 3.0),
        (Severity::Ticket, "3d", "6h", 1.0),
    ]
    .into_iter()
    .map(|(severity, long, short, burn_rate)| AlertRule {
        severity,
        long: long.to_owned(),
        short: short.to_owned(),
        burn_rate,
        for_: None,
    })
    .collect()
}

/// Whether `name` is a Prometheus label value recmeter takes as an objective name.
fn label_safe(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 64
}

impl SloConfig {
    /// Cross-field checks, against the aggregator's thresholds. Each error names
    /// `slo.objectives[i].<field>`.
    pub fn validate(&self, aggregator: &AggregatorConfig) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if self.evaluation_interval < Duration::from_secs(1) {
            errors.push(InvalidField::new(
                "slo.evaluation_interval",
                "must be at least 1s",
            ));
        }
        if self.no_data_after < Duration::from_secs(60)
            || self.no_data_after > Duration::from_secs(2 * 3_600)
            || !self.no_data_after.as_secs().is_multiple_of(60)
            || self.no_data_after.subsec_nanos() != 0
        {
            errors.push(InvalidField::new(
                "slo.no_data_after",
                "must be whole minutes from 1m to 2h (requests are counted by the minute, and \
                 an evaluation reads the minutes memory holds)",
            ));
        }
        if self.objectives.len() > MAX_OBJECTIVES {
            errors.push(InvalidField::new(
                "slo.objectives",
                format!(
                    "has {} entries; at most {MAX_OBJECTIVES}",
                    self.objectives.len()
                ),
            ));
            return errors;
        }
        for (i, o) in self.objectives.iter().enumerate() {
            let field = |f: &str| format!("slo.objectives[{i}].{f}");
            if o.alerts.len() > MAX_ALERT_RULES {
                errors.push(InvalidField::new(
                    field("alerts"),
                    format!("has {} rules; at most {MAX_ALERT_RULES}", o.alerts.len()),
                ));
            }
            if !label_safe(&o.name) {
                errors.push(InvalidField::new(
                    field("name"),
                    format!(
                        "`{}` is not label-safe: write it as [a-zA-Z_][a-zA-Z0-9_]*, at most 64 bytes",
                        crate::error::clip(&o.name, 64)
                    ),
                ));
            } else if self.objectives[..i].iter().any(|p| p.name == o.name) {
                errors.push(InvalidField::new(
                    field("name"),
                    format!("`{}` names two objectives", o.name),
                ));
            }
            if o.kind != ObjectiveKind::Cost && !(o.objective > 0.0 && o.objective < 1.0) {
                errors.push(InvalidField::new(
                    field("objective"),
                    format!("{} is not between 0 and 1 (e.g. 0.9995)", o.objective),
                ));
            }
            match (o.kind, o.threshold) {
                (ObjectiveKind::Availability, Some(_)) => errors.push(InvalidField::new(
                    field("threshold"),
                    format!(
                        "`{}` is an availability objective, which has no threshold",
                        o.name
                    ),
                )),
                (ObjectiveKind::Latency, None) => errors.push(InvalidField::new(
                    field("threshold"),
                    format!(
                        "`{}` is a latency objective: set its threshold in seconds",
                        o.name
                    ),
                )),
                (ObjectiveKind::Latency, Some(t)) => {
                    errors.extend(check_threshold(&field("threshold"), &o.name, t, aggregator));
                }
                (ObjectiveKind::Availability, None) => {}
                (ObjectiveKind::Cost, _) => {
                    let t = o.cost_threshold();
                    if !(t.is_finite() && t > 0.0) {
                        errors.push(InvalidField::new(
                            field("threshold"),
                            format!("{t} is not a positive USD amount per recommendation"),
                        ));
                    }
                }
            }
            for (key, globs) in [("services", &o.services), ("endpoints", &o.endpoints)] {
                if globs.is_empty() {
                    errors.push(InvalidField::new(
                        field(key),
                        "is empty, so the objective covers nothing; set [\"*\"] for every one",
                    ));
                }
                for g in globs {
                    if let Err(e) = glob::Pattern::new(g) {
                        errors.push(InvalidField::new(
                            field(key),
                            format!("`{}` is not a glob: {e}", crate::error::clip(g, 64)),
                        ));
                    }
                }
            }
            for (j, rule) in o.alerts.iter().enumerate() {
                let field = |f: &str| format!("slo.objectives[{i}].alerts[{j}].{f}");
                if rule.severity == Severity::NoData {
                    errors.push(InvalidField::new(
                        field("severity"),
                        "is `page` or `ticket`; `no_data` fires on its own (slo.no_data_after)",
                    ));
                }
                let mut windows = Vec::new();
                for (key, label) in [("long", &rule.long), ("short", &rule.short)] {
                    match label.parse::<Window>() {
                        Ok(w) if SLO_WINDOWS.contains(&w) => windows.push(w),
                        _ => errors.push(InvalidField::new(
                            field(key),
                            format!(
                                "`{}` is not a burn-rate window; it is one of {}",
                                crate::error::clip(label, 16),
                                SLO_WINDOWS.map(Window::label).join(", ")
                            ),
                        )),
                    }
                }
                if let [long, short] = windows[..]
                    && short >= long
                {
                    errors.push(InvalidField::new(
                        field("short"),
                        format!("{short} is not shorter than the long window {long}"),
                    ));
                }
                if !(rule.burn_rate.is_finite() && rule.burn_rate > 0.0) {
                    errors.push(InvalidField::new(
                        field("burn_rate"),
                        format!("{} is not a positive number", rule.burn_rate),
                    ));
                }
            }
        }
        errors
    }
}

/// Checks a latency objective's threshold: counted exactly, and a bucket bound.
fn check_threshold(
    field: &str,
    name: &str,
    t: f64,
    aggregator: &AggregatorConfig,
) -> Vec<InvalidField> {
    let mut errors = Vec::new();
    // The column the evaluation reads, by name, as it finds it.
    if !aggregator
        .threshold_columns()
        .contains(&crate::config::threshold_column(t))
    {
        errors.push(InvalidField::new(
            field,
            format!(
                "{t} s (objective `{name}`) is not one of aggregator.latency_thresholds {:?}, \
                 so it would not be counted exactly; add it there",
                aggregator.latency_thresholds
            ),
        ));
    }
    let nanos = (t * 1e9).round();
    if !LATENCY_BUCKETS_NANOS.iter().any(|&b| b as f64 == nanos) {
        let bounds: Vec<String> = LATENCY_BUCKETS_NANOS
            .iter()
            .map(|&b| format!("{}", b as f64 / 1e9))
            .collect();
        errors.push(InvalidField::new(
            field,
            format!(
                "{t} s (objective `{name}`) is not a recs_latency_seconds bucket bound ({}), so \
                 the Prometheus rules could not express it",
                bounds.join(", ")
            ),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(config: &SloConfig) -> Vec<String> {
        config
            .validate(&AggregatorConfig::default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_defaults_are_the_platform_targets_and_valid() {
        let config = SloConfig::default();
        assert!(errors(&config).is_empty(), "{:?}", errors(&config));
        let [a, l] = &config.objectives[..] else {
            panic!("two defaults");
        };
        assert_eq!((a.kind, a.objective), (ObjectiveKind::Availability, 0.9995));
        assert_eq!(
            (l.kind, l.objective, l.threshold),
            (ObjectiveKind::Latency, 0.99, Some(0.2))
        );
        assert_eq!(a.alerts.len(), 4);
    }

    #[test]
    fn a_cost_objective_needs_only_a_positive_threshold() {
        let mut config = SloConfig::default();
        config
            .objectives
            .push(Objective::new("unit_cost", ObjectiveKind::Cost, 0.0, None));
        assert!(errors(&config).is_empty(), "{:?}", errors(&config));
        assert_eq!(config.objectives[2].cost_threshold(), 0.001);
        config.objectives[2].threshold = Some(-1.0);
        let got = errors(&config);
        assert!(
            got.iter()
                .any(|e| e.contains("slo.objectives[2].threshold") && e.contains("positive")),
            "{got:?}"
        );
    }

    #[test]
    fn every_problem_names_its_objective_and_field() {
        let mut bad = SloConfig::default();
        bad.objectives[0].name = "checkout-availability".into();
        bad.objectives[1].threshold = Some(0.3);
        bad.objectives.push(Objective::new(
            "latency",
            ObjectiveKind::Latency,
            1.5,
            Some(0.05),
        ));
        bad.objectives[2].services = vec!["[".into()];
        bad.objectives[2].alerts[0].long = "4h".into();
        bad.objectives[2].alerts[1].short = "6h".into();
        bad.objectives[2].alerts[2].burn_rate = f64::NAN;
        let got = errors(&bad);
        for want in [
            "slo.objectives[0].name: `checkout-availability` is not label-safe",
            "slo.objectives[1].threshold: 0.3 s (objective `latency`) is not one of aggregator.latency_thresholds",
            "slo.objectives[1].threshold: 0.3 s (objective `latency`) is not a recs_latency_seconds bucket bound",
            "slo.objectives[2].name: `latency` names two objectives",
            "slo.objectives[2].objective: 1.5 is not between 0 and 1",
            "slo.objectives[2].threshold: 0.05 s (objective `latency`) is not one of aggregator.latency_thresholds",
            "slo.objectives[2].services: `[` is not a glob",
            "slo.objectives[2].alerts[0].long: `4h` is not a burn-rate window",
            "slo.objectives[2].alerts[1].short: 6h is not shorter than the long window 6h",
            "slo.objectives[2].alerts[2].burn_rate: NaN is not a positive number",
        ] {
            assert!(got.iter().any(|e| e.starts_with(want)), "{want}\n{got:#?}");
        }
        // no_data_after: whole minutes, 1m to 2h; a threshold within a nanosecond of a counted
        // one is not that one's column.
        for secs in [30, 90, 3 * 3_600] {
            let config = SloConfig {
                no_data_after: std::time::Duration::from_secs(secs),
                ..SloConfig::default()
            };
            assert!(
                errors(&config)[0].starts_with("slo.no_data_after: must be whole minutes"),
                "{secs} s"
            );
        }
        let mut near = SloConfig::default();
        near.objectives[1].threshold = Some(0.2000000001);
        assert!(
            errors(&near)[0].starts_with(
                "slo.objectives[1].threshold: 0.2000000001 s (objective `latency`) is not one of"
            ),
            "{:?}",
            errors(&near)
        );
        // Too many objectives, or rules, are refused by count.
        let mut many = SloConfig::default();
        many.objectives[0].alerts = vec![many.objectives[0].alerts[0].clone(); 17];
        assert!(errors(&many)[0].starts_with("slo.objectives[0].alerts: has 17 rules; at most 16"));
        many.objectives = vec![many.objectives[1].clone(); 101];
        assert_eq!(
            errors(&many),
            ["slo.objectives: has 101 entries; at most 100"]
        );
        // 0.05 is a bucket bound: only the aggregator's thresholds are missing it.
        assert!(
            !got.iter()
                .any(|e| e.starts_with("slo.objectives[2].threshold: 0.05 s (objective `latency`) is not a recs_latency_seconds")),
            "{got:#?}"
        );
    }
}
