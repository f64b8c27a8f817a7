//! The evaluator: an expression parsed by `promql-parser`, evaluated with Prometheus 2.42's
//! semantics over a [`Source`] at one time (an instant query) or at each step of a range.
//!
//! Selectors are read once per query: a first pass over the expression finds the time range
//! each selector needs (its offset, `@`, range, the lookback and any subquery around it), and
//! the evaluation then works on those series in memory, step by step.
//!
//! - An instant selector at `t` takes each series' latest sample in `[t - lookback, t]`, unless
//!   it is the stale marker.
//! - A range selector `[r]` at `t` takes the samples in `[t - r, t]`, stale markers left out.
//! - `rate`, `increase` and `delta` extrapolate as Prometheus does; `irate` and `idelta` take
//!   the last two samples.
//! - A subquery `e[r:s]` at `t` evaluates `e` at the multiples of `s` in `[t - r, t]`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

use super::functions;
use super::source::Source;
use super::value::{Element, Labels, METRIC_NAME, Sample, Series, Value, is_stale};

pub use super::error::{Error, ErrorKind, Result};

/// How queries are evaluated.
#[derive(Debug, Clone)]
pub struct Options {
    /// How far back an instant selector looks for a sample (Prometheus: 5 minutes).
    pub lookback_ms: i64,
    /// Most points in one series of a range query's answer (Prometheus: 11 000).
    pub max_points: usize,
    /// Most series in one answer.
    pub max_series: usize,
    /// The step of a subquery that gives none (`[5m:]`): Prometheus's evaluation interval.
    pub default_subquery_step_ms: i64,
    /// Most points the query's subqueries may hold at once, as Prometheus's
    /// `--query.max-samples` (an `execution` error beyond).
    pub max_samples: usize,
    /// When the query must have finished.
    pub deadline: Option<Instant>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lookback_ms: 300_000,
            max_points: 11_000,
            max_series: 100_000,
            default_subquery_step_ms: 60_000,
            max_samples: 50_000_000,
            deadline: None,
        }
    }
}

/// Parses `query`, refusing what recmeter does not evaluate with `bad_data` naming it.
pub fn parse(query: &str) -> Result<Expr> {
    check_depth(query)?;
    let expr = promql_parser::parser::parse(query)
        .map_err(|e| Error::bad_data(format!("invalid parameter \"query\": {e}")))?;
    supported(&expr)?;
    Ok(expr)
}

/// How deeply a query may nest brackets and chain operators: parsing, evaluating and dropping
/// an expression recurse once per level, and a deeper one could overflow a thread's stack.
pub const MAX_DEPTH: usize = 128;

/// Refuses a query nesting or chaining more than [`MAX_DEPTH`] brackets and operators, counted
/// on its text (outside string literals) before it is parsed: each bracket and each operator
/// or keyword adds a level until its bracket closes.
pub fn check_depth(query: &str) -> Result<()> {
    // Operators counted at each open bracket level, innermost last.
    let mut levels: Vec<usize> = vec![0];
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut chars = query.chars().peekable();
    let mut word = String::new();
    let mut previous_operator = false;
    while let Some(c) = chars.next() {
        let mut operator = false;
        match c {
            '"' | '\'' | '`' => {
                // A string literal: skip to its closing quote (backslash escapes).
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                levels.push(0);
            }
            ')' | ']' | '}' if levels.len() > 1 => {
                depth -= levels.pop().unwrap_or(0) + 1;
            }
            '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' => operator = true,
            c if c.is_alphanumeric() || c == '_' => {
                word.push(c);
                if chars
                    .peek()
                    .is_some_and(|n| n.is_alphanumeric() || *n == '_')
                {
                    continue;
                }
                operator = matches!(word.as_str(), "and" | "or" | "unless" | "atan2");
                word.clear();
            }
            _ => {}
        }
        if operator && !previous_operator {
            depth += 1;
            if let Some(level) = levels.last_mut() {
                *level += 1;
            }
        }
        previous_operator = operator;
        deepest = deepest.max(depth);
        if deepest > MAX_DEPTH {
            return Err(Error::bad_data(format!(
                "the query nests or chains more than {MAX_DEPTH} brackets and operators"
            )));
        }
    }
    Ok(())
}

/// The functions recmeter evaluates.
pub const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "deg",
    "pi",
    "rad",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "avg_over_time",
    "ceil",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "exp",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "rate",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
];

/// The aggregations recmeter evaluates.
pub const AGGREGATIONS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "group", "stddev", "stdvar",
];

/// The first construct of `expr` recmeter does not evaluate, as an error naming it.
pub fn supported(expr: &Expr) -> Result<()> {
    match expr {
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !AGGREGATIONS.contains(&op.as_str()) {
                return Err(unsupported(&format!("the aggregation {op}")));
            }
            supported(&a.expr)?;
            a.param.as_deref().map_or(Ok(()), supported)
        }
        Expr::Unary(u) => supported(&u.expr),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(unsupported("fill values in vector matching"));
            }
            supported(&b.lhs)?;
            supported(&b.rhs)
        }
        Expr::Paren(p) => supported(&p.expr),
        Expr::Subquery(s) => supported(&s.expr),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(v) => selector_supported(v),
        Expr::MatrixSelector(m) => selector_supported(&m.vs),
        Expr::Call(c) => {
            if !FUNCTIONS.contains(&c.func.name) {
                return Err(unsupported(&format!("the function {}", c.func.name)));
            }
            c.args.args.iter().try_for_each(|a| supported(a))
        }
        Expr::Extension(_) => Err(unsupported("an extension expression")),
    }
}

