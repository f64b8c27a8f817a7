//! `recmeter loadgen` against a real recmeter: realistic span size, statuses, server CPU.

use std::process::Command;

use crate::harness::{Recmeter, Start, binary};

fn field(output: &str, name: &str) -> f64 {
    output
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l[name.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in:\n{output}"))
}

/// Runs `recmeter loadgen` against `recmeter` with `--server-pid`, failing on a non-zero exit;
/// returns its report.
fn loadgen(recmeter: &Recmeter, args: &[&str], endpoint: &str) -> String {
    let out = Command::new(binary())
        .arg("loadgen")
        .args(args)
        .args(["--endpoint", endpoint])
        .args(["--server-pid", &recmeter.pid().to_string()])
        .args(["--metrics-url", &recmeter.api_url("/metrics")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn loadgen_reports_size_throughput_statuses_and_server_cpu() {
    let recmeter = Recmeter::start_with(Start {
        fake_clock: None,
        ..Start::default()
    });
    for (protocol, endpoint) in [
        ("grpc", format!("http://{}", recmeter.addrs.otlp_grpc)),
        (
            "http-proto",
            format!("http://{}/v1/traces", recmeter.addrs.otlp_http),
        ),
    ] {
        let stdout = loadgen(
            &recmeter,
            &[
                "--duration",
                "2s",
                "--rate",
                "20000",
                "--protocol",
                protocol,
            ],
            &endpoint,
        );
        assert!(
            field(&stdout, "encoded bytes per span") >= 400.0,
            "{stdout}"
        );
        let requests = field(&stdout, "requests");
        assert!(requests > 0.0);
        assert_eq!(
            field(&stdout, "  ok"),
            requests,
            "every request answered ok:\n{stdout}"
        );
        assert!(field(&stdout, "spans per server cpu-s") > 0.0, "{stdout}");
    }
    let m = recmeter.metrics();
    assert!(m.sum("recs_requests_total") > 0.0);
    assert_eq!(m.sum("recmeter_spans_dropped_total"), 0.0);
}

#[test]
fn loadgen_subtracts_spans_the_server_rejects() {
    // Spans up to about 2 s old reach a server that keeps only the last second: some are
    // dropped as too old inside accepted requests, and loadgen must not wait for them.
    let recmeter = Recmeter::start_with(Start {
        config: "[ingest]\nmax_span_age = \"1s\"\n",
        fake_clock: None,
        ..Start::default()
    });
    let stdout = loadgen(
        &recmeter,
        &[
            "--duration",
            "3s",
            "--rate",
            "20000",
            "--protocol",
            "http-json",
        ],
        &format!("http://{}/v1/traces", recmeter.addrs.otlp_http),
    );
    let rejected = field(&stdout, "spans rejected");
    let accepted = field(&stdout, "spans accepted");
    assert!(rejected > 0.0 && accepted > 0.0, "{stdout}");
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), accepted);
    assert_eq!(m.sum("recmeter_spans_dropped_total"), rejected);
}
