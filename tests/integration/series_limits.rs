//! Series limits per service inside the global cap, on a real server: a cardinality attack
//! from one service over the SDK's exporters leaves other services their own series; at the
//! global cap a new service still gets a series of its own; folding survives `kill -9`.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_sdk::trace::SpanData;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::durability::wait_for;
use crate::exposition::promtool_check_metrics;
use crate::harness::{Exposition, Recmeter, Start, fake_start};
use crate::otlp::{assert_within, latency_nanos, nearest_rank};
use crate::spans::{Client, batches_of_1000, export, server_span};

/// Requests of `service` per endpoint label, ok and error together.
fn requests_by_endpoint(m: &Exposition, service: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in &m.samples {
        if s.name == "recs_requests_total"
            && s.labels.get("service").map(String::as_str) == Some(service)
        {
            *out.entry(s.labels["endpoint"].clone()).or_default() += s.value as u64;
        }
    }
    out
}

/// One span per endpoint `{prefix}{i}` for `i` in `range`, ending now, ids from `first_id`.
fn one_per_endpoint(prefix: &str, range: std::ops::Range<u64>, first_id: u64) -> Vec<SpanData> {
    let end = fake_start();
    range
        .map(|i| server_span(&format!("{prefix}{i}"), end, 3_000_000, false, first_id + i))
        .collect()
}

/// The 1m quantile gauges of `series` within 1% of the nearest rank of `sorted`.
fn assert_quantiles(m: &Exposition, series: [(&str, &str); 2], sorted: &[u64]) {
    for (q, num, den) in [
        ("0.5", 1, 2),
        ("0.9", 9, 10),
        ("0.99", 99, 100),
        ("0.999", 999, 1000),
    ] {
        let got = m
            .find(
                "recmeter_latency_quantile_seconds",
                &[series[0], series[1], ("window", "1m"), ("q", q)],
            )
            .unwrap_or_else(|| panic!("{series:?}: no 1m q={q} gauge"));
        assert_within(
            got,
            nearest_rank(sorted, num, den),
            0.01,
            &format!("{series:?} q={q}"),
        );
    }
}

