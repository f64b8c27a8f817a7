//! The Kafka source's families: `recmeter_kafka_consumer_lag{topic,partition}`,
//! `recmeter_kafka_dlq_total{topic}`, `recmeter_kafka_rebalances_total` and
//! `recmeter_kafka_last_commit_timestamp_seconds`. (Spans and points received and requests
//! rejected over Kafka are the ingest families' `transport="kafka"` series.)

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use recmeter_aggregator::kafka::KafkaStatus;

use super::provider::{Part, Provider, ReadFuture};

/// The Kafka exposition provider, registered while the Kafka source runs.
#[derive(Debug)]
pub struct KafkaProvider {
    pub status: Arc<KafkaStatus>,
    /// The topics read, listed in `recmeter_kafka_dlq_total` from the start.
    pub topics: Vec<String>,
}

impl Provider for KafkaProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
            let lag = self.status.lag();
            let size_hint = 1_024 + lag.len() * 128;
            Ok(Part {
                collector: Box::new(Kafka {
                    lag,
                    dead_lettered: self.status.dead_lettered(&topics),
                    rebalances: self.status.rebalances(),
                    last_commit: self.status.last_commit(),
                }),
                size_hint,
            })
        })
    }
}

#[derive(Debug)]
struct Kafka {
    lag: BTreeMap<(String, i32), i64>,
    dead_lettered: BTreeMap<String, u64>,
    rebalances: u64,
    last_commit: Option<u64>,
}

impl Collector for Kafka {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "recmeter_kafka_consumer_lag",
            "Messages of each partition assigned here that the group has not committed yet \
             (the high watermark less the group's offset, from librdkafka's statistics; before \
             the first commit, less the oldest offset kept): recmeter commits once a \
             checkpoint holds them.",
            None,
            MetricType::Gauge,
        )?;
        for ((topic, partition), lag) in &self.lag {
            family
                .encode_family(&[
                    ("topic", topic.as_str()),
                    ("partition", &partition.to_string()),
                ])?
                .encode_gauge(lag)?;
        }
        let mut family = encoder.encode_descriptor(
            "recmeter_kafka_dlq",
            "Messages that could not be read, written to their topic's dead-letter topic, by the \
             topic they came from.",
            None,
            MetricType::Counter,
        )?;
        for (topic, n) in &self.dead_lettered {
            family
                .encode_family(&[("topic", topic.as_str())])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(n, None)?;
        }
        encoder
            .encode_descriptor(
                "recmeter_kafka_rebalances",
                "Partition assignments and revocations this instance went through.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                &self.rebalances,
                None,
            )?;
        // Absent until the first commit since the start: a 0 would read as a commit in 1970.
        if let Some(at) = self.last_commit {
            encoder
                .encode_descriptor(
                    "recmeter_kafka_last_commit_timestamp_seconds",
                    "When the consumer group last took recmeter's commit of the positions a \
                     durable checkpoint holds.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(at as f64 / 1e9))?;
        }
        Ok(())
    }
}
