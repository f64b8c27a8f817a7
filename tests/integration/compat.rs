//! Behaviour kept across internal rework: `/metrics` byte for byte for the same state, and a
//! store and WAL written by an earlier build restored with the same SQL answers. The files in
//! `tests/data/compat/` were written by the build named in `tests/data/README.md`, by these
//! tests run with `WRITE_COMPAT_FILES=1`; without it they check against them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use opentelemetry_sdk::trace::SpanData;

use crate::durability::{set_hook, wait_for};
use crate::harness::{Recmeter, Start, fake_start, nanos};
use crate::metrics::{points, send};
use crate::spans::{Client, export, span};

/// The configuration every run here uses: an extra dimension, two thresholds, and checkpoints
/// every second.
const CONFIG: &str = "[ingest]\ndimensions = [\"env\"]\n[aggregator]\nlatency_thresholds = [0.2, 1.0]\n[storage]\ncheckpoint_interval = \"1s\"\n";

/// Families whose values depend on wall time or scheduling, not on the state: left out of the
/// byte-for-byte comparison (their `# HELP` and `# TYPE` lines stay in).
const WALL_TIME_FAMILIES: [&str; 4] = [
    "recmeter_wal_fsync_seconds",
    "recmeter_checkpoint_last_success_timestamp_seconds",
    "recmeter_compactions",
    "recmeter_connections_open",
];

/// Prefixes of families added since the golden files were written, by capabilities built on
/// the seams (the SLO families of issue 25, the cost families of issue 28): left out whole, so
/// everything the files hold must still come out byte for byte.
const ADDED_FAMILIES: [&str; 2] = ["recmeter_slo_", "recmeter_cost_"];

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compat")
}

fn writing() -> bool {
    std::env::var_os("WRITE_COMPAT_FILES").is_some()
}

const SERVICES: [&str; 3] = ["front", "ranker", "retrieval"];

/// The spans of minute `m` for service `s`: 20, on two endpoints and two environments, one in
/// 17 failing, each serving `1 + i % 4` recommendations, ending up to 200 s before the
/// minute's clock (some in earlier minutes, as late spans do).
fn spans_of(m: u64, s: usize) -> Vec<SpanData> {
    let now = fake_start() + Duration::from_secs(60 * m);
    (0..20u64)
        .map(|i| {
            let id = m * 1_000 + s as u64 * 100 + i;
            span(
                if i % 3 == 0 { "GET /b" } else { "GET /a" },
                SpanKind::Server,
                now - Duration::from_secs((i * 7 + m) % 200),
                1_000_000 * (1 + (i * 37 + m * 11 + s as u64 * 5) % 1_500),
                id.is_multiple_of(17),
                vec![
                    KeyValue::new("env", if i % 2 == 0 { "prod" } else { "canary" }),
                    KeyValue::new("recs.count", (1 + i % 4) as i64),
                ],
                id,
            )
        })
        .collect()
}

/// The bucket counts of the histogram point sent at minute `m` (every tenth minute).
fn point_counts(m: u64) -> [u64; 3] {
    [m % 7 + 1, 2, 1]
}

/// Requests sent over minutes `0..through`: spans and histogram points.
fn requests_sent(through: u64) -> u64 {
    let spans = through * SERVICES.len() as u64 * 20;
    let points: u64 = (0..through)
        .filter(|m| m % 10 == 0)
        .map(|m| point_counts(m).iter().sum::<u64>())
        .sum();
    spans + points
}

/// Sends minutes `minutes` of the workload, moving the fake clock a minute after each.
fn drive(recmeter: &Recmeter, minutes: std::ops::Range<u64>) {
    for m in minutes {
        for (s, service) in SERVICES.iter().enumerate() {
            export(
                Client::HttpProto,
                &recmeter.addrs,
                service,
                vec![spans_of(m, s)],
            );
        }
        if m % 10 == 0 {
            let now = nanos(fake_start()) + m * 60_000_000_000;
            let request = points(
                "histograms",
                AggregationTemporality::Delta,
                now - 600_000_000_000,
                now,
                point_counts(m),
                7,
            );
            send(recmeter, &request);
        }
        recmeter.advance("60s");
    }
}

