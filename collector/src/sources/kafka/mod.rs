//! The Kafka source (issue 29): traces, metric points and cost lines from topics, counted
//! exactly once. So far its `[kafka]` configuration; the consumer follows.

pub mod config;

pub use config::{Encoding, InitialOffset, KafkaConfig};
