//! The billing families of their own: `recmeter_billing_last_scan_timestamp_seconds` and
//! `recmeter_billing_data_end_timestamp_seconds{provider}`. (`recmeter_billing_rows_total`
//! and `recmeter_billing_objects_total` are labelled counters of the self-telemetry.)

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use recmeter_aggregator::billing::BillingLedger;
use recmeter_aggregator::cost::ScanStatus;

use super::provider::{Part, Provider, ReadFuture};

/// The billing exposition provider.
#[derive(Debug)]
pub struct BillingProvider {
    pub status: Arc<ScanStatus>,
    pub ledger: Arc<BillingLedger>,
}

impl Provider for BillingProvider {
    fn read(&self) -> ReadFuture<'_> {
        Box::pin(async move {
            let data_end = self.ledger.data_end();
            Ok(Part {
                size_hint: 512 + 96 * data_end.len(),
                collector: Box::new(Billing {
                    last_scan: self.status.last_scan_nanos(),
                    data_end,
                }),
            })
        })
    }
}

#[derive(Debug)]
struct Billing {
    last_scan: Option<u64>,
    data_end: BTreeMap<String, i64>,
}

impl Collector for Billing {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Absent until the first scan since the start: a 0 would read as a scan in 1970.
        if let Some(at) = self.last_scan {
            encoder
                .encode_descriptor(
                    "recmeter_billing_last_scan_timestamp_seconds",
                    "When the billing source last finished listing and reading the billing bucket.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(at as f64 / 1e9))?;
        }
        if !self.data_end.is_empty() {
            let mut family = encoder.encode_descriptor(
                "recmeter_billing_data_end_timestamp_seconds",
                "The latest charge period end among the cost lines in force, per provider: how \
                 far each provider's bill reaches.",
                None,
                MetricType::Gauge,
            )?;
            // Provider names come from the bills: the first 16 by name are shown.
            for (provider, end) in self.data_end.iter().take(16) {
                family
                    .encode_family(&[("provider", provider.as_str())])?
                    .encode_gauge(&(*end as f64 / 1e9))?;
            }
        }
        Ok(())
    }
}
