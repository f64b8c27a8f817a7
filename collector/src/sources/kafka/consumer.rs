//! The consumer: a librdkafka consumer on a thread of its own, which reads one message at a
//! time, converts it as OTLP is converted, and queues it to be counted in the same step as its
//! partition's position moves (`Batch::position`); the aggregator counts queued batches in
//! order. Nothing is committed to the group by librdkafka: the thread commits the positions
//! each durable checkpoint holds, and the rebalance callback, on the same thread, waits until
//! everything queued is counted, then checkpoints and commits before it lets a partition go.
//! Kafka is these messages' log; they skip recmeter's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use recmeter_core::cost::Landing;
use recmeter_core::kafka::KafkaStatus;
use recmeter_core::telemetry::{RejectReason, Transport};
use recmeter_core::{Batch, Checkpoints, Position};

use super::billing::{self, Gathered, Rows};
use super::config::{Encoding, InitialOffset, KafkaConfig};
use crate::sources::billing::RowCounter;
use crate::sources::otlp::{Ingest, IngestError, body};

/// How long one poll waits for a message; the stop flag and the commits are looked at in
/// between.
const POLL: Duration = Duration::from_millis(100);
/// How long a call to the group coordinator (committed offsets, a commit) may take.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before a partition paused for backpressure is tried again; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long cost lines whose files could not be written wait before they are tried again.
const LANDING_RETRY: Duration = Duration::from_secs(1);

/// Limits a message is held to, as an OTLP request is.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Largest message value, bytes (`otlp.max_body_bytes`).
    pub max_bytes: usize,
    /// Most spans in one message (`otlp.max_spans_per_request`).
    pub max_spans: u64,
    /// Most data points in one message (`otlp.max_points_per_request`).
    pub max_points: u64,
}

/// Everything the Kafka source needs to run.
pub struct KafkaSource {
    pub config: KafkaConfig,
    /// librdkafka properties: `options` with `options_file` merged in.
    pub options: BTreeMap<String, String>,
    pub ingest: Ingest,
    pub checkpoints: Arc<dyn Checkpoints>,
    /// Where cost lines from the billing topic land (the store's billing ledger); the topic
    /// is read only with one.
    pub landing: Option<Arc<dyn Landing>>,
    pub status: Arc<KafkaStatus>,
    pub limits: MessageLimits,
    /// Whether commits are withheld (a test hook: a `kill -9` then falls between a durable
    /// checkpoint and its commit).
    pub hold_commit: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.config.brokers)
            .field("group_id", &self.config.group_id)
            .finish_non_exhaustive()
    }
}

/// The running source: stop it before the aggregator drains.
#[derive(Debug)]
pub struct KafkaHandle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl KafkaHandle {
    /// Stops reading new messages (at once); [`KafkaHandle::stop`] then waits for the rest.
    pub fn stop_reading(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops reading, checkpoints and commits what was counted, leaves the group, and waits
    /// for the thread to end (at most `deadline`).
    pub async fn stop(self, deadline: Duration) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(deadline, joined).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::error!("The Kafka consumer thread panicked."),
            Err(_) => tracing::warn!(
                "The Kafka consumer did not stop within the deadline; what it counted since the last commit is read again after the next start."
            ),
        }
    }
}

/// A message as read.
enum Read {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Billing(Rows),
    /// It cannot be read: it goes to the dead-letter topic.
    Bad(RejectReason, String),
}

/// Which of the source's topics a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Traces,
    Metrics,
    Billing,
}

/// Why a message could not be counted now.
#[derive(Debug)]
enum NotNow {
    /// The aggregator's queue is full: pause, then try again.
    Busy,
    /// The dead-letter topic cannot be written: pause, then try again (a message is never
    /// skipped).
    DeadLetter,
    /// recmeter is stopping or cannot log: leave it for the next start.
    Stopping(String),
}

/// What the consumer thread and its callbacks share.
struct Shared {
    config: KafkaConfig,
    ingest: Ingest,
    checkpoints: Arc<dyn Checkpoints>,
    status: Arc<KafkaStatus>,
    limits: MessageLimits,
    hold_commit: Box<dyn Fn() -> bool + Send + Sync>,
    runtime: tokio::runtime::Handle,
    /// Writes the messages that cannot be read to their dead-letter topics.
    dead_letters: FutureProducer<DeadLetterContext>,
    /// The largest message the producer sends (`message.max.bytes`); a larger value is
    /// dead-lettered empty, its size in a header.
    dead_letter_limit: usize,
    /// The offset the group holds for each partition, as far as this instance knows: read at
    /// assignment, then moved by each commit.
    committed: Mutex<BTreeMap<(String, i32), i64>>,
    /// Set when an assignment may have left durable positions the group does not hold yet.
    recommit: AtomicBool,
    /// Consumer errors, said once a minute while they last.
    errors: Mutex<ErrorLog>,
    /// Messages queued and not counted yet.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    landing: Option<Arc<dyn Landing>>,
    /// Set once the thread stops reading: waits are bounded from then on.
    stopping: AtomicBool,
    /// Cost lines read from the billing topic and not landed yet, per partition.
    gathered: Mutex<Gathered>,
    billing_rows: RowCounter,
}

