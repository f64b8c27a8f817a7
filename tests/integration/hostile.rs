//! A hostile client against the release build, one test per way it once broke recmeter: queries
//! that overflowed the stack or the memory, runaway queries that kept a core busy after their
//! 503, metric points whose counts could not be encoded, a corrupt WAL, bodies that decode
//! into gigabytes, a full disk and idle connections. Memory and CPU are read from `/proc` on
//! the real server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Histogram,
    HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, exponential_histogram_data_point,
    metric,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::durability::{set_hook, wait_for};
use crate::harness::{Recmeter, Start, fake_start, nanos};
use crate::limits::{grpc_call_with, one_span_request};

const PROTOBUF: &str = "application/x-protobuf";

/// A field of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Resets the peak RSS the kernel keeps for `pid` (`VmHWM`) to the RSS now, and returns that.
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    status_bytes(pid, "VmRSS:")
}

fn peak(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: utime is the 12th, stime 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn json_error(status: u16, body: &[u8], what: &str) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert!((400..500).contains(&status), "{what}: {status} {text}");
    let value: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
    assert_eq!(value["status"], "error", "{what}: {text}");
    value
}

#[test]
fn deep_queries_answer_400_and_the_service_keeps_serving() {
    let recmeter = Recmeter::start("");
    let queries = [
        ("1+1… × 2 000", format!("SELECT 1{}", "+1".repeat(2_000))),
        (
            "OR × 2 000",
            format!("SELECT 1 WHERE 1=1{}", " OR 1=1".repeat(2_000)),
        ),
        (
            "UNION ALL × 3 000",
            format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(3_000)),
        ),
        (
            "'a'||… × 3 000",
            format!("SELECT 'a'{}", "||'a'".repeat(3_000)),
        ),
        ("1+… × 100 000", format!("SELECT 1{}", "+1".repeat(100_000))),
    ];
    for (what, sql) in &queries {
        let (status, _, body) = recmeter.sql(sql, None);
        let error = json_error(status, &body, what);
        assert_eq!(status, 400, "{what}");
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("sql.max_expression_depth"),
            "{what}: {error}"
        );
    }
    // Just under the limit still plans and runs on the query threads' stacks.
    let deep = format!("SELECT 1{}", "+1".repeat(990));
    assert_eq!(recmeter.sql_rows(&deep).len(), 1);
    let deep_or = format!("SELECT 1 WHERE 1=0{}", " OR 1=0".repeat(320));
    assert_eq!(recmeter.sql_rows(&deep_or).len(), 0);
    let unions = format!("SELECT 1 AS one{}", " UNION ALL SELECT 1".repeat(300));
    assert_eq!(recmeter.sql_rows(&unions).len(), 301);
    let concat = format!("SELECT 'a'{} AS s", "||'a'".repeat(900));
    assert_eq!(recmeter.sql_rows(&concat).len(), 1);
    let joins = format!(
        "SELECT count(*) AS n FROM (VALUES (1)) AS t0{}",
        (1..150)
            .map(|i| format!(", (VALUES (1)) AS t{i}"))
            .collect::<String>()
    );
    assert_eq!(recmeter.sql_rows(&joins).len(), 1);
    assert_eq!(recmeter.sql_rows("SELECT 1 AS one").len(), 1);
}

