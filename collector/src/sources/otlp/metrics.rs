//! From an OTLP `ExportMetricsServiceRequest` to metric points: the latency histograms and
//! recommendation sums `[metrics]` names become points for the aggregator (which turns
//! cumulative streams into deltas, in log order); everything else is accepted and counted as
//! ignored, never rejected. Points that cannot be right are rejected in `partial_success`.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher as _;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint, metric, number_data_point,
};
use prost::Message;
use recmeter_core::Arriving;
use recmeter_core::batch::{Batch, Position};
use recmeter_core::config::nanos_per_unit;
use recmeter_core::point::{Dense, MetricPoint, PointValue};
use recmeter_core::telemetry::{DropReason, IgnoreReason, Transport};
use recmeter_core::{IngestConfig, MetricsConfig, SeriesKey, Submitter};
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use super::traces::{IngestError, UNKNOWN_SERVICE, bounded, find, rejection, render};

/// OTLP `AggregationTemporality`.
const DELTA: i32 = 1;
const CUMULATIVE: i32 = 2;

/// OTLP `DataPointFlags.NO_RECORDED_VALUE`: the point stands for a gap, not a value.
const NO_RECORDED_VALUE: u32 = 1;

/// Exponential histogram scales OTLP allows.
const SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// How metric points become requests and recommendations (from `[metrics]` and `[ingest]`).
#[derive(Debug, Clone)]
pub struct MetricRules {
    /// Latency metric names, with the unit override's nanoseconds per unit.
    latency: HashMap<String, Option<f64>>,
    recommendation_metrics: HashSet<String>,
    endpoint_attributes: Vec<String>,
    dimensions: Vec<String>,
    /// recmeter's start (its clock): a cumulative stream that started later counts whole
    /// from its first point.
    started_at: u64,
}

impl MetricRules {
    /// Rules from the `[metrics]` and `[ingest]` sections; `started_at` is when recmeter
    /// started, on its clock.
    pub fn new(ingest: &IngestConfig, metrics: &MetricsConfig, started_at: u64) -> Self {
        Self {
            latency: metrics
                .latency
                .iter()
                .map(|m| (m.name.clone(), m.unit.as_deref().and_then(nanos_per_unit)))
                .collect(),
            recommendation_metrics: metrics.recommendation_metrics.iter().cloned().collect(),
            endpoint_attributes: metrics.endpoint_attributes.clone(),
            dimensions: ingest.dimensions.clone(),
            started_at,
        }
    }
}

/// The points of one request, sorted into what happens to them.
#[derive(Debug, Default)]
pub struct ConvertedMetrics {
    pub points: Vec<MetricPoint>,
    /// Every data point in the request.
    pub received: u64,
    /// Points ignored here, by reason (`type`, `name`, `unit`).
    pub ignored: Vec<(IgnoreReason, u64)>,
    /// Points rejected as invalid.
    pub invalid: u64,
    /// What was wrong with the first invalid point.
    pub problem: Option<String>,
}

impl ConvertedMetrics {
    fn ignore(&mut self, reason: IgnoreReason, n: usize) {
        if n == 0 {
            return;
        }
        match self.ignored.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += n as u64,
            None => self.ignored.push((reason, n as u64)),
        }
    }

    fn reject(&mut self, metric: &str, problem: &str) {
        self.invalid += 1;
        if self.problem.is_none() {
            self.problem = Some(format!("`{metric}`: {problem}"));
        }
    }
}

/// What one metric is to recmeter.
enum Use {
    /// Latency, in this many nanoseconds per unit.
    Latency(f64),
    Recommendations,
}

