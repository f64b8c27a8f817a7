//! Evaluation of the objectives on recmeter's clock: each objective's requests and bad events
//! over every burn-rate window, its error budget, and which alerts fire. Transitions are logged
//! through the SLO alerts participant before they take effect.
//!
//! Reads are incremental: the final hours (those that can no longer change, ADR 008) are
//! summed per objective once, when they become final, and kept; an evaluation reads only the
//! minute-exact windows and the minutes since the last final hour, from memory. Only the first
//! evaluation after a start reads the store, for the final hours of the last 30 days.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use glob::Pattern;

use super::alerts::{CostReading, SloAlerts, Transition};
use super::config::{
    BUDGET_WINDOW, MAX_OBJECTIVES, Objective, ObjectiveKind, SLO_WINDOWS, Severity, SloConfig,
};
use super::math::{Tallies, Tally};
use crate::clock::{MINUTE_NANOS, minute_of};
use crate::error::{Error, Result};
use crate::record::SeriesKey;
use crate::service::AggregatorHandle;
use crate::sql::QueryEngine;
use crate::sql::windows::{HourSink, Span};
use crate::state::RowCounts;
use crate::unit_cost::CostStatus;
use crate::window::Window;

/// One objective with its globs compiled and its threshold's column found.
#[derive(Debug)]
struct Compiled {
    objective: Objective,
    services: Vec<Pattern>,
    endpoints: Vec<Pattern>,
    /// The `requests_le_*` column of a latency objective's threshold.
    le: Option<usize>,
}

impl Compiled {
    fn covers(&self, key: &SeriesKey) -> bool {
        self.services.iter().any(|p| p.matches(&key.service))
            && self.endpoints.iter().any(|p| p.matches(&key.endpoint))
    }
}

/// One objective at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveStatus {
    pub objective: Objective,
    /// Requests and bad events over each of [`SLO_WINDOWS`].
    pub tallies: Tallies,
    /// Requests over the last `slo.no_data_after`.
    pub recent_requests: u64,
}

impl ObjectiveStatus {
    /// The burn rate over `window`.
    pub fn burn_rate(&self, window: Window) -> f64 {
        self.tallies.get(window).burn_rate(self.objective.objective)
    }

    /// The 30-day error budget left (negative once overspent).
    pub fn budget_remaining(&self) -> f64 {
        self.tallies
            .get(BUDGET_WINDOW)
            .budget_remaining(self.objective.objective)
    }

    /// Every window's burn rate, by label.
    pub fn burn_rates(&self) -> BTreeMap<String, f64> {
        SLO_WINDOWS
            .iter()
            .map(|w| (w.label().to_owned(), self.burn_rate(*w)))
            .collect()
    }
}

/// The objectives at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// recmeter's clock at the evaluation, Unix nanoseconds.
    pub at_unix_nanos: u64,
    pub objectives: Vec<ObjectiveStatus>,
}

/// The latest evaluation, for `/metrics` and the `slo_status` table.
#[derive(Debug, Default)]
pub struct SloStatus {
    latest: parking_lot::RwLock<Option<Arc<Evaluation>>>,
}

impl SloStatus {
    /// The latest evaluation, if one ran.
    pub fn latest(&self) -> Option<Arc<Evaluation>> {
        self.latest.read().clone()
    }

    fn set(&self, evaluation: Arc<Evaluation>) {
        *self.latest.write() = Some(evaluation);
    }
}

/// Which objectives cover each series seen, as a bit per objective ([`MAX_OBJECTIVES`] fit), so
/// an evaluation matches each series' globs once, not at every evaluation.
#[derive(Debug, Default)]
struct Covering {
    masks: HashMap<SeriesKey, u128>,
}

/// Series whose coverage is remembered at most; past it the memory starts again (series come
/// and go at the cap).
const COVERING_KEPT: usize = 200_000;

const _: () = assert!(MAX_OBJECTIVES <= 128);

impl Covering {
    /// The indexes of the objectives of `objectives` that cover `key`.
    fn of(&mut self, key: &SeriesKey, objectives: &[Compiled]) -> impl Iterator<Item = usize> {
        let mask = match self.masks.get(key) {
            Some(mask) => *mask,
            None => {
                if self.masks.len() >= COVERING_KEPT {
                    self.masks.clear();
                }
                let mask = objectives
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.covers(key))
                    .fold(0u128, |mask, (i, _)| mask | 1 << i);
                self.masks.insert(key.clone(), mask);
                mask
            }
        };
        (0..objectives.len()).filter(move |i| mask & 1 << i != 0)
    }
}

