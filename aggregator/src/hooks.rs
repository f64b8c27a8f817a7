//! Named faults for tests (`POST /-/test/hook`), armed only when the binary runs with
//! `--test-hooks`. Each is a switch that the code under test waits on.

use tokio::sync::watch;

/// A named fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The aggregator worker stops taking batches off its queue until released, so the queue
    /// fills and senders see backpressure.
    StallAggregator,
    /// The WAL writer holds each fsync until released, so no request is answered meanwhile.
    BlockFsync,
    /// Every WAL write fails as on a full disk, until released.
    FailWalWrites,
    /// Checkpoints write their data files, then fail before the manifest (a crash there, as
    /// far as storage can tell).
    FailCheckpointAfterFiles,
    /// Compactions write their merged files, then fail before the manifest that would replace
    /// the old ones (a crash there, as far as storage can tell).
    FailCompactionAfterFiles,
    /// PagerDuty delivery holds each accepted event's receipt (the 202 received, nothing
    /// logged yet) until released: a `kill -9` then falls between the two.
    HoldPagerdutyReceipt,
    /// The billing source holds each export's commit (its files written, the event that puts
    /// them in force not logged) until released: a `kill -9` then falls between the two.
    HoldBillingCommit,
    /// The Kafka source withholds its group commits (checkpoints go on and become durable)
    /// until released: a `kill -9` then falls between a durable checkpoint and its commit.
    HoldKafkaCommit,
}

impl Hook {
    /// Every hook, by name.
    pub const ALL: [Hook; 8] = [
        Hook::StallAggregator,
        Hook::BlockFsync,
        Hook::FailWalWrites,
        Hook::FailCheckpointAfterFiles,
        Hook::FailCompactionAfterFiles,
        Hook::HoldPagerdutyReceipt,
        Hook::HoldBillingCommit,
        Hook::HoldKafkaCommit,
    ];

    /// The name used in `POST /-/test/hook`.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::StallAggregator => "stall_aggregator",
            Hook::BlockFsync => "block_fsync",
            Hook::FailWalWrites => "fail_wal_writes",
            Hook::FailCheckpointAfterFiles => "fail_checkpoint_after_files",
            Hook::FailCompactionAfterFiles => "fail_compaction_after_files",
            Hook::HoldPagerdutyReceipt => "hold_pagerduty_receipt",
            Hook::HoldBillingCommit => "hold_billing_commit",
            Hook::HoldKafkaCommit => "hold_kafka_commit",
        }
    }

    /// The hook called `name`.
    pub fn from_name(name: &str) -> Option<Hook> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// The switches, all off at start.
#[derive(Debug)]
pub struct Hooks {
    switches: [watch::Sender<bool>; Hook::ALL.len()],
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            switches: std::array::from_fn(|_| watch::Sender::new(false)),
        }
    }
}

impl Hooks {
    /// Arms or releases `hook`.
    pub fn set(&self, hook: Hook, on: bool) {
        self.switches[hook as usize].send_replace(on);
    }

    /// Whether `hook` is armed.
    pub fn is_on(&self, hook: Hook) -> bool {
        *self.switches[hook as usize].borrow()
    }

    /// Returns once `hook` is armed.
    pub async fn armed(&self, hook: Hook) {
        let mut rx = self.switches[hook as usize].subscribe();
        let _ = rx.wait_for(|on| *on).await;
    }

    /// Returns once `hook` is not armed.
    pub async fn released(&self, hook: Hook) {
        let mut rx = self.switches[hook as usize].subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|on| !on).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn released_waits_for_the_switch() {
        let hooks = std::sync::Arc::new(Hooks::default());
        hooks.released(Hook::StallAggregator).await; // off: returns at once
        hooks.set(Hook::StallAggregator, true);
        let waiter = tokio::spawn({
            let hooks = hooks.clone();
            async move { hooks.released(Hook::StallAggregator).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        hooks.set(Hook::StallAggregator, false);
        waiter.await.unwrap();
        assert_eq!(
            Hook::from_name("stall_aggregator"),
            Some(Hook::StallAggregator)
        );
        assert_eq!(Hook::from_name("nope"), None);
    }
}