/// Turns the points of a request into metric points.
pub fn convert_metrics(
    request: &ExportMetricsServiceRequest,
    rules: &MetricRules,
) -> ConvertedMetrics {
    let mut out = ConvertedMetrics::default();
    for resource_metrics in &request.resource_metrics {
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service: Arc<str> = match find(resource, "service.name") {
            Some(v) => Arc::from(bounded(&render(v))),
            None => Arc::from(UNKNOWN_SERVICE),
        };
        for scope_metrics in &resource_metrics.scope_metrics {
            let stream_prefix = stream_prefix(resource, scope_metrics.scope.as_ref());
            for m in &scope_metrics.metrics {
                let points = match &m.data {
                    Some(metric::Data::Gauge(g)) => g.data_points.len(),
                    Some(metric::Data::Sum(s)) => s.data_points.len(),
                    Some(metric::Data::Histogram(h)) => h.data_points.len(),
                    Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
                    Some(metric::Data::Summary(s)) => s.data_points.len(),
                    None => 0,
                };
                out.received += points as u64;
                let is_histogram = matches!(
                    m.data,
                    Some(metric::Data::Histogram(_) | metric::Data::ExponentialHistogram(_))
                );
                let usable = match (&m.data, rules.latency.get(&m.name)) {
                    (_, Some(unit)) if is_histogram => {
                        match unit.or_else(|| latency_unit(&m.name, &m.unit)) {
                            Some(nanos) => Use::Latency(nanos),
                            None => {
                                out.ignore(IgnoreReason::Unit, points);
                                continue;
                            }
                        }
                    }
                    (Some(metric::Data::Sum(s)), None)
                        if s.is_monotonic && rules.recommendation_metrics.contains(&m.name) =>
                    {
                        Use::Recommendations
                    }
                    (
                        Some(metric::Data::Histogram(_) | metric::Data::ExponentialHistogram(_)),
                        None,
                    )
                    | (Some(metric::Data::Sum(_)), None)
                        if !rules.recommendation_metrics.contains(&m.name) =>
                    {
                        out.ignore(IgnoreReason::Name, points);
                        continue;
                    }
                    _ => {
                        out.ignore(IgnoreReason::Type, points);
                        continue;
                    }
                };
                let context = Context {
                    rules,
                    service: &service,
                    resource,
                    stream_prefix: &stream_prefix,
                    metric: &m.name,
                };
                match (&m.data, usable) {
                    (Some(metric::Data::Histogram(h)), Use::Latency(nanos)) => {
                        for p in &h.data_points {
                            let at = times(p.start_time_unix_nano, p.time_unix_nano, p.flags);
                            let value = explicit(p);
                            context.add(
                                &mut out,
                                &p.attributes,
                                at,
                                h.aggregation_temporality,
                                nanos,
                                value,
                            );
                        }
                    }
                    (Some(metric::Data::ExponentialHistogram(h)), Use::Latency(nanos)) => {
                        for p in &h.data_points {
                            let at = times(p.start_time_unix_nano, p.time_unix_nano, p.flags);
                            let value = exponential(p).map(Some);
                            context.add(
                                &mut out,
                                &p.attributes,
                                at,
                                h.aggregation_temporality,
                                nanos,
                                value,
                            );
                        }
                    }
                    (Some(metric::Data::Sum(s)), Use::Recommendations) => {
                        for p in &s.data_points {
                            let at = times(p.start_time_unix_nano, p.time_unix_nano, p.flags);
                            let value = sum(p).map(Some);
                            context.add(
                                &mut out,
                                &p.attributes,
                                at,
                                s.aggregation_temporality,
                                0.0,
                                value,
                            );
                        }
                    }
                    _ => out.ignore(IgnoreReason::Type, points),
                }
            }
        }
    }
    out
}

/// The nanoseconds in one unit of a latency metric that names no unit override: `s`, `ms`,
/// `us` or `ns`, or seconds when the unit is empty and the name ends `_seconds`.
fn latency_unit(name: &str, unit: &str) -> Option<f64> {
    if unit.is_empty() && name.ends_with("_seconds") {
        return Some(1e9);
    }
    nanos_per_unit(unit)
}

/// A point's start and end, or `None` for a point with no recorded value.
type Times = Option<(u64, u64)>;

