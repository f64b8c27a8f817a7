//! The window planner's tests: `/metrics` windows over blocks, hours and kept final hours,
//! and counts per span against the raw records.

use super::*;
use crate::sql::QueryEngine;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::SqlConfig;
use crate::state::SharedState;

#[tokio::test]
async fn metrics_windows_merge_in_one_stage() {
    use crate::config::{AggregatorConfig, IngestConfig};
    use crate::{Aggregator, Clock, Telemetry};
    use std::time::UNIX_EPOCH;

    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let aggregator = Aggregator::new(
        &IngestConfig {
            dimensions: vec!["region".into()],
            ..IngestConfig::default()
        },
        &AggregatorConfig::default(),
        clock.clone(),
        Arc::new(Telemetry::default()),
    )
    .unwrap();
    let config = SqlConfig {
        target_partitions: 2,
        ..SqlConfig::default()
    };
    let engine = QueryEngine::new(crate::state::shared(aggregator), &config).unwrap();
    let now = clock.now_nanos();
    let ctx = engine.sessions.metrics_context(now);
    let dimensions = ["region".to_owned()];
    let windows = [Window::M1, Window::M5, Window::H1, Window::D1];
    // With and without kept final hours (a third input to the union).
    let kept = PreparedRows::new(dimensions.to_vec(), vec!["requests_le_0_2".into()], vec![]);
    let table = RollupTable::new(Table::Hours, Arc::new(kept));
    ctx.register_table(FINAL_HOURS, Arc::new(table)).unwrap();
    let end = final_end(now, now / MINUTE_NANOS - 60);
    assert!(*Window::D1.minute_range(now).start() < end);
    for final_end in [None, Some(end)] {
        let runs = window_runs(&windows, now, final_end);
        let plan = window_plan(&ctx, &runs, &dimensions, true, None)
            .await
            .unwrap();
        crate::sql::testing::assert_one_stage(plan.0).await;
    }
}

/// An engine over an empty aggregator with a fake clock on an hour boundary.
fn engine(max_series: usize) -> (QueryEngine, SharedState, Arc<crate::Clock>) {
    use crate::config::{AggregatorConfig, IngestConfig};
    use crate::{Aggregator, Clock};
    use std::time::UNIX_EPOCH;

    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let aggregator = Aggregator::new(
        &IngestConfig::default(),
        &AggregatorConfig {
            max_series,
            ..AggregatorConfig::default()
        },
        clock.clone(),
        Arc::new(crate::Telemetry::default()),
    )
    .unwrap();
    let state = crate::state::shared(aggregator);
    let config = SqlConfig {
        target_partitions: 2,
        ..SqlConfig::default()
    };
    (
        QueryEngine::new(state.clone(), &config).unwrap(),
        state,
        clock,
    )
}

/// A scrape of long windows waits while the final hours are being merged (here: the lock
/// held), and goes on once they are; a scrape of minute-exact windows only does not wait.
#[tokio::test]
async fn only_scrapes_of_long_windows_wait_for_a_merge_under_way() {
    let (engine, state, clock) = engine(10);
    let now = clock.now_nanos();
    lock(&state).apply(&[request("a", now, 5_000_000)]);
    let waiting = Duration::from_millis(300);
    let merge = engine.windows.merging.lock().await;
    let short = tokio::time::timeout(waiting, engine.snapshot(&[Window::M1, Window::H1]));
    assert_eq!(short.await.unwrap().unwrap().series.len(), 1);
    let long = tokio::time::timeout(waiting, engine.snapshot(&[Window::M1, Window::D1]));
    assert!(
        long.await.is_err(),
        "a long-window scrape went past a merge under way"
    );
    drop(merge);
    let snapshot = engine.snapshot(&[Window::M1, Window::D1]).await.unwrap();
    assert_eq!(snapshot.series[0].windows.len(), 2);
}

fn request(endpoint: &str, end: u64, nanos: u64) -> crate::RequestRecord {
    crate::RequestRecord {
        key: SeriesKey {
            service: "svc".into(),
            endpoint: endpoint.into(),
            dimensions: Vec::new(),
        },
        end_unix_nanos: end,
        duration_nanos: nanos,
        error: false,
        recommendations: 1,
    }
}

