//! PagerDuty delivery end to end, against the Events API double under the fake clock: one
//! trigger and one resolve per alert from an error burst sent through the OpenTelemetry SDK,
//! an outage retried with backoff, `kill -9` with events waiting and between a 202 and its
//! log entry, a refused routing key, the rate limit with 300 transitions, secrets out of the
//! debug log, and `recmeter pagerduty test`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::durability::{set_hook, wait_for};
use crate::harness::{Recmeter, Start, binary, fake_start};
use crate::pagerduty_double::FakePagerDuty;
use crate::spans::{Client, export, server_span};

const KEY: &str = "R0123456789abcdef0123456789abcde";
const OTHER_KEY: &str = "T0123456789abcdef0123456789abcde";

/// One objective with a short alert table, so a burst pages and tickets within minutes.
const CHECKOUT: &str = r#"
[[slo.objectives]]
name = "checkout"
kind = "availability"
objective = 0.9995
alerts = [
  { severity = "page", long = "30m", short = "5m", burn_rate = 14.4 },
  { severity = "ticket", long = "1h", short = "30m", burn_rate = 3.0 },
]
"#;

fn config(fake: &FakePagerDuty, extra: &str, objectives: &str) -> String {
    format!(
        r#"
[service]
instance = "rm-test-1"
shutdown_timeout = "3s"
[storage]
checkpoint_interval = "5m"
[pagerduty]
url = "{url}"
links = ["https://grafana.example/d/recmeter-slo"]
{extra}
[slo]
no_data_after = "2h"
{objectives}
"#,
        url = fake.url
    )
}

fn start(config: &str, dir: &Path, at: Duration) -> Recmeter {
    start_keyed(config, dir, at, Some(KEY))
}

/// Starts with the fake clock at `at` past the test's start, and `key` as the routing key
/// (`None`: PagerDuty off).
fn start_keyed(config: &str, dir: &Path, at: Duration, key: Option<&str>) -> Recmeter {
    let at = humantime::format_rfc3339(fake_start() + at).to_string();
    Recmeter::start_with(Start {
        config,
        dir: Some(dir),
        fake_clock: Some(&at),
        env: key
            .map(|k| vec![("RECMETER_PAGERDUTY__ROUTING_KEY", k)])
            .unwrap_or_default(),
        ..Start::default()
    })
}

/// 100 requests to `recs`, half failed, ending now (the fake clock's start).
fn burst(recmeter: &Recmeter) {
    let end = fake_start();
    let spans = (0..100)
        .map(|i| server_span("GET /recs", end, 10_000_000, i % 2 == 0, i))
        .collect();
    export(Client::HttpProto, &recmeter.addrs, "recs", vec![spans]);
}

fn page(action: &str) -> (String, String) {
    (
        action.to_owned(),
        "recmeter/rm-test-1/checkout/page".to_owned(),
    )
}

fn ticket(action: &str) -> (String, String) {
    (
        action.to_owned(),
        "recmeter/rm-test-1/checkout/ticket".to_owned(),
    )
}

/// The page and the ticket triggered, then each resolved, in the order the burst makes.
fn both_triggered_then_resolved() -> [(String, String); 4] {
    [
        page("trigger"),
        ticket("trigger"),
        page("resolve"),
        ticket("resolve"),
    ]
}

fn events_total(recmeter: &Recmeter, action: &str, outcome: &str) -> f64 {
    recmeter.metrics().value(
        "recmeter_pagerduty_events_total",
        &[("action", action), ("outcome", outcome)],
    )
}

fn pending(recmeter: &Recmeter) -> f64 {
    recmeter
        .metrics()
        .value("recmeter_pagerduty_outbox_pending", &[])
}

