//! PromQL checked against a real Prometheus 2.42 (Debian's `prometheus`): recmeter takes a few
//! hours of traffic under the fake clock, its samples are loaded into Prometheus with
//! `promtool tsdb create-blocks-from openmetrics`, and every query of
//! `tests/data/promql/queries.txt` must give the same answer from both, as instant and range
//! queries. Then the exact `histogram_quantile` is checked against the nearest-rank P99 of the
//! raw durations across the latency shift, beside Prometheus's bucket interpolation.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{Recmeter, Start, fake_start};
use crate::spans::{Client, export, server_span};

/// Minutes of traffic: past the 3 hours memory holds, so the oldest minutes come from the store.
const MINUTES: u64 = 200;
/// The minute the front's latency shifts up.
const SHIFT: u64 = 120;

/// One request sent: its minute, service and duration.
struct Sent {
    minute: u64,
    service: &'static str,
    nanos: u64,
}

/// A small deterministic generator (64-bit LCG), so runs repeat.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sends `MINUTES` minutes of traffic for three services, advancing the clock a minute after
/// each: the front's latency shifts up at `SHIFT`, the search has an error burst, requests
/// vary per minute. Returns every request sent.
fn hours_of_traffic(recmeter: &Recmeter) -> Vec<Sent> {
    let mut rng = Lcg(42);
    let mut sent = Vec::new();
    for m in 0..MINUTES {
        let now = fake_start() + Duration::from_secs(60 * m);
        for (s, service) in ["front", "ranker", "search"].into_iter().enumerate() {
            let n = 20 + (m * (s as u64 + 3)) % 17;
            let spans = (0..n)
                .map(|i| {
                    // Log-uniform from 5 ms to about 400 ms; the front's shifts up 2.5 times.
                    let mut ms = 5.0 * (80f64).powf(rng.next());
                    if service == "front" && m >= SHIFT {
                        ms *= 2.5;
                    }
                    let nanos = (ms * 1e6) as u64;
                    let error = match service {
                        "search" => (90..100).contains(&m) && i % 2 == 0,
                        "ranker" => i % 13 == 0,
                        _ => i % 29 == 0,
                    };
                    sent.push(Sent {
                        minute: m,
                        service,
                        nanos,
                    });
                    server_span(
                        if i % 4 == 0 { "GET /b" } else { "GET /a" },
                        now + Duration::from_millis(i),
                        nanos,
                        error,
                        m * 1000 + i,
                    )
                })
                .collect();
            export(Client::HttpProto, &recmeter.addrs, service, vec![spans]);
        }
        recmeter.advance("60s");
    }
    sent
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Prometheus server over `data`, on a free port.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, data: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  evaluation_interval: 1m\n").unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            // The samples are months old against the wall clock: keep them.
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--query.lookback-delta=5m")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts (Debian package prometheus)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::blocking::get(format!("{url}/-/ready"))
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Self { child, url }
    }
}

fn post(url: &str, form: &[(&str, String)]) -> serde_json::Value {
    let body = form
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let response = reqwest::blocking::Client::new()
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .unwrap();
    let text = response.text().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn labels_key(metric: &serde_json::Value) -> String {
    let sorted: BTreeMap<&String, &serde_json::Value> =
        metric.as_object().unwrap().iter().collect();
    serde_json::to_string(&sorted).unwrap()
}

fn number(v: &serde_json::Value) -> f64 {
    match v.as_str().unwrap() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Compares two answers' `data`; `ordered` for `sort` and `topk` vectors.
fn same(query: &str, ours: &serde_json::Value, theirs: &serde_json::Value, ordered: bool) {
    assert_eq!(
        ours["resultType"], theirs["resultType"],
        "{query}: {ours} against {theirs}"
    );
    let points = |v: &serde_json::Value| -> Vec<(f64, f64)> {
        if v.get("value").is_some() {
            vec![(v["value"][0].as_f64().unwrap(), number(&v["value"][1]))]
        } else {
            v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), number(&p[1])))
                .collect()
        }
    };
    match ours["resultType"].as_str().unwrap() {
        "scalar" => {
            let (a, b) = (number(&ours["result"][1]), number(&theirs["result"][1]));
            assert!(close(a, b), "{query}: {a} against {b}");
        }
        _ => {
            let list = |v: &serde_json::Value| -> Vec<(String, Vec<(f64, f64)>)> {
                v["result"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (labels_key(&e["metric"]), points(e)))
                    .collect()
            };
            let (mut a, mut b) = (list(ours), list(theirs));
            let matrix = ours["resultType"] == "matrix";
            if !(ordered || matrix) {
                a.sort_by(|x, y| x.0.cmp(&y.0));
                b.sort_by(|x, y| x.0.cmp(&y.0));
            }
            let names = |l: &[(String, Vec<(f64, f64)>)]| -> Vec<String> {
                l.iter().map(|(k, _)| k.clone()).collect()
            };
            assert_eq!(names(&a), names(&b), "{query}: the series differ");
            for ((key, pa), (_, pb)) in a.iter().zip(&b) {
                assert_eq!(pa.len(), pb.len(), "{query} {key}: {pa:?} against {pb:?}");
                for (x, y) in pa.iter().zip(pb) {
                    assert!(
                        x.0 == y.0 && close(x.1, y.1),
                        "{query} {key}: {x:?} against {y:?}"
                    );
                }
            }
        }
    }
}

