//! Spans with exact times, and the SDK's own OTLP exporters as clients. Tests call `export()`
//! directly: the batch processor would drop spans past its 2 048-span queue.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{
    Protocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};

/// A span of `kind` named `name` that ended at `end` and lasted `duration_nanos`.
pub fn span(
    name: &str,
    kind: SpanKind,
    end: SystemTime,
    duration_nanos: u64,
    error: bool,
    attributes: Vec<KeyValue>,
    id: u64,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes((u128::from(id) + 1).to_be_bytes()),
            SpanId::from_bytes((id + 1).to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind,
        name: Cow::Owned(name.to_owned()),
        start_time: end - Duration::from_nanos(duration_nanos),
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if error {
            Status::error("failed")
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("recmeter-tests").build(),
    }
}

pub fn server_span(
    name: &str,
    end: SystemTime,
    duration_nanos: u64,
    error: bool,
    id: u64,
) -> SpanData {
    span(
        name,
        SpanKind::Server,
        end,
        duration_nanos,
        error,
        Vec::new(),
        id,
    )
}

fn resource(service: &str) -> Resource {
    Resource::builder_empty()
        .with_service_name(service.to_owned())
        .build()
}

/// Which exporter.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    Grpc,
    HttpProto,
    HttpJson,
}

/// Exports `batches` for `service` with the SDK exporter of `client`, failing on any error.
/// gRPC runs on its own Tokio runtime; HTTP on a plain thread (its default client blocks).
pub fn export(
    client: Client,
    addrs: &super::harness::Addresses,
    service: &str,
    batches: Vec<Vec<SpanData>>,
) {
    match client {
        Client::Grpc => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(format!("http://{}", addrs.otlp_grpc))
                    .with_compression(opentelemetry_otlp::Compression::Gzip)
                    .with_retry_policy(RetryPolicy::recommended())
                    .with_timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                exporter.set_resource(&resource(service));
                for batch in batches {
                    exporter.export(batch).await.expect("gRPC export succeeds");
                }
            });
        }
        Client::HttpProto | Client::HttpJson => {
            let protocol = match client {
                Client::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            let endpoint: SocketAddr = addrs.otlp_http;
            let service = service.to_owned();
            std::thread::spawn(move || {
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(protocol)
                    .with_endpoint(format!("http://{endpoint}/v1/traces"))
                    .with_retry_policy(RetryPolicy::recommended())
                    .with_timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                exporter.set_resource(&resource(&service));
                for batch in batches {
                    futures_executor::block_on(exporter.export(batch))
                        .expect("HTTP export succeeds");
                }
            })
            .join()
            .unwrap();
        }
    }
}

/// `spans` in exports of at most 1 000, in order.
pub fn batches_of_1000(mut spans: Vec<SpanData>) -> Vec<Vec<SpanData>> {
    let mut batches = Vec::new();
    while !spans.is_empty() {
        let rest = spans.split_off(spans.len().min(1_000));
        batches.push(std::mem::replace(&mut spans, rest));
    }
    batches
}

/// One OTLP export request holding `spans` under a single resource and scope.
pub fn request_of(
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One OTLP export request with a resource (and its `service.name`) per entry of `services`.
pub fn request_for_services(
    services: Vec<(String, Vec<opentelemetry_proto::tonic::trace::v1::Span>)>,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let mut request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: Vec::new(),
    };
    for (service, spans) in services {
        let mut one = request_of(spans).resource_spans.remove(0);
        one.resource = Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".to_owned(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(service)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        request.resource_spans.push(one);
    }
    request
}
