//! `[kafka]`: the brokers and consumer group, the topics and their encodings, how often cost
//! lines from the billing topic are landed, and the
//! librdkafka options passed through (tuning, SASL, TLS), secrets from a file. Keys stay flat
//! (`traces_encoding`, not a table) because the environment overrides only `SECTION__KEY`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use recmeter_core::InvalidField;
use serde::{Deserialize, Serialize};

/// Where a new consumer group starts reading a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialOffset {
    /// The oldest message kept (a backlog past `ingest.max_span_age` counts as `too_old`).
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// How a topic's messages are encoded: one `Export*ServiceRequest` per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// OTLP protobuf.
    #[default]
    OtlpProto,
    /// OTLP JSON.
    OtlpJson,
}

/// `[kafka]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port` of the bootstrap brokers, comma-separated (so `RECMETER_KAFKA__BROKERS`
    /// sets them). Default: empty, the Kafka source is off.
    pub brokers: String,
    /// The consumer group. Default: `"recmeter"`.
    pub group_id: String,
    /// Where a partition with no committed offset starts. Default: `"earliest"`.
    pub initial_offset: InitialOffset,
    /// Traces, one `ExportTraceServiceRequest` per message. Default: `"recs-traces"`.
    pub traces_topic: String,
    /// Default: `"otlp_proto"`.
    pub traces_encoding: Encoding,
    /// Metric points, one `ExportMetricsServiceRequest` per message. Default: `"recs-metrics"`.
    pub metrics_topic: String,
    /// Default: `"otlp_proto"`.
    pub metrics_encoding: Encoding,
    /// Cost lines: JSON lines, each one object with FOCUS column names, into `cost_lines`
    /// (appended; restatements apply to the bucket's exports only); empty: not read. Default:
    /// `"recs-billing"`.
    pub billing_topic: String,
    /// How long cost lines from the billing topic are gathered before they are landed as
    /// files of the store (at most 65 536 rows a partition are gathered). Default: `"60s"`.
    #[serde(with = "humantime_serde")]
    pub billing_flush_interval: Duration,
    /// The dead-letter topic of each topic is its name with this suffix. Default: `".dlq"`.
    pub dlq_suffix: String,
    /// How long a revoked partition waits for its cost lines to land, for its checkpoint, and
    /// then for its commit, before it is released (the wait for what was queued to be counted
    /// is not bounded, and is logged at each interval); at shutdown, each wait is bounded by
    /// it. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// librdkafka properties passed as they are (`fetch.max.bytes`, `security.protocol`,
    /// `sasl.mechanisms`, …). Default: none.
    pub options: BTreeMap<String, String>,
    /// A file of `key=value` lines merged into `options` (for secrets such as
    /// `sasl.password`); `#` starts a comment line. Default: none.
    pub options_file: Option<PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "recmeter".to_owned(),
            initial_offset: InitialOffset::Earliest,
            traces_topic: "recs-traces".to_owned(),
            traces_encoding: Encoding::OtlpProto,
            metrics_topic: "recs-metrics".to_owned(),
            metrics_encoding: Encoding::OtlpProto,
            billing_topic: "recs-billing".to_owned(),
            billing_flush_interval: Duration::from_secs(60),
            dlq_suffix: ".dlq".to_owned(),
            drain_timeout: Duration::from_secs(10),
            options: BTreeMap::new(),
            options_file: None,
        }
    }
}

/// Properties recmeter sets itself: exactly-once depends on them.
const OWN_OPTIONS: [&str; 8] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    // The rebalance callback follows the eager protocol: it lets every partition go and takes
    // the new assignment whole.
    "partition.assignment.strategy",
    "group.protocol",
];

/// Whether a property holds a secret: its value is never logged.
pub fn is_secret(key: &str) -> bool {
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|s| key.contains(s))
}