#[test]
fn values_larger_than_the_bound_are_refused_within_a_gib() {
    let recmeter = Recmeter::start("");
    let pid = recmeter.pid();
    let queries = [
        "SELECT length(repeat('a', 1000000000))",
        "SELECT length(repeat(arrow_cast('a', 'LargeUtf8'), 1000000000000))",
        "SELECT length(lpad('a', 1000000000))",
        "SELECT length(regexp_replace(repeat('a', 1000000), 'a', repeat('b', 500), 'g'))",
        "SELECT length(string_agg(repeat('x', 1000000), ',')) FROM generate_series(1, 1500)",
        "SELECT length(string_agg(repeat('x', 40000), ',')) FROM generate_series(1, 100000)",
        // Each batch within the bound, the aggregate past the memory pool.
        "SELECT length(string_agg(repeat('x', 4000), ',')) FROM generate_series(1, 300000)",
    ];
    for sql in queries {
        let before = reset_peak(pid);
        let (status, _, body) = recmeter.sql(sql, None);
        let error = json_error(status, &body, sql);
        assert_eq!(status, 422, "{sql}: {error}");
        let grown = peak(pid).saturating_sub(before);
        assert!(
            grown < 1 << 30,
            "{sql}: peak RSS {} MiB above before",
            grown >> 20
        );
    }
    assert_eq!(recmeter.sql_rows("SELECT repeat('a', 1000) AS a").len(), 1);
}

#[test]
fn a_cancelled_query_stops_its_work_and_frees_the_engine() {
    let recmeter = Recmeter::start("[sql]\ntimeout = \"3s\"\n");
    let pid = recmeter.pid();
    let runaway = "SELECT count(*) FROM generate_series(1, 3000) a, generate_series(1, 3000) b, \
                   generate_series(1, 3000) c, generate_series(1, 3000) d";
    let api = recmeter.api_url("/api/v1/sql");
    let started = Instant::now();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || {
                let response = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap()
                    .post(api)
                    .body(runaway)
                    .send()
                    .unwrap();
                (response.status().as_u16(), Instant::now())
            })
        })
        .collect();
    let answers: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    for (status, at) in &answers {
        assert_eq!(*status, 503);
        let after = at.duration_since(started);
        assert!(after < Duration::from_secs(6), "answered after {after:?}");
    }
    // Right after, the engine answers at once; within a second the queries' work has
    // stopped: the second after that uses (next to) no CPU.
    let asked = Instant::now();
    assert_eq!(recmeter.sql_rows("SELECT 1 AS one").len(), 1);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1).saturating_sub(asked.elapsed()));
    let ticks = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - ticks;
    assert!(used <= 10, "{used} ticks of CPU in the second after");
}

