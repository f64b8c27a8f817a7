//! The request families over time, answered from the rollups: `recs_requests_total`,
//! `recs_recommendations_total` and `recs_latency_seconds_bucket`, `_count` and `_sum`, with
//! the labels `/metrics` gives them.
//!
//! A counter's sample is its running total as a scrape would have read it. The total now is
//! the series' counter (what `/metrics` shows); the total at an earlier boundary is that
//! minus the rows from the boundary on, so a query reads rows from its start to now and never
//! older history. Samples fall at minute boundaries while `latency_minutes` holds the minutes
//! (memory, then the store's `retention.minutes`), at hour boundaries before, and at now (the
//! open minute's running value). A series has samples from the first boundary after its first
//! count.
//!
//! The rows hold requests, errors, recommendations, the counts at the bucket bounds and the
//! sum of durations exactly, as `/metrics` counts them. Rows of files written before rows kept
//! the last two (row format 1) have them taken from their HDR histograms (within 1%), and an
//! answer that uses them says so (`from_hdr`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use promql_parser::label::Matcher;
use recmeter_aggregator::sql::RollupSink;
use recmeter_aggregator::state::{LATENCY_BUCKETS_NANOS, RowCounts, SeriesCounters, Table};
use recmeter_aggregator::{AggregatorHandle, QueryEngine, SeriesKey};

use super::value::{Labels, METRIC_NAME, Sample, Series};

const MINUTE_MS: i64 = 60_000;
const BUCKETS: usize = LATENCY_BUCKETS_NANOS.len();

/// The families answered from the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Requests,
    Recommendations,
    Bucket,
    Count,
    Sum,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Requests,
        Family::Recommendations,
        Family::Bucket,
        Family::Count,
        Family::Sum,
    ];

    /// The sample name, as a scrape of `/metrics` shows it.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Requests => "recs_requests_total",
            Family::Recommendations => "recs_recommendations_total",
            Family::Bucket => "recs_latency_seconds_bucket",
            Family::Count => "recs_latency_seconds_count",
            Family::Sum => "recs_latency_seconds_sum",
        }
    }

    /// Whether its past values need the rows' latency columns (bucket counts and sum).
    const fn needs_latency(self) -> bool {
        matches!(self, Family::Bucket | Family::Sum)
    }
}

/// The `le` label of each bucket, as `/metrics` writes it, `+Inf` last.
pub fn bucket_labels() -> Vec<String> {
    LATENCY_BUCKETS_NANOS
        .iter()
        .map(|&le| format!("{:?}", le as f64 / 1e9))
        .chain(["+Inf".to_owned()])
        .collect()
}

/// What a selection read from the rollups.
#[derive(Debug, Default)]
pub struct Selected {
    pub series: Vec<Series>,
    /// Whether past bucket counts or sums came from HDR histograms rather than exact counts.
    pub from_hdr: bool,
}

/// The request families, read from the rollups.
#[derive(Debug, Clone)]
pub struct Rollups {
    pub engine: Arc<QueryEngine>,
    pub aggregator: AggregatorHandle,
}

/// One series' counts from a boundary on, per minute or hour: what is taken off its total.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    requests: u64,
    errors: u64,
    recommendations: u64,
    /// Requests at or under each bucket bound.
    le: [u64; BUCKETS],
    /// Kept whole as the series' total is, so each past sample is one conversion away from
    /// what a scrape showed.
    sum_nanos: u128,
}

impl Delta {
    fn add(&mut self, other: &Delta) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.recommendations = self.recommendations.saturating_add(other.recommendations);
        for (a, b) in self.le.iter_mut().zip(other.le) {
            *a = a.saturating_add(b);
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }
}

/// Rows per series and minute (or hour), added up.
struct Deltas {
    /// Each wanted series' place in `rows`.
    wanted: HashMap<SeriesKey, usize>,
    rows: Vec<BTreeMap<u64, Delta>>,
    /// The series of the last row and its place: rows come grouped by series, and their keys
    /// share their strings, so most rows find their series without hashing.
    last: Option<(SeriesKey, Option<usize>)>,
    /// Rows still to take before the query reads too much.
    budget: usize,
    exceeded: bool,
    /// Whether a row's bucket counts and sum came from its histogram (row format 1).
    legacy: bool,
}

