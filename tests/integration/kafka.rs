//! The Kafka-protocol broker the Kafka tests run against (issue 29): `scripts/test.sh` starts
//! tansu on a free local port unless `KAFKA_BROKERS` names brokers already (a real cluster). The
//! bundled librdkafka produces to it and consumes from it in a consumer group.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::durability::set_hook;
use crate::harness::{Recmeter, Start, fake_start, nanos};

/// The brokers the tests use.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BROKERS is not set: run the suite through scripts/test.sh, which starts tansu"
        )
    })
}

/// A name no earlier run used: topics and groups are fresh per test.
pub fn fresh(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("recmeter-test-{what}-{nanos}")
}

#[test]
fn the_broker_takes_a_message_and_gives_it_back_to_a_consumer_group() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let topic = fresh("roundtrip");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        let delivered = producer
            .send(
                FutureRecord::to(&topic).key("recs-api").payload("hello"),
                Duration::from_secs(10),
            )
            .await;
        assert!(delivered.is_ok(), "{delivered:?}");
        // A group's first join waits out the session timeout: 6 s keeps it to about 4 s.
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", fresh("group"))
            .set("session.timeout.ms", "6000")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a message within 30 s")
            .unwrap();
        assert_eq!(message.payload(), Some(&b"hello"[..]));
        assert_eq!(message.key(), Some(&b"recs-api"[..]));
        assert_eq!(message.topic(), topic);
    });
}

/// Creates `topic` with `partitions` partitions.
fn create_topic(topic: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for result in created {
            assert!(result.is_ok(), "creating {topic}: {result:?}");
        }
    });
}

/// Produces `(key, value)` messages to `topic`, each acknowledged.
fn produce(topic: &str, messages: &[(String, Vec<u8>)]) {
    produce_to(&brokers(), topic, messages);
}

/// [`produce`] to the brokers `bootstrap`.
fn produce_to(bootstrap: &str, topic: &str, messages: &[(String, Vec<u8>)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("message.timeout.ms", "60000")
            .set("message.max.bytes", "10000000")
            .create()
            .unwrap();
        let sends: Vec<_> = messages
            .iter()
            .map(|(key, value)| {
                producer.send(
                    FutureRecord::to(topic).key(key).payload(value),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for sent in futures::future::join_all(sends).await {
            assert!(sent.is_ok(), "{sent:?}");
        }
    });
}

/// One message's spans: `per` request spans of `service`, ending in the minute before the fake
/// clock's start, with durations drawn from `rng` (also returned, in nanoseconds).
fn trace_message(
    rng: &mut StdRng,
    service: &str,
    first_id: u64,
    per: usize,
) -> (Vec<u8>, Vec<u64>) {
    trace_message_ending(rng, service, first_id, per, 20)
}

/// [`trace_message`] with spans ending `ago_secs` before the fake clock's start.
fn trace_message_ending(
    rng: &mut StdRng,
    service: &str,
    first_id: u64,
    per: usize,
    ago_secs: u64,
) -> (Vec<u8>, Vec<u64>) {
    let end = nanos(fake_start()) - ago_secs * 1_000_000_000;
    let mut durations = Vec::with_capacity(per);
    let spans = (0..per as u64)
        .map(|i| {
            // Log-uniform from 1 ms to 2 s: a tail for P99 to find.
            let duration = (1e6 * 2_000f64.powf(rng.random::<f64>())) as u64;
            durations.push(duration);
            let id = first_id + i + 1;
            Span {
                trace_id: id.to_be_bytes().repeat(2),
                span_id: id.to_be_bytes().to_vec(),
                name: "GET /recs".to_owned(),
                kind: 2,
                start_time_unix_nano: end - duration,
                end_time_unix_nano: end,
                ..Default::default()
            }
        })
        .collect();
    let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.to_owned())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request.encode_to_vec(), durations)
}

/// `messages` messages of `per` spans each, keyed by service (8 services), and every duration.
fn trace_messages(seed: u64, messages: usize, per: usize) -> (Vec<(String, Vec<u8>)>, Vec<u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut all = Vec::new();
    let mut out = Vec::with_capacity(messages);
    for m in 0..messages {
        let service = format!("recs-{}", m % 8);
        let (value, durations) =
            trace_message(&mut rng, &service, (seed << 40) + (m * per) as u64, per);
        all.extend(durations);
        out.push((service, value));
    }
    (out, all)
}

/// The `[kafka]` section for `traces_topic` and a fresh group; storage checkpoints every 10 s
/// of recmeter's clock.
fn kafka_config(traces_topic: &str, metrics_topic: &str, group: &str) -> String {
    kafka_config_at(&brokers(), traces_topic, metrics_topic, group)
}

