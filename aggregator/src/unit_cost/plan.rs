//! `[cost]` made ready to use: the components with their globs compiled, the allocation rules
//! with the defaults filled in, and which component each series of recmeter belongs to.

use std::collections::HashMap;

use glob::Pattern;

use super::config::{Allocation, CostConfig, Rule, Rules, UNALLOCATED};
use crate::cost::CostLine;
use crate::error::{Error, Result};
use crate::record::SeriesKey;

pub use super::config::PLATFORM;

/// Where a line's cost goes, once its rule is applied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// To one configured component (its index in [`Plan::components`]).
    Component(usize),
    /// Split across the components by requests or ratios.
    Shared,
    /// To `unallocated`.
    Unallocated,
}

/// One component, compiled.
#[derive(Debug, Clone)]
pub struct PlannedComponent {
    pub name: String,
    services: Vec<Pattern>,
    endpoints: Vec<Pattern>,
    /// Its fixed share of shared cost, in units of `10^-12`.
    pub ratio: Option<i128>,
}

/// `[cost]`, ready to use.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The components, in configuration order; one named `platform` covering every series
    /// when `[cost]` names none.
    pub components: Vec<PlannedComponent>,
    rules: Rules,
    /// The tags the rules read.
    pub tags: Vec<String>,
}

impl Plan {
    /// `config` (validated) with its defaults: no components means one, `platform`, over
    /// every series; no rules means every line goes to it (or, with components, is shared).
    pub fn new(config: &CostConfig) -> Result<Self> {
        let mut config = config.clone();
        if config.components.is_empty() {
            config.components.push(super::config::Component {
                name: PLATFORM.into(),
                services: vec!["*".into()],
                endpoints: vec!["*".into()],
                ratio: None,
            });
            if config.allocation.is_empty() {
                config.allocation.push(Rule {
                    component: Some(PLATFORM.into()),
                    ..Rule::default()
                });
            }
        }
        if config.allocation.is_empty() {
            config.allocation.push(Rule {
                shared: true,
                ..Rule::default()
            });
        }
        let compile = |name: &str, globs: &[String]| {
            globs
                .iter()
                .map(|g| Pattern::new(g))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Participant(format!("cost component `{name}`: a glob: {e}")))
        };
        let components = config
            .components
            .iter()
            .map(|c| {
                Ok(PlannedComponent {
                    name: c.name.clone(),
                    services: compile(&c.name, &c.services)?,
                    endpoints: compile(&c.name, &c.endpoints)?,
                    ratio: c.ratio.as_deref().and_then(super::config::parse_ratio),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut tags: Vec<String> = config
            .allocation
            .iter()
            .flat_map(|r| r.tags.keys().chain(&r.component_tag))
            .cloned()
            .collect();
        tags.sort();
        tags.dedup();
        Ok(Self {
            components,
            rules: config.rules(),
            tags,
        })
    }

    /// Whether shared cost is split by fixed ratios rather than by requests.
    pub fn by_ratio(&self) -> bool {
        self.components.iter().all(|c| c.ratio.is_some())
    }

    /// Where `line` goes. A component named by a tag that is not one of the components is
    /// `unallocated`: its cost is reported, under no name recmeter cannot vouch for.
    pub fn target(&self, line: &CostLine) -> Target {
        match self.rules.allocate(line) {
            Allocation::Component(name) => self
                .components
                .iter()
                .position(|c| c.name == name)
                .map_or(Target::Unallocated, Target::Component),
            Allocation::Shared => Target::Shared,
            Allocation::Unallocated => Target::Unallocated,
        }
    }

    /// The component of `key`'s requests: the first whose globs match it.
    pub fn component_of(&self, key: &SeriesKey) -> Option<usize> {
        self.components.iter().position(|c| {
            c.services.iter().any(|p| p.matches(&key.service))
                && c.endpoints.iter().any(|p| p.matches(&key.endpoint))
        })
    }

    /// The name of component `index`, or `unallocated` for `None`.
    pub fn name(&self, index: Option<usize>) -> &str {
        index.map_or(UNALLOCATED, |i| &self.components[i].name)
    }
}

/// [`Plan::component_of`] remembered per series, so each series' globs are matched once.
#[derive(Debug, Default)]
pub struct Membership {
    of: HashMap<SeriesKey, Option<usize>>,
}

/// Series whose component is remembered at most; past it the memory starts again.
const KEPT: usize = 200_000;

impl Membership {
    /// `key`'s component under `plan`.
    pub fn of(&mut self, plan: &Plan, key: &SeriesKey) -> Option<usize> {
        if let Some(c) = self.of.get(key) {
            return *c;
        }
        if self.of.len() >= KEPT {
            self.of.clear();
        }
        let c = plan.component_of(key);
        self.of.insert(key.clone(), c);
        c
    }
}
