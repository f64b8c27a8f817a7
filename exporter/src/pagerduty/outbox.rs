//! The PagerDuty outbox, a checkpoint participant. It subscribes to the SLO alerts: each
//! transition with a routing key queues as it takes effect, under the same hold of the
//! aggregator's lock, live or at replay. Each delivery's outcome (accepted, or rejected for
//! good) is a log entry of its own that takes the event out. So after `kill -9` the outbox
//! holds exactly the transitions whose outcome was not logged: at least once, and more than
//! once only for a crash between PagerDuty's 202 and its log entry.
//!
//! It also remembers which alerts PagerDuty was told fire (a trigger queued, its resolve not
//! yet). At a start with PagerDuty on, [`Outbox::reconcile`] finds the alerts whose changes
//! were not queued (PagerDuty off, or no key for their severity, when they changed) and queues
//! what brings PagerDuty in line: a trigger for each firing alert it was not told of, a resolve
//! for each it was told of that no longer fires.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use recmeter_aggregator::clock::Nudge;
use recmeter_aggregator::error::{Error, Result};
use recmeter_aggregator::participant::{Event, Participant};
use recmeter_aggregator::slo::alerts::TransitionSubscriber;
use recmeter_aggregator::slo::{Severity, Transition};
use serde::{Deserialize, Serialize};

use super::event::dedup_key;

/// Which transition an outcome is for: one alert's change at one evaluation. The outbox never
/// holds the same one twice. Outcomes name it rather than a place in the queue, so an outcome
/// replayed under another configuration (another set of routed severities) can only match
/// its own transition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventId {
    pub slo: String,
    pub severity: Severity,
    pub firing: bool,
    pub at_unix_nanos: u64,
}

/// A transition waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The incident's key: a trigger's from `service.instance` when it queued, a resolve's
    /// the trigger's, so a renamed instance still resolves what it triggered.
    pub dedup_key: String,
    /// The transition, as the alerts logged it.
    pub transition: Transition,
}

impl Queued {
    /// Which transition it is.
    pub fn id(&self) -> EventId {
        EventId {
            slo: self.transition.slo.clone(),
            severity: self.transition.severity,
            firing: self.transition.firing,
            at_unix_nanos: self.transition.at_unix_nanos,
        }
    }
}

/// What the outbox holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OutboxState {
    /// Waiting, oldest first.
    pending: VecDeque<Queued>,
    /// The alerts PagerDuty was told fire (a trigger queued, its resolve not yet): objective
    /// → severity → the trigger's dedup key.
    announced: BTreeMap<String, BTreeMap<Severity, String>>,
}

/// What the outbox logs: a delivery's outcome, or a transition queued to bring PagerDuty in
/// line with the alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Receipt {
    /// PagerDuty answered 2xx.
    Accepted { event: EventId },
    /// PagerDuty refused it for good (any status but 2xx, 429 and 5xx), or no routing key
    /// covers it any more (status 0).
    Rejected { event: EventId, status: u16 },
    /// Queued by [`Outbox::reconcile`].
    Queued { transition: Transition },
}

impl Receipt {
    /// The transition an outcome takes out.
    pub const fn event(&self) -> Option<&EventId> {
        match self {
            Receipt::Accepted { event } | Receipt::Rejected { event, .. } => Some(event),
            Receipt::Queued { .. } => None,
        }
    }
}

/// The PagerDuty outbox participant.
#[derive(Debug, Default)]
pub struct Outbox {
    state: parking_lot::Mutex<OutboxState>,
    /// The severities that have a routing key: only their transitions queue.
    routed: Vec<Severity>,
    /// `service.instance`: the scope of the dedup keys of triggers queued.
    instance: String,
    /// Wakes the delivery task when a transition queues.
    nudge: parking_lot::Mutex<Option<Nudge>>,
}

impl Outbox {
    /// Its name: the component of its log events and its manifest section.
    pub const NAME: &'static str = "pagerduty_outbox";

    /// An outbox for the transitions of `routed` severities (none: PagerDuty is off, and the
    /// outbox only keeps what an earlier run left), its triggers' dedup keys scoped by
    /// `instance`.
    pub fn new(routed: Vec<Severity>, instance: &str) -> Self {
        Self {
            routed,
            instance: instance.to_owned(),
            ..Self::default()
        }
    }

    /// The subscription to the SLO alerts that queues their transitions here.
    pub fn subscriber(self: &Arc<Self>) -> TransitionSubscriber {
        let outbox = self.clone();
        Box::new(move |t: &Transition| outbox.enqueue(t))
    }

    /// Wakes `nudge`'s task whenever a transition queues.
    pub fn wake_on_enqueue(&self, nudge: Nudge) {
        *self.nudge.lock() = Some(nudge);
    }

