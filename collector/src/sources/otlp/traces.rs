//! From an OTLP `ExportTraceServiceRequest` to counted requests: validates spans, applies the
//! request rule (span kind), keys each request by service, endpoint and the configured
//! dimensions, submits the batch and builds the OTLP response with `partial_success`.

use std::collections::HashSet;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use recmeter_core::Arriving;
use recmeter_core::telemetry::{DropReason, Transport};
use recmeter_core::{Batch, IngestConfig, Position, RequestRecord, SeriesKey, Submitter};

/// `service.name` when a resource has none (OpenTelemetry's own default).
pub(super) const UNKNOWN_SERVICE: &str = "unknown_service";

/// Longest service, endpoint or dimension value kept, in bytes; longer ones are cut (at a
/// character boundary), so a hostile sender cannot make series keys arbitrarily large.
pub const MAX_LABEL_BYTES: usize = 256;

pub(super) fn bounded(value: &str) -> &str {
    if value.len() <= MAX_LABEL_BYTES {
        return value;
    }
    let mut end = MAX_LABEL_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// How spans become requests (from `[ingest]`).
#[derive(Debug, Clone)]
pub struct SpanRules {
    kinds: Vec<i32>,
    dimensions: Vec<String>,
    recommendation_endpoints: Option<HashSet<String>>,
    recommendations_attribute: String,
}

impl SpanRules {
    /// Rules from the `[ingest]` section.
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            kinds: config
                .request_span_kinds
                .iter()
                .map(|k| k.otlp_value())
                .collect(),
            dimensions: config.dimensions.clone(),
            recommendation_endpoints: config
                .recommendation_endpoints
                .as_ref()
                .map(|e| e.iter().cloned().collect()),
            recommendations_attribute: config.recommendations_attribute.clone(),
        }
    }
}

/// Spans of one request, sorted into what happens to them.
#[derive(Debug, Default)]
pub struct Converted {
    /// One record per valid span of a request kind.
    pub records: Vec<RequestRecord>,
    /// Every span in the request.
    pub spans: u64,
    /// Request spans dropped as invalid.
    pub invalid: u64,
}

/// Turns the spans of a request into request records.
pub fn convert(request: &ExportTraceServiceRequest, rules: &SpanRules) -> Converted {
    let mut out = Converted::default();
    for resource_spans in &request.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service: Arc<str> = match find(resource_attributes, "service.name") {
            Some(v) => Arc::from(bounded(&render(v))),
            None => Arc::from(UNKNOWN_SERVICE),
        };
        let resource_dimensions: Vec<Option<String>> = rules
            .dimensions
            .iter()
            .map(|d| find(resource_attributes, d).map(render))
            .collect();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                out.spans += 1;
                // Spans that are not requests are ignored before validation, so they are never
                // reported as rejected, whatever they contain.
                if !rules.kinds.contains(&span.kind) {
                    continue;
                }
                if !is_valid(span) {
                    out.invalid += 1;
                    continue;
                }
                let dimensions = rules
                    .dimensions
                    .iter()
                    .zip(&resource_dimensions)
                    .map(|(d, from_resource)| {
                        let value = find(&span.attributes, d)
                            .map(render)
                            .or_else(|| from_resource.clone())
                            .unwrap_or_default();
                        Arc::from(bounded(&value))
                    })
                    .collect();
                let error = span
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == StatusCode::Error as i32);
                let recommendations = match find(&span.attributes, &rules.recommendations_attribute)
                    .and_then(as_count)
                {
                    Some(n) => n,
                    None => match &rules.recommendation_endpoints {
                        None => 1,
                        Some(endpoints) => u64::from(endpoints.contains(&span.name)),
                    },
                };
                out.records.push(RequestRecord {
                    key: SeriesKey {
                        service: service.clone(),
                        endpoint: Arc::from(bounded(&span.name)),
                        dimensions,
                    },
                    end_unix_nanos: span.end_time_unix_nano,
                    duration_nanos: span.end_time_unix_nano - span.start_time_unix_nano,
                    error,
                    recommendations,
                });
            }
        }
    }
    out
}

/// A span is invalid when its times or ids cannot be right: start 0, end before start, or a
/// trace or span id of the wrong length or all zeros.
fn is_valid(span: &opentelemetry_proto::tonic::trace::v1::Span) -> bool {
    let id_ok = |id: &[u8], len: usize| id.len() == len && id.iter().any(|b| *b != 0);
    span.start_time_unix_nano != 0
        && span.end_time_unix_nano >= span.start_time_unix_nano
        && id_ok(&span.trace_id, 16)
        && id_ok(&span.span_id, 8)
}

