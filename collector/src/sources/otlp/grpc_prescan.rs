//! The pre-scan for OTLP/gRPC: tonic decodes a call's message before any handler runs, so a
//! layer in front of it reads the call's one length-prefixed message, inflates it if it came
//! gzip-compressed (under `otlp.max_body_bytes`), and pre-scans it (see [`super::prescan`]). A
//! call over the limits is answered RESOURCE_EXHAUSTED without being decoded; the rest go on to
//! tonic with the message as read, inflated once (so tonic does not inflate it again).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tonic::Status;
use tower::{Layer, Service};

use super::body::{GunzipError, gunzip};
use super::config::ServeOptions;
use super::prescan;

const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Pre-scans export calls against `options`' limits.
#[derive(Clone)]
pub(super) struct PrescanLayer {
    pub options: ServeOptions,
}

impl<S> Layer<S> for PrescanLayer {
    type Service = Prescan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Prescan {
            inner,
            options: self.options.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Prescan<S> {
    inner: S,
    options: ServeOptions,
}

impl<S, ResBody> Service<Request<tonic::body::Body>> for Prescan<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        // The clone that was made ready goes with this call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let options = self.options.clone();
        Box::pin(async move {
            let traces = match request.uri().path() {
                TRACES => true,
                METRICS => false,
                _ => return inner.call(request).await,
            };
            // Nothing is read for a caller without the ingest token: the interceptor refuses it.
            if let Some(token) = &options.token {
                let presented = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if !presented.is_some_and(|v| token.matches_header(v)) {
                    return inner.call(request).await;
                }
            }
            match checked(request, &options, traces).await {
                Ok(request) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The call with its message read and inflated, or the status refusing it. Anything this does
/// not understand (no complete frame, an unknown compression, a corrupt gzip stream) goes on
/// unchanged for tonic to answer as it does.
async fn checked(
    request: Request<tonic::body::Body>,
    options: &ServeOptions,
    traces: bool,
) -> Result<Request<tonic::body::Body>, Status> {
    let limit = options.max_body_bytes;
    let (mut parts, body) = request.into_parts();
    let too_large = || {
        Status::resource_exhausted(format!(
            "the message is larger than otlp.max_body_bytes ({limit} bytes)"
        ))
    };
    let read = Limited::new(body, limit.saturating_add(5)).collect();
    let Ok(read) = tokio::time::timeout(options.body_timeout, read).await else {
        // INTERNAL, as for bytes tonic cannot decode: rewritten and counted the same way.
        return Err(Status::internal(format!(
            "the message did not arrive within {:?} (otlp.idle_timeout)",
            options.body_timeout
        )));
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => return Err(Status::cancelled(format!("cannot read the call: {e}"))),
    };
    let rebuild =
        |parts, bytes: Bytes| Request::from_parts(parts, tonic::body::Body::new(Full::new(bytes)));
    let Some((&[flag, a, b, c, d], message)) = bytes.split_first_chunk::<5>() else {
        return Ok(rebuild(parts, bytes));
    };
    let declared = u32::from_be_bytes([a, b, c, d]) as usize;
    if message.len() < declared {
        // Cut short: tonic refuses it without decoding anything.
        return Ok(rebuild(parts, bytes));
    }
    if message.len() > declared {
        // A second message (or bytes after the first) would be decoded by tonic unscanned. A
        // unary call carries one; INTERNAL is what tonic answers for bytes it cannot decode,
        // and the rewrite layer turns it into INVALID_ARGUMENT and counts it.
        return Err(Status::internal(
            "an Export call carries exactly one message",
        ));
    }
    let gzip = parts
        .headers
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let inflated = match (flag, gzip) {
        (0, _) => None,
        (1, true) => match gunzip(message, limit) {
            Ok(inflated) => Some(inflated),
            Err(GunzipError::TooLarge) => return Err(too_large()),
            Err(GunzipError::Corrupt(_)) => return Ok(rebuild(parts, bytes)),
        },
        _ => return Ok(rebuild(parts, bytes)),
    };
    let scanned = inflated.as_deref().unwrap_or(message);
    let scan = if traces {
        prescan::traces(scanned, options.max_spans_per_request)
    } else {
        prescan::metrics(scanned, options.max_points_per_request)
    };
    match scan {
        Err(e) if e.is_too_large() => return Err(Status::resource_exhausted(e.to_string())),
        // Malformed: tonic's decode says so, as INVALID_ARGUMENT after the rewrite layer.
        _ => {}
    }
    Ok(match inflated {
        None => rebuild(parts, bytes),
        Some(inflated) => {
            parts.headers.remove("grpc-encoding");
            let mut framed = BytesMut::with_capacity(5 + inflated.len());
            framed.put_u8(0);
            framed.put_u32(inflated.len() as u32);
            framed.extend_from_slice(&inflated);
            rebuild(parts, framed.freeze())
        }
    })
}
