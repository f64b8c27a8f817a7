//! OTLP/HTTP: `POST /v1/traces` and `POST /v1/metrics` with `application/x-protobuf` or
//! `application/json` bodies, optionally gzip-compressed. Answers in the request's encoding; errors carry a
//! `google.rpc.Status` as the OTLP specification asks.

use std::future::Future;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use recmeter_core::Arriving;
use recmeter_core::ErrorKind;
use recmeter_core::telemetry::{RejectReason, Transport};

use super::Ingest;
use super::body::{GunzipError, gunzip};
use super::config::ServeOptions;
use super::prescan;
use super::traces::IngestError;
use crate::error::Result;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// `google.rpc.Status`, the error body of OTLP/HTTP.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    options: ServeOptions,
}

/// An OTLP export request that the HTTP routes take: decoded from protobuf or JSON, counted
/// by its ingest path.
trait Export: Message + Default + serde::de::DeserializeOwned + Send + 'static {
    type Response: Message + serde::Serialize + Send;

    /// The pre-scan of this request's body against `options`' limits.
    fn prescan(
        body: &[u8],
        encoding: Encoding,
        options: &ServeOptions,
    ) -> Result<prescan::Scan, prescan::Refused>;

    fn export(
        self,
        ingest: &Ingest,
        arriving: Arriving,
    ) -> impl Future<Output = std::result::Result<Self::Response, IngestError>> + Send;
}

impl Export for ExportTraceServiceRequest {
    type Response = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

    fn prescan(
        body: &[u8],
        encoding: Encoding,
        options: &ServeOptions,
    ) -> Result<prescan::Scan, prescan::Refused> {
        match encoding {
            Encoding::Protobuf => prescan::traces(body, options.max_spans_per_request),
            Encoding::Json => prescan::traces_json(body, options.max_spans_per_request),
        }
    }

    fn export(
        self,
        ingest: &Ingest,
        arriving: Arriving,
    ) -> impl Future<Output = std::result::Result<Self::Response, IngestError>> + Send {
        ingest.traces.export(self, Transport::Http, arriving)
    }
}

impl Export for ExportMetricsServiceRequest {
    type Response =
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;

    fn prescan(
        body: &[u8],
        encoding: Encoding,
        options: &ServeOptions,
    ) -> Result<prescan::Scan, prescan::Refused> {
        match encoding {
            Encoding::Protobuf => prescan::metrics(body, options.max_points_per_request),
            Encoding::Json => prescan::metrics_json(body, options.max_points_per_request),
        }
    }

    fn export(
        self,
        ingest: &Ingest,
        arriving: Arriving,
    ) -> impl Future<Output = std::result::Result<Self::Response, IngestError>> + Send {
        ingest.metrics.export(self, Transport::Http, arriving)
    }
}

/// The OTLP/HTTP routes, for serving or for `oneshot` tests.
pub fn http_router(ingest: Ingest, options: ServeOptions) -> Router {
    let state = HttpState { ingest, options };
    Router::new()
        .route("/v1/traces", post(export::<ExportTraceServiceRequest>))
        .route("/v1/metrics", post(export::<ExportMetricsServiceRequest>))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // The limit is enforced below, after decompression too, so it can be counted.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Refuses requests without the ingest token before their body is read.
async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.options.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !presented.is_some_and(|v| token.matches_header(v)) {
            let telemetry = state.ingest.traces.aggregator().telemetry();
            telemetry.add_request_rejected(Transport::Http, RejectReason::Auth);
            let encoding = content_type(request.headers()).unwrap_or(Encoding::Json);
            return Refusal::new(
                ErrorKind::Unauthorized,
                None,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            )
            .into_response(encoding);
        }
    }
    next.run(request).await
}

/// A refused request: its kind (HTTP status and google.rpc.Code, through [`ErrorKind`]), the
/// message for the client and the counter reason.
struct Refusal {
    kind: ErrorKind,
    reason: Option<RejectReason>,
    message: String,
}

impl Refusal {
    fn new(kind: ErrorKind, reason: Option<RejectReason>, message: impl Into<String>) -> Self {
        Self {
            kind,
            reason,
            message: message.into(),
        }
    }

