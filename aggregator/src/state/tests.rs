//! The rollup state's tests.

use super::*;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::row::hour_of;
use crate::clock::{Clock, MINUTE_NANOS, minute_of};
use crate::config::SqlConfig;
use crate::config::{AggregatorConfig, IngestConfig};
use crate::metrics::MetricPoint;
use crate::record::OVERFLOW;
use crate::record::{ApplyOutcome, RequestRecord, SeriesKey};
use crate::sql::QueryEngine;
use crate::telemetry::Telemetry;
use crate::window::Window;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, UInt64Type};
use std::time::{Duration, UNIX_EPOCH};

const START_SECS: u64 = 1_800_000_000; // a minute boundary

struct Fixture {
    state: SharedState,
    clock: Arc<Clock>,
    telemetry: Arc<Telemetry>,
    engine: QueryEngine,
}

fn fixture(max_series: usize) -> Fixture {
    fixture_with(max_series, max_series)
}

fn fixture_with(max_series: usize, max_series_per_service: usize) -> Fixture {
    let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(START_SECS)));
    let telemetry = Arc::new(Telemetry::default());
    let config = AggregatorConfig {
        max_series,
        max_series_per_service,
        latency_thresholds: vec![0.2, 1.0],
        ..AggregatorConfig::default()
    };
    let agg = Aggregator::new(
        &IngestConfig::default(),
        &config,
        clock.clone(),
        telemetry.clone(),
    )
    .unwrap();
    let state = shared(agg);
    let engine = QueryEngine::new(state.clone(), &SqlConfig::default()).unwrap();
    Fixture {
        state,
        clock,
        telemetry,
        engine,
    }
}

impl Fixture {
    fn apply(&self, records: &[RequestRecord]) -> ApplyOutcome {
        lock(&self.state).apply(records)
    }

    async fn snapshot(&self, windows: &[Window]) -> Snapshot {
        self.engine.snapshot(windows).await.unwrap()
    }

    /// One u64 per row of a query's first column.
    async fn numbers(&self, sql: &str) -> Vec<u64> {
        let out = self.engine.query(sql).await.unwrap();
        out.batches
            .iter()
            .flat_map(|b| {
                let column = cast(b.column(0), &DataType::UInt64).unwrap();
                column.as_primitive::<UInt64Type>().values().to_vec()
            })
            .collect()
    }
}

/// With checkpoints, an hour leaves memory only once a checkpoint has stored every row it
/// can get, and only below where readers split before the roll: 30 hours without a
/// checkpoint keep all 30; once one has stored them, the next roll moves the split and the
/// roll after it lets the older hours go.
#[test]
fn hours_leave_memory_once_stored_and_a_roll_after_the_split() {
    let f = fixture(10);
    lock(&f.state).keep_journal();
    let k = key("svc", "get");
    let t0 = f.clock.now_nanos();
    for _ in 0..30 * 60 {
        f.apply(&[request(k.clone(), f.clock.now_nanos(), 5)]);
        f.clock.advance(Duration::from_secs(60));
    }
    f.apply(&[]);
    let hours = |state: &SharedState| {
        let state = lock(state);
        let series = state.series.values().next().unwrap();
        series.hours.keys().map(|(h, _)| *h).collect::<Vec<_>>()
    };
    let first = minute_of(t0) - minute_of(t0) % 60;
    assert_eq!(hours(&f.state).len(), 30, "nothing stored: every hour kept");
    assert_eq!(lock(&f.state).first_hour_held(f.clock.now_nanos()), 0);
    // A checkpoint stores everything sealed so far; the split moves at the next roll, the
    // hours go at the one after.
    let now = f.clock.now_nanos();
    lock(&f.state).set_stored_before(minute_of(now));
    let split = lock(&f.state).first_hour_held(now);
    assert_eq!(split, hour_of(*Window::D1.minute_range(now).start()) - 60);
    assert!(split > first);
    f.clock.advance(Duration::from_secs(60));
    f.apply(&[]);
    assert_eq!(hours(&f.state)[0], first, "the first roll keeps them");
    f.clock.advance(Duration::from_secs(60));
    f.apply(&[]);
    assert_eq!(hours(&f.state)[0], split);
    assert_eq!(lock(&f.state).hours_released_before(), split);
}