/// Adds the hour rows [`QueryEngine::hour_sums`] streams into per-objective tallies of the
/// hours asked for.
struct FinalHourSums {
    objectives: Arc<[Compiled]>,
    covering: Covering,
    /// Per hour asked for (its first minute), per objective.
    summed: BTreeMap<u64, Vec<Tally>>,
}

impl HourSink for FinalHourSums {
    fn add(&mut self, key: &SeriesKey, hour: u64, counts: &RowCounts) {
        let Some(per_objective) = self.summed.get_mut(&hour) else {
            return;
        };
        for o in self.covering.of(key, &self.objectives) {
            let compiled = &self.objectives[o];
            per_objective[o].add_counts(compiled.objective.kind, counts, compiled.le);
        }
    }
}

/// The final hours summed per objective, by the hour's first minute.
#[derive(Debug, Default)]
struct FinalHours {
    hours: BTreeMap<u64, Vec<Tally>>,
}

/// Evaluates the configured objectives.
#[derive(Debug)]
pub struct SloEvaluator {
    config: SloConfig,
    objectives: Arc<[Compiled]>,
    engine: Arc<QueryEngine>,
    aggregator: AggregatorHandle,
    alerts: Arc<SloAlerts>,
    status: Arc<SloStatus>,
    /// How long ago a span may have ended and still be counted (`ingest.max_span_age`).
    max_age_nanos: u64,
    final_hours: tokio::sync::Mutex<FinalHours>,
    covering: parking_lot::Mutex<Covering>,
    /// Since when each (objective, alert rule) has held, for rules with a `for`.
    pending: parking_lot::Mutex<HashMap<(usize, usize), u64>>,
    /// recmeter's clock at the first evaluation: `no_data` waits `no_data_after` from there.
    started_at: parking_lot::Mutex<Option<u64>>,
    /// The cost evaluation `cost` objectives read.
    cost: Option<Arc<CostStatus>>,
}

/// The fixed spans of an evaluation, before the final hours it still has to read.
const MINUTE_EXACT: [Window; 4] = [Window::M5, Window::M30, Window::H1, Window::H2];

