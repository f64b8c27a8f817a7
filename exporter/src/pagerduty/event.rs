//! Events API v2 events from SLO transitions: a `trigger` when an alert starts firing and a
//! `resolve` with the same `dedup_key` when it stops, built at delivery time from the
//! transition and the configuration.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use recmeter_aggregator::Window;
use recmeter_aggregator::slo::{Objective, ObjectiveKind, Severity, Transition};
use serde_json::{Value, json};

/// The Events API's limit on `payload.summary`, in characters.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// The Events API's limit on `dedup_key`, in characters.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;
/// Where recmeter clips `payload.component` (a list of service globs).
const MAX_FIELD_CHARS: usize = 255;
/// The Events API's limit on a whole event.
pub const MAX_EVENT_BYTES: usize = 512 * 1024;

/// What every event of this instance shares.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// `service.instance`: the dedup keys' scope.
    pub instance: String,
    /// `payload.source`.
    pub source: String,
    /// Links on every trigger.
    pub links: Vec<String>,
    /// The configured objectives, for the numbers a trigger names.
    pub objectives: Vec<Objective>,
    /// `slo.no_data_after`.
    pub no_data_after: Duration,
}

/// `trigger` or `resolve`: the `action` label of `recmeter_pagerduty_events_total`.
pub const fn action(firing: bool) -> &'static str {
    if firing { "trigger" } else { "resolve" }
}

/// `recmeter/<instance>/<slo>/<severity>`: one incident per instance, objective and severity.
pub fn dedup_key(instance: &str, slo: &str, severity: Severity) -> String {
    clip_chars(
        &format!("recmeter/{instance}/{slo}/{}", severity.label()),
        MAX_DEDUP_KEY_CHARS,
    )
}

/// PagerDuty's severity of an alert: pages and missing data wake someone (`critical`), as
/// the Alertmanager example routes them; tickets are `warning`.
pub const fn pagerduty_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Page | Severity::NoData => "critical",
        Severity::Ticket => "warning",
    }
}

fn rfc3339(unix_nanos: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_nanos)).to_string()
}

/// The first `max` characters of `text`.
fn clip_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// The event for `transition`, of the incident `dedup_key`: a trigger with the numbers, or a
/// resolve.
pub fn event(
    context: &EventContext,
    routing_key: &str,
    dedup_key: &str,
    transition: &Transition,
) -> Value {
    if !transition.firing {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let objective = context.objectives.iter().find(|o| o.name == transition.slo);
    let mut details = json!({
        "slo": transition.slo,
        "severity": transition.severity.label(),
        "burn_rates": transition.burn_rates,
        "error_budget_remaining_ratio": transition.budget_remaining,
        "instance": context.instance,
        "evaluated_at": rfc3339(transition.at_unix_nanos),
    });
    if let Some(cost) = &transition.cost {
        details["cost_per_recommendation_usd"] = json!(cost.usd_per_recommendation);
        details["day"] = json!(rfc3339(u64::try_from(cost.day_start).unwrap_or(0)));
    }
    if let Some(o) = objective.filter(|o| o.kind == ObjectiveKind::Cost) {
        details["kind"] = json!(o.kind.label());
        details["threshold_usd_per_recommendation"] = json!(o.cost_threshold());
    } else if let Some(o) = objective {
        details["objective"] = json!(o.objective);
        details["kind"] = json!(o.kind.label());
        if let Some(threshold) = o.threshold {
            details["threshold_seconds"] = json!(threshold);
        }
        details["services"] = json!(o.services);
        details["endpoints"] = json!(o.endpoints);
        details["alert_rules"] = o
            .alerts
            .iter()
            .filter(|r| r.severity == transition.severity)
            .map(|r| json!({"long": r.long, "short": r.short, "burn_rate": r.burn_rate}))
            .collect();
    }
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "recmeter",
        "payload": {
            "summary": summary(transition, objective, context.no_data_after),
            "source": context.source,
            "severity": pagerduty_severity(transition.severity),
            "timestamp": rfc3339(transition.at_unix_nanos),
            "component": objective.map_or_else(
                || "*".to_owned(),
                |o| clip_chars(&o.services.join(","), MAX_FIELD_CHARS)
            ),
            "group": transition.slo,
            "class": objective.map_or("slo", |o| o.kind.label()),
            "custom_details": details,
        },
    });
    if !context.links.is_empty() {
        event["links"] = context
            .links
            .iter()
            .map(|href| json!({"href": href, "text": "recmeter dashboard"}))
            .collect();
    }
    keep_under_limit(event)
}

/// An event over the Events API's size limit (only an objective with thousands of globs gets
/// near it) loses its custom details, which the summary repeats in short.
fn keep_under_limit(mut event: Value) -> Value {
    let size = serde_json::to_vec(&event).map_or(usize::MAX, |b| b.len());
    if size >= MAX_EVENT_BYTES {
        event["payload"]["custom_details"] =
            json!({"note": format!("details left out: the event had {size} bytes")});
    }
    event
}

