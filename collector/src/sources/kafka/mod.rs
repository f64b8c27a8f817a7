//! The Kafka source (issue 29): traces, metric points and cost lines from topics, each
//! message counted exactly once. Its `[kafka]` configuration (`config`), the consumer
//! (`consumer`), which moves each partition's position with the counts and commits what
//! durable checkpoints hold, and the billing topic's cost lines (`billing`).

mod billing;
pub mod config;
mod consumer;

pub use config::{Encoding, InitialOffset, KafkaConfig};
pub use consumer::{KafkaHandle, KafkaSource, MessageLimits};
