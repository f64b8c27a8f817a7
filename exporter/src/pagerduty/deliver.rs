//! Delivery from the outbox to the Events API, on recmeter's clock: in order per dedup key,
//! at most [`RATE_LIMIT`] events a minute per routing key, retried with exponential backoff
//! and jitter on 429, 5xx and network errors, dropped (logged with PagerDuty's answer and
//! counted) on any other 4xx.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use recmeter_aggregator::auth::Secret;
use recmeter_aggregator::clock::Ticks;
use recmeter_aggregator::error::clip;
use recmeter_aggregator::slo::SloAlerts;
use recmeter_aggregator::telemetry::LabelledCounter;
use recmeter_aggregator::{AggregatorHandle, Hook};
use serde_json::Value;

use super::config::{PagerDutyConfig, Routing};
use super::event::{EventContext, action, event};
use super::outbox::{Outbox, Queued, Receipt};

/// Most events per routing key in any minute of recmeter's clock: PagerDuty's documented
/// limit for the Events API. The rest wait; none are dropped.
pub const RATE_LIMIT: usize = 120;
const RATE_WINDOW_NANOS: u64 = 60_000_000_000;

/// The first retry's wait, doubled at each failure in a row up to [`BACKOFF_CAP`], then
/// jittered to between half of it and all of it.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// How much of an answer's body recmeter reads and logs.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// How often the delivery task looks at the outbox when nothing wakes it.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);

/// What PagerDuty made of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: PagerDuty has it.
    Accepted { status: u16, body: String },
    /// 429, 5xx or no answer: worth another attempt.
    Retry { status: Option<u16>, reason: String },
    /// Any other status (a 4xx but 429): the event is wrong and stays wrong.
    Rejected { status: u16, body: String },
}

/// An Events API client over async `reqwest` with rustls.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
}

impl Client {
    /// A client for `config.url`.
    pub fn new(config: &PagerDutyConfig) -> crate::Result<Self> {
        let http = reqwest::Client::builder()
            // A redirect would carry the routing key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("recmeter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::Error::PagerDuty(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoint: config.endpoint(),
        })
    }

    /// Where events go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Posts `event`; its routing key appears in no answer, error or log line.
    pub async fn send(&self, event: &Value, routing_key: &str) -> Answer {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                return Answer::Rejected {
                    status: 0,
                    body: format!("cannot encode the event: {e}"),
                };
            }
        };
        let sent = self
            .http
            .post(&self.endpoint)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Answer::Retry {
                    status: None,
                    reason: redact(&error_text(e), routing_key),
                };
            }
        };
        let status = response.status().as_u16();
        let mut text = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_ANSWER_BYTES.saturating_sub(text.len());
                    text.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if text.len() >= MAX_ANSWER_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The status is in and decides; a body cut short only loses detail.
                    tracing::debug!(error = %redact(&error_text(e), routing_key), "PagerDuty's answer body was cut short.");
                    break;
                }
            }
        }
        let body = redact(&String::from_utf8_lossy(&text), routing_key);
        match status {
            200..=299 => Answer::Accepted { status, body },
            429 | 500..=599 => Answer::Retry {
                status: Some(status),
                reason: clip(&body, 1024).into_owned(),
            },
            _ => Answer::Rejected { status, body },
        }
    }
}

/// A reqwest error's text, with its causes and without its URL (which holds no secret, but
/// clutters).
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `text` with every occurrence of `secret` replaced.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    text.replace(secret, "[redacted]")
}

/// One routing key's sending state: its recent sends, for the rate limit, and its backoff, in
/// [`Deliverer::now`]'s nanoseconds.
#[derive(Debug)]
struct Route {
    key: Secret,
    /// Each send of the last minute, oldest first.
    sent: VecDeque<u64>,
    /// Failures in a row.
    failures: u32,
    /// No attempt before this instant.
    retry_at: u64,
}

impl Route {
    /// Whether an event may go now; if so, it counts as sent.
    fn take(&mut self, now: u64) -> bool {
        if now < self.retry_at {
            return false;
        }
        while self
            .sent
            .front()
            .is_some_and(|&t| t.saturating_add(RATE_WINDOW_NANOS) <= now)
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= RATE_LIMIT {
            return false;
        }
        self.sent.push_back(now);
        true
    }

