//! Exact `histogram_quantile` (`query.exact_histogram_quantile`): `histogram_quantile(q,
//! rate(recs_latency_seconds_bucket[r]))`, and the same under `sum by (le, …)` or
//! `sum without (…)` (with `rate` or `increase`, any matchers but on `le`, `offset` and `@`),
//! is answered from the HDR histograms of the same series over the minutes the range selects:
//! the nearest-rank quantile within 1%, where Prometheus interpolates within a bucket.
//!
//! The minutes a range `[t - r, t]` selects are those its samples cover: from the first minute
//! boundary in it to its last sample (the open minute's running value when `t` is now or
//! later). Other shapes, and ranges older than the minutes the store keeps, are evaluated as
//! Prometheus does.

use std::collections::{BTreeMap, HashMap};

use promql_parser::label::Matcher;
use promql_parser::parser::{AtModifier, Expr, LabelModifier, MatrixSelector};
use recmeter_aggregator::SeriesKey;
use recmeter_aggregator::counts::Counts;
use recmeter_aggregator::sql::RollupSink;
use recmeter_aggregator::state::{RowCounts, Table};

use super::engine::millis;
use super::error::Error;
use super::rollups::{Family, Rollups};
use super::value::{Element, Labels, METRIC_NAME};

const MINUTE_MS: i64 = 60_000;

/// A `histogram_quantile` recmeter answers exactly.
#[derive(Debug, Clone)]
pub struct Exact {
    q: f64,
    grouping: Grouping,
    range_ms: i64,
    offset_ms: i64,
    at: Option<AtModifier>,
    /// The selector's matchers on the series' own labels.
    matchers: Vec<Matcher>,
}

/// How series are grouped into one answer.
#[derive(Debug, Clone)]
enum Grouping {
    /// No aggregation: each series on its own.
    Series,
    By(Vec<String>),
    Without(Vec<String>),
}

fn strip(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => strip(&p.expr),
        other => other,
    }
}

/// The exact plan of `expr`, when it has the shape recmeter answers exactly.
pub fn plan(expr: &Expr) -> Option<Exact> {
    let Expr::Call(call) = strip(expr) else {
        return None;
    };
    if call.func.name != "histogram_quantile" || call.args.args.len() != 2 {
        return None;
    }
    let Expr::NumberLiteral(q) = strip(&call.args.args[0]) else {
        return None;
    };
    let (grouping, inner) = match strip(&call.args.args[1]) {
        Expr::Aggregate(a) if a.op.to_string() == "sum" && a.param.is_none() => {
            let grouping = match &a.modifier {
                Some(LabelModifier::Include(ls)) if ls.labels.iter().any(|l| l == "le") => {
                    Grouping::By(ls.labels.iter().filter(|l| *l != "le").cloned().collect())
                }
                Some(LabelModifier::Exclude(ls)) if !ls.labels.iter().any(|l| l == "le") => {
                    Grouping::Without(ls.labels.clone())
                }
                _ => return None,
            };
            (grouping, strip(&a.expr))
        }
        other => (Grouping::Series, other),
    };
    let Expr::Call(rate) = inner else {
        return None;
    };
    if !matches!(rate.func.name, "rate" | "increase") || rate.args.args.len() != 1 {
        return None;
    }
    let Expr::MatrixSelector(MatrixSelector { vs, range }) = strip(&rate.args.args[0]) else {
        return None;
    };
    let bucket = Family::Bucket.name();
    let mut named = vs.name.as_deref() == Some(bucket);
    let mut matchers = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            if !m.is_match(bucket) {
                return None;
            }
            named |= matches!(m.op, promql_parser::label::MatchOp::Equal);
        } else if m.name == "le" {
            return None;
        } else {
            matchers.push(m.clone());
        }
    }
    if !named || !vs.matchers.or_matchers.is_empty() {
        return None;
    }
    let offset_ms = match &vs.offset {
        None => 0,
        Some(promql_parser::parser::Offset::Pos(d)) => d.as_millis() as i64,
        Some(promql_parser::parser::Offset::Neg(d)) => -(d.as_millis() as i64),
    };
    Some(Exact {
        q: q.val,
        grouping,
        range_ms: range.as_millis() as i64,
        offset_ms,
        at: vs.at.clone(),
        matchers,
    })
}

/// Each series' minute rows, as V2 encodings.
struct MinuteHdrs {
    wanted: HashMap<SeriesKey, BTreeMap<u64, Vec<Vec<u8>>>>,
    /// Rows still to keep before the query reads too much.
    budget: usize,
    exceeded: bool,
}

impl RollupSink for MinuteHdrs {
    fn add(&mut self, key: &SeriesKey, at: u64, counts: &RowCounts, hdr: &[u8]) {
        if counts.requests == 0 || hdr.is_empty() {
            return;
        }
        if let Some(rows) = self.wanted.get_mut(key) {
            if self.budget == 0 {
                self.exceeded = true;
                return;
            }
            self.budget -= 1;
            rows.entry(at).or_default().push(hdr.to_vec());
        }
    }
}