fn selector_supported(v: &VectorSelector) -> Result<()> {
    if v.matchers.or_matchers.is_empty() {
        Ok(())
    } else {
        Err(unsupported("`or` between label matchers"))
    }
}

fn unsupported(what: &str) -> Error {
    Error::bad_data(format!(
        "recmeter does not evaluate {what} (see the README)"
    ))
}

/// Milliseconds since the epoch of `t` (negative before it).
pub fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn duration_ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

/// What a selector of a query reads: the series its matchers select, from `start` to `end`
/// (milliseconds, both included).
#[derive(Debug, Clone)]
pub struct Selection {
    pub matchers: Vec<Matcher>,
    pub start: i64,
    pub end: i64,
}

/// Every selection evaluating `expr` from `start` to `end` reads (`start == end` for an
/// instant query), so a caller can read them ahead, asynchronously, into a [`Source`] such as
/// [`super::source::Prefetched`].
pub fn selections(expr: &Expr, start: i64, end: i64, options: &Options) -> Vec<Selection> {
    let none = super::source::MemorySource::default();
    let mut eval = Evaluator::new(&none, options, start, end, 0);
    eval.walk(expr, start, end);
    let mut out: Vec<Selection> = eval
        .wanted
        .into_values()
        .map(|(matchers, start, end)| Selection {
            matchers,
            start,
            end,
        })
        .collect();
    out.sort_by_key(|s| (s.start, s.end));
    out
}

/// Evaluates `expr` at `t` (milliseconds).
pub fn instant(source: &dyn Source, expr: &Expr, t: i64, options: &Options) -> Result<Value> {
    let mut eval = Evaluator::new(source, options, t, t, 0);
    eval.populate(expr)?;
    let value = eval.eval(expr, t)?;
    if let Value::Vector(v) = &value {
        eval.check_series(v.len())?;
    }
    Ok(value)
}

/// Evaluates `expr` at each step from `start` to `end` (milliseconds, `step` > 0): a matrix,
/// one series per label set with a point at each step where it has a value.
pub fn range(
    source: &dyn Source,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    options: &Options,
) -> Result<Vec<Series>> {
    if step <= 0 {
        return Err(Error::bad_data(
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if end < start {
        return Err(Error::bad_data(
            "end timestamp must not be before start time",
        ));
    }
    if (end - start) / step > options.max_points as i64 {
        return Err(Error::bad_data(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
            super::error::group_thousands(options.max_points)
        )));
    }
    match expr.value_type() {
        promql_parser::parser::value::ValueType::Vector
        | promql_parser::parser::value::ValueType::Scalar => {}
        other => {
            return Err(Error::bad_data(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                type_name(other)
            )));
        }
    }
    let mut eval = Evaluator::new(source, options, start, end, step);
    eval.populate(expr)?;
    if let Some(matrix) = eval.whole_range(expr, step)? {
        return Ok(matrix);
    }
    step_by_step(&eval, expr, step)
}

/// [`range`] evaluated step by step, whatever its shape.
fn step_by_step(eval: &Evaluator<'_>, expr: &Expr, step: i64) -> Result<Vec<Series>> {
    let (start, end) = (eval.start, eval.end);
    let mut out: HashMap<Labels, Vec<Sample>> = HashMap::new();
    let mut t = start;
    while t <= end {
        eval.check_deadline()?;
        match eval.eval(expr, t)? {
            Value::Scalar(v) => out
                .entry(Labels::default())
                .or_default()
                .push(Sample { t, v }),
            Value::Vector(elements) => {
                for e in elements {
                    out.entry(e.labels).or_default().push(Sample { t, v: e.v });
                }
                eval.check_series(out.len())?;
            }
            other => {
                return Err(Error::bad_data(format!(
                    "invalid expression type \"{}\" for range query",
                    other.type_name()
                )));
            }
        }
        t += step;
    }
    Ok(into_matrix(out))
}

/// Series collected by label set, as a matrix sorted by labels.
fn into_matrix(out: HashMap<Labels, Vec<Sample>>) -> Vec<Series> {
    let mut series: Vec<Series> = out
        .into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect();
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    series
}

fn type_name(t: promql_parser::parser::value::ValueType) -> &'static str {
    use promql_parser::parser::value::ValueType;
    match t {
        ValueType::Vector => "instant vector",
        ValueType::Matrix => "range vector",
        ValueType::Scalar => "scalar",
        ValueType::String => "string",
    }
}

