//! The values PromQL evaluates to: labels, samples, series, instant vectors and matrices, with
//! times in milliseconds since the epoch as Prometheus keeps them.

use std::fmt;

/// The metric name's label.
pub const METRIC_NAME: &str = "__name__";

/// A series' labels, sorted by name, names unique; the metric name is the `__name__` label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Labels from pairs in any order; a later pair of the same name wins, and empty values
    /// are dropped (an empty label is no label).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut pairs: Vec<(String, String)> =
            pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|b, a| a.0 == b.0);
        Self(pairs)
    }

    /// The value of `name`, or `""` when the series has no such label.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map_or("", |i| self.0[i].1.as_str())
    }

    /// Every label, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The metric name, if any.
    pub fn name(&self) -> &str {
        self.get(METRIC_NAME)
    }

    /// These labels with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut pairs = self.0.clone();
        match pairs.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                pairs.remove(i);
            }
            Ok(i) => pairs[i].1 = value.to_owned(),
            Err(_) if value.is_empty() => {}
            Err(i) => pairs.insert(i, (name.to_owned(), value.to_owned())),
        }
        Self(pairs)
    }

    /// These labels without the metric name.
    pub fn without_name(&self) -> Self {
        self.with(METRIC_NAME, "")
    }

    /// Only the labels named in `names` (`keep`), or every label but those (`!keep`).
    pub fn project(&self, names: &[String], keep: bool) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(n, _)| names.iter().any(|k| k == n) == keep)
                .cloned()
                .collect(),
        )
    }
}

impl fmt::Display for Labels {
    /// As Prometheus prints a series: `name{a="1", b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        f.write_str("{")?;
        let mut first = true;
        for (n, v) in self.iter().filter(|(n, _)| *n != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// One sample: a time (milliseconds) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

/// A series and its samples, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub labels: Labels,
    pub v: f64,
    /// The sample's own time, for `timestamp()` (the evaluation time for computed values).
    pub t: i64,
}

/// What an expression evaluates to at one time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Element>),
    Matrix(Vec<Series>),
}

impl Value {
    /// Its type as Prometheus names it in answers and errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// Prometheus's marker of a series gone stale: a NaN with this exact bit pattern.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the stale marker.
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_unique_and_without_empty_values() {
        let l = Labels::new([
            ("b".to_owned(), "2".to_owned()),
            (METRIC_NAME.to_owned(), "m".to_owned()),
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "3".to_owned()),
            ("c".to_owned(), String::new()),
        ]);
        assert_eq!(l.to_string(), r#"m{a="1", b="3"}"#);
        assert_eq!(l.get("c"), "");
        assert_eq!(l.with("a", "").to_string(), r#"m{b="3"}"#);
        assert_eq!(l.without_name().name(), "");
        assert_eq!(l.project(&["a".to_owned()], true).to_string(), r#"{a="1"}"#);
        assert!(is_stale(f64::from_bits(STALE_NAN)));
        assert!(!is_stale(f64::NAN));
    }
}