/// Triggers then resolves, one each per alert, in order per dedup key; the schema holds; the
/// trigger carries the numbers; the routing key is in no log line with debug logging on.
#[test]
fn an_error_burst_triggers_each_alert_once_then_resolves_each_once() {
    let fake = FakePagerDuty::start(&[KEY]);
    let dir = tempfile::tempdir().unwrap();
    let recmeter = start(
        &config(&fake, "", &format!("[log]\nlevel = \"debug\"\n{CHECKOUT}")),
        dir.path(),
        Duration::ZERO,
    );
    burst(&recmeter);
    recmeter.advance("60s");
    assert_eq!(fake.accepted_keys(), [page("trigger"), ticket("trigger")]);
    for _ in 0..4 {
        recmeter.advance("60s");
    }
    recmeter.advance("10m");
    assert_eq!(
        fake.accepted_keys(),
        [page("trigger"), ticket("trigger"), page("resolve")]
    );
    recmeter.advance("40m");
    assert_eq!(fake.accepted_keys(), both_triggered_then_resolved());
    fake.assert_all_valid();
    let trigger = &fake.accepted()[0];
    assert_eq!(trigger["routing_key"], KEY);
    let summary = trigger["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("checkout availability: burning ")
            && summary.contains("budget (30m)")
            // 50 bad of the 100 requests of 30 days: the budget is spent 1 000 times over.
            && summary.contains("burning 1000.0× budget (30m), 1000.0× (5m) against 14.4×")
            && summary.contains("30-day budget overspent by 99900%"),
        "{summary}"
    );
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(fake.accepted()[1]["payload"]["severity"], "warning");
    assert_eq!(trigger["payload"]["class"], "availability");
    assert_eq!(trigger["payload"]["group"], "checkout");
    assert!(
        trigger["payload"]["source"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(trigger["payload"]["custom_details"]["objective"], 0.9995);
    for w in ["5m", "30m", "1h", "30d"] {
        let burn = &trigger["payload"]["custom_details"]["burn_rates"][w];
        assert!(burn.is_number(), "{w}: {trigger}");
    }
    assert_eq!(
        trigger["links"][0]["href"],
        "https://grafana.example/d/recmeter-slo"
    );
    assert_eq!(fake.attempts().len(), 4, "each went once");
    assert_eq!(events_total(&recmeter, "trigger", "accepted"), 2.0);
    assert_eq!(events_total(&recmeter, "resolve", "accepted"), 2.0);
    assert_eq!(events_total(&recmeter, "trigger", "retried"), 0.0);
    assert_eq!(pending(&recmeter), 0.0);
    let (status, _, body) = recmeter.get("/metrics", None);
    assert_eq!(status, 200);
    crate::exposition::promtool_check_metrics(&body);
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("DEBUG"), "debug logging is on");
    assert!(!log.contains(KEY), "the routing key is logged:\n{log}");
}

/// The double answers 503 six times: every transition arrives, in order, and the 503s count
/// as `retried`, never as deliveries.
#[test]
fn an_outage_is_retried_with_backoff_and_every_transition_arrives_in_order() {
    let fake = FakePagerDuty::start(&[KEY]);
    fake.set_unavailable(6);
    let dir = tempfile::tempdir().unwrap();
    let recmeter = start(
        &config(&fake, "", &format!("[log]\nlevel = \"debug\"\n{CHECKOUT}")),
        dir.path(),
        Duration::ZERO,
    );
    burst(&recmeter);
    recmeter.advance("60s");
    assert_eq!(fake.attempts().len(), 1);
    assert_eq!(
        pending(&recmeter),
        2.0,
        "the ticket waits behind the page's failing trigger on the same routing key"
    );
    for _ in 1..50 {
        recmeter.advance("60s");
    }
    let statuses: Vec<u16> = fake.attempts().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [503, 503, 503, 503, 503, 503, 202, 202, 202, 202]);
    assert_eq!(fake.accepted_keys(), both_triggered_then_resolved());
    fake.assert_all_valid();
    assert_eq!(events_total(&recmeter, "trigger", "retried"), 6.0);
    assert_eq!(events_total(&recmeter, "trigger", "accepted"), 2.0);
    assert_eq!(events_total(&recmeter, "resolve", "accepted"), 2.0);
    assert_eq!(pending(&recmeter), 0.0);
    let log = recmeter.log();
    assert_eq!(
        log.matches("PagerDuty did not take an event; retrying with backoff.")
            .count(),
        1,
        "said once when it starts failing:\n{log}"
    );
    assert!(log.contains("PagerDuty accepts events again."), "{log}");
    assert!(!log.contains(KEY), "the routing key is logged:\n{log}");
}