fn key(service: &str, endpoint: &str) -> SeriesKey {
    SeriesKey {
        service: service.into(),
        endpoint: endpoint.into(),
        dimensions: Vec::new(),
    }
}

fn request(key: SeriesKey, end: u64, millis: u64) -> RequestRecord {
    RequestRecord {
        key,
        end_unix_nanos: end,
        duration_nanos: millis * 1_000_000,
        error: false,
        recommendations: 1,
    }
}

fn window(s: &SeriesSnapshot, w: Window) -> Option<&WindowQuantiles> {
    s.windows.iter().find(|x| x.window == w)
}

/// Requests of `service` per endpoint in `snap`, the overflow series as `__overflow__`.
fn requests_of(snap: &Snapshot, service: &str) -> BTreeMap<String, u64> {
    snap.series
        .iter()
        .filter(|s| &*s.key.service == service)
        .map(|s| (s.key.endpoint.to_string(), s.totals.requests()))
        .collect()
}

#[tokio::test]
async fn overflow_series_absorbs_requests_past_the_cap() {
    // Three slots, one of them kept for new services: two endpoint series.
    let f = fixture(3);
    let now = f.clock.now_nanos();
    let batch: Vec<_> = (0..5)
        .map(|i| request(key("svc", &format!("e{i}")), now, 10))
        .collect();
    let outcome = f.apply(&batch);
    assert_eq!(outcome.accepted, 5);
    assert_eq!(
        lock(&f.state).series_active(),
        3,
        "two series plus the overflow series"
    );
    assert_eq!(f.telemetry.series_overflow_total(), 3);
    assert_eq!(
        f.telemetry.series_overflow(),
        [("__other__".to_owned(), 3)],
        "svc is not at its own limit"
    );
    // A series seen before the cap keeps counting as itself.
    f.apply(&[request(key("svc", "e0"), now, 10)]);
    let snap = f.snapshot(&[Window::M1]).await;
    let e0 = snap
        .series
        .iter()
        .find(|s| &*s.key.endpoint == "e0")
        .unwrap();
    assert_eq!(e0.totals.ok, 2);
    assert_eq!(window(e0, Window::M1).unwrap().count, 2);
    let overflow = snap
        .series
        .iter()
        .find(|s| &*s.key.service == OVERFLOW)
        .unwrap();
    assert_eq!(&*overflow.key.endpoint, OVERFLOW);
    assert_eq!(overflow.totals.ok, 3);
    assert_eq!(window(overflow, Window::M1).unwrap().count, 3);
}

/// Past its own limit a service's new endpoints fold into its overflow series, with exact
/// totals and quantiles over them; other services are untouched.
#[tokio::test]
async fn a_service_past_its_limit_folds_into_its_own_overflow_series() {
    let f = fixture_with(100, 3);
    let now = f.clock.now_nanos();
    let a: Vec<_> = (0..10u64)
        .map(|i| request(key("a", &format!("e{i}")), now, 10 + i))
        .collect();
    f.apply(&a);
    f.apply(&[
        request(key("b", "x"), now, 5),
        request(key("b", "y"), now, 5),
    ]);
    let snap = f.snapshot(&[Window::M1]).await;
    let expected: BTreeMap<String, u64> = [("e0", 1), ("e1", 1), ("e2", 1), (OVERFLOW, 7)]
        .into_iter()
        .map(|(e, n)| (e.to_owned(), n))
        .collect();
    assert_eq!(requests_of(&snap, "a"), expected);
    assert_eq!(requests_of(&snap, "b").len(), 2);
    let folded = snap
        .series
        .iter()
        .find(|s| &*s.key.service == "a" && &*s.key.endpoint == OVERFLOW)
        .unwrap();
    // e3..e9 lasted 13..19 ms: the median of seven is 16 ms.
    let p50 = window(folded, Window::M1).unwrap().quantiles[0].1;
    assert!((p50 - 0.016).abs() / 0.016 < 0.01, "p50 {p50}");
    assert_eq!(
        f.telemetry.series_overflow(),
        [("a".to_owned(), 7), ("__other__".to_owned(), 0)]
    );
    assert_eq!(lock(&f.state).series_active(), 6);
}

