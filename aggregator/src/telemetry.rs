//! recmeter's own ingest counters, shared by the collector (which counts) and the exporter
//! (which renders). Fixed label sets, so every series exists from start-up at zero.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::ClampBound;

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
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Decode,
        RejectReason::UnsupportedMediaType,
        RejectReason::TooLarge,
        RejectReason::Auth,
        RejectReason::Backpressure,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::Decode => "decode",
            RejectReason::UnsupportedMediaType => "unsupported_media_type",
            RejectReason::TooLarge => "too_large",
            RejectReason::Auth => "auth",
            RejectReason::Backpressure => "backpressure",
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

/// The counters. Cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Telemetry {
    spans_received: [AtomicU64; 3],
    requests_rejected: [[AtomicU64; 5]; 3],
    spans_dropped: [[AtomicU64; 3]; 3],
    series_overflow: AtomicU64,
    clamped: [AtomicU64; 2],
    api_unauthorized: AtomicU64,
}

impl Telemetry {
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

    /// Counts a request to the API port refused for a missing or wrong token.
    pub fn add_api_unauthorized(&self) {
        self.api_unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// API requests refused for a missing or wrong token.
    pub fn api_unauthorized(&self) -> u64 {
        self.api_unauthorized.load(Ordering::Relaxed)
    }

    pub(crate) fn add_series_overflow(&self, n: u64) {
        self.series_overflow.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_clamped(&self, bound: ClampBound) {
        let i = match bound {
            ClampBound::Low => 0,
            ClampBound::High => 1,
        };
        self.clamped[i].fetch_add(1, Ordering::Relaxed);
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

    pub fn series_overflow(&self) -> u64 {
        self.series_overflow.load(Ordering::Relaxed)
    }

    pub fn clamped(&self, bound: ClampBound) -> u64 {
        let i = match bound {
            ClampBound::Low => 0,
            ClampBound::High => 1,
        };
        self.clamped[i].load(Ordering::Relaxed)
    }
}