/// One query's evaluation.
struct Evaluator<'a> {
    source: &'a dyn Source,
    options: &'a Options,
    /// The query's first and last evaluation times (`@ start()`, `@ end()`).
    start: i64,
    end: i64,
    /// Each selector's series (by the selector node's address), read once.
    selected: HashMap<usize, Vec<Series>>,
    /// Each selector's matchers and the time range it needs, found by [`Evaluator::populate`].
    wanted: HashMap<usize, (Vec<Matcher>, i64, i64)>,
}

fn key(v: &VectorSelector) -> usize {
    std::ptr::from_ref(v) as usize
}

impl<'a> Evaluator<'a> {
    fn new(source: &'a dyn Source, options: &'a Options, start: i64, end: i64, _step: i64) -> Self {
        Self {
            source,
            options,
            start,
            end,
            selected: HashMap::new(),
            wanted: HashMap::new(),
        }
    }

    fn check_deadline(&self) -> Result<()> {
        match self.options.deadline {
            Some(d) if Instant::now() > d => Err(Error {
                kind: ErrorKind::Timeout,
                message: "query timed out in expression evaluation".into(),
            }),
            _ => Ok(()),
        }
    }

    fn check_series(&self, n: usize) -> Result<()> {
        if n > self.options.max_series {
            return Err(Error::bad_data(format!(
                "the answer holds more than {} series (query.max_series)",
                self.options.max_series
            )));
        }
        Ok(())
    }

