//! Realistic synthetic OTLP traffic of a recommendation service: 10 span attributes, 5 resource
//! attributes, one event per span, log-normal latencies (median 40 ms), 0.1% errors. Used by
//! `recmeter loadgen` and the benches, so both measure the same shape of data.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use rand::Rng;

const ROUTES: [&str; 5] = [
    "GET /v1/recommendations/personalized",
    "GET /v1/recommendations/trending",
    "GET /v1/recommendations/similar-items",
    "GET /v1/recommendations/because-you-watched",
    "POST /v1/recommendations/feedback",
];

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

/// One export request of `spans` SERVER spans of `recs-api`, ending within the second before
/// `now_nanos`, spread over `series` endpoints.
pub fn request(
    rng: &mut impl Rng,
    now_nanos: u64,
    spans: usize,
    series: usize,
) -> ExportTraceServiceRequest {
    let now = now_nanos;
    let instance = rng.random::<u32>();
    let resource = Resource {
        attributes: vec![
            kv("service.name", s("recs-api")),
            kv("service.version", s("2.14.0")),
            kv(
                "service.instance.id",
                s(&format!("recs-api-7d9f8c6b5-{instance:08x}")),
            ),
            kv("deployment.environment.name", s("production")),
            kv(
                "host.name",
                s(&format!(
                    "ip-10-0-{}-{}.ec2.internal",
                    instance % 200,
                    instance % 250
                )),
            ),
        ],
        ..Default::default()
    };
    let spans = (0..spans)
        .map(|_| {
            let series = rng.random_range(0..series.max(1));
            let route = ROUTES[series % ROUTES.len()];
            let name = if series <= ROUTES.len() {
                route.to_owned()
            } else {
                format!("{route}/{series}")
            };
            // Log-normal latency, median 40 ms.
            let z = {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos()
            };
            let duration = (0.040 * (0.6 * z).exp() * 1e9) as u64;
            let end = now - rng.random_range(0..1_000_000_000u64);
            let failed = rng.random::<f64>() < 0.001;
            let recs = rng.random_range(10..=50i64);
            Span {
                trace_id: rng.random::<u128>().max(1).to_be_bytes().to_vec(),
                span_id: rng.random::<u64>().max(1).to_be_bytes().to_vec(),
                parent_span_id: rng.random::<u64>().max(1).to_be_bytes().to_vec(),
                name,
                kind: 2,
                start_time_unix_nano: end - duration,
                end_time_unix_nano: end,
                attributes: vec![
                    kv(
                        "http.request.method",
                        s(route.split(' ').next().unwrap_or("GET")),
                    ),
                    kv("http.route", s(route.split(' ').nth(1).unwrap_or("/"))),
                    kv(
                        "url.path",
                        s(&format!("/v1/recommendations/u/{}", rng.random::<u32>())),
                    ),
                    kv(
                        "http.response.status_code",
                        any_value::Value::IntValue(if failed { 503 } else { 200 }),
                    ),
                    kv("server.address", s("recs-api.internal")),
                    kv("network.protocol.version", s("1.1")),
                    kv("user_agent.original", s("recs-web/5.2 (okhttp/4.12.0)")),
                    kv("recs.count", any_value::Value::IntValue(recs)),
                    kv("recs.model_version", s("two-tower-2026-11-02")),
                    kv(
                        "recs.experiment",
                        s(if rng.random::<bool>() {
                            "control"
                        } else {
                            "ranker-v7"
                        }),
                    ),
                ],
                events: vec![Event {
                    time_unix_nano: end - duration / 3,
                    name: "recs.ranked".to_owned(),
                    attributes: vec![
                        kv(
                            "recs.candidates",
                            any_value::Value::IntValue(rng.random_range(200..2_000)),
                        ),
                        kv("recs.returned", any_value::Value::IntValue(recs)),
                    ],
                    ..Default::default()
                }],
                status: failed.then(|| Status {
                    code: status::StatusCode::Error as i32,
                    message: "upstream feature store timed out".to_owned(),
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.okhttp-3.0".to_owned(),
                    version: "2.10.0-alpha".to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
