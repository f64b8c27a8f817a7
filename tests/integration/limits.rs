//! Size limits and backpressure: the right codes, retry hints and counters, and the service
//! keeps serving.

use std::sync::mpsc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tonic::codec::CompressionEncoding;

use crate::harness::{Recmeter, fake_start, nanos};
use crate::otlp::raw::RawCodec;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub fn one_span_request(id: u8) -> Vec<u8> {
    let end = nanos(fake_start());
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![id; 16],
                    span_id: vec![id; 8],
                    name: "GET /limits".into(),
                    kind: 2,
                    start_time_unix_nano: end - 5_000_000,
                    end_time_unix_nano: end,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
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
    // A small gzip body that inflates past the limit.
    let status = rt
        .block_on(grpc_call(addr, vec![0; 1 << 20], true))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
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

#[test]
fn a_full_queue_is_refused_with_retry_hints_then_drains_exactly() {
    let recmeter = Recmeter::start("[aggregator]\nqueue_capacity = 1\n");
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
}
