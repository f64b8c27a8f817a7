//! Where the evaluator reads samples: a [`Source`] gives every series a selector matches with
//! its samples in a time range. recmeter's rollups are one source; [`MemorySource`] holds
//! series in memory (Prometheus's engine tests, the ring of recmeter's own families).

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
}

impl MemorySource {
    /// Adds `samples` to the series `labels` (made if new), keeping each series in time order.
    pub fn add(&mut self, labels: Labels, samples: impl IntoIterator<Item = Sample>) {
        let at = match self.series.iter().position(|s| s.labels == labels) {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    labels,
                    samples: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let series = &mut self.series[at];
        series.samples.extend(samples);
        series.samples.sort_by_key(|s| s.t);
    }

    /// Forgets every series.
    pub fn clear(&mut self) {
        self.series.clear();
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