/// The consumer's context: librdkafka's logs, errors and statistics, and the rebalances.
struct Context {
    shared: Arc<Shared>,
}

impl KafkaSource {
    /// Starts the consumer thread; it runs until stopped. Must be called within a Tokio
    /// runtime (the thread hands batches to it). Errors in the configuration librdkafka
    /// refuses are returned at once.
    pub fn start(self) -> Result<KafkaHandle, String> {
        let mut client = ClientConfig::new();
        // Statistics every 5 s give the lag per partition, unless the options say otherwise.
        client.set("statistics.interval.ms", "5000");
        for (key, value) in &self.options {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", self.config.brokers.trim())
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.config.initial_offset {
                    InitialOffset::Earliest => "earliest",
                    InitialOffset::Latest => "latest",
                },
            )
            .set("isolation.level", "read_committed")
            .set_log_level(RDKafkaLogLevel::Warning);
        // The dead-letter producer takes the same options (TLS, SASL); consumer properties
        // there are ignored by librdkafka.
        let mut producer = ClientConfig::new();
        producer.set("message.timeout.ms", "30000");
        for (key, value) in &self.options {
            producer.set(key, value);
        }
        producer
            .set("bootstrap.servers", self.config.brokers.trim())
            .set_log_level(RDKafkaLogLevel::Warning);
        let dead_letters: FutureProducer<DeadLetterContext> = producer
            .create_with_context(DeadLetterContext)
            .map_err(|e| format!("librdkafka refuses the dead-letter producer's options: {e}"))?;
        let dead_letter_limit = self
            .options
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let shared = Arc::new(Shared {
            checkpoints: self.checkpoints,
            status: self.status,
            limits: self.limits,
            hold_commit: self.hold_commit,
            runtime: tokio::runtime::Handle::current(),
            dead_letters,
            dead_letter_limit,
            committed: Mutex::default(),
            recommit: AtomicBool::new(false),
            errors: Mutex::default(),
            in_flight: Arc::default(),
            billing_rows: RowCounter::new(self.ingest.traces.aggregator().telemetry()),
            ingest: self.ingest,
            landing: self.landing,
            stopping: AtomicBool::new(false),
            gathered: Mutex::new(Gathered::new(self.config.billing_flush_interval)),
            config: self.config,
        });
        let consumer: BaseConsumer<Context> = client
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|e| format!("librdkafka refuses the [kafka] configuration: {e}"))?;
        let mut topics = vec![
            shared.config.traces_topic.as_str(),
            shared.config.metrics_topic.as_str(),
        ];
        if shared.landing.is_some() && !shared.config.billing_topic.is_empty() {
            topics.push(shared.config.billing_topic.as_str());
        }
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("recmeter-kafka".into())
            .spawn({
                let stop = stop.clone();
                move || run(&consumer, &shared, &stop)
            })
            .map_err(|e| format!("cannot start the Kafka consumer thread: {e}"))?;
        Ok(KafkaHandle { stop, thread })
    }
}

