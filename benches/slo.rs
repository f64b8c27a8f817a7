//! SLO evaluation at the series cap over 30 days of history: 10 objectives over 10 001 series
//! (10 000 and the overflow series), evaluated as `recmeter serve` evaluates them every
//! `slo.evaluation_interval`.
//!
//! The store is built the way `serve` builds it, through the aggregator under a fake clock with
//! a checkpoint and a compaction every 6 hours (default retention: minutes for 3 days): 30 days
//! less 3 hours in which each series gets one request an hour (every hour of every series has a
//! row: 7.2 million hour rows), then 3 hours in which each series gets one a minute (the minutes
//! memory holds at the cap: 1.8 million minute rows). Latencies are log-normal around 40 ms,
//! 0.1% of requests fail.
//!
//! Then the evaluator runs 10 objectives (availability and latency over every series, and over
//! four groups of services and endpoints by glob):
//! - the first evaluation, as `serve` runs it before it reports ready: it sums the final hours
//!   of 30 days from the store's hour files, once;
//! - `BENCH_EVALUATIONS` (default 20) evaluations 30 s apart, from 30 s into minute 50 of an
//!   hour, with a request per series between them (untimed), so one of them crosses the hour
//!   and sums the hour that became final, from memory. These are the steady state the target
//!   is about; the bench checks that they read no store file.
//!
//! Each evaluation's 30-day, 1-day and 5-minute requests for the objective over every series
//! are checked against the requests the bench sent. It prints each time, the median and the
//! slowest, and the longest wait for the state lock (what ingest feels) during the evaluations.
//! Run: `cargo bench --bench slo`. Figures and machine in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recmeter_aggregator::durability::{Checkpointer, Layout};
use recmeter_aggregator::participant::Participants;
use recmeter_aggregator::slo::{
    Objective, ObjectiveKind, SloAlerts, SloConfig, SloEvaluator, SloStatus,
};
use recmeter_aggregator::state::{SharedState, lock};
use recmeter_aggregator::store::history::History;
use recmeter_aggregator::store::object as store;
use recmeter_aggregator::{
    Aggregator, AggregatorConfig, AggregatorHandle, Clock, IngestConfig, QueryEngine,
    RequestRecord, SeriesKey, SqlConfig, Window,
};
use recmeter_benches::{knob, rss_mib};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 10_000;
const DAYS: u64 = 30;
const MINUTE: u64 = 60_000_000_000;
/// An hour boundary, where the history starts.
const START_SECS: u64 = 1_800_000_000 / 3_600 * 3_600;

/// The requests sent, by the minute they ended in.
#[derive(Default)]
struct Sent(BTreeMap<u64, u64>);

impl Sent {
    /// Applies a request for each of `keys` ending in the `back` nanoseconds before now.
    fn send(
        &mut self,
        state: &SharedState,
        clock: &Clock,
        keys: &[&SeriesKey],
        back: u64,
        rng: &mut StdRng,
    ) {
        let now = clock.now_nanos();
        let batch: Vec<RequestRecord> = keys
            .iter()
            .map(|key| {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let z =
                    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos();
                RequestRecord {
                    key: (*key).clone(),
                    end_unix_nanos: now - rng.random_range(0..back),
                    duration_nanos: (0.040 * (0.8 * z).exp() * 1e9) as u64,
                    error: rng.random::<f64>() < 0.001,
                    recommendations: 10,
                }
            })
            .collect();
        let accepted = lock(state).apply(&batch).accepted;
        assert_eq!(accepted as usize, batch.len(), "every request accepted");
        for r in &batch {
            *self.0.entry(r.end_unix_nanos / MINUTE).or_default() += 1;
        }
    }

    /// Requests that ended in minutes `from..`.
    fn since(&self, from: u64) -> u64 {
        self.0.range(from..).map(|(_, n)| n).sum()
    }
}