impl SloEvaluator {
    /// An evaluator of `config`'s objectives; `thresholds` are the aggregator's
    /// `requests_le_*` columns, in order (as `AggregatorConfig::threshold_columns`).
    pub fn new(
        config: &SloConfig,
        thresholds: &[String],
        engine: Arc<QueryEngine>,
        aggregator: AggregatorHandle,
        alerts: Arc<SloAlerts>,
        status: Arc<SloStatus>,
        max_span_age: std::time::Duration,
    ) -> Result<Self> {
        let compile = |name: &str, globs: &[String]| {
            globs
                .iter()
                .map(|g| Pattern::new(g))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Participant(format!("objective `{name}`: a glob: {e}")))
        };
        let objectives = config
            .objectives
            .iter()
            .map(|o| {
                // A latency objective's threshold must be counted (validation checks this;
                // counting nothing would never burn).
                let le = match o.threshold.filter(|_| o.kind == ObjectiveKind::Latency) {
                    None => None,
                    Some(t) => {
                        let column = crate::config::threshold_column(t);
                        Some(thresholds.iter().position(|c| *c == column).ok_or_else(|| {
                            Error::Participant(format!(
                                "objective `{}`: no {column} column is counted; list {t} in \
                                 aggregator.latency_thresholds",
                                o.name
                            ))
                        })?)
                    }
                };
                Ok(Compiled {
                    objective: o.clone(),
                    services: compile(&o.name, &o.services)?,
                    endpoints: compile(&o.name, &o.endpoints)?,
                    le,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            objectives: objectives.into(),
            engine,
            aggregator,
            alerts,
            status,
            max_age_nanos: u64::try_from(max_span_age.as_nanos()).unwrap_or(u64::MAX),
            final_hours: tokio::sync::Mutex::new(FinalHours::default()),
            covering: parking_lot::Mutex::new(Covering::default()),
            pending: parking_lot::Mutex::new(HashMap::new()),
            started_at: parking_lot::Mutex::new(None),
            cost: None,
        })
    }

    /// Lets `cost` objectives read `status`: without it they never fire.
    #[must_use]
    pub fn with_cost(mut self, status: Arc<CostStatus>) -> Self {
        self.cost = Some(status);
        self
    }

    /// Evaluates every objective at the clock's reading, logs the alert transitions it finds
    /// (each applied once durable), and publishes the result.
    pub async fn evaluate(&self) -> Result<Arc<Evaluation>> {
        let at = self.aggregator.clock().now_nanos();
        if self.objectives.is_empty() {
            // `objectives = []` turns the SLOs off: nothing to read, and any alert still firing
            // from before resolves.
            let evaluation = Evaluation {
                at_unix_nanos: at,
                objectives: Vec::new(),
            };
            self.transitions(&evaluation, at).await;
            let evaluation = Arc::new(evaluation);
            self.status.set(evaluation.clone());
            return Ok(evaluation);
        }
        let started = *self.started_at.lock().get_or_insert(at);
        let open = at / MINUTE_NANOS;
        // Hours before `end` can no longer change: spans ending before now − max_span_age are
        // refused.
        let first_open = minute_of(at.saturating_sub(self.max_age_nanos));
        let end = (first_open - first_open % 60).min(open - open % 60);
        let oldest = {
            let first = (open + 1).saturating_sub(BUDGET_WINDOW.minutes());
            first - first % 60
        };
        let no_data_minutes = (self.config.no_data_after.as_secs() / 60).max(1);
        let mut final_hours = self.final_hours.lock().await;
        final_hours.hours.retain(|h, _| *h >= oldest);
        let missing: Vec<u64> = (oldest..end)
            .step_by(60)
            .filter(|h| !final_hours.hours.contains_key(h))
            .collect();
        let mut spans: Vec<Span> = MINUTE_EXACT.iter().map(|w| Span::Window(*w)).collect();
        // The minutes since the last final hour, and the last `no_data_after`.
        spans.push(Span::Range {
            start: end,
            end: open + 1,
        });
        spans.push(Span::Range {
            start: (open + 1).saturating_sub(no_data_minutes),
            end: open + 1,
        });
        let answer = self.engine.sums(&spans).await?;
        // Per objective, per span.
        let mut tallies = vec![vec![Tally::default(); spans.len()]; self.objectives.len()];
        {
            let mut covering = self.covering.lock();
            for (key, per_span) in &answer.series {
                for o in covering.of(key, &self.objectives) {
                    let compiled = &self.objectives[o];
                    for (i, counts) in per_span.iter().enumerate() {
                        if let Some(c) = counts {
                            tallies[o][i].add_counts(
                                compiled.objective.kind,
                                &c.counts,
                                compiled.le,
                            );
                        }
                    }
                }
            }
        }
        // The hours become final since the last evaluation (all of the last 30 days after a
        // start), their rows streamed from one scan into per-objective tallies.
        if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
            let sink = FinalHourSums {
                objectives: self.objectives.clone(),
                covering: std::mem::take(&mut *self.covering.lock()),
                summed: missing
                    .iter()
                    .map(|&h| (h, vec![Tally::default(); self.objectives.len()]))
                    .collect(),
            };
            let sink = self.engine.hour_sums(first..last + 60, sink).await?;
            *self.covering.lock() = sink.covering;
            final_hours.hours.extend(sink.summed);
        }
        let mut objectives = Vec::with_capacity(self.objectives.len());
        for (o, compiled) in self.objectives.iter().enumerate() {
            let mut windows = Tallies::default();
            for (slot, w) in windows.0.iter_mut().zip(SLO_WINDOWS) {
                *slot = match MINUTE_EXACT.iter().position(|m| *m == w) {
                    Some(i) => tallies[o][i],
                    None => {
                        // Whole hours from the window's first, then the minutes after them.
                        let first = (open + 1).saturating_sub(w.minutes());
                        let first = first - first % 60;
                        let mut t = tallies[o][MINUTE_EXACT.len()];
                        for (_, hour) in final_hours.hours.range(first..end) {
                            t.add(hour[o]);
                        }
                        t
                    }
                };
            }
            objectives.push(ObjectiveStatus {
                objective: compiled.objective.clone(),
                tallies: windows,
                recent_requests: tallies[o][MINUTE_EXACT.len() + 1].requests,
            });
        }
        drop(final_hours);
        let evaluation = Evaluation {
            at_unix_nanos: at,
            objectives,
        };
        self.transitions(&evaluation, started).await;
        let evaluation = Arc::new(evaluation);
        self.status.set(evaluation.clone());
        Ok(evaluation)
    }

