//! `recmeter rules`: Prometheus recording and multi-window multi-burn-rate alerting rules for the
//! configured objectives, over the counters recmeter exports (`recs_requests_total`,
//! `recs_latency_seconds_bucket`), and alerts on recmeter's own health. For teams that alert
//! through Prometheus and Alertmanager rather than recmeter's own evaluation.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use recmeter_aggregator::slo::{Objective, ObjectiveKind, SLO_WINDOWS, Severity, SloConfig};

use crate::config::Config;

/// `recmeter rules` arguments.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Configuration file whose `[slo]` objectives the rules express; without it the embedded
    /// defaults (the platform's targets). RECMETER_* overrides apply either way.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Prints the rules for the configuration, or every problem with it (exit 1).
pub fn main(args: RulesArgs) -> ExitCode {
    match Config::load(args.config.as_deref(), crate::config::environment()) {
        Ok(config) => {
            print!("{}", render(&config.slo));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("configuration: {} problem(s)", errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A glob list as an anchored PromQL regex (`*` → `.*`, `?` → `.`, `[…]` kept); `None` when it
/// matches everything.
fn regex(globs: &[String]) -> Option<String> {
    if globs.iter().any(|g| g == "*") {
        return None;
    }
    let alternatives: Vec<String> = globs
        .iter()
        .map(|g| {
            let mut out = String::new();
            let mut in_class = false;
            for c in g.chars() {
                match c {
                    '[' if !in_class => {
                        in_class = true;
                        out.push('[');
                    }
                    ']' if in_class => {
                        in_class = false;
                        out.push(']');
                    }
                    '!' if in_class && out.ends_with('[') => out.push('^'),
                    '*' if !in_class => out.push_str(".*"),
                    '?' if !in_class => out.push('.'),
                    // In a PromQL string: a quote is escaped once, a backslash (escaped for the
                    // regex) twice.
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\\\\\"),
                    c if !in_class && ".+()|{}^$".contains(c) => {
                        out.push_str("\\\\");
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out
        })
        .collect();
    Some(alternatives.join("|"))
}

/// The label matchers selecting an objective's series, each followed by `, ` when any.
fn selector(o: &Objective) -> String {
    let mut out = String::new();
    for (label, globs) in [("service", &o.services), ("endpoint", &o.endpoints)] {
        if let Some(r) = regex(globs) {
            let _ = write!(out, "{label}=~\"{r}\", ");
        }
    }
    out
}

/// The `le` matcher of a bucket bound as recmeter exposes it (`0.2`, `1.0`); integers also
/// match the form Prometheus 3 normalizes them to (`1`).
fn le_matcher(threshold: f64) -> String {
    let shown = format!("{threshold:?}");
    match shown.strip_suffix(".0") {
        Some(int) => format!("le=~\"{int}(\\\\.0)?\""),
        None => format!("le=\"{shown}\""),
    }
}

/// `{matchers}`, or nothing when there are none.
fn braces(matchers: &str) -> String {
    let matchers = matchers.trim_end_matches(", ");
    if matchers.is_empty() {
        String::new()
    } else {
        format!("{{{matchers}}}")
    }
}

/// The PromQL of an objective's bad ratio over `window`.
fn bad_ratio(o: &Objective, window: &str) -> String {
    let sel = selector(o);
    match (o.kind, o.threshold) {
        (ObjectiveKind::Latency, Some(t)) => format!(
            "1 - (\n  sum(rate(recs_latency_seconds_bucket{{{sel}{le}}}[{window}]))\n  /\n  \
             sum(rate(recs_latency_seconds_count{all}[{window}]))\n)",
            le = le_matcher(t),
            all = braces(&sel),
        ),
        _ => format!(
            "sum(rate(recs_requests_total{{{sel}status=\"error\"}}[{window}]))\n/\n\
             sum(rate(recs_requests_total{all}[{window}]))",
            all = braces(&sel),
        ),
    }
}

/// The PromQL of an objective's requests over `window`.
fn requests(o: &Objective, window: &str) -> String {
    let all = braces(&selector(o));
    match o.kind {
        ObjectiveKind::Latency => {
            format!("sum(increase(recs_latency_seconds_count{all}[{window}]))")
        }
        ObjectiveKind::Availability | ObjectiveKind::Cost => {
            format!("sum(increase(recs_requests_total{all}[{window}]))")
        }
    }
}

/// Appends `text` indented by `indent` spaces, as a YAML block scalar's lines.
fn block(out: &mut String, indent: usize, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "{:indent$}{line}", "");
    }
}

/// The rules file for `slo`: recording rules per objective and window, the burn-rate alerts of
/// each objective's table, its `no_data` alert, and recmeter's own health.
pub fn render(slo: &SloConfig) -> String {
    let mut out = String::from(
        "# Generated by `recmeter rules` from the [slo] configuration; do not edit by hand.\n\
         # Recording rules: recmeter_slo:bad_ratio:rate<window> and\n\
         # recmeter_slo:requests:increase<window> per objective (label `slo`), over the counters\n\
         # recmeter exports. Alerts: RecmeterSLOBurnRate (severity page or ticket, multi-window\n\
         # multi-burn-rate), RecmeterSLONoData, and recmeter's own health.\n\
         groups:\n",
    );
    for o in &slo.objectives {
        let _ = writeln!(out, "  - name: recmeter-slo-{}\n    rules:", o.name);
        if o.kind == ObjectiveKind::Cost {
            // A threshold on the reported day when it is complete. recmeter's own evaluation
            // reads the latest complete day; while the gauges report an incomplete day (past
            // cost.complete_after) this rule has no value and resolves, where recmeter's
            // alert keeps its state.
            let _ = writeln!(
                out,
                "      - alert: RecmeterCostPerRecommendation\n        expr: |\n          \
                 recmeter_cost_per_recommendation_usd{{period=\"day\", component=\"platform\"}} > {threshold:?}\n          \
                 and on() recmeter_cost_period_complete{{period=\"day\"}} == 1\n        labels:\n          \
                 severity: ticket\n          slo: \"{name}\"\n        annotations:\n          \
                 summary: \"{name}: {{{{ $value | printf \\\"%.6f\\\" }}}} USD per recommendation on the latest complete day (ticket)\"\n          \
                 description: \"The platform's cost per recommendation on the latest complete UTC day is over {threshold:?} USD.\"",
                name = o.name,
                threshold = o.cost_threshold(),
            );
            continue;
        }
        for w in SLO_WINDOWS {
            let w = w.label();
            let _ = writeln!(
                out,
                "      - record: recmeter_slo:bad_ratio:rate{w}\n        expr: |"
            );
            block(&mut out, 10, &bad_ratio(o, w));
            let _ = writeln!(
                out,
                "        labels:\n          slo: \"{}\"\n          slo_kind: {}",
                o.name,
                o.kind.label()
            );
            let _ = writeln!(
                out,
                "      - record: recmeter_slo:requests:increase{w}\n        expr: |"
            );
            block(&mut out, 10, &requests(o, w));
            let _ = writeln!(out, "        labels:\n          slo: \"{}\"", o.name);
        }
        let _ = writeln!(
            out,
            "      - record: recmeter_slo:error_budget_remaining:ratio30d\n        expr: |\n          \
             1 - recmeter_slo:bad_ratio:rate30d{{slo=\"{name}\"}} / {budget:?}\n        labels:\n          \
             slo: \"{name}\"",
            name = o.name,
            budget = o.budget(),
        );
        // One alert per severity and `for` (Prometheus has one `for` per alert): the defaults,
        // without `for`, make one per severity.
        let mut groups: Vec<(Severity, Option<std::time::Duration>)> = o
            .alerts
            .iter()
            .map(|r| (r.severity, r.for_))
            .filter(|(s, _)| matches!(s, Severity::Page | Severity::Ticket))
            .collect();
        groups.sort_by_key(|(s, f)| (*s != Severity::Page, *f));
        groups.dedup();
        for (severity, for_) in groups {
            let rules: Vec<_> = o
                .alerts
                .iter()
                .filter(|r| r.severity == severity && r.for_ == for_)
                .collect();
            let clauses: Vec<String> = rules
                .iter()
                .map(|r| {
                    let at = |w: &str| {
                        let mut c = format!(
                            "recmeter_slo:bad_ratio:rate{w}{{slo=\"{}\"}} > ({:?} * {:?})",
                            o.name,
                            r.burn_rate,
                            o.budget()
                        );
                        if o.min_requests > 0 {
                            let _ = write!(
                                c,
                                "\n  and on(slo) recmeter_slo:requests:increase{w}{{slo=\"{}\"}} >= {}",
                                o.name, o.min_requests
                            );
                        }
                        c
                    };
                    format!("(\n  {}\n  and on(slo)\n  {}\n)", at(&r.long), at(&r.short))
                })
                .collect();
            let _ = writeln!(out, "      - alert: RecmeterSLOBurnRate\n        expr: |");
            block(&mut out, 10, &clauses.join("\nor\n"));
            // Rules of a severity with a `for` are an alert of their own, told apart by it.
            let for_label = for_.map(prometheus_duration);
            if let Some(f) = &for_label {
                let _ = writeln!(out, "        for: {f}");
            }
            let _ = writeln!(
                out,
                "        labels:\n          severity: {sev}\n          slo: \"{name}\"{for_line}\n        annotations:\n          \
                 summary: \"{name}: {{{{ $value | humanizePercentage }}}} of requests bad over the long window ({sev})\"\n          \
                 description: \"Objective {name} ({kind} {objective:?}) is burning its 30-day error budget faster than its {sev} rules allow.\"",
                sev = severity.label(),
                name = o.name,
                for_line = for_label
                    .map(|f| format!("\n          for: \"{f}\""))
                    .unwrap_or_default(),
                kind = o.kind.label(),
                objective = o.objective,
            );
        }
        let minutes = slo.no_data_after.as_secs() / 60;
        let _ = writeln!(out, "      - alert: RecmeterSLONoData\n        expr: |");
        block(
            &mut out,
            10,
            &format!(
                "({} or vector(0)) == 0",
                requests(o, &format!("{minutes}m"))
            ),
        );
        let _ = writeln!(
            out,
            "        labels:\n          severity: no_data\n          slo: \"{name}\"\n        annotations:\n          \
             summary: \"{name}: no request for {minutes}m\"",
            name = o.name,
        );
    }
    out.push_str(HEALTH);
    out
}

/// `d` as Prometheus writes durations (`1h30m`, `45s`; no spaces), to the millisecond.
fn prometheus_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    let parts = [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1_000 % 60, "s"),
        (ms % 1_000, "ms"),
    ];
    let out: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if out.is_empty() { "0s".into() } else { out }
}

/// Alerts on recmeter's own health.
const HEALTH: &str = r#"  - name: recmeter-health
    rules:
      - alert: RecmeterRequestsRejected
        expr: |
          sum by (transport, reason) (increase(recmeter_requests_rejected_total[5m])) > 0
        for: 5m
        labels:
          severity: ticket
        annotations:
          summary: "recmeter refused {{ $value }} {{ $labels.transport }} requests in 5m ({{ $labels.reason }})"
      - alert: RecmeterCheckpointStale
        expr: |
          time() - recmeter_checkpoint_last_success_timestamp_seconds > 300
        for: 5m
        labels:
          severity: page
        annotations:
          summary: "recmeter's last checkpoint is {{ $value | humanizeDuration }} old: the WAL grows and a restart replays it all"
      - alert: RecmeterWalFsyncSlow
        expr: |
          histogram_quantile(0.99, sum by (le) (rate(recmeter_wal_fsync_seconds_bucket[5m]))) > 0.1
        for: 10m
        labels:
          severity: ticket
        annotations:
          summary: "recmeter's WAL fsync P99 is {{ $value | humanizeDuration }}: ingest waits on the disk"
      - alert: RecmeterSeriesAtCap
        expr: |
          recmeter_series_active >= on() recmeter_series_limit{scope="global"}
        for: 15m
        labels:
          severity: ticket
        annotations:
          summary: "recmeter holds {{ $value }} series, its cap: new series fold into __overflow__"
      - alert: RecmeterPagerDutyBacklog
        expr: |
          recmeter_pagerduty_outbox_pending > 0
        for: 15m
        labels:
          severity: ticket
        annotations:
          summary: "{{ $value }} of recmeter's own alert events have waited 15m or more for PagerDuty: its pages are not getting through"
      - alert: RecmeterPagerDutyRejected
        expr: |
          sum by (action) (increase(recmeter_pagerduty_events_total{outcome="rejected"}[1h])) > 0
        labels:
          severity: ticket
        annotations:
          summary: "PagerDuty rejected recmeter {{ $labels.action }} events in the last hour: check the routing keys with `recmeter pagerduty test`"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// `alerts/rules/recmeter.yaml` is `recmeter rules` for the default configuration:
    /// regenerate it with `recmeter rules > alerts/rules/recmeter.yaml`.
    #[test]
    fn the_shipped_rules_are_the_default_output() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts/rules/recmeter.yaml");
        let shipped = std::fs::read_to_string(path).unwrap();
        assert!(
            shipped == render(&SloConfig::default()),
            "{path} differs from `recmeter rules`; regenerate it"
        );
    }

    /// Prometheus has one `for` per alert: a page rule with a `for` becomes its own alert,
    /// the other page rule keeps firing at once, and the duration is written as Prometheus
    /// parses it.
    #[test]
    fn a_for_makes_its_own_alert_in_prometheus_form() {
        let mut slo = SloConfig::default();
        slo.objectives.truncate(1);
        slo.objectives[0].alerts[0].for_ = Some(std::time::Duration::from_secs(5_430));
        let rules = render(&slo);
        assert_eq!(
            rules.matches("\n        for: 1h30m30s\n").count(),
            1,
            "{rules}"
        );
        assert_eq!(rules.matches("\n          for: \"1h30m30s\"\n").count(), 1);
        let slo_rules = rules
            .split("- name: recmeter-health")
            .next()
            .unwrap_or_default();
        assert_eq!(slo_rules.matches("\n        for: ").count(), 1);
        assert_eq!(slo_rules.matches("severity: page\n").count(), 2);
        assert_eq!(slo_rules.matches("severity: ticket\n").count(), 1);
        assert_eq!(
            prometheus_duration(std::time::Duration::from_millis(1_500)),
            "1s500ms"
        );
        assert_eq!(prometheus_duration(std::time::Duration::ZERO), "0s");
        assert_eq!(
            prometheus_duration(std::time::Duration::from_secs(7_200)),
            "2h"
        );
    }

    #[test]
    fn objectives_with_globs_and_min_requests() {
        let mut slo = SloConfig::default();
        slo.objectives[0].services = vec!["checkout*".into()];
        slo.objectives[0].min_requests = 500;
        let rules = render(&slo);
        assert!(rules.contains(
            "sum(rate(recs_requests_total{service=~\"checkout.*\", status=\"error\"}[5m]))"
        ));
        assert!(
            rules.contains(
                "and on(slo) recmeter_slo:requests:increase1h{slo=\"availability\"} >= 500"
            )
        );
        assert!(rules.contains("recs_latency_seconds_bucket{le=\"0.2\"}[1h]"));
    }

    #[test]
    fn globs_become_anchored_regexes() {
        assert_eq!(regex(&["*".into()]), None);
        assert_eq!(
            regex(&["check?out*".into(), "a.b".into(), "[!x]y".into()]).unwrap(),
            "check.out.*|a\\\\.b|[^x]y"
        );
        assert_eq!(le_matcher(0.2), "le=\"0.2\"");
        assert_eq!(le_matcher(1.0), "le=~\"1(\\\\.0)?\"");
    }
}