#[test]
fn a_cardinality_attack_from_one_service_leaves_the_others_their_series() {
    let recmeter = Recmeter::start("");
    // Service A loses its route template: 12 000 distinct span names, 1% failing.
    let mut rng = StdRng::seed_from_u64(23);
    let end = fake_start();
    let mut a_folded = Vec::new();
    let mut a_folded_errors = 0;
    let attack: Vec<SpanData> = (0..12_000u64)
        .map(|i| {
            let d = latency_nanos(&mut rng);
            let error = rng.random::<f64>() < 0.01;
            if i >= 1_000 {
                a_folded.push(d);
                a_folded_errors += u64::from(error);
            }
            let ago = Duration::from_millis(rng.random_range(0..20_000));
            server_span(&format!("GET /item/{i}"), end - ago, d, error, i)
        })
        .collect();
    export(
        Client::HttpProto,
        &recmeter.addrs,
        "a",
        batches_of_1000(attack),
    );
    let m = recmeter.metrics();
    assert_eq!(m.value("recmeter_series_active", &[]), 1_001.0);

    // Then B (over gRPC) and C (over HTTP/JSON) send 2 000 spans each on 3 endpoints.
    let mut raw: BTreeMap<(&str, String), Vec<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for (service, client, first_id) in [
        ("b", Client::Grpc, 100_000),
        ("c", Client::HttpJson, 200_000),
    ] {
        let spans: Vec<SpanData> = (0..2_000u64)
            .map(|i| {
                let endpoint = format!("GET /v1/recs/{}", i % 3);
                let d = latency_nanos(&mut rng);
                let error = rng.random::<f64>() < 0.01;
                raw.entry((service, endpoint.clone())).or_default().push(d);
                *errors.entry((service, endpoint.clone())).or_default() += u64::from(error);
                let ago = Duration::from_millis(rng.random_range(0..20_000));
                server_span(&endpoint, end - ago, d, error, first_id + i)
            })
            .collect();
        export(client, &recmeter.addrs, service, batches_of_1000(spans));
    }

    let (status, _, body) = recmeter.get("/metrics", Some("text/plain;version=0.0.4"));
    assert_eq!(status, 200);
    let m = Exposition::parse(&body);
    for service in ["b", "c"] {
        let series = requests_by_endpoint(&m, service);
        let expected: BTreeMap<String, u64> = raw
            .iter()
            .filter(|((s, _), _)| *s == service)
            .map(|((_, e), values)| (e.clone(), values.len() as u64))
            .collect();
        assert_eq!(
            series, expected,
            "{service}: exactly its 3 series, exact counts"
        );
    }
    for ((service, endpoint), values) in &mut raw {
        let labels = [("service", *service), ("endpoint", endpoint.as_str())];
        assert_eq!(
            m.value(
                "recs_requests_total",
                &[labels[0], labels[1], ("status", "error")]
            ) as u64,
            errors[&(*service, endpoint.clone())],
            "{service} {endpoint}: errors"
        );
        values.sort_unstable();
        assert_quantiles(&m, labels, values);
    }

    // A: its first 1 000 endpoints and its own overflow series, with every request counted.
    let a = requests_by_endpoint(&m, "a");
    assert_eq!(a.len(), 1_000 + 1);
    assert_eq!(a["__overflow__"], 11_000);
    assert_eq!(a.values().sum::<u64>(), 12_000);
    let folded = [("service", "a"), ("endpoint", "__overflow__")];
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[folded[0], folded[1], ("status", "error")]
        ) as u64,
        a_folded_errors
    );
    a_folded.sort_unstable();
    assert_quantiles(&m, folded, &a_folded);
    assert_eq!(
        m.value(
            "recs_latency_seconds_count",
            &[("service", "a"), ("endpoint", "__overflow__")]
        ),
        11_000.0
    );
    assert_eq!(
        m.value("recmeter_series_overflow_total", &[("service", "a")]),
        11_000.0
    );
    assert_eq!(
        m.value(
            "recmeter_series_overflow_total",
            &[("service", "__other__")]
        ),
        0.0
    );
    assert_eq!(requests_by_endpoint(&m, "__overflow__").len(), 0);
    let active = m.value("recmeter_series_active", &[]);
    assert_eq!(active, 1_001.0 + 6.0);
    assert!(active <= m.value("recmeter_series_limit", &[("scope", "global")]) + 1.0);
    assert_eq!(
        m.value("recmeter_series_limit", &[("scope", "global")]),
        10_000.0
    );
    assert_eq!(
        m.value("recmeter_series_limit", &[("scope", "service")]),
        1_000.0
    );
    promtool_check_metrics(&body);
}

#[test]
fn at_the_global_cap_a_new_service_still_gets_a_series_of_its_own() {
    let recmeter = Recmeter::start("");
    // 11 services of 1 000 endpoints each: more than the 10 000 series of the cap.
    for s in 0..11u64 {
        let spans = one_per_endpoint("GET /route/", 0..1_000, s * 1_000);
        export(
            Client::HttpProto,
            &recmeter.addrs,
            &format!("svc-{s}"),
            batches_of_1000(spans),
        );
    }
    // The 9 990 slots open to any series are full: svc-0 to svc-8 hold their 1 000 endpoints,
    // svc-9 its first 990 (its last 10, with no series of their own to go to, are in the global
    // overflow series), and svc-10, a service with no series yet, took a slot kept for new
    // services: its overflow series, with all of its requests.
    let m = recmeter.metrics();
    let held: Vec<usize> = (0..11)
        .map(|s| requests_by_endpoint(&m, &format!("svc-{s}")).len())
        .collect();
    assert_eq!(
        held,
        [
            1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 990, 1
        ]
    );
    assert_eq!(
        requests_by_endpoint(&m, "svc-10"),
        BTreeMap::from([("__overflow__".to_owned(), 1_000)])
    );
    assert_eq!(requests_by_endpoint(&m, "__overflow__")["__overflow__"], 10);
    assert_eq!(m.value("recmeter_series_active", &[]), 9_992.0);

    // A 12th service starts sending: 500 requests on 50 endpoints.
    let spans: Vec<SpanData> = (0..500u64)
        .map(|i| {
            server_span(
                &format!("GET /new/{}", i % 50),
                fake_start(),
                4_000_000,
                false,
                50_000 + i,
            )
        })
        .collect();
    export(
        Client::Grpc,
        &recmeter.addrs,
        "newcomer",
        batches_of_1000(spans),
    );
    let m = recmeter.metrics();
    let newcomer = requests_by_endpoint(&m, "newcomer");
    assert_eq!(
        newcomer,
        BTreeMap::from([("__overflow__".to_owned(), 500)]),
        "a series of its own, its overflow series, with its exact total"
    );
    assert_eq!(m.value("recmeter_series_active", &[]), 9_993.0);
    // Every request of every service is counted somewhere.
    assert_eq!(m.sum("recs_requests_total"), 11_500.0);
}

