//! The Prometheus query API end to end: Grafana's probe and fixed answers, request counters
//! from the rollups against SQL over the same minutes and against `/metrics`, `promtool
//! query` as a real client, and bad queries answered and counted as Prometheus does.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::harness::{Recmeter, Start, fake_start};
use crate::spans::{Client, export, server_span};

const API_TOKEN: &str = "api-Qr55Lm0Zx1";

impl Recmeter {
    /// POSTs a form to the query API (as Grafana does): status and JSON body.
    pub fn prom_post(&self, path: &str, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let body = serde_urlencoded_pairs(form);
        let response = reqwest::blocking::Client::new()
            .post(self.api_url(path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, json)
    }

    /// An instant query that must succeed: each series' labels (as `k=v,…`) and value.
    pub fn prom_instant(&self, query: &str, time: SystemTime) -> BTreeMap<String, f64> {
        let t = unix(time).to_string();
        let (status, json) = self.prom_post("/api/v1/query", &[("query", query), ("time", &t)]);
        assert_eq!(status, 200, "{query}: {json}");
        assert_eq!(json["data"]["resultType"], "vector", "{query}: {json}");
        json["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value: f64 = e["value"][1].as_str().unwrap().parse().unwrap();
                (labels_text(&e["metric"]), value)
            })
            .collect()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn serde_urlencoded_pairs(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `{"a":"1","b":"2"}` as `a=1,b=2` (names sorted, `__name__` included).
fn labels_text(metric: &serde_json::Value) -> String {
    let map = metric.as_object().unwrap();
    let sorted: BTreeMap<&String, &str> =
        map.iter().map(|(k, v)| (k, v.as_str().unwrap())).collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn grafana_s_probe_and_the_fixed_answers_are_prometheus_s() {
    let recmeter = Recmeter::start_with(Start {
        env: vec![("RECMETER_AUTH__API_TOKEN", API_TOKEN)],
        ..Start::default()
    });
    let http = reqwest::blocking::Client::new();
    let url = recmeter.api_url("/api/v1/query");
    // Grafana's first request: 1+1 at time 4, as a form POST with the bearer token.
    let probe = |auth: &str| {
        let response = http
            .post(&url)
            .header("Authorization", auth)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("query=1%2B1&time=4")
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    assert_eq!(
        probe(&format!("Bearer {API_TOKEN}")),
        (
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[4,"2"]}}"#.to_owned()
        )
    );
    assert_eq!(probe("Bearer wrong").0, 401);
    // The token as HTTP Basic's password (a browser; promtool's user info).
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    assert_eq!(probe(&basic("grafana", API_TOKEN)).0, 200);
    assert_eq!(probe(&basic(API_TOKEN, "wrong")).0, 401);

    let get = |path: &str| -> serde_json::Value {
        let response = http
            .get(recmeter.api_url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        serde_json::from_str(&response.text().unwrap()).unwrap()
    };
    let info = get("/api/v1/status/buildinfo");
    assert_eq!(info["status"], "success");
    assert_eq!(info["data"]["version"], "2.42.0");
    assert!(
        info["data"]["revision"]
            .as_str()
            .unwrap()
            .starts_with("recmeter "),
        "{info}"
    );
    // Any `features` key, even empty, makes Grafana take the datasource for Mimir.
    assert!(info["data"].get("features").is_none(), "{info}");
    assert_eq!(
        get("/api/v1/rules"),
        serde_json::json!({"status": "success", "data": {"groups": []}})
    );
    // Grafana sends milliseconds here.
    assert_eq!(
        get(
            "/api/v1/query_exemplars?query=recs_requests_total&start=1772445600000&end=1772449200000"
        ),
        serde_json::json!({"status": "success", "data": []})
    );
    let metadata = get("/api/v1/metadata");
    assert_eq!(
        metadata["data"]["recs_requests_total"][0]["type"], "counter",
        "{metadata}"
    );
    assert_eq!(
        metadata["data"]["recs_latency_seconds"][0]["type"],
        "histogram"
    );

    // promtool 2.42 has no header option: the token goes in the URL's user info.
    let server = format!("http://recmeter:{API_TOKEN}@{}", recmeter.addrs.api);
    let out = Command::new("promtool")
        .args(["query", "instant", &server, "2 * 21"])
        .output()
        .expect("promtool runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("42"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends spans for `front` (1 in 10 an error) and `ranker` in each of `minutes` minutes,
/// advancing the fake clock a minute after each; `n(minute)` requests for `front`, with a
/// latency that shifts half-way.
fn minutes_of_traffic(recmeter: &Recmeter, minutes: u64) {
    for m in 0..minutes {
        let now = fake_start() + Duration::from_secs(60 * m);
        for (service, n) in [("front", 20 + m), ("ranker", 7)] {
            let spans = (0..n)
                .map(|i| {
                    let latency_ms = if m < minutes / 2 { 20 + i } else { 150 + 3 * i };
                    server_span(
                        if i % 3 == 0 { "GET /b" } else { "GET /a" },
                        now + Duration::from_millis(i),
                        latency_ms * 1_000_000,
                        i % 10 == 0,
                        m * 1000 + i,
                    )
                })
                .collect();
            export(Client::HttpProto, &recmeter.addrs, service, vec![spans]);
        }
        recmeter.advance("60s");
    }
}

#[test]
fn request_counters_from_the_rollups_agree_with_sql_metrics_and_promtool() {
    let recmeter = Recmeter::start("");
    let minutes = 12;
    minutes_of_traffic(&recmeter, minutes);
    // The clock is at fake_start + 12 min: 30 s into a minute.
    let now = fake_start() + Duration::from_secs(60 * minutes);

    // Now: exactly what a scrape shows.
    let scraped = recmeter.metrics();
    let answered = recmeter.prom_instant("recs_requests_total", now);
    assert!(!answered.is_empty());
    for (labels, value) in &answered {
        let pairs: Vec<(&str, &str)> = labels
            .split(',')
            .map(|kv| kv.split_once('=').unwrap())
            .filter(|(k, _)| *k != "__name__")
            .collect();
        assert_eq!(
            scraped.value("recs_requests_total", &pairs),
            *value,
            "{labels}"
        );
    }
    let scraped_total = scraped.sum("recs_requests_total");
    let answered_total: f64 = answered.values().sum();
    assert_eq!(scraped_total, answered_total);

    // At a minute boundary, increase over 5 minutes is the requests of those 5 minutes,
    // as SQL counts them.
    let boundary_secs = (unix(now) as u64 / 60 - 2) * 60;
    let boundary = SystemTime::UNIX_EPOCH + Duration::from_secs(boundary_secs);
    let increase = recmeter.prom_instant(
        "sum by (service) (increase(recs_requests_total[5m]))",
        boundary,
    );
    let from = (boundary_secs - 300) * 1_000_000_000;
    let to = boundary_secs * 1_000_000_000;
    let rows = recmeter.sql_rows(&format!(
        "SELECT service, CAST(sum(requests) AS DOUBLE) AS n FROM latency_minutes \
         WHERE CAST(minute AS BIGINT) >= {from} AND CAST(minute AS BIGINT) < {to} \
         GROUP BY service ORDER BY service"
    ));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        let service = row["service"].as_str().unwrap();
        let want = row["n"].as_f64().unwrap();
        let got = increase[&format!("service={service}")];
        assert!((got - want).abs() < 1e-9, "{service}: {got} against {want}");
    }
    // Errors over all time by service, against SQL.
    let errors = recmeter.prom_instant(
        r#"sum by (service) (recs_requests_total{status="error"})"#,
        now,
    );
    let rows = recmeter.sql_rows(
        "SELECT service, CAST(sum(errors) AS DOUBLE) AS n FROM latency_minutes \
         GROUP BY service ORDER BY service",
    );
    for row in &rows {
        let service = row["service"].as_str().unwrap();
        assert_eq!(
            errors[&format!("service={service}")],
            row["n"].as_f64().unwrap()
        );
    }

    // Series and labels, as Grafana's query editor lists them.
    let (status, json) = recmeter.prom_post(
        "/api/v1/series",
        &[("match[]", r#"recs_requests_total{service="front"}"#)],
    );
    assert_eq!(status, 200, "{json}");
    let listed: Vec<String> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(labels_text)
        .collect();
    assert_eq!(
        listed,
        [
            "__name__=recs_requests_total,endpoint=GET /a,service=front,status=error",
            "__name__=recs_requests_total,endpoint=GET /a,service=front,status=ok",
            "__name__=recs_requests_total,endpoint=GET /b,service=front,status=error",
            "__name__=recs_requests_total,endpoint=GET /b,service=front,status=ok",
        ]
    );
    let (status, _, body) = recmeter.get(
        "/api/v1/label/service/values?match[]=recs_requests_total",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["data"], serde_json::json!(["front", "ranker"]));
    let (_, json) = recmeter.prom_post(
        "/api/v1/labels",
        &[("match[]", "recs_latency_seconds_bucket")],
    );
    assert_eq!(
        json["data"],
        serde_json::json!(["__name__", "endpoint", "le", "service"])
    );
    let (status, json) = recmeter.prom_post("/api/v1/series", &[]);
    assert_eq!(
        (status, json["errorType"].as_str()),
        (400, Some("bad_data"))
    );

    // promtool, a real client, prints the same values.
    let server = format!("http://{}", recmeter.addrs.api);
    let time = humantime::format_rfc3339_seconds(boundary).to_string();
    let out = Command::new("promtool")
        .args([
            "query",
            "instant",
            "--time",
            &time,
            &server,
            "sum by (service) (increase(recs_requests_total[5m]))",
        ])
        .output()
        .expect("promtool runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (labels, value) in &increase {
        let service = labels.trim_start_matches("service=");
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("service=\"{service}\"")))
            .unwrap_or_else(|| panic!("{service} missing: {stdout}"));
        let printed: f64 = line
            .split("=>")
            .nth(1)
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(printed, *value, "{line}");
    }
    let start = humantime::format_rfc3339_seconds(boundary - Duration::from_secs(240)).to_string();
    let out = Command::new("promtool")
        .args([
            "query",
            "range",
            "--start",
            &start,
            "--end",
            &time,
            "--step",
            "1m",
            &server,
            r#"sum(recs_requests_total{service="front"})"#,
        ])
        .output()
        .expect("promtool runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Five steps; each the front's requests before it, as SQL counts them.
    let values: Vec<f64> = stdout
        .lines()
        .filter(|l| l.contains(" @["))
        .map(|l| {
            l.trim()
                .split(" @[")
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(values.len(), 5, "{stdout}");
    for (i, v) in values.iter().enumerate() {
        let before = (boundary_secs - 240 + 60 * i as u64) * 1_000_000_000;
        let rows = recmeter.sql_rows(&format!(
            "SELECT CAST(sum(requests) AS DOUBLE) AS n FROM latency_minutes \
             WHERE service = 'front' AND CAST(minute AS BIGINT) < {before}"
        ));
        assert_eq!(*v, rows[0]["n"].as_f64().unwrap(), "step {i}: {stdout}");
    }
}

#[test]
fn bad_queries_get_prometheus_s_error_types_and_are_counted() {
    let recmeter = Recmeter::start("");
    // Path, form, status, errorType, and what the message says.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str, &'a str);
    let cases: [Case; 5] = [
        (
            "/api/v1/query",
            &[("query", "sum(rate(recs_requests_total[5m]")],
            400,
            "bad_data",
            "",
        ),
        (
            "/api/v1/query",
            &[("query", "holt_winters(recs_requests_total[5m], 0.5, 0.5)")],
            400,
            "bad_data",
            "holt_winters",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "recs_requests_total"),
                ("start", "0"),
                ("end", "86400"),
                ("step", "1"),
            ],
            400,
            "bad_data",
            "11,000 points",
        ),
        (
            "/api/v1/query",
            &[("query", "up"), ("time", "yesterday")],
            400,
            "bad_data",
            "\"time\"",
        ),
        (
            "/api/v1/query",
            &[
                ("query", "count_over_time(vector(1)[30d:1s])"),
                ("timeout", "0.05"),
            ],
            503,
            "timeout",
            "timed out",
        ),
    ];
    for (path, form, status, error_type, says) in cases {
        let (got, json) = recmeter.prom_post(path, form);
        assert_eq!(got, status, "{form:?}: {json}");
        assert_eq!(json["status"], "error");
        assert_eq!(json["errorType"], error_type, "{form:?}: {json}");
        let message = json["error"].as_str().unwrap();
        assert!(message.contains(says), "{form:?}: {message}");
    }
    // Nesting deep enough to threaten a thread's stack is refused before parsing.
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    let (got, json) = recmeter.prom_post("/api/v1/query", &[("query", &deep)]);
    assert_eq!(
        (got, json["errorType"].as_str()),
        (400, Some("bad_data")),
        "{json}"
    );
    // Many-to-many matching fails in evaluation: `execution`, 422.
    let (got, json) = recmeter.prom_post(
        "/api/v1/query",
        &[("query", "label_replace(vector(1), \"a\", \"x\", \"\", \"\") + on() (vector(1) or label_replace(vector(2), \"b\", \"y\", \"\", \"\"))")],
    );
    assert_eq!(
        (got, json["errorType"].as_str()),
        (422, Some("execution")),
        "{json}"
    );
    let metrics = recmeter.metrics();
    let counted = |endpoint: &str, outcome: &str| {
        metrics.value(
            "recmeter_queries_total",
            &[("endpoint", endpoint), ("outcome", outcome)],
        )
    };
    assert_eq!(counted("query", "bad_data"), 4.0);
    assert_eq!(counted("query_range", "bad_data"), 1.0);
    assert_eq!(counted("query", "timeout"), 1.0);
    assert_eq!(counted("query", "execution"), 1.0);
    // The service keeps answering.
    let (status, _) = recmeter.prom_post("/api/v1/query", &[("query", "1")]);
    assert_eq!(status, 200);
}