impl RollupSink for Deltas {
    fn wants_buckets(&self) -> bool {
        true
    }

    fn add(&mut self, key: &SeriesKey, at: u64, counts: &RowCounts, _hdr: &[u8]) {
        let place = match &self.last {
            Some((k, place))
                if Arc::ptr_eq(&k.service, &key.service)
                    && Arc::ptr_eq(&k.endpoint, &key.endpoint)
                    && k.dimensions == key.dimensions =>
            {
                *place
            }
            _ => {
                let place = self.wanted.get(key).copied();
                self.last = Some((key.clone(), place));
                place
            }
        };
        let Some(rows) = place.and_then(|i| self.rows.get_mut(i)) else {
            return;
        };
        if self.budget == 0 {
            self.exceeded = true;
            return;
        }
        self.budget -= 1;
        self.legacy |= counts.legacy;
        let d = Delta {
            requests: counts.requests,
            errors: counts.errors,
            recommendations: counts.recommendations,
            le: counts.buckets,
            sum_nanos: u128::from(counts.sum_nanos),
        };
        rows.entry(at).or_default().add(&d);
    }
}

impl Rollups {
    /// Every series whose labels (`service`, `endpoint`, the extra dimensions) satisfy
    /// `matchers`, with its labels.
    pub fn series_labels(&self, matchers: &[Matcher]) -> Vec<(SeriesKey, Labels)> {
        self.counters(matchers)
            .into_iter()
            .map(|(labels, c)| (c.key, labels))
            .collect()
    }

    /// The label sets of the request families' series that satisfy `matchers`, without
    /// reading any row: what `/api/v1/series` and the label endpoints list.
    pub fn label_sets(&self, matchers: &[Matcher]) -> Vec<Labels> {
        let own: Vec<Matcher> = matchers
            .iter()
            .filter(|m| m.name != METRIC_NAME && m.name != "status" && m.name != "le")
            .cloned()
            .collect();
        let le_labels = bucket_labels();
        let mut out = Vec::new();
        // A series that never counted anything (the overflow series, until one folds in) has
        // no sample.
        let counted = self
            .counters(&own)
            .into_iter()
            .filter(|(_, c)| c.totals.requests() > 0 || c.totals.recommendations > 0);
        for (labels, _) in counted {
            for family in Family::ALL {
                let named = labels.with(METRIC_NAME, family.name());
                match family {
                    Family::Requests => {
                        out.push(named.with("status", "ok"));
                        out.push(named.with("status", "error"));
                    }
                    Family::Bucket => {
                        out.extend(le_labels.iter().map(|le| named.with("le", le)));
                    }
                    _ => out.push(named),
                }
            }
        }
        out.retain(|l| super::source::matches(l, matchers));
        out
    }

    /// The counters of every series whose labels satisfy `matchers`, with its labels.
    fn counters(&self, matchers: &[Matcher]) -> Vec<(Labels, SeriesCounters)> {
        let dimensions = recmeter_aggregator::state::lock(self.aggregator.state())
            .dimension_labels()
            .to_vec();
        let base = |key: &SeriesKey| {
            let mut pairs = vec![
                ("service".to_owned(), key.service.to_string()),
                ("endpoint".to_owned(), key.endpoint.to_string()),
            ];
            pairs.extend(
                dimensions
                    .iter()
                    .zip(&key.dimensions)
                    .map(|(n, v)| (n.clone(), v.to_string())),
            );
            Labels::new(pairs)
        };
        self.aggregator
            .counters()
            .into_iter()
            .map(|c| (base(&c.key), c))
            .filter(|(labels, _)| super::source::matches(labels, matchers))
            .collect()
    }

