//! OTLP trace ingest end to end: accuracy against exact quantiles, the corpus example, status
//! codes and counters on bad input.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{Recmeter, fake_start, nanos};
use crate::spans::{Client, batches_of_1000, export, server_span, span};

/// Nearest-rank quantile `sorted[ceil(q·n) − 1]` with q = num/den, in exact integer arithmetic.
pub fn nearest_rank(sorted: &[u64], num: u64, den: u64) -> u64 {
    let n = sorted.len() as u64;
    let rank = (num * n).div_ceil(den);
    sorted[(rank.max(1) - 1) as usize]
}

/// Heavy-tailed latencies in [50 µs, 30 s]: log-normal body (median 25 ms, σ = 1.5) with a 3%
/// Pareto tail (x_m = 200 ms, α = 1.1), values outside the range drawn again.
pub fn latency_nanos(rng: &mut StdRng) -> u64 {
    loop {
        let seconds = if rng.random::<f64>() < 0.03 {
            0.2 / rng.random::<f64>().max(1e-12).powf(1.0 / 1.1)
        } else {
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos();
            0.025 * (1.5 * z).exp()
        };
        if (50e-6..=30.0).contains(&seconds) {
            return (seconds * 1e9) as u64;
        }
    }
}

pub fn assert_within(got: f64, exact_nanos: u64, tolerance: f64, what: &str) {
    let exact = exact_nanos as f64 / 1e9;
    let rel = (got - exact).abs() / exact;
    eprintln!("{what}: reported {got:.6} s, exact {exact:.6} s, relative error {rel:.5}");
    assert!(
        rel <= tolerance,
        "{what}: reported {got}, exact {exact}, relative error {rel:.5}"
    );
}