#[test]
fn smaller_findings_hold() {
    let recmeter = Recmeter::start("[auth]\napi_token = \"s3cret\"\n");
    let client = reqwest::blocking::Client::new();
    let post = |body: Vec<u8>| {
        let response = client
            .post(recmeter.api_url("/api/v1/sql"))
            .bearer_auth("s3cret")
            .body(body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.bytes().unwrap().to_vec(),
        )
    };
    // A body over the SQL limit: a JSON 413.
    let (status, body) = post(vec![b' '; 2 << 20]);
    assert_eq!(status, 413);
    assert!(
        json_error(status, &body, "2 MB")["error"]
            .as_str()
            .unwrap()
            .contains("1048576")
    );
    // A regular expression nested past the regex engine's limit is the query's fault, and
    // the log never holds more than 1 KiB of it.
    let pattern = format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000));
    let (status, body) = post(format!("SELECT regexp_like('a', '{pattern}')").into_bytes());
    json_error(status, &body, "nested regex");
    assert_eq!(status, 400);
    let (status, body) = post(
        format!("SELECT regexp_replace(s, '{pattern}', 'x') FROM (VALUES ('a')) AS t(s)")
            .into_bytes(),
    );
    json_error(status, &body, "nested regex over a column");
    assert!(
        recmeter.log().lines().all(|l| l.len() < 2048),
        "a log line holds more than 2 KiB"
    );
    // The test routes sit behind the API token too.
    let hook = |token: Option<&str>| {
        let mut request = client
            .post(recmeter.api_url("/-/test/clock"))
            .header("Content-Type", "application/json")
            .body(r#"{"advance":"1s"}"#);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(hook(None), 401);
    assert_eq!(hook(Some("s3cret")), 200);
}

fn service_resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("points".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// One latency metric whose points count `counts` each, explicit or exponential.
fn extreme_points(
    exponential: bool,
    temporality: AggregationTemporality,
    counts: &[u64],
) -> ExportMetricsServiceRequest {
    let time = nanos(fake_start());
    let data = if exponential {
        metric::Data::ExponentialHistogram(ExponentialHistogram {
            aggregation_temporality: temporality as i32,
            data_points: counts
                .iter()
                .enumerate()
                .map(|(i, &c)| ExponentialHistogramDataPoint {
                    start_time_unix_nano: time - 60_000_000_000,
                    time_unix_nano: time - 1_000 * i as u64,
                    count: c,
                    scale: 3,
                    positive: Some(exponential_histogram_data_point::Buckets {
                        offset: -60,
                        bucket_counts: vec![c],
                    }),
                    ..Default::default()
                })
                .collect(),
        })
    } else {
        metric::Data::Histogram(Histogram {
            aggregation_temporality: temporality as i32,
            data_points: counts
                .iter()
                .enumerate()
                .map(|(i, &c)| HistogramDataPoint {
                    start_time_unix_nano: time - 60_000_000_000,
                    time_unix_nano: time - 1_000 * i as u64,
                    count: c,
                    bucket_counts: vec![c, 0, 0],
                    explicit_bounds: vec![0.05, 0.2],
                    ..Default::default()
                })
                .collect(),
        })
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: service_resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "recs_latency_seconds".into(),
                    data: Some(data),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn points_with_counts_past_encoding_are_rejected_and_nothing_breaks() {
    let recmeter = Recmeter::start("");
    for exponential in [false, true] {
        for temporality in [
            AggregationTemporality::Cumulative,
            AggregationTemporality::Delta,
        ] {
            for counts in [&[1u64 << 63][..], &[u64::MAX], &[1 << 62, 1 << 62]] {
                let request = extreme_points(exponential, temporality, counts);
                let (status, body) =
                    recmeter.post_otlp_to("/v1/metrics", PROTOBUF, request.encode_to_vec());
                assert_eq!(status, 200);
                let answer = ExportMetricsServiceResponse::decode(body.as_slice()).unwrap();
                let partial = answer.partial_success.expect("partial_success");
                assert_eq!(
                    partial.rejected_data_points,
                    counts.len() as i64,
                    "{exponential} {temporality:?} {counts:?}: {}",
                    partial.error_message
                );
            }
        }
    }
    // Real points still count, and everything that encodes the state works.
    let request = extreme_points(false, AggregationTemporality::Delta, &[7]);
    let (status, _) = recmeter.post_otlp_to("/v1/metrics", PROTOBUF, request.encode_to_vec());
    assert_eq!(status, 200);
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), 7.0);
    assert_eq!(
        recmeter.sql_rows("SELECT sum(requests) AS r FROM latency_minutes")[0]["r"],
        7
    );
    let before = m.value("recmeter_checkpoint_last_success_timestamp_seconds", &[]);
    recmeter.advance("30s");
    let deadline = Instant::now() + Duration::from_secs(30);
    while recmeter
        .metrics()
        .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
        <= before
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint:\n{}",
            recmeter.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("data/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments
}

#[test]
fn a_flipped_byte_in_the_wal_stops_start_up_unless_told_to_truncate() {
    let dir = tempfile::tempdir().unwrap();
    // No checkpoint while the spans come in: they are all in the last segment.
    let config = "[storage]\ncheckpoint_interval = \"1h\"\n";
    let start = || {
        Recmeter::start_with(Start {
            config,
            dir: Some(dir.path()),
            ..Start::default()
        })
    };
    let recmeter = start();
    for i in 0..100u8 {
        let (status, _) = recmeter.post_otlp(PROTOBUF, one_span_request(i));
        assert_eq!(status, 200);
    }
    recmeter.kill9();
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0xa5;
    }
    std::fs::write(&last, &bytes).unwrap();

    // Refused, naming the segment and where.
    let output = std::process::Command::new(crate::harness::binary())
        .args(["serve", "--config"])
        .arg(dir.path().join("recmeter.toml"))
        .current_dir(dir.path())
        .env("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_OTLP__HTTP_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_API__ADDRESS", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = last.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(&*name)
            && stderr.contains("corrupt at byte")
            && stderr.contains("--wal-truncate-at-corruption"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "the segment was changed"
    );

    // With the flag it starts, says what it dropped, and counts it.
    let output = std::process::Command::new(crate::harness::binary())
        .args([
            "serve",
            "--wal-truncate-at-corruption",
            "--test-hooks",
            "--fake-clock",
        ])
        .arg(crate::harness::FAKE_START)
        .arg("--config")
        .arg(dir.path().join("recmeter.toml"))
        .arg("--ready-file")
        .arg(dir.path().join("ready2.json"))
        .current_dir(dir.path())
        .env("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_OTLP__HTTP_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_API__ADDRESS", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = output;
    let ready = dir.path().join("ready2.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let addrs: crate::harness::Addresses = loop {
        if let Some(a) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            break a;
        }
        assert!(Instant::now() < deadline, "not ready");
        assert!(child.try_wait().unwrap().is_none(), "exited");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reqwest::blocking::get(format!("http://{}/metrics", addrs.api))
        .unwrap()
        .text()
        .unwrap();
    let m = crate::harness::Exposition::parse(&text);
    let dropped = m.value("recmeter_wal_records_dropped_total", &[]);
    let counted = m.sum("recs_requests_total");
    // The flipped frame (or two, when the flip straddles frames) and every one after it are
    // gone; the ones before are counted.
    assert!(
        dropped >= 1.0 && (98.0..=99.0).contains(&(dropped + counted)),
        "dropped {dropped}, counted {counted}"
    );
    let _ = child.kill();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = child.wait();
    assert!(
        stderr.contains("ERROR") && stderr.contains(&format!("records={}", dropped as u64)),
        "{stderr}"
    );
}

#[test]
fn a_failing_disk_is_a_counted_503_and_not_ready_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Recmeter::start_with(Start {
            config: "[storage]\ncheckpoint_interval = \"1h\"\n",
            dir: Some(dir.path()),
            ..Start::default()
        })
    };
    let recmeter = start();
    let (status, _) = recmeter.post_otlp(PROTOBUF, one_span_request(1));
    assert_eq!(status, 200);
    set_hook(&recmeter, "fail_wal_writes", true);
    for i in 0..5 {
        let (status, body) = recmeter.post_otlp(PROTOBUF, one_span_request(10 + i));
        assert_eq!(status, 503);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("write-ahead log") && text.contains("No space left"),
            "{text}"
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(grpc_call_with(
            recmeter.addrs.otlp_grpc,
            one_span_request(20),
            false,
            None,
        ))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("No space left"), "{}", e.message());
    assert_eq!(recmeter.get("/readyz", None).0, 503);
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "http"), ("reason", "storage")]
        ),
        5.0
    );
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "grpc"), ("reason", "storage")]
        ),
        1.0
    );
    assert_eq!(m.value("recmeter_wal_writable", &[]), 0.0);
    // The disk takes writes again: ready without any request, and ingest works.
    set_hook(&recmeter, "fail_wal_writes", false);
    wait_for("ready again", || recmeter.get("/readyz", None).0 == 200);
    let (status, _) = recmeter.post_otlp(PROTOBUF, one_span_request(2));
    assert_eq!(status, 200);
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), 2.0);
    assert_eq!(m.value("recmeter_wal_writable", &[]), 1.0);
    // The half-written frames of the refused requests were cut back: after a crash the log
    // replays cleanly, with the two acknowledged requests and nothing else.
    let (status, _) = recmeter.post_otlp(PROTOBUF, one_span_request(3));
    assert_eq!(status, 200);
    recmeter.kill9();
    let restarted = start();
    assert_eq!(restarted.metrics().sum("recs_requests_total"), 3.0);
    assert!(!restarted.log().contains("corrupt"), "{}", restarted.log());
}

