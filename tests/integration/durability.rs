//! Durability: an acknowledged request survives `kill -9`, and nothing is counted twice.
//! Every check compares against the raw values sent (exact counts, nearest-rank quantiles) or
//! against a second recmeter fed the same requests that never crashed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{
    Exposition, Recmeter, Start, binary, fake_start, nanos, without_cloud_variables,
};
use crate::object_double::{Auth, ObjectDouble};
use crate::otlp::{assert_within, latency_nanos, nearest_rank};

const SERVICE: &str = "durable";
/// The windows `/metrics` exports.
const WINDOWS: [&str; 4] = ["1m", "5m", "1h", "1d"];

/// One span as sent: which endpoint, how many minutes before the fake start it ended, its
/// duration and whether it failed.
#[derive(Debug, Clone, Copy)]
struct Sent {
    endpoint: usize,
    minutes_ago: u64,
    duration: u64,
    error: bool,
}

fn endpoint(i: usize) -> String {
    format!("GET /durable/{i}")
}

/// `requests` requests of `per_request` spans: heavy-tailed latencies, 1% errors, four
/// endpoints, each request's spans ending in one of the last 50 minutes (late data included).
fn workload(seed: u64, requests: usize, per_request: usize) -> (Vec<Vec<u8>>, Vec<Sent>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = nanos(fake_start());
    let mut bodies = Vec::with_capacity(requests);
    let mut sent = Vec::with_capacity(requests * per_request);
    for r in 0..requests {
        let minutes_ago = rng.random_range(0..50u64);
        let end = start - minutes_ago * 60_000_000_000 - 1_000_000_000;
        let spans = (0..per_request)
            .map(|i| {
                let s = Sent {
                    endpoint: rng.random_range(0..4),
                    minutes_ago,
                    duration: latency_nanos(&mut rng),
                    error: rng.random::<f64>() < 0.01,
                };
                sent.push(s);
                let id = (r * per_request + i) as u64 + 1;
                Span {
                    trace_id: id.to_be_bytes().repeat(2),
                    span_id: id.to_be_bytes().to_vec(),
                    name: endpoint(s.endpoint),
                    kind: 2,
                    start_time_unix_nano: end - s.duration,
                    end_time_unix_nano: end,
                    status: Some(Status {
                        code: if s.error {
                            status::StatusCode::Error as i32
                        } else {
                            status::StatusCode::Ok as i32
                        },
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(SERVICE.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        bodies.push(request.encode_to_vec());
    }
    (bodies, sent)
}

/// Posts every body over OTLP/HTTP from four threads; panics unless each gets a 200.
fn send_all(recmeter: &Recmeter, bodies: &Arc<Vec<Vec<u8>>>) {
    let url = format!("http://{}/v1/traces", recmeter.addrs.otlp_http);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (url, bodies) = (url.clone(), bodies.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                for body in bodies.iter().skip(t).step_by(4) {
                    let response = http
                        .post(&url)
                        .header("Content-Type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// What the raw data says at the fake start plus `advanced_minutes`: per endpoint, ok and error
/// counts, and the sorted durations each window holds.
struct Expected {
    ok: [u64; 4],
    errors: [u64; 4],
    by_window: BTreeMap<&'static str, [Vec<u64>; 4]>,
}

fn expected(sent: &[Sent], advanced_minutes: u64) -> Expected {
    let mut e = Expected {
        ok: [0; 4],
        errors: [0; 4],
        by_window: BTreeMap::new(),
    };
    for s in sent {
        if s.error {
            e.errors[s.endpoint] += 1;
        } else {
            e.ok[s.endpoint] += 1;
        }
    }
    // 1d takes whole hours: every span sent (all within 2 h of the start) is in it.
    for (w, minutes) in [("1m", 1), ("5m", 5), ("1h", 60), ("1d", 1440)] {
        let mut v: [Vec<u64>; 4] = Default::default();
        for s in sent {
            // Minute-exact: the window holds the minutes after `now − W`.
            if s.minutes_ago + advanced_minutes < minutes {
                v[s.endpoint].push(s.duration);
            }
        }
        for x in &mut v {
            x.sort_unstable();
        }
        e.by_window.insert(w, v);
    }
    e
}

/// Counts and every window's quantiles of the four endpoints, as exported.
fn exported(m: &Exposition) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for i in 0..4 {
        let e = endpoint(i);
        for status in ["ok", "error"] {
            let v = m.value(
                "recs_requests_total",
                &[("endpoint", &e), ("status", status)],
            );
            out.push((format!("{e} {status}"), v));
        }
        for w in WINDOWS {
            for q in ["0.5", "0.9", "0.99", "0.999"] {
                let v = m.value(
                    "recmeter_latency_quantile_seconds",
                    &[("endpoint", &e), ("window", w), ("q", q)],
                );
                out.push((format!("{e} {w} q={q}"), v));
            }
        }
    }
    out
}

fn check_against_raw(m: &Exposition, e: &Expected, what: &str) {
    for i in 0..4 {
        let name = endpoint(i);
        let ok = m.value(
            "recs_requests_total",
            &[("endpoint", &name), ("status", "ok")],
        );
        let errors = m.value(
            "recs_requests_total",
            &[("endpoint", &name), ("status", "error")],
        );
        assert_eq!(ok, e.ok[i] as f64, "{what}: {name} ok");
        assert_eq!(errors, e.errors[i] as f64, "{what}: {name} errors");
        for (w, values) in &e.by_window {
            let raw = &values[i];
            let got = m.find(
                "recmeter_latency_quantile_seconds",
                &[("endpoint", &name), ("window", w), ("q", "0.99")],
            );
            match got {
                None => assert!(raw.is_empty(), "{what}: {name} {w} missing"),
                Some(got) => assert_within(
                    got,
                    nearest_rank(raw, 99, 100),
                    0.01,
                    &format!("{what}: {name} {w} q=0.99"),
                ),
            }
        }
    }
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn set_hook(recmeter: &Recmeter, name: &str, on: bool) {
    let response = reqwest::blocking::Client::new()
        .post(recmeter.api_url("/-/test/hook"))
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"name": name, "on": on}).to_string())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

fn verify(store: &Path) -> (bool, String, String) {
    verify_at(store.to_str().unwrap(), &[])
}

/// `recmeter verify --storage URL` with `env` added.
fn verify_at(url: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = without_cloud_variables(&mut Command::new(binary()))
        .arg("verify")
        .arg("--storage")
        .arg(url)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_million_spans_survive_kill_9_and_count_once() {
    const REQUESTS: usize = 1_000;
    const PER_REQUEST: usize = 1_000;
    let (bodies, sent) = workload(7, REQUESTS, PER_REQUEST);
    let bodies = Arc::new(bodies);
    // Checkpoints every second, so the crash falls between checkpoints with the WAL truncated
    // behind several of them.
    let config = "[storage]\ncheckpoint_interval = \"1s\"\n";

    let reference = Recmeter::start(config);
    send_all(&reference, &bodies);

    let dir = tempfile::tempdir().unwrap();
    let crashing = Recmeter::start_with(Start {
        config,
        dir: Some(dir.path()),
        ..Start::default()
    });
    send_all(&crashing, &bodies);
    crashing.kill9();

    let restarted = Recmeter::start_with(Start {
        config,
        dir: Some(dir.path()),
        ..Start::default()
    });
    let log = restarted.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    eprintln!("{restored}");

    let mut restarted = restarted;
    for (advance, minutes) in [(None, 0), (Some("2m"), 2), (Some("70m"), 72)] {
        if let Some(by) = advance {
            reference.advance(by);
            restarted.advance(by);
        }
        if minutes == 2 {
            // A second crash once a checkpoint has covered the first restart's restore and
            // replay (and truncated the WAL behind it): what the restart brought back must be
            // in storage by then.
            wait_for("a checkpoint after the restart", || {
                restarted
                    .metrics()
                    .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
                    >= (nanos(fake_start()) / 1_000_000_000 + 120) as f64
            });
            restarted.kill9();
            restarted = Recmeter::start_with(Start {
                config,
                dir: Some(dir.path()),
                fake_clock: Some("2026-03-02T10:02:30Z"),
                ..Start::default()
            });
        }
        let (a, b) = (reference.metrics(), restarted.metrics());
        assert_eq!(
            exported(&a),
            exported(&b),
            "after {minutes} minutes: the restarted recmeter differs from the reference"
        );
        // Every window SQL can ask for, from the minutes and hours each restored.
        for query in [
            "SELECT endpoint, sum(requests) AS n, sum(errors) AS e, \
             hdr_quantile(hdr_merge(hdr), 0.99) AS p99 FROM latency_minutes \
             WHERE minute > now() - INTERVAL '30 minutes' GROUP BY endpoint ORDER BY endpoint",
            "SELECT endpoint, sum(requests) AS n, hdr_quantile(hdr_merge(hdr), 0.5) AS p50, \
             hdr_quantile(hdr_merge(hdr), 0.999) AS p999 FROM latency_minutes \
             WHERE minute > now() - INTERVAL '2 hours' GROUP BY endpoint ORDER BY endpoint",
            "SELECT endpoint, sum(requests) AS n, hdr_quantile(hdr_merge(hdr), 0.99) AS p99 \
             FROM latency_hours WHERE hour >= now() - INTERVAL '30 days' \
             GROUP BY endpoint ORDER BY endpoint",
            "SELECT endpoint, sum(requests) AS n, hdr_quantile(hdr_merge(hdr), 0.99) AS p99 \
             FROM latency_minutes WHERE minute > now() - INTERVAL '6 hours' \
             GROUP BY endpoint ORDER BY endpoint",
            "SELECT endpoint, sum(requests) AS n, hdr_quantile(hdr_merge(hdr), 0.9) AS p90 \
             FROM latency_hours WHERE hour >= now() - INTERVAL '3 days' \
             GROUP BY endpoint ORDER BY endpoint",
            "SELECT endpoint, sum(requests) AS n, hdr_quantile(hdr_merge(hdr), 0.5) AS p50 \
             FROM latency_hours WHERE hour >= now() - INTERVAL '7 days' \
             GROUP BY endpoint ORDER BY endpoint",
            "SELECT date_trunc('hour', minute) AS h, count(*) > 0 AS rows, sum(requests) AS n \
             FROM latency_minutes GROUP BY 1 ORDER BY 1",
        ] {
            assert_eq!(
                reference.sql_rows(query),
                restarted.sql_rows(query),
                "after {minutes} minutes: {query}"
            );
        }
        let total: f64 = a.sum("recs_requests_total");
        assert_eq!(total, (REQUESTS * PER_REQUEST) as f64);
        let e = expected(&sent, minutes);
        check_against_raw(&a, &e, &format!("reference +{minutes}m"));
        check_against_raw(&b, &e, &format!("restarted +{minutes}m"));
    }
}

#[test]
fn no_request_is_answered_while_the_fsync_is_held() {
    let recmeter = Recmeter::start("");
    let (bodies, sent) = workload(11, 8, 100);
    set_hook(&recmeter, "block_fsync", true);
    let answered = Arc::new(AtomicUsize::new(0));
    let url = format!("http://{}/v1/traces", recmeter.addrs.otlp_http);
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (url, answered) = (url.clone(), answered.clone());
            std::thread::spawn(move || {
                let response = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap()
                    .post(&url)
                    .header("Content-Type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .unwrap();
                answered.fetch_add(1, Ordering::SeqCst);
                response.status().as_u16()
            })
        })
        .collect();
    // Held for well under the clients' 30 s timeout.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "answered before the fsync"
    );
    assert_eq!(recmeter.metrics().sum("recs_requests_total"), 0.0);
    set_hook(&recmeter, "block_fsync", false);
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let m = recmeter.metrics();
    check_against_raw(&m, &expected(&sent, 0), "after the fsync");
    assert!(m.value("recmeter_wal_fsync_seconds_count", &[]) >= 1.0);
}

#[test]
fn a_crash_in_the_middle_of_a_checkpoint_loses_and_doubles_nothing() {
    let config = "[storage]\ncheckpoint_interval = \"1s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let (first, mut sent) = workload(21, 20, 200);
    let (second, more) = workload(22, 20, 200);
    sent.extend(more);
    let recmeter = Recmeter::start_with(Start {
        config,
        dir: Some(dir.path()),
        ..Start::default()
    });
    send_all(&recmeter, &Arc::new(first));
    // Checkpoints run on recmeter's clock: each advance by the interval or more is one.
    recmeter.advance("1s");
    wait_for("a checkpoint", || {
        recmeter
            .metrics()
            .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
            > 0.0
    });
    set_hook(&recmeter, "fail_checkpoint_after_files", true);
    send_all(&recmeter, &Arc::new(second));
    // Minutes seal, so the failing checkpoints have rollup files to write.
    recmeter.advance("1m");
    recmeter.advance("1s");
    wait_for("two checkpoints that fail after their files", || {
        recmeter
            .log()
            .matches("failing before the manifest")
            .count()
            >= 2
    });
    recmeter.kill9();

    let restarted = Recmeter::start_with(Start {
        config,
        dir: Some(dir.path()),
        fake_clock: Some("2026-03-02T10:01:30Z"),
        ..Start::default()
    });
    let log = restarted.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    assert!(
        !restored.contains("unreferenced_files_deleted=0"),
        "the failed checkpoints' files are deleted: {restored}"
    );
    check_against_raw(&restarted.metrics(), &expected(&sent, 1), "restarted");
    let (ok, out, err) = verify(&dir.path().join("data"));
    assert!(ok, "{out}{err}");
}

#[test]
fn verify_passes_on_a_good_store_and_names_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let (bodies, sent) = workload(31, 10, 100);
    let recmeter = Recmeter::start_with(Start {
        dir: Some(dir.path()),
        ..Start::default()
    });
    send_all(&recmeter, &Arc::new(bodies));
    recmeter.advance("2m");
    // A second process on the same WAL directory is refused, naming it.
    let second = Command::new(binary())
        .arg("serve")
        .current_dir(dir.path())
        .env("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_OTLP__HTTP_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_API__ADDRESS", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("data/wal") && stderr.contains("locked by another recmeter process"),
        "{stderr}"
    );
    let (status, _) = recmeter.terminate();
    assert!(status.success());

    let store = dir.path().join("data");
    let (ok, out, err) = verify(&store);
    assert!(ok, "{out}{err}");
    let total = sent.len();
    assert!(
        out.contains(&format!("requests they have counted: {total}")),
        "{out}"
    );
    // The minute files hold every request: the final checkpoint sealed them all.
    assert!(
        out.contains(&format!("({total} requests); hour rows")),
        "{out}"
    );

    let minute_file = walk(&store.join("minutes"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let len = std::fs::metadata(&minute_file).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&minute_file)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let (ok, out, err) = verify(&store);
    assert!(!ok, "{out}");
    let name = minute_file
        .strip_prefix(&store)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(err.contains(&name), "names {name}: {err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `storage.url` in a cloud bucket (`double` stands in for the service): checkpoints land under
/// the URL's prefix with every request authenticated, a restart after `kill -9` restores from
/// them, `recmeter verify` reads them back and names a truncated file, and a wrong key stops
/// start-up with an error naming the store.
fn cloud_store_round_trip(
    double: &ObjectDouble,
    url: &str,
    prefix: &str,
    env: &[(&str, &str)],
    wrong_env: &[(&str, &str)],
) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[storage]\nurl = \"{url}\"\ncheckpoint_interval = \"1s\"\n");
    let start = |fake_clock| {
        Recmeter::start_with(Start {
            config: &config,
            env: env.to_vec(),
            dir: Some(dir.path()),
            fake_clock: Some(fake_clock),
            ..Start::default()
        })
    };
    let (bodies, sent) = workload(41, 40, 50);
    let recmeter = start(crate::harness::FAKE_START);
    send_all(&recmeter, &Arc::new(bodies));
    recmeter.advance("2m");
    // A checkpoint after the advance holds the sealed minutes; the WAL holds the rest.
    let minutes = format!("{prefix}/minutes/");
    wait_for("minute files in the bucket", || {
        double
            .objects()
            .iter()
            .any(|(k, _)| k.starts_with(&minutes))
    });
    recmeter.kill9();

    let restarted = start("2026-03-02T10:02:30Z");
    let log = restarted.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    assert!(log.contains(url), "{log}");
    assert!(!restored.contains("checkpoint=0 "), "{restored}");
    check_against_raw(&restarted.metrics(), &expected(&sent, 2), "restarted");
    let (status, _) = restarted.terminate();
    assert!(status.success());

    let (ok, out, err) = verify_at(url, env);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("requests they have counted: {}", sent.len())),
        "{out}"
    );
    let objects = double.objects();
    assert!(
        objects
            .iter()
            .all(|(k, _)| k.starts_with(&format!("{prefix}/"))),
        "every object under {prefix}/: {objects:?}"
    );
    assert!(
        objects
            .iter()
            .any(|(k, _)| k.starts_with(&format!("{prefix}/manifests/")))
    );
    let refused = double.refused();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let log = double.log();
    for method in ["PUT", "GET", "DELETE"] {
        assert!(
            log.iter().any(|l| l.method == method),
            "no {method} in {log:?}"
        );
    }
    for l in &log {
        assert!(l.key.starts_with(prefix), "outside {prefix}: {l:?}");
        assert!(l.status < 500, "{l:?}");
    }

    let (key, _) = objects
        .iter()
        .find(|(k, _)| k.starts_with(&minutes) && k.ends_with(".parquet"))
        .unwrap();
    double.truncate(key);
    let (ok, out, err) = verify_at(url, env);
    assert!(!ok, "{out}");
    let name = key.strip_prefix(&format!("{prefix}/")).unwrap();
    assert!(err.contains(name), "names {name}: {err}");

    // Wrong credentials: start-up stops, naming the store and the service's refusal.
    let puts = double.puts();
    let refused_before = double.refused().len();
    let wrong = without_cloud_variables(&mut Command::new(binary()))
        .arg("serve")
        .current_dir(dir.path())
        .env("RECMETER_STORAGE__URL", url)
        .env("RECMETER_WAL__DIR", dir.path().join("other-wal"))
        .env("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_OTLP__HTTP_ADDRESS", "127.0.0.1:0")
        .env("RECMETER_API__ADDRESS", "127.0.0.1:0")
        .envs(wrong_env.iter().copied())
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains(url), "{stderr}");
    assert!(double.refused().len() > refused_before);
    assert_eq!(double.puts(), puts, "nothing written with the wrong key");
}

#[test]
fn checkpoints_in_s3_restore_and_verify() {
    const BUCKET: &str = "recmeter-checkpoints";
    let double = ObjectDouble::start(
        BUCKET,
        Auth::S3 {
            access_key: "AKIARECMETERTEST".into(),
            secret_key: "recmeter-test-secret".into(),
            region: "eu-west-1".into(),
        },
    );
    let env = |secret| {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIARECMETERTEST"),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", double.url.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
    };
    cloud_store_round_trip(
        &double,
        &format!("s3://{BUCKET}/team-a/recmeter"),
        "team-a/recmeter",
        &env("recmeter-test-secret"),
        &env("not-the-secret"),
    );
}

#[test]
fn checkpoints_in_cloud_storage_restore_and_verify() {
    const BUCKET: &str = "recmeter-checkpoints";
    let key = include_str!("../data/gcs-test-service-account.json");
    let double = ObjectDouble::start(BUCKET, Auth::gcs(key));
    let keys = tempfile::tempdir().unwrap();
    let right = keys.path().join("right.json");
    std::fs::write(&right, key).unwrap();

    // The key, under an account Cloud Storage does not know it by.
    let mut other: serde_json::Value = serde_json::from_str(key).unwrap();
    other["client_email"] = "intruder@recmeter-tests.iam.gserviceaccount.com".into();
    let wrong = keys.path().join("wrong.json");
    std::fs::write(&wrong, other.to_string()).unwrap();

    fn env<'a>(key_file: &'a Path, url: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("GOOGLE_SERVICE_ACCOUNT", key_file.to_str().unwrap()),
            ("GOOGLE_BASE_URL", url),
            ("GOOGLE_ALLOW_HTTP", "true"),
        ]
    }
    cloud_store_round_trip(
        &double,
        &format!("gs://{BUCKET}/team-a/recmeter"),
        "team-a/recmeter",
        &env(&right, &double.url),
        &env(&wrong, &double.url),
    );
}

/// The Parquet files under `dir` (store paths, `/`-separated) and the ones the manifest in
/// force names, when they are the same set: no checkpoint or compaction is half done.
fn settled_store(store: &Path) -> Option<Vec<String>> {
    let manifests = walk(&store.join("manifests"));
    let latest = manifests.iter().max()?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(latest).ok()?).ok()?;
    let mut named: Vec<String> = manifest["sections"]["latency_minutes"]["files"]
        .as_array()?
        .iter()
        .filter(|f| f["kind"] == "minutes")
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    named.sort();
    let on_disk: Vec<String> = walk(&store.join("minutes"))
        .iter()
        .map(|p| {
            p.strip_prefix(store)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    // Checkpoints write a new manifest every second; the minute files it names are what
    // matters.
    (manifests.len() == 1 && on_disk == named).then_some(named)
}

/// DuckDB (an independent reader) sums the minute files' `requests` to what `/metrics` counts
/// at the same fake time, once the clock has passed a minute boundary and a checkpoint has run.
#[test]
fn duckdb_sums_the_minute_files_to_the_scraped_requests() {
    let config = "[storage]\ncheckpoint_interval = \"1s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let (first, sent) = workload(41, 20, 100);
    let (second, more) = workload(42, 20, 100);
    let recmeter = Recmeter::start_with(Start {
        config,
        dir: Some(dir.path()),
        ..Start::default()
    });
    send_all(&recmeter, &Arc::new(first));
    recmeter.advance("1m");
    send_all(&recmeter, &Arc::new(second));
    recmeter.advance("1m");
    let now = nanos(fake_start()) as f64 / 1e9 + 120.0;
    wait_for("a checkpoint after the minute boundary", || {
        recmeter
            .metrics()
            .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
            >= now
    });
    let scraped = recmeter.metrics();
    let total = scraped.sum("recs_requests_total");
    assert_eq!(total, (sent.len() + more.len()) as f64);

    let store = dir.path().join("data");
    // By glob, as the issue asks, and through the manifest in force, as the README shows.
    let script = r#"import os, sys, duckdb
os.chdir(sys.argv[1])
con = duckdb.connect()
rows = con.sql("SELECT endpoint, sum(requests)::BIGINT FROM read_parquet('minutes/*/*.parquet', hive_partitioning = true) GROUP BY endpoint ORDER BY endpoint").fetchall()
con.sql("""SET VARIABLE files = (
  SELECT list(f.path) FROM (
    SELECT unnest(sections.latency_minutes.files) AS f FROM (
      SELECT sections FROM read_json('manifests/*.json', filename = true)
      ORDER BY filename DESC LIMIT 1)))""")
exact = con.sql("SELECT sum(requests)::BIGINT FROM read_parquet(getvariable('files'))").fetchone()[0]
print(f'manifest\t{exact}')
print('\n'.join(f'{e}\t{n}' for e, n in rows))
"#;
    // Read while no checkpoint or compaction is half done: the same settled files before and
    // after the read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_error = String::new();
    let out = loop {
        assert!(
            Instant::now() < deadline,
            "the store never settled; DuckDB's last error: {last_error}"
        );
        let Some(before) = settled_store(&store) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let out = Command::new(crate::harness::python())
            .args(["-c", script, store.to_str().unwrap()])
            .output()
            .unwrap();
        // A manifest replaced between DuckDB's listing and its read fails the read: retry.
        if !out.status.success() {
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            continue;
        }
        if settled_store(&store).as_ref() == Some(&before) {
            break String::from_utf8(out.stdout).unwrap();
        }
    };
    let mut by_endpoint: BTreeMap<String, f64> = out
        .lines()
        .map(|l| {
            let (e, n) = l.split_once('\t').unwrap();
            (e.to_owned(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(by_endpoint.remove("manifest"), Some(total), "{out}");
    assert_eq!(by_endpoint.values().sum::<f64>(), total, "{out}");
    for i in 0..4 {
        let scraped_endpoint: f64 = ["ok", "error"]
            .iter()
            .map(|status| {
                scraped
                    .find(
                        "recs_requests_total",
                        &[
                            ("service", SERVICE),
                            ("endpoint", &endpoint(i)),
                            ("status", status),
                        ],
                    )
                    .unwrap_or(0.0)
            })
            .sum();
        assert_eq!(by_endpoint[&endpoint(i)], scraped_endpoint, "{out}");
    }
}

/// A crash while compacting (its merged files written, its manifest not) and a crash right
/// after a compaction both restart to exactly the counts and quantiles of the raw values.
#[test]
fn a_crash_in_the_middle_of_a_compaction_loses_and_doubles_nothing() {
    let config = "[storage]\ncheckpoint_interval = \"1s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let (first, mut sent) = workload(51, 20, 200);
    let (second, more) = workload(52, 20, 200);
    sent.extend(more);
    let recmeter = Recmeter::start_with(Start {
        config,
        dir: Some(dir.path()),
        ..Start::default()
    });
    send_all(&recmeter, &Arc::new(first));
    // The minutes seal, and a checkpoint writes a first minute file.
    recmeter.advance("1m");
    wait_for("a checkpoint with the sent minutes", || {
        let minutes = dir.path().join("data/minutes");
        minutes.exists() && !walk(&minutes).is_empty()
    });
    set_hook(&recmeter, "fail_compaction_after_files", true);
    send_all(&recmeter, &Arc::new(second));
    // The hours of the sent spans end, so their files (two of each table now) are settled
    // and compaction merges them.
    recmeter.advance("1h");
    wait_for("a compaction that fails after its files", || {
        recmeter
            .log()
            .contains("fail_compaction_after_files: failing before the manifest")
    });
    wait_for("the failed compaction counted", || {
        recmeter
            .metrics()
            .value("recmeter_compactions_total", &[("outcome", "error")])
            >= 1.0
    });
    recmeter.kill9();

    let restart = || {
        Recmeter::start_with(Start {
            config,
            dir: Some(dir.path()),
            fake_clock: Some("2026-03-02T11:01:30Z"),
            ..Start::default()
        })
    };
    let restarted = restart();
    let log = restarted.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    assert!(
        !restored.contains("unreferenced_files_deleted=0"),
        "the crashed compaction's files are deleted: {restored}"
    );
    check_against_raw(&restarted.metrics(), &expected(&sent, 61), "restarted");
    // Now it compacts (at the next checkpoint); a crash right after loses and doubles nothing
    // either.
    restarted.advance("1s");
    wait_for("a compaction", || {
        restarted
            .metrics()
            .value("recmeter_compactions_total", &[("outcome", "ok")])
            >= 1.0
    });
    restarted.kill9();
    let again = restart();
    let m = again.metrics();
    check_against_raw(&m, &expected(&sent, 61), "restarted after a compaction");
    let total = sent.len() as f64;
    assert_eq!(m.sum("recs_requests_total"), total);
    let (ok, out, err) = verify(&dir.path().join("data"));
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("({total} requests); hour rows")),
        "the minute files hold every request once: {out}"
    );
}