    fn enqueue(&self, transition: &Transition) {
        if !self.routed.contains(&transition.severity) {
            return;
        }
        {
            let mut state = self.state.lock();
            let (slo, severity) = (&transition.slo, transition.severity);
            let key = if transition.firing {
                let key = dedup_key(&self.instance, slo, severity);
                state
                    .announced
                    .entry(slo.clone())
                    .or_default()
                    .insert(severity, key.clone());
                key
            } else {
                let told = state
                    .announced
                    .get_mut(slo)
                    .and_then(|s| s.remove(&severity));
                if state.announced.get(slo).is_some_and(BTreeMap::is_empty) {
                    state.announced.remove(slo);
                }
                told.unwrap_or_else(|| dedup_key(&self.instance, slo, severity))
            };
            state.pending.push_back(Queued {
                dedup_key: key,
                transition: transition.clone(),
            });
        }
        if let Some(nudge) = &*self.nudge.lock() {
            nudge.nudge();
        }
    }

    /// What brings PagerDuty in line with the alerts of routed severities, `firing` being the
    /// transitions that started those firing now: a trigger for each it was not told of, and
    /// a resolve (at `now`, with no numbers) for each it was told of that no longer fires.
    /// Log each as [`Receipt::Queued`]. An alert PagerDuty was told of whose severity has no
    /// routing key now cannot be resolved and is left as it is.
    pub fn reconcile(&self, firing: &[Transition], now: u64) -> Vec<Transition> {
        let state = self.state.lock();
        let told = |slo: &str, severity: Severity| {
            state
                .announced
                .get(slo)
                .is_some_and(|s| s.contains_key(&severity))
        };
        let routed: Vec<&Transition> = firing
            .iter()
            .filter(|t| self.routed.contains(&t.severity))
            .collect();
        let mut out: Vec<Transition> = routed
            .iter()
            .filter(|t| !told(&t.slo, t.severity))
            .map(|t| (*t).clone())
            .collect();
        for (slo, severities) in &state.announced {
            for severity in severities.keys() {
                let fires = routed
                    .iter()
                    .any(|t| &t.slo == slo && t.severity == *severity);
                if !fires && self.routed.contains(severity) {
                    out.push(Transition {
                        slo: slo.clone(),
                        severity: *severity,
                        firing: false,
                        at_unix_nanos: now,
                        // A resolve carries no numbers.
                        burn_rates: BTreeMap::new(),
                        budget_remaining: 0.0,
                        cost: None,
                    });
                }
            }
        }
        out
    }

    /// The event that logs `receipt`.
    pub fn event(receipt: &Receipt) -> Result<Event> {
        Ok(Event {
            component: Self::NAME.to_owned(),
            payload: serde_json::to_vec(receipt).map_err(|e| {
                Error::Participant(format!("cannot encode a PagerDuty receipt: {e}"))
            })?,
        })
    }

    /// The transitions waiting, oldest first.
    pub fn pending(&self) -> Vec<Queued> {
        self.state.lock().pending.iter().cloned().collect()
    }

    /// How many transitions wait.
    pub fn pending_len(&self) -> usize {
        self.state.lock().pending.len()
    }

    fn decode(event: &[u8]) -> Result<Receipt> {
        serde_json::from_slice(event)
            .map_err(|e| Error::Participant(format!("not a PagerDuty receipt: {e}")))
    }
}

impl Participant for Outbox {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn check(&self, event: &[u8]) -> Result<()> {
        Self::decode(event).map(drop)
    }

