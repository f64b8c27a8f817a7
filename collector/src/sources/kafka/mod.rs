//! The Kafka source (issue 29): traces and metric points from topics, each message counted
//! exactly once. Its `[kafka]` configuration (`config`) and the consumer (`consumer`), which
//! moves each partition's position with the counts and commits what durable checkpoints hold.

pub mod config;
mod consumer;

pub use config::{Encoding, InitialOffset, KafkaConfig};
pub use consumer::{KafkaHandle, KafkaSource, MessageLimits};