/// The consumer thread.
fn run(consumer: &BaseConsumer<Context>, shared: &Shared, stop: &AtomicBool) {
    // A rewind goes back to a checkpoint: one is taken before the first partition comes.
    match shared.checkpoint_within_drain_timeout() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Cannot checkpoint before reading Kafka topics; a partition lost before the first checkpoint cannot be put back.");
        }
        Err(_) => tracing::warn!(
            "The checkpoint before reading Kafka topics took longer than kafka.drain_timeout."
        ),
    }
    let mut durable = shared.checkpoints.durable();
    while !stop.load(Ordering::Acquire) {
        if durable.has_changed().unwrap_or(false) || shared.recommit.swap(false, Ordering::AcqRel) {
            let positions = durable.borrow_and_update().clone();
            shared.commit(consumer, &positions, None);
        }
        match consumer.poll(POLL) {
            None => {}
            Some(Err(e)) => shared.errors.lock().note(&e.to_string()),
            Some(Ok(message)) => {
                if let Err(e) = shared.handle(consumer, &message, stop) {
                    tracing::warn!(error = %e, "Kafka consumption stops: the message is read again after the next start.");
                    break;
                }
            }
        }
        shared.land_billing(
            consumer,
            false,
            Instant::now() + shared.config.drain_timeout,
        );
    }
    shared.stopping.store(true, Ordering::Release);
    // What was counted is checkpointed and committed before the group hears we leave; the
    // revoke that leaving brings then has nothing left to do.
    shared.land_billing(consumer, true, Instant::now() + shared.config.drain_timeout);
    shared.settle(shared.config.drain_timeout);
    match shared.checkpoint_within_drain_timeout() {
        Ok(Ok(positions)) => shared.commit(consumer, &positions, None),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Cannot checkpoint before leaving the Kafka group; the final checkpoint holds what was counted.");
        }
        Err(_) => tracing::warn!(
            "The checkpoint before leaving the Kafka group took longer than kafka.drain_timeout."
        ),
    }
    consumer.unsubscribe();
    tracing::info!("Kafka consumer stopped.");
}

impl Shared {
    /// Takes a checkpoint, waiting at most `kafka.drain_timeout` for it; its positions once
    /// durable. The checkpoint runs as a task of its own: one that outlasts the wait is never
    /// cut off half-written, and a rewind waits for it to end.
    fn checkpoint_within_drain_timeout(
        &self,
    ) -> Result<recmeter_core::Result<Vec<Position>>, tokio::time::error::Elapsed> {
        let checkpoints = self.checkpoints.clone();
        let task = self
            .runtime
            .spawn(async move { checkpoints.checkpoint_now().await });
        // The timer is made inside the runtime: it needs its clock.
        self.runtime.block_on(async {
            tokio::time::timeout(self.config.drain_timeout, task)
                .await
                .map(|joined| {
                    joined.unwrap_or_else(|e| {
                        Err(recmeter_core::Error::Storage(format!(
                            "the checkpoint task failed: {e}"
                        )))
                    })
                })
        })
    }

