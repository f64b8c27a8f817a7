//! The Prometheus query API at the series cap over a day of minutes: the two figures of
//! issue 30.
//!
//! The store is built the way `serve` builds it, through the aggregator under a fake clock with
//! a checkpoint and a compaction every hour (default retention: minutes for 3 days): 10 001
//! series (10 000 and the overflow series) each get one request a minute for 24 hours and 10
//! minutes (14.5 million minute rows; the last 3 hours in memory, the rest in the store's
//! minute files).
//! Latencies are log-normal around 40 ms, 0.1% of requests fail.
//!
//! Then, through `QueryApi` (the engine behind `/api/v1/query_range`, without HTTP), each query
//! runs `BENCH_RUNS` times (default 5) and the bench prints every time and the median:
//! - `sum by (service) (rate(recs_requests_total[5m]))` over the 24 hours at a 60 s step, over
//!   every series (target ≤ 500 ms); the answer is checked: every series gets a request a
//!   minute, so each step's sum over services is 10 001 / 60 per second;
//! - the exact P99 panel query, `histogram_quantile(0.99, sum by (le, service)
//!   (rate(recs_latency_seconds_bucket[5m])))`, over the 24 hours at a 5 minute step for 100
//!   series (target ≤ 1 s).
//!
//! Run: `cargo bench --bench promql`. Figures and machine in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recmeter_aggregator::durability::{Checkpointer, Layout};
use recmeter_aggregator::state::lock;
use recmeter_aggregator::store::history::History;
use recmeter_aggregator::store::object as store;
use recmeter_aggregator::{
    Aggregator, AggregatorConfig, AggregatorHandle, Clock, IngestConfig, QueryEngine,
    RequestRecord, SeriesKey, SqlConfig,
};
use recmeter_benches::{knob, rss_mib};
use recmeter_exporter::promql::{QueryApi, QueryConfig, Ring, Rollups};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The series besides the overflow one (`BENCH_SERIES`, for profiling at a smaller scale; the
/// figures are of the default).
const SERIES: usize = 10_000;
/// A day of minutes, and ten more before it so the queries' first ranges have their minutes.
const MINUTES: u64 = 24 * 60 + 10;
/// An hour boundary, where the history starts.
const START_SECS: u64 = 1_800_000_000 / 3_600 * 3_600;

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
    let aggregator_config = AggregatorConfig::default();
    let aggregator = Aggregator::new(
        &IngestConfig::default(),
        &aggregator_config,
        clock.clone(),
        Arc::default(),
    )
    .unwrap_or_else(|e| panic!("aggregator: {e}"));
    let (handle, _worker) = runtime
        .block_on(async { AggregatorHandle::spawn(aggregator, 1024, Arc::default(), None, false) });
    let state = handle.state().clone();
    let dir = std::env::temp_dir().join(format!("recmeter-bench-promql-{}", std::process::id()));
    let store = store::open(dir.to_str().unwrap_or_else(|| panic!("path")), true)
        .unwrap_or_else(|e| panic!("{e}"));
    let history = Arc::new(History::new(store.objects.clone()));
    let checkpoints = Checkpointer::new(
        store,
        state.clone(),
        Layout {
            significant_digits: aggregator_config.significant_digits,
            dimensions: Vec::new(),
            thresholds: aggregator_config.threshold_columns(),
        },
        Arc::default(),
        Arc::default(),
        None,
        Box::new(|_| {}),
    )
    .with_history(history.clone());
    // As in the SLO bench: 20 services fill the slots open to endpoints, later services take
    // the slots kept for new ones, the last folds into overflow.
    let reserve = aggregator_config.series_reserve();
    let series = knob("BENCH_SERIES", SERIES);
    let keys: Vec<SeriesKey> = (0..=series)
        .map(|i| SeriesKey {
            service: Arc::from(if i < series.saturating_sub(reserve) {
                format!("svc-{}", i % 20)
            } else {
                format!("late-{i}")
            }),
            endpoint: Arc::from(format!("GET /v1/recommendations/{i}").as_str()),
            dimensions: Vec::new(),
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(30);
    let began = Instant::now();
    for m in 0..MINUTES {
        clock.advance(Duration::from_secs(60));
        let now = clock.now_nanos();
        let batch: Vec<RequestRecord> = keys
            .iter()
            .map(|key| {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let z =
                    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos();
                RequestRecord {
                    key: key.clone(),
                    end_unix_nanos: now - rng.random_range(0..60_000_000_000),
                    duration_nanos: (0.040 * (0.8 * z).exp() * 1e9) as u64,
                    error: rng.random::<f64>() < 0.001,
                    recommendations: 10,
                }
            })
            .collect();
        let accepted = lock(&state).apply(&batch).accepted;
        assert_eq!(accepted as usize, batch.len(), "every request accepted");
        if m % 60 == 59 {
            runtime
                .block_on(async {
                    checkpoints.checkpoint().await?;
                    checkpoints.compact().await
                })
                .unwrap_or_else(|e| panic!("checkpoint: {e}"));
            eprintln!(
                "{} hours built in {:.0} s; rss {:.0} MiB",
                (m + 1) / 60,
                began.elapsed().as_secs_f64(),
                rss_mib("VmRSS:")
            );
        }
    }
    // 30 s into the next minute.
    clock.advance(Duration::from_secs(30));
    let sql = SqlConfig {
        target_partitions: 2,
        ..SqlConfig::default()
    };
    let engine = Arc::new(
        QueryEngine::new(state.clone(), &sql)
            .unwrap_or_else(|e| panic!("engine: {e}"))
            .with_history(history.clone()),
    );
    let api = QueryApi::new(
        QueryConfig::default(),
        Rollups {
            engine,
            aggregator: handle.clone(),
        },
        Arc::new(Ring::default()),
    );
    let now_ms = (clock.now_nanos() / 1_000_000) as i64;
    // The last whole minute, and 24 hours before it.
    let end = now_ms / 60_000 * 60_000;
    let start = end - 24 * 3_600_000;
    let runs = knob("BENCH_RUNS", 5);

    // What reading the rows and turning them into samples takes alone: the same series and
    // range, evaluated at two steps only.
    let read = "count(recs_requests_total)";
    let t = Instant::now();
    runtime
        .block_on(api.range_query(read, (start, end, 24 * 3_600_000), None))
        .unwrap_or_else(|e| panic!("{read}: {e}"));
    println!(
        "{read} at a 24 h step (the rows read, little evaluated): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let rate = "sum by (service) (rate(recs_requests_total[5m]))";
    let mut times = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let (matrix, _) = runtime
            .block_on(api.range_query(rate, (start, end, 60_000), None))
            .unwrap_or_else(|e| panic!("{rate}: {e}"));
        let took = t.elapsed().as_secs_f64();
        // Every series has a request a minute: at a step 12 hours in, the sum over services is
        // 10 001 / 60 per second.
        let middle = start + 12 * 3_600_000;
        let total: f64 = matrix
            .iter()
            .filter_map(|s| s.samples.iter().find(|p| p.t == middle).map(|p| p.v))
            .sum();
        assert!(
            (total - keys.len() as f64 / 60.0).abs() < 1e-6 * total,
            "{rate}: {total} per second at the middle step"
        );
        println!(
            "run {run}: {rate} over 24 h at 60 s, {} series in: {:.1} ms ({} answer series)",
            keys.len(),
            took * 1e3,
            matrix.len()
        );
        times.push(took);
    }
    println!("median {:.1} ms (target 500 ms)", median(&mut times) * 1e3);

    // 100 series: endpoints 0 to 99, over the 20 services.
    let p99 = r#"histogram_quantile(0.99, sum by (le, service) (rate(recs_latency_seconds_bucket{endpoint=~"GET /v1/recommendations/[0-9]?[0-9]"}[5m])))"#;
    let mut times = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let (matrix, _) = runtime
            .block_on(api.range_query(p99, (start, end, 300_000), None))
            .unwrap_or_else(|e| panic!("{p99}: {e}"));
        let took = t.elapsed().as_secs_f64();
        assert_eq!(matrix.len(), 20, "one answer per service");
        assert!(
            matrix.iter().all(|s| s.samples.len() == 289),
            "every 5-minute step answered"
        );
        println!(
            "run {run}: exact P99 by service over 24 h at 5 min, 100 series: {:.1} ms",
            took * 1e3
        );
        times.push(took);
    }
    println!("median {:.1} ms (target 1 s)", median(&mut times) * 1e3);
    println!(
        "built in {:.0} s; peak rss {:.0} MiB",
        began.elapsed().as_secs_f64(),
        rss_mib("VmHWM:")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