    /// When the next event may go, if not now.
    fn next_at(&self, now: u64) -> u64 {
        let rate = if self.sent.len() >= RATE_LIMIT {
            self.sent
                .front()
                .map_or(now, |t| t.saturating_add(RATE_WINDOW_NANOS))
        } else {
            now
        };
        rate.max(self.retry_at)
    }

    fn failed(&mut self, now: u64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(BACKOFF_CAP);
        let jittered = rand::rng().random_range(wait / 2..=wait);
        self.retry_at = now.saturating_add(u64::try_from(jittered.as_nanos()).unwrap_or(u64::MAX));
        jittered
    }

    fn succeeded(&mut self) -> bool {
        let was_failing = self.failures > 0;
        self.failures = 0;
        self.retry_at = 0;
        was_failing
    }
}

/// What one pass over the outbox did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Events sent (whatever the answer).
    pub attempted: usize,
    /// The earliest instant a waiting event may go ([`Deliverer::now`]), if any waits.
    pub next_at: Option<u64>,
}

/// The delivery task's state.
pub struct Deliverer {
    outbox: Arc<Outbox>,
    routing: Routing,
    routes: Vec<Route>,
    context: EventContext,
    client: Client,
    aggregator: AggregatorHandle,
    events: Arc<LabelledCounter>,
    /// Outcomes PagerDuty gave whose log entry failed: logged again before anything else is
    /// sent, and their events not sent again meanwhile.
    unlogged: Vec<Receipt>,
    /// The monotonic clock's origin, for [`Deliverer::now`].
    started: std::time::Instant,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("endpoint", &self.client.endpoint)
            .field("routes", &self.routes.len())
            .field("unlogged", &self.unlogged)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A delivery task for `outbox`, sending with `client` by `routing`.
    pub fn new(
        outbox: Arc<Outbox>,
        routing: Routing,
        context: EventContext,
        client: Client,
        aggregator: AggregatorHandle,
    ) -> Self {
        let events = events_counter(&aggregator);
        let routes = routing
            .distinct()
            .into_iter()
            .map(|(key, _)| Route {
                key,
                sent: VecDeque::new(),
                failures: 0,
                retry_at: 0,
            })
            .collect();
        Self {
            outbox,
            routing,
            routes,
            context,
            client,
            aggregator,
            events,
            unlogged: Vec::new(),
            started: std::time::Instant::now(),
        }
    }

    /// Now, for the rate limit and the backoff: the fake clock's time under the test hooks
    /// (so tests move them), else nanoseconds of the monotonic clock, which a step of the
    /// wall clock neither stalls nor hurries.
    fn now(&self) -> u64 {
        let clock = self.aggregator.clock();
        if clock.is_fake() {
            clock.now_nanos()
        } else {
            u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
        }
    }

    /// Delivers at every tick of `ticks` and whenever a transition queues, until `stop`; then
    /// finishes the pass in progress and goes on, for up to `drain_for` in all (a pass still
    /// running then is cut), while events wait and can go. Whatever remains is delivered
    /// after the next start.
    pub async fn run(
        mut self,
        mut ticks: Ticks,
        stop: impl std::future::Future<Output = ()>,
        drain_for: Duration,
    ) {
        self.outbox.wake_on_enqueue(ticks.nudge());
        tokio::pin!(stop);
        let deadline = loop {
            {
                let pass = self.pass();
                tokio::pin!(pass);
                tokio::select! {
                    () = &mut stop => {
                        // A send in flight is finished, not dropped and sent again.
                        let deadline = tokio::time::Instant::now() + drain_for;
                        let _ = tokio::time::timeout_at(deadline, pass).await;
                        break deadline;
                    }
                    _ = &mut pass => {}
                }
            }
            tokio::select! {
                () = &mut stop => break tokio::time::Instant::now() + drain_for,
                _ = ticks.tick() => {}
            }
        };
        drop(ticks);
        while self.outbox.pending_len() > 0 {
            let Ok(pass) = tokio::time::timeout_at(deadline, self.pass()).await else {
                break;
            };
            let wait = match pass.next_at {
                _ if pass.attempted > 0 => Duration::ZERO,
                // The fake clock does not move while recmeter stops.
                Some(at) if !self.aggregator.clock().is_fake() => {
                    Duration::from_nanos(at.saturating_sub(self.now()))
                }
                _ => break,
            };
            let wake = tokio::time::Instant::now() + wait.max(Duration::from_millis(10));
            if wake >= deadline {
                break;
            }
            tokio::time::sleep_until(wake).await;
        }
        let left = self.outbox.pending_len();
        if left > 0 {
            tracing::warn!(
                pending = left,
                "PagerDuty events still wait in the outbox at shutdown; they go after the next start."
            );
        }
    }

