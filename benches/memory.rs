//! Memory and `/metrics` at the series cap: 10 000 series plus the overflow series, each with 30
//! requests a minute, through the fake clock for 3 hours (every minute of the 3 h kept in
//! memory), then 21 more hours (a day of history: 3 h of minutes, hours before), ending 30 s
//! into minute 58 of an hour with traffic in the open minute. Prints resident memory after each
//! phase. Then, as `recmeter serve` does before it reports ready, merges the 1d window's final
//! hours (`QueryEngine::prepare`, ADR 008; with history in memory only, `serve` starts with
//! none to merge, so this matters once history is restored from storage), and renders
//! `/metrics` through the same exposition providers and encoding as the endpoint (windows 1m,
//! 5m, 1h and 1d through the SQL engine, self-telemetry, then the text exposition) as a
//! scraper would see it, with traffic in between (untimed, so every open minute is encoded
//! again, as between real scrapes):
//! - once at minute 58;
//! - nine times (`BENCH_RENDERS`) 30 s into minute 59, the dearest instant for the 1d window
//!   (23 whole hours and 59 minutes); the first of them moves the kept hours on itself, since
//!   the window's first hour moved, as a scrape does that comes before the service's
//!   once-a-second `prepare` has (the worst case);
//! - once 30 s into minute 0, where an hour becomes final and the render moves the kept hours
//!   on again; it is also the dearest instant for the minute-exact windows, which read their
//!   minutes before the first ten-minute block as minutes (9 for the 1h window, 4 for the 5m
//!   window; ADR 009).
//!
//! It prints each time, the median and the slowest render, and the longest wait for the state
//! lock (what ingest feels) during the renders. `BENCH_EXPLAIN=1` also prints `EXPLAIN ANALYZE`
//! of the window query.
//! Run: `cargo bench --bench memory`. Figures and machine in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recmeter_aggregator::state::{SharedState, lock};
use recmeter_aggregator::{
    Aggregator, AggregatorConfig, AggregatorHandle, Clock, IngestConfig, QueryEngine,
    RequestRecord, SeriesKey, SqlConfig, Telemetry, Window,
};
use recmeter_benches::{knob, rss_mib};
use recmeter_exporter::api::{METRICS_WINDOWS, default_providers};
use recmeter_exporter::prometheus::{Format, Provider, render_parts};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 10_000;
/// Requests per series per minute. `BENCH_PER_MINUTE` and `BENCH_PARTITIONS` (default: one per
/// core) shorten or vary a run while investigating; the recorded figures use the defaults.
const PER_MINUTE: usize = 30;

/// A request per series ending within the second before now, as between two scrapes.
fn one_request_each(state: &SharedState, clock: &Clock, keys: &[SeriesKey], rng: &mut StdRng) {
    let mut aggregator = lock(state);
    let now = clock.now_nanos();
    let records: Vec<RequestRecord> = keys
        .iter()
        .map(|key| RequestRecord {
            key: key.clone(),
            end_unix_nanos: now - rng.random_range(0..1_000_000_000u64),
            duration_nanos: rng.random_range(5_000_000..200_000_000),
            error: false,
            recommendations: 20,
        })
        .collect();
    aggregator.apply(&records);
}

/// Renders `/metrics` as the endpoint does (each provider read in order: the windows through
/// the SQL engine, then self-telemetry; then the text exposition), prints what it took and
/// returns the seconds.
fn render_once(
    what: &str,
    runtime: &tokio::runtime::Runtime,
    providers: &[Arc<dyn Provider>],
) -> f64 {
    let t = Instant::now();
    let parts = runtime.block_on(async {
        let mut parts = Vec::with_capacity(providers.len());
        for provider in providers {
            parts.push(
                provider
                    .read()
                    .await
                    .unwrap_or_else(|e| panic!("provider: {e:?}")),
            );
        }
        parts
    });
    let merged = t.elapsed();
    let body = render_parts(parts, Format::Text004).unwrap_or_else(|e| panic!("{e:?}"));
    let total = t.elapsed();
    println!(
        "/metrics {what}: {:.1} MB: {:.2} s ({:.2} s read, {:.2} s text); rss {:.0} MiB, peak {:.0} MiB",
        body.len() as f64 / 1e6,
        total.as_secs_f64(),
        merged.as_secs_f64(),
        (total - merged).as_secs_f64(),
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:")
    );
    total.as_secs_f64()
}