impl Exact {
    /// The minutes `[from, to)` the range selects at evaluation time `t`, with now at `now`.
    fn minutes(&self, t: i64, start: i64, end: i64, now: i64) -> (i64, i64) {
        let base = match &self.at {
            None => t,
            Some(AtModifier::Start) => start,
            Some(AtModifier::End) => end,
            Some(AtModifier::At(time)) => millis(*time),
        };
        let reference = base - self.offset_ms;
        let from = (reference - self.range_ms).div_euclid(MINUTE_MS)
            + i64::from((reference - self.range_ms).rem_euclid(MINUTE_MS) != 0);
        let to = if reference >= now {
            now.div_euclid(MINUTE_MS) + 1
        } else {
            reference.div_euclid(MINUTE_MS)
        };
        (from, to)
    }

    fn group(&self, labels: &Labels) -> Labels {
        match &self.grouping {
            Grouping::Series => labels.clone(),
            Grouping::By(names) => labels.project(names, true),
            Grouping::Without(names) => labels.project(names, false),
        }
    }

    /// The answer at each of `times` (milliseconds), or `None` when the minutes it needs are
    /// older than those kept (the caller then evaluates as Prometheus does).
    pub async fn evaluate(
        &self,
        rollups: &Rollups,
        times: &[i64],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Option<Vec<(i64, Vec<Element>)>>, Error> {
        let now = (rollups.aggregator.clock().now_nanos() / 1_000_000) as i64;
        let spans: Vec<(i64, i64)> = times
            .iter()
            .map(|&t| self.minutes(t, start, end, now))
            .collect();
        let first = spans.iter().map(|s| s.0).min().unwrap_or(0).max(0);
        let last = spans.iter().map(|s| s.1).max().unwrap_or(0).max(first);
        if (first as u64) < rollups.engine.first_minute_kept() {
            return Ok(None);
        }
        let series = rollups.series_labels(&self.matchers);
        let sink = MinuteHdrs {
            wanted: series
                .iter()
                .map(|(key, _)| (key.clone(), BTreeMap::new()))
                .collect(),
            budget: max_samples,
            exceeded: false,
        };
        let rows = rollups
            .engine
            .rollup_rows(Table::Minutes, first as u64..last as u64, true, sink)
            .await
            .map_err(|e| Error::execution(e.to_string()))?;
        if rows.exceeded {
            return Err(Error::execution(format!(
                "query processing would load too many samples into memory in query execution (more than {max_samples}, query.max_samples)"
            )));
        }
        let groups: Vec<(Labels, Vec<SeriesKey>)> = {
            let mut g: BTreeMap<Labels, Vec<SeriesKey>> = BTreeMap::new();
            for (key, labels) in series {
                g.entry(self.group(&labels)).or_default().push(key);
            }
            g.into_iter().collect()
        };
        // Merging histograms is CPU work: on the query runtime, not the handler's.
        let (q, times) = (self.q, times.to_vec());
        rollups
            .engine
            .run_work(move || merge(q, &times, &spans, &groups, &rows))
            .await
            .map_err(|e| Error::execution(e.to_string()))?
            .map(Some)
    }
}

/// The `q` quantile of each group's merged rows at each of `times`, over the minutes `spans`
/// gives for it.
fn merge(
    q: f64,
    times: &[i64],
    spans: &[(i64, i64)],
    groups: &[(Labels, Vec<SeriesKey>)],
    rows: &MinuteHdrs,
) -> Result<Vec<(i64, Vec<Element>)>, Error> {
    let mut counts = Counts::new();
    let mut out = Vec::with_capacity(times.len());
    for (&t, &(from, to)) in times.iter().zip(spans) {
        let mut elements = Vec::new();
        for (labels, keys) in groups {
            counts.clear();
            let mut present = false;
            for key in keys {
                let Some(minutes) = rows.wanted.get(key) else {
                    continue;
                };
                present |= minutes.range(..to.max(0) as u64).next().is_some();
                if from >= to {
                    continue;
                }
                for blobs in minutes
                    .range(from.max(0) as u64..to.max(0) as u64)
                    .map(|(_, b)| b)
                {
                    for blob in blobs {
                        counts
                            .add_encoded(blob)
                            .map_err(|e| Error::execution(e.to_string()))?;
                    }
                }
            }
            // A range with no minute boundary in it holds fewer than two samples: no rate.
            if !present || from >= to {
                continue;
            }
            let v = if q < 0.0 {
                f64::NEG_INFINITY
            } else if q > 1.0 {
                f64::INFINITY
            } else {
                counts.quantile_seconds(q).unwrap_or(f64::NAN)
            };
            elements.push(Element {
                labels: labels.clone(),
                v,
                t,
            });
        }
        out.push((t, elements));
    }
    Ok(out)
}