/// [`kafka_config`] for the brokers `bootstrap`.
fn kafka_config_at(
    bootstrap: &str,
    traces_topic: &str,
    metrics_topic: &str,
    group: &str,
) -> String {
    format!(
        "[storage]\ncheckpoint_interval = \"10s\"\n\
         [kafka]\nbrokers = \"{bootstrap}\"\ngroup_id = \"{group}\"\n\
         traces_topic = \"{traces_topic}\"\nmetrics_topic = \"{metrics_topic}\"\n\
         billing_topic = \"{traces_topic}-billing\"\n\
         [kafka.options]\n\"session.timeout.ms\" = \"6000\"\n\
         \"statistics.interval.ms\" = \"500\"\n"
    )
}

/// The spans counted over Kafka so far.
fn received(recmeter: &Recmeter) -> f64 {
    recmeter
        .metrics()
        .find("recmeter_spans_received_total", &[("transport", "kafka")])
        .unwrap_or(0.0)
}

/// Waits until `done` holds, for at most `secs` seconds.
fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nearest-rank quantile of `values`.
fn exact_quantile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).max(1);
    values[rank - 1]
}

/// Total requests counted, from SQL over the minutes.
fn sql_requests(recmeter: &Recmeter) -> u64 {
    let rows = recmeter.sql_rows("SELECT CAST(sum(requests) AS BIGINT) AS n FROM latency_minutes");
    rows[0]["n"].as_u64().unwrap_or(0)
}

#[test]
fn spans_over_four_partitions_are_counted_exactly_once_with_an_exact_p99() {
    let topic = fresh("traces");
    create_topic(&topic, 4);
    let (messages, mut durations) = trace_messages(1, 200, 1_000);
    produce(&topic, &messages);
    let group = fresh("group");
    let recmeter = Recmeter::start(&kafka_config(&topic, &fresh("metrics"), &group));
    wait_until("200 000 spans over Kafka", 120, || {
        received(&recmeter) >= 200_000.0
    });
    assert_eq!(received(&recmeter), 200_000.0);
    assert_eq!(sql_requests(&recmeter), 200_000);
    let exposition = recmeter.metrics();
    assert_eq!(exposition.sum("recs_requests_total"), 200_000.0);
    // P99 over every span, from the HDR histograms, against the exact nearest rank.
    let rows =
        recmeter.sql_rows("SELECT hdr_quantile(hdr_merge(hdr), 0.99) AS p99 FROM latency_minutes");
    let p99 = rows[0]["p99"].as_f64().unwrap();
    let exact = exact_quantile(&mut durations, 0.99) as f64 / 1e9;
    assert!(
        (p99 - exact).abs() <= exact * 0.01,
        "P99 {p99} s against the exact {exact} s"
    );
    // A checkpoint makes the positions durable; the group then holds them, and the lag is 0.
    recmeter.advance("10s");
    wait_until("the commit after the checkpoint", 30, || {
        let m = recmeter.metrics();
        m.find("recmeter_kafka_last_commit_timestamp_seconds", &[])
            .is_some()
            && (0..4).all(|p| {
                m.find(
                    "recmeter_kafka_consumer_lag",
                    &[("topic", &topic), ("partition", &p.to_string())],
                ) == Some(0.0)
            })
    });
    let m = recmeter.metrics();
    assert!(m.value("recmeter_kafka_rebalances_total", &[]) >= 1.0);
    assert_eq!(
        m.find(
            "recmeter_requests_rejected_total",
            &[("transport", "kafka"), ("reason", "decode")]
        ),
        Some(0.0)
    );
}

