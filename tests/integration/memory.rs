//! The memory bound at the series cap, on a real server: under the fake clock, 61 minutes of
//! traffic touching all 10 001 series (10 000 plus the overflow series) every minute.

use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::harness::{Recmeter, fake_start, nanos};
use crate::spans::request_of;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn rss_stays_under_2_gib_at_the_series_cap_for_61_minutes() {
    let recmeter = Recmeter::start("");
    let client = reqwest::blocking::Client::new();
    let url = format!("http://{}/v1/traces", recmeter.addrs.otlp_http);
    let mut end = nanos(fake_start());
    for minute in 0..61u64 {
        // 10 001 distinct endpoints: the 10 001st goes to the overflow series.
        let spans = (0..10_001u64)
            .map(|i| {
                let id = minute * 20_000 + i + 1;
                Span {
                    trace_id: u128::from(id).to_be_bytes().to_vec(),
                    span_id: id.to_be_bytes().to_vec(),
                    name: format!("GET /v1/recommendations/{i}"),
                    kind: 2,
                    start_time_unix_nano: end - 1_000_000 * (1 + (i * 7 + minute) % 400),
                    end_time_unix_nano: end,
                    ..Default::default()
                }
            })
            .collect();
        let body = request_of(spans).encode_to_vec();
        let response = client
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        recmeter.advance("60s");
        end += 60_000_000_000;
    }
    let m = recmeter.metrics();
    assert_eq!(m.value("recmeter_series_active", &[]), 10_001.0);
    assert_eq!(m.value("recmeter_series_overflow_total", &[]), 61.0);
    assert_eq!(m.sum("recs_requests_total"), 61.0 * 10_001.0);
    let rss = rss_bytes(recmeter.pid());
    eprintln!("RSS after 61 minutes at the cap: {} MiB", rss >> 20);
    assert!(rss <= 2 << 30, "RSS {} MiB > 2 GiB", rss >> 20);
}
