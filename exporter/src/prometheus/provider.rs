//! Exposition providers: `/metrics` is rendered from a list of them, each adding families of
//! its own. The built-in ones are the latency families and recmeter's self-telemetry; a later
//! capability (SLO burn, cost, Kafka, PagerDuty) adds its families by registering one more.

use std::future::Future;
use std::pin::Pin;

use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;

use crate::error::ApiError;

/// Exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text004,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text004,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What one provider shows in one scrape: a collector holding what it read, encoded off the
/// async workers, and about how many bytes of text it writes.
#[derive(Debug)]
pub struct Part {
    /// Encodes the families this provider read.
    pub collector: Box<dyn Collector>,
    /// About how many bytes of text it writes, to size the output once.
    pub size_hint: usize,
}

/// The future [`Provider::read`] returns.
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<Part, ApiError>> + Send + 'a>>;

/// One part of `/metrics`. Each scrape calls [`Provider::read`] on every provider, in the order
/// they were registered, then encodes the parts in that order.
pub trait Provider: std::fmt::Debug + Send + Sync {
    /// Reads what this scrape shows. A failure fails the scrape (an answer with families
    /// missing would read as counters gone).
    fn read(&self) -> ReadFuture<'_>;

    /// Whether the query API samples this provider's families once a minute into its ring
    /// (not the request families: they are answered from the rollups).
    fn sampled(&self) -> bool {
        true
    }
}

/// Renders `parts` in `format`, in order.
pub fn render_parts(parts: Vec<Part>, format: Format) -> Result<String, std::fmt::Error> {
    // Sized up front, the text is written once instead of copied as it grows.
    let mut out = String::with_capacity(parts.iter().map(|p| p.size_hint).sum());
    let mut registry = Registry::default();
    for part in parts {
        registry.register_collector(part.collector);
    }
    match format {
        Format::Text004 => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use prometheus_client::encoding::DescriptorEncoder;
    use prometheus_client::metrics::MetricType;
    use recmeter_aggregator::Telemetry;

    use super::*;

    /// A provider of a later capability: one gauge family whose labels come from its data.
    #[derive(Debug)]
    struct Lag(Vec<(String, i64)>);

    #[derive(Debug)]
    struct LagFamilies(Vec<(String, i64)>);

    impl Collector for LagFamilies {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(
                "recmeter_test_consumer_lag",
                "Messages behind, per partition.",
                None,
                MetricType::Gauge,
            )?;
            for (partition, lag) in &self.0 {
                family
                    .encode_family(&vec![("partition", partition.clone())])?
                    .encode_gauge(lag)?;
            }
            Ok(())
        }
    }

    impl Provider for Lag {
        fn read(&self) -> ReadFuture<'_> {
            Box::pin(async move {
                Ok(Part {
                    collector: Box::new(LagFamilies(self.0.clone())),
                    size_hint: 256,
                })
            })
        }
    }

    /// Fails unless `promtool check metrics` accepts `text` without a word.
    fn promtool_accepts(text: &str) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool on PATH (scripts/test.sh installs Debian's prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && printed.is_empty(),
            "promtool: {printed}\n{text}"
        );
    }

    #[tokio::test]
    async fn providers_render_in_order_with_labels_of_their_own() {
        let telemetry = Telemetry::default();
        let per_topic = telemetry.labelled_counter(
            "recmeter_test_messages",
            "Messages read, per topic and partition.",
            &["topic", "partition"],
        );
        per_topic.add(&["recs-traces", "0"], 5);
        per_topic.add(&["recs-traces", "1"], 2);
        per_topic.add(&["recs-traces", "0"], 1);
        per_topic.add(&["odd \"topic\"\nname", "3"], 1);
        // The same name hands back the same family.
        telemetry
            .labelled_counter("recmeter_test_messages", "", &[])
            .add(&["recs-traces", "1"], 1);
        let lag = Lag(vec![("0".into(), 12), ("1".into(), 0)]);
        let parts = vec![
            lag.read().await.unwrap(),
            crate::prometheus::telemetry_part(&telemetry, 0),
        ];
        let text = render_parts(parts, Format::Text004).unwrap();
        let lag_at = text
            .find("recmeter_test_consumer_lag{partition=\"0\"} 12")
            .unwrap();
        let spans_at = text.find("recmeter_spans_received_total").unwrap();
        assert!(lag_at < spans_at, "in registration order:\n{text}");
        for line in [
            "recmeter_test_messages_total{topic=\"recs-traces\",partition=\"0\"} 6",
            "recmeter_test_messages_total{topic=\"recs-traces\",partition=\"1\"} 3",
            r#"recmeter_test_messages_total{topic="odd \"topic\"\nname",partition="3"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        promtool_accepts(&text);
    }
}