#[test]
fn kill_9_mid_consumption_and_between_checkpoint_and_commit_counts_every_message_once() {
    let topic = fresh("traces");
    create_topic(&topic, 4);
    let metrics_topic = fresh("metrics");
    let group = fresh("group");
    let config = kafka_config(&topic, &metrics_topic, &group);
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Recmeter::start_with(Start {
            config: &config,
            dir: Some(dir.path()),
            ..Start::default()
        })
    };
    let (first, _) = trace_messages(2, 100, 500);
    let (second, _) = trace_messages(3, 100, 500);
    let (third, _) = trace_messages(4, 600, 500);
    let total = (first.len() + second.len() + third.len()) as f64 * 500.0;

    // The first part is counted, checkpointed and committed.
    produce(&topic, &first);
    let recmeter = start();
    wait_until("the first part", 60, || received(&recmeter) >= 50_000.0);
    recmeter.advance("10s");
    wait_until("the first commit", 30, || {
        recmeter
            .metrics()
            .find("recmeter_kafka_last_commit_timestamp_seconds", &[])
            .is_some()
    });
    // The second is counted and checkpointed, and its commit withheld: the kill falls between
    // a durable checkpoint and its commit.
    set_hook(&recmeter, "hold_kafka_commit", true);
    produce(&topic, &second);
    wait_until("the second part", 60, || received(&recmeter) >= 100_000.0);
    let checkpointed = |r: &Recmeter| {
        r.metrics()
            .find("recmeter_checkpoint_last_success_timestamp_seconds", &[])
            .unwrap_or(0.0)
    };
    let committed = |r: &Recmeter| {
        r.metrics()
            .find("recmeter_kafka_last_commit_timestamp_seconds", &[])
            .unwrap_or(0.0)
    };
    let before = checkpointed(&recmeter);
    recmeter.advance("10s");
    wait_until("a checkpoint holding the second part", 30, || {
        checkpointed(&recmeter) > before
    });
    // Durable, and withheld from the group.
    assert!(committed(&recmeter) < checkpointed(&recmeter));
    // The third is being counted when the process is killed. The worker is stalled while the
    // third part is produced, released, and stalled again as soon as some of it is counted: a
    // fast machine would otherwise count all of it before the kill.
    set_hook(&recmeter, "stall_aggregator", true);
    produce(&topic, &third);
    set_hook(&recmeter, "stall_aggregator", false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(&recmeter) <= 100_000.0 {
        assert!(
            Instant::now() < deadline,
            "none of the third part counted in 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    set_hook(&recmeter, "stall_aggregator", true);
    let at_kill = received(&recmeter);
    recmeter.kill9();
    // Killed in the middle: the last count read before the kill is short of the total.
    assert!(at_kill < total, "{at_kill} of {total} before the kill");

    let restarted = start();
    wait_until("every message after the restart", 120, || {
        restarted.metrics().sum("recs_requests_total") >= total
    });
    // Settled: nothing more arrives.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(restarted.metrics().sum("recs_requests_total"), total);
    assert_eq!(sql_requests(&restarted), total as u64);
}

/// Every message of `topic`, read from the start by a fresh group, until `n` are in.
fn consume_all(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    consume_all_from(&brokers(), topic, n)
}

/// [`consume_all`] from the brokers `bootstrap`.
fn consume_all_from(bootstrap: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", fresh("reader"))
            .set("session.timeout.ms", "6000")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", "10000000")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} messages of {topic} within 60 s", out.len()))
                .unwrap();
            out.push(message.detach());
        }
        out
    })
}

#[test]
fn poison_and_oversized_messages_go_to_the_dead_letter_topic_and_good_ones_are_counted() {
    use rdkafka::message::Headers;
    let topic = fresh("traces");
    create_topic(&topic, 2);
    create_topic(&format!("{topic}.dlq"), 1);
    let (good, _) = trace_messages(5, 60, 100);
    let mut messages = Vec::new();
    let mut bad = Vec::new();
    for (i, g) in good.into_iter().enumerate() {
        messages.push(g);
        if i < 50 {
            // Field 31 with wire type 7: no protobuf decoder takes it.
            for j in 0..2u8 {
                let value = vec![0xff, 0x01, i as u8, j, 0x42];
                bad.push(value.clone());
                messages.push((format!("recs-{}", i % 8), value));
            }
        }
    }
    // Over otlp.max_body_bytes (200 000): one the dead-letter producer can carry, and one over
    // its 1 000 000-byte limit, which goes empty.
    for size in [300_000usize, 1_500_000] {
        messages.push(("recs-big".to_owned(), vec![0x0a; size]));
    }
    produce(&topic, &messages);
    let config = format!(
        "[otlp]\nmax_body_bytes = 200000\n{}",
        kafka_config(&topic, &fresh("metrics"), &fresh("group"))
    );
    let recmeter = Recmeter::start(&config);
    wait_until("the good spans", 120, || received(&recmeter) >= 6_000.0);
    let dead = consume_all(&format!("{topic}.dlq"), 102);
    assert_eq!(dead.len(), 102);
    let header = |m: &rdkafka::message::OwnedMessage, key: &str| -> String {
        let headers = m.headers().expect("headers");
        let h = headers
            .iter()
            .find(|h| h.key == key)
            .unwrap_or_else(|| panic!("{key}"));
        String::from_utf8(h.value.unwrap().to_vec()).unwrap()
    };
    let mut garbage = 0;
    let mut sizes = Vec::new();
    for m in &dead {
        assert_eq!(header(m, "x-recmeter-source-topic"), topic);
        let partition: i32 = header(m, "x-recmeter-partition").parse().unwrap();
        let offset: i64 = header(m, "x-recmeter-offset").parse().unwrap();
        assert!((0..2).contains(&partition) && offset >= 0);
        let size: usize = header(m, "x-recmeter-original-size").parse().unwrap();
        let error = header(m, "x-recmeter-error");
        let value = m.payload().unwrap_or_default();
        if size < 1_000 {
            garbage += 1;
            assert!(
                bad.iter().any(|b| b == value),
                "a garbage message as received"
            );
            assert!(error.contains("protobuf"), "{error}");
        } else {
            assert!(error.contains("max_body_bytes"), "{error}");
            sizes.push((size, value.len()));
        }
    }
    assert_eq!(garbage, 100);
    sizes.sort_unstable();
    assert_eq!(sizes, vec![(300_000, 300_000), (1_500_000, 0)]);
    std::thread::sleep(Duration::from_secs(1));
    let m = recmeter.metrics();
    assert_eq!(received(&recmeter), 6_000.0);
    assert_eq!(m.sum("recs_requests_total"), 6_000.0);
    assert_eq!(
        m.value("recmeter_kafka_dlq_total", &[("topic", &topic)]),
        102.0
    );
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "kafka"), ("reason", "decode")]
        ),
        100.0
    );
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "kafka"), ("reason", "too_large")]
        ),
        2.0
    );
}

