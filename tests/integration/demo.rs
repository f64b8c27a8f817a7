//! `recmeter demo` shows live numbers within seconds of readiness.

use std::time::{Duration, Instant};

use crate::harness::{Recmeter, Start};

#[test]
fn demo_serves_requests_and_quantiles_soon_after_ready() {
    let recmeter = Recmeter::start_with(Start {
        command: "demo",
        fake_clock: None,
        ..Start::default()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = recmeter.metrics();
        let requests = m.sum("recs_requests_total");
        let gauges = m
            .samples
            .iter()
            .filter(|s| s.name == "recmeter_latency_quantile_seconds" && s.value > 0.0)
            .count();
        // Both exporters (gRPC and HTTP) deliver on their own schedules.
        let grpc = m.value("recmeter_spans_received_total", &[("transport", "grpc")]);
        let http = m.value("recmeter_spans_received_total", &[("transport", "http")]);
        if requests > 0.0 && gauges > 0 && grpc > 0.0 && http > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live numbers 10 s after ready:\n{}",
            recmeter.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
}

/// The demo seeds 15 days of history and their bill before it is ready: within 15 s of
/// readiness the day and week cost per recommendation are out, `cost_hourly` sums to the bill
/// it wrote (DuckDB's sum over the file), and `usage_hourly` holds the seeded
/// recommendations (the hours before the start) and the live ones.
#[test]
fn the_demo_has_history_and_costs_soon_after_ready() {
    let dir = tempfile::tempdir().unwrap();
    let recmeter = Recmeter::start_with(Start {
        command: "demo",
        fake_clock: None,
        dir: Some(dir.path()),
        ..Start::default()
    });
    let ready = Instant::now();
    let unit = |m: &crate::harness::Exposition, period: &str| {
        m.find(
            "recmeter_cost_per_recommendation_usd",
            &[("period", period), ("component", "platform")],
        )
    };
    loop {
        let m = recmeter.metrics();
        if let (Some(day), Some(week)) = (unit(&m, "day"), unit(&m, "week")) {
            // Priced near the target.
            assert!((0.0005..0.0015).contains(&day), "{day}");
            assert!((0.0005..0.0015).contains(&week), "{week}");
            assert_eq!(
                m.find("recmeter_cost_period_complete", &[("period", "week")]),
                Some(1.0)
            );
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(15),
            "no day and week cost 15 s after ready:\n{}",
            recmeter.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // cost_hourly sums to the bill, exactly.
    let bill = dir.path().join("demo-billing/recmeter-demo/focus.csv");
    let theirs = crate::billing::duckdb("focus-total.sql", &bill);
    let (billed, effective, lines) = &theirs[&("total".to_owned(), String::new())];
    let ours = recmeter.sql_rows(
        "SELECT CAST(SUM(effective_cost) AS VARCHAR) AS effective, \
                CAST(SUM(billed_cost) AS VARCHAR) AS billed FROM cost_hourly",
    );
    assert_eq!(ours[0]["effective"].as_str(), Some(effective.as_str()));
    assert_eq!(ours[0]["billed"].as_str(), Some(billed.as_str()));
    assert!(*lines > 1_000, "{lines}");
    // The seeded recommendations, as the log says, are the hours before the start's.
    let log = recmeter.log();
    let seeded: u64 = log
        .split("recommendations=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seeded recommendations in the log:\n{log}"));
    let start_hour = log
        .split("Demo: seeded")
        .next()
        .and_then(|l| l.lines().last())
        .and_then(|l| l.get(..13))
        .map(|h| format!("{h}:00:00Z"))
        .unwrap();
    let rows = recmeter.sql_rows(&format!(
        "SELECT CAST(SUM(CASE WHEN hour < TIMESTAMP '{start_hour}' THEN recommendations END) \
                AS BIGINT) AS seeded, \
                CAST(SUM(CASE WHEN hour >= TIMESTAMP '{start_hour}' THEN recommendations END) \
                AS BIGINT) AS live, \
                COUNT(*) AS n, COUNT(DISTINCT (hour, component)) AS keys FROM usage_hourly"
    ));
    assert_eq!(rows[0]["seeded"], seeded, "{start_hour}");
    assert_eq!(
        rows[0]["n"], rows[0]["keys"],
        "one row per hour and component"
    );
    let live = rows[0]["live"].as_u64().unwrap_or(0);
    let counted = recmeter.metrics().sum("recs_recommendations_total");
    assert!(live > 0 && live as f64 <= counted, "{live} vs {counted}");
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
}