/// A real full disk: the WAL on a small tmpfs, filled up, then given room again. Skipped where
/// the test cannot mount one (not root, or no mount rights in the container).
#[test]
fn a_real_full_disk_is_a_counted_503_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&wal)
        .output();
    if !mounted.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(wal.clone());
    let config = format!(
        "[wal]\ndir = \"{}\"\n[storage]\ncheckpoint_interval = \"1h\"\n",
        wal.display()
    );
    let start = || Recmeter::start_in(&config, dir.path());
    let recmeter = start();
    // Most of the disk taken by something else.
    let filler = wal.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let _ = f.write_all(&vec![1u8; 1 << 20]);
    drop(f);
    let mut acknowledged = 0.0;
    let mut refused = None;
    for i in 0..2_000u32 {
        let (status, body) = recmeter.post_otlp(PROTOBUF, one_span_request((i % 250) as u8 + 1));
        match status {
            200 => acknowledged += 1.0,
            503 => {
                refused = Some(String::from_utf8_lossy(&body).into_owned());
                break;
            }
            other => panic!("{other}"),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(refused.contains("No space left on device"), "{refused}");
    assert_eq!(recmeter.get("/readyz", None).0, 503);
    let m = recmeter.metrics();
    assert!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "http"), ("reason", "storage")]
        ) >= 1.0
    );
    // Room again: ready without a request, then ingest works.
    std::fs::remove_file(&filler).unwrap();
    wait_for("ready again", || recmeter.get("/readyz", None).0 == 200);
    let (status, _) = recmeter.post_otlp(PROTOBUF, one_span_request(1));
    assert_eq!(status, 200);
    acknowledged += 1.0;
    assert_eq!(recmeter.metrics().sum("recs_requests_total"), acknowledged);
    recmeter.kill9();
    let restarted = start();
    assert_eq!(restarted.metrics().sum("recs_requests_total"), acknowledged);
}

