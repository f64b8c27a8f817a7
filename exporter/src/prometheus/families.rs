//! The metric families of the two built-in exposition providers: the latency families, from
//! one aggregator [`Snapshot`] so every latency family of a scrape reads the same snapshot, and
//! recmeter's self-telemetry (fixed families, then those registered with labels at run time),
//! read just after it.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use recmeter_aggregator::histogram::ClampBound;
use recmeter_aggregator::state::{LATENCY_BUCKETS_NANOS, QUANTILES};
use recmeter_aggregator::telemetry::{
    DropReason, HistogramReading, IgnoreReason, Listener, RejectReason, Transport,
};
use recmeter_aggregator::{AggregatorHandle, QueryEngine, Snapshot, Telemetry, Window};

use super::provider::{Format, Part, Provider, ReadFuture, render_parts};

/// Renders `snapshot` and the self-telemetry in `format`, as the two built-in providers do.
pub fn render(
    snapshot: Snapshot,
    telemetry: &Telemetry,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let series_active = snapshot.series.len();
    render_parts(
        vec![
            latency_part(snapshot),
            telemetry_part(telemetry, series_active),
        ],
        format,
    )
}

/// The latency families of `snapshot`.
pub fn latency_part(snapshot: Snapshot) -> Part {
    Part {
        // About 4 KB of text per series (every window and quantile).
        size_hint: 4096 * snapshot.series.len(),
        collector: Box::new(LatencyFamilies { snapshot }),
    }
}

/// recmeter's self-telemetry, with `series_active` series held.
pub fn telemetry_part(telemetry: &Telemetry, series_active: usize) -> Part {
    Part {
        size_hint: 4096,
        collector: Box::new(SelfFamilies {
            m: SelfMetrics::read(telemetry),
            series_active,
            labelled: telemetry
                .labelled_counters()
                .iter()
                .map(|c| (c.name().to_owned(), c.help().to_owned(), c.read()))
                .collect(),
        }),
    }
}

/// The latency families (`recs_*` and the quantile gauges) of `windows`, from the engine's
/// snapshot.
#[derive(Debug)]
pub struct LatencyProvider {
    pub engine: Arc<QueryEngine>,
    pub windows: Vec<Window>,
}

impl Provider for LatencyProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            let snapshot = self.engine.snapshot(&self.windows).await?;
            Ok(latency_part(snapshot))
        })
    }

    fn sampled(&self) -> bool {
        false
    }
}

/// recmeter's self-telemetry: the fixed `recmeter_*` families, then the families registered
/// at run time with their own labels (`Telemetry::labelled_counter`).
#[derive(Debug)]
pub struct TelemetryProvider {
    pub aggregator: AggregatorHandle,
}

impl Provider for TelemetryProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            Ok(telemetry_part(
                self.aggregator.telemetry(),
                self.aggregator.series_active(),
            ))
        })
    }
}

