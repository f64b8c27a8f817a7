//! Cost per recommendation end to end: spans with `recs.count` through the OpenTelemetry
//! SDK's exporter under the fake clock, FOCUS bills landing in the billing bucket late, and the
//! `recmeter_cost_*` gauges, the cost tables and the cost objective checked against figures
//! worked out by hand; and the corpus FOCUS sample allocated by rules, its allocated plus
//! unallocated cost per day equal to DuckDB's total over the file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::billing::{data, duckdb};
use crate::durability::wait_for;
use crate::harness::{Recmeter, Start, nanos};
use crate::spans::{Client, export, span};

/// A Monday, just past midnight UTC: day 0.
const MONDAY: &str = "2026-03-02T00:00:30Z";

fn monday() -> SystemTime {
    humantime::parse_rfc3339(MONDAY).unwrap() - Duration::from_secs(30)
}

/// Recommendations each hour's span carries: 1 200 000 a day.
const RECS_PER_HOUR: i64 = 50_000;

/// The month's FOCUS export so far, as providers write it (each export holds the whole
/// billing period, and replaces the one before): for each `(day, cents)`, one line per hour
/// of that day (days after Monday) of `cents` effective cost (and one more cent billed), the
/// even hours priced `Dynamic`.
fn bill(days: &[(u64, u64)]) -> String {
    let mut text = String::from(
        "BillingAccountId,BillingCurrency,BillingPeriodStart,ChargePeriodStart,ChargePeriodEnd,\
         BilledCost,EffectiveCost,ProviderName,ServiceName,ServiceCategory,PricingCategory,Tags\n",
    );
    for (day, h) in days.iter().flat_map(|d| (0..24).map(move |h| (d, h))) {
        let &(day, cents) = day;
        let at = |h: u64| {
            humantime::format_rfc3339(monday() + Duration::from_secs((day * 24 + h) * 3_600))
                .to_string()
        };
        let pricing = if h % 2 == 0 { "Dynamic" } else { "Standard" };
        text.push_str(&format!(
            "1234,USD,2026-03-01T00:00:00Z,{},{},{}.{:02},{}.{:02},AWS,Amazon EC2,Compute,{pricing},{{}}\n",
            at(h),
            at(h + 1),
            (cents + 1) / 100,
            (cents + 1) % 100,
            cents / 100,
            cents % 100,
        ));
    }
    text
}

/// Sends one span ending 10 s ago with [`RECS_PER_HOUR`] recommendations, then moves the
/// clock an hour on; `hours` times.
fn send_hours(recmeter: &Recmeter, now: &mut SystemTime, hours: u64, sent: &mut i64) {
    for _ in 0..hours {
        let s = span(
            "GET /recs",
            SpanKind::Server,
            *now - Duration::from_secs(10),
            20_000_000,
            false,
            vec![KeyValue::new("recs.count", RECS_PER_HOUR)],
            nanos(*now) / 1_000_000_000,
        );
        export(Client::HttpProto, &recmeter.addrs, "recs", vec![vec![s]]);
        *sent += RECS_PER_HOUR;
        recmeter.advance("1h");
        *now += Duration::from_secs(3_600);
    }
}

fn gauge(recmeter: &Recmeter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    recmeter.metrics().find(name, labels)
}

fn put(bucket: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(bucket).unwrap();
    std::fs::write(bucket.join(name), text).unwrap();
}

