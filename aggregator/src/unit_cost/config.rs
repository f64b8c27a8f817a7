//! `[cost]`: which bill lines belong to which component of the platform
//! (`[[cost.allocation]]` rules), how a component maps to recmeter's series
//! (`[[cost.components]]`), and when a period's bill counts as complete.

use std::collections::BTreeMap;
use std::time::Duration;

use glob::Pattern;
use serde::{Deserialize, Serialize};

use crate::InvalidField;
use crate::cost::CostLine;

/// The component of lines no rule matches: always reported, never hidden.
pub const UNALLOCATED: &str = "unallocated";

/// The platform as a whole: the sum of its components, and the one component there is when
/// `[cost]` names none.
pub const PLATFORM: &str = "platform";

/// `[cost]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// The providers whose bills a period needs before it counts as complete (their
    /// `provider` as the lines carry it). Default: empty, the providers with usage lines in
    /// the week before the period's end.
    pub providers: Vec<String>,
    /// An incomplete period is reported anyway this long after its end, with
    /// `recmeter_cost_period_complete{period}` = 0. Default: `"48h"`.
    #[serde(with = "humantime_serde")]
    pub complete_after: Duration,
    /// How often cost per recommendation is worked out anew, on recmeter's clock (and at
    /// once when bills land). Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// The platform's components: each maps to recmeter series by `services` and `endpoints`
    /// globs, which give its share of requests. Default: none (the platform is one
    /// component, `platform`, over every series).
    pub components: Vec<Component>,
    /// The allocation rules, first match wins. Default: none (every line is the platform's,
    /// or shared when components are set).
    pub allocation: Vec<Rule>,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            complete_after: Duration::from_secs(48 * 3600),
            evaluation_interval: Duration::from_secs(30),
            components: Vec::new(),
            allocation: Vec::new(),
        }
    }
}

/// `[[cost.components]]`: one component of the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Its name, the `component` label (`[a-z0-9_-]`, not `unallocated` or `platform`).
    /// Required.
    pub name: String,
    /// Globs over `service.name`: its series. Default: none.
    #[serde(default)]
    pub services: Vec<String>,
    /// Globs over the endpoint. Default: every endpoint of its services.
    #[serde(default = "every")]
    pub endpoints: Vec<String>,
    /// Its fixed share of shared cost, a decimal string (`"0.25"`); when any component sets
    /// one, shared cost is split by these ratios (which must sum to 1) instead of by requests.
    #[serde(default)]
    pub ratio: Option<String>,
}

fn every() -> Vec<String> {
    vec!["*".to_owned()]
}

/// `[[cost.allocation]]`: which lines a rule takes, and where they go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// Glob over the line's provider. Default: any.
    pub provider: Option<String>,
    /// Glob over the line's service name. Default: any.
    pub service: Option<String>,
    /// Globs over tags (labels on GCP): each named tag must be present and match. Default:
    /// none.
    pub tags: BTreeMap<String, String>,
    /// The component the lines go to. Default: none (give one of `component`,
    /// `component_tag` or `shared`).
    pub component: Option<String>,
    /// The tag naming the component (`component`, for `tags.component`); a line without it
    /// is shared. Default: none.
    pub component_tag: Option<String>,
    /// The lines are shared: split across components by requests (or `ratio`). Default:
    /// false.
    pub shared: bool,
}

/// Where a line goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// To one component.
    Component(String),
    /// Split across the components.
    Shared,
    /// No rule matches it.
    Unallocated,
}

/// One rule with its globs compiled.
#[derive(Debug, Clone)]
struct CompiledRule {
    provider: Option<Pattern>,
    service: Option<Pattern>,
    tags: Vec<(String, Pattern)>,
    /// A glob did not compile (validation refuses it): the rule takes no line.
    broken: bool,
    rule: Rule,
}

impl CompiledRule {
    fn new(rule: &Rule) -> Self {
        let mut broken = false;
        let mut compile = |g: &String| Pattern::new(g).map_err(|_| broken = true).ok();
        let provider = rule.provider.as_ref().and_then(&mut compile);
        let service = rule.service.as_ref().and_then(&mut compile);
        let tags = rule
            .tags
            .iter()
            .filter_map(|(tag, g)| Some((tag.clone(), compile(g)?)))
            .collect();
        Self {
            provider,
            service,
            tags,
            broken,
            rule: rule.clone(),
        }
    }

