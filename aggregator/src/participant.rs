//! Checkpoint participants: components whose state recmeter's log and checkpoints keep, as
//! they keep the counts (SLO alert state, the PagerDuty outbox). Not Kafka offsets, which must
//! move with the batch they cover (see `docs/ARCHITECTURE.md`).
//!
//! A participant changes its state only by applying its own events. An event is logged and
//! fsynced first (`AggregatorHandle::log_event`, in either durability mode), then applied under
//! the aggregator's lock in log order. A checkpoint saves each participant's state under that
//! same hold of the lock as the rollup image, so the state matches the image's log sequence
//! number exactly: restore puts it back, then the replay applies the events after that number.
//! A participant's state goes into its own manifest section (`state/<id>-<name>.json`).
//!
//! A participant may also own files of the store (the billing ledger's cost lines): it names
//! them in its state, and each checkpoint's manifest lists them in a `kept` section of the
//! participant's ([`Participant::sections`]). Such files are written before the event that
//! names them is logged, so the start-up sweep, which runs after the replay, keeps every file
//! a participant names, and deletes those a crash left before their event.

use std::sync::Arc;

use crate::error::{Error, Result, clip};
use crate::store::manifest::FileEntry;

/// A component whose state lives in the log and the checkpoints. `check`, `apply` and `save`
/// run with the aggregator's lock held: keep them short (no I/O, no waiting).
pub trait Participant: Send + Sync {
    /// Its name: the component its log events carry and its manifest section. Unique,
    /// `[a-z0-9_]`, not a built-in section's name.
    fn name(&self) -> &'static str;
    /// Whether `event` is one it can apply; called before the event is logged, so a logged
    /// event never fails to apply (one that did would stop the next start at its replay).
    fn check(&self, event: &[u8]) -> Result<()>;
    /// Applies one of its events, live once the event is durable, or at replay.
    fn apply(&self, event: &[u8]) -> Result<()>;
    /// Its state as of the last event applied.
    fn save(&self) -> Result<serde_json::Value>;
    /// Puts back what `save` returned, before the replay applies later events.
    fn restore(&self, saved: serde_json::Value) -> Result<()>;
    /// The store sections whose files it owns, with their files as of the last event applied
    /// (none by default). Called with the lock held, like `save`.
    fn sections(&self) -> Vec<OwnedSection> {
        Vec::new()
    }
}

/// A manifest section of files a participant owns: files stay from one checkpoint to the next
/// (`kept`) for as long as the participant names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSection {
    /// The section's name: unique, `[a-z0-9_]`, not a built-in section's.
    pub name: &'static str,
    /// The prefix its files live under; the sweep covers it.
    pub prefix: &'static str,
    pub files: Vec<FileEntry>,
}

/// A component event: a small record of something a participant did (an SLO transition, a
/// delivery receipt), logged and then applied to the participant named `component`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub component: String,
    pub payload: Vec<u8>,
}

/// Largest event payload: events are small records, not data.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Names no participant may take: the built-in manifest sections and state files.
const RESERVED: [&str; 6] = [
    "state",
    "kafka_offsets",
    "latency_minutes",
    "latency_hours",
    "metric_streams",
    "series",
];

/// The participants of one process, by name.
#[derive(Clone, Default)]
pub struct Participants {
    list: Vec<Arc<dyn Participant>>,
}

impl std::fmt::Debug for Participants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|p| p.name()))
            .finish()
    }
}

impl Participants {
    /// Adds `participant`; refuses a name taken, reserved or not `[a-z0-9_]`.
    pub fn register(&mut self, participant: Arc<dyn Participant>) -> Result<()> {
        let name = participant.name();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid || RESERVED.contains(&name) {
            return Err(Error::Participant(format!(
                "checkpoint participant `{name}`: a name must be [a-z0-9_] and not one of {RESERVED:?}"
            )));
        }
        if self.get(name).is_some() {
            return Err(Error::Participant(format!(
                "checkpoint participant `{name}` is registered twice"
            )));
        }
        self.list.push(participant);
        Ok(())
    }