    fn into_response(self, encoding: Encoding) -> Response {
        let body = RpcStatus {
            code: self.kind.grpc_code(),
            message: self.message,
        };
        let mut response = encode(encoding, &body, serde_json::to_vec).into_response();
        *response.status_mut() =
            StatusCode::from_u16(self.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        match self.kind {
            ErrorKind::Unavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ErrorKind::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

fn encode<T: Message>(
    encoding: Encoding,
    message: &T,
    to_json: impl Fn(&T) -> serde_json::Result<Vec<u8>>,
) -> Response {
    match encoding {
        Encoding::Protobuf => {
            ([(header::CONTENT_TYPE, PROTOBUF)], message.encode_to_vec()).into_response()
        }
        Encoding::Json => match to_json(message) {
            Ok(body) => ([(header::CONTENT_TYPE, JSON)], body).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
    }
}

async fn export<R: Export>(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let telemetry = state.ingest.traces.aggregator().telemetry().clone();
    let Some(encoding) = content_type(&headers) else {
        telemetry.add_request_rejected(Transport::Http, RejectReason::UnsupportedMediaType);
        let message = format!("unsupported content type; send {PROTOBUF} or {JSON}");
        // The request's own encoding is unknown: answer the Status in JSON.
        return Refusal::new(ErrorKind::UnsupportedMediaType, None, message)
            .into_response(Encoding::Json);
    };
    match handle::<R>(&state, &headers, body, encoding).await {
        Ok(response) => response,
        Err(refusal) => {
            if let Some(reason) = refusal.reason {
                telemetry.add_request_rejected(Transport::Http, reason);
            }
            refusal.into_response(encoding)
        }
    }
}

async fn handle<R: Export>(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<Response, Refusal> {
    // On its way from here: the WAL's group commit waits for it (see `Arriving`).
    let arriving = state.ingest.traces.aggregator().arriving();
    let limit = state.options.max_body_bytes;
    let too_large = || {
        Refusal::new(
            ErrorKind::PayloadTooLarge,
            Some(RejectReason::TooLarge),
            format!("request body is larger than otlp.max_body_bytes ({limit} bytes)"),
        )
    };
    let read = tokio::time::timeout(
        state.options.body_timeout,
        Limited::new(body, limit).collect(),
    );
    let Ok(read) = read.await else {
        return Err(Refusal::new(
            ErrorKind::BadRequest,
            Some(RejectReason::Decode),
            format!(
                "the request body did not arrive within {:?} (otlp.idle_timeout)",
                state.options.body_timeout
            ),
        ));
    };
    let raw = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(Refusal::new(
                ErrorKind::BadRequest,
                Some(RejectReason::Decode),
                format!("cannot read request body: {e}"),
            ));
        }
    };
    let body = match content_encoding(headers) {
        ContentEncoding::Identity => raw,
        ContentEncoding::Gzip => {
            let unzipped = gunzip(&raw, limit);
            drop(raw);
            unzipped.map_err(|e| match e {
                GunzipError::TooLarge => too_large(),
                GunzipError::Corrupt(e) => Refusal::new(
                    ErrorKind::BadRequest,
                    Some(RejectReason::Decode),
                    format!("invalid gzip body: {e}"),
                ),
            })?
        }
        ContentEncoding::Other(name) => {
            return Err(Refusal::new(
                ErrorKind::UnsupportedMediaType,
                Some(RejectReason::UnsupportedMediaType),
                format!("unsupported content encoding `{name}`; send gzip or none"),
            ));
        }
    };
    // A body that would decode into far more than it weighs is refused before it is decoded.
    {
        R::prescan(&body, encoding, &state.options).map_err(|e| {
            if e.is_too_large() {
                Refusal::new(
                    ErrorKind::PayloadTooLarge,
                    Some(RejectReason::TooLarge),
                    e.to_string(),
                )
            } else {
                Refusal::new(
                    ErrorKind::BadRequest,
                    Some(RejectReason::Decode),
                    e.to_string(),
                )
            }
        })?;
    }
    let request = decode::<R>(&body, encoding).map_err(|message| {
        Refusal::new(ErrorKind::BadRequest, Some(RejectReason::Decode), message)
    })?;
    // The body's buffers are not held while the request waits to be counted.
    drop(body);
    match request.export(&state.ingest, arriving).await {
        Ok(response) => Ok(encode(encoding, &response, serde_json::to_vec)),
        Err(IngestError::Backpressure) => Err(Refusal::new(
            ErrorKind::Unavailable,
            Some(RejectReason::Backpressure),
            "recmeter is busy; retry later",
        )),
        Err(e @ IngestError::Storage(_)) => Err(Refusal::new(
            ErrorKind::Unavailable,
            Some(RejectReason::Storage),
            e.to_string(),
        )),
        Err(e @ IngestError::Unavailable) => {
            Err(Refusal::new(ErrorKind::Unavailable, None, e.to_string()))
        }
    }
}

fn content_type(headers: &HeaderMap) -> Option<Encoding> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next()?.trim();
    if media_type.eq_ignore_ascii_case(PROTOBUF) {
        Some(Encoding::Protobuf)
    } else if media_type.eq_ignore_ascii_case(JSON) {
        Some(Encoding::Json)
    } else {
        None
    }
}

enum ContentEncoding {
    Identity,
    Gzip,
    Other(String),
}

fn content_encoding(headers: &HeaderMap) -> ContentEncoding {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => ContentEncoding::Identity,
        Some(v) if v.is_empty() || v == "identity" => ContentEncoding::Identity,
        Some(v) if v == "gzip" || v == "x-gzip" => ContentEncoding::Gzip,
        Some(v) => ContentEncoding::Other(v),
    }
}

fn decode<R: Export>(body: &[u8], encoding: Encoding) -> Result<R, String> {
    super::body::decode(body, encoding == Encoding::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use recmeter_core::submit::Submitted;
    use recmeter_core::{
        ApplyOutcome, Arriving, Batch, Clock, IngestConfig, Submit, Submitter, Telemetry,
    };
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    /// A submit double: counts every record and point it is handed, and keeps the batches.
    #[derive(Debug)]
    struct Recorder {
        batches: Mutex<Vec<Batch>>,
        telemetry: Arc<Telemetry>,
        clock: Arc<Clock>,
    }

    impl Submit for Recorder {
        fn arriving(&self) -> Arriving {
            Arriving::default()
        }

        fn submit_batch(&self, batch: Batch, _: Arriving) -> Submitted<'_> {
            let accepted = (batch.records.len() + batch.points.len()) as u64;
            self.batches.lock().unwrap().push(batch);
            Box::pin(async move {
                Ok(ApplyOutcome {
                    accepted,
                    ..ApplyOutcome::default()
                })
            })
        }

        fn queue(&self, batch: Batch) -> recmeter_core::Result<recmeter_core::Answer> {
            let accepted = (batch.records.len() + batch.points.len()) as u64;
            self.batches.lock().unwrap().push(batch);
            Ok(Box::pin(async move {
                Ok(ApplyOutcome {
                    accepted,
                    ..ApplyOutcome::default()
                })
            }))
        }

        fn telemetry(&self) -> &Arc<Telemetry> {
            &self.telemetry
        }

        fn clock(&self) -> &Arc<Clock> {
            &self.clock
        }
    }

    /// An ingest path over a recording double, and the double to read it back.
    fn ingest() -> (Ingest, Arc<Recorder>) {
        let recorder = Arc::new(Recorder {
            batches: Mutex::default(),
            telemetry: Arc::default(),
            clock: Arc::new(Clock::System),
        });
        let ingest = Ingest::new(
            recorder.clone() as Submitter,
            &IngestConfig::default(),
            &recmeter_core::MetricsConfig::default(),
        );
        (ingest, recorder)
    }

    fn small_limit() -> ServeOptions {
        ServeOptions {
            max_body_bytes: 4096,
            token: None,
            max_spans_per_request: 65_536,
            max_points_per_request: 65_536,
            body_timeout: std::time::Duration::from_secs(10),
        }
    }

    fn router() -> Router {
        http_router(ingest().0, small_limit())
    }

    async fn post(content_type: &str, encoding: Option<&str>, body: Vec<u8>) -> StatusCode {
        post_to("/v1/traces", content_type, encoding, body).await
    }

    async fn post_to(
        path: &str,
        content_type: &str,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> StatusCode {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, content_type);
        if let Some(e) = encoding {
            request = request.header(header::CONTENT_ENCODING, e);
        }
        router()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn metrics_take_the_same_route_rules() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let send = |encoding: Option<&'static str>, body: Vec<u8>| {
            post_to("/v1/metrics", JSON, encoding, body)
        };
        assert_eq!(send(None, b"{}".to_vec()).await, StatusCode::OK);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(br#"{"resourceMetrics": []}"#).unwrap();
        assert_eq!(
            send(Some("gzip"), gz.finish().unwrap()).await,
            StatusCode::OK
        );
        assert_eq!(send(None, b"{".to_vec()).await, StatusCode::BAD_REQUEST);
        assert_eq!(
            send(None, vec![b' '; 5000]).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn answers_by_content_type_and_encoding() {
        assert_eq!(post(JSON, None, b"{}".to_vec()).await, StatusCode::OK);
        assert_eq!(post(PROTOBUF, None, Vec::new()).await, StatusCode::OK);
        assert_eq!(
            post("text/plain", None, b"x".to_vec()).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            post(JSON, None, b"{".to_vec()).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(PROTOBUF, None, vec![0x0a, 0xff]).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(JSON, Some("br"), b"{}".to_vec()).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            post(JSON, Some("gzip"), b"nope".to_vec()).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(JSON, None, vec![b' '; 5000]).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn gzip_protobuf_is_inflated_and_counted() {
        use flate2::{Compression, write::GzEncoder};
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        use std::io::Write;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![7; 16],
                        span_id: vec![8; 8],
                        name: "GET /".into(),
                        kind: 2,
                        start_time_unix_nano: now - 1_000_000,
                        end_time_unix_nano: now,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&request.encode_to_vec()).unwrap();
        let (ingest, handle) = ingest();
        let response = http_router(ingest, small_limit())
            .oneshot(
                Request::post("/v1/traces")
                    .header(header::CONTENT_TYPE, PROTOBUF)
                    .header(header::CONTENT_ENCODING, "gzip")
                    .body(Body::from(gz.finish().unwrap()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let batches = handle.batches.lock().unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].records.len(), 1);
        assert!(!batches[0].records[0].error);
        assert_eq!(handle.telemetry.spans_received(Transport::Http), 1);
    }

    #[tokio::test]
    async fn gzip_bomb_is_refused() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&vec![b' '; 1 << 20]).unwrap();
        let small = gz.finish().unwrap();
        assert!(small.len() < 4096);
        assert_eq!(
            post(JSON, Some("gzip"), small).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}

#[cfg(test)]
mod json_rules {
    use super::*;

    /// OTLP/JSON: lower- or upper-case hex ids, integer enums, int64 as string or number,
    /// unknown fields ignored at every level.
    #[test]
    fn otlp_json_rules() {
        let body = br#"{
          "resourceSpans": [{
            "resource": {"attributes": [
              {"key": "service.name", "value": {"stringValue": "svc", "futureField": 1}}
            ], "futureField": true},
            "scopeSpans": [{
              "spans": [
                {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                 "name": "a", "kind": 2, "startTimeUnixNano": 1000, "endTimeUnixNano": "2000",
                 "attributes": [{"key": "recs.count", "value": {"intValue": "7"}}],
                 "status": {"code": 2}, "somethingNew": {"nested": [1, 2]}},
                {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B175",
                 "name": "b", "kind": 2, "startTimeUnixNano": "1000", "endTimeUnixNano": 3000,
                 "attributes": [{"key": "recs.count", "value": {"intValue": 9}}]}
              ]
            }]
          }],
          "unknownTopLevel": "ignored"
        }"#;
        let request = decode(body, Encoding::Json).expect("decodes");
        let rules = super::super::SpanRules::new(&recmeter_core::IngestConfig::default());
        let converted = super::super::convert(&request, &rules);
        assert_eq!(converted.invalid, 0);
        let r = &converted.records;
        assert_eq!(r.len(), 2);
        assert_eq!(&*r[0].key.service, "svc");
        assert!(r[0].error);
        assert_eq!((r[0].duration_nanos, r[0].recommendations), (1000, 7));
        assert_eq!((r[1].duration_nanos, r[1].recommendations), (2000, 9));
    }
}