fn main() {
    // The history ends 30 s into minute 58 of an hour; the renders run in minute 59 (the
    // dearest instant for the 1d window: 23 whole hours and 59 minutes) and minute 0.
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + 58 * 60 + 30);
    let clock = Arc::new(Clock::fake(start));
    let telemetry = Arc::new(Telemetry::default());
    let mut aggregator = Aggregator::new(
        &IngestConfig::default(),
        &AggregatorConfig::default(),
        clock.clone(),
        telemetry.clone(),
    )
    .unwrap_or_else(|e| panic!("aggregator: {e}"));
    // One more than the cap: 20 services fill the slots open to endpoints, 10 services that
    // start later take the slots kept for new services, and the last series folds into the
    // global overflow series.
    let reserve = AggregatorConfig::default().series_reserve();
    let keys: Vec<SeriesKey> = (0..=SERIES)
        .map(|i| SeriesKey {
            service: Arc::from(if i < SERIES - reserve {
                format!("svc-{}", i % 20)
            } else {
                format!("late-{i}")
            }),
            endpoint: Arc::from(format!("GET /v1/recommendations/{i}").as_str()),
            dimensions: Vec::new(),
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    let per_minute = knob("BENCH_PER_MINUTE", PER_MINUTE);
    println!("series {SERIES}, {per_minute} requests per series per minute");
    println!("start: rss {:.0} MiB", rss_mib("VmRSS:"));
    let mut batch = Vec::with_capacity(per_minute);
    for (phase, minutes) in [
        ("3 h of minutes", 180),
        ("21 more hours (a day of history)", 21 * 60),
    ] {
        let t = Instant::now();
        for _ in 0..minutes {
            let now = clock.now_nanos();
            for key in &keys {
                batch.clear();
                for _ in 0..per_minute {
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let z = (-2.0 * u1.ln()).sqrt()
                        * (std::f64::consts::TAU * rng.random::<f64>()).cos();
                    batch.push(RequestRecord {
                        key: key.clone(),
                        end_unix_nanos: now - rng.random_range(0..1_000_000_000u64),
                        duration_nanos: (0.040 * (0.6 * z).exp() * 1e9) as u64,
                        error: false,
                        recommendations: 20,
                    });
                }
                aggregator.apply(&batch);
            }
            clock.advance(Duration::from_secs(60));
        }
        println!(
            "after {phase}: rss {:.0} MiB, peak {:.0} MiB ({:.1} s)",
            rss_mib("VmRSS:"),
            rss_mib("VmHWM:"),
            t.elapsed().as_secs_f64()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    // The aggregator as `serve` runs it, for the self-telemetry provider.
    let (handle, _worker) = runtime
        .block_on(async { AggregatorHandle::spawn(aggregator, 1024, Arc::default(), None, false) });
    let state = handle.state().clone();
    let sql = SqlConfig {
        target_partitions: knob("BENCH_PARTITIONS", 0),
        ..SqlConfig::default()
    };
    let engine =
        Arc::new(QueryEngine::new(state.clone(), &sql).unwrap_or_else(|e| panic!("engine: {e}")));
    let providers = default_providers(&handle, &engine);
    // Traffic in the open minute too, as at any real scrape.
    for _ in 0..per_minute {
        one_request_each(&state, &clock, &keys, &mut rng);
    }
    // As `recmeter serve` does before it reports ready: the long windows' final hours merged
    // (ADR 008).
    let t = Instant::now();
    runtime
        .block_on(engine.prepare(&METRICS_WINDOWS))
        .unwrap_or_else(|e| panic!("prepare: {e}"));
    let prepared = t.elapsed().as_secs_f64();
    println!(
        "final hours merged before ready: {prepared:.2} s; rss {:.0} MiB, peak {:.0} MiB",
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:")
    );
    // What ingest would feel: the longest wait for the state lock while renders run.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                drop(lock(&state));
                longest = longest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            longest
        })
    };
    let first = render_once("first, minute 58", &runtime, &providers);
    // On to minute 59 (the 1d window's first hour moves: the kept hours move on), a minute of
    // traffic on the way, then renders with a request per series between them, as in service:
    // every open minute changes, so each render encodes them all again. The first render moves
    // the kept hours on itself, as a scrape does that comes before the service's once-a-second
    // `prepare` has (the worst case).
    clock.advance(Duration::from_secs(60));
    for _ in 0..per_minute {
        one_request_each(&state, &clock, &keys, &mut rng);
    }
    let renders = knob("BENCH_RENDERS", 9);
    let mut times = Vec::new();
    for i in 0..renders {
        if i > 0 {
            one_request_each(&state, &clock, &keys, &mut rng);
        }
        let what = if i == 0 {
            "minute 59, kept hours moved on"
        } else {
            "minute 59"
        };
        times.push(render_once(what, &runtime, &providers));
    }
    // On to minute 0 (an hour becomes final: the kept hours move on again).
    clock.advance(Duration::from_secs(60));
    for _ in 0..per_minute {
        one_request_each(&state, &clock, &keys, &mut rng);
    }
    times.push(render_once(
        "minute 0, kept hours moved on",
        &runtime,
        &providers,
    ));
    stop.store(true, Ordering::Relaxed);
    let longest = prober
        .join()
        .unwrap_or_else(|_| panic!("lock prober panicked"));
    times.push(first);
    let slowest = times.iter().copied().fold(0.0, f64::max);
    times.sort_by(f64::total_cmp);
    println!(
        "/metrics, {} renders: median {:.2} s, slowest {slowest:.2} s; final hours merged before ready {prepared:.2} s; peak rss {:.0} MiB",
        times.len(),
        times[times.len() / 2],
        rss_mib("VmHWM:")
    );
    if std::env::var_os("BENCH_EXPLAIN").is_some() {
        explain(&runtime, &engine, clock.now_nanos());
    }
    println!(
        "longest wait for the state lock during the renders: {:.0} ms",
        longest.as_secs_f64() * 1e3
    );
}