    /// The time a selector or subquery with `at` and `offset` reads at, evaluated at `t`.
    fn reference(&self, at: &Option<AtModifier>, offset: &Option<Offset>, t: i64) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(time)) => millis(*time),
        };
        base - offset_ms(offset)
    }

    /// A range query of `op [by|without (…)] (f (selector[range]))`, with `op` an aggregation
    /// without a parameter (`sum`, `avg`, `min`, `max`, `count`, …), `f` a range function that
    /// drops the metric name (`rate`, `increase`, `irate`, `*_over_time`, …) and no `@` on the
    /// selector: the dashboards' rate panels. Evaluated for every step at once, each series
    /// walked once with two cursors and its group found once, instead of selecting, cloning
    /// and grouping every series at every step (BENCHMARKS). The arithmetic and its order are
    /// the step-by-step evaluation's, so the answers are identical (a unit test compares).
    ///
    /// `None` for any other shape; where two series are alike once the metric name is dropped
    /// (the step-by-step path then reports it as Prometheus does); and where the groups'
    /// running state would take more memory than the step-by-step path (many groups over
    /// many steps).
    fn whole_range(&self, expr: &Expr, step: i64) -> Result<Option<Vec<Series>>> {
        /// Most running aggregates (groups × steps) held at once: about 40 MB.
        const MAX_STATES: usize = 1 << 20;
        let Expr::Aggregate(a) = strip_parens(expr) else {
            return Ok(None);
        };
        let op = a.op.to_string();
        let stateful = [
            "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
        ];
        if a.param.is_some() || !stateful.contains(&op.as_str()) {
            return Ok(None);
        }
        let Expr::Call(c) = strip_parens(&a.expr) else {
            return Ok(None);
        };
        let name = c.func.name;
        let range_functions = [
            "rate",
            "increase",
            "delta",
            "irate",
            "idelta",
            "sum_over_time",
            "avg_over_time",
            "min_over_time",
            "max_over_time",
            "count_over_time",
        ];
        let ([arg], true) = (c.args.args.as_slice(), range_functions.contains(&name)) else {
            return Ok(None);
        };
        let Expr::MatrixSelector(m) = strip_parens(arg) else {
            return Ok(None);
        };
        if m.vs.at.is_some() || step <= 0 {
            return Ok(None);
        }
        let (range_ms, offset) = (duration_ms(&m.range), offset_ms(&m.vs.offset));
        let series = self.series(&m.vs);
        let named: Vec<Labels> = series.iter().map(|s| s.labels.without_name()).collect();
        let mut seen = std::collections::HashSet::with_capacity(named.len());
        if !named.iter().all(|l| seen.insert(l)) {
            return Ok(None);
        }
        // Each series' group, found once.
        let mut order: Vec<Labels> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let member: Vec<usize> = named
            .iter()
            .map(|labels| {
                let g = match &a.modifier {
                    None => Labels::default(),
                    Some(LabelModifier::Include(ls)) => labels.project(&ls.labels, true),
                    Some(LabelModifier::Exclude(ls)) => {
                        labels.project(&ls.labels, false).without_name()
                    }
                };
                *index.entry(g).or_insert_with_key(|g| {
                    order.push(g.clone());
                    order.len() - 1
                })
            })
            .collect();
        let steps = usize::try_from((self.end - self.start) / step + 1).unwrap_or(usize::MAX);
        if order.len().saturating_mul(steps) > MAX_STATES {
            return Ok(None);
        }
        let mut states: Vec<Option<Group>> = vec![None; order.len() * steps];
        let mut samples: Vec<Sample> = Vec::new();
        for (s, &g) in series.iter().zip(&member) {
            self.check_deadline()?;
            samples.clear();
            samples.extend(s.samples.iter().filter(|p| !is_stale(p.v)).copied());
            let (mut first, mut past) = (0, 0);
            for (i, state) in states[g * steps..(g + 1) * steps].iter_mut().enumerate() {
                // The range `[to - range, to]`, closed at both ends, as the selector reads it.
                let to = self.start + i as i64 * step - offset;
                let from = to - range_ms;
                while first < samples.len() && samples[first].t < from {
                    first += 1;
                }
                past = past.max(first);
                while past < samples.len() && samples[past].t <= to {
                    past += 1;
                }
                if first == past {
                    continue;
                }
                let Some(v) = functions::over_time(name, &samples[first..past], from, to, range_ms)
                else {
                    continue;
                };
                match state {
                    Some(group) => group.add(&op, v),
                    None => *state = Some(Group::new(v)),
                }
            }
        }
        let mut out: HashMap<Labels, Vec<Sample>> = HashMap::new();
        for (g, labels) in order.into_iter().enumerate() {
            let samples: Vec<Sample> = states[g * steps..(g + 1) * steps]
                .iter()
                .enumerate()
                .filter_map(|(i, state)| {
                    state.as_ref().map(|group| Sample {
                        t: self.start + i as i64 * step,
                        v: group.result(&op),
                    })
                })
                .collect();
            if !samples.is_empty() {
                out.insert(labels, samples);
            }
        }
        self.check_series(out.len())?;
        Ok(Some(into_matrix(out)))
    }

    /// Finds each selector's time range, then reads every selector's series.
    fn populate(&mut self, expr: &Expr) -> Result<()> {
        self.walk(expr, self.start, self.end);
        let wanted = std::mem::take(&mut self.wanted);
        for (k, (matchers, lo, hi)) in wanted {
            self.check_deadline()?;
            let series = self
                .source
                .select(&matchers, lo, hi)
                .map_err(Error::execution)?;
            self.selected.insert(k, series);
        }
        Ok(())
    }

    /// Notes the time range each selector under `expr` needs, evaluated from `lo` to `hi`.
    fn walk(&mut self, expr: &Expr, lo: i64, hi: i64) {
        match expr {
            Expr::VectorSelector(v) => {
                let (a, b) = (
                    self.reference(&v.at, &v.offset, lo),
                    self.reference(&v.at, &v.offset, hi),
                );
                self.want(v, a - self.options.lookback_ms, b);
            }
            Expr::MatrixSelector(m) => {
                let (a, b) = (
                    self.reference(&m.vs.at, &m.vs.offset, lo),
                    self.reference(&m.vs.at, &m.vs.offset, hi),
                );
                self.want(&m.vs, a - duration_ms(&m.range), b);
            }
            Expr::Subquery(s) => {
                let (a, b) = (
                    self.reference(&s.at, &s.offset, lo),
                    self.reference(&s.at, &s.offset, hi),
                );
                self.walk(&s.expr, a - duration_ms(&s.range), b);
            }
            Expr::Aggregate(a) => {
                self.walk(&a.expr, lo, hi);
                if let Some(p) = &a.param {
                    self.walk(p, lo, hi);
                }
            }
            Expr::Unary(u) => self.walk(&u.expr, lo, hi),
            Expr::Binary(b) => {
                self.walk(&b.lhs, lo, hi);
                self.walk(&b.rhs, lo, hi);
            }
            Expr::Paren(p) => self.walk(&p.expr, lo, hi),
            Expr::Call(c) => {
                for a in &c.args.args {
                    self.walk(a, lo, hi);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    fn want(&mut self, v: &VectorSelector, lo: i64, hi: i64) {
        let entry = self.wanted.entry(key(v)).or_insert_with(|| {
            let mut matchers = v.matchers.matchers.clone();
            if let Some(name) = &v.name
                && !matchers.iter().any(|m| m.name == METRIC_NAME)
            {
                matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
            }
            (matchers, lo, hi)
        });
        entry.1 = entry.1.min(lo);
        entry.2 = entry.2.max(hi);
    }

    fn series(&self, v: &VectorSelector) -> &[Series] {
        self.selected.get(&key(v)).map_or(&[], Vec::as_slice)
    }

    /// Evaluates `expr` at `t`.
    fn eval(&self, expr: &Expr, t: i64) -> Result<Value> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Vector(elements) => unique(Value::Vector(
                    elements
                        .into_iter()
                        .map(|e| Element {
                            labels: e.labels.without_name(),
                            v: -e.v,
                            t: e.t,
                        })
                        .collect(),
                )),
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                other => Err(Error::bad_data(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got {:?}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(v) => Ok(Value::Vector(self.instant_selector(v, t))),
            Expr::MatrixSelector(m) => {
                let at = self.reference(&m.vs.at, &m.vs.offset, t);
                Ok(Value::Matrix(self.range_selector(
                    &m.vs,
                    at - duration_ms(&m.range),
                    at,
                )))
            }
            Expr::Subquery(s) => self.subquery(s, t).map(Value::Matrix),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t).and_then(unique),
            Expr::Call(c) => self.call(c, t).and_then(unique),
            Expr::Extension(_) => Err(unsupported("an extension expression")),
        }
    }

    /// The instant vector `v` selects at `t`.
    fn instant_selector(&self, v: &VectorSelector, t: i64) -> Vec<Element> {
        let at = self.reference(&v.at, &v.offset, t);
        let from = at - self.options.lookback_ms;
        self.series(v)
            .iter()
            .filter_map(|s| {
                let i = s.samples.partition_point(|p| p.t <= at);
                let p = s.samples.get(i.checked_sub(1)?)?;
                (p.t >= from && !is_stale(p.v)).then(|| Element {
                    labels: s.labels.clone(),
                    v: p.v,
                    t: p.t,
                })
            })
            .collect()
    }

    /// The samples `v` selects in `[from, to]`, stale markers left out.
    fn range_selector(&self, v: &VectorSelector, from: i64, to: i64) -> Vec<Series> {
        self.series(v)
            .iter()
            .filter_map(|s| {
                let a = s.samples.partition_point(|p| p.t < from);
                let b = s.samples.partition_point(|p| p.t <= to);
                let samples: Vec<Sample> = s.samples[a..b]
                    .iter()
                    .filter(|p| !is_stale(p.v))
                    .copied()
                    .collect();
                (!samples.is_empty()).then(|| Series {
                    labels: s.labels.clone(),
                    samples,
                })
            })
            .collect()
    }

    /// A subquery at `t`: its expression evaluated at each multiple of its step in
    /// `[t - range, t]` (after `@` and `offset`).
    fn subquery(&self, s: &SubqueryExpr, t: i64) -> Result<Vec<Series>> {
        let step = s
            .step
            .as_ref()
            .map_or(self.options.default_subquery_step_ms, duration_ms)
            .max(1);
        let to = self.reference(&s.at, &s.offset, t);
        let from = to - duration_ms(&s.range);
        let mut first = from.div_euclid(step) * step;
        if first < from {
            first += step;
        }
        let mut out: HashMap<Labels, Vec<Sample>> = HashMap::new();
        let mut at = first;
        let mut held = 0usize;
        while at <= to {
            self.check_deadline()?;
            let value = self.eval(&s.expr, at)?;
            held += match &value {
                Value::Vector(v) => v.len(),
                _ => 1,
            };
            // The points one subquery holds at once.
            if held > self.options.max_samples {
                return Err(Error::execution(format!(
                    "query processing would load too many samples into memory in query execution (more than {}, query.max_samples)",
                    self.options.max_samples
                )));
            }
            match value {
                Value::Scalar(v) => out
                    .entry(Labels::default())
                    .or_default()
                    .push(Sample { t: at, v }),
                Value::Vector(elements) => {
                    for e in elements {
                        out.entry(e.labels)
                            .or_default()
                            .push(Sample { t: at, v: e.v });
                    }
                }
                other => {
                    return Err(Error::bad_data(format!(
                        "subquery is only allowed on instant vector, got {} instead",
                        other.type_name()
                    )));
                }
            }
            at += step;
        }
        Ok(into_matrix(out))
    }

    fn vector(&self, expr: &Expr, t: i64) -> Result<Vec<Element>> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(Error::bad_data(format!(
                "expected an instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    fn scalar(&self, expr: &Expr, t: i64) -> Result<f64> {
        match self.eval(expr, t)? {
            Value::Scalar(v) => Ok(v),
            other => Err(Error::bad_data(format!(
                "expected a scalar, got {}",
                other.type_name()
            ))),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value> {
        let op = a.op.to_string();
        let elements = self.vector(&a.expr, t)?;
        let grouping = |labels: &Labels| -> Labels {
            match &a.modifier {
                None => Labels::default(),
                Some(LabelModifier::Include(ls)) => labels.project(&ls.labels, true),
                Some(LabelModifier::Exclude(ls)) => {
                    labels.project(&ls.labels, false).without_name()
                }
            }
        };
        if op == "topk" || op == "bottomk" {
            let param = a
                .param
                .as_deref()
                .ok_or_else(|| Error::bad_data(format!("{op} needs a parameter")))?;
            let k = self.scalar(param, t)?;
            return Ok(Value::Vector(functions::top(
                elements,
                k,
                op == "topk",
                grouping,
            )));
        }
        // Groups in order of first appearance, each with its running state.
        let mut order: Vec<Labels> = Vec::new();
        let mut groups: HashMap<Labels, Group> = HashMap::new();
        for e in elements {
            let g = grouping(&e.labels);
            match groups.get_mut(&g) {
                Some(group) => group.add(&op, e.v),
                None => {
                    order.push(g.clone());
                    groups.insert(g, Group::new(e.v));
                }
            }
        }
        Ok(Value::Vector(
            order
                .into_iter()
                .map(|labels| {
                    let v = groups[&labels].result(&op);
                    Element { labels, v, t }
                })
                .collect(),
        ))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value> {
        let op = b.op.to_string();
        let bool_ = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let comparison = b.op.is_comparison_operator();
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let (v, keep) = functions::binop(&op, x, y);
                Ok(Value::Scalar(if comparison {
                    f64::from(u8::from(keep))
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(vector_scalar(
                &op, v, s, false, bool_, comparison, t,
            ))),
            (Value::Scalar(s), Value::Vector(v)) => Ok(Value::Vector(vector_scalar(
                &op, v, s, true, bool_, comparison, t,
            ))),
            (Value::Vector(l), Value::Vector(r)) => {
                let matching = b.modifier.as_ref();
                let on = matching.and_then(|m| m.matching.as_ref());
                if b.op.is_set_operator() {
                    return Ok(Value::Vector(set_op(&op, l, r, on)));
                }
                let card = matching.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
                vector_vector(&op, l, r, on, card, bool_, comparison, t).map(Value::Vector)
            }
            (l, r) => Err(Error::bad_data(format!(
                "binary expression must contain only scalar and instant vector types, got {} and {}",
                l.type_name(),
                r.type_name()
            ))),
        }
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr> {
            args.get(i)
                .map(|a| a.as_ref())
                .ok_or_else(|| Error::bad_data(format!("{name}: missing argument {}", i + 1)))
        };
        match name {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Element {
                labels: Labels::default(),
                v: self.scalar(arg(0)?, t)?,
                t,
            }])),
            "scalar" => {
                let v = self.vector(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "timestamp" => Ok(Value::Vector(
                self.vector(arg(0)?, t)?
                    .into_iter()
                    .map(|e| Element {
                        labels: e.labels.without_name(),
                        v: e.t as f64 / 1000.0,
                        t,
                    })
                    .collect(),
            )),
            "absent" => {
                let v = self.vector(arg(0)?, t)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(vec![Element {
                    labels: functions::absent_labels(arg(0)?),
                    v: 1.0,
                    t,
                }]))
            }
            "rate" | "increase" | "delta" | "irate" | "idelta" | "sum_over_time"
            | "avg_over_time" | "min_over_time" | "max_over_time" | "count_over_time"
            | "last_over_time" => {
                let matrix_arg = strip_parens(arg(0)?);
                let (range_ms, end) = match matrix_arg {
                    Expr::MatrixSelector(m) => (
                        duration_ms(&m.range),
                        self.reference(&m.vs.at, &m.vs.offset, t),
                    ),
                    Expr::Subquery(s) => {
                        (duration_ms(&s.range), self.reference(&s.at, &s.offset, t))
                    }
                    _ => {
                        return Err(Error::bad_data(format!("{name}: expected a range vector")));
                    }
                };
                let Value::Matrix(matrix) = self.eval(matrix_arg, t)? else {
                    return Err(Error::bad_data(format!("{name}: expected a range vector")));
                };
                Ok(Value::Vector(
                    matrix
                        .into_iter()
                        .filter_map(|s| {
                            let v = functions::over_time(
                                name,
                                &s.samples,
                                end - range_ms,
                                end,
                                range_ms,
                            )?;
                            let labels = if name == "last_over_time" {
                                s.labels
                            } else {
                                s.labels.without_name()
                            };
                            Some(Element { labels, v, t })
                        })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t)?;
                let v = self.vector(arg(1)?, t)?;
                Ok(Value::Vector(functions::histogram_quantile(q, v, t)))
            }
            "label_replace" => {
                let v = self.vector(arg(0)?, t)?;
                let text = |i: usize| -> Result<String> {
                    match self.eval(arg(i)?, t)? {
                        Value::String(s) => Ok(s),
                        other => Err(Error::bad_data(format!(
                            "label_replace: argument {} must be a string, got {}",
                            i + 1,
                            other.type_name()
                        ))),
                    }
                };
                functions::label_replace(v, &text(1)?, &text(2)?, &text(3)?, &text(4)?)
                    .map(Value::Vector)
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector(arg(0)?, t)?;
                functions::sort(&mut v, name == "sort_desc");
                Ok(Value::Vector(v))
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let v = self.vector(arg(0)?, t)?;
                let (lo, hi) = match name {
                    "clamp" => (self.scalar(arg(1)?, t)?, self.scalar(arg(2)?, t)?),
                    "clamp_min" => (self.scalar(arg(1)?, t)?, f64::INFINITY),
                    _ => (f64::NEG_INFINITY, self.scalar(arg(1)?, t)?),
                };
                if name == "clamp" && hi < lo {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|e| Element {
                            labels: e.labels.without_name(),
                            v: go_min(go_max(e.v, lo), hi),
                            t,
                        })
                        .collect(),
                ))
            }
            "round" => {
                let v = self.vector(arg(0)?, t)?;
                let to = match args.get(1) {
                    Some(a) => self.scalar(a, t)?,
                    None => 1.0,
                };
                let inverse = 1.0 / to;
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|e| Element {
                            labels: e.labels.without_name(),
                            v: (e.v * inverse + 0.5).floor() / inverse,
                            t,
                        })
                        .collect(),
                ))
            }
            "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
            "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" | "sin"
            | "cos" | "tan" | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "asinh"
            | "acosh" | "atanh" | "deg" | "rad" => {
                let v = self.vector(arg(0)?, t)?;
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|e| Element {
                            labels: e.labels.without_name(),
                            v: functions::math(name, e.v),
                            t,
                        })
                        .collect(),
                ))
            }
            other => Err(unsupported(&format!("the function {other}"))),
        }
    }
}

