//! The ingest hot path, per span: protobuf decode (`opentelemetry-proto`), conversion of spans
//! to request records, and counting them into the rollups; and the three together.
//! Run: `cargo bench --bench ingest`. Figures and machine in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use recmeter_aggregator::{Aggregator, AggregatorConfig, Clock, IngestConfig, Telemetry};
use recmeter_collector::sources::otlp::{SpanRules, convert, synthetic};

// The allocator the server runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SPANS_PER_REQUEST: usize = 100;
const SERIES: usize = 50;

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    let now_nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut rng = StdRng::seed_from_u64(7);
    let request = synthetic::request(&mut rng, now_nanos, SPANS_PER_REQUEST, SERIES);
    let bytes = request.encode_to_vec();
    let ingest = IngestConfig::default();
    let rules = SpanRules::new(&ingest);
    let clock = Arc::new(Clock::fake(now + Duration::from_millis(1)));
    let mut aggregator = Aggregator::new(
        &ingest,
        &AggregatorConfig::default(),
        clock,
        Arc::new(Telemetry::default()),
    )
    .unwrap_or_else(|e| panic!("aggregator: {e}"));
    let records = convert(&request, &rules).records;

    let mut group = c.benchmark_group("ingest_per_span");
    group.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    group.bench_function("decode_protobuf", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(bytes.as_slice())))
    });
    group.bench_function("convert", |b| {
        b.iter(|| convert(black_box(&request), &rules))
    });
    group.bench_function("aggregate", |b| {
        b.iter_batched(
            || records.clone(),
            |records| aggregator.apply(black_box(&records)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode_convert_aggregate", |b| {
        b.iter(|| {
            let Ok(request) = ExportTraceServiceRequest::decode(black_box(bytes.as_slice())) else {
                return;
            };
            let converted = convert(&request, &rules);
            aggregator.apply(&converted.records);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