/// Near the global cap, the slots kept in reserve go to services with no series yet, one
/// each (their overflow series); past the cap, to the global overflow series.
#[tokio::test]
async fn the_reserve_gives_new_services_a_series_of_their_own() {
    // max 10, 5 per service: 2 slots kept, 8 for endpoints.
    let f = fixture_with(10, 5);
    let now = f.clock.now_nanos();
    let many = |service: &str, n: u64| -> Vec<RequestRecord> {
        (0..n)
            .map(|i| request(key(service, &format!("e{i}")), now, 10))
            .collect()
    };
    f.apply(&many("a", 5));
    f.apply(&many("b", 5)); // 3 series, then the cap's open part is full
    f.apply(&many("c", 4)); // no series yet: its overflow series, with all four
    f.apply(&many("d", 2)); // the last reserved slot
    f.apply(&many("e", 3)); // nothing left: the global overflow series
    let snap = f.snapshot(&[Window::M1]).await;
    assert_eq!(requests_of(&snap, "a").len(), 5);
    assert_eq!(requests_of(&snap, "b").len(), 3);
    let only_overflow = |n: u64| -> BTreeMap<String, u64> { [(OVERFLOW.to_owned(), n)].into() };
    assert_eq!(requests_of(&snap, "c"), only_overflow(4));
    assert_eq!(requests_of(&snap, "d"), only_overflow(2));
    assert_eq!(requests_of(&snap, "e"), BTreeMap::new());
    assert_eq!(requests_of(&snap, OVERFLOW), only_overflow(2 + 3));
    assert_eq!(lock(&f.state).series_active(), 11);
    // c keeps its series, and new endpoints of c keep folding into it.
    f.apply(&many("c", 6));
    let snap = f.snapshot(&[Window::M1]).await;
    assert_eq!(requests_of(&snap, "c"), only_overflow(10));
    assert_eq!(f.telemetry.series_overflow_total(), 2 + 4 + 2 + 3 + 6);
}

/// Metric points go through the same limits as spans.
#[tokio::test]
async fn metric_points_fold_past_the_limit_as_spans_do() {
    use crate::metrics::{MetricPoint, PointValue};
    let f = fixture_with(100, 2);
    let now = f.clock.now_nanos();
    let points: Vec<MetricPoint> = (0..5u64)
        .map(|i| MetricPoint {
            stream: u128::from(i),
            key: key("m", &format!("e{i}")),
            error: false,
            start_unix_nanos: now - 60_000_000_000,
            time_unix_nanos: now,
            cumulative: false,
            whole_if_new: false,
            nanos_per_unit: 1e9,
            value: PointValue::Explicit {
                bounds: vec![0.1],
                counts: vec![3, 1],
            },
        })
        .collect();
    let outcome = lock(&f.state).apply_points(&points, now);
    assert_eq!(outcome.accepted, 5);
    let snap = f.snapshot(&[Window::M1]).await;
    let expected: BTreeMap<String, u64> = [("e0", 4), ("e1", 4), (OVERFLOW, 12)]
        .into_iter()
        .map(|(e, n)| (e.to_owned(), n))
        .collect();
    assert_eq!(requests_of(&snap, "m"), expected);
    assert_eq!(
        f.telemetry.series_overflow(),
        [("m".to_owned(), 12), ("__other__".to_owned(), 0)]
    );
}

