//! The demo's history: spans older than `ingest.max_span_age` cannot be sent, so a fresh demo
//! would have no complete hour, let alone a day. Before it reports ready, `recmeter demo` seeds
//! 15 days of hour rows for its synthetic services (through the aggregator, in the rollups'
//! format; the first checkpoint stores them), and writes FOCUS lines for the same hours up to
//! the end of yesterday (UTC) into its billing bucket: EC2 tagged by component with a spot
//! share, untagged EC2, S3 and data transfer shared by requests, and CloudWatch that no rule
//! takes, priced so that cost per recommendation sits near the $0.001 target. 15 days hold at
//! least one whole ISO week whatever the day, so every cost period, the SLO windows up to 7
//! days, and the dashboards have numbers seconds after start. A store that holds history
//! already gets nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use recmeter_aggregator::SeriesKey;
use recmeter_aggregator::state::{SeededHour, SharedState, lock};
use recmeter_aggregator::unit_cost::CostConfig;
use recmeter_aggregator::unit_cost::config::{Component, Rule};

use crate::demo_platform::{Endpoint, RANKER, RECS_API, log_normal};

/// Days of history seeded.
pub const DAYS: u64 = 15;

/// Requests per hour each endpoint gets at the busiest hour (the live workload's rate).
const REQUESTS_PER_HOUR: f64 = 240_000.0;

/// Latency values per seeded hour row: each carries an equal share of the hour's requests.
const SAMPLES: u64 = 200;

/// USD per recommendation the bill is priced at, before each hour's noise.
const UNIT_PRICE: f64 = 0.00092;

/// The demo bill's account.
const ACCOUNT: &str = "210987654321";

/// The demo's billing bucket when `billing.url` is not set: beside the store, not in it.
pub const BILLING_DIR: &str = "./demo-billing";

/// What was seeded.
#[derive(Debug, Default)]
pub struct Seeded {
    pub rows: usize,
    pub recommendations: u64,
    pub lines: usize,
    /// The bill file, where one was written.
    pub bill: Option<PathBuf>,
}

/// The demo's `[cost]`: two components, `recs-api` and `ranker`; EC2 goes to the component
/// its `component` tag names (shared without it), S3 and data transfer are shared by
/// requests, and anything else (CloudWatch) is unallocated.
pub fn cost_config() -> CostConfig {
    let component = |name: &str| Component {
        name: name.to_owned(),
        services: vec![name.to_owned()],
        endpoints: vec!["*".to_owned()],
        ratio: None,
    };
    let rule = |service: &str| Rule {
        service: Some(service.to_owned()),
        ..Rule::default()
    };
    CostConfig {
        components: vec![component("recs-api"), component("ranker")],
        allocation: vec![
            Rule {
                component_tag: Some("component".to_owned()),
                ..rule("Amazon Elastic Compute Cloud - Compute")
            },
            Rule {
                shared: true,
                ..rule("Amazon Simple Storage Service")
            },
            Rule {
                shared: true,
                ..rule("AWS Data Transfer")
            },
        ],
        ..CostConfig::default()
    }
}

/// The share of the busiest hour's traffic an hour of the day (UTC) gets.
fn diurnal(hour_of_day: u64) -> f64 {
    let phase = (hour_of_day as f64 - 15.0) / 24.0 * std::f64::consts::TAU;
    0.65 + 0.35 * phase.cos()
}