/// Scans the bucket (a tick of its 5-minute clock) and waits for the day gauge to read
/// `start`.
fn land(recmeter: &Recmeter, now: &mut SystemTime, day_start: SystemTime) {
    recmeter.advance("5m");
    *now += Duration::from_secs(300);
    let want = nanos(day_start) as f64 / 1e9;
    wait_for("the day's cost", || {
        gauge(
            recmeter,
            "recmeter_cost_period_start_timestamp_seconds",
            &[("period", "day")],
        ) == Some(want)
    });
    // One more SLO evaluation, which reads the cost evaluation.
    recmeter.advance("1m");
    *now += Duration::from_secs(60);
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn late_bills_a_restatement_and_the_cost_objective_against_figures_worked_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let config = format!(
        "[billing]\nurl = \"{}\"\nscan_interval = \"5m\"\n\
         [[slo.objectives]]\nname = \"unit_cost\"\nkind = \"cost\"\nthreshold = 0.001\n",
        bucket.display()
    );
    let recmeter = Recmeter::start_with(Start {
        config: &config,
        fake_clock: Some(MONDAY),
        ..Start::default()
    });
    let mut now = humantime::parse_rfc3339(MONDAY).unwrap();
    let mut sent = 0;
    // No bill yet: no cost gauge at all, never a 0.
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_usd",
            &[("period", "day"), ("component", "platform")]
        ),
        None
    );
    // Day 0's traffic, then two hours of day 1's.
    send_hours(&recmeter, &mut now, 26, &mut sent);
    // Day 0's bill comes in at 02:00 on day 1: $45 an hour, $1 080, over 1 200 000
    // recommendations: $0.0009 each.
    put(&bucket, "bill.csv", &bill(&[(0, 4_500)]));
    let day = |d: u64| monday() + Duration::from_secs(d * 86_400);
    land(&recmeter, &mut now, day(0));
    let platform = [("period", "day"), ("component", "platform")];
    assert_eq!(
        gauge(&recmeter, "recmeter_cost_usd", &platform),
        Some(1_080.0)
    );
    let unit = gauge(&recmeter, "recmeter_cost_per_recommendation_usd", &platform).unwrap();
    assert!(close(unit, 0.0009), "{unit}");
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_period_complete",
            &[("period", "day")]
        ),
        Some(1.0)
    );
    // Half the hours' compute priced Dynamic, at the same price.
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_dynamic_share_ratio",
            &[("period", "day")]
        ),
        Some(0.5)
    );
    // The data reaches the end of day 0.
    let lag = gauge(&recmeter, "recmeter_cost_data_lag_seconds", &[]).unwrap();
    assert!(
        close(lag, (nanos(now) - nanos(day(1))) as f64 / 1e9),
        "{lag}"
    );
    // The latest complete hour is day 0's last: $45 over 50 000.
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_period_start_timestamp_seconds",
            &[("period", "hour")]
        ),
        Some(nanos(day(1) - Duration::from_secs(3_600)) as f64 / 1e9)
    );
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_usd",
            &[("period", "hour"), ("component", "platform")]
        ),
        Some(45.0)
    );
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_usd",
            &[("period", "day"), ("component", "unallocated")]
        ),
        Some(0.0)
    );
    // The week is still open: not reported.
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_usd",
            &[("period", "week"), ("component", "platform")]
        ),
        None
    );
    let firing = |r: &Recmeter| {
        gauge(
            r,
            "recmeter_slo_alert_firing",
            &[("slo", "unit_cost"), ("severity", "ticket")],
        )
    };
    assert_eq!(firing(&recmeter), Some(0.0));
    // Day 1's bill is late: at 01:00 on day 2 the day gauges still report day 0, with the
    // lag grown, and SQL shows day 1 with no cost rather than a cost of 0.
    send_hours(&recmeter, &mut now, 23, &mut sent);
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_period_start_timestamp_seconds",
            &[("period", "day")]
        ),
        Some(nanos(day(0)) as f64 / 1e9)
    );
    let lag = gauge(&recmeter, "recmeter_cost_data_lag_seconds", &[]).unwrap();
    assert!(
        close(lag, (nanos(now) - nanos(day(1))) as f64 / 1e9),
        "{lag}"
    );
    assert!(lag > 86_400.0, "{lag}");
    let rows = recmeter.sql_rows(&format!(
        "SELECT CAST(effective_cost AS VARCHAR) AS cost, recommendations, complete \
         FROM cost_per_recommendation WHERE period = 'day' AND component = 'platform' \
         AND period_start = to_timestamp_nanos({})",
        nanos(day(1))
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["cost"].is_null(), "{rows:?}");
    assert_eq!(rows[0]["recommendations"], 24 * RECS_PER_HOUR);
    assert_eq!(rows[0]["complete"], false);
    // Day 1's bill: $62.50 an hour, $1 500 over 1 200 000: $0.00125, over the objective's
    // $0.001: its ticket fires.
    put(&bucket, "bill.csv", &bill(&[(0, 4_500), (1, 6_250)]));
    land(&recmeter, &mut now, day(1));
    let unit = gauge(&recmeter, "recmeter_cost_per_recommendation_usd", &platform).unwrap();
    assert!(close(unit, 0.00125), "{unit}");
    assert_eq!(firing(&recmeter), Some(1.0));
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_restated_total",
            &[("period", "day")]
        ),
        Some(0.0)
    );
    // The bill is restated to $45 an hour: day 1 changes ($0.0009 again), which counts as a
    // restatement of one day and its 24 hours, and the ticket resolves.
    put(&bucket, "bill.csv", &bill(&[(0, 4_500), (1, 4_500)]));
    recmeter.advance("5m");
    now += Duration::from_secs(300);
    wait_for("the restated day", || {
        gauge(&recmeter, "recmeter_cost_usd", &platform) == Some(1_080.0)
    });
    recmeter.advance("1m");
    assert_eq!(firing(&recmeter), Some(0.0));
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_restated_total",
            &[("period", "day")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gauge(
            &recmeter,
            "recmeter_cost_restated_total",
            &[("period", "hour")]
        ),
        Some(24.0)
    );
    // The transitions, each once, with the day's cost per recommendation.
    let alerts = recmeter
        .sql_rows("SELECT state, severity FROM slo_alerts WHERE slo = 'unit_cost' ORDER BY at");
    let states: Vec<(&str, &str)> = alerts
        .iter()
        .map(|r| {
            (
                r["state"].as_str().unwrap(),
                r["severity"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, [("firing", "ticket"), ("resolved", "ticket")]);
    // The tables sum to the bills and to the recommendations sent.
    let rows = recmeter.sql_rows(
        "SELECT CAST(SUM(effective_cost) AS VARCHAR) AS effective, \
                CAST(SUM(billed_cost) AS VARCHAR) AS billed FROM cost_hourly",
    );
    assert_eq!(rows[0]["effective"], "2160.000000000000");
    assert_eq!(rows[0]["billed"], "2160.480000000000");
    let rows = recmeter.sql_rows(
        "SELECT CAST(SUM(recommendations) AS BIGINT) AS recs, COUNT(*) AS n, \
                COUNT(DISTINCT hour) AS hours FROM usage_hourly",
    );
    assert_eq!(rows[0]["recs"], sent);
    assert_eq!(
        rows[0]["n"], rows[0]["hours"],
        "one row per hour and component"
    );
    // cost_per_recommendation agrees with the gauges, in decimals.
    let rows = recmeter.sql_rows(&format!(
        "SELECT CAST(cost_per_recommendation AS VARCHAR) AS unit FROM cost_per_recommendation \
         WHERE period = 'day' AND component = 'platform' \
         AND period_start = to_timestamp_nanos({})",
        nanos(day(0))
    ));
    assert_eq!(rows[0]["unit"], "0.000900000000");
}

/// Shared cost split by requests, end to end: spans of two services through the SDK's
/// exporter, the components found by their globs, and a bill whose hour 0 is split 3 to 1 as
/// the hour's requests were, while hour 1, without requests, goes to `unallocated`.
#[test]
fn shared_cost_is_split_by_each_hours_requests_from_the_spans() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    // Components and no rules: every line is shared.
    let config = format!(
        "[billing]\nurl = \"{}\"\n\
         [[cost.components]]\nname = \"ranker\"\nservices = [\"ranker\"]\n\
         [[cost.components]]\nname = \"front\"\nservices = [\"front*\"]\n",
        bucket.display()
    );
    let recmeter = Recmeter::start_with(Start {
        config: &config,
        fake_clock: Some(MONDAY),
        ..Start::default()
    });
    let now = humantime::parse_rfc3339(MONDAY).unwrap();
    for (service, n) in [("ranker", 300u64), ("front-web", 100)] {
        let spans = (0..n)
            .map(|i| {
                span(
                    "GET /recs",
                    SpanKind::Server,
                    now - Duration::from_secs(10),
                    5_000_000,
                    false,
                    Vec::new(),
                    i + if service == "ranker" { 0 } else { 1_000 },
                )
            })
            .collect();
        export(Client::HttpProto, &recmeter.addrs, service, vec![spans]);
    }
    // Hour 0: $100.000000000001 shared 3 to 1; hour 1: $10, no requests.
    let mut text = String::from(
        "BillingAccountId,BillingCurrency,BillingPeriodStart,ChargePeriodStart,ChargePeriodEnd,\
         BilledCost,EffectiveCost,ProviderName,ServiceName\n",
    );
    for (h, cost) in [(0u64, "100.000000000001"), (1, "10")] {
        let at = |h: u64| humantime::format_rfc3339(monday() + Duration::from_secs(h * 3_600));
        text.push_str(&format!(
            "1234,USD,2026-03-01T00:00:00Z,{},{},{cost},{cost},AWS,Amazon S3\n",
            at(h),
            at(h + 1)
        ));
    }
    put(&bucket, "bill.csv", &text);
    recmeter.advance("2h");
    wait_for("the bill's hours", || {
        recmeter.sql_rows("SELECT COUNT(*) AS n FROM cost_hourly")[0]["n"] == 3
    });
    let rows = recmeter.sql_rows(
        "SELECT CAST(hour AS VARCHAR) AS hour, component, \
                CAST(effective_cost AS VARCHAR) AS cost FROM cost_hourly ORDER BY hour, component",
    );
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("hour"), s("component"), s("cost"))
        })
        .collect();
    // `ranker` (first in the config): 100.000000000001 × 300/400 = 75.00000000000075,
    // rounded toward zero to 12 decimals; `front`, the last share, takes the remainder.
    let hour = |h: u64| format!("2026-03-02T0{h}:00:00Z");
    let want = [
        (hour(0), "front", "25.000000000001"),
        (hour(0), "ranker", "75.000000000000"),
        (hour(1), "unallocated", "10.000000000000"),
    ];
    assert_eq!(got.len(), 3, "{got:?}");
    for ((h, c, v), (wh, wc, wv)) in got.iter().zip(want) {
        assert!(h.starts_with(&wh[..13]), "{got:?}");
        assert_eq!((c.as_str(), v.as_str()), (wc, wv), "{got:?}");
    }
    let usage =
        recmeter.sql_rows("SELECT component, requests FROM usage_hourly ORDER BY component");
    assert_eq!(usage.len(), 2, "{usage:?}");
    assert_eq!(usage[0]["component"], "front");
    assert_eq!(usage[0]["requests"], 100);
    assert_eq!(usage[1]["component"], "ranker");
    assert_eq!(usage[1]["requests"], 300);
}

