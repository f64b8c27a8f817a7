//! SQL over rollups, end to end through `ctx.sql(…)` on 2 target partitions at 2 significant
//! digits, each run scanning generated rows through the live tables' scan: a 1-day P99 for 100
//! series over one day of minute rows (144 000 blobs), and a 30-day P99 for 100 series over hour
//! rows (72 000 blobs). Also the decode choice of ADR 007: the hdrhistogram crate's
//! `Deserializer` + `add` against decoding V2 straight into one counts array, over the same
//! 144 000 minute blobs.
//! Run: `cargo bench --bench sql`. Figures and machine in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recmeter_aggregator::SeriesKey;
use recmeter_aggregator::counts::Counts;
use recmeter_aggregator::histogram;
use recmeter_aggregator::sql::functions::{self, TIME_ZONE};
use recmeter_aggregator::sql::table_name;
use recmeter_aggregator::sql::tables::{PreparedRows, RollupTable};
use recmeter_aggregator::state::{Row, RowCounts, Source, Table};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 100;
/// A minute index on an hour boundary.
const NOW_MINUTE: u64 = 30_000_000;

/// One histogram of `n` log-normal latencies around 40 ms with a heavy tail.
fn blob(rng: &mut StdRng, n: usize) -> (RowCounts, Bytes) {
    let mut h = histogram::new_histogram(2).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos();
        let v = (0.040 * (0.8 * z).exp() * 1e9) as u64;
        histogram::record(&mut h, histogram::clamp(v).0);
    }
    let counts = RowCounts {
        requests: n as u64,
        ..RowCounts::default()
    };
    (
        counts,
        Bytes::from(histogram::encode(&h).unwrap_or_else(|e| panic!("{e}"))),
    )
}

/// `SERIES` series with one row per step of `step` minutes, `periods` steps back from now.
fn table(periods: u64, step: u64, per_row: usize) -> Arc<PreparedRows> {
    let mut rng = StdRng::seed_from_u64(42);
    let series = (0..SERIES)
        .map(|i| {
            let key = SeriesKey {
                service: Arc::from(format!("svc-{}", i % 10).as_str()),
                endpoint: Arc::from(format!("GET /v1/recommendations/{i}").as_str()),
                dimensions: Vec::new(),
            };
            let rows = (0..periods)
                .map(|p| {
                    let (counts, hdr) = blob(&mut rng, per_row);
                    (NOW_MINUTE - step * (periods - p), Row { counts, hdr })
                })
                .collect();
            (key, Source::Span, rows)
        })
        .collect();
    Arc::new(PreparedRows::new(
        Vec::new(),
        vec!["requests_le_0_2".to_owned()],
        series,
    ))
}

fn context(table: Table, rows: &Arc<PreparedRows>) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(2);
    config.options_mut().execution.time_zone = Some(TIME_ZONE.to_owned());
    let ctx = SessionContext::new_with_config(config);
    functions::register(&ctx, NOW_MINUTE * 60_000_000_000);
    let name = table_name(table);
    let provider = RollupTable::new(table, rows.clone());
    ctx.register_table(name, Arc::new(provider))
        .unwrap_or_else(|e| panic!("{e}"));
    ctx
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let minutes = table(1_440, 1, 50);
    let hours = table(720, 60, 3_000);
    let blobs: Vec<Bytes> = minutes
        .series()
        .iter()
        .flat_map(|(_, _, rows)| rows.iter().map(|(_, r)| r.hdr.clone()))
        .collect();
    assert_eq!(blobs.len(), 144_000);

    let mut group = c.benchmark_group("sql");
    group.sample_size(10);
    for (name, table, rows, window) in [
        (
            "p99_1d_100_series_minutes",
            Table::Minutes,
            &minutes,
            "1 day",
        ),
        ("p99_30d_100_series_hours", Table::Hours, &hours, "30 days"),
    ] {
        let ctx = context(table, rows);
        let column = if table == Table::Minutes {
            "minute"
        } else {
            "hour"
        };
        let from = if table == Table::Minutes {
            "latency_minutes"
        } else {
            "latency_hours"
        };
        let sql = format!(
            "SELECT service, endpoint, hdr_quantile(hdr_merge(hdr), 0.99) AS p99 FROM {from} \
             WHERE {column} >= now() - INTERVAL '{window}' GROUP BY 1, 2"
        );
        let check = runtime
            .block_on(async { ctx.sql(&sql).await?.collect().await })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check.iter().map(|b| b.num_rows()).sum::<usize>(), SERIES);
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(async { ctx.sql(&sql).await?.collect().await })
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    group.bench_function("decode_144k_minute_blobs_stock_deserializer", |b| {
        b.iter(|| {
            let mut acc = histogram::new_histogram(2).unwrap_or_else(|e| panic!("{e}"));
            let mut deserializer = hdrhistogram::serialization::Deserializer::new();
            for blob in &blobs {
                let h: hdrhistogram::Histogram<u64> = deserializer
                    .deserialize(&mut blob.as_ref())
                    .unwrap_or_else(|e| panic!("{e:?}"));
                acc.add(&h).unwrap_or_else(|e| panic!("{e:?}"));
            }
            black_box(acc.len())
        })
    });
    group.bench_function("decode_144k_minute_blobs_into_counts", |b| {
        b.iter(|| {
            let mut acc = Counts::new();
            for blob in &blobs {
                acc.add_encoded(blob).unwrap_or_else(|e| panic!("{e}"));
            }
            black_box(acc.total())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
