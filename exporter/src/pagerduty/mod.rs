//! recmeter's own SLO alerts to PagerDuty, through the Events API v2: a trigger when an
//! alert starts firing and a resolve with the same `dedup_key` when it stops, delivered at
//! least once from an outbox that the log and the checkpoints keep, through PagerDuty outages
//! and `kill -9` alike.

pub mod config;
pub mod deliver;
pub mod event;
pub mod outbox;

pub use config::{PagerDutyConfig, Routing};
pub use deliver::{Answer, Client, Deliverer};
pub use event::EventContext;
pub use outbox::{Outbox, Receipt};
