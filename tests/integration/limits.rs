//! Size limits and backpressure: the right codes, retry hints and counters, and the service
//! keeps serving.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tonic::codec::CompressionEncoding;

use crate::harness::{Recmeter, Start, fake_start, nanos};
use crate::otlp::raw::RawCodec;
use crate::spans::{Client, export, request_of, server_span};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub fn one_span_request(id: u8) -> Vec<u8> {
    let end = nanos(fake_start());
    request_of(vec![Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: "GET /limits".into(),
        kind: 2,
        start_time_unix_nano: end - 5_000_000,
        end_time_unix_nano: end,
        ..Default::default()
    }])
    .encode_to_vec()
}

async fn grpc_call(
    addr: std::net::SocketAddr,
    body: Vec<u8>,
    gzip: bool,
) -> Result<(), tonic::Status> {
    grpc_call_with(addr, body, gzip, None).await
}

/// One raw `Export` call, with an optional `authorization` metadata value.
pub async fn grpc_call_with(
    addr: std::net::SocketAddr,
    body: Vec<u8>,
    gzip: bool,
    authorization: Option<String>,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    if gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(bytes::Bytes::from(body));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(EXPORT),
        RawCodec,
    )
    .await
    .map(|_| ())
}

#[test]
fn oversized_grpc_messages_are_resource_exhausted_and_counted() {
    let recmeter = Recmeter::start("[otlp]\nmax_body_bytes = 65536\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = recmeter.addrs.otlp_grpc;
    // Uncompressed over the limit: tonic says OUT_OF_RANGE, which clients retry forever.
    let status = rt
        .block_on(grpc_call(addr, vec![0; 100_000], false))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Without RetryInfo, RESOURCE_EXHAUSTED is permanent for OTLP clients: no retry loop.
    assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_none());
    // A small gzip body that inflates past the limit.
    let status = rt
        .block_on(grpc_call(addr, vec![0; 1 << 20], true))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_none());
    // Still serving, and a good gzip request is counted.
    rt.block_on(grpc_call(addr, one_span_request(1), true))
        .unwrap();
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "grpc"), ("reason", "too_large")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[("endpoint", "GET /limits"), ("status", "ok")]
        ),
        1.0
    );
}

fn set_hook(recmeter: &Recmeter, on: bool) {
    let response = reqwest::blocking::Client::new()
        .post(recmeter.api_url("/-/test/hook"))
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"name": "stall_aggregator", "on": on}).to_string())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// `recmeter.toml` with a one-slot queue and `durability`.
fn one_slot_queue(durability: &str) -> String {
    // No checkpoint before the crash: the restart counts only what the WAL holds.
    format!(
        "[aggregator]\nqueue_capacity = 1\n[wal]\ndurability = \"{durability}\"\n\
         [storage]\ncheckpoint_interval = \"1h\"\n"
    )
}

/// Stops `recmeter` (`kill -9` with the WAL; SIGTERM, whose final checkpoint holds everything,
/// without) and starts it again on the same storage, so what it counts again is what the WAL
/// and checkpoints held: a request refused for backpressure must have left nothing there.
fn crash_and_restart(recmeter: Recmeter, durability: &str, config: &str, dir: &Path) -> Recmeter {
    if durability == "wal" {
        recmeter.kill9();
    } else {
        assert!(recmeter.terminate().0.success());
    }
    start_in(dir, config)
}

/// `recmeter serve` with `config`, working (and storing) in `dir`.
fn start_in(dir: &Path, config: &str) -> Recmeter {
    Recmeter::start_with(Start {
        config,
        dir: Some(dir),
        ..Start::default()
    })
}

#[test]
fn a_full_queue_is_refused_with_retry_hints_then_drains_exactly() {
    for durability in ["wal", "checkpoint"] {
        full_queue_refusals(durability);
    }
}

