//! A PagerDuty Events API v2 double: `POST /v2/enqueue` checks each event against the
//! documented schema (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/) and
//! answers as PagerDuty does: 202 with `{"status":"success",…,"dedup_key":…}`, or 400 with
//! `{"status":"invalid event","message":"Event object is invalid","errors":[…]}`. A test can
//! make it refuse routing keys it does not know and answer 503 to the next attempts.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

/// The Events API's limit on one event.
const MAX_EVENT_BYTES: usize = 512 * 1024;

/// One request it got.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: u16,
    pub event: Value,
    /// What broke the schema, if anything.
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Routing keys it takes; any other is refused (400).
    known_keys: Vec<String>,
    /// Answer 503 to this many more attempts.
    unavailable: usize,
    attempts: Vec<Attempt>,
}

/// A running double; stops when dropped.
pub struct FakePagerDuty {
    /// Its base URL, `http://127.0.0.1:PORT` (recmeter's `pagerduty.url`).
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakePagerDuty {
    /// A double that takes events with the routing keys `known_keys`.
    pub fn start(known_keys: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let inner = Arc::new(Mutex::new(Inner {
            known_keys: known_keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Inner::default()
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v2/enqueue", post(enqueue))
            .with_state(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            inner,
            _runtime: runtime,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers 503 to the next `n` attempts.
    pub fn set_unavailable(&self, n: usize) {
        self.lock().unavailable = n;
    }

    /// Every attempt, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// The events it accepted (202), in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.attempts()
            .into_iter()
            .filter(|a| a.status == 202)
            .map(|a| a.event)
            .collect()
    }

    /// The accepted events as `(event_action, dedup_key)`, in arrival order.
    pub fn accepted_keys(&self) -> Vec<(String, String)> {
        self.accepted()
            .iter()
            .map(|e| {
                (
                    e["event_action"].as_str().unwrap().to_owned(),
                    e["dedup_key"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Fails if any event broke the schema.
    pub fn assert_all_valid(&self) {
        let invalid: Vec<_> = self
            .attempts()
            .into_iter()
            .filter(|a| !a.problems.is_empty())
            .collect();
        assert!(
            invalid.is_empty(),
            "events against the schema: {invalid:#?}"
        );
    }
}

/// What is wrong with `event` by the Events API v2 schema.
fn problems(event: &Value, bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, problem: &str| {
        if !ok {
            out.push(problem.to_owned());
        }
    };
    let chars = |v: &Value| v.as_str().map(|s| s.chars().count());
    check(bytes <= MAX_EVENT_BYTES, "event over 512 KB");
    check(event.is_object(), "not a JSON object");
    check(
        chars(&event["routing_key"]) == Some(32),
        "'routing_key' must be 32 characters",
    );
    let action = event["event_action"].as_str().unwrap_or("");
    check(
        matches!(action, "trigger" | "acknowledge" | "resolve"),
        "'event_action' must be trigger, acknowledge or resolve",
    );
    match &event["dedup_key"] {
        Value::Null => check(action == "trigger", "'dedup_key' is required"),
        key => check(
            chars(key).is_some_and(|n| (1..=255).contains(&n)),
            "'dedup_key' must be a string of at most 255 characters",
        ),
    }
    if action == "trigger" {
        let payload = &event["payload"];
        check(
            chars(&payload["summary"]).is_some_and(|n| (1..=1024).contains(&n)),
            "'payload.summary' must be 1 to 1024 characters",
        );
        check(
            chars(&payload["source"]).is_some_and(|n| n > 0),
            "'payload.source' is required",
        );
        check(
            matches!(
                payload["severity"].as_str(),
                Some("critical" | "error" | "warning" | "info")
            ),
            "'payload.severity' must be critical, error, warning or info",
        );
        if let Some(t) = payload.get("timestamp") {
            check(
                t.as_str()
                    .is_some_and(|t| humantime::parse_rfc3339_weak(t).is_ok()),
                "'payload.timestamp' must be an ISO 8601 time",
            );
        }
        for field in ["component", "group", "class"] {
            if let Some(v) = payload.get(field) {
                check(
                    v.is_string(),
                    "'payload.component/group/class' must be strings",
                );
            }
        }
        if let Some(d) = payload.get("custom_details") {
            check(d.is_object(), "'payload.custom_details' must be an object");
        }
        if let Some(links) = event.get("links") {
            check(
                links
                    .as_array()
                    .is_some_and(|l| l.iter().all(|l| l["href"].is_string())),
                "'links' must be objects with an href",
            );
        }
    }
    out
}

fn answer(status: StatusCode, body: Value) -> (StatusCode, String) {
    (status, body.to_string())
}

async fn enqueue(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut problems = problems(&event, body.len());
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        problems.push("Content-Type must be application/json".to_owned());
    }
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    let (status, text) = if !problems.is_empty() {
        answer(
            StatusCode::BAD_REQUEST,
            json!({"status": "invalid event", "message": "Event object is invalid", "errors": problems}),
        )
    } else if !inner
        .known_keys
        .iter()
        .any(|k| event["routing_key"] == k.as_str())
    {
        answer(
            StatusCode::BAD_REQUEST,
            json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["Invalid routing key"]}),
        )
    } else if inner.unavailable > 0 {
        inner.unavailable -= 1;
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "message": "Service unavailable, try again"}),
        )
    } else {
        answer(
            StatusCode::ACCEPTED,
            json!({"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}),
        )
    };
    inner.attempts.push(Attempt {
        status: status.as_u16(),
        event,
        problems,
    });
    (status, text)
}
