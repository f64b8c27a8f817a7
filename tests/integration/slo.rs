//! SLO burn end to end: spans through the OpenTelemetry SDK's OTLP exporter under the fake
//! clock, recmeter's own alerts firing and resolving at the evaluations worked out by hand from
//! the test's traffic, across a `kill -9`, and the `recmeter_slo_*` families through promtool.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::harness::{Recmeter, Start};
use crate::spans::{Client, export, server_span};

/// An hour boundary: the test's minute 0.
const START: &str = "2026-03-02T10:00:00Z";

fn start() -> SystemTime {
    humantime::parse_rfc3339(START).unwrap()
}

/// Sends minute `m`'s spans: `per_minute` of 10 ms, the first `errors` of them failed, ending
/// at the start of minute `m`.
fn send_minutes(recmeter: &Recmeter, minutes: std::ops::Range<u64>, per_minute: u64, errors: u64) {
    let spans = minutes
        .flat_map(|m| {
            let end = start() + Duration::from_secs(m * 60);
            (0..per_minute)
                .map(move |i| server_span("GET /recs", end, 10_000_000, i < errors, m * 1_000 + i))
        })
        .collect();
    export(Client::HttpProto, &recmeter.addrs, "recs", vec![spans]);
}

/// Whether the availability objective's page and ticket alerts fire.
fn firing(recmeter: &Recmeter) -> (bool, bool) {
    let exposition = recmeter.metrics();
    let on = |severity| {
        exposition.value(
            "recmeter_slo_alert_firing",
            &[("slo", "availability"), ("severity", severity)],
        ) == 1.0
    };
    (on("page"), on("ticket"))
}

fn restart(dir: &Path, at_minute: u64) -> Recmeter {
    let at = humantime::format_rfc3339(start() + Duration::from_secs(at_minute * 60)).to_string();
    Recmeter::start_with(Start {
        config: "[storage]\ncheckpoint_interval = \"5m\"\n",
        dir: Some(dir),
        fake_clock: Some(&at),
        ..Start::default()
    })
}

/// 200 spans a minute, none failed, for 6 hours; then 10 minutes at 5% (10 a minute); then
/// clean again. Worked by hand for the default availability objective (99.95%, budget 0.0005)
/// and alert table, the burn over a window of n sent minutes holding b burst minutes being
/// 10b / (200n) / 0.0005 = 100b / n. After minute m is sent the clock opens minute m + 1 and
/// the evaluation runs: the 1h window holds sent minutes m − 58 ..= m, the 5m window
/// m − 3 ..= m, the 6h window those from the hour at or before m + 2 − 360, the 3d window all.
/// The burst is minutes 360 ..= 369.
/// - Page (1h and 5m over 14.4): 1h needs 100b/59 > 14.4, b ≥ 9: minute 368. 5m holds burst
///   minutes then. The 6h/30m rule never holds (6h: 100·10/369 = 2.7). Resolves when the 5m
///   window is clean: minute 373.
/// - Ticket (1d and 2h over 3, or 3d and 6h over 1): 1d never (100·10/370 = 2.7). 3d and 6h
///   hold the same minutes until 6h's first hour moves: over 1 once b > (m + 1)/100, minute
///   363. It resolves when the 6h window's first hour passes the burst: the hour at or before
///   m + 2 − 360 is 420 from minute 778 (until then 6h burns 1 000/n6 > 1 with n6 ≤ 360).
#[test]
fn a_burst_pages_and_tickets_then_both_resolve_at_the_worked_evaluations_across_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut recmeter = restart(dir.path(), 0);
    // Six quiet hours, sent an hour at a time (spans up to 59 minutes old are accepted).
    for h in 0..6u64 {
        recmeter.advance("59m");
        send_minutes(&recmeter, h * 60..h * 60 + 60, 200, 0);
        recmeter.advance("1m");
    }
    assert_eq!(firing(&recmeter), (false, false));
    let mut changes = Vec::new();
    let (mut page, mut ticket) = (false, false);
    for m in 360..780u64 {
        send_minutes(
            &recmeter,
            m..m + 1,
            200,
            if (360..370).contains(&m) { 10 } else { 0 },
        );
        recmeter.advance("1m");
        let now = firing(&recmeter);
        if now.0 != page {
            changes.push(("page", now.0, m));
            page = now.0;
        }
        if now.1 != ticket {
            changes.push(("ticket", now.1, m));
            ticket = now.1;
        }
        // kill -9 with the page firing, and again with only the ticket: each restart starts
        // from the log and the checkpoint, the clock where it was.
        if m == 370 || m == 500 {
            recmeter.kill9();
            recmeter = restart(dir.path(), m + 1);
            assert_eq!(
                firing(&recmeter),
                (page, ticket),
                "restarted at minute {}",
                m + 1
            );
        }
    }
    assert_eq!(
        changes,
        [
            ("ticket", true, 363),
            ("page", true, 368),
            ("page", false, 373),
            ("ticket", false, 778),
        ]
    );
    // Each transition once in slo_alerts, at its evaluation (minute m + 1). (In the quiet
    // hours, sent an hour at a time, each 59-minute jump without requests fired no_data, and
    // the hour's spans resolved it: a severity of its own, which touched no burn alert.)
    let rows = recmeter.sql_rows(
        "SELECT CAST(at AS BIGINT) AS at, severity, state FROM slo_alerts \
         WHERE slo = 'availability' AND severity <> 'no_data' ORDER BY at, severity",
    );
    let minute0 = crate::harness::nanos(start()) as i64;
    let got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| {
            (
                (r["at"].as_i64().unwrap() - minute0) / 60_000_000_000,
                r["severity"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(i64, String, String)> = [
        (364, "ticket", "firing"),
        (369, "page", "firing"),
        (374, "page", "resolved"),
        (779, "ticket", "resolved"),
    ]
    .iter()
    .map(|(at, s, st)| (*at, s.to_string(), st.to_string()))
    .collect();
    assert_eq!(got, want);
    // slo_status holds what the gauges show.
    let exposition = recmeter.metrics();
    for row in recmeter.sql_rows("SELECT slo, window, burn_rate FROM slo_status") {
        let (slo, window) = (
            row["slo"].as_str().unwrap(),
            row["window"].as_str().unwrap(),
        );
        let gauge = exposition.value(
            "recmeter_slo_burn_rate",
            &[("slo", slo), ("window", window)],
        );
        assert_eq!(row["burn_rate"].as_f64().unwrap(), gauge, "{slo} {window}");
    }
    // The SLO families pass promtool with the rest.
    let (status, _, body) = recmeter.get("/metrics", None);
    assert_eq!(status, 200);
    for family in [
        "recmeter_slo_burn_rate{slo=\"availability\",window=\"30d\"}",
        "recmeter_slo_error_budget_remaining_ratio{slo=\"latency\"}",
        "recmeter_slo_objective_ratio{slo=\"availability\"} 0.9995",
        "recmeter_slo_alert_firing{slo=\"latency\",severity=\"no_data\"} 0",
    ] {
        assert!(body.contains(family), "{family}");
    }
    crate::exposition::promtool_check_metrics(&body);
}