#[test]
fn quantiles_and_counts_match_raw_data_over_grpc_and_http() {
    let recmeter = Recmeter::start("");
    let now = fake_start();
    let mut rng = StdRng::seed_from_u64(0x5EED);
    const N: usize = 100_000;
    let endpoint = "GET /v1/recommendations/personalized";
    let mut all = Vec::with_capacity(N);
    let mut in_5m = Vec::new();
    let mut in_1m = Vec::new();
    let mut errors = 0u64;
    let mut le_200ms = 0u64;
    let mut spans = Vec::with_capacity(N);
    // The clock sits 30 s into a minute; the 5m window starts 4 min 30 s back, the 1h window
    // 59 min 30 s back. End times spread over the last 58 min 20 s.
    let minute_start = nanos(now) - 30_000_000_000;
    for i in 0..N {
        let d = latency_nanos(&mut rng);
        let ago = Duration::from_nanos(rng.random_range(0..3_500_000_000_000u64));
        let end = now - ago;
        let error = rng.random::<f64>() < 0.002;
        errors += u64::from(error);
        le_200ms += u64::from(d <= 200_000_000);
        all.push(d);
        if nanos(end) >= minute_start - 4 * 60_000_000_000 {
            in_5m.push(d);
        }
        if nanos(end) >= minute_start {
            in_1m.push(d);
        }
        spans.push(server_span(endpoint, end, d, error, i as u64));
    }
    assert!(*all.iter().min().unwrap() < 100_000 && *all.iter().max().unwrap() > 10_000_000_000);
    // A third over each client, 1 000 spans per export.
    let mut batches = batches_of_1000(spans);
    let third = batches.len() / 3;
    let http_json = batches.split_off(2 * third);
    let http_proto = batches.split_off(third);
    export(Client::Grpc, &recmeter.addrs, "accuracy", batches);
    export(Client::HttpProto, &recmeter.addrs, "accuracy", http_proto);
    export(Client::HttpJson, &recmeter.addrs, "accuracy", http_json);

    let m = recmeter.metrics();
    let series = [("service", "accuracy"), ("endpoint", endpoint)];
    let ok = m.value(
        "recs_requests_total",
        &[series[0], series[1], ("status", "ok")],
    );
    let err = m.value(
        "recs_requests_total",
        &[series[0], series[1], ("status", "error")],
    );
    assert_eq!(err as u64, errors);
    assert_eq!(ok as u64, N as u64 - errors);
    assert_eq!(
        m.value("recs_latency_seconds_count", &series) as u64,
        N as u64
    );
    assert_eq!(
        m.value(
            "recs_latency_seconds_bucket",
            &[series[0], series[1], ("le", "0.2")]
        ) as u64,
        le_200ms
    );
    assert_eq!(
        m.value("recs_recommendations_total", &series) as u64,
        N as u64
    );
    assert_eq!(
        m.value("recmeter_spans_received_total", &[("transport", "grpc")]) as u64,
        33_000
    );
    assert_eq!(
        m.value("recmeter_spans_received_total", &[("transport", "http")]) as u64,
        N as u64 - 33_000
    );

    for (window, raw) in [("1h", &mut all), ("5m", &mut in_5m), ("1m", &mut in_1m)] {
        raw.sort_unstable();
        assert!(raw.len() > 100, "{window}: too few samples to test");
        for (q, num, den) in [
            ("0.5", 1, 2),
            ("0.9", 9, 10),
            ("0.99", 99, 100),
            ("0.999", 999, 1000),
        ] {
            let got = m
                .find(
                    "recmeter_latency_quantile_seconds",
                    &[series[0], series[1], ("window", window), ("q", q)],
                )
                .unwrap_or_else(|| panic!("no {window} q={q} gauge"));
            assert_within(
                got,
                nearest_rank(raw, num, den),
                0.01,
                &format!("{window} q={q}"),
            );
        }
    }

    // The SQL API answers from the same rollups: the README's query gives the exact P99 to
    // within 1% and the 1h gauge to within 0.1%.
    let rows = recmeter.sql_rows(
        "SELECT service, endpoint, hdr_quantile(hdr_merge(hdr), 0.99) AS p99 FROM latency_minutes \
         WHERE minute >= now() - INTERVAL '1 hour' GROUP BY 1, 2",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["service"], "accuracy");
    let sql_p99 = rows[0]["p99"].as_f64().unwrap();
    assert_within(sql_p99, nearest_rank(&all, 99, 100), 0.01, "SQL 1h q=0.99");
    for window in ["1h", "1d"] {
        let gauge = m.value(
            "recmeter_latency_quantile_seconds",
            &[series[0], series[1], ("window", window), ("q", "0.99")],
        );
        assert!(
            (sql_p99 - gauge).abs() / gauge <= 0.001,
            "SQL P99 {sql_p99} against the {window} gauge {gauge}"
        );
    }

    // One minute on, the 1m window is empty (no gauge) and the 1h window still holds all.
    recmeter.advance("60s");
    let m = recmeter.metrics();
    assert!(
        m.find(
            "recmeter_latency_quantile_seconds",
            &[series[0], ("window", "1m"), ("q", "0.5")]
        )
        .is_none()
    );
    assert!(
        m.find(
            "recmeter_latency_quantile_seconds",
            &[series[0], ("window", "1h"), ("q", "0.5")]
        )
        .is_some()
    );
}

fn trace_json_at(end: Option<SystemTime>) -> Vec<u8> {
    let text = include_str!("../data/trace.json");
    let mut doc: serde_json::Value = serde_json::from_str(text).unwrap();
    if let Some(end) = end {
        let span = &mut doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let stop: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let e = nanos(end);
        span["endTimeUnixNano"] = e.to_string().into();
        span["startTimeUnixNano"] = (e - (stop - start)).to_string().into();
    }
    serde_json::to_vec(&doc).unwrap()
}

