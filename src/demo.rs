//! The demo workload: a synthetic recommendation platform that sends realistic spans through
//! the OpenTelemetry SDK's own OTLP exporters to recmeter's ports, so `/metrics` shows live
//! numbers within seconds. `recs-api` exports over gRPC from a Tokio task; `ranker` exports over
//! HTTP/protobuf from a plain thread, because the HTTP exporter's default client blocks.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use rand::Rng;
use tokio::sync::watch;

use recmeter_aggregator::Clock;

use crate::demo_platform::{Endpoint, RANKER, RECS_API, log_normal};
use crate::serve::Addresses;

/// Requests per batch and batches per second, per service.
const BATCH: usize = 50;
const INTERVAL: Duration = Duration::from_millis(250);

/// The built-in workload of `recmeter demo`.
#[derive(Debug, Default)]
pub struct Workload;

/// A running workload.
pub struct Running {
    grpc: tokio::task::JoinHandle<()>,
    http: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Workload {
    /// Starts sending to `addresses` until `shutdown` turns true or [`Running::stop`]. Spans
    /// end at `clock`'s now, so the demo also works under the test clock.
    pub fn start(
        self,
        addresses: Addresses,
        clock: Arc<Clock>,
        shutdown: watch::Receiver<bool>,
    ) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        tracing::info!(
            rate = BATCH as f64 / INTERVAL.as_secs_f64(),
            "Demo workload started: recs-api over OTLP/gRPC, ranker over OTLP/HTTP (spans per second each)."
        );
        let grpc = tokio::spawn(grpc_loop(addresses, clock.clone(), shutdown));
        let http = std::thread::spawn({
            let stop = stop.clone();
            move || http_loop(addresses, &clock, &stop)
        });
        Running { grpc, http, stop }
    }
}

impl Running {
    /// Stops both senders and waits for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.grpc.abort();
        let _ = self.grpc.await;
        let _ = tokio::task::spawn_blocking(move || self.http.join()).await;
    }
}

fn resource(service: &'static str) -> Resource {
    Resource::builder_empty()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("deployment.environment.name", "demo"),
            KeyValue::new("service.version", "1.4.2"),
        ])
        .build()
}

async fn grpc_loop(addresses: Addresses, clock: Arc<Clock>, mut shutdown: watch::Receiver<bool>) {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", addresses.otlp_grpc))
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build();
    let mut exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "Demo: cannot build the OTLP/gRPC exporter.");
            return;
        }
    };
    exporter.set_resource(&resource("recs-api"));
    let mut ticker = tokio::time::interval(INTERVAL);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let batch = synthetic_batch(&RECS_API, BATCH, clock.now());
        if let Err(e) = exporter.export(batch).await
            && !warned
        {
            tracing::warn!(error = %e, "Demo: OTLP/gRPC export failed.");
            warned = true;
        }
    }
}

fn http_loop(addresses: Addresses, clock: &Clock, stop: &AtomicBool) {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/traces", addresses.otlp_http))
        .build();
    let mut exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "Demo: cannot build the OTLP/HTTP exporter.");
            return;
        }
    };
    exporter.set_resource(&resource("ranker"));
    let mut warned = false;
    while !stop.load(Ordering::Acquire) {
        let batch = synthetic_batch(&RANKER, BATCH, clock.now());
        if let Err(e) = futures_executor::block_on(exporter.export(batch))
            && !warned
        {
            tracing::warn!(error = %e, "Demo: OTLP/HTTP export failed.");
            warned = true;
        }
        std::thread::sleep(INTERVAL);
    }
}

/// `n` server spans ending at `now`, spread over the endpoints, with log-normal latencies.
fn synthetic_batch(endpoints: &[Endpoint], n: usize, now: SystemTime) -> Vec<SpanData> {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            let endpoint = &endpoints[i % endpoints.len()];
            let seconds = log_normal(&mut rng, endpoint.median, endpoint.sigma).min(30.0);
            let failed = rng.random::<f64>() < endpoint.error_rate;
            let mut attributes = vec![
                KeyValue::new("http.route", endpoint.name),
                KeyValue::new("http.response.status_code", if failed { 503 } else { 200 }),
            ];
            if let Some((lo, hi)) = endpoint.recs {
                attributes.push(KeyValue::new("recs.count", rng.random_range(lo..=hi)));
            }
            SpanData {
                span_context: SpanContext::new(
                    TraceId::from_bytes(rng.random::<u128>().max(1).to_be_bytes()),
                    SpanId::from_bytes(rng.random::<u64>().max(1).to_be_bytes()),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Server,
                name: Cow::Borrowed(endpoint.name),
                start_time: now - Duration::from_secs_f64(seconds),
                end_time: now,
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: if failed {
                    Status::error("upstream unavailable")
                } else {
                    Status::Unset
                },
                instrumentation_scope: InstrumentationScope::builder("recmeter-demo").build(),
            }
        })
        .collect()
}