    /// Counts one message, waiting while the aggregator is busy (its partitions paused). Fails
    /// only when recmeter is stopping.
    fn handle(
        &self,
        consumer: &BaseConsumer<Context>,
        message: &BorrowedMessage<'_>,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let kind = if message.topic() == self.config.traces_topic {
            Kind::Traces
        } else if message.topic() == self.config.metrics_topic {
            Kind::Metrics
        } else if message.topic() == self.config.billing_topic
            && !self.config.billing_topic.is_empty()
            && self.landing.is_some()
        {
            Kind::Billing
        } else {
            // Not subscribed to: cannot happen; skip it without counting.
            return Ok(());
        };
        let position = Position {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset() + 1,
        };
        let payload = message.payload().unwrap_or_default();
        let read = self.read(kind, payload, &position);
        if let Read::Billing(rows) = read {
            // Landed with the rest of its partition's, later; the position moves then.
            let full = self.gathered.lock().take(position, rows);
            if full {
                self.land_billing(consumer, true, Instant::now() + self.config.drain_timeout);
            }
            return Ok(());
        }
        let mut dead_lettered = false;
        let mut backoff = FIRST_BACKOFF;
        let mut paused: Option<TopicPartitionList> = None;
        let outcome = loop {
            let attempt = match &read {
                Read::Traces(request) => self
                    .ingest
                    .traces
                    .queue(request, position.clone())
                    .map(|answer| self.track(answer))
                    .map_err(not_now),
                Read::Metrics(request) => self
                    .ingest
                    .metrics
                    .queue(request, position.clone())
                    .map(|answer| self.track(answer))
                    .map_err(not_now),
                Read::Bad(reason, why) => {
                    let sent = if dead_lettered {
                        Ok(())
                    } else {
                        self.dead_letter(&position, message.key(), payload, *reason, why)
                    };
                    dead_lettered |= sent.is_ok();
                    sent.and_then(|()| {
                        if kind == Kind::Billing {
                            // Behind the lines gathered before it: moves with them.
                            self.gathered.lock().take(position.clone(), Rows::default());
                            Ok(())
                        } else {
                            self.note(position.clone())
                        }
                    })
                }
                Read::Billing(_) => Ok(()),
            };
            match attempt {
                Ok(()) => break Ok(()),
                Err(NotNow::Stopping(why)) => break Err(why),
                Err(waiting @ (NotNow::Busy | NotNow::DeadLetter)) => {
                    // Once per message held back, not per retry.
                    if matches!(waiting, NotNow::Busy) && paused.is_none() {
                        self.ingest
                            .traces
                            .aggregator()
                            .telemetry()
                            .add_request_rejected(Transport::Kafka, RejectReason::Backpressure);
                    }
                    if paused.is_none() {
                        let assignment = consumer.assignment().unwrap_or_default();
                        if let Err(e) = consumer.pause(&assignment) {
                            tracing::warn!(error = %e, "Cannot pause the Kafka partitions.");
                        }
                        tracing::debug!("Kafka partitions paused until the message can be taken.");
                        paused = Some(assignment);
                    }
                    if stop.load(Ordering::Acquire) {
                        break Err("recmeter is stopping".to_owned());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        if let Some(assignment) = paused
            && let Err(e) = consumer.resume(&assignment)
        {
            tracing::warn!(error = %e, "Cannot resume the Kafka partitions.");
        }
        outcome
    }

    /// A message's value as a request of its topic, or why it cannot be read.
    fn read(&self, kind: Kind, payload: &[u8], position: &Position) -> Read {
        let encoding = match kind {
            Kind::Traces => self.config.traces_encoding,
            Kind::Metrics => self.config.metrics_encoding,
            Kind::Billing => Encoding::OtlpJson,
        };
        if payload.len() > self.limits.max_bytes {
            return Read::Bad(
                RejectReason::TooLarge,
                format!(
                    "{} bytes, over otlp.max_body_bytes ({})",
                    payload.len(),
                    self.limits.max_bytes
                ),
            );
        }
        // The message is in memory already, under the size limit: it is decoded at once
        // (no pre-scan, which an OTLP server runs before it reads a body) and its spans or
        // points counted against their limit after.
        let json = encoding == Encoding::OtlpJson;
        let (read, items, limit, what, key) = match kind {
            Kind::Traces => match body::decode::<ExportTraceServiceRequest>(payload, json) {
                Ok(request) => {
                    let spans = request
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len() as u64)
                        .sum();
                    (
                        Read::Traces(request),
                        spans,
                        self.limits.max_spans,
                        "spans",
                        "otlp.max_spans_per_request",
                    )
                }
                Err(why) => return Read::Bad(RejectReason::Decode, why),
            },
            Kind::Metrics => match body::decode::<ExportMetricsServiceRequest>(payload, json) {
                Ok(request) => {
                    let points = points_in(&request);
                    (
                        Read::Metrics(request),
                        points,
                        self.limits.max_points,
                        "data points",
                        "otlp.max_points_per_request",
                    )
                }
                Err(why) => return Read::Bad(RejectReason::Decode, why),
            },
            Kind::Billing => {
                let object = format!(
                    "{}/{}/{}",
                    position.topic,
                    position.partition,
                    position.offset - 1
                );
                return match billing::read(payload, &object) {
                    Ok(rows) => Read::Billing(rows),
                    Err(why) => Read::Bad(RejectReason::Decode, why),
                };
            }
        };
        if items > limit {
            return Read::Bad(
                RejectReason::TooLarge,
                format!("the message holds {items} {what}, more than {limit} ({key})"),
            );
        }
        read
    }

    /// Lands the cost lines gathered from the billing topic: every partition's (`all`), or
    /// those due. Waits while the aggregator is busy, until `deadline`. Lines whose files
    /// cannot be written wait for a later try, their partition paused meanwhile: a message is
    /// never skipped.
    fn land_billing(&self, consumer: &BaseConsumer<Context>, all: bool, deadline: Instant) {
        let Some(landing) = &self.landing else {
            return;
        };
        let partitions = {
            let gathered = self.gathered.lock();
            if all {
                gathered.partitions()
            } else {
                gathered.due()
            }
        };
        let topic = self.config.billing_topic.as_str();
        let stream = billing::stream(topic);
        for partition in partitions {
            let Some(pending) = self.gathered.lock().remove(partition) else {
                continue;
            };
            let mut one = TopicPartitionList::new();
            one.add_partition(topic, partition);
            let append = match billing::stage(landing.as_ref(), &self.runtime, &stream, &pending) {
                Ok(append) => append,
                Err(e) => {
                    self.errors.lock().note(&format!(
                        "cannot write the cost lines of {topic}/{partition} to the store (the partition waits): {e}"
                    ));
                    if let Err(e) = consumer.pause(&one) {
                        tracing::warn!(error = %e, "Cannot pause a Kafka partition.");
                    }
                    self.gathered.lock().put_back(pending, LANDING_RETRY);
                    continue;
                }
            };
            let mut backoff = FIRST_BACKOFF;
            loop {
                match landing.append(append.clone()) {
                    Ok(answer) => {
                        self.track(
                            async move { answer.await.map(drop).map_err(IngestError::from) },
                        );
                        self.count_billing_rows(&pending.rows);
                        if let Err(e) = consumer.resume(&one) {
                            tracing::warn!(error = %e, "Cannot resume a Kafka partition.");
                        }
                        break;
                    }
                    Err(recmeter_core::Error::Backpressure) if Instant::now() < deadline => {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition, "Cannot land cost lines from Kafka now; trying again.");
                        let files = append
                            .bills
                            .iter()
                            .flat_map(|b| b.files.clone())
                            .chain(append.rejects.clone())
                            .collect();
                        let _ = self.runtime.block_on(landing.discard(files));
                        self.gathered.lock().put_back(pending, LANDING_RETRY);
                        break;
                    }
                }
            }
        }
    }

    /// `recmeter_billing_rows_total` for rows landed from the billing topic.
    fn count_billing_rows(&self, rows: &Rows) {
        let mut lines: BTreeMap<&str, u64> = BTreeMap::new();
        for line in &rows.lines {
            *lines.entry(line.provider.as_str()).or_default() += 1;
        }
        for (provider, n) in lines {
            self.billing_rows.add(provider, "line", n);
        }
        if !rows.rejects.is_empty() {
            self.billing_rows
                .add("unknown", "reject", rows.rejects.len() as u64);
        }
    }

    /// Waits in the background for a queued message to be counted; [`Shared::settle`] waits
    /// for all of them.
    fn track(
        &self,
        answer: impl std::future::Future<Output = Result<(), IngestError>> + Send + 'static,
    ) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = self.in_flight.clone();
        self.runtime.spawn(async move {
            if let Err(e) = answer.await {
                tracing::debug!(error = %e, "A queued Kafka message was not counted; it is read again after the next start.");
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Waits until every message queued is counted, however long that takes: partitions go,
    /// or the counts go back to a checkpoint, only once nothing of theirs can be counted after.
    /// While recmeter stops, the wait is bounded by `kafka.drain_timeout`: what is counted after
    /// is in the final checkpoint, which the next start reads on from.
    fn settle_fully(&self) {
        while !self.settle(self.config.drain_timeout) {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            tracing::error!(
                queued = self.in_flight.load(Ordering::Acquire),
                "Kafka messages queued are still not counted after kafka.drain_timeout (is the aggregator stalled?); the rebalance waits for them."
            );
        }
    }

    /// Waits until every message queued is counted, at most `within`; whether they are.
    fn settle(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Writes a message that cannot be read to its topic's dead-letter topic, with why and
    /// where it came from in headers; the value as received, or empty when it is over the
    /// producer's limit. Counted once written.
    fn dead_letter(
        &self,
        position: &Position,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: RejectReason,
        why: &str,
    ) -> Result<(), NotNow> {
        let topic = format!("{}{}", position.topic, self.config.dlq_suffix);
        let partition = position.partition.to_string();
        let offset = (position.offset - 1).to_string();
        let size = payload.len().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "x-recmeter-error",
                value: Some(why),
            })
            .insert(Header {
                key: "x-recmeter-source-topic",
                value: Some(position.topic.as_str()),
            })
            .insert(Header {
                key: "x-recmeter-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "x-recmeter-offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "x-recmeter-original-size",
                value: Some(size.as_str()),
            });
        // Room for the key, the headers and the record's framing.
        let overhead = 1_024 + why.len() + key.map_or(0, <[u8]>::len);
        let value: &[u8] = if payload.len() + overhead > self.dead_letter_limit {
            &[]
        } else {
            payload
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(value)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let sent = self
            .runtime
            .block_on(self.dead_letters.send(record, Duration::from_secs(30)));
        match sent {
            Ok(_) => {
                self.ingest
                    .traces
                    .aggregator()
                    .telemetry()
                    .add_request_rejected(Transport::Kafka, reason);
                self.status.add_dead_lettered(&position.topic);
                tracing::warn!(
                    topic = %position.topic,
                    partition = position.partition,
                    offset = position.offset - 1,
                    dead_letter_topic = %topic,
                    error = %why,
                    "A Kafka message cannot be read; it went to the dead-letter topic."
                );
                Ok(())
            }
            Err((e, _)) => {
                tracing::warn!(
                    error = %e,
                    dead_letter_topic = %topic,
                    "Cannot write to the dead-letter topic; the partitions wait and try again."
                );
                Err(NotNow::DeadLetter)
            }
        }
    }

    /// Moves a partition's position with nothing to count (a message refused, or where the
    /// partition starts).
    fn note(&self, position: Position) -> Result<(), NotNow> {
        let batch = Batch {
            position: Some(Box::new(position)),
            ..Batch::default()
        };
        let answer = self
            .ingest
            .traces
            .aggregator()
            .queue(batch)
            .map_err(|e| not_now(e.into()))?;
        self.track(async move { answer.await.map(drop).map_err(IngestError::from) });
        Ok(())
    }

    /// [`Shared::note`], waiting while the aggregator is busy, at most `kafka.drain_timeout`.
    fn note_waiting(&self, position: Position) {
        let deadline = Instant::now() + self.config.drain_timeout;
        loop {
            match self.note(position.clone()) {
                Err(NotNow::Busy) if Instant::now() < deadline => {
                    std::thread::sleep(FIRST_BACKOFF);
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "Cannot note where a Kafka partition starts.");
                    return;
                }
                Ok(()) => return,
            }
        }
    }

    /// Commits the positions of `durable` (a durable checkpoint's) that the group does not hold
    /// yet, for the partitions assigned here (only `of`, when given).
    fn commit(
        &self,
        consumer: &BaseConsumer<Context>,
        durable: &[Position],
        of: Option<&TopicPartitionList>,
    ) {
        if (self.hold_commit)() {
            return;
        }
        let assignment = match of {
            Some(tpl) => tpl.clone(),
            None => consumer.assignment().unwrap_or_default(),
        };
        let mut tpl = TopicPartitionList::new();
        {
            let committed = self.committed.lock();
            for p in durable {
                let assigned = assignment.find_partition(&p.topic, p.partition).is_some();
                let behind = committed
                    .get(&(p.topic.clone(), p.partition))
                    .is_none_or(|c| *c < p.offset);
                if assigned && behind {
                    let _ =
                        tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offset));
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                let mut committed = self.committed.lock();
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
                let now = self.ingest.traces.aggregator().clock().now_nanos();
                self.status.committed(now);
            }
            Err(e) => {
                // Tried again at the next checkpoint; a partition lost meanwhile is the
                // revoke's to settle.
                tracing::warn!(error = %e, partitions = tpl.count(), "The Kafka group refused a commit; retrying after the next checkpoint.");
            }
        }
    }

    /// Where each newly assigned partition starts: after what this instance counted or what
    /// the group holds, whichever is later; the state notes that start, so the next
    /// checkpoint's positions are never behind the group's.
    fn assign(&self, consumer: &BaseConsumer<Context>, tpl: &mut TopicPartitionList) {
        let applied: BTreeMap<(String, i32), i64> = self
            .checkpoints
            .applied()
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.offset))
            .collect();
        let group = match consumer.committed_offsets(tpl.clone(), COORDINATOR_TIMEOUT) {
            Ok(group) => Some(group),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the Kafka group's committed offsets; starting from this instance's own positions.");
                None
            }
        };
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut starts = Vec::new();
        {
            let mut committed = self.committed.lock();
            for (topic, partition) in partitions {
                let held = group
                    .as_ref()
                    .and_then(|g| g.find_partition(&topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                let key = (topic.clone(), partition);
                match held {
                    Some(o) => committed.insert(key.clone(), o),
                    None => committed.remove(&key),
                };
                let own = applied.get(&key).copied();
                let start = match (own, held) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if let Some(start) = start {
                    let _ = tpl.set_partition_offset(&topic, partition, Offset::Offset(start));
                    if own != Some(start) {
                        starts.push(Position {
                            topic,
                            partition,
                            offset: start,
                        });
                    }
                }
            }
        }
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "Cannot take the Kafka partitions assigned.");
            return;
        }
        let from: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => format!("{}/{}@{o}", e.topic(), e.partition()),
                _ => format!(
                    "{}/{}@{:?}",
                    e.topic(),
                    e.partition(),
                    self.config.initial_offset
                ),
            })
            .collect();
        tracing::info!(partitions = tpl.count(), from = ?from, "Kafka partitions assigned.");
        for start in starts {
            self.note_waiting(start);
        }
        // Positions this instance checkpointed but the group never took (a stop between the
        // two) are committed at once.
        self.recommit.store(true, Ordering::Release);
    }

    /// Before partitions go: wait until everything queued is counted, then checkpoint, commit
    /// and let go. A partition lost without a revoke cannot commit.
    fn revoke(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        if consumer.assignment_lost() {
            self.forget_billing(tpl);
        } else {
            let deadline = Instant::now() + self.config.drain_timeout;
            self.land_billing(consumer, true, deadline);
        }
        // Every message queued is counted first: the checkpoint (or the rewind) must hold it,
        // and nothing of these partitions may be counted after they go.
        self.settle_fully();
        if consumer.assignment_lost() {
            self.lost(consumer, tpl);
        } else if self.counted_beyond_commit(tpl) > 0 {
            let deadline = Instant::now() + self.config.drain_timeout;
            match self.checkpoint_within_drain_timeout() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Cannot checkpoint before letting Kafka partitions go.");
                }
                Err(_) => tracing::error!(
                    "The checkpoint before letting Kafka partitions go took longer than kafka.drain_timeout."
                ),
            }
            // Whatever came of it, the group takes what the latest durable checkpoint holds.
            let durable = self.checkpoints.durable().borrow().clone();
            while self.beyond_commit(&durable, tpl) > 0 && !(self.hold_commit)() {
                self.commit(consumer, &durable, Some(tpl));
                if Instant::now() >= deadline {
                    break;
                }
                if self.beyond_commit(&durable, tpl) > 0 {
                    std::thread::sleep(MAX_BACKOFF);
                }
            }
            let left = self.counted_beyond_commit(tpl);
            if left > 0 && self.beyond_commit(&durable, tpl) > 0 {
                // Durable here, and not held by the group: the gap ADR 021 names.
                tracing::error!(
                    messages = left,
                    "Kafka partitions go with messages a durable checkpoint holds and the group refused to take as read: their next owner counts them again."
                );
            } else if left > 0 {
                // Counted and not durable: they go from here, and their next owner counts them.
                tracing::error!(
                    messages = left,
                    "Kafka partitions go with messages counted here and not checkpointed: putting the counts back to the last checkpoint."
                );
                self.put_back(consumer, tpl);
            }
        }
        // Cost lines that could not be landed were never counted here: their next owner
        // reads them.
        self.forget_billing(tpl);
        if let Err(e) = consumer.unassign() {
            tracing::warn!(error = %e, "Cannot let the revoked Kafka partitions go.");
        }
        tracing::info!(partitions = tpl.count(), "Kafka partitions revoked.");
    }

    /// Partitions taken away without a revoke (the session timed out): their next owner
    /// starts from the group's offsets, so what was counted here beyond them must go. The
    /// counts go back to the last checkpoint (ADR 021); partitions still assigned are read
    /// again from there.
    fn lost(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        let beyond = self.counted_beyond_commit(tpl);
        if beyond == 0 {
            tracing::warn!(
                partitions = tpl.count(),
                "Kafka partitions were lost without a revoke; everything counted here was committed."
            );
            return;
        }
        tracing::error!(
            messages = beyond,
            "Kafka partitions were lost without a revoke, with messages counted here that the group does not hold as read: putting the counts back to the last checkpoint."
        );
        self.put_back(consumer, tpl);
    }

    /// Puts the counts back to the last checkpoint (and the log after it) as `tpl`'s
    /// partitions go with messages counted beyond the group's offsets; partitions still
    /// assigned here are read again from where the state then stands. Everything queued must
    /// be counted first ([`Shared::settle_fully`]).
    fn put_back(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        // Partitions kept are read again from the checkpoint's positions: what they gathered
        // comes again.
        let forgotten = self.gathered.lock().clear();
        if forgotten > 0 {
            tracing::info!(
                partitions = forgotten,
                "Cost lines gathered from Kafka and not landed are read again."
            );
        }
        if let Err(e) = self.checkpoints.rewind() {
            tracing::error!(error = %e, "Cannot put the counts back to the last checkpoint: the partitions' next owner counts those messages again.");
            return;
        }
        let left = self.counted_beyond_commit(tpl);
        if left > 0 {
            tracing::error!(
                messages = left,
                "The last checkpoint holds messages of the partitions going that the group never took a commit for: their next owner counts them again."
            );
        }
        // With the cooperative protocol some partitions stay: read them again from where the
        // state now stands.
        let mut kept = consumer.assignment().unwrap_or_default();
        kept = kept
            .elements()
            .iter()
            .filter(|e| tpl.find_partition(e.topic(), e.partition()).is_none())
            .fold(TopicPartitionList::new(), |mut l, e| {
                l.add_partition(e.topic(), e.partition());
                l
            });
        if kept.count() > 0 {
            self.reposition(consumer, &kept);
        }
    }

    /// Seeks each partition of `tpl`, assigned here, back to where the state stands (or the
    /// group's offset, if later).
    fn reposition(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        let applied: BTreeMap<(String, i32), i64> = self
            .checkpoints
            .applied()
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.offset))
            .collect();
        let committed = self.committed.lock().clone();
        for e in tpl.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let start = match (applied.get(&key), committed.get(&key)) {
                (Some(a), Some(b)) => Offset::Offset(*a.max(b)),
                (Some(a), None) | (None, Some(a)) => Offset::Offset(*a),
                (None, None) => match self.config.initial_offset {
                    InitialOffset::Earliest => Offset::Beginning,
                    InitialOffset::Latest => Offset::End,
                },
            };
            if let Err(err) = consumer.seek(e.topic(), e.partition(), start, COORDINATOR_TIMEOUT) {
                tracing::error!(error = %err, topic = e.topic(), partition = e.partition(), "Cannot read a Kafka partition again from the last checkpoint.");
            }
            if let Offset::Offset(o) = start
                && applied.get(&key) != Some(&o)
            {
                self.note_waiting(Position {
                    topic: key.0,
                    partition: key.1,
                    offset: o,
                });
            }
        }
    }

    /// Forgets the cost lines gathered (and not landed) from `tpl`'s billing partitions.
    fn forget_billing(&self, tpl: &TopicPartitionList) {
        let mut gathered = self.gathered.lock();
        for e in tpl.elements_for_topic(&self.config.billing_topic) {
            gathered.forget(e.partition());
        }
    }

    /// Messages of `tpl`'s partitions that `positions` hold beyond the offsets the group holds.
    fn beyond_commit(&self, positions: &[Position], tpl: &TopicPartitionList) -> i64 {
        let committed = self.committed.lock();
        positions
            .iter()
            .filter(|p| tpl.find_partition(&p.topic, p.partition).is_some())
            .map(|p| {
                let held = committed.get(&(p.topic.clone(), p.partition)).copied();
                (p.offset - held.unwrap_or(0)).max(0)
            })
            .sum()
    }

    /// Messages of `tpl`'s partitions counted here beyond the offsets the group holds.
    fn counted_beyond_commit(&self, tpl: &TopicPartitionList) -> i64 {
        self.beyond_commit(&self.checkpoints.applied(), tpl)
    }
}