/// Writes every series of a matrix answer as OpenMetrics with timestamps: each sample name
/// its own family of type `unknown`.
fn openmetrics(matrix: &serde_json::Value) -> String {
    let mut by_name: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for s in matrix["result"].as_array().unwrap() {
        let name = s["metric"]["__name__"].as_str().unwrap().to_owned();
        by_name.entry(name).or_default().push(s);
    }
    let mut out = String::new();
    for (name, series) in by_name {
        out.push_str(&format!("# TYPE {name} unknown\n"));
        for s in series {
            let labels: Vec<String> = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .unwrap()
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            for p in s["values"].as_array().unwrap() {
                out.push_str(&format!(
                    "{name}{{{}}} {} {}\n",
                    labels.join(","),
                    p[1].as_str().unwrap(),
                    p[0]
                ));
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// The nearest-rank `q` quantile of `values`, in seconds.
fn nearest_rank(values: &mut [u64], q: f64) -> f64 {
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1] as f64 / 1e9
}

#[test]
fn promql_answers_equal_a_real_prometheus_over_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let recmeter = Recmeter::start_with(Start {
        config: "[query]\nexact_histogram_quantile = false\n",
        dir: Some(dir.path()),
        ..Start::default()
    });
    let sent = hours_of_traffic(&recmeter);
    // 30 s into the minute after the last one with traffic.
    let now = fake_start() + Duration::from_secs(60 * MINUTES);
    let query_url = recmeter.api_url("/api/v1/query");
    let range_url = recmeter.api_url("/api/v1/query_range");

    // Every sample recmeter answers from, as Prometheus would have scraped them.
    let dump = post(
        &query_url,
        &[
            (
                "query",
                r#"{__name__=~"recs_.+|recmeter_spans_received_total"}[5h]"#.to_owned(),
            ),
            ("time", unix(now).to_string()),
        ],
    );
    assert_eq!(dump["status"], "success", "{dump}");
    let samples = openmetrics(&dump["data"]);
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("samples.om");
    std::fs::write(&input, &samples).unwrap();
    let data = work.path().join("data");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let prometheus = Prometheus::start(work.path(), &data);

    let start_t = fake_start() + Duration::from_secs(60 * 20);
    let at = unix(fake_start() + Duration::from_secs(60 * 90)) as u64;
    // Instant times: a minute boundary, 30 s into a minute after the shift, and now.
    let instants = [
        fake_start() + Duration::from_secs(60 * 100 - 30),
        fake_start() + Duration::from_secs(60 * (SHIFT + 7)),
        now,
    ];
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/promql/queries.txt"),
    )
    .unwrap();
    let queries: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("$AT", &at.to_string()))
        .collect();
    assert!(queries.len() >= 60, "{} queries", queries.len());
    let mut compared = 0;
    let mut empty = Vec::new();
    for query in &queries {
        let ordered = query.starts_with("sort") || query.starts_with("topk");
        for t in instants {
            let form = [("query", query.clone()), ("time", unix(t).to_string())];
            let ours = post(&query_url, &form);
            let theirs = post(&format!("{}/api/v1/query", prometheus.url), &form);
            assert_eq!(ours["status"], "success", "{query}: {ours}");
            assert_eq!(theirs["status"], "success", "{query}: {theirs}");
            same(query, &ours["data"], &theirs["data"], ordered);
            compared += 1;
            if ours["data"]["result"].as_array().is_some_and(Vec::is_empty) {
                empty.push(format!("{query} at {}", unix(t)));
            }
        }
        let form = [
            ("query", query.clone()),
            ("start", unix(start_t).to_string()),
            ("end", unix(now - Duration::from_secs(300)).to_string()),
            ("step", "420".to_owned()),
        ];
        let ours = post(&range_url, &form);
        let theirs = post(&format!("{}/api/v1/query_range", prometheus.url), &form);
        assert_eq!(ours["status"], "success", "{query}: {ours}");
        assert_eq!(theirs["status"], "success", "{query}: {theirs}");
        same(query, &ours["data"], &theirs["data"], false);
        compared += 1;
        if ours["data"]["result"].as_array().is_some_and(Vec::is_empty) {
            empty.push(format!("{query} over the range"));
        }
    }
    eprintln!(
        "{compared} answers equal between recmeter and Prometheus, {} of them empty: {empty:#?}",
        empty.len()
    );
    // Only `absent` of a present series answers empty (at 3 times and over the range).
    assert!(empty.len() <= 4, "{empty:#?}");

    // The exact P99, on the same storage with the option on (its default).
    drop(recmeter);
    let clock = humantime::format_rfc3339_seconds(now).to_string();
    let recmeter = Recmeter::start_with(Start {
        dir: Some(dir.path()),
        fake_clock: Some(&clock),
        ..Start::default()
    });
    let query_url = recmeter.api_url("/api/v1/query");
    let mut worst: (f64, f64) = (0.0, 0.0);
    // Before the shift, across it and after it; each a minute boundary, so the 5m range
    // selects the five minutes before it.
    for end_minute in [SHIFT - 20, SHIFT + 2, SHIFT + 4, MINUTES - 10] {
        let t = fake_start() - Duration::from_secs(30) + Duration::from_secs(60 * end_minute);
        let first = end_minute - 5;
        for (by, services) in [
            ("le", vec!["front", "ranker", "search"]),
            ("le, service", vec!["front"]),
            ("le, service", vec!["ranker"]),
        ] {
            let query = format!(
                "histogram_quantile(0.99, sum by ({by}) (rate(recs_latency_seconds_bucket[5m])))"
            );
            let form = [("query", query.clone()), ("time", unix(t).to_string())];
            let pick = |answer: &serde_json::Value| -> f64 {
                let result = answer["data"]["result"].as_array().unwrap();
                let e = result
                    .iter()
                    .find(|e| by == "le" || e["metric"]["service"].as_str() == Some(services[0]))
                    .unwrap_or_else(|| panic!("{query}: {answer}"));
                number(&e["value"][1])
            };
            let ours = pick(&post(&query_url, &form));
            let theirs = pick(&post(&format!("{}/api/v1/query", prometheus.url), &form));
            // Minute m holds the spans sent at fake_start + m minutes (30 s into minute m).
            let mut raw: Vec<u64> = sent
                .iter()
                .filter(|s| {
                    s.minute >= first && s.minute < end_minute && services.contains(&s.service)
                })
                .map(|s| s.nanos)
                .collect();
            let exact = nearest_rank(&mut raw, 0.99);
            let ours_error = (ours - exact).abs() / exact;
            let theirs_error = (theirs - exact).abs() / exact;
            eprintln!(
                "P99 by ({by}) {services:?} at minute {end_minute}: raw {exact:.6} s, recmeter {ours:.6} s ({:.2}%), Prometheus {theirs:.6} s ({:.2}%)",
                100.0 * ours_error,
                100.0 * theirs_error
            );
            assert!(
                ours_error <= 0.01,
                "{query} at minute {end_minute}: {ours} against {exact}"
            );
            if theirs_error > worst.1 {
                worst = (ours_error, theirs_error);
            }
        }
    }
    eprintln!(
        "worst Prometheus error {:.1}% (recmeter there {:.2}%)",
        100.0 * worst.1,
        100.0 * worst.0
    );
}
