//! Series limits: the global cap (`aggregator.max_series`), a limit per service inside it
//! (`aggregator.max_series_per_service`), and the slots kept for services that have no series
//! yet (README "Series limits", ADR 015). Decided only for a series not held yet, so a request
//! of a held series pays nothing here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::AggregatorConfig;
use crate::record::{OVERFLOW, SeriesKey};
use crate::telemetry::Telemetry;

/// Where a new series' requests are counted ([`SeriesLimits::place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In a series of its own.
    Own,
    /// In its service's overflow series (held, or created now).
    ServiceOverflow { at_limit: bool },
    /// In the global overflow series.
    Global { at_limit: bool },
}

/// Series of one service.
#[derive(Debug, Default)]
struct ServiceSeries {
    /// Series of its endpoints (every series but its overflow series).
    endpoints: usize,
    /// Whether it has its overflow series.
    overflow: bool,
}

/// The limits, and the series each service holds.
#[derive(Debug)]
pub(crate) struct SeriesLimits {
    max_series: usize,
    per_service: usize,
    /// Slots past `max_series - reserve` go only to services with no series yet.
    reserve: usize,
    /// The global overflow series, which belongs to no service.
    overflow: SeriesKey,
    services: HashMap<Arc<str>, ServiceSeries>,
    /// Folded requests not yet counted in telemetry: a run of one `service` label, so a batch
    /// of one service takes the telemetry lock once.
    folded: Option<(Option<Arc<str>>, u64)>,
}

impl SeriesLimits {
    pub(crate) fn new(config: &AggregatorConfig, overflow: SeriesKey) -> Self {
        Self {
            max_series: config.max_series,
            per_service: config.max_series_per_service,
            reserve: config.series_reserve(),
            overflow,
            services: HashMap::new(),
            folded: None,
        }
    }

    /// Whether `held` series (the global overflow series aside) leave a slot open to any
    /// series, not only to a new service's first.
    pub(crate) fn open(&self, held: usize) -> bool {
        held < self.max_series - self.reserve
    }

    /// Where the requests of `key`, a series not held, are counted while `held` series (the
    /// global overflow series aside) are held. Series past `max_series - reserve` are only the
    /// first series of services that have none, and that series is the service's overflow
    /// series, which takes all of its endpoints; no series at all past `max_series`.
    pub(crate) fn place(&self, key: &SeriesKey, held: usize) -> Place {
        let open = self.open(held);
        match self.services.get(&key.service) {
            None if open => Place::Own,
            None if held < self.max_series => Place::ServiceOverflow { at_limit: false },
            None => Place::Global { at_limit: false },
            Some(s) => {
                let at_limit = s.endpoints >= self.per_service;
                if !at_limit && open {
                    Place::Own
                } else if s.overflow || open {
                    Place::ServiceOverflow { at_limit }
                } else {
                    Place::Global { at_limit }
                }
            }
        }
    }

    /// The overflow series of `service`.
    pub(crate) fn service_overflow(&self, service: &Arc<str>) -> SeriesKey {
        SeriesKey {
            service: service.clone(),
            ..self.overflow.clone()
        }
    }

    /// Whether `key` is its service's overflow series.
    fn is_service_overflow(&self, key: &SeriesKey) -> bool {
        &*key.endpoint == OVERFLOW && key.dimensions == self.overflow.dimensions
    }

    /// Notes that the series `key` was added to (`added`) or removed from the held series.
    pub(crate) fn note(&mut self, key: &SeriesKey, added: bool) {
        if *key == self.overflow {
            return;
        }
        let own_overflow = self.is_service_overflow(key);
        let of_service = self.services.entry(key.service.clone()).or_default();
        match (added, own_overflow) {
            (true, true) => of_service.overflow = true,
            (true, false) => of_service.endpoints += 1,
            (false, true) => of_service.overflow = false,
            (false, false) => of_service.endpoints = of_service.endpoints.saturating_sub(1),
        }
        if of_service.endpoints == 0 && !of_service.overflow {
            self.services.remove(&key.service);
        }
    }

    /// Whether some service holds as many endpoint series as its limit.
    pub(crate) fn any_service_at_limit(&self) -> bool {
        self.services
            .values()
            .any(|s| s.endpoints >= self.per_service)
    }

    /// Whether new series are refused where `key` would be: everywhere when `open` is false,
    /// else among the endpoint series of a service at its limit. Idle series there are
    /// forgotten to make room.
    pub(crate) fn crowded(&self, key: &SeriesKey, open: bool) -> bool {
        !open
            || (!self.is_service_overflow(key)
                && self
                    .services
                    .get(&key.service)
                    .is_some_and(|s| s.endpoints >= self.per_service))
    }

    /// Counts `n` requests of `service` folded into an overflow series, named when the service
    /// was at its limit (`at_limit`); [`SeriesLimits::flush`] hands them to `telemetry`.
    pub(crate) fn count_folded(
        &mut self,
        service: &Arc<str>,
        at_limit: bool,
        n: u64,
        telemetry: &Telemetry,
    ) {
        let label = at_limit.then(|| service.clone());
        match &mut self.folded {
            Some((run, sum)) if *run == label => *sum = sum.saturating_add(n),
            _ => {
                self.flush(telemetry);
                self.folded = Some((label, n));
            }
        }
    }

    /// Hands the folded requests counted so far to `telemetry`.
    pub(crate) fn flush(&mut self, telemetry: &Telemetry) {
        if let Some((label, n)) = self.folded.take() {
            telemetry.add_series_overflow(label.as_ref(), n);
        }
    }
}