    /// The series of the request families that satisfy `matchers`, with their samples from
    /// `start` to `end` (milliseconds). Refuses to read more than `max_samples` rows or build
    /// more than `max_samples` samples.
    pub async fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Selected, String> {
        let too_many = || {
            format!(
                "query processing would load too many samples into memory in query execution (more than {max_samples}, query.max_samples)"
            )
        };
        let families: Vec<Family> = Family::ALL
            .into_iter()
            .filter(|f| {
                matchers
                    .iter()
                    .filter(|m| m.name == METRIC_NAME)
                    .all(|m| m.is_match(f.name()))
            })
            .collect();
        let now_ms = (self.aggregator.clock().now_nanos() / 1_000_000) as i64;
        let end = end.min(now_ms);
        if families.is_empty() || end < start {
            return Ok(Selected::default());
        }
        // Matchers on the series' own labels pick the series before any row is read.
        let own: Vec<Matcher> = matchers
            .iter()
            .filter(|m| m.name != METRIC_NAME && m.name != "status" && m.name != "le")
            .cloned()
            .collect();
        let counters = self.counters(&own);
        if counters.is_empty() {
            return Ok(Selected::default());
        }
        let hdr = families.iter().any(|f| f.needs_latency());
        let now_minute = (now_ms / MINUTE_MS) as u64;
        let first_boundary = (start.max(0) as u64).div_ceil(MINUTE_MS as u64);
        let first_kept = self.engine.first_minute_kept();
        let wanted = || Deltas {
            wanted: counters
                .iter()
                .enumerate()
                .map(|(i, (_, c))| (c.key.clone(), i))
                .collect(),
            rows: vec![BTreeMap::new(); counters.len()],
            last: None,
            budget: max_samples,
            exceeded: false,
            legacy: false,
        };
        // Boundaries from `first_kept` on have the minutes behind them; earlier ones are hours.
        let minutes = self
            .engine
            .rollup_rows(
                Table::Minutes,
                first_boundary.max(first_kept)..now_minute + 1,
                hdr,
                wanted(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if minutes.exceeded {
            return Err(too_many());
        }
        let hours = if first_boundary < first_kept {
            let first_hour = first_boundary.div_ceil(60) * 60;
            Some(
                self.engine
                    .rollup_rows(Table::Hours, first_hour..now_minute + 1, hdr, wanted())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|h| if h.exceeded { Err(too_many()) } else { Ok(h) })?,
            )
        } else {
            None
        };

        // Turning rows into samples is CPU work: on the query runtime, not the handler's.
        let (matchers, message) = (matchers.to_vec(), too_many());
        self.engine
            .run_work(move || {
                let from_hdr = hdr && (minutes.legacy || hours.as_ref().is_some_and(|h| h.legacy));
                let rows = Rows {
                    minutes,
                    hours,
                    first_boundary,
                    first_kept,
                    now_ms,
                };
                samples(
                    &families,
                    &counters,
                    &rows,
                    &matchers,
                    (start, end),
                    from_hdr,
                    max_samples,
                )
                .ok_or(message)
            })
            .await
            .map_err(|e| e.to_string())?
    }
}

/// The rows a selection read, and where its boundaries lie.
struct Rows {
    minutes: Deltas,
    hours: Option<Deltas>,
    /// The first minute boundary the selection wants.
    first_boundary: u64,
    /// The first minute `latency_minutes` holds.
    first_kept: u64,
    now_ms: i64,
}

/// The samples of `families` for each of `counters`, from `rows`, that satisfy `matchers`
/// between `range` (milliseconds); `None` past `max_samples`.
fn samples(
    families: &[Family],
    counters: &[(Labels, SeriesCounters)],
    rows: &Rows,
    matchers: &[Matcher],
    (start, end): (i64, i64),
    from_hdr: bool,
    max_samples: usize,
) -> Option<Selected> {
    let le_labels = bucket_labels();
    let per_point: usize = families
        .iter()
        .map(|f| match f {
            Family::Requests => 2,
            Family::Bucket => BUCKETS + 1,
            _ => 1,
        })
        .sum();
    let mut built = 0usize;
    let mut out: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    // `counters` are in the order of the rows' places.
    for (i, (labels, c)) in counters.iter().enumerate() {
        let totals = &c.totals;
        let mut total = Delta {
            requests: totals.requests(),
            errors: totals.errors,
            recommendations: totals.recommendations,
            sum_nanos: totals.sum_nanos,
            ..Delta::default()
        };
        let mut running = 0u64;
        for (le, n) in total.le.iter_mut().zip(&totals.bucket_counts) {
            running = running.saturating_add(*n);
            *le = running;
        }
        // Each boundary's running total, newest first: the total less the rows after it.
        let mut points: Vec<(i64, Delta)> = Vec::new();
        if rows.now_ms >= start && rows.now_ms % MINUTE_MS != 0 {
            points.push((rows.now_ms, total));
        }
        let mut suffix = Delta::default();
        let minute_rows = rows.minutes.rows.get(i);
        let mut newest_first = minute_rows.into_iter().flatten().rev().peekable();
        let last_boundary = (rows.now_ms / MINUTE_MS) as u64;
        let mut k = last_boundary;
        while k >= rows.first_boundary.max(rows.first_kept) {
            while let Some((_, d)) = newest_first.next_if(|(m, _)| **m >= k) {
                suffix.add(d);
            }
            let value = minus(&total, &suffix);
            points.push((k as i64 * MINUTE_MS, value));
            // Running totals only fall going back: once nothing is counted, nothing was.
            if k == 0 || (value.requests == 0 && value.recommendations == 0) {
                break;
            }
            k -= 1;
        }
        if let Some(hours) = &rows.hours {
            let mut suffix = Delta::default();
            let mut newest_first = hours.rows.get(i).into_iter().flatten().rev().peekable();
            let mut h = (rows.first_kept.saturating_sub(1) / 60) * 60;
            while h >= rows.first_boundary {
                while let Some((_, d)) = newest_first.next_if(|(m, _)| **m >= h) {
                    suffix.add(d);
                }
                let value = minus(&total, &suffix);
                points.push((h as i64 * MINUTE_MS, value));
                if h < 60 || (value.requests == 0 && value.recommendations == 0) {
                    break;
                }
                h -= 60;
            }
        }
        points
            .retain(|(t, d)| *t >= start && *t <= end && (d.requests > 0 || d.recommendations > 0));
        points.sort_by_key(|(t, _)| *t);
        points.dedup_by_key(|(t, _)| *t);
        if points.is_empty() {
            continue;
        }
        built += points.len() * per_point;
        if built > max_samples {
            return None;
        }
        for family in families {
            let named = labels.with(METRIC_NAME, family.name());
            let mut push = |labels: Labels, value: &dyn Fn(&Delta) -> f64| {
                let samples: Vec<Sample> = points
                    .iter()
                    .map(|(t, d)| Sample { t: *t, v: value(d) })
                    .collect();
                out.insert(labels, samples);
            };
            match family {
                Family::Requests => {
                    push(named.with("status", "ok"), &|d| {
                        d.requests.saturating_sub(d.errors) as f64
                    });
                    push(named.with("status", "error"), &|d| d.errors as f64);
                }
                Family::Recommendations => push(named, &|d| d.recommendations as f64),
                Family::Count => push(named, &|d| d.requests as f64),
                Family::Sum => push(named, &|d| d.sum_nanos as f64 / 1e9),
                Family::Bucket => {
                    for (i, le) in le_labels.iter().enumerate() {
                        push(named.with("le", le), &|d| {
                            if i < BUCKETS {
                                d.le[i] as f64
                            } else {
                                d.requests as f64
                            }
                        });
                    }
                }
            }
        }
    }
    let series = out
        .into_iter()
        .filter(|(labels, _)| super::source::matches(labels, matchers))
        .map(|(labels, samples)| Series { labels, samples })
        .collect();
    Some(Selected { series, from_hdr })
}

/// `total` less `suffix`, never below zero (rows read back from the store may hold anything).
fn minus(total: &Delta, suffix: &Delta) -> Delta {
    let mut d = Delta {
        requests: total.requests.saturating_sub(suffix.requests),
        errors: total.errors.saturating_sub(suffix.errors),
        recommendations: total.recommendations.saturating_sub(suffix.recommendations),
        sum_nanos: total.sum_nanos.saturating_sub(suffix.sum_nanos),
        ..Delta::default()
    };
    for ((out, t), s) in d.le.iter_mut().zip(total.le).zip(suffix.le) {
        *out = t.saturating_sub(s);
    }
    d
}
