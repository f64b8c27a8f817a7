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
        let out = Command::new(binary())
            .args([
                "loadgen",
                "--duration",
                "2s",
                "--rate",
                "20000",
                "--protocol",
                protocol,
            ])
            .args(["--endpoint", &endpoint])
            .args(["--server-pid", &recmeter.pid().to_string()])
            .args(["--metrics-url", &recmeter.api_url("/metrics")])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
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