/// The 10 objectives: availability and latency over every series, and over four groups.
fn objectives() -> SloConfig {
    let mut objectives = vec![
        Objective::new("availability", ObjectiveKind::Availability, 0.9995, None),
        Objective::new("latency", ObjectiveKind::Latency, 0.99, Some(0.2)),
    ];
    for g in 0..4 {
        let mut a = Objective::new(
            &format!("availability_{g}"),
            ObjectiveKind::Availability,
            0.999,
            None,
        );
        a.services = vec![format!("svc-{g}*")];
        let mut l = Objective::new(
            &format!("latency_{g}"),
            ObjectiveKind::Latency,
            0.95,
            Some(0.2),
        );
        l.services = vec![format!("svc-{g}"), format!("svc-1{g}")];
        l.endpoints = vec![format!("GET /v1/recommendations/{g}*")];
        objectives.extend([a, l]);
    }
    SloConfig {
        objectives,
        ..SloConfig::default()
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
    let config = objectives();
    let aggregator_config = AggregatorConfig::default();
    let alerts = Arc::new(SloAlerts::default());
    let mut participants = Participants::default();
    participants
        .register(alerts.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let aggregator = Aggregator::new(
        &IngestConfig::default(),
        &aggregator_config,
        clock.clone(),
        Arc::default(),
    )
    .unwrap_or_else(|e| panic!("aggregator: {e}"))
    .with_participants(participants);
    let (handle, _worker) = runtime
        .block_on(async { AggregatorHandle::spawn(aggregator, 1024, Arc::default(), None, false) });
    let state = handle.state().clone();
    let dir = std::env::temp_dir().join(format!("recmeter-bench-slo-{}", std::process::id()));
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
    let checkpoint = || {
        runtime
            .block_on(async {
                checkpoints.checkpoint().await?;
                checkpoints.compact().await
            })
            .unwrap_or_else(|e| panic!("checkpoint: {e}"));
    };
    // One more than the cap, as in the memory bench: 20 services fill the slots open to
    // endpoints, later services take the slots kept for new ones, the last folds into overflow.
    let reserve = aggregator_config.series_reserve();
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
    let mut rng = StdRng::seed_from_u64(13);
    let mut sent = Sent::default();
    let began = Instant::now();
    // 30 days less 3 hours: every 10 minutes a sixth of the series, so each gets one request an
    // hour.
    let sparse_steps = DAYS * 144 - 18;
    for step in 0..sparse_steps {
        clock.advance(Duration::from_secs(600));
        let part: Vec<&SeriesKey> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 % 6 == step % 6)
            .map(|(_, k)| k)
            .collect();
        sent.send(&state, &clock, &part, 600_000_000_000, &mut rng);
        if step % 36 == 35 {
            checkpoint();
        }
        if step % 1440 == 1439 {
            eprintln!(
                "{} days built in {:.0} s; rss {:.0} MiB",
                (step + 1) / 144,
                began.elapsed().as_secs_f64(),
                rss_mib("VmRSS:")
            );
        }
    }
    // The last 3 hours: a request per series a minute, checkpointed every half hour.
    let all: Vec<&SeriesKey> = keys.iter().collect();
    for m in 0..180 {
        clock.advance(Duration::from_secs(60));
        sent.send(&state, &clock, &all, MINUTE, &mut rng);
        if m % 30 == 29 {
            checkpoint();
        }
    }
    // On to 30 s into minute 50 of the hour, a minute's traffic on the way.
    clock.advance(Duration::from_secs(50 * 60 + 30));
    sent.send(&state, &clock, &all, MINUTE, &mut rng);
    eprintln!(
        "built 30 days of history for {} series in {:.0} s ({} requests); rss {:.0} MiB",
        keys.len(),
        began.elapsed().as_secs_f64(),
        sent.since(0),
        rss_mib("VmRSS:")
    );
    let sql = SqlConfig {
        target_partitions: 2,
        ..SqlConfig::default()
    };
    let engine = Arc::new(
        QueryEngine::new(state.clone(), &sql)
            .unwrap_or_else(|e| panic!("engine: {e}"))
            .with_history(history.clone()),
    );
    let evaluator = SloEvaluator::new(
        &config,
        &aggregator_config.threshold_columns(),
        engine,
        handle.clone(),
        alerts,
        Arc::new(SloStatus::default()),
        IngestConfig::default().max_span_age,
    )
    .unwrap_or_else(|e| panic!("evaluator: {e}"));
    let evaluate = |what: &str, sent: &Sent| {
        let t = Instant::now();
        let e = runtime
            .block_on(evaluator.evaluate())
            .unwrap_or_else(|e| panic!("evaluate: {e}"));
        let took = t.elapsed().as_secs_f64();
        // The objective over every series against the requests sent, over 30 days, a day
        // (whole hours from the hour at or before now − 1d + 1m) and 5 minutes.
        let open = e.at_unix_nanos / MINUTE;
        let status = &e.objectives[0];
        for (w, from) in [
            (Window::D30, (open + 1 - 30 * 1440) / 60 * 60),
            (Window::D1, (open + 1 - 1440) / 60 * 60),
            (Window::M5, open + 1 - 5),
        ] {
            assert_eq!(
                status.tallies.get(w).requests,
                sent.since(from),
                "{what}: requests over {w}"
            );
        }
        println!(
            "{what}: {:.1} ms (store files read so far: {}); 1h burn {:.2}, budget left {:.3}",
            took * 1e3,
            history.files_read(),
            status.burn_rate(Window::H1),
            status.budget_remaining()
        );
        took
    };
    let cold = evaluate(
        "first evaluation (30 days of final hours from the store)",
        &sent,
    );
    let after_first = history.files_read();
    // What ingest would feel: the longest wait for the state lock while an evaluation runs
    // (the untimed traffic between evaluations, which rolls minutes and hours, is not counted).
    let stop = Arc::new(AtomicBool::new(false));
    let evaluating = Arc::new(AtomicBool::new(false));
    let prober = {
        let (state, stop, evaluating) = (state.clone(), stop.clone(), evaluating.clone());
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let during = evaluating.load(Ordering::Acquire);
                let t = Instant::now();
                drop(lock(&state));
                if during && evaluating.load(Ordering::Acquire) {
                    longest = longest.max(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            longest
        })
    };
    let mut times = Vec::new();
    for i in 0..knob("BENCH_EVALUATIONS", 20) {
        clock.advance(Duration::from_secs(30));
        sent.send(&state, &clock, &all, 30_000_000_000, &mut rng);
        let minute = clock.now_nanos() / MINUTE % 60;
        evaluating.store(true, Ordering::Release);
        times.push(evaluate(
            &format!("evaluation {i} (minute {minute})"),
            &sent,
        ));
        evaluating.store(false, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    let longest = prober
        .join()
        .unwrap_or_else(|_| panic!("lock prober panicked"));
    assert_eq!(
        history.files_read(),
        after_first,
        "a steady-state evaluation read the store"
    );
    let slowest = times.iter().copied().fold(0.0, f64::max);
    times.sort_by(f64::total_cmp);
    println!(
        "{} objectives, {} series: first evaluation {:.0} ms; {} steady-state evaluations: \
         median {:.1} ms, slowest {:.1} ms, no store file read; peak rss {:.0} MiB",
        config.objectives.len(),
        keys.len(),
        cold * 1e3,
        times.len(),
        times[times.len() / 2] * 1e3,
        slowest * 1e3,
        rss_mib("VmHWM:")
    );
    println!(
        "longest wait for the state lock during the evaluations: {:.1} ms",
        longest.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