    /// Whether `line` is one of this rule's.
    fn matches(&self, line: &CostLine) -> bool {
        let glob = |pattern: &Option<Pattern>, value: Option<&str>| {
            pattern
                .as_ref()
                .is_none_or(|p| value.is_some_and(|v| p.matches(v)))
        };
        !self.broken
            && glob(&self.provider, Some(&line.provider))
            && glob(&self.service, line.service_name.as_deref())
            && self
                .tags
                .iter()
                .all(|(tag, p)| line.tags.get(tag).is_some_and(|v| p.matches(v)))
    }

    /// Where this rule sends `line` (one it matches).
    fn allocate(&self, line: &CostLine) -> Allocation {
        if let Some(c) = &self.rule.component {
            return Allocation::Component(c.clone());
        }
        if let Some(tag) = &self.rule.component_tag {
            return match line.tags.get(tag).filter(|v| !v.is_empty()) {
                Some(c) => Allocation::Component(c.clone()),
                None => Allocation::Shared,
            };
        }
        Allocation::Shared
    }
}

/// The allocation rules with their globs compiled once, for the many lines of a bill.
#[derive(Debug, Clone)]
pub struct Rules(Vec<CompiledRule>);

impl Rules {
    /// Where `line` goes: the first rule that matches it decides.
    pub fn allocate(&self, line: &CostLine) -> Allocation {
        self.0
            .iter()
            .find(|r| r.matches(line))
            .map_or(Allocation::Unallocated, |r| r.allocate(line))
    }
}

impl CostConfig {
    /// The allocation rules, compiled.
    pub fn rules(&self) -> Rules {
        Rules(self.allocation.iter().map(CompiledRule::new).collect())
    }

    /// Where `line` goes: the first rule that matches it decides. (Compiles the rules on
    /// each call: for many lines, [`CostConfig::rules`] once.)
    pub fn allocate(&self, line: &CostLine) -> Allocation {
        self.rules().allocate(line)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n != UNALLOCATED
                && n != PLATFORM
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if self.evaluation_interval < Duration::from_secs(1) {
            errors.push(InvalidField::new(
                "cost.evaluation_interval",
                "must be at least 1s",
            ));
        }
        let mut ratios = Vec::new();
        for (i, c) in self.components.iter().enumerate() {
            let key = format!("cost.components[{i}]");
            if !name_ok(&c.name) {
                errors.push(InvalidField::new(
                    &key,
                    format!(
                        "name `{}`: 1 to 64 of [a-z0-9_-], not `{UNALLOCATED}` or `{}`",
                        crate::error::clip(&c.name, 64),
                        PLATFORM
                    ),
                ));
            }
            if self.components[..i].iter().any(|o| o.name == c.name) {
                errors.push(InvalidField::new(
                    &key,
                    format!("`{}` is named twice", c.name),
                ));
            }
            for g in c.services.iter().chain(&c.endpoints) {
                if let Err(e) = Pattern::new(g) {
                    errors.push(InvalidField::new(&key, format!("`{g}` is not a glob: {e}")));
                }
            }
            if let Some(r) = &c.ratio {
                match parse_ratio(r) {
                    Some(r) => ratios.push(r),
                    None => errors.push(InvalidField::new(
                        &key,
                        format!("ratio `{r}` is not a decimal from 0 to 1"),
                    )),
                }
            }
        }
        if !ratios.is_empty() {
            if ratios.len() != self.components.len() {
                errors.push(InvalidField::new(
                    "cost.components",
                    "some components set a ratio and others do not: set it on every one, or none",
                ));
            } else if ratios.iter().sum::<i128>() != RATIO_ONE {
                errors.push(InvalidField::new(
                    "cost.components",
                    "the ratios do not sum to 1",
                ));
            }
        }
        for (i, r) in self.allocation.iter().enumerate() {
            let key = format!("cost.allocation[{i}]");
            let targets = [r.component.is_some(), r.component_tag.is_some(), r.shared];
            if targets.iter().filter(|t| **t).count() != 1 {
                errors.push(InvalidField::new(
                    &key,
                    "give exactly one of component, component_tag or shared = true",
                ));
            }
            if let Some(c) = &r.component
                && !self.components.iter().any(|k| &k.name == c)
            {
                errors.push(InvalidField::new(
                    &key,
                    format!("component `{c}` is not one of [[cost.components]]"),
                ));
            }
            for g in r.provider.iter().chain(&r.service).chain(r.tags.values()) {
                if let Err(e) = Pattern::new(g) {
                    errors.push(InvalidField::new(&key, format!("`{g}` is not a glob: {e}")));
                }
            }
        }
        errors
    }
}