fn times(start: u64, time: u64, flags: u32) -> Times {
    (flags & NO_RECORDED_VALUE == 0).then_some((start, time))
}

/// Where a metric's points come from.
struct Context<'a> {
    rules: &'a MetricRules,
    service: &'a Arc<str>,
    resource: &'a [KeyValue],
    /// The stream identity's hash of the resource and scope, to go on with.
    stream_prefix: &'a SipHasher13,
    metric: &'a str,
}

impl Context<'_> {
    /// Adds a point to `out`, or counts it as rejected. `value` is `Ok(None)` for a point that
    /// holds nothing.
    fn add(
        &self,
        out: &mut ConvertedMetrics,
        attributes: &[KeyValue],
        times: Times,
        temporality: i32,
        nanos_per_unit: f64,
        value: Result<Option<PointValue>, &'static str>,
    ) {
        match value.and_then(|v| self.point(attributes, times, temporality, nanos_per_unit, v)) {
            Ok(Some(p)) => out.points.push(p),
            Ok(None) => {}
            Err(problem) => out.reject(self.metric, problem),
        }
    }

    fn point(
        &self,
        attributes: &[KeyValue],
        times: Times,
        temporality: i32,
        nanos_per_unit: f64,
        value: Option<PointValue>,
    ) -> Result<Option<MetricPoint>, &'static str> {
        let (Some((start, time)), Some(value)) = (times, value) else {
            return Ok(None);
        };
        if time == 0 {
            return Err("time_unix_nano is 0");
        }
        let cumulative = match temporality {
            DELTA => false,
            CUMULATIVE => true,
            _ => return Err("the aggregation temporality is unspecified"),
        };
        let endpoint = self
            .rules
            .endpoint_attributes
            .iter()
            .find_map(|a| find(attributes, a))
            .map_or_else(
                || bounded(self.metric).to_owned(),
                |v| bounded(&render(v)).to_owned(),
            );
        let dimensions = self
            .rules
            .dimensions
            .iter()
            .map(|d| {
                let value = find(attributes, d)
                    .or_else(|| find(self.resource, d))
                    .map(render)
                    .unwrap_or_default();
                Arc::from(bounded(&value))
            })
            .collect();
        let status = find(attributes, "http.response.status_code").and_then(status_code);
        let error = find(attributes, "error.type").is_some() || status.is_some_and(|s| s >= 500);
        let mut stream = *self.stream_prefix;
        write_field(&mut stream, self.metric.as_bytes());
        write_attributes(&mut stream, attributes);
        Ok(Some(MetricPoint {
            stream: stream.finish128().as_u128(),
            key: SeriesKey {
                service: self.service.clone(),
                endpoint: Arc::from(endpoint),
                dimensions,
            },
            error,
            start_unix_nanos: start,
            time_unix_nanos: time,
            cumulative,
            whole_if_new: cumulative
                && start != 0
                && start > self.rules.started_at
                && start != time,
            nanos_per_unit,
            value,
        }))
    }
}