/// A crash between a 202 and its log entry repeats that trigger, with the same dedup key,
/// and nothing else; waiting events survive `kill -9`; SIGTERM leaves what PagerDuty does not
/// take for the next start; an objective removed while firing gets its resolve.
#[test]
fn the_outbox_survives_kill9_and_restarts() {
    let fake = FakePagerDuty::start(&[KEY]);
    let dir = tempfile::tempdir().unwrap();
    let checkout = config(&fake, "", CHECKOUT);
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let recmeter = start(&checkout, dir.path(), Duration::ZERO);
    set_hook(&recmeter, "hold_pagerduty_receipt", true);
    burst(&recmeter);
    let clock = recmeter.api_url("/-/test/clock");
    let advancing = std::thread::spawn(move || {
        // Answered 503 after the settle patience, or cut by the kill: either way ignored.
        let _ = reqwest::blocking::Client::new()
            .post(clock)
            .header("Content-Type", "application/json")
            .body(r#"{"advance": "60s"}"#)
            .send();
    });
    wait_for("the page's trigger", || !fake.accepted().is_empty());
    recmeter.kill9();
    let _ = advancing.join();
    assert_eq!(fake.accepted_keys(), [page("trigger")]);
    let recmeter = start(&checkout, dir.path(), minutes(2));
    wait_for("the triggers after the restart", || {
        fake.accepted().len() >= 3
    });
    recmeter.advance("1s");
    assert_eq!(
        fake.accepted_keys(),
        [page("trigger"), page("trigger"), ticket("trigger")],
        "only the trigger whose receipt was not logged goes again"
    );
    assert_eq!(pending(&recmeter), 0.0);

    // Waiting through an outage, then `kill -9`: delivered after the restart.
    fake.set_unavailable(1_000);
    recmeter.advance("10m");
    assert_eq!(pending(&recmeter), 1.0, "the page's resolve waits");
    recmeter.kill9();
    fake.set_unavailable(0);
    let recmeter = start(&checkout, dir.path(), minutes(13));
    wait_for("the resolve after the restart", || {
        fake.accepted().len() >= 4
    });
    recmeter.advance("1s");
    assert_eq!(fake.accepted_keys()[3], page("resolve"));
    assert_eq!(pending(&recmeter), 0.0);

    // SIGTERM with PagerDuty down: shutdown stops within its timeout and the next start
    // delivers. The restart drops the objective, whose firing ticket then resolves.
    fake.set_unavailable(1_000);
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
    // Its successor covers other series, so it fires nothing itself.
    let renamed = CHECKOUT.replace(
        "name = \"checkout\"",
        "name = \"search\"\nservices = [\"search\"]",
    );
    let recmeter = start(&config(&fake, "", &renamed), dir.path(), minutes(14));
    wait_for("the resolve's first attempt", || {
        fake.attempts().last().is_some_and(|a| a.status == 503)
    });
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("PagerDuty events still wait in the outbox at shutdown"),
        "{log}"
    );
    fake.set_unavailable(0);
    let recmeter = start(&config(&fake, "", &renamed), dir.path(), minutes(15));
    wait_for("the removed objective's resolve", || {
        fake.accepted().len() >= 5
    });
    recmeter.advance("1s");
    assert_eq!(fake.accepted_keys()[4], ticket("resolve"));
    assert_eq!(fake.accepted().len(), 5);
    fake.assert_all_valid();
}

/// Alerts that fire or resolve while PagerDuty is off reach it at the next start with it on:
/// PagerDuty ends up told what recmeter's alerts are, once.
#[test]
fn alerts_that_changed_while_pagerduty_was_off_reach_it_when_it_is_on() {
    let fake = FakePagerDuty::start(&[KEY]);
    let dir = tempfile::tempdir().unwrap();
    let text = config(&fake, "", CHECKOUT);
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let off = start_keyed(&text, dir.path(), Duration::ZERO, None);
    burst(&off);
    off.advance("60s");
    assert_eq!(pending(&off), 0.0);
    let (status, log) = off.terminate();
    assert!(status.success(), "{log}");
    assert!(fake.attempts().is_empty());

    let on = start(&text, dir.path(), minutes(2));
    wait_for("the triggers of the alerts already firing", || {
        fake.accepted().len() >= 2
    });
    on.advance("1s");
    assert_eq!(fake.accepted_keys(), [page("trigger"), ticket("trigger")]);
    assert!(
        on.log()
            .contains("Queued for PagerDuty: the alert changed while PagerDuty was off"),
        "{}",
        on.log()
    );
    let (status, log) = on.terminate();
    assert!(status.success(), "{log}");

    // Off while the page resolves.
    let off = start_keyed(&text, dir.path(), minutes(3), None);
    off.advance("10m");
    let (status, log) = off.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(fake.accepted().len(), 2);

    let on = start(&text, dir.path(), minutes(14));
    wait_for("the page's resolve", || fake.accepted().len() >= 3);
    on.advance("1s");
    let (status, log) = on.terminate();
    assert!(status.success(), "{log}");
    // In line now: another start queues nothing.
    let on = start(&text, dir.path(), minutes(15));
    on.advance("1s");
    assert_eq!(
        fake.accepted_keys(),
        [page("trigger"), ticket("trigger"), page("resolve")]
    );
    assert_eq!(pending(&on), 0.0);
    fake.assert_all_valid();
}