    /// Logs each alert whose state changes at `evaluation`: those of the objectives evaluated,
    /// and the resolution of any still firing for an objective no longer configured (renamed or
    /// removed across a restart), with no burn rates.
    async fn transitions(&self, evaluation: &Evaluation, started: u64) {
        let at = evaluation.at_unix_nanos;
        for mut gone in self.alerts.firing_since() {
            if self.objectives.iter().any(|c| c.objective.name == gone.slo) {
                continue;
            }
            gone.firing = false;
            gone.at_unix_nanos = at;
            gone.burn_rates.clear();
            self.log(gone).await;
        }
        let no_data_after = u64::try_from(self.config.no_data_after.as_nanos()).unwrap_or(u64::MAX);
        for (o, status) in evaluation.objectives.iter().enumerate() {
            let objective = &status.objective;
            if objective.kind == ObjectiveKind::Cost {
                self.cost_transition(objective, at).await;
                continue;
            }
            for severity in [Severity::Page, Severity::Ticket, Severity::NoData] {
                // An alert already firing (before a restart, say) keeps firing while its
                // condition holds: the waits below (`no_data_after` from the first evaluation,
                // a rule's `for`) only delay a new one.
                let firing = self.alerts.is_firing(&objective.name, severity);
                let met = match severity {
                    Severity::NoData => {
                        status.recent_requests == 0
                            && (firing || at.saturating_sub(started) >= no_data_after)
                    }
                    // Any of the severity's rules, each held for its own `for`.
                    _ => {
                        let mut met = false;
                        let mut pending = self.pending.lock();
                        for (j, rule) in objective.alerts.iter().enumerate() {
                            if rule.severity != severity {
                                continue;
                            }
                            if !status.tallies.holds(objective, rule) {
                                pending.remove(&(o, j));
                                continue;
                            }
                            let since = *pending.entry((o, j)).or_insert(at);
                            let wait = rule
                                .for_
                                .map_or(0, |f| u64::try_from(f.as_nanos()).unwrap_or(u64::MAX));
                            met |= firing || at.saturating_sub(since) >= wait;
                        }
                        met
                    }
                };
                if met == firing {
                    continue;
                }
                let transition = Transition {
                    slo: objective.name.clone(),
                    severity,
                    firing: met,
                    at_unix_nanos: at,
                    burn_rates: status.burn_rates(),
                    budget_remaining: status.budget_remaining(),
                    cost: None,
                };
                self.log(transition).await;
            }
        }
    }

    /// Fires a `cost` objective's ticket while the platform's cost per recommendation on the
    /// latest complete day is over its threshold, and resolves it once it is not. With no
    /// complete day that served a recommendation, the alert stays as it is.
    async fn cost_transition(&self, objective: &Objective, at: u64) {
        let Some(reading) = self
            .cost
            .as_ref()
            .and_then(|c| c.latest())
            .and_then(|r| r.latest_complete_day())
            .and_then(|(day_start, unit)| {
                Some(CostReading {
                    usd_per_recommendation: unit?,
                    day_start,
                })
            })
        else {
            return;
        };
        let threshold = objective.cost_threshold();
        let met = reading.usd_per_recommendation > threshold;
        if met == self.alerts.is_firing(&objective.name, Severity::Ticket) {
            return;
        }
        self.log(Transition {
            slo: objective.name.clone(),
            severity: Severity::Ticket,
            firing: met,
            at_unix_nanos: at,
            burn_rates: BTreeMap::new(),
            // The share of the threshold left (negative over it), as the budget is for events.
            budget_remaining: 1.0 - reading.usd_per_recommendation / threshold,
            cost: Some(reading),
        })
        .await;
    }