/// Whether `name` is a Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl KafkaConfig {
    /// Whether the Kafka source runs.
    pub fn is_on(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// The topics read, with their config keys (the billing topic unless it is empty).
    pub fn topics(&self) -> Vec<(&'static str, &str)> {
        let mut topics = vec![
            ("kafka.traces_topic", self.traces_topic.as_str()),
            ("kafka.metrics_topic", self.metrics_topic.as_str()),
        ];
        if !self.billing_topic.is_empty() {
            topics.push(("kafka.billing_topic", self.billing_topic.as_str()));
        }
        topics
    }

    /// `options` with `options_file`'s lines merged in (the file wins), or what is wrong.
    pub fn client_options(&self) -> Result<BTreeMap<String, String>, Vec<InvalidField>> {
        let mut options = self.options.clone();
        let mut errors = Vec::new();
        if let Some(path) = &self.options_file {
            match std::fs::read_to_string(path) {
                Err(e) => errors.push(InvalidField::new(
                    "kafka.options_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
                Ok(text) => {
                    for (i, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        match line.split_once('=') {
                            Some((k, v)) if !k.trim().is_empty() => {
                                options.insert(k.trim().to_owned(), v.trim().to_owned());
                            }
                            // The line may hold a secret: only its number is said.
                            _ => errors.push(InvalidField::new(
                                "kafka.options_file",
                                format!("line {} is not `key=value`", i + 1),
                            )),
                        }
                    }
                }
            }
        }
        for key in options.keys() {
            if OWN_OPTIONS.contains(&key.as_str()) {
                errors.push(InvalidField::new(
                    format!("kafka.options.{key}"),
                    "is set by recmeter (exactly-once counting depends on it); use \
                     kafka.brokers, kafka.group_id or kafka.initial_offset",
                ));
            }
        }
        if errors.is_empty() {
            Ok(options)
        } else {
            Err(errors)
        }
    }

    /// `options` for a log line: secrets replaced by `<redacted>`.
    pub fn redacted(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        options
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) { "<redacted>" } else { v };
                (k.clone(), v.to_owned())
            })
            .collect()
    }

    /// Cross-field checks (only while the source is on, but for the option file's).
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if !self.is_on() {
            return errors;
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let ok = broker.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                errors.push(InvalidField::new(
                    "kafka.brokers",
                    format!("`{broker}` is not host:port (list brokers separated by commas)"),
                ));
            }
        }
        if self.group_id.trim().is_empty() {
            errors.push(InvalidField::new("kafka.group_id", "is empty"));
        }
        if self.billing_flush_interval.is_zero()
            || self.billing_flush_interval > Duration::from_secs(3600)
        {
            errors.push(InvalidField::new(
                "kafka.billing_flush_interval",
                "must be more than 0 and at most 1h (cost lines wait that long to land)",
            ));
        }
        let topics = self.topics();
        for (i, (key, name)) in topics.iter().enumerate() {
            if !topic_ok(name) {
                errors.push(InvalidField::new(
                    *key,
                    format!("`{name}` is not a topic name: 1 to 249 of [a-zA-Z0-9._-]"),
                ));
            } else if !topic_ok(&format!("{name}{}", self.dlq_suffix)) {
                errors.push(InvalidField::new(
                    "kafka.dlq_suffix",
                    format!("`{name}{}` is not a topic name", self.dlq_suffix),
                ));
            }
            if topics[..i].iter().any(|(_, other)| other == name) {
                errors.push(InvalidField::new(*key, format!("`{name}` is read twice")));
            }
        }
        if self.dlq_suffix.is_empty() {
            errors.push(InvalidField::new(
                "kafka.dlq_suffix",
                "is empty: dead letters would go back to the topic they came from",
            ));
        }
        if self.drain_timeout < Duration::from_millis(100) {
            errors.push(InvalidField::new(
                "kafka.drain_timeout",
                "must be at least 100ms",
            ));
        }
        if let Err(e) = self.client_options() {
            errors.extend(e);
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let config = KafkaConfig::default();
        assert!(!config.is_on());
        assert!(config.validate().is_empty());
        let on = KafkaConfig {
            brokers: "kafka-0:9092, kafka-1:9092".into(),
            ..KafkaConfig::default()
        };
        assert!(on.is_on());
        assert!(on.validate().is_empty(), "{:?}", on.validate());
    }

    #[test]
    fn every_problem_is_named_and_secrets_stay_out_of_messages() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kafka.properties");
        std::fs::write(
            &file,
            "# secrets\nsasl.password = hunter2\nsasl.username=recmeter\nhunter3\n",
        )
        .unwrap();
        let config = KafkaConfig {
            brokers: "kafka-0:9092,nowhere".into(),
            group_id: " ".into(),
            metrics_topic: "recs traces".into(),
            billing_topic: "recs-traces".into(),
            options: BTreeMap::from([("group.id".to_owned(), "other".to_owned())]),
            options_file: Some(file.clone()),
            ..KafkaConfig::default()
        };
        let errors: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
        for expected in [
            "kafka.brokers",
            "`nowhere` is not host:port",
            "kafka.group_id",
            "kafka.metrics_topic",
            "`recs-traces` is read twice",
            "kafka.options.group.id",
            "line 4 is not `key=value`",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{expected}: {errors:?}"
            );
        }
        assert!(!errors.iter().any(|e| e.contains("hunter")), "{errors:?}");
        // A good file merges, and a log line hides its secrets.
        std::fs::write(&file, "sasl.password=hunter2\nsasl.username=recmeter\n").unwrap();
        let config = KafkaConfig {
            options: BTreeMap::from([("fetch.max.bytes".to_owned(), "1048576".to_owned())]),
            options_file: Some(file),
            ..KafkaConfig::default()
        };
        let options = config.client_options().unwrap();
        assert_eq!(options["sasl.password"], "hunter2");
        assert_eq!(options["fetch.max.bytes"], "1048576");
        let shown = KafkaConfig::redacted(&options);
        assert_eq!(shown["sasl.password"], "<redacted>");
        assert_eq!(shown["sasl.username"], "recmeter");
    }
}
