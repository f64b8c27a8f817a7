//! The aggregator's metric stream state (the points themselves are recmeter-core's
//! `point`): cumulative streams become deltas here,
//! in the order the WAL logged the points, so a replay after a crash gives the same deltas as the
//! first apply did (ADR 011).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use recmeter_core::point::{Dense, MetricPoint, PointValue, StreamId};

/// Most services marked as sending request spans; past it new ones are not marked (and a
/// warning says so), so hostile `service.name` values cannot grow the set without bound.
pub const MAX_SPAN_SERVICES: usize = 100_000;

/// Why a point counted nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Its service sends request spans.
    CoveredBySpans,
    /// `metrics.max_streams` cumulative streams are held already.
    StreamLimit,
}

/// What recmeter holds of one cumulative stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stream {
    start: u64,
    time: u64,
    /// The log clock (`checked_at` of the frame) when the stream last had a point.
    seen: u64,
    value: PointValue,
}

/// The cumulative streams and which services send request spans: metric state that the WAL
/// replays and checkpoints save. It moves only with what was logged (a point's `checked_at`),
/// never with the wall clock, so a replay after any downtime decides as the first apply did.
#[derive(Debug, Default)]
pub struct MetricState {
    streams: HashMap<StreamId, Stream>,
    /// Services that sent an accepted request span: their points are ignored.
    span_services: HashSet<Arc<str>>,
    max_streams: usize,
    staleness_nanos: u64,
    /// The latest `checked_at` applied; streams are evicted against it once a minute.
    clock: u64,
    /// Whether the span-service cap has been reported.
    warned: bool,
}

/// [`MetricState`] as a checkpoint saves it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricStateImage {
    /// Stream identities in hex.
    streams: Vec<(String, Stream)>,
    span_services: Vec<String>,
    #[serde(default)]
    clock: u64,
}

impl MetricState {
    /// Empty, with the limits of `[metrics]`.
    pub fn from_config(config: &crate::config::MetricsConfig) -> Self {
        Self::new(
            config.max_streams,
            u64::try_from(config.stream_staleness.as_nanos()).unwrap_or(u64::MAX),
        )
    }

    /// Empty, holding at most `max_streams` streams for `staleness_nanos` each.
    pub fn new(max_streams: usize, staleness_nanos: u64) -> Self {
        Self {
            max_streams,
            staleness_nanos,
            ..Self::default()
        }
    }

    /// Cumulative streams held.
    pub fn streams_active(&self) -> usize {
        self.streams.len()
    }