#[test]
fn folded_endpoints_stay_folded_after_kill_9_and_count_once() {
    let config =
        "[aggregator]\nmax_series_per_service = 3\n[storage]\ncheckpoint_interval = \"1s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let start = |at| {
        Recmeter::start_with(Start {
            config,
            dir: Some(dir.path()),
            fake_clock: Some(at),
            ..Start::default()
        })
    };
    let recmeter = start(crate::harness::FAKE_START);
    // Stored by a checkpoint: e0..e2 get series, e3..e5 fold.
    export(
        Client::HttpProto,
        &recmeter.addrs,
        "a",
        vec![one_per_endpoint("e", 0..6, 0)],
    );
    // A checkpoint after them: one taken once the clock has moved on.
    recmeter.advance("60s");
    let after = (crate::harness::nanos(fake_start()) / 1_000_000_000 + 60) as f64;
    wait_for("a checkpoint", || {
        recmeter
            .metrics()
            .value("recmeter_checkpoint_last_success_timestamp_seconds", &[])
            >= after
    });
    // After it, in the WAL only: e6 and e7 fold, e0 counts again as itself. Checkpoints fail
    // from here on (before their manifest), so the restart replays these from the WAL.
    crate::durability::set_hook(&recmeter, "fail_checkpoint_after_files", true);
    export(
        Client::HttpProto,
        &recmeter.addrs,
        "a",
        vec![one_per_endpoint("e", 6..8, 10)],
    );
    export(
        Client::HttpProto,
        &recmeter.addrs,
        "a",
        vec![one_per_endpoint("e", 0..1, 20)],
    );
    recmeter.kill9();

    // Restarted where the clock had got to.
    let restarted = start("2026-03-02T10:01:30Z");
    let log = restarted.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    assert!(
        restored.contains("series=4") && restored.contains("wal_records=3"),
        "the checkpoint's 4 series, and the 3 records after it from the WAL: {restored}"
    );
    let expected = |overflow: u64| -> BTreeMap<String, u64> {
        [("e0", 2), ("e1", 1), ("e2", 1), ("__overflow__", overflow)]
            .into_iter()
            .map(|(e, n)| (e.to_owned(), n))
            .collect()
    };
    assert_eq!(requests_by_endpoint(&restarted.metrics(), "a"), expected(5));
    // Endpoints folded before the crash, and a new one, fold still.
    export(
        Client::HttpProto,
        &restarted.addrs,
        "a",
        vec![one_per_endpoint("e", 3..5, 30)],
    );
    export(
        Client::HttpProto,
        &restarted.addrs,
        "a",
        vec![one_per_endpoint("e", 9..10, 40)],
    );
    let m = restarted.metrics();
    assert_eq!(requests_by_endpoint(&m, "a"), expected(8));
    assert_eq!(m.value("recmeter_series_active", &[]), 4.0);
}