    /// One pass: logs outcomes whose log entry failed, then sends, oldest first, each dedup
    /// key's oldest waiting event whose routing key is neither backing off nor at its rate
    /// limit.
    pub async fn pass(&mut self) -> Pass {
        // One at a time, each taken off the list only once logged, so a pass cut short loses
        // none.
        while let Some(receipt) = self.unlogged.first().cloned() {
            if self.log_once(&receipt).await.is_err() {
                break;
            }
            self.unlogged.remove(0);
        }
        let waiting = self
            .unlogged
            .iter()
            .filter_map(Receipt::event)
            .cloned()
            .collect::<HashSet<_>>();
        let mut pass = Pass::default();
        let mut keys_seen = HashSet::new();
        for queued in self.outbox.pending() {
            let t = &queued.transition;
            // In order per key: a key's later events wait for its oldest.
            if !keys_seen.insert(queued.dedup_key.clone()) || waiting.contains(&queued.id()) {
                continue;
            }
            let Some(route) = self
                .routing
                .key(t.severity)
                .and_then(|key| self.routes.iter().position(|r| &r.key == key))
            else {
                tracing::warn!(
                    slo = %t.slo,
                    severity = t.severity.label(),
                    "A queued PagerDuty event's severity has no routing key any more; dropped."
                );
                self.events.add(&[action(t.firing), "rejected"], 1);
                self.log(Receipt::Rejected {
                    event: queued.id(),
                    status: 0,
                })
                .await;
                continue;
            };
            let now = self.now();
            if !self.routes[route].take(now) {
                let at = self.routes[route].next_at(now);
                pass.next_at = Some(pass.next_at.map_or(at, |n| n.min(at)));
                continue;
            }
            pass.attempted += 1;
            self.deliver(&queued, route, now).await;
        }
        pass
    }

    async fn deliver(&mut self, queued: &Queued, route: usize, now: u64) {
        let t = &queued.transition;
        let key = self.routes[route].key.clone();
        let event = event(&self.context, key.expose(), &queued.dedup_key, t);
        let action = action(t.firing);
        let dedup = &queued.dedup_key;
        match self.client.send(&event, key.expose()).await {
            Answer::Accepted { status, .. } => {
                self.events.add(&[action, "accepted"], 1);
                if self.routes[route].succeeded() {
                    tracing::info!("PagerDuty accepts events again.");
                }
                tracing::info!(
                    dedup_key = %dedup,
                    action,
                    status,
                    "PagerDuty accepted an event."
                );
                // A test hook holds the receipt here, so a test can crash recmeter between
                // PagerDuty's answer and the log entry.
                self.aggregator
                    .hooks()
                    .released(Hook::HoldPagerdutyReceipt)
                    .await;
                self.log(Receipt::Accepted { event: queued.id() }).await;
            }
            Answer::Retry { status, reason } => {
                self.events.add(&[action, "retried"], 1);
                let first = self.routes[route].failures == 0;
                let wait = self.routes[route].failed(now);
                if first {
                    tracing::warn!(
                        dedup_key = %dedup,
                        action,
                        status,
                        reason = %clip(&reason, 1024),
                        retry_in_ms = wait.as_millis() as u64,
                        "PagerDuty did not take an event; retrying with backoff."
                    );
                } else {
                    tracing::debug!(
                        dedup_key = %dedup,
                        status,
                        reason = %clip(&reason, 1024),
                        failures = self.routes[route].failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "PagerDuty still does not take events."
                    );
                }
            }
            Answer::Rejected { status, body } => {
                self.events.add(&[action, "rejected"], 1);
                tracing::error!(
                    dedup_key = %dedup,
                    action,
                    status,
                    body = %clip(&body, 1024),
                    "PagerDuty rejected an event; it is dropped, not retried. Check the routing key with `recmeter pagerduty test`."
                );
                self.log(Receipt::Rejected {
                    event: queued.id(),
                    status,
                })
                .await;
            }
        }
    }