    /// Takes an outcome's event out (an outcome replayed twice, or for an event already
    /// gone, changes nothing), or queues a reconciling transition. A trigger rejected was
    /// never told: its alert is forgotten, so the next start with a good key catches it up.
    fn apply(&self, event: &[u8]) -> Result<()> {
        let outcome = match Self::decode(event)? {
            Receipt::Queued { transition } => {
                self.enqueue(&transition);
                return Ok(());
            }
            outcome => outcome,
        };
        let Some(id) = outcome.event() else {
            return Ok(());
        };
        let mut state = self.state.lock();
        let Some(at) = state.pending.iter().position(|q| &q.id() == id) else {
            return Ok(());
        };
        let Some(gone) = state.pending.remove(at) else {
            return Ok(());
        };
        if matches!(outcome, Receipt::Rejected { .. }) && gone.transition.firing {
            let t = &gone.transition;
            if let Some(told) = state.announced.get_mut(&t.slo)
                && told.get(&t.severity) == Some(&gone.dedup_key)
            {
                told.remove(&t.severity);
                if told.is_empty() {
                    state.announced.remove(&t.slo);
                }
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&*self.state.lock())
            .map_err(|e| Error::Participant(format!("cannot save the PagerDuty outbox: {e}")))
    }

    fn restore(&self, saved: serde_json::Value) -> Result<()> {
        let state: OutboxState = serde_json::from_value(saved)
            .map_err(|e| Error::Participant(format!("cannot restore the PagerDuty outbox: {e}")))?;
        *self.state.lock() = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use recmeter_aggregator::slo::SloAlerts;

    use super::*;

    fn transition(slo: &str, severity: Severity, firing: bool) -> Transition {
        at(slo, severity, firing, 1)
    }

    fn at(slo: &str, severity: Severity, firing: bool, at_unix_nanos: u64) -> Transition {
        Transition {
            slo: slo.into(),
            severity,
            firing,
            at_unix_nanos,
            burn_rates: BTreeMap::new(),
            budget_remaining: 1.0,
            cost: None,
        }
    }

    fn apply(alerts: &SloAlerts, t: &Transition) {
        alerts.apply(&SloAlerts::event(t).unwrap().payload).unwrap();
    }

    fn receive(outbox: &Outbox, receipt: &Receipt) {
        let event = Outbox::event(receipt).unwrap();
        outbox.check(&event.payload).unwrap();
        outbox.apply(&event.payload).unwrap();
    }

    #[test]
    fn routed_transitions_queue_until_their_outcome_and_survive_a_checkpoint() {
        let outbox = Arc::new(Outbox::new(vec![Severity::Page], "i-1"));
        let alerts = SloAlerts::default().with_subscriber(outbox.subscriber());
        apply(&alerts, &at("a", Severity::Page, true, 1));
        apply(&alerts, &at("a", Severity::Ticket, true, 1));
        apply(&alerts, &at("b", Severity::Page, true, 1));
        apply(&alerts, &at("a", Severity::Page, false, 2));
        let queued: Vec<(String, bool)> = outbox
            .pending()
            .iter()
            .map(|q| (q.dedup_key.clone(), q.transition.firing))
            .collect();
        assert_eq!(
            queued,
            [
                ("recmeter/i-1/a/page".to_owned(), true),
                ("recmeter/i-1/b/page".to_owned(), true),
                ("recmeter/i-1/a/page".to_owned(), false),
            ],
            "tickets have no routing key here"
        );
        let (first, second) = (outbox.pending()[0].id(), outbox.pending()[1].id());
        receive(
            &outbox,
            &Receipt::Accepted {
                event: first.clone(),
            },
        );
        receive(&outbox, &Receipt::Accepted { event: second });
        // Replayed, or for a transition not queued here: nothing changes.
        receive(&outbox, &Receipt::Accepted { event: first });
        let copy = Outbox::new(vec![Severity::Page], "i-2");
        copy.restore(outbox.save().unwrap()).unwrap();
        assert_eq!(copy.pending(), outbox.pending());
        assert_eq!(
            copy.pending()[0].transition,
            at("a", Severity::Page, false, 2)
        );
        // Under another instance name, b's resolve keeps the key b's trigger had; a new
        // trigger takes the new name.
        let copy = Arc::new(copy);
        let later = SloAlerts::default().with_subscriber(copy.subscriber());
        later.restore(alerts.save().unwrap()).unwrap();
        apply(&later, &at("b", Severity::Page, false, 3));
        apply(&later, &at("c", Severity::Page, true, 3));
        let keys: Vec<String> = copy.pending().iter().map(|q| q.dedup_key.clone()).collect();
        assert_eq!(
            keys,
            [
                "recmeter/i-1/a/page",
                "recmeter/i-1/b/page",
                "recmeter/i-2/c/page"
            ]
        );
        assert!(outbox.check(b"{\"accepted\": {}}").is_err());
    }

    /// PagerDuty off (or a severity without a key) while alerts changed: at the next start
    /// with it on, a trigger for each firing alert it was not told of and a resolve for each
    /// it was told of that no longer fires; nothing when it was told everything.
    #[test]
    fn reconciling_brings_pagerduty_in_line_with_the_alerts() {
        let outbox = Arc::new(Outbox::new(vec![Severity::Page, Severity::Ticket], "i-1"));
        let alerts = SloAlerts::default().with_subscriber(outbox.subscriber());
        apply(&alerts, &transition("told", Severity::Page, true));
        apply(&alerts, &transition("gone", Severity::Page, true));
        // Then, with PagerDuty off, `gone` resolved and `new` fired.
        let off = SloAlerts::default();
        off.restore(alerts.save().unwrap()).unwrap();
        apply(&off, &transition("gone", Severity::Page, false));
        apply(&off, &transition("new", Severity::Ticket, true));
        apply(&off, &transition("unrouted", Severity::NoData, true));
        let mut queued = outbox.reconcile(&off.firing_since(), 7);
        queued.sort_by(|a, b| a.slo.cmp(&b.slo));
        let got: Vec<(&str, Severity, bool)> = queued
            .iter()
            .map(|t| (t.slo.as_str(), t.severity, t.firing))
            .collect();
        assert_eq!(
            got,
            [
                ("gone", Severity::Page, false),
                ("new", Severity::Ticket, true)
            ]
        );
        for t in &queued {
            let event = Outbox::event(&Receipt::Queued {
                transition: t.clone(),
            })
            .unwrap();
            outbox.check(&event.payload).unwrap();
            outbox.apply(&event.payload).unwrap();
        }
        assert_eq!(outbox.pending().len(), 4);
        assert!(outbox.reconcile(&off.firing_since(), 8).is_empty());
        // A trigger PagerDuty refused (a bad key) was not told: caught up at the next start.
        let new = outbox
            .pending()
            .into_iter()
            .find(|q| q.transition.slo == "new")
            .unwrap();
        receive(
            &outbox,
            &Receipt::Rejected {
                event: new.id(),
                status: 400,
            },
        );
        let again = outbox.reconcile(&off.firing_since(), 9);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].slo.as_str(), again[0].firing), ("new", true));
    }
}
