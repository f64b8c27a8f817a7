//! Prometheus's PromQL test scripts (`promql/testdata/*.test` of Prometheus 2.42, in
//! `tests/data/promql-testdata/`): `load`, `clear`, `eval instant at`, `eval_fail` and
//! `eval_ordered`, run against a [`MemorySource`]. A case whose expression holds a construct
//! recmeter does not evaluate is skipped, and the construct named.

use super::engine::{self, Options};
use super::source::MemorySource;
use super::value::{Element, Labels, METRIC_NAME, STALE_NAN, Sample, Value};

/// What a script's cases came to.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: usize,
    /// Each failed case: its line and why.
    pub failed: Vec<String>,
    /// Each skipped case: its line and the construct recmeter does not evaluate.
    pub skipped: Vec<String>,
}

/// Runs the script `text`.
pub fn run(text: &str) -> Outcome {
    let lines: Vec<&str> = text.lines().collect();
    let mut source = MemorySource::default();
    let mut outcome = Outcome::default();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "clear" {
            source.clear();
            continue;
        }
        let block_start = i;
        let mut block = Vec::new();
        while i < lines.len() && lines[i].starts_with([' ', '\t']) && !lines[i].trim().is_empty() {
            block.push(lines[i].trim());
            i += 1;
        }
        if let Some(interval) = line.strip_prefix("load ") {
            let Some(step) = duration(interval.trim()) else {
                outcome
                    .failed
                    .push(format!("line {block_start}: bad load interval {interval}"));
                continue;
            };
            for series in &block {
                match load_line(series, step) {
                    Some((labels, samples)) => source.add(labels, samples),
                    None => outcome
                        .failed
                        .push(format!("line {block_start}: cannot read {series:?}")),
                }
            }
            continue;
        }
        let (kind, rest) = match line.split_once(' ') {
            Some(split) => split,
            None => continue,
        };
        let Some(rest) = rest.trim().strip_prefix("instant at ") else {
            outcome
                .skipped
                .push(format!("line {block_start}: {line} (not an instant eval)"));
            continue;
        };
        let Some((at, query)) = rest.split_once(' ') else {
            continue;
        };
        let Some(at) = duration(at) else {
            outcome
                .failed
                .push(format!("line {block_start}: bad time {at}"));
            continue;
        };
        let case = format!("line {block_start}: {query}");
        match eval_case(&source, kind, query.trim(), at, &block) {
            Case::Passed => outcome.passed += 1,
            Case::Failed(why) => outcome.failed.push(format!("{case}: {why}")),
            Case::Skipped(what) => outcome.skipped.push(format!("{case}: {what}")),
        }
    }
    outcome
}

enum Case {
    Passed,
    Failed(String),
    Skipped(String),
}

fn eval_case(source: &MemorySource, kind: &str, query: &str, at: i64, expected: &[&str]) -> Case {
    let parsed = match promql_parser::parser::parse(query) {
        Ok(expr) => expr,
        Err(e) if kind == "eval_fail" => {
            let _ = e;
            return Case::Passed;
        }
        // A function Prometheus 2.42 has and the parser does not (holt_winters) is a
        // construct recmeter does not evaluate.
        Err(e) if e.contains("unknown function") => {
            return Case::Skipped(format!("does not parse: {e}"));
        }
        Err(e) => return Case::Failed(format!("does not parse: {e}")),
    };
    if let Err(e) = engine::supported(&parsed) {
        return Case::Skipped(e.message);
    }
    let result = engine::instant(source, &parsed, at, &Options::default());
    if kind == "eval_fail" {
        return match result {
            Err(_) => Case::Passed,
            Ok(v) => Case::Failed(format!("evaluated to {v:?}, expected a failure")),
        };
    }
    let value = match result {
        Ok(v) => v,
        Err(e) => return Case::Failed(format!("failed: {e}")),
    };
    let ordered = kind == "eval_ordered";
    match value {
        Value::Scalar(v) => {
            let want = expected.first().and_then(|l| number(l));
            match want {
                Some(w) if expected.len() == 1 && almost_equal(v, w) => Case::Passed,
                _ => Case::Failed(format!("scalar {v}, expected {expected:?}")),
            }
        }
        Value::Vector(elements) => compare_vector(&elements, expected, ordered),
        Value::String(s) => Case::Failed(format!("string {s:?}, expected {expected:?}")),
        Value::Matrix(_) => Case::Skipped("a range vector as the result".into()),
    }
}

fn compare_vector(got: &[Element], expected: &[&str], ordered: bool) -> Case {
    let mut want = Vec::new();
    for line in expected {
        match expected_line(line) {
            Some(pair) => want.push(pair),
            None => return Case::Failed(format!("cannot read the expected line {line:?}")),
        }
    }
    if want.len() != got.len() {
        return Case::Failed(format!(
            "{} elements, expected {}: got {:?}",
            got.len(),
            want.len(),
            got.iter()
                .map(|e| format!("{} {}", e.labels, e.v))
                .collect::<Vec<_>>()
        ));
    }
    for (i, (labels, value)) in want.iter().enumerate() {
        let found = if ordered {
            (got[i].labels == *labels).then_some(&got[i])
        } else {
            got.iter().find(|e| e.labels == *labels)
        };
        match found {
            Some(e) if almost_equal(e.v, *value) => {}
            Some(e) => {
                return Case::Failed(format!("{labels}: {} where {value} was expected", e.v));
            }
            None => {
                return Case::Failed(format!(
                    "no {labels}{} in {:?}",
                    if ordered { " at its place" } else { "" },
                    got.iter().map(|e| e.labels.to_string()).collect::<Vec<_>>()
                ));
            }
        }
    }
    Case::Passed
}

