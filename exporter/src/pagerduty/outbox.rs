//! The PagerDuty outbox, a checkpoint participant. It subscribes to the SLO alerts: each
//! transition with a routing key queues as it takes effect, under the same hold of the
//! aggregator's lock, live or at replay. Each delivery's outcome (accepted, or rejected for
//! good) is a log entry of its own that takes the event out. So after `kill -9` the outbox
//! holds exactly the transitions whose outcome was not logged: at least once, and more than
//! once only for a crash between PagerDuty's 202 and its log entry.

use std::collections::VecDeque;
use std::sync::Arc;

use recmeter_aggregator::clock::Nudge;
use recmeter_aggregator::error::{Error, Result};
use recmeter_aggregator::participant::{Event, Participant};
use recmeter_aggregator::slo::alerts::TransitionSubscriber;
use recmeter_aggregator::slo::{Severity, Transition};
use serde::{Deserialize, Serialize};

/// A transition waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// Its place in the outbox, from 1, never reused.
    pub id: u64,
    pub transition: Transition,
}

/// What the outbox holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OutboxState {
    /// The id the next transition gets.
    next_id: u64,
    /// Waiting, oldest first.
    pending: VecDeque<Queued>,
}

/// A delivery's outcome, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Receipt {
    /// PagerDuty answered 2xx.
    Accepted { id: u64 },
    /// PagerDuty refused it for good (a 4xx other than 429), or no routing key covers it
    /// any more.
    Rejected { id: u64, status: u16 },
}

impl Receipt {
    /// The id of the event it takes out.
    pub const fn id(self) -> u64 {
        match self {
            Receipt::Accepted { id } | Receipt::Rejected { id, .. } => id,
        }
    }
}

/// The PagerDuty outbox participant.
#[derive(Debug, Default)]
pub struct Outbox {
    state: parking_lot::Mutex<OutboxState>,
    /// The severities that have a routing key: only their transitions queue.
    routed: Vec<Severity>,
    /// Wakes the delivery task when a transition queues.
    nudge: parking_lot::Mutex<Option<Nudge>>,
}

impl Outbox {
    /// Its name: the component of its log events and its manifest section.
    pub const NAME: &'static str = "pagerduty_outbox";

    /// An outbox for the transitions of `routed` severities (none: PagerDuty is off, and the
    /// outbox only keeps what an earlier run left).
    pub fn new(routed: Vec<Severity>) -> Self {
        Self {
            routed,
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
            state.next_id += 1;
            let id = state.next_id;
            state.pending.push_back(Queued {
                id,
                transition: transition.clone(),
            });
        }
        if let Some(nudge) = &*self.nudge.lock() {
            nudge.nudge();
        }
    }

    /// The event that logs `receipt`.
    pub fn event(receipt: Receipt) -> Result<Event> {
        Ok(Event {
            component: Self::NAME.to_owned(),
            payload: serde_json::to_vec(&receipt).map_err(|e| {
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

    /// Takes the receipt's event out; a receipt replayed twice, or for an event already gone,
    /// changes nothing.
    fn apply(&self, event: &[u8]) -> Result<()> {
        let id = Self::decode(event)?.id();
        self.state.lock().pending.retain(|q| q.id != id);
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
        Transition {
            slo: slo.into(),
            severity,
            firing,
            at_unix_nanos: 1,
            burn_rates: BTreeMap::new(),
            budget_remaining: 1.0,
        }
    }

    fn apply(alerts: &SloAlerts, t: &Transition) {
        alerts.apply(&SloAlerts::event(t).unwrap().payload).unwrap();
    }

    #[test]
    fn routed_transitions_queue_until_their_receipt_and_survive_a_checkpoint() {
        let outbox = Arc::new(Outbox::new(vec![Severity::Page]));
        let alerts = SloAlerts::default().with_subscriber(outbox.subscriber());
        apply(&alerts, &transition("a", Severity::Page, true));
        apply(&alerts, &transition("a", Severity::Ticket, true));
        apply(&alerts, &transition("b", Severity::Page, true));
        apply(&alerts, &transition("a", Severity::Page, false));
        let ids: Vec<u64> = outbox.pending().iter().map(|q| q.id).collect();
        assert_eq!(ids, [1, 2, 3], "tickets have no routing key here");
        for receipt in [
            Receipt::Accepted { id: 1 },
            Receipt::Rejected { id: 2, status: 400 },
            Receipt::Accepted { id: 1 },
        ] {
            let event = Outbox::event(receipt).unwrap();
            outbox.check(&event.payload).unwrap();
            outbox.apply(&event.payload).unwrap();
        }
        let copy = Outbox::new(vec![Severity::Page]);
        copy.restore(outbox.save().unwrap()).unwrap();
        assert_eq!(copy.pending(), outbox.pending());
        assert_eq!(
            copy.pending()[0].transition,
            transition("a", Severity::Page, false)
        );
        // Ids continue after a restore.
        let copy = Arc::new(copy);
        let alerts = SloAlerts::default().with_subscriber(copy.subscriber());
        apply(&alerts, &transition("c", Severity::Page, true));
        assert_eq!(copy.pending().last().unwrap().id, 4);
        assert!(outbox.check(b"{\"accepted\": {}}").is_err());
    }
}
