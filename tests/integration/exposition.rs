//! `/metrics` checked by independent parsers: `promtool check metrics` for text 0.0.4, and
//! Python prometheus-client's OpenMetrics parser.

use std::io::Write;
use std::process::{Command, Stdio};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::harness::{Recmeter, fake_start, python};
use crate::spans::{Client, export, span};

/// A recmeter holding series with an extra dimension and awkward label values.
fn with_data() -> Recmeter {
    let recmeter = Recmeter::start("[ingest]\ndimensions = [\"deployment.environment.name\"]\n");
    let now = fake_start();
    let batch = ["GET /v1/recs", "GET /a \"quoted\" \\ path", "multi\nline"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            span(
                name,
                SpanKind::Server,
                now,
                (i as u64 + 1) * 40_000_000,
                i == 1,
                vec![KeyValue::new("deployment.environment.name", "prod")],
                i as u64,
            )
        })
        .collect();
    export(Client::HttpJson, &recmeter.addrs, "recs-api", vec![batch]);
    recmeter
}

/// Fails unless `promtool check metrics` accepts `body` without a word.
pub fn promtool_check_metrics(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (scripts/test.sh installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.is_empty(),
        "promtool: {printed}\n{body}"
    );
}

#[test]
fn text_format_passes_promtool_check_metrics() {
    let recmeter = with_data();
    let (status, content_type, body) = recmeter.get("/metrics", Some("text/plain;version=0.0.4"));
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        body.contains("deployment_environment_name=\"prod\""),
        "{body}"
    );
    promtool_check_metrics(&body);
    // The default (no Accept header) is the same format.
    let (_, default_type, _) = recmeter.get("/metrics", None);
    assert_eq!(default_type, content_type);
}

#[test]
fn openmetrics_parses_with_prometheus_client() {
    let recmeter = with_data();
    let (status, content_type, body) = recmeter.get(
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
requests = families["recs_requests"]
assert requests.type == "counter", requests.type
total = sum(s.value for s in requests.samples if s.name == "recs_requests_total")
assert total == 3, total
gauge = families["recmeter_latency_quantile_seconds"]
assert gauge.type == "gauge"
assert any(s.labels.get("endpoint") == "multi\nline" for s in gauge.samples)
print(len(families))
"#;
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser failed: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
}