    /// Notes that `service` sends request spans.
    pub fn span_service(&mut self, service: &Arc<str>) {
        if self.span_services.contains(service) {
            return;
        }
        if self.span_services.len() >= MAX_SPAN_SERVICES {
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    limit = MAX_SPAN_SERVICES,
                    "Too many services send spans to remember them all; points of further ones are counted."
                );
            }
            return;
        }
        self.span_services.insert(service.clone());
    }

    /// Whether `service` sends request spans.
    pub fn covered_by_spans(&self, service: &str) -> bool {
        self.span_services.contains(service)
    }

    /// The delta `point` adds, `Ok(None)` when it adds nothing (the first point of a stream,
    /// taken as its baseline; a repeated, older or overtaken point of a stream), or why it is
    /// ignored. `checked_at` is the clock reading logged with the point.
    pub fn delta(
        &mut self,
        point: &MetricPoint,
        checked_at: u64,
    ) -> Result<Option<PointValue>, Ignored> {
        self.advance(checked_at);
        let now = self.clock;
        if self.covered_by_spans(&point.key.service) {
            return Err(Ignored::CoveredBySpans);
        }
        if !point.cumulative {
            return Ok(Some(point.value.clone()));
        }
        let Some(stream) = self.streams.get_mut(&point.stream) else {
            if self.streams.len() >= self.max_streams {
                return Err(Ignored::StreamLimit);
            }
            self.streams.insert(
                point.stream,
                Stream {
                    start: point.start_unix_nanos,
                    time: point.time_unix_nanos,
                    seen: now,
                    value: point.value.clone(),
                },
            );
            // The `auto` rule, but only for a stream that started within the staleness window:
            // one that started earlier may have been held and evicted, and counting its whole
            // value again would count its requests twice.
            let recent = point.start_unix_nanos.saturating_add(self.staleness_nanos) > now;
            return Ok((point.whole_if_new && recent).then(|| point.value.clone()));
        };
        if point.time_unix_nanos <= stream.time || point.start_unix_nanos < stream.start {
            // A retry of a point already counted, one overtaken by a later one, or one from
            // before the sender's last restart.
            return Ok(None);
        }
        stream.seen = now;
        let restarted = point.start_unix_nanos != stream.start;
        let delta = if restarted {
            None
        } else {
            point.value.subtract(&stream.value)
        };
        stream.start = point.start_unix_nanos;
        stream.time = point.time_unix_nanos;
        stream.value = point.value.clone();
        // After a reset the whole value is new.
        Ok(Some(delta.unwrap_or_else(|| point.value.clone())))
    }

    /// Moves the log clock to `checked_at`; once a minute, forgets streams without a point
    /// for `metrics.stream_staleness`.
    fn advance(&mut self, checked_at: u64) {
        const MINUTE: u64 = 60_000_000_000;
        if checked_at <= self.clock {
            return;
        }
        let minute_passed = checked_at / MINUTE != self.clock / MINUTE;
        self.clock = checked_at;
        if minute_passed {
            let staleness = self.staleness_nanos;
            self.streams
                .retain(|_, s| s.seen.saturating_add(staleness) >= checked_at);
        }
    }

    /// The state as a checkpoint saves it.
    pub fn image(&self) -> MetricStateImage {
        let mut streams: Vec<_> = self
            .streams
            .iter()
            .map(|(k, s)| (format!("{k:032x}"), s.clone()))
            .collect();
        streams.sort_by(|a, b| a.0.cmp(&b.0));
        let mut span_services: Vec<_> = self.span_services.iter().map(|s| s.to_string()).collect();
        span_services.sort();
        MetricStateImage {
            streams,
            span_services,
            clock: self.clock,
        }
    }

    /// Puts back what [`MetricState::image`] saved; span-fed services are added to those
    /// already marked (by restored series). A stream identity that is not 32 hex digits is
    /// skipped.
    pub fn restore(&mut self, image: MetricStateImage) {
        self.streams = image
            .streams
            .into_iter()
            .filter_map(|(k, s)| Some((u128::from_str_radix(&k, 16).ok()?, s)))
            .collect();
        for service in image.span_services {
            self.span_service(&Arc::from(service));
        }
        self.clock = self.clock.max(image.clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SeriesKey;

    fn explicit(bounds: &[f64], counts: &[u64]) -> PointValue {
        PointValue::Explicit {
            bounds: bounds.to_vec(),
            counts: counts.to_vec(),
        }
    }

    fn expo(scale: i32, zero_count: u64, offset: i32, counts: &[u64]) -> PointValue {
        PointValue::Exponential {
            scale,
            zero_count,
            positive: Dense {
                offset,
                counts: counts.to_vec(),
            },
            negative: Dense::default(),
        }
    }

    /// A test stream id from a name.
    fn id(stream: &str) -> StreamId {
        stream.bytes().fold(0u128, |h, b| {
            h.wrapping_mul(131).wrapping_add(u128::from(b))
        })
    }

    fn point(stream: &str, start: u64, time: u64, value: PointValue) -> MetricPoint {
        MetricPoint {
            stream: id(stream),
            key: SeriesKey {
                service: Arc::from("svc"),
                endpoint: Arc::from("recs.latency"),
                dimensions: Vec::new(),
            },
            error: false,
            start_unix_nanos: start,
            time_unix_nanos: time,
            cumulative: true,
            whole_if_new: false,
            nanos_per_unit: 1e9,
            value,
        }
    }

    #[test]
    fn downscaling_merges_neighbouring_buckets() {
        let d = Dense {
            offset: -3,
            counts: vec![1, 2, 3, 4, 5, 6],
        };
        // Indexes -3..=2 at one scale lower: -3 → -2, -2 and -1 → -1, 0 and 1 → 0, 2 → 1.
        assert_eq!(
            d.downscale(1),
            Dense {
                offset: -2,
                counts: vec![1, 5, 9, 6],
            }
        );
        assert_eq!(d.downscale(0), d);
    }

    #[test]
    fn a_count_reset_a_start_change_and_a_downscale() {
        let mut state = MetricState::new(10, u64::MAX);
        let b = [0.1, 0.2];
        // The first point is the baseline.
        assert_eq!(
            state.delta(&point("s", 100, 1_000, explicit(&b, &[1, 2, 3])), 0),
            Ok(None)
        );
        assert_eq!(
            state.delta(&point("s", 100, 2_000, explicit(&b, &[2, 2, 5])), 0),
            Ok(Some(explicit(&b, &[1, 0, 2])))
        );
        // A repeated point adds nothing.
        assert_eq!(
            state.delta(&point("s", 100, 2_000, explicit(&b, &[2, 2, 5])), 0),
            Ok(None)
        );
        // A bucket went down: the sender restarted, the whole value is new.
        assert_eq!(
            state.delta(&point("s", 100, 3_000, explicit(&b, &[0, 1, 1])), 0),
            Ok(Some(explicit(&b, &[0, 1, 1])))
        );
        // A new start time is a reset even when every count went up.
        assert_eq!(
            state.delta(&point("s", 2_500, 4_000, explicit(&b, &[5, 5, 5])), 0),
            Ok(Some(explicit(&b, &[5, 5, 5])))
        );
        // Exponential: a lower scale is merged, not a reset.
        assert_eq!(
            state.delta(&point("e", 0, 1_000, expo(2, 1, 0, &[1, 2, 3, 4, 5])), 0),
            Ok(None)
        );
        assert_eq!(
            state.delta(&point("e", 0, 2_000, expo(1, 2, 0, &[4, 8, 6])), 0),
            Ok(Some(expo(1, 1, 0, &[1, 1, 1])))
        );
        // A higher scale is a reset.
        assert_eq!(
            state.delta(&point("e", 0, 3_000, expo(3, 2, 0, &[9])), 0),
            Ok(Some(expo(3, 2, 0, &[9])))
        );
    }

    #[test]
    fn the_auto_rule_counts_a_new_streams_first_point_whole() {
        let mut state = MetricState::new(1, u64::MAX);
        let mut p = point("s", 500, 1_000, explicit(&[1.0], &[3, 4]));
        p.whole_if_new = true;
        assert_eq!(state.delta(&p, 0), Ok(Some(explicit(&[1.0], &[3, 4]))));
        // Past the stream cap a new stream is ignored; a held one goes on.
        assert_eq!(
            state.delta(&point("t", 0, 1_000, explicit(&[1.0], &[1, 1])), 0),
            Err(Ignored::StreamLimit)
        );
        // Delta points need no stream.
        let mut d = point("t", 0, 1_000, explicit(&[1.0], &[1, 1]));
        d.cumulative = false;
        assert_eq!(state.delta(&d, 0), Ok(Some(explicit(&[1.0], &[1, 1]))));
        state.span_service(&Arc::from("svc"));
        assert_eq!(state.delta(&d, 0), Err(Ignored::CoveredBySpans));
    }

    #[test]
    fn streams_go_stale_by_the_log_clock_and_survive_a_checkpoint() {
        const S: u64 = 1_000_000_000;
        let mut state = MetricState::new(10, 60 * S);
        // Bounds whose shortest decimal text does not read back to the same f64 everywhere.
        let b = [0.1 + 0.2, 1.0 / 3.0];
        let v = |c: u64| explicit(&b, &[c, 1, 1]);
        state.delta(&point("old", 0, 1, v(1)), 0).unwrap();
        state.delta(&point("new", 0, 1, v(1)), 50 * S).unwrap();
        // The log clock enters minute 1: "old" (last seen at 0 s) is past 60 s, "new" is not.
        state.delta(&point("third", 0, 1, v(1)), 61 * S).unwrap();
        assert_eq!(state.streams_active(), 2);
        let json = serde_json::to_string(&state.image()).unwrap();
        let mut restored = MetricState::new(10, 60 * S);
        restored.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.image(), state.image());
        assert_eq!(
            restored.delta(&point("new", 0, 2, v(3)), 100 * S),
            Ok(Some(explicit(&b, &[2, 0, 0])))
        );
    }

    #[test]
    fn points_from_before_the_senders_restart_add_nothing() {
        let mut state = MetricState::new(10, u64::MAX);
        let b = [1.0];
        state
            .delta(&point("s", 100, 1_000, explicit(&b, &[5, 5])), 0)
            .unwrap();
        // The sender restarted at 1 500: its first point after that counts whole.
        assert_eq!(
            state.delta(&point("s", 1_500, 2_000, explicit(&b, &[1, 0])), 0),
            Ok(Some(explicit(&b, &[1, 0])))
        );
        // A late retry from before the restart, with a later time, adds nothing.
        assert_eq!(
            state.delta(&point("s", 100, 2_500, explicit(&b, &[6, 5])), 0),
            Ok(None)
        );
        assert_eq!(
            state.delta(&point("s", 1_500, 3_000, explicit(&b, &[2, 1])), 0),
            Ok(Some(explicit(&b, &[1, 1])))
        );
    }

    /// The `-- in --` or `-- out --` part of a collector-contrib txtar vector, as YAML.
    fn section(vector: &str, name: &str) -> yaml_serde::Value {
        let start = vector.find(&format!("-- {name} --")).unwrap();
        let body = &vector[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body.find("\n-- ").unwrap_or(body.len());
        yaml_serde::from_str(&body[..end]).unwrap()
    }

    fn field<'a>(v: &'a yaml_serde::Value, names: &[&str]) -> Option<&'a yaml_serde::Value> {
        names.iter().find_map(|n| v.get(n))
    }

    fn u64s(v: Option<&yaml_serde::Value>) -> Vec<u64> {
        v.and_then(|v| v.as_sequence())
            .map(|s| s.iter().map(|c| c.as_u64().unwrap()).collect())
            .unwrap_or_default()
    }

    fn dense(v: Option<&yaml_serde::Value>) -> Dense {
        Dense {
            offset: v
                .and_then(|v| v.get("offset"))
                .and_then(|o| o.as_i64())
                .unwrap_or(0) as i32,
            counts: u64s(v.and_then(|v| field(v, &["bucketCounts", "bucket_counts"]))),
        }
    }

    /// `(metric name, time, value)` of every point of a section.
    fn points_of(section: &yaml_serde::Value) -> Vec<(String, u64, PointValue)> {
        let mut out = Vec::new();
        let metrics = &section["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        for m in metrics.as_sequence().unwrap() {
            let name = m["name"].as_str().unwrap().to_owned();
            let (exponential, data) = match field(m, &["histogram"]) {
                Some(h) => (false, h),
                None => (
                    true,
                    field(m, &["exponential_histogram", "exponentialHistogram"]).unwrap(),
                ),
            };
            for p in field(data, &["dataPoints", "data_points"])
                .unwrap()
                .as_sequence()
                .unwrap()
            {
                let time = field(p, &["timeUnixNano"]).unwrap().as_u64().unwrap();
                let value = if exponential {
                    PointValue::Exponential {
                        scale: p["scale"].as_i64().unwrap() as i32,
                        zero_count: field(p, &["zeroCount"])
                            .and_then(|z| z.as_u64())
                            .unwrap_or(0),
                        positive: dense(p.get("positive")),
                        negative: dense(p.get("negative")),
                    }
                } else {
                    PointValue::Explicit {
                        bounds: field(p, &["explicitBounds"])
                            .unwrap()
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .map(|b| b.as_f64().unwrap())
                            .collect(),
                        counts: u64s(field(p, &["bucketCounts"])),
                    }
                };
                out.push((name.clone(), time, value));
            }
        }
        out
    }

    /// The deltatocumulative processor's vectors, backwards: its cumulative output fed as
    /// cumulative points gives its delta input back, from each stream's second point on.
    #[test]
    fn collector_contrib_vectors_run_backwards() {
        for vector in [
            include_str!("../../tests/data/deltatocumulative-histograms-1.test"),
            include_str!("../../tests/data/deltatocumulative-exponential-1.test"),
        ] {
            let cumulative = points_of(&section(vector, "out"));
            let deltas = points_of(&section(vector, "in"));
            assert_eq!(cumulative.len(), deltas.len());
            let mut state = MetricState::new(10, u64::MAX);
            let mut seen = std::collections::HashSet::new();
            for ((name, time, value), (in_name, in_time, want)) in
                cumulative.into_iter().zip(deltas)
            {
                assert_eq!((&name, time), (&in_name, in_time));
                let got = state.delta(&point(&name, 0, time, value), 0).unwrap();
                if seen.insert(name.clone()) {
                    assert_eq!(
                        got, None,
                        "{name} at {time}: the first point is the baseline"
                    );
                } else {
                    assert_eq!(got, Some(want), "{name} at {time}");
                }
            }
        }
    }

    #[test]
    fn representative_values() {
        // Seconds: (-inf, 0.1] at 0.05, (0.1, 0.3] at 0.2, (0.3, inf) at 0.3.
        let v = explicit(&[0.1, 0.3], &[1, 2, 3]);
        assert_eq!(
            v.requests(1e9),
            vec![(50_000_000, 1), (200_000_000, 2), (300_000_000, 3)]
        );
        // Scale 0: bucket 2 is (4, 8], its geometric midpoint 2^2.5 ≈ 5.66; the zero bucket
        // at 0. Bucket 1 is (2, 4], at 2^1.5 s.
        let e = expo(0, 1, 1, &[0, 2]);
        assert_eq!(e.requests(1.0), vec![(0, 1), (6, 2)]);
        let e = expo(0, 0, 1, &[2]);
        assert_eq!(e.requests(1e9), vec![(2_828_427_125, 2)]);
    }
}