/// `http.response.status_code` as an integer (some SDKs send it as a string).
fn status_code(value: &AnyValue) -> Option<i64> {
    match &value.value {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        Some(any_value::Value::StringValue(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The resource and scope part of a stream's identity: a SipHash-1-3 (128 bits, fixed keys,
/// so the same stream hashes the same across restarts) over a canonical encoding. Its size
/// does not grow with what the sender puts in attributes.
fn stream_prefix(resource: &[KeyValue], scope: Option<&InstrumentationScope>) -> SipHasher13 {
    let mut h = SipHasher13::new();
    write_attributes(&mut h, resource);
    if let Some(scope) = scope {
        write_field(&mut h, scope.name.as_bytes());
        write_field(&mut h, scope.version.as_bytes());
        write_attributes(&mut h, &scope.attributes);
    } else {
        write_field(&mut h, b"");
        write_field(&mut h, b"");
        write_attributes(&mut h, &[]);
    }
    h
}

/// A length-prefixed field, so fields cannot run into each other.
fn write_field(h: &mut SipHasher13, bytes: &[u8]) {
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.write(bytes);
}

/// Attributes in key order (their order on the wire does not make another stream), each value
/// as its protobuf encoding.
fn write_attributes(h: &mut SipHasher13, attributes: &[KeyValue]) {
    let mut sorted: Vec<&KeyValue> = attributes.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    h.write(&(sorted.len() as u64).to_le_bytes());
    for kv in sorted {
        write_field(h, kv.key.as_bytes());
        write_field(
            h,
            &kv.value
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default(),
        );
    }
}

fn explicit(p: &HistogramDataPoint) -> Result<Option<PointValue>, &'static str> {
    if p.bucket_counts.is_empty() {
        return if p.count == 0 {
            Ok(None)
        } else {
            Err("a histogram point with a count but no buckets says nothing of latency")
        };
    }
    if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
        return Err("bucket_counts must have one more entry than explicit_bounds");
    }
    if p.explicit_bounds.is_empty() {
        return Err("a histogram with a single bucket says nothing of latency");
    }
    if p.explicit_bounds.iter().any(|b| !b.is_finite())
        || p.explicit_bounds.windows(2).any(|w| w[0] >= w[1])
    {
        return Err("explicit_bounds must be finite and strictly increasing");
    }
    check_count(p.count, 0, &p.bucket_counts)?;
    Ok(Some(PointValue::Explicit {
        bounds: p.explicit_bounds.clone(),
        counts: p.bucket_counts.clone(),
    }))
}

fn exponential(p: &ExponentialHistogramDataPoint) -> Result<PointValue, &'static str> {
    if !SCALES.contains(&p.scale) {
        return Err("scale must be between -10 and 20");
    }
    let negative = p
        .negative
        .as_ref()
        .map(dense)
        .transpose()?
        .unwrap_or_default();
    if negative.counts.iter().any(|&c| c > 0) {
        return Err("negative buckets hold values below zero, which no latency has");
    }
    let positive = p
        .positive
        .as_ref()
        .map(dense)
        .transpose()?
        .unwrap_or_default();
    check_count(p.count, p.zero_count, &positive.counts)?;
    Ok(PointValue::Exponential {
        scale: p.scale,
        zero_count: p.zero_count,
        positive,
        negative: Dense::default(),
    })
}

fn dense(b: &Buckets) -> Result<Dense, &'static str> {
    let len = i32::try_from(b.bucket_counts.len()).map_err(|_| "too many buckets")?;
    b.offset
        .checked_add(len)
        .ok_or("a bucket index beyond the 32-bit range")?;
    Ok(Dense {
        offset: b.offset,
        counts: b.bucket_counts.clone(),
    })
}

/// Most requests one histogram point may count: 2^53, the largest count a Prometheus counter
/// (a float) still holds exactly. Far above any real sender, and far enough below 2^63 (what
/// a histogram's bucket can be encoded with) that sums of accepted points saturate there
/// instead of overflowing.
pub const MAX_POINT_COUNT: u64 = 1 << 53;

/// The point's `count` must be what its buckets hold, and at most [`MAX_POINT_COUNT`].
fn check_count(count: u64, zero: u64, buckets: &[u64]) -> Result<(), &'static str> {
    if count > MAX_POINT_COUNT {
        return Err("count is above 2^53, more requests than any sender counts");
    }
    let total = buckets
        .iter()
        .try_fold(zero, |acc, &c| acc.checked_add(c))
        .ok_or("bucket counts overflow")?;
    if total == count {
        Ok(())
    } else {
        Err("count is not the sum of the bucket counts")
    }
}

fn sum(p: &NumberDataPoint) -> Result<PointValue, &'static str> {
    let value = match p.value {
        Some(number_data_point::Value::AsInt(i)) if i >= 0 => i as f64,
        Some(number_data_point::Value::AsDouble(d)) if d.is_finite() && d >= 0.0 => d,
        Some(_) => return Err("a recommendations count must be finite and not negative"),
        None => return Err("the point has no value"),
    };
    Ok(PointValue::Sum { value })
}