pub(super) fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// An attribute value as a label value.
pub(super) fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// A recommendations count: a non-negative integer (or an integral double, or a decimal string).
fn as_count(value: &AnyValue) -> Option<u64> {
    match &value.value {
        Some(any_value::Value::IntValue(i)) => u64::try_from(*i).ok(),
        Some(any_value::Value::DoubleValue(d)) if *d >= 0.0 && d.fract() == 0.0 => Some(*d as u64),
        Some(any_value::Value::StringValue(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Why a whole request could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The aggregator queue is full; retry later.
    #[error("recmeter is busy; retry later")]
    Backpressure,
    /// The write-ahead log cannot be written (a full or failing disk); retry later.
    #[error("recmeter cannot write its write-ahead log ({0}); retry later")]
    Storage(String),
    /// The service is shutting down.
    #[error("recmeter is shutting down")]
    Unavailable,
}

impl From<recmeter_core::Error> for IngestError {
    fn from(e: recmeter_core::Error) -> Self {
        match e {
            recmeter_core::Error::Backpressure => IngestError::Backpressure,
            recmeter_core::Error::Wal(m) => IngestError::Storage(m),
            _ => IngestError::Unavailable,
        }
    }
}

/// What `partial_success` says when anything was rejected: how many `items`, and why.
/// `invalid` were rejected by the collector, for `why`; `outcome` counts those too old or in
/// the future.
pub(super) fn rejection(
    invalid: u64,
    why: &str,
    outcome: &recmeter_core::ApplyOutcome,
    items: &str,
) -> Option<(i64, String)> {
    let rejected = invalid + outcome.too_old + outcome.future;
    if rejected == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if invalid > 0 {
        parts.push(format!("{invalid} invalid ({why})"));
    }
    if outcome.too_old > 0 {
        parts.push(format!(
            "{} too old (ended before now minus ingest.max_span_age)",
            outcome.too_old
        ));
    }
    if outcome.future > 0 {
        parts.push(format!(
            "{} in the future (end beyond now plus ingest.max_future_skew)",
            outcome.future
        ));
    }
    Some((
        i64::try_from(rejected).unwrap_or(i64::MAX),
        format!("{rejected} {items} rejected: {}", parts.join("; ")),
    ))
}

/// The trace ingest path shared by the gRPC and HTTP servers.
#[derive(Debug, Clone)]
pub struct TraceIngest {
    aggregator: Submitter,
    rules: Arc<SpanRules>,
}

impl TraceIngest {
    /// Ingest through `aggregator` with `rules`.
    pub fn new(aggregator: Submitter, rules: SpanRules) -> Self {
        Self {
            aggregator,
            rules: Arc::new(rules),
        }
    }

    /// The aggregator behind this ingest path.
    pub fn aggregator(&self) -> &Submitter {
        &self.aggregator
    }

    /// Counts the spans of one request and says which were dropped. `arriving` is the
    /// request's place among those on their way (taken when it started, see
    /// [`Submit::arriving`](recmeter_core::Submit::arriving)); it goes with the spans to the log. The request is taken
    /// by value so its decoded spans are freed before the wait to be counted.
    pub async fn export(
        &self,
        request: ExportTraceServiceRequest,
        transport: Transport,
        arriving: Arriving,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let converted = convert(&request, &self.rules);
        // The decoded spans are freed before waiting for the aggregator (and the WAL's fsync):
        // while requests wait, the next ones decode into memory still warm in the cache.
        drop(request);
        let (spans, invalid) = (converted.spans, converted.invalid);
        let outcome = self
            .aggregator
            .submit_batch(converted.records.into(), arriving)
            .await?;
        Ok(self.counted(transport, spans, invalid, &outcome))
    }

    /// For a Kafka message: converts `request` and queues its spans with `position` at once,
    /// skipping the log (Kafka is theirs), or refuses with `Backpressure` while the queue is
    /// full. Messages queued one after another are counted in that order. The future answers
    /// once the spans are counted.
    pub fn queue(
        &self,
        request: &ExportTraceServiceRequest,
        position: Position,
    ) -> Result<impl Future<Output = Result<(), IngestError>> + Send + 'static, IngestError> {
        let converted = convert(request, &self.rules);
        let (spans, invalid) = (converted.spans, converted.invalid);
        let answer = self.aggregator.queue(Batch {
            records: converted.records,
            position: Some(Box::new(position)),
            ..Batch::default()
        })?;
        let this = self.clone();
        Ok(async move {
            let outcome = answer.await?;
            this.counted(Transport::Kafka, spans, invalid, &outcome);
            Ok(())
        })
    }

    /// Counts what happened to a request's `spans` in the self-telemetry, and says it.
    fn counted(
        &self,
        transport: Transport,
        spans: u64,
        invalid: u64,
        outcome: &recmeter_core::ApplyOutcome,
    ) -> ExportTraceServiceResponse {
        let telemetry = self.aggregator.telemetry();
        telemetry.add_spans_received(transport, spans);
        telemetry.add_spans_dropped(transport, DropReason::Invalid, invalid);
        telemetry.add_spans_dropped(transport, DropReason::TooOld, outcome.too_old);
        telemetry.add_spans_dropped(transport, DropReason::Future, outcome.future);
        let partial_success = rejection(
            invalid,
            "zero start time, end before start, or a malformed trace or span id",
            outcome,
            "spans",
        )
        .map(|(rejected, message)| ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: message,
        });
        ExportTraceServiceResponse { partial_success }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn span(name: &str, kind: i32) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.into(),
            kind,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", any_value::Value::StringValue("recs".into())),
                        kv("region", any_value::Value::StringValue("eu".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn only_request_kinds_count_and_others_are_not_invalid() {
        let rules = SpanRules::new(&IngestConfig::default());
        let c = convert(
            &request(vec![span("a", 2), span("b", 3), span("c", 1)]),
            &rules,
        );
        assert_eq!(c.spans, 3);
        assert_eq!(c.invalid, 0);
        assert_eq!(c.records.len(), 1);
        let r = &c.records[0];
        assert_eq!(&*r.key.service, "recs");
        assert_eq!(&*r.key.endpoint, "a");
        assert_eq!(r.duration_nanos, 4_000);
        assert_eq!(r.recommendations, 1);
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let rules = SpanRules::new(&IngestConfig::default());
        let long = "é".repeat(300); // 600 bytes
        let c = convert(&request(vec![span(&long, 2)]), &rules);
        let endpoint = &c.records[0].key.endpoint;
        assert!(endpoint.len() <= MAX_LABEL_BYTES && endpoint.len() >= MAX_LABEL_BYTES - 1);
        assert!(long.starts_with(&**endpoint));
    }

    #[test]
    fn invalid_spans_are_found() {
        let rules = SpanRules::new(&IngestConfig::default());
        let mut backwards = span("a", 2);
        backwards.end_time_unix_nano = 10;
        let mut zero_start = span("a", 2);
        zero_start.start_time_unix_nano = 0;
        let mut short_trace = span("a", 2);
        short_trace.trace_id = vec![1; 8];
        let mut zero_span_id = span("a", 2);
        zero_span_id.span_id = vec![0; 8];
        let c = convert(
            &request(vec![
                backwards,
                zero_start,
                short_trace,
                zero_span_id,
                span("ok", 2),
            ]),
            &rules,
        );
        assert_eq!((c.spans, c.invalid, c.records.len()), (5, 4, 1));
    }

    #[test]
    fn status_recommendations_and_dimensions() {
        let config = IngestConfig {
            dimensions: vec!["region".into(), "tier".into()],
            recommendation_endpoints: Some(vec!["home".into()]),
            ..IngestConfig::default()
        };
        let rules = SpanRules::new(&config);
        let mut failed = span("home", 2);
        failed.status = Some(Status {
            code: StatusCode::Error as i32,
            ..Default::default()
        });
        failed
            .attributes
            .push(kv("region", any_value::Value::StringValue("us".into())));
        let mut counted = span("other", 2);
        counted
            .attributes
            .push(kv("recs.count", any_value::Value::IntValue(25)));
        let c = convert(&request(vec![failed, counted, span("other", 2)]), &rules);
        let r: Vec<_> = c.records.iter().collect();
        assert!(r[0].error);
        assert_eq!(r[0].recommendations, 1, "home is a recommendation endpoint");
        assert_eq!(
            r[0].key.dimensions,
            vec![Arc::<str>::from("us"), Arc::<str>::from("")],
            "span attribute wins over resource; absent is empty"
        );
        assert_eq!(r[1].recommendations, 25);
        assert_eq!(&*r[1].key.dimensions[0], "eu");
        assert!(!r[1].error);
        assert_eq!(r[2].recommendations, 0, "not a recommendation endpoint");
    }
}
