//! The billing source end to end: exports put in a local bucket are scanned on recmeter's
//! clock, landed in the store, and read back through SQL (`cost_lines`, `cost_rejects`),
//! where the totals per day and per service equal DuckDB's over the raw files. Restated bills
//! replace the old lines, an AWS delivery replaces the one before it, each object version
//! counts once, and a `kill -9` in the middle of a replacement leaves the old lines or the
//! new, never both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::billing::{Totals, data, duckdb};
use crate::durability::{set_hook, wait_for};
use crate::harness::Recmeter;

/// Totals per day and service of the lines from objects whose path starts with `object`,
/// as DataFusion sums them over `cost_lines`: the shape `duckdb` gives.
fn totals(recmeter: &Recmeter, object: &str) -> Totals {
    let filter = format!("source_object LIKE '{object}%'");
    let query = format!(
        "SELECT 'day' AS kind, to_char(charge_period_start, '%Y-%m-%d') AS key, \
                CAST(SUM(billed_cost) AS VARCHAR) AS billed, \
                CAST(SUM(effective_cost) AS VARCHAR) AS effective, COUNT(*) AS lines \
         FROM cost_lines WHERE {filter} GROUP BY 1, 2 \
         UNION ALL \
         SELECT 'service', coalesce(service_name, ''), CAST(SUM(billed_cost) AS VARCHAR), \
                CAST(SUM(effective_cost) AS VARCHAR), COUNT(*) \
         FROM cost_lines WHERE {filter} GROUP BY 1, 2"
    );
    recmeter
        .sql_rows(&query)
        .into_iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (
                (s("kind"), s("key")),
                (s("billed"), s("effective"), r["lines"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn count(recmeter: &Recmeter, query: &str) -> u64 {
    recmeter.sql_rows(query)[0]["n"].as_u64().unwrap()
}

/// Starts recmeter over the bucket `bucket`, in `dir`, scanning every 5 minutes.
fn start(dir: &Path, bucket: &Path) -> Recmeter {
    let config = format!(
        "[billing]\nurl = \"{}\"\nscan_interval = \"5m\"\n\
         [[billing.defaults]]\nprefix = \"gcp/\"\nprovider = \"Google Cloud\"\n",
        bucket.display()
    );
    let recmeter = Recmeter::start_in(&config, dir);
    // The first scan runs at once; a tick of the clock waits for it.
    recmeter.advance("1s");
    recmeter
}

/// Copies `file` of the test data to `to` under the bucket.
fn put(bucket: &Path, to: &str, text: &str) -> PathBuf {
    let path = bucket.join(to);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn read(file: &str) -> String {
    std::fs::read_to_string(data(file)).unwrap()
}

/// `text` (a CSV export) rewritten row by row: `edit` gets each data row's number (the first
/// is 1) and its cells by column name, and returns whether the row stays.
fn rewrite(text: &str, mut edit: impl FnMut(u64, &mut [String], &[String]) -> bool) -> String {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_owned).collect();
    let mut wtr = csv::Writer::from_writer(Vec::new());
    wtr.write_record(&header).unwrap();
    for (i, record) in rdr.records().enumerate() {
        let mut row: Vec<String> = record.unwrap().iter().map(str::to_owned).collect();
        if edit(i as u64 + 1, &mut row, &header) {
            wtr.write_record(&row).unwrap();
        }
    }
    String::from_utf8(wtr.into_inner().unwrap()).unwrap()
}

/// The FOCUS sample restated: every BilledCost with a 1 put before its digits.
fn restated(text: &str) -> String {
    rewrite(text, |_, row, header| {
        let billed = header.iter().position(|c| c == "BilledCost").unwrap();
        let v = &row[billed];
        if v != "NULL" && !v.is_empty() {
            row[billed] = match v.strip_prefix('-') {
                Some(rest) => format!("-1{rest}"),
                None => format!("1{v}"),
            };
        }
        true
    })
}

#[test]
fn the_samples_land_and_sql_reconciles_with_duckdb_per_day_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let focus = put(
        &bucket,
        "focus/2024/focus_sample.csv",
        &read("focus_sample.csv"),
    );
    let cur = put(&bucket, "aws/cur.csv", &read("aws-cur-sample.csv"));
    let gcp = put(&bucket, "gcp/export.jsonl", &read("gcp-sample.jsonl"));
    // The FOCUS sample as Parquet, written by DuckDB: exact decimals, timestamps, text.
    std::fs::create_dir_all(bucket.join("parquet")).unwrap();
    let parquet = bucket.join("parquet/focus.parquet");
    let script = r#"import sys, duckdb
con = duckdb.connect()
con.execute('SET enable_progress_bar = false')
money = {c: 'DECIMAL(38,12)' for c in ['BilledCost', 'EffectiveCost', 'ListCost', 'ContractedCost']}
con.execute("COPY (SELECT * FROM read_csv(?, header = true, nullstr = 'NULL', types = ?)) TO '" + sys.argv[2] + "' (FORMAT parquet)", [sys.argv[1], money])
"#;
    let out = std::process::Command::new(crate::harness::python())
        .args(["-c", script])
        .arg(&focus)
        .arg(&parquet)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Objects that are no export, and a manifest that does not read: named, not fatal.
    put(&bucket, "focus/notes.csv", "hello,world\n1,2\n");
    std::fs::write(
        bucket.join("focus/garbage.csv"),
        [0xff_u8, 0xfe, 0, 1, 2, 0x80].repeat(1000),
    )
    .unwrap();
    put(
        &bucket,
        "cur/x/20240101-20240201/x-Manifest.json",
        "{\"assemblyId\": 1",
    );
    let recmeter = start(dir.path(), &bucket);
    assert_eq!(totals(&recmeter, "focus/"), duckdb("focus.sql", &focus));
    assert_eq!(totals(&recmeter, "parquet/"), duckdb("focus.sql", &focus));
    let unreadable = recmeter.sql_rows(
        "SELECT source_object, source_row, reason FROM cost_rejects ORDER BY source_object",
    );
    assert_eq!(unreadable.len(), 2, "{unreadable:?}");
    assert_eq!(unreadable[0]["source_object"], "focus/garbage.csv");
    assert_eq!(unreadable[1]["source_object"], "focus/notes.csv");
    assert_eq!(unreadable[1]["source_row"], 0);
    assert!(
        unreadable[1]["reason"]
            .as_str()
            .unwrap()
            .contains("not a billing export"),
        "{unreadable:?}"
    );
    assert!(
        recmeter.log().contains("x-Manifest.json"),
        "{}",
        recmeter.log()
    );
    assert_eq!(totals(&recmeter, "aws/"), duckdb("aws-cur.sql", &cur));
    assert_eq!(totals(&recmeter, "gcp/"), duckdb("gcp.sql", &gcp));
    // Every row is a line or a reject.
    let lines = count(&recmeter, "SELECT COUNT(*) AS n FROM cost_lines");
    assert_eq!(lines, 1_000 + 1_000 + 1_281 + 60);
    // The per-prefix default names the GCP rows' provider, which they do not carry.
    let providers = recmeter.sql_rows(
        "SELECT provider, COUNT(*) AS n FROM cost_lines GROUP BY provider ORDER BY provider",
    );
    assert!(
        providers
            .iter()
            .any(|r| r["provider"] == "Google Cloud" && r["n"] == 60),
        "{providers:?}"
    );
    let m = recmeter.metrics();
    assert_eq!(
        m.value("recmeter_billing_objects_total", &[("outcome", "ingested")]),
        4.0
    );
    assert_eq!(
        m.value(
            "recmeter_billing_objects_total",
            &[("outcome", "unreadable")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "recmeter_billing_rows_total",
            &[("provider", "Google Cloud"), ("outcome", "line")]
        ),
        60.0
    );
    assert!(m.value("recmeter_billing_last_scan_timestamp_seconds", &[]) > 0.0);
    let gcp_end = m.value(
        "recmeter_billing_data_end_timestamp_seconds",
        &[("provider", "Google Cloud")],
    );
    let expected = recmeter.sql_rows(
        "SELECT CAST(to_unixtime(MAX(charge_period_end)) AS BIGINT) AS n FROM cost_lines \
         WHERE provider = 'Google Cloud'",
    )[0]["n"]
        .as_i64()
        .unwrap();
    assert_eq!(gcp_end, expected as f64);
    // A scan with nothing new reads nothing again, the unreadable objects included.
    recmeter.advance("5m");
    let m = recmeter.metrics();
    assert_eq!(
        m.value("recmeter_billing_objects_total", &[("outcome", "ingested")]),
        4.0
    );
    assert_eq!(
        m.value(
            "recmeter_billing_objects_total",
            &[("outcome", "unreadable")]
        ),
        2.0
    );
    assert_eq!(
        count(&recmeter, "SELECT COUNT(*) AS n FROM cost_lines"),
        lines
    );
}

/// A bill, then its restatement in the same object (a changed ETag), then in a new object of
/// the same folder: each time the totals are the latest file's alone. A malformed cost is one
/// reject, named by its object and row.
#[test]
fn a_restated_bill_replaces_the_old_lines() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let sample = read("focus_sample.csv");
    let first = put(&bucket, "focus/bill.csv", &sample);
    let recmeter = start(dir.path(), &bucket);
    let original = duckdb("focus.sql", &first);
    assert_eq!(totals(&recmeter, "focus/"), original);
    // The same object, restated.
    let corrected = restated(&sample);
    put(&bucket, "focus/bill.csv", &corrected);
    let oracle = dir.path().join("corrected.csv");
    std::fs::write(&oracle, &corrected).unwrap();
    recmeter.advance("5m");
    let expected = duckdb("focus.sql", &oracle);
    assert_ne!(expected, original);
    assert_eq!(totals(&recmeter, "focus/"), expected);
    // A new object of the same bill: it replaces, and the first object's lines go.
    // Row 1's cost is malformed, row 2 is billed in a currency with no rate.
    let broken = rewrite(&sample, |n, row, header| {
        let at = |name: &str| header.iter().position(|c| c == name).unwrap();
        if n == 1 {
            row[at("BilledCost")] = "12.5.3".to_owned();
        }
        if n == 2 {
            row[at("BillingCurrency")] = "EUR".to_owned();
        }
        true
    });
    std::thread::sleep(Duration::from_millis(20));
    put(&bucket, "focus/bill-v2.csv", &broken);
    recmeter.advance("5m");
    let lines = count(&recmeter, "SELECT COUNT(*) AS n FROM cost_lines");
    assert_eq!(lines, 998);
    assert_eq!(
        count(
            &recmeter,
            "SELECT COUNT(*) AS n FROM cost_lines WHERE source_object = 'focus/bill.csv'"
        ),
        0
    );
    let rejects = recmeter.sql_rows(
        "SELECT source_object, source_row, \"column\", reason, raw FROM cost_rejects \
         ORDER BY source_row",
    );
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert_eq!(rejects[0]["source_object"], "focus/bill-v2.csv");
    assert_eq!(rejects[0]["source_row"], 1);
    assert_eq!(rejects[0]["column"], "BilledCost");
    assert_eq!(rejects[0]["raw"], "12.5.3");
    assert_eq!(rejects[1]["column"], "BillingCurrency");
    assert!(
        rejects[1]["reason"]
            .as_str()
            .unwrap()
            .contains("billing.usd_rates"),
        "{rejects:?}"
    );
    let without = dir.path().join("without.csv");
    std::fs::write(&without, rewrite(&broken, |n, _, _| n > 2)).unwrap();
    let expected = duckdb("focus.sql", &without);
    assert_eq!(totals(&recmeter, "focus/"), expected);
    // The same object again, cut short mid-gzip: the bill in force stays with its rejects, one
    // more says why, and it is not read again.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, broken.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(bucket.join("focus/bill-v2.csv"), &gz[..gz.len() / 2]).unwrap();
    recmeter.advance("5m");
    assert_eq!(totals(&recmeter, "focus/"), expected);
    let rejects =
        recmeter.sql_rows("SELECT source_object, source_row FROM cost_rejects ORDER BY source_row");
    assert_eq!(rejects.len(), 3, "{rejects:?}");
    assert_eq!(rejects[0]["source_row"], 0);
    recmeter.advance("5m");
    assert_eq!(
        recmeter.metrics().value(
            "recmeter_billing_objects_total",
            &[("outcome", "unreadable")]
        ),
        1.0
    );
    assert_eq!(
        recmeter
            .metrics()
            .value("recmeter_billing_objects_total", &[("outcome", "ingested")]),
        3.0
    );
}

/// The AWS CUR sample as a legacy delivery: `<report>/<period>/<assembly>/<report>-N.csv`,
/// split in two parts, with the manifest in the period folder and a copy in the assembly's.
fn deliver(bucket: &Path, assembly: &str, text: &str) {
    deliver_files(bucket, assembly, text);
    deliver_manifests(bucket, assembly);
}

/// A delivery's report files: AWS writes them before the manifest.
fn deliver_files(bucket: &Path, assembly: &str, text: &str) {
    let period = "cur/recs/20240101-20240201";
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let half = rows.len() / 2;
    for (n, part) in [&rows[..half], &rows[half..]].iter().enumerate() {
        let key = format!("{period}/{assembly}/recs-{}.csv", n + 1);
        put(bucket, &key, &format!("{header}\n{}\n", part.join("\n")));
    }
}

/// A delivery's manifest, last, in the period folder and in the assembly's.
fn deliver_manifests(bucket: &Path, assembly: &str) {
    let period = "cur/recs/20240101-20240201";
    let keys: Vec<String> = (1..=2)
        .map(|n| format!("{period}/{assembly}/recs-{n}.csv"))
        .collect();
    let manifest = serde_json::json!({
        "assemblyId": assembly,
        "account": "123456789012",
        "reportKeys": keys.iter().map(|k| format!("billing-bucket-prefix/{k}")).collect::<Vec<_>>(),
        "billingPeriod": {"start": "20240101T000000.000Z", "end": "20240201T000000.000Z"},
        "bucket": "billing-bucket",
    })
    .to_string();
    put(
        bucket,
        &format!("{period}/{assembly}/recs-Manifest.json"),
        &manifest,
    );
    std::thread::sleep(Duration::from_millis(20));
    put(bucket, &format!("{period}/recs-Manifest.json"), &manifest);
}

#[test]
fn a_second_aws_delivery_for_a_period_replaces_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let sample = read("aws-cur-sample.csv");
    deliver(&bucket, "11111111-aaaa", &sample);
    let recmeter = start(dir.path(), &bucket);
    let whole = duckdb("aws-cur.sql", &data("aws-cur-sample.csv"));
    // Both parts count, once each, though two manifests name them.
    assert_eq!(totals(&recmeter, "cur/"), whole);
    // The second delivery: the first 1 000 rows only.
    let second: String = sample.lines().take(1_001).collect::<Vec<_>>().join("\n") + "\n";
    std::thread::sleep(Duration::from_millis(20));
    // Its report files first: until the manifest names them they are not read.
    deliver_files(&bucket, "22222222-bbbb", &second);
    recmeter.advance("5m");
    assert_eq!(totals(&recmeter, "cur/"), whole);
    deliver_manifests(&bucket, "22222222-bbbb");
    recmeter.advance("5m");
    let oracle = dir.path().join("second.csv");
    std::fs::write(&oracle, &second).unwrap();
    assert_eq!(totals(&recmeter, "cur/"), duckdb("aws-cur.sql", &oracle));
    assert_eq!(
        count(
            &recmeter,
            "SELECT COUNT(*) AS n FROM cost_lines WHERE source_object LIKE '%11111111-aaaa%'"
        ),
        0
    );
    assert_eq!(
        count(&recmeter, "SELECT COUNT(*) AS n FROM cost_lines"),
        1_000
    );
}

/// `kill -9` while a restatement's files are written but not committed: after the restart
/// the old lines are in force, alone, and the new files are swept; the next scan lands the
/// restatement, which a second `kill -9` (before any checkpoint) keeps through the replay.
#[test]
fn a_crash_in_the_middle_of_a_restatement_leaves_the_old_lines_or_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let sample = read("focus_sample.csv");
    let first = put(&bucket, "focus/bill.csv", &sample);
    let original = duckdb("focus.sql", &first);
    let recmeter = start(dir.path(), &bucket);
    assert_eq!(totals(&recmeter, "focus/"), original);
    // A checkpoint holds the first bill.
    recmeter.advance("5m");
    let corrected = restated(&sample);
    let oracle = dir.path().join("corrected.csv");
    std::fs::write(&oracle, &corrected).unwrap();
    put(&bucket, "focus/bill.csv", &corrected);
    set_hook(&recmeter, "hold_billing_commit", true);
    // The scan stops at the hold; the clock's answer does not wait for it.
    let url = recmeter.api_url("/-/test/clock");
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(url)
            .header("Content-Type", "application/json")
            .body(r#"{"advance":"5m"}"#)
            .send();
    });
    wait_for("the held commit", || {
        recmeter
            .log()
            .contains("hold_billing_commit: the export's files are written")
    });
    let staged = std::fs::read_dir(dir.path().join("data/cost_lines"))
        .unwrap()
        .count();
    recmeter.kill9();
    // Restarted with the billing source off, so nothing is scanned: the old lines alone, the
    // new files swept.
    let recmeter = Recmeter::start_in("", dir.path());
    assert_eq!(totals(&recmeter, "focus/"), original);
    let left = std::fs::read_dir(dir.path().join("data/cost_lines"))
        .unwrap()
        .count();
    assert!(left < staged, "{left} files left of {staged}");
    recmeter.kill9();
    // With the source on, the first scan lands the restatement.
    let recmeter = start(dir.path(), &bucket);
    let expected = duckdb("focus.sql", &oracle);
    assert_eq!(totals(&recmeter, "focus/"), expected);
    recmeter.kill9();
    let recmeter = Recmeter::start_in("", dir.path());
    assert_eq!(totals(&recmeter, "focus/"), expected);
    assert_eq!(
        count(&recmeter, "SELECT COUNT(*) AS n FROM cost_lines"),
        1_000
    );
}
