//! recmeter's own ingest counters, shared by the collector (which counts) and the exporter
//! (which renders). Fixed label sets, so every series exists from start-up at zero; counter
//! families with labels known only at run time (per Kafka partition, say) are registered with
//! `Telemetry::labelled_counter`, their series appearing as they are first counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which bound a value was clamped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClampBound {
    Low,
    High,
}

impl ClampBound {
    /// The `bound` label value.
    pub const fn label(self) -> &'static str {
        match self {
            ClampBound::Low => "low",
            ClampBound::High => "high",
        }
    }
}

/// How data reached recmeter (`transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
    Kafka,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Grpc, Transport::Http, Transport::Kafka];

    pub const fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Kafka => "kafka",
        }
    }
}

/// Why a whole request was refused (`recmeter_requests_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Decode,
    UnsupportedMediaType,
    TooLarge,
    Auth,
    Backpressure,
    /// The write-ahead log could not be written (a full or failing disk).
    Storage,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Decode,
        RejectReason::UnsupportedMediaType,
        RejectReason::TooLarge,
        RejectReason::Auth,
        RejectReason::Backpressure,
        RejectReason::Storage,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::Decode => "decode",
            RejectReason::UnsupportedMediaType => "unsupported_media_type",
            RejectReason::TooLarge => "too_large",
            RejectReason::Auth => "auth",
            RejectReason::Backpressure => "backpressure",
            RejectReason::Storage => "storage",
        }
    }
}

/// Why a span inside an accepted request was dropped (`recmeter_spans_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    TooOld,
    Future,
    Invalid,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::TooOld, DropReason::Future, DropReason::Invalid];

    pub const fn label(self) -> &'static str {
        match self {
            DropReason::TooOld => "too_old",
            DropReason::Future => "future",
            DropReason::Invalid => "invalid",
        }
    }
}

/// Why a metric point was accepted but counted nothing
/// (`recmeter_metric_points_ignored_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// A gauge, summary, non-monotonic sum, or a latency metric that is not a histogram.
    Type,
    /// A histogram or sum that `[metrics]` does not name.
    Name,
    /// A latency histogram whose unit is not one of s, ms, us, ns.
    Unit,
    /// A point of a service that sends request spans.
    CoveredBySpans,
    /// A new cumulative stream past `metrics.max_streams`.
    StreamLimit,
}

impl IgnoreReason {
    pub const ALL: [IgnoreReason; 5] = [
        IgnoreReason::Type,
        IgnoreReason::Name,
        IgnoreReason::Unit,
        IgnoreReason::CoveredBySpans,
        IgnoreReason::StreamLimit,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            IgnoreReason::Type => "type",
            IgnoreReason::Name => "name",
            IgnoreReason::Unit => "unit",
            IgnoreReason::CoveredBySpans => "covered_by_spans",
            IgnoreReason::StreamLimit => "stream_limit",
        }
    }
}

/// A listening port (`listener` label of the connection metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    OtlpGrpc,
    OtlpHttp,
    Api,
}

impl Listener {
    pub const ALL: [Listener; 3] = [Listener::OtlpGrpc, Listener::OtlpHttp, Listener::Api];

    pub const fn label(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp_grpc",
            Listener::OtlpHttp => "otlp_http",
            Listener::Api => "api",
        }
    }
}

/// The counters. Cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Telemetry {
    spans_received: [AtomicU64; 3],
    requests_rejected: [[AtomicU64; 6]; 3],
    /// Connections open and refused at the connection limit, per listener.
    connections_open: [AtomicU64; 3],
    connections_refused: [AtomicU64; 3],
    /// Records of acknowledged requests dropped at start-up by `--wal-truncate-at-corruption`.
    wal_records_dropped: AtomicU64,
    /// Set while the WAL cannot be written; cleared by the next write or probe that succeeds.
    wal_failing: std::sync::atomic::AtomicBool,
    spans_dropped: [[AtomicU64; 3]; 3],
    metric_points_received: [AtomicU64; 3],
    metric_points_ignored: [[AtomicU64; 5]; 3],
    metric_points_dropped: [[AtomicU64; 3]; 3],
    metric_streams_active: AtomicU64,
    /// Requests folded into an overflow series, by service (see [`SeriesOverflow`]).
    series_overflow: parking_lot::Mutex<SeriesOverflow>,
    /// `aggregator.max_series` and `aggregator.max_series_per_service`.
    series_limits: [AtomicU64; 2],
    clamped: [AtomicU64; 2],
    api_unauthorized: AtomicU64,
    wal_fsync: Histogram,
    checkpoint_last_success_nanos: AtomicU64,
    /// Compactions that replaced files, and compactions that failed.
    compactions: [AtomicU64; 2],
    /// Counter families registered at run time, with labels of their own.
    labelled: parking_lot::RwLock<Vec<std::sync::Arc<LabelledCounter>>>,
}