    /// Logs `transition`, which takes effect once durable; a failure is retried at the next
    /// evaluation, as the state has not changed.
    async fn log(&self, transition: Transition) {
        let logged = match SloAlerts::event(&transition) {
            Ok(event) => self.aggregator.log_event(event).await,
            Err(e) => Err(e),
        };
        match logged {
            Ok(()) => tracing::info!(
                slo = %transition.slo,
                severity = transition.severity.label(),
                firing = transition.firing,
                burn_1h = transition.burn_rates.get(Window::H1.label()).copied(),
                budget_remaining = transition.budget_remaining,
                "SLO alert transition logged."
            ),
            Err(e) => tracing::warn!(
                slo = %transition.slo,
                severity = transition.severity.label(),
                error = %e,
                "Cannot log an SLO alert transition; the next evaluation retries."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::{AggregatorConfig, IngestConfig, SqlConfig};
    use crate::participant::Participants;
    use crate::state::lock;
    use crate::store::history::History;
    use crate::{Aggregator, Clock, RequestRecord, Telemetry};

    struct Setup {
        clock: Arc<Clock>,
        handle: AggregatorHandle,
        alerts: Arc<SloAlerts>,
        evaluator: SloEvaluator,
    }

    /// An evaluator of `config` over an aggregator with a fake clock at `start_secs`.
    fn setup(config: &SloConfig, start_secs: u64) -> Setup {
        setup_with(config, start_secs, None)
    }

    /// As [`setup`], the query engine reading what memory no longer holds from `history`.
    fn setup_with(config: &SloConfig, start_secs: u64, history: Option<Arc<History>>) -> Setup {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(start_secs)));
        let alerts = Arc::new(SloAlerts::default());
        let mut participants = Participants::default();
        participants.register(alerts.clone()).unwrap();
        let aggregator_config = AggregatorConfig::default();
        let aggregator = Aggregator::new(
            &IngestConfig::default(),
            &aggregator_config,
            clock.clone(),
            Arc::new(Telemetry::default()),
        )
        .unwrap()
        .with_participants(participants);
        let (handle, _worker) =
            AggregatorHandle::spawn(aggregator, 64, Arc::default(), None, false);
        let mut engine = QueryEngine::new(handle.state().clone(), &SqlConfig::default()).unwrap();
        if let Some(history) = history {
            engine = engine.with_history(history);
        }
        let engine = Arc::new(engine);
        let evaluator = SloEvaluator::new(
            config,
            &aggregator_config.threshold_columns(),
            engine,
            handle.clone(),
            alerts.clone(),
            Arc::new(SloStatus::default()),
            IngestConfig::default().max_span_age,
        )
        .unwrap();
        Setup {
            clock,
            handle,
            alerts,
            evaluator,
        }
    }

    fn record(service: &str, end: u64, nanos: u64, error: bool) -> RequestRecord {
        RequestRecord {
            key: SeriesKey {
                service: service.into(),
                endpoint: "/recs".into(),
                dimensions: Vec::new(),
            },
            end_unix_nanos: end,
            duration_nanos: nanos,
            error,
            recommendations: 1,
        }
    }

    /// DESIGN's window rule, worked out here: the last n minutes through the open one, from
    /// the start of their first hour past 2 h.
    fn minutes(w: Window, open: u64) -> std::ops::RangeInclusive<u64> {
        let n = w.minutes();
        let first = (open + 1).saturating_sub(n);
        let first = if n > 120 { first / 60 * 60 } else { first };
        first..=open
    }

    /// Every window's tallies, at each of many evaluations over 9 hours of traffic with late
    /// spans, equal sums over the raw records; the final hours are read once.
    #[tokio::test]
    async fn tallies_equal_sums_over_the_raw_records() {
        let mut config = SloConfig::default();
        config.objectives[0].services = vec!["a*".into()];
        let start = 500_000 * 3_600 + 30;
        let s = setup(&config, start);
        // (service, minute, nanos, error)
        let mut raw: Vec<(&str, u64, u64, bool)> = Vec::new();
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            seed >> 33
        };
        let mut evaluations = 0;
        for m in 0..9 * 60 {
            let now = s.clock.now_nanos();
            let mut batch = Vec::new();
            for j in 0..4 + next() % 5 {
                let service = ["a1", "a2", "b"][j as usize % 3];
                // Now and then a late one, 50 minutes back.
                let back = if next() % 7 == 0 {
                    50 * 60
                } else {
                    next() % 50
                };
                let end = now - back * 1_000_000_000;
                let nanos = 1_000_000 + next() % 400_000_000;
                let error = next() % 6 == 0;
                batch.push(record(service, end, nanos, error));
                raw.push((service, end / MINUTE_NANOS, nanos, error));
            }
            assert_eq!(
                lock(s.handle.state()).apply(&batch).accepted as usize,
                batch.len()
            );
            s.clock.advance(Duration::from_secs(60));
            if m % 37 != 36 {
                continue;
            }
            let e = s.evaluator.evaluate().await.unwrap();
            evaluations += 1;
            let open = e.at_unix_nanos / MINUTE_NANOS;
            for status in &e.objectives {
                let o = &status.objective;
                for w in SLO_WINDOWS {
                    let mut want = Tally::default();
                    for &(service, minute, nanos, error) in &raw {
                        let covered = match o.kind {
                            ObjectiveKind::Availability => service.starts_with('a'),
                            ObjectiveKind::Latency | ObjectiveKind::Cost => true,
                        };
                        if covered && minutes(w, open).contains(&minute) {
                            want.requests += 1;
                            want.bad += u64::from(match o.kind {
                                ObjectiveKind::Availability => error,
                                ObjectiveKind::Latency => nanos > 200_000_000,
                                ObjectiveKind::Cost => false,
                            });
                        }
                    }
                    assert_eq!(
                        status.tallies.get(w),
                        want,
                        "{} over {w} at minute {m}",
                        o.name
                    );
                }
            }
        }
        assert_eq!(evaluations, 14);
    }