    /// The participant called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Participant>> {
        self.list.iter().find(|p| p.name() == name)
    }

    /// Every participant, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Participant>> {
        self.list.iter()
    }

    /// Applies `event` to its participant; an error names a component nobody registered.
    pub fn apply(&self, event: &Event) -> Result<()> {
        let participant = self.get(&event.component).ok_or_else(|| {
            Error::Participant(format!(
                "an event for component `{}`, which is not running here (running: {self:?}); \
                 start recmeter with the configuration that wrote the log",
                clip(&event.component, 64)
            ))
        })?;
        participant.apply(&event.payload)
    }
}

/// The participant `--test-hooks` registers: a ledger of the numbers posted to
/// `/-/test/ledger`, whose state is exactly the events it applied, in order.
#[derive(Debug, Default)]
pub struct TestLedger {
    applied: parking_lot::Mutex<Vec<u64>>,
}

impl TestLedger {
    /// Its name, which its events carry.
    pub const NAME: &'static str = "test_ledger";

    /// The numbers applied so far, in order.
    pub fn applied(&self) -> Vec<u64> {
        self.applied.lock().clone()
    }

    /// The number an event adds.
    fn number(event: &[u8]) -> Result<u64> {
        let n = <[u8; 8]>::try_from(event).map_err(|_| {
            Error::Participant(format!(
                "a {} event of {} bytes (8 expected)",
                Self::NAME,
                event.len()
            ))
        })?;
        Ok(u64::from_le_bytes(n))
    }

    /// The event that adds `n`.
    pub fn event(n: u64) -> Event {
        Event {
            component: Self::NAME.to_owned(),
            payload: n.to_le_bytes().to_vec(),
        }
    }
}

impl Participant for TestLedger {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn check(&self, event: &[u8]) -> Result<()> {
        Self::number(event).map(drop)
    }

    fn apply(&self, event: &[u8]) -> Result<()> {
        let n = Self::number(event)?;
        self.applied.lock().push(n);
        Ok(())
    }

    fn save(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "applied": *self.applied.lock() }))
    }

    fn restore(&self, saved: serde_json::Value) -> Result<()> {
        let applied = saved["applied"]
            .as_array()
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect())
            .ok_or_else(|| Error::Storage(format!("{}: not a saved ledger", Self::NAME)))?;
        *self.applied.lock() = applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_unique() {
        struct Named(&'static str);
        impl Participant for Named {
            fn name(&self) -> &'static str {
                self.0
            }
            fn check(&self, _: &[u8]) -> Result<()> {
                Ok(())
            }
            fn apply(&self, _: &[u8]) -> Result<()> {
                Ok(())
            }
            fn save(&self) -> Result<serde_json::Value> {
                Ok(serde_json::Value::Null)
            }
            fn restore(&self, _: serde_json::Value) -> Result<()> {
                Ok(())
            }
        }
        let mut all = Participants::default();
        all.register(Arc::new(Named("slo"))).unwrap();
        for bad in ["slo", "state", "Kafka", "", "a-b"] {
            assert!(all.register(Arc::new(Named(bad))).is_err(), "{bad}");
        }
        let e = all
            .apply(&Event {
                component: "kafka".into(),
                payload: vec![],
            })
            .unwrap_err();
        assert!(e.to_string().contains("`kafka`"), "{e}");
    }

    #[test]
    fn the_ledger_saves_what_it_applied() {
        let ledger = TestLedger::default();
        for n in [3, 1, 2] {
            ledger.apply(&TestLedger::event(n).payload).unwrap();
        }
        assert!(ledger.check(b"short").is_err());
        assert!(ledger.apply(b"short").is_err());
        let copy = TestLedger::default();
        copy.restore(ledger.save().unwrap()).unwrap();
        assert_eq!(copy.applied(), vec![3, 1, 2]);
    }
}