/// Data points in a metrics request.
fn points_in(request: &ExportMetricsServiceRequest) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum()
}

fn not_now(e: IngestError) -> NotNow {
    match e {
        IngestError::Backpressure => NotNow::Busy,
        other => NotNow::Stopping(other.to_string()),
    }
}

/// Consumer errors, each logged when it first comes and again at most once a minute while it
/// lasts.
#[derive(Default)]
struct ErrorLog {
    said: BTreeMap<String, Instant>,
}

impl ErrorLog {
    fn note(&mut self, text: &str) {
        let now = Instant::now();
        self.said
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        if !self.said.contains_key(text) {
            tracing::warn!(error = %text, "Kafka consumer error; librdkafka retries by itself.");
            self.said.insert(text.to_owned(), now);
        }
    }
}

/// The dead-letter producer's context: librdkafka's logs to recmeter's, without the warnings
/// about the consumer's properties it shares the options with, and no statistics.
struct DeadLetterContext;

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac != "CONFWARN" {
            log(level, fac, log_message);
        }
    }

    fn stats(&self, _: Statistics) {}

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "librdkafka error (dead-letter producer).");
    }
}

/// librdkafka's log lines in recmeter's log.
fn log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(facility = fac, "librdkafka: {log_message}");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {log_message}"),
        _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        let mut lag = BTreeMap::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; `desired` marks those assigned here.
                // librdkafka's own `consumer_lag` is -1 until the group holds a commit; before
                // the first, every message kept is behind it.
                if *partition >= 0 && p.desired && p.hi_offset >= 0 {
                    let base = if p.committed_offset >= 0 {
                        p.committed_offset
                    } else {
                        p.lo_offset.max(0)
                    };
                    lag.insert((topic.clone(), *partition), (p.hi_offset - base).max(0));
                }
            }
        }
        self.shared.status.set_lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared
            .errors
            .lock()
            .note(&format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.shared.status.add_rebalance();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.shared.assign(consumer, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.revoke(consumer, tpl)
            }
            other => {
                tracing::error!(error = ?other, "Kafka rebalance failed; letting every partition go.");
                // Lines gathered and not landed are read again by whoever takes the partitions.
                self.shared.gathered.lock().clear();
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "Cannot let the Kafka partitions go.");
                }
            }
        }
    }
}
