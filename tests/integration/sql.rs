//! `POST /api/v1/sql` end to end: the three output formats agree, only reading statements run,
//! and runaway or memory-hungry queries fail cleanly while the service keeps serving.

use std::time::Duration;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
use datafusion::arrow::ipc::reader::StreamReader;

use crate::harness::{Recmeter, fake_start, nanos};
use crate::limits::one_span_request;
use crate::spans::{Client, export, server_span};

impl Recmeter {
    /// POST SQL text (as `curl --data` sends it): status, content type and body bytes.
    pub fn sql(&self, query: &str, format: Option<&str>) -> (u16, String, Vec<u8>) {
        let url = match format {
            Some(f) => self.api_url(&format!("/api/v1/sql?format={f}")),
            None => self.api_url("/api/v1/sql"),
        };
        let response = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(query.to_owned())
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.bytes().unwrap().to_vec())
    }

    /// The JSON rows of a query that must succeed.
    pub fn sql_rows(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, _, body) = self.sql(query, None);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{query}: {text}");
        serde_json::from_slice(&body).unwrap()
    }
}

/// Sends a few spans for two services over the last minutes.
fn some_traffic(recmeter: &Recmeter) {
    let now = fake_start();
    for (service, n) in [("front", 40u64), ("ranker", 25)] {
        let spans = (0..n)
            .map(|i| {
                let end = now - Duration::from_secs(i * 7);
                server_span(
                    if i % 2 == 0 { "GET /a" } else { "GET /b" },
                    end,
                    (i + 1) * 9_000_000,
                    i % 10 == 0,
                    i,
                )
            })
            .collect();
        export(Client::HttpProto, &recmeter.addrs, service, vec![spans]);
    }
}

const ROWS: &str = "SELECT CAST(minute AS BIGINT) AS minute_ns, service, endpoint, source, \
    requests, errors, recommendations, requests_le_0_2, hdr_quantile(hdr, 0.99) AS p99 \
    FROM latency_minutes ORDER BY service, endpoint, minute_ns";

/// One row as text, the same whatever format it came in.
type TextRow = Vec<String>;

fn float(s: &str) -> String {
    format!("{:.9}", s.parse::<f64>().unwrap())
}

#[test]
fn json_csv_and_arrow_carry_the_same_rows() {
    let recmeter = Recmeter::start("");
    some_traffic(&recmeter);
    let columns = [
        "minute_ns",
        "service",
        "endpoint",
        "source",
        "requests",
        "errors",
        "recommendations",
        "requests_le_0_2",
        "p99",
    ];

    let (status, content_type, body) = recmeter.sql(ROWS, None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "application/json");
    let json: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    let from_json: Vec<TextRow> = json
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| match &row[*c] {
                    serde_json::Value::String(s) => s.clone(),
                    v if *c == "p99" => float(&v.to_string()),
                    v => v.to_string(),
                })
                .collect()
        })
        .collect();

    let (status, content_type, body) = recmeter.sql(ROWS, Some("csv"));
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let text = String::from_utf8(body).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), columns.join(","));
    let from_csv: Vec<TextRow> = lines
        .map(|l| {
            l.split(',')
                .enumerate()
                .map(|(i, v)| if i == 8 { float(v) } else { v.to_owned() })
                .collect()
        })
        .collect();

    let (status, content_type, body) = recmeter.sql(ROWS, Some("arrow"));
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/vnd.apache.arrow.stream");
    let reader = StreamReader::try_new(std::io::Cursor::new(body), None).unwrap();
    let names: Vec<_> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, columns);
    let mut from_arrow: Vec<TextRow> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            let s = |i: usize| batch.column(i).as_string::<i32>().value(r).to_owned();
            let u = |i: usize| {
                batch
                    .column(i)
                    .as_primitive::<UInt64Type>()
                    .value(r)
                    .to_string()
            };
            from_arrow.push(vec![
                batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .value(r)
                    .to_string(),
                s(1),
                s(2),
                s(3),
                u(4),
                u(5),
                u(6),
                u(7),
                float(
                    &batch
                        .column(8)
                        .as_primitive::<Float64Type>()
                        .value(r)
                        .to_string(),
                ),
            ]);
        }
    }

    assert!(from_json.len() >= 4, "{from_json:?}");
    assert_eq!(from_json, from_csv);
    assert_eq!(from_json, from_arrow);
    // And the counts are the traffic sent: 65 requests, 7 errors.
    let total: u64 = from_json.iter().map(|r| r[4].parse::<u64>().unwrap()).sum();
    let errors: u64 = from_json.iter().map(|r| r[5].parse::<u64>().unwrap()).sum();
    assert_eq!((total, errors), (65, 7));
    assert!(from_json.iter().all(|r| r[3] == "span"));
}