/// A counter family whose label values are known only at run time (a Kafka partition, say),
/// rendered on `/metrics` after the fixed self-telemetry families
/// ([`Telemetry::labelled_counter`]). Keep its label values bounded: every value ever counted
/// stays a series until restart, as a counter must.
#[derive(Debug)]
pub struct LabelledCounter {
    name: String,
    help: String,
    label_names: Vec<String>,
    values: parking_lot::Mutex<std::collections::BTreeMap<Vec<String>, u64>>,
}

impl LabelledCounter {
    /// The family name, without `_total`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The family's help text.
    pub fn help(&self) -> &str {
        &self.help
    }

    /// Adds `n` to the counter of `label_values`, one per label name, in order.
    pub fn add(&self, label_values: &[&str], n: u64) {
        if label_values.len() != self.label_names.len() {
            debug_assert!(false, "{}: label values do not match its labels", self.name);
            return;
        }
        // Callers add per batch, not per event: the key is built each time.
        let key: Vec<String> = label_values.iter().map(|v| (*v).to_owned()).collect();
        let mut values = self.values.lock();
        let v = values.entry(key).or_default();
        *v = v.saturating_add(n);
    }

    /// Every counter, as `(labels, value)`, in label order.
    pub fn read(&self) -> Vec<(Vec<(String, String)>, u64)> {
        self.values
            .lock()
            .iter()
            .map(|(values, n)| {
                let labels = self.label_names.iter().cloned().zip(values.iter().cloned());
                (labels.collect(), *n)
            })
            .collect()
    }
}

/// Most services named in `recmeter_series_overflow_total`; requests of further services are
/// counted as `service="__other__"`.
pub const MAX_OVERFLOW_SERVICES: usize = 100;

/// The `service` label of requests folded by services not named.
pub const OTHER_SERVICES: &str = "__other__";

/// `recmeter_series_overflow_total`: requests folded into an overflow series, by the service
/// they came from when it was at `aggregator.max_series_per_service` (the offenders, at most
/// [`MAX_OVERFLOW_SERVICES`] of them), the rest together.
#[derive(Debug, Default)]
struct SeriesOverflow {
    by_service: std::collections::BTreeMap<std::sync::Arc<str>, u64>,
    other: u64,
}