/// The self-telemetry counters, read once per scrape.
#[derive(Debug)]
struct SelfMetrics {
    spans_received: Vec<(Labels, u64)>,
    requests_rejected: Vec<(Labels, u64)>,
    spans_dropped: Vec<(Labels, u64)>,
    metric_points_received: Vec<(Labels, u64)>,
    metric_points_ignored: Vec<(Labels, u64)>,
    metric_points_dropped: Vec<(Labels, u64)>,
    metric_streams_active: u64,
    series_overflow: Vec<(Labels, u64)>,
    series_limits: [(&'static str, u64); 2],
    clamped: [(ClampBound, u64); 2],
    api_unauthorized: u64,
    wal_fsync: HistogramReading,
    checkpoint_last_success_nanos: u64,
    compactions: [u64; 2],
    connections_open: Vec<(Labels, u64)>,
    connections_refused: Vec<(Labels, u64)>,
    wal_records_dropped: u64,
    wal_writable: bool,
}

impl SelfMetrics {
    fn read(t: &Telemetry) -> Self {
        let labels = |transport: Transport, reason: &str| {
            vec![
                ("transport", transport.label().to_owned()),
                ("reason", reason.to_owned()),
            ]
        };
        let mut spans_received = Vec::new();
        let mut requests_rejected = Vec::new();
        let mut spans_dropped = Vec::new();
        let mut metric_points_received = Vec::new();
        let mut metric_points_ignored = Vec::new();
        let mut metric_points_dropped = Vec::new();
        for tr in Transport::ALL {
            spans_received.push((
                vec![("transport", tr.label().to_owned())],
                t.spans_received(tr),
            ));
            metric_points_received.push((
                vec![("transport", tr.label().to_owned())],
                t.metric_points_received(tr),
            ));
            for r in IgnoreReason::ALL {
                metric_points_ignored.push((labels(tr, r.label()), t.metric_points_ignored(tr, r)));
            }
            for r in DropReason::ALL {
                metric_points_dropped.push((labels(tr, r.label()), t.metric_points_dropped(tr, r)));
            }
            for r in RejectReason::ALL {
                requests_rejected.push((labels(tr, r.label()), t.requests_rejected(tr, r)));
            }
            for r in DropReason::ALL {
                spans_dropped.push((labels(tr, r.label()), t.spans_dropped(tr, r)));
            }
        }
        Self {
            spans_received,
            requests_rejected,
            spans_dropped,
            metric_points_received,
            metric_points_ignored,
            metric_points_dropped,
            metric_streams_active: t.metric_streams_active(),
            series_overflow: t
                .series_overflow()
                .into_iter()
                .map(|(service, n)| (vec![("service", service)], n))
                .collect(),
            series_limits: t.series_limits(),
            api_unauthorized: t.api_unauthorized(),
            wal_fsync: t.wal_fsync(),
            checkpoint_last_success_nanos: t.checkpoint_last_success_nanos(),
            compactions: t.compactions(),
            connections_open: Listener::ALL
                .iter()
                .map(|&l| {
                    (
                        vec![("listener", l.label().to_owned())],
                        t.connections_open(l),
                    )
                })
                .collect(),
            connections_refused: Listener::ALL
                .iter()
                .map(|&l| {
                    (
                        vec![("listener", l.label().to_owned())],
                        t.connections_refused(l),
                    )
                })
                .collect(),
            wal_records_dropped: t.wal_records_dropped(),
            wal_writable: !t.wal_failing(),
            clamped: [
                (ClampBound::Low, t.clamped(ClampBound::Low)),
                (ClampBound::High, t.clamped(ClampBound::High)),
            ],
        }
    }
}

#[derive(Debug)]
struct LatencyFamilies {
    snapshot: Snapshot,
}

#[derive(Debug)]
struct SelfFamilies {
    m: SelfMetrics,
    series_active: usize,
    /// Families registered at run time: name, help, and `(labels, value)` samples.
    labelled: Vec<(String, String, Vec<LabelledSample>)>,
}

/// One sample of a family registered at run time: its labels and value.
type LabelledSample = (Vec<(String, String)>, u64);

type Labels = Vec<(&'static str, String)>;

/// Labels borrowed from the snapshot: tens of thousands of samples share them.
type SeriesLabels<'a> = Vec<(&'a str, &'a str)>;

impl LatencyFamilies {
    /// `service`, `endpoint` and the extra dimension labels of every series, in order.
    fn series_labels(&self) -> Vec<SeriesLabels<'_>> {
        self.snapshot
            .series
            .iter()
            .map(|s| {
                let mut labels = vec![("service", &*s.key.service), ("endpoint", &*s.key.endpoint)];
                for (name, value) in self.snapshot.dimension_labels.iter().zip(&s.key.dimensions) {
                    labels.push((name.as_str(), &**value));
                }
                labels
            })
            .collect()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

impl Collector for LatencyFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = &self.snapshot.series;
        let labels = self.series_labels();

        let mut family = encoder.encode_descriptor(
            "recs_latency_seconds",
            "Request latency, counted exactly at ingest into fixed buckets.",
            None,
            MetricType::Histogram,
        )?;
        for (s, l) in series.iter().zip(&labels) {
            let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_NANOS
                .iter()
                .zip(&s.totals.bucket_counts)
                .map(|(le, n)| (*le as f64 / 1e9, *n))
                .collect();
            buckets.push((
                f64::INFINITY,
                s.totals.bucket_counts[LATENCY_BUCKETS_NANOS.len()],
            ));
            family.encode_family(l)?.encode_histogram::<NoLabelSet>(
                s.totals.sum_nanos as f64 / 1e9,
                s.totals.requests(),
                &buckets,
                None,
            )?;
        }

        let mut family = encoder.encode_descriptor(
            "recs_requests",
            "Requests counted, by outcome (span status).",
            None,
            MetricType::Counter,
        )?;
        for (s, l) in series.iter().zip(&labels) {
            for (status, value) in [("ok", s.totals.ok), ("error", s.totals.errors)] {
                family
                    .encode_family(&(l.as_slice(), [("status", status)]))?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "recs_recommendations",
            "Recommendations served.",
            None,
            MetricType::Counter,
        )?;
        for (s, l) in series.iter().zip(&labels) {
            family
                .encode_family(l)?
                .encode_counter::<NoLabelSet, _, u64>(&s.totals.recommendations, None)?;
        }

        let mut family = encoder.encode_descriptor(
            "recmeter_latency_quantile_seconds",
            "Latency quantile from HDR histograms (nearest rank, ≤1% relative error), by window.",
            None,
            MetricType::Gauge,
        )?;
        let q_labels = QUANTILES.map(|q| q.to_string());
        for (s, l) in series.iter().zip(&labels) {
            for w in &s.windows {
                // `quantiles` holds QUANTILES, in order.
                for ((_, seconds), q_label) in w.quantiles.iter().zip(&q_labels) {
                    let extra = [("window", w.window.label()), ("q", q_label.as_str())];
                    family
                        .encode_family(&(l.as_slice(), extra))?
                        .encode_gauge(seconds)?;
                }
            }
        }

        Ok(())
    }
}

impl Collector for SelfFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.m;
        counter(
            &mut encoder,
            "recmeter_spans_received",
            "Spans received in accepted requests.",
            m.spans_received.iter().cloned(),
        )?;
        counter(
            &mut encoder,
            "recmeter_requests_rejected",
            "Whole requests refused, by reason.",
            m.requests_rejected.iter().cloned(),
        )?;
        counter(
            &mut encoder,
            "recmeter_spans_dropped",
            "Spans dropped inside accepted requests, by reason.",
            m.spans_dropped.iter().cloned(),
        )?;
        counter(
            &mut encoder,
            "recmeter_metric_points_received",
            "OTLP metric data points received in accepted requests.",
            m.metric_points_received.iter().cloned(),
        )?;
        counter(
            &mut encoder,
            "recmeter_metric_points_ignored",
            "Metric points accepted but not counted, by reason.",
            m.metric_points_ignored.iter().cloned(),
        )?;
        counter(
            &mut encoder,
            "recmeter_metric_points_dropped",
            "Metric points dropped inside accepted requests, by reason.",
            m.metric_points_dropped.iter().cloned(),
        )?;
        let streams = m.metric_streams_active as i64;
        encoder
            .encode_descriptor(
                "recmeter_metric_streams_active",
                "Cumulative metric streams held to turn their points into deltas.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&streams)?;
        let active = self.series_active as i64;
        encoder
            .encode_descriptor(
                "recmeter_series_active",
                "Series held in memory, the overflow series included.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&active)?;
        counter(
            &mut encoder,
            "recmeter_series_overflow",
            "Requests folded into an overflow series at a series limit, by service: named when at aggregator.max_series_per_service, else __other__.",
            m.series_overflow.iter().cloned(),
        )?;
        let mut family = encoder.encode_descriptor(
            "recmeter_series_limit",
            "Series limits: global is aggregator.max_series, service is aggregator.max_series_per_service.",
            None,
            MetricType::Gauge,
        )?;
        for (scope, n) in m.series_limits {
            family
                .encode_family(&vec![("scope", scope.to_owned())])?
                .encode_gauge(&(n as i64))?;
        }
        counter(
            &mut encoder,
            "recmeter_api_requests_rejected",
            "Requests to the API port (/metrics, /api/v1/*) refused, by reason.",
            [(vec![("reason", "auth".to_owned())], m.api_unauthorized)],
        )?;
        counter(
            &mut encoder,
            "recmeter_latency_clamped",
            "Latencies outside [1 µs, 1 h] raised or lowered to that bound.",
            m.clamped
                .iter()
                .map(|(b, n)| (vec![("bound", b.label().to_owned())], *n)),
        )?;
        encoder
            .encode_descriptor(
                "recmeter_wal_fsync_seconds",
                "Time each write-ahead log group commit took to write and fsync.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                m.wal_fsync.sum,
                m.wal_fsync.count,
                &m.wal_fsync.buckets,
                None,
            )?;
        // 0 until the first checkpoint completes, so `time() - …` alerts from start-up.
        let last = m.checkpoint_last_success_nanos as f64 / 1e9;
        encoder
            .encode_descriptor(
                "recmeter_checkpoint_last_success_timestamp_seconds",
                "When the last checkpoint to the object store completed (Unix seconds, recmeter's clock).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&last)?;
        counter(
            &mut encoder,
            "recmeter_compactions",
            "Compactions of the object store (retention, small files merged), by outcome.",
            ["ok", "error"]
                .into_iter()
                .zip(m.compactions)
                .map(|(outcome, n)| (vec![("outcome", outcome.to_owned())], n)),
        )?;
        let writable = i64::from(m.wal_writable);
        encoder
            .encode_descriptor(
                "recmeter_wal_writable",
                "1 while the write-ahead log can be written; 0 while writes fail (a full or failing disk), when ingest answers 503 and /readyz is not ready.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&writable)?;
        counter(
            &mut encoder,
            "recmeter_wal_records_dropped",
            "Records of acknowledged requests dropped at start-up from a corrupt write-ahead log (--wal-truncate-at-corruption).",
            [(Vec::new(), m.wal_records_dropped)],
        )?;
        let mut family = encoder.encode_descriptor(
            "recmeter_connections_open",
            "Connections open, per listener.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, n) in &m.connections_open {
            family.encode_family(labels)?.encode_gauge(&(*n as i64))?;
        }
        counter(
            &mut encoder,
            "recmeter_connections_refused",
            "Connections closed at once because the listener had its most open (max_connections).",
            m.connections_refused.iter().cloned(),
        )?;
        for (name, help, samples) in &self.labelled {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in samples {
                family
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        Ok(())
    }
}