/// 27 hours of traffic on two series, with spans up to an hour late; scraped every few
/// minutes through hours 25 to 27 and at minutes 58, 59, 0 and 1 of each hour, so the final
/// hours are kept, reused and moved on as windows' starts move and hours become final.
/// Every window's count equals the raw values in its minutes (DESIGN's rule, worked out
/// here from the raw minutes), its P50 and P99 lie within 1% of their nearest rank, and a
/// fresh engine, which merges its kept hours from the tables at that instant, gives the same
/// snapshot.
#[tokio::test]
async fn long_windows_over_kept_final_hours_stay_exact() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let (engine, state, clock) = engine(10);
    let mut rng = StdRng::seed_from_u64(7);
    // (endpoint, minute, nanoseconds) of every request sent.
    let mut raw: Vec<(&str, u64, u64)> = Vec::new();
    let windows = [Window::M5, Window::H1, Window::D1, Window::D3];
    let (mut scrapes, mut reused) = (0, 0);
    let mut last_kept: Option<Arc<FinalHours>> = None;
    let (mut covers, mut advanced) = (BTreeSet::new(), BTreeSet::new());
    for minute in 0..27 * 60u64 {
        let now = clock.now_nanos();
        let mut batch = Vec::new();
        for endpoint in ["a", "b"] {
            for _ in 0..rng.random_range(1..6) {
                let nanos = (rng.random::<f64>().powi(3) * 2e9) as u64 + 1_000_000;
                // One span in eight ended up to an hour ago (the oldest ingest accepts).
                let late = if rng.random_range(0..8) == 0 {
                    rng.random_range(0..=60) * MINUTE_NANOS
                } else {
                    0
                };
                let end = now - late;
                batch.push(request(endpoint, end, nanos));
                raw.push((endpoint, end / MINUTE_NANOS, nanos));
            }
        }
        assert_eq!(lock(&state).apply(&batch).accepted, batch.len() as u64);
        if minute >= 25 * 60 && (minute % 7 < 2 || matches!(minute % 60, 58 | 59 | 0 | 1)) {
            scrapes += 1;
            // When an hour becomes final, the service's `prepare` moves the kept hours on
            // ahead of the scrape, which then reads them as they are.
            let prepared = if minute % 60 == 0 {
                engine.prepare(&windows).await.unwrap();
                engine.windows.final_hours.lock().clone()
            } else {
                None
            };
            // When a window's first hour moves, a scrape races the service's `prepare`: one
            // of them moves the kept hours on, the other reads them.
            let snapshot = if minute % 60 == 59 {
                let (prepared, snapshot) =
                    tokio::join!(engine.prepare(&windows), engine.snapshot(&windows));
                prepared.unwrap();
                snapshot.unwrap()
            } else {
                engine.snapshot(&windows).await.unwrap()
            };
            let at = snapshot.at_unix_nanos;
            let kept = engine.windows.final_hours.lock().clone();
            let kept = kept.unwrap_or_else(|| panic!("none kept at minute {minute}"));
            if let Some(prepared) = prepared {
                // Merged anew at the first scrape, moved on after.
                assert_eq!(prepared.advanced, minute > 25 * 60, "minute {minute}");
                assert!(Arc::ptr_eq(&prepared.rows, &kept.rows), "minute {minute}");
            }
            if let Some(last) = last_kept.replace(kept.clone())
                && last.covers(&kept.starts, kept.end)
            {
                assert!(Arc::ptr_eq(&last.rows, &kept.rows), "minute {minute}");
                reused += 1;
            }
            covers.insert((kept.end, kept.starts.clone()));
            if kept.advanced {
                advanced.insert((kept.end, kept.starts.clone()));
            }
            // Merged anew from the tables by a fresh engine: the same snapshot.
            let fresh = QueryEngine::new(state.clone(), &engine.sessions.config).unwrap();
            assert_eq!(
                fresh.snapshot(&windows).await.unwrap(),
                snapshot,
                "minute {minute}"
            );
            for series in &snapshot.series {
                assert_eq!(series.windows.len(), windows.len());
                for w in &series.windows {
                    let range = w.window.minute_range(at);
                    let mut values: Vec<u64> = raw
                        .iter()
                        .filter(|(e, m, _)| *e == &*series.key.endpoint && range.contains(m))
                        .map(|(.., v)| *v)
                        .collect();
                    values.sort_unstable();
                    let label = format!("{} {} at minute {minute}", series.key.endpoint, w.window);
                    assert_eq!(w.count, values.len() as u64, "{label}");
                    for (q, got) in [w.quantiles[0], w.quantiles[2]] {
                        let rank = ((q * values.len() as f64 - 1e-9).ceil() as usize).max(1);
                        let exact = values[rank - 1] as f64 / 1e9;
                        assert!(
                            (got - exact).abs() / exact <= 0.01,
                            "{label} q{q}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
        clock.advance(Duration::from_secs(60));
    }
    assert!(
        scrapes > 30 && reused > 20,
        "{scrapes} scrapes, {reused} reused"
    );
    // Merged at the first scrape (minute 1500), then moved on as windows' starts moved
    // (minutes 1559 and 1619) and an hour became final (minute 1560, by `prepare`).
    assert_eq!(covers.len(), 4);
    assert_eq!(advanced.len(), 3);
}

/// Three and a half hours of traffic on one series, applied every 20 s, with one span in six
/// up to an hour late and one in ten up to 290 s ahead of the clock, bursts of late spans
/// that fill the late buffer (sealed while applied), and a 7-minute jump of the clock with
/// spans ahead of it pending; scraped 20 s into each minute of the last hour, with late values
/// still buffered. Every window reads its minutes
/// through blocks (the open block's sealed minutes so far as one row), so each window's count
/// equals the raw values in its minutes and its P99 lies within 1% of the nearest rank;
/// spans ahead of the clock stay out of the windows but are in `latency_hours`' current hour.
#[tokio::test]
async fn windows_over_blocks_stay_exact_with_late_and_early_spans() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let (engine, state, clock) = engine(10);
    let mut rng = StdRng::seed_from_u64(11);
    // (minute, nanoseconds) of every request sent.
    let mut raw: Vec<(u64, u64)> = Vec::new();
    // 1m to 6h.
    let windows = &Window::ALL[..6];
    let mut scrapes = 0;
    for step in 0..210 * 3u64 {
        let now = clock.now_nanos();
        let burst = if step % 61 == 5 { 1_100 } else { 0 };
        let batch: Vec<_> = (0..rng.random_range(1..5) + burst)
            .map(|i| {
                let nanos = (rng.random::<f64>().powi(3) * 2e9) as u64 + 1_000_000;
                let end = match rng.random_range(0..30) {
                    _ if i < burst => now - rng.random_range(60..=3_600) * 1_000_000_000,
                    0..5 => now - rng.random_range(0..=3_600) * 1_000_000_000,
                    5..8 => now + rng.random_range(0..=290) * 1_000_000_000,
                    _ => now,
                };
                raw.push((end / MINUTE_NANOS, nanos));
                request("a", end, nanos)
            })
            .collect();
        assert_eq!(lock(&state).apply(&batch).accepted, batch.len() as u64);
        if step >= 150 * 3 && step % 3 == 1 {
            scrapes += 1;
            let snapshot = engine.snapshot(windows).await.unwrap();
            let at = snapshot.at_unix_nanos;
            let open = at / MINUTE_NANOS;
            let series = &snapshot.series[0];
            for &window in windows {
                let range = window.minute_range(at);
                let mut values: Vec<u64> = raw
                    .iter()
                    .filter(|(m, _)| range.contains(m))
                    .map(|(_, v)| *v)
                    .collect();
                values.sort_unstable();
                let label = format!("{window} at minute {}", open % 60);
                // A window without requests is left out.
                let Some(w) = series.windows.iter().find(|w| w.window == window) else {
                    assert!(values.is_empty(), "{label}");
                    continue;
                };
                assert_eq!(w.count, values.len() as u64, "{label}");
                let rank = ((0.99 * values.len() as f64 - 1e-9).ceil() as usize).max(1);
                let exact = values[rank - 1] as f64 / 1e9;
                let got = w.quantiles[2].1;
                assert!(
                    (got - exact).abs() / exact <= 0.01,
                    "{label}: {got} vs {exact}"
                );
            }
            // The current hour in SQL holds the spans ahead of the clock too.
            let hour = open - open % 60;
            let sql = format!(
                "SELECT CAST(sum(requests) AS BIGINT) FROM latency_hours \
                 WHERE hour >= to_timestamp_seconds({})",
                hour * 60
            );
            let out = engine.query(&sql).await.unwrap();
            let got = out.batches[0]
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0);
            let want = raw.iter().filter(|(m, _)| *m >= hour).count();
            assert_eq!(got as usize, want, "current hour at minute {}", open % 60);
        }
        clock.advance(Duration::from_secs(if step == 300 { 7 * 60 } else { 20 }));
    }
    assert_eq!(scrapes, 60);
}

/// A minute boundary passing while the window query runs changes no window: the query
/// planned 20 s into minute 23 and run after the clock moved to minute 24, with spans in
/// minute 24 and spans sent for it while it was ahead, gives each window the raw values of
/// its minutes at minute 23 (the 5m window reads block 20 as the clock seals minute 23 into
/// it).
#[tokio::test]
async fn a_minute_passing_mid_query_changes_no_window() {
    let (engine, state, clock) = engine(10);
    let mut raw: Vec<u64> = Vec::new();
    let send = |clock: &crate::Clock, raw: &mut Vec<u64>| {
        let now = clock.now_nanos();
        let batch = [now, now + 50_000_000_000].map(|end| {
            raw.push(end / MINUTE_NANOS);
            request("a", end, 5_000_000)
        });
        assert_eq!(lock(&state).apply(&batch).accepted, 2);
    };
    for _ in 0..23 * 3 + 1 {
        send(&clock, &mut raw);
        clock.advance(Duration::from_secs(20));
    }
    let at = clock.now_nanos();
    assert_eq!(at / MINUTE_NANOS % 60, 23);
    let windows = [Window::M1, Window::M5, Window::M30];
    let ctx = engine.sessions.metrics_context(at);
    let (df, held) = window_plan(&ctx, &window_runs(&windows, at, None), &[], true, None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    send(&clock, &mut raw);
    let batches = df.collect().await.unwrap();
    for (w, segments) in windows.iter().zip(&held) {
        let mut counts = Counts::new();
        for batch in &batches {
            for &i in segments {
                let blobs = batch.column(2 + i).as_binary::<i32>();
                for row in (0..batch.num_rows()).filter(|&r| !blobs.is_null(r)) {
                    counts.add_encoded(blobs.value(row)).unwrap();
                }
            }
        }
        let range = w.minute_range(at);
        let want = raw.iter().filter(|m| range.contains(m)).count();
        assert_eq!(counts.total(), want as u64, "{w}");
    }
}

/// A series forgotten at the cap and back within the hour starts afresh in the long windows
/// too: the kept final hours lose its old rows, whether a scrape finds it back before they
/// move on (same hours) or only when they move on.
#[tokio::test]
async fn a_forgotten_series_leaves_no_kept_hours_behind() {
    for scrape_before_moving_on in [true, false] {
        let (engine, state, clock) = engine(1);
        let m0 = clock.now_nanos() / MINUTE_NANOS;
        // One request a minute for 100 minutes, then nothing: idle for 3 h at minute 279.
        for _ in 0..100 {
            lock(&state).apply(&[request("a", clock.now_nanos(), 5_000_000)]);
            clock.advance(Duration::from_secs(60));
        }
        clock.advance(Duration::from_secs(60 * 178));
        assert_eq!(clock.now_nanos() / MINUTE_NANOS, m0 + 278);
        let before = engine.snapshot(&[Window::D1]).await.unwrap();
        assert_eq!(before.series[0].windows[0].count, 100);
        assert!(engine.windows.final_hours.lock().is_some());
        // Minute 280, same hour and same final hours: the roll into minute 280 forgets the
        // series (idle since minute 100), and the request creates it again.
        clock.advance(Duration::from_secs(120));
        lock(&state).apply(&[request("a", clock.now_nanos(), 5_000_000)]);
        assert_eq!(lock(&state).births(), 2);
        if scrape_before_moving_on {
            let after = engine.snapshot(&[Window::D1]).await.unwrap();
            assert_eq!(after.series.len(), 1);
            assert_eq!(after.series[0].totals.requests(), 1);
            assert_eq!(after.series[0].windows[0].count, 1);
        }
        // On past minute 300, where the hour before minute 240 becomes final and the kept
        // hours move on: still only the requests since it came back.
        for _ in 0..21 {
            clock.advance(Duration::from_secs(60));
            lock(&state).apply(&[request("a", clock.now_nanos(), 5_000_000)]);
        }
        assert_eq!(clock.now_nanos() / MINUTE_NANOS, m0 + 301);
        let moved = engine.snapshot(&[Window::D1]).await.unwrap();
        let kept = engine.windows.final_hours.lock().clone().unwrap();
        assert!(kept.advanced && kept.end == m0 + 240, "{kept:?}");
        assert_eq!(moved.series[0].windows[0].count, 22);
    }
}

/// The 30d window's oldest hours leave memory as it moves on, so its kept hours cannot be
/// moved on by taking them away: they are merged anew, and its count stays that of the
/// raw requests in it.
#[tokio::test]
async fn the_30d_window_moves_on_past_hours_no_longer_held() {
    let (engine, state, clock) = engine(10);
    let mut minutes = Vec::new();
    // A request at minute 30 of every hour for 31 days, then on to minute 58.
    clock.advance(Duration::from_secs(30 * 60));
    for _ in 0..31 * 24 {
        let now = clock.now_nanos();
        lock(&state).apply(&[request("a", now, 5_000_000)]);
        minutes.push(now / MINUTE_NANOS);
        clock.advance(Duration::from_secs(3_600));
    }
    clock.advance(Duration::from_secs(28 * 60));
    // Minute 58, then minute 59, where the window's first hour moves.
    for _ in 0..2 {
        let snapshot = engine.snapshot(&[Window::D30]).await.unwrap();
        let range = Window::D30.minute_range(snapshot.at_unix_nanos);
        let raw = minutes.iter().filter(|m| range.contains(m)).count() as u64;
        assert_eq!(snapshot.series[0].windows[0].count, raw);
        clock.advance(Duration::from_secs(60));
    }
    assert!(!engine.windows.final_hours.lock().clone().unwrap().advanced);
}

/// Counts and quantiles per span equal those of the raw records: DESIGN's ten windows and
/// ranges crossing minute, block, hour and store boundaries, over 7 hours of traffic whose
/// older minutes are only in the store, and whose oldest minutes retention has dropped (so
/// ranges there round out to hours, and say so).
#[tokio::test]
async fn counts_per_span_equal_sums_over_the_raw_records() {
    use crate::config::{AggregatorConfig, IngestConfig};
    use crate::durability::{Checkpointer, Layout, RetentionConfig};
    use crate::state::shared;
    use crate::{Aggregator, Clock, Telemetry};
    use std::time::UNIX_EPOCH;

    // An hour boundary, 30 s in.
    let start_secs = 500_000 * 3_600 + 30;
    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(start_secs)));
    let config = AggregatorConfig {
        latency_thresholds: vec![0.05, 0.2],
        ..AggregatorConfig::default()
    };
    let mut aggregator = Aggregator::new(
        &IngestConfig::default(),
        &config,
        clock.clone(),
        Arc::new(Telemetry::default()),
    )
    .unwrap();
    aggregator.keep_journal();
    let state = shared(aggregator);
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::object::open(dir.path().to_str().unwrap(), true).unwrap();
    let history = Arc::new(History::new(store.objects.clone()));
    let layout = Layout {
        significant_digits: config.significant_digits,
        dimensions: Vec::new(),
        thresholds: config.threshold_columns(),
    };
    let checkpoints = Checkpointer::new(
        store,
        state.clone(),
        layout,
        Arc::default(),
        Arc::default(),
        None,
        Box::new(|_| {}),
    )
    .with_retention(RetentionConfig {
        minutes: Duration::from_secs(4 * 3_600),
        ..RetentionConfig::default()
    })
    .with_history(history.clone());
    let engine = QueryEngine::new(state.clone(), &SqlConfig::default())
        .unwrap()
        .with_history(history);

    // (service, minute, nanos, error, recommendations) of every record sent.
    let mut raw: Vec<(&str, u64, u64, bool, u64)> = Vec::new();
    let first = start_secs / 60;
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        seed >> 33
    };
    for m in 0..7 * 60 {
        let now = clock.now_nanos();
        let mut batch = Vec::new();
        for j in 0..3 + next() % 4 {
            let service = if j % 2 == 0 { "a" } else { "b" };
            // Now and then a late one, 25 minutes back (into a sealed block or hour).
            let back = if next() % 9 == 0 {
                25 * 60
            } else {
                next() % 25
            };
            let end = now - back * 1_000_000_000;
            let nanos = 1_000_000 + next() % 400_000_000;
            let error = next() % 5 == 0;
            let recs = next() % 30;
            batch.push(crate::RequestRecord {
                key: SeriesKey {
                    service: service.into(),
                    endpoint: "/recs".into(),
                    dimensions: Vec::new(),
                },
                end_unix_nanos: end,
                duration_nanos: nanos,
                error,
                recommendations: recs,
            });
            raw.push((service, end / MINUTE_NANOS, nanos, error, recs));
        }
        assert_eq!(
            lock(&state).apply(&batch).accepted as usize,
            batch.len(),
            "minute {m}"
        );
        clock.advance(Duration::from_secs(60));
        if m % 10 == 9 {
            checkpoints.checkpoint().await.unwrap();
            checkpoints.compact().await.unwrap();
        }
    }
    let at = clock.now_nanos();
    let open = at / MINUTE_NANOS;
    assert_eq!(open, first + 420);
    // Retention kept minutes from hour 3 on; memory holds the last 3 h.
    let kept_from = first + 180;
    let mut spans: Vec<Span> = Window::ALL.iter().map(|&w| Span::Window(w)).collect();
    let ranges = [
        // All before the minutes kept: rounded out to the hour around it.
        (first + 10, first + 50, first, first + 60, true),
        // From hours into the store's minutes, across an hour boundary.
        (first + 100, first + 200, first + 60, first + 200, true),
        // The store's minutes into memory's, across an hour and several blocks.
        (first + 185, first + 250, first + 185, first + 250, false),
        // Inside one block.
        (first + 233, first + 237, first + 233, first + 237, false),
        // Through the open minute, and past it (ends at the open minute).
        (first + 398, open + 30, first + 398, open + 1, false),
        // Exactly one hour, minute-exact.
        (first + 300, first + 360, first + 300, first + 360, false),
        // Minutes, whole blocks, minutes: both ends inside a block of memory.
        (first + 305, first + 333, first + 305, first + 333, false),
        // Whole blocks up to the open one, then its minutes short of the open minute.
        (first + 380, open, first + 380, open, false),
    ];
    spans.extend(
        ranges
            .iter()
            .map(|&(start, end, ..)| Span::Range { start, end }),
    );
    let answer = engine.counts(&spans).await.unwrap();
    // The same spans counted without histograms.
    let sums = engine.sums(&spans).await.unwrap();
    assert_eq!(answer.at_unix_nanos, at);
    assert_eq!(sums.spans, answer.spans);
    assert_eq!(answer.threshold_columns, config.threshold_columns());
    for (covered, &(start, end, from, to, rounded)) in answer.spans[10..].iter().zip(&ranges) {
        assert_eq!(
            (covered.from, covered.to, covered.rounded_to_hours),
            (from, to, rounded),
            "[{start}, {end})"
        );
    }
    let thresholds = config.threshold_nanos();
    let mut compared = 0;
    for (i, covered) in answer.spans.iter().enumerate() {
        // DESIGN's windows, worked out here rather than taken from `Window`: the last n
        // minutes through the open one, from the start of their first hour past 2 h.
        let minutes = match covered.span {
            Span::Window(w) => {
                let (n, hour_aligned) = match w.label() {
                    "1m" => (1, false),
                    "5m" => (5, false),
                    "30m" => (30, false),
                    "1h" => (60, false),
                    "2h" => (120, false),
                    "6h" => (360, true),
                    "1d" => (1_440, true),
                    "3d" => (4_320, true),
                    "7d" => (10_080, true),
                    "30d" => (43_200, true),
                    other => panic!("a window DESIGN does not list: {other}"),
                };
                let first = (open + 1).saturating_sub(n);
                let first = if hour_aligned { first / 60 * 60 } else { first };
                first..=open
            }
            Span::Range { .. } => covered.from..=covered.to - 1,
        };
        assert!(covered.from >= kept_from || covered.rounded_to_hours || i < 10);
        for service in ["a", "b"] {
            let mut values: Vec<u64> = Vec::new();
            let mut want = RowCounts::default();
            for &(_, _, nanos, error, recs) in raw
                .iter()
                .filter(|r| r.0 == service && minutes.contains(&r.1))
            {
                values.push(nanos);
                want.requests += 1;
                want.errors += u64::from(error);
                want.recommendations += recs;
                for (le, t) in want.le.iter_mut().zip(&thresholds) {
                    *le += u64::from(nanos <= *t);
                }
            }
            let got = answer
                .series
                .iter()
                .find(|(k, _)| &*k.service == service)
                .and_then(|(_, spans)| spans[i]);
            let what = format!("{service} over {:?}", covered.span);
            let summed = sums
                .series
                .iter()
                .find(|(k, _)| &*k.service == service)
                .and_then(|(_, spans)| spans[i]);
            let Some(got) = got else {
                assert!(values.is_empty(), "{what}: nothing counted");
                assert!(summed.is_none(), "{what}: nothing summed");
                continue;
            };
            assert_eq!(got.counts, want, "{what}");
            let summed = summed.unwrap();
            assert_eq!(summed.counts, want, "{what}, summed");
            assert!(summed.quantiles.is_none());
            compared += 1;
            values.sort_unstable();
            for (q, seconds) in got.quantiles.unwrap() {
                let rank = ((q * values.len() as f64).ceil() as usize).max(1) - 1;
                let exact = values[rank] as f64 / 1e9;
                assert!(
                    (seconds - exact).abs() <= exact * 0.01 + 1e-6,
                    "{what}: p{q} {seconds} against {exact}"
                );
            }
        }
    }
    // Every span but the 1m window (the open minute, empty) counted both services.
    assert_eq!(compared, 2 * (spans.len() - 1));
    // Spans of minutes and blocks memory holds alone are summed from memory without a plan
    // (an SLO evaluation's): the same counts, checked against the raw records above.
    let held: Vec<usize> = (0..spans.len())
        .filter(|&i| match spans[i] {
            Span::Window(w) => w.minutes() <= 120,
            Span::Range { start, .. } => start > open - 179,
        })
        .collect();
    assert!(held.len() >= 8, "{held:?}");
    let in_memory: Vec<Span> = held.iter().map(|&i| spans[i]).collect();
    let from_memory = engine.sums(&in_memory).await.unwrap();
    assert_eq!(from_memory.series.len(), answer.series.len());
    for ((key, got), (planned_key, planned)) in from_memory.series.iter().zip(&answer.series) {
        assert_eq!(key, planned_key);
        for (j, &i) in held.iter().enumerate() {
            // Sums from memory also carry the rows' bucket counts and sum; the planned ones
            // read only the count and threshold columns.
            let counts_only = |c: RowCounts| RowCounts {
                buckets: Default::default(),
                sum_nanos: 0,
                ..c
            };
            assert_eq!(
                got[j].map(|c| counts_only(c.counts)),
                planned[i].map(|c| c.counts),
                "{} over {:?}, from memory",
                key.service,
                spans[i]
            );
        }
    }
    // A range wholly after the open minute reads nothing; an hour-aligned one before the
    // minutes kept is not rounded.
    let later = engine
        .counts(&[
            Span::Range {
                start: open + 5,
                end: open + 10,
            },
            Span::Range {
                start: first,
                end: first + 120,
            },
        ])
        .await
        .unwrap();
    assert!(!later.spans[1].rounded_to_hours);
    assert_eq!(
        (later.spans[0].from, later.spans[0].to),
        (open + 5, open + 5)
    );
    assert!(later.series.iter().all(|(_, spans)| spans[0].is_none()));
    let only_later = engine
        .counts(&[Span::Range {
            start: open + 5,
            end: open + 10,
        }])
        .await
        .unwrap();
    assert!(only_later.series.is_empty());
    // An empty range is refused.
    let e = engine
        .counts(&[Span::Range {
            start: first + 5,
            end: first + 5,
        }])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::BadRequest, "{e}");
}