/// A 16 MB trace request of empty spans, two bytes each.
fn empty_spans(n: usize) -> Vec<u8> {
    fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let mut len = content.len();
        while len >= 0x80 {
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(content);
        out
    }
    let spans: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], n).flatten().collect();
    wrap(0x0a, &wrap(0x12, &spans))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

#[test]
fn bodies_that_decode_into_gigabytes_are_refused_before_decoding() {
    let recmeter = Recmeter::start("");
    let pid = recmeter.pid();
    let bomb = empty_spans(8_000_000);
    assert!(bomb.len() <= 16 << 20);
    let zipped = gzip(&bomb);
    assert!(zipped.len() < 64 << 10, "{}", zipped.len());
    let before = reset_peak(pid);
    let client = reqwest::blocking::Client::new();
    for (body, gzip) in [(bomb.clone(), false), (zipped.clone(), true)] {
        let mut request = client
            .post(format!("http://{}/v1/traces", recmeter.addrs.otlp_http))
            .header("Content-Type", PROTOBUF);
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        let response = request.body(body).send().unwrap();
        assert_eq!(response.status().as_u16(), 413);
        let text = String::from_utf8_lossy(&response.bytes().unwrap()).into_owned();
        assert!(text.contains("otlp.max_spans_per_request"), "{text}");
    }
    // OTLP/JSON: 5 million empty spans.
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        vec!["{}"; 5_000_000].join(",")
    );
    let (status, body) = recmeter.post_otlp("application/json", json.into_bytes());
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for gzip in [false, true] {
        let e = rt
            .block_on(grpc_call_with(
                recmeter.addrs.otlp_grpc,
                bomb.clone(),
                gzip,
                None,
            ))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    }
    let grown = peak(pid).saturating_sub(before);
    assert!(grown < 256 << 20, "refusals took {} MiB", grown >> 20);
    let m = recmeter.metrics();
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "http"), ("reason", "too_large")]
        ),
        3.0
    );
    assert_eq!(
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", "grpc"), ("reason", "too_large")]
        ),
        2.0
    );

    // The largest request within the limits: 65 536 spans, each with as many tiny attributes
    // as the decode budget allows. One peaks under 512 MiB above the baseline, four at once
    // under 2 GiB.
    let within = heavy_request();
    let before = reset_peak(pid);
    let (status, body) = recmeter.post_otlp(PROTOBUF, within.clone());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let response = ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
    assert_eq!(response.partial_success.map_or(0, |p| p.rejected_spans), 0);
    let grown = peak(pid).saturating_sub(before);
    assert!(grown < 512 << 20, "one request took {} MiB", grown >> 20);
    let before = reset_peak(pid);
    let sends: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (
                format!("http://{}/v1/traces", recmeter.addrs.otlp_http),
                within.clone(),
            );
            std::thread::spawn(move || {
                reqwest::blocking::Client::new()
                    .post(url)
                    .header("Content-Type", PROTOBUF)
                    .body(body)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for send in sends {
        assert_eq!(send.join().unwrap(), 200);
    }
    let grown = peak(pid).saturating_sub(before);
    assert!(grown < 2 << 30, "four requests took {} MiB", grown >> 20);
}

/// 65 536 valid server spans of one endpoint, with tiny attributes filling the 16 MiB body.
fn heavy_request() -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::Span;
    let end = nanos(fake_start());
    let attribute = KeyValue {
        key: "k".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        }),
        ..Default::default()
    };
    let spans = (0..65_536u32)
        .map(|i| Span {
            trace_id: [(i + 1).to_le_bytes(); 4].concat(),
            span_id: [(i + 1).to_le_bytes(); 2].concat(),
            name: "GET /heavy".into(),
            kind: 2,
            start_time_unix_nano: end - 1_000_000,
            end_time_unix_nano: end,
            attributes: vec![attribute.clone(); 12],
            ..Default::default()
        })
        .collect();
    crate::spans::request_of(spans).encode_to_vec()
}