/// Go's `math.Max`: NaN if either is.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either is.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// `expr` without the parentheses around it.
fn strip_parens(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => strip_parens(&p.expr),
        other => other,
    }
}

/// `value`, unless it is a vector holding one label set twice (two series that differed only in
/// their dropped metric name).
fn unique(value: Value) -> Result<Value> {
    if let Value::Vector(elements) = &value
        && elements.len() > 1
    {
        let mut seen = std::collections::HashSet::with_capacity(elements.len());
        if !elements.iter().all(|e| seen.insert(&e.labels)) {
            return Err(Error::execution(
                "vector cannot contain metrics with the same labelset",
            ));
        }
    }
    Ok(value)
}

/// An aggregation group's running state, as Prometheus 2.42 keeps it.
#[derive(Clone)]
struct Group {
    value: f64,
    mean: f64,
    count: f64,
    /// Welford's running sum of squares (stddev, stdvar).
    squares: f64,
}

impl Group {
    fn new(v: f64) -> Self {
        Self {
            value: v,
            mean: v,
            count: 1.0,
            squares: 0.0,
        }
    }

    fn add(&mut self, op: &str, v: f64) {
        self.count += 1.0;
        match op {
            "sum" => self.value += v,
            "avg" => {
                if self.mean.is_infinite() {
                    if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        return;
                    }
                }
                self.mean += v / self.count - self.mean / self.count;
            }
            "min" if self.value > v || self.value.is_nan() => self.value = v,
            "max" if self.value < v || self.value.is_nan() => self.value = v,
            "stddev" | "stdvar" => {
                let delta = v - self.mean;
                self.mean += delta / self.count;
                self.squares += delta * (v - self.mean);
            }
            _ => {}
        }
    }

    fn result(&self, op: &str) -> f64 {
        match op {
            "avg" => self.mean,
            "count" => self.count,
            "group" => 1.0,
            "stdvar" => self.squares / self.count,
            "stddev" => (self.squares / self.count).sqrt(),
            _ => self.value,
        }
    }
}