/// One line with the numbers: "checkout availability: burning 16.2× budget (1h), 14.9× (5m);
/// 71% of 30-day budget left".
pub fn summary(
    transition: &Transition,
    objective: Option<&Objective>,
    no_data_after: Duration,
) -> String {
    let kind = objective.map_or("SLO", |o| o.kind.label());
    let mut text = format!("{} {kind}: ", transition.slo);
    if let Some(cost) = &transition.cost {
        let day = std::time::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(cost.day_start).unwrap_or(0));
        let day = humantime::format_rfc3339_seconds(day).to_string();
        let _ = write!(
            text,
            "${:.6} per recommendation on {}",
            cost.usd_per_recommendation,
            day.get(..10).unwrap_or(&day)
        );
        if let Some(o) = objective {
            let _ = write!(text, " against ${}", o.cost_threshold());
        }
        return clip_chars(&text, MAX_SUMMARY_CHARS);
    }
    let burn = |w: &str| transition.burn_rates.get(w).copied();
    match transition.severity {
        Severity::NoData => {
            let _ = write!(
                text,
                "no requests for {}",
                humantime::format_duration(no_data_after)
            );
        }
        severity => {
            // The rule that fired: the first of the severity whose windows both burn over its
            // rate; else the first of the severity.
            let rules: Vec<_> = objective
                .map(|o| o.alerts.iter().filter(|r| r.severity == severity).collect())
                .unwrap_or_default();
            let fired = rules
                .iter()
                .find(|r| {
                    burn(&r.long).is_some_and(|b| b >= r.burn_rate)
                        && burn(&r.short).is_some_and(|b| b >= r.burn_rate)
                })
                .or(rules.first());
            match fired {
                Some(r) => {
                    let _ = write!(
                        text,
                        "burning {:.1}× budget ({}), {:.1}× ({}) against {}×",
                        burn(&r.long).unwrap_or(f64::NAN),
                        r.long,
                        burn(&r.short).unwrap_or(f64::NAN),
                        r.short,
                        r.burn_rate
                    );
                }
                None => {
                    let h1 = burn(Window::H1.label()).unwrap_or(f64::NAN);
                    let _ = write!(text, "burning {h1:.1}× budget (1h)");
                }
            }
        }
    }
    let left = transition.budget_remaining * 100.0;
    if left >= 0.0 {
        let _ = write!(text, "; {left:.0}% of 30-day budget left");
    } else {
        let _ = write!(text, "; 30-day budget overspent by {:.0}%", -left);
    }
    if let Some(o) = objective {
        let target = match o.kind {
            ObjectiveKind::Availability => format!("{}% of requests succeed", o.objective * 100.0),
            ObjectiveKind::Latency => format!(
                "{}% within {} ms",
                o.objective * 100.0,
                o.threshold.unwrap_or(f64::NAN) * 1_000.0
            ),
            ObjectiveKind::Cost => format!("at most ${} per recommendation", o.cost_threshold()),
        };
        let _ = write!(text, " (objective: {target})");
    }
    clip_chars(&text, MAX_SUMMARY_CHARS)
}

