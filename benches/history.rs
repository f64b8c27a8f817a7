//! SQL over history in the object store: a 30-day P99 for 100 series from the hour files, and a
//! 3-day P99 for 100 series from the minute files, end to end through `QueryEngine::query` (the
//! engine behind `/api/v1/sql`) with nothing of those days in memory.
//!
//! The store is built the way `serve` builds it: 30 days of synthetic traffic (100 series, 60
//! requests per series every 10 minutes, log-normal latencies around 40 ms) applied to an
//! aggregator under a fake clock, checkpointed and compacted every hour with the default
//! retention (minutes for 3 days) and file target (32 MiB). The queries then run on an empty
//! aggregator whose clock stands 31 days later, so every row comes from the files.
//! Run: `cargo bench --bench history`. Figures and machine in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::AsArray;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recmeter_aggregator::config::{AggregatorConfig, IngestConfig, SqlConfig};
use recmeter_aggregator::durability::{Checkpointer, Layout};
use recmeter_aggregator::state::{lock, shared};
use recmeter_aggregator::store::history::History;
use recmeter_aggregator::store::object as store;
use recmeter_aggregator::{Aggregator, Clock, QueryEngine, RequestRecord, SeriesKey};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 100;
const DAYS: u64 = 30;
/// Requests per series per 10-minute step.
const PER_STEP: usize = 60;
/// Midnight UTC, day 20 600 since the epoch, where the history ends.
const END_SECS: u64 = 20_600 * 86_400;

fn aggregator(clock: &Arc<Clock>) -> Aggregator {
    Aggregator::new(
        &IngestConfig::default(),
        &AggregatorConfig::default(),
        clock.clone(),
        Arc::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Builds the store in `dir`; returns the history of its manifest in force, and how many
/// requests ended in the last 30 and the last 3 days of it.
fn build(dir: &std::path::Path, runtime: &tokio::runtime::Runtime) -> (Arc<History>, [u64; 2]) {
    let start = END_SECS - DAYS * 86_400;
    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(start)));
    let state = shared(aggregator(&clock));
    let store = store::open(dir.to_str().unwrap_or_else(|| panic!("path")), true)
        .unwrap_or_else(|e| panic!("{e}"));
    let history = Arc::new(History::new(store.objects.clone()));
    let checkpoints = Checkpointer::new(
        store,
        state.clone(),
        Layout {
            significant_digits: 2,
            dimensions: Vec::new(),
            thresholds: AggregatorConfig::default().threshold_columns(),
        },
        Arc::default(),
        Arc::default(),
        None,
        Box::new(|_| {}),
    )
    .with_history(history.clone());
    let keys: Vec<SeriesKey> = (0..SERIES)
        .map(|i| SeriesKey {
            service: Arc::from(format!("svc-{}", i % 10).as_str()),
            endpoint: Arc::from(format!("GET /v1/recommendations/{i}").as_str()),
            dimensions: Vec::new(),
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut sent = [0u64; 2];
    let since = [start, END_SECS - 3 * 86_400].map(|s| s * 1_000_000_000);
    let began = Instant::now();
    for step in 0..DAYS * 144 {
        let now = clock.now_nanos();
        let batch: Vec<RequestRecord> = keys
            .iter()
            .flat_map(|key| std::iter::repeat_n(key, PER_STEP))
            .map(|key| {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let z =
                    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos();
                RequestRecord {
                    key: key.clone(),
                    end_unix_nanos: now - rng.random_range(0..600_000_000_000u64),
                    duration_nanos: (0.040 * (0.8 * z).exp() * 1e9) as u64,
                    error: rng.random::<f64>() < 0.001,
                    recommendations: 10,
                }
            })
            .collect();
        for r in &batch {
            for (n, from) in sent.iter_mut().zip(since) {
                *n += u64::from(r.end_unix_nanos >= from);
            }
        }
        lock(&state).apply(&batch);
        clock.advance(Duration::from_secs(600));
        if step % 6 == 5 {
            runtime
                .block_on(async {
                    checkpoints.checkpoint().await?;
                    checkpoints.compact().await
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let files = |table: &str| {
        let mut found = (0, 0);
        let days = std::fs::read_dir(dir.join(table)).unwrap_or_else(|e| panic!("{e}"));
        for day in days.flatten() {
            for file in std::fs::read_dir(day.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                found.0 += 1;
                found.1 += file.metadata().map_or(0, |m| m.len());
            }
        }
        found
    };
    let (minutes, hours) = (files("minutes"), files("hours"));
    eprintln!(
        "built {DAYS} days of history for {SERIES} series in {:.1} s: {} minute files \
         ({} MiB), {} hour files ({} MiB)",
        began.elapsed().as_secs_f64(),
        minutes.0,
        minutes.1 >> 20,
        hours.0,
        hours.1 >> 20
    );
    (history, sent)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("recmeter-bench-history-{}", std::process::id()));
    let (history, sent) = build(&dir, &runtime);
    // 31 days on, memory holds none of the 30 days; the queries name their days explicitly.
    let later = Arc::new(Clock::fake(
        UNIX_EPOCH + Duration::from_secs(END_SECS + 31 * 86_400),
    ));
    let config = SqlConfig {
        target_partitions: 2,
        ..SqlConfig::default()
    };
    let engine = QueryEngine::new(shared(aggregator(&later)), &config)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_history(history);
    let mut group = c.benchmark_group("history");
    group.sample_size(10);
    let end = END_SECS as i64 * 1_000_000_000;
    for (name, table, column, days, sent) in [
        (
            "p99_30d_100_series_hour_files",
            "latency_hours",
            "hour",
            30,
            sent[0],
        ),
        (
            "p99_3d_100_series_minute_files",
            "latency_minutes",
            "minute",
            3,
            sent[1],
        ),
    ] {
        let from = end - days * 86_400 * 1_000_000_000;
        let sql = format!(
            "SELECT service, endpoint, sum(requests) AS requests, \
             hdr_quantile(hdr_merge(hdr), 0.99) AS p99 FROM {table} \
             WHERE {column} >= to_timestamp_nanos({from}) AND {column} < to_timestamp_nanos({end}) \
             GROUP BY 1, 2"
        );
        let out = runtime
            .block_on(engine.query(&sql))
            .unwrap_or_else(|e| panic!("{e}"));
        let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, SERIES, "{name}");
        // Every request of those days, read from the files.
        let requests: u64 = out
            .batches
            .iter()
            .flat_map(|b| {
                b.column(2)
                    .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                    .values()
                    .to_vec()
            })
            .sum();
        assert_eq!(requests, sent, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(engine.query(&sql))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
