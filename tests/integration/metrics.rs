//! OTLP metrics ingest: the corpus example, the SDK's own exporters with known values, spans
//! and points of one service, and cumulative streams across a `kill -9`.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_sdk::metrics::{Aggregation, Instrument, SdkMeterProvider, Stream};
use prost::Message;

use super::harness::{Exposition, Recmeter, Start, fake_start, nanos};
use super::spans::{self, Client};

const PROTOBUF: &str = "application/x-protobuf";

fn requests(m: &Exposition, service: &str, endpoint: &str) -> f64 {
    ["ok", "error"]
        .iter()
        .map(|status| {
            m.value(
                "recs_requests_total",
                &[
                    ("service", service),
                    ("endpoint", endpoint),
                    ("status", status),
                ],
            )
        })
        .sum()
}

fn ignored(m: &Exposition, reason: &str) -> f64 {
    m.value(
        "recmeter_metric_points_ignored_total",
        &[("transport", "http"), ("reason", reason)],
    )
}

/// The opentelemetry-proto example request, timestamps moved to the fake clock's now, with its
/// two histograms configured as latency in seconds: their counts land in their own series, and
/// the counter and the gauge are ignored.
#[test]
fn the_corpus_example_lands_in_its_series() {
    let recmeter = Recmeter::start(
        "[[metrics.latency]]\nname = \"my.histogram\"\nunit = \"s\"\n\
         [[metrics.latency]]\nname = \"my.exponential.histogram\"\nunit = \"s\"\n",
    );
    let now = nanos(fake_start()).to_string();
    let body = include_str!("../data/metrics.json").replace("1544712660300000000", &now);
    let (status, answer) =
        recmeter.post_otlp_to("/v1/metrics", "application/json", body.into_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer["partialSuccess"].is_null(), "{answer}");

    let m = recmeter.metrics();
    // count 2: one in (-inf, 1], one above 1.
    assert_eq!(requests(&m, "my.service", "my.histogram"), 2.0);
    // count 3: one in the zero bucket, two in (4, 8].
    assert_eq!(requests(&m, "my.service", "my.exponential.histogram"), 3.0);
    assert_eq!(
        m.sum("recmeter_metric_points_ignored_total"),
        2.0,
        "my.counter and my.gauge"
    );
    assert_eq!(ignored(&m, "name"), 1.0, "my.counter is a sum nobody named");
    assert_eq!(ignored(&m, "type"), 1.0, "my.gauge");
    assert_eq!(
        m.value(
            "recmeter_metric_points_received_total",
            &[("transport", "http")]
        ),
        4.0
    );
    // The zero bucket goes to the 1 µs clamp, and is counted there.
    assert_eq!(
        m.value("recmeter_latency_clamped_total", &[("bound", "low")]),
        1.0
    );
    // The two values in (4 s, 8 s] sit at its geometric midpoint, 2^2.5 s.
    let p99 = m.value(
        "recmeter_latency_quantile_seconds",
        &[
            ("service", "my.service"),
            ("endpoint", "my.exponential.histogram"),
            ("window", "1m"),
            ("q", "0.99"),
        ],
    );
    assert!((p99 / 2f64.powf(2.5) - 1.0).abs() < 0.01, "{p99}");

    // The rollup tables say where the requests came from.
    let rows = recmeter.sql_rows(
        "SELECT endpoint, source, sum(requests) AS requests FROM latency_minutes \
         WHERE service = 'my.service' GROUP BY endpoint, source ORDER BY endpoint",
    );
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"endpoint": "my.exponential.histogram", "source": "histogram", "requests": 3}),
            serde_json::json!({"endpoint": "my.histogram", "source": "histogram", "requests": 2}),
        ]
    );

    // The same request once more: delta points count again (they are deltas).
    let body = include_str!("../data/metrics.json").replace("1544712660300000000", &now);
    let (status, _) = recmeter.post_otlp_to("/v1/metrics", "application/json", body.into_bytes());
    assert_eq!(status, 200);
    assert_eq!(
        requests(&recmeter.metrics(), "my.service", "my.histogram"),
        4.0
    );
}

