//! Where the evaluator reads samples: a [`Source`] gives every series a selector matches with
//! its samples in a time range. recmeter's rollups are one source; [`MemorySource`] holds
//! series in memory (Prometheus's engine tests, the ring of recmeter's own families).

use std::collections::HashMap;

use promql_parser::label::Matcher;

use super::value::{Labels, Sample, Series};

/// A store of series the evaluator selects from.
pub trait Source: Send + Sync {
    /// Every series whose labels satisfy all of `matchers`, with its samples from `start` to
    /// `end` (milliseconds, both included), oldest first. A series with no sample there may be
    /// left out.
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Series>, String>;
}

/// Whether `labels` satisfy every one of `matchers` (a label the series lacks reads as `""`).
pub fn matches(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.is_match(labels.get(&m.name)))
}

/// Series held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    series: Vec<Series>,
    /// Each series' place in `series`.
    index: HashMap<Labels, usize>,
}

impl MemorySource {
    /// Adds `samples` to the series `labels` (made if new), keeping each series in time order.
    pub fn add(&mut self, labels: Labels, samples: impl IntoIterator<Item = Sample>) {
        let at = match self.index.get(&labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series {
                    labels,
                    samples: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let series = &mut self.series[at];
        let sorted = series.samples.len();
        series.samples.extend(samples);
        // The samples held are in order: only the new ones need checking.
        if !series.samples[sorted.saturating_sub(1)..].is_sorted_by_key(|s| s.t) {
            series.samples.sort_by_key(|s| s.t);
        }
    }

    /// Drops samples before `t`, and series left with none.
    pub fn forget_before(&mut self, t: i64) {
        for s in &mut self.series {
            let keep = s.samples.partition_point(|p| p.t < t);
            s.samples.drain(..keep);
        }
        if self.series.iter().any(|s| s.samples.is_empty()) {
            self.series.retain(|s| !s.samples.is_empty());
            self.index = self
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.labels.clone(), i))
                .collect();
        }
    }

    /// Forgets every series.
    pub fn clear(&mut self) {
        self.series.clear();
        self.index.clear();
    }
}

impl Source for MemorySource {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Series>, String> {
        Ok(self
            .series
            .iter()
            .filter(|s| matches(&s.labels, matchers))
            .map(|s| Series {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .filter(|p| p.t >= start && p.t <= end)
                    .copied()
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect())
    }
}

/// Series read ahead for one query: each selection's answer, handed back when the evaluator
/// asks for the same matchers and range.
#[derive(Debug, Default)]
pub struct Prefetched {
    answers: Vec<(String, i64, i64, Vec<Series>)>,
}

impl Prefetched {
    /// Keeps `series` as the answer to `matchers` from `start` to `end`.
    pub fn add(&mut self, matchers: &[Matcher], start: i64, end: i64, series: Vec<Series>) {
        self.answers
            .push((matchers_key(matchers), start, end, series));
    }
}

fn matchers_key(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Source for Prefetched {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Series>, String> {
        let key = matchers_key(matchers);
        self.answers
            .iter()
            .find(|(k, s, e, _)| *k == key && *s == start && *e == end)
            .map(|(.., series)| series.clone())
            .ok_or_else(|| format!("the selection {{{key}}} was not read ahead"))
    }
}