#[test]
fn metric_points_over_the_metrics_topic_count_exactly() {
    use crate::metrics::points;
    use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
    let traces = fresh("traces");
    let topic = fresh("metrics");
    create_topic(&topic, 2);
    let time = nanos(fake_start()) - 30_000_000_000;
    // Delta points: each message's buckets are requests as they are.
    let mut messages = Vec::new();
    let mut expected = 0u64;
    let mut recommendations = 0i64;
    for i in 0..40u64 {
        let counts = [i % 7, 2 * i % 5, 1];
        expected += counts.iter().sum::<u64>();
        recommendations += i as i64;
        let request = points(
            &format!("histo-{}", i % 4),
            AggregationTemporality::Delta,
            time - 10_000_000_000,
            time,
            counts,
            i as i64,
        );
        messages.push((format!("histo-{}", i % 4), request.encode_to_vec()));
    }
    produce(&topic, &messages);
    let recmeter = Recmeter::start(&kafka_config(&traces, &topic, &fresh("group")));
    wait_until("every point", 60, || {
        recmeter
            .metrics()
            .find(
                "recmeter_metric_points_received_total",
                &[("transport", "kafka")],
            )
            .unwrap_or(0.0)
            >= 80.0
    });
    std::thread::sleep(Duration::from_millis(500));
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), expected as f64);
    assert_eq!(m.sum("recs_recommendations_total"), recommendations as f64);
    assert_eq!(sql_requests(&recmeter), expected);
}

#[test]
fn an_old_backlog_counts_as_too_old_and_its_offsets_are_still_committed() {
    let topic = fresh("traces");
    create_topic(&topic, 1);
    let mut rng = StdRng::seed_from_u64(6);
    // Two hours old: past ingest.max_span_age (1 h).
    let messages: Vec<_> = (0..10u64)
        .map(|m| {
            let (value, _) = trace_message_ending(&mut rng, "recs-old", m * 100, 100, 7_200);
            ("recs-old".to_owned(), value)
        })
        .collect();
    produce(&topic, &messages);
    let recmeter = Recmeter::start(&kafka_config(&topic, &fresh("metrics"), &fresh("group")));
    wait_until("the backlog", 60, || received(&recmeter) >= 1_000.0);
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_spans_dropped_total",
            &[("transport", "kafka"), ("reason", "too_old")]
        ),
        1_000.0
    );
    assert_eq!(m.sum("recs_requests_total"), 0.0);
    recmeter.advance("10s");
    wait_until("the commit of the backlog's offsets", 30, || {
        let m = recmeter.metrics();
        m.find("recmeter_kafka_last_commit_timestamp_seconds", &[])
            .is_some()
            && m.find(
                "recmeter_kafka_consumer_lag",
                &[("topic", &topic), ("partition", "0")],
            ) == Some(0.0)
    });
}

/// How many partitions of `topic` are assigned to `recmeter` (those with a lag).
fn assigned(recmeter: &Recmeter, topic: &str) -> usize {
    let m = recmeter.metrics();
    (0..16)
        .filter(|p| {
            m.find(
                "recmeter_kafka_consumer_lag",
                &[("topic", topic), ("partition", &p.to_string())],
            )
            .is_some()
        })
        .count()
}