#[test]
fn corpus_trace_json_old_is_dropped_and_current_is_counted() {
    let recmeter = Recmeter::start("");
    let (status, body) = recmeter.post_otlp("application/json", trace_json_at(None));
    assert_eq!(status, 200);
    let response: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let rejected = &response["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{response}");
    let message = response["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("too old"), "{message}");
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_spans_dropped_total",
            &[("transport", "http"), ("reason", "too_old")]
        ),
        1.0
    );
    assert_eq!(m.sum("recmeter_requests_rejected_total"), 0.0);
    let series = [
        ("service", "my.service"),
        ("endpoint", "I'm a server span"),
        ("status", "ok"),
    ];
    assert_eq!(m.value("recs_requests_total", &series), 0.0);

    let (status, body) = recmeter.post_otlp("application/json", trace_json_at(Some(fake_start())));
    assert_eq!(status, 200);
    let response: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        response
            .get("partialSuccess")
            .is_none_or(|p| p.get("rejectedSpans").is_none()),
        "{response}"
    );
    let m = recmeter.metrics();
    assert_eq!(m.value("recs_requests_total", &series), 1.0);
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[series[0], series[1], ("status", "error")]
        ),
        0.0
    );
    // 1 s span: the 1m P50 reads 1 s within the bucket error.
    let p50 = m.value(
        "recmeter_latency_quantile_seconds",
        &[series[0], series[1], ("window", "1m"), ("q", "0.5")],
    );
    assert!((p50 - 1.0).abs() < 0.01, "{p50}");
}

#[test]
fn non_request_spans_are_accepted_and_ignored_and_skew_is_enforced() {
    let recmeter = Recmeter::start("[ingest]\nmax_future_skew = \"1m\"\n");
    let now = fake_start();
    let batch = vec![
        span(
            "client call",
            SpanKind::Client,
            now,
            1_000_000,
            false,
            Vec::new(),
            1,
        ),
        span(
            "internal",
            SpanKind::Internal,
            now,
            1_000_000,
            false,
            Vec::new(),
            2,
        ),
        server_span("GET /", now + Duration::from_secs(59), 1_000_000, false, 3),
        server_span("GET /", now + Duration::from_secs(61), 1_000_000, false, 4),
    ];
    export(Client::HttpProto, &recmeter.addrs, "mixed", vec![batch]);
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[("service", "mixed"), ("status", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m.value("recmeter_spans_received_total", &[("transport", "http")]),
        4.0
    );
    assert_eq!(
        m.value(
            "recmeter_spans_dropped_total",
            &[("transport", "http"), ("reason", "future")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("recmeter_spans_dropped_total"),
        1.0,
        "ignored kinds are not dropped"
    );
}

#[test]
fn http_refuses_bad_content_with_the_right_codes_and_counts_them() {
    let recmeter = Recmeter::start("");
    assert_eq!(recmeter.post_otlp("text/plain", b"hello".to_vec()).0, 415);
    let (status, body) = recmeter.post_otlp("application/json", b"{\"resourceSpans\": [".to_vec());
    assert_eq!(status, 400);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        error["code"], 3,
        "google.rpc.Status INVALID_ARGUMENT: {error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON")
    );
    assert_eq!(
        recmeter
            .post_otlp("application/x-protobuf", vec![0x0a, 0x05, 0x01])
            .0,
        400
    );
    let m = recmeter.metrics();
    let rejected = |reason| {
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "http"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("unsupported_media_type"), 1.0);
    assert_eq!(rejected("decode"), 2.0);
    // Still serving.
    let (status, _) = recmeter.post_otlp("application/json", trace_json_at(Some(fake_start())));
    assert_eq!(status, 200);
}

#[test]
fn grpc_refuses_undecodable_input_as_invalid_argument() {
    let recmeter = Recmeter::start("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", recmeter.addrs.otlp_grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        );
        // A length-delimited field that claims more bytes than follow: truncated protobuf.
        let garbage = bytes::Bytes::from_static(&[0x0a, 0x7f, 0x01, 0x02]);
        grpc.unary(tonic::Request::new(garbage), path, raw::RawCodec)
            .await
            .unwrap_err()
            .code()
    });
    assert_eq!(code, tonic::Code::InvalidArgument);
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "grpc"), ("reason", "decode")]
        ),
        1.0
    );
}

/// A gRPC codec that sends bytes as they are, to put malformed messages on the wire.
pub mod raw {
    use bytes::{Buf, BufMut, Bytes};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }
}
