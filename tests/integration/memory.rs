//! Memory bounds on a real server under the fake clock: at the series cap, 61 minutes of
//! traffic touching all 10 001 series (10 000 plus the global overflow series) every minute; and flat
//! while history grows in the store for 30 days.

use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::harness::{Recmeter, Start, fake_start, nanos};
use crate::spans::{request_for_services, request_of};

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
        // 10 001 series: ten services of 999 endpoints each fill the 9 990 slots open to
        // endpoints; eleven services that start sending then take the ten slots kept for new
        // services (their overflow series) and, the eleventh, the global overflow series.
        let services = (0..21u64)
            .map(|s| {
                let endpoints = if s < 10 { 999 } else { 1 };
                let spans = (0..endpoints)
                    .map(|e| {
                        let i = s * 1_000 + e;
                        let id = minute * 30_000 + i + 1;
                        Span {
                            trace_id: u128::from(id).to_be_bytes().to_vec(),
                            span_id: id.to_be_bytes().to_vec(),
                            name: format!("GET /v1/recommendations/{e}"),
                            kind: 2,
                            start_time_unix_nano: end - 1_000_000 * (1 + (i * 7 + minute) % 400),
                            end_time_unix_nano: end,
                            ..Default::default()
                        }
                    })
                    .collect();
                (format!("recs-{s}"), spans)
            })
            .collect();
        let body = request_for_services(services).encode_to_vec();
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
    assert_eq!(
        m.value(
            "recmeter_series_overflow_total",
            &[("service", "__other__")]
        ),
        61.0 * 11.0
    );
    assert_eq!(m.sum("recs_requests_total"), 61.0 * 10_001.0);
    let rss = rss_bytes(recmeter.pid());
    eprintln!("RSS after 61 minutes at the cap: {} MiB", rss >> 20);
    assert!(rss <= 2 << 30, "RSS {} MiB > 2 GiB", rss >> 20);
}

/// History grows, memory does not: 100 series under steady load while the fake clock runs
/// through 34 days, with a checkpoint (and a compaction after it) every second. The first 4
/// days fill what memory holds by design (3 h of minutes, a day of hours) and bring the store
/// to its steady state (minute files expire after 3 days). Over the next 30, RSS is read at the
/// end of each day, 1.5 s after a checkpoint has covered it (the compaction after it has
/// finished by then), and stays within ±10% of those 30 days' mean. The server runs with its
/// allocator as shipped (ADR 013).
#[test]
fn rss_stays_flat_over_30_days_of_history_with_checkpoints_and_compaction() {
    const WARM_UP: u64 = 4;
    const DAYS: u64 = WARM_UP + 30;
    let recmeter = Recmeter::start_with(Start {
        config: "[storage]\ncheckpoint_interval = \"1s\"\n",
        ..Start::default()
    });
    let client = reqwest::blocking::Client::new();
    let url = format!("http://{}/v1/traces", recmeter.addrs.otlp_http);
    let mut now = nanos(fake_start());
    let mut samples = Vec::new();
    let mut id = 0u64;
    for step in 0..DAYS * 144 {
        // 6 spans per series over the last 10 minutes.
        let spans = (0..600u64)
            .map(|i| {
                id += 1;
                let end = now - 1_000_000_000 * ((i * 37 + step) % 599 + 1);
                Span {
                    trace_id: u128::from(id).to_be_bytes().to_vec(),
                    span_id: id.to_be_bytes().to_vec(),
                    name: format!("GET /v1/recommendations/{}", i % 100),
                    kind: 2,
                    start_time_unix_nano: end - 1_000_000 * (1 + (i * 13 + step) % 900),
                    end_time_unix_nano: end,
                    ..Default::default()
                }
            })
            .collect();
        let response = client
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(request_of(spans).encode_to_vec())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        recmeter.advance("10m");
        now += 600_000_000_000;
        if step % 144 == 143 {
            // Sampled once a checkpoint has taken the day's rows, so every sample sees the same
            // point of the cycle (the rows a checkpoint carries are transient).
            let seconds = now as f64 / 1e9;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while recmeter
                .metrics()
                .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
                < seconds
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no checkpoint in 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // The compaction after that checkpoint normally takes well under a second; RSS is
            // read after it (a checkpoint's and a compaction's working sets are transient, and
            // not what grows with history; the next, nearly empty, cycle may be running).
            std::thread::sleep(std::time::Duration::from_millis(1500));
            samples.push(rss_bytes(recmeter.pid()));
        }
    }
    let filling: Vec<u64> = samples.drain(..WARM_UP as usize).map(|b| b >> 20).collect();
    eprintln!("RSS at the end of days 1 to {WARM_UP} (MiB): {filling:?}");
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), (DAYS * 144 * 600) as f64);
    assert!(m.value("recmeter_compactions_total", &[("outcome", "ok")]) > 0.0);
    assert_eq!(
        m.value("recmeter_compactions_total", &[("outcome", "error")]),
        0.0
    );
    let mib: Vec<u64> = samples.iter().map(|b| b >> 20).collect();
    eprintln!(
        "RSS at the end of days {} to {DAYS} (MiB): {mib:?}",
        WARM_UP + 1
    );
    let mean = |days: &[u64]| days.iter().sum::<u64>() as f64 / days.len() as f64;
    let all = mean(&samples);
    for (day, rss) in samples.iter().enumerate() {
        let off = *rss as f64 / all - 1.0;
        assert!(
            off.abs() <= 0.10,
            "day {}: {} MiB is {:+.1}% off the mean of the days checked ({:.0} MiB); all: {mib:?}",
            day as u64 + WARM_UP + 1,
            rss >> 20,
            off * 100.0,
            all / f64::from(1 << 20)
        );
    }
    // No trend either: the last ten days read within 10% of the first ten.
    let (first, last) = (mean(&samples[..10]), mean(&samples[samples.len() - 10..]));
    assert!(
        (last / first - 1.0).abs() <= 0.10,
        "RSS moved {:+.1}% from the first ten days checked to the last ten: {mib:?}",
        (last / first - 1.0) * 100.0
    );
}