/// A vector and a scalar: `scalar_left` when the scalar is the left operand.
fn vector_scalar(
    op: &str,
    v: Vec<Element>,
    s: f64,
    scalar_left: bool,
    bool_: bool,
    comparison: bool,
    t: i64,
) -> Vec<Element> {
    v.into_iter()
        .filter_map(|e| {
            let (l, r) = if scalar_left { (s, e.v) } else { (e.v, s) };
            let (mut value, keep) = functions::binop(op, l, r);
            if comparison {
                // The vector's value is kept, on whichever side it is.
                value = e.v;
            }
            if bool_ {
                value = f64::from(u8::from(keep));
            } else if !keep {
                return None;
            }
            // Prometheus drops the name for arithmetic (not atan2) and `bool`.
            let labels = if (!comparison && op != "atan2") || bool_ {
                e.labels.without_name()
            } else {
                e.labels
            };
            Some(Element {
                labels,
                v: value,
                t,
            })
        })
        .collect()
}

/// The labels two vectors are matched on.
fn signature(labels: &Labels, on: Option<&LabelModifier>) -> Labels {
    match on {
        Some(LabelModifier::Include(ls)) => labels.project(&ls.labels, true),
        Some(LabelModifier::Exclude(ls)) => labels.project(&ls.labels, false).without_name(),
        None => labels.without_name(),
    }
}