/// A routing key PagerDuty refuses: 400, logged with the body, counted `rejected`, never
/// retried, and events of other keys still flow.
#[test]
fn a_refused_routing_key_is_rejected_once_and_later_events_flow() {
    let fake = FakePagerDuty::start(&[KEY]);
    let dir = tempfile::tempdir().unwrap();
    let recmeter = start(
        &config(
            &fake,
            &format!("ticket_routing_key = \"{OTHER_KEY}\""),
            CHECKOUT,
        ),
        dir.path(),
        Duration::ZERO,
    );
    burst(&recmeter);
    for _ in 0..12 {
        recmeter.advance("60s");
    }
    let to_other = |fake: &FakePagerDuty| {
        fake.attempts()
            .iter()
            .filter(|a| a.event["routing_key"] == OTHER_KEY)
            .count()
    };
    assert_eq!(to_other(&fake), 1, "not retried");
    assert_eq!(fake.accepted_keys(), [page("trigger"), page("resolve")]);
    assert_eq!(events_total(&recmeter, "trigger", "rejected"), 1.0);
    assert_eq!(events_total(&recmeter, "trigger", "retried"), 0.0);
    assert_eq!(pending(&recmeter), 0.0);
    let log = recmeter.log();
    assert!(
        log.contains("PagerDuty rejected an event") && log.contains("Invalid routing key"),
        "{log}"
    );
    assert!(!log.contains(OTHER_KEY) && !log.contains(KEY), "{log}");
    // The operator fixes the key: the ticket still firing is caught up at the restart.
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
    let recmeter = start(
        &config(&fake, "", CHECKOUT),
        dir.path(),
        Duration::from_secs(13 * 60),
    );
    wait_for("the ticket's trigger with the good key", || {
        fake.accepted().len() >= 3
    });
    recmeter.advance("1s");
    assert_eq!(fake.accepted_keys()[2], ticket("trigger"));
    assert_eq!(fake.accepted().len(), 3);
    fake.assert_all_valid();
}

/// Sends per clock step: (seconds since the start, events to `KEY`, events to `OTHER_KEY`).
type Steps = Vec<(u64, usize, usize)>;