/// Nearest-rank quantile of sorted values.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The scale the SDK's exponential histogram takes for `values` in at most `max_size`
/// buckets: the highest at or below 20 whose index range fits.
fn exponential_scale(values: &[f64], max_size: i64) -> i32 {
    (-10..=20)
        .rev()
        .find(|&scale: &i32| {
            let index = |v: f64| (v.log2() * 2f64.powi(scale)).ceil() as i64 - 1;
            let (lo, hi) = values.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &v| {
                (lo.min(index(v)), hi.max(index(v)))
            });
            hi - lo < max_size
        })
        .unwrap()
}

const BOUNDS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The SDK's own OTLP/HTTP exporter, cumulative (its default), explicit buckets for
/// `recs.latency` and exponential ones for `recs_latency_seconds`; values known, so each
/// quantile is checked against the exact one within the bound the layout allows.
#[test]
fn sdk_histograms_count_exactly_within_their_layouts_bounds() {
    // The SDK stamps points with the real time.
    let recmeter = Recmeter::start_with(Start {
        fake_clock: None,
        ..Start::default()
    });
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/metrics", recmeter.addrs.otlp_http))
        .with_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("checkout")
                .build(),
        )
        .with_view(|i: &Instrument| {
            (i.name() == "recs_latency_seconds").then(|| {
                Stream::builder()
                    .with_aggregation(Aggregation::Base2ExponentialHistogram {
                        max_size: 160,
                        max_scale: 20,
                        record_min_max: true,
                    })
                    .build()
                    .unwrap()
            })
        })
        .build();
    let meter = provider.meter("recmeter-tests");
    let explicit = meter
        .f64_histogram("recs.latency")
        .with_unit("s")
        .with_boundaries(BOUNDS.to_vec())
        .build();
    let exponential = meter
        .f64_histogram("recs_latency_seconds")
        .with_unit("s")
        .build();
    let route = |r: &str| [KeyValue::new("http.route", r.to_owned())];
    // A skewed spread from 2 ms to about 2 s, as latencies are.
    let value = |i: u64| 0.002 * 1000f64.powf(((i * 7_919) % 10_007) as f64 / 10_007.0);
    let mut values = Vec::new();
    for (round, n) in [(0u64, 2_000u64), (1, 500)] {
        for i in 0..n {
            let v = value(round * 100_000 + i);
            values.push(v);
            explicit.record(v, &route("/explicit"));
            exponential.record(v, &route("/exponential"));
        }
        provider.force_flush().unwrap();
        let m = recmeter.metrics();
        // Cumulative points: the first is counted whole (the stream started after recmeter
        // did), the second only for what it adds.
        assert_eq!(requests(&m, "checkout", "/explicit"), values.len() as f64);
        assert_eq!(
            requests(&m, "checkout", "/exponential"),
            values.len() as f64
        );
    }
    provider.shutdown().unwrap();

    let m = recmeter.metrics();
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let scale = exponential_scale(&values, 160);
    // A value in bucket (base^i, base^(i+1)] is reported at base^(i + 1/2): at most
    // base^(1/2) - 1 away, relatively.
    let exponential_bound = 2f64.powf(2f64.powi(-scale) / 2.0) - 1.0;
    for q in ["0.5", "0.9", "0.99"] {
        let exact = nearest_rank(&sorted, q.parse().unwrap());
        let reported = |endpoint: &str| {
            m.value(
                "recmeter_latency_quantile_seconds",
                &[
                    ("service", "checkout"),
                    ("endpoint", endpoint),
                    ("window", "1m"),
                    ("q", q),
                ],
            )
        };
        // Explicit: the bucket holding the exact quantile is reported at its midpoint, at
        // most half its width away (plus the 1% of the HDR histogram).
        let upper = BOUNDS.iter().position(|&b| exact <= b).unwrap();
        let lower = upper.checked_sub(1).map_or(0.0, |i| BOUNDS[i]);
        let half_width = (BOUNDS[upper] - lower) / 2.0;
        let got = reported("/explicit");
        assert!(
            (got - exact).abs() <= half_width + 0.01 * got,
            "q={q}: explicit {got} against exact {exact} (bucket ({lower}, {}])",
            BOUNDS[upper]
        );
        let got = reported("/exponential");
        assert!(
            (got / exact - 1.0).abs() <= exponential_bound + 0.01,
            "q={q}: exponential {got} against exact {exact} (scale {scale}, bound {exponential_bound})"
        );
    }
}

