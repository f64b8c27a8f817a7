//! Memory at the series cap: 10 000 series, each with 30 requests a minute, through the fake
//! clock for 3 hours (every minute of the 3 h kept in memory, sealed), then 24 more hours
//! (older whole hours folded into hour partials until a day of them is held, the steady
//! state). Prints resident memory after each phase and how long one `/metrics` snapshot
//! (1m, 5m, 1h windows) takes at the end, and how much of it holds the state lock.
//! Run: `cargo bench --bench memory`. Figures and machine in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recmeter_aggregator::{
    Aggregator, AggregatorConfig, Clock, IngestConfig, RequestRecord, SeriesKey, Telemetry, Window,
};

const SERIES: usize = 10_000;
const PER_MINUTE: usize = 30;

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    // 30 s into a minute; each request ends within the second before now, in the open minute.
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_030);
    let clock = Arc::new(Clock::fake(start));
    let mut aggregator = Aggregator::new(
        &IngestConfig::default(),
        &AggregatorConfig::default(),
        clock.clone(),
        Arc::new(Telemetry::default()),
    )
    .unwrap_or_else(|e| panic!("aggregator: {e}"));
    let keys: Vec<SeriesKey> = (0..SERIES)
        .map(|i| SeriesKey {
            service: Arc::from(format!("svc-{}", i % 20).as_str()),
            endpoint: Arc::from(format!("GET /v1/recommendations/{i}").as_str()),
            dimensions: Vec::new(),
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    println!("series {SERIES}, {PER_MINUTE} requests per series per minute");
    println!("start: rss {:.0} MiB", rss_mib("VmRSS:"));
    let mut batch = Vec::with_capacity(PER_MINUTE);
    for (phase, minutes) in [
        ("3 h of minutes", 180),
        ("24 more hours (a day of hour partials)", 24 * 60),
    ] {
        let t = Instant::now();
        for _ in 0..minutes {
            let now = clock.now_nanos();
            for key in &keys {
                batch.clear();
                for _ in 0..PER_MINUTE {
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
    let t = Instant::now();
    let capture = aggregator
        .capture(&[Window::M1, Window::M5, Window::H1])
        .unwrap_or_else(|e| panic!("capture: {e}"));
    let held = t.elapsed();
    let snapshot = capture
        .compute()
        .unwrap_or_else(|e| panic!("snapshot: {e}"));
    println!(
        "snapshot of {} series (1m, 5m, 1h): {:.2} s, of which {:.3} s under the state lock; rss {:.0} MiB, peak {:.0} MiB",
        snapshot.series.len(),
        t.elapsed().as_secs_f64(),
        held.as_secs_f64(),
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:")
    );
}