fn full_queue_refusals(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = one_slot_queue(durability);
    let recmeter = start_in(dir.path(), &config);
    set_hook(&recmeter, true);

    // HTTP: three at once; one takes the only queue slot and waits, two are refused.
    let (tx, rx) = mpsc::channel();
    for id in 1..=3u8 {
        let tx = tx.clone();
        let url = format!("http://{}/v1/traces", recmeter.addrs.otlp_http);
        std::thread::spawn(move || {
            let response = reqwest::blocking::Client::new()
                .post(url)
                .header("Content-Type", "application/x-protobuf")
                .body(one_span_request(id))
                .send()
                .unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            tx.send((response.status().as_u16(), retry_after)).unwrap();
        });
    }
    for _ in 0..2 {
        let (status, retry_after) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status, 503);
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "one request waits in the queue"
    );
    set_hook(&recmeter, false);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().0, 200);

    // gRPC: the same, with UNAVAILABLE and a RetryInfo detail.
    set_hook(&recmeter, true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = recmeter.addrs.otlp_grpc;
    let calls: Vec<_> = (4..=6u8)
        .map(|id| rt.spawn(grpc_call(addr, one_span_request(id), false)))
        .collect();
    let mut refused = 0;
    rt.block_on(async {
        for _ in 0..100 {
            refused = calls.iter().filter(|c| c.is_finished()).count();
            if refused == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(refused, 2);
    set_hook(&recmeter, false);
    let results: Vec<_> = rt.block_on(async {
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap());
        }
        out
    });
    let unavailable: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(unavailable.len(), 2);
    for status in unavailable {
        use tonic_types::StatusExt;
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.get_details_retry_info().is_some(),
            "RetryInfo detail: {status:?}"
        );
    }

    // Every accepted span counted once; every refusal counted.
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[("endpoint", "GET /limits"), ("status", "ok")]
        ),
        2.0
    );
    for transport in ["http", "grpc"] {
        assert_eq!(
            m.value(
                "recmeter_requests_rejected_total",
                &[("transport", transport), ("reason", "backpressure")]
            ),
            2.0
        );
    }
    let restarted = crash_and_restart(recmeter, durability, &config, dir.path());
    assert_eq!(
        restarted.metrics().value(
            "recs_requests_total",
            &[("endpoint", "GET /limits"), ("status", "ok")]
        ),
        2.0,
        "{durability}: counted again after a restart"
    );
}

#[test]
fn sdk_clients_retry_through_backpressure_and_every_span_counts_once() {
    for durability in ["wal", "checkpoint"] {
        sdk_retries(durability);
    }
}

fn sdk_retries(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = one_slot_queue(durability);
    let recmeter = start_in(dir.path(), &config);
    set_hook(&recmeter, true);
    let addrs = recmeter.addrs;
    let clients = [
        Client::Grpc,
        Client::HttpProto,
        Client::Grpc,
        Client::HttpJson,
    ];
    let senders: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            std::thread::spawn(move || {
                let batch = (0..250u64)
                    .map(|i| {
                        server_span(
                            "GET /retry",
                            fake_start(),
                            3_000_000,
                            false,
                            c as u64 * 1_000 + i,
                        )
                    })
                    .collect();
                export(client, &addrs, "retrying", vec![batch]);
            })
        })
        .collect();
    // Hold the stall until three refusals are counted (one client holds the only queue slot,
    // the other three are refused at least once), then let go.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = recmeter.metrics();
        let refused = m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "grpc"), ("reason", "backpressure")],
        ) + m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "http"), ("reason", "backpressure")],
        );
        if refused >= 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clients were not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    set_hook(&recmeter, false);
    for s in senders {
        s.join().expect("every export succeeds after retrying");
    }
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[("endpoint", "GET /retry"), ("status", "ok")]
        ),
        1_000.0
    );
    assert_eq!(
        m.value("recs_latency_seconds_count", &[("endpoint", "GET /retry")]),
        1_000.0
    );
    let restarted = crash_and_restart(recmeter, durability, &config, dir.path());
    assert_eq!(
        restarted.metrics().value(
            "recs_requests_total",
            &[("endpoint", "GET /retry"), ("status", "ok")]
        ),
        1_000.0,
        "{durability}: counted again after a restart"
    );
}