/// Prometheus's comparison in its engine tests.
fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 0.000_001;
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / (a.abs() + b.abs()) < EPSILON
}

/// A duration as the scripts write it (`5m`, `1h30m`, `10s`, `0`), in milliseconds.
fn duration(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    let mut total = 0i64;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            'y' => 365 * 86_400_000,
            _ => return None,
        };
        total += n * unit;
    }
    digits.is_empty().then_some(total)
}

fn number(text: &str) -> Option<f64> {
    let t = text.trim();
    match t {
        "Inf" | "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => t.parse().ok(),
    }
}

/// Splits a line into a series descriptor and the rest.
fn split_series(line: &str) -> (&str, &str) {
    match line.find('{') {
        Some(open) if !line[..open].contains(char::is_whitespace) => {
            let mut quoted = false;
            let mut escaped = false;
            for (i, c) in line[open..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        let end = open + i + 1;
                        return (&line[..end], line[end..].trim());
                    }
                    _ => {}
                }
            }
            (line, "")
        }
        _ => match line.split_once(char::is_whitespace) {
            Some((a, b)) => (a, b.trim()),
            None => (line, ""),
        },
    }
}

/// A series descriptor (`name{a="1"}`, `{a="1"}`, `name`) as labels.
fn series_labels(text: &str) -> Option<Labels> {
    let (name, rest) = match text.find('{') {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    let mut pairs = Vec::new();
    if !name.is_empty() {
        pairs.push((METRIC_NAME.to_owned(), name.to_owned()));
    }
    if !rest.is_empty() {
        let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
        let mut chars = inner.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(c) = chars.peek().copied() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next()? != '=' {
                return None;
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        't' => value.push('\t'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            pairs.push((key, value));
        }
    }
    Some(Labels::new(pairs))
}

/// An expected result line: a series and its value, or a bare value (a scalar).
fn expected_line(line: &str) -> Option<(Labels, f64)> {
    let (series, value) = split_series(line);
    Some((series_labels(series)?, number(value)?))
}

/// A `load` line: the series and its samples, `step` apart from time 0.
fn load_line(line: &str, step: i64) -> Option<(Labels, Vec<Sample>)> {
    let (series, values) = split_series(line);
    let labels = series_labels(series)?;
    let mut samples = Vec::new();
    let mut n = 0i64;
    for token in values.split_whitespace() {
        if token == "_" {
            n += 1;
            continue;
        }
        if let Some(times) = token.strip_prefix("_x") {
            n += times.parse::<i64>().ok()?;
            continue;
        }
        if token == "stale" {
            samples.push(Sample {
                t: n * step,
                v: f64::from_bits(STALE_NAN),
            });
            n += 1;
            continue;
        }
        match token.rsplit_once('x') {
            Some((expr, times)) if !expr.is_empty() && times.parse::<i64>().is_ok() => {
                let times: i64 = times.parse().ok()?;
                let (start, delta) = split_step(expr)?;
                for k in 0..=times {
                    samples.push(Sample {
                        t: n * step,
                        v: start + delta * k as f64,
                    });
                    n += 1;
                }
            }
            _ => {
                samples.push(Sample {
                    t: n * step,
                    v: number(token)?,
                });
                n += 1;
            }
        }
    }
    Some((labels, samples))
}

/// `a+b` or `a-b` of an `a+bxn` token.
fn split_step(expr: &str) -> Option<(f64, f64)> {
    let bytes = expr.as_bytes();
    for i in (1..bytes.len()).rev() {
        let c = bytes[i];
        if (c == b'+' || c == b'-') && !matches!(bytes[i - 1], b'e' | b'E') {
            let start = number(&expr[..i])?;
            let delta = number(&expr[i + 1..])?;
            return Some((start, if c == b'-' { -delta } else { delta }));
        }
    }
    Some((number(expr)?, 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_lines_expand_as_prometheus_does() {
        let (labels, samples) =
            load_line(r#"m{a="x y", b="2"} 0+10x2 _ stale -1-1x1 _x2 3"#, 1000).unwrap();
        assert_eq!(labels.to_string(), r#"m{a="x y", b="2"}"#);
        let values: Vec<(i64, String)> =
            samples.iter().map(|s| (s.t, format!("{}", s.v))).collect();
        assert_eq!(
            values,
            [
                (0, "0".into()),
                (1000, "10".into()),
                (2000, "20".into()),
                (4000, "NaN".into()),
                (5000, "-1".into()),
                (6000, "-2".into()),
                (9000, "3".into())
            ]
        );
        assert_eq!(duration("1h5m"), Some(3_900_000));
        assert_eq!(duration("10ms"), Some(10));
        assert_eq!(expected_line("{} 3").unwrap().1, 3.0);
        assert_eq!(
            expected_line(r#"{job="a,b}"} -Inf"#).unwrap().0.get("job"),
            "a,b}"
        );
    }
}