    /// A new evaluator of `config` over `s`'s aggregator and alerts, as after a restart.
    fn restarted(s: &Setup, config: &SloConfig) -> SloEvaluator {
        let engine =
            Arc::new(QueryEngine::new(s.handle.state().clone(), &SqlConfig::default()).unwrap());
        SloEvaluator::new(
            config,
            &AggregatorConfig::default().threshold_columns(),
            engine,
            s.handle.clone(),
            s.alerts.clone(),
            Arc::new(SloStatus::default()),
            IngestConfig::default().max_span_age,
        )
        .unwrap()
    }

    /// A rule with a `for` fires once it has held that long (10% errors hold the 1h/5m rule
    /// from the first evaluation, a minute apart): at once without, 3 minutes on with `3m`.
    #[tokio::test]
    async fn a_rule_with_for_fires_once_it_held_that_long() {
        for (wait, fires_at) in [(None, 0), (Some(180), 3)] {
            let mut config = SloConfig::default();
            let mut rule = config.objectives[0].alerts[0].clone();
            assert_eq!((rule.severity, rule.long.as_str()), (Severity::Page, "1h"));
            rule.for_ = wait.map(Duration::from_secs);
            config.objectives[0].alerts = vec![rule];
            let s = setup(&config, 500_000 * 3_600);
            let mut fired = None;
            for m in 0..6 {
                minute(&s, 1_000, 100).await;
                if fired.is_none() && s.alerts.is_firing("availability", Severity::Page) {
                    fired = Some(m);
                }
            }
            assert_eq!(fired, Some(fires_at), "for {wait:?}");
        }
    }

    /// After a restart a firing `no_data` alert keeps firing (no resolve, no second firing),
    /// though the new process has not waited `no_data_after` itself; an alert of an objective
    /// no longer configured resolves once, with no burn rates.
    #[tokio::test]
    async fn a_restart_keeps_firing_alerts_and_resolves_removed_objectives() {
        let s = setup(&SloConfig::default(), 500_000 * 3_600);
        minute(&s, 100, 0).await;
        for _ in 0..15 {
            s.clock.advance(Duration::from_secs(60));
            s.evaluator.evaluate().await.unwrap();
        }
        assert!(s.alerts.is_firing("availability", Severity::NoData));
        assert!(s.alerts.is_firing("latency", Severity::NoData));
        let before = s.alerts.transitions().len();
        let mut config = SloConfig::default();
        config.objectives.truncate(1);
        let evaluator = restarted(&s, &config);
        for _ in 0..3 {
            s.clock.advance(Duration::from_secs(30));
            evaluator.evaluate().await.unwrap();
        }
        assert!(s.alerts.is_firing("availability", Severity::NoData));
        assert!(!s.alerts.is_firing("latency", Severity::NoData));
        let after = s.alerts.transitions();
        assert_eq!(after.len(), before + 1, "{after:?}");
        let resolved = &after[before];
        assert_eq!(
            (resolved.slo.as_str(), resolved.severity, resolved.firing),
            ("latency", Severity::NoData, false)
        );
        assert!(resolved.burn_rates.is_empty());
        // `objectives = []`: what still fires resolves.
        let off = restarted(
            &s,
            &SloConfig {
                objectives: Vec::new(),
                ..SloConfig::default()
            },
        );
        off.evaluate().await.unwrap();
        off.evaluate().await.unwrap();
        assert!(s.alerts.firing().is_empty());
        assert_eq!(s.alerts.transitions().len(), before + 2);
    }

    /// The event weighting, through the evaluator: one series with 1 000 000 requests
    /// and 0.01% errors, one with 100 requests and 50% errors. The availability objective's 1h
    /// ratio is 150 / 1 000 100 (a burn of 0.2999…), not the mean of the two series' ratios
    /// ((0.0001 + 0.5) / 2, a burn of 500.1).
    #[tokio::test]
    async fn an_objective_weighs_requests_not_series_ratios() {
        let s = setup(&SloConfig::default(), 500_000 * 3_600);
        let now = s.clock.now_nanos();
        let mut batch: Vec<_> = (0..1_000_000u64)
            .map(|i| record("big", now, 1_000_000, i < 100))
            .collect();
        batch.extend((0..100u64).map(|i| record("small", now, 1_000_000, i < 50)));
        assert_eq!(lock(s.handle.state()).apply(&batch).accepted, 1_000_100);
        s.clock.advance(Duration::from_secs(60));
        let e = s.evaluator.evaluate().await.unwrap();
        let availability = &e.objectives[0];
        assert_eq!(
            availability.tallies.get(Window::H1),
            Tally {
                requests: 1_000_100,
                bad: 150
            }
        );
        let burn = availability.burn_rate(Window::H1);
        assert!(
            (burn - 150.0 / 1_000_100.0 / 0.0005).abs() < 1e-12,
            "{burn}"
        );
    }

