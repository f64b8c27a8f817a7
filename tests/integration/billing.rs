//! Billing exports, checked against DuckDB over the raw files: `recmeter billing check`'s
//! totals per day and per service equal DuckDB's `DECIMAL(38,12)` sums of the cost columns
//! recmeter chose (`tests/data/billing/*.sql`), compared as text; every row is a line or a
//! reject; a malformed cost rejects its row alone; f64 drift never reaches a total.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{binary, python};

/// (kind, key) → (billed_cost, effective_cost, lines), kind `day` or `service`.
pub type Totals = BTreeMap<(String, String), (String, String, u64)>;

pub fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/billing")
        .join(file)
}

/// DuckDB's totals of `file` by the SQL in `sql` (its `$path` parameter the file).
pub fn duckdb(sql: &str, file: &Path) -> Totals {
    let script = r#"import sys, duckdb
sql = open(sys.argv[1]).read()
con = duckdb.connect()
con.execute('SET enable_progress_bar = false')
for kind, key, billed, effective, lines in con.execute(sql, {'path': sys.argv[2]}).fetchall():
    print(f'{kind}\t{key}\t{billed}\t{effective}\t{lines}')
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(data(sql))
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                (f[0].to_owned(), f[1].to_owned()),
                (f[2].to_owned(), f[3].to_owned(), f[4].parse().unwrap()),
            )
        })
        .collect()
}

/// What `recmeter billing check` printed: its exit, the (rows, lines, rejects) of each file,
/// the totals in USD, and all of its output.
struct Checked {
    ok: bool,
    counts: Vec<(u64, u64, u64)>,
    totals: Totals,
    output: String,
}

fn check(files: &[&Path]) -> Checked {
    let out = Command::new(binary())
        .args(["billing", "check"])
        .args(files)
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = Vec::new();
    let mut totals = Totals::new();
    let mut kind = "";
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((_, rest)) = line.split_once(", ").filter(|(_, r)| r.contains(" rows: ")) {
            // "N rows: L lines, R rejects"
            let n: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            counts.push((n[0], n[1], n[2]));
        } else if line.starts_with("per day") {
            kind = "day";
        } else if line.starts_with("per service") {
            kind = "service";
        } else if line.starts_with("total") {
            kind = "";
        }
        let f: Vec<&str> = line.split('\t').collect();
        if !kind.is_empty() && f.len() == 5 && f[1] == "USD" {
            totals.insert(
                (kind.to_owned(), f[0].to_owned()),
                (f[2].to_owned(), f[3].to_owned(), f[4].parse().unwrap()),
            );
        }
    }
    Checked {
        ok: out.status.success(),
        counts,
        totals,
        output,
    }
}

#[test]
fn the_focus_sample_reconciles_with_duckdb_per_day_and_service() {
    let sample = data("focus_sample.csv");
    let checked = check(&[&sample]);
    assert!(checked.ok, "{}", checked.output);
    assert_eq!(checked.counts, [(1_000, 1_000, 0)], "{}", checked.output);
    let expected = duckdb("focus.sql", &sample);
    assert!(expected.len() > 30, "{expected:?}");
    assert_eq!(checked.totals, expected, "{}", checked.output);
}

#[test]
fn the_anonymized_aws_cur_export_reconciles_with_duckdb_per_day_and_service() {
    let sample = data("aws-cur-sample.csv");
    let checked = check(&[&sample]);
    assert!(checked.ok, "{}", checked.output);
    assert_eq!(checked.counts, [(1_281, 1_281, 0)], "{}", checked.output);
    assert!(checked.output.contains(": AWS CUR, "), "{}", checked.output);
    let expected = duckdb("aws-cur.sql", &sample);
    assert!(expected.len() > 20, "{expected:?}");
    assert_eq!(checked.totals, expected, "{}", checked.output);
}

/// A GCP export built from the documented schema, credits included (one larger than its
/// line's cost).
#[test]
fn a_gcp_export_with_credits_reconciles_with_duckdb_per_day_and_service() {
    let sample = data("gcp-sample.jsonl");
    let checked = check(&[&sample]);
    assert!(checked.ok, "{}", checked.output);
    assert_eq!(checked.counts, [(60, 60, 0)], "{}", checked.output);
    let expected = duckdb("gcp.sql", &sample);
    assert_eq!(expected.len(), 7, "{expected:?}");
    assert_eq!(checked.totals, expected, "{}", checked.output);
}

/// One malformed BilledCost: its row alone is rejected, named by file and row, and the
/// totals are DuckDB's over the other 999 rows.
#[test]
fn one_malformed_cost_rejects_its_row_alone() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(data("focus_sample.csv")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // Data row 10 (line 11): its BilledCost (the second column) gets a comma decimal.
    let row = lines[10].to_owned();
    let (first, rest) = row.split_once(',').unwrap();
    let (_, tail) = rest.split_once(',').unwrap();
    let bad_row = format!("{first},\"1,25\",{tail}");
    let bad = dir.path().join("bad.csv");
    lines[10] = &bad_row;
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    lines.remove(10);
    let without = dir.path().join("without.csv");
    std::fs::write(&without, lines.join("\n") + "\n").unwrap();

    let checked = check(&[&bad]);
    assert!(!checked.ok, "a reject fails the check");
    assert_eq!(checked.counts, [(1_000, 999, 1)], "{}", checked.output);
    assert!(
        checked.output.contains(&format!(
            "{}:10 BilledCost: not a decimal number (\"1,25\")",
            bad.display()
        )),
        "{}",
        checked.output
    );
    assert_eq!(checked.totals, duckdb("focus.sql", &without));
}

/// 200 000 costs of about a billion dollars with cents: summed in f64 the total is off by
/// more than a cent (checked here in Python), yet recmeter's totals equal DuckDB's decimals.
#[test]
fn totals_are_exact_where_f64_drifts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.csv");
    let mut text = String::from(
        "BilledCost,EffectiveCost,ChargePeriodStart,ChargePeriodEnd,ProviderName,BillingAccountId,BillingCurrency,ServiceName\n",
    );
    let mut x: u64 = 12_345;
    for i in 0..200_000u64 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let cents = (x >> 33) % 100;
        let dollars = 987_654_321 + (x >> 40) % 1_000;
        let day = 1 + i % 28;
        text.push_str(&format!(
            "{dollars}.{cents:02},{dollars}.{cents:02}1,2024-02-{day:02} 10:00:00,2024-02-{day:02} 11:00:00,AWS,1,USD,S{}\n",
            i % 3
        ));
    }
    std::fs::write(&file, text).unwrap();
    let drift = Command::new(python())
        .args([
            "-c",
            "import csv, sys, decimal\n\
             rows = list(csv.DictReader(open(sys.argv[1])))\n\
             f = sum(float(r['BilledCost']) for r in rows)\n\
             d = sum(decimal.Decimal(r['BilledCost']) for r in rows)\n\
             print(abs(decimal.Decimal(f) - d))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let drift: f64 = String::from_utf8_lossy(&drift.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(drift > 0.01, "f64 drifts by {drift} only");
    let checked = check(&[&file]);
    assert!(checked.ok, "{}", checked.output);
    assert_eq!(checked.totals, duckdb("focus.sql", &file));
}
