//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`, gzip accepted.
//! tonic decodes the message before our handler runs and answers bad ones itself: INTERNAL for
//! undecodable bytes, OUT_OF_RANGE for a message over the size limit, RESOURCE_EXHAUSTED for
//! one that inflates past it. A layer around the service turns those into the codes OTLP
//! clients should see (INVALID_ARGUMENT; RESOURCE_EXHAUSTED, because OUT_OF_RANGE is retryable
//! and a client would resend the same message forever) and counts them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use recmeter_core::Arriving;
use recmeter_core::connection::InFlight;
use recmeter_core::telemetry::{RejectReason, Transport};
use recmeter_core::{BearerToken, ErrorKind, Telemetry};
use std::sync::Arc;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tower::util::MapRequestLayer;
use tower::{Layer, Service};

use super::Ingest;
use super::config::ServeOptions;
use super::grpc_prescan::PrescanLayer;
use super::metrics::MetricIngest;
use super::traces::{IngestError, TraceIngest};
use crate::error::{Error, Result};

struct GrpcTraces {
    ingest: TraceIngest,
}

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        mut request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        let telemetry = self.ingest.aggregator().telemetry();
        let arriving = arriving(&mut request);
        let result = self
            .ingest
            .export(request.into_inner(), Transport::Grpc, arriving)
            .await;
        answer(result, telemetry)
    }
}

struct GrpcMetrics {
    ingest: MetricIngest,
    telemetry: Arc<Telemetry>,
}

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        mut request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        let arriving = arriving(&mut request);
        let result = self
            .ingest
            .export(request.into_inner(), Transport::Grpc, arriving)
            .await;
        answer(result, &self.telemetry)
    }
}

/// The call's place among those on their way to the WAL, which the layer put in its
/// extensions; it goes on with the decoded message.
fn arriving<T>(request: &mut tonic::Request<T>) -> Arriving {
    request
        .extensions_mut()
        .remove::<Arriving>()
        .unwrap_or_default()
}

/// The gRPC answer to an export: OK, or UNAVAILABLE (counted when it is backpressure).
fn answer<T>(
    result: Result<T, IngestError>,
    telemetry: &Telemetry,
) -> Result<tonic::Response<T>, Status> {
    match result {
        Ok(response) => Ok(tonic::Response::new(response)),
        Err(IngestError::Backpressure) => {
            telemetry.add_request_rejected(Transport::Grpc, RejectReason::Backpressure);
            Err(unavailable("recmeter is busy; retry later"))
        }
        Err(e @ IngestError::Storage(_)) => {
            telemetry.add_request_rejected(Transport::Grpc, RejectReason::Storage);
            Err(unavailable(&e.to_string()))
        }
        Err(e @ IngestError::Unavailable) => Err(unavailable(&e.to_string())),
    }
}

fn check_token(
    token: Option<&BearerToken>,
    telemetry: &Telemetry,
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, Status> {
    let Some(token) = token else {
        return Ok(request);
    };
    let presented = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if presented.is_some_and(|v| token.matches_header(v)) {
        Ok(request)
    } else {
        telemetry.add_request_rejected(Transport::Grpc, RejectReason::Auth);
        Err(Status::unauthenticated(
            "missing or wrong bearer token (metadata `authorization: Bearer <token>`)",
        ))
    }
}

/// UNAVAILABLE with a `RetryInfo` detail, so OTLP clients retry after a pause.
fn unavailable(message: &str) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1)));
    Status::with_error_details(Code::Unavailable, message, details)
}

/// Serves OTLP/gRPC on the connections of `incoming` until `shutdown` completes, then drains
/// in-flight calls.
pub async fn serve_grpc<I, IO>(
    incoming: I,
    ingest: Ingest,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()>
where
    I: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected<ConnectInfo = InFlight>
        + Unpin
        + Send
        + 'static,
{
    let telemetry = ingest.traces.aggregator().telemetry().clone();
    let aggregator = ingest.traces.aggregator().clone();
    let traces = TraceServiceServer::new(GrpcTraces {
        ingest: ingest.traces,
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Gzip)
    .max_decoding_message_size(options.max_body_bytes);
    let metrics = MetricsServiceServer::new(GrpcMetrics {
        ingest: ingest.metrics,
        telemetry: telemetry.clone(),
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Gzip)
    .max_decoding_message_size(options.max_body_bytes);
    let prescan = PrescanLayer {
        options: options.clone(),
    };
    // The token is checked on the headers, before the message is read or decoded.
    let check = {
        let telemetry = telemetry.clone();
        let token = options.token;
        move |request: tonic::Request<()>| check_token(token.as_ref(), &telemetry, request)
    };
    let traces = InterceptedService::new(traces, check.clone());
    let metrics = InterceptedService::new(metrics, check);
    tonic::transport::Server::builder()
        .layer(StatusRewriteLayer { telemetry })
        // A call is on its way to the WAL from its headers on, while tonic reads and decodes
        // the message (see `Arriving`); the handler hands its place on with the spans.
        .layer(MapRequestLayer::new(
            move |mut request: Request<tonic::body::Body>| {
                request.extensions_mut().insert(aggregator.arriving());
                request
            },
        ))
        // Inside the rewrite layer, which counts its refusals as too_large.
        .layer(prescan)
        .add_service(traces)
        .add_service(metrics)
        // The connections come with TCP_NODELAY set: without it small HTTP/2 frames (window
        // updates, answers) wait on Nagle and delayed ACKs, which caps a client at a few
        // hundred requests per second.
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Serve {
            server: "OTLP/gRPC",
            message: e.to_string(),
        })
}

/// Rewrites tonic's own answers to bad requests into the codes OTLP clients should see.
#[derive(Clone)]
struct StatusRewriteLayer {
    telemetry: Arc<Telemetry>,
}

impl<S> Layer<S> for StatusRewriteLayer {
    type Service = StatusRewrite<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusRewrite {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

#[derive(Clone)]
struct StatusRewrite<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S, B, ResBody> Service<Request<B>> for StatusRewrite<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let telemetry = self.telemetry.clone();
        // The call is in flight on its connection until answered: the listener closes no
        // connection with a call in flight.
        let in_flight = request.extensions().get::<InFlight>().map(InFlight::enter);
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            drop(in_flight);
            let headers = response.headers_mut();
            let code = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(Code::from_i32);
            // The handler itself only ever answers OK or UNAVAILABLE; these codes come from
            // tonic's decoding of the request.
            let rewrite = match code {
                Some(Code::Internal) => Some((ErrorKind::BadRequest, RejectReason::Decode)),
                Some(Code::OutOfRange | Code::ResourceExhausted) => {
                    Some((ErrorKind::PayloadTooLarge, RejectReason::TooLarge))
                }
                _ => None,
            };
            if let Some((kind, reason)) = rewrite {
                telemetry.add_request_rejected(Transport::Grpc, reason);
                headers.insert("grpc-status", HeaderValue::from(kind.grpc_code()));
            }
            Ok(response)
        })
    }
}