    /// After 27 hours of traffic checkpointed and compacted every hour, the evaluator's first
    /// evaluation reads from the store the final hours memory let go; the evaluations of the
    /// next two hours (every 30 s, across two hours becoming final and four checkpoints) read no
    /// store file, and the 30-day window still counts every request sent.
    #[tokio::test]
    async fn a_steady_state_evaluation_reads_no_store_file() {
        use crate::durability::{Checkpointer, Layout};

        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::object::open(dir.path().to_str().unwrap(), true).unwrap();
        let history = Arc::new(History::new(store.objects.clone()));
        let s = setup_with(
            &SloConfig::default(),
            500_000 * 3_600 + 30,
            Some(history.clone()),
        );
        let aggregator_config = AggregatorConfig::default();
        let checkpoints = Checkpointer::new(
            store,
            s.handle.state().clone(),
            Layout {
                significant_digits: aggregator_config.significant_digits,
                dimensions: Vec::new(),
                thresholds: aggregator_config.threshold_columns(),
            },
            Arc::default(),
            Arc::default(),
            None,
            Box::new(|_| {}),
        )
        .with_history(history.clone());
        let mut sent = 0u64;
        let send = |s: &Setup, n: u64| {
            let now = s.clock.now_nanos();
            let batch: Vec<_> = (0..n)
                .map(|i| record("a", now - i % 50 * 1_000_000_000, 1_000_000, i % 97 == 0))
                .collect();
            assert_eq!(lock(s.handle.state()).apply(&batch).accepted, n);
            n
        };
        for step in 0..27 * 6 {
            sent += send(&s, 200);
            s.clock.advance(Duration::from_secs(600));
            if step % 6 == 5 {
                checkpoints.checkpoint().await.unwrap();
                checkpoints.compact().await.unwrap();
            }
        }
        assert_eq!(history.files_read(), 0);
        let first = s.evaluator.evaluate().await.unwrap();
        let cold = history.files_read();
        assert!(cold > 0, "the first evaluation read the store");
        assert_eq!(
            first.objectives[0].tallies.get(BUDGET_WINDOW).requests,
            sent
        );
        for half_minute in 0..2 * 2 * 60 {
            if half_minute % 2 == 0 {
                sent += send(&s, 20);
            }
            s.clock.advance(Duration::from_secs(30));
            if half_minute % 60 == 59 {
                checkpoints.checkpoint().await.unwrap();
                checkpoints.compact().await.unwrap();
            }
            let e = s.evaluator.evaluate().await.unwrap();
            assert_eq!(
                history.files_read(),
                cold,
                "evaluation {half_minute} read the store"
            );
            assert_eq!(e.objectives[0].tallies.get(BUDGET_WINDOW).requests, sent);
        }
    }

