//! The PagerDuty family of its own: `recmeter_pagerduty_outbox_pending`, the events waiting
//! for delivery. (`recmeter_pagerduty_events_total{action,outcome}` is a labelled counter of
//! the self-telemetry.)

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::provider::{Part, Provider, ReadFuture};
use crate::pagerduty::Outbox;

/// The PagerDuty exposition provider.
#[derive(Debug)]
pub struct PagerDutyProvider {
    pub outbox: Arc<Outbox>,
}

impl Provider for PagerDutyProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            Ok(Part {
                collector: Box::new(Pending(self.outbox.pending_len())),
                size_hint: 256,
            })
        })
    }
}

#[derive(Debug)]
struct Pending(usize);

impl Collector for Pending {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_descriptor(
                "recmeter_pagerduty_outbox_pending",
                "SLO alert transitions waiting in the outbox for PagerDuty to accept them.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(self.0 as i64))
    }
}