#[tokio::test]
async fn hostile_spans_answer_or_are_refused_clearly() {
    let (engine, state, clock) = engine(100);
    let now = clock.now_nanos();
    let batch: Vec<_> = (0..5u64)
        .map(|i| request("/recs", now - i * 60 * 1_000_000_000, 1_000_000 * (i + 1)))
        .collect();
    assert_eq!(lock(&state).apply(&batch).accepted, 5);
    let open = now / MINUTE_NANOS;
    // All of time: every record, bounds rounded to hours before the minutes held.
    let all = engine
        .counts(&[Span::Range {
            start: 0,
            end: u64::MAX,
        }])
        .await
        .unwrap();
    assert_eq!(all.spans[0].to, open + 1);
    assert_eq!(all.series[0].1[0].unwrap().counts.requests, 5);
    // Far in the future: nothing, no overflow.
    let future = engine
        .counts(&[Span::Range {
            start: u64::MAX - 1,
            end: u64::MAX,
        }])
        .await
        .unwrap();
    assert!(future.series.is_empty());
    // Backwards: refused, naming the range.
    let e = engine
        .counts(&[Span::Range {
            start: u64::MAX,
            end: 0,
        }])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::BadRequest, "{e}");
    assert!(e.to_string().contains(&u64::MAX.to_string()), "{e}");
    // Many overlapping ranges in one call (a query API's steps).
    let many: Vec<Span> = (0..MAX_SPANS as u64)
        .map(|i| Span::Range {
            start: open - 3 * 60 + i % 170,
            end: open - 3 * 60 + i % 170 + 10 + i % 7,
        })
        .collect();
    let answer = engine.counts(&many).await.unwrap();
    assert_eq!(answer.spans.len(), MAX_SPANS);
    // More than that is refused before any planning.
    let e = engine
        .counts(&vec![Span::Window(Window::M1); MAX_SPANS + 1])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::BadRequest, "{e}");
    assert!(e.to_string().contains("spans"), "{e}");
}