/// The metrics ingest path shared by the gRPC and HTTP servers.
#[derive(Debug, Clone)]
pub struct MetricIngest {
    aggregator: Submitter,
    rules: Arc<MetricRules>,
}

impl MetricIngest {
    pub fn new(aggregator: Submitter, rules: MetricRules) -> Self {
        Self {
            aggregator,
            rules: Arc::new(rules),
        }
    }

    /// Counts the points of one request and says which were rejected. `arriving` is the
    /// request's place among those on their way to the log (see
    /// [`Submit::arriving`](recmeter_core::Submit::arriving)). The request is taken by value so it is freed before
    /// the wait to be counted.
    pub async fn export(
        &self,
        request: ExportMetricsServiceRequest,
        transport: Transport,
        arriving: Arriving,
    ) -> Result<ExportMetricsServiceResponse, IngestError> {
        let mut converted = convert_metrics(&request, &self.rules);
        drop(request);
        let batch = Batch {
            points: std::mem::take(&mut converted.points),
            ..Batch::default()
        };
        let outcome = self.aggregator.submit_batch(batch, arriving).await?;
        Ok(self.counted(transport, converted, &outcome))
    }

    /// For a Kafka message: converts `request` and queues its points with `position` at once,
    /// skipping the log (Kafka is theirs), or refuses with `Backpressure` while the queue is
    /// full. Messages queued one after another are counted in that order. The future answers
    /// once the points are counted.
    pub fn queue(
        &self,
        request: &ExportMetricsServiceRequest,
        position: Position,
    ) -> Result<impl Future<Output = Result<(), IngestError>> + Send + 'static, IngestError> {
        let mut converted = convert_metrics(request, &self.rules);
        let answer = self.aggregator.queue(Batch {
            points: std::mem::take(&mut converted.points),
            position: Some(Box::new(position)),
            ..Batch::default()
        })?;
        let this = self.clone();
        Ok(async move {
            let outcome = answer.await?;
            this.counted(Transport::Kafka, converted, &outcome);
            Ok(())
        })
    }

    /// Counts what happened to a request's points in the self-telemetry (`converted` less
    /// its points, which went to the aggregator), and says it.
    fn counted(
        &self,
        transport: Transport,
        converted: ConvertedMetrics,
        outcome: &recmeter_core::ApplyOutcome,
    ) -> ExportMetricsServiceResponse {
        let telemetry = self.aggregator.telemetry();
        telemetry.add_metric_points_received(transport, converted.received);
        for (reason, n) in converted.ignored {
            telemetry.add_metric_points_ignored(transport, reason, n);
        }
        telemetry.add_metric_points_ignored(
            transport,
            IgnoreReason::CoveredBySpans,
            outcome.covered_by_spans,
        );
        telemetry.add_metric_points_ignored(
            transport,
            IgnoreReason::StreamLimit,
            outcome.stream_limit,
        );
        telemetry.add_metric_points_dropped(transport, DropReason::Invalid, converted.invalid);
        telemetry.add_metric_points_dropped(transport, DropReason::TooOld, outcome.too_old);
        telemetry.add_metric_points_dropped(transport, DropReason::Future, outcome.future);
        let first = format!(
            "the first: {}",
            converted.problem.as_deref().unwrap_or("unknown")
        );
        let partial_success = rejection(converted.invalid, &first, outcome, "data points").map(
            |(rejected, message)| ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message,
            },
        );
        ExportMetricsServiceResponse { partial_success }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, Metric, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn text(key: &str, value: &str) -> KeyValue {
        kv(key, any_value::Value::StringValue(value.into()))
    }

    /// One `name` histogram point in `unit` with `attributes`, cumulative from `start`.
    fn request(
        name: &str,
        unit: &str,
        attributes: Vec<KeyValue>,
        start: u64,
        temporality: i32,
    ) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "svc"), text("region", "eu")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: name.into(),
                        unit: unit.into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            aggregation_temporality: temporality,
                            data_points: vec![HistogramDataPoint {
                                attributes,
                                start_time_unix_nano: start,
                                time_unix_nano: 5_000,
                                count: 2,
                                bucket_counts: vec![1, 1],
                                explicit_bounds: vec![1.0],
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn rules() -> MetricRules {
        let ingest = IngestConfig {
            dimensions: vec!["region".into()],
            ..IngestConfig::default()
        };
        MetricRules::new(&ingest, &MetricsConfig::default(), 1_000)
    }

    fn one(request: &ExportMetricsServiceRequest) -> MetricPoint {
        let mut out = convert_metrics(request, &rules());
        assert_eq!(out.points.len(), 1, "{out:?}");
        out.points.remove(0)
    }

    #[test]
    fn endpoint_status_dimensions_and_units() {
        let p = one(&request(
            "recs.latency",
            "ms",
            vec![text("http.route", "/a")],
            0,
            CUMULATIVE,
        ));
        assert_eq!(&*p.key.service, "svc");
        assert_eq!(&*p.key.endpoint, "/a");
        assert_eq!(&*p.key.dimensions[0], "eu", "from the resource");
        assert_eq!(p.nanos_per_unit, 1e6);
        assert!(!p.error);
        let p = one(&request(
            "recs.latency",
            "s",
            vec![
                text("rpc.method", "Get"),
                text("region", "us"),
                text("error.type", "timeout"),
            ],
            0,
            CUMULATIVE,
        ));
        assert_eq!(
            &*p.key.endpoint, "Get",
            "rpc.method when there is no http.route"
        );
        assert_eq!(&*p.key.dimensions[0], "us", "the point's attribute wins");
        assert!(p.error);
        let p = one(&request("recs_latency_seconds", "", vec![], 0, CUMULATIVE));
        assert_eq!(&*p.key.endpoint, "recs_latency_seconds", "the metric name");
        assert_eq!(p.nanos_per_unit, 1e9, "an empty unit on a _seconds name");
        for (code, error) in [
            (
                kv("http.response.status_code", any_value::Value::IntValue(503)),
                true,
            ),
            (
                kv("http.response.status_code", any_value::Value::IntValue(404)),
                false,
            ),
            (text("http.response.status_code", "500"), true),
        ] {
            let p = one(&request("recs.latency", "s", vec![code], 0, CUMULATIVE));
            assert_eq!(p.error, error);
        }
        let out = convert_metrics(
            &request("recs.latency", "furlong", vec![], 0, CUMULATIVE),
            &rules(),
        );
        assert!(out.points.is_empty());
        assert_eq!(out.ignored, vec![(IgnoreReason::Unit, 1)]);
    }

    #[test]
    fn the_auto_rule_and_stream_identity() {
        let whole = |start: u64, temporality: i32| {
            one(&request("recs.latency", "s", vec![], start, temporality)).whole_if_new
        };
        assert!(whole(2_000, CUMULATIVE), "started after recmeter");
        assert!(!whole(500, CUMULATIVE), "started before recmeter");
        assert!(!whole(5_000, CUMULATIVE), "start equal to the time");
        assert!(!whole(0, CUMULATIVE), "no start time");
        assert!(!whole(2_000, DELTA), "delta points need no stream");
        // Attribute order does not make another stream; another value does.
        let id = |attributes| one(&request("recs.latency", "s", attributes, 0, CUMULATIVE)).stream;
        let a = id(vec![text("http.route", "/a"), text("x", "1")]);
        assert_eq!(a, id(vec![text("x", "1"), text("http.route", "/a")]));
        assert_ne!(a, id(vec![text("http.route", "/a"), text("x", "2")]));
        assert_ne!(
            a,
            one(&request(
                "recs_latency_seconds",
                "s",
                vec![text("http.route", "/a"), text("x", "1")],
                0,
                CUMULATIVE
            ))
            .stream,
            "another metric"
        );
    }
}
