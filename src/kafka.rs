//! Starting the Kafka source from `[kafka]` (issue 29): its librdkafka options, the limits an
//! OTLP request has, the checkpoints it commits after, where its cost lines land, and the test
//! hook that withholds its commits.

use std::sync::Arc;

use recmeter_aggregator::cost::Landing;
use recmeter_aggregator::durability::{Checkpointer, SourceCheckpoints};
use recmeter_aggregator::kafka::KafkaStatus;
use recmeter_aggregator::{Aggregator, AggregatorHandle, Hook, Hooks, InvalidField};
use recmeter_collector::sources::kafka::{KafkaConfig, KafkaHandle, KafkaSource, MessageLimits};
use recmeter_collector::sources::otlp::Ingest;

use crate::config::Config;
use crate::error::{Error, Result};

/// Starts the Kafka source when `[kafka]` names brokers; `None` while it is off.
pub fn start(
    config: &Config,
    ingest: Ingest,
    aggregator: &AggregatorHandle,
    checkpoints: Arc<Checkpointer>,
    hooks: Arc<Hooks>,
    status: Arc<KafkaStatus>,
    landing: Arc<dyn Landing>,
) -> Result<Option<KafkaHandle>> {
    let kafka: &KafkaConfig = &config.kafka;
    if !kafka.is_on() {
        tracing::info!("The Kafka source is off: [kafka] names no brokers.");
        return Ok(None);
    }
    let options = kafka.client_options().map_err(Error::Config)?;
    tracing::info!(
        brokers = %kafka.brokers,
        group = %kafka.group_id,
        traces_topic = %kafka.traces_topic,
        metrics_topic = %kafka.metrics_topic,
        billing_topic = %kafka.billing_topic,
        options = ?KafkaConfig::redacted(&options),
        "Reading Kafka topics."
    );
    // A rewind (partitions lost with messages counted but not committed) starts from an empty
    // aggregator like the running one; it puts the running participants back itself.
    let (ingest_config, aggregator_config, metrics_config) = (
        config.ingest.clone(),
        config.aggregator.clone(),
        config.metrics.clone(),
    );
    let (clock, telemetry) = (aggregator.clock().clone(), aggregator.telemetry().clone());
    let empty = Box::new(move || {
        Ok(Aggregator::new(
            &ingest_config,
            &aggregator_config,
            clock.clone(),
            telemetry.clone(),
        )?
        .with_metrics(&metrics_config))
    });
    let checkpoints = Arc::new(SourceCheckpoints::new(
        checkpoints,
        config.wal.dir.clone(),
        empty,
    ));
    let source = KafkaSource {
        config: kafka.clone(),
        options,
        ingest,
        checkpoints,
        landing: Some(landing),
        status,
        limits: MessageLimits {
            max_bytes: config.otlp.max_body_bytes,
            max_spans: config.otlp.max_spans_per_request,
            max_points: config.otlp.max_points_per_request,
        },
        hold_commit: Box::new(move || hooks.is_on(Hook::HoldKafkaCommit)),
    };
    source
        .start()
        .map(Some)
        .map_err(|e| Error::Config(vec![InvalidField::new("kafka", e)]))
}