/// A restored state folds the endpoints it folded before: the services' counts come back
/// with their series.
#[tokio::test]
async fn folding_survives_a_restore() {
    let f = fixture_with(100, 2);
    let now = f.clock.now_nanos();
    let a: Vec<_> = (0..4)
        .map(|i| request(key("a", &format!("e{i}")), now, 10))
        .collect();
    f.apply(&a);
    let image = lock(&f.state).checkpoint_image().unwrap();
    let g = fixture_with(100, 2);
    {
        let mut state = lock(&g.state);
        state.restore_begin(image.sealed_before, image.wal_seq);
        for s in image.series {
            state.restore_series(s.key, s.source, s.totals);
        }
        state.restore_finish(Vec::new()).unwrap();
    }
    g.apply(&[
        request(key("a", "e3"), now, 10),
        request(key("a", "e9"), now, 10),
    ]);
    let snap = g.snapshot(&[Window::M1]).await;
    let expected: BTreeMap<String, u64> = [("e0", 1), ("e1", 1), (OVERFLOW, 4)]
        .into_iter()
        .map(|(e, n)| (e.to_owned(), n))
        .collect();
    assert_eq!(requests_of(&snap, "a"), expected);
}

/// A service at its limit forgets endpoints idle for 3 h, so new ones get series again.
#[tokio::test]
async fn a_service_at_its_limit_forgets_idle_endpoints() {
    let f = fixture_with(100, 2);
    f.apply(&[
        request(key("a", "old"), f.clock.now_nanos(), 10),
        request(key("a", "busy"), f.clock.now_nanos(), 10),
        request(key("b", "quiet"), f.clock.now_nanos(), 10),
    ]);
    for _ in 0..180 {
        f.clock.advance(Duration::from_secs(60));
        f.apply(&[request(key("a", "busy"), f.clock.now_nanos(), 10)]);
    }
    f.apply(&[request(key("a", "new"), f.clock.now_nanos(), 10)]);
    let snap = f.snapshot(&[Window::M1]).await;
    let endpoints: Vec<_> = requests_of(&snap, "a").into_keys().collect();
    assert_eq!(endpoints, ["busy", "new"]);
    assert_eq!(requests_of(&snap, "b").len(), 1, "b is under its limit");
}

#[tokio::test]
async fn at_the_cap_idle_series_make_room() {
    let f = fixture(1);
    f.apply(&[request(key("svc", "old"), f.clock.now_nanos(), 10)]);
    f.clock.advance(Duration::from_secs(3 * 3_600));
    let outcome = f.apply(&[request(key("svc", "new"), f.clock.now_nanos(), 10)]);
    assert_eq!(outcome.accepted, 1);
    let snap = f.snapshot(&[Window::M1]).await;
    let names: Vec<_> = snap.series.iter().map(|s| &*s.key.endpoint).collect();
    assert_eq!(
        names,
        ["new"],
        "the idle series made room; nothing overflowed"
    );
}

#[tokio::test]
async fn hours_are_sealed_and_long_windows_read_them() {
    let f = fixture(10);
    let k = key("svc", "get");
    let t0 = f.clock.now_nanos(); // an hour boundary
    assert_eq!(minute_of(t0) % 60, 0);
    // One request per minute for 5 hours, each 10 ms longer than the last.
    for i in 0..300u64 {
        f.apply(&[request(k.clone(), f.clock.now_nanos(), 10 * (i + 1))]);
        f.clock.advance(Duration::from_secs(60));
    }
    let windows = [
        Window::M5,
        Window::H1,
        Window::H2,
        Window::H6,
        Window::D1,
        Window::D30,
    ];
    let snap = f.snapshot(&windows).await;
    let s = &snap.series[0];
    // Now: minute 300 (open, empty). 1h: minutes 241..=299; 2h: 181..=299.
    assert_eq!(window(s, Window::M5).unwrap().count, 4);
    assert_eq!(window(s, Window::H1).unwrap().count, 59);
    assert_eq!(window(s, Window::H2).unwrap().count, 119);
    // 6h, 1d and 30d reach back past t0: every request, the first hours from hour rows.
    for w in [Window::H6, Window::D1, Window::D30] {
        let q = window(s, w).unwrap();
        assert_eq!(q.count, 300, "{w}");
        let p50 = q.quantiles[0].1; // nearest rank 150 → 1.5 s
        assert!((p50 - 1.5).abs() / 1.5 < 0.01, "{w}: {p50}");
    }
    let state = lock(&f.state);
    let series = state.series.values().next().unwrap();
    let hours: Vec<u64> = series.hours.keys().map(|(h, _)| *h).collect();
    let m0 = minute_of(t0);
    assert_eq!(hours, [m0, m0 + 60, m0 + 120, m0 + 180, m0 + 240]);
    assert!(series.minutes.keys().all(|(m, _)| *m >= m0 + 300 - 179));
}

