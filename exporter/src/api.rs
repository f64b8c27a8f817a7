//! The HTTP API on :9464: `/metrics`, `/api/v1/sql`, `/healthz`, `/readyz`, and the `/-/test/*` routes that
//! exist only when the binary runs with `--test-hooks`.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use recmeter_aggregator::participant::TestLedger;
use recmeter_aggregator::{BearerToken, Hook};
use serde::Deserialize;

use crate::error::{ApiError, Result};
use crate::prometheus::{Format, render_parts};
pub use crate::state::{ApiState, METRICS_WINDOWS, default_providers};

/// The API routes, for serving or for `oneshot` tests.
pub fn api_router(state: ApiState) -> Router {
    // Everything but health, readiness and the test routes sits behind the API token,
    // unknown paths (the fallback) included, so a route added later starts out guarded.
    // The test routes (only with --test-hooks) are guarded too: they move the clock and arm
    // faults.
    let mut guarded = Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/sql",
            post(crate::sql::sql).layer(DefaultBodyLimit::max(crate::sql::MAX_SQL_BYTES)),
        )
        .merge(crate::promql::http::routes());
    if state.test_hooks {
        guarded = guarded
            .route("/-/test/clock", post(test_clock))
            .route("/-/test/hook", post(test_hook))
            .route("/-/test/ledger", get(test_ledger).post(test_ledger_event));
    }
    let guarded = guarded
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let mut parts = Vec::with_capacity(state.providers.len());
    for provider in state.providers.iter() {
        parts.push(provider.read().await?);
    }
    // Rendering tens of megabytes of text is CPU work; keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        render_parts(parts, format).map_err(|_| ApiError::internal("cannot encode metrics"))
    })
    .await
    .map_err(|e| ApiError::internal(format!("metrics task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// Refuses requests without the API token (Prometheus: `authorization: {credentials_file: …}`),
/// taken as a bearer token or as the password of HTTP Basic credentials (a browser, or
/// `promtool query` with the token in the URL's user info).
async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !presented.is_some_and(|v| token.matches_header(v) || basic_password_matches(token, v)) {
            state.aggregator.telemetry().add_api_unauthorized();
            return Err(ApiError::unauthorized(
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Whether `value` is `Basic <base64 of user:password>` with the token as the password (any
/// user name).
fn basic_password_matches(token: &BearerToken, value: &str) -> bool {
    use base64::Engine as _;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some((_, password)) = std::str::from_utf8(&decoded)
        .ok()
        .and_then(|s| s.split_once(':'))
    else {
        return false;
    };
    token.matches_header(&format!("Bearer {password}"))
}

/// Ready once started, and while the WAL can be written: a load balancer then sends OTLP
/// traffic elsewhere rather than into 503s.
async fn readyz(State(state): State<ApiState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    } else if state.aggregator.telemetry().wal_failing() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the write-ahead log cannot be written (see the log); ingest answers 503\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerEvent {
    add: u64,
}

/// Logs an event for the test checkpoint participant; answers once it is durable and applied.
async fn test_ledger_event(
    State(state): State<ApiState>,
    Json(request): Json<LedgerEvent>,
) -> Result<Response, ApiError> {
    state
        .aggregator
        .log_event(TestLedger::event(request.add))
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The test checkpoint participant's state: the numbers it applied, in order.
async fn test_ledger(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let saved = state
        .aggregator
        .participant_state(TestLedger::NAME)
        .ok_or_else(|| ApiError::not_found("no test ledger is registered"))?
        .map_err(ApiError::from)?;
    Ok(Json(saved).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    advance: String,
}

/// How long `POST /-/test/clock` waits for the tasks due to run.
const SETTLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

async fn test_clock(
    State(state): State<ApiState>,
    Json(request): Json<ClockRequest>,
) -> Result<Response, ApiError> {
    let by = humantime::parse_duration(&request.advance)
        .map_err(|e| ApiError::bad_request(format!("invalid `advance` duration: {e}")))?;
    // Answered once every task on recmeter's clock that was due has run its tick, so a test
    // can check what the tick did without sleeping.
    let now = state
        .aggregator
        .clock()
        .advance_and_settle(by, SETTLE_PATIENCE)
        .await
        .ok_or_else(|| ApiError::bad_request("the clock is not the test clock"))?
        .map_err(|_| {
            ApiError::unavailable(format!(
                "the clock moved (do not repeat the request), but tasks due were still running after {}s",
                SETTLE_PATIENCE.as_secs()
            ))
        })?;
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Ok(Json(serde_json::json!({
        "now": humantime::format_rfc3339_nanos(now).to_string(),
        "unix": unix,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookRequest {
    name: String,
    on: bool,
}

async fn test_hook(
    State(state): State<ApiState>,
    Json(request): Json<HookRequest>,
) -> Result<Response, ApiError> {
    let hook = Hook::from_name(&request.name).ok_or_else(|| {
        let known: Vec<_> = Hook::ALL.iter().map(|h| h.name()).collect();
        ApiError::bad_request(format!(
            "unknown hook `{}`; known hooks: {}",
            request.name,
            known.join(", ")
        ))
    })?;
    state.aggregator.hooks().set(hook, request.on);
    tracing::info!(hook = hook.name(), on = request.on, "Test hook set.");
    Ok(Json(serde_json::json!({ "name": hook.name(), "on": request.on })).into_response())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use recmeter_aggregator::{
        AggregatorConfig, AggregatorHandle, BearerToken, Clock, Hooks, IngestConfig, QueryEngine,
        SqlConfig, Telemetry,
    };
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tower::ServiceExt;

    pub(crate) fn state(test_hooks: bool, ready: bool) -> ApiState {
        let clock = Arc::new(Clock::fake(
            UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        ));
        let (aggregator, _worker) = AggregatorHandle::start(
            &IngestConfig::default(),
            &AggregatorConfig::default(),
            clock,
            Arc::new(Telemetry::default()),
            Arc::new(Hooks::default()),
        )
        .unwrap();
        let engine =
            Arc::new(QueryEngine::new(aggregator.state().clone(), &SqlConfig::default()).unwrap());
        let query = Arc::new(crate::promql::QueryApi::new(
            crate::promql::QueryConfig::default(),
            crate::promql::Rollups {
                engine: engine.clone(),
                aggregator: aggregator.clone(),
            },
            Arc::new(crate::promql::Ring::default()),
        ));
        ApiState {
            providers: default_providers(&aggregator, &engine),
            aggregator,
            engine,
            query,
            ready: Arc::new(AtomicBool::new(ready)),
            test_hooks,
            token: None,
        }
    }

    async fn call(state: ApiState, request: Request<Body>) -> (StatusCode, String, String) {
        let response = api_router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn metrics_negotiates_the_format() {
        let get = |accept: Option<&str>| {
            let mut r = Request::get("/metrics");
            if let Some(a) = accept {
                r = r.header(header::ACCEPT, a);
            }
            r.body(Body::empty()).unwrap()
        };
        let (status, content_type, body) = call(state(false, true), get(None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(
            body.contains("# TYPE recmeter_spans_received_total counter"),
            "{body}"
        );
        assert!(!body.contains("# EOF"));
        let (_, content_type, body) = call(
            state(false, true),
            get(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )),
        )
        .await;
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn the_api_token_guards_everything_but_health() {
        let mut guarded = state(true, true);
        guarded.token = BearerToken::new("t0ken");
        let get = |path: &str, auth: Option<&str>| {
            let mut r = Request::get(path);
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            r.body(Body::empty()).unwrap()
        };
        for path in ["/metrics", "/", "/api/v1/query", "/api/v1/sql"] {
            let (status, _, _) = call(guarded.clone(), get(path, None)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            let (status, _, _) = call(guarded.clone(), get(path, Some("Bearer nope"))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
        assert_eq!(
            call(guarded.clone(), get("/metrics", Some("Bearer t0ken")))
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            call(guarded.clone(), get("/nowhere", Some("Bearer t0ken")))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(guarded.clone(), get("/healthz", None)).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(guarded.clone(), get("/readyz", None)).await.0,
            StatusCode::OK
        );
        assert_eq!(guarded.aggregator.telemetry().api_unauthorized(), 8);
    }

    #[tokio::test]
    async fn readiness_and_test_routes() {
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        assert_eq!(
            call(state(false, false), get("/readyz")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(state(false, false), get("/healthz")).await.0,
            StatusCode::OK
        );
        let advance = || {
            Request::post("/-/test/clock")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"advance":"90s"}"#))
                .unwrap()
        };
        assert_eq!(
            call(state(false, true), advance()).await.0,
            StatusCode::NOT_FOUND
        );
        let (status, _, body) = call(state(true, true), advance()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("2027-01-15T08:01:30"), "{body}");
        let bad = Request::post("/-/test/clock")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"advance":"soon"}"#))
            .unwrap();
        let (status, _, body) = call(state(true, true), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("errorType"), "{body}");
    }

    async fn post_sql(path: &str, sql: &str) -> (StatusCode, String, Vec<u8>) {
        let response = api_router(state(false, true))
            .oneshot(
                Request::post(path)
                    .body(Body::from(sql.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body.to_vec())
    }

    #[tokio::test]
    async fn sql_formats_and_refusals() {
        let sql = "SELECT 1 AS one, 'a' AS letter UNION ALL SELECT 2, 'b'";
        let (status, content_type, body) = post_sql("/api/v1/sql", sql).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 2);
        let (_, content_type, body) = post_sql("/api/v1/sql?format=csv", sql).await;
        assert!(content_type.starts_with("text/csv"));
        assert!(String::from_utf8(body).unwrap().starts_with("one,letter\n"));
        let (_, content_type, body) = post_sql("/api/v1/sql?format=arrow", sql).await;
        assert_eq!(content_type, "application/vnd.apache.arrow.stream");
        let reader =
            datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
                .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
        // Empty results are still well-formed.
        let (_, _, body) = post_sql("/api/v1/sql", "SELECT 1 AS one WHERE false").await;
        assert_eq!(body, b"[]\n");
        let (_, _, body) = post_sql("/api/v1/sql?format=csv", "SELECT 1 AS one WHERE false").await;
        assert_eq!(body, b"one\n");
        for (path, sql) in [
            ("/api/v1/sql?format=xml", "SELECT 1"),
            ("/api/v1/sql", ""),
            ("/api/v1/sql", "DROP TABLE latency_minutes"),
        ] {
            let (status, _, body) = post_sql(path, sql).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {sql}");
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["errorType"], "bad_data");
        }
    }

    /// A later capability's table, registered through the catalog, answers `/api/v1/sql`
    /// beside the built-in ones.
    #[tokio::test]
    async fn a_table_registered_through_the_catalog_is_queried() {
        use datafusion::arrow::array::{StringArray, UInt64Array};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::record_batch::RecordBatch;
        use datafusion::catalog::TableProvider;
        use datafusion::datasource::MemTable;
        use recmeter_aggregator::sql::catalog::{CatalogTable, Source};
        use recmeter_aggregator::store::history::History;

        #[derive(Debug)]
        struct CostLines(Arc<MemTable>);

        impl CatalogTable for CostLines {
            fn name(&self) -> &str {
                "test_cost_lines"
            }
            fn source(&self) -> Source {
                Source::Memory
            }
            fn provider(&self, _: Option<&Arc<History>>) -> Arc<dyn TableProvider> {
                self.0.clone()
            }
        }

        let schema = Arc::new(Schema::new(vec![
            Field::new("component", DataType::Utf8, false),
            Field::new("micro_dollars", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["ranker", "ranker", "retrieval"])),
                Arc::new(UInt64Array::from(vec![250u64, 750, 100])),
            ],
        )
        .unwrap();
        let table = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
        let state = state(false, true);
        state
            .engine
            .register_table(Arc::new(CostLines(table.clone())))
            .unwrap();
        let taken = state.engine.register_table(Arc::new(CostLines(table)));
        assert!(taken.unwrap_err().to_string().contains("test_cost_lines"));
        let sql = "SELECT component, sum(micro_dollars) AS total FROM test_cost_lines \
                   GROUP BY component ORDER BY component";
        let response = api_router(state)
            .oneshot(Request::post("/api/v1/sql").body(Body::from(sql)).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([
                {"component": "ranker", "total": 1000},
                {"component": "retrieval", "total": 100}
            ])
        );
    }
}