/// 300 transitions within a minute (100 objectives, each paging, ticketing and then missing
/// data) with `routing` in `[pagerduty]`: checks that all 300 arrive, at most 120 per routing
/// key in any 60 s of recmeter's clock, all by minute 3, and returns the steps.
fn three_hundred_transitions(routing: &str) -> Steps {
    let fake = FakePagerDuty::start(&[KEY, OTHER_KEY]);
    let dir = tempfile::tempdir().unwrap();
    let objectives: String = (0..100)
        .map(|i| CHECKOUT.replace("\"checkout\"", &format!("\"slo_{i:03}\"")))
        .collect();
    let text = config(&fake, routing, &objectives)
        .replace("no_data_after = \"2h\"", "no_data_after = \"1m\"");
    let recmeter = start(&text, dir.path(), Duration::ZERO);
    burst(&recmeter);
    // The clock time of each step, with how many events arrived during it per routing key.
    // Eight steps: the pages resolve only at the ninth (their 5m windows then clear).
    let mut steps: Steps = Vec::new();
    let (mut seen_key, mut seen_other) = (0, 0);
    for step in 1..=8u64 {
        recmeter.advance("30s");
        let to = |key: &str| {
            fake.attempts()
                .iter()
                .filter(|a| a.event["routing_key"] == key)
                .count()
        };
        let (key, other) = (to(KEY), to(OTHER_KEY));
        steps.push((step * 30, key - seen_key, other - seen_other));
        (seen_key, seen_other) = (key, other);
    }
    fake.assert_all_valid();
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 300, "{steps:?}");
    // The transitions: within one minute of recmeter's clock.
    let times: Vec<_> = accepted
        .iter()
        .map(|e| humantime::parse_rfc3339(e["payload"]["timestamp"].as_str().unwrap()).unwrap())
        .collect();
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        last.duration_since(*first).unwrap() <= Duration::from_secs(60),
        "{first:?} {last:?}"
    );
    let severities = |s: &str| {
        accepted
            .iter()
            .filter(|e| e["dedup_key"].as_str().unwrap().ends_with(s))
            .count()
    };
    assert_eq!(
        (
            severities("/page"),
            severities("/ticket"),
            severities("/no_data")
        ),
        (100, 100, 100)
    );
    // At most 120 per key in any 60 s: sends happen at the steps' times.
    for (i, (at, _, _)) in steps.iter().enumerate() {
        let minute = steps[i..].iter().take_while(|(t, _, _)| *t < at + 60);
        let (key, other) = minute.fold((0, 0), |(k, o), (_, dk, dot)| (k + dk, o + dot));
        assert!(
            key <= 120 && other <= 120,
            "{key}, {other} from {at} s: {steps:?}"
        );
    }
    // All by minute 3 after the first transition.
    let first_step = steps.iter().find(|(_, k, o)| k + o > 0).unwrap().0;
    let last_step = steps.iter().rev().find(|(_, k, o)| k + o > 0).unwrap().0;
    assert!(last_step <= first_step + 180, "{steps:?}");
    assert_eq!(pending(&recmeter), 0.0);
    steps
}

/// One routing key for all 300: 120, then 120 a minute later, then the last 60.
#[test]
fn three_hundred_transitions_go_out_at_most_120_a_minute() {
    let steps = three_hundred_transitions("");
    let sent: Vec<usize> = steps.iter().map(|(_, key, _)| *key).collect();
    assert_eq!(sent, [120, 0, 120, 0, 60, 0, 0, 0], "{steps:?}");
}

/// Pages on one routing key, tickets and missing data on another: each has its own limit.
#[test]
fn each_routing_key_has_its_own_limit() {
    let steps = three_hundred_transitions(&format!(
        "ticket_routing_key = \"{OTHER_KEY}\"\nno_data_routing_key = \"{OTHER_KEY}\""
    ));
    // The first key sends its 100 pages at once; the second is held at its limit in its
    // first minute (100 tickets, then 20 of the 100 missing-data alerts).
    let first_minute: usize = steps.iter().take(2).map(|(_, _, other)| other).sum();
    assert_eq!((steps[0].1, first_minute), (100, 120), "{steps:?}");
}