fn post_raw(recmeter: &Recmeter, body: Vec<u8>, gzip: bool) -> (u16, Vec<u8>) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/traces", recmeter.addrs.otlp_http))
        .header("Content-Type", "application/x-protobuf");
    if gzip {
        request = request.header("Content-Encoding", "gzip");
    }
    let response = request.body(body).send().unwrap();
    (
        response.status().as_u16(),
        response.bytes().unwrap().to_vec(),
    )
}

#[test]
fn hostile_http_input_is_refused_or_dropped_and_the_service_keeps_serving() {
    use flate2::{Compression, write::GzEncoder};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use std::io::Write;

    let recmeter = Recmeter::start("[otlp]\nmax_body_bytes = 1048576\n");
    // A gzip bomb: 16 KiB on the wire, 16 MiB inflated.
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&vec![0u8; 16 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 << 10);
    assert_eq!(post_raw(&recmeter, bomb, true).0, 413);
    // Plainly over the limit. The service may answer 413 and close before the client has
    // written the whole body (HTTP allows it): the client then sees its write cut off instead
    // of the status. Either way the refusal is counted (checked below).
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/traces", recmeter.addrs.otlp_http))
        .header("Content-Type", "application/x-protobuf")
        .body(vec![0u8; 2 << 20])
        .send();
    match response {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request(), "not a cut-off body write: {e:?}"),
    }

    // Valid and invalid spans in one request: the valid ones count, the rest are reported.
    let end = nanos(fake_start());
    let good = |id: u8| Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: "GET /mixed".into(),
        kind: 2,
        start_time_unix_nano: end - 1_000_000,
        end_time_unix_nano: end,
        ..Default::default()
    };
    let mut backwards = good(3);
    backwards.start_time_unix_nano = end + 1;
    let mut zero_trace = good(4);
    zero_trace.trace_id = vec![0; 16];
    let mut short_span_id = good(5);
    short_span_id.span_id = vec![5; 4];
    let mixed = request_of(vec![good(1), backwards, good(2), zero_trace, short_span_id]);
    let (status, body) = post_raw(&recmeter, mixed.encode_to_vec(), false);
    assert_eq!(status, 200);
    let response = ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
    let partial = response.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_spans, 3);
    assert!(
        partial.error_message.contains("3 invalid"),
        "{}",
        partial.error_message
    );

    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "http"), ("reason", "too_large")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "recmeter_spans_dropped_total",
            &[("transport", "http"), ("reason", "invalid")]
        ),
        3.0
    );
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[("endpoint", "GET /mixed"), ("status", "ok")]
        ),
        2.0
    );
}

#[test]
fn a_hundred_thousand_span_names_stay_within_the_series_cap() {
    // One service, with no limit of its own: the global cap bounds it, and keeps the slot
    // reserved for a new service free (`series_limits` covers the per-service limit).
    let recmeter = Recmeter::start("[aggregator]\nmax_series_per_service = 100000\n");
    let end = nanos(fake_start());
    for chunk in 0..20u32 {
        let spans = (0..5_000u32)
            .map(|i| {
                let n = chunk * 5_000 + i;
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&(n + 1).to_be_bytes());
                Span {
                    trace_id: id.to_vec(),
                    span_id: id[..8].to_vec(),
                    name: format!("GET /item/{n}"),
                    kind: 2,
                    start_time_unix_nano: end - 2_000_000,
                    end_time_unix_nano: end,
                    ..Default::default()
                }
            })
            .collect();
        let request = request_of(spans);
        assert_eq!(post_raw(&recmeter, request.encode_to_vec(), false).0, 200);
    }
    let m = recmeter.metrics();
    assert_eq!(m.value("recmeter_series_active", &[]), 10_000.0);
    assert_eq!(
        m.value(
            "recmeter_series_overflow_total",
            &[("service", "__other__")]
        ),
        90_001.0
    );
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[
                ("service", "__overflow__"),
                ("endpoint", "__overflow__"),
                ("status", "ok")
            ]
        ),
        90_001.0
    );
    assert_eq!(m.sum("recs_requests_total"), 100_000.0);
    // Still serving.
    assert_eq!(post_raw(&recmeter, one_span_request(9), false).0, 200);
}
