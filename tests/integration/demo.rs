//! `recmeter demo` shows live numbers within seconds of readiness.

use std::time::{Duration, Instant};

use crate::harness::{Recmeter, Start};

#[test]
fn demo_serves_requests_and_quantiles_soon_after_ready() {
    let recmeter = Recmeter::start_with(Start {
        command: "demo",
        fake_clock: None,
        ..Start::default()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = recmeter.metrics();
        let requests = m.sum("recs_requests_total");
        let gauges = m
            .samples
            .iter()
            .filter(|s| s.name == "recmeter_latency_quantile_seconds" && s.value > 0.0)
            .count();
        // Both exporters (gRPC and HTTP) deliver on their own schedules.
        let grpc = m.value("recmeter_spans_received_total", &[("transport", "grpc")]);
        let http = m.value("recmeter_spans_received_total", &[("transport", "http")]);
        if requests > 0.0 && gauges > 0 && grpc > 0.0 && http > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live numbers 10 s after ready:\n{}",
            recmeter.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
}
