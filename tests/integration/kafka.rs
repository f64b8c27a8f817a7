//! The Kafka-protocol broker the Kafka tests run against (issue 29): `scripts/test.sh` starts
//! tansu on a free local port unless `KAFKA_BROKERS` names brokers already (a real cluster). The
//! bundled librdkafka produces to it and consumes from it in a consumer group.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