    /// Logs `receipt`, which takes its event out once durable; on failure it is kept for
    /// the next pass.
    async fn log(&mut self, receipt: Receipt) {
        if self.log_once(&receipt).await.is_err() {
            self.unlogged.push(receipt);
        }
    }

    async fn log_once(&self, receipt: &Receipt) -> recmeter_aggregator::Result<()> {
        let logged = match Outbox::event(receipt) {
            Ok(event) => self.aggregator.log_event(event).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &logged {
            tracing::warn!(error = %e, "Cannot log a PagerDuty delivery outcome; retrying at the next pass.");
        }
        logged
    }
}

/// Queues what brings PagerDuty in line with `alerts` ([`Outbox::reconcile`]): run at start,
/// before the first evaluation can change the alerts. Returns how many were queued; one whose
/// log entry fails is left for the next start.
pub async fn reconcile(
    outbox: &Outbox,
    alerts: &SloAlerts,
    aggregator: &AggregatorHandle,
) -> usize {
    let mut queued = 0;
    for transition in outbox.reconcile(&alerts.firing_since(), aggregator.clock().now_nanos()) {
        let (slo, severity, firing) = (
            transition.slo.clone(),
            transition.severity,
            transition.firing,
        );
        let logged = match Outbox::event(&Receipt::Queued { transition }) {
            Ok(event) => aggregator.log_event(event).await,
            Err(e) => Err(e),
        };
        match logged {
            Ok(()) => {
                queued += 1;
                tracing::info!(
                    slo = %slo,
                    severity = severity.label(),
                    action = action(firing),
                    "Queued for PagerDuty: the alert changed while PagerDuty was off or its severity had no routing key."
                );
            }
            Err(e) => tracing::warn!(
                slo = %slo,
                error = %e,
                "Cannot queue a PagerDuty event that would bring PagerDuty in line with the alerts; the next start tries again."
            ),
        }
    }
    queued
}

/// `recmeter_pagerduty_events_total{action,outcome}`.
pub fn events_counter(aggregator: &AggregatorHandle) -> Arc<LabelledCounter> {
    aggregator.telemetry().labelled_counter(
        "recmeter_pagerduty_events",
        "PagerDuty delivery attempts by event action (trigger, resolve) and outcome: accepted \
         (2xx), retried (429, 5xx or no answer; sent again later) or rejected (any other \
         status, or no routing key for its severity any more; dropped).",
        &["action", "outcome"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            key: Secret::new("k").unwrap(),
            sent: VecDeque::new(),
            failures: 0,
            retry_at: 0,
        }
    }

    #[test]
    fn at_most_the_limit_goes_in_any_minute() {
        let mut r = route();
        let s = 1_000_000_000u64;
        let sent: usize = (0..200).filter(|_| r.take(10 * s)).count();
        assert_eq!(sent, RATE_LIMIT);
        assert_eq!(r.next_at(10 * s), 70 * s);
        assert!(!r.take(70 * s - 1));
        assert!(
            r.take(70 * s),
            "the first minute's sends have left the window"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut r = route();
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(r.failed(0));
        }
        for (i, wait) in waits.iter().enumerate() {
            let full = BACKOFF_BASE.saturating_mul(1 << i).min(BACKOFF_CAP);
            assert!(*wait >= full / 2 && *wait <= full, "{i}: {wait:?}");
        }
        assert!(!r.take(0), "backing off");
        assert!(r.succeeded());
        assert!(r.take(0));
    }

    #[test]
    fn secrets_are_redacted_from_answers() {
        assert_eq!(
            redact("bad key abc in abc", "abc"),
            "bad key [redacted] in [redacted]"
        );
    }
}