/// Recommendations of a histogram-fed series in minutes without requests (a delta sum alone)
/// are counted in every span that holds them, without quantiles.
#[tokio::test]
async fn spans_with_recommendations_and_no_latency_are_counted() {
    let (engine, state, clock) = engine(100);
    let now = clock.now_nanos();
    let point = crate::MetricPoint {
        stream: 1,
        key: SeriesKey {
            service: "feed".into(),
            endpoint: "/recs".into(),
            dimensions: Vec::new(),
        },
        error: false,
        start_unix_nanos: now - 30 * 1_000_000_000,
        time_unix_nanos: now,
        cumulative: false,
        whole_if_new: false,
        nanos_per_unit: 0.0,
        value: crate::PointValue::Sum { value: 42.0 },
    };
    assert_eq!(lock(&state).apply_points(&[point], now).accepted, 1);
    let open = now / MINUTE_NANOS;
    let answer = engine
        .counts(&[
            Span::Window(Window::M5),
            Span::Range {
                start: open - 2,
                end: open + 1,
            },
        ])
        .await
        .unwrap();
    assert_eq!(answer.series.len(), 1, "{answer:?}");
    for got in &answer.series[0].1 {
        let got = got.unwrap();
        assert_eq!(got.counts.recommendations, 42);
        assert_eq!(got.counts.requests, 0);
        assert!(got.quantiles.is_none());
    }
    // `/metrics` has no quantiles to print for it.
    let snapshot = engine.snapshot(&Window::ALL).await.unwrap();
    assert!(snapshot.series.iter().all(|s| s.windows.is_empty()));
}
