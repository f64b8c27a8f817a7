//! PromQL's operators and functions on values, as Prometheus 2.42 computes them.

use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;

use super::error::{Error, Result};
use super::value::{Element, Labels, METRIC_NAME, Sample};

/// `op` on two numbers: the value, and for a comparison whether it holds (always `true` for
/// arithmetic).
pub fn binop(op: &str, l: f64, r: f64) -> (f64, bool) {
    match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

/// One-argument math functions.
pub fn math(name: &str, v: f64) -> f64 {
    match name {
        "abs" => v.abs(),
        "ceil" => v.ceil(),
        "floor" => v.floor(),
        "exp" => v.exp(),
        "ln" => v.ln(),
        "log2" => v.log2(),
        "log10" => v.log10(),
        "sqrt" => v.sqrt(),
        "sin" => v.sin(),
        "cos" => v.cos(),
        "tan" => v.tan(),
        "asin" => v.asin(),
        "acos" => v.acos(),
        "atan" => v.atan(),
        "sinh" => v.sinh(),
        "cosh" => v.cosh(),
        "tanh" => v.tanh(),
        "asinh" => v.asinh(),
        "acosh" => v.acosh(),
        "atanh" => v.atanh(),
        "deg" => v.to_degrees(),
        "rad" => v.to_radians(),
        "sgn" => {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }
        _ => f64::NAN,
    }
}

/// `topk` (`top`) or `bottomk` of each group: the `k` largest (smallest) elements, whole
/// labels kept, largest (smallest) first; NaN counts as the smallest (largest).
pub fn top(
    elements: Vec<Element>,
    k: f64,
    top: bool,
    grouping: impl Fn(&Labels) -> Labels,
) -> Vec<Element> {
    if k.is_nan() || k < 1.0 {
        return Vec::new();
    }
    let k = if k > 1e9 { usize::MAX } else { k as usize };
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: std::collections::HashMap<Labels, Vec<Element>> =
        std::collections::HashMap::new();
    for e in elements {
        let g = grouping(&e.labels);
        let list = groups.entry(g.clone()).or_insert_with(|| {
            order.push(g);
            Vec::new()
        });
        list.push(e);
    }
    let better = |a: f64, b: f64| -> bool {
        // Whether `a` ranks before `b`.
        if a.is_nan() {
            return false;
        }
        if b.is_nan() {
            return true;
        }
        if top { a > b } else { a < b }
    };
    let mut out = Vec::new();
    for g in order {
        let mut list = groups.remove(&g).unwrap_or_default();
        // A stable sort keeps the input's order among equal values.
        list.sort_by(|a, b| {
            if better(a.v, b.v) {
                std::cmp::Ordering::Less
            } else if better(b.v, a.v) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        list.truncate(k);
        out.extend(list);
    }
    out
}

/// `sort` or `sort_desc`: by value, NaN last.
pub fn sort(v: &mut [Element], descending: bool) {
    v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => {
            let o = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
            if descending { o.reverse() } else { o }
        }
    });
}

/// The labels `absent(expr)` gives: the equality matchers of a selector, but the name, each
/// label named once.
pub fn absent_labels(expr: &Expr) -> Labels {
    let selector = match expr {
        Expr::VectorSelector(v) => v,
        _ => return Labels::default(),
    };
    let matchers = &selector.matchers.matchers;
    // A label named by more than one matcher, of any kind, is left out.
    let named_once = |name: &str| matchers.iter().filter(|m| m.name == name).count() == 1;
    Labels::new(
        matchers
            .iter()
            .filter(|m| {
                m.name != METRIC_NAME && matches!(m.op, MatchOp::Equal) && named_once(&m.name)
            })
            .map(|m| (m.name.clone(), m.value.clone())),
    )
}

/// A range function over one series' samples in `[from, to]` (`range_ms` long); `None` where
/// Prometheus gives no value.
pub fn over_time(name: &str, samples: &[Sample], from: i64, to: i64, range_ms: i64) -> Option<f64> {
    let first = samples.first()?;
    let last = samples.last()?;
    match name {
        "rate" | "increase" | "delta" => {
            extrapolated_rate(samples, from, to, range_ms, name != "delta", name == "rate")
        }
        "irate" | "idelta" => {
            if samples.len() < 2 {
                return None;
            }
            let previous = samples[samples.len() - 2];
            let mut v = last.v - previous.v;
            if name == "irate" && last.v < previous.v {
                // A counter reset.
                v = last.v;
            }
            let interval = last.t - previous.t;
            if interval == 0 {
                return None;
            }
            Some(if name == "irate" {
                v / (interval as f64 / 1000.0)
            } else {
                v
            })
        }
        "sum_over_time" => Some(samples.iter().map(|s| s.v).sum()),
        "count_over_time" => Some(samples.len() as f64),
        "last_over_time" => Some(last.v),
        "min_over_time" => {
            Some(samples.iter().skip(1).fold(
                first.v,
                |m, s| {
                    if m > s.v || m.is_nan() { s.v } else { m }
                },
            ))
        }
        "max_over_time" => {
            Some(samples.iter().skip(1).fold(
                first.v,
                |m, s| {
                    if m < s.v || m.is_nan() { s.v } else { m }
                },
            ))
        }
        "avg_over_time" => {
            let mut mean = 0.0f64;
            let mut count = 0.0f64;
            for s in samples {
                count += 1.0;
                if mean.is_infinite() {
                    if s.v.is_infinite() && (mean > 0.0) == (s.v > 0.0) {
                        continue;
                    }
                    if !s.v.is_infinite() && !s.v.is_nan() {
                        continue;
                    }
                }
                mean += s.v / count - mean / count;
            }
            Some(mean)
        }
        _ => None,
    }
}

/// `rate`, `increase` and `delta`, extrapolated to the range's ends as Prometheus 2.42 does.
fn extrapolated_rate(
    samples: &[Sample],
    range_start: i64,
    range_end: i64,
    range_ms: i64,
    counter: bool,
    rate: bool,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let first = samples[0];
    let last = samples[samples.len() - 1];
    let mut result = last.v - first.v;
    if counter {
        let mut previous = 0.0;
        for s in samples {
            if s.v < previous {
                result += previous;
            }
            previous = s.v;
        }
    }
    let mut to_start = (first.t - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let average = sampled / (samples.len() - 1) as f64;
    if counter && result > 0.0 && first.v >= 0.0 {
        let to_zero = sampled * (first.v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    result *= interval / sampled;
    if rate {
        result /= range_ms as f64 / 1000.0;
    }
    Some(result)
}

/// `histogram_quantile(q, buckets)`: per series of buckets (labels but `le` and the name),
/// Prometheus's interpolation within the bucket the rank falls in.
pub fn histogram_quantile(q: f64, v: Vec<Element>, t: i64) -> Vec<Element> {
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: std::collections::HashMap<Labels, Vec<(f64, f64)>> =
        std::collections::HashMap::new();
    for e in v {
        let Ok(le) = e.labels.get("le").parse::<f64>() else {
            continue;
        };
        // Grouped with the metric name, as Prometheus does: two names with the same other
        // labels give two answers of one label set (an error).
        let key = e.labels.with("le", "");
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push((le, e.v));
    }
    order
        .into_iter()
        .map(|labels| {
            let buckets = groups.remove(&labels).unwrap_or_default();
            Element {
                labels: labels.without_name(),
                v: bucket_quantile(q, buckets),
                t,
            }
        })
        .collect()
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets of one bound are added together.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += count,
            _ => merged.push((le, count)),
        }
    }
    // Counts made monotonic.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|b| b.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// `label_replace(v, dst, replacement, src, regex)`.
pub fn label_replace(
    v: Vec<Element>,
    dst: &str,
    replacement: &str,
    src: &str,
    regex: &str,
) -> Result<Vec<Element>> {
    // Prometheus fails this in evaluation: `execution`.
    let re = regex::Regex::new(&format!("^(?:{regex})$")).map_err(|e| {
        Error::execution(format!(
            "invalid regular expression in label_replace(): {e}"
        ))
    })?;
    let name_ok = !dst.is_empty()
        && dst
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if !name_ok {
        return Err(Error::bad_data(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        if let Some(captures) = re.captures(e.labels.get(src)) {
            let mut value = String::new();
            captures.expand(replacement, &mut value);
            e.labels = e.labels.with(dst, &value);
        }
        if !seen.insert(e.labels.clone()) {
            return Err(Error::execution(
                "vector cannot contain metrics with the same labelset",
            ));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_extrapolates_to_the_range_ends() {
        // A counter of 1/s sampled every 15 s over a 60 s range, first sample 5 s in.
        let samples: Vec<Sample> = (0..4)
            .map(|i| Sample {
                t: 5_000 + i * 15_000,
                v: 100.0 + 15.0 * i as f64,
            })
            .collect();
        let rate = over_time("rate", &samples, 0, 60_000, 60_000).unwrap();
        // 45 s sampled; 5 s to the start and 10 s to the end are both within 1.1 × 15 s.
        assert!((rate - 1.0).abs() < 1e-12, "{rate}");
        let increase = over_time("increase", &samples, 0, 60_000, 60_000).unwrap();
        assert!((increase - 60.0).abs() < 1e-9, "{increase}");
    }

    #[test]
    fn bucket_interpolation_is_prometheus_s() {
        let buckets = vec![(0.1, 10.0), (0.2, 30.0), (f64::INFINITY, 40.0)];
        // rank 20 falls in (0.1, 0.2]: 0.1 + 0.1 × (10 / 20).
        assert!((bucket_quantile(0.5, buckets.clone()) - 0.15).abs() < 1e-12);
        // Past the last finite bucket: its upper bound.
        assert_eq!(bucket_quantile(0.99, buckets.clone()), 0.2);
        assert!(bucket_quantile(0.5, vec![(0.1, 1.0)]).is_nan());
    }
}