/// The test trigger and its resolve, of `recmeter pagerduty test`: severity `info`, a summary
/// saying it is a test, a dedup key of its own (`recmeter/<instance>/test/<unix seconds>`).
pub fn test_events(
    context: &EventContext,
    routing_key: &str,
    severities: &[Severity],
    at_unix_nanos: u64,
) -> (Value, Value) {
    let dedup_key = clip_chars(
        &format!(
            "recmeter/{}/test/{}",
            context.instance,
            at_unix_nanos / 1_000_000_000
        ),
        MAX_DEDUP_KEY_CHARS,
    );
    let routes: Vec<&str> = severities.iter().map(|s| s.label()).collect();
    let trigger = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "recmeter",
        "payload": {
            "summary": clip_chars(&format!(
                "TEST from recmeter on {}: checking the routing key of {} alerts; no action \
                 needed, recmeter resolves it at once",
                context.instance,
                routes.join(", ")
            ), MAX_SUMMARY_CHARS),
            "source": context.source,
            "severity": "info",
            "timestamp": rfc3339(at_unix_nanos),
            "component": "recmeter",
            "group": "test",
            "class": "test",
            "custom_details": {"test": true, "routes": routes},
        },
    });
    let resolve = json!({
        "routing_key": routing_key,
        "event_action": "resolve",
        "dedup_key": dedup_key,
    });
    (trigger, resolve)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn context() -> EventContext {
        EventContext {
            instance: "recmeter-0".into(),
            source: "recmeter-0.prod".into(),
            links: vec!["https://grafana.example/d/recmeter-slo".into()],
            objectives: vec![Objective::new(
                "checkout",
                ObjectiveKind::Availability,
                0.9995,
                None,
            )],
            no_data_after: Duration::from_secs(600),
        }
    }

    fn transition(severity: Severity, firing: bool) -> Transition {
        Transition {
            slo: "checkout".into(),
            severity,
            firing,
            at_unix_nanos: 1_764_000_000_000_000_000,
            burn_rates: BTreeMap::from([
                ("1h".to_owned(), 16.24),
                ("5m".to_owned(), 14.91),
                ("6h".to_owned(), 2.0),
                ("30m".to_owned(), 9.0),
            ]),
            budget_remaining: 0.713,
            cost: None,
        }
    }

    #[test]
    fn a_cost_ticket_says_the_day_and_the_figure() {
        let mut context = context();
        context.objectives.push(Objective::new(
            "unit_cost",
            ObjectiveKind::Cost,
            0.0,
            Some(0.001),
        ));
        let mut t = transition(Severity::Ticket, true);
        t.slo = "unit_cost".into();
        t.burn_rates.clear();
        t.cost = Some(recmeter_aggregator::slo::CostReading {
            usd_per_recommendation: 0.00125,
            // 2025-12-01T00:00:00Z
            day_start: 1_764_547_200_000_000_000,
        });
        let e = event(
            &context,
            "R0123",
            "recmeter/recmeter-0/unit_cost/ticket",
            &t,
        );
        assert_eq!(
            e["payload"]["summary"],
            "unit_cost cost: $0.001250 per recommendation on 2025-12-01 against $0.001"
        );
        let details = &e["payload"]["custom_details"];
        assert_eq!(details["cost_per_recommendation_usd"], 0.00125);
        assert_eq!(details["threshold_usd_per_recommendation"], 0.001);
        assert_eq!(details["day"], "2025-12-01T00:00:00.000Z");
        assert!(details.get("objective").is_none(), "{details}");
    }

    #[test]
    fn a_page_triggers_with_the_numbers_and_resolves_by_the_same_key() {
        let key = "R0123456789abcdef0123456789abcde";
        let dedup = "recmeter/recmeter-0/checkout/page";
        let trigger = event(&context(), key, dedup, &transition(Severity::Page, true));
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "recmeter/recmeter-0/checkout/page");
        assert_eq!(
            trigger["payload"]["summary"],
            "checkout availability: burning 16.2× budget (1h), 14.9× (5m) against 14.4×; 71% \
             of 30-day budget left (objective: 99.95% of requests succeed)"
        );
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["class"], "availability");
        assert_eq!(trigger["payload"]["component"], "*");
        assert_eq!(trigger["payload"]["timestamp"], "2025-11-24T16:00:00.000Z");
        assert_eq!(trigger["payload"]["custom_details"]["objective"], 0.9995);
        assert_eq!(
            trigger["payload"]["custom_details"]["burn_rates"]["1h"],
            16.24
        );
        assert_eq!(
            trigger["links"][0]["href"],
            "https://grafana.example/d/recmeter-slo"
        );
        let resolve = event(&context(), key, dedup, &transition(Severity::Page, false));
        assert_eq!(
            resolve,
            json!({"routing_key": key, "event_action": "resolve",
                   "dedup_key": "recmeter/recmeter-0/checkout/page"})
        );
        let ticket = event(&context(), key, dedup, &transition(Severity::Ticket, true));
        assert_eq!(ticket["payload"]["severity"], "warning");
        let mut gone = transition(Severity::NoData, true);
        gone.slo = "removed".into();
        gone.budget_remaining = -0.2;
        let no_data = event(&context(), key, dedup, &gone);
        assert_eq!(
            no_data["payload"]["summary"],
            "removed SLO: no requests for 10m; 30-day budget overspent by 20%"
        );
    }

    #[test]
    fn limits_hold_for_long_names() {
        let mut context = context();
        context.instance = "i".repeat(300);
        context.objectives[0].services = (0..40_000).map(|i| format!("svc-{i}")).collect();
        let mut t = transition(Severity::Page, true);
        t.slo = "é".repeat(2_000);
        context.objectives[0].name = t.slo.clone();
        let e = event(
            &context,
            "k",
            &dedup_key(&context.instance, &t.slo, t.severity),
            &t,
        );
        assert_eq!(
            e["dedup_key"].as_str().unwrap().chars().count(),
            MAX_DEDUP_KEY_CHARS
        );
        assert_eq!(
            e["payload"]["summary"].as_str().unwrap().chars().count(),
            MAX_SUMMARY_CHARS
        );
        assert!(serde_json::to_vec(&e).unwrap().len() < MAX_EVENT_BYTES);
        let (trigger, resolve) = test_events(&context, "k", &[Severity::Page], 0);
        assert_eq!(trigger["payload"]["severity"], "info");
        assert_eq!(trigger["dedup_key"], resolve["dedup_key"]);
    }
}