#[test]
fn partitions_moving_between_two_instances_are_counted_once_in_their_sum() {
    let topic = fresh("traces");
    let billing = format!("{topic}-billing");
    create_topic(&topic, 4);
    create_topic(&billing, 4);
    let config = kafka_config(&topic, &fresh("metrics"), &fresh("group")).replacen(
        "[kafka.options]",
        "billing_flush_interval = \"1s\"\n[kafka.options]",
        1,
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &std::path::Path| {
        Recmeter::start_with(Start {
            config: &config,
            dir: Some(dir),
            ..Start::default()
        })
    };
    // Each part: spans on the traces topic and cost lines on the billing topic.
    let parts: Vec<_> = (0..7)
        .map(|i| {
            let (lines, n, _, billed) = billing_messages(40 + i, 20, 0);
            (trace_messages(10 + i, 40, 250).0, lines, n, billed)
        })
        .collect();
    let total = 7.0 * 40.0 * 250.0;
    let lines: u64 = parts.iter().map(|p| p.2).sum();
    let billed: i128 = parts.iter().map(|p| p.3).sum();
    let produce_part = |i: usize| {
        let (topic, billing, part) = (topic.clone(), billing.clone(), parts[i].clone());
        std::thread::spawn(move || {
            produce(&topic, &part.0);
            produce(&billing, &part.1);
        })
    };
    let counted = |r: &Recmeter| r.metrics().sum("recs_requests_total");

    let a = start(dir_a.path());
    produce_part(0).join().unwrap();
    wait_until("A counts the first part", 60, || counted(&a) >= 10_000.0);
    // B joins: the partitions split between A and B.
    let b = start(dir_b.path());
    wait_until("the partitions split between A and B", 60, || {
        assigned(&a, &topic) == 2 && assigned(&b, &topic) == 2
    });
    produce_part(1).join().unwrap();
    wait_until("A and B count the second part", 60, || {
        counted(&a) + counted(&b) >= 20_000.0 && counted(&b) > 0.0
    });
    // B stops while messages come: its partitions go back to A (B → A).
    let producing = produce_part(2);
    let (status, _) = b.terminate();
    assert!(status.success());
    producing.join().unwrap();
    produce_part(3).join().unwrap();
    // B comes back while messages come and takes partitions from A again (A → B).
    let producing = produce_part(4);
    let b = start(dir_b.path());
    wait_until("B takes partitions again", 60, || assigned(&b, &topic) == 2);
    producing.join().unwrap();
    // B stops a second time while messages come (B → A), and comes back (A → B).
    let producing = produce_part(5);
    let (status, _) = b.terminate();
    assert!(status.success());
    producing.join().unwrap();
    let producing = produce_part(6);
    let b = start(dir_b.path());
    wait_until("B takes partitions a third time", 60, || {
        assigned(&b, &topic) == 2
    });
    producing.join().unwrap();
    wait_until("every message, in the two instances' sum", 120, || {
        counted(&a) + counted(&b) >= total
            && billing_totals(&a, &billing).0 + billing_totals(&b, &billing).0 >= lines
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counted(&a) + counted(&b), total);
    assert_eq!(sql_requests(&a) + sql_requests(&b), total as u64);
    let (a_lines, _, a_billed) = billing_totals(&a, &billing);
    let (b_lines, _, b_billed) = billing_totals(&b, &billing);
    assert_eq!(a_lines + b_lines, lines);
    assert_eq!(money_units(&a_billed) + money_units(&b_billed), billed);
}

#[test]
fn partitions_lost_while_the_process_hangs_are_put_back_to_the_last_checkpoint() {
    let topic = fresh("traces");
    let billing = format!("{topic}-billing");
    create_topic(&topic, 4);
    create_topic(&billing, 4);
    let config = kafka_config(&topic, &fresh("metrics"), &fresh("group")).replacen(
        "[kafka.options]",
        "billing_flush_interval = \"1s\"\n[kafka.options]",
        1,
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &std::path::Path| {
        Recmeter::start_with(Start {
            config: &config,
            dir: Some(dir),
            ..Start::default()
        })
    };
    let parts: Vec<_> = (0..3).map(|i| trace_messages(20 + i, 40, 250).0).collect();
    // Cost lines on the billing topic beside each part: the rewind takes back the ledger too.
    let bills: Vec<_> = (0..3).map(|i| billing_messages(60 + i, 20, 0)).collect();
    let lines: u64 = bills.iter().map(|b| b.1).sum();
    let billed: i128 = bills.iter().map(|b| b.3).sum();
    let lines_in = |r: &Recmeter| billing_totals(r, &billing).0;
    let counted = |r: &Recmeter| r.metrics().sum("recs_requests_total");
    let signal = |r: &Recmeter, s: &str| {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{s}"))
            .arg(r.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    };

    // A counts the first part, checkpoints it and commits.
    let a = start(dir_a.path());
    produce(&topic, &parts[0]);
    produce(&billing, &bills[0].0);
    wait_until("A counts the first part", 60, || {
        counted(&a) >= 10_000.0 && lines_in(&a) >= bills[0].1
    });
    a.advance("10s");
    wait_until("A's commit", 30, || {
        a.metrics()
            .find("recmeter_kafka_last_commit_timestamp_seconds", &[])
            .is_some()
    });
    // A counts the second part, with no checkpoint after it: the group does not hold it.
    produce(&topic, &parts[1]);
    produce(&billing, &bills[1].0);
    wait_until("A counts the second part", 60, || {
        counted(&a) >= 20_000.0 && lines_in(&a) >= bills[0].1 + bills[1].1
    });
    // A hangs past its session; B joins and takes every partition from the group's offsets.
    signal(&a, "STOP");
    let b = start(dir_b.path());
    wait_until("B counts the second part", 60, || counted(&b) >= 10_000.0);
    // A wakes to find its partitions gone: its counts go back to its checkpoint.
    signal(&a, "CONT");
    wait_until("A puts its counts back", 60, || {
        a.log().contains("Counts put back to the last checkpoint")
    });
    produce(&topic, &parts[2]);
    produce(&billing, &bills[2].0);
    wait_until("every message, in the two instances' sum", 120, || {
        counted(&a) + counted(&b) >= 30_000.0 && lines_in(&a) + lines_in(&b) >= lines
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counted(&a) + counted(&b), 30_000.0, "A:\n{}", a.log());
    let (a_lines, _, a_billed) = billing_totals(&a, &billing);
    let (b_lines, _, b_billed) = billing_totals(&b, &billing);
    assert_eq!(a_lines + b_lines, lines, "A:\n{}", a.log());
    assert_eq!(money_units(&a_billed) + money_units(&b_billed), billed);
}

#[test]
fn a_busy_aggregator_pauses_the_partitions_and_nothing_is_dropped() {
    let topic = fresh("traces");
    create_topic(&topic, 2);
    let (messages, _) = trace_messages(30, 60, 200);
    let config = format!(
        "[aggregator]\nqueue_capacity = 4\n{}",
        kafka_config(&topic, &fresh("metrics"), &fresh("group"))
    );
    let recmeter = Recmeter::start(&config);
    set_hook(&recmeter, "stall_aggregator", true);
    produce(&topic, &messages);
    let busy = |r: &Recmeter| {
        r.metrics()
            .find(
                "recmeter_requests_rejected_total",
                &[("transport", "kafka"), ("reason", "backpressure")],
            )
            .unwrap_or(0.0)
    };
    wait_until("the partitions to pause on a full queue", 60, || {
        busy(&recmeter) > 0.0
    });
    assert_eq!(recmeter.metrics().sum("recs_requests_total"), 0.0);
    set_hook(&recmeter, "stall_aggregator", false);
    wait_until("every message once the aggregator drains", 60, || {
        recmeter.metrics().sum("recs_requests_total") >= 12_000.0
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(recmeter.metrics().sum("recs_requests_total"), 12_000.0);
    assert_eq!(received(&recmeter), 12_000.0);
}

/// Garbage no protobuf decoder takes (field 31, wire type 7), `n` of them.
fn garbage(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| ("recs-bad".to_owned(), vec![0xff, 0x01, i as u8, 0x42]))
        .collect()
}

#[test]
fn a_dead_letter_topic_that_refuses_writes_pauses_the_partition_and_skips_nothing() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let topic = fresh("traces");
    mock.create_topic(&topic, 1, 1).unwrap();
    mock.create_topic(&format!("{topic}.dlq"), 1, 1).unwrap();
    // Good messages around 10 bad ones, all in one partition, in order.
    let (good, _) = trace_messages(40, 20, 100);
    let mut messages = Vec::new();
    for (i, g) in good.into_iter().enumerate() {
        messages.push(g);
        if i % 2 == 0 {
            messages.extend(garbage(1));
        }
    }
    produce_to(&bootstrap, &topic, &messages);
    // The next produce requests fail, not retriably: the dead-letter writes are refused.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 6],
    );
    let recmeter = Recmeter::start(&kafka_config_at(
        &bootstrap,
        &topic,
        &fresh("metrics"),
        &fresh("group"),
    ));
    wait_until("the refused dead-letter writes", 60, || {
        recmeter
            .log()
            .matches("Cannot write to the dead-letter topic")
            .count()
            >= 3
    });
    wait_until("every good message", 60, || received(&recmeter) >= 2_000.0);
    std::thread::sleep(Duration::from_secs(1));
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), 2_000.0);
    assert_eq!(
        m.value("recmeter_kafka_dlq_total", &[("topic", &topic)]),
        10.0
    );
    let dead = consume_all_from(&bootstrap, &format!("{topic}.dlq"), 10);
    let mut offsets: Vec<i64> = dead
        .iter()
        .map(|m| {
            use rdkafka::message::Headers;
            let headers = m.headers().unwrap();
            let h = headers
                .iter()
                .find(|h| h.key == "x-recmeter-offset")
                .unwrap();
            std::str::from_utf8(h.value.unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 10, "each bad message once: {offsets:?}");
}

#[test]
fn a_partition_leader_down_for_20_s_is_recovered_by_itself_with_exact_counts() {
    use rdkafka::mocking::{MockCluster, MockCoordinator};
    let mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let topic = fresh("traces");
    let group = fresh("group");
    mock.create_topic(&topic, 4, 3).unwrap();
    // Partition 0 led by broker 1; the group's coordinator elsewhere.
    mock.partition_leader(&topic, 0, Some(1)).unwrap();
    for p in 1..4 {
        mock.partition_leader(&topic, p, Some(2 + p % 2)).unwrap();
    }
    mock.coordinator(MockCoordinator::Group(group.clone()), 2)
        .unwrap();
    let parts: Vec<_> = (0..2).map(|i| trace_messages(50 + i, 40, 250).0).collect();
    produce_to(&bootstrap, &topic, &parts[0]);
    let recmeter = Recmeter::start(&kafka_config_at(
        &bootstrap,
        &topic,
        &fresh("metrics"),
        &group,
    ));
    wait_until("the first part", 60, || received(&recmeter) >= 10_000.0);
    let lag = |r: &Recmeter| {
        r.metrics().find(
            "recmeter_kafka_consumer_lag",
            &[("topic", &topic), ("partition", "0")],
        )
    };
    // The first part is checkpointed and committed: partition 0's lag is 0 before the fault.
    recmeter.advance("10s");
    wait_until("partition 0's lag at 0 before the fault", 30, || {
        lag(&recmeter) == Some(0.0)
    });
    // Partition 0's leader goes down while the second part is produced, for 20 s.
    mock.broker_down(1).unwrap();
    let producing = std::thread::spawn({
        let (bootstrap, topic, part) = (bootstrap.clone(), topic.clone(), parts[1].clone());
        move || produce_to(&bootstrap, &topic, &part)
    });
    std::thread::sleep(Duration::from_secs(20));
    mock.broker_up(1).unwrap();
    producing.join().unwrap();
    wait_until("the second part after the leader is back", 90, || {
        received(&recmeter) >= 20_000.0
    });
    // Read but not committed: the lag is above 0 until a checkpoint holds it.
    wait_until("partition 0's lag above 0", 30, || {
        lag(&recmeter).unwrap_or(0.0) > 0.0
    });
    // Within two checkpoint intervals the group holds it all again.
    recmeter.advance("10s");
    recmeter.advance("10s");
    wait_until("partition 0's lag back to 0", 30, || {
        lag(&recmeter) == Some(0.0)
    });
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), 20_000.0);
    assert_eq!(received(&recmeter), 20_000.0);
}

/// Billing messages: JSON lines of FOCUS cost lines, with their billed cost drawn in units of
/// 10^-6 (written as decimal strings and as JSON numbers), some lines rejects (a cost that is
/// no number) and some messages garbage. Gives the messages, the lines, the rejects and the
/// billed total in units of 10^-12, summed here from the drawn values.
fn billing_messages(
    seed: u64,
    messages: usize,
    garbage_every: usize,
) -> (Vec<(String, Vec<u8>)>, u64, u64, i128) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut lines, mut rejects, mut total) = (0u64, 0u64, 0i128);
    let mut out = Vec::with_capacity(messages);
    for m in 0..messages {
        let account = format!("{}", 100 + m % 3);
        if garbage_every > 0 && m % garbage_every == garbage_every - 1 {
            out.push((account, vec![0xff, 0x00, m as u8, 0x7b]));
            continue;
        }
        let mut text = String::new();
        for l in 0..rng.random_range(1..=8) {
            let micros: i64 = rng.random_range(0..5_000_000_000);
            let cost = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
            let billed = if l % 2 == 0 {
                format!("\"{cost}\"")
            } else {
                cost.clone()
            };
            let hour = (m * 8 + l) % 24;
            if rng.random_range(0..50) == 0 {
                text.push_str(&format!(
                    "{{\"BilledCost\":\"{cost}x\",\"EffectiveCost\":\"0\",\"ChargePeriodStart\":\"2026-11-30T{hour:02}:00:00Z\",\"ChargePeriodEnd\":\"2026-11-30T{hour:02}:59:59Z\",\"ProviderName\":\"AWS\",\"BillingAccountId\":\"{account}\",\"BillingCurrency\":\"USD\"}}\n"
                ));
                rejects += 1;
                continue;
            }
            text.push_str(&format!(
                "{{\"BilledCost\":{billed},\"EffectiveCost\":{billed},\"ListCost\":null,\"ChargePeriodStart\":\"2026-11-30T{hour:02}:00:00Z\",\"ChargePeriodEnd\":\"2026-11-30T{hour:02}:59:59Z\",\"ProviderName\":\"AWS\",\"BillingAccountId\":\"{account}\",\"BillingCurrency\":\"USD\",\"ServiceName\":\"Amazon EC2\",\"PricingCategory\":\"Spot\",\"Tags\":{{\"component\":\"ranker\"}}}}\n"
            ));
            lines += 1;
            total += i128::from(micros) * 1_000_000;
        }
        out.push((account, text.into_bytes()));
    }
    (out, lines, rejects, total)
}