/// Upper bounds of `recmeter_wal_fsync_seconds`, in seconds.
pub const WAL_FSYNC_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram of seconds, cheap to observe from any thread.
#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; WAL_FSYNC_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram as read for exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramReading {
    /// `(upper bound, count in that bucket alone)`, `+Inf` last (the encoder accumulates).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Telemetry {
    /// The counter family `name` (without `_total`) with labels `label_names`, registered now
    /// or by an earlier call with the same name (whose help and labels stand).
    pub fn labelled_counter(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
    ) -> std::sync::Arc<LabelledCounter> {
        let mut families = self.labelled.write();
        if let Some(c) = families.iter().find(|c| c.name == name) {
            debug_assert!(
                c.label_names == label_names,
                "{name} registered with other labels"
            );
            return c.clone();
        }
        let c = std::sync::Arc::new(LabelledCounter {
            name: name.to_owned(),
            help: help.to_owned(),
            label_names: label_names.iter().map(|l| (*l).to_owned()).collect(),
            values: parking_lot::Mutex::default(),
        });
        families.push(c.clone());
        c
    }

    /// The families registered with [`Telemetry::labelled_counter`], in registration order.
    pub fn labelled_counters(&self) -> Vec<std::sync::Arc<LabelledCounter>> {
        self.labelled.read().clone()
    }

    pub fn add_spans_received(&self, transport: Transport, n: u64) {
        self.spans_received[transport as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_request_rejected(&self, transport: Transport, reason: RejectReason) {
        self.requests_rejected[transport as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_spans_dropped(&self, transport: Transport, reason: DropReason, n: u64) {
        if n > 0 {
            self.spans_dropped[transport as usize][reason as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_metric_points_received(&self, transport: Transport, n: u64) {
        self.metric_points_received[transport as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_metric_points_ignored(&self, transport: Transport, reason: IgnoreReason, n: u64) {
        if n > 0 {
            self.metric_points_ignored[transport as usize][reason as usize]
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Points dropped inside an accepted request (invalid, too old, in the future).
    pub fn add_metric_points_dropped(&self, transport: Transport, reason: DropReason, n: u64) {
        if n > 0 {
            self.metric_points_dropped[transport as usize][reason as usize]
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Notes how many cumulative metric streams the aggregator holds.
    pub fn set_metric_streams_active(&self, n: usize) {
        self.metric_streams_active
            .store(n as u64, Ordering::Relaxed);
    }

    /// `recmeter_metric_streams_active`.
    pub fn metric_streams_active(&self) -> u64 {
        self.metric_streams_active.load(Ordering::Relaxed)
    }

    pub fn metric_points_received(&self, transport: Transport) -> u64 {
        self.metric_points_received[transport as usize].load(Ordering::Relaxed)
    }

    pub fn metric_points_ignored(&self, transport: Transport, reason: IgnoreReason) -> u64 {
        self.metric_points_ignored[transport as usize][reason as usize].load(Ordering::Relaxed)
    }

    pub fn metric_points_dropped(&self, transport: Transport, reason: DropReason) -> u64 {
        self.metric_points_dropped[transport as usize][reason as usize].load(Ordering::Relaxed)
    }

    /// Counts a request to the API port refused for a missing or wrong token.
    pub fn add_api_unauthorized(&self) {
        self.api_unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// API requests refused for a missing or wrong token.
    pub fn api_unauthorized(&self) -> u64 {
        self.api_unauthorized.load(Ordering::Relaxed)
    }

    /// Counts `n` requests folded into an overflow series: under `service` when one is given
    /// (a service at its own series limit) and fewer than [`MAX_OVERFLOW_SERVICES`] are named,
    /// else under `__other__`.
    pub fn add_series_overflow(&self, service: Option<&std::sync::Arc<str>>, n: u64) {
        // A service named like the catch-all label is counted in it (one series per label set).
        let service = service.filter(|s| s.as_ref() != OTHER_SERVICES);
        let mut counts = self.series_overflow.lock();
        let counts = &mut *counts;
        let slot = match service {
            Some(s) if counts.by_service.contains_key(s) => counts.by_service.get_mut(s),
            Some(s) if counts.by_service.len() < MAX_OVERFLOW_SERVICES => {
                Some(counts.by_service.entry(s.clone()).or_default())
            }
            _ => None,
        };
        let slot = slot.unwrap_or(&mut counts.other);
        *slot = slot.saturating_add(n);
    }

    /// Notes `aggregator.max_series` and `aggregator.max_series_per_service`.
    pub fn set_series_limits(&self, global: usize, per_service: usize) {
        self.series_limits[0].store(global as u64, Ordering::Relaxed);
        self.series_limits[1].store(per_service as u64, Ordering::Relaxed);
    }

    /// `recmeter_series_limit{scope="global"|"service"}`.
    pub fn series_limits(&self) -> [(&'static str, u64); 2] {
        [
            ("global", self.series_limits[0].load(Ordering::Relaxed)),
            ("service", self.series_limits[1].load(Ordering::Relaxed)),
        ]
    }

    pub fn add_clamped_n(&self, bound: ClampBound, n: u64) {
        let i = match bound {
            ClampBound::Low => 0,
            ClampBound::High => 1,
        };
        self.clamped[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Records the duration of one WAL fsync.
    pub fn observe_wal_fsync(&self, seconds: f64) {
        let h = &self.wal_fsync;
        let i = WAL_FSYNC_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(WAL_FSYNC_BUCKETS.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// `recmeter_wal_fsync_seconds`.
    pub fn wal_fsync(&self) -> HistogramReading {
        let h = &self.wal_fsync;
        let buckets: Vec<(f64, u64)> = WAL_FSYNC_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&h.buckets)
            .map(|(le, n)| (le, n.load(Ordering::Relaxed)))
            .collect();
        HistogramReading {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum: h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Notes a completed checkpoint taken at `unix_nanos` (recmeter's clock).
    pub fn checkpoint_succeeded(&self, unix_nanos: u64) {
        self.checkpoint_last_success_nanos
            .store(unix_nanos, Ordering::Relaxed);
    }

    /// Notes a compaction that replaced files.
    pub fn compaction_succeeded(&self) {
        self.compactions[0].fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a compaction that failed (the files in force are unchanged).
    pub fn compaction_failed(&self) {
        self.compactions[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Compactions that replaced files, and compactions that failed.
    pub fn compactions(&self) -> [u64; 2] {
        self.compactions
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }

    /// When the last checkpoint completed, Unix nanoseconds; 0 before the first.
    pub fn checkpoint_last_success_nanos(&self) -> u64 {
        self.checkpoint_last_success_nanos.load(Ordering::Relaxed)
    }

    /// Notes a connection accepted on `listener`; [`Telemetry::connection_closed`] when it ends.
    pub fn connection_opened(&self, listener: Listener) {
        self.connections_open[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, listener: Listener) {
        self.connections_open[listener as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Notes a connection refused because `listener` had its most open.
    pub fn connection_refused(&self, listener: Listener) {
        self.connections_refused[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections_open(&self, listener: Listener) -> u64 {
        self.connections_open[listener as usize].load(Ordering::Relaxed)
    }

    pub fn connections_refused(&self, listener: Listener) -> u64 {
        self.connections_refused[listener as usize].load(Ordering::Relaxed)
    }

    /// Counts records dropped from a corrupt WAL at start-up.
    pub fn add_wal_records_dropped(&self, n: u64) {
        self.wal_records_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn wal_records_dropped(&self) -> u64 {
        self.wal_records_dropped.load(Ordering::Relaxed)
    }

    /// Notes whether the last WAL write (or probe) failed.
    pub fn set_wal_failing(&self, failing: bool) {
        self.wal_failing.store(failing, Ordering::Release);
    }

    /// Whether the WAL cannot be written now: `/readyz` is not ready meanwhile.
    pub fn wal_failing(&self) -> bool {
        self.wal_failing.load(Ordering::Acquire)
    }

    pub fn spans_received(&self, transport: Transport) -> u64 {
        self.spans_received[transport as usize].load(Ordering::Relaxed)
    }

    pub fn requests_rejected(&self, transport: Transport, reason: RejectReason) -> u64 {
        self.requests_rejected[transport as usize][reason as usize].load(Ordering::Relaxed)
    }

    pub fn spans_dropped(&self, transport: Transport, reason: DropReason) -> u64 {
        self.spans_dropped[transport as usize][reason as usize].load(Ordering::Relaxed)
    }

    /// `recmeter_series_overflow_total` by `service` label: the named services in order, then
    /// `__other__` (always present).
    pub fn series_overflow(&self) -> Vec<(String, u64)> {
        let counts = self.series_overflow.lock();
        counts
            .by_service
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .chain([(OTHER_SERVICES.to_owned(), counts.other)])
            .collect()
    }

    /// Requests folded into overflow series, every service together.
    pub fn series_overflow_total(&self) -> u64 {
        let counts = self.series_overflow.lock();
        counts.by_service.values().sum::<u64>() + counts.other
    }

    pub fn clamped(&self, bound: ClampBound) -> u64 {
        let i = match bound {
            ClampBound::Low => 0,
            ClampBound::High => 1,
        };
        self.clamped[i].load(Ordering::Relaxed)
    }
}