/// 1 as a ratio: 12 decimals.
const RATIO_ONE: i128 = 1_000_000_000_000;

/// A decimal ratio from 0 to 1 with at most 12 decimals, in units of `10^-12`.
pub(super) fn parse_ratio(text: &str) -> Option<i128> {
    let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 12
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i128 = format!("{frac:0<12}").parse().ok()?;
    let ratio = whole.checked_mul(RATIO_ONE)?.checked_add(frac)?;
    (ratio <= RATIO_ONE).then_some(ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(provider: &str, service: &str, tags: &[(&str, &str)]) -> CostLine {
        CostLine {
            provider: provider.into(),
            service_name: Some(service.into()),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..CostLine::default()
        }
    }

    /// `[cost]` as JSON (the crate reads no TOML; the shape is the same).
    fn config(json: &str) -> CostConfig {
        #[derive(Deserialize)]
        struct File {
            cost: CostConfig,
        }
        serde_json::from_str::<File>(json).unwrap().cost
    }

    #[test]
    fn the_first_matching_rule_decides_and_unmatched_lines_are_unallocated() {
        let config = config(
            r#"{"cost": {
                "components": [{"name": "ranker", "services": ["ranker*"]},
                               {"name": "front", "services": ["front"]}],
                "allocation": [
                    {"service": "Amazon Elastic Compute Cloud*", "component_tag": "component"},
                    {"provider": "AWS", "tags": {"team": "recs"}, "component": "front"},
                    {"service": "Amazon Simple Storage Service", "shared": true}
                ]}}"#,
        );
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let ec2 = "Amazon Elastic Compute Cloud - Compute";
        assert_eq!(
            config.allocate(&line("AWS", ec2, &[("component", "ranker")])),
            Allocation::Component("ranker".into())
        );
        // The tag is missing: the line is shared, not lost.
        assert_eq!(config.allocate(&line("AWS", ec2, &[])), Allocation::Shared);
        assert_eq!(
            config.allocate(&line("AWS", "AWS Lambda", &[("team", "recs")])),
            Allocation::Component("front".into())
        );
        assert_eq!(
            config.allocate(&line("AWS", "Amazon Simple Storage Service", &[])),
            Allocation::Shared
        );
        assert_eq!(
            config.allocate(&line("Google Cloud", "BigQuery", &[])),
            Allocation::Unallocated
        );
    }

    #[test]
    fn bad_rules_components_and_ratios_are_named() {
        let config = config(
            r#"{"cost": {
                "components": [{"name": "unallocated"}, {"name": "a", "ratio": "0.5"},
                               {"name": "a", "ratio": "1.5", "services": ["[x"]}],
                "allocation": [{"component": "b"}, {"shared": true, "component_tag": "c"}]}}"#,
        );
        let errors: Vec<String> = config.validate().iter().map(|e| e.to_string()).collect();
        for expected in [
            "name `unallocated`",
            "named twice",
            "is not a glob",
            "ratio `1.5`",
            "some components set a ratio",
            "component `b` is not one of",
            "exactly one of",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{expected}: {errors:?}"
            );
        }
        assert_eq!(parse_ratio("0.25"), Some(250_000_000_000));
        assert_eq!(parse_ratio("1"), Some(RATIO_ONE));
        assert_eq!(parse_ratio(".5"), Some(500_000_000_000));
        for bad in [
            "",
            ".",
            "-0.1",
            "1.0000000000001",
            "0.1234567890123",
            "1e-3",
        ] {
            assert_eq!(parse_ratio(bad), None, "{bad}");
        }
    }
}