#[test]
fn only_reading_statements_run() {
    let recmeter = Recmeter::start("");
    some_traffic(&recmeter);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.csv");
    for statement in [
        "CREATE TABLE t AS SELECT 1".to_owned(),
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'".to_owned(),
        "INSERT INTO latency_minutes SELECT * FROM latency_minutes".to_owned(),
        "DROP TABLE latency_minutes".to_owned(),
        "DELETE FROM latency_minutes".to_owned(),
        "SET datafusion.execution.batch_size = 1".to_owned(),
        format!("COPY (SELECT 1) TO '{}'", target.display()),
        format!("EXPLAIN ANALYZE COPY (SELECT 1) TO '{}'", target.display()),
        "SELECT 1; DROP TABLE latency_minutes".to_owned(),
    ] {
        let (status, _, body) = recmeter.sql(&statement, None);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 400, "{statement}: {body}");
        assert_eq!(body["errorType"], "bad_data", "{statement}");
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    assert!(!target.exists(), "COPY wrote nothing");
    // Reading statements of every kind run.
    for statement in [
        "SELECT 1 AS one",
        "WITH t AS (SELECT 2 AS two) SELECT * FROM t",
        "SHOW TABLES",
        "DESCRIBE latency_hours",
        "EXPLAIN SELECT count(*) FROM latency_minutes",
    ] {
        let (status, _, body) = recmeter.sql(statement, None);
        assert_eq!(
            status,
            200,
            "{statement}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // Mistakes are 400s that say what is wrong.
    for (statement, says) in [
        ("SELEC 1", "Expected"),
        ("SELECT * FROM nowhere", "nowhere"),
        (
            "SELECT hdr_quantile(hdr, 2.0) FROM latency_minutes",
            "between 0 and 1",
        ),
        (
            "SELECT hdr_merge(service) FROM latency_minutes",
            "hdr_merge",
        ),
    ] {
        let (status, _, body) = recmeter.sql(statement, None);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{statement}: {text}");
        assert!(text.contains(says), "{statement}: {text}");
    }
    let rows = recmeter.sql_rows("SELECT sum(requests) AS n FROM latency_minutes");
    assert_eq!(rows[0]["n"], 65);
}

#[test]
fn a_runaway_query_times_out_while_ingest_answers() {
    let recmeter = Recmeter::start("[sql]\ntimeout = \"3s\"\n");
    let url = recmeter.api_url("/api/v1/sql");
    let query = std::thread::spawn(move || {
        let response = reqwest::blocking::Client::new()
            .post(url)
            .body("SELECT sum(value % 7) FROM generate_series(1, 1000000000000)")
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    });
    // While it runs, OTLP ingest keeps answering.
    std::thread::sleep(Duration::from_millis(500));
    for i in 1..=5u8 {
        let (status, body) = recmeter.post_otlp("application/x-protobuf", one_span_request(i));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (status, body) = query.join().unwrap();
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errorType"], "timeout", "{body}");
    // The service keeps serving, SQL included.
    let m = recmeter.metrics();
    assert_eq!(m.value("recs_requests_total", &[("status", "ok")]), 5.0);
    assert_eq!(recmeter.sql_rows("SELECT 1 AS one")[0]["one"], 1);
}

#[test]
fn a_memory_hungry_query_is_refused_and_the_service_keeps_serving() {
    let recmeter = Recmeter::start("[sql]\nmemory_limit_bytes = 16777216\n");
    let (status, _, body) = recmeter.sql(
        // A sort that must hold 10 million rows: far more than 16 MiB, and nothing may spill.
        "SELECT value FROM generate_series(1, 30000000) ORDER BY value % 1000 LIMIT 5 OFFSET 10000000",
        None,
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errorType"], "resources_exhausted", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("sql.memory_limit_bytes"),
        "{body}"
    );
    let (status, _) = recmeter.post_otlp("application/x-protobuf", one_span_request(1));
    assert_eq!(status, 200);
    assert_eq!(recmeter.sql_rows("SELECT 1 AS one")[0]["one"], 1);
    assert_eq!(recmeter.get("/metrics", None).0, 200);
}

#[test]
fn sql_now_follows_the_fake_clock() {
    let recmeter = Recmeter::start("");
    let rows = recmeter.sql_rows("SELECT CAST(now() AS BIGINT) AS t");
    assert_eq!(rows[0]["t"], nanos(fake_start()));
    recmeter.advance("90s");
    let rows = recmeter.sql_rows("SELECT CAST(now() AS BIGINT) AS t");
    assert_eq!(rows[0]["t"], nanos(fake_start()) + 90_000_000_000);
}