/// `text` without the sample lines of [`WALL_TIME_FAMILIES`] and every line of
/// [`ADDED_FAMILIES`].
fn without_wall_time(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let name = ["# HELP ", "# TYPE ", "# UNIT "]
                .iter()
                .find_map(|p| line.strip_prefix(p))
                .unwrap_or(line);
            !ADDED_FAMILIES.iter().any(|f| name.starts_with(f))
        })
        .filter(|line| {
            line.starts_with('#')
                || !WALL_TIME_FAMILIES.iter().any(|f| {
                    line.strip_prefix(f)
                        .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
                })
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Writes `text` to `file` in write mode; else fails unless they are the same.
fn golden(file: &str, text: &str) {
    let path = compat_dir().join(file);
    if writing() {
        std::fs::create_dir_all(compat_dir()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if expected != text {
        let first = expected
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(text.lines().count()));
        panic!(
            "{file} differs from line {}:\n  expected: {:?}\n  got:      {:?}",
            first + 1,
            expected.lines().nth(first),
            text.lines().nth(first)
        );
    }
}

#[test]
fn metrics_output_is_byte_identical_for_the_same_state() {
    let recmeter = Recmeter::start(CONFIG);
    drive(&recmeter, 0..70);
    let (status, _, text) = recmeter.get("/metrics", Some("text/plain;version=0.0.4"));
    assert_eq!(status, 200);
    golden("metrics.txt", &without_wall_time(&text));
    let (status, _, text) = recmeter.get("/metrics", Some("application/openmetrics-text"));
    assert_eq!(status, 200);
    golden("metrics.openmetrics.txt", &without_wall_time(&text));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The queries whose answers must not change: every column of both tables summed per series,
/// merged quantiles, and the requests per minute and hour.
const QUERIES: [&str; 4] = [
    "SELECT service, endpoint, env, source, sum(requests) AS requests, sum(errors) AS errors, \
     sum(recommendations) AS recommendations, sum(requests_le_0_2) AS le_0_2, \
     sum(requests_le_1) AS le_1, hdr_quantile(hdr_merge(hdr), 0.5) AS p50, \
     hdr_quantile(hdr_merge(hdr), 0.99) AS p99 \
     FROM latency_minutes GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    "SELECT service, endpoint, env, source, sum(requests) AS requests, sum(errors) AS errors, \
     sum(recommendations) AS recommendations, sum(requests_le_0_2) AS le_0_2, \
     sum(requests_le_1) AS le_1, hdr_quantile(hdr_merge(hdr), 0.999) AS p999 \
     FROM latency_hours GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    "SELECT CAST(minute AS VARCHAR) AS minute, sum(requests) AS requests, \
     sum(errors) AS errors FROM latency_minutes GROUP BY 1 ORDER BY 1",
    "SELECT CAST(hour AS VARCHAR) AS hour, sum(requests) AS requests, \
     hdr_quantile(hdr_merge(hdr), 0.9) AS p90 FROM latency_hours GROUP BY 1 ORDER BY 1",
];

#[test]
fn a_store_and_wal_from_an_earlier_build_restore_with_the_same_answers() {
    let fixture = compat_dir().join("data");
    if writing() {
        // 70 minutes stored by a checkpoint, then 5 more in the WAL only (checkpoints fail
        // after writing their files, which the restart then sweeps), then `kill -9`.
        let dir = tempfile::tempdir().unwrap();
        let recmeter = Recmeter::start_with(Start {
            config: CONFIG,
            dir: Some(dir.path()),
            ..Start::default()
        });
        drive(&recmeter, 0..70);
        let at = (nanos(fake_start()) / 1_000_000_000 + 70 * 60) as f64;
        wait_for("a checkpoint of the first 70 minutes", || {
            recmeter
                .metrics()
                .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
                >= at
        });
        set_hook(&recmeter, "fail_checkpoint_after_files", true);
        drive(&recmeter, 70..75);
        std::thread::sleep(Duration::from_secs(2));
        recmeter.kill9();
        let _ = std::fs::remove_dir_all(&fixture);
        copy_dir(&dir.path().join("data"), &fixture);
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, &dir.path().join("data"));
    let recmeter = Recmeter::start_with(Start {
        config: CONFIG,
        dir: Some(dir.path()),
        fake_clock: Some("2026-03-02T11:15:30Z"),
        ..Start::default()
    });
    let log = recmeter.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    assert!(!restored.contains("wal_records=0"), "{restored}");
    assert!(
        !restored.contains("unreferenced_files_deleted=0"),
        "the failed checkpoint's files are swept: {restored}"
    );
    let answers: Vec<serde_json::Value> = QUERIES
        .iter()
        .map(|q| serde_json::Value::Array(recmeter.sql_rows(q)))
        .collect();
    // Every request sent is in the minutes, whatever the earlier build's answers say.
    let total: u64 = answers[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, requests_sent(75));
    let text = serde_json::to_string_pretty(&answers).unwrap() + "\n";
    golden("answers.json", &text);
    if writing() {
        return;
    }
    // The earlier build's rows (row format 1) have no exact bucket counts: SQL shows them
    // null, and a query reading their buckets says it took them from the histograms.
    let legacy = recmeter.sql_rows(
        "SELECT count(*) AS n FROM latency_minutes WHERE latency_le_0_2 IS NULL \
         AND latency_sum_nanos IS NULL",
    );
    assert!(legacy[0]["n"].as_u64().unwrap() > 0, "{legacy:?}");
    let (status, json) = recmeter.prom_post(
        "/api/v1/query",
        &[
            (
                "query",
                "sum(increase(recs_latency_seconds_bucket{le=\"0.2\"}[30m]))",
            ),
            ("time", "2026-03-02T11:00:00Z"),
        ],
    );
    assert_eq!(status, 200, "{json}");
    assert!(json["warnings"].to_string().contains("HDR"), "{json}");
}