#[tokio::test]
async fn hour_rows_hold_the_same_counts_and_quantiles_as_their_minutes() {
    let f = fixture(10);
    let k = key("svc", "get");
    let t0 = f.clock.now_nanos();
    // 2 hours of varied requests, some errors, some late by a few minutes.
    for i in 0..120u64 {
        let now = f.clock.now_nanos();
        let mut batch: Vec<_> = (0..20)
            .map(|j| {
                let mut r = request(k.clone(), now, 1 + (i * 37 + j * 101) % 1_500);
                r.error = j % 7 == 0;
                r.recommendations = j;
                r
            })
            .collect();
        batch.push(request(
            k.clone(),
            now.saturating_sub(5 * MINUTE_NANOS),
            900,
        ));
        f.apply(&batch);
        f.clock.advance(Duration::from_secs(60));
    }
    let sums = |t: &str, c: &str| {
        format!(
            "SELECT sum({c}) FROM {t} WHERE {} < arrow_cast({}, 'Timestamp(Nanosecond, Some(\"+00:00\"))')",
            if t == "latency_minutes" {
                "minute"
            } else {
                "hour"
            },
            t0 + 120 * MINUTE_NANOS
        )
    };
    for c in [
        "requests",
        "errors",
        "recommendations",
        "requests_le_0_2",
        "requests_le_1",
    ] {
        let minutes = f.numbers(&sums("latency_minutes", c)).await;
        let hours = f.numbers(&sums("latency_hours", c)).await;
        assert_eq!(minutes, hours, "{c}");
        assert!(minutes[0] > 0, "{c}");
    }
    let requests = f.numbers(&sums("latency_hours", "requests")).await[0];
    assert_eq!(requests, 120 * 21);
    for q in [0.5, 0.9, 0.99, 0.999] {
        let sql = |t: &str, c: &str| {
            format!(
                "SELECT hdr_quantile(hdr_merge(hdr), {q}) FROM {t} WHERE {c} < arrow_cast({}, 'Timestamp(Nanosecond, Some(\"+00:00\"))')",
                t0 + 120 * MINUTE_NANOS
            )
        };
        let a = f
            .engine
            .query(&sql("latency_minutes", "minute"))
            .await
            .unwrap();
        let b = f.engine.query(&sql("latency_hours", "hour")).await.unwrap();
        let value = |o: &crate::sql::QueryOutput| {
            o.batches[0]
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0)
        };
        assert_eq!(value(&a), value(&b), "q {q}");
    }
    // The requests 5 minutes late at minutes 60 to 64 landed in the first hour after it was
    // sealed: five extra rows of that hour.
    let rows = f
        .numbers(&format!(
            "SELECT count(*) FROM latency_hours WHERE hour = arrow_cast({t0}, 'Timestamp(Nanosecond, Some(\"+00:00\"))')"
        ))
        .await;
    assert_eq!(rows, [6]);
}

#[tokio::test]
async fn late_spans_are_buffered_not_dense() {
    let f = fixture(10);
    let k = key("svc", "get");
    let now = f.clock.now_nanos();
    let late: Vec<_> = (1..=30u64)
        .map(|m| request(k.clone(), now - m * MINUTE_NANOS, m))
        .collect();
    f.apply(&late);
    {
        let state = lock(&f.state);
        let series = state.series.values().next().unwrap();
        assert!(series.open.is_none(), "no dense histogram for late minutes");
        assert_eq!(series.late.len(), 30);
    }
    let snap = f.snapshot(&[Window::H1]).await;
    assert_eq!(window(&snap.series[0], Window::H1).unwrap().count, 30);
}