#[test]
fn the_focus_sample_allocated_by_rules_reconciles_with_duckdb_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let file = bucket.join("focus/focus_sample.csv");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(data("focus_sample.csv"), &file).unwrap();
    // One shared rule split by fixed ratios (the sample's hours have no requests), one tag
    // rule, and the rest unallocated.
    let config = format!(
        "[billing]\nurl = \"{}\"\n\
         [[cost.components]]\nname = \"ranker\"\nservices = [\"ranker\"]\nratio = \"0.7\"\n\
         [[cost.components]]\nname = \"front\"\nservices = [\"front\"]\nratio = \"0.3\"\n\
         [[cost.allocation]]\nservice = \"Amazon Elastic Compute Cloud*\"\nshared = true\n\
         [[cost.allocation]]\ntags = {{ environment = \"prod\" }}\ncomponent = \"ranker\"\n",
        bucket.display()
    );
    let recmeter = Recmeter::start_in(&config, dir.path());
    recmeter.advance("1s");
    wait_for("the sample's cost", || {
        recmeter.sql_rows("SELECT COUNT(*) AS n FROM cost_hourly")[0]["n"]
            .as_u64()
            .unwrap()
            > 0
    });
    let ours = recmeter.sql_rows(
        "SELECT 'day' AS kind, to_char(hour, '%Y-%m-%d') AS key, \
                CAST(SUM(billed_cost) AS VARCHAR) AS billed, \
                CAST(SUM(effective_cost) AS VARCHAR) AS effective \
         FROM cost_hourly GROUP BY 1, 2 \
         UNION ALL \
         SELECT 'ranker_day', to_char(hour, '%Y-%m-%d'), CAST(SUM(billed_cost) AS VARCHAR), \
                CAST(SUM(effective_cost) AS VARCHAR) \
         FROM cost_hourly WHERE component = 'ranker' AND coalesce(service_name, '') \
              NOT LIKE 'Amazon Elastic Compute Cloud%' GROUP BY 1, 2 \
         UNION ALL \
         SELECT 'shared_day', to_char(hour, '%Y-%m-%d'), CAST(SUM(billed_cost) AS VARCHAR), \
                CAST(SUM(effective_cost) AS VARCHAR) \
         FROM cost_hourly WHERE component IN ('ranker', 'front') AND service_name \
              LIKE 'Amazon Elastic Compute Cloud%' GROUP BY 1, 2",
    );
    let mut ours: Vec<(String, String, String, String)> = ours
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("kind"), s("key"), s("billed"), s("effective"))
        })
        .collect();
    ours.sort();
    let mut theirs: Vec<(String, String, String, String)> = duckdb("focus-allocation.sql", &file)
        .into_iter()
        .map(|((kind, key), (billed, effective, _))| (kind, key, billed, effective))
        .collect();
    theirs.sort();
    assert!(
        theirs.iter().filter(|t| t.0 == "day").count() >= 28,
        "{theirs:?}"
    );
    assert!(theirs.iter().any(|t| t.0 == "ranker_day"), "{theirs:?}");
    assert!(theirs.iter().any(|t| t.0 == "shared_day"), "{theirs:?}");
    assert_eq!(ours, theirs);
    // Every hour's shared cost is split 70/30 to the unit, the remainder to `front`.
    let split = recmeter.sql_rows(
        "SELECT hour, service_name, \
                CAST(SUM(CASE WHEN component = 'ranker' THEN effective_cost END) AS VARCHAR) AS r, \
                CAST(SUM(effective_cost) AS VARCHAR) AS t \
         FROM cost_hourly WHERE service_name LIKE 'Amazon Elastic Compute Cloud%' \
              AND component <> 'unallocated' GROUP BY 1, 2",
    );
    assert!(!split.is_empty());
    for row in split {
        let units = |k: &str| -> i128 {
            row[k]
                .as_str()
                .map_or(0, |v| v.replace('.', "").parse().unwrap())
        };
        let (r, t) = (units("r"), units("t"));
        // Rounded toward zero: 0.7 × t, whichever its sign.
        assert_eq!(r, t * 7 / 10, "{row:?}");
    }
}