/// Seeds the hours from `DAYS` days before `now`'s hour up to it into `state`, and writes the
/// bill of the hours up to the start of `now`'s UTC day into `bucket` (a local directory; `None`
/// writes no bill).
pub fn seed(
    state: &SharedState,
    bucket: Option<&Path>,
    now: SystemTime,
) -> std::io::Result<Seeded> {
    let now_hours = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 3_600;
    let first = now_hours.saturating_sub(DAYS * 24);
    let dimensions = lock(state).dimension_labels().len();
    let mut rng = rand::rng();
    let mut hours = Vec::new();
    // Recommendations and requests per hour and service, for the bill.
    let mut per_hour: Vec<(u64, f64)> = Vec::new();
    // One bad hour three days back, so the error budget has moved.
    let incident = now_hours.saturating_sub(3 * 24 + 5);
    let services: [(&str, &[Endpoint]); 2] = [("recs-api", &RECS_API), ("ranker", &RANKER)];
    for hour in first..now_hours {
        let load = diurnal(hour % 24) * rng.random_range(0.93..1.07);
        let mut recs_in_hour = 0u64;
        for (service, endpoints) in services {
            for endpoint in endpoints {
                let requests = (REQUESTS_PER_HOUR * load) as u64;
                let per_sample = requests / SAMPLES;
                let latencies: Vec<(u64, u64)> = (0..SAMPLES)
                    .map(|_| {
                        let s = log_normal(&mut rng, endpoint.median, endpoint.sigma).min(30.0);
                        ((s * 1e9) as u64, per_sample)
                    })
                    .collect();
                let requests = per_sample * SAMPLES;
                let error_rate = if hour == incident && endpoint.recs.is_some() {
                    0.02
                } else {
                    endpoint.error_rate
                };
                let recommendations = endpoint
                    .recs
                    .map_or(0, |(lo, hi)| requests * (lo + hi).unsigned_abs() / 2);
                recs_in_hour += recommendations;
                hours.push(SeededHour {
                    key: SeriesKey {
                        service: Arc::from(service),
                        endpoint: Arc::from(endpoint.name),
                        dimensions: vec![Arc::from(""); dimensions],
                    },
                    hour_minute: hour * 60,
                    latencies,
                    errors: (requests as f64 * error_rate).round() as u64,
                    recommendations,
                });
            }
        }
        per_hour.push((hour, recs_in_hour as f64));
    }
    let mut seeded = Seeded {
        recommendations: hours.iter().map(|h| h.recommendations).sum(),
        ..Seeded::default()
    };
    seeded.rows = lock(state)
        .seed_hours(hours)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(bucket) = bucket {
        let today = now_hours - now_hours % 24;
        let billed: Vec<(u64, f64)> = per_hour.into_iter().filter(|(h, _)| *h < today).collect();
        let (text, lines) = focus_bill(&billed, &mut rng);
        let dir = bucket.join("recmeter-demo");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("focus.csv");
        std::fs::write(&path, text)?;
        seeded.lines = lines;
        seeded.bill = Some(path);
    }
    Ok(seeded)
}

/// RFC 3339 of `hour` (hours since the epoch).
fn at(hour: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(hour * 3_600)).to_string()
}

/// The FOCUS lines of `hours` (hour, recommendations served), and how many.
fn focus_bill(hours: &[(u64, f64)], rng: &mut impl Rng) -> (String, usize) {
    let mut text = String::from(
        "BillingAccountId,BillingCurrency,BillingPeriodStart,ChargePeriodStart,ChargePeriodEnd,\
         BilledCost,EffectiveCost,ListCost,ProviderName,ServiceName,ServiceCategory,\
         PricingCategory,ResourceId,RegionId,Tags\n",
    );
    let mut lines = 0;
    // (service, category, pricing, share of the hour's cost, component tag, resource)
    let items: [(&str, &str, &str, f64, &str, &str); 7] = [
        (
            "Amazon Elastic Compute Cloud - Compute",
            "Compute",
            "Dynamic",
            0.24,
            "ranker",
            "i-ranker-spot",
        ),
        (
            "Amazon Elastic Compute Cloud - Compute",
            "Compute",
            "Standard",
            0.16,
            "ranker",
            "i-ranker",
        ),
        (
            "Amazon Elastic Compute Cloud - Compute",
            "Compute",
            "Standard",
            0.30,
            "recs-api",
            "i-recs-api",
        ),
        (
            "Amazon Elastic Compute Cloud - Compute",
            "Compute",
            "Standard",
            0.08,
            "",
            "i-batch",
        ),
        (
            "Amazon Simple Storage Service",
            "Storage",
            "Standard",
            0.10,
            "",
            "recs-features",
        ),
        (
            "AWS Data Transfer",
            "Networking",
            "Standard",
            0.07,
            "",
            "transfer",
        ),
        (
            "Amazon CloudWatch",
            "Management and Governance",
            "Standard",
            0.05,
            "",
            "logs",
        ),
    ];
    for &(hour, recommendations) in hours {
        let month = {
            let date = at(hour);
            format!("{}-01T00:00:00Z", &date[..7])
        };
        let total = recommendations * UNIT_PRICE * rng.random_range(0.95..1.05);
        for (service, category, pricing, share, component, resource) in items {
            let effective = total * share;
            // Spot lists at about three times its price.
            let list = if pricing == "Dynamic" {
                effective * 3.0
            } else {
                effective
            };
            let tags = if component.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{\"\"component\"\": \"\"{component}\"\"}}")
            };
            let _ = writeln!(
                text,
                "{ACCOUNT},USD,{month},{start},{end},{effective:.6},{effective:.6},{list:.6},AWS,\
                 {service},{category},{pricing},{resource},us-east-1,\"{tags}\"",
                start = at(hour),
                end = at(hour + 1),
            );
            lines += 1;
        }
    }
    (text, lines)
}