#[tokio::test]
async fn windows_include_the_open_minute_and_respect_boundaries() {
    let f = fixture(10);
    let k = key("svc", "get");
    let t0 = f.clock.now_nanos();
    // Minute m-5 (outside 5m, inside 1h), m-4 (inside 5m), and the open minute m.
    f.apply(&[
        request(k.clone(), t0 - 5 * MINUTE_NANOS, 1),
        request(k.clone(), t0 - 4 * MINUTE_NANOS, 2),
        request(k.clone(), t0, 3),
    ]);
    let windows = [Window::M1, Window::M5, Window::H1];
    let snap = f.snapshot(&windows).await;
    let s = &snap.series[0];
    assert_eq!(window(s, Window::M1).unwrap().count, 1);
    assert_eq!(window(s, Window::M5).unwrap().count, 2);
    assert_eq!(window(s, Window::H1).unwrap().count, 3);
    // One minute later the open minute is empty: the 1m window has no data.
    f.clock.advance(Duration::from_secs(60));
    let snap = f.snapshot(&windows).await;
    let s = &snap.series[0];
    assert!(window(s, Window::M1).is_none());
    assert_eq!(window(s, Window::M5).unwrap().count, 1);
    assert_eq!(window(s, Window::H1).unwrap().count, 3);
}

#[tokio::test]
async fn late_data_for_a_sealed_minute_is_merged() {
    let f = fixture(10);
    let k = key("svc", "get");
    let t0 = f.clock.now_nanos();
    f.apply(&[request(k.clone(), t0, 100)]);
    f.clock.advance(Duration::from_secs(120));
    f.apply(&[request(k.clone(), t0 + 1, 300)]); // minute t0 is sealed by now
    let snap = f.snapshot(&[Window::M5]).await;
    let w = window(&snap.series[0], Window::M5).unwrap();
    assert_eq!(w.count, 2);
    let p99 = w.quantiles[2].1;
    assert!((p99 - 0.3).abs() / 0.3 < 0.01, "{p99}");
    assert_eq!(
        f.numbers("SELECT count(*) FROM latency_minutes").await,
        [2],
        "the late request is a second row of its minute"
    );
}

#[test]
fn too_old_and_future_spans_are_refused() {
    let f = fixture(10);
    let k = key("svc", "get");
    let now = f.clock.now_nanos();
    let hour = 3_600 * 1_000_000_000;
    let outcome = f.apply(&[
        request(k.clone(), now - hour, 1), // exactly at the age limit: kept
        request(k.clone(), now - hour - 1, 1), // too old
        request(k.clone(), now + 300 * 1_000_000_000, 1), // exactly at the skew limit: kept
        request(k.clone(), now + 300 * 1_000_000_000 + 1, 1), // future
    ]);
    assert_eq!(
        outcome,
        ApplyOutcome {
            accepted: 2,
            too_old: 1,
            future: 1,
            ..ApplyOutcome::default()
        }
    );
}