pub fn attribute(key: &str, value: &str) -> ProtoKeyValue {
    ProtoKeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// One explicit-bucket `recs.latency` point and one `recs.count` point for `service`.
pub fn points(
    service: &str,
    temporality: AggregationTemporality,
    start: u64,
    time: u64,
    counts: [u64; 3],
    recommendations: i64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "recs.latency".into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            aggregation_temporality: temporality as i32,
                            data_points: vec![HistogramDataPoint {
                                attributes: vec![attribute("http.route", "/recs")],
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                count: counts.iter().sum(),
                                bucket_counts: counts.to_vec(),
                                explicit_bounds: vec![50.0, 200.0],
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "recs.count".into(),
                        data: Some(metric::Data::Sum(Sum {
                            aggregation_temporality: temporality as i32,
                            is_monotonic: true,
                            data_points: vec![NumberDataPoint {
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                value: Some(number_data_point::Value::AsInt(recommendations)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn send(
    recmeter: &Recmeter,
    request: &ExportMetricsServiceRequest,
) -> ExportMetricsServiceResponse {
    let (status, body) = recmeter.post_otlp_to("/v1/metrics", PROTOBUF, request.encode_to_vec());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    ExportMetricsServiceResponse::decode(body.as_slice()).unwrap()
}

/// A service that sends spans is counted from its spans alone; one that sends only points is
/// counted from its points; recommendations come from one source per service.
#[test]
fn spans_and_points_of_one_service_never_count_twice() {
    let recmeter = Recmeter::start("");
    let now = fake_start();
    let spans: Vec<_> = (0..10)
        .map(|i| spans::server_span("/recs", now, 20_000_000, false, i))
        .collect();
    spans::export(Client::HttpProto, &recmeter.addrs, "both", vec![spans]);
    let t = nanos(now);
    for service in ["both", "points-only"] {
        let answer = send(
            &recmeter,
            &points(
                service,
                AggregationTemporality::Delta,
                t - 60_000_000_000,
                t,
                [3, 1, 1],
                7,
            ),
        );
        assert_eq!(answer.partial_success, None);
    }
    let m = recmeter.metrics();
    // Spans: 10 requests, one recommendation each (the default rule).
    assert_eq!(requests(&m, "both", "/recs"), 10.0);
    assert_eq!(
        m.value(
            "recs_recommendations_total",
            &[("service", "both"), ("endpoint", "/recs")]
        ),
        10.0
    );
    let recommendations = |service: &str| {
        m.samples
            .iter()
            .filter(|s| s.name == "recs_recommendations_total")
            .filter(|s| s.labels.get("service").map(String::as_str) == Some(service))
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert_eq!(
        recommendations("both"),
        10.0,
        "no recommendation counted twice"
    );
    assert_eq!(ignored(&m, "covered_by_spans"), 2.0, "both's two points");
    // Points only: 5 requests at /recs, 7 recommendations on the `recs.count` series.
    assert_eq!(requests(&m, "points-only", "/recs"), 5.0);
    assert_eq!(recommendations("points-only"), 7.0);
    // 3 of 5 in (0, 50 ms] at 25 ms, 1 in (50, 200] at 125 ms, 1 above 200 ms at 200 ms.
    let p50 = m.value(
        "recmeter_latency_quantile_seconds",
        &[
            ("service", "points-only"),
            ("endpoint", "/recs"),
            ("window", "1m"),
            ("q", "0.5"),
        ],
    );
    assert!((p50 / 0.025 - 1.0).abs() < 0.01, "{p50}");
}

/// Waits until a checkpoint in `dir`'s store covers WAL frame `seq`.
pub fn wait_for_checkpoint(dir: &std::path::Path, seq: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let covered = std::fs::read_dir(dir.join("data/manifests"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter_map(|m| m["wal_seq"].as_u64())
            .max()
            .unwrap_or(0);
        if covered >= seq {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint covers frame {seq}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cumulative points before and after a `kill -9` give exact deltas: the stream state of the
/// points acknowledged before the crash comes back, from the WAL or from a checkpoint, so the
/// next point adds only what is new; the services that send spans stay marked.
fn cumulative_streams_survive_kill9(through_checkpoint: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = if through_checkpoint {
        "[storage]\ncheckpoint_interval = \"1s\"\n"
    } else {
        ""
    };
    let start = || Start {
        config,
        dir: Some(dir.path()),
        ..Start::default()
    };
    let t = nanos(fake_start());
    // The sender started an hour before recmeter: its first point is the baseline.
    let began = t - 3_600_000_000_000;
    let cumulative = |service: &str, time: u64, counts: [u64; 3], recs: i64| {
        points(
            service,
            AggregationTemporality::Cumulative,
            began,
            time,
            counts,
            recs,
        )
    };
    let recmeter = Recmeter::start_with(start());
    let span = spans::server_span("/recs", fake_start(), 20_000_000, false, 1);
    spans::export(
        Client::HttpProto,
        &recmeter.addrs,
        "spanned",
        vec![vec![span]],
    );
    send(
        &recmeter,
        &cumulative("svc", t - 20_000_000_000, [10, 5, 1], 100),
    );
    send(
        &recmeter,
        &cumulative("svc", t - 10_000_000_000, [14, 6, 1], 130),
    );
    let m = recmeter.metrics();
    assert_eq!(requests(&m, "svc", "/recs"), 5.0);
    assert_eq!(m.value("recmeter_metric_streams_active", &[]), 2.0);
    if through_checkpoint {
        // Three frames: the spans and two metric requests. Checkpoints run on recmeter's
        // clock.
        recmeter.advance("1s");
        wait_for_checkpoint(dir.path(), 3);
    }
    recmeter.kill9();

    let restarted = Recmeter::start_with(start());
    assert_eq!(
        restarted
            .metrics()
            .value("recmeter_metric_streams_active", &[]),
        2.0
    );
    send(&restarted, &cumulative("svc", t, [20, 9, 2], 171));
    // The span-fed service is still known as such.
    send(&restarted, &cumulative("spanned", t, [1, 1, 1], 1));
    let m = restarted.metrics();
    // 31 - 16 requests since the baseline; nothing counted again, nothing lost.
    assert_eq!(requests(&m, "svc", "/recs"), 15.0);
    let recs: f64 = m
        .samples
        .iter()
        .filter(|s| s.name == "recs_recommendations_total")
        .filter(|s| s.labels.get("service").map(String::as_str) == Some("svc"))
        .map(|s| s.value)
        .sum();
    assert_eq!(recs, 71.0);
    assert_eq!(ignored(&m, "covered_by_spans"), 2.0);
    assert_eq!(requests(&m, "spanned", "/recs"), 1.0, "its one span");
    // A retry of the last point adds nothing.
    send(&restarted, &cumulative("svc", t, [20, 9, 2], 171));
    assert_eq!(requests(&restarted.metrics(), "svc", "/recs"), 15.0);
}

#[test]
fn cumulative_streams_survive_kill9_through_the_wal() {
    cumulative_streams_survive_kill9(false);
}

#[test]
fn cumulative_streams_survive_kill9_through_a_checkpoint() {
    cumulative_streams_survive_kill9(true);
}

/// A request mixing good points with points that cannot be right: the bad ones are rejected in
/// `partial_success`, naming the first problem, and counted; the good one is counted; a
/// latency metric in an unknown unit is ignored, not rejected.
#[test]
fn bad_points_are_rejected_and_good_ones_alongside_are_counted() {
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint,
    };
    let recmeter = Recmeter::start("");
    let t = nanos(fake_start());
    let mut request = points(
        "good",
        AggregationTemporality::Delta,
        t - 1,
        t,
        [1, 2, 3],
        4,
    );
    let explicit = |bounds: Vec<f64>, counts: Vec<u64>, count: u64, temporality: i32| Metric {
        name: "recs.latency".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            aggregation_temporality: temporality,
            data_points: vec![HistogramDataPoint {
                time_unix_nano: t,
                count,
                bucket_counts: counts,
                explicit_bounds: bounds,
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let exponential = |scale: i32, offset: i32, negative: Vec<u64>| Metric {
        name: "recs.latency".into(),
        unit: "s".into(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            aggregation_temporality: AggregationTemporality::Delta as i32,
            data_points: vec![ExponentialHistogramDataPoint {
                time_unix_nano: t,
                scale,
                count: 2 + negative.iter().sum::<u64>(),
                positive: Some(Buckets {
                    offset,
                    bucket_counts: vec![1, 1],
                }),
                negative: Some(Buckets {
                    offset: 0,
                    bucket_counts: negative,
                }),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let delta = AggregationTemporality::Delta as i32;
    let bad = vec![
        explicit(vec![0.2, 0.1], vec![1, 1, 1], 3, delta),
        explicit(vec![0.1], vec![1, 1], 5, delta),
        explicit(vec![0.1, 0.2], vec![1, 1], 2, delta),
        explicit(vec![f64::NAN], vec![1, 1], 2, delta),
        explicit(vec![0.1], vec![1, 1], 2, 0),
        exponential(3, 0, vec![0, 4]),
        exponential(21, 0, vec![]),
        exponential(0, i32::MAX, vec![]),
        explicit(vec![], vec![2], 2, delta),
    ];
    let rejected = bad.len() as i64;
    let mut bad_service = request.resource_metrics[0].clone();
    bad_service.resource = Some(Resource {
        attributes: vec![attribute("service.name", "bad")],
        ..Default::default()
    });
    bad_service.scope_metrics[0].metrics = bad;
    // A latency metric in furlongs is ignored (`reason="unit"`), not rejected.
    bad_service.scope_metrics[0].metrics.push(Metric {
        unit: "furlong".into(),
        ..explicit(vec![0.1], vec![1, 1], 2, delta)
    });
    request.resource_metrics.push(bad_service);
    let answer = send(&recmeter, &request);
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, rejected);
    assert!(
        partial
            .error_message
            .contains("explicit_bounds must be finite and strictly increasing"),
        "{}",
        partial.error_message
    );
    let m = recmeter.metrics();
    assert_eq!(requests(&m, "good", "/recs"), 6.0);
    assert_eq!(requests(&m, "bad", "recs.latency"), 0.0);
    assert_eq!(
        m.value(
            "recmeter_metric_points_dropped_total",
            &[("transport", "http"), ("reason", "invalid")]
        ),
        rejected as f64
    );
    assert_eq!(ignored(&m, "unit"), 1.0);
    // Bytes that are no OTLP at all refuse the whole request, naming the problem.
    let (status, body) = recmeter.post_otlp_to("/v1/metrics", PROTOBUF, vec![0x0a, 0xff, 0x01]);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid OTLP protobuf"));
}

/// `MetricsService/Export` over gRPC, with the client opentelemetry-proto generates and gzip.
#[test]
fn grpc_metrics_are_counted() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let recmeter = Recmeter::start("");
    let t = nanos(fake_start());
    let request = points(
        "grpc-svc",
        AggregationTemporality::Delta,
        t - 1,
        t,
        [2, 2, 2],
        3,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(async {
        let mut client =
            MetricsServiceClient::connect(format!("http://{}", recmeter.addrs.otlp_grpc))
                .await
                .unwrap()
                .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        client.export(request).await.unwrap().into_inner()
    });
    assert_eq!(answer.partial_success, None);
    let m = recmeter.metrics();
    assert_eq!(requests(&m, "grpc-svc", "/recs"), 6.0);
    assert_eq!(
        m.value(
            "recmeter_metric_points_received_total",
            &[("transport", "grpc")]
        ),
        2.0
    );
}