/// Money in units of 10^-12 as SQL casts a `Decimal128(38, 12)` sum to text.
fn money_text(units: i128) -> String {
    format!(
        "{}.{:012}",
        units / 1_000_000_000_000,
        units % 1_000_000_000_000
    )
}

/// Money as SQL gives a sum's text, in units of 10^-12.
fn money_units(text: &str) -> i128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    whole.parse::<i128>().unwrap() * 1_000_000_000_000
        + format!("{fraction:0<12}")[..12].parse::<i128>().unwrap()
}

/// Lines, rejects and the billed total in `cost_lines` of the billing topic `topic`.
fn billing_totals(recmeter: &Recmeter, topic: &str) -> (u64, u64, String) {
    let lines = recmeter.sql_rows(&format!(
        "SELECT COUNT(*) AS n, CAST(SUM(billed_cost) AS VARCHAR) AS billed FROM cost_lines \
         WHERE source_object LIKE '{topic}/%'"
    ));
    let rejects = recmeter.sql_rows(&format!(
        "SELECT COUNT(*) AS n FROM cost_rejects WHERE source_object LIKE '{topic}/%'"
    ));
    (
        lines[0]["n"].as_u64().unwrap(),
        rejects[0]["n"].as_u64().unwrap(),
        lines[0]["billed"].as_str().unwrap_or("0").to_owned(),
    )
}

