//! The SLO alerts' state, kept by recmeter's log and checkpoints (a checkpoint participant):
//! which alerts fire, and every transition (firing or resolved) with the burn rates that made
//! it. A transition is logged and fsynced before it takes effect, so after `kill -9` a firing
//! alert is still firing, and no transition is lost or repeated. A component that acts on
//! transitions (the PagerDuty outbox) subscribes: it hears each transition as it takes effect,
//! live or at replay, under the same hold of the aggregator's lock, so its own state moves in
//! step with the alerts' at every log sequence number.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::config::Severity;
use crate::error::{Error, Result};
use crate::participant::{Event, Participant};

/// Transitions kept for `slo_alerts` (the oldest go first).
pub const MAX_TRANSITIONS: usize = 10_000;

/// One alert firing or resolving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub slo: String,
    pub severity: Severity,
    /// `true` when it starts firing, `false` when it resolves.
    pub firing: bool,
    /// recmeter's clock at the evaluation, Unix nanoseconds.
    pub at_unix_nanos: u64,
    /// The burn rate of each window at that evaluation, by window label.
    pub burn_rates: BTreeMap<String, f64>,
    /// The 30-day error budget left at that evaluation.
    pub budget_remaining: f64,
    /// For a `cost` objective: the platform's USD per recommendation on the latest complete
    /// day at that evaluation, and the day's start (UTC nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostReading>,
}

/// What a `cost` objective read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostReading {
    pub usd_per_recommendation: f64,
    pub day_start: i64,
}

/// What the alerts hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AlertState {
    /// The firing alerts: objective → severity → the transition that started it.
    firing: BTreeMap<String, BTreeMap<Severity, Transition>>,
    /// The latest transitions, oldest first.
    transitions: VecDeque<Transition>,
}

/// Hears each transition as it takes effect (see the module's documentation). It runs under
/// the aggregator's lock: no I/O, no waiting.
pub type TransitionSubscriber = Box<dyn Fn(&Transition) + Send + Sync>;

/// The SLO alerts participant.
#[derive(Default)]
pub struct SloAlerts {
    state: parking_lot::Mutex<AlertState>,
    subscribers: Vec<TransitionSubscriber>,
}

impl std::fmt::Debug for SloAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SloAlerts")
            .field("state", &self.state)
            .field("subscribers", &self.subscribers.len())
            .finish()
    }
}

impl SloAlerts {
    /// Its name: the component of its log events and its manifest section.
    pub const NAME: &'static str = "slo_alerts";

    /// Alerts whose transitions `subscriber` hears, after those already subscribed.
    #[must_use]
    pub fn with_subscriber(mut self, subscriber: TransitionSubscriber) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    /// The event that logs `transition`.
    pub fn event(transition: &Transition) -> Result<Event> {
        Ok(Event {
            component: Self::NAME.to_owned(),
            payload: serde_json::to_vec(transition)
                .map_err(|e| Error::Participant(format!("cannot encode an SLO transition: {e}")))?,
        })
    }

    /// Whether `slo`'s `severity` alert fires.
    pub fn is_firing(&self, slo: &str, severity: Severity) -> bool {
        self.state
            .lock()
            .firing
            .get(slo)
            .is_some_and(|s| s.contains_key(&severity))
    }

    /// The firing alerts, as (objective, severity) pairs.
    pub fn firing(&self) -> Vec<(String, Severity)> {
        self.state
            .lock()
            .firing
            .iter()
            .flat_map(|(slo, s)| s.keys().map(move |sev| (slo.clone(), *sev)))
            .collect()
    }

    /// The transitions that started the firing alerts.
    pub fn firing_since(&self) -> Vec<Transition> {
        self.state
            .lock()
            .firing
            .values()
            .flat_map(|s| s.values().cloned())
            .collect()
    }