#[tokio::test]
async fn buckets_count_exact_durations_and_clamps_are_counted() {
    let f = fixture(10);
    let k = key("svc", "get");
    let now = f.clock.now_nanos();
    let mut r = request(k.clone(), now, 0);
    r.duration_nanos = 200_000_000; // exactly 0.2 s: in le="0.2"
    let mut tiny = r.clone();
    tiny.duration_nanos = 10;
    let mut huge = r.clone();
    huge.duration_nanos = 7_200 * 1_000_000_000;
    f.apply(&[r, tiny, huge]);
    let snap = f.snapshot(&[]).await;
    let b = &snap.series[0].totals.bucket_counts;
    assert_eq!(b[0], 1, "10 ns is in le=0.005");
    assert_eq!(b[5], 1, "0.2 s is in le=0.2");
    assert_eq!(b[12], 1, "2 h is in +Inf");
    assert_eq!(f.telemetry.clamped(crate::histogram::ClampBound::Low), 1);
    assert_eq!(f.telemetry.clamped(crate::histogram::ClampBound::High), 1);
    // The rollup's threshold columns agree with the buckets.
    assert_eq!(
        f.numbers("SELECT requests_le_0_2 FROM latency_minutes")
            .await,
        [2]
    );
    assert_eq!(
        f.numbers("SELECT requests_le_1 FROM latency_minutes").await,
        [2]
    );
    // So do the rows' bucket counts and sum, a late row's included: exact, as /metrics counts.
    let mut late = request(k.clone(), now - 120 * 1_000_000_000, 0);
    late.duration_nanos = 30_000_000;
    f.apply(&[late]);
    let snap = f.snapshot(&[]).await;
    let totals = &snap.series[0].totals;
    let mut cumulative = 0;
    let columns = crate::store::rollup::bucket_columns();
    assert_eq!(columns[0], "latency_le_0_005");
    assert_eq!(columns[5], "latency_le_0_2");
    assert_eq!(columns[11], "latency_le_10");
    for (n, column) in totals.bucket_counts[..12].iter().zip(&columns) {
        cumulative += n;
        let sql = format!("SELECT sum({column}) FROM latency_minutes");
        assert_eq!(f.numbers(&sql).await, [cumulative], "{sql}");
    }
    assert_eq!(
        f.numbers("SELECT sum(latency_sum_nanos) FROM latency_minutes")
            .await,
        [u64::try_from(totals.sum_nanos).unwrap()]
    );
    assert_eq!(
        totals.sum_nanos,
        200_000_000 + 10 + 7_200 * 1_000_000_000 + 30_000_000
    );
}

/// Counts at the ends of the range, in explicit and exponential points, delta and
/// cumulative, applied in any order: the state stays encodable (every minute and the
/// checkpoint image), whatever reached the aggregator.
mod extreme_counts {
    use super::*;
    use crate::metrics::{Dense, PointValue};
    use proptest::prelude::*;

    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(u64::MAX),
            Just(1 << 63),
            Just(1 << 62),
            Just((1 << 62) + 1),
            Just(i64::MAX as u64),
            0..1_000u64,
            any::<u64>(),
        ]
    }

    fn value() -> impl Strategy<Value = PointValue> {
        prop_oneof![
            (
                prop::collection::vec(count(), 3),
                prop::sample::select(vec![1e-9, 0.05, 1e6])
            )
                .prop_map(|(counts, b)| PointValue::Explicit {
                    bounds: vec![b, b * 4.0],
                    counts,
                }),
            (
                count(),
                prop::collection::vec(count(), 1..4),
                -10..20i32,
                -200..200i32
            )
                .prop_map(|(zero_count, counts, scale, offset)| {
                    PointValue::Exponential {
                        scale,
                        zero_count,
                        positive: Dense { offset, counts },
                        negative: Dense::default(),
                    }
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_state_stays_encodable(
            points in prop::collection::vec((value(), any::<bool>(), 0..3u64), 1..12)
        ) {
            let f = fixture(100);
            let now = START_SECS * 1_000_000_000;
            let mut agg = lock(&f.state);
            for (i, (value, cumulative, stream)) in points.into_iter().enumerate() {
                let point = MetricPoint {
                    stream: u128::from(stream),
                    key: SeriesKey {
                        service: Arc::from("svc"),
                        endpoint: Arc::from("/recs"),
                        dimensions: Vec::new(),
                    },
                    error: i % 2 == 0,
                    start_unix_nanos: now - 120_000_000_000,
                    time_unix_nanos: now - 60_000_000_000 + i as u64,
                    cumulative,
                    whole_if_new: true,
                    nanos_per_unit: 1e9,
                    value,
                };
                agg.apply_points(&[point], now);
            }
            f.clock.advance(Duration::from_secs(120));
            prop_assert!(agg.checkpoint_image().is_ok());
            drop(agg);
            // What scrapes and queries encode and decode works too.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let windows = [Window::M1, Window::M5, Window::H1];
            prop_assert!(rt.block_on(f.engine.snapshot(&windows)).is_ok());
            let quantile = "SELECT hdr_quantile(hdr_merge(hdr), 0.99) FROM latency_minutes";
            prop_assert!(rt.block_on(f.engine.query(quantile)).is_ok());
        }
    }
}