#[test]
fn idle_connections_neither_exhaust_descriptors_nor_lock_anyone_out() {
    // The open-files limit at 1 024, as on a default Linux service.
    let recmeter = Recmeter::start_with(Start {
        config: "[otlp]\nheader_read_timeout = \"3s\"\nidle_timeout = \"3s\"\n\
                 [api]\nheader_read_timeout = \"3s\"\nidle_timeout = \"3s\"\n\
                 [storage]\ncheckpoint_interval = \"1s\"\n",
        open_files: Some(1024),
        ..Start::default()
    });
    let addrs = recmeter.addrs;
    // 2 000 idle connections, spread over the three ports; some of them sent half a request.
    let mut idle = Vec::new();
    for i in 0..2_000 {
        let addr = match i % 3 {
            0 => addrs.api,
            1 => addrs.otlp_http,
            _ => addrs.otlp_grpc,
        };
        if let Ok(mut stream) = TcpStream::connect(addr) {
            if i % 7 == 0 {
                let _ = stream.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n");
            }
            idle.push(stream);
        }
    }
    // Once they have been idle a second, each new connection makes room by closing one of
    // them: scrapes, ingest and checkpoints go on.
    std::thread::sleep(Duration::from_millis(1_500));
    let (status, _) = recmeter.post_otlp(PROTOBUF, one_span_request(1));
    assert_eq!(status, 200);
    let m = recmeter.metrics();
    assert_eq!(m.sum("recs_requests_total"), 1.0);
    let before = m.value("recmeter_checkpoint_last_success_timestamp_seconds", &[]);
    recmeter.advance("2s");
    wait_for("a checkpoint", || {
        recmeter
            .metrics()
            .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
            > before
    });
    // And after the timeout every idle connection has been closed by the server.
    std::thread::sleep(Duration::from_secs(5));
    let mut open = 0;
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(open, 0, "{open} idle connections still open");
    let m = recmeter.metrics();
    for listener in ["api", "otlp_http", "otlp_grpc"] {
        assert!(m.value("recmeter_connections_open", &[("listener", listener)]) <= 2.0);
    }
}