    /// The transitions kept, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.state.lock().transitions.iter().cloned().collect()
    }

    fn decode(event: &[u8]) -> Result<Transition> {
        serde_json::from_slice(event)
            .map_err(|e| Error::Participant(format!("not an SLO transition: {e}")))
    }
}

impl Participant for SloAlerts {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn check(&self, event: &[u8]) -> Result<()> {
        Self::decode(event).map(drop)
    }

    /// Applies a transition. One that changes nothing (an alert already in that state) is
    /// kept out of the list, so a transition replayed twice is counted once.
    fn apply(&self, event: &[u8]) -> Result<()> {
        let t = Self::decode(event)?;
        let mut state = self.state.lock();
        let was = state
            .firing
            .get(&t.slo)
            .is_some_and(|s| s.contains_key(&t.severity));
        if was == t.firing {
            return Ok(());
        }
        if t.firing {
            state
                .firing
                .entry(t.slo.clone())
                .or_default()
                .insert(t.severity, t.clone());
        } else if let Some(s) = state.firing.get_mut(&t.slo) {
            s.remove(&t.severity);
            if s.is_empty() {
                state.firing.remove(&t.slo);
            }
        }
        while state.transitions.len() >= MAX_TRANSITIONS {
            state.transitions.pop_front();
        }
        state.transitions.push_back(t.clone());
        drop(state);
        for subscriber in &self.subscribers {
            subscriber(&t);
        }
        Ok(())
    }

    fn save(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&*self.state.lock())
            .map_err(|e| Error::Participant(format!("cannot save the SLO alerts: {e}")))
    }

    fn restore(&self, saved: serde_json::Value) -> Result<()> {
        let state: AlertState = serde_json::from_value(saved)
            .map_err(|e| Error::Participant(format!("cannot restore the SLO alerts: {e}")))?;
        *self.state.lock() = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(severity: Severity, firing: bool, at: u64) -> Transition {
        Transition {
            slo: "availability".into(),
            severity,
            firing,
            at_unix_nanos: at,
            burn_rates: BTreeMap::from([("1h".to_owned(), 16.0), ("5m".to_owned(), 16.5)]),
            budget_remaining: 0.7,
            cost: None,
        }
    }

    #[test]
    fn transitions_apply_once_and_survive_a_checkpoint() {
        let alerts = SloAlerts::default();
        for t in [
            transition(Severity::Page, true, 1),
            transition(Severity::Page, true, 2),
            transition(Severity::Ticket, true, 3),
            transition(Severity::Page, false, 4),
        ] {
            let event = SloAlerts::event(&t).unwrap();
            alerts.check(&event.payload).unwrap();
            alerts.apply(&event.payload).unwrap();
        }
        assert_eq!(
            alerts.firing(),
            [("availability".to_owned(), Severity::Ticket)]
        );
        let at: Vec<u64> = alerts
            .transitions()
            .iter()
            .map(|t| t.at_unix_nanos)
            .collect();
        assert_eq!(at, [1, 3, 4], "the repeated firing is not a transition");
        let copy = SloAlerts::default();
        copy.restore(alerts.save().unwrap()).unwrap();
        assert_eq!(copy.transitions(), alerts.transitions());
        assert!(copy.is_firing("availability", Severity::Ticket));
        assert!(alerts.check(b"{\"slo\": 1}").is_err());
    }

    #[test]
    fn subscribers_hear_each_transition_that_takes_effect_once() {
        let heard = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let alerts = SloAlerts::default().with_subscriber(Box::new({
            let heard = heard.clone();
            move |t: &Transition| heard.lock().push((t.severity, t.firing))
        }));
        for (severity, firing) in [
            (Severity::Page, true),
            (Severity::Page, true),
            (Severity::Page, false),
            (Severity::Ticket, false),
        ] {
            let event = SloAlerts::event(&transition(severity, firing, 1)).unwrap();
            alerts.apply(&event.payload).unwrap();
        }
        assert_eq!(
            *heard.lock(),
            [(Severity::Page, true), (Severity::Page, false)]
        );
    }
}