/// `EXPLAIN ANALYZE` of the window query `/metrics` runs, written out in SQL, for where the
/// time goes.
fn explain(runtime: &tokio::runtime::Runtime, engine: &QueryEngine, now: u64) {
    let open = now / 60_000_000_000;
    let hour = open - open % 60;
    let start = |w: Window| *w.minute_range(now).start();
    let at = |m: u64| format!("to_timestamp_nanos({})", m * 60_000_000_000);
    let short = |w: Window| {
        format!(
            "hdr_merge(hdr) FILTER (WHERE NOT hourly AND t >= {}) AS \"{w}\"",
            at(start(w))
        )
    };
    let sql = format!(
        "EXPLAIN ANALYZE SELECT service, endpoint, {}, {}, {}, \
         hdr_merge(hdr) FILTER (WHERE t >= {} AND (hourly OR t >= {})) AS \"1d\" FROM ( \
         SELECT service, endpoint, hour AS t, hdr, true AS hourly FROM latency_hours \
         WHERE hour >= {} AND hour < {} \
         UNION ALL SELECT service, endpoint, minute AS t, hdr, false AS hourly \
         FROM latency_minutes WHERE minute >= {} AND minute < {}) GROUP BY service, endpoint",
        short(Window::M1),
        short(Window::M5),
        short(Window::H1),
        at(start(Window::D1)),
        at(hour),
        at(start(Window::D1)),
        at(hour),
        at(start(Window::H1).min(hour)),
        at(open + 1)
    );
    let t = Instant::now();
    let out = runtime
        .block_on(engine.query(&sql))
        .unwrap_or_else(|e| panic!("explain: {e}"));
    println!("{:.2} s:", t.elapsed().as_secs_f64());
    for batch in &out.batches {
        println!(
            "{}",
            datafusion::arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }
}