#[test]
fn cost_lines_over_the_billing_topic_land_exactly_once_across_kill_9() {
    let traces = fresh("traces");
    let topic = format!("{traces}-billing");
    create_topic(&topic, 2);
    create_topic(&format!("{topic}.dlq"), 1);
    // Lines land a second after the first of them is read.
    let config = kafka_config(&traces, &fresh("metrics"), &fresh("group")).replacen(
        "[kafka.options]",
        "billing_flush_interval = \"1s\"\n[kafka.options]",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Recmeter::start_with(Start {
            config: &config,
            dir: Some(dir.path()),
            ..Start::default()
        })
    };
    let (first, lines_1, rejects_1, total_1) = billing_messages(7, 300, 30);
    let (second, lines_2, rejects_2, total_2) = billing_messages(8, 300, 0);
    produce(&topic, &first);
    let recmeter = start();
    wait_until("the first part's lines", 60, || {
        billing_totals(&recmeter, &topic).0 >= lines_1
    });
    assert_eq!(
        billing_totals(&recmeter, &topic),
        (lines_1, rejects_1, money_text(total_1))
    );
    let m = recmeter.metrics();
    assert_eq!(
        m.value("recmeter_kafka_dlq_total", &[("topic", &topic)]),
        10.0
    );
    assert_eq!(
        m.value(
            "recmeter_billing_rows_total",
            &[("provider", "AWS"), ("outcome", "line")]
        ),
        lines_1 as f64
    );
    let dead = consume_all(&format!("{topic}.dlq"), 10);
    assert!(
        dead.iter()
            .all(|d| d.payload().is_some_and(|p| p[0] == 0xff))
    );
    // Each line says where it came from: topic/partition/offset, and its line in the message.
    let rows = recmeter.sql_rows(&format!(
        "SELECT source_object, source_row, tags, pricing_category \
         FROM cost_lines WHERE source_object LIKE '{topic}/%' ORDER BY source_object LIMIT 1"
    ));
    let object = rows[0]["source_object"].as_str().unwrap();
    let parts: Vec<&str> = object.rsplitn(3, '/').collect();
    assert!(
        parts[0].parse::<i64>().is_ok() && parts[1].parse::<i32>().is_ok(),
        "{object}"
    );
    assert!(
        rows[0]["tags"].to_string().contains("ranker"),
        "{}",
        rows[0]["tags"]
    );
    assert_eq!(rows[0]["pricing_category"], "Dynamic");

    // Checkpointed, then the second part lands in part when the process is killed.
    recmeter.advance("10s");
    produce(&topic, &second);
    wait_until("some of the second part", 60, || {
        billing_totals(&recmeter, &topic).0 > lines_1
    });
    recmeter.kill9();

    let restarted = start();
    let lines = lines_1 + lines_2;
    wait_until("every line after the restart", 120, || {
        billing_totals(&restarted, &topic).0 >= lines
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        billing_totals(&restarted, &topic),
        (lines, rejects_1 + rejects_2, money_text(total_1 + total_2))
    );
}