    /// 0.8% errors for 70 minutes after 5 quiet hours at 0.01%: the page fires at the first
    /// evaluation where both the 1 h and the 5 m windows burn over 14.4, is logged once, and
    /// resolves once the 5 m window holds a quiet minute; the ticket fires when the 1d and 2h
    /// windows burn over 3.
    #[tokio::test]
    async fn a_burst_pages_and_resolves_at_the_hand_worked_evaluations() {
        let s = setup(&SloConfig::default(), 500_000 * 3_600);
        let send = |errors_per_10k: u64| {
            let now = s.clock.now_nanos();
            let batch: Vec<_> = (0..10_000u64)
                .map(|i| record("a", now, 1_000_000, i < errors_per_10k))
                .collect();
            assert_eq!(lock(s.handle.state()).apply(&batch).accepted, 10_000);
        };
        let mut fired_at = None;
        let mut resolved_at = None;
        for m in 0..7 * 60u64 {
            // Quiet for 5 h, 80 errors in 10 000 (0.8%) from minute 300 to 369, quiet again.
            let burst = (300..370).contains(&m);
            send(if burst { 80 } else { 1 });
            s.clock.advance(Duration::from_secs(60));
            s.evaluator.evaluate().await.unwrap();
            let firing = s.alerts.is_firing("availability", Severity::Page);
            if firing && fired_at.is_none() {
                fired_at = Some(m);
            }
            if !firing && fired_at.is_some() && resolved_at.is_none() {
                resolved_at = Some(m);
            }
        }
        // Worked by hand. After sending minute m the clock opens minute m + 1 (empty), so the
        // 1h window holds the sent minutes m − 58 ..= m (59), the 5m window m − 3 ..= m (4).
        // With b burst minutes of n sent, the burn is (80b + (n − b)) / (10 000 n) / 0.0005
        // = (79b + n) / 5n.
        // - 1h over 14.4: 79b + 59 > 4 248, b ≥ 54; 5m over 14.4: 79b + 4 > 288, b = 4.
        //   In the burst b(1h) = m − 299, so the page fires at minute 353.
        // - 6h/30m never holds: 6h over 6 needs 79b > 29n, b > 121 of about 330 minutes.
        // - It resolves when the 5m window holds a quiet minute: minute 370 (b(1h) stays 59).
        assert_eq!((fired_at, resolved_at), (Some(353), Some(370)));
        // The ticket: 3d and 6h both hold every sent minute (n = m + 1) until minute 418, so
        // over 1 once 79(m − 299) > 4(m + 1): at minute 315 both sides are 1 264, a burn of
        // exactly 1, which does not fire; minute 316 does (1d and 2h over 3 only from 364).
        let ticket: Vec<_> = s
            .alerts
            .transitions()
            .into_iter()
            .filter(|t| t.severity == Severity::Ticket)
            .map(|t| (t.firing, t.at_unix_nanos / MINUTE_NANOS - 500_000 * 60))
            .collect();
        assert_eq!(ticket.first(), Some(&(true, 317)));
        let transitions: Vec<_> = s
            .alerts
            .transitions()
            .into_iter()
            .filter(|t| t.severity == Severity::Page)
            .map(|t| (t.firing, t.at_unix_nanos / MINUTE_NANOS - 500_000 * 60))
            .collect();
        // Logged once each, at the evaluation (minute m + 1 of recmeter's clock).
        assert_eq!(transitions, [(true, 354), (false, 371)]);
    }

    /// Sends `n` requests of service `a` at the clock's minute, `bad` of them failed, then
    /// moves the clock a minute and evaluates.
    async fn minute(s: &Setup, n: u64, bad: u64) {
        let now = s.clock.now_nanos();
        let batch: Vec<_> = (0..n)
            .map(|i| record("a", now, 1_000_000, i < bad))
            .collect();
        assert_eq!(lock(s.handle.state()).apply(&batch).accepted, n);
        s.clock.advance(Duration::from_secs(60));
        s.evaluator.evaluate().await.unwrap();
    }

    /// A quiet service failing half of its 10 requests a minute pages without `min_requests`,
    /// and never with `min_requests = 1000` (its 1h window holds 590).
    #[tokio::test]
    async fn min_requests_keeps_a_quiet_service_from_paging() {
        for (min_requests, pages) in [(0, true), (1_000, false)] {
            let mut config = SloConfig::default();
            config.objectives[0].min_requests = min_requests;
            let s = setup(&config, 500_000 * 3_600);
            for _ in 0..90 {
                minute(&s, 10, 5).await;
            }
            assert_eq!(
                s.alerts.is_firing("availability", Severity::Page),
                pages,
                "min_requests {min_requests}"
            );
        }
    }

    /// `no_data` fires once the objective's series got no request for `no_data_after` (10 min
    /// by default), resolves when requests come back, and touches no burn alert; steady
    /// traffic never fires it.
    #[tokio::test]
    async fn no_data_fires_after_silence_and_only_then() {
        let s = setup(&SloConfig::default(), 500_000 * 3_600);
        for _ in 0..30 {
            minute(&s, 100, 0).await;
            assert!(!s.alerts.is_firing("availability", Severity::NoData));
        }
        // Silence: the last request was in minute 29; after minute m is evaluated (minute
        // m + 1 open) the 10 minutes m − 8 ..= m + 1 hold none from m = 38 on.
        let mut fired = None;
        for m in 30..45u64 {
            s.clock.advance(Duration::from_secs(60));
            s.evaluator.evaluate().await.unwrap();
            if fired.is_none() && s.alerts.is_firing("availability", Severity::NoData) {
                fired = Some(m);
            }
        }
        assert_eq!(fired, Some(38));
        assert!(s.alerts.is_firing("latency", Severity::NoData));
        assert!(!s.alerts.is_firing("availability", Severity::Page));
        minute(&s, 100, 0).await;
        assert!(!s.alerts.is_firing("availability", Severity::NoData));
        let no_data: Vec<bool> = s
            .alerts
            .transitions()
            .iter()
            .filter(|t| t.slo == "availability")
            .map(|t| {
                assert_eq!(t.severity, Severity::NoData);
                t.firing
            })
            .collect();
        assert_eq!(no_data, [true, false]);
    }
}
