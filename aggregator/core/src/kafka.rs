//! What the Kafka source reports on `/metrics` beyond the ingest counters: consumer lag per
//! partition (from librdkafka's statistics), dead-lettered messages per topic, rebalances, and
//! when the group last took a commit. The source writes it; the exporter reads it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// The Kafka source's own figures.
#[derive(Debug, Default)]
pub struct KafkaStatus {
    /// `(topic, partition)` to messages not yet committed, for the partitions assigned here.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Messages written to a dead-letter topic, by the topic they came from.
    dead_lettered: Mutex<BTreeMap<String, u64>>,
    rebalances: AtomicU64,
    /// Unix nanoseconds of the last commit the group took; 0 before the first.
    last_commit: AtomicU64,
}

impl KafkaStatus {
    /// Replaces the lag of every partition assigned here.
    pub fn set_lag(&self, lag: BTreeMap<(String, i32), i64>) {
        *self.lag.lock() = lag;
    }

    /// The lag of each partition assigned here.
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        self.lag.lock().clone()
    }

    /// Counts one message of `topic` written to its dead-letter topic.
    pub fn add_dead_lettered(&self, topic: &str) {
        *self
            .dead_lettered
            .lock()
            .entry(topic.to_owned())
            .or_default() += 1;
    }

    /// Messages dead-lettered so far, by source topic; `topics` are listed at 0 until then.
    pub fn dead_lettered(&self, topics: &[&str]) -> BTreeMap<String, u64> {
        let mut all = self.dead_lettered.lock().clone();
        for topic in topics {
            all.entry((*topic).to_owned()).or_default();
        }
        all
    }

    /// Counts one rebalance (an assignment or a revocation).
    pub fn add_rebalance(&self) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }

    /// Notes a commit the group took at `unix_nanos`.
    pub fn committed(&self, unix_nanos: u64) {
        self.last_commit.store(unix_nanos, Ordering::Relaxed);
    }

    /// When the group last took a commit, if it has since the start.
    pub fn last_commit(&self) -> Option<u64> {
        match self.last_commit.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }
}