fn set_op(op: &str, l: Vec<Element>, r: Vec<Element>, on: Option<&LabelModifier>) -> Vec<Element> {
    let right: std::collections::HashSet<Labels> =
        r.iter().map(|e| signature(&e.labels, on)).collect();
    match op {
        "and" => l
            .into_iter()
            .filter(|e| right.contains(&signature(&e.labels, on)))
            .collect(),
        "unless" => l
            .into_iter()
            .filter(|e| !right.contains(&signature(&e.labels, on)))
            .collect(),
        _ => {
            let left: std::collections::HashSet<Labels> =
                l.iter().map(|e| signature(&e.labels, on)).collect();
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|e| !left.contains(&signature(&e.labels, on))),
            );
            out
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    op: &str,
    l: Vec<Element>,
    r: Vec<Element>,
    on: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    bool_: bool,
    comparison: bool,
    t: i64,
) -> Result<Vec<Element>> {
    // The "one" side is on the right; group_right swaps the sides.
    let (many, one, swapped) = match card {
        VectorMatchCardinality::OneToMany(_) => (r, l, true),
        _ => (l, r, false),
    };
    let mut right: HashMap<Labels, Element> = HashMap::new();
    for e in one {
        let sig = signature(&e.labels, on);
        if right.contains_key(&sig) {
            return Err(Error::execution(format!(
                "found duplicate series for the match group {sig} on the {} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side",
                if swapped { "left" } else { "right" }
            )));
        }
        right.insert(sig, e);
    }
    let include: &[String] = card.labels().map_or(&[], |ls| ls.labels.as_slice());
    let mut matched: HashMap<Labels, std::collections::HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for e in many {
        let sig = signature(&e.labels, on);
        let Some(rs) = right.get(&sig) else {
            continue;
        };
        let (vl, vr) = if swapped { (rs.v, e.v) } else { (e.v, rs.v) };
        let (mut value, keep) = functions::binop(op, vl, vr);
        if comparison {
            value = vl;
        }
        if bool_ {
            value = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        let mut labels = if (!comparison && op != "atan2") || bool_ {
            e.labels.without_name()
        } else {
            e.labels.clone()
        };
        if matches!(card, VectorMatchCardinality::OneToOne) {
            match on {
                Some(LabelModifier::Include(ls)) => labels = labels.project(&ls.labels, true),
                Some(LabelModifier::Exclude(ls)) => labels = labels.project(&ls.labels, false),
                None => {}
            }
        }
        for name in include {
            labels = labels.with(name, rs.labels.get(name));
        }
        let seen = matched.entry(sig).or_default();
        if matches!(card, VectorMatchCardinality::OneToOne) {
            if !seen.is_empty() {
                return Err(Error::execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                ));
            }
            seen.insert(Labels::default());
        } else if !seen.insert(labels.clone()) {
            return Err(Error::execution(
                "multiple matches for labels: grouping labels must ensure unique matches",
            ));
        }
        out.push(Element {
            labels,
            v: value,
            t,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::source::MemorySource;
    use crate::promql::value::STALE_NAN;

    /// Two counters over services and endpoints, sampled every 15 s with jitter, gaps, resets
    /// and stale markers, and a gauge.
    fn source() -> MemorySource {
        let mut source = MemorySource::default();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            seed >> 33
        };
        for name in ["requests_total", "other_total", "load"] {
            for service in ["a", "b", "c"] {
                for endpoint in 0..4 {
                    let labels = Labels::new([
                        (METRIC_NAME.to_owned(), name.to_owned()),
                        ("service".to_owned(), service.to_owned()),
                        ("endpoint".to_owned(), format!("/e{endpoint}")),
                    ]);
                    let mut total = 0.0;
                    let mut samples = Vec::new();
                    let mut t = (next() % 30_000) as i64;
                    while t < 3_600_000 {
                        match next() % 40 {
                            0 => total = 0.0,
                            1 => samples.push(Sample {
                                t,
                                v: f64::from_bits(STALE_NAN),
                            }),
                            2..=4 => {}
                            _ => {
                                total += (next() % 1_000) as f64 / 7.0;
                                let v = if name == "load" {
                                    (next() % 100) as f64 - 20.0
                                } else {
                                    total
                                };
                                samples.push(Sample { t, v });
                            }
                        }
                        t += 15_000 + (next() % 2_000) as i64 - 1_000;
                    }
                    source.add(labels, samples);
                }
            }
        }
        source
    }

    #[test]
    fn whole_range_answers_equal_step_by_step_ones() {
        let source = source();
        let options = Options::default();
        let queries = [
            "sum by (service) (rate(requests_total[5m]))",
            "sum(rate(requests_total[1m]))",
            "avg without (endpoint) (increase(requests_total[2m]))",
            "max by (endpoint) (irate(requests_total[1m] offset 3m))",
            "min(delta(load[5m]))",
            "count by (service) (sum_over_time(load[90s]))",
            "stddev (avg_over_time(load[10m]))",
            "stdvar by (service) (max_over_time(load[3m]))",
            "group by (endpoint) (min_over_time(load[45s]))",
            "sum by (service) ((count_over_time({__name__=~\"requests_total|load\", endpoint=\"/e1\"}[5m])))",
            "sum(rate({__name__=~\".+_total\"}[5m]))",
        ];
        let mut fast = 0;
        for query in queries {
            let expr = parse(query).unwrap();
            for (start, end, step) in [
                (0, 3_600_000, 60_000),
                (123_456, 3_000_000, 7_000),
                (600_000, 600_000, 1),
            ] {
                let mut eval = Evaluator::new(&source, &options, start, end, step);
                eval.populate(&expr).unwrap();
                let slow = step_by_step(&eval, &expr, step);
                match eval.whole_range(&expr, step).unwrap() {
                    Some(whole) => {
                        fast += 1;
                        let slow = slow.unwrap();
                        assert!(!slow.is_empty(), "{query}");
                        assert_eq!(whole.len(), slow.len(), "{query}");
                        for (w, s) in whole.iter().zip(&slow) {
                            assert_eq!(w.labels, s.labels, "{query}");
                            let bits = |x: &Series| -> Vec<(i64, u64)> {
                                x.samples.iter().map(|p| (p.t, p.v.to_bits())).collect()
                            };
                            assert_eq!(bits(w), bits(s), "{query} {:?}", w.labels);
                        }
                    }
                    // Only where dropping the name makes two series alike, which the
                    // step-by-step path refuses.
                    None => assert!(slow.is_err(), "{query}: not taken whole"),
                }
            }
        }
        assert_eq!(fast, 3 * (queries.len() - 2));
    }
}