/// `recmeter pagerduty test` sends a test trigger and its resolve and prints the answers;
/// `--dry-run` sends nothing and shows no key; without a key it says PagerDuty is off.
#[test]
fn pagerduty_test_prints_the_answers() {
    let fake = FakePagerDuty::start(&[KEY]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recmeter.toml");
    std::fs::write(&path, config(&fake, "", "")).unwrap();
    let run = |args: &[&str], key: Option<&str>| {
        let mut cmd = Command::new(binary());
        cmd.args(["pagerduty", "test", "--config"])
            .arg(&path)
            .args(args)
            .env_remove("RECMETER_PAGERDUTY__ROUTING_KEY");
        if let Some(key) = key {
            cmd.env("RECMETER_PAGERDUTY__ROUTING_KEY", key);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["--dry-run"], Some(KEY));
    assert!(ok, "{out}{err}");
    assert!(fake.attempts().is_empty(), "a dry run sends nothing");
    assert!(out.contains("[redacted]") && !out.contains(KEY), "{out}");
    assert!(out.contains("\"severity\": \"info\""), "{out}");

    let (ok, out, err) = run(&[], Some(KEY));
    assert!(ok, "{out}{err}");
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 2, "{out}");
    assert_eq!(accepted[0]["event_action"], "trigger");
    assert_eq!(accepted[0]["payload"]["severity"], "info");
    assert!(
        accepted[0]["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("TEST"),
        "{:?}",
        accepted[0]
    );
    assert_eq!(accepted[1]["event_action"], "resolve");
    let dedup = accepted[0]["dedup_key"].as_str().unwrap();
    assert!(dedup.starts_with("recmeter/rm-test-1/test/"), "{dedup}");
    assert_eq!(accepted[1]["dedup_key"], dedup);
    assert!(
        out.contains("trigger: 202 ") && out.contains("resolve: 202 "),
        "{out}"
    );
    assert!(out.contains(&format!("dedup_key: {dedup}")), "{out}");
    fake.assert_all_valid();

    let (ok, out, err) = run(&[], Some(OTHER_KEY));
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("trigger: 400 ") && out.contains("Invalid routing key"),
        "{out}"
    );
    assert!(!out.contains("resolve:"), "{out}");

    let (ok, _, err) = run(&[], None);
    assert!(!ok);
    assert!(err.contains("PagerDuty is off"), "{err}");
    let (ok, _, err) = run(&[], Some("short"));
    assert!(!ok);
    assert!(
        err.contains("pagerduty.routing_key") && err.contains("32 characters"),
        "{err}"
    );
}

/// The events carry only what they must: a trigger stays far under the Events API's limits
/// with the longest names recmeter accepts.
#[test]
fn events_fit_the_api_limits_with_the_longest_names() {
    let fake = FakePagerDuty::start(&[KEY]);
    let dir = tempfile::tempdir().unwrap();
    let long_name = "s".repeat(64);
    let objectives = CHECKOUT.replace("\"checkout\"", &format!("\"{long_name}\""));
    let text = config(&fake, "", &objectives).replace("rm-test-1", &"i".repeat(64));
    let recmeter = start(&text, dir.path(), Duration::ZERO);
    burst(&recmeter);
    recmeter.advance("60s");
    fake.assert_all_valid();
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 2);
    let dedup = accepted[0]["dedup_key"].as_str().unwrap();
    assert_eq!(
        dedup,
        format!("recmeter/{}/{long_name}/page", "i".repeat(64))
    );
    let bytes = serde_json::to_vec(&accepted[0]).unwrap().len();
    assert!(bytes < 8 * 1024, "{bytes} bytes");
}

/// On the system clock: a burst pages within seconds of real time, a 503 is retried after a
/// backoff in real time, and SIGTERM right after the failure still delivers (the drain, or
/// the tick before it), within the shutdown deadline.
#[test]
fn on_the_system_clock_a_retry_and_the_shutdown_drain_deliver() {
    let fake = FakePagerDuty::start(&[KEY]);
    fake.set_unavailable(1);
    let dir = tempfile::tempdir().unwrap();
    let text = config(&fake, "", CHECKOUT)
        .replace(
            "no_data_after = \"2h\"",
            "no_data_after = \"2h\"\nevaluation_interval = \"1s\"",
        )
        .replace("shutdown_timeout = \"3s\"", "shutdown_timeout = \"8s\"");
    let recmeter = Recmeter::start_with(Start {
        config: &text,
        dir: Some(dir.path()),
        fake_clock: None,
        env: vec![("RECMETER_PAGERDUTY__ROUTING_KEY", KEY)],
        ..Start::default()
    });
    let end = std::time::SystemTime::now();
    let spans = (0..100)
        .map(|i| server_span("GET /recs", end, 10_000_000, i % 2 == 0, i))
        .collect();
    export(Client::HttpProto, &recmeter.addrs, "recs", vec![spans]);
    // Both transitions logged (the ticket waits behind the page's failed trigger), then stop.
    wait_for("the first attempt and both transitions", || {
        !fake.attempts().is_empty()
            && pending(&recmeter) + events_total(&recmeter, "trigger", "accepted") >= 2.0
    });
    let (status, log) = recmeter.terminate();
    assert!(status.success(), "{log}");
    let statuses: Vec<u16> = fake.attempts().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [503, 202, 202], "{log}");
    assert_eq!(fake.accepted_keys(), [page("trigger"), ticket("trigger")]);
    assert!(!log.contains("still wait in the outbox"), "{log}");
    fake.assert_all_valid();
}