/// `recmeter rules` with a cost objective: promtool accepts the file, and its unit test fires
/// the alert on a complete day over the threshold only (not on an incomplete one).
#[test]
fn the_cost_objectives_prometheus_rule_passes_promtool_and_fires_on_complete_days() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recmeter.toml");
    std::fs::write(
        &config,
        "[[slo.objectives]]\nname = \"availability\"\nkind = \"availability\"\nobjective = 0.9995\n\
         [[slo.objectives]]\nname = \"unit_cost\"\nkind = \"cost\"\nthreshold = 0.001\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .args(["rules", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, &out.stdout).unwrap();
    let tests = dir.path().join("tests.yaml");
    std::fs::write(
        &tests,
        r#"rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'recmeter_cost_per_recommendation_usd{period="day", component="platform"}'
        values: '0.0009x10 0.00125x10 0.00125x10'
      - series: 'recmeter_cost_period_complete{period="day"}'
        values: '1x10 1x10 0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: RecmeterCostPerRecommendation
        exp_alerts: []
      - eval_time: 15m
        alertname: RecmeterCostPerRecommendation
        exp_alerts:
          - exp_labels:
              severity: ticket
              slo: unit_cost
              period: day
              component: platform
            exp_annotations:
              summary: "unit_cost: 0.001250 USD per recommendation on the latest complete day (ticket)"
              description: "The platform's cost per recommendation on the latest complete UTC day is over 0.001 USD."
      - eval_time: 25m
        alertname: RecmeterCostPerRecommendation
        exp_alerts: []
"#,
    )
    .unwrap();
    for args in [
        vec!["check", "rules", "rules.yaml"],
        vec!["test", "rules", "tests.yaml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("promtool on PATH (scripts/test.sh installs Debian's prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&std::fs::read(&rules).unwrap())
        );
    }
}
