//! The demo's synthetic recommendation platform: its services' endpoints, with their
//! latency, error and recommendation profiles, which the live workload (`demo`) and the seeded
//! history (`demo_history`) both follow.

use rand::Rng;

/// One endpoint of the synthetic platform.
pub(crate) struct Endpoint {
    pub(crate) name: &'static str,
    /// Median latency, seconds.
    pub(crate) median: f64,
    /// Log-normal shape: larger is a heavier tail.
    pub(crate) sigma: f64,
    pub(crate) error_rate: f64,
    /// Recommendations per request (`recs.count`), or none for endpoints that serve none.
    pub(crate) recs: Option<(i64, i64)>,
}

pub(crate) const RECS_API: [Endpoint; 3] = [
    Endpoint {
        name: "GET /v1/recommendations/personalized",
        median: 0.045,
        sigma: 0.55,
        error_rate: 0.0004,
        recs: Some((10, 50)),
    },
    Endpoint {
        name: "GET /v1/recommendations/trending",
        median: 0.012,
        sigma: 0.35,
        error_rate: 0.0001,
        recs: Some((20, 20)),
    },
    Endpoint {
        name: "POST /v1/feedback",
        median: 0.008,
        sigma: 0.4,
        error_rate: 0.0002,
        recs: None,
    },
];

pub(crate) const RANKER: [Endpoint; 1] = [Endpoint {
    name: "ranker.Rank/Score",
    median: 0.025,
    sigma: 0.6,
    error_rate: 0.0005,
    recs: Some((0, 0)),
}];

/// A log-normal sample with the given median, by Box–Muller.
pub(crate) fn log_normal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    median * (sigma * z).exp()
}
